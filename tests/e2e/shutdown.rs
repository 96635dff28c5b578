//! Scheduled shutdowns as systemd timers, on a booted systemd: the API, polkit, the state file
//! (GETs write nothing; hostile files change no power action and block no boot), and real
//! power-offs and reboots.

use crate::ensure_eq;
use crate::harness::{Group, Reply, Sandbox, holds_for, wait_for};
use anyhow::{Context, Result, ensure};
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
            "a_change_waits_for_the_lock_another_process_holds",
            a_change_waits_for_the_lock_another_process_holds,
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
            "a_timer_stopped_with_systemctl_leaves_the_schedules",
            a_timer_stopped_with_systemctl_leaves_the_schedules,
        ),
        ("reads_ask_systemd_nothing", reads_ask_systemd_nothing),
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
            "hostile_state_files_answer_at_once_and_echo_nothing",
            hostile_state_files_answer_at_once_and_echo_nothing,
        ),
        ("gets_write_nothing", gets_write_nothing),
        (
            "config_file_default_minutes_and_auth_switch",
            config_file_default_minutes_and_auth_switch,
        ),
    ],
};

pub const POWER_GROUP: Group = Group {
    name: "shutdown-power",
    cases: &[(
        "a_schedule_powers_the_machine_off_whatever_the_state_file",
        a_schedule_powers_the_machine_off_whatever_the_state_file,
    )],
};

pub const REBOOT_GROUP: Group = Group {
    name: "shutdown-reboot",
    cases: &[
        (
            "recurring_survive_reboot_passed_one_offs_do_not_fire",
            recurring_survive_reboot_passed_one_offs_do_not_fire,
        ),
        (
            "a_reboot_schedule_reboots_while_a_client_polls_status",
            a_reboot_schedule_reboots_while_a_client_polls_status,
        ),
        (
            "boot_completes_whatever_the_state_file",
            boot_completes_whatever_the_state_file,
        ),
    ],
};

pub(crate) const STATE_FILE: &str = "/var/lib/shutdown-service/schedules.json";

pub(crate) fn token(s: &Sandbox) -> Result<String> {
    Ok(s.ok("cat /etc/homelab/api-token")?.trim().to_string())
}

