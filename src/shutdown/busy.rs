//! What a schedule does when its time comes and the machine is busy: its `when_busy` policy,
//! and the decision it leads to, without I/O. Busy means what systemd says: a logind inhibitor
//! in `block` mode for shutdown is held (`systemd-inhibit --list`), by our coordinator while
//! experiments run, by a backup run under `systemd-inhibit`, by a package upgrade.

use crate::http::ApiError;
use crate::systemd::Inhibitor;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest wait a schedule may ask for (a day).
pub const MAX_WAIT_MINUTES: u64 = 1440;
/// How often a waiting schedule looks at the inhibitors again.
pub const POLL_SECONDS: u64 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenBusy {
    /// Power off anyway: running units get their normal stop.
    Proceed,
    /// Wait until no block inhibitor is held, at most `max_wait_minutes`, then proceed.
    Wait,
    /// Skip this occurrence (a recurring schedule stays).
    Skip,
}

impl WhenBusy {
    pub fn as_str(self) -> &'static str {
        match self {
            WhenBusy::Proceed => "proceed",
            WhenBusy::Wait => "wait",
            WhenBusy::Skip => "skip",
        }
    }

    /// The `when_busy` of a request or a configuration file; the error says what to send.
    pub fn parse(v: &Value) -> anyhow::Result<WhenBusy> {
        match v.as_str() {
            Some("proceed") => Ok(WhenBusy::Proceed),
            Some("wait") => Ok(WhenBusy::Wait),
            Some("skip") => Ok(WhenBusy::Skip),
            _ => Err(anyhow::anyhow!(
                "\"when_busy\" is {}: send \"proceed\", \"wait\" or \"skip\"",
                crate::http::shown(v)
            )),
        }
    }
}

/// A schedule's effective policy: its own, or the configuration's default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub when_busy: WhenBusy,
    /// Only used with [`WhenBusy::Wait`].
    pub max_wait_minutes: u64,
}

impl Default for Policy {
    /// Wait, at most six hours: docs/shutdown.md ("When the machine is busy") says why.
    fn default() -> Policy {
        Policy {
            when_busy: WhenBusy::Wait,
            max_wait_minutes: 360,
        }
    }
}

impl Policy {
    /// The policy of a schedule that gave `when_busy` and `max_wait_minutes` (or not).
    pub fn resolve(
        when_busy: Option<WhenBusy>,
        max_wait_minutes: Option<u64>,
        default: Policy,
    ) -> Policy {
        let when_busy = when_busy.unwrap_or(default.when_busy);
        Policy {
            when_busy,
            max_wait_minutes: max_wait_minutes.unwrap_or(default.max_wait_minutes),
        }
    }
}

/// Validates a `max_wait_minutes` value; the error says what to send.
pub fn parse_max_wait(v: &Value) -> anyhow::Result<u64> {
    match v.as_u64() {
        Some(m) if (1..=MAX_WAIT_MINUTES).contains(&m) => Ok(m),
        _ => Err(anyhow::anyhow!(
            "\"max_wait_minutes\" is {}: send a whole number of minutes from 1 to {MAX_WAIT_MINUTES}, e.g. {{\"when_busy\": \"wait\", \"max_wait_minutes\": 120}}",
            crate::http::shown(v)
        )),
    }
}

/// The `when_busy` and `max_wait_minutes` of a request body; `default` is the configuration's
/// policy (a `max_wait_minutes` makes sense only when the policy it ends up with is `wait`).
pub fn parse_request(
    body: &serde_json::Map<String, Value>,
    default: Policy,
) -> Result<(Option<WhenBusy>, Option<u64>), ApiError> {
    let when_busy = body
        .get("when_busy")
        .map(WhenBusy::parse)
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let max_wait = body
        .get("max_wait_minutes")
        .map(parse_max_wait)
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let effective = when_busy.unwrap_or(default.when_busy);
    if max_wait.is_some() && effective != WhenBusy::Wait {
        return Err(ApiError::bad_request(format!(
            "\"max_wait_minutes\" applies only to \"when_busy\": \"wait\", and this schedule would {}: send \"when_busy\": \"wait\" with it, or leave it out",
            effective.as_str()
        )));
    }
    Ok((when_busy, max_wait))
}

