//! `ExperimentManager`: the original Python `SystemdManager`'s calls, over D-Bus instead of `sudo systemctl`.

use super::config::{
    self, EXPERIMENTS_DIR, Experiment, TARGET, TEMPLATE_PATTERN, TRANSIENT_PATTERN,
};
use super::transient::RunSpec;
use crate::admission::{GATE_COMM, QueuedStatus};
use crate::systemd::procfs;
use crate::systemd::{Prop, ServiceState, Systemd, SystemdError, UnitRow, Verb};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What went wrong, by kind, so that a caller (brainctl) can say it and exit accordingly.
#[derive(Debug, Clone, PartialEq)]
pub enum ManagerError {
    /// The id is not a valid experiment id.
    InvalidId(String),
    /// The arguments are not valid (no such program, a relative path), or the experiment's
    /// `.env` contradicts the request.
    Invalid(String),
    /// No `.env` and no unit for this id.
    Unknown(String),
    /// polkit refused: the caller must be root or an admin.
    Denied(String),
    Systemd(String),
}

impl std::fmt::Display for ManagerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ManagerError::InvalidId(m)
            | ManagerError::Invalid(m)
            | ManagerError::Unknown(m)
            | ManagerError::Systemd(m) => f.write_str(m),
            ManagerError::Denied(m) => write!(
                f,
                "{m}: run it as root, or as an admin polkit lets manage units"
            ),
        }
    }
}

impl std::error::Error for ManagerError {}

