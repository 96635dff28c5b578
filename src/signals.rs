//! Signals a process handles, handled one way: blocked in every thread and read from a
//! `signalfd`, so that no handler code runs at an arbitrary point of the program.
//!
//! (`brainctl` also sets `SIGPIPE` back to its default action, which the Rust runtime changes to
//! "ignore": that restores the kernel's default, it handles nothing.)

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// Blocks `signals` for the calling thread, and so for every thread it starts afterwards (call
/// it before any thread starts), and returns a file descriptor that reads them: at once with
/// `nonblocking`, else waiting for the next.
pub fn take(signals: &[Signal], nonblocking: bool) -> nix::Result<SignalFd> {
    let mut mask = SigSet::empty();
    for s in signals {
        mask.add(*s);
    }
    let mut flags = SfdFlags::SFD_CLOEXEC;
    if nonblocking {
        flags |= SfdFlags::SFD_NONBLOCK;
    }
    let fd = SignalFd::with_flags(&mask, flags)?;
    mask.thread_block()?;
    Ok(fd)
}

/// The name of a signal a [`take`]n descriptor read (`SIGTERM`), or its number.
pub fn name(signo: u32) -> String {
    i32::try_from(signo)
        .ok()
        .and_then(|n| Signal::try_from(n).ok())
        .map_or_else(|| signo.to_string(), |s| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_signal_is_read_not_handled() {
        // In a thread of its own: the mask is the thread's, and the test harness's other
        // threads keep theirs. raise() sends to the calling thread only.
        std::thread::spawn(|| {
            let fd = take(&[Signal::SIGUSR2], true).unwrap();
            assert!(fd.read_signal().unwrap().is_none(), "nothing pending yet");
            nix::sys::signal::raise(Signal::SIGUSR2).unwrap();
            let got = fd.read_signal().unwrap().expect("the signal, read");
            assert_eq!(name(got.ssi_signo), "SIGUSR2");
        })
        .join()
        .unwrap();
        assert_eq!(name(999), "999");
    }
}
