//! The values systemd and logind hand us over D-Bus (unit rows, inhibitors, unit properties) and
//! the errors of calls to them, decoded; shared by the bus handle, its fake and the services.

use super::names::{SERVICE_INTERFACE, TIMER_INTERFACE, UNIT_INTERFACE, UNIT_PATH_PREFIX};
use serde::Deserialize;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Type};

/// One row of `ListUnitsByPatterns` (as `systemctl list-units` shows it), decoded by zbus.
#[derive(Clone, Debug, PartialEq, Deserialize, Type)]
#[zvariant(crate = "zbus::zvariant")]
pub struct UnitRow {
    pub name: String,
    pub description: String,
    /// `loaded`, `not-found`, `masked`, ...
    pub load_state: String,
    /// `active`, `inactive`, `failed`, `activating`, `deactivating`, `reloading`, ...
    pub active_state: String,
    /// The type's own state: `running`, `waiting`, `dead`, `auto-restart`, ...
    pub sub_state: String,
    pub followed: String,
    pub path: OwnedObjectPath,
    pub job_id: u32,
    pub job_type: String,
    pub job_path: OwnedObjectPath,
}

impl UnitRow {
    /// A row as systemd lists a unit it has just loaded and not started (also for tests).
    pub fn new(name: &str, active_state: &str, sub_state: &str) -> UnitRow {
        let root = OwnedObjectPath::try_from("/").expect("/ is an object path");
        UnitRow {
            name: name.to_string(),
            description: String::new(),
            load_state: "loaded".into(),
            active_state: active_state.into(),
            sub_state: sub_state.into(),
            followed: String::new(),
            path: unit_path(name),
            job_id: 0,
            job_type: String::new(),
            job_path: root,
        }
    }

    /// Its process runs, or the unit is up: `active` or `reloading`.
    pub fn is_up(&self) -> bool {
        matches!(self.active_state.as_str(), "active" | "reloading")
    }
}

/// The object path systemd gives a unit: `/org/freedesktop/systemd1/unit/` and the name with
/// every byte but ASCII letters and digits as `_xx` (sd_bus_path_encode).
pub fn unit_path(name: &str) -> OwnedObjectPath {
    let mut p = format!("{UNIT_PATH_PREFIX}/");
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() {
            p.push(b as char);
        } else {
            p.push_str(&format!("_{b:02x}"));
        }
    }
    OwnedObjectPath::try_from(p).expect("an encoded unit name is an object path")
}

/// One of logind's inhibitor locks, as `ListInhibitors` gives it (and `systemd-inhibit --list`
/// shows it).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Deserialize, Type)]
#[zvariant(crate = "zbus::zvariant")]
pub struct Inhibitor {
    /// Colon-separated: `shutdown:sleep:idle`...
    pub what: String,
    pub who: String,
    pub why: String,
    /// `block`, `delay` (or, from systemd 257, `block-weak`).
    pub mode: String,
    pub uid: u32,
    pub pid: u32,
}

impl Inhibitor {
    /// Whether it keeps the machine busy: it blocks shutdown outright (a `delay` lock only
    /// postpones it by seconds).
    pub fn blocks_shutdown(&self) -> bool {
        self.mode == "block" && self.what.split(':').any(|w| w == "shutdown")
    }
}

/// Why a call to systemd failed, in the terms an API client can act on.
#[derive(Debug, Clone, PartialEq)]
pub enum SystemdError {
    /// polkit said no (or wanted an interactive authentication we cannot give).
    Denied(String),
    NoSuchUnit(String),
    /// The bus could not be reached, or the call failed otherwise.
    Failed(String),
    /// systemd ran the job, and it did not end `done`.
    Job(Box<JobFailure>),
}

impl std::fmt::Display for SystemdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SystemdError::Denied(m) => write!(f, "permission denied by polkit: {m}"),
            SystemdError::NoSuchUnit(m) => write!(f, "no such unit: {m}"),
            SystemdError::Failed(m) => write!(f, "systemd: {m}"),
            SystemdError::Job(j) => write!(f, "{j}"),
        }
    }
}

impl std::error::Error for SystemdError {}

