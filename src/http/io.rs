//! The connection loop: one thread accepts, reads and checks requests, hands complete ones to the
//! workers, writes the answers the sockets did not take at once, and closes what overstays.

use super::budget::Budget;
use super::conn::{Conn, Filled, LINGER, Phase};
use super::timing::{Activity, DRAIN_GRACE, FIRST_BYTE_TIMEOUT, REQUEST_DEADLINE, WRITE_DEADLINE};
use super::worker::{self, Job};
use super::{ApiError, CHECKS_PASSED, Method, Request, Response, Service, parse};
use crate::{log_notice, log_warn};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use std::cell::Cell;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::thread;
use std::time::{Duration, Instant};

/// How often the loop looks at the stop flag when nothing happens.
const TICK: Duration = Duration::from_millis(250);
/// Seconds a client refused for lack of memory or workers is told to wait (`Retry-After`).
const RETRY_AFTER_SECS: u64 = 1;
/// Connections accepted per round of the loop at most, so that those accepted are read before
/// more are taken (and idle ones closed for them).
const ACCEPTS_PER_ROUND: usize = 64;
/// Refusal lines logged per second at most.
const REFUSALS_LOGGED: u32 = 20;

pub struct Io {
    pub listener: TcpListener,
    pub service: Arc<dyn Service>,
    pub activity: Arc<Activity>,
    pub in_flight: Arc<AtomicUsize>,
    pub budget: Arc<Budget>,
    /// Connections open at once (`server::MAX_CONNECTIONS`).
    pub max_connections: usize,
    pub jobs: SyncSender<Job>,
    /// Connections the workers answered that go on (kept alive, or an answer to finish).
    pub back: Receiver<Conn>,
    pub wake: UnixStream,
    pub conns: Vec<Conn>,
    pub accept_paused_until: Option<Instant>,
    pub last_accept_warning: Option<Instant>,
    /// Refusals logged: since when, how many, how many left out.
    pub refusal_log: Cell<(Instant, u32, u64)>,
}

impl Io {
    pub fn run(mut self) {
        let mut stop_began = None;
        loop {
            let now = Instant::now();
            if self.activity.stopping.load(Ordering::SeqCst) {
                let began = *stop_began.get_or_insert(now);
                if self.drained(now.duration_since(began)) {
                    // Dropping the connections closes the idle ones; dropping `self` the
                    // queue's sender, which ends the workers.
                    return;
                }
            }
            let accepting = stop_began.is_none()
                && self.accept_paused_until.is_none_or(|t| now >= t)
                && (self.conns.len() < self.max_connections || self.conns.iter().any(evictable));
            let next_deadline = self.conns.iter().map(|c| c.deadline).min();
            let timeout = next_deadline
                .map_or(TICK, |d| d.saturating_duration_since(now).min(TICK))
                // Round up, so a deadline is past when poll returns.
                + Duration::from_millis(1);
            let Some(ready) = self.wait(accepting, timeout) else {
                continue;
            };
            if ready.first() == Some(&0) {
                let mut sink = [0u8; 64];
                while matches!((&self.wake).read(&mut sink), Ok(n) if n > 0) {}
            }
            let listener_ready = ready.contains(&1);
            // Highest first: swap_remove then only moves a connection already seen.
            for &i in ready.iter().rev().filter(|&&i| i >= 2) {
                let conn = self.conns.swap_remove(i - 2);
                if let Some(c) = self.on_ready(conn) {
                    self.conns.push(c);
                }
            }
            if next_deadline.is_some_and(|d| Instant::now() >= d) {
                self.expire_overdue();
            }
            while let Ok(conn) = self.back.try_recv() {
                if let Some(c) = self.taken_back(conn) {
                    self.conns.push(c);
                }
            }
            if listener_ready && accepting {
                self.accept();
            }
        }
    }

    /// Polls the wake pipe, the listener and every connection; the indices that are ready (0 the
    /// pipe, 1 the listener, 2.. the connections), or `None` to go round again.
    fn wait(&self, accepting: bool, timeout: Duration) -> Option<Vec<usize>> {
        let mut fds = Vec::with_capacity(self.conns.len() + 2);
        fds.push(PollFd::new(self.wake.as_fd(), PollFlags::POLLIN));
        let listen = if accepting {
            PollFlags::POLLIN
        } else {
            PollFlags::empty()
        };
        fds.push(PollFd::new(self.listener.as_fd(), listen));
        for c in &self.conns {
            let wanted = match c.phase {
                Phase::Writing { .. } => PollFlags::POLLOUT,
                _ => PollFlags::POLLIN,
            };
            fds.push(PollFd::new(c.stream.as_fd(), wanted));
        }
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        if let Err(e) = poll(&mut fds, PollTimeout::from(ms)) {
            if e != nix::errno::Errno::EINTR {
                log_warn!("waiting for connections failed: {e}");
                thread::sleep(TICK);
            }
            return None;
        }
        Some(
            fds.iter()
                .enumerate()
                .filter(|(_, f)| f.revents().is_some_and(|r| !r.is_empty()))
                .map(|(i, _)| i)
                .collect(),
        )
    }

