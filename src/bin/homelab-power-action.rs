//! homelab-power-action: what a fired schedule runs, as root, through `homelab-poweroff@.service`
//! (`homelab-shutdown@.timer`) or `homelab-reboot@.service` (`homelab-reboot@.timer`): powers off
//! or reboots through logind, so delay inhibitors (running experiments) get their time to stop.
//! The action comes from the unit's command line; no file of the unprivileged user is read.

use clap::{Parser, ValueEnum};
use homelab::{cli, log_warn};
use std::process::ExitCode;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Action {
    Poweroff,
    Reboot,
}

/// Powers the machine off, or reboots it, via logind.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// What to do
    action: Action,
    /// Say what would be done, and do nothing
    #[arg(long)]
    dry_run: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    cli::run(|| {
        let what = match args.action {
            Action::Poweroff => "powering off",
            Action::Reboot => "rebooting",
        };
        log_warn!("{} fired: {what} now", own_unit());
        if args.dry_run {
            println!("{what}");
            return Ok(());
        }
        record(args.action);
        let bus = homelab::systemd::dbus::Bus::system();
        match args.action {
            Action::Poweroff => bus.power_off()?,
            Action::Reboot => bus.reboot()?,
        }
        Ok(())
    })
}

/// The unit we run in (from our cgroup), for the log line; "a schedule" when unknown.
fn own_unit() -> String {
    homelab::systemd::procfs::unit_of_pid(std::process::id()).unwrap_or_else(|| "a schedule".into())
}

/// Records the action and its time for the shutdown service's `/metrics`
/// (`homelab_shutdown_last_power_action_timestamp_seconds`); a failure is logged, never a reason
/// not to act.
fn record(action: Action) {
    let name = match action {
        Action::Poweroff => "poweroff",
        Action::Reboot => "reboot",
    };
    let now = chrono::Utc::now().timestamp();
    let path = std::path::Path::new(homelab::shutdown::metrics::LAST_ACTION_FILE);
    if let Err(e) = homelab::metrics::write_textfile(path, &format!("{name} {now}\n")) {
        log_warn!("cannot record the power action in {}: {e}", path.display());
    }
}
