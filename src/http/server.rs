//! Serves a [`Service`] on systemd's socket with bounded resources, and exits when idle.
//!
//! One I/O thread ([`super::io`]) multiplexes every connection (at most [`MAX_CONNECTIONS`]: past
//! that the one idle longest is closed for a new one, or the rest wait in the kernel's backlog)
//! while it receives a request: head within the bounds of [`super::parse`], method, route and
//! token checked before any body is read, the whole request within [`REQUEST_DEADLINE`], and
//! every byte held within the process-wide [`super::budget`]. Only complete requests reach the
//! few worker threads ([`super::worker`]), which write what the socket takes at once and leave
//! the rest to the I/O thread: slow, idle or non-reading clients hold no thread.
//!
//! Under socket activation systemd owns the listening socket: when we exit, connections that
//! arrive later wait in its backlog and start us again. So the idle exit stops accepting,
//! answers every request already begun, and exits: nothing is lost.

use super::budget::{self, Budget};
use super::io::Io;
use super::worker::{Job, Worker};
use super::{Service, conn::Conn};
use crate::{log_info, log_warn, systemd};
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Most connections open at once. Each costs one descriptor and its buffer, which is drawn from
/// the process-wide [`budget`] past a small allowance.
pub const MAX_CONNECTIONS: usize = 512;
/// Time a client has to send a whole request (head and body), from its connection or from the
/// previous answer on it; past it the request is answered 408 and the connection closed.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// Time a new connection has to send its first byte; past it it is closed without an answer.
/// Any client on a LAN sends its request at once; one that does not only holds a slot.
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(2);
/// Time a client has to read an answer; past it the connection is closed. Only a slot and the
/// answer's bytes wait for it, never a worker.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// At the exit, how long connections that sent nothing yet are kept, in case their request is
/// on its way.
pub const DRAIN_GRACE: Duration = Duration::from_millis(250);
/// Complete requests waiting for a worker; past it a request is answered 503.
const QUEUE: usize = 256;

/// Idle period after which a socket-activated service exits when no request came.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Environment variable (seconds) that overrides [`DEFAULT_IDLE_TIMEOUT`]; `0` never exits.
pub const IDLE_TIMEOUT_ENV: &str = "HOMELAB_IDLE_TIMEOUT";

#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// `None`: serve until killed.
    pub idle_timeout: Option<Duration>,
    pub workers: usize,
}

impl ServeOptions {
    /// Options from the environment: `HOMELAB_IDLE_TIMEOUT`, and one worker per CPU, from two (so
    /// that one slow request leaves another worker) to eight.
    pub fn from_env() -> anyhow::Result<ServeOptions> {
        let idle_timeout = parse_idle_timeout(std::env::var(IDLE_TIMEOUT_ENV).ok().as_deref())?;
        let workers = thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(2, 8);
        Ok(ServeOptions {
            idle_timeout,
            workers,
        })
    }
}

/// `None` (unset) is the default; `0` means never exit.
pub fn parse_idle_timeout(value: Option<&str>) -> anyhow::Result<Option<Duration>> {
    match value.map(str::trim) {
        None | Some("") => Ok(Some(DEFAULT_IDLE_TIMEOUT)),
        Some(v) => match v.parse::<u64>() {
            Ok(0) => Ok(None),
            Ok(secs) => Ok(Some(Duration::from_secs(secs))),
            Err(_) => anyhow::bail!(
                "{IDLE_TIMEOUT_ENV}={v:?} is not a whole number of seconds: use e.g. {IDLE_TIMEOUT_ENV}=30, or 0 to never exit"
            ),
        },
    }
}

/// When the last complete request came or was answered, and whether the service is stopping.
pub struct Activity {
    last: Mutex<Instant>,
    pub stopping: AtomicBool,
}

impl Activity {
    pub fn touch(&self) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    fn idle_for(&self) -> Duration {
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }
}

