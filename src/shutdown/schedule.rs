//! Schedules: what a request asks for, the timer unit it becomes, and how an entry is shown.
//!
//! A schedule is a started instance of `homelab-shutdown@.timer` (power off) or
//! `homelab-reboot@.timer` (reboot) whose instance is the calendar expression (`@EPOCH` for a
//! one-off time): the action is in the unit's name, so the root-owned unit it triggers needs no
//! data of ours. systemd is the source of truth for what is pending.

use super::busy::{self, Policy, Waiting, WhenBusy};
use super::fields::{MAX_MINUTES, parse_calendar_field, parse_time};
use super::wake::{self, Wake};
use crate::http::{ApiError, shown};
use crate::systemd::escape;
use chrono::{DateTime, Local};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Power-off schedules (it triggers its gate, `homelab-shutdown@.service`).
pub const TIMER_TEMPLATE: &str = "homelab-shutdown@.timer";
/// Reboot schedules (it triggers its gate, `homelab-reboot@.service`).
pub const REBOOT_TIMER_TEMPLATE: &str = "homelab-reboot@.timer";
/// Every schedule's timer, for one `ListUnitsByPatterns` call.
pub const TIMER_PATTERNS: &[&str] = &["homelab-shutdown@*.timer", "homelab-reboot@*.timer"];
/// Every schedule's timer and gate (the service a timer starts when it elapses): what is
/// pending, and what is firing.
pub const UNIT_PATTERNS: &[&str] = &[
    "homelab-shutdown@*.timer",
    "homelab-reboot@*.timer",
    "homelab-shutdown@*.service",
    "homelab-reboot@*.service",
];
const FIELDS: &[&str] = &[
    "minutes",
    "at",
    "calendar",
    "action",
    "replace",
    "when_busy",
    "max_wait_minutes",
    "wake_at",
    "wake_after_minutes",
    "wake_calendar",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Poweroff,
    Reboot,
}

impl Action {
    /// The timer template of schedules with this action.
    pub fn timer_template(self) -> &'static str {
        match self {
            Action::Poweroff => TIMER_TEMPLATE,
            Action::Reboot => REBOOT_TIMER_TEMPLATE,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Poweroff => "poweroff",
            Action::Reboot => "reboot",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    OneOff,
    Recurring,
}

impl Kind {
    /// One-off schedules are `@EPOCH`; anything else is a recurring calendar expression.
    pub fn of(calendar: &str) -> Kind {
        if calendar.starts_with('@') {
            Kind::OneOff
        } else {
            Kind::Recurring
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::OneOff => "one-off",
            Kind::Recurring => "recurring",
        }
    }
}

/// A validated `POST /shutdown/schedule`.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ScheduleRequest {
    /// The calendar expression the timer gets (`@EPOCH` for a one-off).
    pub calendar: String,
    pub action: Action,
    pub replace: bool,
    /// The `minutes` asked for, when the request gave minutes (or none, and got the default).
    pub minutes: Option<u64>,
    /// The request's own policy when busy (`None`: the configuration's, when it fires).
    pub when_busy: Option<WhenBusy>,
    pub max_wait_minutes: Option<u64>,
    /// When the machine wakes after the power-off.
    pub wake: Option<Wake>,
}

impl ScheduleRequest {
    pub fn kind(&self) -> Kind {
        Kind::of(&self.calendar)
    }

    pub fn unit(&self) -> String {
        timer_unit(&self.calendar, self.action).expect("validated calendars fit a unit name")
    }
}

/// The timer unit for a calendar expression and action; `None` when it cannot be one.
pub fn timer_unit(calendar: &str, action: Action) -> Option<String> {
    escape::template_instance(action.timer_template(), calendar)
}

/// The gate of a schedule's timer: the service of the same name, which the timer starts.
pub fn gate_of(timer: &str) -> Option<String> {
    parse_unit(timer)?;
    Some(format!("{}.service", timer.strip_suffix(".timer")?))
}