/// What a schedule waits for, recorded in its state entry while it waits (and listed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Waiting {
    /// Seconds since the epoch.
    pub since: i64,
    /// When it proceeds anyway (seconds since the epoch).
    pub until: i64,
    /// Who holds the machine busy.
    pub busy: Vec<Inhibitor>,
}

/// What the schedule does now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not busy: act.
    Act,
    /// Busy, and the policy says act anyway.
    Proceed,
    /// Busy for the whole of `max_wait_minutes`: act.
    WaitedLongEnough,
    Skip,
    /// Busy: look again in [`POLL_SECONDS`].
    Wait,
}

/// The decision, `waited` seconds after the schedule fired, with `busy` holders now.
pub fn decide(policy: Policy, busy: bool, waited: u64) -> Decision {
    if !busy {
        return Decision::Act;
    }
    match policy.when_busy {
        WhenBusy::Proceed => Decision::Proceed,
        WhenBusy::Skip => Decision::Skip,
        WhenBusy::Wait if waited >= policy.max_wait_minutes * 60 => Decision::WaitedLongEnough,
        WhenBusy::Wait => Decision::Wait,
    }
}

/// Who holds the machine busy, for a log line: `who (why), ...`.
pub fn holders(busy: &[Inhibitor]) -> String {
    busy.iter()
        .map(|i| format!("{} ({}), pid {}", i.who, i.why, i.pid))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const WAIT_2H: Policy = Policy {
        when_busy: WhenBusy::Wait,
        max_wait_minutes: 120,
    };

    #[test]
    fn decisions_follow_the_policy() {
        for when_busy in [WhenBusy::Proceed, WhenBusy::Wait, WhenBusy::Skip] {
            let p = Policy {
                when_busy,
                max_wait_minutes: 1,
            };
            assert_eq!(decide(p, false, 0), Decision::Act, "idle acts at once");
        }
        let p = |when_busy| Policy {
            when_busy,
            ..WAIT_2H
        };
        assert_eq!(decide(p(WhenBusy::Proceed), true, 0), Decision::Proceed);
        assert_eq!(decide(p(WhenBusy::Skip), true, 0), Decision::Skip);
        assert_eq!(decide(WAIT_2H, true, 0), Decision::Wait);
        assert_eq!(decide(WAIT_2H, true, 7199), Decision::Wait);
        assert_eq!(decide(WAIT_2H, true, 7200), Decision::WaitedLongEnough);
    }

    fn body(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn requests_resolve_against_the_default() {
        let d = Policy::default();
        assert_eq!(parse_request(&body(json!({})), d).unwrap(), (None, None));
        assert_eq!(
            parse_request(&body(json!({"when_busy": "skip"})), d).unwrap(),
            (Some(WhenBusy::Skip), None)
        );
        // The default is wait: a max_wait_minutes alone is fine.
        assert_eq!(
            parse_request(&body(json!({"max_wait_minutes": 30})), d).unwrap(),
            (None, Some(30))
        );
        assert_eq!(
            Policy::resolve(None, Some(30), d),
            Policy {
                when_busy: WhenBusy::Wait,
                max_wait_minutes: 30
            }
        );
        let proceed = Policy {
            when_busy: WhenBusy::Proceed,
            ..d
        };
        assert!(parse_request(&body(json!({"max_wait_minutes": 30})), proceed).is_err());
    }

    #[test]
    fn bad_values_say_what_to_send() {
        for (bad, says) in [
            (
                json!({"when_busy": "later"}),
                "send \"proceed\", \"wait\" or \"skip\"",
            ),
            (json!({"when_busy": 1}), "is 1"),
            (json!({"max_wait_minutes": 0}), "from 1 to 1440"),
            (json!({"max_wait_minutes": 1441}), "from 1 to 1440"),
            (json!({"max_wait_minutes": "5"}), "from 1 to 1440"),
            (json!({"max_wait_minutes": 2.5}), "from 1 to 1440"),
            (
                json!({"when_busy": "skip", "max_wait_minutes": 5}),
                "applies only to",
            ),
        ] {
            let e = parse_request(&body(bad.clone()), Policy::default()).unwrap_err();
            assert_eq!(e.status, 400, "{bad}");
            assert!(e.message.contains(says), "{bad}: {}", e.message);
        }
    }
}