impl From<SystemdError> for ManagerError {
    fn from(e: SystemdError) -> ManagerError {
        match e {
            SystemdError::Denied(_) => ManagerError::Denied(e.to_string()),
            SystemdError::Job(job) => {
                let mut msg = job.to_string();
                for line in &job.journal {
                    msg.push_str("\n    ");
                    msg.push_str(line);
                }
                ManagerError::Systemd(msg)
            }
            other => ManagerError::Systemd(other.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, ManagerError>;

/// One experiment as `brainctl status` shows it. Sizes in bytes; `None` where there is no figure
/// (not running, no limit, or no memory accounting for the unit's cgroup; the peak needs cgroup
/// v1 or, on v2, Linux 5.19).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExperimentStatus {
    pub id: String,
    pub unit: String,
    /// "template" (brain-experiment@) or "transient" (brain-run-).
    pub kind: &'static str,
    /// Starts with `brain-experiment.target` (and so at boot): enabled with `systemctl enable`
    /// or `EXPERIMENT_ENABLED=yes` in its `.env`; `None` for a transient experiment.
    pub enabled: Option<bool>,
    pub active_state: String,
    pub sub_state: String,
    pub since: Option<String>,
    pub main_pid: Option<u32>,
    pub memory_current: Option<u64>,
    pub memory_peak: Option<u64>,
    pub memory_limit: Option<u64>,
    pub cpu_quota_percent: Option<f64>,
    pub restarts: u32,
    pub last_exit_status: Option<i32>,
    pub result: String,
    /// Waiting for admission, and why, as the coordinator says (the unit's status text).
    pub queued: Option<String>,
    /// Its place in the queue, 1 first.
    pub queue_position: Option<u32>,
}

pub struct ExperimentManager {
    dir: PathBuf,
    sd: Arc<dyn Systemd>,
}

/// The id's error, as the kind brainctl tells.
fn invalid_id(e: anyhow::Error) -> ManagerError {
    ManagerError::InvalidId(format!("{e:#}"))
}

impl ExperimentManager {
    pub fn new(sd: Arc<dyn Systemd>) -> ExperimentManager {
        ExperimentManager::with_dir(sd, Path::new(EXPERIMENTS_DIR))
    }

    /// A manager of the experiments whose `.env` files are in `dir`.
    pub fn with_dir(sd: Arc<dyn Systemd>, dir: &Path) -> ExperimentManager {
        ExperimentManager {
            dir: dir.to_path_buf(),
            sd,
        }
    }

    fn configured(&self, id: &str) -> Result<Experiment> {
        config::validate_id(id).map_err(invalid_id)?;
        config::load(&self.dir, id).map_err(|e| ManagerError::Unknown(format!("{e:#}")))
    }

    /// The unit an id means now: its transient unit when one is loaded and not dead, else the
    /// template instance (which must have a `.env`).
    fn unit_for(&self, id: &str) -> Result<String> {
        config::validate_id(id).map_err(invalid_id)?;
        let transient = config::transient_unit(id);
        let loaded = self.sd.list_units(&[&transient])?;
        if loaded.iter().any(|u| u.active_state != "inactive") {
            return Ok(transient);
        }
        Ok(self.configured(id)?.unit())
    }

    /// Starts `brain-experiment@<id>.service` and waits for systemd's job, as `systemctl start`
    /// does: it ends once the coordinator has admitted or queued the experiment, and fails with
    /// the coordinator's reason when it refuses it.
    pub fn start_experiment(&self, id: &str) -> Result<String> {
        let unit = self.configured(id)?.unit();
        self.sd.run_and_wait(Verb::Start, &unit, None)?;
        Ok(unit)
    }

    /// Stops the experiment; `Ok(None)` when it was not running (nothing to do, as `systemctl
    /// stop` of a stopped unit).
    pub fn stop_experiment(&self, id: &str) -> Result<Option<String>> {
        let unit = self.unit_for(id)?;
        let running = self
            .sd
            .list_units(&[&unit])?
            .iter()
            .any(|u| !matches!(u.active_state.as_str(), "inactive" | "failed"));
        if !running {
            return Ok(None);
        }
        self.sd.run_and_wait(Verb::Stop, &unit, None)?;
        Ok(Some(unit))
    }

    pub fn restart_experiment(&self, id: &str) -> Result<String> {
        let unit = self.unit_for(id)?;
        self.sd.run_and_wait(Verb::Restart, &unit, None)?;
        Ok(unit)
    }

    /// Starts every enabled experiment (`brain-experiment.target`).
    pub fn start_all(&self) -> Result<()> {
        Ok(self.sd.run_and_wait(Verb::Start, TARGET, None)?)
    }

    /// Stops every experiment, template and transient (they are all `PartOf=` the target).
    pub fn stop_all(&self) -> Result<()> {
        Ok(self.sd.run_and_wait(Verb::Stop, TARGET, None)?)
    }

    /// `systemctl enable brain-experiment@<id>`: it starts with the target, at boot too.
    pub fn enable_experiment(&self, id: &str) -> Result<String> {
        let unit = self.configured(id)?.unit();
        self.sd.enable(&unit)?;
        Ok(unit)
    }

    /// `systemctl disable brain-experiment@<id>`. An `.env` that says `EXPERIMENT_ENABLED=yes`
    /// keeps it with the target: that is an error that names the line to remove.
    pub fn disable_experiment(&self, id: &str) -> Result<String> {
        let e = self.configured(id)?;
        let unit = e.unit();
        self.sd.disable(&unit)?;
        if e.enabled {
            return Err(ManagerError::Invalid(format!(
                "{unit} still starts with {TARGET}: {}/{id}.env says EXPERIMENT_ENABLED=yes; remove that line",
                self.dir.display()
            )));
        }
        Ok(unit)
    }

    /// Creates the transient unit and waits for its start job, as `systemd-run` does: it ends
    /// once the coordinator has admitted or queued it, and fails when it refuses it.
    pub fn run_experiment(&self, spec: RunSpec) -> Result<String> {
        config::validate_id(&spec.id).map_err(invalid_id)?;
        let spec = spec
            .validate()
            .map_err(|e| ManagerError::Invalid(format!("{e:#}")))?;
        let unit = spec.unit();
        self.sd.start_transient_and_wait(&unit, &spec.settings())?;
        Ok(unit)
    }

    /// Status of one experiment.
    pub fn get_status(&self, id: &str) -> Result<ExperimentStatus> {
        config::validate_id(id).map_err(invalid_id)?;
        let mut mine = self.statuses(Some(id))?;
        // A live transient unit wins over an idle template instance.
        mine.sort_by_key(|s| (s.active_state == "inactive", s.kind != "transient"));
        mine.into_iter().next().ok_or_else(|| {
            ManagerError::Unknown(format!(
                "no experiment {id:?}: no {}/{id}.env and no unit (brainctl list shows them)",
                self.dir.display()
            ))
        })
    }

    /// Every experiment: the loaded units (one `ListUnitsByPatterns` call, then their properties
    /// in one pipelined batch, see [`Systemd::states`]), and the configured ones that have no
    /// unit loaded.
    pub fn list_experiments(&self) -> Result<Vec<ExperimentStatus>> {
        self.statuses(None)
    }

    /// The experiments, or only those of the id `only`.
    fn statuses(&self, only: Option<&str>) -> Result<Vec<ExperimentStatus>> {
        let (configured, _) = config::load_all(&self.dir);
        let configured: Vec<Experiment> = configured
            .into_iter()
            .filter(|e| only.is_none_or(|id| e.id == id))
            .collect();
        let units: Vec<(String, UnitRow)> = self
            .sd
            .list_units(&[TEMPLATE_PATTERN, TRANSIENT_PATTERN])?
            .into_iter()
            .filter_map(|u| Some((config::id_of(&u.name)?, u)))
            .filter(|(id, _)| only.is_none_or(|only| id == only))
            .collect();
        let requests: Vec<_> = units
            .iter()
            .map(|(_, unit)| (&unit.path, wanted_properties(&unit.active_state)))
            .collect();
        let states = self.sd.states(&requests)?;
        let mut out = Vec::new();
        for ((id, unit), props) in units.iter().zip(&states) {
            let enabled = configured
                .iter()
                .find(|e| e.id == *id)
                .map(|e| e.enabled || is_enabled(&e.unit()));
            out.push(status_from(id.clone(), unit, props, enabled));
        }
        // A queued experiment's main process is still its gate; why it waits is its status
        // text, read only for those.
        let gates: Vec<usize> = out
            .iter()
            .enumerate()
            .filter(|(_, s)| s.main_pid.and_then(procfs::comm).as_deref() == Some(GATE_COMM))
            .map(|(i, _)| i)
            .collect();
        let texts = self.sd.states(
            &gates
                .iter()
                .map(|&i| (&units[i].1.path, &[Prop::StatusText][..]))
                .collect::<Vec<_>>(),
        )?;
        for (i, text) in gates.into_iter().zip(texts) {
            let text = text.status_text.unwrap_or_default();
            let (position, why) = QueuedStatus::parse(&text)
                .map_or((None, "waiting for the coordinator".to_string()), |q| {
                    (Some(q.position), q.why)
                });
            out[i].queued = Some(why);
            out[i].queue_position = position;
        }
        for e in &configured {
            if !out.iter().any(|s| s.id == e.id && s.kind == "template") {
                out.push(ExperimentStatus {
                    id: e.id.clone(),
                    unit: e.unit(),
                    kind: "template",
                    enabled: Some(e.enabled || is_enabled(&e.unit())),
                    active_state: "inactive".into(),
                    sub_state: "dead".into(),
                    since: None,
                    main_pid: None,
                    memory_current: None,
                    memory_peak: None,
                    memory_limit: Some(e.memory_max),
                    cpu_quota_percent: e.cpu_quota_percent.map(f64::from),
                    restarts: 0,
                    last_exit_status: None,
                    result: "success".into(),
                    queued: None,
                    queue_position: None,
                });
            }
        }
        out.sort_by(|a, b| (&a.id, a.kind).cmp(&(&b.id, b.kind)));
        Ok(out)
    }

    /// The last `lines` journal lines of the experiment's unit.
    pub fn get_logs(&self, id: &str, lines: usize) -> Result<Vec<String>> {
        let unit = self.unit_for(id)?;
        crate::systemd::journal_lines(&unit, lines, "short-iso")
            .map_err(|e| ManagerError::Systemd(format!("cannot run journalctl: {e}")))
    }
}

/// The service properties a status needs from systemd, by the unit's active state: the fewer,
/// the faster `brainctl status` is over many units (each is one message through the bus). In the
/// active and reloading states there is no exit to report and systemd's `Result` is "success" by
/// definition (it is reset when the unit starts, and a failure leaves those states), and the
/// main process's start time and the memory figures are read from /proc and the unit's cgroup
/// (see `systemd::procfs`).
fn wanted_properties(active_state: &str) -> &'static [Prop] {
    const RUNNING: &[Prop] = &[
        Prop::NRestarts,
        Prop::MemoryMax,
        Prop::CPUQuotaPerSecUSec,
        Prop::MainPID,
    ];
    const CHANGING: &[Prop] = &[
        Prop::NRestarts,
        Prop::ExecMainStartTimestamp,
        Prop::MemoryMax,
        Prop::CPUQuotaPerSecUSec,
        Prop::MainPID,
        Prop::ExecMainCode,
        Prop::ExecMainStatus,
        Prop::Result,
    ];
    const DOWN: &[Prop] = &[
        Prop::NRestarts,
        Prop::ExecMainStartTimestamp,
        Prop::MemoryMax,
        Prop::CPUQuotaPerSecUSec,
        Prop::ExecMainCode,
        Prop::ExecMainStatus,
        Prop::Result,
    ];
    match active_state {
        _ if is_running(active_state) => RUNNING,
        "activating" | "deactivating" => CHANGING,
        _ => DOWN,
    }
}

/// The main process runs and the start has completed: no exit to report, and `Result` is
/// "success" (see [`wanted_properties`]).
fn is_running(active_state: &str) -> bool {
    matches!(active_state, "active" | "reloading")
}

/// Builds a status from a `ListUnitsByPatterns` entry and the unit's service properties (those
/// [`wanted_properties`] names).
fn status_from(
    id: String,
    unit: &UnitRow,
    props: &ServiceState,
    enabled: Option<bool>,
) -> ExperimentStatus {
    let known = |v: Option<u64>| v.filter(|&x| x != u64::MAX);
    let main_pid = props.main_pid.filter(|&p| p != 0);
    let (memory_current, memory_peak) = main_pid
        .map(|pid| procfs::memory_of(pid, &unit.name))
        .unwrap_or_default();
    ExperimentStatus {
        kind: if unit.name.starts_with(config::TRANSIENT_PREFIX) {
            "transient"
        } else {
            "template"
        },
        id,
        unit: unit.name.clone(),
        enabled,
        active_state: unit.active_state.clone(),
        sub_state: unit.sub_state.clone(),
        since: props
            .exec_main_start_timestamp
            .or_else(|| main_pid.and_then(procfs::start_usec))
            .and_then(crate::time::from_usec)
            .map(|t| crate::time::rfc3339(&t)),
        main_pid,
        memory_current,
        memory_peak,
        memory_limit: known(props.memory_max),
        cpu_quota_percent: props
            .cpu_quota_per_sec_usec
            .and_then(crate::systemd::quota::percent_from_usec),
        restarts: props.n_restarts.unwrap_or(0),
        // ExecMainCode is 0 until the main process has exited (CLD_EXITED and so on after).
        last_exit_status: props
            .exec_main_status
            .filter(|_| props.exec_main_code.unwrap_or(0) != 0),
        result: if is_running(&unit.active_state) {
            "success".into()
        } else {
            props.result.clone().unwrap_or_default()
        },
        queued: None,
        queue_position: None,
    }
}

/// Enabled with `systemctl enable` (or `brainctl enable`): the symlink it makes in the target's
/// `.wants/` folder, persistent or for this boot only.
fn is_enabled(unit: &str) -> bool {
    ["/etc/systemd/system", "/run/systemd/system"]
        .iter()
        .any(|d| {
            Path::new(d)
                .join(format!("{TARGET}.wants"))
                .join(unit)
                .symlink_metadata()
                .is_ok()
        })
}
