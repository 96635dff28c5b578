//! `GET /metrics` of the shutdown service: pending schedules, the last power action, requests.

use super::schedule::{Action, Kind, Pending};
use crate::metrics::{self, Writer};
use std::path::Path;

/// Where `homelab-power-action` (root, `StateDirectory=homelab-power`) records what it last did:
/// `ACTION EPOCH_SECONDS`. Root writes it, the service (`abc`) only reads it.
pub const LAST_ACTION_FILE: &str = "/var/lib/homelab-power/last-action";

/// The last power action and when it was taken, from [`LAST_ACTION_FILE`]'s text; `None` when
/// it is absent or not of that shape.
pub fn parse_last_action(text: &str) -> Option<(Action, i64)> {
    let mut words = text.split_whitespace();
    let action = match words.next()? {
        "poweroff" => Action::Poweroff,
        "reboot" => Action::Reboot,
        _ => return None,
    };
    let when = words.next()?.parse().ok()?;
    words.next().is_none().then_some((action, when))
}

/// Reads [`LAST_ACTION_FILE`] (at most a few bytes, no symlink followed).
pub fn last_action(path: &Path) -> Option<(Action, i64)> {
    let bytes = crate::statefile::read_regular(path, 256).ok()?;
    parse_last_action(std::str::from_utf8(&bytes).ok()?)
}

/// The metrics page.
pub fn page(pending: &[Pending], last: Option<(Action, i64)>) -> String {
    let mut w = Writer::new();
    let mut f = w.family(
        "shutdown_schedules",
        "Pending shutdown schedules (systemd timers), by kind and action.",
        metrics::Kind::Gauge,
    );
    for kind in [Kind::OneOff, Kind::Recurring] {
        for action in [Action::Poweroff, Action::Reboot] {
            let n = pending
                .iter()
                .filter(|p| p.kind() == kind && p.action == action)
                .count();
            f.sample(
                &[("kind", kind.as_str()), ("action", action.as_str())],
                n as f64,
            );
        }
    }
    let mut f = w.family(
        "shutdown_schedule_next_elapse_timestamp_seconds",
        "Next elapse of each pending schedule, seconds since the epoch.",
        metrics::Kind::Gauge,
    );
    for p in pending {
        f.sample(
            &[
                ("id", &p.id()),
                ("kind", p.kind().as_str()),
                ("action", p.action.as_str()),
                ("calendar", &p.calendar),
            ],
            (p.next_elapse_usec / 1_000_000) as f64,
        );
    }
    let mut f = w.family(
        "shutdown_schedules_waiting",
        "Schedules that fired and wait for the machine to be idle (a logind block inhibitor is held).",
        metrics::Kind::Gauge,
    );
    f.sample(
        &[],
        pending.iter().filter(|p| p.waiting.is_some()).count() as f64,
    );
    let mut f = w.family(
        "shutdown_last_power_action_timestamp_seconds",
        "When a schedule last powered the machine off or rebooted it, seconds since the epoch, by action.",
        metrics::Kind::Gauge,
    );
    if let Some((action, when)) = last {
        f.sample(&[("action", action.as_str())], when as f64);
    }
    metrics::write_http_requests(&mut w);
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_action_file_is_read_strictly() {
        assert_eq!(
            parse_last_action("reboot 1700000000\n"),
            Some((Action::Reboot, 1_700_000_000))
        );
        assert_eq!(parse_last_action("poweroff 5"), Some((Action::Poweroff, 5)));
        for bad in ["", "halt 5", "reboot", "reboot x", "reboot 5 6"] {
            assert_eq!(parse_last_action(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn every_kind_and_action_is_counted_and_each_schedule_listed() {
        let pending = vec![Pending {
            unit: r"homelab-reboot@Mon..Fri\x2023:00.timer".into(),
            calendar: "Mon..Fri 23:00".into(),
            action: Action::Reboot,
            next_elapse_usec: 1_800_000_000_000_000,
            ..Pending::default()
        }];
        let page = page(&pending, Some((Action::Poweroff, 42)));
        assert!(
            page.contains("homelab_shutdown_schedules{kind=\"recurring\",action=\"reboot\"} 1\n")
        );
        assert!(
            page.contains("homelab_shutdown_schedules{kind=\"one-off\",action=\"poweroff\"} 0\n")
        );
        assert!(page.contains("action=\"reboot\",calendar=\"Mon..Fri 23:00\"} 1800000000\n"));
        assert!(
            page.contains("homelab_shutdown_schedules_waiting 0\n"),
            "{page}"
        );
        assert!(page.contains(
            "homelab_shutdown_last_power_action_timestamp_seconds{action=\"poweroff\"} 42\n"
        ));
        assert!(page.contains("# TYPE homelab_http_requests_total counter\n"));
    }
}
