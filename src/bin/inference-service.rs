//! inference-service: lists and starts/stops model servers (port 5002, socket-activated).

use clap::Parser;
use homelab::cli::{self, ServiceArgs};
use homelab::inference::{self, activity::ActivityStore, config::Config, idle};
use homelab::systemd::Bus;
use std::process::ExitCode;

/// Lists model servers and starts, stops and restarts them; socket-activated on port 5002.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(flatten)]
    service: ServiceArgs,
    /// Run the idle policy once and exit: stop models idle past the threshold, and power off
    /// through the shutdown timers when enabled and all is idle (run by inference-idle-check.timer)
    #[arg(long)]
    check_idle: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // The one bus connection of the process, connected on first use.
    let bus = Bus::system();
    cli::run(|| {
        if args.check_idle {
            idle::check(
                &Config::load()?,
                &ActivityStore::new(None),
                std::sync::Arc::new(bus.clone()),
            )
        } else {
            cli::serve(&args.service, "inference-service.socket", || {
                inference::from_environment(&bus)
            })
        }
    })
}
