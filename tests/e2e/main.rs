//! End-to-end suite: every case runs against a booted systemd (Debian's, in systemd-nspawn), from
//! outside, as a user would. `cargo test --release --test e2e [FILTER...]`, as root.

mod busy;
mod coordinator;
mod experiments;
mod harness;
mod hostile;
mod inference;
mod package;
mod platform;
mod reboot_busy;
mod security;
mod shutdown;

fn main() -> std::process::ExitCode {
    harness::run(&[
        platform::GROUP,
        hostile::GROUP,
        inference::GROUP,
        experiments::GROUP,
        coordinator::GROUP,
        shutdown::GROUP,
        shutdown::POWER_GROUP,
        shutdown::REBOOT_GROUP,
        busy::GROUP,
        reboot_busy::GROUP,
        package::GROUP,
        security::GROUP,
    ])
}
