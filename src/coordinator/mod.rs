//! The experiment coordinator: admission control (concurrency, RAM budget), thermal policy and
//! shutdown awareness. systemd is the source of truth and nothing is kept on disk: what runs is
//! what systemd runs, and the queue is the gates that wait, ordered by when their processes
//! started, so the order survives a restart; what this process keeps in memory (connections,
//! the status line each gate was told, `MemoryMax` readings) is rebuilt after one (README,
//! "Across a restart of the coordinator", says what is not promised). The decisions are pure, in
//! [`policy`]; this module does their I/O.
//!
//! Mechanism: every experiment unit runs `brain-admit` as its main process (`Type=notify`). The
//! gate connects to `/run/brain-in-jar/admission.sock` (socket-activated, so it is held while the
//! coordinator restarts) and waits for a line: `OK` (it tells systemd it is ready and `exec`s the
//! experiment), `WAIT <why>` (it is ready, queued, and shows why in its status) or `REFUSE <why>`
//! (it exits with [`EXIT_REFUSED`], which the units keep from a restart). So a start job ends
//! with the first answer, and a queue holds up neither the target nor boot; a refused experiment
//! fails its start at once. The coordinator reads nothing from a gate: who it speaks for comes
//! from its peer credentials and cgroup, so no client can stall it or grow its memory.

pub mod config;
pub mod metrics;
pub mod nvml;
pub mod policy;
pub mod thermal;

use crate::experiment::config::{
    self as experiments, EXPERIMENTS_DIR, Experiment, SLICE, TEMPLATE_PATTERN, TRANSIENT_PATTERN,
};
use crate::systemd::{Bus, Prop, SystemdError, UnitRow, Verb};
use crate::systemd::{procfs, quota};
use crate::{log_info, log_warn, systemd};
use config::Config;
use policy::{Admitted, Thermal, Waiting};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime};

pub const SOCKET: &str = "/run/brain-in-jar/admission.sock";
/// The exit status of a gate the coordinator refused: sysexits' `EX_CONFIG` (systemd shows it as
/// `status=78/CONFIG`); the experiment units have `RestartPreventExitStatus=78`.
pub const EXIT_REFUSED: u8 = 78;
/// The gate's process name (`/proc/PID/comm`), which tells a waiting gate from an experiment.
pub const GATE_COMM: &str = "brain-admit";
/// Gates accepted but not yet looked at; past this, further connections wait in the kernel.
const GATE_BACKLOG: usize = 64;

/// A gate: the main process of an experiment unit that waits for admission.
struct Gate {
    stream: UnixStream,
    unit: String,
    pid: u32,
    /// When its process started (microseconds since the epoch): its place in the queue, the
    /// same after a restart of the coordinator.
    since_usec: u64,
    /// The last `WAIT` line it was sent.
    told: Option<String>,
}

impl Gate {
    /// Sends one line; false when the gate is gone or does not read (the socket is
    /// non-blocking, so a gate that never reads cannot stall the coordinator).
    fn tell(&mut self, line: &str) -> bool {
        self.stream
            .write_all(format!("{line}\n").as_bytes())
            .is_ok()
    }
}

enum Event {
    Gate(Gate),
    /// An experiment unit changed (its name, when the signal's path gives it).
    Changed(Option<String>),
    /// `SIGHUP` (`systemctl reload`): read the configuration again.
    Reload,
}

/// The declared `MemoryMax` of a unit that counts, as read once (see [`Coordinator::declared`]).
struct Declared {
    bytes: u64,
    /// When its `.env` was last changed, at the time of the reading (template units).
    env_changed: Option<SystemTime>,
}

/// A waiting gate and what it asks for.
struct Queued {
    gate: Gate,
    /// The experiment's limits from its `.env` (template units), applied when it is admitted.
    limits: Option<Experiment>,
    memory: u64,
}

