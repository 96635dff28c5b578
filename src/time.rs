//! Timestamps as the API shows them: RFC 3339 in the machine's local time zone, with its offset.

use chrono::{DateTime, Local, SecondsFormat, TimeZone};

pub fn now_rfc3339() -> String {
    rfc3339(&Local::now())
}

pub fn rfc3339(t: &DateTime<Local>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, false)
}

/// Seconds since the epoch as [`rfc3339`] in local time; empty for a negative or unrepresentable
/// time, which no caller shows as a date.
pub fn epoch_rfc3339(secs: i64) -> String {
    if secs < 0 {
        return String::new();
    }
    Local
        .timestamp_opt(secs, 0)
        .single()
        .map(|t| rfc3339(&t))
        .unwrap_or_default()
}

/// A systemd timestamp (microseconds since the epoch) in local time; `None` for 0 and
/// `u64::MAX`, which systemd uses for "never" and "unset".
pub fn from_usec(usec: u64) -> Option<DateTime<Local>> {
    if usec == 0 || usec == u64::MAX {
        return None;
    }
    Local.timestamp_micros(i64::try_from(usec).ok()?).single()
}
