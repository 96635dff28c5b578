//! A schedule whose time has come (`shutdown-service --fire UNIT`, run as abc by
//! `homelab-shutdown@.service` or `homelab-reboot@.service` when its timer elapses): applies the
//! schedule's policy when the machine is busy, then has root act through
//! `homelab-power-action@INSTANCE.service`, whose instance is all root is told (the action, and
//! for a power-off the wake time as a number). Stopping the timer (cancelling the schedule)
//! stops this unit too (`PartOf=`), which ends a wait with no power action.

use super::actor;
use super::busy::{self, Decision, Policy, Waiting};
use super::config::Config;
use super::machine::{Clock, Rtc, SystemClock, SystemRtc};
use super::schedule::{self, Action, Stored};
use super::state::StateStore;
use super::wake::Wake;
use crate::systemd::{Inhibitor, Systemd, Verb};
use crate::{log_err, log_info, log_notice, log_warn};
use anyhow::Context;
use std::time::Duration;

/// How long root's power action may take to start (logind answers at once).
const ACTOR_TIMEOUT: Duration = Duration::from_secs(60);

/// What a gate works with: systemd, the state file, the configuration's policy, the clock and
/// the RTC (the machine's in [`run`], a test's own in tests).
pub struct Gate<'a> {
    pub systemd: &'a dyn Systemd,
    pub store: &'a StateStore,
    /// The policy when busy of a schedule that gives none.
    pub policy: Policy,
    pub clock: &'a dyn Clock,
    pub rtc: &'a dyn Rtc,
}

/// What the gate did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fired {
    /// Root's power action ran, with this instance.
    Acted(String),
    /// Busy, and the policy is `skip`.
    Skipped,
    /// The schedule asks for a wake time and none can be had: no power-off (why).
    NoWake(String),
}

/// Runs the gate of `gate_unit` (`homelab-shutdown@X.service` or `homelab-reboot@X.service`)
/// on this machine. A power-off held back for want of a wake time ends the unit failed.
pub fn run(gate_unit: &str, systemd: &dyn Systemd) -> anyhow::Result<()> {
    let config = Config::load().unwrap_or_else(|e| {
        log_warn!("{e:#}: using the default policy when busy");
        Config::default()
    });
    let store = StateStore::new(None);
    let gate = Gate {
        systemd,
        store: &store,
        policy: config.policy,
        clock: &SystemClock,
        rtc: &SystemRtc,
    };
    match gate.fire(gate_unit)? {
        Fired::NoWake(why) => Err(anyhow::anyhow!("{why}")),
        Fired::Acted(_) | Fired::Skipped => Ok(()),
    }
}

