//! Admission, as the event loop does it: a gate arrives and is checked, every evaluation
//! answers the waiting gates as [`policy::evaluate`] decides, and the shutdown inhibitor names
//! what runs.

use super::gates::Gate;
use super::metrics;
use super::policy::{self, Admitted, Waiting};
use super::state::{Coordinator, Declared, Queued, has_process};
use crate::admission::Answer;
use crate::experiment::config::{self as experiments, Experiment};
use crate::systemd::{Prop, Systemd, SystemdError, quota};
use crate::{log_info, log_warn};
use std::collections::BTreeSet;

/// The `who` of the shutdown inhibitor.
pub const INHIBITOR_WHO: &str = "brain-experiment-coordinator";

impl Coordinator {
    /// A gate arrives: it must be its unit's main process (a child of an experiment cannot
    /// queue in its unit's name), that process must not have been admitted already, and a
    /// template unit's `.env` must be valid now. A gate that asks again (it reconnected after a
    /// restart of the coordinator) replaces its older self.
    pub fn arrive(&mut self, mut gate: Gate) {
        if self.admissions.admitted(&gate.unit, gate.since_usec) {
            // Its gate was admitted and became the experiment: it asks to queue again (it ran
            // brain-admit once more), which would take it out of every count.
            log_warn!(
                "refused process {} of {}: admitted already, it asked to queue again; it keeps counting",
                gate.pid,
                gate.unit
            );
            gate.tell(&Answer::Refused(format!(
                "{} was admitted already: its main process may not queue again",
                gate.unit
            )));
            return;
        }
        let main_pid = self.sd.state(&gate.unit, &[Prop::MainPID]).and_then(|s| {
            s.main_pid
                .ok_or_else(|| SystemdError::Failed("no MainPID".into()))
        });
        match main_pid {
            Ok(pid) if pid == gate.pid => {}
            Ok(_) => {
                gate.tell(&Answer::Refused(
                    super::identity::ONLY_THE_MAIN_PROCESS.into(),
                ));
                return;
            }
            // systemd did not answer (a daemon-reexec, say): close, and the gate asks again.
            Err(e) => {
                log_warn!("cannot check the gate of {}: {e}", gate.unit);
                return;
            }
        }
        let limits = match experiments::id_of(&gate.unit) {
            Some(id) if gate.unit.starts_with("brain-experiment@") => {
                match experiments::load_trusted(&self.experiments_dir, &id) {
                    Ok(e) => Some(e),
                    Err(why) => {
                        log_warn!("refused {}: {why:#}", gate.unit);
                        metrics::refused();
                        gate.tell(&Answer::Refused(format!("{why:#}")));
                        return;
                    }
                }
            }
            _ => None,
        };
        let memory = match &limits {
            Some(e) => e.memory_max,
            None => self.declared_memory(&gate.unit),
        };
        self.waiting.insert(
            gate.unit.clone(),
            Queued {
                gate,
                limits,
                memory,
            },
        );
    }

