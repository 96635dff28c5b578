//! The systemd and logind D-Bus calls we make, through one owned handle ([`Bus`]).
//! A D-Bus method, property or interface used anywhere in the project is named here, once.

use super::names::*;
use super::types::{Inhibitor, JobFailure, Prop, ServiceState, SystemdError, UnitRow, Verb};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use zbus::blocking::Connection;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

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
