//! The gates' side of the socket, as the coordinator holds it: accepting connections, judging
//! each by the kernel's facts ([`super::identity`]), and answering through the protocol.

use super::identity::{self, NotAGate, Peer};
use crate::admission::Answer;
use crate::log_warn;
use std::collections::HashSet;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

/// A gate: the main process of an experiment unit that waits for admission.
pub struct Gate {
    pub stream: UnixStream,
    pub unit: String,
    pub pid: u32,
    /// When its process started (microseconds since the epoch): its place in the queue, the
    /// same after a restart of the coordinator, and what [`identity::Admissions`] keeps.
    pub since_usec: u64,
    /// The last status it was told while queued.
    pub told: Option<String>,
}

impl Gate {
    /// Sends one answer; false when the gate is gone or does not read (the socket is
    /// non-blocking, so a gate that never reads cannot stall the coordinator).
    pub fn tell(&mut self, answer: &Answer) -> bool {
        answer.send(&self.stream)
    }
}

/// Accepts gates and finds out whom each speaks for, from the kernel alone; it never reads
/// from a connection. What is not a gate is refused here; gates go to the event loop through
/// `deliver` (false: the loop is gone), which blocks while the loop's queue is full, so that
/// further connections wait in the kernel.
pub fn accept(listener: UnixListener, mut deliver: impl FnMut(Gate) -> bool) {
    // Impostors already named in the journal: one line per process, not one per connection.
    let mut named: HashSet<(String, u32)> = HashSet::new();
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors, say: wait instead of spinning.
                log_warn!("cannot accept a gate: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if stream.set_nonblocking(true).is_err() {
            continue;
        }
        let judged = Peer::of(&stream).and_then(|peer| identity::judge(&peer));
        match judged {
            Ok(c) => {
                let gate = Gate {
                    stream,
                    unit: c.unit,
                    pid: c.pid,
                    since_usec: c.start_usec,
                    told: None,
                };
                if !deliver(gate) {
                    return;
                }
            }
            Err(not) => {
                if let NotAGate::Impostor { unit, pid, why } = &not {
                    if named.len() >= 1024 {
                        named.clear();
                    }
                    if named.insert((unit.clone(), *pid)) {
                        // It keeps counting: it is not queued, so its unit stays admitted.
                        log_warn!("refused process {pid} of {unit}, which asked to queue: {why}");
                    }
                }
                Answer::Refused(not.why().to_string()).send(&stream);
            }
        }
    }
}