/// POST/DELETE with the right token and a JSON body.
pub(crate) fn send(s: &Sandbox, method: &str, path: &str, body: &str) -> Result<Reply> {
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

/// The pending timers as `systemctl list-timers` shows them (the README's command).
pub(crate) fn listed_timers(s: &Sandbox) -> Result<Vec<String>> {
    let out =
        s.ok("systemctl list-timers --no-legend --plain 'homelab-shutdown@*' 'homelab-reboot@*'")?;
    let mut timers: Vec<String> = out
        .split_whitespace()
        .filter(|w| {
            (w.starts_with("homelab-shutdown@") || w.starts_with("homelab-reboot@"))
                && w.ends_with(".timer")
        })
        .map(str::to_string)
        .collect();
    timers.sort();
    Ok(timers)
}

pub(crate) fn state_snapshot(s: &Sandbox) -> Result<String> {
    s.ok(&format!("cat {STATE_FILE} 2>/dev/null || echo missing"))
}

/// As user abc (who owns it), replaces the state file by what `make` makes: `what` names it.
fn replace_state_as_abc(s: &Sandbox, what: &str, make: &str) -> Result<()> {
    let out = s.as_user("abc", &format!("rm -f {STATE_FILE} && {make} && echo made"))?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("made"),
        "could not make {what} as abc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Schedules a recurring reboot at `calendar` over HTTP; its timer unit.
fn schedule_recurring_reboot(s: &Sandbox, calendar: &str) -> Result<String> {
    let body = format!(r#"{{"calendar":"{calendar}","action":"reboot"}}"#);
    let reply = send(s, "POST", "/shutdown/schedule", &body)?;
    Ok(reply.expect(200)?["unit"]
        .as_str()
        .context("unit")?
        .to_string())
}

pub(crate) fn clear_schedules(s: &Sandbox) -> Result<()> {
    s.ok("systemctl stop 'homelab-shutdown@*.timer' 'homelab-reboot@*.timer'")?;
    ensure!(listed_timers(s)?.is_empty(), "timers left after clearing");
    Ok(())
}

pub(crate) fn epoch_now() -> i64 {
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
    let mega = tempfile::NamedTempFile::new()?;
    std::fs::write(
        mega.path(),
        format!(r#"{{"minutes": 5, "pad": "{}"}}"#, "x".repeat(1024 * 1024)),
    )?;
    let r = send(
        s,
        "POST",
        "/shutdown/schedule",
        &format!("@{}", mega.path().display()),
    );
    r?.expect_error(413)?;
    for id in [
        "..%2F..%2Fx",
        "a*",
        "x.service",
        "%0a",
        &"a".repeat(4_096),
        "0123456789ABCDEF",
    ] {
        send(s, "DELETE", &format!("/shutdown/schedules/{id}"), "")?
            .expect_error(400)
            .with_context(|| format!("id {id:.40}"))?;
    }
    // A request line over 8 KiB is refused before routing.
    send(
        s,
        "DELETE",
        &format!("/shutdown/schedules/{}", "a".repeat(10_240)),
        "",
    )?
    .expect_error(431)?;
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

/// The lock is a file lock, so it holds other processes back (the idle check schedules its
/// power-off under it too): while another process of abc holds it, a POST waits and changes
/// nothing, and goes through once it is released.
fn a_change_waits_for_the_lock_another_process_holds(s: &Sandbox) -> Result<()> {
    clear_schedules(s)?;
    let lock = "/var/lib/shutdown-service/schedules.lock";
    s.ok(&format!(
        "systemd-run --quiet --unit=homelab-e2e-lock-holder --uid=abc --gid=abc flock {lock} sleep 5"
    ))?;
    wait_for(
        "the other process to hold the lock",
        Duration::from_secs(10),
        || Ok(!s.sh(&format!("flock -n {lock} true"))?.status.success()),
    )?;
    let (reply, waited) = std::thread::scope(|scope| -> Result<_> {
        let post = scope.spawn(|| {
            let started = std::time::Instant::now();
            let reply = send(s, "POST", "/shutdown/schedule", r#"{"minutes": 9}"#);
            (reply, started.elapsed())
        });
        holds_for(
            "no timer started while another process holds the lock",
            Duration::from_secs(2),
            || Ok(listed_timers(s)?.is_empty()),
        )?;
        let (reply, waited) = post.join().expect("the request's thread");
        Ok((reply?, waited))
    })?;
    reply.expect(200)?;
    ensure!(
        waited >= Duration::from_secs(2),
        "the request did not wait for the lock: answered in {waited:?}"
    );
    ensure_eq!(listed_timers(s)?.len(), 1, "pending one-off shutdowns");
    s.ok("systemctl stop homelab-e2e-lock-holder.service 2>/dev/null; true")?;
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
    let before = state_snapshot(s)?;
    ensure_eq!(
        s.get(":5001/shutdown/status")?.expect(200)?["has_shutdown"],
        false
    );
    // A read writes nothing: the entry goes with the next mutating request.
    ensure_eq!(state_snapshot(s)?, before, "a GET changed the state file");
    let recurring = send(
        s,
        "POST",
        "/shutdown/schedule",
        r#"{"calendar":"Sat 04:00"}"#,
    )?;
    recurring.expect(200)?;
    let state: Value = serde_json::from_str(&state_snapshot(s)?)?;
    ensure!(
        state["schedules"].get(&unit).is_none(),
        "stale entry kept after a mutating request: {state}"
    );
    ensure!(
        state["schedules"]
            .get(recurring.json["unit"].as_str().unwrap_or_default())
            .is_some(),
        "the new entry is missing: {state}"
    );
    clear_schedules(s)
}

/// The ids in `GET /shutdown/schedules`.
fn schedule_units(s: &Sandbox) -> Result<Vec<String>> {
    Ok(s.get(":5001/shutdown/schedules")?.expect(200)?["schedules"]
        .as_array()
        .context("schedules")?
        .iter()
        .filter_map(|e| e["unit"].as_str().map(str::to_string))
        .collect())
}

/// The service keeps its view from systemd's signals: a timer an admin stops directly leaves
/// the listing without any request of ours in between (signals are asynchronous: a deadline).
fn a_timer_stopped_with_systemctl_leaves_the_schedules(s: &Sandbox) -> Result<()> {
    clear_schedules(s)?;
    let unit = schedule_recurring_reboot(s, "Sun 05:30")?;
    ensure!(schedule_units(s)?.contains(&unit), "{unit} is not listed");
    s.ok(&format!("systemctl stop '{unit}'"))?;
    wait_for(
        "the stopped timer to leave GET /shutdown/schedules",
        Duration::from_secs(10),
        || Ok(!schedule_units(s)?.contains(&unit)),
    )?;
    // ... and a timer started directly (as the boot-time restore does) appears.
    s.ok(&format!("systemctl start '{unit}'"))?;
    wait_for(
        "the started timer to appear in GET /shutdown/schedules",
        Duration::from_secs(10),
        || Ok(schedule_units(s)?.contains(&unit)),
    )?;
    clear_schedules(s)
}

/// `busctl monitor` of every message the service sends shows no listing and no property read
/// while clients poll `/shutdown/status`, `/next` and `/schedules`; requests that change
/// something (which do call systemd) bracket the reads, so the monitor is shown to see the
/// service's calls, and everything sent before the last of them is in the log.
fn reads_ask_systemd_nothing(s: &Sandbox) -> Result<()> {
    clear_schedules(s)?;
    s.get(":5001/shutdown/status")?.expect(200)?;
    let invocation = s.prop("shutdown-service.service", "InvocationID")?;
    wait_for(
        "the service to follow its units from signals",
        Duration::from_secs(10),
        || {
            Ok(s
                .sh(&format!(
                    "journalctl -o cat _SYSTEMD_INVOCATION_ID={invocation} | grep -q 'from systemd.s signals'"
                ))?
                .status
                .success())
        },
    )?;
    let pid = s.prop("shutdown-service.service", "MainPID")?;
    let name = s
        .ok(&format!(
            "busctl --system list --unique --no-legend | awk '$2 == {pid} {{ print $1 }}'"
        ))?
        .trim()
        .to_string();
    ensure!(
        name.starts_with(":1."),
        "no bus name for pid {pid}: {name:?}"
    );
    // The monitor runs as a unit of its own, writing line by line, until stopped.
    let monitor = format!(
        "exec stdbuf -oL busctl monitor --system --match \"sender='{name}'\" >/run/watch-bus.log 2>&1"
    );
    s.ok(&format!(
        "cat > /run/watch-bus.sh <<'EOF'\n{monitor}\nEOF\nsystemd-run --unit=homelab-watch-bus --collect sh /run/watch-bus.sh"
    ))?;
    let count = |member: &str| -> Result<usize> {
        Ok(s.ok(&format!(
            "grep -c 'Member={member}\\b' /run/watch-bus.log || true"
        ))?
        .trim()
        .parse()
        .unwrap_or(0))
    };
    // A one-off replaced again and again (StopUnit, StartUnit) until the monitor sees one.
    wait_for(
        "busctl monitor to see the service start a timer",
        Duration::from_secs(20),
        || {
            let r = send(
                s,
                "POST",
                "/shutdown/schedule",
                r#"{"minutes": 30, "replace": true}"#,
            )?;
            ensure!(matches!(r.status, 200 | 409), "{}", r.body);
            Ok(count("StartUnit")? > 0)
        },
    )?;
    let reads = || -> Result<usize> {
        Ok(count("ListUnitsByPatterns")? + count("Get")? + count("GetAll")?)
    };
    let before = reads()?;
    for _ in 0..20 {
        for path in ["/shutdown/status", "/shutdown/next", "/shutdown/schedules"] {
            s.get(&format!(":5001{path}"))?.expect(200)?;
        }
    }
    let stops = count("StopUnit")?;
    send(s, "POST", "/shutdown/cancel", "")?.expect(200)?;
    wait_for(
        "busctl monitor to see the cancel's StopUnit",
        Duration::from_secs(10),
        || Ok(count("StopUnit")? > stops),
    )?;
    let after = reads()?;
    s.ok("systemctl stop homelab-watch-bus.service")?;
    ensure_eq!(
        after,
        before,
        "60 GETs made D-Bus reads: {}",
        s.ok("grep -o 'Member=[A-Za-z]*' /run/watch-bus.log | sort | uniq -c")?
    );
    clear_schedules(s)
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
    let reboot_timer = timer.replacen("homelab-shutdown@", "homelab-reboot@", 1);
    let out = s.as_user(
        "abc",
        &format!("systemctl start '{reboot_timer}' && systemctl stop '{reboot_timer}'"),
    )?;
    ensure!(
        out.status.success(),
        "abc could not start and stop {reboot_timer}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for unit in [
        "systemd-tmpfiles-clean.service",
        "poweroff.target",
        "reboot.target",
        "homelab-poweroff@x.service",
        "homelab-reboot@x.service",
        "homelab-shutdown@x.service",
        "homelab-power-action@evil.service",
        "homelab-power-action@poweroff-wake-12x.service",
        "homelab-power-action@poweroff-wake-1234567890123.service",
        "homelab-power-action@clear-wake-.service",
        "homelab-power-action@poweroff-wake-0001795000000.service",
        "homelab-power-action@clear-wake-01.service",
        "homelab-power-action@halt.service",
        "homelab-shutdown.timer",
        "homelab-reboot.timer",
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
    // The root-owned action: abc may start exactly its instances (a clearing of an alarm root
    // did not set changes nothing, so it is safe to run here), never stop them.
    let clear = "homelab-power-action@clear-wake-1.service";
    let out = s.as_user("abc", &format!("systemctl start {clear}"))?;
    ensure!(
        out.status.success(),
        "abc could not start {clear}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = s.ok(&format!("journalctl -u {clear} --no-pager -o cat"))?;
    ensure!(log.contains("not root's to clear"), "{clear} said: {log}");
    denied(
        s.as_user("abc", &format!("systemctl stop {clear}"))?,
        "abc stopping the action",
    )?;
    for user in ["tester", "homelab-model"] {
        denied(
            s.as_user(
                user,
                "systemctl start homelab-power-action@poweroff.service",
            )?,
            &format!("{user} starting the power-off action"),
        )?;
    }
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
    // The model servers' user is not abc: it gets nothing (inference group: from a model's process).
    for t in [&timer, &reboot_timer] {
        denied(
            s.as_user("homelab-model", &format!("systemctl start '{t}'"))?,
            "homelab-model starting a schedule",
        )?;
    }
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
    // A read reports it and leaves it where it is; the next change moves it aside.
    s.get(":5001/shutdown/status")?.expect(200)?;
    ensure!(
        !s.ok("ls /var/lib/shutdown-service/")?.contains(".corrupt-"),
        "a GET moved the file"
    );
    send(s, "POST", "/shutdown/schedule", r#"{"minutes":3}"#)?.expect(200)?;
    let aside = s.ok("ls /var/lib/shutdown-service/")?;
    ensure!(
        aside.contains("schedules.json.corrupt-"),
        "not moved aside: {aside}"
    );
    let log = s.ok("journalctl -u shutdown-service -p err --no-pager -o cat")?;
    ensure!(log.contains("is corrupt"), "no error in the journal: {log}");
    s.ok("rm -f /var/lib/shutdown-service/schedules.json.corrupt-*")?;
    clear_schedules(s)
}

/// A state file that is a symlink to /dev/zero, a FIFO, or garbage with a secret-looking line:
/// every request answers at once, nothing of the content reaches the journal, and the next
/// change moves the file aside.
fn hostile_state_files_answer_at_once_and_echo_nothing(s: &Sandbox) -> Result<()> {
    clear_schedules(s)?;
    let marker = "SECRET-MARKER-4711";
    for (what, make) in [
        (
            "a symlink to /dev/zero",
            format!("ln -s /dev/zero {STATE_FILE}"),
        ),
        ("a FIFO", format!("mkfifo {STATE_FILE}")),
        (
            "garbage",
            format!("printf '{{\"schedules\": \"{marker}\", {marker}' > {STATE_FILE}"),
        ),
        (
            "over 64 KiB",
            format!("head -c 70000 /dev/zero | tr '\\0' ' ' > {STATE_FILE}"),
        ),
    ] {
        replace_state_as_abc(s, what, &make)?;
        let t = std::time::Instant::now();
        ensure_eq!(
            s.get(":5001/shutdown/status")?.expect(200)?["has_shutdown"],
            false,
            "status with {what}"
        );
        s.get(":5001/shutdown/schedules")?.expect(200)?;
        let r = send(s, "POST", "/shutdown/schedule", r#"{"minutes":5}"#)?;
        r.expect(200)
            .with_context(|| format!("schedule with {what}"))?;
        ensure!(
            t.elapsed() < Duration::from_secs(5),
            "requests with {what} took {:?}",
            t.elapsed()
        );
        let kind = s.ok(&format!("stat -c %F {STATE_FILE}"))?;
        ensure_eq!(kind.trim(), "regular file", "the state file after {what}");
        ensure!(
            s.ok("ls /var/lib/shutdown-service/")?.contains(".corrupt-"),
            "{what} was not moved aside"
        );
        s.ok("rm -f /var/lib/shutdown-service/schedules.json.corrupt-*")?;
        clear_schedules(s)?;
    }
    let log = s.ok("journalctl -u shutdown-service --no-pager -o cat")?;
    ensure!(
        !log.contains(marker),
        "the file's content reached the journal"
    );
    for why in [
        "symbolic link",
        "not a regular file",
        "larger than 65536 bytes",
    ] {
        ensure!(log.contains(why), "no journal line says {why:?}");
    }
    Ok(())
}

/// Read-only requests change nothing: not the state file, not its folder.
fn gets_write_nothing(s: &Sandbox) -> Result<()> {
    clear_schedules(s)?;
    send(
        s,
        "POST",
        "/shutdown/schedule",
        r#"{"calendar":"Sun 05:00"}"#,
    )?
    .expect(200)?;
    // An entry whose timer is gone: a GET used to prune it. Written in place (same inode, owner).
    s.ok(&format!(
        "sed 's/\"schedules\": {{/\"schedules\": {{ \"homelab-shutdown@gone.timer\": {{\"calendar\": \"gone\", \"created_at\": \"x\"}},/' {STATE_FILE} > /tmp/state.json && cat /tmp/state.json > {STATE_FILE} && grep -q 'homelab-shutdown@gone.timer' {STATE_FILE}"
    ))?;
    // Still parsed: the pending schedule is joined with its entry (its creation time).
    let list = s.get(":5001/shutdown/schedules")?;
    ensure!(
        list.expect(200)?["schedules"][0]["created_at"].is_string(),
        "the edited state file does not parse: {}",
        list.body
    );
    let listing =
        "stat -c '%n %s %Y %i' /var/lib/shutdown-service/* && md5sum /var/lib/shutdown-service/*";
    let before = s.ok(listing)?;
    for path in [
        "/",
        "/health",
        "/shutdown/status",
        "/shutdown/next",
        "/shutdown/schedules",
        "/shutdown/system",
    ] {
        s.get(&format!(":5001{path}"))?.expect(200)?;
    }
    ensure_eq!(s.ok(listing)?, before, "GETs changed the state folder");
    ensure!(
        state_snapshot(s)?.contains("homelab-shutdown@gone.timer"),
        "a GET pruned an entry"
    );
    clear_schedules(s)?;
    send(s, "POST", "/shutdown/schedule", r#"{"minutes":3}"#)?.expect(200)?;
    ensure!(
        !state_snapshot(s)?.contains("homelab-shutdown@gone.timer"),
        "a mutating request kept an entry systemd does not have"
    );
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

/// The power-off happens on time although abc turned the state file into a symlink to
/// /dev/zero after scheduling: the root-owned action reads no file of abc's.
fn a_schedule_powers_the_machine_off_whatever_the_state_file(s: &Sandbox) -> Result<()> {
    let at = chrono::Local::now() + chrono::Duration::seconds(6);
    let body = format!(r#"{{"at": "{}"}}"#, at.to_rfc3339());
    let r = send(s, "POST", "/shutdown/schedule", &body)?;
    ensure!(
        r.expect(200)?["unit"]
            .as_str()
            .is_some_and(|u| u.starts_with("homelab-shutdown@")),
        "{}",
        r.body
    );
    ensure_eq!(listed_timers(s)?.len(), 1);
    let out = s.as_user(
        "abc",
        &format!("rm -f {STATE_FILE} && ln -s /dev/zero {STATE_FILE} && echo made"),
    )?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("made"),
        "abc could not replace the state file: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "the container to power off",
        Duration::from_secs(60),
        || Ok(s.is_down()),
    )?;
    let late = chrono::Local::now() - at;
    ensure!(
        late >= chrono::Duration::zero(),
        "powered off before the scheduled time"
    );
    ensure!(
        late < chrono::Duration::seconds(30),
        "powered off {}s late",
        late.num_seconds()
    );
    Ok(())
}

fn recurring_survive_reboot_passed_one_offs_do_not_fire(s: &Sandbox) -> Result<()> {
    clear_schedules(s)?;
    let recurring_unit = schedule_recurring_reboot(s, "*-*-* 03:00")?;
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
    // Never a power-off at boot: it stays up.
    holds_for(
        "the machine to stay up after boot",
        Duration::from_secs(3),
        || Ok(!s.is_down()),
    )?;
    let status = s.get(":5001/shutdown/status")?;
    ensure_eq!(
        status.expect(200)?["next_shutdown"]["unit"],
        recurring_unit.as_str()
    );
    ensure_eq!(status.json["next_shutdown"]["action"], "reboot");
    Ok(())
}

/// Whether the container's last boot ended in a reboot by our unit: the previous boot's journal.
fn previous_boot_rebooted(s: &Sandbox) -> Result<bool> {
    let log = s.ok("journalctl -b -1 --no-pager -o cat -u 'homelab-power-action@*'")?;
    Ok(log.contains("fired: rebooting now") && !log.contains("fired: powering off now"))
}

/// A one-off reboot fires while a dashboard polls /shutdown/status every 50 ms: the machine
/// reboots (not powers off), and a recurring reboot schedule is still there after it.
fn a_reboot_schedule_reboots_while_a_client_polls_status(s: &Sandbox) -> Result<()> {
    clear_schedules(s)?;
    let recurring_unit = schedule_recurring_reboot(s, "*-*-* 04:00")?;
    ensure!(
        recurring_unit.starts_with("homelab-reboot@"),
        "{recurring_unit}"
    );
    let at = chrono::Local::now() + chrono::Duration::seconds(8);
    let one_off = send(
        s,
        "POST",
        "/shutdown/schedule",
        &format!(r#"{{"at": "{}", "action": "reboot"}}"#, at.to_rfc3339()),
    )?;
    ensure_eq!(one_off.expect(200)?["action"], "reboot");
    let polls = std::thread::scope(|scope| {
        let poller = scope.spawn(|| {
            // Bounded: one client, a request every 50 ms, for at most 60 s.
            let start = std::time::Instant::now();
            let mut n = 0u32;
            while !s.is_down() && start.elapsed() < Duration::from_secs(60) {
                if s.get(":5001/shutdown/status").is_ok() {
                    n += 1;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            n
        });
        let down = wait_for("the container to reboot", Duration::from_secs(60), || {
            Ok(s.is_down())
        });
        (down, poller.join())
    });
    polls.0?;
    let n = polls
        .1
        .map_err(|_| anyhow::anyhow!("the poller panicked"))?;
    ensure!(
        n >= 20,
        "only {n} status requests were answered before the reboot"
    );
    ensure!(
        chrono::Local::now() >= at,
        "rebooted before the scheduled time"
    );
    s.start()?;
    ensure!(
        previous_boot_rebooted(s)?,
        "the last boot did not end in a reboot by homelab-reboot@"
    );
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
    let status = s.get(":5001/shutdown/status")?;
    ensure_eq!(
        status.expect(200)?["next_shutdown"]["unit"],
        recurring_unit.as_str()
    );
    ensure_eq!(status.json["next_shutdown"]["action"], "reboot");
    // /metrics tells when a schedule last acted, and what it did.
    let metrics = s.get(":5001/metrics")?;
    let last: f64 = metrics
        .body
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "homelab_shutdown_last_power_action_timestamp_seconds{action=\"reboot\"} ",
            )
        })
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no last reboot in /metrics:\n{}", metrics.body))?;
    ensure!(
        last >= at.timestamp() as f64,
        "the last reboot in /metrics ({last}) is before the scheduled time"
    );
    clear_schedules(s)
}

/// Boot reaches `running` (the restore unit finishes, empty) whatever abc left in the state
/// file: a FIFO (it used to hang boot), a symlink to /dev/zero, garbage.
fn boot_completes_whatever_the_state_file(s: &Sandbox) -> Result<()> {
    clear_schedules(s)?;
    for (what, make) in [
        ("a FIFO", format!("mkfifo {STATE_FILE}")),
        (
            "a symlink to /dev/zero",
            format!("ln -s /dev/zero {STATE_FILE}"),
        ),
        (
            "garbage",
            format!("printf 'not json at all' > {STATE_FILE}"),
        ),
    ] {
        replace_state_as_abc(s, what, &make)?;
        s.stop();
        ensure!(s.is_down(), "the container did not stop");
        let t = std::time::Instant::now();
        // start() fails unless boot reaches running (or degraded) in time.
        s.start().with_context(|| format!("booting with {what}"))?;
        ensure!(
            t.elapsed() < Duration::from_secs(90),
            "boot with {what} took {:?}",
            t.elapsed()
        );
        // No job is left over from boot. The minutely idle-check timer may have just started
        // its service (a check of a moment, not a leftover), so that unit's job is not counted.
        let jobs = s.ok("systemctl list-jobs --no-legend")?;
        let left: Vec<&str> = jobs
            .lines()
            .filter(|l| !l.contains("inference-idle-check.service"))
            .collect();
        ensure!(
            left.is_empty(),
            "jobs left after booting with {what}: {left:?}"
        );
        ensure_eq!(
            s.prop("homelab-shutdown-restore.service", "ActiveState")?,
            "active",
            "the restore unit with {what}"
        );
        let log = s.ok("journalctl -b -u homelab-shutdown-restore --no-pager -o cat")?;
        ensure!(
            log.contains("is corrupt"),
            "no journal line for {what}: {log}"
        );
        s.get(":5001/shutdown/status")?.expect(200)?;
        s.ok("rm -f /var/lib/shutdown-service/schedules.json*")?;
    }
    Ok(())
}
