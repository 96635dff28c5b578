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
use super::timing::Activity;
use super::worker::{Job, Worker};
use super::{Service, conn::Conn};
use crate::{log_info, log_warn, systemd};
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Most connections open at once. Each costs one descriptor and its buffer, which is drawn from
/// the process-wide [`budget`] past a small allowance.
pub const MAX_CONNECTIONS: usize = 512;
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
    /// [`MAX_CONNECTIONS`]; smaller in tests.
    pub max_connections: usize,
    /// [`budget::MEMORY_BUDGET`]; smaller in tests.
    pub memory_budget: usize,
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
            max_connections: MAX_CONNECTIONS,
            memory_budget: budget::MEMORY_BUDGET,
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

/// Serves until idle (or forever) and tells systemd it is ready once requests can be answered.
/// `signals` is [`stop_signals`]'s descriptor, taken before any thread of the process started.
pub fn serve(
    listener: TcpListener,
    service: Arc<dyn Service>,
    opts: &ServeOptions,
    signals: Option<nix::sys::signalfd::SignalFd>,
) -> anyhow::Result<()> {
    serve_with(
        listener,
        service,
        opts,
        signals,
        Arc::new(Activity::default()),
    )
}

/// [`serve`], with the [`Activity`] a test watches to see the stop begin.
fn serve_with(
    listener: TcpListener,
    service: Arc<dyn Service>,
    opts: &ServeOptions,
    mut signals: Option<nix::sys::signalfd::SignalFd>,
    activity: Arc<Activity>,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let in_flight = Arc::new(AtomicUsize::new(0));
    let budget = Arc::new(Budget::new(opts.memory_budget));
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
        max_connections: opts.max_connections,
        jobs: jobs_tx,
        back: back_rx,
        wake: wake_rx,
        conns: Vec::new(),
        accept_paused_until: None,
        last_accept_warning: None,
        refusal_log: std::cell::Cell::new((Instant::now(), 0, 0)),
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
    use crate::http::timing::{FIRST_BYTE_TIMEOUT, REQUEST_DEADLINE};

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

    use crate::http::{CHECKS_PASSED, Request, Response};
    use serde_json::{Value, json};
    use std::io::Read;
    use std::net::{SocketAddr, TcpStream};

    /// `GET /health`, `GET /big` (a 1 MiB answer) and `POST /echo` (the body's length).
    struct Test;

    impl Service for Test {
        fn name(&self) -> &'static str {
            "test"
        }

        fn handle(&self, req: &Request) -> Response {
            if req.checks_only {
                return Response::with_status(CHECKS_PASSED, Value::Null);
            }
            match req.path.as_str() {
                "/big" => Response::text("text/plain", "b".repeat(1 << 20)),
                "/echo" => Response::ok(json!({"length": req.body.len()})),
                _ => Response::ok(json!({"status": "healthy"})),
            }
        }
    }

    struct Server {
        addr: SocketAddr,
        activity: Arc<Activity>,
        done: thread::JoinHandle<anyhow::Result<()>>,
    }

    fn start(opts: ServeOptions) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let activity = Arc::new(Activity::default());
        let watched = activity.clone();
        let done =
            thread::spawn(move || serve_with(listener, Arc::new(Test), &opts, None, watched));
        Server {
            addr,
            activity,
            done,
        }
    }

    fn opts() -> ServeOptions {
        ServeOptions {
            idle_timeout: None,
            workers: 1,
            max_connections: 8,
            memory_budget: 64 * 1024,
        }
    }

    fn connect(addr: SocketAddr) -> TcpStream {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s
    }

    /// Everything until the server closes (or 15 s pass): its text.
    fn read_all(mut s: TcpStream) -> String {
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// One request on a fresh connection; the whole answer and how long it took.
    fn get(addr: SocketAddr, path: &str) -> (String, Duration) {
        let t = Instant::now();
        let mut s = connect(addr);
        s.write_all(format!("GET {path} HTTP/1.1\r\nConnection: close\r\n\r\n").as_bytes())
            .unwrap();
        (read_all(s), t.elapsed())
    }

    fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !cond() {
            assert!(Instant::now() < deadline, "{what} within {limit:?}");
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Writes a head announcing `length` bytes of body and all of it but the last byte.
    fn almost_a_body(addr: SocketAddr, length: usize) -> TcpStream {
        let mut s = connect(addr);
        let head = format!("POST /echo HTTP/1.1\r\nContent-Length: {length}\r\n\r\n");
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&vec![b'x'; length - 1]).unwrap();
        s
    }

    #[test]
    fn past_the_memory_budget_new_requests_get_503_and_admitted_ones_are_served() {
        let server = start(opts());
        // Two bodies of 30,000 bytes fit in 64 KiB (with the allowances), a third does not.
        let mut first = almost_a_body(server.addr, 30_000);
        let mut second = almost_a_body(server.addr, 30_000);
        // Both are read in (the budget drawn) before the third comes.
        let (health, _) = get(server.addr, "/health");
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        let third = almost_a_body(server.addr, 30_000);
        let refused = read_all(third);
        assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
        assert!(refused.contains("\r\nRetry-After: 1\r\n"), "{refused}");
        // A small request still has its allowance.
        let (health, _) = get(server.addr, "/health");
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        // The admitted ones are served, whole.
        for s in [&mut first, &mut second] {
            s.write_all(b"x").unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
        }
        for s in [first, second] {
            let answer = read_all(s);
            assert!(answer.contains(r#"{"length":30000}"#), "{answer}");
        }
    }

    #[test]
    fn a_connection_that_sends_nothing_is_closed_soon_and_the_oldest_idle_first() {
        let server = start(opts());
        let t = Instant::now();
        let silent = connect(server.addr);
        assert_eq!(read_all(silent), "", "closed without an answer");
        let waited = t.elapsed();
        assert!(
            waited >= FIRST_BYTE_TIMEOUT - Duration::from_millis(100) && waited < REQUEST_DEADLINE,
            "closed after {waited:?}"
        );
        // Every slot taken by a silent client: a new one gets in, and the oldest silent one is
        // the one closed.
        let oldest = connect(server.addr);
        wait_until("the first one accepted", Duration::from_secs(2), || {
            get(server.addr, "/health").0.starts_with("HTTP/1.1 200")
        });
        let rest: Vec<TcpStream> = (1..8).map(|_| connect(server.addr)).collect();
        let (health, took) = get(server.addr, "/health");
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        assert!(took < FIRST_BYTE_TIMEOUT, "waited {took:?} for a slot");
        assert_eq!(read_all(oldest), "", "the oldest silent one was closed");
        drop(rest);
    }

    #[test]
    fn a_client_that_does_not_read_holds_no_worker() {
        let server = start(opts());
        // One worker, and a client that pipelines requests for 1 MiB answers and never reads.
        let mut greedy = connect(server.addr);
        greedy
            .write_all(&b"GET /big HTTP/1.1\r\n\r\n".repeat(20))
            .unwrap();
        for _ in 0..20 {
            let (health, took) = get(server.addr, "/health");
            assert!(health.starts_with("HTTP/1.1 200"), "{health}");
            assert!(took < Duration::from_secs(1), "/health took {took:?}");
        }
        // It still gets its answers, in order, when it reads.
        let mut first = vec![0u8; 64];
        greedy.read_exact(&mut first).unwrap();
        assert!(first.starts_with(b"HTTP/1.1 200"));
    }

    #[test]
    fn requests_begun_at_the_idle_exit_are_answered() {
        let server = start(ServeOptions {
            idle_timeout: Some(Duration::from_secs(1)),
            ..opts()
        });
        // Halfway through their heads when the timer runs: no complete request, so idle.
        let mut begun: Vec<TcpStream> = (0..5)
            .map(|_| {
                let mut s = connect(server.addr);
                s.write_all(b"GET /health HTTP/1.1\r\nHo").unwrap();
                s
            })
            .collect();
        wait_until("the idle exit to begin", Duration::from_secs(5), || {
            server.activity.stopping.load(Ordering::SeqCst)
        });
        for s in &mut begun {
            s.write_all(b"st: x\r\nConnection: close\r\n\r\n").unwrap();
        }
        for s in begun {
            let answer = read_all(s);
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
        }
        wait_until("the exit", Duration::from_secs(5), || {
            server.done.is_finished()
        });
        server.done.join().unwrap().unwrap();
    }
}
