//! Group `reboot-busy`: rebooting a busy machine, as an administrator does it. While an
//! experiment runs, the coordinator's block inhibitor makes root's own `systemctl reboot` fail
//! (systemd 256 and later: logind honours block inhibitors for root too; systemd 252 lets root
//! through, and the case checks that it reboots there); the two ways that work
//! are a reboot schedule with `when_busy: wait` (it reboots once the experiments end) and
//! `systemctl stop brain-experiment.target` before `systemctl reboot` (now). Each reboot ends
//! the container, which is booted again.

use crate::busy::run_an_experiment;
use crate::ensure_eq;
use crate::harness::{Group, Sandbox, holds_for, wait_for};
use crate::shutdown::{clear_schedules, send};
use anyhow::{Context, Result, ensure};
use std::time::Duration;

pub const GROUP: Group = Group {
    name: "reboot-busy",
    cases: &[
        (
            "root_reboot_while_an_experiment_runs",
            root_reboot_while_an_experiment_runs,
        ),
        (
            "a_reboot_schedule_that_waits_reboots_once_the_experiment_ends",
            a_reboot_schedule_that_waits_reboots_once_the_experiment_ends,
        ),
        (
            "stopping_the_target_then_reboot_reboots_now",
            stopping_the_target_then_reboot_reboots_now,
        ),
    ],
};

/// The systemd of the release under test (the harness sets `HOMELAB_SUITE`).
fn honours_block_inhibitors_for_root() -> bool {
    std::env::var("HOMELAB_SUITE").as_deref() != Ok("bookworm")
}

/// Waits for the container to go down, boots it again and waits for the schedules' restore.
fn down_and_boot_again(s: &Sandbox, limit: Duration) -> Result<()> {
    wait_for("the container to go down", limit, || Ok(s.is_down()))?;
    s.start()?;
    wait_for(
        "the restore service to finish",
        Duration::from_secs(30),
        || Ok(s.prop("homelab-shutdown-restore.service", "ActiveState")? == "active"),
    )
}

/// Whether the previous boot ended by reaching reboot.target (not poweroff.target).
fn previous_boot_ended_in_a_reboot(s: &Sandbox) -> Result<bool> {
    let log = s.ok("journalctl -b -1 --no-pager -o cat -u reboot.target -u poweroff.target")?;
    Ok(log.contains("Reboot") && !log.contains("Power-Off") && !log.contains("Power Off"))
}

fn root_reboot_while_an_experiment_runs(s: &Sandbox) -> Result<()> {
    clear_schedules(s)?;
    run_an_experiment(s)?;
    if !honours_block_inhibitors_for_root() {
        // systemd 252's logind lets root past a block inhibitor: the reboot happens.
        let _ = s.sh("systemctl reboot");
        down_and_boot_again(s, Duration::from_secs(30))?;
        ensure!(
            previous_boot_ended_in_a_reboot(s)?,
            "systemd 252: root's reboot with an experiment running did not reboot"
        );
        return Ok(());
    }
    let out = s.sh("systemctl reboot")?;
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        !out.status.success() && said.contains("Access denied"),
        "root's systemctl reboot was not refused with \"Access denied\": {} {said}",
        out.status
    );
    let out = s.sh("systemctl reboot -i")?;
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        !out.status.success() && said.contains("Interactive authentication required"),
        "root's systemctl reboot -i was not refused: {} {said}",
        out.status
    );
    // Even from a root unit, with no terminal to ask on.
    let out = s.sh("systemd-run --wait --pipe --quiet systemctl reboot")?;
    ensure!(
        !out.status.success(),
        "systemctl reboot from a root unit was not refused"
    );
    holds_for("the machine to stay up", Duration::from_secs(3), || {
        Ok(!s.is_down())
    })?;
    ensure_eq!(s.active_state("brain-experiment@w1.service")?, "active");
    s.ok("systemctl stop brain-experiment@w1")?;
    Ok(())
}

fn a_reboot_schedule_that_waits_reboots_once_the_experiment_ends(s: &Sandbox) -> Result<()> {
    clear_schedules(s)?;
    run_an_experiment(s)?;
    let at = chrono::Local::now() + chrono::Duration::seconds(3);
    let r = send(
        s,
        "POST",
        "/shutdown/schedule",
        &format!(
            r#"{{"at": "{}", "action": "reboot", "when_busy": "wait"}}"#,
            at.to_rfc3339()
        ),
    )?;
    let id = r.expect(200)?["shutdown"]["id"]
        .as_str()
        .with_context(|| format!("no id: {}", r.body))?
        .to_string();
    wait_for("the reboot to wait", Duration::from_secs(20), || {
        let list = s.get(":5001/shutdown/schedules")?;
        Ok(list.json["schedules"]
            .as_array()
            .is_some_and(|l| l.iter().any(|e| e["id"] == id && e["state"] == "waiting")))
    })?;
    holds_for(
        "no reboot while the experiment runs",
        Duration::from_secs(5),
        || Ok(!s.is_down()),
    )?;
    // The experiment ends: the schedule reboots.
    s.ok("systemctl stop brain-experiment@w1")?;
    down_and_boot_again(s, Duration::from_secs(30))?;
    ensure!(
        previous_boot_ended_in_a_reboot(s)?,
        "the previous boot did not end in a reboot"
    );
    let log = s.ok(
        "journalctl -b -1 --no-pager -o cat -u 'homelab-reboot@*' -u 'homelab-power-action@*'",
    )?;
    ensure!(
        log.contains("waits while the machine is busy") && log.contains("fired: rebooting now"),
        "the journal does not show the wait and the reboot: {log}"
    );
    Ok(())
}

fn stopping_the_target_then_reboot_reboots_now(s: &Sandbox) -> Result<()> {
    clear_schedules(s)?;
    run_an_experiment(s)?;
    // The container goes down under the command: its exit status is not the answer.
    let _ = s.sh("systemctl stop brain-experiment.target && systemctl reboot");
    down_and_boot_again(s, Duration::from_secs(30))?;
    ensure!(
        previous_boot_ended_in_a_reboot(s)?,
        "the previous boot did not end in a reboot"
    );
    let log = s.ok("journalctl -b -1 --no-pager -o cat -u brain-experiment@w1.service")?;
    ensure!(
        log.contains("Stopped") || log.contains("Deactivated"),
        "the experiment was not stopped before the reboot: {log}"
    );
    Ok(())
}
