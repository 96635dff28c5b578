//! Admission of experiments: what the coordinator and its gates (`brain-admit`, the first main
//! process of every experiment unit) share: where they meet, the lines they exchange
//! ([`protocol`]), the gate's side of the conversation ([`gate`]) and what a refusal looks like
//! to systemd.

pub mod gate;
pub mod protocol;

pub use protocol::{Answer, QueuedStatus};

/// Where the coordinator listens for gates (its socket unit holds it while it restarts).
pub const SOCKET: &str = "/run/brain-in-jar/admission.sock";
/// The exit status of a gate the coordinator refused: sysexits' `EX_CONFIG` (systemd shows it as
/// `status=78/CONFIG`); the experiment units have `RestartPreventExitStatus=78`.
pub const EXIT_REFUSED: u8 = 78;
/// The gate as installed beside the other binaries (the Makefile's BINDIR, compiled in): the
/// first main process of the template's and of transient units.
pub const GATE: &str = concat!(env!("HOMELAB_BINDIR"), "/brain-admit");
/// The gate's process name (`/proc/PID/comm`). Any process may take it (`prctl`), so it only
/// tells `brainctl status` which experiments to show as queued; the coordinator never trusts it.
pub const GATE_COMM: &str = "brain-admit";
