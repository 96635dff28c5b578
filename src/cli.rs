//! What the service binaries share: their command line and the run loop around a [`Service`].

use crate::http::Service;
use crate::http::server::{self, ServeOptions};
use crate::{log_err, systemd};
use clap::Parser;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

/// Command line of a socket-activated service.
#[derive(Parser, Debug)]
#[command(version, about = None, long_about = None)]
pub struct ServiceArgs {
    /// Bind this address yourself instead of taking the socket from systemd (local development).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
}

/// Parses arguments, builds the service, takes the socket and serves until idle.
///
/// `about` is the `--help` text; `socket_unit` names the unit that normally holds the port.
pub fn run_service<S, F>(about: &'static str, socket_unit: &str, build: F) -> ExitCode
where
    S: Service + 'static,
    F: FnOnce() -> anyhow::Result<S>,
{
    let args = ServiceArgs::parse_from_with_about(about);
    let result = (|| {
        let opts = ServeOptions::from_env()?;
        let service = build()?;
        let listener = systemd::listener(args.listen, socket_unit)?;
        server::serve(listener, Arc::new(service), &opts)
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log_err!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

impl ServiceArgs {
    fn parse_from_with_about(about: &'static str) -> ServiceArgs {
        use clap::{CommandFactory, FromArgMatches};
        let cmd = ServiceArgs::command().about(about);
        let matches = cmd.get_matches();
        ServiceArgs::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}
