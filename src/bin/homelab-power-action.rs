//! homelab-power-action: what a fired schedule has root do, through
//! `homelab-power-action@INSTANCE.service`, started by the schedule's gate (user abc, allowed by
//! polkit for exactly these instances). The instance is all it is told, and all it parses:
//! `poweroff`, `reboot`, `poweroff-wake-EPOCH` (arm the RTC alarm, then power off) or
//! `clear-wake-EPOCH` (clear the RTC alarm if it is EPOCH). No file of abc's is read. It powers
//! off or reboots by starting `poweroff.target` or `reboot.target`, as `systemctl poweroff` does:
//! the gate has applied the schedule's policy, so no inhibitor stops it.

use clap::Parser;
use homelab::shutdown::wake;
use homelab::{cli, log_info, log_warn};
use std::process::ExitCode;

/// What root is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Task {
    Poweroff { wake_at: Option<i64> },
    Reboot,
    ClearWake(i64),
}

/// Parses an instance name: nothing but the four forms, the numbers 1 to 12 digits.
fn parse(instance: &str) -> Option<Task> {
    let epoch = |digits: &str| -> Option<i64> {
        if digits.is_empty() || digits.len() > 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().filter(|t| *t > 0)
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
            Task::ClearWake(at) => clear(at),
            Task::Poweroff { wake_at } => {
                if let Some(at) = wake_at {
                    // A machine that was to come back is not powered off when it cannot.
                    wake::arm(at).map_err(|e| {
                        anyhow::anyhow!(
                            "cannot set the wake alarm {} to {at}: {e}; not powering off",
                            wake::WAKEALARM
                        )
                    })?;
                    log_info!(
                        "wake alarm set for {at} ({})",
                        homelab::time::epoch_rfc3339(at)
                    );
                }
                log_warn!("{} fired: powering off now", own_unit());
                record("poweroff");
                homelab::systemd::dbus::Bus::system().power_off()?;
                Ok(())
            }
            Task::Reboot => {
                log_warn!("{} fired: rebooting now", own_unit());
                record("reboot");
                homelab::systemd::dbus::Bus::system().reboot()?;
                Ok(())
            }
        }
    })
}

/// Clears the wake alarm if it is still the one a cancelled schedule set.
fn clear(at: i64) -> anyhow::Result<()> {
    match wake::clear_if(at) {
        Ok(Some(held)) if held == at => log_info!(
            "cleared the wake alarm {at} ({})",
            homelab::time::epoch_rfc3339(at)
        ),
        Ok(Some(held)) => log_info!(
            "left the wake alarm alone: it is {held} ({}), not {at}",
            homelab::time::epoch_rfc3339(held)
        ),
        Ok(None) => log_info!("no wake alarm is set: nothing to clear for {at}"),
        Err(e) => anyhow::bail!("cannot clear the wake alarm {}: {e}", wake::WAKEALARM),
    }
    Ok(())
}

/// The unit we run in (from our cgroup), for the log line; "a schedule" when unknown.
fn own_unit() -> String {
    homelab::systemd::procfs::unit_of_pid(std::process::id()).unwrap_or_else(|| "a schedule".into())
}

/// Records the action and its time for the shutdown service's `/metrics`
/// (`homelab_shutdown_last_power_action_timestamp_seconds`); a failure is logged, never a reason
/// not to act.
fn record(name: &str) {
    let now = chrono::Utc::now().timestamp();
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
            "Poweroff",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
