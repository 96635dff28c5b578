//! Power schedules on a busy machine, on a booted systemd: a logind block inhibitor (the
//! coordinator's while an experiment runs, or anyone's under `systemd-inhibit`) holds a `wait`
//! schedule back until it goes or `max_wait_minutes` pass, `skip` skips, `proceed` powers off
//! with the experiment's normal stop; cancelling ends a wait; the new fields are validated. The
//! cases that power the container off boot it again at their end.

use crate::coordinator::setup;
use crate::ensure_eq;
use crate::harness::{Group, Sandbox, holds_for, wait_for};
use crate::shutdown::{STATE_FILE, clear_schedules, listed_timers, send, state_snapshot};
use anyhow::{Context, Result, ensure};
use serde_json::Value;
use std::time::Duration;

pub const GROUP: Group = Group {
    name: "shutdown-busy",
    cases: &[
        (
            "policy_and_wake_fields_are_validated",
            policy_and_wake_fields_are_validated,
        ),
        ("cancel_and_delete_end_a_wait", cancel_and_delete_end_a_wait),
        (
            "a_cancel_once_the_power_off_has_begun_is_409_and_the_recurring_one_stays",
            a_cancel_once_the_power_off_has_begun_is_409_and_the_recurring_one_stays,
        ),
        (
            "skip_skips_and_a_recurring_schedule_stays",
            skip_skips_and_a_recurring_schedule_stays,
        ),
        (
            "wait_holds_the_power_off_while_an_experiment_runs",
            wait_holds_the_power_off_while_an_experiment_runs,
        ),
        (
            "wait_holds_the_power_off_while_a_foreign_inhibitor_is_held",
            wait_holds_the_power_off_while_a_foreign_inhibitor_is_held,
        ),
        (
            "the_maximum_wait_reached_it_proceeds",
            the_maximum_wait_reached_it_proceeds,
        ),
        (
            "proceed_powers_off_and_the_experiment_stops_gracefully",
            proceed_powers_off_and_the_experiment_stops_gracefully,
        ),
    ],
};

/// A backup that holds a block inhibitor for shutdown, as a user would run one.
const BACKUP: &str =
    "systemd-inhibit --what=shutdown --mode=block --who=backup --why=nightly sleep 600";

/// Starts the backup (a unit of its own, named afresh each time: a stopped transient unit is
/// unloaded a moment later) and waits until logind lists its inhibitor; its unit.
fn hold_backup(s: &Sandbox) -> Result<String> {
    let unit = format!("backup-{}.service", chrono::Utc::now().timestamp_micros());
    s.ok(&format!("systemd-run --unit={unit} --collect {BACKUP}"))?;
    wait_for("the backup's inhibitor", Duration::from_secs(10), || {
        Ok(s.ok("systemd-inhibit --list --no-pager")?
            .lines()
            .any(|l| l.starts_with("backup") && l.contains("block")))
    })?;
    Ok(unit)
}

