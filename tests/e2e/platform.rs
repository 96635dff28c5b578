//! The socket-activated core on a booted systemd.

use crate::ensure_eq;
use crate::harness::{Group, Sandbox, wait_for};
use anyhow::{Context, Result, ensure};
use std::time::Duration;

pub const GROUP: Group = Group {
    name: "platform",
    cases: &[
        (
            "units_verify_and_report_exposure",
            units_verify_and_report_exposure,
        ),
        ("first_request_starts_shutdown_service", |s| {
            first_request_starts_service(s, 5001, "shutdown-service", "Shutdown Service")
        }),
        ("first_request_starts_inference_service", |s| {
            first_request_starts_service(s, 5002, "inference-service", "Inference Model Service")
        }),
        (
            "services_run_unprivileged_and_hardened",
            services_run_unprivileged_and_hardened,
        ),
        (
            "keep_alive_reuses_the_connection",
            keep_alive_reuses_the_connection,
        ),
        ("bad_requests_get_json_errors", bad_requests_get_json_errors),
        (
            "requests_are_logged_with_priorities",
            requests_are_logged_with_priorities,
        ),
        ("a_stop_loses_no_access_line", a_stop_loses_no_access_line),
        (
            "restarting_the_target_restarts_both",
            restarting_the_target_restarts_both,
        ),
        ("idle_shutdown_service_exits_and_comes_back", |s| {
            idle_exit_and_reactivation(s, 5001, "shutdown-service")
        }),
        ("idle_inference_service_exits_and_comes_back", |s| {
            idle_exit_and_reactivation(s, 5002, "inference-service")
        }),
    ],
};

/// Every unit file the project installs, with an example instance for templates.
fn installed_units() -> Result<Vec<String>> {
    let mut units = Vec::new();
    for entry in std::fs::read_dir(crate::harness::repo_root().join("systemd"))? {
        let name = entry?
            .file_name()
            .into_string()
            .map_err(|n| anyhow::anyhow!("bad unit file name {n:?}"))?;
        units.push(match name.split_once("@.") {
            // Timers of ours need a calendar as instance: a one-off time.
            Some((prefix, suffix)) if prefix.starts_with("homelab-") => {
                format!(r"{prefix}@\x401795414139.{suffix}")
            }
            Some((prefix, suffix)) => format!("{prefix}@example.{suffix}"),
            None => name,
        });
    }
    units.sort();
    Ok(units)
}

fn units_verify_and_report_exposure(s: &Sandbox) -> Result<()> {
    let units = installed_units()?;
    // model-proxy@.socket takes its port from a per-model drop-in, as docs/inference.md shows.
    s.ok("mkdir -p '/run/systemd/system/model-proxy@example.socket.d' && \
          printf '[Socket]\\nListenStream=18080\\n' > '/run/systemd/system/model-proxy@example.socket.d/port.conf'")?;
    let quoted: Vec<String> = units.iter().map(|u| format!("'{u}'")).collect();
    // The container has no man-db, so verify's own look-up of man: pages (`man NAME(S)`) cannot
    // run there; the pages and files the units name are checked below instead.
    let out = s.sh(&format!(
        "cd /usr/lib/systemd/system && systemd-analyze verify --man=no {} 2>&1",
        quoted.join(" ")
    ))?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify complained:\n{text}"
    );
    // Every Documentation= of our units names a man page or a file that is installed.
    let docs = s.ok(&format!(
        "cd /usr/lib/systemd/system && sed -n 's/^Documentation=//p' {} | tr ' ' '\\n' | sort -u",
        quoted.join(" ")
    ))?;
    let mut named = 0;
    for doc in docs.lines().map(str::trim).filter(|d| !d.is_empty()) {
        let path = if let Some(page) = doc.strip_prefix("man:") {
            let (name, section) = page
                .trim_end_matches(')')
                .split_once('(')
                .ok_or_else(|| anyhow::anyhow!("{doc}: not man:NAME(SECTION)"))?;
            format!("/usr/share/man/man{section}/{name}.{section}")
        } else if let Some(file) = doc.strip_prefix("file://") {
            file.to_string()
        } else {
            anyhow::bail!("{doc}: neither a man page nor an installed file");
        };
        s.ok(&format!("test -f '{path}' || test -f '{path}.gz'"))
            .with_context(|| format!("{doc} is not installed ({path})"))?;
        named += 1;
    }
    ensure!(named >= 3, "the units name only {named} documents");
    for service in units.iter().filter(|u| u.ends_with(".service")) {
        let out = s.ok(&format!("systemd-analyze security --no-pager '{service}'"))?;
        let overall = out
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or("no exposure line")
            .trim();
        eprintln!("   exposure {service}: {overall}");
        let score: f64 = overall
            .split_whitespace()
            .find_map(|w| w.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no score in {overall:?}"))?;
        ensure!(
            score <= 2.0,
            "{service} exposure {score} is above 2.0:\n{out}"
        );
    }
    Ok(())
}

