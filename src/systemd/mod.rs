//! Everything that talks to systemd: socket activation, sd_notify, unit-name escaping, D-Bus (the
//! [`Bus`] handle behind the [`Systemd`] seam), what the kernel says of a unit (procfs), CPU quotas,
//! and its calendar parser (`systemd-analyze calendar`).

pub mod activation;
pub mod calendar;
pub mod dbus;
pub mod escape;
#[cfg(test)]
pub mod fake;
mod follow;
pub(crate) mod names;
pub mod procfs;
pub mod quota;
pub mod seam;
pub mod transient;
pub mod types;
pub mod view;

pub use activation::listener;
pub use dbus::Bus;
pub use seam::{Systemd, UnitChanges};
pub use types::{
    Inhibitor, JobFailure, Prop, ServiceState, SystemdError, UnitRow, Verb, unit_path,
};

use sd_notify::NotifyState;

/// Tells systemd the service is ready (Type=notify); a no-op when not started by systemd.
pub fn notify_ready(status: &str) {
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd we are exiting on purpose, so it does not treat the exit as a crash.
pub fn notify_stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

/// The last `lines` journal lines of `unit` (`journalctl -o OUTPUT`); empty where the caller may
/// not read the journal.
pub fn journal_lines(unit: &str, lines: usize, output: &str) -> std::io::Result<Vec<String>> {
    let out = std::process::Command::new("journalctl")
        .args([
            "--no-pager",
            "-o",
            output,
            "-n",
            &lines.to_string(),
            "-u",
            unit,
        ])
        .stdin(std::process::Stdio::null())
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}
