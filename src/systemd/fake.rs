//! A small in-memory [`Systemd`] for the services' unit tests: records every call, and refuses
//! the way systemd and polkit do when told to.

use super::dbus::{
    JobFailure, Prop, ServiceState, Systemd, SystemdError, UnitRow, Verb, unit_path,
};
use super::view::glob;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;
use zbus::zvariant::OwnedObjectPath;

/// How the fake answers a call it was told to refuse.
#[derive(Clone, Debug, PartialEq)]
pub enum Refusal {
    /// polkit says no (`org.freedesktop.DBus.Error.AccessDenied`).
    Denied,
    NoSuchUnit,
    /// The job runs and ends `failed`, the unit's result `exit-code`.
    JobFailed,
    /// The bus is unreachable.
    Unreachable,
}

#[derive(Default)]
struct Inner {
    units: BTreeMap<String, (UnitRow, ServiceState)>,
    calls: Vec<String>,
    /// (operation: "list", "start", "stop", "restart", "state"; unit glob; how).
    refusals: Vec<(String, String, Refusal)>,
    /// Units that disappear (garbage-collected) right after the next listing.
    vanish_after_list: Vec<String>,
}

/// The fake. Units are added with [`FakeSystemd::add`]; a started timer waits with
/// `next_elapse` [`FakeSystemd::NEXT_ELAPSE`].
#[derive(Default)]
pub struct FakeSystemd {
    inner: Mutex<Inner>,
}

impl FakeSystemd {
    /// The next elapse the fake gives a started recurring timer: 2030-01-01 00:00 UTC.
    pub const NEXT_ELAPSE: u64 = 1_893_456_000_000_000;

    pub fn new() -> FakeSystemd {
        FakeSystemd::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds (or replaces) a loaded unit in these states.
    pub fn add(&self, name: &str, active: &str, sub: &str) {
        let state = ServiceState {
            next_elapse_usec_realtime: name.ends_with(".timer").then_some(FakeSystemd::NEXT_ELAPSE),
            active_enter_timestamp: Some(1_700_000_000_000_000),
            ..ServiceState::default()
        };
        self.lock()
            .units
            .insert(name.to_string(), (UnitRow::new(name, active, sub), state));
    }

    /// `op` ("list", "start", "stop", "restart", "state") on units matching `unit_glob` fails so.
    pub fn refuse(&self, op: &str, unit_glob: &str, how: Refusal) {
        self.lock()
            .refusals
            .push((op.to_string(), unit_glob.to_string(), how));
    }

    /// `unit` is garbage-collected just after the next listing, before any other call.
    pub fn vanish_after_list(&self, unit: &str) {
        self.lock().vanish_after_list.push(unit.to_string());
    }

    /// Every call so far, as `"OP ARG"` lines.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// The unit's active state, `None` when not loaded.
    pub fn active_state(&self, unit: &str) -> Option<String> {
        self.lock()
            .units
            .get(unit)
            .map(|(r, _)| r.active_state.clone())
    }

    fn check(inner: &mut Inner, op: &str, unit: &str) -> Result<(), SystemdError> {
        inner.calls.push(format!("{op} {unit}"));
        let how = inner
            .refusals
            .iter()
            .find(|(o, g, _)| o == op && glob(g, unit))
            .map(|(_, _, how)| how.clone());
        match how {
            None => Ok(()),
            Some(Refusal::Denied) => Err(SystemdError::Denied(
                "Access denied (org.freedesktop.systemd1.manage-units)".into(),
            )),
            Some(Refusal::NoSuchUnit) => {
                Err(SystemdError::NoSuchUnit(format!("Unit {unit} not found.")))
            }
            Some(Refusal::Unreachable) => Err(SystemdError::Failed(
                "cannot reach the system bus: connection refused".into(),
            )),
            Some(Refusal::JobFailed) => Err(SystemdError::Job(Box::new(JobFailure {
                unit: unit.to_string(),
                job: op.to_string(),
                result: "failed".into(),
                unit_result: "exit-code".into(),
                journal: vec![format!("{unit}: Failed with result 'exit-code'.")],
            }))),
        }
    }
}

impl Systemd for FakeSystemd {
    fn list_units(&self, patterns: &[&str]) -> Result<Vec<UnitRow>, SystemdError> {
        let mut inner = self.lock();
        Self::check(&mut inner, "list", &patterns.join(" "))?;
        let rows = inner
            .units
            .values()
            .filter(|(r, _)| patterns.iter().any(|p| glob(p, &r.name)))
            .map(|(r, _)| r.clone())
            .collect();
        for gone in std::mem::take(&mut inner.vanish_after_list) {
            inner.units.remove(&gone);
        }
        Ok(rows)
    }

    fn run_and_wait(
        &self,
        verb: Verb,
        unit: &str,
        _timeout: Option<Duration>,
    ) -> Result<(), SystemdError> {
        let mut inner = self.lock();
        Self::check(&mut inner, verb.as_str(), unit)?;
        let timer = unit.ends_with(".timer");
        let (active, sub) = match (verb, timer) {
            (Verb::Stop, _) => ("inactive", "dead"),
            (_, true) => ("active", "waiting"),
            (_, false) => ("active", "running"),
        };
        let entry = inner.units.entry(unit.to_string()).or_insert_with(|| {
            (
                UnitRow::new(unit, "inactive", "dead"),
                ServiceState::default(),
            )
        });
        entry.0.active_state = active.into();
        entry.0.sub_state = sub.into();
        entry.1.next_elapse_usec_realtime = Some(if verb == Verb::Stop || !timer {
            0
        } else {
            FakeSystemd::NEXT_ELAPSE
        });
        entry.1.active_enter_timestamp = Some(1_700_000_000_000_000);
        Ok(())
    }

    fn state(&self, unit: &str, props: &[Prop]) -> Result<ServiceState, SystemdError> {
        let mut inner = self.lock();
        Self::check(&mut inner, "state", unit)?;
        let _ = props;
        Ok(match inner.units.get(unit) {
            Some((row, s)) => ServiceState {
                active_state: Some(row.active_state.clone()),
                sub_state: Some(row.sub_state.clone()),
                main_pid: Some(if row.is_up() { 4242 } else { 0 }),
                n_restarts: Some(0),
                result: Some("success".into()),
                ..s.clone()
            },
            // LoadUnit loads an instance of a template on demand: inactive, dead.
            None => ServiceState {
                active_state: Some("inactive".into()),
                sub_state: Some("dead".into()),
                main_pid: Some(0),
                n_restarts: Some(0),
                result: Some("success".into()),
                ..ServiceState::default()
            },
        })
    }

    fn states(
        &self,
        requests: &[(&OwnedObjectPath, &[Prop])],
    ) -> Result<Vec<ServiceState>, SystemdError> {
        let mut inner = self.lock();
        inner.calls.push(format!("states {}", requests.len()));
        Ok(requests
            .iter()
            .map(|(path, _)| {
                inner
                    .units
                    .values()
                    .find(|(r, _)| unit_path(&r.name) == **path)
                    .map(|(_, s)| s.clone())
                    .unwrap_or_default()
            })
            .collect())
    }
}