/// The timer whose gate `gate` is (`None`: not a schedule's gate).
pub fn timer_of(gate: &str) -> Option<String> {
    let timer = format!("{}.timer", gate.strip_suffix(".service")?);
    parse_unit(&timer).map(|_| timer)
}

/// The calendar expression and action of a timer unit of ours.
pub fn parse_unit(unit: &str) -> Option<(String, Action)> {
    [Action::Poweroff, Action::Reboot]
        .into_iter()
        .find_map(|action| {
            let instance = escape::instance_of(unit, action.timer_template())?;
            Some((escape::unescape(instance)?, action))
        })
}

/// Validates a request body. Exactly one of `minutes`, `at`, `calendar` (none: `default_minutes`).
/// `calendar` is only checked for shape here; systemd's parser has the last word. `policy` is
/// the configuration's default policy when busy.
pub fn parse_request(
    body: &Map<String, Value>,
    default_minutes: u64,
    policy: Policy,
    now: DateTime<Local>,
) -> Result<ScheduleRequest, ApiError> {
    if let Some(unknown) = body.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "unknown field {unknown:?}: send one of \"minutes\", \"at\" or \"calendar\", optionally \"action\", \"replace\", \"when_busy\", \"max_wait_minutes\" and one of \"wake_at\", \"wake_after_minutes\" or \"wake_calendar\""
        )));
    }
    let given: Vec<&str> = ["minutes", "at", "calendar"]
        .into_iter()
        .filter(|k| body.contains_key(*k))
        .collect();
    if given.len() > 1 {
        return Err(ApiError::bad_request(format!(
            "{} were both given: send only one of \"minutes\", \"at\" or \"calendar\"",
            given.join(" and ")
        )));
    }
    let action = match body.get("action") {
        None => Action::Poweroff,
        Some(Value::String(s)) if s == "poweroff" => Action::Poweroff,
        Some(Value::String(s)) if s == "reboot" => Action::Reboot,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "\"action\" is {}: use \"poweroff\" or \"reboot\"",
                shown(other)
            )));
        }
    };
    let replace = match body.get("replace") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "\"replace\" is {}: use true or false",
                shown(other)
            )));
        }
    };
    let (calendar, minutes) = if let Some(v) = body.get("calendar") {
        (parse_calendar(v)?, None)
    } else if let Some(v) = body.get("at") {
        (format!("@{}", parse_time("at", v, now)?), None)
    } else {
        let minutes = match body.get("minutes") {
            None => default_minutes,
            Some(v) => parse_minutes(v)?,
        };
        (
            format!("@{}", now.timestamp() + minutes as i64 * 60),
            Some(minutes),
        )
    };
    if timer_unit(&calendar, action).is_none() {
        return Err(ApiError::bad_request(format!(
            "\"calendar\" is too long for a unit name once escaped (each character other than letters, digits, ':', '_' and '.' counts 4 bytes, at most {} in all): send a shorter expression",
            escape::UNIT_NAME_MAX
        )));
    }
    let (when_busy, max_wait_minutes) = busy::parse_request(body, policy)?;
    let one_off_at = one_off_usec(&calendar).map(|t| (t / 1_000_000) as i64);
    let wake = wake::parse_request(body, one_off_at, action == Action::Reboot, now)?;
    Ok(ScheduleRequest {
        calendar,
        action,
        replace,
        minutes,
        when_busy,
        max_wait_minutes,
        wake,
    })
}

fn parse_calendar(v: &Value) -> Result<String, ApiError> {
    parse_calendar_field("calendar", v)
}

fn parse_minutes(v: &Value) -> Result<u64, ApiError> {
    match v.as_u64() {
        Some(m) if (1..=MAX_MINUTES).contains(&m) => Ok(m),
        _ => Err(ApiError::bad_request(format!(
            "\"minutes\" is {}: send a whole number of minutes from 1 to {MAX_MINUTES}, e.g. {{\"minutes\": 30}}",
            shown(v)
        ))),
    }
}

