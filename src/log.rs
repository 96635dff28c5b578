//! Log lines on stderr. Under journald (`JOURNAL_STREAM` set) each line carries a `<N>` priority
//! prefix, which journald turns into the entry's priority; time and unit are journald's to add.

use std::io::Write;
use std::sync::OnceLock;

pub const ERR: u8 = 3;
pub const WARNING: u8 = 4;
pub const NOTICE: u8 = 5;
pub const INFO: u8 = 6;

fn to_journal() -> bool {
    static JOURNAL: OnceLock<bool> = OnceLock::new();
    *JOURNAL.get_or_init(|| std::env::var_os("JOURNAL_STREAM").is_some())
}

/// Writes one line; newlines inside a message are escaped so one call is one journal entry.
/// The whole line goes out in one `write()`: stderr is unbuffered, and a line in pieces costs
/// journald a wake-up per piece.
pub fn write(priority: u8, args: std::fmt::Arguments<'_>) {
    let msg = args.to_string().replace('\n', "\\n");
    let line = if to_journal() {
        format!("<{priority}>{msg}\n")
    } else {
        let label = match priority {
            0..=ERR => "error: ",
            WARNING => "warning: ",
            _ => "",
        };
        format!("{label}{msg}\n")
    };
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

#[macro_export]
macro_rules! log_err { ($($t:tt)*) => { $crate::log::write($crate::log::ERR, format_args!($($t)*)) } }
#[macro_export]
macro_rules! log_warn { ($($t:tt)*) => { $crate::log::write($crate::log::WARNING, format_args!($($t)*)) } }
#[macro_export]
macro_rules! log_notice { ($($t:tt)*) => { $crate::log::write($crate::log::NOTICE, format_args!($($t)*)) } }
#[macro_export]
macro_rules! log_info { ($($t:tt)*) => { $crate::log::write($crate::log::INFO, format_args!($($t)*)) } }
