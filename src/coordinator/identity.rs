//! Who a connection to the admission socket speaks for, from what its process cannot forge:
//! the kernel's peer credentials, the unit its cgroup is in, its parent, and when it started.
//! The name a process gives itself (`/proc/PID/comm`) is never trusted.
//!
//! A gate is the unit's main process (systemd's `MainPID`, checked by the event loop), and a
//! unit's main process is admitted once: [`Admissions`] keeps the unit and its main process's
//! start time, in a file of root's own that outlives a restart of the coordinator, so a main
//! process that asks again after it was admitted (an experiment that runs the gate again, or
//! connects itself, whatever it calls itself) is refused and keeps counting, and a restart of
//! the unit (a new main process) is a new admission. The record, not the executable, tells
//! them apart: reading another user's `/proc/PID/exe` would take `CAP_SYS_PTRACE`, and an
//! `exec` keeps the PID and the start time, so the record is what an experiment cannot undo.

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
    /// A process of an experiment unit that is not its gate: a child of its main process.
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
/// `MainPID`, and the record whether it was admitted): an experiment unit's process, a child of
/// the service manager.
pub fn judge(peer: &Peer) -> Result<Candidate, NotAGate> {
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
    let start_usec = peer
        .start_usec
        .ok_or_else(|| NotAGate::Stranger("the process is gone".into()))?;
    Ok(Candidate {
        unit,
        pid: peer.pid,
        start_usec,
    })
}

/// Where the coordinator keeps its record of admissions: its own runtime folder (root's, mode
/// 0700, `RuntimeDirectoryPreserve=yes`), so the record outlives a restart of the coordinator
/// and goes with a reboot, as the admissions it records do.
pub const ADMISSIONS_FILE: &str = "/run/brain-coordinator/admitted.json";

/// The units admitted, each with its main process's start time: the record that tells a gate
/// from an admitted experiment that asks again. Kept in a file when made with
/// [`Admissions::kept_in`]; only the coordinator (root) writes or reads that file.
#[derive(Debug, Default)]
pub struct Admissions {
    units: HashMap<String, u64>,
    file: Option<PathBuf>,
}

impl Admissions {
    /// The record kept in `file`, as the last instance left it (empty when there is none).
    pub fn kept_in(file: &Path) -> Admissions {
        Admissions {
            units: crate::statefile::load(file),
            file: Some(file.to_path_buf()),
        }
    }

    /// Records that `unit`'s main process, started at `start_usec`, is admitted; written before
    /// the gate is told, so that no instance of the coordinator can forget it.
    pub fn record(&mut self, unit: &str, start_usec: u64) {
        self.units.insert(unit.to_string(), start_usec);
        self.save();
    }

    /// Forgets `unit` (its gate was gone before it heard its admission).
    pub fn forget(&mut self, unit: &str) {
        if self.units.remove(unit).is_some() {
            self.save();
        }
    }

    fn save(&self) {
        if let Some(file) = &self.file
            && let Err(e) = crate::statefile::save(file, &self.units)
        {
            crate::log_err!("cannot keep the record of admissions: {e:#}");
        }
    }

    /// Whether this main process of `unit` was admitted already (a restart of the unit has a
    /// new main process, with another start time).
    pub fn admitted(&self, unit: &str, start_usec: u64) -> bool {
        self.units.get(unit) == Some(&start_usec)
    }

    /// Forgets the units that no longer run.
    pub fn retain(&mut self, live: impl Fn(&str) -> bool) {
        let before = self.units.len();
        self.units.retain(|u, _| live(u));
        if self.units.len() != before {
            self.save();
        }
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
            parent: Some(1),
            start_usec: Some(17),
        }
    }

    #[test]
    fn the_main_process_running_the_gate_is_a_candidate() {
        assert_eq!(
            judge(&gate_peer()),
            Ok(Candidate {
                unit: "brain-experiment@a.service".into(),
                pid: 4242,
                start_usec: 17
            })
        );
    }

    #[test]
    fn the_record_outlives_the_coordinator_and_forgets_what_ended() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("admitted.json");
        let mut record = Admissions::kept_in(&file);
        assert!(record.is_empty());
        record.record("brain-experiment@a.service", 17);
        record.record("brain-experiment@b.service", 18);
        // The next instance of the coordinator reads what this one recorded.
        let mut next = Admissions::kept_in(&file);
        assert!(next.admitted("brain-experiment@a.service", 17));
        // A restart of the unit is a new main process: not admitted yet.
        assert!(!next.admitted("brain-experiment@a.service", 99));
        next.retain(|u| u == "brain-experiment@a.service");
        next.forget("brain-experiment@a.service");
        assert!(Admissions::kept_in(&file).is_empty());
    }

    #[test]
    fn children_and_strangers_are_refused() {
        let child = Peer {
            parent: Some(4242),
            ..gate_peer()
        };
        assert_eq!(judge(&child).unwrap_err().why(), ONLY_THE_MAIN_PROCESS);
        for unit in [None, Some("sshd.service".to_string())] {
            let stranger = Peer {
                unit,
                ..gate_peer()
            };
            assert_eq!(
                judge(&stranger),
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