/// Serves until idle (or forever) and tells systemd it is ready once requests can be answered.
/// `signals` is [`stop_signals`]'s descriptor, taken before any thread of the process started.
pub fn serve(
    listener: TcpListener,
    service: Arc<dyn Service>,
    opts: &ServeOptions,
    mut signals: Option<nix::sys::signalfd::SignalFd>,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let activity = Arc::new(Activity {
        last: Mutex::new(Instant::now()),
        stopping: AtomicBool::new(false),
    });
    let in_flight = Arc::new(AtomicUsize::new(0));
    let budget = Arc::new(Budget::new(budget::MEMORY_BUDGET));
    let (wake_rx, wake_tx) = UnixStream::pair()?;
    wake_rx.set_nonblocking(true)?;
    wake_tx.set_nonblocking(true)?;
    let (jobs_tx, jobs_rx) = mpsc::sync_channel::<Job>(QUEUE);
    let jobs_rx = Arc::new(Mutex::new(jobs_rx));
    let (back_tx, back_rx) = mpsc::channel::<Conn>();

    // All threads start here, once: nothing is spawned per connection, so a task limit can only
    // fail the start (and systemd says so), never the serving.
    let workers: Vec<_> = (0..opts.workers.max(1))
        .map(|i| {
            let w = Worker {
                jobs: jobs_rx.clone(),
                back: back_tx.clone(),
                wake: wake_tx.try_clone()?,
                service: service.clone(),
                activity: activity.clone(),
                in_flight: in_flight.clone(),
            };
            Ok(thread::Builder::new()
                .name(format!("http-{i}"))
                .spawn(move || w.run())?)
        })
        .collect::<anyhow::Result<_>>()?;
    drop(back_tx);
    let io = Io {
        listener,
        service: service.clone(),
        activity: activity.clone(),
        in_flight: in_flight.clone(),
        budget,
        jobs: jobs_tx,
        back: back_rx,
        wake: wake_rx,
        conns: Vec::new(),
        accept_paused_until: None,
        last_accept_warning: None,
    };
    let io = thread::Builder::new()
        .name("http-io".into())
        .spawn(move || io.run())?;

    systemd::notify_ready(&format!("serving {} on {addr}", service.name()));
    match opts.idle_timeout {
        Some(idle) => log_info!(
            "{} listening on {addr}, exits after {}s idle",
            service.name(),
            idle.as_secs()
        ),
        None => log_info!("{} listening on {addr}", service.name()),
    }

    let why = loop {
        thread::sleep(crate::log::FLUSH_EVERY);
        crate::log::flush();
        if let Some(sig) = signals
            .as_mut()
            .and_then(|s| s.read_signal().ok().flatten())
        {
            break format!("got {}, exiting", crate::signals::name(sig.ssi_signo));
        }
        if let Some(idle) = opts.idle_timeout
            && activity.idle_for() >= idle
            && in_flight.load(Ordering::SeqCst) == 0
        {
            break format!(
                "idle for {}s, exiting; systemd keeps the socket",
                idle.as_secs()
            );
        }
        if io.is_finished() {
            break "the connection loop ended unexpectedly, exiting".to_string();
        }
    };
    systemd::notify_stopping();
    log_info!("{why}");
    activity.stopping.store(true, Ordering::SeqCst);
    let _ = (&wake_tx).write(&[1]);
    // The I/O thread stops accepting, sees every request already begun answered, then drops the
    // queue's sender: the workers end.
    let _ = io.join();
    for w in workers {
        let _ = w.join();
    }
    crate::log::flush();
    Ok(())
}

/// SIGTERM and SIGINT, blocked for this thread (and the threads it starts) and readable without
/// blocking; `None` (the default actions stay) if that fails. Call it before any thread starts
/// (the service's own, zbus's): a thread started earlier keeps the default action, and a stop
/// would then kill the process before the requests in flight end and the log is flushed.
pub fn stop_signals() -> Option<nix::sys::signalfd::SignalFd> {
    use nix::sys::signal::Signal;
    crate::signals::take(&[Signal::SIGTERM, Signal::SIGINT], true)
        .inspect_err(|e| {
            log_warn!(
                "cannot take SIGTERM through a signalfd ({e}); a stop may lose the last access lines"
            )
        })
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_timeout_parsing() {
        assert_eq!(
            parse_idle_timeout(None).unwrap(),
            Some(DEFAULT_IDLE_TIMEOUT)
        );
        assert_eq!(
            parse_idle_timeout(Some("2")).unwrap(),
            Some(Duration::from_secs(2))
        );
        assert_eq!(parse_idle_timeout(Some(" 0 ")).unwrap(), None);
        let e = parse_idle_timeout(Some("2s")).unwrap_err().to_string();
        assert!(e.contains("HOMELAB_IDLE_TIMEOUT"), "{e}");
        assert!(parse_idle_timeout(Some("-1")).is_err());
    }
}