    /// Admission: what runs (or was admitted) counts; the waiting gates are answered in the
    /// order they started ([`policy::evaluate`] decides, this does what it says).
    pub fn evaluate(&mut self) {
        let units = self.experiments();
        let live: BTreeSet<String> = units
            .iter()
            .filter(|u| has_process(u))
            .map(|u| u.name.clone())
            .collect();
        // A gate whose unit no longer runs (stopped while queued) is gone.
        self.waiting.retain(|unit, _| live.contains(unit));
        self.memory.retain(|unit, _| live.contains(unit));
        self.admissions.retain(|unit| live.contains(unit));
        let counted: Vec<String> = live
            .into_iter()
            .filter(|u| !self.waiting.contains_key(u))
            .collect();
        let admitted: Vec<Admitted> = counted
            .into_iter()
            .map(|unit| Admitted {
                memory: self.declared(&unit),
                unit,
            })
            .collect();
        let waiting: Vec<Waiting> = self
            .waiting
            .values()
            .map(|q| Waiting {
                unit: q.gate.unit.clone(),
                memory: q.memory,
                since_usec: q.gate.since_usec,
                told: q.gate.told.clone(),
            })
            .collect();
        let plan = policy::evaluate(&self.cfg, self.thermal, &admitted, &waiting);
        let mut running_units: Vec<String> = admitted.into_iter().map(|a| a.unit).collect();
        for unit in plan.admit {
            let Some(mut q) = self.waiting.remove(&unit) else {
                continue;
            };
            if let Some(e) = &q.limits
                && let Err(err) = apply_limits(self.sd.as_ref(), &unit, e)
            {
                log_warn!("refused {unit}: cannot apply its limits: {err}");
                metrics::refused();
                q.gate.tell(&Answer::Refused(format!(
                    "cannot apply the limits of its .env: {err}"
                )));
                continue;
            }
            // Recorded before the gate hears it: once told, its process is the experiment.
            self.admissions.record(&unit, q.gate.since_usec);
            if q.gate.tell(&Answer::Admitted) {
                log_info!("admitted {unit}");
                let env_changed = self.env_changed(&unit);
                self.memory.insert(
                    unit.clone(),
                    Declared {
                        bytes: q.memory,
                        env_changed,
                    },
                );
                running_units.push(unit);
            } else {
                // Gone before it heard (its unit stopped): a new gate of it is not admitted.
                self.admissions.forget(&unit);
            }
        }
        for (unit, why) in plan.refuse {
            if let Some(mut q) = self.waiting.remove(&unit) {
                log_warn!("refused {unit}: {why}");
                metrics::refused();
                q.gate.tell(&Answer::Refused(why));
            }
        }
        for (unit, status) in plan.tell {
            if let Some(q) = self.waiting.get_mut(&unit) {
                if q.gate.tell(&Answer::Queued(status.clone())) {
                    q.gate.told = Some(status);
                } else {
                    // Gone, or not reading: it asks again when it reconnects.
                    self.waiting.remove(&unit);
                }
            }
        }
        self.running = running_units.len();
        self.hold_inhibitor(&running_units);
    }

    /// While experiments run, a logind `block` inhibitor for shutdown naming them: the machine
    /// is busy, and power schedules apply their `when_busy` policy. When the set changes, the
    /// new lock is taken before the old one goes, so the machine is never idle in between.
    fn hold_inhibitor(&mut self, running: &[String]) {
        let Some(why) = inhibitor_why(running) else {
            self.inhibitor = None;
            return;
        };
        if self
            .inhibitor
            .as_ref()
            .is_some_and(|(held, _)| *held == why)
        {
            return;
        }
        match self.sd.inhibit_shutdown_block(INHIBITOR_WHO, &why) {
            Ok(fd) => self.inhibitor = Some((why, fd)),
            Err(e) => log_warn!("cannot take a shutdown inhibitor: {e}"),
        }
    }
}

/// Applies the limits of the experiment's `.env` to its unit before it runs, at run time, so
/// that an edited `.env` takes effect at the next start without a `daemon-reload`.
fn apply_limits(sd: &dyn Systemd, unit: &str, e: &Experiment) -> Result<(), SystemdError> {
    let s = sd.state(unit, &[Prop::MemoryMax, Prop::CPUQuotaPerSecUSec])?;
    let cpu = e.cpu_quota_usec().unwrap_or(quota::UNLIMITED);
    if s.memory_max == Some(e.memory_max) && s.cpu_quota_per_sec_usec == Some(cpu) {
        return Ok(());
    }
    sd.set_limits(unit, e.memory_max, cpu)?;
    log_info!(
        "{unit}: MemoryMax={} CPUQuota={} from its .env",
        e.memory_max,
        e.cpu_quota_percent
            .map_or("none".into(), |p| format!("{p}%"))
    );
    Ok(())
}

/// The why of the shutdown inhibitor: the running experiments' ids (at most 8 named); `None`
/// when none runs.
pub fn inhibitor_why(units: &[String]) -> Option<String> {
    const NAMED: usize = 8;
    if units.is_empty() {
        return None;
    }
    let mut ids: Vec<String> = units
        .iter()
        .map(|u| experiments::id_of(u).unwrap_or_else(|| u.clone()))
        .collect();
    ids.sort();
    let more = ids.len().saturating_sub(NAMED);
    ids.truncate(NAMED);
    let mut why = format!("experiments running: {}", ids.join(", "));
    if more > 0 {
        why.push_str(&format!(" and {more} more"));
    }
    Some(why)
}