impl Gate<'_> {
    /// The gate of `gate_unit`: decides, waits while its policy says so, and acts.
    pub fn fire(&self, gate_unit: &str) -> anyhow::Result<Fired> {
        let timer = schedule::timer_of(gate_unit)
            .with_context(|| format!("{gate_unit:?} is not the service of a schedule's timer"))?;
        let (_, action) = schedule::parse_unit(&timer).context("checked above")?;
        // A schedule without an entry (its state file was lost) still acts, with the defaults.
        let stored = self.store.peek().schedules.get(&timer).cloned();
        let policy = stored.as_ref().map_or(self.policy, |s| {
            Policy::resolve(s.when_busy, s.max_wait_minutes, self.policy)
        });
        let what = format!("the {} of {timer}", action.as_str());
        if !self.wait_while_busy(&timer, &what, policy)? {
            return Ok(Fired::Skipped);
        }
        let wake_set = match (action, stored.as_ref().and_then(|s| s.wake.as_ref())) {
            (Action::Reboot, _) | (Action::Poweroff, None) => None,
            (Action::Poweroff, Some(w)) => match self.wake_time(w) {
                Ok(at) => {
                    log_info!(
                        "{what}: the machine wakes again at {}",
                        crate::time::epoch_rfc3339(at)
                    );
                    Some(at)
                }
                Err(why) => {
                    // A machine that is to come back is not powered off when it cannot.
                    let why = format!(
                        "{what} is not done: {why}, and the schedule asks the machine to wake again; a recurring schedule fires again at its next elapse"
                    );
                    log_err!("{why}");
                    record(self.store, &timer, |s| s.waiting = None);
                    return Ok(Fired::NoWake(why));
                }
            },
        };
        let instance = match action {
            Action::Reboot => "reboot".to_string(),
            Action::Poweroff => actor::power_off_instance(wake_set),
        };
        // Recorded before the action: once it succeeds the machine goes down, this unit with it.
        let before = stored.as_ref().and_then(|s| s.wake_alarm_set);
        record(self.store, &timer, |s| {
            s.waiting = None;
            if wake_set.is_some() {
                s.wake_alarm_set = wake_set;
            }
        });
        let unit = actor::unit(&instance);
        log_info!("{what}: starting {unit}");
        let result = self
            .systemd
            .run_and_wait(Verb::Start, &unit, Some(ACTOR_TIMEOUT));
        if let (Err(_), Some(at)) = (&result, wake_set) {
            // The power-off failed. An alarm the RTC holds stays recorded, so that a cancel
            // can still have root clear it; one it does not hold (the RTC refused it) is not
            // claimed.
            if self.rtc.alarm() == Some(at) {
                log_warn!(
                    "{what} failed after the wake alarm {} was set: it stays recorded, so that cancelling the schedule clears it",
                    crate::time::epoch_rfc3339(at)
                );
            } else {
                record(self.store, &timer, |s| s.wake_alarm_set = before);
            }
        }
        result.with_context(|| {
            format!("{what} did not happen: {unit} failed (its journal says why)")
        })?;
        Ok(Fired::Acted(instance))
    }

    /// Applies `policy` while the machine is busy: returns once it is idle, or busy and the
    /// policy (or the maximum wait) says act (true), or busy and it says skip (false). A wait is
    /// recorded in the schedule's entry, to be listed.
    fn wait_while_busy(&self, timer: &str, what: &str, policy: Policy) -> anyhow::Result<bool> {
        let fired = self.clock.now();
        let mut recorded: Option<Vec<Inhibitor>> = None;
        loop {
            let busy = self.systemd.shutdown_blockers().unwrap_or_else(|e| {
                log_warn!("cannot list logind's inhibitors ({e}): taking the machine as idle");
                Vec::new()
            });
            let waited = u64::try_from(self.clock.now() - fired).unwrap_or(0);
            match busy::decide(policy, !busy.is_empty(), waited) {
                Decision::Act => return Ok(true),
                Decision::Proceed => {
                    log_warn!(
                        "{what}: the machine is busy ({}); proceeding, as its policy is \"proceed\": running units get their normal stop",
                        busy::holders(&busy)
                    );
                    return Ok(true);
                }
                Decision::WaitedLongEnough => {
                    log_warn!(
                        "{what}: waited the maximum of {} minutes and the machine is still busy ({}); proceeding",
                        policy.max_wait_minutes,
                        busy::holders(&busy)
                    );
                    return Ok(true);
                }
                Decision::Skip => {
                    log_notice!(
                        "skipping {what} this time: the machine is busy ({}) and its policy is \"skip\"",
                        busy::holders(&busy)
                    );
                    return Ok(false);
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
                        record(self.store, timer, |s| s.waiting = Some(waiting.clone()));
                        recorded = Some(busy);
                    }
                    self.clock.sleep(Duration::from_secs(busy::POLL_SECONDS));
                }
            }
        }
    }

    /// The wake time of a power-off now, or why there is none.
    fn wake_time(&self, w: &Wake) -> Result<i64, String> {
        if !self.rtc.present() {
            return Err(format!(
                "this machine has no RTC wake alarm ({} is missing)",
                super::wake::WAKEALARM
            ));
        }
        w.after(self.clock.now()).map_err(|e| e.to_string())
    }
}

/// Changes the state entry of `timer` (if it still has one) under the schedules' lock. A
/// failure is logged: the entry is what is listed, never a reason not to act.
fn record(store: &StateStore, timer: &str, change: impl FnOnce(&mut Stored)) {
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
