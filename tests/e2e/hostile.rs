//! Hostile clients against both HTTP services: oversized heads, slow and idle connections, floods.
//! Every client is bounded in count and time (tests/e2e/hostile.py) and talks only to the
//! container's own loopback, inside the group's network namespace.

use crate::ensure_eq;
use crate::harness::{Group, Sandbox, repo_root, wait_for};
use anyhow::{Context, Result, ensure};
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

pub const GROUP: Group = Group {
    name: "hostile-clients",
    cases: &[
        ("limits_are_set_per_unit", limits_are_set_per_unit),
        ("oversized_heads_get_431", oversized_heads_get_431),
        (
            "a_50_mb_header_costs_little_memory",
            a_50_mb_header_costs_little_memory,
        ),
        ("checks_come_before_the_body", checks_come_before_the_body),
        (
            "a_slow_request_gets_408_at_the_deadline",
            a_slow_request_gets_408_at_the_deadline,
        ),
        (
            "connection_upgrade_is_not_a_body",
            connection_upgrade_is_not_a_body,
        ),
        ("health_answers_under_a_flood", health_answers_under_a_flood),
        (
            "idle_attackers_do_not_keep_it_running",
            idle_attackers_do_not_keep_it_running,
        ),
        (
            "a_socket_restricted_to_one_address",
            a_socket_restricted_to_one_address,
        ),
        ("attack_memory_500_heads_of_0xff", attack_memory),
        ("attack_600_idle_connections", attack_idle),
        ("attack_slow_readers_pipelining", attack_slow_readers),
        ("attack_heads_a_byte_at_a_time", attack_trickle),
        ("attack_all_at_once", attack_all_at_once),
        (
            "idle_exit_answers_requests_in_flight",
            idle_exit_answers_requests_in_flight,
        ),
    ],
};

const PORTS: [(u16, &str); 2] = [(5001, "shutdown-service"), (5002, "inference-service")];

