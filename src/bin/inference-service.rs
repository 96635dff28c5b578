//! inference-service: lists and starts/stops model servers (port 5002, socket-activated).

use clap::Parser;
use homelab::cli::{self, ServiceArgs};
use homelab::inference;
use std::process::ExitCode;

/// Lists model servers and starts, stops and restarts them; socket-activated on port 5002.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(flatten)]
    service: ServiceArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    cli::run(|| {
        cli::serve(
            &args.service,
            "inference-service.socket",
            inference::from_environment,
        )
    })
}
