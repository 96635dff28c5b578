//! The few systemd and logind D-Bus methods we call, as blocking zbus proxies, and their errors.
//! A D-Bus method or property used anywhere in the project is named here, once.

use std::sync::OnceLock;
use zbus::blocking::Connection;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};

const SYSTEMD: &str = "org.freedesktop.systemd1";
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";

/// One entry of `ListUnitsByPatterns`: name, description, load, active, sub state, followed,
/// object path, job id, job type, job path.
pub type UnitStatus = (
    String,
    String,
    String,
    String,
    String,
    String,
    OwnedObjectPath,
    u32,
    String,
    OwnedObjectPath,
);

/// One change `EnableUnitFiles`/`DisableUnitFiles` made: kind (`symlink`, `unlink`), file, target.
pub type UnitFileChange = (String, String, String);

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1",
    gen_async = false,
    blocking_name = "ManagerProxy"
)]
pub trait Manager {
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn list_units_by_patterns(
        &self,
        states: &[&str],
        patterns: &[&str],
    ) -> zbus::Result<Vec<UnitStatus>>;
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn subscribe(&self) -> zbus::Result<()>;
    fn set_unit_properties(
        &self,
        name: &str,
        runtime: bool,
        properties: &[(&str, zbus::zvariant::Value<'_>)],
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
    fn get_unit_file_state(&self, file: &str) -> zbus::Result<String>;
    fn reload(&self) -> zbus::Result<()>;
    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[(&str, zbus::zvariant::Value<'_>)],
        aux: &[(&str, &[(&str, zbus::zvariant::Value<'_>)])],
    ) -> zbus::Result<OwnedObjectPath>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1",
    gen_async = false,
    blocking_name = "UnitProxy"
)]
pub trait Unit {
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn sub_state(&self) -> zbus::Result<String>;
    /// Microseconds since the epoch of the last change of the active state.
    #[zbus(property)]
    fn state_change_timestamp(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn active_enter_timestamp(&self) -> zbus::Result<u64>;
    /// `running`, `freezing`, `frozen` or `thawing` (cgroup v2's freezer).
    #[zbus(property)]
    fn freezer_state(&self) -> zbus::Result<String>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Service",
    default_service = "org.freedesktop.systemd1",
    gen_async = false,
    blocking_name = "ServiceUnitProxy"
)]
pub trait ServiceUnit {
    #[zbus(property)]
    fn result(&self) -> zbus::Result<String>;
    #[zbus(property, name = "NRestarts")]
    fn n_restarts(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn memory_current(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn exec_main_status(&self) -> zbus::Result<i32>;
    #[zbus(property, name = "MainPID")]
    fn main_pid(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn status_text(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn memory_max(&self) -> zbus::Result<u64>;
    #[zbus(property, name = "CPUQuotaPerSecUSec")]
    fn cpu_quota_per_sec_usec(&self) -> zbus::Result<u64>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Timer",
    default_service = "org.freedesktop.systemd1",
    gen_async = false,
    blocking_name = "TimerProxy"
)]
pub trait Timer {
    /// Microseconds since the epoch; 0 when the timer will not elapse again.
    #[zbus(property, name = "NextElapseUSecRealtime")]
    fn next_elapse_usec_realtime(&self) -> zbus::Result<u64>;
}

#[zbus::proxy(
    interface = "org.freedesktop.login1.Manager",
    default_service = "org.freedesktop.login1",
    default_path = "/org/freedesktop/login1",
    gen_async = false,
    blocking_name = "LoginManagerProxy"
)]
pub trait LoginManager {
    fn power_off(&self, interactive: bool) -> zbus::Result<()>;
    fn reboot(&self, interactive: bool) -> zbus::Result<()>;
    fn inhibit(
        &self,
        what: &str,
        who: &str,
        why: &str,
        mode: &str,
    ) -> zbus::Result<zbus::zvariant::OwnedFd>;
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

/// The system bus, connected on first use (a request that needs no D-Bus never waits for it).
pub fn system_bus() -> Result<&'static Connection, SystemdError> {
    static BUS: OnceLock<Connection> = OnceLock::new();
    if let Some(c) = BUS.get() {
        return Ok(c);
    }
    let conn = Connection::system()
        .map_err(|e| SystemdError::Failed(format!("cannot reach the system bus: {e}")))?;
    Ok(BUS.get_or_init(|| conn))
}

pub fn manager() -> Result<ManagerProxy<'static>, SystemdError> {
    Ok(ManagerProxy::new(system_bus()?)?)
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

/// A job ends with one `JobRemoved` signal; this is its match rule.
fn job_removed_rule() -> zbus::Result<zbus::MatchRule<'static>> {
    Ok(zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender(SYSTEMD)?
        .interface("org.freedesktop.systemd1.Manager")?
        .member("JobRemoved")?
        .path("/org/freedesktop/systemd1")?
        .build())
}

/// Enqueues a job with `enqueue` (a call that returns the job's object path) and waits for its
/// `JobRemoved` signal, as `systemctl` does: the match is in place before the call, so the signal
/// cannot be missed. `timeout` bounds the wait (`None`: as long as systemd takes, bounded by the
/// unit's own job timeouts). A result other than `done` is a [`SystemdError::Job`].
pub fn wait_for_job(
    unit: &str,
    verb: &str,
    timeout: Option<std::time::Duration>,
    enqueue: impl FnOnce() -> Result<OwnedObjectPath, SystemdError>,
) -> Result<(), SystemdError> {
    use futures_lite::StreamExt;
    let bus = system_bus()?;
    let mut signals =
        zbus::blocking::MessageIterator::for_match_rule(job_removed_rule()?, bus, Some(1024))?
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
        unit_result: unit_result(unit).unwrap_or_default(),
        journal: if result == "failed" {
            crate::systemd::journal_lines(unit, 10, "cat").unwrap_or_default()
        } else {
            Vec::new()
        },
        result,
    })))
}

/// Runs `verb` on `unit` and waits for the job to end (see [`wait_for_job`]).
pub fn run_and_wait(
    verb: Verb,
    unit: &str,
    timeout: Option<std::time::Duration>,
) -> Result<(), SystemdError> {
    let m = manager()?;
    wait_for_job(unit, verb.as_str(), timeout, || {
        Ok(match verb {
            Verb::Start => m.start_unit(unit, "replace")?,
            Verb::Stop => m.stop_unit(unit, "replace")?,
            Verb::Restart => m.restart_unit(unit, "replace")?,
        })
    })
}

/// Starts `unit` and waits for the job to finish (a timer's start takes milliseconds).
pub fn start_unit_and_wait(unit: &str) -> Result<(), SystemdError> {
    run_and_wait(Verb::Start, unit, Some(std::time::Duration::from_secs(10)))
}

/// The unit's `Result` property (`success`, `exit-code`, `oom-kill`, ...), from the interface
/// of its type.
pub fn unit_result(unit: &str) -> Option<String> {
    let interface = match unit.rsplit_once('.')?.1 {
        "service" => SERVICE_INTERFACE,
        "timer" => "org.freedesktop.systemd1.Timer",
        "socket" => "org.freedesktop.systemd1.Socket",
        "mount" => "org.freedesktop.systemd1.Mount",
        _ => return None,
    };
    let path = manager().ok()?.load_unit(unit).ok()?;
    String::try_from(property(&path, interface, "Result")?).ok()
}

/// Proxies for the unit `name` (loaded if it is not), without property caching.
pub fn unit(name: &str) -> Result<(UnitProxy<'static>, ServiceUnitProxy<'static>), SystemdError> {
    use zbus::proxy::CacheProperties::No;
    let path = manager()?.load_unit(name)?;
    let bus = system_bus()?;
    Ok((
        UnitProxy::builder(bus)
            .path(path.clone())?
            .cache_properties(No)
            .build()?,
        ServiceUnitProxy::builder(bus)
            .path(path)?
            .cache_properties(No)
            .build()?,
    ))
}

/// Units matching `patterns` (shell globs, as `systemctl list-units PATTERN`), in any state.
pub fn list_units(patterns: &[&str]) -> Result<Vec<UnitStatus>, SystemdError> {
    Ok(manager()?.list_units_by_patterns(&[], patterns)?)
}

/// When the timer at `path` elapses next, in microseconds since the epoch (0: never).
pub fn timer_next_elapse(path: &OwnedObjectPath) -> Result<u64, SystemdError> {
    let timer = TimerProxy::builder(system_bus()?)
        .path(path.clone())?
        .build()?;
    Ok(timer.next_elapse_usec_realtime()?)
}

/// The interface of a service unit's own properties (MainPID, NRestarts, MemoryMax, ...).
pub const SERVICE_INTERFACE: &str = "org.freedesktop.systemd1.Service";

/// How many `Get` calls [`properties`] keeps in flight: well below dbus-daemon's default limit of
/// 128 pending replies per connection (`max_replies_per_connection`); past that limit the bus
/// answers `LimitsExceeded`, and those few are asked again one at a time.
const PIPELINE_WINDOW: usize = 64;

/// Reads many properties, each a (unit object path, interface, property) triple, in one go: the
/// `Get` calls are pipelined (up to [`PIPELINE_WINDOW`] in flight) instead of each waiting for its
/// reply, so the cost is the bus's and systemd's work per message, not a round trip per property.
/// The answer is in the order asked; `None` where the property could not be read (an older
/// systemd without it, a unit gone meanwhile).
pub fn properties(
    requests: &[(&OwnedObjectPath, &str, &str)],
) -> Result<Vec<Option<OwnedValue>>, SystemdError> {
    use zbus::message::{Message, Type};
    let bus = system_bus()?;
    let call = |i: usize| -> zbus::Result<Message> {
        let (path, interface, name) = requests[i];
        Message::method_call(path.as_str(), "Get")?
            .destination(SYSTEMD)?
            .interface(PROPERTIES)?
            .build(&(interface, name))
    };
    // The stream exists before the first call goes out, so no reply can be missed.
    let mut replies = zbus::blocking::MessageIterator::from(bus);
    let mut out: Vec<Option<OwnedValue>> = (0..requests.len()).map(|_| None).collect();
    let mut waiting = std::collections::HashMap::new();
    let mut again = Vec::new();
    let mut next = 0;
    while next < requests.len() || !waiting.is_empty() {
        while next < requests.len() && waiting.len() < PIPELINE_WINDOW {
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
        let Some(i) = reply
            .header()
            .reply_serial()
            .and_then(|s| waiting.remove(&s))
        else {
            continue;
        };
        match reply.message_type() {
            Type::MethodReturn => out[i] = reply.body().deserialize::<OwnedValue>().ok(),
            Type::Error
                if reply.header().error_name().map(|n| n.as_str())
                    == Some("org.freedesktop.DBus.Error.LimitsExceeded") =>
            {
                again.push(i)
            }
            _ => {}
        }
    }
    drop(replies);
    for i in again {
        let (path, interface, name) = requests[i];
        out[i] = property(path, interface, name);
    }
    Ok(out)
}

/// One property, with one `Get` call; `None` when it cannot be read.
fn property(path: &OwnedObjectPath, interface: &str, name: &str) -> Option<OwnedValue> {
    let reply = system_bus()
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

/// One numeric property of a service unit (e.g. `MemoryMax`), `None` when it cannot be read.
pub fn service_u64(path: &OwnedObjectPath, name: &str) -> Option<u64> {
    u64::try_from(property(path, SERVICE_INTERFACE, name)?).ok()
}
