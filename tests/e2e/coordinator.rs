//! Issue 6: the coordinator's admission control, RAM budget and thermal policy on a booted systemd.

use crate::ensure_eq;
use crate::harness::{Group, Sandbox, wait_for};
use anyhow::{Result, ensure};
use std::time::Duration;

pub const GROUP: Group = Group {
    name: "coordinator",
    cases: &[
        (
            "concurrency_limit_queues_and_admits_in_order",
            concurrency_limit_queues_and_admits_in_order,
        ),
        (
            "ram_budget_queues_and_refuses_what_never_fits",
            ram_budget_queues_and_refuses_what_never_fits,
        ),
        (
            "kill_9_of_the_coordinator_loses_nothing",
            kill_9_of_the_coordinator_loses_nothing,
        ),
        (
            "heat_throttles_pauses_and_recovers",
            heat_throttles_pauses_and_recovers,
        ),
        (
            "status_line_inhibitor_and_shutdown_status",
            status_line_inhibitor_and_shutdown_status,
        ),
        (
            "a_bad_configuration_is_a_clear_error_not_a_loop",
            a_bad_configuration_is_a_clear_error_not_a_loop,
        ),
    ],
};

const DIR: &str = "/etc/brain-in-jar/experiments";
const TEMP: &str = "/run/test-temperature";
const COORD: &str = "brain-experiment-coordinator.service";

fn unit(id: &str) -> String {
    format!("brain-experiment@{id}.service")
}

/// Fresh experiments and coordinator configuration; everything stopped.
fn setup(s: &Sandbox, coordinator_env: &str, experiments: &[(&str, &str)]) -> Result<()> {
    let mut cmd = format!(
        "systemctl stop brain-experiment.target; systemctl reset-failed 'brain-experiment@*' 2>/dev/null; \
         rm -f {DIR}/*.env && echo 40000 > {TEMP} && \
         printf '{coordinator_env}\\nTEMPERATURE_SOURCES={TEMP}\\nTEMPERATURE_CHECK_INTERVAL_SECONDS=1\\n' > /etc/brain-in-jar/coordinator.env"
    );
    for (id, ram) in experiments {
        cmd.push_str(&format!(" && printf 'EXPERIMENT_RAM_LIMIT={ram}\\nEXPERIMENT_COMMAND=/bin/sleep infinity\\n' > {DIR}/{id}.env"));
    }
    s.ok(&format!(
        "{cmd} && systemctl daemon-reload && systemctl restart {COORD}"
    ))?;
    Ok(())
}

fn states(s: &Sandbox, ids: &[&str]) -> Result<Vec<String>> {
    ids.iter()
        .map(|id| {
            Ok(format!(
                "{}/{}",
                s.active_state(&unit(id))?,
                s.prop(&unit(id), "SubState")?
            ))
        })
        .collect()
}

fn count(states: &[String], want: &str) -> usize {
    states.iter().filter(|st| st.as_str() == want).count()
}

