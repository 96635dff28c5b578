//! The thermal policy's I/O: reading the temperature sources, and what each state does to the
//! experiments' slice (a CPU quota when throttled; frozen, or the newest experiment stopped,
//! when critical; thawed and unlimited when it cools).

use super::policy::{self, Thermal};
use super::state::Coordinator;
use super::thermal;
use crate::experiment::config::SLICE;
use crate::log_warn;
use crate::systemd::{Prop, Verb, procfs, quota};
use std::path::PathBuf;

impl Coordinator {
    fn sources(&self) -> Vec<PathBuf> {
        if self.cfg.temperature_sources.is_empty() {
            thermal::default_sources()
        } else {
            self.cfg.temperature_sources.clone()
        }
    }

    /// Reads the sources and applies a change of thermal state; true when admission may change.
    pub fn check_temperature(&mut self) -> bool {
        self.hottest = thermal::hottest(&self.sources());
        let gpus = self
            .nvml
            .as_ref()
            .map(|n| n.temperatures())
            .unwrap_or_default();
        if let Some((label, t)) = gpus.into_iter().max_by(|a, b| a.1.total_cmp(&b.1))
            && self.hottest.as_ref().is_none_or(|(_, h)| t > *h)
        {
            self.hottest = Some((PathBuf::from(label), t));
        }
        let next =
            policy::thermal_next(self.thermal, self.hottest.as_ref().map(|h| h.1), &self.cfg);
        if next == Thermal::Critical {
            self.pause();
        }
        if next == self.thermal {
            return false;
        }
        let reading = self.hottest.as_ref().map_or("-".to_string(), |(p, t)| {
            format!("{t:.1}°C at {}", p.display())
        });
        log_warn!(
            "temperature {}: {} -> {}",
            reading,
            self.thermal.as_str(),
            next.as_str()
        );
        self.thermal = next;
        self.apply_thermal();
        true
    }

    /// Gives the slice the CPU quota of the thermal state, and thaws it unless critical.
    pub fn apply_thermal(&mut self) {
        if let Err(e) = self.sd.connect() {
            log_warn!("{e}");
            return;
        }
        let quota = match self.thermal {
            Thermal::Normal => quota::UNLIMITED,
            _ => throttled_quota_usec(),
        };
        if let Err(e) = self.sd.set_cpu_quota(SLICE, quota) {
            log_warn!("cannot set the CPU quota of {SLICE}: {e}");
        }
        let frozen = self.frozen
            || self
                .sd
                .state(SLICE, &[Prop::FreezerState])
                .ok()
                .and_then(|s| s.freezer_state)
                .is_some_and(|state| state != "running");
        if self.thermal != Thermal::Critical && frozen {
            match self.sd.thaw(SLICE) {
                Ok(()) => log_warn!("thawed {SLICE}"),
                Err(e) => log_warn!("cannot thaw {SLICE}: {e}"),
            }
            self.frozen = false;
        }
    }

    /// Critical heat: freeze the slice where cgroup v2 allows it; else stop the newest running
    /// experiment, one per check, gracefully.
    fn pause(&mut self) {
        if self.frozen {
            return;
        }
        if self.sd.connect().is_err() {
            return;
        }
        if self.thermal != Thermal::Critical {
            match self.sd.freeze(SLICE) {
                Ok(()) => {
                    log_warn!("critical temperature: froze {SLICE}");
                    self.frozen = true;
                    return;
                }
                Err(e) => log_warn!(
                    "critical temperature: cannot freeze {SLICE} ({e}); stopping the newest experiment"
                ),
            }
        }
        // The newest by its main process's start (the kernel's clock ticks, no D-Bus call).
        let newest = self
            .experiments()
            .into_iter()
            .filter(|u| u.active_state == "active" && !self.waiting.contains_key(&u.name))
            .filter_map(|u| {
                let pid = self.sd.state(&u.name, &[Prop::MainPID]).ok()?.main_pid?;
                Some((procfs::start_usec(pid)?, u.name))
            })
            .max();
        if let Some((_, unit)) = newest {
            log_warn!("critical temperature: stopping {unit}, the newest experiment");
            if let Err(e) = self.sd.enqueue(Verb::Stop, &unit) {
                log_warn!("cannot stop {unit}: {e}");
            }
        }
    }
}

/// The slice's CPU quota while throttled: half of the machine's CPUs.
pub fn throttled_quota_usec() -> u64 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    quota::usec_from_percent(u32::try_from(cpus * 50).unwrap_or(u32::MAX))
}
