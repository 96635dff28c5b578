//! inference-service: lists and starts/stops model servers (port 5002, socket-activated).

use homelab::inference::InferenceService;
use std::process::ExitCode;

fn main() -> ExitCode {
    homelab::cli::run_service(
        "Lists model servers and starts, stops and restarts them; socket-activated on port 5002",
        "inference-service.socket",
        || Ok(InferenceService),
    )
}
