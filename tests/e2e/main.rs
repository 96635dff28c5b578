//! End-to-end suite: every case runs against a booted systemd (Debian's, in systemd-nspawn), from
//! outside, as a user would. `cargo test --test e2e [FILTER...]`, as root; see tests/e2e/README.md.

mod harness;
mod platform;

fn main() -> std::process::ExitCode {
    harness::run(&[platform::GROUP])
}
