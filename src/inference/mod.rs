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
use crate::systemd::dbus::{self, Verb};
use activity::ActivityStore;
use chrono::Local;
use config::Config;
use models::Model;
use serde_json::{Map, Value, json};
use std::path::PathBuf;
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
}

impl InferenceService {
    pub fn new(
        config: Config,
        auth: Auth,
        dir: PathBuf,
        activity: ActivityStore,
    ) -> InferenceService {
        InferenceService {
            config,
            auth,
            dir,
            activity,
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
        models::validate(&name).map_err(ApiError::bad_request)?;
        models::find(&self.dir, &name).ok_or_else(|| {
            ApiError::not_found(format!(
                "no model {name:?}: it needs a config file in {} (GET /models lists them)",
                self.dir.display()
            ))
        })
    }

    /// Starts, stops or restarts the model's unit and answers with how systemd's job ended: a
    /// start that fails (the model server cannot be run, or its unit's start times out) is a 502
    /// with the job's and the unit's result and its last journal lines.
    fn act(&self, raw: &str, verb: Verb) -> Result<Response, ApiError> {
        let model = self.model(raw)?;
        let unit = model.unit();
        dbus::run_and_wait(verb, &unit, Some(Duration::from_secs(90))).map_err(|e| {
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
        let (u, s) = dbus::unit(&unit).map_err(ApiError::from)?;
        let since = u
            .state_change_timestamp()
            .ok()
            .and_then(crate::time::from_usec);
        let mut body = model.json();
        if let Value::Object(map) = &mut body {
            map.extend(Map::from_iter([
                ("status".to_string(), json!("success")),
                ("unit".to_string(), json!(unit)),
                (
                    "active_state".to_string(),
                    json!(u.active_state().unwrap_or_default()),
                ),
                (
                    "sub_state".to_string(),
                    json!(u.sub_state().unwrap_or_default()),
                ),
                (
                    "since".to_string(),
                    json!(since.map(|t| crate::time::rfc3339(&t))),
                ),
                (
                    "main_pid".to_string(),
                    json!(s.main_pid().unwrap_or_default()),
                ),
                (
                    "memory_bytes".to_string(),
                    json!(s.memory_current().ok().filter(|&m| m != u64::MAX)),
                ),
                (
                    "restarts".to_string(),
                    json!(s.n_restarts().unwrap_or_default()),
                ),
                ("result".to_string(), json!(s.result().unwrap_or_default())),
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
        let running = models::running_since()?;
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
        let states = metrics::unit_states()?;
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
            Route::Running => models::running()
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

/// Builds the service from its configuration file and credential.
pub fn from_environment() -> anyhow::Result<InferenceService> {
    let config = Config::load()?;
    let auth = Auth::load(config.auth.enabled)?;
    Ok(InferenceService::new(
        config,
        auth,
        models::config_dir(),
        ActivityStore::new(None),
    ))
}
