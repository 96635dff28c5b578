//! One client connection as the I/O thread and the workers hand it around: its buffer, where it
//! is in its request, the answer still to send and the memory it holds.

use super::Request;
use super::budget::{ALLOWANCE, Account, Budget};
use super::parse::{self, HeadScan};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// After refusing a request we stop writing and discard what the client still sends for this
/// long (or this many bytes), so that it reads our answer instead of a reset.
pub const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;
/// Bytes taken from the socket per `read()`.
const CHUNK: usize = 16 * 1024;

/// Where a connection is in its current request.
pub enum Phase {
    /// Receiving a head (nothing yet, when the buffer is empty).
    Head,
    /// Head checked and its memory drawn; waiting for `need` bytes of body.
    Body {
        req: Request,
        need: usize,
        keep_alive: bool,
    },
    /// Answered by a worker; the I/O thread writes what the socket did not take at once.
    Writing { keep_alive: bool },
    /// Refused and answered: what the client still sends is discarded until the deadline.
    Closing { discarded: usize },
}

/// What a read brought.
#[derive(Debug, PartialEq)]
pub enum Filled {
    /// The connection stays open (new bytes or none).
    Open,
    /// The client closed its side.
    Eof,
    /// The buffer is full and the budget has no more for it.
    NoMemory,
}

pub struct Conn {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
    /// The search for the end of the head in `buf`, kept between reads.
    pub scan: HeadScan,
    pub deadline: Instant,
    /// Since when it has been waiting with nothing received (or since its refusal): under
    /// pressure the oldest is closed first.
    pub idle_since: Instant,
    pub phase: Phase,
    /// Whether it has carried a request before (a kept-alive connection, not a new one).
    pub reused: bool,
    /// An answer not yet fully written, and how much of it went.
    out: Vec<u8>,
    out_sent: usize,
    /// Bytes of the request a worker holds (headers and body), counted while it is handled.
    pub request_bytes: usize,
    account: Account,
}

impl Conn {
    pub fn new(stream: TcpStream, budget: Arc<Budget>, deadline: Instant) -> Conn {
        Conn {
            stream,
            buf: Vec::new(),
            scan: HeadScan::default(),
            deadline,
            idle_since: Instant::now(),
            phase: Phase::Head,
            reused: false,
            out: Vec::new(),
            out_sent: 0,
            request_bytes: 0,
            account: Account::new(budget),
        }
    }

    /// Nothing of a request received and nothing to send: closing it loses nothing.
    pub fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::Head) && self.buf.is_empty() && self.out.is_empty()
    }

    fn held(&self) -> usize {
        self.buf.capacity() + self.request_bytes + self.out.capacity()
    }

    /// Tells the budget what the connection holds now (after it let go of something, or for an
    /// answer, which is held even past the budget).
    pub fn settle(&mut self) {
        let held = self.held();
        self.account.hold(held);
    }

    /// Makes room for `capacity` bytes in the buffer if the budget has them.
    pub fn try_reserve(&mut self, capacity: usize) -> bool {
        if capacity <= self.buf.capacity() {
            return true;
        }
        let held = self.held() - self.buf.capacity() + capacity;
        if !self.account.try_hold(held) {
            return false;
        }
        self.buf.reserve_exact(capacity - self.buf.len());
        true
    }

    /// Reads what is available without blocking, never past what the phase can use nor past
    /// the memory drawn for it.
    pub fn fill(&mut self) -> std::io::Result<Filled> {
        let mut chunk = [0u8; CHUNK];
        loop {
            let limit = match &self.phase {
                Phase::Head => parse::MAX_HEAD_BYTES + 1,
                Phase::Body { need, .. } => *need,
                Phase::Closing { .. } => usize::MAX,
                // One answer at a time: the next request waits in the socket.
                Phase::Writing { .. } => return Ok(Filled::Open),
            };
            let room = if let Phase::Closing { .. } = self.phase {
                CHUNK
            } else {
                if self.buf.len() >= limit {
                    return Ok(Filled::Open);
                }
                if self.buf.len() == self.buf.capacity() {
                    let grown = (self.buf.capacity() * 2).max(ALLOWANCE).min(limit);
                    if !self.try_reserve(grown) {
                        return Ok(Filled::NoMemory);
                    }
                }
                (self.buf.capacity() - self.buf.len()).min(limit - self.buf.len())
            };
            match self.stream.read(&mut chunk[..room.min(CHUNK)]) {
                Ok(0) => return Ok(Filled::Eof),
                Ok(n) => match &mut self.phase {
                    Phase::Closing { discarded } => {
                        *discarded += n;
                        if *discarded > LINGER_BYTES {
                            return Ok(Filled::Eof);
                        }
                    }
                    _ => self.buf.extend_from_slice(&chunk[..n]),
                },
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Filled::Open),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes `answer` to send, and sends what the socket takes now.
    pub fn send(&mut self, answer: Vec<u8>) -> std::io::Result<bool> {
        self.out = answer;
        self.out_sent = 0;
        self.settle();
        self.flush()
    }

    /// Writes what the socket takes without blocking: `Ok(true)` once all of the answer went.
    pub fn flush(&mut self) -> std::io::Result<bool> {
        while self.out_sent < self.out.len() {
            match self.stream.write(&self.out[self.out_sent..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => self.out_sent += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        self.out = Vec::new();
        self.out_sent = 0;
        self.settle();
        Ok(true)
    }

    /// Gets ready for the next request on a kept-alive connection, whose bytes may already be in
    /// the buffer (pipelined).
    pub fn next_request(&mut self, deadline: Instant) {
        self.phase = Phase::Head;
        self.scan = HeadScan::default();
        self.reused = true;
        self.deadline = deadline;
        self.idle_since = Instant::now();
        self.request_bytes = 0;
        if self.buf.is_empty() {
            self.buf = Vec::new();
        } else {
            self.buf.shrink_to_fit();
        }
        self.settle();
    }

    /// Drops what was received: nothing of it will be used.
    pub fn discard_input(&mut self) {
        self.buf = Vec::new();
        self.request_bytes = 0;
        self.settle();
    }
}
