//! CPU quotas, converted in one place: `CPUQuota=N%` (a percentage of one CPU, over 100 on
//! several) is the property `CPUQuotaPerSecUSec`, N × 10 000 µs of CPU time per second of
//! wall-clock time; systemd reports "no quota" as `u64::MAX`.

/// `CPUQuotaPerSecUSec` with no quota.
pub const UNLIMITED: u64 = u64::MAX;

/// `CPUQuotaPerSecUSec` for `CPUQuota=<percent>%`.
pub fn usec_from_percent(percent: u32) -> u64 {
    u64::from(percent) * 10_000
}

/// The `CPUQuota=` percentage of a `CPUQuotaPerSecUSec`; `None` for no quota.
pub fn percent_from_usec(usec: u64) -> Option<f64> {
    (usec != UNLIMITED).then(|| usec as f64 / 10_000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_and_usec_round_trip() {
        assert_eq!(
            usec_from_percent(100),
            1_000_000,
            "one CPU: a second per second"
        );
        assert_eq!(usec_from_percent(250), 2_500_000);
        assert_eq!(percent_from_usec(250_000), Some(25.0));
        assert_eq!(percent_from_usec(usec_from_percent(1)), Some(1.0));
        assert_eq!(percent_from_usec(UNLIMITED), None);
    }
}
