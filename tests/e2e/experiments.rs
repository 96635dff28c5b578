//! Experiments as template units with limits from their .env files, the target, the
//! generator, the transient launcher and brainctl, on a booted systemd.

use crate::ensure_eq;
use crate::harness::{Group, Sandbox, holds_for, wait_for};
use anyhow::{Context, Result, ensure};
use serde_json::Value;
use std::time::Duration;

pub const GROUP: Group = Group {
    name: "experiments",
    cases: &[
        (
            "generator_turns_env_files_into_limits",
            generator_turns_env_files_into_limits,
        ),
        (
            "target_starts_enabled_and_stops_all",
            target_starts_enabled_and_stops_all,
        ),
        (
            "a_failing_experiment_stops_after_three_starts",
            a_failing_experiment_stops_after_three_starts,
        ),
        (
            "brainctl_run_makes_a_transient_unit_with_limits",
            brainctl_run_makes_a_transient_unit_with_limits,
        ),
        (
            "status_of_many_experiments_agrees_with_systemctl_show",
            status_of_many_experiments_agrees_with_systemctl_show,
        ),
        (
            "brainctl_errors_and_exit_codes",
            brainctl_errors_and_exit_codes,
        ),
        (
            "enable_and_disable_decide_what_boots",
            enable_and_disable_decide_what_boots,
        ),
        (
            "an_edited_env_applies_at_the_next_restart",
            an_edited_env_applies_at_the_next_restart,
        ),
        (
            "logrotate_and_verify_with_generated_dropins",
            logrotate_and_verify_with_generated_dropins,
        ),
        (
            "broken_env_files_leave_boot_and_others_fine",
            broken_env_files_leave_boot_and_others_fine,
        ),
    ],
};

const DIR: &str = "/etc/brain-in-jar/experiments";

/// e1 is enabled by its .env (EXPERIMENT_ENABLED=yes), e2 with `systemctl enable`, e3 not at all.
fn setup(s: &Sandbox) -> Result<()> {
    s.ok(&format!(
        "mkdir -p {DIR} && rm -f {DIR}/* /etc/systemd/system/brain-experiment.target.wants/* && cd {DIR} && \
         printf 'EXPERIMENT_RAM_LIMIT=1G\\nEXPERIMENT_CPU_QUOTA=50%%\\nEXPERIMENT_COMMAND=/bin/sleep infinity\\nEXPERIMENT_ENABLED=yes\\n' > e1.env && \
         printf 'EXPERIMENT_RAM_LIMIT=512M\\nEXPERIMENT_CPU_QUOTA=200%%\\nEXPERIMENT_COMMAND=/bin/sleep infinity\\nEXPERIMENT_GPU=yes\\n' > e2.env && \
         printf 'EXPERIMENT_RAM_LIMIT=256M\\nEXPERIMENT_COMMAND=/bin/sleep infinity\\n' > e3.env && \
         systemctl daemon-reload && systemctl enable brain-experiment@e2"
    ))?;
    Ok(())
}

fn unit(id: &str) -> String {
    format!("brain-experiment@{id}.service")
}

