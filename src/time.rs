//! Timestamps as the API shows them: RFC 3339 in the machine's local time zone, with its offset.

use chrono::{DateTime, Local, SecondsFormat};

pub fn now_rfc3339() -> String {
    rfc3339(&Local::now())
}

pub fn rfc3339(t: &DateTime<Local>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, false)
}