    /// Stopping: whether everything in progress is answered. Requests partly received are
    /// waited for (each has its deadline), and connections that sent nothing get a moment, in
    /// case their request is on its way.
    fn drained(&mut self, stopping_for: Duration) -> bool {
        // Read before the hand-backs are taken: a worker gives a connection back before it
        // counts its request done.
        let in_flight = self.in_flight.load(Ordering::SeqCst);
        while let Ok(conn) = self.back.try_recv() {
            if let Some(c) = self.taken_back(conn) {
                self.conns.push(c);
            }
        }
        in_flight == 0
            && self
                .conns
                .iter()
                .all(|c| c.is_idle() && (c.reused || stopping_for >= DRAIN_GRACE))
    }

    fn on_ready(&mut self, mut conn: Conn) -> Option<Conn> {
        if let Phase::Writing { keep_alive } = conn.phase {
            return match conn.flush() {
                Ok(false) => Some(conn),
                Ok(true) if keep_alive => {
                    conn.next_request(Instant::now() + REQUEST_DEADLINE);
                    self.advance(conn)
                }
                Ok(true) => {
                    let _ = conn.stream.shutdown(Shutdown::Write);
                    None
                }
                Err(_) => None,
            };
        }
        let was_empty = conn.buf.is_empty() && matches!(conn.phase, Phase::Head);
        let filled = conn.fill().ok()?;
        if was_empty && !conn.buf.is_empty() && !conn.reused {
            // A first byte: the request now has the whole deadline from its connection.
            conn.deadline = conn.idle_since + REQUEST_DEADLINE;
        }
        if filled == Filled::NoMemory {
            let req = match &conn.phase {
                Phase::Body { req, .. } => Some(req.clone()),
                _ => None,
            };
            let refusal = self.out_of_memory();
            return Some(self.refuse(conn, req.as_ref(), refusal));
        }
        let conn = self.advance(conn)?;
        (filled == Filled::Open).then_some(conn)
    }

    fn taken_back(&mut self, mut conn: Conn) -> Option<Conn> {
        if conn.stream.set_nonblocking(true).is_err() {
            return None;
        }
        if let Phase::Writing { .. } = conn.phase {
            conn.deadline = Instant::now() + WRITE_DEADLINE;
            return Some(conn);
        }
        conn.next_request(Instant::now() + REQUEST_DEADLINE);
        self.advance(conn)
    }

    fn accept(&mut self) {
        for _ in 0..ACCEPTS_PER_ROUND {
            if self.conns.len() >= self.max_connections && !self.evict_oldest_idle() {
                return;
            }
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_ok() {
                        let _ = stream.set_nodelay(true);
                        let deadline = Instant::now() + FIRST_BYTE_TIMEOUT;
                        let conn = Conn::new(stream, self.budget.clone(), deadline);
                        // Its request has usually arrived while it waited in the backlog: read
                        // it now, so that a client with a request is never taken for an idle one
                        // and closed to make room.
                        if let Some(c) = self.on_ready(conn) {
                            self.conns.push(c);
                        }
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

    /// All slots taken: closes the connection that has waited longest with nothing to do (sent
    /// nothing, or already refused), so that a new client gets in. `false`: every one is busy.
    fn evict_oldest_idle(&mut self) -> bool {
        let oldest = self
            .conns
            .iter()
            .enumerate()
            .filter(|(_, c)| evictable(c))
            .min_by_key(|(_, c)| c.idle_since)
            .map(|(i, _)| i);
        match oldest {
            Some(i) => {
                drop(self.conns.swap_remove(i));
                true
            }
            None => false,
        }
    }

    /// Connections past their deadline: answered 408, or closed.
    fn expire_overdue(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.conns.len() {
            if now < self.conns[i].deadline {
                i += 1;
                continue;
            }
            // The last one moves to `i`; a refused one comes back with a later deadline.
            let conn = self.conns.swap_remove(i);
            if let Some(c) = self.expire(conn) {
                self.conns.push(c);
            }
        }
    }

    /// Moves a connection on with what it has received; `None` when it left this loop (handed
    /// to a worker, or closed).
    fn advance(&self, mut conn: Conn) -> Option<Conn> {
        loop {
            match std::mem::replace(&mut conn.phase, Phase::Head) {
                phase @ (Phase::Closing { .. } | Phase::Writing { .. }) => {
                    conn.phase = phase;
                    return Some(conn);
                }
                Phase::Head => match conn.scan.scan(&conn.buf) {
                    Ok(None) => return Some(conn),
                    Err(e) => return Some(self.refuse(conn, None, e.into())),
                    Ok(Some(len)) => {
                        conn = self.start_body(conn, len)?;
                    }
                },
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
                    conn.request_bytes += req.body.capacity();
                    conn.settle();
                    return self.dispatch(conn, req, keep_alive);
                }
            }
        }
    }

    /// A complete head is the first `len` bytes of the buffer: parses it into the request (the
    /// only copy kept: the head's bytes are let go), checks it, and draws the memory its body
    /// needs before a byte of the body is read.
    fn start_body(&self, mut conn: Conn, len: usize) -> Option<Conn> {
        let head = match parse::parse_scanned(&conn.buf[..len], &conn.scan) {
            Ok(head) => head,
            Err(e) => return Some(self.refuse(conn, None, e.into())),
        };
        conn.buf = conn.buf.split_off(len);
        let keep_alive = head.keep_alive();
        let length = head.body_length();
        // No route takes a query string: it is dropped.
        let path = head
            .target
            .split_once('?')
            .map_or(head.target.as_str(), |(p, _)| p);
        let mut req = Request {
            method: Method::parse(&head.method),
            path: path.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            checks_only: false,
        };
        req.headers = head.headers;
        // Each String's own size and the allocator's overhead, roughly.
        conn.request_bytes = req.path.len()
            + req
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len() + 64)
                .sum::<usize>();
        conn.settle();
        let need = match length {
            Ok(n) => n,
            Err(e) => return Some(self.refuse(conn, Some(&req), e.into())),
        };
        if need > 0 {
            req.checks_only = true;
            let checked = worker::handle(&*self.service, &req);
            req.checks_only = false;
            if checked.status != CHECKS_PASSED {
                return Some(self.refuse(conn, Some(&req), checked));
            }
            if !conn.try_reserve(need.max(conn.buf.len())) {
                let refusal = self.out_of_memory();
                return Some(self.refuse(conn, Some(&req), refusal));
            }
            if conn.buf.len() < need
                && req
                    .header("expect")
                    .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
            {
                // Small enough for any socket buffer: a write that fails is the client's loss
                // (it sends after its own timeout).
                let _ = conn.stream.write(b"HTTP/1.1 100 Continue\r\n\r\n");
            }
        }
        conn.phase = Phase::Body {
            req,
            need,
            keep_alive,
        };
        Some(conn)
    }

    fn dispatch(&self, conn: Conn, req: Request, keep_alive: bool) -> Option<Conn> {
        // Only complete requests count as activity: idle or slow clients cannot keep us running.
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.activity.touch();
        match self.jobs.try_send(Job {
            conn,
            req,
            keep_alive,
        }) {
            Ok(()) => None,
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                let busy = ApiError::new(503, "the service is busy: try again in a moment")
                    .with_header("Retry-After", RETRY_AFTER_SECS.to_string());
                Some(self.refuse(job.conn, Some(&job.req), busy.into()))
            }
        }
    }

