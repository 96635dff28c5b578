//! The inference service (port 5002): model servers as `model@.service` instances.
//!
//! Models are the files of the models folder; starting one is `StartUnit("model@<name>.service")`
//! as user `abc`, which polkit allows for exactly those units.

pub mod activity;
pub mod config;
pub mod idle;
pub mod metrics;
pub mod models;

use crate::http::auth::Auth;
use crate::http::{self, ApiError, Method, Request, Response, Service};
use crate::systemd::view::UnitView;
use crate::systemd::{Bus, Prop, Systemd, Verb};
use activity::ActivityStore;
use chrono::Local;
use config::Config;
use models::Model;
use serde_json::{Map, Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub const SERVICE_NAME: &str = "Inference Model Service";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Route {
    Index,
    Health,
    Models,
    Running,
    Active,
    Idle,
    Activity,
    Model,
    Act(Verb),
    Report,
    Metrics,
}

// Fixed paths first: a model named "running" is shadowed by /models/running.
const ROUTES: &[(Method, &str, Route)] = &[
    (Method::Get, "/", Route::Index),
    (Method::Get, "/health", Route::Health),
    (Method::Get, "/models", Route::Models),
    (Method::Get, "/metrics", Route::Metrics),
    (Method::Get, "/models/running", Route::Running),
    (Method::Get, "/models/active", Route::Active),
    (Method::Get, "/models/idle", Route::Idle),
    (Method::Get, "/models/activity", Route::Activity),
    (Method::Get, "/models/{}", Route::Model),
    (Method::Post, "/models/{}/start", Route::Act(Verb::Start)),
    (Method::Post, "/models/{}/stop", Route::Act(Verb::Stop)),
    (
        Method::Post,
        "/models/{}/restart",
        Route::Act(Verb::Restart),
    ),
    (Method::Post, "/models/{}/report", Route::Report),
];

pub struct InferenceService {
    config: Config,
    auth: Auth,
    dir: PathBuf,
    activity: ActivityStore,
    systemd: Arc<dyn Systemd>,
    /// The `model@` units, kept current from systemd's signals.
    view: Arc<UnitView>,
}

impl InferenceService {
    /// The service over `systemd`, reading through `view` (a view that is not watching asks
    /// `systemd` on every read).
    pub fn new(
        config: Config,
        auth: Auth,
        dir: PathBuf,
        activity: ActivityStore,
        systemd: Arc<dyn Systemd>,
        view: Arc<UnitView>,
    ) -> InferenceService {
        InferenceService {
            config,
            auth,
            dir,
            activity,
            systemd,
            view,
        }
    }

    fn models(&self) -> Result<Vec<Model>, ApiError> {
        models::list(&self.dir).map_err(|e| {
            ApiError::new(
                500,
                format!(
                    "cannot read the models folder {}: {e} (set MODELS_CONFIG_DIR in a drop-in)",
                    self.dir.display()
                ),
            )
        })
    }

    /// The model a URL names: 400 for a hostile name, 404 for one that is not configured.
    fn model(&self, raw: &str) -> Result<Model, ApiError> {
        let name = http::percent_decode(raw)?;
        models::validate(&name).map_err(|e| ApiError::bad_request(e.to_string()))?;
        models::find(&self.dir, &name).ok_or_else(|| {
            ApiError::not_found(format!(
                "no model {name:?}: it needs a config file in {} (GET /models lists them)",
                self.dir.display()
            ))
        })
    }

    /// Starts, stops or restarts the model's unit and answers with how systemd's job ended: a
    /// start that fails (the model server cannot be run, or its unit's start times out) is a 502
    /// with the job's and the unit's result, and the command that shows the unit's journal.
    fn act(&self, raw: &str, verb: Verb) -> Result<Response, ApiError> {
        let model = self.model(raw)?;
        let unit = model.unit();
        let done = self
            .systemd
            .run_and_wait(verb, &unit, Some(Duration::from_secs(90)));
        // The answer and the next read agree, whatever the job's end.
        self.view.sync();
        done.map_err(|e| {
            if verb != Verb::Stop {
                metrics::start_failed(&model.name);
            }
            let mut error = ApiError::from(e);
            error.message = format!(
                "model {} did not {}: {}",
                model.name,
                verb.as_str(),
                error.message
            );
            // This network-facing service is not in the systemd-journal group (a compromise
            // would read the whole journal), so it has no journal lines to give: it says where
            // an administrator reads them.
            if error
                .extra
                .as_mut()
                .and_then(|x| x.remove("journal"))
                .is_some()
            {
                error = error.with_extra("journal_command", json!(format!("journalctl -u {unit}")));
            }
            error
        })?;
        let done = match verb {
            Verb::Start => "started",
            Verb::Stop => "stopped",
            Verb::Restart => "restarted",
        };
        crate::log_info!("{done} {unit}");
        Ok(Response::ok(json!({
            "status": "success",
            "message": format!("Successfully {done} model {}", model.name),
            "unit": unit,
        })))
    }

    fn model_status(&self, raw: &str) -> Result<Response, ApiError> {
        let model = self.model(raw)?;
        let unit = model.unit();
        let s = self.systemd.state(
            &unit,
            &[
                Prop::ActiveState,
                Prop::SubState,
                Prop::StateChangeTimestamp,
                Prop::MainPID,
                Prop::MemoryCurrent,
                Prop::NRestarts,
                Prop::Result,
            ],
        )?;
        let since = s.state_change_timestamp.and_then(crate::time::from_usec);
        let mut body = model.json();
        if let Value::Object(map) = &mut body {
            map.extend(Map::from_iter([
                ("status".to_string(), json!("success")),
                ("unit".to_string(), json!(unit)),
                (
                    "active_state".to_string(),
                    json!(s.active_state.unwrap_or_default()),
                ),
                (
                    "sub_state".to_string(),
                    json!(s.sub_state.unwrap_or_default()),
                ),
                (
                    "since".to_string(),
                    json!(since.map(|t| crate::time::rfc3339(&t))),
                ),
                (
                    "main_pid".to_string(),
                    json!(s.main_pid.unwrap_or_default()),
                ),
                (
                    "memory_bytes".to_string(),
                    json!(s.memory_current.filter(|&m| m != u64::MAX)),
                ),
                (
                    "restarts".to_string(),
                    json!(s.n_restarts.unwrap_or_default()),
                ),
                ("result".to_string(), json!(s.result.unwrap_or_default())),
            ]));
        }
        Ok(Response::ok(body))
    }

    fn report(&self, raw: &str) -> Result<Response, ApiError> {
        let model = self.model(raw)?;
        let now = Local::now();
        self.activity
            .record(&model.name, now)
            .map_err(|e| ApiError::new(500, format!("{e:#}")))?;
        Ok(Response::ok(json!({
            "status": "success",
            "message": format!("Activity reported for model {}", model.name),
            "timestamp": crate::time::rfc3339(&now),
        })))
    }

    fn activity_view(&self, route: Route) -> Result<Response, ApiError> {
        let now = Local::now();
        let activity = self.activity.load();
        let running = models::running_since(&*self.systemd, &self.view)?;
        let idle = |name: &str| {
            running
                .iter()
                .find(|(n, _)| n == name)
                .is_some_and(|(_, since)| {
                    activity.is_idle(name, now, self.config.idle_threshold_minutes, *since)
                })
        };
        let models = self.models()?;
        let active =
            |name: &str| activity.is_active(name, now, self.config.active_threshold_minutes);
        let timestamp = crate::time::rfc3339(&now);
        let body = match route {
            Route::Active => {
                let list: Vec<&str> = models
                    .iter()
                    .map(|m| m.name.as_str())
                    .filter(|n| active(n))
                    .collect();
                json!({"status": "success", "active_models": list, "timestamp": timestamp})
            }
            Route::Idle => {
                let list: Vec<&str> = running
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .filter(|n| idle(n))
                    .collect();
                json!({"status": "success", "idle_models": list, "timestamp": timestamp})
            }
            _ => {
                let status: Map<String, Value> = models
                    .iter()
                    .map(|m| {
                        let last = activity.last(&m.name).map(|t| crate::time::rfc3339(&t));
                        (m.name.clone(), json!({"last_activity": last, "is_active": active(&m.name), "is_idle": idle(&m.name)}))
                    })
                    .collect();
                json!({"status": "success", "activity_status": status, "timestamp": timestamp})
            }
        };
        Ok(Response::ok(body))
    }

    /// `GET /metrics`: read-only, like the other GETs (see `metrics.rs`).
    fn metrics(&self) -> Result<Response, ApiError> {
        let states = metrics::unit_states(&*self.systemd, &self.view)?;
        let page = metrics::page(&self.models()?, &states, &self.activity.load());
        Ok(Response::text(crate::metrics::CONTENT_TYPE, page))
    }

    fn index(&self) -> Response {
        Response::ok(json!({
            "service": SERVICE_NAME,
            "endpoints": {
                "GET /health": "service health",
                "GET /models": "configured models: model_name, file_path, port",
                "GET /models/running": "models whose model@ unit is active",
                "GET /models/{name}": "one model's unit state",
                "POST /models/{name}/start|stop|restart": "start, stop or restart a model (token)",
                "POST /models/{name}/report": "report activity of a model (token)",
                "GET /models/active": "models with recent activity",
                "GET /models/idle": "running models idle past the threshold",
                "GET /models/activity": "activity of every model",
                "GET /metrics": "Prometheus metrics",
            },
            "config": {
                "models_dir": self.dir,
                "idle_threshold_minutes": self.config.idle_threshold_minutes,
                "active_threshold_minutes": self.config.active_threshold_minutes,
                "power_off_when_idle": self.config.power_off_when_idle,
                "auth_enabled": self.auth.enabled(),
            },
        }))
    }
}

impl Service for InferenceService {
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
            Route::Models => self.models().map(|list| {
                let list: Vec<Value> = list.iter().map(Model::json).collect();
                Response::ok(json!({"status": "success", "count": list.len(), "models": list}))
            }),
            Route::Running => models::running(&*self.systemd, &self.view)
                .map_err(ApiError::from)
                .map(|names| Response::ok(json!({"status": "success", "running_models": names}))),
            Route::Active | Route::Idle | Route::Activity => self.activity_view(route),
            Route::Model => self.model_status(captures[0]),
            Route::Act(verb) => self.act(captures[0], verb),
            Route::Report => self.report(captures[0]),
            Route::Metrics => self.metrics(),
        };
        result
            .map_err(|e| e.with_denied_hint(DENIED_HINT))
            .unwrap_or_else(Response::from)
    }
}

