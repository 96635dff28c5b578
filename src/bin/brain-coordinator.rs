//! brain-coordinator: admission control, RAM budget and thermal policy for the experiments
//! (brain-experiment-coordinator.service).

use clap::Parser;
use homelab::coordinator::{self, config::Config};
use std::path::PathBuf;
use std::process::ExitCode;

/// Admits experiments within MAX_CONCURRENT_EXPERIMENTS and TOTAL_RAM_LIMIT_GB, throttles and
/// pauses them when hot, and holds a shutdown block inhibitor naming them while they run.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The configuration file
    #[arg(long, default_value = coordinator::config::DEFAULT_PATH)]
    config: PathBuf,
    /// Only check the configuration file and exit
    #[arg(long)]
    check_config: bool,
}

/// EX_CONFIG: the unit's RestartPreventExitStatus= keeps a bad configuration from a restart loop.
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = Config::load(&args.config) {
        homelab::log_err!("bad configuration: {e:#}");
        return ExitCode::from(EXIT_CONFIG);
    }
    if args.check_config {
        println!("{}: ok", args.config.display());
        return ExitCode::SUCCESS;
    }
    // The one bus connection of the process, connected on first use.
    let bus = std::sync::Arc::new(homelab::systemd::Bus::system());
    homelab::cli::run(|| coordinator::run(&args.config, bus))
}