impl From<zbus::Error> for SystemdError {
    fn from(e: zbus::Error) -> SystemdError {
        match &e {
            zbus::Error::MethodError(name, msg, _) => {
                let msg = msg.clone().unwrap_or_else(|| name.to_string());
                match name.as_str() {
                    "org.freedesktop.DBus.Error.AccessDenied"
                    | "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired" => {
                        SystemdError::Denied(msg)
                    }
                    "org.freedesktop.systemd1.NoSuchUnit"
                    | "org.freedesktop.systemd1.LoadFailed" => SystemdError::NoSuchUnit(msg),
                    _ => SystemdError::Failed(msg),
                }
            }
            _ => SystemdError::Failed(e.to_string()),
        }
    }
}

/// What to do to a unit, as `systemctl VERB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Start,
    Stop,
    Restart,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Start => "start",
            Verb::Stop => "stop",
            Verb::Restart => "restart",
        }
    }
}

/// A job that did not end `done`, with what a user needs to see why: systemd's job result
/// (`failed`, `canceled`, `timeout`, `dependency`, `skipped`, ...), the unit's own `Result`
/// (`exit-code`, `oom-kill`, ...) and, for a failure, the unit's last journal lines.
#[derive(Debug, Clone, PartialEq)]
pub struct JobFailure {
    pub unit: String,
    pub job: String,
    pub result: String,
    pub unit_result: String,
    pub journal: Vec<String>,
}

impl std::fmt::Display for JobFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the {} job of {} ended \"{}\"",
            self.job, self.unit, self.result
        )?;
        if !self.unit_result.is_empty() && self.unit_result != "success" {
            write!(f, " (the unit's result: {})", self.unit_result)?;
        }
        if self.result == "failed" {
            write!(f, "; see journalctl -u {}", self.unit)?;
        }
        Ok(())
    }
}

/// A unit property we read, each named here once (with the interface it belongs to).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prop {
    ActiveState,
    SubState,
    /// Microseconds since the epoch of the last change of the active state.
    StateChangeTimestamp,
    ActiveEnterTimestamp,
    /// `running`, `freezing`, `frozen` or `thawing` (cgroup v2's freezer).
    FreezerState,
    /// A timer's next elapse, microseconds since the epoch; 0 when it will not elapse again.
    NextElapseUSecRealtime,
    NRestarts,
    ExecMainStartTimestamp,
    ExecMainCode,
    ExecMainStatus,
    MainPID,
    MemoryCurrent,
    MemoryMax,
    CPUQuotaPerSecUSec,
    /// CPU time used by the unit's cgroup, nanoseconds (`u64::MAX` where not accounted).
    CPUUsageNSec,
    /// A service's `Result` (`success`, `exit-code`, `oom-kill`, ...).
    Result,
    StatusText,
}

impl Prop {
    pub(crate) fn interface_and_name(self) -> (&'static str, &'static str) {
        match self {
            Prop::ActiveState => (UNIT_INTERFACE, "ActiveState"),
            Prop::SubState => (UNIT_INTERFACE, "SubState"),
            Prop::StateChangeTimestamp => (UNIT_INTERFACE, "StateChangeTimestamp"),
            Prop::ActiveEnterTimestamp => (UNIT_INTERFACE, "ActiveEnterTimestamp"),
            Prop::FreezerState => (UNIT_INTERFACE, "FreezerState"),
            Prop::NextElapseUSecRealtime => (TIMER_INTERFACE, "NextElapseUSecRealtime"),
            Prop::NRestarts => (SERVICE_INTERFACE, "NRestarts"),
            Prop::ExecMainStartTimestamp => (SERVICE_INTERFACE, "ExecMainStartTimestamp"),
            Prop::ExecMainCode => (SERVICE_INTERFACE, "ExecMainCode"),
            Prop::ExecMainStatus => (SERVICE_INTERFACE, "ExecMainStatus"),
            Prop::MainPID => (SERVICE_INTERFACE, "MainPID"),
            Prop::MemoryCurrent => (SERVICE_INTERFACE, "MemoryCurrent"),
            Prop::MemoryMax => (SERVICE_INTERFACE, "MemoryMax"),
            Prop::CPUQuotaPerSecUSec => (SERVICE_INTERFACE, "CPUQuotaPerSecUSec"),
            Prop::CPUUsageNSec => (SERVICE_INTERFACE, "CPUUsageNSec"),
            Prop::Result => (SERVICE_INTERFACE, "Result"),
            Prop::StatusText => (SERVICE_INTERFACE, "StatusText"),
        }
    }

