//! What the binaries share: the service command line, the serve loop, and error reporting.

use crate::http::Service;
use crate::http::server::{self, ServeOptions};
use crate::{log_err, systemd};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

/// Command-line options every socket-activated service has.
#[derive(clap::Args, Debug)]
pub struct ServiceArgs {
    /// Bind this address yourself instead of taking the socket from systemd (local development)
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
}

/// Builds the service, takes the socket (`socket_unit` names the unit that normally holds it)
/// and serves until idle.
pub fn serve<S, F>(args: &ServiceArgs, socket_unit: &str, build: F) -> anyhow::Result<()>
where
    S: Service + 'static,
    F: FnOnce() -> anyhow::Result<S>,
{
    let opts = ServeOptions::from_env()?;
    // Before `build` starts the service's threads (its view of systemd's signals), so that
    // every thread inherits the blocked SIGTERM and a stop loses no access line.
    let signals = server::stop_signals();
    let service = build()?;
    let listener = systemd::listener(args.listen, socket_unit)?;
    server::serve(listener, Arc::new(service), &opts, signals)
}

/// Runs `main`; an error is one line on stderr (error priority in the journal) and exit code 1.
pub fn run(main: impl FnOnce() -> anyhow::Result<()>) -> ExitCode {
    match main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log_err!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
