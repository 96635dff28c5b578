//! The one test seam for systemd and logind: everything the project asks of them goes through
//! [`Systemd`], implemented by [`Bus`] and, in tests, by [`crate::systemd::fake::FakeSystemd`],
//! so that the services, the coordinator, a schedule's gate, the boot restore and the idle check
//! run in-process against the fake, and the e2e suite proves the wiring.

use super::dbus::Bus;
use super::transient::Setting;
use super::types::{Inhibitor, Prop, ServiceState, SystemdError, UnitRow, Verb};
use std::time::Duration;
use zbus::zvariant::{OwnedFd, OwnedObjectPath};

/// The object paths of units whose properties changed, as they change.
pub type UnitChanges = Box<dyn Iterator<Item = OwnedObjectPath> + Send>;

/// What the project needs of systemd (units, jobs, limits) and of logind (inhibitors).
pub trait Systemd: Send + Sync {
    /// Reaches the bus now (if not yet), for a caller that wants to know it is there before a
    /// series of calls. (A default, so that an implementation without a connection to make
    /// need not say so.)
    fn connect(&self) -> Result<(), SystemdError> {
        Ok(())
    }
    /// Units matching `patterns` (shell globs), in any state.
    fn list_units(&self, patterns: &[&str]) -> Result<Vec<UnitRow>, SystemdError>;
    /// Enqueues `verb` on `unit` without waiting for the job (as `systemctl --no-block`).
    fn enqueue(&self, verb: Verb, unit: &str) -> Result<(), SystemdError>;
    /// Runs `verb` on `unit` and waits for the job to end; a job that does not end `done` is a
    /// [`SystemdError::Job`].
    fn run_and_wait(
        &self,
        verb: Verb,
        unit: &str,
        timeout: Option<Duration>,
    ) -> Result<(), SystemdError>;
    /// Creates a transient unit (as `systemd-run`) and waits for its start job.
    fn start_transient_and_wait(
        &self,
        unit: &str,
        settings: &[Setting],
    ) -> Result<(), SystemdError>;
    /// `props` of the unit `unit` (loaded if it is not).
    fn state(&self, unit: &str, props: &[Prop]) -> Result<ServiceState, SystemdError>;
    /// `props` of many units by object path, in one batch.
    fn states(
        &self,
        requests: &[(&OwnedObjectPath, &[Prop])],
    ) -> Result<Vec<ServiceState>, SystemdError>;
    /// Sets a unit's `MemoryMax=` and CPU quota for this boot; `u64::MAX` is no limit.
    fn set_limits(
        &self,
        unit: &str,
        memory_max: u64,
        cpu_quota_usec: u64,
    ) -> Result<(), SystemdError>;
    /// Sets a unit's CPU quota for this boot; `u64::MAX` is no quota.
    fn set_cpu_quota(&self, unit: &str, cpu_quota_usec: u64) -> Result<(), SystemdError>;
    /// Freezes a unit's processes (cgroup v2).
    fn freeze(&self, unit: &str) -> Result<(), SystemdError>;
    /// Thaws what [`Systemd::freeze`] froze.
    fn thaw(&self, unit: &str) -> Result<(), SystemdError>;
    /// `systemctl enable UNIT`, then `daemon-reload`.
    fn enable(&self, unit: &str) -> Result<(), SystemdError>;
    /// `systemctl disable UNIT`, then `daemon-reload`.
    fn disable(&self, unit: &str) -> Result<(), SystemdError>;
    /// Subscribes, and yields the object path of each unit whose properties change.
    fn unit_changes(&self) -> Result<UnitChanges, SystemdError>;
    /// A logind `block` inhibitor for shutdown, held as long as the descriptor is open.
    fn inhibit_shutdown_block(&self, who: &str, why: &str) -> Result<OwnedFd, SystemdError>;
    /// The inhibitors that block shutdown now (see [`Inhibitor::blocks_shutdown`]).
    fn shutdown_blockers(&self) -> Result<Vec<Inhibitor>, SystemdError>;
    /// Powers the machine off, past any inhibitor (root, once a policy has decided).
    fn power_off(&self) -> Result<(), SystemdError>;
    /// Reboots the machine, as [`Systemd::power_off`].
    fn reboot(&self) -> Result<(), SystemdError>;
}

impl Systemd for Bus {
    fn connect(&self) -> Result<(), SystemdError> {
        Bus::connect(self)
    }
    fn list_units(&self, patterns: &[&str]) -> Result<Vec<UnitRow>, SystemdError> {
        Bus::list_units(self, patterns)
    }
    fn enqueue(&self, verb: Verb, unit: &str) -> Result<(), SystemdError> {
        Bus::enqueue(self, verb, unit)
    }
    fn run_and_wait(
        &self,
        verb: Verb,
        unit: &str,
        timeout: Option<Duration>,
    ) -> Result<(), SystemdError> {
        Bus::run_and_wait(self, verb, unit, timeout)
    }
    fn start_transient_and_wait(
        &self,
        unit: &str,
        settings: &[Setting],
    ) -> Result<(), SystemdError> {
        Bus::start_transient_and_wait(self, unit, settings)
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
    fn set_limits(
        &self,
        unit: &str,
        memory_max: u64,
        cpu_quota_usec: u64,
    ) -> Result<(), SystemdError> {
        Bus::set_limits(self, unit, memory_max, cpu_quota_usec)
    }
    fn set_cpu_quota(&self, unit: &str, cpu_quota_usec: u64) -> Result<(), SystemdError> {
        Bus::set_cpu_quota(self, unit, cpu_quota_usec)
    }
    fn freeze(&self, unit: &str) -> Result<(), SystemdError> {
        Bus::freeze(self, unit)
    }
    fn thaw(&self, unit: &str) -> Result<(), SystemdError> {
        Bus::thaw(self, unit)
    }
    fn enable(&self, unit: &str) -> Result<(), SystemdError> {
        Bus::enable(self, unit)
    }
    fn disable(&self, unit: &str) -> Result<(), SystemdError> {
        Bus::disable(self, unit)
    }
    fn unit_changes(&self) -> Result<UnitChanges, SystemdError> {
        Ok(Box::new(Bus::unit_changes(self)?))
    }
    fn inhibit_shutdown_block(&self, who: &str, why: &str) -> Result<OwnedFd, SystemdError> {
        Bus::inhibit_shutdown_block(self, who, why)
    }
    fn shutdown_blockers(&self) -> Result<Vec<Inhibitor>, SystemdError> {
        Bus::shutdown_blockers(self)
    }
    fn power_off(&self) -> Result<(), SystemdError> {
        Bus::power_off(self)
    }
    fn reboot(&self) -> Result<(), SystemdError> {
        Bus::reboot(self)
    }
}
