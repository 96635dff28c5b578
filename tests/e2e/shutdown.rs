//! Issue 3: scheduled shutdowns as systemd timers, on a booted systemd.

use crate::ensure_eq;
use crate::harness::{Group, Reply, Sandbox, wait_for};
use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use std::time::Duration;

pub const GROUP: Group = Group {
    name: "shutdown",
    cases: &[
        (
            "api_token_is_generated_root_only",
            api_token_is_generated_root_only,
        ),
        ("original_client_flow", original_client_flow),
        ("mutations_need_the_token", mutations_need_the_token),
        (
            "bad_inputs_are_400_and_change_nothing",
            bad_inputs_are_400_and_change_nothing,
        ),
        (
            "one_pending_one_off_unless_replaced",
            one_pending_one_off_unless_replaced,
        ),
        (
            "concurrent_requests_create_one_shutdown",
            concurrent_requests_create_one_shutdown,
        ),
        (
            "recurring_schedules_listed_and_deleted_by_id",
            recurring_schedules_listed_and_deleted_by_id,
        ),
        (
            "a_timer_systemd_no_longer_has_is_not_pending",
            a_timer_systemd_no_longer_has_is_not_pending,
        ),
        (
            "polkit_grants_abc_exactly_the_shutdown_timers",
            polkit_grants_abc_exactly_the_shutdown_timers,
        ),
        ("system_report", system_report),
        (
            "corrupt_state_file_is_moved_aside",
            corrupt_state_file_is_moved_aside,
        ),
        (
            "config_file_default_minutes_and_auth_switch",
            config_file_default_minutes_and_auth_switch,
        ),
    ],
};

pub const POWER_GROUP: Group = Group {
    name: "shutdown-power",
    cases: &[(
        "a_schedule_powers_the_machine_off",
        a_schedule_powers_the_machine_off,
    )],
};

pub const REBOOT_GROUP: Group = Group {
    name: "shutdown-reboot",
    cases: &[(
        "recurring_survive_reboot_passed_one_offs_do_not_fire",
        recurring_survive_reboot_passed_one_offs_do_not_fire,
    )],
};

const STATE_FILE: &str = "/var/lib/shutdown-service/schedules.json";

fn token(s: &Sandbox) -> Result<String> {
    Ok(s.ok("cat /etc/homelab/api-token")?.trim().to_string())
}

/// POST/DELETE with the right token and a JSON body.
fn send(s: &Sandbox, method: &str, path: &str, body: &str) -> Result<Reply> {
    let auth = format!("Authorization: Bearer {}", token(s)?);
    s.curl(
        method,
        &format!(":5001{path}"),
        &[
            "-H",
            &auth,
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ],
    )
}

/// The pending timers as `systemctl list-timers` shows them.
fn listed_timers(s: &Sandbox) -> Result<Vec<String>> {
    let out = s.ok("systemctl list-timers --no-legend --plain 'homelab-shutdown@*'")?;
    Ok(out
        .split_whitespace()
        .filter(|w| w.starts_with("homelab-shutdown@") && w.ends_with(".timer"))
        .map(str::to_string)
        .collect())
}

fn state_snapshot(s: &Sandbox) -> Result<String> {
    Ok(s.ok(&format!("cat {STATE_FILE} 2>/dev/null || echo missing"))?)
}

fn clear_schedules(s: &Sandbox) -> Result<()> {
    s.ok("systemctl stop 'homelab-shutdown@*.timer'")?;
    ensure!(listed_timers(s)?.is_empty(), "timers left after clearing");
    Ok(())
}

fn epoch_now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn api_token_is_generated_root_only(s: &Sandbox) -> Result<()> {
    let st = s.ok("stat -c '%U %G %a' /etc/homelab/api-token")?;
    ensure_eq!(st.trim(), "root root 600");
    ensure!(token(s)?.len() >= 32, "token too short");
    // The service got it as a credential, not by reading /etc (it cannot).
    ensure!(
        !s.as_user("abc", "cat /etc/homelab/api-token")?
            .status
            .success(),
        "abc can read the token file"
    );
    Ok(())
}