struct Coordinator {
    bus: Bus,
    config_path: PathBuf,
    cfg: Config,
    thermal: Thermal,
    hottest: Option<(PathBuf, f64)>,
    frozen: bool,
    waiting: BTreeMap<String, Queued>,
    /// Declared `MemoryMax` of admitted units: read once per change, forgotten when the unit
    /// changes (its signal) or its `.env` does.
    memory: HashMap<String, Declared>,
    /// The main process of each unit this instance admitted: if it connects again (it may, as
    /// user brain), it is a running experiment, not a gate, and keeps counting.
    admitted: HashMap<String, u32>,
    /// The shutdown `block` inhibitor held while experiments run, with the why it was taken with.
    inhibitor: Option<(String, zbus::zvariant::OwnedFd)>,
    /// Experiments admitted at the last evaluation (for the status line).
    running: usize,
    /// NVIDIA GPUs, when the NVML library is there.
    nvml: Option<nvml::Nvml>,
}

/// The why of the shutdown inhibitor: the running experiments' ids (at most 8 named); `None`
/// when none runs.
fn inhibitor_why(units: &[String]) -> Option<String> {
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

/// Runs the coordinator until killed.
pub fn run(config_path: &Path, bus: &Bus) -> anyhow::Result<()> {
    let cfg = Config::load(config_path).map_err(|e| anyhow::anyhow!(e))?;
    let listener = match listenfd::ListenFd::from_env().take_unix_listener(0)? {
        Some(l) => l,
        None => {
            let _ = std::fs::remove_file(SOCKET);
            UnixListener::bind(SOCKET)
                .map_err(|e| anyhow::anyhow!("cannot listen on {SOCKET}: {e}"))?
        }
    };
    // Before any thread starts, so that SIGHUP reaches us only through the descriptor.
    let hup = crate::signals::take(&[nix::sys::signal::Signal::SIGHUP], false)?;
    let (tx, rx) = mpsc::sync_channel(GATE_BACKLOG);
    let gates = tx.clone();
    std::thread::spawn(move || accept_gates(listener, gates));
    let reloads = tx.clone();
    std::thread::spawn(move || {
        while let Ok(Some(_)) = hup.read_signal() {
            if reloads.send(Event::Reload).is_err() {
                return;
            }
        }
    });
    // Set when a unit's change could not be queued (the channel was full): every reading may
    // be stale then.
    let missed = Arc::new(AtomicBool::new(false));
    watch_units(bus, tx, missed.clone())?;

    let mut c = Coordinator {
        bus: bus.clone(),
        config_path: config_path.to_path_buf(),
        cfg,
        thermal: Thermal::Normal,
        hottest: None,
        frozen: false,
        waiting: BTreeMap::new(),
        memory: HashMap::new(),
        admitted: HashMap::new(),
        inhibitor: None,
        nvml: nvml::Nvml::load(),
        running: 0,
    };
    if c.nvml.is_some() {
        log_info!("reading GPU temperatures through NVML");
    }
    let watchdog = sd_notify::watchdog_enabled();
    c.check_temperature();
    // A previous instance may have left the slice throttled or frozen (it was stopped or
    // restarted while hot): bring the slice in line with the state now.
    c.apply_thermal();
    c.evaluate();
    systemd::notify_ready(&c.status_line());
    log_info!("coordinating experiments: {}", c.status_line());
    let mut next_check = Instant::now() + c.interval();
    loop {
        let mut wait = next_check.saturating_duration_since(Instant::now());
        if let Some(w) = watchdog {
            wait = wait.min(w / 3);
        }
        let mut dirty = false;
        let first = match rx.recv_timeout(wait) {
            Ok(ev) => Some(ev),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => anyhow::bail!("the event threads stopped"),
        };
        // Coalesce a burst of events into one evaluation, but a bounded one: a flood of
        // connections must not keep the loop from evaluating and from the watchdog.
        for ev in first
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()))
            .take(GATE_BACKLOG)
        {
            match ev {
                Event::Gate(gate) => c.arrive(gate),
                Event::Changed(Some(unit)) => {
                    c.memory.remove(&unit);
                }
                // A change we cannot name: every reading may be stale.
                Event::Changed(None) => c.memory.clear(),
                Event::Reload => c.reload(),
            }
            dirty = true;
        }
        if missed.swap(false, Ordering::SeqCst) {
            c.memory.clear();
        }
        if Instant::now() >= next_check {
            dirty |= c.check_temperature();
            next_check = Instant::now() + c.interval();
        }
        if dirty {
            c.evaluate();
        }
        let _ = sd_notify::notify(&[
            sd_notify::NotifyState::Watchdog,
            sd_notify::NotifyState::Status(&c.status_line()),
        ]);
        metrics::publish(&c.figures());
    }
}

