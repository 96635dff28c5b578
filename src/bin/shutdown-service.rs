//! shutdown-service: schedules, lists and cancels shutdowns (port 5001, socket-activated).

use clap::Parser;
use homelab::cli::{self, ServiceArgs};
use homelab::shutdown;
use homelab::systemd::Bus;
use std::process::ExitCode;

/// Schedules, lists and cancels shutdowns as systemd timers; socket-activated on port 5001.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(flatten)]
    service: ServiceArgs,
    /// Start again the timers of the schedules in the state file and exit; one-off times that
    /// have passed are dropped (run at boot by homelab-shutdown-restore.service)
    #[arg(long)]
    restore: bool,
    /// Act for the schedule whose timer just elapsed, by its service's name (run by
    /// homelab-shutdown@.service and homelab-reboot@.service): wait, skip or proceed as its
    /// policy says when the machine is busy, then have root power off or reboot
    #[arg(long, value_name = "UNIT", conflicts_with = "restore")]
    fire: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // The one bus connection of the process, connected on first use.
    let bus = Bus::system();
    cli::run(|| {
        if args.restore {
            shutdown::restore(
                &shutdown::state::StateStore::new(None),
                &bus,
                chrono::Local::now().timestamp(),
            )
        } else if let Some(unit) = &args.fire {
            shutdown::fire::run(unit, &bus)
        } else {
            cli::serve(&args.service, "shutdown-service.socket", || {
                shutdown::from_environment(&bus)
            })
        }
    })
}
