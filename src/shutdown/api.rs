//! The shutdown service's HTTP API (port 5001): its routes and handlers, over the one owner of
//! the schedules ([`Schedules`]), and the setup of the service from its environment.

use super::config::Config;
use super::machine::{Rtc, SystemRtc};
use super::metrics;
use super::schedule::{self, Conflict, Pending};
use super::schedules::{Outcome, Schedules};
use super::state::StateStore;
use super::system;
use super::wake::Wake;
use crate::experiment::config::{TEMPLATE_PATTERN, TRANSIENT_PATTERN};
use crate::http::auth::Auth;
use crate::http::{self, ApiError, Method, Request, Response, Service};
use crate::systemd::calendar::{self, CalendarError};
use crate::systemd::view::UnitView;
use crate::systemd::{Bus, Systemd};
use chrono::{DateTime, Local};
use serde_json::{Value, json};
use std::sync::Arc;

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
    /// The RTC a wake time needs (the machine's; tests give their own).
    rtc: Arc<dyn Rtc>,
}

/// Every unit the service reads: its timers and their gates ([`schedule::UNIT_PATTERNS`]), and
/// the experiments a shutdown would stop.
pub const VIEW_PATTERNS: &[&str] = &[
    "homelab-shutdown@*.timer",
    "homelab-reboot@*.timer",
    "homelab-shutdown@*.service",
    "homelab-reboot@*.service",
    TEMPLATE_PATTERN,
    TRANSIENT_PATTERN,
];

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
            rtc: Arc::new(SystemRtc),
        }
    }

    /// The service with `rtc` in place of the machine's RTC.
    pub fn with_rtc(mut self, rtc: Arc<dyn Rtc>) -> ShutdownService {
        self.rtc = rtc;
        self
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
        // When it first powers off: a one-off's time, a recurring schedule's next elapse.
        let off = match schedule::one_off_usec(&request.calendar) {
            Some(t) => (t / 1_000_000) as i64,
            None => check_calendar("calendar", &request.calendar)?,
        };
        if let Some(wake) = &request.wake {
            if !self.rtc.present() {
                return Err(ApiError::bad_request(format!(
                    "this machine has no RTC wake alarm ({} is missing), so nothing can wake it after a power-off: send the schedule without \"wake_at\", \"wake_after_minutes\" or \"wake_calendar\"",
                    super::rtc::WAKEALARM
                )));
            }
            if let Wake::Calendar(c) = wake {
                check_calendar("wake_calendar", c)?;
            }
            // A schedule is never accepted with a wake time it cannot have.
            wake.after(off).map_err(|why| {
                ApiError::bad_request(format!(
                    "the wake time after the power-off at {} cannot be had ({why}): send a wake time that comes after it",
                    crate::time::epoch_rfc3339(off)
                ))
            })?;
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
            .view()
            .units(
                self.schedules.systemd(),
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
                    "rtc": self.rtc.present(),
                    "alarm": self.rtc.alarm().map(crate::time::epoch_rfc3339),
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
            "state_file": self.schedules.store().path(),
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

/// Asks systemd's own calendar parser whether `expr` (the request's `field`) is valid and
/// elapses again; its next elapse (seconds since the epoch). systemd's message is the one the
/// client sees.
fn check_calendar(field: &str, expr: &str) -> Result<i64, ApiError> {
    match calendar::next_elapse(expr, None) {
        Ok(Some(t)) => Ok(t),
        Ok(None) => Err(ApiError::bad_request(format!(
            "\"{field}\" {expr:?} never elapses again: send an expression with a future time"
        ))),
        Err(CalendarError::Invalid(why)) => Err(ApiError::bad_request(format!(
            "\"{field}\" is not a systemd calendar expression ({why}): send e.g. \"Mon..Fri 23:00\" or \"*-*-* 02:30\" (see man systemd.time)"
        ))),
        Err(e) => Err(ApiError::new(
            500,
            format!("cannot check the calendar expression {expr:?}: {e}"),
        )),
    }
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
    use crate::shutdown::busy;
    use crate::shutdown::schedule::Phase;
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
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
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

    /// An RTC of the test's: present or not, with the alarm it holds.
    #[derive(Default)]
    struct TestRtc {
        present: bool,
        alarm: std::sync::Mutex<Option<i64>>,
    }

    impl Rtc for TestRtc {
        fn present(&self) -> bool {
            self.present
        }
        fn alarm(&self) -> Option<i64> {
            *self.alarm.lock().unwrap()
        }
    }

    /// A service over `fake`, with its state in a fresh folder (what StateDirectory= makes) and
    /// no RTC.
    fn service(fake: &Arc<FakeSystemd>) -> (ShutdownService, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let svc = ShutdownService::new(
            Config::default(),
            Auth::from_token(TOKEN).unwrap(),
            StateStore::new(Some(dir.path())),
            fake.clone(),
            UnitView::new(VIEW_PATTERNS),
        )
        .with_rtc(Arc::new(TestRtc::default()));
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
        let (svc, dir) = service(&fake);
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
        assert_eq!(state_units(dir.path()), std::slice::from_ref(&unit));

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
        assert!(state_units(dir.path()).is_empty());
        // Nothing fired and nothing was stale: whether the machine goes down was never asked.
        assert!(
            !fake
                .calls()
                .iter()
                .any(|c| c.contains("homelab-power-action@")),
            "{:?}",
            fake.calls()
        );
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
    }

    #[test]
    fn a_polkit_denial_is_502_and_leaves_no_schedule() {
        let fake = Arc::new(FakeSystemd::new());
        fake.refuse("start", "homelab-shutdown@*", Refusal::Denied);
        let (svc, dir) = service(&fake);
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
        assert!(state_units(dir.path()).is_empty());
        assert!(fake.calls().last().unwrap().starts_with("start "));
        assert_eq!(get(&svc, "/shutdown/schedules").body["count"], 0);
    }

    #[test]
    fn a_failed_job_is_502_with_its_result() {
        let fake = Arc::new(FakeSystemd::new());
        fake.refuse("start", "*", Refusal::JobFailed);
        let (svc, dir) = service(&fake);
        let r = svc.handle(&with_token(
            Method::Post,
            "/shutdown/schedule",
            r#"{"minutes": 30}"#,
        ));
        assert_eq!(r.status, 502);
        assert_eq!(r.body["job_result"], "failed");
        assert_eq!(r.body["result"], "exit-code");
        assert!(!r.body["journal"].as_array().unwrap().is_empty());
        assert!(state_units(dir.path()).is_empty());
    }

    #[test]
    fn systemd_unreachable_is_502_on_reads_and_writes_and_changes_nothing() {
        let fake = Arc::new(FakeSystemd::new());
        fake.refuse("list", "*", Refusal::Unreachable);
        let (svc, dir) = service(&fake);
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
        assert!(state_file(dir.path()).is_none(), "nothing was written");
        assert!(!fake.calls().iter().any(|c| c.starts_with("start")));
        // /health needs no systemd.
        assert_eq!(get(&svc, "/health").status, 200);
    }

    #[test]
    fn a_timer_vanishing_between_listing_and_read_is_not_pending() {
        let fake = Arc::new(FakeSystemd::new());
        let unit = schedule::timer_unit("Mon 04:00", schedule::Action::Poweroff).unwrap();
        fake.add(&unit, "active", "waiting");
        let (svc, dir) = service(&fake);
        assert_eq!(get(&svc, "/shutdown/schedules").body["count"], 1);
        // Garbage-collected after the listing, before its next elapse is read.
        fake.vanish_after_list(&unit);
        let r = get(&svc, "/shutdown/schedules");
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["count"], 0);
        assert!(state_file(dir.path()).is_none(), "a GET writes nothing");
    }

    #[test]
    fn a_second_one_off_is_409_and_starts_nothing() {
        let fake = Arc::new(FakeSystemd::new());
        let (svc, dir) = service(&fake);
        let first = svc.handle(&with_token(
            Method::Post,
            "/shutdown/schedule",
            r#"{"minutes": 30}"#,
        ));
        assert_eq!(first.status, 200);
        let state = state_file(dir.path());
        let r = svc.handle(&with_token(
            Method::Post,
            "/shutdown/schedule",
            r#"{"minutes": 45}"#,
        ));
        assert_eq!(r.status, 409);
        assert_eq!(r.body["existing"]["unit"], first.body["unit"]);
        assert_eq!(state_file(dir.path()), state, "the state file is untouched");
        assert_eq!(
            fake.calls()
                .iter()
                .filter(|c| c.starts_with("start"))
                .count(),
            1
        );
    }

    #[test]
    fn old_clients_get_their_fields_and_new_ones_with_the_default_policy() {
        let fake = Arc::new(FakeSystemd::new());
        let (svc, dir) = service(&fake);
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
        let state = state_file(dir.path()).unwrap();
        assert!(!state.contains("when_busy"), "{state}");
    }

    #[test]
    fn bad_policy_and_wake_fields_are_400_and_ask_systemd_nothing() {
        let fake = Arc::new(FakeSystemd::new());
        let (svc, dir) = service(&fake);
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
        assert!(state_file(dir.path()).is_none(), "nothing was written");
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
        let (svc, dir) = service(&fake);
        let r = svc.handle(&with_token(
            Method::Post,
            "/shutdown/schedule",
            r#"{"minutes": 5, "when_busy": "wait", "max_wait_minutes": 30}"#,
        ));
        let unit = r.body["unit"].as_str().unwrap().to_string();
        // It fired, and its gate records what it waits for.
        fake.add(&unit, "active", "running");
        let busy = crate::systemd::Inhibitor {
            what: "shutdown".into(),
            who: "backup".into(),
            why: "nightly".into(),
            mode: "block".into(),
            uid: 0,
            pid: 42,
        };
        change_entry(dir.path(), |e| {
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
        // A firing timer without a recorded wait is deciding: listed, as such.
        let r = svc.handle(&with_token(
            Method::Post,
            "/shutdown/schedule",
            r#"{"minutes": 7}"#,
        ));
        fake.add(r.body["unit"].as_str().unwrap(), "active", "running");
        let list = get(&svc, "/shutdown/schedules");
        assert_eq!(list.body["count"], 1);
        assert_eq!(list.body["schedules"][0]["state"], "deciding");
    }

    #[test]
    fn cancelling_clears_a_wake_alarm_the_schedule_set_and_only_one_ahead() {
        let fake = Arc::new(FakeSystemd::new());
        let (svc, dir) = service(&fake);
        let ahead = Local::now().timestamp() + 3600;
        for (alarm, cleared) in [(Some(ahead), true), (Some(1_000), false), (None, false)] {
            let r = svc.handle(&with_token(
                Method::Post,
                "/shutdown/schedule",
                r#"{"calendar": "Mon 04:00"}"#,
            ));
            assert_eq!(r.status, 200, "{}", r.body);
            change_entry(dir.path(), |e| e.wake_alarm_set = alarm);
            let r = svc.handle(&with_token(Method::Post, "/shutdown/cancel", ""));
            assert_eq!(r.status, 200, "{}", r.body);
            let clear = format!(
                "start {}clear-wake-{}.service",
                crate::shutdown::ACTOR_PREFIX,
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
    }

    /// A recurring schedule and a one-off beside it whose timer has fired and whose gate runs
    /// (deciding, or about to act); the one-off's timer and gate.
    fn firing_one_off_beside_a_recurring_one(
        fake: &Arc<FakeSystemd>,
        svc: &ShutdownService,
    ) -> (String, String, String) {
        let r = svc.handle(&with_token(
            Method::Post,
            "/shutdown/schedule",
            r#"{"calendar": "Mon 04:00"}"#,
        ));
        assert_eq!(r.status, 200, "{}", r.body);
        let weekly = r.body["unit"].as_str().unwrap().to_string();
        let r = svc.handle(&with_token(
            Method::Post,
            "/shutdown/schedule",
            r#"{"minutes": 5, "when_busy": "proceed"}"#,
        ));
        assert_eq!(r.status, 200, "{}", r.body);
        let one_off = r.body["unit"].as_str().unwrap().to_string();
        let gate = schedule::gate_of(&one_off).unwrap();
        fake.add(&one_off, "active", "running");
        fake.add(&gate, "active", "running");
        (weekly, one_off, gate)
    }

    #[test]
    fn a_cancel_stops_the_firing_gate_and_leaves_the_recurring_schedule() {
        let fake = Arc::new(FakeSystemd::new());
        let (svc, dir) = service(&fake);
        let (weekly, one_off, gate) = firing_one_off_beside_a_recurring_one(&fake, &svc);
        let list = get(&svc, "/shutdown/schedules");
        assert_eq!(list.body["count"], 2, "{}", list.body);
        assert_eq!(list.body["schedules"][0]["unit"], one_off.as_str());
        assert_eq!(list.body["schedules"][0]["state"], "deciding");
        assert_eq!(list.body["schedules"][1]["state"], "pending");
        assert_eq!(
            get(&svc, "/shutdown/next").body["shutdown"]["unit"],
            one_off.as_str()
        );
        let r = svc.handle(&with_token(Method::Post, "/shutdown/cancel", ""));
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["cancelled_shutdown"]["unit"], one_off.as_str());
        assert_eq!(r.body["cancelled_shutdown"]["state"], "deciding");
        // Its timer is stopped, and with it its gate; the recurring one is untouched.
        assert!(fake.calls().contains(&format!("stop {one_off}")));
        assert_eq!(fake.active_state(&gate).as_deref(), Some("inactive"));
        assert_eq!(fake.active_state(&weekly).as_deref(), Some("active"));
        assert!(!fake.calls().contains(&format!("stop {weekly}")));
        assert_eq!(state_units(dir.path()), std::slice::from_ref(&weekly));
        let list = get(&svc, "/shutdown/schedules");
        assert_eq!(list.body["count"], 1);
        assert_eq!(list.body["schedules"][0]["unit"], weekly.as_str());
    }

    #[test]
    fn a_cancel_once_the_power_action_has_begun_is_409_and_takes_nothing_else() {
        for begun in ["actor", "target"] {
            let fake = Arc::new(FakeSystemd::new());
            let (svc, dir) = service(&fake);
            let (weekly, one_off, gate) = firing_one_off_beside_a_recurring_one(&fake, &svc);
            match begun {
                // Root's unit runs: it is about to start poweroff.target.
                "actor" => fake.add(
                    "homelab-power-action@poweroff.service",
                    "activating",
                    "start",
                ),
                // Root has started poweroff.target; the machine stops its units.
                _ => fake.power_off().unwrap(),
            }
            let list = get(&svc, "/shutdown/schedules");
            assert_eq!(list.body["schedules"][0]["state"], "acting", "{begun}");
            let id = list.body["schedules"][0]["id"]
                .as_str()
                .unwrap()
                .to_string();
            let state = state_file(dir.path());
            for r in [
                svc.handle(&with_token(Method::Post, "/shutdown/cancel", "")),
                svc.handle(&with_token(
                    Method::Delete,
                    &format!("/shutdown/schedules/{id}"),
                    "",
                )),
            ] {
                assert_eq!(r.status, 409, "{begun}: {}", r.body);
                let message = r.body["message"].as_str().unwrap();
                assert!(message.contains("already powering off"), "{message}");
                assert_eq!(r.body["schedule"]["unit"], one_off.as_str());
                assert_eq!(r.body["schedule"]["state"], "acting");
            }
            // Nothing was stopped, least of all the recurring schedule.
            assert!(
                !fake.calls().iter().any(|c| c.starts_with("stop")),
                "{begun}: {:?}",
                fake.calls()
            );
            assert_eq!(fake.active_state(&weekly).as_deref(), Some("active"));
            assert_eq!(fake.active_state(&gate).as_deref(), Some("active"));
            assert_eq!(state_file(dir.path()), state, "{begun}");
        }
    }

    #[test]
    fn a_clearing_of_an_alarm_is_no_power_action() {
        let fake = Arc::new(FakeSystemd::new());
        let (svc, _dir) = service(&fake);
        let (_, one_off, _) = firing_one_off_beside_a_recurring_one(&fake, &svc);
        fake.add(
            "homelab-power-action@clear-wake-1795000000.service",
            "activating",
            "start",
        );
        let r = svc.handle(&with_token(Method::Post, "/shutdown/cancel", ""));
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["cancelled_shutdown"]["unit"], one_off.as_str());
    }

    #[test]
    fn a_gate_without_a_state_entry_is_listed_and_can_be_cancelled() {
        let fake = Arc::new(FakeSystemd::new());
        let (svc, dir) = service(&fake);
        // A one-off that fired and waits, whose state file was lost: systemd has its units.
        let timer = schedule::timer_unit("@1795000000", schedule::Action::Poweroff).unwrap();
        let gate = schedule::gate_of(&timer).unwrap();
        fake.add(&timer, "active", "running");
        fake.add(&gate, "active", "running");
        let list = get(&svc, "/shutdown/schedules");
        assert_eq!(list.body["count"], 1, "{}", list.body);
        let entry = &list.body["schedules"][0];
        assert_eq!(
            (&entry["unit"], &entry["state"]),
            (&json!(timer), &json!("deciding"))
        );
        assert_eq!(entry["created_at"], Value::Null);
        let id = entry["id"].as_str().unwrap();
        let r = svc.handle(&with_token(
            Method::Delete,
            &format!("/shutdown/schedules/{id}"),
            "",
        ));
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(fake.active_state(&gate).as_deref(), Some("inactive"));
        assert_eq!(get(&svc, "/shutdown/schedules").body["count"], 0);
        assert!(state_units(dir.path()).is_empty());
        // The gate alone (its timer not listed) is enough.
        let timer = schedule::timer_unit("@1795000100", schedule::Action::Reboot).unwrap();
        fake.add(&schedule::gate_of(&timer).unwrap(), "active", "running");
        let list = get(&svc, "/shutdown/schedules");
        assert_eq!(list.body["schedules"][0]["unit"], timer.as_str());
        assert_eq!(list.body["schedules"][0]["action"], "reboot");
        assert_eq!(
            Phase::Deciding.as_str(),
            list.body["schedules"][0]["state"].as_str().unwrap()
        );
    }

    #[test]
    fn a_wake_time_that_cannot_be_had_is_400_at_schedule_time() {
        let fake = Arc::new(FakeSystemd::new());
        let (svc, dir) = service(&fake);
        let svc = svc.with_rtc(Arc::new(TestRtc {
            present: true,
            ..TestRtc::default()
        }));
        for (body, says) in [
            // It elapses, but only before the power-off.
            (
                r#"{"calendar": "2029-06-01 04:00", "wake_calendar": "2029-01-01 07:00"}"#,
                "cannot be had",
            ),
            (
                r#"{"calendar": "Mon 04:00", "wake_calendar": "2001-01-01 07:00"}"#,
                "never elapses",
            ),
            (
                r#"{"calendar": "Mon 04:00", "wake_calendar": "not a time"}"#,
                "not a systemd calendar expression",
            ),
        ] {
            let r = svc.handle(&with_token(Method::Post, "/shutdown/schedule", body));
            assert_eq!(r.status, 400, "{body}: {}", r.body);
            let message = r.body["message"].as_str().unwrap();
            assert!(
                message.contains(says) && message.contains("send"),
                "{body}: {message}"
            );
        }
        assert!(fake.calls().is_empty(), "{:?}", fake.calls());
        assert!(state_file(dir.path()).is_none());
        // One that can be had is shown with its wake time.
        let r = svc.handle(&with_token(
            Method::Post,
            "/shutdown/schedule",
            r#"{"calendar": "Mon 04:00", "wake_calendar": "Mon 07:00"}"#,
        ));
        assert_eq!(r.status, 200, "{}", r.body);
        let wake = DateTime::parse_from_rfc3339(r.body["wake_at"].as_str().unwrap()).unwrap();
        let off = FakeSystemd::NEXT_ELAPSE as i64 / 1_000_000;
        assert!(
            wake.timestamp() > off && wake.timestamp() <= off + 8 * 86_400,
            "{}",
            r.body
        );
    }

    #[test]
    fn while_the_machine_goes_down_nothing_is_cancelled_or_forgotten() {
        let fake = Arc::new(FakeSystemd::new());
        let (svc, dir) = service(&fake);
        let r = svc.handle(&with_token(
            Method::Post,
            "/shutdown/schedule",
            r#"{"calendar": "Mon 04:00"}"#,
        ));
        let weekly = r.body["unit"].as_str().unwrap().to_string();
        // An administrator's power-off: poweroff.target has its job, and the shutdown stops
        // every timer.
        fake.power_off().unwrap();
        fake.add(&weekly, "inactive", "dead");
        let state = state_file(dir.path());
        let r = svc.handle(&with_token(Method::Post, "/shutdown/cancel", ""));
        assert_eq!(r.status, 409, "{}", r.body);
        assert!(
            r.body["message"]
                .as_str()
                .unwrap()
                .contains("already powering off")
        );
        let r = svc.handle(&with_token(
            Method::Post,
            "/shutdown/schedule",
            r#"{"minutes": 5}"#,
        ));
        assert_eq!(r.status, 409, "{}", r.body);
        // The entry stays for the restore after the boot.
        assert_eq!(state_file(dir.path()), state);
        assert_eq!(state_units(dir.path()), std::slice::from_ref(&weekly));
        assert!(!fake.calls().iter().any(|c| c.starts_with("stop")));
    }
}
