//! brain-admit: the admission gate every experiment unit runs as `ExecStartPre=`. It asks the
//! coordinator and waits; the experiment starts only when admitted.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    if std::env::args()
        .nth(1)
        .is_some_and(|a| a == "--help" || a == "-h")
    {
        println!(
            "brain-admit: waits until the experiment coordinator admits this unit (ExecStartPre= of experiment units)"
        );
        return ExitCode::SUCCESS;
    }
    match homelab::coordinator::gate(Path::new(homelab::coordinator::SOCKET)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            homelab::log_err!("refused by the coordinator: {why}");
            ExitCode::FAILURE
        }
    }
}
