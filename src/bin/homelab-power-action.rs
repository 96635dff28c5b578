//! homelab-power-action: what a fired schedule has root do, through
//! `homelab-power-action@INSTANCE.service`, started by the schedule's gate (user abc, allowed by
//! polkit for exactly these instances). The instance is all it is told, and all it parses:
//! `poweroff`, `reboot`, `poweroff-wake-EPOCH` (arm the RTC alarm, then power off) or
//! `clear-wake-EPOCH` (clear the RTC alarm EPOCH, if root set it and the RTC still holds it).
//! No file of abc's is read: what root armed is in its own record (`homelab::shutdown::rtc`). It
//! powers off or reboots by starting `poweroff.target` or `reboot.target`, as `systemctl
//! poweroff` does: the gate has applied the schedule's policy, so no inhibitor stops it.

use chrono::TimeZone;
use clap::Parser;
use homelab::shutdown::rtc::{Cleared, Rtc};
use homelab::{cli, log_info, log_notice, log_warn};
use std::process::ExitCode;

/// What root is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Task {
    Poweroff { wake_at: Option<i64> },
    Reboot,
    ClearWake(i64),
}

/// Parses an instance name: nothing but the four forms, the numbers 1 to 12 digits with no
/// leading zero (as polkit/50-homelab.rules matches them), so that one alarm has one name.
fn parse(instance: &str) -> Option<Task> {
    let epoch = |digits: &str| -> Option<i64> {
        if digits.is_empty()
            || digits.len() > 12
            || digits.starts_with('0')
            || !digits.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        digits.parse().ok()
    };
    match instance {
        "poweroff" => Some(Task::Poweroff { wake_at: None }),
        "reboot" => Some(Task::Reboot),
        _ => {
            if let Some(t) = instance.strip_prefix("poweroff-wake-") {
                Some(Task::Poweroff {
                    wake_at: Some(epoch(t)?),
                })
            } else {
                Some(Task::ClearWake(epoch(
                    instance.strip_prefix("clear-wake-")?,
                )?))
            }
        }
    }
}

/// Powers the machine off (arming the RTC wake alarm first when asked), reboots it, or clears
/// the wake alarm it armed; as root.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// poweroff, reboot, poweroff-wake-EPOCH or clear-wake-EPOCH (the unit's instance)
    task: String,
    /// Say what would be done, and do nothing
    #[arg(long)]
    dry_run: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    cli::run(|| {
        let task = parse(&args.task).ok_or_else(|| {
            anyhow::anyhow!(
                "{:?} is not a task: use poweroff, reboot, poweroff-wake-EPOCH or clear-wake-EPOCH",
                args.task
            )
        })?;
        if args.dry_run {
            println!("{task:?}");
            return Ok(());
        }
        match task {
            Task::ClearWake(at) => clear(&Rtc::system(), at),
            Task::Poweroff { wake_at } => power_off(&Rtc::system(), wake_at, now(), || {
                log_warn!("{} fired: powering off now", own_unit());
                record("poweroff");
                Ok(homelab::systemd::Bus::system().power_off()?)
            }),
            Task::Reboot => {
                log_warn!("{} fired: rebooting now", own_unit());
                record("reboot");
                homelab::systemd::Bus::system().reboot()?;
                Ok(())
            }
        }
    })
}

/// Powers off through `off`, arming the RTC alarm at `wake_at` first when asked. A machine that
/// was to come back is not powered off when the alarm cannot be set. A power-off that fails after
/// arming leaves the alarm and root's record of it, so that a later cancel still clears it.
fn power_off<Tz: TimeZone>(
    rtc: &Rtc<Tz>,
    wake_at: Option<i64>,
    now: i64,
    off: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if let Some(at) = wake_at {
        let replaced = rtc.arm(at, now).map_err(|e| {
            anyhow::anyhow!(
                "cannot set the wake alarm {} to {at}: {e:#}; not powering off",
                rtc.wakealarm.display()
            )
        })?;
        if let Some(old) = replaced.filter(|old| *old != at) {
            log_notice!(
                "the wake alarm {old} ({}) is replaced",
                homelab::time::epoch_rfc3339(old)
            );
        }
        log_info!(
            "wake alarm set for {at} ({})",
            homelab::time::epoch_rfc3339(at)
        );
    }
    off()
}