/// What the state file remembers of a schedule beyond what systemd knows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct Stored {
    pub calendar: String,
    #[serde(default)]
    pub action: Action,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minutes: Option<u64>,
    /// The schedule's own policy when busy (none: the configuration's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when_busy: Option<WhenBusy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait_minutes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake: Option<Wake>,
    /// Set while the schedule has fired and waits for the machine to be idle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<Waiting>,
    /// The RTC alarm the schedule last set (seconds since the epoch): cancelling the schedule
    /// clears it if it is still armed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_alarm_set: Option<i64>,
}

/// Where a schedule is, from systemd's units: its timer waits, or it has fired and its gate
/// (`homelab-shutdown@X.service`, `homelab-reboot@X.service`) runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Phase {
    /// The timer waits for its next elapse.
    #[default]
    Pending,
    /// The gate runs and has recorded no wait: it is deciding, or about to start the power
    /// action (or it waits, and its state entry is gone). A cancel still stops it.
    Deciding,
    /// The gate waits for the machine to be idle (its entry says for whom).
    Waiting,
    /// The power action has begun (root's unit runs, or poweroff.target or reboot.target has
    /// a job): past the point of no return; a cancel answers 409.
    Acting,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Deciding => "deciding",
            Phase::Waiting => "waiting",
            Phase::Acting => "acting",
        }
    }

    /// Its timer has fired: the gate runs.
    pub fn is_firing(self) -> bool {
        self != Phase::Pending
    }
}

/// A schedule systemd has pending (or firing), joined with what the state file says about it.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Pending {
    pub unit: String,
    pub calendar: String,
    /// From the unit's name: what will happen, whatever the state file says.
    pub action: Action,
    /// Microseconds since the epoch.
    pub next_elapse_usec: u64,
    pub stored: Option<Stored>,
    /// Its policy when busy: the entry's own, or the configuration's.
    pub policy: Policy,
    /// Where it is: pending, or fired and in its gate.
    pub phase: Phase,
    /// The timer has fired and its gate waits (`Stored::waiting`).
    pub waiting: Option<Waiting>,
    /// When the machine is expected to wake after this power-off (seconds since the epoch).
    pub wake_at: Option<i64>,
}

impl Pending {
    pub fn kind(&self) -> Kind {
        Kind::of(&self.calendar)
    }

    /// The id clients use in `DELETE /shutdown/schedules/{id}`: stable, URL-safe, from the unit name.
    pub fn id(&self) -> String {
        schedule_id(&self.unit)
    }

    /// The entry the API shows: the original's fields (`scheduled_time`, `minutes_from_now`,
    /// `created_at`) and ours.
    pub fn entry(&self, now: DateTime<Local>) -> Value {
        let next = crate::time::from_usec(self.next_elapse_usec);
        let seconds_left = next.map_or(0, |t| (t.timestamp() - now.timestamp()).max(0));
        let next_str = next.map(|t| crate::time::rfc3339(&t));
        let wake = self.stored.as_ref().and_then(|s| s.wake.as_ref());
        let time = |t: i64| Some(crate::time::epoch_rfc3339(t)).filter(|s| !s.is_empty());
        json!({
            "id": self.id(),
            "unit": self.unit,
            "kind": self.kind().as_str(),
            "calendar": self.calendar,
            "action": self.action.as_str(),
            "scheduled_time": next_str,
            "next_elapse": next_str,
            "minutes_from_now": (seconds_left + 59) / 60,
            "created_at": self.stored.as_ref().map(|s| s.created_at.clone()),
            "state": self.phase.as_str(),
            "when_busy": self.policy.when_busy.as_str(),
            "max_wait_minutes": (self.policy.when_busy == WhenBusy::Wait).then_some(self.policy.max_wait_minutes),
            "waiting": self.waiting.as_ref().map(|w| json!({
                "since": time(w.since),
                "until": time(w.until),
                "busy": w.busy,
            })),
            "wake_at": self.wake_at.and_then(time),
            "wake_after_minutes": match wake { Some(Wake::AfterMinutes(m)) => Some(*m), _ => None },
            "wake_calendar": match wake { Some(Wake::Calendar(c)) => Some(c.as_str()), _ => None },
            "wake_alarm_set": self.stored.as_ref().and_then(|s| s.wake_alarm_set).and_then(time),
        })
    }
}