fn concurrency_limit_queues_and_admits_in_order(s: &Sandbox) -> Result<()> {
    let ids = ["c1", "c2", "c3", "c4"];
    setup(
        s,
        "MAX_CONCURRENT_EXPERIMENTS=2",
        &ids.map(|id| (id, "256M")),
    )?;
    s.ok("systemctl start --no-block brain-experiment.target")?;
    wait_for(
        "two running and two queued",
        Duration::from_secs(20),
        || {
            let st = states(s, &ids)?;
            Ok(count(&st, "active/running") == 2 && count(&st, "activating/start-pre") == 2)
        },
    )?;
    std::thread::sleep(Duration::from_secs(2));
    let st = states(s, &ids)?;
    ensure!(count(&st, "active/running") == 2, "more started: {st:?}");
    let out = s.ok("brainctl status --json")?;
    let all: Vec<serde_json::Value> = serde_json::from_str(&out)?;
    let queued: Vec<&serde_json::Value> = all.iter().filter(|e| e["queued"].is_string()).collect();
    ensure_eq!(queued.len(), 2, "queued in brainctl status: {out}");
    ensure!(
        queued[0]["queued"]
            .as_str()
            .unwrap_or_default()
            .contains("MAX_CONCURRENT_EXPERIMENTS")
            || queued[1]["queued"]
                .as_str()
                .unwrap_or_default()
                .contains("MAX_CONCURRENT_EXPERIMENTS"),
        "no reason: {out}"
    );
    // Stopping one lets exactly one more start.
    let running: Vec<&str> = ids
        .iter()
        .zip(&st)
        .filter(|(_, st)| st.as_str() == "active/running")
        .map(|(id, _)| *id)
        .collect();
    s.ok(&format!("systemctl stop {}", unit(running[0])))?;
    wait_for("one more to start", Duration::from_secs(20), || {
        let st = states(s, &ids)?;
        Ok(count(&st, "active/running") == 2 && count(&st, "activating/start-pre") == 1)
    })?;
    std::thread::sleep(Duration::from_secs(2));
    let st = states(s, &ids)?;
    ensure!(
        count(&st, "active/running") == 2 && count(&st, "activating/start-pre") == 1,
        "after the stop: {st:?}"
    );
    s.ok("systemctl stop brain-experiment.target")?;
    Ok(())
}

fn ram_budget_queues_and_refuses_what_never_fits(s: &Sandbox) -> Result<()> {
    let ids = ["r1", "r2", "r3"];
    setup(
        s,
        "MAX_CONCURRENT_EXPERIMENTS=10\\nTOTAL_RAM_LIMIT_GB=2",
        &[("r1", "1G"), ("r2", "1G"), ("r3", "1G")],
    )?;
    ensure_eq!(
        s.prop("brain-experiments.slice", "MemoryMax")?,
        "2147483648",
        "the budget in the kernel"
    );
    s.ok("systemctl start --no-block brain-experiment.target")?;
    wait_for(
        "two running and one waiting",
        Duration::from_secs(20),
        || {
            let st = states(s, &ids)?;
            Ok(count(&st, "active/running") == 2 && count(&st, "activating/start-pre") == 1)
        },
    )?;
    let out = s.ok("brainctl status --json")?;
    ensure!(out.contains("TOTAL_RAM_LIMIT_GB"), "no RAM reason: {out}");
    s.ok(&format!("printf 'EXPERIMENT_RAM_LIMIT=3G\\nEXPERIMENT_COMMAND=/bin/sleep infinity\\nEXPERIMENT_ENABLED=no\\n' > {DIR}/huge.env && systemctl daemon-reload"))?;
    let out = s.sh(&format!("systemctl start {}", unit("huge")))?;
    ensure!(
        !out.status.success(),
        "an experiment larger than the budget started"
    );
    let log = s.ok(&format!("journalctl -u {} --no-pager -o cat", unit("huge")))?;
    ensure!(
        log.contains("more than the whole budget"),
        "no reason given: {log}"
    );
    s.ok(&format!(
        "systemctl stop brain-experiment.target; systemctl reset-failed {} 2>/dev/null || true",
        unit("huge")
    ))?;
    Ok(())
}

