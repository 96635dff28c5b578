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
    fn wake_time(&self, w: &Wake) -> anyhow::Result<i64> {
        if !self.rtc.present() {
            anyhow::bail!(
                "this machine has no RTC wake alarm ({} is missing)",
                super::rtc::WAKEALARM
            );
        }
        Ok(w.after(self.clock.now())?)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shutdown::busy::WhenBusy;
    use crate::shutdown::schedule::Action;
    use crate::systemd::fake::{FakeSystemd, Refusal};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};

    const FIRED: i64 = 1_795_000_000;

    /// A clock whose sleeps pass at once (moving its time on), calling `on_sleep` with the
    /// number of the sleep.
    struct TestClock {
        now: AtomicI64,
        sleeps: AtomicU32,
        on_sleep: Box<dyn Fn(u32) + Send + Sync>,
    }

    impl TestClock {
        fn new(on_sleep: impl Fn(u32) + Send + Sync + 'static) -> TestClock {
            TestClock {
                now: AtomicI64::new(FIRED),
                sleeps: AtomicU32::new(0),
                on_sleep: Box::new(on_sleep),
            }
        }
    }

    impl Clock for TestClock {
        fn now(&self) -> i64 {
            self.now.load(Ordering::SeqCst)
        }
        fn sleep(&self, d: Duration) {
            self.now.fetch_add(d.as_secs() as i64, Ordering::SeqCst);
            let n = self.sleeps.fetch_add(1, Ordering::SeqCst) + 1;
            (self.on_sleep)(n);
        }
    }

    /// An RTC that is there, holding `alarm`.
    struct TestRtc {
        present: bool,
        alarm: Mutex<Option<i64>>,
    }

    impl Rtc for TestRtc {
        fn present(&self) -> bool {
            self.present
        }
        fn alarm(&self) -> Option<i64> {
            *self.alarm.lock().unwrap()
        }
    }

    fn rtc(present: bool, alarm: Option<i64>) -> TestRtc {
        TestRtc {
            present,
            alarm: Mutex::new(alarm),
        }
    }

    fn backup() -> Inhibitor {
        Inhibitor {
            what: "shutdown".into(),
            who: "backup".into(),
            why: "nightly".into(),
            mode: "block".into(),
            uid: 0,
            pid: 42,
        }
    }

    /// A one-off power-off schedule's timer and gate, with `stored` as its entry in `store`.
    fn one_off(store: &StateStore, stored: Stored) -> (String, String) {
        let calendar = format!("@{FIRED}");
        let timer = schedule::timer_unit(&calendar, Action::Poweroff).unwrap();
        store
            .update(|s| {
                s.schedules
                    .insert(timer.clone(), Stored { calendar, ..stored });
            })
            .unwrap();
        let gate = schedule::gate_of(&timer).unwrap();
        (timer, gate)
    }

    fn policy(when_busy: WhenBusy, max_wait_minutes: Option<u64>) -> Stored {
        Stored {
            when_busy: Some(when_busy),
            max_wait_minutes,
            ..Stored::default()
        }
    }

    fn started_actions(fake: &FakeSystemd) -> Vec<String> {
        fake.calls()
            .into_iter()
            .filter(|c| c.starts_with("start homelab-power-action@"))
            .collect()
    }

    #[test]
    fn wait_holds_the_power_off_until_the_machine_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(Some(dir.path()));
        let (timer, gate_unit) = one_off(&store, policy(WhenBusy::Wait, Some(30)));
        let fake = std::sync::Arc::new(FakeSystemd::new());
        fake.set_foreign_blockers(vec![backup()]);
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let clock = {
            let (fake, seen, dir) = (fake.clone(), seen.clone(), dir.path().to_path_buf());
            TestClock::new(move |n| {
                // What is listed while it waits, and no power action meanwhile.
                let entry = StateStore::new(Some(&dir))
                    .peek()
                    .schedules
                    .values()
                    .next()
                    .cloned();
                seen.lock()
                    .unwrap()
                    .push((entry.and_then(|e| e.waiting), started_actions(&fake).len()));
                if n == 3 {
                    fake.set_foreign_blockers(Vec::new());
                }
            })
        };
        let rtc = rtc(false, None);
        let gate = Gate {
            systemd: &*fake,
            store: &store,
            policy: Policy::default(),
            clock: &clock,
            rtc: &rtc,
        };
        assert_eq!(
            gate.fire(&gate_unit).unwrap(),
            Fired::Acted("poweroff".into())
        );
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen.len(),
            3,
            "it looked again every poll until the backup ended"
        );
        for (waiting, actions) in seen.iter() {
            let w = waiting.as_ref().expect("the wait is recorded");
            assert_eq!((w.since, w.until), (FIRED, FIRED + 30 * 60));
            assert_eq!(w.busy, [backup()]);
            assert_eq!(*actions, 0);
        }
        assert_eq!(
            started_actions(&fake),
            ["start homelab-power-action@poweroff.service"]
        );
        assert_eq!(
            fake.active_state("homelab-power-action@poweroff.service")
                .as_deref(),
            Some("active")
        );
        // The wait is over in the entry.
        assert_eq!(store.load().schedules[&timer].waiting, None);
    }

    #[test]
    fn the_maximum_wait_reached_it_proceeds() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(Some(dir.path()));
        let (_, gate_unit) = one_off(&store, policy(WhenBusy::Wait, Some(1)));
        let fake = FakeSystemd::new();
        fake.set_foreign_blockers(vec![backup()]);
        let clock = TestClock::new(|_| {});
        let rtc = rtc(false, None);
        let gate = Gate {
            systemd: &fake,
            store: &store,
            policy: Policy::default(),
            clock: &clock,
            rtc: &rtc,
        };
        assert_eq!(
            gate.fire(&gate_unit).unwrap(),
            Fired::Acted("poweroff".into())
        );
        // A minute of 2-second polls, then it acts although still busy.
        assert_eq!(clock.sleeps.load(Ordering::SeqCst), 30);
        assert_eq!(clock.now(), FIRED + 60);
        assert_eq!(started_actions(&fake).len(), 1);
    }

    #[test]
    fn skip_and_proceed_on_a_busy_machine() {
        for (when_busy, acted) in [(WhenBusy::Skip, false), (WhenBusy::Proceed, true)] {
            let dir = tempfile::tempdir().unwrap();
            let store = StateStore::new(Some(dir.path()));
            let (_, gate_unit) = one_off(&store, policy(when_busy, None));
            let fake = FakeSystemd::new();
            fake.set_foreign_blockers(vec![backup()]);
            let clock = TestClock::new(|_| panic!("a skip or a proceed never waits"));
            let rtc = rtc(false, None);
            let gate = Gate {
                systemd: &fake,
                store: &store,
                policy: Policy::default(),
                clock: &clock,
                rtc: &rtc,
            };
            let fired = gate.fire(&gate_unit).unwrap();
            assert_eq!(
                fired,
                if acted {
                    Fired::Acted("poweroff".into())
                } else {
                    Fired::Skipped
                },
                "{when_busy:?}"
            );
            assert_eq!(
                started_actions(&fake).len(),
                usize::from(acted),
                "{when_busy:?}"
            );
            assert!(fake.calls().contains(&"blockers ".to_string()));
        }
    }

    #[test]
    fn the_default_policy_applies_to_a_schedule_without_an_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(Some(dir.path()));
        let timer = schedule::timer_unit("Mon 04:00", Action::Reboot).unwrap();
        let fake = FakeSystemd::new();
        fake.set_foreign_blockers(vec![backup()]);
        let clock = TestClock::new(|_| {});
        let rtc = rtc(false, None);
        let gate = Gate {
            systemd: &fake,
            store: &store,
            policy: Policy {
                when_busy: WhenBusy::Skip,
                max_wait_minutes: 1,
            },
            clock: &clock,
            rtc: &rtc,
        };
        let gate_unit = schedule::gate_of(&timer).unwrap();
        assert_eq!(gate.fire(&gate_unit).unwrap(), Fired::Skipped);
        fake.set_foreign_blockers(Vec::new());
        assert_eq!(
            gate.fire(&gate_unit).unwrap(),
            Fired::Acted("reboot".into())
        );
        assert_eq!(
            started_actions(&fake),
            ["start homelab-power-action@reboot.service"]
        );
        assert!(gate.fire("sshd.service").is_err());
    }

    #[test]
    fn a_wake_time_arms_the_alarm_through_the_instance_and_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(Some(dir.path()));
        let (timer, gate_unit) = one_off(
            &store,
            Stored {
                wake: Some(Wake::AfterMinutes(60)),
                ..Stored::default()
            },
        );
        let fake = FakeSystemd::new();
        let clock = TestClock::new(|_| {});
        let rtc = rtc(true, None);
        let gate = Gate {
            systemd: &fake,
            store: &store,
            policy: Policy::default(),
            clock: &clock,
            rtc: &rtc,
        };
        let at = FIRED + 3600;
        assert_eq!(
            gate.fire(&gate_unit).unwrap(),
            Fired::Acted(format!("poweroff-wake-{at}"))
        );
        assert_eq!(
            started_actions(&fake),
            [format!(
                "start homelab-power-action@poweroff-wake-{at}.service"
            )]
        );
        assert_eq!(store.load().schedules[&timer].wake_alarm_set, Some(at));
    }

    #[test]
    fn a_failed_power_off_keeps_the_record_of_an_alarm_the_rtc_holds() {
        let at = FIRED + 3600;
        // The RTC holds the alarm (root armed it, then the power-off failed), or not (root
        // could not arm it).
        for (held, recorded) in [
            (Some(at), Some(at)),
            (None, Some(1_000)),
            (Some(7), Some(1_000)),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let store = StateStore::new(Some(dir.path()));
            let (timer, gate_unit) = one_off(
                &store,
                Stored {
                    wake: Some(Wake::AfterMinutes(60)),
                    // What an earlier occurrence recorded.
                    wake_alarm_set: Some(1_000),
                    ..Stored::default()
                },
            );
            let fake = FakeSystemd::new();
            fake.refuse("start", "homelab-power-action@*", Refusal::JobFailed);
            let clock = TestClock::new(|_| {});
            let rtc = rtc(true, held);
            let gate = Gate {
                systemd: &fake,
                store: &store,
                policy: Policy::default(),
                clock: &clock,
                rtc: &rtc,
            };
            let e = gate.fire(&gate_unit).unwrap_err();
            assert!(format!("{e:#}").contains("did not happen"), "{e:#}");
            assert_eq!(
                store.load().schedules[&timer].wake_alarm_set,
                recorded,
                "{held:?}"
            );
        }
    }

    #[test]
    fn no_wake_time_no_power_off() {
        // No RTC at fire time, a wake_at that passed while it waited, a calendar that never
        // elapses again: the machine stays up, and the gate says why.
        for (rtc_present, wake, says) in [
            (false, Wake::AfterMinutes(60), "no RTC wake alarm"),
            (true, Wake::At(FIRED - 1), "not after the power-off"),
            (true, Wake::Calendar("2001-01-01".into()), "never elapses"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let store = StateStore::new(Some(dir.path()));
            let (timer, gate_unit) = one_off(
                &store,
                Stored {
                    wake: Some(wake.clone()),
                    ..Stored::default()
                },
            );
            let fake = FakeSystemd::new();
            let clock = TestClock::new(|_| {});
            let rtc = rtc(rtc_present, None);
            let gate = Gate {
                systemd: &fake,
                store: &store,
                policy: Policy::default(),
                clock: &clock,
                rtc: &rtc,
            };
            match gate.fire(&gate_unit).unwrap() {
                Fired::NoWake(why) => {
                    assert!(why.contains(says), "{wake:?}: {why}");
                    assert!(why.contains("is not done"), "{why}");
                }
                other => panic!("{wake:?}: {other:?}"),
            }
            assert!(started_actions(&fake).is_empty(), "{wake:?}");
            // The schedule stays as it was.
            assert_eq!(store.load().schedules[&timer].wake, Some(wake));
            assert_eq!(store.load().schedules[&timer].wake_alarm_set, None);
        }
    }
}
