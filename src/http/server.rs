//! Serves a [`Service`] on systemd's socket with bounded resources, and exits when idle.
//!
//! One I/O thread multiplexes every connection (at most [`MAX_CONNECTIONS`]; the rest wait in the
//! kernel's backlog) while it receives a request: head within the bounds of [`super::parse`],
//! method, route and token checked before any body is read, the whole request within
//! [`REQUEST_DEADLINE`]. Only complete requests reach the few worker threads, so slow or idle
//! clients hold neither a thread nor more than a bounded buffer each.
//!
//! Under socket activation systemd owns the listening socket: when we exit, connections that
//! arrive later wait in its backlog and start us again, so exiting when idle loses nothing.

use super::{ApiError, CHECKS_PASSED, Method, Request, Response, Service, parse};
use crate::{log_err, log_info, log_notice, log_warn, systemd};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Most connections open at once; further ones wait in the listening socket's backlog. Each costs
/// one descriptor and at most [`parse::MAX_HEAD_BYTES`] plus a body of buffer.
pub const MAX_CONNECTIONS: usize = 512;
/// Time a client has to send a whole request (head and body), from its connection or from the
/// previous answer on it; past it the request is answered 408 and the connection closed.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// After refusing a request we stop writing and discard what the client still sends for this
/// long (or this many bytes), so that it reads our answer instead of a reset.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;
/// Complete requests waiting for a worker; past it a request is answered 503.
const QUEUE: usize = 256;
/// The most a worker spends writing one response: a client on a LAN reads a small JSON answer in
/// milliseconds; one that does not read is cut off instead of holding the worker.
const WRITE_DEADLINE: Duration = Duration::from_secs(2);
/// How often the I/O thread looks at the stop flag when nothing happens.
const TICK: Duration = Duration::from_millis(250);

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
    /// Options from the environment: `HOMELAB_IDLE_TIMEOUT`, and one worker per CPU (at least two).
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

struct Activity {
    last: Mutex<Instant>,
    in_flight: AtomicUsize,
    stopping: AtomicBool,
}

impl Activity {
    fn touch(&self) {
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
        in_flight: AtomicUsize::new(0),
        stopping: AtomicBool::new(false),
    });
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
            && activity.in_flight.load(Ordering::SeqCst) == 0
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
    // The I/O thread hands over the requests already received, then drops the queue's sender:
    // the workers answer what is queued and end.
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

/// Where a connection is in receiving its current request.
enum Phase {
    Head,
    /// Head checked; waiting for `need` bytes of body.
    Body {
        req: Request,
        need: usize,
        keep_alive: bool,
    },
    /// Refused and answered: what the client still sends is discarded until the deadline.
    Closing {
        discarded: usize,
    },
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    deadline: Instant,
    phase: Phase,
}

