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
        let bus = homelab::systemd::dbus::Bus::system();
        match args.action {
            Action::Poweroff => bus.power_off()?,
            Action::Reboot => bus.reboot()?,
        }
        Ok(())
    })
}

/// The unit we run in (from `/proc/self/cgroup`), for the log line; "a schedule" when unknown.
fn own_unit() -> String {
    std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|c| {
            c.lines()
                .filter_map(|l| l.rsplit('/').next())
                .find(|u| u.ends_with(".service"))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "a schedule".into())
}
