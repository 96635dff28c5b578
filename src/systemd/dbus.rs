//! The systemd and logind D-Bus calls we make, through one owned handle ([`Bus`]), and their errors.
//! A D-Bus method, property or interface used anywhere in the project is named here, once.

use serde::Deserialize;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use zbus::blocking::Connection;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Type, Value};

pub(crate) const SYSTEMD: &str = "org.freedesktop.systemd1";
pub(crate) const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";
pub(crate) const UNIT_PATH_PREFIX: &str = "/org/freedesktop/systemd1/unit";
pub(crate) const MANAGER_INTERFACE: &str = "org.freedesktop.systemd1.Manager";
pub(crate) const UNIT_INTERFACE: &str = "org.freedesktop.systemd1.Unit";
pub(crate) const TIMER_INTERFACE: &str = "org.freedesktop.systemd1.Timer";
/// The interface of a service unit's own properties (MainPID, NRestarts, MemoryMax, ...).
pub(crate) const SERVICE_INTERFACE: &str = "org.freedesktop.systemd1.Service";
pub(crate) const PROPERTIES: &str = "org.freedesktop.DBus.Properties";

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

/// One change `EnableUnitFiles`/`DisableUnitFiles` made: kind (`symlink`, `unlink`), file, target.
pub type UnitFileChange = (String, String, String);

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1",
    gen_async = false,
    blocking_name = "ManagerProxy"
)]
trait Manager {
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn list_units_by_patterns(
        &self,
        states: &[&str],
        patterns: &[&str],
    ) -> zbus::Result<Vec<UnitRow>>;
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn subscribe(&self) -> zbus::Result<()>;
    fn set_unit_properties(
        &self,
        name: &str,
        runtime: bool,
        properties: &[(&str, Value<'_>)],
    ) -> zbus::Result<()>;
    fn freeze_unit(&self, name: &str) -> zbus::Result<()>;
    fn thaw_unit(&self, name: &str) -> zbus::Result<()>;
    fn enable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<(bool, Vec<UnitFileChange>)>;
    fn disable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
    ) -> zbus::Result<Vec<UnitFileChange>>;
    fn reload(&self) -> zbus::Result<()>;
    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[(&str, Value<'_>)],
        aux: &[(&str, &[(&str, Value<'_>)])],
    ) -> zbus::Result<OwnedObjectPath>;
}

#[zbus::proxy(
    interface = "org.freedesktop.login1.Manager",
    default_service = "org.freedesktop.login1",
    default_path = "/org/freedesktop/login1",
    gen_async = false,
    blocking_name = "LoginManagerProxy"
)]
trait LoginManager {
    fn inhibit(
        &self,
        what: &str,
        who: &str,
        why: &str,
        mode: &str,
    ) -> zbus::Result<zbus::zvariant::OwnedFd>;
    fn list_inhibitors(&self) -> zbus::Result<Vec<Inhibitor>>;
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

/// The system bus, owned: made once in a binary's `main` and handed to what needs systemd.
/// Cloning shares the connection. It connects on first use, so a request that needs no D-Bus
/// (`/health`) never waits for the bus, and a bus that is briefly away fails only the requests
/// that need it (a later one connects).
#[derive(Clone, Default)]
pub struct Bus {
    conn: Arc<OnceLock<Connection>>,
}

/// How many `Get` calls [`Bus::states`] keeps in flight: well below dbus-daemon's default limit
/// of 128 pending replies per connection (`max_replies_per_connection`); past that limit the bus
/// answers `LimitsExceeded`, and those few are asked again one at a time.
const PIPELINE_WINDOW: usize = 64;

impl Bus {
    /// The system bus, not connected yet.
    pub fn system() -> Bus {
        Bus::default()
    }

    /// The connection, made now if it is not yet.
    pub(crate) fn conn(&self) -> Result<&Connection, SystemdError> {
        if let Some(c) = self.conn.get() {
            return Ok(c);
        }
        let conn = Connection::system()
            .map_err(|e| SystemdError::Failed(format!("cannot reach the system bus: {e}")))?;
        Ok(self.conn.get_or_init(|| conn))
    }

    /// Connects now (if not yet), for a caller that wants to know the bus is there before it
    /// starts a series of calls.
    pub fn connect(&self) -> Result<(), SystemdError> {
        self.conn().map(|_| ())
    }

    fn manager(&self) -> Result<ManagerProxy<'_>, SystemdError> {
        Ok(ManagerProxy::new(self.conn()?)?)
    }

    fn login(&self) -> Result<LoginManagerProxy<'_>, SystemdError> {
        Ok(LoginManagerProxy::new(self.conn()?)?)
    }

    /// Units matching `patterns` (shell globs, as `systemctl list-units PATTERN`), in any state.
    pub fn list_units(&self, patterns: &[&str]) -> Result<Vec<UnitRow>, SystemdError> {
        Ok(self.manager()?.list_units_by_patterns(&[], patterns)?)
    }

    /// Enqueues `verb` on `unit` and returns without waiting for the job (as `systemctl
    /// --no-block`): the boot-time restore and the coordinator's emergency stop.
    pub fn enqueue(&self, verb: Verb, unit: &str) -> Result<(), SystemdError> {
        let m = self.manager()?;
        match verb {
            Verb::Start => m.start_unit(unit, "replace")?,
            Verb::Stop => m.stop_unit(unit, "replace")?,
            Verb::Restart => m.restart_unit(unit, "replace")?,
        };
        Ok(())
    }

    /// Runs `verb` on `unit` and waits for the job to end (see [`Bus::wait_for_job`]).
    pub fn run_and_wait(
        &self,
        verb: Verb,
        unit: &str,
        timeout: Option<Duration>,
    ) -> Result<(), SystemdError> {
        let m = self.manager()?;
        self.wait_for_job(unit, verb.as_str(), timeout, || {
            Ok(match verb {
                Verb::Start => m.start_unit(unit, "replace")?,
                Verb::Stop => m.stop_unit(unit, "replace")?,
                Verb::Restart => m.restart_unit(unit, "replace")?,
            })
        })
    }

    /// Creates a transient unit (as `systemd-run`) and waits for its start job.
    pub fn start_transient_and_wait(
        &self,
        unit: &str,
        settings: &[super::transient::Setting],
    ) -> Result<(), SystemdError> {
        let properties: Vec<(&str, Value<'_>)> = settings.iter().map(|s| s.to_property()).collect();
        let m = self.manager()?;
        self.wait_for_job(unit, "start", None, || {
            Ok(m.start_transient_unit(unit, "fail", &properties, &[])?)
        })
    }

    /// Enqueues a job with `enqueue` (a call that returns the job's object path) and waits for its
    /// `JobRemoved` signal, as `systemctl` does: the match is in place before the call, so the
    /// signal cannot be missed. `timeout` bounds the wait (`None`: as long as systemd takes,
    /// bounded by the unit's own job timeouts). A result other than `done` is a
    /// [`SystemdError::Job`].
    fn wait_for_job(
        &self,
        unit: &str,
        verb: &str,
        timeout: Option<Duration>,
        enqueue: impl FnOnce() -> Result<OwnedObjectPath, SystemdError>,
    ) -> Result<(), SystemdError> {
        use futures_lite::StreamExt;
        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender(SYSTEMD)?
            .interface(MANAGER_INTERFACE)?
            .member("JobRemoved")?
            .path(SYSTEMD_PATH)?
            .build();
        let mut signals =
            zbus::blocking::MessageIterator::for_match_rule(rule, self.conn()?, Some(1024))?
                .into_inner();
        let job = enqueue()?;
        let wait = async {
            while let Some(msg) = signals.next().await {
                let Ok(msg) = msg else { continue };
                let body = msg.body();
                let Ok((_, path, _, result)) =
                    body.deserialize::<(u32, zbus::zvariant::ObjectPath<'_>, &str, &str)>()
                else {
                    continue;
                };
                if path.as_str() == job.as_str() {
                    return Some(result.to_string());
                }
            }
            None
        };
        let result = match timeout {
            None => async_io::block_on(wait),
            Some(t) => async_io::block_on(futures_lite::future::or(wait, async {
                async_io::Timer::after(t).await;
                None
            })),
        };
        let Some(result) = result else {
            return Err(SystemdError::Failed(match timeout {
                Some(t) => format!("the {verb} job of {unit} did not finish within {t:?}"),
                None => format!("lost the system bus while waiting for the {verb} job of {unit}"),
            }));
        };
        if result == "done" {
            return Ok(());
        }
        Err(SystemdError::Job(Box::new(JobFailure {
            unit: unit.to_string(),
            job: verb.to_string(),
            unit_result: self.unit_result(unit).unwrap_or_default(),
            journal: if result == "failed" {
                crate::systemd::journal_lines(unit, 10, "cat").unwrap_or_default()
            } else {
                Vec::new()
            },
            result,
        })))
    }

    /// The unit's `Result` property (`success`, `exit-code`, `oom-kill`, ...), from the
    /// interface of its type.
    fn unit_result(&self, unit: &str) -> Option<String> {
        let interface = match unit.rsplit_once('.')?.1 {
            "service" => SERVICE_INTERFACE,
            "timer" => TIMER_INTERFACE,
            "socket" => "org.freedesktop.systemd1.Socket",
            "mount" => "org.freedesktop.systemd1.Mount",
            _ => return None,
        };
        let path = self.manager().ok()?.load_unit(unit).ok()?;
        String::try_from(self.property(&path, interface, "Result")?).ok()
    }

    /// `props` of the unit `unit` (loaded if it is not), in one pipelined batch.
    pub fn state(&self, unit: &str, props: &[Prop]) -> Result<ServiceState, SystemdError> {
        let path = self.manager()?.load_unit(unit)?;
        Ok(self
            .states(&[(&path, props)])?
            .pop()
            .expect("one state per request"))
    }

    /// Reads many units' properties, each unit by its object path, in one go: the `Get` calls
    /// are pipelined (up to [`PIPELINE_WINDOW`] in flight) instead of each waiting for its reply,
    /// so the cost is the bus's and systemd's work per message, not a round trip per property.
    /// One state per request, in the order asked.
    pub fn states(
        &self,
        requests: &[(&OwnedObjectPath, &[Prop])],
    ) -> Result<Vec<ServiceState>, SystemdError> {
        use zbus::message::{Message, Type};
        let flat: Vec<(usize, &OwnedObjectPath, Prop)> = requests
            .iter()
            .enumerate()
            .flat_map(|(i, (path, props))| props.iter().map(move |p| (i, *path, *p)))
            .collect();
        let mut out = vec![ServiceState::default(); requests.len()];
        let bus = self.conn()?;
        let call = |k: usize| -> zbus::Result<Message> {
            let (_, path, prop) = flat[k];
            Message::method_call(path.as_str(), "Get")?
                .destination(SYSTEMD)?
                .interface(PROPERTIES)?
                .build(&prop.interface_and_name())
        };
        // The stream exists before the first call goes out, so no reply can be missed.
        let mut replies = zbus::blocking::MessageIterator::from(bus);
        let mut waiting = std::collections::HashMap::new();
        let mut again = Vec::new();
        let mut next = 0;
        while next < flat.len() || !waiting.is_empty() {
            while next < flat.len() && waiting.len() < PIPELINE_WINDOW {
                let msg = call(next)?;
                waiting.insert(msg.primary_header().serial_num(), next);
                bus.send(&msg)?;
                next += 1;
            }
            let reply = match replies.next() {
                Some(reply) => reply?,
                None => {
                    return Err(SystemdError::Failed(
                        "the system bus connection closed".into(),
                    ));
                }
            };
            let Some(k) = reply
                .header()
                .reply_serial()
                .and_then(|s| waiting.remove(&s))
            else {
                continue;
            };
            match reply.message_type() {
                Type::MethodReturn => {
                    if let Ok(v) = reply.body().deserialize::<OwnedValue>() {
                        out[flat[k].0].set(flat[k].2, v);
                    }
                }
                Type::Error
                    if reply.header().error_name().map(|n| n.as_str())
                        == Some("org.freedesktop.DBus.Error.LimitsExceeded") =>
                {
                    again.push(k)
                }
                _ => {}
            }
        }
        drop(replies);
        for k in again {
            let (i, path, prop) = flat[k];
            let (interface, name) = prop.interface_and_name();
            if let Some(v) = self.property(path, interface, name) {
                out[i].set(prop, v);
            }
        }
        Ok(out)
    }

    /// One property, with one `Get` call; `None` when it cannot be read.
    fn property(&self, path: &OwnedObjectPath, interface: &str, name: &str) -> Option<OwnedValue> {
        let reply = self
            .conn()
            .ok()?
            .call_method(
                Some(SYSTEMD),
                path,
                Some(PROPERTIES),
                "Get",
                &(interface, name),
            )
            .ok()?;
        reply.body().deserialize::<OwnedValue>().ok()
    }

    /// Sets a unit's memory limit and CPU quota for this boot (as `systemctl set-property
    /// --runtime UNIT MemoryMax= CPUQuota=`); `u64::MAX` is no limit.
    pub fn set_limits(
        &self,
        unit: &str,
        memory_max: u64,
        cpu_quota_usec: u64,
    ) -> Result<(), SystemdError> {
        Ok(self.manager()?.set_unit_properties(
            unit,
            true,
            &[
                ("MemoryMax", Value::from(memory_max)),
                ("CPUQuotaPerSecUSec", Value::from(cpu_quota_usec)),
            ],
        )?)
    }

    /// Sets a unit's CPU quota for this boot; `u64::MAX` is no quota.
    pub fn set_cpu_quota(&self, unit: &str, cpu_quota_usec: u64) -> Result<(), SystemdError> {
        Ok(self.manager()?.set_unit_properties(
            unit,
            true,
            &[("CPUQuotaPerSecUSec", Value::from(cpu_quota_usec))],
        )?)
    }

    pub fn freeze(&self, unit: &str) -> Result<(), SystemdError> {
        Ok(self.manager()?.freeze_unit(unit)?)
    }

    pub fn thaw(&self, unit: &str) -> Result<(), SystemdError> {
        Ok(self.manager()?.thaw_unit(unit)?)
    }

    /// `systemctl enable UNIT` (the symlinks), then `daemon-reload`.
    pub fn enable(&self, unit: &str) -> Result<(), SystemdError> {
        let m = self.manager()?;
        m.enable_unit_files(&[unit], false, false)?;
        Ok(m.reload()?)
    }

    /// `systemctl disable UNIT`, then `daemon-reload`.
    pub fn disable(&self, unit: &str) -> Result<(), SystemdError> {
        let m = self.manager()?;
        m.disable_unit_files(&[unit], false)?;
        Ok(m.reload()?)
    }

    /// Asks systemd to send its unit signals (`UnitNew`, `UnitRemoved`, `JobRemoved`, and
    /// `PropertiesChanged` of units), which it sends only while a client is subscribed.
    pub(crate) fn subscribe(&self) -> Result<(), SystemdError> {
        Ok(self.manager()?.subscribe()?)
    }

    /// Subscribes, and returns the object path of each unit whose properties change, as they
    /// change (for a caller that re-reads what it needs on each).
    pub fn unit_changes(
        &self,
    ) -> Result<impl Iterator<Item = OwnedObjectPath> + Send + 'static, SystemdError> {
        self.subscribe()?;
        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .interface(PROPERTIES)?
            .member("PropertiesChanged")?
            .path_namespace(UNIT_PATH_PREFIX)?
            .build();
        let iter = zbus::blocking::MessageIterator::for_match_rule(rule, self.conn()?, Some(256))?;
        Ok(iter
            .flatten()
            .filter_map(|msg| msg.header().path().map(|p| p.to_owned().into())))
    }

    /// A logind `block` inhibitor for shutdown, held as long as the descriptor is open: the
    /// machine counts as busy for power schedules, and logind refuses unprivileged power-offs.
    pub fn inhibit_shutdown_block(
        &self,
        who: &str,
        why: &str,
    ) -> Result<zbus::zvariant::OwnedFd, SystemdError> {
        Ok(self.login()?.inhibit("shutdown", who, why, "block")?)
    }

    /// The inhibitors that block shutdown now (see [`Inhibitor::blocks_shutdown`]).
    pub fn shutdown_blockers(&self) -> Result<Vec<Inhibitor>, SystemdError> {
        let mut all = self.login()?.list_inhibitors()?;
        all.retain(Inhibitor::blocks_shutdown);
        Ok(all)
    }

    /// Powers off: starts `poweroff.target` with `replace-irreversibly`, as `systemctl poweroff`
    /// does without logind (call as root, once the schedule's policy has been applied). Not
    /// through logind: from systemd 256 on, logind refuses even root while a block inhibitor is
    /// held, and the policy has decided already.
    pub fn power_off(&self) -> Result<(), SystemdError> {
        self.manager()?
            .start_unit("poweroff.target", "replace-irreversibly")?;
        Ok(())
    }

    /// Reboots: `reboot.target`, as [`Bus::power_off`].
    pub fn reboot(&self) -> Result<(), SystemdError> {
        self.manager()?
            .start_unit("reboot.target", "replace-irreversibly")?;
        Ok(())
    }
}

/// What the HTTP services need of systemd: implemented by [`Bus`], and in tests by
/// [`crate::systemd::fake::FakeSystemd`], so that their logic runs in-process.
pub trait Systemd: Send + Sync {
    /// Units matching `patterns` (shell globs), in any state.
    fn list_units(&self, patterns: &[&str]) -> Result<Vec<UnitRow>, SystemdError>;
    /// Runs `verb` on `unit` and waits for the job to end; a job that does not end `done` is a
    /// [`SystemdError::Job`].
    fn run_and_wait(
        &self,
        verb: Verb,
        unit: &str,
        timeout: Option<Duration>,
    ) -> Result<(), SystemdError>;
    /// `props` of the unit `unit` (loaded if it is not).
    fn state(&self, unit: &str, props: &[Prop]) -> Result<ServiceState, SystemdError>;
    /// `props` of many units by object path, in one batch.
    fn states(
        &self,
        requests: &[(&OwnedObjectPath, &[Prop])],
    ) -> Result<Vec<ServiceState>, SystemdError>;
}

impl Systemd for Bus {
    fn list_units(&self, patterns: &[&str]) -> Result<Vec<UnitRow>, SystemdError> {
        Bus::list_units(self, patterns)
    }
    fn run_and_wait(
        &self,
        verb: Verb,
        unit: &str,
        timeout: Option<Duration>,
    ) -> Result<(), SystemdError> {
        Bus::run_and_wait(self, verb, unit, timeout)
    }
    fn state(&self, unit: &str, props: &[Prop]) -> Result<ServiceState, SystemdError> {
        Bus::state(self, unit, props)
    }
    fn states(
        &self,
        requests: &[(&OwnedObjectPath, &[Prop])],
    ) -> Result<Vec<ServiceState>, SystemdError> {
        Bus::states(self, requests)
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
