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
    interface = "org.freedesktop.systemd1.Job",
    default_service = "org.freedesktop.systemd1",
    gen_async = false,
    blocking_name = "JobProxy"
)]
pub trait Job {
    #[zbus(property)]
    fn state(&self) -> zbus::Result<String>;
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
}

impl std::fmt::Display for SystemdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SystemdError::Denied(m) => write!(f, "permission denied by polkit: {m}"),
            SystemdError::NoSuchUnit(m) => write!(f, "no such unit: {m}"),
            SystemdError::Failed(m) => write!(f, "systemd: {m}"),
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

/// Waits until the job at `job` has left systemd's queue (its object is gone), as `systemctl`
/// does before it reports; false when it is still there after `timeout`.
pub fn wait_for_job(
    job: &OwnedObjectPath,
    timeout: std::time::Duration,
) -> Result<bool, SystemdError> {
    let proxy = JobProxy::builder(system_bus()?)
        .path(job.clone())?
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()?;
    let deadline = std::time::Instant::now() + timeout;
    while proxy.state().is_ok() {
        if std::time::Instant::now() > deadline {
            return Ok(false);
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    Ok(true)
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

/// Runs `verb` on `unit` and waits for the job to finish, as `systemctl` does.
pub fn run_and_wait(
    verb: Verb,
    unit: &str,
    timeout: std::time::Duration,
) -> Result<(), SystemdError> {
    let m = manager()?;
    let job = match verb {
        Verb::Start => m.start_unit(unit, "replace")?,
        Verb::Stop => m.stop_unit(unit, "replace")?,
        Verb::Restart => m.restart_unit(unit, "replace")?,
    };
    if !wait_for_job(&job, timeout)? {
        return Err(SystemdError::Failed(format!(
            "the {} job of {unit} did not finish within {timeout:?}",
            verb.as_str()
        )));
    }
    Ok(())
}

/// Starts `unit` and waits for the job to finish (a timer's start takes milliseconds).
pub fn start_unit_and_wait(unit: &str) -> Result<(), SystemdError> {
    run_and_wait(Verb::Start, unit, std::time::Duration::from_secs(10))
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
