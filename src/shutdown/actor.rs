//! Root's power action, `homelab-power-action@INSTANCE.service`: the names of its instances
//! (the instance is all root is told), and whether a power action has begun, from systemd's
//! own units.

use crate::systemd::UnitRow;

/// The root-owned unit that acts for a schedule: `poweroff`, `reboot`, `poweroff-wake-EPOCH`,
/// `clear-wake-EPOCH` (see `homelab-power-action`).
pub const ACTOR_PREFIX: &str = "homelab-power-action@";

/// What shows that the machine is going down: root's power action, and the targets it (or an
/// administrator's `systemctl poweroff`) starts.
pub const POWER_PATTERNS: &[&str] = &[
    "homelab-power-action@*.service",
    "poweroff.target",
    "reboot.target",
    "halt.target",
    "kexec.target",
];

/// The unit of the power action `instance`.
pub fn unit(instance: &str) -> String {
    format!("{ACTOR_PREFIX}{instance}.service")
}

/// The instance that powers off (arming the RTC alarm at `wake_at` first, when given): the
/// epoch in canonical digits (no sign, no leading zero), the only form polkit and root accept.
pub fn power_off_instance(wake_at: Option<i64>) -> String {
    match wake_at.filter(|t| *t > 0) {
        Some(at) => format!("poweroff-wake-{at}"),
        None => "poweroff".to_string(),
    }
}

/// The instance that clears the RTC alarm `at` if root set it and it still holds.
pub fn clear_wake_instance(at: i64) -> String {
    format!("clear-wake-{at}")
}

/// Whether a power action has begun, in systemd's listing of [`POWER_PATTERNS`]: root's unit
/// (other than a clearing of an alarm) has a start job or runs, or a power target has a start
/// job or is reached. From then on nothing we may stop can stop the power-off.
pub fn has_begun(rows: &[UnitRow]) -> bool {
    rows.iter().any(|r| {
        let up = matches!(
            r.active_state.as_str(),
            "active" | "activating" | "reloading"
        );
        let starting = r.job_type == "start";
        match r.name.strip_prefix(ACTOR_PREFIX) {
            Some(instance) => !instance.starts_with("clear-wake-") && (up || starting),
            None => up || starting,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_are_canonical() {
        assert_eq!(power_off_instance(None), "poweroff");
        assert_eq!(power_off_instance(Some(0)), "poweroff");
        assert_eq!(power_off_instance(Some(-5)), "poweroff");
        assert_eq!(
            power_off_instance(Some(1_795_000_000)),
            "poweroff-wake-1795000000"
        );
        assert_eq!(power_off_instance(Some(7)), "poweroff-wake-7");
        assert_eq!(clear_wake_instance(1_795_000_000), "clear-wake-1795000000");
        assert_eq!(
            unit(&clear_wake_instance(42)),
            "homelab-power-action@clear-wake-42.service"
        );
    }

    #[test]
    fn a_power_action_has_begun_when_root_acts_or_a_target_has_a_job() {
        let row = |name: &str, active: &str, job: &str| {
            let mut r = UnitRow::new(name, active, "dead");
            r.job_type = job.into();
            r
        };
        assert!(!has_begun(&[]));
        assert!(!has_begun(&[row(&unit("poweroff"), "inactive", "")]));
        assert!(!has_begun(&[row("poweroff.target", "inactive", "")]));
        // Clearing an alarm is no power action.
        assert!(!has_begun(&[row(
            &unit("clear-wake-5"),
            "activating",
            "start"
        )]));
        assert!(has_begun(&[row(&unit("poweroff"), "activating", "start")]));
        assert!(has_begun(&[row(
            &unit("poweroff-wake-9"),
            "inactive",
            "start"
        )]));
        assert!(has_begun(&[row("poweroff.target", "inactive", "start")]));
        assert!(has_begun(&[row("reboot.target", "active", "")]));
    }
}
