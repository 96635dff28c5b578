//! Everything that talks to systemd: socket activation, sd_notify, unit-name escaping, D-Bus.

pub mod activation;
pub mod dbus;
pub mod escape;

pub use activation::listener;

use sd_notify::NotifyState;

/// Tells systemd the service is ready (Type=notify); a no-op when not started by systemd.
pub fn notify_ready(status: &str) {
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd we are exiting on purpose, so it does not treat the exit as a crash.
pub fn notify_stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

/// Updates the `STATUS=` line `systemctl status` shows.
pub fn notify_status(status: &str) {
    let _ = sd_notify::notify(&[NotifyState::Status(status)]);
}
