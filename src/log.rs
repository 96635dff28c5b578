//! Log lines on stderr. Under journald (`JOURNAL_STREAM` set) each line carries a `<N>` priority
//! prefix, which journald turns into the entry's priority; time and unit are journald's to add.
//!
//! Most lines go out at once, each in one `write()`. The access log of successful reads
//! ([`access`]) is the exception: at thousands of requests a second a `write()` per line, and
//! journald waking for each, cost a third of the throughput on two cores. Those lines gather in
//! a buffer that goes out in one `write()` when it fills, at least every [`FLUSH_EVERY`] (the
//! server calls [`flush`]), before any other line (so the order holds), and at exit.

use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

pub const ERR: u8 = 3;
pub const WARNING: u8 = 4;
pub const NOTICE: u8 = 5;
pub const INFO: u8 = 6;

/// The longest a buffered access line waits (the server's [`flush`] period).
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Buffered access lines go out once they fill this much.
const FLUSH_BYTES: usize = 16 * 1024;

static PENDING: Mutex<Vec<u8>> = Mutex::new(Vec::new());

fn to_journal() -> bool {
    static JOURNAL: OnceLock<bool> = OnceLock::new();
    *JOURNAL.get_or_init(|| std::env::var_os("JOURNAL_STREAM").is_some())
}

/// Appends one line to `out`; newlines inside a message are escaped so one line is one journal
/// entry.
fn format_line(out: &mut Vec<u8>, journal: bool, priority: u8, args: std::fmt::Arguments<'_>) {
    let msg = args.to_string().replace('\n', "\\n");
    if journal {
        let _ = write!(out, "<{priority}>");
    } else {
        out.extend_from_slice(match priority {
            0..=ERR => b"error: ",
            WARNING => b"warning: ",
            _ => b"",
        });
    }
    out.extend_from_slice(msg.as_bytes());
    out.push(b'\n');
}

fn pending() -> std::sync::MutexGuard<'static, Vec<u8>> {
    PENDING.lock().unwrap_or_else(|e| e.into_inner())
}

fn write_out(buf: &mut Vec<u8>) {
    if !buf.is_empty() {
        let _ = std::io::stderr().lock().write_all(buf);
        buf.clear();
    }
}

/// Writes one line now (after any buffered access lines, which go first).
pub fn write(priority: u8, args: std::fmt::Arguments<'_>) {
    let mut buf = pending();
    format_line(&mut buf, to_journal(), priority, args);
    write_out(&mut buf);
}

/// Buffers one access-log line at info priority (see the module documentation).
pub fn access(args: std::fmt::Arguments<'_>) {
    let mut buf = pending();
    format_line(&mut buf, to_journal(), INFO, args);
    if buf.len() >= FLUSH_BYTES {
        write_out(&mut buf);
    }
}

/// Writes the buffered access lines out.
pub fn flush() {
    write_out(&mut pending());
}

#[macro_export]
macro_rules! log_err { ($($t:tt)*) => { $crate::log::write($crate::log::ERR, format_args!($($t)*)) } }
#[macro_export]
macro_rules! log_warn { ($($t:tt)*) => { $crate::log::write($crate::log::WARNING, format_args!($($t)*)) } }
#[macro_export]
macro_rules! log_notice { ($($t:tt)*) => { $crate::log::write($crate::log::NOTICE, format_args!($($t)*)) } }
#[macro_export]
macro_rules! log_info { ($($t:tt)*) => { $crate::log::write($crate::log::INFO, format_args!($($t)*)) } }

#[cfg(test)]
mod tests {
    use super::*;

    fn line(journal: bool, priority: u8, msg: &str) -> String {
        let mut out = Vec::new();
        format_line(&mut out, journal, priority, format_args!("{msg}"));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn journal_lines_carry_the_priority() {
        assert_eq!(line(true, ERR, "boom"), "<3>boom\n");
        assert_eq!(
            line(true, INFO, "GET /health 200 12us"),
            "<6>GET /health 200 12us\n"
        );
    }

    #[test]
    fn terminal_lines_say_errors_and_warnings() {
        assert_eq!(line(false, ERR, "boom"), "error: boom\n");
        assert_eq!(line(false, WARNING, "hm"), "warning: hm\n");
        assert_eq!(line(false, INFO, "ok"), "ok\n");
    }

    #[test]
    fn a_message_with_newlines_stays_one_line() {
        assert_eq!(line(true, NOTICE, "a\nb\n"), "<5>a\\nb\\n\n");
    }
}
