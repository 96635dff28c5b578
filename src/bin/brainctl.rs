//! brainctl: start, stop, inspect and launch brain-in-jar experiments, over D-Bus.

use clap::{Parser, Subcommand};
use homelab::experiment::config::parse_percent;
use homelab::experiment::manager::ManagerError;
use homelab::experiment::transient::RunSpec;
use homelab::experiment::{ExperimentManager, ExperimentStatus, config};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;

/// Start, stop, inspect and launch brain-in-jar experiments (systemd units, over D-Bus).
#[derive(Parser, Debug)]
#[command(
    name = "brainctl",
    version,
    after_help = "Exit status: 0 success, 1 systemd failed, 2 invalid id or arguments, 3 unknown experiment, 4 permission denied.\n\
                  Experiments are configured in /etc/brain-in-jar/experiments/<id>.env."
)]
struct Cli {
    /// Print JSON (status, list, run)
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start brain-experiment@<id>.service (limits from its .env)
    Start { id: String },
    /// Stop an experiment (its transient unit if one runs, else its template instance)
    Stop { id: String },
    /// Restart an experiment
    Restart { id: String },
    /// Start the experiment with brain-experiment.target, at boot too (systemctl enable)
    Enable { id: String },
    /// No longer start it with brain-experiment.target (systemctl disable)
    Disable { id: String },
    /// State, PID, memory (current, peak, limit), CPU quota, restarts and last exit of one or all
    Status { id: Option<String> },
    /// The experiments: configured and running, template and transient
    List,
    /// The experiment's journal
    Logs {
        id: String,
        /// Follow new lines
        #[arg(short, long)]
        follow: bool,
        /// How many lines
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
    },
    /// Start every enabled experiment (brain-experiment.target)
    StartAll,
    /// Stop every experiment (brain-experiment.target)
    StopAll,
    /// Launch COMMAND as a transient unit brain-run-<id>.service with limits, like systemd-run
    Run {
        id: String,
        /// Memory limit (MemoryMax=), e.g. 8G
        #[arg(long, default_value = "4G", value_parser = parse_memory)]
        memory: u64,
        /// CPU quota (CPUQuota=), e.g. 100% or 250%
        #[arg(long, value_parser = parse_cpu)]
        cpu: Option<u32>,
        /// Allow the NVIDIA/Jetson GPU devices
        #[arg(long)]
        gpu: bool,
        /// The experiment's JSON config (passed on as EXPERIMENT_CONFIG)
        #[arg(long)]
        config: Option<PathBuf>,
        /// The command and its arguments
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Print the shell completion script (bash, zsh or fish) to standard output
    Completions { shell: homelab::completions::Shell },
}

fn parse_memory(s: &str) -> anyhow::Result<u64> {
    config::parse_size(s)
}

fn parse_cpu(s: &str) -> anyhow::Result<u32> {
    parse_percent(s)
}

fn main() -> ExitCode {
    // `brainctl status --json | head` must end quietly, as other Unix tools do, instead of
    // panicking on the closed pipe: this restores the default SIGPIPE action (ending the
    // process), which the Rust runtime had set to "ignore". It handles no signal, so it is not
    // one of the signals `homelab::signals` takes.
    // SAFETY: no other thread runs yet, and SIG_DFL installs no handler code.
    let _ = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        )
    };
    let cli = Cli::parse();
    if let Command::Completions { shell } = cli.command {
        use clap::CommandFactory;
        use std::io::Write;
        let script = homelab::completions::generate(shell, &mut Cli::command(), "brainctl");
        return match std::io::stdout().write_all(&script) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("brainctl: cannot write the completion script: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // The one bus connection of the process, connected on first use.
    let m = ExperimentManager::new(std::sync::Arc::new(homelab::systemd::Bus::system()));
    let result = match cli.command {
        Command::Start { id } => m.start_experiment(&id).map(|u| started(&m, &id, &u)),
        Command::Stop { id } => m.stop_experiment(&id).map(|u| match u {
            Some(u) => println!("stopped {u}"),
            None => println!("{id} is not running: nothing to stop"),
        }),
        Command::Restart { id } => m.restart_experiment(&id).map(|u| started(&m, &id, &u)),
        Command::Enable { id } => m
            .enable_experiment(&id)
            .map(|u| println!("enabled {u}: it starts with {}", config::TARGET)),
        Command::Disable { id } => m.disable_experiment(&id).map(|u| println!("disabled {u}")),
        Command::StartAll => m
            .start_all()
            .map(|()| println!("started {}", config::TARGET)),
        Command::StopAll => m
            .stop_all()
            .map(|()| println!("stopped {}", config::TARGET)),
        Command::Status { id: Some(id) } => m.get_status(&id).map(|s| print_status(&s, cli.json)),
        Command::Status { id: None } | Command::List => {
            m.list_experiments().map(|all| print_table(&all, cli.json))
        }
        Command::Logs {
            id,
            follow: true,
            lines,
        } => follow_logs(&m, &id, lines),
        Command::Logs {
            id,
            follow: false,
            lines,
        } => m
            .get_logs(&id, lines)
            .map(|l| l.iter().for_each(|l| println!("{l}"))),
        Command::Completions { .. } => unreachable!("answered above"),
        Command::Run {
            id,
            memory,
            cpu,
            gpu,
            config,
            command,
        } => {
            let spec = RunSpec {
                id,
                command,
                memory_max: memory,
                cpu_quota_percent: cpu,
                gpu,
                config,
            };
            m.run_experiment(spec).map(|unit| {
                if cli.json {
                    println!("{}", serde_json::json!({"unit": unit}));
                } else {
                    println!("{unit}");
                }
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("brainctl: {e}");
            ExitCode::from(match e {
                ManagerError::Systemd(_) => 1,
                ManagerError::InvalidId(_) | ManagerError::Invalid(_) => 2,
                ManagerError::Unknown(_) => 3,
                ManagerError::Denied(_) => 4,
            })
        }
    }
}

/// After a start: running, or queued with its place and reason.
fn started(m: &ExperimentManager, id: &str, unit: &str) {
    match m.get_status(id) {
        Ok(ExperimentStatus {
            queued: Some(why),
            queue_position,
            ..
        }) => println!(
            "started {unit}: queued{}: {why}",
            queue_position.map_or(String::new(), |p| format!(", position {p}"))
        ),
        _ => println!("started {unit}"),
    }
}

fn follow_logs(m: &ExperimentManager, id: &str, lines: usize) -> Result<(), ManagerError> {
    // Resolve the unit (and the errors) through the manager, then hand over to journalctl.
    let unit = m.get_status(id)?.unit;
    let err = std::process::Command::new("journalctl")
        .args(["-f", "-n", &lines.to_string(), "-u", &unit])
        .exec();
    Err(ManagerError::Systemd(format!(
        "cannot run journalctl: {err}"
    )))
}

fn size(bytes: Option<u64>) -> String {
    match bytes {
        None => "-".into(),
        Some(b) if b >= 1 << 30 => format!("{:.1}G", b as f64 / (1u64 << 30) as f64),
        Some(b) if b >= 1 << 20 => format!("{:.1}M", b as f64 / (1u64 << 20) as f64),
        Some(b) => format!("{:.1}K", b as f64 / 1024.0),
    }
}

fn print_status(s: &ExperimentStatus, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(s).unwrap_or_default());
        return;
    }
    let rows = [
        ("id", s.id.clone()),
        ("unit", format!("{} ({})", s.unit, s.kind)),
        ("state", format!("{} ({})", s.active_state, s.sub_state)),
        ("since", s.since.clone().unwrap_or_else(|| "-".into())),
        ("pid", s.main_pid.map_or("-".into(), |p| p.to_string())),
        (
            "memory",
            format!(
                "{} current, {} peak, {} limit",
                size(s.memory_current),
                size(s.memory_peak),
                size(s.memory_limit)
            ),
        ),
        (
            "cpu quota",
            s.cpu_quota_percent.map_or("-".into(), |p| format!("{p}%")),
        ),
        ("restarts", s.restarts.to_string()),
        (
            "last exit",
            s.last_exit_status
                .map_or("-".into(), |c| format!("{c} ({})", s.result)),
        ),
        (
            "enabled",
            s.enabled
                .map_or("-".into(), |e| if e { "yes".into() } else { "no".into() }),
        ),
        (
            "queued",
            match (&s.queued, s.queue_position) {
                (Some(why), Some(p)) => format!("position {p}: {why}"),
                (Some(why), None) => why.clone(),
                (None, _) => "-".into(),
            },
        ),
    ];
    for (k, v) in rows {
        println!("{k:>10}: {v}");
    }
}

fn print_table(all: &[ExperimentStatus], json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(all).unwrap_or_default());
        return;
    }
    println!(
        "{:<24} {:<9} {:<22} {:>8} {:>8} {:>8} {:>6} {:>8}",
        "ID", "KIND", "STATE", "PID", "MEMORY", "LIMIT", "CPU", "RESTARTS"
    );
    for s in all {
        println!(
            "{:<24} {:<9} {:<22} {:>8} {:>8} {:>8} {:>6} {:>8}",
            s.id,
            s.kind,
            if s.queued.is_some() {
                s.queue_position
                    .map_or("queued".into(), |p| format!("queued ({p})"))
            } else {
                format!("{} ({})", s.active_state, s.sub_state)
            },
            s.main_pid.map_or("-".into(), |p| p.to_string()),
            size(s.memory_current),
            size(s.memory_limit),
            s.cpu_quota_percent.map_or("-".into(), |p| format!("{p}%")),
            s.restarts
        );
    }
    if all.is_empty() {
        println!("(no experiments: add /etc/brain-in-jar/experiments/<id>.env)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn completions_know_every_subcommand() {
        let bash = homelab::completions::generate(
            homelab::completions::Shell::Bash,
            &mut Cli::command(),
            "brainctl",
        );
        let bash = String::from_utf8(bash).unwrap();
        assert!(bash.contains("complete -F _brainctl"), "{bash}");
        for sub in ["start", "stop-all", "run", "logs", "completions"] {
            assert!(bash.contains(sub), "no {sub} in the bash completion");
        }
        assert!(bash.contains("--memory"));
    }

    #[test]
    fn version_is_the_crate_version() {
        Cli::command().debug_assert();
        assert_eq!(
            Cli::command().get_version(),
            Some(env!("CARGO_PKG_VERSION"))
        );
    }
}
