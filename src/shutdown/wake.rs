//! Waking the machine after a scheduled power-off: a schedule's wake time (`wake_at`,
//! `wake_after_minutes`, `wake_calendar`), and the RTC alarm that carries it through the
//! power-off (`/sys/class/rtc/rtc0/wakealarm`, which `rtcwake -m no` sets too). Only root
//! writes the alarm (`homelab-power-action`); abc's processes read it.

use crate::http::{ApiError, shown};
use crate::systemd::calendar::{self, CalendarError};
use chrono::{DateTime, Local};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::Path;

/// The request fields that carry a wake time; at most one is given.
pub const FIELDS: &[&str] = &["wake_at", "wake_after_minutes", "wake_calendar"];

/// When a powered-off machine wakes again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Wake {
    /// At this time (seconds since the epoch); one-off schedules.
    At(i64),
    /// This many minutes after the power-off.
    AfterMinutes(u64),
    /// At the next elapse of this calendar expression after the power-off; recurring schedules.
    Calendar(String),
}

impl Wake {
    /// The wake time of a power-off at `off` (seconds since the epoch), or why there is none
    /// (a `wake_at` that passed while the schedule waited, a calendar that never elapses again
    /// or cannot be computed). A calendar is asked of systemd's own parser.
    pub fn after(&self, off: i64) -> Result<i64, NoWake> {
        let t = match self {
            Wake::At(t) => *t,
            Wake::AfterMinutes(m) => i64::try_from(*m)
                .ok()
                .and_then(|m| m.checked_mul(60))
                .and_then(|s| off.checked_add(s))
                .ok_or(NoWake::Never)?,
            Wake::Calendar(c) => calendar::next_elapse(c, Some(off))
                .map_err(NoWake::Unknown)?
                .ok_or(NoWake::Never)?,
        };
        if t > off { Ok(t) } else { Err(NoWake::Passed) }
    }
}

/// Why a power-off has no wake time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoWake {
    /// It came before the power-off (a `wake_at` passed while the schedule waited).
    Passed,
    /// The calendar never elapses again (or the time is out of range).
    Never,
    /// systemd's calendar parser gave no answer.
    Unknown(CalendarError),
}

impl std::fmt::Display for NoWake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoWake::Passed => write!(f, "the wake time is not after the power-off"),
            NoWake::Never => write!(f, "the wake calendar never elapses after the power-off"),
            NoWake::Unknown(e) => write!(f, "the wake time cannot be computed: {e}"),
        }
    }
}

impl std::error::Error for NoWake {}

/// The wake field of a request body, if any, checked against the schedule it comes with:
/// `one_off_at` is the power-off time of a one-off schedule (`None`: recurring), `reboot`
/// whether it reboots (a reboot comes back by itself).
pub fn parse_request(
    body: &Map<String, Value>,
    one_off_at: Option<i64>,
    reboot: bool,
    now: DateTime<Local>,
) -> Result<Option<Wake>, ApiError> {
    let given: Vec<&str> = FIELDS
        .iter()
        .copied()
        .filter(|k| body.contains_key(*k))
        .collect();
    let Some(field) = given.first() else {
        return Ok(None);
    };
    if given.len() > 1 {
        return Err(ApiError::bad_request(format!(
            "{} were both given: send at most one of \"wake_at\", \"wake_after_minutes\" or \"wake_calendar\"",
            given.join(" and ")
        )));
    }
    if reboot {
        return Err(ApiError::bad_request(format!(
            "\"{field}\" is for power-offs: a reboot comes back by itself; leave it out, or send \"action\": \"poweroff\""
        )));
    }
    let v = &body[*field];
    let wake = match *field {
        "wake_at" => {
            let Some(off) = one_off_at else {
                return Err(ApiError::bad_request(
                    "\"wake_at\" is for one-off schedules: with \"calendar\" send \"wake_calendar\" (e.g. \"Mon..Fri 07:00\") or \"wake_after_minutes\"",
                ));
            };
            let t = super::fields::parse_time("wake_at", v, now)?;
            if t <= off {
                return Err(ApiError::bad_request(format!(
                    "\"wake_at\" must come after the power-off ({}): send a later time",
                    crate::time::epoch_rfc3339(off)
                )));
            }
            Wake::At(t)
        }
        "wake_after_minutes" => Wake::AfterMinutes(
            v.as_u64()
                .filter(|m| (1..=super::fields::MAX_MINUTES).contains(m))
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "\"wake_after_minutes\" is {}: send a whole number of minutes from 1 to {}, e.g. {{\"wake_after_minutes\": 480}}",
                        shown(v),
                        super::fields::MAX_MINUTES
                    ))
                })?,
        ),
        _ => {
            if one_off_at.is_some() {
                return Err(ApiError::bad_request(
                    "\"wake_calendar\" is for recurring schedules (\"calendar\"): for a one-off send \"wake_at\" or \"wake_after_minutes\"",
                ));
            }
            Wake::Calendar(super::fields::parse_calendar_field("wake_calendar", v)?)
        }
    };
    Ok(Some(wake))
}