/// What a schedule request does, given what is pending (soonest first): the decision of
/// `POST /shutdown/schedule` and of the idle power-off, without I/O.
#[derive(Clone, Debug, PartialEq)]
pub struct Start {
    /// The timer to start.
    pub unit: String,
    /// Its state entry, recorded before the start.
    pub stored: Stored,
    /// One-off timers to stop once it has started (`"replace": true`).
    pub replaced: Vec<String>,
}

/// Why a request is refused: a schedule already pending stands in its way.
#[derive(Clone, Debug, PartialEq)]
pub enum Conflict {
    /// This very timer is pending.
    Same(Box<Pending>),
    /// A one-off power action is pending and the request is a one-off without `replace`.
    OneOff(Box<Pending>),
}

impl Conflict {
    /// The pending schedule in the way.
    pub fn existing(&self) -> &Pending {
        match self {
            Conflict::Same(p) | Conflict::OneOff(p) => p,
        }
    }
}

/// The conflict rules: at most one one-off power action is pending (a second one is refused
/// unless it says `replace`, and then replaces every pending one-off); recurring schedules stand
/// beside it; the same timer is never started twice.
pub fn plan(
    request: &ScheduleRequest,
    pending: &[Pending],
    now: DateTime<Local>,
) -> Result<Start, Conflict> {
    let unit = request.unit();
    if let Some(same) = pending.iter().find(|p| p.unit == unit) {
        return Err(Conflict::Same(Box::new(same.clone())));
    }
    let one_offs: Vec<&Pending> = pending
        .iter()
        .filter(|p| p.kind() == Kind::OneOff)
        .collect();
    let replaced = match (request.kind(), one_offs.first()) {
        (Kind::OneOff, Some(existing)) if !request.replace => {
            return Err(Conflict::OneOff(Box::new((*existing).clone())));
        }
        (Kind::OneOff, _) => one_offs.iter().map(|p| p.unit.clone()).collect(),
        (Kind::Recurring, _) => Vec::new(),
    };
    Ok(Start {
        unit,
        stored: Stored {
            calendar: request.calendar.clone(),
            action: request.action,
            created_at: crate::time::rfc3339(&now),
            minutes: request.minutes,
            when_busy: request.when_busy,
            max_wait_minutes: request.max_wait_minutes,
            wake: request.wake.clone(),
            waiting: None,
            wake_alarm_set: None,
        },
        replaced,
    })
}

/// The next elapse of a one-off calendar (`@EPOCH`), in microseconds; `None` for recurring ones.
pub fn one_off_usec(calendar: &str) -> Option<u64> {
    calendar
        .strip_prefix('@')?
        .parse::<u64>()
        .ok()?
        .checked_mul(1_000_000)
}

