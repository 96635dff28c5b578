//! homelab-exec: runs the command line held in an environment variable (from a unit's
//! `EnvironmentFile=`), split into words without a shell, by exec: it becomes the unit's main
//! process, so systemd's signals, limits and exit status apply to it directly.

use clap::Parser;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

/// Runs the command line in environment variable VAR (e.g. MODEL_COMMAND), without a shell.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The environment variable that holds the command line
    var: String,
    /// Extra arguments appended to the command line
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    extra: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let line = match std::env::var(&args.var) {
        Ok(l) if !l.trim().is_empty() => l,
        _ => {
            return fail(&format!(
                "{} is not set: put {}=/path/to/program --args in the unit's environment file",
                args.var, args.var
            ));
        }
    };
    let mut words = match homelab::exec::split_words(&line) {
        Ok(w) => w,
        Err(e) => return fail(&format!("{} cannot be split into words: {e}", args.var)),
    };
    words.extend(args.extra);
    let program = words.remove(0);
    let err = std::process::Command::new(&program).args(&words).exec();
    fail(&format!(
        "cannot run {program:?} (from {}): {err}",
        args.var
    ))
}

fn fail(msg: &str) -> ExitCode {
    homelab::log_err!("{msg}");
    // 203 is systemd's EXIT_EXEC: "failed to execute the program".
    ExitCode::from(203)
}
