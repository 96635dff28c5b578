//! Who a connection to the admission socket speaks for, from what its process cannot forge:
//! the kernel's peer credentials, the unit its cgroup is in, the executable it runs, and when
//! it started. The name a process gives itself (`/proc/PID/comm`) is never trusted.
//!
//! A gate is the unit's main process (systemd's `MainPID`, checked by the event loop) running
//! the installed [`GATE`]; a unit's main process is admitted once: [`Admissions`] keeps the
//! unit and its main process's start time, so a process that `exec`s the gate again after it was
//! admitted is refused, and a restart of the unit (a new main process) is a new admission.

use crate::admission::GATE;
use crate::experiment::config as experiments;
use crate::systemd::procfs;
use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// What the kernel says of the process at the other end of a connection.
#[derive(Clone, Debug, PartialEq)]
pub struct Peer {
    pub pid: u32,
    /// The service its cgroup is in.
    pub unit: Option<String>,
    /// The executable it runs (`/proc/PID/exe`), or why it cannot be read.
    pub exe: Result<PathBuf, std::io::ErrorKind>,
    pub parent: Option<u32>,
    /// When it started, microseconds since the epoch.
    pub start_usec: Option<u64>,
}

impl Peer {
    /// Reads what the kernel says of the peer of `stream`.
    pub fn of(stream: &UnixStream) -> Result<Peer, NotAGate> {
        let pid = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
            .map_err(|e| NotAGate::Stranger(format!("no peer credentials: {e}")))?
            .pid();
        let pid = u32::try_from(pid).map_err(|_| NotAGate::Stranger("no peer process".into()))?;
        Ok(Peer {
            pid,
            unit: procfs::unit_of_pid(pid),
            exe: std::fs::read_link(format!("/proc/{pid}/exe")).map_err(|e| e.kind()),
            parent: procfs::parent(pid),
            start_usec: procfs::start_usec(pid),
        })
    }
}

/// A connection that may be a gate: its unit and process, still to be checked against the
/// unit's `MainPID` and [`Admissions`].
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub unit: String,
    pub pid: u32,
    pub start_usec: u64,
}

/// Why a connection is not a gate: the text of its refusal.
#[derive(Clone, Debug, PartialEq)]
pub enum NotAGate {
    /// Not a process of an experiment unit (or gone before it could be looked at).
    Stranger(String),
    /// A process of an experiment unit that is not its gate: a child, or a main process that
    /// runs something else than [`GATE`] (it may have named itself `brain-admit`).
    Impostor { unit: String, pid: u32, why: String },
}

impl NotAGate {
    pub fn why(&self) -> &str {
        match self {
            NotAGate::Stranger(why) | NotAGate::Impostor { why, .. } => why,
        }
    }
}

/// The words of a refusal to anything but a unit's main process at its gate.
pub const ONLY_THE_MAIN_PROCESS: &str = "only the main process of an experiment unit is its gate";

/// Judges a peer by the kernel's facts alone (the event loop then asks systemd for the unit's
/// `MainPID`): an experiment unit's process, a child of the service manager, running `gate`.
pub fn judge(peer: &Peer, gate: &Path) -> Result<Candidate, NotAGate> {
    let unit = peer
        .unit
        .clone()
        .filter(|u| experiments::id_of(u).is_some())
        .ok_or_else(|| NotAGate::Stranger("not an experiment unit".into()))?;
    let impostor = |why: String| NotAGate::Impostor {
        unit: unit.clone(),
        pid: peer.pid,
        why,
    };
    // A main process is a child of the service manager: a cheap first check, before the event
    // loop asks systemd for the unit's main PID.
    if peer.parent != Some(1) {
        return Err(impostor(ONLY_THE_MAIN_PROCESS.into()));
    }
    match &peer.exe {
        Ok(exe) if runs(exe, gate) => {}
        Ok(exe) => {
            return Err(impostor(format!(
                "{ONLY_THE_MAIN_PROCESS}, while it runs {}: this process runs {}",
                gate.display(),
                exe.display()
            )));
        }
        Err(e) => {
            return Err(impostor(format!(
                "{ONLY_THE_MAIN_PROCESS}: cannot read the executable of process {}: {e}",
                peer.pid
            )));
        }
    }
    let start_usec = peer
        .start_usec
        .ok_or_else(|| NotAGate::Stranger("the process is gone".into()))?;
    Ok(Candidate {
        unit,
        pid: peer.pid,
        start_usec,
    })
}

