//! homelab-exec: runs the command line held in an environment variable (from a unit's
//! `EnvironmentFile=`), split into words without a shell, by exec: it becomes the unit's main
//! process, so systemd's signals, limits and exit status apply to it directly. With
//! `--wait-tcp`, it instead waits until a TCP port accepts connections (an `ExecStartPre=` for
//! a proxy in front of a model server that takes a while to listen).

use clap::Parser;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Runs the command line in environment variable VAR (e.g. MODEL_COMMAND), without a shell.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The environment variable that holds the command line
    #[arg(required_unless_present = "wait_tcp")]
    var: Option<String>,
    /// Extra arguments appended to the command line
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    extra: Vec<String>,
    /// Wait until ADDR (e.g. 127.0.0.1:8081) accepts TCP connections, then exit 0
    #[arg(long, value_name = "ADDR", conflicts_with = "var")]
    wait_tcp: Option<SocketAddr>,
    /// With --wait-tcp: give up (exit 1) after this many seconds
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(addr) = args.wait_tcp {
        return wait_tcp(addr, Duration::from_secs(args.timeout));
    }
    let var = args.var.unwrap_or_default();
    let line = match std::env::var(&var) {
        Ok(l) if !l.trim().is_empty() => l,
        _ => {
            return fail(&format!(
                "{var} is not set: put {var}=/path/to/program --args in the unit's environment file"
            ));
        }
    };
    let mut words = match homelab::exec::split_words(&line) {
        Ok(w) => w,
        Err(e) => return fail(&format!("{var} cannot be split into words: {e}")),
    };
    words.extend(args.extra);
    let program = words.remove(0);
    let err = std::process::Command::new(&program).args(&words).exec();
    fail(&format!("cannot run {program:?} (from {var}): {err}"))
}

fn wait_tcp(addr: SocketAddr, timeout: Duration) -> ExitCode {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    homelab::log_err!(
        "{addr} did not accept connections within {}s",
        timeout.as_secs()
    );
    ExitCode::FAILURE
}

fn fail(msg: &str) -> ExitCode {
    homelab::log_err!("{msg}");
    // 203 is systemd's EXIT_EXEC: "failed to execute the program".
    ExitCode::from(203)
}