/// Clears the wake alarm `at` if root set it and the RTC still holds it: an alarm root did not
/// set (one that anyone can read in the world-readable wakealarm, say) stays.
fn clear<Tz: TimeZone>(rtc: &Rtc<Tz>, at: i64) -> anyhow::Result<()> {
    let shown = |t: i64| format!("{t} ({})", homelab::time::epoch_rfc3339(t));
    match rtc.clear(at).map_err(|e| {
        anyhow::anyhow!(
            "cannot clear the wake alarm {}: {e:#}",
            rtc.wakealarm.display()
        )
    })? {
        Cleared::Cleared => log_info!("cleared the wake alarm {}", shown(at)),
        Cleared::NotRoots { held } => log_notice!(
            "left the wake alarm alone: root did not set {at}, so it is not root's to clear (the RTC holds {})",
            held.map_or_else(|| "no alarm".to_string(), shown)
        ),
        Cleared::NoLongerHeld { held: Some(held) } => log_info!(
            "left the wake alarm alone: it is {}, no longer the {} root set",
            shown(held),
            shown(at)
        ),
        Cleared::NoLongerHeld { held: None } => {
            log_info!("no wake alarm is set: nothing to clear for {}", shown(at))
        }
    }
    Ok(())
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The unit we run in (from our cgroup), for the log line; "a schedule" when unknown.
fn own_unit() -> String {
    homelab::systemd::procfs::unit_of_pid(std::process::id()).unwrap_or_else(|| "a schedule".into())
}

/// Records the action and its time for the shutdown service's `/metrics`
/// (`homelab_shutdown_last_power_action_timestamp_seconds`); a failure is logged, never a reason
/// not to act.
fn record(name: &str) {
    let now = now();
    let path = std::path::Path::new(homelab::shutdown::metrics::LAST_ACTION_FILE);
    if let Err(e) = homelab::metrics::write_textfile(path, &format!("{name} {now}\n")) {
        log_warn!("cannot record the power action in {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_four_forms_parse() {
        assert_eq!(parse("poweroff"), Some(Task::Poweroff { wake_at: None }));
        assert_eq!(parse("reboot"), Some(Task::Reboot));
        assert_eq!(
            parse("poweroff-wake-1795000000"),
            Some(Task::Poweroff {
                wake_at: Some(1_795_000_000)
            })
        );
        assert_eq!(
            parse("clear-wake-1795000000"),
            Some(Task::ClearWake(1_795_000_000))
        );
        for bad in [
            "",
            "halt",
            "poweroff-wake-",
            "poweroff-wake-0",
            "poweroff-wake-12x",
            "poweroff-wake--5",
            "poweroff-wake-+5",
            "poweroff-wake-1234567890123",
            "clear-wake-",
            "clear-wake-1 ",
            "clear-wake-0",
            "poweroff-wake-01795000000",
            "poweroff-wake-0001795000000",
            "clear-wake-01795000000",
            "Poweroff",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}

#[cfg(test)]
mod power_off {
    use super::*;
    use chrono::FixedOffset;

    const NOW: i64 = 1_796_410_800;

    fn rtc(dir: &std::path::Path) -> Rtc<FixedOffset> {
        let r = Rtc {
            wakealarm: dir.join("wakealarm"),
            adjtime: dir.join("adjtime"),
            record: dir.join("wake-alarm.json"),
            zone: FixedOffset::east_opt(0).unwrap(),
        };
        std::fs::write(&r.wakealarm, "").unwrap();
        r
    }

    #[test]
    fn a_failed_power_off_leaves_the_alarm_for_a_later_cancel() {
        let dir = tempfile::tempdir().unwrap();
        let r = rtc(dir.path());
        let at = NOW + 3600;
        let e = power_off(&r, Some(at), NOW, || anyhow::bail!("logind said no")).unwrap_err();
        assert!(e.to_string().contains("logind said no"), "{e:#}");
        assert_eq!(r.alarm(), Some(at));
        assert_eq!(r.record().armed.map(|a| a.at), Some(at));
        clear(&r, at).unwrap();
        assert_eq!(r.alarm(), None);
    }

    #[test]
    fn no_power_off_when_the_alarm_cannot_be_set() {
        let dir = tempfile::tempdir().unwrap();
        let r = rtc(dir.path());
        std::fs::write(&r.wakealarm, "1796500000").unwrap();
        let mut powered_off = false;
        let e = power_off(&r, Some(NOW - 1), NOW, || {
            powered_off = true;
            Ok(())
        })
        .unwrap_err();
        assert!(!powered_off);
        assert!(e.to_string().contains("not powering off"), "{e:#}");
        assert_eq!(r.alarm(), Some(1_796_500_000));
    }

    #[test]
    fn a_clear_of_an_alarm_root_did_not_set_leaves_it() {
        let dir = tempfile::tempdir().unwrap();
        let r = rtc(dir.path());
        std::fs::write(&r.wakealarm, "1796500000").unwrap();
        clear(&r, 1_796_500_000).unwrap();
        assert_eq!(r.alarm(), Some(1_796_500_000));
    }
}