impl Conn {
    fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            buf: Vec::new(),
            deadline: Instant::now() + REQUEST_DEADLINE,
            phase: Phase::Head,
        }
    }

    /// Reads what is available without blocking, never past what the phase can use. `Ok(true)`:
    /// the client closed its side.
    fn fill(&mut self) -> std::io::Result<bool> {
        const CHUNK: usize = 16 * 1024;
        let mut chunk = [0u8; CHUNK];
        loop {
            let room = match &self.phase {
                Phase::Head => (parse::MAX_HEAD_BYTES + 1).saturating_sub(self.buf.len()),
                Phase::Body { need, .. } => need.saturating_sub(self.buf.len()),
                Phase::Closing { .. } => CHUNK,
            };
            if room == 0 {
                return Ok(false);
            }
            match self.stream.read(&mut chunk[..room.min(CHUNK)]) {
                Ok(0) => return Ok(true),
                Ok(n) => match &mut self.phase {
                    Phase::Closing { discarded } => {
                        *discarded += n;
                        if *discarded > LINGER_BYTES {
                            return Ok(true);
                        }
                    }
                    _ => self.buf.extend_from_slice(&chunk[..n]),
                },
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// A complete request for a worker, with its connection.
struct Job {
    conn: Conn,
    req: Request,
    keep_alive: bool,
}

/// The connection loop: accepts, reads and checks requests, hands complete ones to the workers.
struct Io {
    listener: TcpListener,
    service: Arc<dyn Service>,
    activity: Arc<Activity>,
    jobs: SyncSender<Job>,
    /// Connections the workers answered and that may carry another request.
    back: Receiver<Conn>,
    wake: UnixStream,
    conns: Vec<Conn>,
    accept_paused_until: Option<Instant>,
    last_accept_warning: Option<Instant>,
}

impl Io {
    fn run(mut self) {
        loop {
            let stopping = self.activity.stopping.load(Ordering::SeqCst);
            let now = Instant::now();
            let accepting = !stopping
                && self.conns.len() < MAX_CONNECTIONS
                && self.accept_paused_until.is_none_or(|t| now >= t);
            let next_deadline = self.conns.iter().map(|c| c.deadline).min();
            let timeout = next_deadline
                .map_or(TICK, |d| d.saturating_duration_since(now).min(TICK))
                // Round up, so a deadline is past when poll returns.
                + Duration::from_millis(1);
            let ready = {
                let mut fds = Vec::with_capacity(self.conns.len() + 2);
                fds.push(PollFd::new(self.wake.as_fd(), PollFlags::POLLIN));
                fds.push(PollFd::new(
                    self.listener.as_fd(),
                    if accepting {
                        PollFlags::POLLIN
                    } else {
                        PollFlags::empty()
                    },
                ));
                for c in &self.conns {
                    fds.push(PollFd::new(c.stream.as_fd(), PollFlags::POLLIN));
                }
                let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
                if stopping {
                    // Last pass: whatever already arrived, without waiting.
                    let _ = poll(&mut fds, PollTimeout::ZERO);
                } else if let Err(e) = poll(&mut fds, PollTimeout::from(ms)) {
                    if e != nix::errno::Errno::EINTR {
                        log_warn!("waiting for connections failed: {e}");
                        thread::sleep(TICK);
                    }
                    continue;
                }
                fds.iter()
                    .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                    .collect::<Vec<bool>>()
            };
            if ready[0] {
                let mut sink = [0u8; 64];
                while matches!((&self.wake).read(&mut sink), Ok(n) if n > 0) {}
            }
            let conns = std::mem::take(&mut self.conns);
            for (mut conn, ready) in conns.into_iter().zip(ready[2..].iter().copied()) {
                if ready {
                    let eof = match conn.fill() {
                        Ok(eof) => eof,
                        Err(_) => continue,
                    };
                    let Some(c) = self.advance(conn) else {
                        continue;
                    };
                    if eof {
                        continue;
                    }
                    conn = c;
                }
                if Instant::now() >= conn.deadline {
                    if let Some(c) = self.expire(conn) {
                        self.conns.push(c);
                    }
                    continue;
                }
                self.conns.push(conn);
            }
            if stopping {
                // Dropping the connections closes them; dropping `self` the queue's sender.
                return;
            }
            while let Ok(mut conn) = self.back.try_recv() {
                if conn.stream.set_nonblocking(true).is_err() {
                    continue;
                }
                conn.deadline = Instant::now() + REQUEST_DEADLINE;
                conn.phase = Phase::Head;
                // A pipelined request may already be in the buffer.
                if let Some(c) = self.advance(conn) {
                    self.conns.push(c);
                }
            }
            if ready[1] {
                self.accept();
            }
        }
    }

    fn accept(&mut self) {
        while self.conns.len() < MAX_CONNECTIONS {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_ok() {
                        let _ = stream.set_nodelay(true);
                        self.conns.push(Conn::new(stream));
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // Out of descriptors or memory: the connection stays in the backlog; try
                    // again shortly instead of spinning, and say so at most every 10 s.
                    self.accept_paused_until = Some(Instant::now() + Duration::from_millis(100));
                    if self
                        .last_accept_warning
                        .is_none_or(|t| t.elapsed() > Duration::from_secs(10))
                    {
                        self.last_accept_warning = Some(Instant::now());
                        log_warn!("accepting a connection failed, retrying: {e}");
                    }
                    return;
                }
            }
        }
    }

    /// Moves a connection on with what it has received; `None` when it left this loop (handed
    /// to a worker, or closed).
    fn advance(&self, mut conn: Conn) -> Option<Conn> {
        loop {
            match std::mem::replace(&mut conn.phase, Phase::Head) {
                Phase::Closing { discarded } => {
                    conn.phase = Phase::Closing { discarded };
                    return Some(conn);
                }
                Phase::Head => {
                    let head = match parse::parse_head(&conn.buf) {
                        Ok(Some(head)) => head,
                        Ok(None) => return Some(conn),
                        Err(e) => return Some(self.refuse(conn, None, e.into())),
                    };
                    conn.buf.drain(..head.len);
                    // No route takes a query string: it is dropped.
                    let path = head
                        .target
                        .split_once('?')
                        .map_or(head.target.as_str(), |(p, _)| p);
                    let req = Request {
                        method: Method::parse(&head.method),
                        path: path.to_string(),
                        headers: head.headers.clone(),
                        body: Vec::new(),
                        checks_only: false,
                    };
                    let need = match head.body_length() {
                        Ok(n) => n,
                        Err(e) => return Some(self.refuse(conn, Some(&req), e.into())),
                    };
                    if need > 0 {
                        let checked = self.handle(&Request {
                            checks_only: true,
                            ..req.clone()
                        });
                        if checked.status != CHECKS_PASSED {
                            return Some(self.refuse(conn, Some(&req), checked));
                        }
                        if conn.buf.len() < need
                            && head
                                .header("expect")
                                .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
                        {
                            // Small enough for any socket buffer: a write that fails is the
                            // client's loss (it sends after its own timeout).
                            let _ = conn.stream.write(b"HTTP/1.1 100 Continue\r\n\r\n");
                        }
                    }
                    conn.phase = Phase::Body {
                        req,
                        need,
                        keep_alive: head.keep_alive(),
                    };
                }
                Phase::Body {
                    req,
                    need,
                    keep_alive,
                } if conn.buf.len() < need => {
                    conn.phase = Phase::Body {
                        req,
                        need,
                        keep_alive,
                    };
                    return Some(conn);
                }
                Phase::Body {
                    mut req,
                    need,
                    keep_alive,
                } => {
                    let rest = conn.buf.split_off(need);
                    req.body = std::mem::replace(&mut conn.buf, rest);
                    return self.dispatch(conn, req, keep_alive);
                }
            }
        }
    }

    fn dispatch(&self, conn: Conn, req: Request, keep_alive: bool) -> Option<Conn> {
        // Only complete requests count as activity: idle or slow clients cannot keep us running.
        self.activity.in_flight.fetch_add(1, Ordering::SeqCst);
        self.activity.touch();
        match self.jobs.try_send(Job {
            conn,
            req,
            keep_alive,
        }) {
            Ok(()) => None,
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                self.activity.in_flight.fetch_sub(1, Ordering::SeqCst);
                let busy = ApiError::new(503, "the service is busy: try again in a moment");
                Some(self.refuse(job.conn, Some(&job.req), busy.into()))
            }
        }
    }

    /// A connection past its deadline: silently closed if it sent nothing of a request, else
    /// answered 408; one already refused is closed.
    fn expire(&self, conn: Conn) -> Option<Conn> {
        match conn.phase {
            Phase::Closing { .. } => None,
            Phase::Head if conn.buf.is_empty() => None,
            Phase::Head | Phase::Body { .. } => {
                let req = match &conn.phase {
                    Phase::Body { req, .. } => Some(req.clone()),
                    _ => None,
                };
                let timeout = ApiError::new(
                    408,
                    format!(
                        "the request did not arrive within {}s: send it whole, without pauses",
                        REQUEST_DEADLINE.as_secs()
                    ),
                );
                Some(self.refuse(conn, req.as_ref(), timeout.into()))
            }
        }
    }

    /// Answers with `response` and closes: stop writing, discard what still comes for [`LINGER`].
    fn refuse(&self, mut conn: Conn, req: Option<&Request>, response: Response) -> Conn {
        let bytes = render(&response, false, false);
        // The answer is small; a client that does not read it loses it.
        let _ = conn.stream.write(&bytes);
        let _ = conn.stream.shutdown(Shutdown::Write);
        let (method, path) = req.map_or(("-", "-".to_string()), |r| {
            (r.method.as_str(), printable(&r.path))
        });
        log_notice!(
            "{method} {path} {} (refused, connection closed): {}",
            response.status,
            response.body["message"].as_str().unwrap_or("")
        );
        conn.buf = Vec::new();
        conn.phase = Phase::Closing { discarded: 0 };
        conn.deadline = Instant::now() + LINGER;
        conn
    }

    fn handle(&self, req: &Request) -> Response {
        handle(&*self.service, req)
    }
}

/// Every routed request goes through here (its head checks in the poll thread, the whole request
/// in a worker): the one place it is counted, by route pattern and status (`crate::metrics`).
fn handle(service: &dyn Service, req: &Request) -> Response {
    let _ = super::take_matched_route();
    let response = catch_unwind(AssertUnwindSafe(|| service.handle(req))).unwrap_or_else(|_| {
        ApiError::new(
            500,
            "internal error while handling the request; see the service's journal",
        )
        .into()
    });
    let route = super::take_matched_route();
    if response.status != CHECKS_PASSED {
        crate::metrics::count_request(req.method.as_str(), route.as_deref(), response.status);
    }
    response
}

/// A worker thread: answers complete requests, and gives kept-alive connections back.
struct Worker {
    jobs: Arc<Mutex<Receiver<Job>>>,
    back: Sender<Conn>,
    wake: UnixStream,
    service: Arc<dyn Service>,
    activity: Arc<Activity>,
}

impl Worker {
    fn run(self) {
        loop {
            let job = self.jobs.lock().unwrap_or_else(|e| e.into_inner()).recv();
            let Ok(Job {
                mut conn,
                req,
                keep_alive,
            }) = job
            else {
                return;
            };
            let started = Instant::now();
            let response = handle(&*self.service, &req);
            let bytes = render(&response, req.method == Method::Head, keep_alive);
            let written = write_within(&mut conn.stream, &bytes, WRITE_DEADLINE);
            if let Err(e) = &written {
                log_warn!(
                    "{} {} : writing the response failed: {e}",
                    req.method.as_str(),
                    printable(&req.path)
                );
            }
            log_access(&req, &response, started);
            self.activity.touch();
            self.activity.in_flight.fetch_sub(1, Ordering::SeqCst);
            if keep_alive && written.is_ok() {
                if self.back.send(conn).is_ok() {
                    let _ = (&self.wake).write(&[1]);
                }
            } else {
                let _ = conn.stream.shutdown(Shutdown::Write);
            }
        }
    }
}

/// Writes all of `bytes` to the non-blocking `stream` within `limit` in all (not per `write()`,
/// as `SO_SNDTIMEO` would be): a client that reads slowly or not at all holds a worker no longer.
fn write_within(stream: &mut TcpStream, mut bytes: &[u8], limit: Duration) -> std::io::Result<()> {
    let deadline = Instant::now() + limit;
    while !bytes.is_empty() {
        match stream.write(bytes) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(ErrorKind::TimedOut.into());
                }
                let millis = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
                let mut fds = [PollFd::new(stream.as_fd(), PollFlags::POLLOUT)];
                poll(&mut fds, PollTimeout::from(millis)).map_err(std::io::Error::from)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn log_access(req: &Request, response: &Response, started: Instant) {
    let status = response.status;
    let micros = started.elapsed().as_micros();
    let line = format!(
        "{} {} {status} {micros}us",
        req.method.as_str(),
        printable(&req.path)
    );
    match status {
        500.. => log_err!(
            "{line}: {}",
            response.body["message"].as_str().unwrap_or("")
        ),
        400.. => log_notice!(
            "{line}: {}",
            response.body["message"].as_str().unwrap_or("")
        ),
        // Successful reads are the bulk: buffered (see crate::log). Changes are logged at once.
        _ if matches!(req.method, Method::Get | Method::Head) => {
            crate::log::access(format_args!("{line}"))
        }
        _ => log_info!("{line}"),
    }
}

/// The response as bytes: JSON body, its length, and `Connection: close` unless kept alive.
fn render(response: &Response, head_only: bool, keep_alive: bool) -> Vec<u8> {
    // A response with a Content-Type of its own (Response::text) is sent as it is.
    let own_type = response.headers.iter().any(|(n, _)| *n == "Content-Type");
    let body = match &response.body {
        serde_json::Value::String(text) if own_type => text.clone().into_bytes(),
        other => {
            let mut body = serde_json::to_vec(other).unwrap_or_default();
            body.push(b'\n');
            body
        }
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n{}Content-Length: {}\r\nDate: {}\r\n",
        response.status,
        reason(response.status),
        if own_type {
            ""
        } else {
            "Content-Type: application/json\r\n"
        },
        body.len(),
        chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT"),
    );
    if !keep_alive {
        out.push_str("Connection: close\r\n");
    }
    for (name, value) in &response.headers {
        // Values are ours, but a line break in one would split the response.
        if !value.contains(['\r', '\n']) {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(&body);
    }
    bytes
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Status",
    }
}

/// A path as it may appear in a log line: control characters escaped, at most 200 characters.
fn printable(s: &str) -> String {
    let mut out: String = s.chars().take(200).flat_map(char::escape_debug).collect();
    if s.chars().count() > 200 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_that_does_not_read_cannot_hold_a_writer() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let t = Instant::now();
        // Far more than the socket buffers hold; the client never reads.
        let e = write_within(
            &mut server,
            &vec![b'x'; 64 << 20],
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TimedOut);
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        // A reading client gets everything.
        let mut reader = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let got = std::thread::spawn(move || {
            let mut all = Vec::new();
            reader.read_to_end(&mut all).map(|_| all.len())
        });
        write_within(&mut server, &vec![b'y'; 4 << 20], Duration::from_secs(10)).unwrap();
        drop(server);
        assert_eq!(got.join().unwrap().unwrap(), 4 << 20);
    }

    impl Response {
        fn with_header_for_test(mut self, name: &'static str, value: &str) -> Response {
            self.headers.push((name, value.to_string()));
            self
        }
    }

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

    #[test]
    fn responses_say_their_length_and_whether_the_connection_ends() {
        let r = Response::ok(serde_json::json!({"a": 1}))
            .with_header_for_test("Allow", "GET")
            .with_header_for_test("X-Bad", "a\r\nInjected: 1");
        let text = String::from_utf8(render(&r, false, true)).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Content-Length: 8\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n{\"a\":1}\n"), "{text}");
        assert!(text.contains("Allow: GET\r\n") && !text.contains("Injected"));
        assert!(!text.contains("Connection: close"));
        let head = String::from_utf8(render(&r, true, false)).unwrap();
        assert!(head.contains("Content-Length: 8\r\nDate: "), "{head}");
        assert!(head.contains("Connection: close\r\n") && head.ends_with("\r\n\r\n"));
        let e: Response = ApiError::new(431, "too big").into();
        let text = String::from_utf8(render(&e, false, false)).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(
            text.contains(r#"{"message":"too big","status":"error"}"#),
            "{text}"
        );
    }

    #[test]
    fn log_paths_are_escaped_and_bounded() {
        assert_eq!(printable("/a\nb"), "/a\\nb");
        assert_eq!(printable(&"x".repeat(300)).chars().count(), 201);
    }
}
