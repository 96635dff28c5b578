//! The D-Bus names we use (services, object paths, interfaces), each named here once, for the
//! bus handle, the decoded values and the view alike.

pub(crate) const SYSTEMD: &str = "org.freedesktop.systemd1";
pub(crate) const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";
pub(crate) const UNIT_PATH_PREFIX: &str = "/org/freedesktop/systemd1/unit";
pub(crate) const MANAGER_INTERFACE: &str = "org.freedesktop.systemd1.Manager";
pub(crate) const UNIT_INTERFACE: &str = "org.freedesktop.systemd1.Unit";
pub(crate) const TIMER_INTERFACE: &str = "org.freedesktop.systemd1.Timer";
/// The interface of a service unit's own properties (MainPID, NRestarts, MemoryMax, ...).
pub(crate) const SERVICE_INTERFACE: &str = "org.freedesktop.systemd1.Service";
pub(crate) const PROPERTIES: &str = "org.freedesktop.DBus.Properties";
