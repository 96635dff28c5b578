//! The one owner of the schedules: what is pending or firing (systemd's timers and gates joined
//! with the state file), and every change, for the API, the idle power-off and the cancel
//! alike, under the state store's lock.

use super::actor;
use super::busy::Policy;
use super::schedule::{self, Conflict, Pending, Phase, ScheduleRequest};
use super::state::{State, StateStore};
use super::wake::Wake;
use crate::http::ApiError;
use crate::systemd::view::{UnitView, ViewUnit};
use crate::systemd::{Prop, Systemd, Verb};
use crate::{log_info, log_warn};
use chrono::{DateTime, Local};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long starting or stopping a timer may take (milliseconds, normally; a firing one waits
/// for its gate to stop).
const TIMER_JOB_TIMEOUT: Duration = Duration::from_secs(10);

/// What a schedule request came to (see [`Schedules::schedule`]).
#[derive(Debug)]
pub enum Outcome {
    /// The timer runs; what is pending for it now.
    Scheduled(Box<Pending>),
    /// Refused by the conflict rules; nothing changed.
    Conflict(Conflict),
}

/// The owner (see the module's comment).
pub struct Schedules {
    store: StateStore,
    systemd: Arc<dyn Systemd>,
    /// Our timers and gates (and, for the service, the experiments), kept current from
    /// systemd's signals where the view watches; a view that does not watch asks `systemd` on
    /// every read. It must cover [`schedule::UNIT_PATTERNS`].
    view: Arc<UnitView>,
    /// The policy when busy of schedules that do not give their own (the configuration's).
    policy: Policy,
    /// Expected wake times of `wake_calendar` schedules, by calendar and power-off time: a read
    /// asks `systemd-analyze` once per schedule and occurrence, not per request.
    wakes: Mutex<HashMap<(String, i64), Option<i64>>>,
}

impl Schedules {
    pub fn new(
        store: StateStore,
        systemd: Arc<dyn Systemd>,
        view: Arc<UnitView>,
        policy: Policy,
    ) -> Schedules {
        Schedules {
            store,
            systemd,
            view,
            policy,
            wakes: Default::default(),
        }
    }

    pub fn store(&self) -> &StateStore {
        &self.store
    }

    pub fn systemd(&self) -> &dyn Systemd {
        &*self.systemd
    }

    pub fn view(&self) -> &UnitView {
        &self.view
    }

    /// When a power-off at `off` (seconds since the epoch) wakes again, per `wake`.
    fn wake_after(&self, wake: &Wake, off: i64) -> Option<i64> {
        let Wake::Calendar(calendar) = wake else {
            return wake.after(off).ok();
        };
        let key = (calendar.clone(), off);
        let mut cache = self.wakes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = cache.get(&key) {
            return *t;
        }
        let t = wake.after(off).ok();
        if cache.len() >= 64 {
            cache.clear();
        }
        cache.insert(key, t);
        t
    }

    /// The lock every read-modify-write of schedules holds (see [`StateStore::lock`]): with it,
    /// concurrent requests, and the idle check in its own process, cannot create two one-off
    /// power actions. Read-only requests write nothing and need no lock.
    fn guard(&self) -> Result<nix::fcntl::Flock<std::fs::File>, ApiError> {
        self.store.lock().map_err(internal)
    }

    /// Every timer and gate of ours systemd has loaded, timers with their next elapse.
    fn units(&self) -> Result<Vec<ViewUnit>, ApiError> {
        Ok(self.view.units(&*self.systemd, schedule::UNIT_PATTERNS)?)
    }

    /// Whether a power action has begun (asked of systemd itself, not of the view: the answer
    /// decides whether a cancel can still stop anything).
    pub fn power_action_begun(&self) -> Result<bool, ApiError> {
        Ok(actor::has_begun(
            &self.systemd.list_units(actor::POWER_PATTERNS)?,
        ))
    }

    /// Pending and firing schedules, firing ones first, then soonest first: systemd's timers
    /// and gates joined with `state`. A schedule whose gate runs is listed from the gate alone,
    /// even without a state entry (a lost state file), so that it can be cancelled.
    /// `down`: whether a power action has begun, when the caller knows already.
    fn join(
        &self,
        units: &[ViewUnit],
        state: &State,
        down: Option<bool>,
    ) -> Result<Vec<Pending>, ApiError> {
        let up = |u: &ViewUnit| {
            matches!(
                u.row.active_state.as_str(),
                "active" | "activating" | "reloading"
            )
        };
        let firing_gates: BTreeSet<String> = units
            .iter()
            .filter(|u| up(u))
            .filter_map(|u| schedule::timer_of(&u.row.name))
            .collect();
        let mut timers: Vec<(String, Option<&ViewUnit>)> = units
            .iter()
            .filter(|u| u.row.name.ends_with(".timer"))
            .map(|u| (u.row.name.clone(), Some(u)))
            .collect();
        for timer in &firing_gates {
            if !timers.iter().any(|(name, _)| name == timer) {
                timers.push((timer.clone(), None));
            }
        }
        // Only asked when something fires: a read of idle schedules costs no extra call.
        let acting = match down {
            Some(down) => down,
            None if !any_firing(units) => false,
            None => self.power_action_begun()?,
        };
        let now = Local::now().timestamp();
        let mut pending = Vec::new();
        for (name, timer) in timers {
            let firing = firing_gates.contains(&name)
                || timer.is_some_and(|t| {
                    t.row.active_state == "active" && t.row.sub_state == "running"
                });
            if !firing
                && !timer
                    .is_some_and(|t| t.row.active_state == "active" && t.row.sub_state == "waiting")
            {
                continue;
            }
            let Some((calendar, action)) = schedule::parse_unit(&name) else {
                continue;
            };
            // A recurring timer's next elapse not known yet (it has just appeared): asked;
            // none (it went away between the listing and the read): it is not pending.
            let next = schedule::one_off_usec(&calendar)
                .or(timer.and_then(|t| t.next_elapse_usec))
                .or_else(|| {
                    self.systemd
                        .state(&name, &[Prop::NextElapseUSecRealtime])
                        .ok()?
                        .next_elapse_usec_realtime
                        .filter(|t| *t != 0)
                });
            let next = match next {
                Some(next) => next,
                // A firing recurring schedule whose timer does not elapse again: it fires now.
                None if firing => now as u64 * 1_000_000,
                None => continue,
            };
            let stored = state.schedules.get(&name).cloned();
            let waiting = stored
                .as_ref()
                .and_then(|s| s.waiting.clone())
                .filter(|_| firing);
            let phase = match (firing, acting, &waiting) {
                (false, _, _) => Phase::Pending,
                (true, true, _) => Phase::Acting,
                (true, false, Some(_)) => Phase::Waiting,
                (true, false, None) => Phase::Deciding,
            };
            let policy = stored.as_ref().map_or(self.policy, |s| {
                Policy::resolve(s.when_busy, s.max_wait_minutes, self.policy)
            });
            // The power-off comes at the next elapse, or, once fired, at the earliest now.
            let off = if firing {
                now
            } else {
                (next / 1_000_000) as i64
            };
            let wake_at = stored
                .as_ref()
                .and_then(|s| s.wake.as_ref())
                .and_then(|w| self.wake_after(w, off));
            pending.push(Pending {
                unit: name,
                calendar,
                action,
                next_elapse_usec: next,
                stored,
                policy,
                phase,
                waiting,
                wake_at,
            });
        }
        pending.sort_by_key(|p| (!p.phase.is_firing(), p.next_elapse_usec));
        Ok(pending)
    }

    /// Pending schedules for a read-only request: reads the state file, writes nothing.
    pub fn pending(&self) -> Result<Vec<Pending>, ApiError> {
        let units = self.units()?;
        self.join(&units, &self.store.peek(), None)
    }

    /// Pending schedules for a mutating request (call with the lock held), and whether a power
    /// action has begun: state entries whose timer systemd no longer has, or has inactive
    /// (stopped behind our back, or elapsed and done), and whose gate does not run, are
    /// dropped. A timer that is firing or elapsed keeps its entry, and while the machine goes
    /// down (which stops every timer) nothing is dropped: the restore starts them again. Whether
    /// it goes down is asked of systemd only when something fires or an entry would be dropped,
    /// so a request that changes one pending timer costs no extra read.
    fn pending_pruned(&self) -> Result<(Vec<Pending>, bool), ApiError> {
        let units = self.units()?;
        let stale = self
            .store
            .load()
            .schedules
            .keys()
            .any(|unit| !keeps_entry(&units, unit));
        let down = (stale || any_firing(&units)) && self.power_action_begun()?;
        let state = if down {
            self.store.load()
        } else {
            self.store
                .update(|s| s.schedules.retain(|unit, _| keeps_entry(&units, unit)))
                .map_err(internal)?
        };
        Ok((self.join(&units, &state, Some(down))?, down))
    }

    /// Schedules a power action: the one function that does, for the API and the idle
    /// power-off alike. Under the lock it applies the conflict rules ([`schedule::plan`]),
    /// records the state entry, starts the timer (forgetting the entry again if systemd
    /// refuses), and stops the one-off timers it replaces.
    pub fn schedule(
        &self,
        request: &ScheduleRequest,
        now: DateTime<Local>,
    ) -> Result<Outcome, ApiError> {
        let _guard = self.guard()?;
        let (pending, down) = self.pending_pruned()?;
        if down {
            return Err(ApiError::new(
                409,
                "already powering off: the machine is going down; schedule again once it is back",
            ));
        }
        let start = match schedule::plan(request, &pending, now) {
            Ok(start) => start,
            Err(conflict) => return Ok(Outcome::Conflict(conflict)),
        };
        let unit = start.unit;
        // Record first, so that a listing right after the start shows the creation time.
        self.store
            .update(|s| {
                s.schedules.insert(unit.clone(), start.stored);
            })
            .map_err(internal)?;
        if let Err(e) = self
            .systemd
            .run_and_wait(Verb::Start, &unit, Some(TIMER_JOB_TIMEOUT))
        {
            let _ = self.store.update(|s| {
                s.schedules.remove(&unit);
            });
            return Err(e.into());
        }
        self.view.sync();
        for old in &start.replaced {
            self.stop(old)?;
        }
        let created = self
            .pending()?
            .into_iter()
            .find(|p| p.unit == unit)
            .ok_or_else(|| {
                ApiError::new(
                    502,
                    format!(
                        "systemd started {unit} but it has no future elapse: check its calendar"
                    ),
                )
            })?;
        log_info!(
            "scheduled {} at {} ({unit})",
            request.action.as_str(),
            created.calendar
        );
        Ok(Outcome::Scheduled(Box::new(created)))
    }

    /// Stops a timer (and with it, `PartOf=`, its gate: the stop job ends once the gate has
    /// stopped, as a timer is ordered before its service) and forgets it. Call with the lock
    /// held.
    fn stop(&self, unit: &str) -> Result<(), ApiError> {
        self.systemd
            .run_and_wait(Verb::Stop, unit, Some(TIMER_JOB_TIMEOUT))?;
        self.view.sync();
        self.store
            .update(|s| {
                s.schedules.remove(unit);
            })
            .map_err(internal)?;
        log_info!("cancelled {unit}");
        Ok(())
    }

    /// After `cancelled` was cancelled: a wake alarm it set that is still ahead is cleared, by
    /// root (`homelab-power-action@clear-wake-EPOCH.service`, which leaves any other alarm
    /// alone). `None` when it set none; else whether the clearing ran.
    pub fn clear_wake(&self, cancelled: &Pending, now: DateTime<Local>) -> Option<bool> {
        let at = cancelled.stored.as_ref()?.wake_alarm_set?;
        if at <= now.timestamp() {
            return None;
        }
        let unit = actor::unit(&actor::clear_wake_instance(at));
        match self
            .systemd
            .run_and_wait(Verb::Start, &unit, Some(TIMER_JOB_TIMEOUT))
        {
            Ok(()) => Some(true),
            Err(e) => {
                log_warn!(
                    "could not clear the wake alarm {at} that {} set: {e}",
                    cancelled.unit
                );
                Some(false)
            }
        }
    }

    /// Cancels the schedule with id `which`, or the one due first (a firing one before any
    /// other); returns it. A firing schedule's gate is stopped with its timer while it can
    /// be. Once a power action has begun (before or during the stop) the answer is 409 and
    /// nothing changes: no other schedule is taken instead, and every entry stays for the
    /// restore.
    pub fn cancel(&self, which: Option<&str>) -> Result<Pending, ApiError> {
        let _guard = self.guard()?;
        let (pending, down) = self.pending_pruned()?;
        if down {
            let asked = match which {
                None => pending.first(),
                Some(id) => pending.iter().find(|p| p.id() == id),
            };
            return Err(powering_off(asked, Local::now()));
        }
        let target = match which {
            None => pending
                .first()
                .ok_or_else(|| ApiError::not_found("No shutdown scheduled"))?,
            Some(id) => pending.iter().find(|p| p.id() == id).ok_or_else(|| {
                ApiError::not_found(format!(
                    "no pending schedule has id {id}: GET /shutdown/schedules lists them"
                ))
            })?,
        };
        let now = Local::now();
        self.stop(&target.unit)?;
        if target.phase.is_firing() && self.power_action_begun()? {
            // The gate started the power action just before it was stopped.
            let mut late = target.clone();
            late.phase = Phase::Acting;
            return Err(powering_off(Some(&late), now));
        }
        Ok(target.clone())
    }
}

/// The 409 answer to a cancel once a power action has begun, with the schedule asked for.
fn powering_off(target: Option<&Pending>, now: DateTime<Local>) -> ApiError {
    let Some(target) = target else {
        log_warn!("cannot cancel: a power action has begun");
        return ApiError::new(
            409,
            "already powering off: a power action has begun and can no longer be cancelled",
        );
    };
    log_warn!("cannot cancel {}: a power action has begun", target.unit);
    let whose = if target.phase == Phase::Acting {
        format!("the {} of this schedule", target.action.as_str())
    } else {
        "a power action".to_string()
    };
    ApiError::new(
        409,
        format!(
            "already powering off: {whose} has begun and can no longer be cancelled; the schedule stays as it is"
        ),
    )
    .with_extra("schedule", target.entry(now))
}

/// Whether a schedule's gate runs, or its timer says its unit runs.
fn any_firing(units: &[ViewUnit]) -> bool {
    units.iter().any(|u| {
        let up = matches!(
            u.row.active_state.as_str(),
            "active" | "activating" | "reloading"
        );
        (up && schedule::timer_of(&u.row.name).is_some())
            || (u.row.name.ends_with(".timer") && u.row.sub_state == "running")
    })
}

/// Whether the state entry of `unit` stays: systemd still has its timer, and not inactive, or
/// its gate runs.
fn keeps_entry(units: &[ViewUnit], unit: &str) -> bool {
    let gate = schedule::gate_of(unit);
    units.iter().any(|u| {
        (u.row.name == unit && u.row.active_state != "inactive" && u.row.active_state != "failed")
            || (Some(&u.row.name) == gate.as_ref()
                && matches!(u.row.active_state.as_str(), "active" | "activating"))
    })
}

pub(crate) fn internal(e: anyhow::Error) -> ApiError {
    crate::log_err!("{e:#}");
    ApiError::new(500, format!("{e:#}"))
}