fn first_request_starts_service(s: &Sandbox, port: u16, unit: &str, name: &str) -> Result<()> {
    let service = format!("{unit}.service");
    ensure_eq!(s.active_state(&format!("{unit}.socket"))?, "active");
    // Socket activation means nothing runs before the first request.
    s.ok(&format!("systemctl stop {service}"))?;
    ensure_eq!(
        s.active_state(&service)?,
        "inactive",
        "{service} before the first request"
    );
    let reply = s.get(&format!(":{port}/health"))?;
    let json = reply.expect(200)?;
    ensure_eq!(json["status"], "healthy");
    ensure_eq!(json["service"], name);
    ensure_eq!(
        s.active_state(&service)?,
        "active",
        "{service} after the first request"
    );
    Ok(())
}

fn services_run_unprivileged_and_hardened(s: &Sandbox) -> Result<()> {
    for (port, unit) in [
        (5001, "shutdown-service.service"),
        (5002, "inference-service.service"),
    ] {
        s.get(&format!(":{port}/health"))?.expect(200)?;
        let pid = s.prop(unit, "MainPID")?;
        ensure!(pid != "0", "{unit} has no main PID");
        let user = s.ok(&format!("ps -o user= -p {pid}"))?;
        ensure_eq!(user.trim(), "abc", "user of {unit}");
        let status = s.ok(&format!(
            "grep -E '^(NoNewPrivs|CapEff|Seccomp):' /proc/{pid}/status"
        ))?;
        ensure!(
            status.contains("NoNewPrivs:\t1"),
            "{unit} may gain privileges: {status}"
        );
        ensure!(
            status.contains("CapEff:\t0000000000000000"),
            "{unit} has capabilities: {status}"
        );
        ensure!(
            status.contains("Seccomp:\t2"),
            "{unit} has no seccomp filter: {status}"
        );
        ensure_eq!(s.prop(unit, "LimitNOFILE")?, "65536");
        // Each service's own budget of tasks and memory (not LimitNPROC=, which counts every
        // process of user abc and so would be shared by both).
        ensure_eq!(s.prop(unit, "TasksMax")?, "64");
        ensure_eq!(s.prop(unit, "MemoryMax")?, (128u64 << 20).to_string());
        ensure_eq!(s.prop(unit, "ProtectSystem")?, "strict");
        ensure_eq!(s.prop(unit, "PrivateTmp")?, "yes");
    }
    Ok(())
}

fn keep_alive_reuses_the_connection(s: &Sandbox) -> Result<()> {
    // curl reuses one connection for two URLs when the server keeps it alive.
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &s.netns,
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-w",
            "%{num_connects} ",
        ])
        .args(["http://127.0.0.1:5001/health", "http://127.0.0.1:5001/"])
        .output()?;
    ensure_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1 0",
        "connections opened per request"
    );
    Ok(())
}

fn bad_requests_get_json_errors(s: &Sandbox) -> Result<()> {
    for port in [5001, 5002] {
        let msg = s
            .get(&format!(":{port}/no/such/route"))?
            .expect_error(404)?;
        ensure!(
            msg.contains("/no/such/route"),
            "404 message does not name the path: {msg}"
        );
        let reply = s.curl("DELETE", &format!(":{port}/health"), &["-i"])?;
        ensure!(
            reply.body.contains("405") && reply.body.contains("Allow: GET"),
            "405 without Allow: {}",
            reply.body
        );
        s.curl("PATCH", &format!(":{port}/health"), &[])?
            .expect_error(405)?;

        let before = s.prop(&format!("{}.service", service_of(port)), "MainPID")?;
        // 70 kB body, declared length.
        let big = "x".repeat(70 * 1024);
        let msg = s
            .curl("POST", &format!(":{port}/health"), &["--data-binary", &big])?
            .expect_error(413)?;
        ensure!(
            msg.contains("65536"),
            "413 message does not give the limit: {msg}"
        );
        // A body without a declared length is refused before it is read.
        let msg = s
            .curl(
                "POST",
                &format!(":{port}/health"),
                &["-H", "Transfer-Encoding: chunked", "--data-binary", &big],
            )?
            .expect_error(411)?;
        ensure!(
            msg.contains("Content-Length"),
            "411 message does not say what to send: {msg}"
        );
        // A forged huge Content-Length must neither be read nor crash the service.
        s.curl(
            "POST",
            &format!(":{port}/health"),
            &["-H", "Content-Length: 99999999999999", "--data-binary", "x"],
        )?
        .expect_error(413)?;
        s.get(&format!(":{port}/health"))?.expect(200)?;
        ensure_eq!(
            s.prop(&format!("{}.service", service_of(port)), "MainPID")?,
            before,
            "the service restarted"
        );
    }
    Ok(())
}

fn service_of(port: u16) -> &'static str {
    if port == 5001 {
        "shutdown-service"
    } else {
        "inference-service"
    }
}

