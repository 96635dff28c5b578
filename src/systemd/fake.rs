//! A small in-memory [`Systemd`] for in-process tests: records every call, keeps what a call
//! changes (unit states, limits, freezing, enablement, inhibitors), and refuses the way systemd,
//! polkit and logind do when told to.

use super::transient::Setting;
use super::view::glob;
use super::{
    Inhibitor, JobFailure, Prop, ServiceState, Systemd, SystemdError, UnitChanges, UnitRow, Verb,
    unit_path,
};
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender};
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
    /// `(MemoryMax, CPUQuotaPerSecUSec)` set per unit; a quota alone leaves the memory as it was.
    limits: BTreeMap<String, (Option<u64>, u64)>,
    frozen: BTreeSet<String>,
    enabled: BTreeSet<String>,
    /// Transient units created, with their settings.
    transient: BTreeMap<String, Vec<Setting>>,
    /// Inhibitors taken through the fake: who, why, and the read end of a pipe whose write end
    /// the caller holds (closed: released).
    inhibitors: Vec<(String, String, OwnedFd)>,
    /// Other processes' inhibitors, as logind would list them.
    foreign_blockers: Vec<Inhibitor>,
    /// Where the paths sent with [`FakeSystemd::change`] go.
    changes: Vec<Sender<OwnedObjectPath>>,
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

    /// The unit's `(MemoryMax, CPU quota per second)` as last set, if ever.
    pub fn limits(&self, unit: &str) -> Option<(Option<u64>, u64)> {
        self.lock().limits.get(unit).copied()
    }

    pub fn is_frozen(&self, unit: &str) -> bool {
        self.lock().frozen.contains(unit)
    }

    pub fn is_enabled(&self, unit: &str) -> bool {
        self.lock().enabled.contains(unit)
    }

    /// The settings a transient unit was created with.
    pub fn transient_settings(&self, unit: &str) -> Option<Vec<Setting>> {
        self.lock().transient.get(unit).cloned()
    }

    /// The `(who, why)` of every inhibitor taken through the fake and not yet released (its
    /// descriptor still open).
    pub fn held_inhibitors(&self) -> Vec<(String, String)> {
        let mut inner = self.lock();
        inner.inhibitors.retain(|(_, _, read)| !hung_up(read));
        inner
            .inhibitors
            .iter()
            .map(|(who, why, _)| (who.clone(), why.clone()))
            .collect()
    }

    /// Another program holds (or, with an empty list, no longer holds) these inhibitors.
    pub fn set_foreign_blockers(&self, blockers: Vec<Inhibitor>) {
        self.lock().foreign_blockers = blockers;
    }

    /// Sets a unit's properties as systemd would report them (the row's states stay).
    pub fn set_state(&self, unit: &str, change: impl FnOnce(&mut ServiceState)) {
        let mut inner = self.lock();
        if let Some((_, state)) = inner.units.get_mut(unit) {
            change(state);
        }
    }

    /// Removes a unit, as systemd does when it garbage-collects it.
    pub fn remove(&self, unit: &str) {
        self.lock().units.remove(unit);
    }

    /// Sends `unit`'s object path to every [`Systemd::unit_changes`] stream, as a
    /// `PropertiesChanged` signal would.
    pub fn change(&self, unit: &str) {
        let path = unit_path(unit);
        self.lock()
            .changes
            .retain(|tx| tx.send(path.clone()).is_ok());
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
    fn connect(&self) -> Result<(), SystemdError> {
        let mut inner = self.lock();
        Self::check(&mut inner, "connect", "")
    }

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
        Self::apply(&mut inner, verb, unit);
        Ok(())
    }

    fn enqueue(&self, verb: Verb, unit: &str) -> Result<(), SystemdError> {
        let mut inner = self.lock();
        Self::check(&mut inner, &format!("enqueue-{}", verb.as_str()), unit)?;
        Self::apply(&mut inner, verb, unit);
        Ok(())
    }

    fn start_transient_and_wait(
        &self,
        unit: &str,
        settings: &[Setting],
    ) -> Result<(), SystemdError> {
        let mut inner = self.lock();
        Self::check(&mut inner, "transient", unit)?;
        if inner.units.get(unit).is_some_and(|(r, _)| r.is_up()) {
            return Err(SystemdError::Failed(format!("Unit {unit} already exists.")));
        }
        inner.transient.insert(unit.to_string(), settings.to_vec());
        Self::apply(&mut inner, Verb::Start, unit);
        Ok(())
    }

    fn set_limits(
        &self,
        unit: &str,
        memory_max: u64,
        cpu_quota_usec: u64,
    ) -> Result<(), SystemdError> {
        let mut inner = self.lock();
        Self::check(&mut inner, "set-limits", unit)?;
        inner
            .limits
            .insert(unit.to_string(), (Some(memory_max), cpu_quota_usec));
        Ok(())
    }

    fn set_cpu_quota(&self, unit: &str, cpu_quota_usec: u64) -> Result<(), SystemdError> {
        let mut inner = self.lock();
        Self::check(&mut inner, "set-cpu-quota", unit)?;
        let memory = inner.limits.get(unit).and_then(|(m, _)| *m);
        inner
            .limits
            .insert(unit.to_string(), (memory, cpu_quota_usec));
        Ok(())
    }

    fn freeze(&self, unit: &str) -> Result<(), SystemdError> {
        let mut inner = self.lock();
        Self::check(&mut inner, "freeze", unit)?;
        inner.frozen.insert(unit.to_string());
        Ok(())
    }

    fn thaw(&self, unit: &str) -> Result<(), SystemdError> {
        let mut inner = self.lock();
        Self::check(&mut inner, "thaw", unit)?;
        inner.frozen.remove(unit);
        Ok(())
    }

    fn enable(&self, unit: &str) -> Result<(), SystemdError> {
        let mut inner = self.lock();
        Self::check(&mut inner, "enable", unit)?;
        inner.enabled.insert(unit.to_string());
        Ok(())
    }

    fn disable(&self, unit: &str) -> Result<(), SystemdError> {
        let mut inner = self.lock();
        Self::check(&mut inner, "disable", unit)?;
        inner.enabled.remove(unit);
        Ok(())
    }

    fn unit_changes(&self) -> Result<UnitChanges, SystemdError> {
        let mut inner = self.lock();
        Self::check(&mut inner, "subscribe", "")?;
        let (tx, rx): (Sender<OwnedObjectPath>, Receiver<OwnedObjectPath>) =
            std::sync::mpsc::channel();
        inner.changes.push(tx);
        Ok(Box::new(rx.into_iter()))
    }

    fn inhibit_shutdown_block(
        &self,
        who: &str,
        why: &str,
    ) -> Result<zbus::zvariant::OwnedFd, SystemdError> {
        let mut inner = self.lock();
        Self::check(&mut inner, "inhibit", who)?;
        let (read, write) = nix::unistd::pipe()
            .map_err(|e| SystemdError::Failed(format!("cannot make a pipe: {e}")))?;
        inner
            .inhibitors
            .push((who.to_string(), why.to_string(), read));
        Ok(zbus::zvariant::OwnedFd::from(write))
    }

    fn shutdown_blockers(&self) -> Result<Vec<Inhibitor>, SystemdError> {
        let mut inner = self.lock();
        Self::check(&mut inner, "blockers", "")?;
        inner.inhibitors.retain(|(_, _, read)| !hung_up(read));
        let ours = inner.inhibitors.iter().map(|(who, why, _)| Inhibitor {
            what: "shutdown".into(),
            who: who.clone(),
            why: why.clone(),
            mode: "block".into(),
            uid: 0,
            pid: std::process::id(),
        });
        let mut all: Vec<Inhibitor> = ours.chain(inner.foreign_blockers.clone()).collect();
        all.retain(Inhibitor::blocks_shutdown);
        Ok(all)
    }

    fn power_off(&self) -> Result<(), SystemdError> {
        let mut inner = self.lock();
        Self::check(&mut inner, "poweroff", "poweroff.target")?;
        Self::queue_start(&mut inner, "poweroff.target");
        Ok(())
    }

    fn reboot(&self) -> Result<(), SystemdError> {
        let mut inner = self.lock();
        Self::check(&mut inner, "reboot", "reboot.target")?;
        Self::queue_start(&mut inner, "reboot.target");
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

impl FakeSystemd {
    /// `unit` (a power target) gets a start job that has not run yet, as after a
    /// `replace-irreversibly` start while the machine stops its units.
    fn queue_start(inner: &mut Inner, unit: &str) {
        let entry = inner.units.entry(unit.to_string()).or_insert_with(|| {
            (
                UnitRow::new(unit, "inactive", "dead"),
                ServiceState::default(),
            )
        });
        entry.0.job_id = 1;
        entry.0.job_type = "start".into();
    }

    /// What a job of `verb` leaves behind: the unit's states and its timer's next elapse.
    /// Stopping a timer stops the service it triggers (of the same name) too, as `PartOf=`
    /// does for the schedules' gates.
    fn apply(inner: &mut Inner, verb: Verb, unit: &str) {
        if verb == Verb::Stop
            && let Some(service) = unit
                .strip_suffix(".timer")
                .map(|base| format!("{base}.service"))
            && let Some((row, _)) = inner.units.get_mut(&service)
        {
            row.active_state = "inactive".into();
            row.sub_state = "dead".into();
        }
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
    }
}

/// Whether the write end of the pipe whose read end is `read` is closed.
fn hung_up(read: &OwnedFd) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(read.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
        && fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLHUP))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inhibitor_is_held_while_its_descriptor_is_open() {
        let fake = FakeSystemd::new();
        let fd = fake.inhibit_shutdown_block("coordinator", "w1").unwrap();
        assert_eq!(
            fake.held_inhibitors(),
            vec![("coordinator".into(), "w1".into())]
        );
        assert_eq!(fake.shutdown_blockers().unwrap().len(), 1);
        drop(fd);
        assert!(fake.held_inhibitors().is_empty());
        assert!(fake.shutdown_blockers().unwrap().is_empty());
    }

    #[test]
    fn changes_reach_every_stream() {
        let fake = FakeSystemd::new();
        let mut changes = fake.unit_changes().unwrap();
        fake.change("brain-experiment@a.service");
        assert_eq!(
            changes.next(),
            Some(unit_path("brain-experiment@a.service"))
        );
    }
}