/// 64-bit FNV-1a of the unit name, in hex: short, URL-safe, the same in every process.
pub fn schedule_id(unit: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in unit.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Local> {
        Local.timestamp_opt(1_795_000_000, 0).unwrap()
    }

    fn parse(body: &str) -> Result<ScheduleRequest, ApiError> {
        let map = match serde_json::from_str::<Value>(body).unwrap() {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        parse_request(&map, 1, Policy::default(), now())
    }

    #[test]
    fn minutes_become_a_one_off_epoch() {
        let r = parse(r#"{"minutes": 30}"#).unwrap();
        assert_eq!(r.calendar, "@1795001800");
        assert_eq!(r.kind(), Kind::OneOff);
        assert_eq!(r.minutes, Some(30));
        assert_eq!(r.unit(), r"homelab-shutdown@\x401795001800.timer");
        let r = parse(r#"{"minutes": 30, "action": "reboot"}"#).unwrap();
        assert_eq!(r.unit(), r"homelab-reboot@\x401795001800.timer");
        assert_eq!(
            parse("{}").unwrap().calendar,
            "@1795000060",
            "default minutes"
        );
    }

    #[test]
    fn at_and_calendar_and_options() {
        let r =
            parse(r#"{"at": "2026-11-18T12:00:00+00:00", "action": "reboot", "replace": true}"#)
                .unwrap();
        assert_eq!(
            r.calendar,
            format!("@{}", 1_795_000_000 - 1_795_000_000 % 86400 + 43200)
        );
        assert_eq!((r.action, r.replace), (Action::Reboot, true));
        let r = parse(r#"{"at": "2026-11-18T12:00:00.250+00:00"}"#).unwrap();
        assert_eq!(
            r.calendar,
            format!("@{}", 1_795_000_000 - 1_795_000_000 % 86400 + 43201),
            "rounded up"
        );
        let r = parse(r#"{"calendar": " Mon..Fri 23:00 "}"#).unwrap();
        assert_eq!(
            (r.calendar.as_str(), r.kind(), r.minutes),
            ("Mon..Fri 23:00", Kind::Recurring, None)
        );
    }

    #[test]
    fn bad_requests_say_what_to_send() {
        for (body, needle) in [
            (r#"{"minutes": -5}"#, "whole number"),
            (r#"{"minutes": 0}"#, "whole number"),
            (r#"{"minutes": 1.5}"#, "whole number"),
            (r#"{"minutes": "5"}"#, "whole number"),
            (r#"{"minutes": 525601}"#, "whole number"),
            (r#"{"minutes": null}"#, "whole number"),
            (r#"{"at": "tomorrow"}"#, "RFC 3339"),
            (r#"{"at": "2026-11-18T12:00:00"}"#, "RFC 3339"),
            (r#"{"at": "2020-01-01T00:00:00Z"}"#, "in the past"),
            (r#"{"at": "2099-01-01T00:00:00Z"}"#, "year ahead"),
            (r#"{"at": 5}"#, "RFC 3339"),
            (r#"{"calendar": ""}"#, "1 to 200"),
            (r#"{"calendar": "Mon\n23:00"}"#, "control"),
            (r#"{"calendar": "@1795001800"}"#, "one-off"),
            (r#"{"calendar": 3}"#, "calendar expression"),
            (
                r#"{"minutes": 5, "at": "2026-11-18T12:00:00Z"}"#,
                "only one",
            ),
            (r#"{"minutes": 5, "force": true}"#, "unknown field"),
            (r#"{"action": "halt"}"#, "poweroff"),
            (r#"{"replace": "yes"}"#, "true or false"),
        ] {
            let e = parse(body).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert!(e.message.contains(needle), "{body}: {}", e.message);
        }
        let long = format!(r#"{{"calendar": "{}"}}"#, "x".repeat(10_000));
        assert!(parse(&long).unwrap_err().message.len() < 200);
        // 200 characters pass the length check, but 200 '*' are 800 bytes escaped: 400, no panic.
        let stars = format!(
            r#"{{"calendar": "{}", "action": "reboot"}}"#,
            "*".repeat(200)
        );
        let e = parse(&stars).unwrap_err();
        assert!(
            e.status == 400 && e.message.contains("too long for a unit name"),
            "{}",
            e.message
        );
    }

    fn pending(calendar: &str, action: Action) -> Pending {
        Pending {
            unit: timer_unit(calendar, action).unwrap(),
            calendar: calendar.into(),
            action,
            next_elapse_usec: one_off_usec(calendar).unwrap_or(1),
            ..Pending::default()
        }
    }

    #[test]
    fn plans_follow_the_conflict_rules() {
        let one_off = parse(r#"{"minutes": 30}"#).unwrap();
        let start = plan(&one_off, &[], now()).unwrap();
        assert_eq!(start.unit, one_off.unit());
        assert!(start.replaced.is_empty());
        assert_eq!(start.stored.calendar, one_off.calendar);
        assert_eq!(start.stored.minutes, Some(30));
        assert_eq!(start.stored.created_at, crate::time::rfc3339(&now()));

        // A one-off (power-off or reboot) pending: a second is refused, the soonest named.
        let soon = pending("@1795000600", Action::Reboot);
        let later = pending("@1795003600", Action::Poweroff);
        let weekly = pending("Mon 23:00", Action::Poweroff);
        let all = [soon.clone(), later.clone(), weekly.clone()];
        assert_eq!(
            plan(&one_off, &all, now()),
            Err(Conflict::OneOff(Box::new(soon.clone())))
        );
        // ... unless it says replace: every pending one-off goes, the recurring one stays.
        let replace = ScheduleRequest {
            replace: true,
            ..one_off.clone()
        };
        assert_eq!(
            plan(&replace, &all, now()).unwrap().replaced,
            [soon.unit.clone(), later.unit.clone()]
        );
        // The same timer again is refused, even with replace.
        let again = ScheduleRequest {
            calendar: "@1795000600".into(),
            action: Action::Reboot,
            replace: true,
            ..ScheduleRequest::default()
        };
        let e = plan(&again, &all, now()).unwrap_err();
        assert_eq!(e, Conflict::Same(Box::new(soon.clone())));
        assert_eq!(e.existing(), &soon);
        // A recurring schedule stands beside a one-off and replaces nothing.
        let daily = parse(r#"{"calendar": "*-*-* 02:30"}"#).unwrap();
        assert!(plan(&daily, &all, now()).unwrap().replaced.is_empty());
        let same_weekly = parse(r#"{"calendar": "Mon 23:00"}"#).unwrap();
        assert_eq!(
            plan(&same_weekly, &all, now()),
            Err(Conflict::Same(Box::new(weekly)))
        );
    }

    #[test]
    fn units_and_calendars_round_trip() {
        for cal in ["@1795001800", "Mon..Fri 23:00", "*-*-* 10:00/15"] {
            for action in [Action::Poweroff, Action::Reboot] {
                let unit = timer_unit(cal, action).unwrap();
                assert_eq!(parse_unit(&unit), Some((cal.to_string(), action)));
            }
        }
        assert_eq!(parse_unit("model@x.service"), None);
        assert_eq!(parse_unit("homelab-poweroff@x.service"), None);
    }

    #[test]
    fn entries_keep_the_original_fields() {
        let p = Pending {
            unit: timer_unit("@1795001800", Action::Reboot).unwrap(),
            calendar: "@1795001800".into(),
            action: Action::Reboot,
            next_elapse_usec: one_off_usec("@1795001800").unwrap(),
            stored: Some(Stored {
                calendar: "@1795001800".into(),
                action: Action::Reboot,
                created_at: "x".into(),
                minutes: Some(30),
                ..Stored::default()
            }),
            ..Pending::default()
        };
        let e = p.entry(now());
        assert_eq!(e["minutes_from_now"], 30);
        assert_eq!(e["kind"], "one-off");
        assert_eq!(e["action"], "reboot");
        assert_eq!(e["created_at"], "x");
        let t = DateTime::parse_from_rfc3339(e["scheduled_time"].as_str().unwrap()).unwrap();
        assert_eq!(t.timestamp(), 1_795_001_800);
        assert_eq!(e["id"].as_str().unwrap().len(), 16);
        assert_eq!(p.id(), schedule_id(&p.unit));
        assert_ne!(schedule_id("a"), schedule_id("b"));
        assert_eq!(one_off_usec("Mon 23:00"), None);
    }
}
