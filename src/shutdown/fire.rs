//! A schedule whose time has come (`shutdown-service --fire UNIT`, run as abc by
//! `homelab-shutdown@.service` or `homelab-reboot@.service` when its timer elapses): applies the
//! schedule's policy when the machine is busy, then has root act through
//! `homelab-power-action@INSTANCE.service`, whose instance is all root is told (the action, and
//! for a power-off the wake time as a number). Stopping the timer (cancelling the schedule)
//! stops this unit too (`PartOf=`), which ends a wait with no power action.

use super::busy::{self, Decision, Policy, Waiting};
use super::config::Config;
use super::schedule::{self, Action};
use super::state::StateStore;
use super::wake;
use crate::systemd::dbus::{Bus, Inhibitor, Verb};
use crate::{log_info, log_notice, log_warn};
use anyhow::Context;
use std::time::Duration;

/// How long root's power action may take to start (logind answers at once).
const ACTOR_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the gate of `gate_unit` (`homelab-shutdown@X.service` or `homelab-reboot@X.service`).
pub fn run(gate_unit: &str, bus: &Bus) -> anyhow::Result<()> {
    let timer = gate_unit
        .strip_suffix(".service")
        .map(|base| format!("{base}.timer"))
        .filter(|t| schedule::parse_unit(t).is_some())
        .with_context(|| format!("{gate_unit:?} is not the service of a schedule's timer"))?;
    let (_, action) = schedule::parse_unit(&timer).context("checked above")?;
    let config = Config::load().unwrap_or_else(|e| {
        log_warn!("{e:#}: using the default policy when busy");
        Config::default()
    });
    let store = StateStore::new(None);
    // A schedule without an entry (its state file was lost) still acts, with the defaults.
    let stored = store.peek().schedules.get(&timer).cloned();
    let policy = stored.as_ref().map_or(config.policy, |s| {
        Policy::resolve(s.when_busy, s.max_wait_minutes, config.policy)
    });
    let what = format!("the {} of {timer}", action.as_str());
    let fired = now();
    let mut recorded: Option<Vec<Inhibitor>> = None;
    loop {
        let busy = bus.shutdown_blockers().unwrap_or_else(|e| {
            log_warn!("cannot list logind's inhibitors ({e}): taking the machine as idle");
            Vec::new()
        });
        let waited = u64::try_from(now() - fired).unwrap_or(0);
        match busy::decide(policy, !busy.is_empty(), waited) {
            Decision::Act => break,
            Decision::Proceed => {
                log_warn!(
                    "{what}: the machine is busy ({}); proceeding, as its policy is \"proceed\": running units get their normal stop",
                    busy::holders(&busy)
                );
                break;
            }
            Decision::WaitedLongEnough => {
                log_warn!(
                    "{what}: waited the maximum of {} minutes and the machine is still busy ({}); proceeding",
                    policy.max_wait_minutes,
                    busy::holders(&busy)
                );
                break;
            }
            Decision::Skip => {
                log_notice!(
                    "skipping {what} this time: the machine is busy ({}) and its policy is \"skip\"",
                    busy::holders(&busy)
                );
                return Ok(());
            }
            Decision::Wait => {
                if recorded.as_ref() != Some(&busy) {
                    let until = fired + policy.max_wait_minutes as i64 * 60;
                    log_info!(
                        "{what} waits while the machine is busy ({}), at most until {}",
                        busy::holders(&busy),
                        crate::time::epoch_rfc3339(until)
                    );
                    let waiting = Waiting {
                        since: fired,
                        until,
                        busy: busy.clone(),
                    };
                    record(&store, &timer, |s| s.waiting = Some(waiting.clone()));
                    recorded = Some(busy);
                }
                std::thread::sleep(Duration::from_secs(busy::POLL_SECONDS));
            }
        }
    }
    let instance = match action {
        Action::Reboot => "reboot".to_string(),
        Action::Poweroff => match stored.as_ref().and_then(|s| s.wake.as_ref()) {
            None => "poweroff".to_string(),
            Some(w) => match wake_time(w) {
                Some(at) => {
                    log_info!(
                        "{what}: the machine wakes again at {}",
                        crate::time::epoch_rfc3339(at)
                    );
                    format!("poweroff-wake-{at}")
                }
                None => "poweroff".to_string(),
            },
        },
    };
    let wake_set: Option<i64> = instance
        .strip_prefix("poweroff-wake-")
        .and_then(|t| t.parse().ok());
    // Recorded before the action: once it succeeds the machine goes down, this unit with it.
    let before = stored.as_ref().and_then(|s| s.wake_alarm_set);
    record(&store, &timer, |s| {
        s.waiting = None;
        if wake_set.is_some() {
            s.wake_alarm_set = wake_set;
        }
    });
    let actor = format!("{}{instance}.service", super::ACTOR_PREFIX);
    log_info!("{what}: starting {actor}");
    let result = bus.run_and_wait(Verb::Start, &actor, Some(ACTOR_TIMEOUT));
    if result.is_err() && wake_set.is_some() {
        // The alarm was not set (the RTC refused it, say): the entry must not claim it was.
        record(&store, &timer, |s| s.wake_alarm_set = before);
    }
    result.with_context(|| format!("{what} did not happen: {actor} failed (its journal says why)"))
}

/// The wake time of a power-off now, or `None` (with a log line saying why) when there is none.
fn wake_time(w: &wake::Wake) -> Option<i64> {
    if !wake::rtc_present() {
        log_warn!(
            "no RTC wake alarm ({} is missing): powering off without a wake time",
            wake::WAKEALARM
        );
        return None;
    }
    let at = w.after(now());
    if at.is_none() {
        log_warn!("the wake time of {w:?} has passed or never comes: powering off without one");
    }
    at
}

/// Changes the state entry of `timer` (if it still has one) under the schedules' lock. A
/// failure is logged: the entry is what is listed, never a reason not to act.
fn record(store: &StateStore, timer: &str, change: impl FnOnce(&mut schedule::Stored)) {
    let result = store.lock().and_then(|_guard| {
        store.update(|s| {
            if let Some(entry) = s.schedules.get_mut(timer) {
                change(entry);
            }
        })
    });
    if let Err(e) = result {
        log_warn!("cannot record the state of {timer}: {e:#}");
    }
}

fn now() -> i64 {
    chrono::Local::now().timestamp()
}