    /// A connection past its deadline: silently closed if it sent nothing of a request or its
    /// answer is not being read, else answered 408; one already refused is closed.
    fn expire(&self, conn: Conn) -> Option<Conn> {
        match conn.phase {
            Phase::Closing { .. } | Phase::Writing { .. } => None,
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

    /// At most [`REFUSALS_LOGGED`] refusal lines a second: under attack there are thousands,
    /// and a line each would have the I/O thread wait on the journal. The count of those left
    /// out is logged when the next second begins.
    fn may_log_refusal(&self) -> bool {
        let (since, logged, left_out) = self.refusal_log.get();
        if since.elapsed() >= Duration::from_secs(1) {
            if left_out > 0 {
                log_notice!("{left_out} more requests refused in the last second (not logged)");
            }
            self.refusal_log.set((Instant::now(), 1, 0));
            return true;
        }
        if logged < REFUSALS_LOGGED {
            self.refusal_log.set((since, logged + 1, left_out));
            return true;
        }
        self.refusal_log.set((since, logged, left_out + 1));
        false
    }

    fn out_of_memory(&self) -> Response {
        ApiError::new(
            503,
            format!(
                "the service holds as much request data as it may ({} KiB): try again in a moment",
                self.budget.limit() >> 10
            ),
        )
        .with_header("Retry-After", RETRY_AFTER_SECS.to_string())
        .into()
    }

    /// Answers with `response` and closes: stop writing, discard what still comes for [`LINGER`].
    fn refuse(&self, mut conn: Conn, req: Option<&Request>, response: Response) -> Conn {
        conn.discard_input();
        let bytes = worker::render(&response, false, false);
        // The answer is small; a client that does not read it loses it.
        let _ = conn.stream.write(&bytes);
        let _ = conn.stream.shutdown(Shutdown::Write);
        if self.may_log_refusal() {
            let (method, path) = req.map_or(("-", "-".to_string()), |r| {
                (r.method.as_str(), worker::printable(&r.path))
            });
            log_notice!(
                "{method} {path} {} (refused, connection closed): {}",
                response.status,
                response.body["message"].as_str().unwrap_or("")
            );
        }
        conn.phase = Phase::Closing { discarded: 0 };
        conn.deadline = Instant::now() + LINGER;
        conn.idle_since = Instant::now();
        conn
    }
}

/// A connection that may be closed to make room: it waits for a first request, or was refused.
fn evictable(c: &Conn) -> bool {
    c.is_idle() || matches!(c.phase, Phase::Closing { .. })
}