fn brainctl(s: &Sandbox, args: &str) -> Result<(i32, String, String)> {
    let out = s.sh(&format!("brainctl {args}"))?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn generator_turns_env_files_into_limits(s: &Sandbox) -> Result<()> {
    setup(s)?;
    ensure_eq!(s.prop(&unit("e1"), "MemoryMax")?, "1073741824");
    ensure_eq!(s.prop(&unit("e1"), "CPUQuotaPerSecUSec")?, "500ms");
    ensure_eq!(s.prop(&unit("e2"), "MemoryMax")?, "536870912");
    ensure_eq!(s.prop(&unit("e2"), "CPUQuotaPerSecUSec")?, "2s");
    ensure!(
        s.prop(&unit("e2"), "DeviceAllow")?
            .contains("/dev/nvidiactl rw"),
        "no GPU devices for e2"
    );
    ensure!(
        !s.prop(&unit("e1"), "DeviceAllow")?.contains("nvidia"),
        "GPU devices without EXPERIMENT_GPU"
    );
    ensure_eq!(s.prop(&unit("e3"), "MemoryMax")?, "268435456");
    ensure_eq!(s.prop(&unit("e1"), "Slice")?, "brain-experiments.slice");
    ensure_eq!(s.prop(&unit("e1"), "User")?, "brain");
    // A value changed in the .env is a new limit after daemon-reload.
    s.ok(&format!(
        "sed -i 's/=1G/=2G/' {DIR}/e1.env && systemctl daemon-reload"
    ))?;
    ensure_eq!(s.prop(&unit("e1"), "MemoryMax")?, "2147483648");
    Ok(())
}

fn target_starts_enabled_and_stops_all(s: &Sandbox) -> Result<()> {
    setup(s)?;
    ensure_eq!(
        s.ok("systemctl is-enabled brain-experiment.target")?.trim(),
        "enabled",
        "enabled at install"
    );
    s.ok("systemctl start brain-experiment.target")?;
    ensure_eq!(s.active_state(&unit("e1"))?, "active");
    ensure_eq!(s.active_state(&unit("e2"))?, "active");
    ensure_eq!(
        s.active_state(&unit("e3"))?,
        "inactive",
        "the disabled experiment"
    );
    let pid = s.prop(&unit("e1"), "MainPID")?;
    // Admitted, the gate execs the experiment in its place: same PID, user brain.
    wait_for(
        "e1's gate to become the experiment",
        Duration::from_secs(5),
        || {
            Ok(s.ok(&format!("ps -o user=,args= -p {pid}"))?.trim()
                == "brain    /bin/sleep infinity")
        },
    )?;
    ensure_eq!(
        s.ok(&format!(
            "tr '\\0' '\\n' < /proc/{pid}/environ | grep ^EXPERIMENT_ID="
        ))?
        .trim(),
        "EXPERIMENT_ID=e1"
    );
    s.ok("systemctl stop brain-experiment.target")?;
    ensure_eq!(s.active_state(&unit("e1"))?, "inactive");
    ensure_eq!(s.active_state(&unit("e2"))?, "inactive");
    // brainctl start-all / stop-all are the same through D-Bus.
    let (code, out, err) = brainctl(s, "start-all")?;
    ensure!(code == 0, "start-all: {out}{err}");
    ensure_eq!(s.active_state(&unit("e2"))?, "active");
    let (code, out, err) = brainctl(s, "stop-all")?;
    ensure!(code == 0, "stop-all: {out}{err}");
    ensure_eq!(s.active_state(&unit("e2"))?, "inactive");
    Ok(())
}

fn a_failing_experiment_stops_after_three_starts(s: &Sandbox) -> Result<()> {
    setup(s)?;
    s.ok(&format!(
        "printf 'EXPERIMENT_COMMAND=/bin/false\\n' > {DIR}/crash.env && systemctl daemon-reload"
    ))?;
    let (code, out, err) = brainctl(s, "start crash")?;
    ensure!(code == 0, "start: {out}{err}");
    wait_for(
        "the crashing experiment to stay failed",
        Duration::from_secs(30),
        || Ok(s.active_state(&unit("crash"))? == "failed"),
    )?;
    holds_for(
        "the crashing experiment stays failed",
        Duration::from_secs(4),
        || Ok(s.active_state(&unit("crash"))? == "failed"),
    )?;
    let starts = s.ok(&format!(
        "journalctl -u {} --no-pager -o cat | grep -c '^Started '",
        unit("crash")
    ))?;
    ensure_eq!(starts.trim(), "3", "starts of the crashing experiment");
    let log = s.ok(&format!(
        "journalctl -u {} --no-pager -o cat",
        unit("crash")
    ))?;
    ensure!(
        log.contains("Start request repeated too quickly"),
        "not stopped by the start limit: {log}"
    );
    // systemd counts the restart it scheduled and the start limit then refused.
    ensure_eq!(s.prop(&unit("crash"), "NRestarts")?, "3");
    let (code, out, _) = brainctl(s, "status crash --json")?;
    ensure!(code == 0, "status: {out}");
    let json: Value = serde_json::from_str(&out).context("status --json is not JSON")?;
    ensure_eq!(json["restarts"], 3);
    ensure_eq!(json["active_state"], "failed");
    ensure_eq!(json["last_exit_status"], 1);
    let (_, human, _) = brainctl(s, "status crash")?;
    ensure!(human.contains("restarts: 3"), "{human}");
    s.ok(&format!(
        "systemctl reset-failed {}; rm {DIR}/crash.env",
        unit("crash")
    ))?;
    Ok(())
}

fn brainctl_run_makes_a_transient_unit_with_limits(s: &Sandbox) -> Result<()> {
    setup(s)?;
    s.ok("systemctl start brain-experiment.target")?;
    let (code, out, err) = brainctl(
        s,
        "run t1 --memory 256M --cpu 25% --config /etc/brain-in-jar/t1.json -- sleep infinity",
    )?;
    ensure!(code == 0, "run: {out}{err}");
    ensure_eq!(out.trim(), "brain-run-t1.service");
    let t = "brain-run-t1.service";
    // brainctl returns when the start job has ended: admitted, the unit is up.
    ensure_eq!(s.active_state(t)?, "active");
    ensure_eq!(s.prop(t, "MemoryMax")?, "268435456");
    ensure_eq!(s.prop(t, "CPUQuotaPerSecUSec")?, "250ms");
    ensure_eq!(s.prop(t, "Slice")?, "brain-experiments.slice");
    ensure_eq!(s.prop(t, "Restart")?, "on-failure");
    ensure_eq!(s.prop(t, "User")?, "brain");
    ensure!(
        s.prop(t, "PartOf")?.contains("brain-experiment.target"),
        "not PartOf the target"
    );
    // The same policy and hardening as the template (one list in transient.rs, one unit file).
    for p in [
        "User",
        "Slice",
        "Restart",
        "RestartUSec",
        "StartLimitBurst",
        "StartLimitIntervalUSec",
        "TimeoutStopUSec",
        "CapabilityBoundingSet",
        "NoNewPrivileges",
        "PrivateTmp",
        "ProtectSystem",
        "ProtectHome",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectClock",
        "ProtectHostname",
        "LockPersonality",
        "RestrictRealtime",
        "RestrictSUIDSGID",
        "DevicePolicy",
        "ProtectProc",
        "RemoveIPC",
        "RestrictAddressFamilies",
        "RestrictNamespaces",
        "SystemCallArchitectures",
        "SystemCallFilter",
        "UMask",
    ] {
        ensure_eq!(
            s.prop(t, p)?,
            s.prop(&unit("e1"), p)?,
            "{p} of the transient unit vs the template"
        );
    }
    let pid = s.prop(t, "MainPID")?;
    let env = s.ok(&format!("tr '\\0' '\\n' < /proc/{pid}/environ"))?;
    ensure!(
        env.contains("EXPERIMENT_CONFIG=/etc/brain-in-jar/t1.json"),
        "{env}"
    );
    let (code, out, _) = brainctl(s, "status --json")?;
    ensure!(code == 0, "{out}");
    let all: Vec<Value> = serde_json::from_str(&out).context("status --json")?;
    let kinds: Vec<(String, String)> = all
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap_or_default().to_string(),
                e["kind"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    for want in [
        ("e1", "template"),
        ("e2", "template"),
        ("e3", "template"),
        ("t1", "transient"),
    ] {
        ensure!(
            kinds.contains(&(want.0.to_string(), want.1.to_string())),
            "{want:?} missing from {kinds:?}"
        );
    }
    let t1 = all.iter().find(|e| e["id"] == "t1").context("t1")?;
    ensure_eq!(t1["memory_limit"], 268435456u64);
    ensure_eq!(t1["cpu_quota_percent"], 25.0);
    ensure!(t1["main_pid"].is_u64() && t1["since"].is_string(), "{t1}");
    // Stopping the target stops the transient experiment too.
    s.ok("systemctl stop brain-experiment.target")?;
    wait_for(
        "the transient unit to stop",
        Duration::from_secs(10),
        || Ok(matches!(s.active_state(t)?.as_str(), "inactive" | "")),
    )?;
    // A program that does not exist is refused before any unit is made.
    let (code, out, err) = brainctl(s, "run t2 -- /no/such/program")?;
    ensure!(
        code == 2 && err.contains("not an executable"),
        "a bad command launched: {code} {out}{err}"
    );
    Ok(())
}

/// More units than brainctl keeps property requests in flight (64), each with its own limits, so
/// that a reply matched to the wrong unit or a lost one shows; and a failed one among them.
fn status_of_many_experiments_agrees_with_systemctl_show(s: &Sandbox) -> Result<()> {
    let result = many_experiments(s);
    s.ok("systemctl stop 'brain-run-*' ; systemctl reset-failed 'brain-run-*' ; true")?;
    result?;
    wait_for(
        "the transient units to be unloaded",
        Duration::from_secs(20),
        || {
            Ok(
                s.ok("systemctl list-units --all --no-legend --plain brain-run-t9.service brain-run-t3.service")?
                    .trim()
                    .is_empty(),
            )
        },
    )
}

fn many_experiments(s: &Sandbox) -> Result<()> {
    const N: u32 = 80;
    s.ok(&format!(
        "for i in $(seq 1 {N}); do systemd-run --quiet --unit=brain-run-m$i \
           --slice=brain-experiments.slice -p MemoryMax=${{i}}M -p CPUQuota=$((i + 5))% \
           /bin/sleep infinity || exit 1; done; \
         systemd-run --quiet --unit=brain-run-bad /bin/sh -c 'exit 7'"
    ))?;
    wait_for("the units to run", Duration::from_secs(60), || {
        let n = s.ok(
            "systemctl list-units --no-legend --plain --state=running 'brain-run-m*' | wc -l",
        )?;
        Ok(n.trim() == N.to_string())
    })?;
    wait_for("brain-run-bad to fail", Duration::from_secs(10), || {
        Ok(s.active_state("brain-run-bad.service")? == "failed")
    })?;
    let (code, out, err) = brainctl(s, "status --json")?;
    ensure!(code == 0, "{out}{err}");
    let all: Vec<Value> = serde_json::from_str(&out).context("status --json")?;
    for i in 1..=N {
        let id = format!("m{i}");
        let unit = format!("brain-run-{id}.service");
        let e = all
            .iter()
            .find(|e| e["id"] == id.as_str())
            .with_context(|| format!("{id} missing from brainctl status"))?;
        ensure_eq!(e["unit"], unit.as_str());
        ensure_eq!(e["active_state"], "active");
        ensure_eq!(e["memory_limit"], u64::from(i) << 20);
        ensure_eq!(e["cpu_quota_percent"], f64::from(i + 5));
        ensure_eq!(e["main_pid"], s.prop(&unit, "MainPID")?.parse::<u64>()?);
        ensure_eq!(e["restarts"], 0);
        ensure_eq!(e["result"], "success");
        ensure!(e["since"].is_string(), "{e}");
    }
    let bad = all
        .iter()
        .find(|e| e["id"] == "bad")
        .context("bad missing from brainctl status")?;
    ensure_eq!(bad["active_state"], "failed");
    ensure_eq!(bad["result"], "exit-code");
    ensure_eq!(bad["last_exit_status"], 7);
    ensure_eq!(bad["main_pid"], Value::Null);
    // One id's status is the same as its entry in the list.
    let (code, one, _) = brainctl(s, "status m42 --json")?;
    ensure!(code == 0, "{one}");
    let one: Value = serde_json::from_str(&one).context("status m42 --json")?;
    let listed = all.iter().find(|e| e["id"] == "m42").context("m42")?;
    ensure_eq!(&one, listed);
    Ok(())
}

fn brainctl_errors_and_exit_codes(s: &Sandbox) -> Result<()> {
    setup(s)?;
    let long = "a".repeat(10_240);
    for bad in ["'../x'", "'a*'", "'a/b'", "'x y'", "$'a\\nb'", &long] {
        let (code, _, err) = brainctl(s, &format!("start {bad}"))?;
        ensure!(
            code == 2 && err.contains("experiment id"),
            "start {bad:.40}: {code} {err}"
        );
    }
    // Stopping what does not run is nothing to do, as `systemctl stop` says.
    let (code, out, err) = brainctl(s, "stop e3")?;
    ensure!(
        code == 0 && out.contains("not running"),
        "stop of a stopped experiment: {code} {out}{err}"
    );
    let (code, _, err) = brainctl(s, "start nosuch")?;
    ensure!(
        code == 3 && err.contains("no experiment"),
        "unknown: {code} {err}"
    );
    let (code, _, err) = brainctl(s, "status nosuch")?;
    ensure!(code == 3, "status unknown: {code} {err}");
    s.ok("id tester >/dev/null 2>&1 || useradd -m tester")?;
    let out = s.as_user("tester", "brainctl start e1")?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(4) && err.contains("permission denied"),
        "as tester: {:?} {err}",
        out.status.code()
    );
    let out = s.as_user("tester", "brainctl run t9 -- /bin/sleep 1")?;
    ensure!(
        out.status.code() == Some(4),
        "tester launched a transient unit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, _, _) = brainctl(s, "run t3 --memory lots -- /bin/true")?;
    ensure!(code == 2, "bad --memory: {code}");
    ensure_eq!(
        s.ok("systemctl list-units --all --no-legend --plain brain-run-t9.service brain-run-t3.service")?
            .trim(),
        "",
        "units created by bad runs"
    );
    let (code, out, _) = brainctl(s, "logs e1 -n 5")?;
    ensure!(code == 0, "logs: {out}");
    Ok(())
}

/// `systemctl enable`/`disable` (and brainctl's) decide what starts at boot, beside
/// `EXPERIMENT_ENABLED=yes` in the .env, which `disable` cannot override (and says so).
fn enable_and_disable_decide_what_boots(s: &Sandbox) -> Result<()> {
    setup(s)?;
    ensure_eq!(
        s.ok("systemctl is-enabled brain-experiment@e3 || true")?
            .trim(),
        "disabled"
    );
    s.ok("systemctl enable brain-experiment@e3")?;
    s.ok("systemctl disable brain-experiment@e2")?;
    s.stop();
    s.start()?;
    wait_for(
        "e3 and e1 to run after the reboot",
        Duration::from_secs(20),
        || Ok(s.active_state(&unit("e3"))? == "active" && s.active_state(&unit("e1"))? == "active"),
    )?;
    ensure_eq!(s.active_state(&unit("e2"))?, "inactive", "the disabled e2");
    let (_, out, _) = brainctl(s, "status e3 --json")?;
    let e3: Value = serde_json::from_str(&out).context("status e3 --json")?;
    ensure_eq!(e3["enabled"], true);
    s.ok("systemctl disable brain-experiment@e3")?;
    s.stop();
    s.start()?;
    wait_for(
        "e1 to run after the second reboot",
        Duration::from_secs(20),
        || Ok(s.active_state(&unit("e1"))? == "active"),
    )?;
    ensure_eq!(s.active_state(&unit("e3"))?, "inactive", "e3 after disable");
    // brainctl enable/disable are the same.
    let (code, out, err) = brainctl(s, "enable e3")?;
    ensure!(code == 0, "brainctl enable: {out}{err}");
    ensure_eq!(
        s.ok("systemctl is-enabled brain-experiment@e3")?.trim(),
        "enabled"
    );
    let (code, out, err) = brainctl(s, "disable e3")?;
    ensure!(code == 0, "brainctl disable: {out}{err}");
    ensure_eq!(
        s.ok("systemctl is-enabled brain-experiment@e3 || true")?
            .trim(),
        "disabled"
    );
    // EXPERIMENT_ENABLED=yes in the file wins, and disable says which line to remove.
    let (code, _, err) = brainctl(s, "disable e1")?;
    ensure!(
        code == 2 && err.contains("EXPERIMENT_ENABLED=yes"),
        "disable of a file-enabled experiment: {code} {err}"
    );
    s.ok("systemctl stop brain-experiment.target")?;
    Ok(())
}

/// The original quickstart: edit the .env, `systemctl restart`: the new limits and command apply,
/// with no daemon-reload.
fn an_edited_env_applies_at_the_next_restart(s: &Sandbox) -> Result<()> {
    setup(s)?;
    s.ok(&format!(
        "printf 'EXPERIMENT_RAM_LIMIT=256M\\nEXPERIMENT_COMMAND=/bin/sleep infinity\\n' > {DIR}/x.env && systemctl daemon-reload"
    ))?;
    s.ok("systemctl start brain-experiment@x")?;
    ensure_eq!(s.prop(&unit("x"), "MemoryMax")?, "268435456");
    s.ok(&format!(
        "sed -i -e 's/=256M/=512M/' -e 's|sleep infinity|sleep 86400|' {DIR}/x.env && \
         printf 'EXPERIMENT_CPU_QUOTA=30%%\\n' >> {DIR}/x.env"
    ))?;
    s.ok("systemctl restart brain-experiment@x")?;
    ensure_eq!(s.prop(&unit("x"), "MemoryMax")?, "536870912");
    ensure_eq!(s.prop(&unit("x"), "CPUQuotaPerSecUSec")?, "300ms");
    let pid = s.prop(&unit("x"), "MainPID")?;
    wait_for("the new command to run", Duration::from_secs(5), || {
        Ok(s.ok(&format!("ps -o args= -p {pid}"))?.trim() == "/bin/sleep 86400")
    })?;
    let (code, out, _) = brainctl(s, "status x --json")?;
    ensure!(code == 0, "{out}");
    let x: Value = serde_json::from_str(&out).context("status x --json")?;
    ensure_eq!(x["memory_limit"], 536870912u64);
    ensure_eq!(x["cpu_quota_percent"], 30.0);
    s.ok("systemctl stop brain-experiment@x")?;
    Ok(())
}

fn logrotate_and_verify_with_generated_dropins(s: &Sandbox) -> Result<()> {
    setup(s)?;
    s.ok("systemctl start brain-experiment@e1.service && runuser -u brain -- sh -c 'echo x > /var/log/brain-in-jar/e1.log'")?;
    let out = s.sh("logrotate -d /etc/logrotate.d/brain-in-jar 2>&1")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && !text.to_lowercase().contains("error"),
        "logrotate -d:\n{text}"
    );
    ensure!(
        text.contains("/var/log/brain-in-jar/e1.log"),
        "logrotate did not consider the experiment's file:\n{text}"
    );
    // verify sees the units as systemd loads them, generated drop-ins included. The container has
    // no man-db to look up their man: pages; the platform group checks those are installed.
    let dropin = s.ok("cat /run/systemd/generator/brain-experiment@e1.service.d/50-limits.conf")?;
    ensure!(dropin.contains("MemoryMax=1073741824"), "{dropin}");
    let out = s.sh(&format!(
        "systemd-analyze verify --man=no {} {} brain-experiment.target brain-experiments.slice 2>&1",
        unit("e1"),
        unit("e2")
    ))?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && text.trim().is_empty(),
        "verify:\n{text}"
    );
    s.ok("systemctl stop brain-experiment@e1.service")?;
    Ok(())
}