fn requests_are_logged_with_priorities(s: &Sandbox) -> Result<()> {
    s.get(":5001/health")?.expect(200)?;
    s.get(":5001/missing-route-for-log")?.expect_error(404)?;
    let out = s.ok("journalctl -u shutdown-service.service -o export --no-pager | grep -aE '^(MESSAGE|PRIORITY)='")?;
    let lines: Vec<&str> = out.lines().collect();
    let priority_of = |needle: &str| -> Option<&str> {
        let i = lines
            .iter()
            .rposition(|l| l.starts_with("MESSAGE=") && l.contains(needle))?;
        lines[i.saturating_sub(1)..(i + 2).min(lines.len())]
            .iter()
            .find_map(|l| l.strip_prefix("PRIORITY="))
    };
    ensure_eq!(
        priority_of("GET /health 200"),
        Some("6"),
        "priority of a 200 line"
    );
    ensure_eq!(
        priority_of("GET /missing-route-for-log 404"),
        Some("5"),
        "priority of a 404 line"
    );
    Ok(())
}

/// Access lines of successful reads are buffered (at most 0.1 s); a stop right after requests
/// still writes every one of them, and the service ends cleanly on SIGTERM.
fn a_stop_loses_no_access_line(s: &Sandbox) -> Result<()> {
    let count = || -> Result<usize> {
        Ok(s.ok("journalctl -u shutdown-service.service -o cat --no-pager | grep -c 'GET /health 200' || true")?
            .trim()
            .parse()?)
    };
    // A 404 line is written at once, after the buffered ones: once it is in the journal, the
    // count of earlier lines is final.
    s.get(":5001/health")?.expect(200)?;
    s.get(":5001/before-the-stop")?.expect_error(404)?;
    wait_for("the 404 line", Duration::from_secs(5), || {
        let n = s.ok("journalctl -u shutdown-service.service -o cat --no-pager | grep -c 'GET /before-the-stop 404' || true")?;
        Ok(n.trim() != "0")
    })?;
    let before = count()?;
    s.ok(
        "for i in 1 2 3 4 5; do curl -sf -o /dev/null http://127.0.0.1:5001/health || exit 1; done; \
         systemctl stop shutdown-service.service",
    )?;
    ensure_eq!(s.active_state("shutdown-service.service")?, "inactive");
    ensure_eq!(s.prop("shutdown-service.service", "Result")?, "success");
    wait_for("5 more access lines", Duration::from_secs(5), || {
        Ok(count()? == before + 5)
    })?;
    let last = s.ok("journalctl -u shutdown-service.service -o cat --no-pager | tail -n 5")?;
    ensure!(last.contains("got SIGTERM, exiting"), "{last}");
    // The socket is still there: the next request starts the service again.
    s.get(":5001/health")?.expect(200)?;
    Ok(())
}

fn restarting_the_target_restarts_both(s: &Sandbox) -> Result<()> {
    s.get(":5001/health")?.expect(200)?;
    s.get(":5002/health")?.expect(200)?;
    let before = [
        s.prop("shutdown-service.service", "InvocationID")?,
        s.prop("inference-service.service", "InvocationID")?,
    ];
    s.ok("systemctl restart home-lab-services.target")?;
    for (unit, old) in ["shutdown-service.service", "inference-service.service"]
        .iter()
        .zip(before)
    {
        wait_for(
            &format!("{unit} to be active again"),
            Duration::from_secs(10),
            || Ok(s.active_state(unit)? == "active"),
        )?;
        ensure!(
            s.prop(unit, "InvocationID")? != old,
            "{unit} was not restarted"
        );
    }
    s.get(":5001/health")?.expect(200)?;
    s.get(":5002/health")?.expect(200)?;
    Ok(())
}

fn idle_exit_and_reactivation(s: &Sandbox, port: u16, unit: &str) -> Result<()> {
    let service = format!("{unit}.service");
    s.ok(&format!(
        "mkdir -p /etc/systemd/system/{service}.d && printf '[Service]\\nEnvironment=HOMELAB_IDLE_TIMEOUT=2\\n' \
         > /etc/systemd/system/{service}.d/idle.conf && systemctl daemon-reload && systemctl stop {service}"
    ))?;
    s.get(&format!(":{port}/health"))?.expect(200)?;
    ensure_eq!(s.active_state(&service)?, "active");
    wait_for(
        &format!("{service} to exit when idle"),
        Duration::from_secs(15),
        || Ok(s.active_state(&service)? == "inactive"),
    )?;
    // A clean exit, not a crash that systemd had to clean up.
    ensure_eq!(s.prop(&service, "Result")?, "success");
    ensure_eq!(
        s.active_state(&format!("{unit}.socket"))?,
        "active",
        "the socket after the idle exit"
    );
    s.get(&format!(":{port}/health"))?.expect(200)?;
    ensure_eq!(
        s.active_state(&service)?,
        "active",
        "{service} after the next request"
    );
    ensure_eq!(s.prop(&service, "NRestarts")?, "0");
    s.ok(&format!(
        "rm -r /etc/systemd/system/{service}.d && systemctl daemon-reload"
    ))?;
    Ok(())
}
