//! What the coordinator holds between events: the configuration, the thermal state, the
//! waiting gates, the admitted units' record and declared memory, and the shutdown inhibitor;
//! and the readings of systemd every decision starts from.

use super::config::Config;
use super::gates::Gate;
use super::identity::Admissions;
use super::nvml::Nvml;
use super::policy::Thermal;
use crate::experiment::config::{
    self as experiments, Experiment, TEMPLATE_PATTERN, TRANSIENT_PATTERN,
};
use crate::systemd::{Prop, Systemd, UnitRow};
use crate::{log_info, log_warn};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The declared `MemoryMax` of a unit that counts, as read once (see [`Coordinator::declared`]).
pub struct Declared {
    pub bytes: u64,
    /// When its `.env` was last changed, at the time of the reading (template units).
    pub env_changed: Option<SystemTime>,
}

/// A waiting gate and what it asks for.
pub struct Queued {
    pub gate: Gate,
    /// The experiment's limits from its `.env` (template units), applied when it is admitted.
    pub limits: Option<Experiment>,
    pub memory: u64,
}

pub struct Coordinator {
    pub sd: Arc<dyn Systemd>,
    pub config_path: PathBuf,
    /// Where the experiments' `.env` files are.
    pub experiments_dir: PathBuf,
    pub cfg: Config,
    pub thermal: Thermal,
    pub hottest: Option<(PathBuf, f64)>,
    pub frozen: bool,
    pub waiting: BTreeMap<String, Queued>,
    /// Declared `MemoryMax` of admitted units: read once per change, forgotten when the unit
    /// changes (its signal) or its `.env` does.
    pub memory: HashMap<String, Declared>,
    /// The main process of each unit admitted: if it asks again, it is a running experiment,
    /// not a gate, and keeps counting.
    pub admissions: Admissions,
    /// The shutdown `block` inhibitor held while experiments run, with the why it was taken with.
    pub inhibitor: Option<(String, zbus::zvariant::OwnedFd)>,
    /// Experiments admitted at the last evaluation (for the status line).
    pub running: usize,
    /// NVIDIA GPUs, when the NVML library is there.
    pub nvml: Option<Nvml>,
}

impl Coordinator {
    pub fn new(
        sd: Arc<dyn Systemd>,
        config_path: &Path,
        cfg: Config,
        experiments_dir: &Path,
    ) -> Coordinator {
        Coordinator {
            sd,
            config_path: config_path.to_path_buf(),
            experiments_dir: experiments_dir.to_path_buf(),
            cfg,
            thermal: Thermal::Normal,
            hottest: None,
            frozen: false,
            waiting: BTreeMap::new(),
            memory: HashMap::new(),
            admissions: Admissions::default(),
            inhibitor: None,
            running: 0,
            nvml: None,
        }
    }

    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.cfg.check_interval_secs)
    }

    pub fn reload(&mut self) {
        match Config::load(&self.config_path) {
            Ok(cfg) => {
                log_info!("reloaded {}", self.config_path.display());
                self.cfg = cfg;
            }
            Err(e) => log_warn!("keeping the previous configuration: {e:#}"),
        }
    }

    /// The experiment units systemd has loaded, in any state.
    pub fn experiments(&self) -> Vec<UnitRow> {
        self.sd
            .list_units(&[TEMPLATE_PATTERN, TRANSIENT_PATTERN])
            .unwrap_or_else(|e| {
                log_warn!("{e}");
                Vec::new()
            })
    }

    /// When the `.env` of a template unit was last changed (`None`: a transient unit, or no file).
    pub fn env_changed(&self, unit: &str) -> Option<SystemTime> {
        if !unit.starts_with("brain-experiment@") {
            return None;
        }
        let id = experiments::id_of(unit)?;
        std::fs::metadata(self.experiments_dir.join(format!("{id}.env")))
            .and_then(|m| m.modified())
            .ok()
    }

    /// The `MemoryMax` systemd has for `unit` (`u64::MAX`: none, or unreadable).
    pub fn declared_memory(&self, unit: &str) -> u64 {
        self.sd
            .state(unit, &[Prop::MemoryMax])
            .ok()
            .and_then(|s| s.memory_max)
            .unwrap_or(u64::MAX)
    }

    /// The declared `MemoryMax` of a unit that counts: the reading kept from before, unless
    /// the unit changed since (its signal dropped it) or its `.env` did; else one D-Bus read.
    pub fn declared(&mut self, unit: &str) -> u64 {
        let env_changed = self.env_changed(unit);
        if let Some(d) = self.memory.get(unit)
            && d.env_changed == env_changed
        {
            return d.bytes;
        }
        let bytes = self.declared_memory(unit);
        self.memory
            .insert(unit.to_string(), Declared { bytes, env_changed });
        bytes
    }
}

/// The state of a unit that counts: its process runs (or is being started or stopped), as
/// opposed to inactive, failed, or waiting to be restarted (`activating (auto-restart)`).
pub fn has_process(u: &UnitRow) -> bool {
    matches!(
        u.active_state.as_str(),
        "active" | "reloading" | "deactivating" | "activating"
    ) && u.sub_state != "auto-restart"
}