fn broken_env_files_leave_boot_and_others_fine(s: &Sandbox) -> Result<()> {
    setup(s)?;
    s.ok(&format!(
        "cd {DIR} && printf 'EXPERIMENT_RAM_LIMIT=lots\\nEXPERIMENT_COMMAND=/bin/true\\n' > badsize.env && \
         printf 'EXPERIMENT_RAM_LIMIT=1G\\n' > nocmd.env && \
         printf 'EXPERIMENT_COMMAND=/bin/true\\n' > 'bad id.env' && \
         printf 'EXPERIMENT_COMMAND=/bin/true\\n' > 'x*.env'"
    ))?;
    s.ok("systemctl daemon-reload")?;
    s.stop();
    s.start()?;
    ensure!(
        matches!(
            s.ok("systemctl is-system-running || true")?.trim(),
            "running" | "degraded"
        ),
        "boot is broken"
    );
    ensure_eq!(
        s.prop(&unit("e1"), "MemoryMax")?,
        "1073741824",
        "the good experiment after boot"
    );
    ensure_eq!(
        s.active_state(&unit("e1"))?,
        "active",
        "enabled experiments come back after boot"
    );
    ensure_eq!(
        s.prop(&unit("badsize"), "MemoryMax")?,
        "infinity",
        "no drop-in for a bad file"
    );
    // In a container there is no /dev/kmsg: the generator's lines go to journald, at daemon-reload.
    let log = s.ok("journalctl --no-pager -o cat -t brain-experiment-generator || true")?;
    for needle in ["badsize.env", "nocmd.env", "bad id.env", "x*.env"] {
        ensure!(log.contains(needle), "no log line for {needle}: {log}");
    }
    s.ok(&format!(
        "cd {DIR} && rm -f badsize.env nocmd.env 'bad id.env' 'x*.env' && systemctl daemon-reload"
    ))?;
    Ok(())
}