/// Whether `exe` (a `/proc/PID/exe` link) is `gate`: the file, or the file that was there when
/// the process started and has since been replaced (an upgrade: the kernel adds " (deleted)").
/// Only root can write where the gate is installed, so either is the gate.
pub fn runs(exe: &Path, gate: &Path) -> bool {
    exe == gate
        || exe.as_os_str().as_encoded_bytes()
            == [gate.as_os_str().as_encoded_bytes(), b" (deleted)"].concat()
}

/// The installed gate, as [`judge`] compares it.
pub fn installed_gate() -> &'static Path {
    Path::new(GATE)
}

/// The units admitted, each with its main process's start time: the record that tells a gate
/// from an admitted experiment that asks again.
#[derive(Debug, Default)]
pub struct Admissions {
    units: HashMap<String, u64>,
}

impl Admissions {
    /// Records that `unit`'s main process, started at `start_usec`, was admitted.
    pub fn record(&mut self, unit: &str, start_usec: u64) {
        self.units.insert(unit.to_string(), start_usec);
    }

    /// Whether this main process of `unit` was admitted already (a restart of the unit has a
    /// new main process, with another start time).
    pub fn admitted(&self, unit: &str, start_usec: u64) -> bool {
        self.units.get(unit) == Some(&start_usec)
    }

    /// Forgets the units that no longer run.
    pub fn retain(&mut self, live: impl Fn(&str) -> bool) {
        self.units.retain(|u, _| live(u));
    }

    pub fn len(&self) -> usize {
        self.units.len()
    }

    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate_peer() -> Peer {
        Peer {
            pid: 4242,
            unit: Some("brain-experiment@a.service".into()),
            exe: Ok(PathBuf::from("/usr/bin/brain-admit")),
            parent: Some(1),
            start_usec: Some(17),
        }
    }

    #[test]
    fn the_main_process_running_the_gate_is_a_candidate() {
        let gate = Path::new("/usr/bin/brain-admit");
        assert_eq!(
            judge(&gate_peer(), gate),
            Ok(Candidate {
                unit: "brain-experiment@a.service".into(),
                pid: 4242,
                start_usec: 17
            })
        );
    }

    #[test]
    fn a_process_named_brain_admit_is_refused_by_its_executable() {
        let gate = Path::new("/usr/bin/brain-admit");
        // What prctl(PR_SET_NAME, "brain-admit") does not change.
        let forger = Peer {
            exe: Ok(PathBuf::from("/usr/bin/python3.11")),
            ..gate_peer()
        };
        let err = judge(&forger, gate).unwrap_err();
        assert!(
            matches!(&err, NotAGate::Impostor { unit, .. } if unit == "brain-experiment@a.service")
        );
        assert!(err.why().starts_with(ONLY_THE_MAIN_PROCESS), "{err:?}");
        assert!(err.why().contains("/usr/bin/python3.11"), "{err:?}");
        // A gate that kept running through an upgrade of the package is still the gate.
        let upgraded = Peer {
            exe: Ok(PathBuf::from("/usr/bin/brain-admit (deleted)")),
            ..gate_peer()
        };
        assert!(judge(&upgraded, gate).is_ok());
        assert!(!runs(Path::new("/usr/bin/brain-admit2"), gate));
        // An executable that cannot be read is no proof either.
        let hidden = Peer {
            exe: Err(std::io::ErrorKind::PermissionDenied),
            ..gate_peer()
        };
        let why = judge(&hidden, gate).unwrap_err();
        assert!(why.why().contains("permission denied"), "{why:?}");
    }

    #[test]
    fn children_and_strangers_are_refused() {
        let gate = Path::new("/usr/bin/brain-admit");
        let child = Peer {
            parent: Some(4242),
            ..gate_peer()
        };
        assert_eq!(
            judge(&child, gate).unwrap_err().why(),
            ONLY_THE_MAIN_PROCESS
        );
        for unit in [None, Some("sshd.service".to_string())] {
            let stranger = Peer {
                unit,
                ..gate_peer()
            };
            assert_eq!(
                judge(&stranger, gate),
                Err(NotAGate::Stranger("not an experiment unit".into()))
            );
        }
    }

    #[test]
    fn a_main_process_is_admitted_once_and_a_restart_is_new() {
        let mut a = Admissions::default();
        assert!(!a.admitted("brain-experiment@a.service", 17));
        a.record("brain-experiment@a.service", 17);
        assert!(a.admitted("brain-experiment@a.service", 17));
        // The unit restarted: a new main process, another start time.
        assert!(!a.admitted("brain-experiment@a.service", 18));
        assert!(!a.admitted("brain-experiment@b.service", 17));
        a.retain(|u| u != "brain-experiment@a.service");
        assert!(a.is_empty());
    }
}