/// Whether this machine has an RTC whose alarm can wake it.
pub fn rtc_present() -> bool {
    Path::new(super::rtc::WAKEALARM).exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn now() -> DateTime<Local> {
        Local.timestamp_opt(1_795_000_000, 0).unwrap()
    }

    fn parse(v: Value, one_off_at: Option<i64>, reboot: bool) -> Result<Option<Wake>, ApiError> {
        parse_request(v.as_object().unwrap(), one_off_at, reboot, now())
    }

    #[test]
    fn wake_fields_parse_for_their_kind_of_schedule() {
        let off = Some(1_795_003_600);
        assert_eq!(parse(json!({}), off, false).unwrap(), None);
        assert_eq!(
            parse(json!({"wake_after_minutes": 480}), None, false).unwrap(),
            Some(Wake::AfterMinutes(480))
        );
        let at = Local.timestamp_opt(1_795_030_000, 0).unwrap().to_rfc3339();
        assert_eq!(
            parse(json!({ "wake_at": at }), off, false).unwrap(),
            Some(Wake::At(1_795_030_000))
        );
        assert_eq!(
            parse(json!({"wake_calendar": " Mon..Fri 07:00 "}), None, false).unwrap(),
            Some(Wake::Calendar("Mon..Fri 07:00".into()))
        );
    }

    #[test]
    fn bad_wake_fields_say_what_to_send() {
        let off = Some(1_795_003_600);
        let before = Local.timestamp_opt(1_795_003_000, 0).unwrap().to_rfc3339();
        for (bad, one_off, reboot, says) in [
            (
                json!({"wake_after_minutes": 5}),
                off,
                true,
                "a reboot comes back",
            ),
            (
                json!({"wake_after_minutes": 5, "wake_at": "x"}),
                off,
                false,
                "at most one",
            ),
            (json!({"wake_after_minutes": 0}), off, false, "from 1 to"),
            (json!({"wake_after_minutes": "5"}), off, false, "from 1 to"),
            (
                json!({"wake_at": before}),
                off,
                false,
                "after the power-off",
            ),
            (json!({"wake_at": "tomorrow"}), off, false, "RFC 3339"),
            (json!({"wake_at": 5}), off, false, "RFC 3339"),
            (
                json!({"wake_at": "2030-01-01T07:00:00Z"}),
                None,
                false,
                "for one-off schedules",
            ),
            (
                json!({"wake_calendar": "07:00"}),
                off,
                false,
                "for recurring schedules",
            ),
            (json!({"wake_calendar": ""}), None, false, "1 to 200"),
            (json!({"wake_calendar": ["x"]}), None, false, "an array"),
        ] {
            let e = parse(bad.clone(), one_off, reboot).unwrap_err();
            assert_eq!(e.status, 400, "{bad}");
            assert!(e.message.contains(says), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn wake_times_follow_the_power_off() {
        assert_eq!(Wake::AfterMinutes(60).after(1000), Ok(4600));
        assert_eq!(Wake::At(5000).after(1000), Ok(5000));
        // A wake_at that passed while the schedule waited: no alarm.
        assert_eq!(Wake::At(5000).after(6000), Err(NoWake::Passed));
        assert_eq!(Wake::AfterMinutes(u64::MAX).after(1000), Err(NoWake::Never));
        // 1_795_000_000 is a Wednesday; the next Thursday 07:00 (in any zone) is within 2 days.
        let thu = Wake::Calendar("Thu 07:00".into())
            .after(1_795_000_000)
            .unwrap();
        assert!(
            (1_795_000_000..1_795_000_000 + 2 * 86_400).contains(&thu),
            "{thu}"
        );
        assert_eq!(
            Wake::Calendar("2001-01-01".into()).after(1_795_000_000),
            Err(NoWake::Never)
        );
        assert!(matches!(
            Wake::Calendar("not a time".into()).after(1_795_000_000),
            Err(NoWake::Unknown(CalendarError::Invalid(_)))
        ));
    }
}
