//! The shutdown service (port 5001): scheduled shutdowns as systemd timers.
//!
//! `POST /shutdown/schedule` starts `homelab-shutdown@<calendar>.timer` (power off) or
//! `homelab-reboot@<calendar>.timer` (polkit lets user `abc` start and stop exactly those); the
//! timer triggers its gate (`homelab-shutdown@.service`, `homelab-reboot@.service`; `fire.rs`),
//! which applies the schedule's policy when busy and has root act (`homelab-power-action@`).
//! What is pending is what systemd has, joined with the state file. Read-only requests write
//! nothing; mutating ones (and the boot-time restore) drop entries whose timer is gone.

pub mod busy;
pub mod config;
pub mod fire;
pub mod metrics;
pub mod rtc;
pub mod schedule;
pub mod state;
pub mod system;
pub mod wake;

use crate::experiment::config::{TEMPLATE_PATTERN, TRANSIENT_PATTERN};
use crate::http::auth::Auth;
use crate::http::{self, ApiError, Method, Request, Response, Service};
use crate::systemd::dbus::{Bus, Prop, Systemd, Verb};
use crate::systemd::view::{UnitView, ViewUnit};
use crate::{log_info, log_warn};
use busy::Policy;
use chrono::{DateTime, Local};
use config::Config;
use schedule::{Conflict, Kind, Pending, ScheduleRequest};
use serde_json::{Value, json};
use state::{State, StateStore};
use std::sync::Arc;
use std::time::Duration;
use wake::Wake;

pub const SERVICE_NAME: &str = "Shutdown Service";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Route {
    Index,
    Health,
    Schedule,
    Next,
    Status,
    Cancel,
    System,
    Schedules,
    DeleteSchedule,
    Metrics,
}

const ROUTES: &[(Method, &str, Route)] = &[
    (Method::Get, "/", Route::Index),
    (Method::Get, "/health", Route::Health),
    (Method::Post, "/shutdown/schedule", Route::Schedule),
    (Method::Get, "/shutdown/next", Route::Next),
    (Method::Get, "/shutdown/status", Route::Status),
    (Method::Post, "/shutdown/cancel", Route::Cancel),
    (Method::Get, "/shutdown/system", Route::System),
    (Method::Get, "/shutdown/schedules", Route::Schedules),
    (
        Method::Delete,
        "/shutdown/schedules/{}",
        Route::DeleteSchedule,
    ),
    (Method::Get, "/metrics", Route::Metrics),
];

pub struct ShutdownService {
    config: Config,
    auth: Auth,
    schedules: Schedules,
}

/// Every unit the service reads: its timers, and the experiments a shutdown would stop.
pub const VIEW_PATTERNS: &[&str] = &[
    "homelab-shutdown@*.timer",
    "homelab-reboot@*.timer",
    TEMPLATE_PATTERN,
    TRANSIENT_PATTERN,
];

/// The root-owned unit that acts for a schedule: `poweroff`, `reboot`, `poweroff-wake-EPOCH`,
/// `clear-wake-EPOCH` (see `homelab-power-action`).
pub const ACTOR_PREFIX: &str = "homelab-power-action@";

/// How long starting or stopping a timer may take (milliseconds, normally).
const TIMER_JOB_TIMEOUT: Duration = Duration::from_secs(10);

impl ShutdownService {
    /// The service over `systemd`, reading through `view` (a view that is not watching asks
    /// `systemd` on every read).
    pub fn new(
        config: Config,
        auth: Auth,
        store: StateStore,
        systemd: Arc<dyn Systemd>,
        view: Arc<UnitView>,
    ) -> ShutdownService {
        ShutdownService {
            auth,
            schedules: Schedules::new(store, systemd, view, config.policy),
            config,
        }
    }
}

/// What a schedule request came to (see [`Schedules::schedule`]).
#[derive(Debug)]
pub enum Outcome {
    /// The timer runs; what is pending for it now.
    Scheduled(Box<Pending>),
    /// Refused by the conflict rules; nothing changed.
    Conflict(Conflict),
}

/// The one owner of the schedules: every change (the API's, the idle power-off's, the
/// boot-time restore's) goes through here, under the state store's lock.
pub struct Schedules {
    store: StateStore,
    systemd: Arc<dyn Systemd>,
    /// Our timers (and, for the service, the experiments), kept current from systemd's signals
    /// where the view watches; a view that does not watch asks `systemd` on every read.
    view: Arc<UnitView>,
    /// The policy when busy of schedules that do not give their own (the configuration's).
    policy: Policy,
    /// Expected wake times of `wake_calendar` schedules, by calendar and power-off time: a read
    /// asks `systemd-analyze` once per schedule and occurrence, not per request.
    wakes: std::sync::Mutex<std::collections::HashMap<(String, i64), Option<i64>>>,
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

