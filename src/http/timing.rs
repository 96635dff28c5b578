//! The server's deadlines, and its record of when a request last came: shared by the I/O thread,
//! the workers and the serving loop, which each keep to their own job.

use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

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
/// When the last complete request came or was answered, and whether the service is stopping.
pub struct Activity {
    last: Mutex<Instant>,
    pub stopping: AtomicBool,
}

impl Default for Activity {
    fn default() -> Activity {
        Activity {
            last: Mutex::new(Instant::now()),
            stopping: AtomicBool::new(false),
        }
    }
}

impl Activity {
    pub fn touch(&self) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    pub fn idle_for(&self) -> Duration {
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }
}