/// Accepts gates and finds out whom each speaks for, from the kernel alone; it never reads
/// from a connection. A process that is not a gate (an experiment that asks again) gets its
/// answer here; gates go to the event loop, at most [`GATE_BACKLOG`] at a time.
fn accept_gates(listener: UnixListener, tx: mpsc::SyncSender<Event>) {
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors, say: wait instead of spinning.
                log_warn!("cannot accept a gate: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if stream.set_nonblocking(true).is_err() {
            continue;
        }
        match identify(&stream) {
            Ok((unit, pid)) => {
                let gate = Gate {
                    stream,
                    unit,
                    pid,
                    since_usec: procfs::start_usec(pid).unwrap_or(u64::MAX),
                    told: None,
                };
                if tx.send(Event::Gate(gate)).is_err() {
                    return;
                }
            }
            Err(answer) => {
                let _ = (&stream).write_all(format!("{answer}\n").as_bytes());
            }
        }
    }
}

/// The experiment unit and process a connection speaks for; else the line to answer it with.
fn identify(stream: &UnixStream) -> Result<(String, u32), String> {
    let pid = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| format!("REFUSE no peer credentials: {e}"))?
        .pid();
    let pid = u32::try_from(pid).map_err(|_| "REFUSE no peer process".to_string())?;
    let unit = procfs::unit_of_pid(pid)
        .filter(|u| experiments::id_of(u).is_some())
        .ok_or("REFUSE not an experiment unit")?;
    if procfs::comm(pid).as_deref() != Some(GATE_COMM) {
        // An experiment that runs already: it was admitted, there is nothing to wait for.
        return Err("OK".into());
    }
    // A gate is its unit's main process, a child of the service manager: a cheap first check,
    // before the event loop asks systemd for the unit's main PID.
    if procfs::parent(pid) != Some(1) {
        return Err("REFUSE only the main process of an experiment unit is its gate".into());
    }
    Ok((unit, pid))
}

/// Subscribes to systemd's signals and turns state changes of experiment units into events.
fn watch_units(
    bus: &Bus,
    tx: mpsc::SyncSender<Event>,
    missed: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let changes = bus.unit_changes()?;
    std::thread::spawn(move || {
        for path in changes {
            // Object paths escape '-' as _2d: brain-experiment@… and brain-run-….
            if !path.as_str().contains("/brain_2d") {
                continue;
            }
            let unit = crate::systemd::escape::unit_of_object_path(path.as_str());
            // Never a blocking send: this thread must keep reading the bus, or zbus stops
            // receiving (method replies too) once its queue fills. A full channel already holds
            // an event that makes the loop evaluate; the unit's name is lost, so `missed` makes
            // the loop forget every reading.
            match tx.try_send(Event::Changed(unit)) {
                Ok(()) => {}
                Err(mpsc::TrySendError::Full(_)) => missed.store(true, Ordering::SeqCst),
                Err(mpsc::TrySendError::Disconnected(_)) => return,
            }
        }
    });
    Ok(())
}

/// The state of a unit that counts: its process runs (or is being started or stopped), as
/// opposed to inactive, failed, or waiting to be restarted (`activating (auto-restart)`).
fn has_process(u: &UnitRow) -> bool {
    matches!(
        u.active_state.as_str(),
        "active" | "reloading" | "deactivating" | "activating"
    ) && u.sub_state != "auto-restart"
}

impl Coordinator {
    fn interval(&self) -> Duration {
        Duration::from_secs(self.cfg.check_interval_secs)
    }

    fn reload(&mut self) {
        match Config::load(&self.config_path) {
            Ok(cfg) => {
                log_info!("reloaded {}", self.config_path.display());
                self.cfg = cfg;
            }
            Err(e) => log_warn!("keeping the previous configuration: {e}"),
        }
    }

    fn sources(&self) -> Vec<PathBuf> {
        if self.cfg.temperature_sources.is_empty() {
            thermal::default_sources()
        } else {
            self.cfg.temperature_sources.clone()
        }
    }

