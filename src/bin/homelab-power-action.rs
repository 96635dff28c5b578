//! homelab-power-action: what a fired `homelab-shutdown@.timer` runs, as root, through
//! `homelab-poweroff@.service`: powers off or reboots through logind, so delay inhibitors (running
//! experiments) get their time to stop.

use clap::Parser;
use homelab::shutdown::schedule::{Action, TIMER_TEMPLATE};
use homelab::shutdown::state::{DEFAULT_STATE_DIR, recorded_action};
use homelab::systemd::{dbus, escape};
use homelab::{cli, log_warn};
use std::path::PathBuf;
use std::process::ExitCode;

/// Powers the machine off (or reboots it, when that schedule asked for it) via logind.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The schedule's escaped instance name; by default, the instance of the
    /// homelab-poweroff@.service unit this runs in (read from /proc/self/cgroup, as systemd's
    /// command-line unescaping would garble %i)
    instance: Option<String>,
    /// Where shutdown-service keeps its state (the action of each schedule)
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Say what would be done, and do nothing
    #[arg(long)]
    dry_run: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    cli::run(|| {
        let instance = match args.instance {
            Some(i) => i,
            None => own_instance()?,
        };
        let calendar = escape::unescape(&instance)
            .ok_or_else(|| anyhow::anyhow!("{instance:?} is not an escaped unit instance name"))?;
        let timer = escape::template_instance(TIMER_TEMPLATE, &calendar)
            .ok_or_else(|| anyhow::anyhow!("{calendar:?} cannot be a timer instance"))?;
        let action = recorded_action(&args.state_dir, &timer);
        log_warn!("{timer} fired: {} now", action.as_str());
        if args.dry_run {
            println!("{}", action.as_str());
            return Ok(());
        }
        let login = dbus::LoginManagerProxy::new(dbus::system_bus()?)?;
        match action {
            Action::Poweroff => login.power_off(false)?,
            Action::Reboot => login.reboot(false)?,
        }
        Ok(())
    })
}

/// The instance of the `homelab-poweroff@.service` unit whose cgroup we are in.
fn own_instance() -> anyhow::Result<String> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup")?;
    cgroups
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .find_map(|unit| escape::instance_of(unit, "homelab-poweroff@.service"))
        .map(str::to_string)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "not running in a homelab-poweroff@.service unit: pass the instance name"
            )
        })
}