/// Runs tests/e2e/hostile.py inside the container; its `key=value` lines.
fn hostile(s: &Sandbox, args: &str) -> Result<HashMap<String, String>> {
    let dest = s.dir.join("root/hostile.py");
    if !dest.exists() {
        std::fs::copy(repo_root().join("tests/e2e/hostile.py"), &dest)
            .context("copying hostile.py into the container")?;
    }
    let out = s.ok(&format!("python3 /root/hostile.py {args}"))?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

fn num(kv: &HashMap<String, String>, key: &str) -> Result<f64> {
    kv.get(key)
        .with_context(|| format!("hostile.py printed no {key}: {kv:?}"))?
        .parse()
        .with_context(|| format!("{key} in {kv:?}"))
}

fn main_pid(s: &Sandbox, unit: &str) -> Result<String> {
    let pid = s.prop(&format!("{unit}.service"), "MainPID")?;
    ensure!(pid != "0", "{unit} is not running");
    Ok(pid)
}

/// `VmHWM` (peak resident memory) of the service's main process, in KiB.
fn peak_kib(s: &Sandbox, unit: &str) -> Result<u64> {
    let pid = main_pid(s, unit)?;
    let out = s.ok(&format!("awk '/^VmHWM:/ {{print $2}}' /proc/{pid}/status"))?;
    out.trim().parse().context("VmHWM")
}

/// Starts (or keeps) the service and checks it answers; returns its main PID.
fn running(s: &Sandbox, port: u16, unit: &str) -> Result<String> {
    s.get(&format!(":{port}/health"))?.expect(200)?;
    main_pid(s, unit)
}

/// The service survived: same process, no restart, still answering.
fn survived(s: &Sandbox, port: u16, unit: &str, pid: &str) -> Result<()> {
    s.get(&format!(":{port}/health"))?.expect(200)?;
    ensure_eq!(
        main_pid(s, unit)?,
        pid,
        "{unit}'s main PID after the attack"
    );
    ensure_eq!(s.prop(&format!("{unit}.service"), "NRestarts")?, "0");
    Ok(())
}

fn limits_are_set_per_unit(s: &Sandbox) -> Result<()> {
    for unit in [
        "shutdown-service",
        "inference-service",
        "brain-experiment-coordinator",
    ] {
        let service = format!("{unit}.service");
        let tasks: u64 = s.prop(&service, "TasksMax")?.parse().context("TasksMax")?;
        ensure!(
            (16..=128).contains(&tasks),
            "{service} TasksMax={tasks}, expected a bound of at most 128"
        );
        let memory: u64 = s
            .prop(&service, "MemoryMax")?
            .parse()
            .context("MemoryMax")?;
        ensure!(
            memory <= 256 * 1024 * 1024,
            "{service} MemoryMax={memory}, expected a bound"
        );
        // Per-user process limits would put both services on one budget.
        ensure_eq!(
            s.prop(&service, "LimitNPROC")?,
            s.prop("systemd-journald.service", "LimitNPROC")?,
            "{service} LimitNPROC (expected the default)"
        );
    }
    Ok(())
}

fn oversized_heads_get_431(s: &Sandbox) -> Result<()> {
    let dir = s.dir.join("root");
    let mut many = String::new();
    for i in 0..101 {
        many.push_str(&format!("X-H{i}: v\n"));
    }
    std::fs::write(dir.join("many-headers"), &many)?;
    for (port, unit) in PORTS {
        let pid = running(s, port, unit)?;
        let big = format!("X-Big: {}", "a".repeat(70 * 1024));
        let msg = s
            .curl("GET", &format!(":{port}/health"), &["-H", &big])?
            .expect_error(431)?;
        ensure!(msg.contains("65536"), "431 does not give the limit: {msg}");
        let msg = s
            .curl(
                "GET",
                &format!(":{port}/health"),
                &["-H", &format!("@{}", dir.join("many-headers").display())],
            )?
            .expect_error(431)?;
        ensure!(msg.contains("100"), "431 does not give the limit: {msg}");
        let long = format!(":{port}/health?{}", "q".repeat(9 * 1024));
        let msg = s.get(&long)?.expect_error(431)?;
        ensure!(msg.contains("8192"), "431 does not give the limit: {msg}");
        // Just under the bounds is served.
        let fine = format!("X-Fine: {}", "a".repeat(60 * 1024));
        s.curl("GET", &format!(":{port}/health"), &["-H", &fine])?
            .expect(200)?;
        survived(s, port, unit, &pid)?;
    }
    Ok(())
}

fn a_50_mb_header_costs_little_memory(s: &Sandbox) -> Result<()> {
    for (port, unit) in PORTS {
        let pid = running(s, port, unit)?;
        let kv = hostile(s, &format!("bigheader {port} 50"))?;
        let peak = peak_kib(s, unit)?;
        eprintln!(
            "   {unit}: 50 MB header: {} bytes sent before the close, answer {}, peak RSS {peak} KiB",
            kv["sent"], kv["status"]
        );
        ensure!(
            peak < 64 * 1024,
            "{unit} peak memory {peak} KiB after a 50 MB header (limit 64 MiB)"
        );
        survived(s, port, unit, &pid)?;
    }
    Ok(())
}

fn checks_come_before_the_body(s: &Sandbox) -> Result<()> {
    let cases = [
        (5001, "POST", "/shutdown/schedule", "401"),
        (5001, "PUT", "/health", "405"),
        (5001, "POST", "/no/such", "404"),
        (5002, "POST", "/models/x/start", "401"),
        (5002, "DELETE", "/health", "405"),
    ];
    for (port, method, path, status) in cases {
        // The head announces a 60000-byte body that never comes: the answer cannot wait for it.
        let kv = hostile(s, &format!("nobody {port} {method} {path}"))?;
        ensure_eq!(kv["status"], status, "{method} {path} on {port}: {kv:?}");
        ensure!(
            num(&kv, "seconds")? < 1.0,
            "{method} {path}: answered only after {}s",
            kv["seconds"]
        );
        ensure_eq!(
            kv["closed"],
            "True",
            "connection closed after {method} {path}"
        );
        ensure!(
            kv["body"].contains("\"status\":\"error\""),
            "not a JSON error: {}",
            kv["body"]
        );
    }
    // Nothing was scheduled by any of it.
    s.get(":5001/shutdown/status")?.expect(200)?;
    let timers = s.ok("systemctl list-units --all --no-legend 'homelab-shutdown@*.timer'")?;
    ensure!(timers.trim().is_empty(), "a timer appeared: {timers}");
    Ok(())
}

fn a_slow_request_gets_408_at_the_deadline(s: &Sandbox) -> Result<()> {
    for (port, unit) in PORTS {
        let pid = running(s, port, unit)?;
        let kv = hostile(s, &format!("partial {port}"))?;
        ensure_eq!(kv["status"], "408", "half a head on {port}: {kv:?}");
        let secs = num(&kv, "seconds")?;
        ensure!(
            (9.0..13.0).contains(&secs),
            "408 after {secs}s, expected about 10"
        );
        ensure_eq!(kv["closed"], "True");
        ensure!(kv["body"].contains("10s"), "408 body: {}", kv["body"]);
        survived(s, port, unit, &pid)?;
    }
    Ok(())
}

fn connection_upgrade_is_not_a_body(s: &Sandbox) -> Result<()> {
    for (port, _) in PORTS {
        let kv = hostile(s, &format!("upgrade {port}"))?;
        ensure_eq!(kv["status"], "200", "GET with Connection: Upgrade: {kv:?}");
        ensure!(
            num(&kv, "seconds")? < 1.0,
            "the upgrade request held the connection {}s",
            kv["seconds"]
        );
        ensure_eq!(kv["closed"], "True", "closed after the answer");
    }
    Ok(())
}

fn health_answers_under_a_flood(s: &Sandbox) -> Result<()> {
    for (port, unit) in PORTS {
        let pid = running(s, port, unit)?;
        // The other service meanwhile: its own budget, so it answers too.
        let (other_port, _) = PORTS.iter().find(|(p, _)| *p != port).copied().unwrap();
        let kv = hostile(s, &format!("flood {port} 400 40 15 {pid}"))?;
        eprintln!("   {unit} under 400 idle + 40 trickling connections: {kv:?}");
        ensure_eq!(kv["failed"], "0", "failed /health probes");
        ensure!(num(&kv, "probes")? >= 20.0, "too few probes: {kv:?}");
        ensure!(
            num(&kv, "max_ms")? < 1000.0,
            "/health took {} ms under the flood",
            kv["max_ms"]
        );
        ensure!(
            num(&kv, "max_threads")? <= 128.0,
            "{} threads under the flood",
            kv["max_threads"]
        );
        ensure!(
            num(&kv, "hwm_kb")? < 64.0 * 1024.0,
            "peak RSS {} KiB under the flood",
            kv["hwm_kb"]
        );
        s.get(&format!(":{other_port}/health"))?.expect(200)?;
        survived(s, port, unit, &pid)?;
    }
    Ok(())
}

/// Connections that never complete a request are no activity: with them still open the service
/// exits when idle, cleanly, and the next request starts it again.
fn idle_attackers_do_not_keep_it_running(s: &Sandbox) -> Result<()> {
    let (port, unit) = PORTS[0];
    let service = format!("{unit}.service");
    s.ok(&format!(
        "mkdir -p /etc/systemd/system/{service}.d && printf '[Service]\\nEnvironment=HOMELAB_IDLE_TIMEOUT=3\\n' \
         > /etc/systemd/system/{service}.d/idle.conf && systemctl daemon-reload && systemctl stop {service}"
    ))?;
    running(s, port, unit)?;
    hostile(s, "hold 5001 0 0 0")?; // copies the script in before the timed part
    let dir = s.dir.clone();
    let holder = std::thread::spawn(move || {
        Command::new(repo_root().join("tests/e2e/sandbox.sh"))
            .args(["exec", dir.to_str().unwrap_or_default()])
            .args(["timeout", "60", "python3", "/root/hostile.py"])
            .args(["hold", "5001", "200", "20", "20"])
            .stdin(Stdio::null())
            .output()
    });
    let exited = wait_for(
        &format!("{service} to exit when idle while 220 connections stay open"),
        Duration::from_secs(15),
        || Ok(s.active_state(&service)? == "inactive"),
    );
    let held = holder
        .join()
        .map_err(|_| anyhow::anyhow!("holder panicked"))??;
    exited?;
    let out = String::from_utf8_lossy(&held.stdout);
    ensure!(
        out.contains("connections="),
        "the holding client did not run: {out}{}",
        String::from_utf8_lossy(&held.stderr)
    );
    ensure_eq!(s.prop(&service, "Result")?, "success");
    s.get(&format!(":{port}/health"))?.expect(200)?;
    ensure_eq!(s.active_state(&service)?, "active");
    s.ok(&format!(
        "rm -r /etc/systemd/system/{service}.d && systemctl daemon-reload"
    ))?;
    Ok(())
}

/// curl from the host in the container's network namespace; the HTTP code, or an error.
fn curl_to(s: &Sandbox, url: &str) -> Result<std::process::Output> {
    Command::new("ip")
        .args(["netns", "exec", &s.netns, "curl", "-sS", "--max-time", "10"])
        .args(["-o", "/dev/null", "-w", "%{http_code}", url])
        .stdin(Stdio::null())
        .output()
        .context("running curl")
}

/// docs/http-api.md's drop-in for listening on one address, applied with `systemctl edit`.
fn a_socket_restricted_to_one_address(s: &Sandbox) -> Result<()> {
    std::fs::write(
        s.dir.join("root/listen.conf"),
        "[Socket]\nListenStream=\nListenStream=127.0.0.2:5001\n",
    )?;
    // `systemctl edit` as docs/http-api.md says, the "editor" writing the file it is given last
    // (systemd 257 may pass a cursor position before it); systemctl wants a terminal.
    std::fs::write(
        s.dir.join("root/put-listen"),
        "#!/bin/sh\nfor f; do :; done\ncat /root/listen.conf > \"$f\"\n",
    )?;
    s.ok("chmod 755 /root/put-listen && SYSTEMD_EDITOR=/root/put-listen script -qec 'systemctl edit shutdown-service.socket' /dev/null")?;
    s.ok("systemctl restart shutdown-service.socket")?;
    ensure_eq!(
        s.prop("shutdown-service.socket", "Listen")?,
        "127.0.0.2:5001 (Stream)"
    );
    let allowed = curl_to(s, "http://127.0.0.2:5001/health")?;
    ensure_eq!(
        String::from_utf8_lossy(&allowed.stdout),
        "200",
        "on the chosen address: {}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    let other = curl_to(s, "http://127.0.0.1:5001/health")?;
    ensure_eq!(
        other.status.code(),
        Some(7),
        "curl to 127.0.0.1:5001 should be refused (exit 7): {}{}",
        String::from_utf8_lossy(&other.stdout),
        String::from_utf8_lossy(&other.stderr)
    );
    s.ok("systemctl revert shutdown-service.socket && systemctl restart shutdown-service.socket")?;
    s.get(":5001/health")?.expect(200)?;
    Ok(())
}

/// Seconds each attack lasts.
const ATTACK_SECONDS: u32 = 30;

/// Connections of each kind in an attack (see hostile.py's `attack`).
#[derive(Clone, Copy)]
struct Attack {
    memory: u32,
    idle: u32,
    slow: u32,
    trickle: u32,
}

/// Runs `attack` against both services at once for [`ATTACK_SECONDS`], and checks what the
/// security order asks of each: never killed nor restarted, peak memory under 64 MiB, `/health`
/// from a fresh connection under 100 ms at p99 and under 1 s at worst, fewer than 16 tasks.
fn attack_both(s: &Sandbox, what: &str, attack: Attack) -> Result<()> {
    hostile(s, "upgrade 5001")?; // copies the script in
    let pids = PORTS
        .iter()
        .map(|&(port, unit)| running(s, port, unit))
        .collect::<Result<Vec<_>>>()?;
    let results = std::thread::scope(|scope| {
        let runs: Vec<_> = PORTS
            .iter()
            .zip(&pids)
            .map(|(&(port, _), pid)| {
                let Attack {
                    memory,
                    idle,
                    slow,
                    trickle,
                } = attack;
                let cmd = format!(
                    "ulimit -n 4096 && python3 /root/hostile.py attack {port} {ATTACK_SECONDS} {pid} {memory} {idle} {slow} {trickle}"
                );
                scope.spawn(move || s.ok(&cmd))
            })
            .collect();
        runs.into_iter()
            .map(|r| {
                r.join()
                    .map_err(|_| anyhow::anyhow!("attack thread panicked"))?
            })
            .collect::<Result<Vec<_>>>()
    })?;
    for ((&(port, unit), pid), out) in PORTS.iter().zip(&pids).zip(results) {
        let kv: HashMap<String, String> = out
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        eprintln!("   {unit} under {what}: {kv:?}");
        let tasks = s.prop(&format!("{unit}.service"), "TasksCurrent")?;
        ensure!(num(&kv, "probes")? >= 100.0, "too few probes: {kv:?}");
        ensure_eq!(
            kv["failed"],
            "0",
            "{unit}: failed /health probes under {what}"
        );
        ensure!(
            num(&kv, "p99_ms")? < 100.0 && num(&kv, "max_ms")? < 1000.0,
            "{unit}: /health p99 {} ms, worst {} ms under {what} (limits 100 ms, 1 s)",
            kv["p99_ms"],
            kv["max_ms"]
        );
        ensure!(
            num(&kv, "peak_kb")? < 64.0 * 1024.0,
            "{unit}: peak memory {} KiB ({}) under {what} (limit 64 MiB)",
            kv["peak_kb"],
            kv["peak_source"]
        );
        ensure!(
            num(&kv, "max_threads")? < 16.0,
            "{unit}: {} threads under {what}",
            kv["max_threads"]
        );
        // Without a pids controller (cgroup v1 in the container) systemd reports no number.
        if let Ok(tasks) = tasks.parse::<u64>() {
            ensure!(tasks < 16, "{unit}: TasksCurrent={tasks} after {what}");
        }
        ensure!(
            s.prop(&format!("{unit}.service"), "Result")? != "oom-kill",
            "{unit} was OOM-killed"
        );
        survived(s, port, unit, pid)?;
    }
    Ok(())
}

fn attack_memory(s: &Sandbox) -> Result<()> {
    let attack = Attack {
        memory: 500,
        idle: 0,
        slow: 0,
        trickle: 0,
    };
    attack_both(
        s,
        "500 heads of 65 KB with almost all of a 64 KiB body",
        attack,
    )
}

fn attack_idle(s: &Sandbox) -> Result<()> {
    let attack = Attack {
        memory: 0,
        idle: 600,
        slow: 0,
        trickle: 0,
    };
    attack_both(s, "600 idle connections, reopened", attack)
}

fn attack_slow_readers(s: &Sandbox) -> Result<()> {
    let attack = Attack {
        memory: 0,
        idle: 0,
        slow: 20,
        trickle: 0,
    };
    attack_both(s, "20 pipelining readers with a 1-byte buffer", attack)
}

fn attack_trickle(s: &Sandbox) -> Result<()> {
    let attack = Attack {
        memory: 0,
        idle: 0,
        slow: 0,
        trickle: 20,
    };
    attack_both(s, "20 heads sent a byte at a time", attack)
}

fn attack_all_at_once(s: &Sandbox) -> Result<()> {
    let attack = Attack {
        memory: 500,
        idle: 600,
        slow: 20,
        trickle: 20,
    };
    attack_both(s, "every attack at once", attack)
}

/// docs/http-api.md's drop-in for the idle timeout, written where `systemctl edit` writes it
/// (`override.conf` in the unit's `.d` folder), then the reload that `systemctl edit` does.
fn set_idle_timeout(s: &Sandbox, service: &str, secs: Option<u32>) -> Result<()> {
    let dir = format!("/etc/systemd/system/{service}.d");
    match secs {
        Some(secs) => s.ok(&format!(
            "mkdir -p {dir} && printf '[Service]\\nEnvironment=HOMELAB_IDLE_TIMEOUT={secs}\\n' > {dir}/override.conf && systemctl daemon-reload"
        ))?,
        None => s.ok(&format!(
            "rm -f {dir}/override.conf && rmdir --ignore-fail-on-non-empty {dir} && systemctl daemon-reload"
        ))?,
    };
    Ok(())
}

/// Requests begun when the idle timer runs (half their head sent) get their answer: the service
/// stops accepting, answers them, and only then exits; the next request starts it again.
fn idle_exit_answers_requests_in_flight(s: &Sandbox) -> Result<()> {
    hostile(s, "upgrade 5001")?; // copies the script in
    for (port, unit) in PORTS {
        let service = format!("{unit}.service");
        set_idle_timeout(s, &service, Some(2))?;
        s.ok(&format!("systemctl stop {service}"))?;
        running(s, port, unit)?;
        let kv = hostile(s, &format!("inflight {port} 5 {service}"))?;
        ensure_eq!(
            kv["state"],
            "deactivating",
            "{unit} did not begin its idle exit: {kv:?}"
        );
        ensure_eq!(
            kv["answered"],
            "5",
            "{unit}: requests answered at the idle exit"
        );
        wait_for(
            &format!("{service} to end its idle exit"),
            Duration::from_secs(15),
            || Ok(s.active_state(&service)? == "inactive"),
        )?;
        ensure_eq!(s.prop(&service, "Result")?, "success");
        s.get(&format!(":{port}/health"))?.expect(200)?;
        set_idle_timeout(s, &service, None)?;
        s.ok(&format!("systemctl restart {service}"))?;
    }
    Ok(())
}