    /// When a power-off at `off` (seconds since the epoch) wakes again, per `wake`.
    fn wake_after(&self, wake: &Wake, off: i64) -> Option<i64> {
        if !matches!(wake, Wake::Calendar(_)) {
            return wake.after(off);
        }
        let Wake::Calendar(calendar) = wake else {
            return None;
        };
        let key = (calendar.clone(), off);
        let mut cache = self.wakes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = cache.get(&key) {
            return *t;
        }
        let t = wake.after(off);
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

    /// Every timer of ours systemd has loaded, with its next elapse.
    fn timers(&self) -> Result<Vec<ViewUnit>, ApiError> {
        Ok(self.view.units(&*self.systemd, schedule::TIMER_PATTERNS)?)
    }

    /// Pending schedules, soonest first: systemd's waiting timers joined with `state`.
    fn join(&self, timers: &[ViewUnit], state: &State) -> Result<Vec<Pending>, ApiError> {
        let mut pending = Vec::new();
        let now = Local::now().timestamp();
        for t in timers {
            // A timer whose unit runs (`running`) has fired: listed while its gate waits.
            let firing = t.row.sub_state == "running";
            if t.row.active_state != "active" || !(t.row.sub_state == "waiting" || firing) {
                continue;
            }
            let Some((calendar, action)) = schedule::parse_unit(&t.row.name) else {
                continue;
            };
            // A recurring timer's next elapse not known yet (it has just appeared): asked;
            // none (it went away between the listing and the read): it is not pending.
            let next = schedule::one_off_usec(&calendar)
                .or(t.next_elapse_usec)
                .or_else(|| {
                    self.systemd
                        .state(&t.row.name, &[Prop::NextElapseUSecRealtime])
                        .ok()?
                        .next_elapse_usec_realtime
                });
            let Some(next) = next else {
                continue;
            };
            let stored = state.schedules.get(&t.row.name).cloned();
            let waiting = stored
                .as_ref()
                .and_then(|s| s.waiting.clone())
                .filter(|_| firing);
            if firing && waiting.is_none() {
                // Deciding, or acting: no longer pending.
                continue;
            }
            let policy = stored.as_ref().map_or(self.policy, |s| {
                Policy::resolve(s.when_busy, s.max_wait_minutes, self.policy)
            });
            // The power-off comes at the next elapse, or, while waiting, at the earliest now.
            let off = if waiting.is_some() {
                now
            } else {
                (next / 1_000_000) as i64
            };
            let wake_at = stored
                .as_ref()
                .and_then(|s| s.wake.as_ref())
                .and_then(|w| self.wake_after(w, off));
            pending.push(Pending {
                unit: t.row.name.clone(),
                calendar,
                action,
                next_elapse_usec: next,
                stored,
                policy,
                waiting,
                wake_at,
            });
        }
        pending.sort_by_key(|p| p.next_elapse_usec);
        Ok(pending)
    }

    /// Pending schedules for a read-only request: reads the state file, writes nothing.
    fn pending(&self) -> Result<Vec<Pending>, ApiError> {
        let timers = self.timers()?;
        self.join(&timers, &self.store.peek())
    }

    /// Pending schedules for a mutating request (call with the lock held): state entries whose
    /// timer systemd no longer has, or has inactive (stopped behind our back, or elapsed and
    /// done), are dropped. A timer that is firing (`running`) or elapsed keeps its entry.
    fn pending_pruned(&self) -> Result<Vec<Pending>, ApiError> {
        let timers = self.timers()?;
        let state = self
            .store
            .update(|s| s.schedules.retain(|unit, _| keeps_entry(&timers, unit)))
            .map_err(internal)?;
        self.join(&timers, &state)
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
        let pending = self.pending_pruned()?;
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

    /// Stops a timer and forgets it. Call with the lock held.
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
    fn clear_wake(&self, cancelled: &Pending, now: DateTime<Local>) -> Option<bool> {
        let at = cancelled.stored.as_ref()?.wake_alarm_set?;
        if at <= now.timestamp() {
            return None;
        }
        let unit = format!("{}clear-wake-{at}.service", ACTOR_PREFIX);
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

    /// Cancels the schedule with id `which`, or the next one due; returns it.
    fn cancel(&self, which: Option<&str>) -> Result<Pending, ApiError> {
        let _guard = self.guard()?;
        let pending = self.pending_pruned()?;
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
        self.stop(&target.unit)?;
        Ok(target.clone())
    }
}

impl ShutdownService {
    fn pending(&self) -> Result<Vec<Pending>, ApiError> {
        self.schedules.pending()
    }

    fn schedule(&self, req: &Request) -> Result<Response, ApiError> {
        let now = Local::now();
        let request = schedule::parse_request(
            &req.json_object(r#"{"minutes": 5}"#)?,
            self.config.default_minutes,
            self.config.policy,
            now,
        )?;
        if request.kind() == Kind::Recurring {
            check_calendar("calendar", &request.calendar)?;
        }
        if request.wake.is_some() && !wake::rtc_present() {
            return Err(ApiError::bad_request(format!(
                "this machine has no RTC wake alarm ({} is missing), so nothing can wake it after a power-off: send the schedule without \"wake_at\", \"wake_after_minutes\" or \"wake_calendar\"",
                wake::WAKEALARM
            )));
        }
        if let Some(Wake::Calendar(c)) = &request.wake {
            check_calendar("wake_calendar", c)?;
        }
        let created = match self.schedules.schedule(&request, now)? {
            Outcome::Scheduled(created) => created,
            Outcome::Conflict(conflict) => return Err(conflict_error(&conflict, now)),
        };
        let entry = created.entry(now);
        let mut body = json!({
            "status": "success",
            "message": format!("Shutdown scheduled for {}", entry["scheduled_time"].as_str().unwrap_or_default()),
            "shutdown": entry.clone(),
        });
        merge(&mut body, &entry);
        Ok(Response::ok(body))
    }

    fn cancel(&self, which: Option<&str>) -> Result<Response, ApiError> {
        let now = Local::now();
        let target = self.schedules.cancel(which)?;
        let mut body = json!({
            "status": "success",
            "message": "Shutdown cancelled successfully",
            "cancelled_shutdown": target.entry(now),
        });
        if let Some(cleared) = self.schedules.clear_wake(&target, now) {
            body["wake_alarm_cleared"] = json!(cleared);
        }
        Ok(Response::ok(body))
    }

    fn next(&self) -> Result<Response, ApiError> {
        let now = Local::now();
        let pending = self.pending()?;
        Ok(Response::ok(match pending.first() {
            Some(p) => json!({"status": "success", "shutdown": p.entry(now)}),
            None => json!({"status": "success", "message": "No shutdown scheduled"}),
        }))
    }

    fn status(&self) -> Result<Response, ApiError> {
        let now = Local::now();
        let pending = self.pending()?;
        // Experiments that keep the machine busy (the coordinator holds a block inhibitor).
        let running: Vec<String> = self
            .schedules
            .view
            .units(
                &*self.schedules.systemd,
                &[TEMPLATE_PATTERN, TRANSIENT_PATTERN],
            )?
            .into_iter()
            .filter(|u| u.row.active_state == "active")
            .filter_map(|u| crate::experiment::config::id_of(&u.row.name))
            .collect();
        Ok(Response::ok(json!({
            "status": "success",
            "has_shutdown": !pending.is_empty(),
            "next_shutdown": pending.first().map(|p| p.entry(now)),
            "running_experiments": running,
        })))
    }

    fn schedules(&self) -> Result<Response, ApiError> {
        let now = Local::now();
        let pending = self.pending()?;
        let list: Vec<Value> = pending.iter().map(|p| p.entry(now)).collect();
        Ok(Response::ok(
            json!({"status": "success", "count": list.len(), "schedules": list}),
        ))
    }

    fn system(&self) -> Result<Response, ApiError> {
        let now = Local::now();
        let pending = self.pending()?;
        let mut body = system::report();
        merge(
            &mut body,
            &json!({
                "status": "success",
                "timestamp": crate::time::rfc3339(&now),
                "pending_schedules": pending.iter().map(|p| p.entry(now)).collect::<Vec<_>>(),
                "wake": {
                    "rtc": wake::rtc_present(),
                    "alarm": wake::alarm().map(crate::time::epoch_rfc3339),
                    "next_wake_at": pending.iter().find(|p| p.action == schedule::Action::Poweroff).and_then(|p| p.entry(now)["wake_at"].as_str().map(str::to_string)),
                },
                "service_config": self.config_json(),
            }),
        );
        Ok(Response::ok(body))
    }

    /// `GET /metrics`: read-only, like the other GETs (see `metrics.rs`).
    fn metrics(&self) -> Result<Response, ApiError> {
        let pending = self.pending()?;
        let last = metrics::last_action(std::path::Path::new(metrics::LAST_ACTION_FILE));
        Ok(Response::text(
            crate::metrics::CONTENT_TYPE,
            metrics::page(&pending, last),
        ))
    }

    fn config_json(&self) -> Value {
        json!({
            "default_minutes": self.config.default_minutes,
            "when_busy": self.config.policy.when_busy.as_str(),
            "max_wait_minutes": self.config.policy.max_wait_minutes,
            "auth_enabled": self.auth.enabled(),
            "config_file": self.config.path,
            "state_file": self.schedules.store.path(),
        })
    }

    fn index(&self) -> Response {
        Response::ok(json!({
            "service": SERVICE_NAME,
            "endpoints": {
                "GET /": "this list",
                "GET /health": "service health",
                "POST /shutdown/schedule": "schedule a shutdown: {\"minutes\": N} | {\"at\": RFC 3339} | {\"calendar\": \"Mon..Fri 23:00\"}, optional \"action\": \"poweroff\"|\"reboot\", \"replace\": true, \"when_busy\": \"proceed\"|\"wait\"|\"skip\", \"max_wait_minutes\": N, one of \"wake_at\": RFC 3339 | \"wake_after_minutes\": N | \"wake_calendar\": \"Mon..Fri 07:00\" (token)",
                "GET /shutdown/next": "the next shutdown due",
                "GET /shutdown/status": "whether a shutdown is pending",
                "POST /shutdown/cancel": "cancel the next shutdown due (token)",
                "GET /shutdown/schedules": "every pending schedule",
                "DELETE /shutdown/schedules/{id}": "cancel one schedule (token)",
                "GET /shutdown/system": "uptime, load, memory, temperatures, pending schedules",
                "GET /metrics": "Prometheus metrics",
            },
            "config": self.config_json(),
        }))
    }
}

impl Service for ShutdownService {
    fn name(&self) -> &'static str {
        SERVICE_NAME
    }

    fn handle(&self, req: &Request) -> Response {
        let (route, captures) = match http::route_authorized(ROUTES, req, &self.auth) {
            Ok(found) => found,
            Err(response) => return response,
        };
        let result = match route {
            Route::Index => Ok(self.index()),
            Route::Health => Ok(http::health(self)),
            Route::Schedule => self.schedule(req),
            Route::Next => self.next(),
            Route::Status => self.status(),
            Route::Cancel => self.cancel(None),
            Route::System => self.system(),
            Route::Schedules => self.schedules(),
            Route::DeleteSchedule => valid_id(captures[0]).and_then(|id| self.cancel(Some(id))),
            Route::Metrics => self.metrics(),
        };
        result
            .map_err(|e| e.with_denied_hint(DENIED_HINT))
            .unwrap_or_else(Response::from)
    }
}

/// Whether the state entry of `unit` stays: systemd still has its timer, and not inactive.
fn keeps_entry(timers: &[ViewUnit], unit: &str) -> bool {
    timers.iter().any(|t| {
        t.row.name == unit && t.row.active_state != "inactive" && t.row.active_state != "failed"
    })
}

/// What to check when polkit refuses the service a timer.
const DENIED_HINT: &str = "the polkit rule that lets user abc start and stop homelab-shutdown@ and homelab-reboot@ timers (50-homelab.rules) is missing or does not match";

/// The 409 answer to a request the conflict rules refuse, with the schedule in its way.
fn conflict_error(conflict: &Conflict, now: DateTime<Local>) -> ApiError {
    let existing = conflict.existing().entry(now);
    let message = match conflict {
        Conflict::Same(p) => format!("this shutdown is already scheduled ({})", p.calendar),
        Conflict::OneOff(_) => format!(
            "a one-off shutdown is already scheduled for {}: cancel it first, or send \"replace\": true",
            existing["scheduled_time"].as_str().unwrap_or_default()
        ),
    };
    ApiError::new(409, message).with_extra("existing", existing)
}

fn valid_id(id: &str) -> Result<&str, ApiError> {
    if id.len() == 16
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        Ok(id)
    } else {
        Err(ApiError::bad_request(
            "a schedule id is 16 lower-case hex digits: GET /shutdown/schedules lists them",
        ))
    }
}

fn merge(into: &mut Value, from: &Value) {
    if let (Value::Object(a), Value::Object(b)) = (into, from) {
        for (k, v) in b {
            a.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
}

fn internal(e: anyhow::Error) -> ApiError {
    crate::log_err!("{e:#}");
    ApiError::new(500, format!("{e:#}"))
}

/// Asks systemd's own calendar parser (`systemd-analyze calendar`) whether `expr` (the request's
/// `field`) is valid and elapses again; its message is the one the client sees.
fn check_calendar(field: &str, expr: &str) -> Result<(), ApiError> {
    let out = std::process::Command::new("systemd-analyze")
        .args(["calendar", "--iterations=1", "--", expr])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| {
            ApiError::new(
                500,
                format!("cannot run systemd-analyze to check the calendar expression: {e}"),
            )
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(ApiError::bad_request(format!(
            "\"{field}\" is not a systemd calendar expression ({why}): send e.g. \"Mon..Fri 23:00\" or \"*-*-* 02:30\" (see man systemd.time)"
        )));
    }
    if stdout
        .lines()
        .any(|l| l.trim_start().starts_with("Next elapse:") && l.contains("never"))
    {
        return Err(ApiError::bad_request(format!(
            "\"{field}\" {expr:?} never elapses again: send an expression with a future time"
        )));
    }
    Ok(())
}

/// At boot (`shutdown-service --restore`, from homelab-shutdown-restore.service): starts again the
/// timers of every schedule in the state file, except one-off times that passed while the
/// machine was off: those are dropped with a log line and never acted on. Each timer is named
/// from the entry's calendar and action (an entry kept under another name, as a reboot under
/// `homelab-shutdown@`, gets the timer of its action).
pub fn restore(store: &StateStore, bus: &Bus) -> anyhow::Result<()> {
    let now = Local::now().timestamp() as u64 * 1_000_000;
    let _guard = store.lock()?;
    let state = store.load();
    let mut keep = State {
        version: 1,
        ..State::default()
    };
    for (key, stored) in &state.schedules {
        if schedule::one_off_usec(&stored.calendar).is_some_and(|t| t <= now) {
            log_warn!(
                "dropping the one-off {} scheduled for {}: it passed while the machine was off",
                stored.action.as_str(),
                stored.calendar
            );
            continue;
        }
        let Some(unit) = schedule::timer_unit(&stored.calendar, stored.action) else {
            log_warn!("dropping the entry {key:?}: its calendar cannot be a timer's name");
            continue;
        };
        match bus.enqueue(Verb::Start, &unit) {
            Ok(_) => {
                log_info!(
                    "restored {} schedule {} ({unit})",
                    stored.action.as_str(),
                    stored.calendar
                );
                // An entry kept under another timer of ours (a reboot under homelab-shutdown@,
                // from before the action was in the name): that timer must not fire too.
                if key != &unit
                    && schedule::parse_unit(key).is_some()
                    && let Err(e) = bus.enqueue(Verb::Stop, key)
                {
                    log_warn!("could not stop {key}: {e}");
                }
                // A wait the power-off (or the reboot) ended is over.
                let mut stored = stored.clone();
                stored.waiting = None;
                keep.schedules.insert(unit, stored);
            }
            Err(e) => log_warn!("could not restore {unit}: {e}"),
        }
    }
    if keep != state {
        store.save(&keep)?;
    }
    Ok(())
}

/// Builds the service from its configuration file and credential, and starts following its
/// units on `bus` (in the background: the first request does not wait for it).
pub fn from_environment(bus: &Bus) -> anyhow::Result<ShutdownService> {
    let config = Config::load()?;
    let auth = Auth::load(config.auth_enabled)?;
    let view = UnitView::new(VIEW_PATTERNS);
    view.watch(bus);
    Ok(ShutdownService::new(
        config,
        auth,
        StateStore::new(None),
        Arc::new(bus.clone()),
        view,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::systemd::fake::{FakeSystemd, Refusal};

    #[test]
    fn schedule_ids_must_look_like_ids() {
        assert!(valid_id("0123456789abcdef").is_ok());
        for bad in [
            "0123456789ABCDEF",
            "../x",
            "a*",
            "0123456789abcde",
            "0123456789abcdefg",
            "x.service",
        ] {
            assert_eq!(valid_id(bad).unwrap_err().status, 400, "{bad}");
        }
    }

    #[test]
    fn mutating_routes_need_the_token_before_anything_else() {
        let dir = std::env::temp_dir().join(format!("homelab-auth-{}", std::process::id()));
        let fake = Arc::new(FakeSystemd::new());
        let svc = ShutdownService::new(
            Config::default(),
            Auth::from_token("0123456789abcdef0123").unwrap(),
            StateStore::new(Some(&dir)),
            fake.clone(),
            UnitView::new(VIEW_PATTERNS),
        );
        for (m, path) in [
            (Method::Post, "/shutdown/schedule"),
            (Method::Post, "/shutdown/cancel"),
            (Method::Delete, "/shutdown/schedules/x"),
        ] {
            let r = svc.handle(&Request::new(m, path).with_body("{not json"));
            assert_eq!(r.status, 401, "{path}");
        }
        // Validation comes before systemd is asked anything.
        let r = svc.handle(
            &Request::new(Method::Post, "/shutdown/schedule")
                .with_header("Authorization", "Bearer 0123456789abcdef0123")
                .with_body(r#"{"minutes": -1}"#),
        );
        assert_eq!(r.status, 400);
        let r = svc.handle(
            &Request::new(Method::Delete, "/shutdown/schedules/..%2Fx")
                .with_header("Authorization", "Bearer 0123456789abcdef0123"),
        );
        assert_eq!(r.status, 400);
        assert!(!dir.exists(), "nothing was written");
        assert!(fake.calls().is_empty(), "systemd was asked nothing");
    }

    const TOKEN: &str = "0123456789abcdef0123";

    /// A service over `fake`, with its state in a fresh folder.
    fn service(fake: &Arc<FakeSystemd>, name: &str) -> (ShutdownService, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("homelab-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // What StateDirectory= makes.
        std::fs::create_dir_all(&dir).unwrap();
        let svc = ShutdownService::new(
            Config::default(),
            Auth::from_token(TOKEN).unwrap(),
            StateStore::new(Some(&dir)),
            fake.clone(),
            UnitView::new(VIEW_PATTERNS),
        );
        (svc, dir)
    }

    fn with_token(method: Method, path: &str, body: &str) -> Request {
        Request::new(method, path)
            .with_header("Authorization", &format!("Bearer {TOKEN}"))
            .with_body(body)
    }

    fn get(svc: &ShutdownService, path: &str) -> Response {
        svc.handle(&Request::new(Method::Get, path))
    }

    fn state_file(dir: &std::path::Path) -> Option<String> {
        std::fs::read_to_string(dir.join("schedules.json")).ok()
    }

    /// The units the state file has entries for.
    fn state_units(dir: &std::path::Path) -> Vec<String> {
        let state: Value = serde_json::from_str(&state_file(dir).unwrap_or("{}".into())).unwrap();
        state["schedules"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    #[test]
    fn schedule_list_and_cancel_through_systemd() {
        let fake = Arc::new(FakeSystemd::new());
        let (svc, dir) = service(&fake, "happy");
        assert_eq!(get(&svc, "/shutdown/schedules").body["count"], 0);
        let r = svc.handle(&with_token(
            Method::Post,
            "/shutdown/schedule",
            r#"{"minutes": 30}"#,
        ));
        assert_eq!(r.status, 200, "{}", r.body);
        let unit = r.body["unit"].as_str().unwrap().to_string();
        assert!(unit.starts_with("homelab-shutdown@"), "{unit}");
        assert_eq!(fake.active_state(&unit).as_deref(), Some("active"));
        assert!(fake.calls().contains(&format!("start {unit}")));
        assert_eq!(state_units(&dir), std::slice::from_ref(&unit));

        let list = get(&svc, "/shutdown/schedules");
        assert_eq!(list.body["count"], 1);
        assert_eq!(list.body["schedules"][0]["unit"], unit.as_str());
        assert_eq!(
            get(&svc, "/shutdown/next").body["shutdown"]["unit"],
            unit.as_str()
        );
        let status = get(&svc, "/shutdown/status");
        assert_eq!(status.status, 200);
        assert_eq!(status.body["has_shutdown"], true);

        let r = svc.handle(&with_token(Method::Post, "/shutdown/cancel", ""));
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["cancelled_shutdown"]["unit"], unit.as_str());
        assert_eq!(fake.active_state(&unit).as_deref(), Some("inactive"));
        assert_eq!(get(&svc, "/shutdown/schedules").body["count"], 0);
        assert!(state_units(&dir).is_empty());
        // Nothing left to cancel: 404, and no stop is asked.
        let stops = fake
            .calls()
            .iter()
            .filter(|c| c.starts_with("stop"))
            .count();
        let r = svc.handle(&with_token(Method::Post, "/shutdown/cancel", ""));
        assert_eq!((r.status, &r.body["status"]), (404, &json!("error")));
        assert_eq!(
            fake.calls()
                .iter()
                .filter(|c| c.starts_with("stop"))
                .count(),
            stops
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_polkit_denial_is_502_and_leaves_no_schedule() {
        let fake = Arc::new(FakeSystemd::new());
        fake.refuse("start", "homelab-shutdown@*", Refusal::Denied);
        let (svc, dir) = service(&fake, "denied");
        let r = svc.handle(&with_token(
            Method::Post,
            "/shutdown/schedule",
            r#"{"minutes": 30}"#,
        ));
        assert_eq!(r.status, 502);
        assert_eq!(r.body["status"], "error");
        let message = r.body["message"].as_str().unwrap();
        assert!(message.contains("permission denied by polkit"), "{message}");
        // The entry recorded before the start is taken back, and nothing else was asked.
        assert!(state_units(&dir).is_empty());
        assert!(fake.calls().last().unwrap().starts_with("start "));
        assert_eq!(get(&svc, "/shutdown/schedules").body["count"], 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failed_job_is_502_with_its_result() {
        let fake = Arc::new(FakeSystemd::new());
        fake.refuse("start", "*", Refusal::JobFailed);
        let (svc, dir) = service(&fake, "jobfailed");
        let r = svc.handle(&with_token(
            Method::Post,
            "/shutdown/schedule",
            r#"{"minutes": 30}"#,
        ));
        assert_eq!(r.status, 502);
        assert_eq!(r.body["job_result"], "failed");
        assert_eq!(r.body["result"], "exit-code");
        assert!(!r.body["journal"].as_array().unwrap().is_empty());
        assert!(state_units(&dir).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn systemd_unreachable_is_502_on_reads_and_writes_and_changes_nothing() {
        let fake = Arc::new(FakeSystemd::new());
        fake.refuse("list", "*", Refusal::Unreachable);
        let (svc, dir) = service(&fake, "unreachable");
        for path in ["/shutdown/status", "/shutdown/next", "/shutdown/schedules"] {
            let r = get(&svc, path);
            assert_eq!(r.status, 502, "{path}");
            assert_eq!(r.body["status"], "error");
            assert!(r.body["message"].as_str().unwrap().contains("system bus"));
        }
        let r = svc.handle(&with_token(
            Method::Post,
            "/shutdown/schedule",
            r#"{"minutes": 30}"#,
        ));
        assert_eq!(r.status, 502);
        assert!(state_file(&dir).is_none(), "nothing was written");
        assert!(!fake.calls().iter().any(|c| c.starts_with("start")));
        // /health needs no systemd.
        assert_eq!(get(&svc, "/health").status, 200);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_timer_vanishing_between_listing_and_read_is_not_pending() {
        let fake = Arc::new(FakeSystemd::new());
        let unit = schedule::timer_unit("Mon 04:00", schedule::Action::Poweroff).unwrap();
        fake.add(&unit, "active", "waiting");
        let (svc, dir) = service(&fake, "vanish");
        assert_eq!(get(&svc, "/shutdown/schedules").body["count"], 1);
        // Garbage-collected after the listing, before its next elapse is read.
        fake.vanish_after_list(&unit);
        let r = get(&svc, "/shutdown/schedules");
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["count"], 0);
        assert!(state_file(&dir).is_none(), "a GET writes nothing");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_second_one_off_is_409_and_starts_nothing() {
        let fake = Arc::new(FakeSystemd::new());
        let (svc, dir) = service(&fake, "conflict");
        let first = svc.handle(&with_token(
            Method::Post,
            "/shutdown/schedule",
            r#"{"minutes": 30}"#,
        ));
        assert_eq!(first.status, 200);
        let state = state_file(&dir);
        let r = svc.handle(&with_token(
            Method::Post,
            "/shutdown/schedule",
            r#"{"minutes": 45}"#,
        ));
        assert_eq!(r.status, 409);
        assert_eq!(r.body["existing"]["unit"], first.body["unit"]);
        assert_eq!(state_file(&dir), state, "the state file is untouched");
        assert_eq!(
            fake.calls()
                .iter()
                .filter(|c| c.starts_with("start"))
                .count(),
            1
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn old_clients_get_their_fields_and_new_ones_with_the_default_policy() {
        let fake = Arc::new(FakeSystemd::new());
        let (svc, dir) = service(&fake, "oldclient");
        let r = svc.handle(&with_token(
            Method::Post,
            "/shutdown/schedule",
            r#"{"minutes": 5}"#,
        ));
        assert_eq!(r.status, 200, "{}", r.body);
        for old in [
            "status",
            "message",
            "shutdown",
            "scheduled_time",
            "minutes_from_now",
            "created_at",
            "unit",
            "id",
            "kind",
            "calendar",
            "action",
        ] {
            assert!(r.body.get(old).is_some(), "{old} missing: {}", r.body);
        }
        assert_eq!(r.body["minutes_from_now"], 5);
        assert_eq!(r.body["state"], "pending");
        assert_eq!(r.body["when_busy"], "wait");
        assert_eq!(r.body["max_wait_minutes"], 360);
        assert_eq!(r.body["wake_at"], Value::Null);
        // Nothing of the policy is stored for a request that gave none: the configuration's
        // applies when it fires.
        let state = state_file(&dir).unwrap();
        assert!(!state.contains("when_busy"), "{state}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_policy_and_wake_fields_are_400_and_ask_systemd_nothing() {
        let fake = Arc::new(FakeSystemd::new());
        let (svc, dir) = service(&fake, "badpolicy");
        for body in [
            r#"{"minutes": 5, "when_busy": "later"}"#,
            r#"{"minutes": 5, "when_busy": null}"#,
            r#"{"minutes": 5, "max_wait_minutes": 0}"#,
            r#"{"minutes": 5, "when_busy": "proceed", "max_wait_minutes": 5}"#,
            r#"{"minutes": 5, "wake_after_minutes": -1}"#,
            r#"{"minutes": 5, "wake_at": "2000-01-01T00:00:00Z"}"#,
            r#"{"minutes": 5, "wake_calendar": "07:00"}"#,
            r#"{"calendar": "23:00", "wake_at": "2099-01-01T00:00:00Z"}"#,
            r#"{"minutes": 5, "action": "reboot", "wake_after_minutes": 60}"#,
            r#"{"minutes": 5, "wake_after_minutes": 60, "wake_at": "x"}"#,
            r#"{"minutes": 5, "wake": 60}"#,
        ] {
            let r = svc.handle(&with_token(Method::Post, "/shutdown/schedule", body));
            assert_eq!(r.status, 400, "{body}: {}", r.body);
            assert_eq!(r.body["status"], "error");
            assert!(
                r.body["message"].as_str().unwrap().contains("send"),
                "{body}: {}",
                r.body
            );
        }
        assert!(
            fake.calls().is_empty(),
            "systemd was asked {:?}",
            fake.calls()
        );
        assert!(state_file(&dir).is_none(), "nothing was written");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The state entry of the only schedule, changed by `change`, as the gate would.
    fn change_entry(dir: &std::path::Path, change: impl FnOnce(&mut schedule::Stored)) {
        let store = StateStore::new(Some(dir));
        store
            .update(|s| change(s.schedules.values_mut().next().unwrap()))
            .unwrap();
    }

    #[test]
    fn a_waiting_schedule_is_listed_with_who_holds_the_machine_busy() {
        let fake = Arc::new(FakeSystemd::new());
        let (svc, dir) = service(&fake, "waiting");
        let r = svc.handle(&with_token(
            Method::Post,
            "/shutdown/schedule",
            r#"{"minutes": 5, "when_busy": "wait", "max_wait_minutes": 30}"#,
        ));
        let unit = r.body["unit"].as_str().unwrap().to_string();
        // It fired, and its gate records what it waits for.
        fake.add(&unit, "active", "running");
        let busy = crate::systemd::dbus::Inhibitor {
            what: "shutdown".into(),
            who: "backup".into(),
            why: "nightly".into(),
            mode: "block".into(),
            uid: 0,
            pid: 42,
        };
        change_entry(&dir, |e| {
            e.waiting = Some(busy::Waiting {
                since: 1_795_000_000,
                until: 1_795_001_800,
                busy: vec![busy],
            })
        });
        let list = get(&svc, "/shutdown/schedules");
        let entry = &list.body["schedules"][0];
        assert_eq!(entry["state"], "waiting", "{}", list.body);
        assert_eq!(entry["waiting"]["busy"][0]["who"], "backup");
        assert_eq!(entry["max_wait_minutes"], 30);
        // Cancelling it stops the timer (and so, in systemd, its waiting gate).
        let r = svc.handle(&with_token(Method::Post, "/shutdown/cancel", ""));
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["cancelled_shutdown"]["state"], "waiting");
        assert!(fake.calls().contains(&format!("stop {unit}")));
        // A firing timer without a recorded wait is deciding or acting: not listed.
        let r = svc.handle(&with_token(
            Method::Post,
            "/shutdown/schedule",
            r#"{"minutes": 7}"#,
        ));
        fake.add(r.body["unit"].as_str().unwrap(), "active", "running");
        assert_eq!(get(&svc, "/shutdown/schedules").body["count"], 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn cancelling_clears_a_wake_alarm_the_schedule_set_and_only_one_ahead() {
        let fake = Arc::new(FakeSystemd::new());
        let (svc, dir) = service(&fake, "clearwake");
        let ahead = Local::now().timestamp() + 3600;
        for (alarm, cleared) in [(Some(ahead), true), (Some(1_000), false), (None, false)] {
            let r = svc.handle(&with_token(
                Method::Post,
                "/shutdown/schedule",
                r#"{"calendar": "Mon 04:00"}"#,
            ));
            assert_eq!(r.status, 200, "{}", r.body);
            change_entry(&dir, |e| e.wake_alarm_set = alarm);
            let r = svc.handle(&with_token(Method::Post, "/shutdown/cancel", ""));
            assert_eq!(r.status, 200, "{}", r.body);
            let clear = format!(
                "start {ACTOR_PREFIX}clear-wake-{}.service",
                alarm.unwrap_or(0)
            );
            assert_eq!(
                fake.calls().contains(&clear),
                cleared,
                "{alarm:?}: {:?}",
                fake.calls()
            );
            assert_eq!(
                r.body.get("wake_alarm_cleared").is_some(),
                cleared,
                "{}",
                r.body
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