fn kill_9_of_the_coordinator_loses_nothing(s: &Sandbox) -> Result<()> {
    let ids = ["k1", "k2", "k3"];
    setup(
        s,
        "MAX_CONCURRENT_EXPERIMENTS=2",
        &ids.map(|id| (id, "128M")),
    )?;
    s.ok("systemctl start --no-block brain-experiment.target")?;
    wait_for("two running, one queued", Duration::from_secs(20), || {
        let st = states(s, &ids)?;
        Ok(count(&st, "active/running") == 2 && count(&st, "activating/start-pre") == 1)
    })?;
    let pids: Vec<String> = ids
        .iter()
        .map(|id| s.prop(&unit(id), "MainPID"))
        .collect::<Result<_>>()?;
    let coord_pid = s.prop(COORD, "MainPID")?;
    s.ok(&format!("kill -9 {coord_pid}"))?;
    wait_for(
        "systemd to restart the coordinator",
        Duration::from_secs(20),
        || Ok(s.active_state(COORD)? == "active" && s.prop(COORD, "MainPID")? != coord_pid),
    )?;
    std::thread::sleep(Duration::from_secs(2));
    let after: Vec<String> = ids
        .iter()
        .map(|id| s.prop(&unit(id), "MainPID"))
        .collect::<Result<_>>()?;
    ensure_eq!(
        after,
        pids,
        "experiments kept running, nothing was started again"
    );
    let st = states(s, &ids)?;
    ensure!(
        count(&st, "active/running") == 2 && count(&st, "activating/start-pre") == 1,
        "after the restart: {st:?}"
    );
    // The queue resumes.
    let running = ids
        .iter()
        .zip(&st)
        .find(|(_, st)| st.as_str() == "active/running")
        .map(|(id, _)| *id)
        .unwrap_or("k1");
    s.ok(&format!("systemctl stop {}", unit(running)))?;
    wait_for("the queued one to start", Duration::from_secs(20), || {
        Ok(count(&states(s, &ids)?, "active/running") == 2)
    })?;
    ensure_eq!(count(&states(s, &ids)?, "activating/start-pre"), 0);
    s.ok("systemctl stop brain-experiment.target")?;
    Ok(())
}

fn heat_throttles_pauses_and_recovers(s: &Sandbox) -> Result<()> {
    let ids = ["h1", "h2", "h3"];
    setup(
        s,
        "MAX_CONCURRENT_EXPERIMENTS=4\\nTHROTTLE_TEMP_CELSIUS=75\\nCRITICAL_TEMP_CELSIUS=85",
        &[("h1", "128M"), ("h2", "128M")],
    )?;
    s.ok("systemctl start brain-experiment.target")?;
    ensure_eq!(count(&states(s, &ids[..2])?, "active/running"), 2);
    ensure_eq!(
        s.prop("brain-experiments.slice", "CPUQuotaPerSecUSec")?,
        "infinity"
    );
    s.ok(&format!("echo 76000 > {TEMP}"))?;
    wait_for(
        "the slice's CPU quota to drop",
        Duration::from_secs(15),
        || Ok(s.prop("brain-experiments.slice", "CPUQuotaPerSecUSec")? != "infinity"),
    )?;
    // Nothing new starts while throttled.
    s.ok(&format!("printf 'EXPERIMENT_RAM_LIMIT=128M\\nEXPERIMENT_COMMAND=/bin/sleep infinity\\n' > {DIR}/h3.env && systemctl daemon-reload && systemctl start --no-block {}", unit("h3")))?;
    std::thread::sleep(Duration::from_secs(3));
    ensure_eq!(
        states(s, &["h3"])?,
        vec!["activating/start-pre".to_string()],
        "started while throttled"
    );
    // Critical: paused (frozen on cgroup v2) or, here on cgroup v1, the newest stopped.
    s.ok(&format!("echo 86000 > {TEMP}"))?;
    wait_for(
        "experiments to be paused or stopped",
        Duration::from_secs(15),
        || {
            let frozen = s.prop("brain-experiments.slice", "FreezerState")? == "frozen";
            Ok(frozen || count(&states(s, &ids[..2])?, "active/running") < 2)
        },
    )?;
    let warn = s.ok(&format!(
        "journalctl -u {COORD} -p warning --no-pager -o cat"
    ))?;
    ensure!(
        warn.contains("critical temperature"),
        "no warning logged: {warn}"
    );
    // Cools down: quota restored, the queued one starts.
    s.ok(&format!("echo 40000 > {TEMP}"))?;
    wait_for(
        "the quota to be restored and h3 to start",
        Duration::from_secs(20),
        || {
            Ok(
                s.prop("brain-experiments.slice", "CPUQuotaPerSecUSec")? == "infinity"
                    && s.active_state(&unit("h3"))? == "active",
            )
        },
    )?;
    s.ok("systemctl stop brain-experiment.target")?;
    Ok(())
}