    /// The property a (interface, name) pair of a `PropertiesChanged` signal means, if we read it.
    pub(crate) fn from_signal(interface: &str, name: &str) -> Option<Prop> {
        match (interface, name) {
            (UNIT_INTERFACE, "ActiveState") => Some(Prop::ActiveState),
            (UNIT_INTERFACE, "SubState") => Some(Prop::SubState),
            (UNIT_INTERFACE, "ActiveEnterTimestamp") => Some(Prop::ActiveEnterTimestamp),
            (TIMER_INTERFACE, "NextElapseUSecRealtime") => Some(Prop::NextElapseUSecRealtime),
            _ => None,
        }
    }
}

/// The properties of one unit that were asked for and could be read (`None`: not asked, not
/// there on this systemd, or the unit went away meanwhile).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceState {
    pub active_state: Option<String>,
    pub sub_state: Option<String>,
    pub state_change_timestamp: Option<u64>,
    pub active_enter_timestamp: Option<u64>,
    pub freezer_state: Option<String>,
    pub next_elapse_usec_realtime: Option<u64>,
    pub n_restarts: Option<u32>,
    pub exec_main_start_timestamp: Option<u64>,
    pub exec_main_code: Option<i32>,
    pub exec_main_status: Option<i32>,
    pub main_pid: Option<u32>,
    pub memory_current: Option<u64>,
    pub memory_max: Option<u64>,
    pub cpu_quota_per_sec_usec: Option<u64>,
    pub cpu_usage_nsec: Option<u64>,
    pub result: Option<String>,
    pub status_text: Option<String>,
}

impl ServiceState {
    /// Stores `value` as `prop`; a value of the wrong type is left out.
    pub(crate) fn set(&mut self, prop: Prop, value: OwnedValue) {
        fn get<T: TryFrom<OwnedValue>>(v: OwnedValue) -> Option<T> {
            T::try_from(v).ok()
        }
        match prop {
            Prop::ActiveState => self.active_state = get(value),
            Prop::SubState => self.sub_state = get(value),
            Prop::StateChangeTimestamp => self.state_change_timestamp = get(value),
            Prop::ActiveEnterTimestamp => self.active_enter_timestamp = get(value),
            Prop::FreezerState => self.freezer_state = get(value),
            Prop::NextElapseUSecRealtime => self.next_elapse_usec_realtime = get(value),
            Prop::NRestarts => self.n_restarts = get(value),
            Prop::ExecMainStartTimestamp => self.exec_main_start_timestamp = get(value),
            Prop::ExecMainCode => self.exec_main_code = get(value),
            Prop::ExecMainStatus => self.exec_main_status = get(value),
            Prop::MainPID => self.main_pid = get(value),
            Prop::MemoryCurrent => self.memory_current = get(value),
            Prop::MemoryMax => self.memory_max = get(value),
            Prop::CPUQuotaPerSecUSec => self.cpu_quota_per_sec_usec = get(value),
            Prop::CPUUsageNSec => self.cpu_usage_nsec = get(value),
            Prop::Result => self.result = get(value),
            Prop::StatusText => self.status_text = get(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_paths_are_encoded_as_systemd_does() {
        assert_eq!(
            unit_path("homelab-shutdown@x.timer").as_str(),
            "/org/freedesktop/systemd1/unit/homelab_2dshutdown_40x_2etimer"
        );
        assert_eq!(
            unit_path(r"model@a\x2db.service").as_str(),
            "/org/freedesktop/systemd1/unit/model_40a_5cx2db_2eservice"
        );
    }

    #[test]
    fn rows_decode_from_the_wire_signature() {
        assert_eq!(
            UnitRow::SIGNATURE.to_string(),
            "(ssssssouso)",
            "ListUnitsByPatterns returns a(ssssssouso)"
        );
    }
}