/// What to check when polkit refuses the service a model unit.
const DENIED_HINT: &str = "the polkit rule that lets user abc start, stop and restart model@*.service (50-homelab.rules) is missing or does not match";

/// Builds the service from its configuration file and credential, and starts following the
/// model units on `bus` (in the background: the first request does not wait for it).
pub fn from_environment(bus: &Bus) -> anyhow::Result<InferenceService> {
    let config = Config::load()?;
    let auth = Auth::load(config.auth.enabled)?;
    let view = UnitView::new(&[models::UNIT_PATTERN]);
    view.watch(bus);
    Ok(InferenceService::new(
        config,
        auth,
        models::config_dir(),
        ActivityStore::new(None),
        Arc::new(bus.clone()),
        view,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::systemd::fake::{FakeSystemd, Refusal};

    const TOKEN: &str = "0123456789abcdef0123";

    /// A service over `fake`, with one model `llama.env`; returns its folder too.
    fn service(fake: &Arc<FakeSystemd>) -> (InferenceService, tempfile::TempDir) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join("models")).unwrap();
        std::fs::write(dir.join("models/llama.env"), "PORT=8081\n").unwrap();
        let svc = InferenceService::new(
            Config::default(),
            Auth::from_token(TOKEN).unwrap(),
            dir.join("models"),
            ActivityStore::new(Some(&dir.join("state"))),
            fake.clone(),
            UnitView::new(&[models::UNIT_PATTERN]),
        );
        (svc, tmp)
    }

    fn post(svc: &InferenceService, path: &str) -> Response {
        svc.handle(
            &Request::new(Method::Post, path)
                .with_header("Authorization", &format!("Bearer {TOKEN}")),
        )
    }

    fn get(svc: &InferenceService, path: &str) -> Response {
        svc.handle(&Request::new(Method::Get, path))
    }

    #[test]
    fn start_list_and_stop_a_model_through_systemd() {
        let fake = Arc::new(FakeSystemd::new());
        let (svc, _dir) = service(&fake);
        assert_eq!(
            get(&svc, "/models/running").body["running_models"],
            json!([])
        );
        let r = post(&svc, "/models/llama.env/start");
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["message"], "Successfully started model llama.env");
        assert!(
            fake.calls()
                .contains(&"start model@llama.env.service".to_string())
        );
        assert_eq!(
            get(&svc, "/models/running").body["running_models"],
            json!(["llama.env"])
        );
        let status = get(&svc, "/models/llama.env");
        assert_eq!(status.status, 200);
        assert_eq!(status.body["active_state"], "active");
        assert_eq!(status.body["port"], 8081);
        let r = post(&svc, "/models/llama.env/stop");
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            get(&svc, "/models/running").body["running_models"],
            json!([])
        );
    }

    #[test]
    fn a_polkit_denial_is_502_naming_the_model_and_starts_nothing() {
        let fake = Arc::new(FakeSystemd::new());
        fake.refuse("start", "model@*", Refusal::Denied);
        let (svc, _dir) = service(&fake);
        let r = post(&svc, "/models/llama.env/start");
        assert_eq!(r.status, 502);
        assert_eq!(r.body["status"], "error");
        let message = r.body["message"].as_str().unwrap();
        assert!(
            message.starts_with("model llama.env did not start"),
            "{message}"
        );
        assert!(message.contains("polkit"), "{message}");
        assert_eq!(fake.active_state("model@llama.env.service"), None);
        assert_eq!(
            get(&svc, "/models/running").body["running_models"],
            json!([])
        );
    }

    #[test]
    fn a_failed_start_is_502_with_the_job_and_unit_results() {
        let fake = Arc::new(FakeSystemd::new());
        fake.refuse("start", "*", Refusal::JobFailed);
        let (svc, _dir) = service(&fake);
        let r = post(&svc, "/models/llama.env/start");
        assert_eq!(r.status, 502);
        assert_eq!(r.body["job_result"], "failed");
        assert_eq!(r.body["result"], "exit-code");
        assert_eq!(r.body["unit"], "model@llama.env.service");
        assert_eq!(r.body["journal"], Value::Null);
        assert_eq!(
            r.body["journal_command"],
            "journalctl -u model@llama.env.service"
        );
    }

    #[test]
    fn systemd_refusing_reads_is_502_and_unknown_models_ask_it_nothing() {
        let fake = Arc::new(FakeSystemd::new());
        fake.refuse("state", "*", Refusal::NoSuchUnit);
        fake.refuse("list", "*", Refusal::Unreachable);
        let (svc, _dir) = service(&fake);
        let r = get(&svc, "/models/llama.env");
        assert_eq!(r.status, 502);
        assert!(r.body["message"].as_str().unwrap().contains("no such unit"));
        for path in ["/models/running", "/models/idle"] {
            let r = get(&svc, path);
            assert_eq!(
                (r.status, &r.body["status"]),
                (502, &json!("error")),
                "{path}"
            );
        }
        let calls = fake.calls().len();
        assert_eq!(post(&svc, "/models/nope/start").status, 404);
        assert_eq!(post(&svc, "/models/..%2Fx/start").status, 400);
        assert_eq!(
            fake.calls().len(),
            calls,
            "no call for a model that is not there"
        );
    }

    #[test]
    fn a_model_vanishing_between_listing_and_read_answers_consistently() {
        let fake = Arc::new(FakeSystemd::new());
        fake.add("model@llama.env.service", "active", "running");
        let (svc, _dir) = service(&fake);
        fake.vanish_after_list("model@llama.env.service");
        // Listed as running, gone before its start time is read: still a 200, and then gone.
        let r = get(&svc, "/models/activity");
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            get(&svc, "/models/running").body["running_models"],
            json!([])
        );
    }
}
