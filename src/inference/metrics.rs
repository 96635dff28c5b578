//! `GET /metrics` of the inference service: per model up, failed, last activity and failed
//! starts; requests.

use super::activity::Activity;
use super::models::{self, Model};
use crate::metrics::{self, Kind, Writer};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Starts (and restarts) that systemd's job ended in failure, per model, since the service
/// started (a counter: it resets when the service exits idle, which `rate()` and `increase()`
/// handle).
static START_FAILURES: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

/// Counts a start of `model` that failed.
pub fn start_failed(model: &str) {
    let mut map = START_FAILURES.lock().unwrap_or_else(|e| e.into_inner());
    *map.entry(model.to_string()).or_insert(0) += 1;
}

/// The states systemd reports for the `model@` units it has loaded: model name -> active state.
pub fn unit_states(
    systemd: &dyn crate::systemd::Systemd,
    view: &crate::systemd::view::UnitView,
) -> Result<BTreeMap<String, String>, crate::systemd::SystemdError> {
    Ok(view
        .units(systemd, &[models::UNIT_PATTERN])?
        .into_iter()
        .filter_map(|u| models::name_of(&u.row.name).map(|name| (name, u.row.active_state)))
        .collect())
}

/// The metrics page: every configured model, with what systemd and the activity file say.
pub fn page(
    configured: &[Model],
    states: &BTreeMap<String, String>,
    activity: &Activity,
) -> String {
    let failures = START_FAILURES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let state = |name: &str| states.get(name).map(String::as_str).unwrap_or("inactive");
    let mut w = Writer::new();
    let mut f = w.family(
        "model_up",
        "Whether the model's unit model@<name>.service is active (1) or not (0).",
        Kind::Gauge,
    );
    for m in configured {
        let up = matches!(state(&m.name), "active" | "reloading");
        f.sample(&[("model", &m.name)], if up { 1.0 } else { 0.0 });
    }
    let mut f = w.family(
        "model_failed",
        "Whether the model's unit is in the failed state (1) or not (0).",
        Kind::Gauge,
    );
    for m in configured {
        let failed = state(&m.name) == "failed";
        f.sample(&[("model", &m.name)], if failed { 1.0 } else { 0.0 });
    }
    let mut f = w.family(
        "model_last_activity_timestamp_seconds",
        "When the model last reported activity (POST /models/<name>/report), seconds since the epoch.",
        Kind::Gauge,
    );
    for m in configured {
        if let Some(t) = activity.last(&m.name) {
            f.sample(&[("model", &m.name)], t.timestamp() as f64);
        }
    }
    let mut f = w.family(
        "model_start_failures_total",
        "Starts of the model through this service whose systemd job failed, since the service started.",
        Kind::Counter,
    );
    for m in configured {
        let n = failures.get(&m.name).copied().unwrap_or(0);
        f.sample(&[("model", &m.name)], n as f64);
    }
    metrics::write_http_requests(&mut w);
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str) -> Model {
        Model {
            name: name.into(),
            path: format!("/x/{name}").into(),
            port: None,
        }
    }

    #[test]
    fn each_configured_model_has_its_figures() {
        let states = BTreeMap::from([
            ("a.env".to_string(), "active".to_string()),
            ("b.env".to_string(), "failed".to_string()),
        ]);
        let mut activity = Activity::default();
        activity
            .last_activity
            .insert("a.env".into(), "2026-01-01T00:00:00+00:00".into());
        start_failed("b.env");
        let page = page(&[model("a.env"), model("b.env")], &states, &activity);
        assert!(
            page.contains("homelab_model_up{model=\"a.env\"} 1\n"),
            "{page}"
        );
        assert!(page.contains("homelab_model_up{model=\"b.env\"} 0\n"));
        assert!(page.contains("homelab_model_failed{model=\"b.env\"} 1\n"));
        assert!(page.contains(
            "homelab_model_last_activity_timestamp_seconds{model=\"a.env\"} 1767225600\n"
        ));
        assert!(page.contains("homelab_model_start_failures_total{model=\"b.env\"} 1\n"));
        assert!(page.contains("homelab_model_start_failures_total{model=\"a.env\"} 0\n"));
    }
}