    /// Reads the sources and applies a change of thermal state; true when admission may change.
    fn check_temperature(&mut self) -> bool {
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
    fn apply_thermal(&mut self) {
        if let Err(e) = self.bus.connect() {
            log_warn!("{e}");
            return;
        }
        let quota = match self.thermal {
            Thermal::Normal => quota::UNLIMITED,
            _ => throttled_quota_usec(),
        };
        if let Err(e) = self.bus.set_cpu_quota(SLICE, quota) {
            log_warn!("cannot set the CPU quota of {SLICE}: {e}");
        }
        let frozen = self.frozen
            || self
                .bus
                .state(SLICE, &[Prop::FreezerState])
                .ok()
                .and_then(|s| s.freezer_state)
                .is_some_and(|state| state != "running");
        if self.thermal != Thermal::Critical && frozen {
            match self.bus.thaw(SLICE) {
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
        if self.bus.connect().is_err() {
            return;
        }
        if self.thermal != Thermal::Critical {
            match self.bus.freeze(SLICE) {
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
                let pid = self.bus.state(&u.name, &[Prop::MainPID]).ok()?.main_pid?;
                Some((procfs::start_usec(pid)?, u.name))
            })
            .max();
        if let Some((_, unit)) = newest {
            log_warn!("critical temperature: stopping {unit}, the newest experiment");
            if let Err(e) = self.bus.enqueue(Verb::Stop, &unit) {
                log_warn!("cannot stop {unit}: {e}");
            }
        }
    }

    fn experiments(&self) -> Vec<UnitRow> {
        self.bus
            .list_units(&[TEMPLATE_PATTERN, TRANSIENT_PATTERN])
            .unwrap_or_else(|e| {
                log_warn!("{e}");
                Vec::new()
            })
    }

    /// A gate arrives: it must be its unit's main process (a child of an experiment cannot
    /// queue in its unit's name), and a template unit's `.env` must be valid now. A gate that
    /// asks again (it reconnected after a restart of the coordinator) replaces its older self.
    fn arrive(&mut self, mut gate: Gate) {
        if self.admitted.get(&gate.unit) == Some(&gate.pid) {
            // Its experiment runs already (admitted by this instance): nothing to wait for.
            gate.tell("OK");
            return;
        }
        let main_pid = self.bus.state(&gate.unit, &[Prop::MainPID]).and_then(|s| {
            s.main_pid
                .ok_or_else(|| SystemdError::Failed("no MainPID".into()))
        });
        match main_pid {
            Ok(pid) if pid == gate.pid => {}
            Ok(_) => {
                gate.tell("REFUSE only the main process of an experiment unit is its gate");
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
                match experiments::load_trusted(Path::new(EXPERIMENTS_DIR), &id) {
                    Ok(e) => Some(e),
                    Err(why) => {
                        log_warn!("refused {}: {why}", gate.unit);
                        metrics::refused();
                        gate.tell(&format!("REFUSE {why}"));
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

    /// The `MemoryMax` systemd has for `unit` (`u64::MAX`: none, or unreadable).
    fn declared_memory(&self, unit: &str) -> u64 {
        self.bus
            .state(unit, &[Prop::MemoryMax])
            .ok()
            .and_then(|s| s.memory_max)
            .unwrap_or(u64::MAX)
    }

    /// Applies the limits of the experiment's `.env` to its unit before it runs, at run time, so
    /// that an edited `.env` takes effect at the next start without a `daemon-reload`.
    fn apply_limits(bus: &Bus, unit: &str, e: &Experiment) -> Result<(), SystemdError> {
        let s = bus.state(unit, &[Prop::MemoryMax, Prop::CPUQuotaPerSecUSec])?;
        let cpu = e.cpu_quota_usec().unwrap_or(quota::UNLIMITED);
        if s.memory_max == Some(e.memory_max) && s.cpu_quota_per_sec_usec == Some(cpu) {
            return Ok(());
        }
        bus.set_limits(unit, e.memory_max, cpu)?;
        log_info!(
            "{unit}: MemoryMax={} CPUQuota={} from its .env",
            e.memory_max,
            e.cpu_quota_percent
                .map_or("none".into(), |p| format!("{p}%"))
        );
        Ok(())
    }

    /// The declared `MemoryMax` of a unit that counts: the reading kept from before, unless
    /// the unit changed since (its signal dropped it) or its `.env` did; else one D-Bus read.
    fn declared(&mut self, unit: &str) -> u64 {
        let env_changed = env_changed(unit);
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

    /// Admission: what runs (or was admitted) counts; the waiting gates are answered in the
    /// order they started ([`policy::evaluate`] decides, this does what it says).
    fn evaluate(&mut self) {
        let units = self.experiments();
        let live: BTreeSet<String> = units
            .iter()
            .filter(|u| has_process(u))
            .map(|u| u.name.clone())
            .collect();
        // A gate whose unit no longer runs (stopped while queued) is gone.
        self.waiting.retain(|unit, _| live.contains(unit));
        self.memory.retain(|unit, _| live.contains(unit));
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
        let mut running = admitted.len();
        let mut running_units: Vec<String> = admitted.iter().map(|a| a.unit.clone()).collect();
        for unit in plan.admit {
            let Some(mut q) = self.waiting.remove(&unit) else {
                continue;
            };
            if let Some(e) = &q.limits
                && let Err(err) = Self::apply_limits(&self.bus, &unit, e)
            {
                log_warn!("refused {unit}: cannot apply its limits: {err}");
                metrics::refused();
                q.gate.tell(&format!(
                    "REFUSE cannot apply the limits of its .env: {err}"
                ));
                continue;
            }
            if q.gate.tell("OK") {
                log_info!("admitted {unit}");
                let env_changed = env_changed(&unit);
                self.memory.insert(
                    unit.clone(),
                    Declared {
                        bytes: q.memory,
                        env_changed,
                    },
                );
                running_units.push(unit);
                running += 1;
            }
        }
        for (unit, why) in plan.refuse {
            if let Some(mut q) = self.waiting.remove(&unit) {
                log_warn!("refused {unit}: {why}");
                metrics::refused();
                q.gate.tell(&format!("REFUSE {why}"));
            }
        }
        for (unit, line) in plan.tell {
            if let Some(q) = self.waiting.get_mut(&unit) {
                if q.gate.tell(&format!("WAIT {line}")) {
                    q.gate.told = Some(line);
                } else {
                    // Gone, or not reading: it asks again when it reconnects.
                    self.waiting.remove(&unit);
                }
            }
        }
        self.running = running;
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
        match self
            .bus
            .inhibit_shutdown_block("brain-experiment-coordinator", &why)
        {
            Ok(fd) => self.inhibitor = Some((why, fd)),
            Err(e) => log_warn!("cannot take a shutdown inhibitor: {e}"),
        }
    }

    /// The figures of `metrics.rs`: the running and waiting units with their memory and CPU.
    fn figures(&self) -> metrics::Figures {
        let experiments = self
            .experiments()
            .iter()
            .filter(|u| self.memory.contains_key(&u.name) || self.waiting.contains_key(&u.name))
            .map(|u| {
                let queued = self.waiting.contains_key(&u.name);
                let (memory, cpu_seconds) = metrics::measure(&self.bus, &u.path, &u.name);
                metrics::Experiment {
                    unit: u.name.clone(),
                    id: experiments::id_of(&u.name).unwrap_or_default(),
                    queued,
                    memory_max: match self.waiting.get(&u.name) {
                        Some(q) => Some(q.memory),
                        None => self.memory.get(&u.name).map(|d| d.bytes),
                    },
                    memory: if queued { None } else { memory },
                    cpu_seconds: if queued { None } else { cpu_seconds },
                }
            })
            .collect();
        metrics::Figures {
            running: self.running,
            queued: self.waiting.len(),
            max_concurrent: self.cfg.max_concurrent as usize,
            ram_budget_bytes: self.cfg.total_ram,
            thermal: self.thermal.as_str(),
            frozen: self.frozen,
            hottest: self
                .hottest
                .as_ref()
                .map(|(p, t)| (p.display().to_string(), *t)),
            experiments,
        }
    }

    fn status_line(&self) -> String {
        let running = self.running;
        let queued = self.waiting.len();
        let hot = self
            .hottest
            .as_ref()
            .map_or("no temperature".to_string(), |(p, t)| {
                format!("hottest {t:.1}°C ({})", p.display())
            });
        format!(
            "{running} running (max {}), {queued} queued, {}, {hot}{}",
            self.cfg.max_concurrent,
            self.thermal.as_str(),
            if self.frozen { ", frozen" } else { "" }
        )
    }
}

/// When the `.env` of a template unit was last changed (`None`: a transient unit, or no file).
fn env_changed(unit: &str) -> Option<SystemTime> {
    if !unit.starts_with("brain-experiment@") {
        return None;
    }
    let id = experiments::id_of(unit)?;
    std::fs::metadata(Path::new(EXPERIMENTS_DIR).join(format!("{id}.env")))
        .and_then(|m| m.modified())
        .ok()
}

/// The slice's CPU quota while throttled: half of the machine's CPUs.
fn throttled_quota_usec() -> u64 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    quota::usec_from_percent(u32::try_from(cpus * 50).unwrap_or(u32::MAX))
}

/// What the coordinator answered a gate.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    Admitted,
    /// Queued; the text says where and why (the gate shows it as its unit's status).
    Queued(String),
    Refused(String),
}

/// One line from the coordinator, as a gate reads it.
pub fn parse_answer(line: &str) -> Option<Answer> {
    let line = line.trim_end_matches('\n');
    if line == "OK" {
        return Some(Answer::Admitted);
    }
    if let Some(why) = line.strip_prefix("WAIT ") {
        return Some(Answer::Queued(why.to_string()));
    }
    line.strip_prefix("REFUSE ")
        .map(|why| Answer::Refused(why.to_string()))
}

/// The gate's side (`brain-admit`): connects and calls `on_answer` with each answer until one
/// is final (admitted or refused), which it returns. While the coordinator is away (restarting)
/// it connects again every second, and the coordinator answers anew.
pub fn gate(socket: &Path, mut on_answer: impl FnMut(&Answer)) -> Answer {
    use std::io::{BufRead, BufReader, Read};
    let mut announced = false;
    loop {
        match UnixStream::connect(socket) {
            Ok(stream) => {
                // The coordinator's lines are short; a longer one is cut, never buffered whole.
                let mut lines = BufReader::new(stream.take(1 << 20));
                let mut line = String::new();
                loop {
                    line.clear();
                    match lines.read_line(&mut line) {
                        Ok(n) if n > 0 && line.len() <= 4096 => {}
                        _ => break,
                    }
                    let Some(answer) = parse_answer(&line) else {
                        continue;
                    };
                    on_answer(&answer);
                    if !matches!(answer, Answer::Queued(_)) {
                        return answer;
                    }
                }
            }
            Err(e) if !announced => {
                crate::log_notice!("waiting for the coordinator at {}: {e}", socket.display());
                announced = true;
            }
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inhibitor_names_the_running_experiments() {
        assert_eq!(inhibitor_why(&[]), None);
        let units: Vec<String> = ["brain-experiment@b.service", "brain-experiment@a.service"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            inhibitor_why(&units).as_deref(),
            Some("experiments running: a, b")
        );
        let many: Vec<String> = (0..10)
            .map(|i| format!("brain-experiment@e{i}.service"))
            .collect();
        let why = inhibitor_why(&many).unwrap();
        assert!(why.ends_with("e7 and 2 more"), "{why}");
    }

    #[test]
    fn answers_parse() {
        assert_eq!(parse_answer("OK\n"), Some(Answer::Admitted));
        assert_eq!(
            parse_answer("WAIT queued, position 1 of 2: x\n"),
            Some(Answer::Queued("queued, position 1 of 2: x".into()))
        );
        assert_eq!(
            parse_answer("REFUSE too big"),
            Some(Answer::Refused("too big".into()))
        );
        assert_eq!(parse_answer("HELLO"), None);
    }

    #[test]
    fn a_gate_reads_until_a_final_answer() {
        let dir = std::env::temp_dir().join(format!("homelab-gate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("admission.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            // First connection: queued, then the coordinator goes away (a restart).
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"WAIT queued, position 2 of 2: behind x\n")
                .unwrap();
            drop(s);
            // The gate comes back: queued, then admitted.
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(
                b"WAIT queued, position 1 of 1: 2 of MAX_CONCURRENT_EXPERIMENTS=2 running\nOK\n",
            )
            .unwrap();
        });
        let mut seen = Vec::new();
        let last = gate(&path, |a| seen.push(a.clone()));
        server.join().unwrap();
        assert_eq!(last, Answer::Admitted);
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(matches!(&seen[1], Answer::Queued(w) if w.contains("position 1 of 1")));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