/// Schedules a one-off power-off `secs` seconds ahead with `extra` fields; its entry.
fn power_off_in(s: &Sandbox, secs: i64, extra: &str) -> Result<Value> {
    let at = chrono::Local::now() + chrono::Duration::seconds(secs);
    let body = format!(r#"{{"at": "{}"{extra}}}"#, at.to_rfc3339());
    let r = send(s, "POST", "/shutdown/schedule", &body)?;
    Ok(r.expect(200)?["shutdown"].clone())
}

/// The listed entry with id `id`, if any.
fn entry(s: &Sandbox, id: &str) -> Result<Option<Value>> {
    let r = s.get(":5001/shutdown/schedules")?;
    Ok(r.expect(200)?["schedules"]
        .as_array()
        .context("schedules")?
        .iter()
        .find(|e| e["id"] == id)
        .cloned())
}

/// Waits until the schedule `id` is listed as waiting with `who` among those holding the
/// machine busy; that entry.
fn wait_until_waiting(s: &Sandbox, id: &str, who: &str) -> Result<Value> {
    let mut seen = Value::Null;
    wait_for("the schedule to wait", Duration::from_secs(20), || {
        seen = entry(s, id)?.unwrap_or(Value::Null);
        Ok(seen["state"] == "waiting"
            && seen["waiting"]["busy"]
                .as_array()
                .is_some_and(|b| b.iter().any(|i| i["who"] == who)))
    })
    .with_context(|| format!("last seen: {seen}"))?;
    Ok(seen)
}

/// The container powers off within `limit`.
fn powers_off_within(s: &Sandbox, limit: Duration) -> Result<()> {
    wait_for("the container to power off", limit, || Ok(s.is_down()))
}

/// Boots the container again after a power-off, and waits for the schedules' restore.
fn boot_again(s: &Sandbox) -> Result<()> {
    s.start()?;
    wait_for(
        "the restore service to finish",
        Duration::from_secs(30),
        || Ok(s.prop("homelab-shutdown-restore.service", "ActiveState")? == "active"),
    )
}

/// The previous boot's journal of `units` (globs).
fn previous_boot_journal(s: &Sandbox, units: &str) -> Result<String> {
    let args: Vec<String> = units.split(' ').map(|u| format!("-u '{u}'")).collect();
    s.ok(&format!(
        "journalctl -b -1 --no-pager -o cat {}",
        args.join(" ")
    ))
}

fn policy_and_wake_fields_are_validated(s: &Sandbox) -> Result<()> {
    clear_schedules(s)?;
    // The machine here has no RTC (the host has none), so a wake time is refused as such.
    let out = s.sh("test -e /sys/class/rtc/rtc0/wakealarm")?;
    ensure!(
        !out.status.success(),
        "this container has an RTC wake alarm: the no-RTC answer cannot be checked here"
    );
    let before = (state_snapshot(s)?, listed_timers(s)?);
    let past = (chrono::Local::now() - chrono::Duration::hours(1)).to_rfc3339();
    for (body, says) in [
        (r#"{"minutes": 5, "when_busy": "later"}"#, "when_busy"),
        (r#"{"minutes": 5, "when_busy": 1}"#, "when_busy"),
        (
            r#"{"minutes": 5, "max_wait_minutes": 0}"#,
            "max_wait_minutes",
        ),
        (
            r#"{"minutes": 5, "max_wait_minutes": 1441}"#,
            "max_wait_minutes",
        ),
        (
            r#"{"minutes": 5, "max_wait_minutes": "5"}"#,
            "max_wait_minutes",
        ),
        (
            r#"{"minutes": 5, "when_busy": "proceed", "max_wait_minutes": 5}"#,
            "applies only to",
        ),
        (
            &format!(r#"{{"minutes": 5, "wake_at": "{past}"}}"#),
            "wake_at",
        ),
        (r#"{"minutes": 5, "wake_at": "tomorrow"}"#, "RFC 3339"),
        (
            r#"{"calendar": "Mon 23:00", "wake_at": "2099-01-01T07:00:00Z"}"#,
            "one-off",
        ),
        (r#"{"minutes": 5, "wake_calendar": "07:00"}"#, "recurring"),
        (
            r#"{"calendar": "Mon 23:00", "wake_calendar": "not a time"}"#,
            "wake_calendar",
        ),
        (
            r#"{"minutes": 5, "wake_after_minutes": 60, "wake_at": "2099-01-01T07:00:00Z"}"#,
            "at most one",
        ),
        (
            r#"{"minutes": 5, "action": "reboot", "wake_after_minutes": 60}"#,
            "reboot",
        ),
        (
            r#"{"minutes": 5, "wake_after_minutes": 0}"#,
            "wake_after_minutes",
        ),
        (r#"{"minutes": 5, "wake": 60}"#, "unknown field"),
        (r#"{"minutes": 5, "wake_after_minutes": 60}"#, "no RTC"),
        (
            r#"{"calendar": "Mon..Fri 23:00", "wake_calendar": "Mon..Fri 07:00"}"#,
            "no RTC",
        ),
    ] {
        let r = send(s, "POST", "/shutdown/schedule", body)?;
        let message = r.expect_error(400).with_context(|| body.to_string())?;
        ensure!(
            message.contains(says),
            "{body}: {message:?} does not say {says:?}"
        );
        ensure!(
            message.contains("send"),
            "{body}: {message:?} does not say what to send"
        );
    }
    ensure_eq!(
        (state_snapshot(s)?, listed_timers(s)?),
        before,
        "a refused request changed something"
    );
    let system = s.get(":5001/shutdown/system")?;
    ensure_eq!(system.expect(200)?["wake"]["rtc"], false);
    // An old client: only minutes, every field it had, the default policy.
    let r = send(s, "POST", "/shutdown/schedule", r#"{"minutes": 5}"#)?;
    let body = r.expect(200)?;
    for field in [
        "status",
        "message",
        "shutdown",
        "scheduled_time",
        "minutes_from_now",
        "created_at",
        "unit",
        "id",
        "kind",
        "calendar",
        "action",
    ] {
        ensure!(body.get(field).is_some(), "no {field} in {body}");
    }
    ensure_eq!(body["minutes_from_now"], 5);
    ensure_eq!(body["state"], "pending");
    ensure_eq!(body["when_busy"], "wait");
    ensure_eq!(body["max_wait_minutes"], 360);
    clear_schedules(s)
}

/// Schedules a recurring power-off far ahead (beside the one-offs a case fires); its unit.
fn weekly_beside(s: &Sandbox) -> Result<String> {
    let r = send(
        s,
        "POST",
        "/shutdown/schedule",
        r#"{"calendar": "Mon 04:00"}"#,
    )?;
    Ok(r.expect(200)?["unit"].as_str().context("unit")?.to_string())
}

fn cancel_and_delete_end_a_wait(s: &Sandbox) -> Result<()> {
    clear_schedules(s)?;
    let weekly = weekly_beside(s)?;
    let backup = hold_backup(s)?;
    // "lost": the state file is gone while the gate waits; the gate alone lists it.
    for how in ["cancel", "delete", "lost"] {
        let e = power_off_in(s, 2, r#", "when_busy": "wait""#)?;
        let id = e["id"].as_str().context("id")?.to_string();
        let waiting = wait_until_waiting(s, &id, "backup")?;
        ensure_eq!(waiting["waiting"]["busy"][0]["why"], "nightly");
        let gate = e["unit"]
            .as_str()
            .context("unit")?
            .replace(".timer", ".service");
        ensure_eq!(s.active_state(&gate)?, "active", "the gate waits");
        let r = match how {
            "delete" => send(s, "DELETE", &format!("/shutdown/schedules/{id}"), "")?,
            "lost" => {
                s.ok(&format!("rm {STATE_FILE}"))?;
                let listed = entry(s, &id)?.context("a gate without an entry is not listed")?;
                ensure_eq!(listed["state"], "deciding", "{listed}");
                send(s, "POST", "/shutdown/cancel", "")?
            }
            _ => send(s, "POST", "/shutdown/cancel", "")?,
        };
        let cancelled = &r.expect(200)?["cancelled_shutdown"];
        ensure_eq!(
            cancelled["id"],
            id.as_str(),
            "{how}: another schedule was cancelled"
        );
        ensure_eq!(
            cancelled["state"],
            if how == "lost" { "deciding" } else { "waiting" }
        );
        wait_for("the gate to stop", Duration::from_secs(10), || {
            Ok(s.active_state(&gate)? != "active")
        })?;
        ensure!(entry(s, &id)?.is_none(), "{how}: still listed");
        ensure_eq!(listed_timers(s)?, vec![weekly.clone()], "{how}");
    }
    // The wait is over: the backup ending powers nothing off.
    s.ok(&format!("systemctl stop {backup}"))?;
    holds_for(
        "the machine to stay up after the backup",
        Duration::from_secs(6),
        || Ok(!s.is_down()),
    )?;
    ensure_eq!(listed_timers(s)?, vec![weekly], "a timer is left");
    clear_schedules(s)
}

/// A unit whose stop takes 30 s, ordered so that the shutdown service, its socket, D-Bus and
/// polkit stop only after it: a power-off stays under way that long with the API up.
const SLOW_STOP: &str = "[Unit]
After=shutdown-service.service shutdown-service.socket dbus.service polkit.service
[Service]
ExecStart=/bin/sleep infinity
ExecStop=/bin/sleep 30
TimeoutStopSec=60
";

fn a_cancel_once_the_power_off_has_begun_is_409_and_the_recurring_one_stays(
    s: &Sandbox,
) -> Result<()> {
    clear_schedules(s)?;
    let weekly = weekly_beside(s)?;
    s.ok(&format!(
        "cat > /run/systemd/system/slow-stop.service <<'EOF'\n{SLOW_STOP}EOF\nsystemctl daemon-reload && systemctl start slow-stop.service"
    ))?;
    let e = power_off_in(s, 2, r#", "when_busy": "proceed""#)?;
    let id = e["id"].as_str().context("id")?.to_string();
    wait_for("the power-off to begin", Duration::from_secs(20), || {
        Ok(s.ok("systemctl list-jobs --no-legend --no-pager")?
            .contains("poweroff.target"))
    })?;
    // Past the point of no return: 409, whichever way the cancel is asked, and nothing else
    // is taken instead.
    for (method, path) in [
        ("POST", "/shutdown/cancel".to_string()),
        ("DELETE", format!("/shutdown/schedules/{id}")),
    ] {
        let r = send(s, method, &path, "")?;
        let message = r
            .expect_error(409)
            .with_context(|| format!("{method} {path}"))?;
        ensure!(
            message.contains("already powering off"),
            "{method} {path}: {message}"
        );
    }
    powers_off_within(s, Duration::from_secs(90))?;
    boot_again(s)?;
    // The recurring schedule is back; the one-off did its power-off.
    ensure_eq!(listed_timers(s)?, vec![weekly]);
    let log = previous_boot_journal(s, "shutdown-service.service")?;
    ensure!(
        log.contains("a power action has begun"),
        "the service's journal does not say why it refused: {log}"
    );
    clear_schedules(s)
}

fn skip_skips_and_a_recurring_schedule_stays(s: &Sandbox) -> Result<()> {
    clear_schedules(s)?;
    let backup = hold_backup(s)?;
    let fire = chrono::Local::now() + chrono::Duration::seconds(4);
    let body = format!(
        r#"{{"calendar": "{}", "when_busy": "skip"}}"#,
        fire.format("%H:%M:%S")
    );
    let r = send(s, "POST", "/shutdown/schedule", &body)?;
    let id = r.expect(200)?["id"].as_str().context("id")?.to_string();
    let unit = r.json["unit"].as_str().context("unit")?.to_string();
    let gate = unit.replace(".timer", ".service");
    wait_for("the skip in the journal", Duration::from_secs(20), || {
        Ok(s.ok(&format!("journalctl -u '{gate}' --no-pager -o cat"))?
            .contains("skipping the poweroff"))
    })?;
    let log = s.ok(&format!("journalctl -u '{gate}' --no-pager -o cat"))?;
    ensure!(
        log.contains("backup (nightly)"),
        "the skip does not say who: {log}"
    );
    holds_for("the machine to stay up", Duration::from_secs(4), || {
        Ok(!s.is_down())
    })?;
    wait_for(
        "the schedule to be pending again",
        Duration::from_secs(10),
        || Ok(entry(s, &id)?.is_some_and(|e| e["state"] == "pending")),
    )?;
    let e = entry(s, &id)?.context("the recurring schedule is gone")?;
    ensure!(
        e["minutes_from_now"].as_u64().is_some_and(|m| m > 1400),
        "its next elapse is not tomorrow: {e}"
    );
    ensure_eq!(listed_timers(s)?, vec![unit]);
    s.ok(&format!("systemctl stop {backup}"))?;
    clear_schedules(s)
}

/// Starts experiment `w1` and waits until the coordinator holds its block inhibitor for it.
pub(crate) fn run_an_experiment(s: &Sandbox) -> Result<()> {
    setup(s, "MAX_CONCURRENT_EXPERIMENTS=4", &[("w1", "128M")])?;
    s.ok("systemctl start brain-experiment@w1")?;
    wait_for(
        "the coordinator's block inhibitor naming w1",
        Duration::from_secs(15),
        || {
            Ok(s.ok("systemd-inhibit --list --no-pager")?.lines().any(|l| {
                l.contains("brain-experiment-coordinator")
                    && l.contains("block")
                    && l.contains("experiments running: w1")
            }))
        },
    )
}

fn wait_holds_the_power_off_while_an_experiment_runs(s: &Sandbox) -> Result<()> {
    clear_schedules(s)?;
    run_an_experiment(s)?;
    let e = power_off_in(s, 3, r#", "when_busy": "wait""#)?;
    let id = e["id"].as_str().context("id")?.to_string();
    let waiting = wait_until_waiting(s, &id, "brain-experiment-coordinator")?;
    ensure!(
        waiting["waiting"]["busy"][0]["why"]
            .as_str()
            .is_some_and(|w| w.contains("w1")),
        "the holder does not name w1: {waiting}"
    );
    holds_for(
        "no power-off while the experiment runs",
        Duration::from_secs(8),
        || Ok(!s.is_down()),
    )?;
    s.ok("systemctl stop brain-experiment@w1")?;
    powers_off_within(s, Duration::from_secs(30))?;
    boot_again(s)?;
    let log = previous_boot_journal(s, "homelab-shutdown@* homelab-power-action@*")?;
    ensure!(
        log.contains("waits while the machine is busy") && log.contains("fired: powering off now"),
        "the journal does not show the wait and the power-off: {log}"
    );
    Ok(())
}

fn wait_holds_the_power_off_while_a_foreign_inhibitor_is_held(s: &Sandbox) -> Result<()> {
    clear_schedules(s)?;
    let backup = hold_backup(s)?;
    let e = power_off_in(s, 2, r#", "when_busy": "wait""#)?;
    let id = e["id"].as_str().context("id")?.to_string();
    wait_until_waiting(s, &id, "backup")?;
    holds_for(
        "no power-off while the backup runs",
        Duration::from_secs(6),
        || Ok(!s.is_down()),
    )?;
    s.ok(&format!("systemctl stop {backup}"))?;
    powers_off_within(s, Duration::from_secs(30))?;
    boot_again(s)
}

fn the_maximum_wait_reached_it_proceeds(s: &Sandbox) -> Result<()> {
    clear_schedules(s)?;
    // Held until the power-off.
    let _backup = hold_backup(s)?;
    let e = power_off_in(s, 2, r#", "when_busy": "wait", "max_wait_minutes": 1"#)?;
    let id = e["id"].as_str().context("id")?.to_string();
    let waiting = wait_until_waiting(s, &id, "backup")?;
    let since = chrono::DateTime::parse_from_rfc3339(
        waiting["waiting"]["since"].as_str().context("since")?,
    )?;
    let until = chrono::DateTime::parse_from_rfc3339(
        waiting["waiting"]["until"].as_str().context("until")?,
    )?;
    ensure_eq!((until - since).num_seconds(), 60);
    powers_off_within(s, Duration::from_secs(100))?;
    let waited = chrono::Local::now().fixed_offset() - since;
    ensure!(
        waited >= chrono::Duration::seconds(58),
        "powered off after {}s, before the maximum wait",
        waited.num_seconds()
    );
    boot_again(s)?;
    let log = previous_boot_journal(s, "homelab-shutdown@*")?;
    ensure!(
        log.contains("waited the maximum of 1 minutes"),
        "the journal does not say it proceeded after the maximum wait: {log}"
    );
    Ok(())
}

fn proceed_powers_off_and_the_experiment_stops_gracefully(s: &Sandbox) -> Result<()> {
    clear_schedules(s)?;
    setup(s, "MAX_CONCURRENT_EXPERIMENTS=4", &[("p1", "128M")])?;
    s.ok("systemctl start brain-experiment@p1")?;
    wait_for(
        "the coordinator's block inhibitor",
        Duration::from_secs(15),
        || {
            Ok(s.ok("systemd-inhibit --list --no-pager")?
                .contains("experiments running: p1"))
        },
    )?;
    power_off_in(s, 3, r#", "when_busy": "proceed""#)?;
    powers_off_within(s, Duration::from_secs(40))?;
    boot_again(s)?;
    let gate = previous_boot_journal(s, "homelab-shutdown@*")?;
    ensure!(
        gate.contains("proceeding, as its policy is \"proceed\""),
        "the journal does not say it proceeded although busy: {gate}"
    );
    let experiment = previous_boot_journal(s, "brain-experiment@p1.service")?;
    ensure!(
        experiment.contains("Stopped") || experiment.contains("Deactivated successfully"),
        "the experiment's journal shows no stop: {experiment}"
    );
    ensure!(
        !experiment.contains("Killing") && !experiment.contains("timed out"),
        "the experiment was killed, not stopped: {experiment}"
    );
    // Nothing of the state file's is left waiting after the boot.
    let state = s.ok(&format!("cat {STATE_FILE} 2>/dev/null || true"))?;
    ensure!(!state.contains("\"waiting\""), "{state}");
    Ok(())
}
