//! brain-admit: the admission gate, the first main process of every experiment unit
//! (`ExecStart=brain-admit COMMAND...`, `Type=notify`). It asks the coordinator and, once
//! admitted, becomes COMMAND by `exec`; while queued it tells systemd it is ready and shows its
//! place in the queue as the unit's status; refused, it exits with the coordinator's reason.

use homelab::admission::{self, Answer};
use sd_notify::NotifyState;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args[0] == "--help" || args[0] == "-h" {
        println!(
            "usage: brain-admit COMMAND [ARGS...]\n\
             Waits until the experiment coordinator admits this unit, then runs COMMAND in its\n\
             place (the ExecStart= of experiment units, with Type=notify). Exit status {}: refused.",
            admission::EXIT_REFUSED
        );
        return if args.is_empty() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let mut ready = false;
    let last = admission::gate::ask(Path::new(admission::SOCKET), |answer| {
        if let Answer::Queued(why) = answer {
            if !ready {
                homelab::log_info!("{why}");
            }
            // Ready: the start job is done, and a queue holds up neither boot nor the target.
            let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(why)]);
            ready = true;
        }
    });
    match last {
        Answer::Refused(why) => {
            homelab::log_err!("refused by the coordinator: {why}");
            let _ = sd_notify::notify(&[NotifyState::Status(&format!("refused: {why}"))]);
            ExitCode::from(admission::EXIT_REFUSED)
        }
        _ => {
            if ready {
                homelab::log_info!("admitted by the coordinator");
            }
            // An empty status clears "queued"; the experiment may set its own.
            let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status("")]);
            let err = std::process::Command::new(&args[0]).args(&args[1..]).exec();
            homelab::log_err!("cannot run {:?}: {err}", args[0]);
            // 203 is systemd's EXIT_EXEC: "failed to execute the program".
            ExitCode::from(203)
        }
    }
}