fn original_client_flow(s: &Sandbox) -> Result<()> {
    clear_schedules(s)?;
    let index = s.get(":5001/")?;
    let json = index.expect(200)?;
    ensure_eq!(json["service"], "Shutdown Service");
    ensure!(
        json["endpoints"].is_object() && json["config"].is_object(),
        "GET / lacks endpoints/config: {}",
        index.body
    );

    let status = s.get(":5001/shutdown/status")?;
    ensure_eq!(status.expect(200)?["has_shutdown"], false);
    ensure!(status.json["next_shutdown"].is_null(), "{}", status.body);

    let before = epoch_now();
    let sched = send(s, "POST", "/shutdown/schedule", r#"{"minutes":2}"#)?;
    let json = sched.expect(200)?;
    ensure_eq!(json["status"], "success");
    let when = json["scheduled_time"]
        .as_str()
        .context("no scheduled_time")?;
    ensure_eq!(json["message"], format!("Shutdown scheduled for {when}"));
    let t = chrono::DateTime::parse_from_rfc3339(when)
        .context("scheduled_time is not RFC 3339 with a zone")?;
    ensure!(
        (t.timestamp() - before - 120).abs() <= 2,
        "scheduled {when}, expected two minutes from now"
    );
    ensure_eq!(json["minutes_from_now"], 2);
    ensure!(json["created_at"].is_string(), "{}", sched.body);
    let unit = json["unit"].as_str().context("no unit")?.to_string();
    ensure_eq!(
        listed_timers(s)?,
        vec![unit.clone()],
        "list-timers after scheduling"
    );
    // systemd's own idea of the next elapse agrees.
    let next = s.prop(&unit, "NextElapseUSecRealtime")?;
    ensure!(!next.is_empty() && next != "0", "timer has no next elapse");

    let next = s.get(":5001/shutdown/next")?;
    ensure_eq!(next.expect(200)?["shutdown"]["scheduled_time"], when);
    let status = s.get(":5001/shutdown/status")?;
    ensure_eq!(status.expect(200)?["has_shutdown"], true);
    ensure_eq!(status.json["next_shutdown"]["scheduled_time"], when);
    ensure_eq!(listed_timers(s)?, vec![unit.clone()]);

    let cancel = send(s, "POST", "/shutdown/cancel", "")?;
    let json = cancel.expect(200)?;
    ensure_eq!(json["message"], "Shutdown cancelled successfully");
    ensure_eq!(json["cancelled_shutdown"]["scheduled_time"], when);
    let status = s.get(":5001/shutdown/status")?;
    ensure_eq!(status.expect(200)?["has_shutdown"], false);
    ensure!(listed_timers(s)?.is_empty(), "list-timers after cancel");

    let next = s.get(":5001/shutdown/next")?;
    ensure_eq!(next.expect(200)?["message"], "No shutdown scheduled");
    ensure!(
        send(s, "POST", "/shutdown/cancel", "")?
            .expect_error(404)?
            .contains("No shutdown")
    );
    Ok(())
}

fn mutations_need_the_token(s: &Sandbox) -> Result<()> {
    clear_schedules(s)?;
    let state = state_snapshot(s)?;
    let body = [
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        r#"{"minutes":5}"#,
    ];
    for auth in [
        None,
        Some("Authorization: Bearer wrong-token-wrong-token"),
        Some("Authorization: Basic YWJjOmFiYw=="),
    ] {
        let mut args: Vec<&str> = body.to_vec();
        if let Some(a) = auth {
            args.extend(["-H", a]);
        }
        s.curl("POST", ":5001/shutdown/schedule", &args)?
            .expect_error(401)?;
        s.curl("POST", ":5001/shutdown/cancel", &args)?
            .expect_error(401)?;
        s.curl("DELETE", ":5001/shutdown/schedules/0123456789abcdef", &args)?
            .expect_error(401)?;
    }
    ensure!(
        listed_timers(s)?.is_empty(),
        "a timer was created without a token"
    );
    ensure_eq!(state_snapshot(s)?, state, "state file changed");
    // GET stays open.
    s.get(":5001/shutdown/status")?.expect(200)?;
    Ok(())
}

fn bad_inputs_are_400_and_change_nothing(s: &Sandbox) -> Result<()> {
    clear_schedules(s)?;
    send(
        s,
        "POST",
        "/shutdown/schedule",
        r#"{"calendar":"Sat 04:00"}"#,
    )?
    .expect(200)?;
    let timers = listed_timers(s)?;
    let state = state_snapshot(s)?;
    let past = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let bodies = [
        "{",
        "[1,2]",
        "\"minutes\"",
        r#"{"minutes": -5}"#,
        r#"{"minutes": "ten"}"#,
        r#"{"minutes": 0}"#,
        r#"{"minutes": 2.5}"#,
        r#"{"minutes": true}"#,
        &format!(r#"{{"at": "{past}"}}"#),
        r#"{"at": "tomorrow"}"#,
        r#"{"calendar": "not a calendar"}"#,
        r#"{"calendar": "2001-01-01 00:00"}"#,
        r#"{"calendar": "Mon\n23:00"}"#,
        r#"{"calendar": "*"}"#,
        r#"{"calendar": "../../etc"}"#,
        r#"{"minutes": 5, "unknown": 1}"#,
        r#"{"minutes": 5, "action": "halt"}"#,
        r#"{"minutes": 5, "replace": "yes"}"#,
    ];
    for body in bodies {
        let msg = send(s, "POST", "/shutdown/schedule", body)
            .and_then(|r| r.expect_error(400))
            .with_context(|| format!("body {body}"))?;
        ensure!(msg.len() > 20, "unhelpful message for {body}: {msg}");
    }
    let huge = format!(r#"{{"calendar": "{}"}}"#, "x".repeat(10 * 1024));
    send(s, "POST", "/shutdown/schedule", &huge)?.expect_error(400)?;
    let mega = std::env::temp_dir().join(format!("homelab-e2e-1mb-{}", std::process::id()));
    std::fs::write(
        &mega,
        format!(r#"{{"minutes": 5, "pad": "{}"}}"#, "x".repeat(1024 * 1024)),
    )?;
    let r = send(
        s,
        "POST",
        "/shutdown/schedule",
        &format!("@{}", mega.display()),
    );
    let _ = std::fs::remove_file(&mega);
    r?.expect_error(413)?;
    for id in [
        "..%2F..%2Fx",
        "a*",
        "x.service",
        "%0a",
        &"a".repeat(10_240),
        "0123456789ABCDEF",
    ] {
        send(s, "DELETE", &format!("/shutdown/schedules/{id}"), "")?
            .expect_error(400)
            .with_context(|| format!("id {id:.40}"))?;
    }
    send(s, "DELETE", "/shutdown/schedules/0123456789abcdef", "")?.expect_error(404)?;
    send(s, "PUT", "/shutdown/schedule", "{}")?.expect_error(405)?;
    s.get(":5001/shutdown/schedule")?.expect_error(405)?;
    s.get(":5001/shutdown/nope")?.expect_error(404)?;
    ensure_eq!(listed_timers(s)?, timers, "timers changed by bad requests");
    ensure_eq!(
        state_snapshot(s)?,
        state,
        "state file changed by bad requests"
    );
    clear_schedules(s)
}

fn one_pending_one_off_unless_replaced(s: &Sandbox) -> Result<()> {
    clear_schedules(s)?;
    let first = send(s, "POST", "/shutdown/schedule", r#"{"minutes":10}"#)?;
    let first_unit = first.expect(200)?["unit"]
        .as_str()
        .context("unit")?
        .to_string();
    let conflict = send(s, "POST", "/shutdown/schedule", r#"{"minutes":20}"#)?;
    conflict.expect_error(409)?;
    ensure_eq!(conflict.json["existing"]["unit"], first_unit.as_str());
    ensure_eq!(listed_timers(s)?, vec![first_unit.clone()]);
    // A recurring schedule is not a one-off: it may stand beside it.
    send(
        s,
        "POST",
        "/shutdown/schedule",
        r#"{"calendar":"Sun 05:00"}"#,
    )?
    .expect(200)?;
    let replaced = send(
        s,
        "POST",
        "/shutdown/schedule",
        r#"{"minutes":20,"replace":true,"action":"reboot"}"#,
    )?;
    let json = replaced.expect(200)?;
    ensure_eq!(json["minutes_from_now"], 20);
    ensure_eq!(json["action"], "reboot");
    let new_unit = json["unit"].as_str().context("unit")?.to_string();
    let timers = listed_timers(s)?;
    ensure!(
        timers.contains(&new_unit) && !timers.contains(&first_unit) && timers.len() == 2,
        "timers: {timers:?}"
    );
    let state: Value = serde_json::from_str(&state_snapshot(s)?)?;
    ensure_eq!(state["schedules"][&new_unit]["action"], "reboot");
    ensure!(
        state["schedules"].get(&first_unit).is_none(),
        "replaced schedule still in the state file"
    );
    clear_schedules(s)
}

fn concurrent_requests_create_one_shutdown(s: &Sandbox) -> Result<()> {
    clear_schedules(s)?;
    let auth = format!("Authorization: Bearer {}", token(s)?);
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let auth = auth.clone();
                scope.spawn(move || {
                    let body = format!(r#"{{"minutes": {}}}"#, 5 + i);
                    s.curl(
                        "POST",
                        ":5001/shutdown/schedule",
                        &["-H", &auth, "--data-binary", &body],
                    )
                    .map(|r| r.status)
                    .unwrap_or(0)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).collect()
    });
    let ok = statuses.iter().filter(|&&c| c == 200).count();
    let conflicts = statuses.iter().filter(|&&c| c == 409).count();
    ensure!(ok == 1 && conflicts == 19, "statuses: {statuses:?}");
    ensure_eq!(listed_timers(s)?.len(), 1, "pending one-off shutdowns");
    clear_schedules(s)
}

fn recurring_schedules_listed_and_deleted_by_id(s: &Sandbox) -> Result<()> {
    clear_schedules(s)?;
    let r = send(
        s,
        "POST",
        "/shutdown/schedule",
        r#"{"calendar":"Mon..Fri 23:00"}"#,
    )?;
    let json = r.expect(200)?;
    ensure_eq!(json["kind"], "recurring");
    ensure_eq!(json["calendar"], "Mon..Fri 23:00");
    ensure_eq!(
        json["unit"],
        r"homelab-shutdown@Mon..Fri\x2023:00.timer",
        "escaped as systemd-escape does"
    );
    let escaped = s.ok("systemd-escape --template=homelab-shutdown@.timer 'Mon..Fri 23:00'")?;
    ensure_eq!(json["unit"], escaped.trim());
    send(s, "POST", "/shutdown/schedule", r#"{"minutes":30}"#)?.expect(200)?;
    let list = s.get(":5001/shutdown/schedules")?;
    let schedules = list.expect(200)?["schedules"]
        .as_array()
        .context("schedules")?
        .clone();
    ensure_eq!(schedules.len(), 2);
    // Soonest first, each with the documented fields.
    let recurring = schedules
        .iter()
        .find(|e| e["kind"] == "recurring")
        .context("recurring entry")?;
    for field in [
        "id",
        "kind",
        "calendar",
        "next_elapse",
        "created_at",
        "scheduled_time",
        "minutes_from_now",
    ] {
        ensure!(
            !recurring[field].is_null(),
            "entry lacks {field}: {recurring}"
        );
    }
    let systemd_next = s.prop(
        recurring["unit"].as_str().unwrap_or_default(),
        "NextElapseUSecRealtime",
    )?;
    let listed = chrono::DateTime::parse_from_rfc3339(
        recurring["next_elapse"].as_str().unwrap_or_default(),
    )?;
    let sysd = s.ok(&format!("date -d '{systemd_next}' +%s"))?;
    ensure_eq!(
        listed.timestamp().to_string(),
        sysd.trim(),
        "next_elapse vs systemd's NextElapseUSecRealtime"
    );
    let id = recurring["id"].as_str().context("id")?;
    let del = send(s, "DELETE", &format!("/shutdown/schedules/{id}"), "")?;
    ensure_eq!(del.expect(200)?["cancelled_shutdown"]["kind"], "recurring");
    let timers = listed_timers(s)?;
    ensure!(
        timers.len() == 1 && !timers.iter().any(|t| t.contains("Mon")),
        "timers after delete: {timers:?}"
    );
    clear_schedules(s)
}

fn a_timer_systemd_no_longer_has_is_not_pending(s: &Sandbox) -> Result<()> {
    clear_schedules(s)?;
    let unit = send(s, "POST", "/shutdown/schedule", r#"{"minutes":15}"#)?.expect(200)?["unit"]
        .as_str()
        .context("unit")?
        .to_string();
    // An admin stops it behind the service's back.
    s.ok(&format!("systemctl stop '{unit}'"))?;
    ensure_eq!(
        s.get(":5001/shutdown/status")?.expect(200)?["has_shutdown"],
        false
    );
    let state: Value = serde_json::from_str(&state_snapshot(s)?)?;
    ensure!(
        state["schedules"].get(&unit).is_none(),
        "stale entry kept: {state}"
    );
    Ok(())
}

fn polkit_grants_abc_exactly_the_shutdown_timers(s: &Sandbox) -> Result<()> {
    clear_schedules(s)?;
    s.ok("id tester >/dev/null 2>&1 || useradd -m tester")?;
    let future = epoch_now() + 3600;
    let timer = s
        .ok(&format!(
            "systemd-escape --template=homelab-shutdown@.timer @{future}"
        ))?
        .trim()
        .to_string();
    let denied = |out: std::process::Output, what: &str| -> Result<()> {
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "{what} was allowed");
        ensure!(
            err.contains("Interactive authentication required") || err.contains("Access denied"),
            "{what} failed for another reason: {err}"
        );
        Ok(())
    };
    let out = s.as_user("abc", &format!("systemctl start '{timer}'"))?;
    ensure!(
        out.status.success(),
        "abc could not start {timer}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure_eq!(s.active_state(&timer)?, "active");
    let out = s.as_user("abc", &format!("systemctl stop '{timer}'"))?;
    ensure!(
        out.status.success(),
        "abc could not stop {timer}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for unit in [
        "systemd-tmpfiles-clean.service",
        "poweroff.target",
        "homelab-poweroff@x.service",
        "homelab-shutdown.timer",
        "sshd.service",
    ] {
        denied(
            s.as_user("abc", &format!("systemctl start {unit}"))?,
            &format!("abc starting {unit}"),
        )?;
    }
    denied(
        s.as_user("abc", &format!("systemctl restart '{timer}'"))?,
        "abc restarting a timer",
    )?;
    denied(
        s.as_user("abc", "systemctl stop shutdown-service.socket")?,
        "abc stopping a socket",
    )?;
    denied(
        s.as_user("tester", &format!("systemctl start '{timer}'"))?,
        "tester starting a shutdown timer",
    )?;
    denied(
        s.as_user("tester", "systemctl start systemd-tmpfiles-clean.service")?,
        "tester starting another unit",
    )?;
    ensure!(listed_timers(s)?.is_empty(), "a denied start left a timer");
    Ok(())
}

fn system_report(s: &Sandbox) -> Result<()> {
    let r = s.get(":5001/shutdown/system")?;
    let json = r.expect(200)?;
    ensure_eq!(json["status"], "success");
    let up = &json["uptime"];
    for k in ["days", "hours", "minutes", "seconds", "total_seconds"] {
        ensure!(up[k].is_u64(), "uptime.{k} missing: {}", r.body);
    }
    ensure!(
        json["memory"]["total_bytes"].as_u64().unwrap_or(0) > 0,
        "no memory figures: {}",
        r.body
    );
    ensure!(json["cpu_count"].as_u64().unwrap_or(0) >= 1, "{}", r.body);
    ensure!(json["load_average"]["one"].is_number(), "{}", r.body);
    ensure!(
        json["temperatures"].is_array() && json["pending_schedules"].is_array(),
        "{}",
        r.body
    );
    ensure_eq!(json["service_config"]["default_minutes"], 1);
    ensure_eq!(json["service_config"]["auth_enabled"], true);
    Ok(())
}

fn corrupt_state_file_is_moved_aside(s: &Sandbox) -> Result<()> {
    clear_schedules(s)?;
    s.ok(&format!(
        "printf '{{broken' > {STATE_FILE} && chown abc:abc {STATE_FILE}"
    ))?;
    s.get(":5001/shutdown/status")?.expect(200)?;
    let aside = s.ok("ls /var/lib/shutdown-service/")?;
    ensure!(
        aside.contains("schedules.json.corrupt-"),
        "not moved aside: {aside}"
    );
    let log = s.ok("journalctl -u shutdown-service -p err --no-pager -o cat")?;
    ensure!(log.contains("is corrupt"), "no error in the journal: {log}");
    send(s, "POST", "/shutdown/schedule", r#"{"minutes":3}"#)?.expect(200)?;
    clear_schedules(s)
}

fn restart_shutdown_service(s: &Sandbox) -> Result<()> {
    s.ok("systemctl stop shutdown-service.service; systemctl reset-failed shutdown-service.service shutdown-service.socket; systemctl restart shutdown-service.socket")?;
    Ok(())
}

fn config_file_default_minutes_and_auth_switch(s: &Sandbox) -> Result<()> {
    clear_schedules(s)?;
    let cfg = "/etc/homelab/shutdown-service.json";
    s.ok(&format!(
        r#"echo '{{"shutdown": {{"default_minutes": 7, "lock_file": "shutdown.lock"}}}}' > {cfg}"#
    ))?;
    restart_shutdown_service(s)?;
    ensure_eq!(
        send(s, "POST", "/shutdown/schedule", "{}")?.expect(200)?["minutes_from_now"],
        7
    );
    clear_schedules(s)?;

    s.ok(&format!(
        r#"echo '{{"auth": {{"enabled": false}}}}' > {cfg}"#
    ))?;
    restart_shutdown_service(s)?;
    s.curl(
        "POST",
        ":5001/shutdown/schedule",
        &["--data-binary", r#"{"minutes":4}"#],
    )?
    .expect(200)?;
    let warn = s.ok("journalctl -u shutdown-service -p warning --no-pager -o cat")?;
    ensure!(
        warn.contains("authentication is switched off"),
        "no warning logged: {warn}"
    );
    clear_schedules(s)?;

    // A bad file is a clear error at start, not a service that runs with surprises.
    s.ok(&format!(
        r#"echo '{{"shutdown": {{"default_minutes": -1}}}}' > {cfg}"#
    ))?;
    restart_shutdown_service(s)?;
    let r = s.get(":5001/health");
    ensure!(
        r.is_err(),
        "service answered with a bad configuration: {r:?}"
    );
    let err = s.ok("journalctl -u shutdown-service -p err --no-pager -o cat")?;
    ensure!(
        err.contains("bad configuration file /etc/homelab/shutdown-service.json"),
        "no clear error: {err}"
    );
    s.ok(&format!("rm {cfg}"))?;
    restart_shutdown_service(s)?;
    s.get(":5001/health")?.expect(200)?;
    Ok(())
}

fn a_schedule_powers_the_machine_off(s: &Sandbox) -> Result<()> {
    let at = chrono::Local::now() + chrono::Duration::seconds(4);
    let body = format!(r#"{{"at": "{}"}}"#, at.to_rfc3339());
    let r = send(s, "POST", "/shutdown/schedule", &body)?;
    r.expect(200)?;
    ensure_eq!(listed_timers(s)?.len(), 1);
    wait_for(
        "the container to power off",
        Duration::from_secs(60),
        || Ok(s.is_down()),
    )?;
    ensure!(
        chrono::Local::now() >= at,
        "powered off before the scheduled time"
    );
    Ok(())
}

fn recurring_survive_reboot_passed_one_offs_do_not_fire(s: &Sandbox) -> Result<()> {
    clear_schedules(s)?;
    let recurring = send(
        s,
        "POST",
        "/shutdown/schedule",
        r#"{"calendar":"*-*-* 03:00","action":"reboot"}"#,
    )?;
    let recurring_unit = recurring.expect(200)?["unit"]
        .as_str()
        .context("unit")?
        .to_string();
    let at = chrono::Local::now() + chrono::Duration::seconds(8);
    let one_off = send(
        s,
        "POST",
        "/shutdown/schedule",
        &format!(r#"{{"at": "{}"}}"#, at.to_rfc3339()),
    )?;
    one_off.expect(200)?;
    s.stop();
    ensure!(s.is_down(), "the container did not stop");
    // The one-off passes while the machine is off.
    while chrono::Local::now() < at + chrono::Duration::seconds(2) {
        std::thread::sleep(Duration::from_millis(200));
    }
    s.start()?;
    wait_for(
        "the restore service to finish",
        Duration::from_secs(30),
        || Ok(s.prop("homelab-shutdown-restore.service", "ActiveState")? == "active"),
    )?;
    ensure_eq!(
        listed_timers(s)?,
        vec![recurring_unit.clone()],
        "timers after the reboot"
    );
    let log = s.ok("journalctl -b -u homelab-shutdown-restore --no-pager -o cat")?;
    ensure!(
        log.contains("passed while the machine was off"),
        "no log line for the dropped one-off: {log}"
    );
    // Never a power-off at boot: it is still up a while later.
    std::thread::sleep(Duration::from_secs(3));
    if s.is_down() {
        bail!("the machine powered off after boot");
    }
    let status = s.get(":5001/shutdown/status")?;
    ensure_eq!(
        status.expect(200)?["next_shutdown"]["unit"],
        recurring_unit.as_str()
    );
    ensure_eq!(status.json["next_shutdown"]["action"], "reboot");
    Ok(())
}
