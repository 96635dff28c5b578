//! shutdown-service: schedules, lists and cancels shutdowns (port 5001, socket-activated).

use homelab::shutdown::ShutdownService;
use std::process::ExitCode;

fn main() -> ExitCode {
    homelab::cli::run_service(
        "Schedules, lists and cancels shutdowns as systemd timers; socket-activated on port 5001",
        "shutdown-service.socket",
        || Ok(ShutdownService),
    )
}
