//! The request fields a schedule and its wake time share: times, calendar expressions and the
//! longest delay, each checked for its shape with an answer that says what to send.

use crate::http::{ApiError, shown};
use chrono::{DateTime, Local};
use serde_json::Value;

/// Longest delay a `minutes` request may ask for (a year).
pub const MAX_MINUTES: u64 = 525_600;
const MAX_CALENDAR_LEN: usize = 200;

/// An RFC 3339 time in the coming year, as whole seconds since the epoch (rounded up: a power
/// action never comes before the time asked); `field` names it in errors.
pub fn parse_time(field: &str, v: &Value, now: DateTime<Local>) -> Result<i64, ApiError> {
    let Value::String(s) = v else {
        return Err(ApiError::bad_request(format!(
            "\"{field}\" is {}: send an RFC 3339 time such as \"2030-01-31T23:00:00+01:00\"",
            shown(v)
        )));
    };
    let t = DateTime::parse_from_rfc3339(s).map_err(|e| {
        ApiError::bad_request(format!(
            "\"{field}\" is not an RFC 3339 time with a time zone ({e}): send e.g. \"2030-01-31T23:00:00+01:00\""
        ))
    })?;
    // Timers have whole seconds.
    let secs = t.timestamp() + i64::from(t.timestamp_subsec_nanos() > 0);
    if secs <= now.timestamp() {
        return Err(ApiError::bad_request(format!(
            "\"{field}\" {s} is in the past (now is {}): send a future time",
            crate::time::rfc3339(&now)
        )));
    }
    if secs > now.timestamp() + MAX_MINUTES as i64 * 60 {
        return Err(ApiError::bad_request(format!(
            "\"{field}\" {s} is more than a year ahead: send a nearer time"
        )));
    }
    Ok(secs)
}

/// A calendar expression's shape (systemd's parser has the last word); `field` names it.
pub fn parse_calendar_field(field: &str, v: &Value) -> Result<String, ApiError> {
    let Value::String(s) = v else {
        return Err(ApiError::bad_request(format!(
            "\"{field}\" is {}: send a systemd calendar expression such as \"Mon..Fri 23:00\"",
            shown(v)
        )));
    };
    let s = s.trim();
    if s.is_empty() || s.len() > MAX_CALENDAR_LEN {
        return Err(ApiError::bad_request(format!(
            "\"{field}\" must be 1 to {MAX_CALENDAR_LEN} characters: send e.g. \"Mon..Fri 23:00\""
        )));
    }
    if s.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "\"{field}\" contains control characters: send e.g. \"Mon..Fri 23:00\""
        )));
    }
    if s.starts_with('@') {
        return Err(ApiError::bad_request(format!(
            "\"{field}\" must not start with '@': for a one-off time send \"at\" or \"minutes\""
        )));
    }
    Ok(s.to_string())
}