fn status_line_inhibitor_and_shutdown_status(s: &Sandbox) -> Result<()> {
    setup(s, "MAX_CONCURRENT_EXPERIMENTS=4", &[("s1", "128M")])?;
    s.ok("systemctl start brain-experiment.target")?;
    wait_for("the status line", Duration::from_secs(10), || {
        Ok(s.ok(&format!("systemctl status {COORD} --no-pager"))?
            .contains("1 running (max 4), 0 queued, normal, hottest 40.0°C"))
    })?;
    let inhibitors = s.ok("systemd-inhibit --list --no-pager")?;
    ensure!(
        inhibitors.contains("brain-experiment-coordinator") && inhibitors.contains("delay"),
        "no delay inhibitor: {inhibitors}"
    );
    let status = s.get(":5001/shutdown/status")?;
    ensure_eq!(
        status.expect(200)?["running_experiments"],
        serde_json::json!(["s1"])
    );
    s.ok("systemctl stop brain-experiment.target")?;
    wait_for(
        "the inhibitor to be released",
        Duration::from_secs(10),
        || {
            Ok(!s
                .ok("systemd-inhibit --list --no-pager")?
                .contains("brain-experiment-coordinator"))
        },
    )?;
    // At idle (nothing running or queued, events only from systemd) it uses no measurable CPU:
    // at most 2 clock ticks (20 ms) in 10 s, with the 1 s temperature check of this test.
    let pid = s.prop(COORD, "MainPID")?;
    let ticks = || -> Result<u64> {
        let stat = s.ok(&format!("cat /proc/{pid}/stat"))?;
        let f: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
    };
    let before = ticks()?;
    std::thread::sleep(Duration::from_secs(10));
    let used = ticks()? - before;
    eprintln!("   coordinator CPU at idle: {used} ticks in 10 s");
    ensure!(
        used <= 2,
        "the coordinator used {used} ticks of CPU in 10 s at idle"
    );
    // ExecReload= re-reads the configuration.
    s.ok("sed -i 's/MAX_CONCURRENT_EXPERIMENTS=4/MAX_CONCURRENT_EXPERIMENTS=3/' /etc/brain-in-jar/coordinator.env && systemctl reload brain-experiment-coordinator")?;
    wait_for(
        "the reloaded limit in the status line",
        Duration::from_secs(10),
        || {
            Ok(s.ok(&format!("systemctl status {COORD} --no-pager"))?
                .contains("(max 3)"))
        },
    )?;
    let out = s.sh(&format!(
        "systemd-analyze verify {COORD} brain-experiment-coordinator.socket 2>&1"
    ))?;
    ensure!(
        out.status.success() && out.stdout.is_empty(),
        "verify: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}

fn a_bad_configuration_is_a_clear_error_not_a_loop(s: &Sandbox) -> Result<()> {
    s.ok("printf 'MAX_CONCURRENT_EXPERIMENTS=zero\\n' > /etc/brain-in-jar/coordinator.env")?;
    let _ = s.sh(&format!("systemctl restart {COORD}"))?;
    std::thread::sleep(Duration::from_secs(3));
    ensure_eq!(s.active_state(COORD)?, "failed");
    ensure_eq!(s.prop(COORD, "NRestarts")?, "0", "restarted in a loop");
    let log = s.ok(&format!("journalctl -u {COORD} -p err --no-pager -o cat"))?;
    ensure!(
        log.contains("MAX_CONCURRENT_EXPERIMENTS=\"zero\""),
        "no clear error: {log}"
    );
    s.ok(&format!("rm /etc/brain-in-jar/coordinator.env && systemctl reset-failed {COORD} && systemctl restart {COORD}"))?;
    ensure_eq!(s.active_state(COORD)?, "active");
    Ok(())
}
