//! homelab-exec: runs the command line held in an environment variable, split into words
//! without a shell, by exec: it becomes the unit's main process, so systemd's signals, limits and
//! exit status apply to it directly. With `--env-file`, it first reads that `KEY=VALUE` file
//! itself, as the unit's unprivileged user (instead of PID 1 reading it for `EnvironmentFile=`),
//! refusing a symlink, anything but a regular file, and a file over 64 KiB. With `--wait-tcp` or
//! `--wait-port`, it instead waits until a TCP port accepts connections (an `ExecStartPre=` for a
//! proxy in front of a model server that takes a while to listen); with `--to-port`, it runs the
//! given program with `127.0.0.1:$VAR` appended (the proxy itself).

use clap::Parser;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Largest environment file read.
const MAX_ENV_FILE: u64 = 64 * 1024;
/// EX_CONFIG: the environment file was refused; `RestartPreventExitStatus=78` stops retries.
const EXIT_CONFIG: u8 = 78;

/// Runs the command line in environment variable VAR (e.g. MODEL_COMMAND), without a shell.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Read KEY=VALUE lines from FILE (a regular file, not a symlink, at most 64 KiB) into the
    /// environment first
    #[arg(long, value_name = "FILE")]
    env_file: Option<PathBuf>,
    /// Wait until ADDR (e.g. 127.0.0.1:8081) accepts TCP connections, then exit 0
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["wait_port", "to_port"])]
    wait_tcp: Option<SocketAddr>,
    /// Wait until 127.0.0.1:$VAR accepts TCP connections, then exit 0
    #[arg(long, value_name = "VAR", conflicts_with = "to_port")]
    wait_port: Option<String>,
    /// Run PROGRAM [ARGS...] (given after --) with 127.0.0.1:$VAR appended
    #[arg(long, value_name = "VAR")]
    to_port: Option<String>,
    /// With --wait-tcp or --wait-port: give up (exit 1) after this many seconds
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// VAR [EXTRA...]: the variable holding the command line, and arguments appended to it;
    /// with --to-port: PROGRAM [ARGS...]
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    words: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let env = match &args.env_file {
        Some(path) => match read_env_file(path) {
            Ok(env) => env,
            Err(code) => return code,
        },
        None => Vec::new(),
    };
    let lookup = |var: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == var)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(var).ok())
            .filter(|v| !v.trim().is_empty())
    };
    let timeout = Duration::from_secs(args.timeout);
    if let Some(addr) = args.wait_tcp {
        return wait_tcp(addr, timeout);
    }
    let port = |var: &str| -> Result<u16, ExitCode> {
        lookup(var)
            .and_then(|p| p.trim().parse::<u16>().ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                fail(&format!(
                    "{var} is not a port number: put {var}=8081 in the environment file"
                ))
            })
    };
    if let Some(var) = &args.wait_port {
        return match port(var) {
            Ok(p) => wait_tcp(SocketAddr::from(([127, 0, 0, 1], p)), timeout),
            Err(code) => code,
        };
    }
    let mut words = args.words;
    if words.is_empty() {
        return fail("nothing to run: give VAR (or, with --to-port, PROGRAM)");
    }
    let what;
    if let Some(var) = &args.to_port {
        match port(var) {
            Ok(p) => words.push(format!("127.0.0.1:{p}")),
            Err(code) => return code,
        }
        what = format!("--to-port {var}");
    } else {
        let var = words.remove(0);
        let Some(line) = lookup(&var) else {
            return fail(&format!(
                "{var} is not set: put {var}=/path/to/program --args in the environment file"
            ));
        };
        let mut split = match homelab::exec::split_words(&line) {
            Ok(w) if !w.is_empty() => w,
            Ok(_) => return fail(&format!("{var} is empty")),
            Err(e) => return fail(&format!("{var} cannot be split into words: {e}")),
        };
        split.extend(words);
        words = split;
        what = var;
    }
    let program = words.remove(0);
    // Under Type=notify the unit is started once the program can be run: a command that does
    // not exist fails the start job (and so `systemctl start`) instead of the unit a moment later.
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        let path = lookup("PATH").map(std::ffi::OsString::from);
        if let Err(e) = homelab::exec::resolve_program(
            &program,
            path.as_deref().or(std::env::var_os("PATH").as_deref()),
        ) {
            return fail(&format!("cannot run {program:?} (from {what}): {e}"));
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    }
    let err = std::process::Command::new(&program)
        .args(&words)
        .envs(env)
        .exec();
    fail(&format!("cannot run {program:?} (from {what}): {err}"))
}

/// The `KEY=VALUE` lines of `path`, read safely; on refusal, the exit code after a journal line
/// that says why and what to do (never what the file holds).
fn read_env_file(path: &std::path::Path) -> Result<Vec<(String, String)>, ExitCode> {
    let bytes = homelab::statefile::read_regular(path, MAX_ENV_FILE).map_err(|e| {
        homelab::log_err!(
            "refusing the environment file {}: {e}; put a regular file of at most {MAX_ENV_FILE} bytes there, readable by this unit's user",
            path.display()
        );
        ExitCode::from(EXIT_CONFIG)
    })?;
    let text = String::from_utf8(bytes).map_err(|_| {
        homelab::log_err!(
            "refusing the environment file {}: it is not UTF-8 text",
            path.display()
        );
        ExitCode::from(EXIT_CONFIG)
    })?;
    Ok(homelab::envfile::parse(&text))
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
