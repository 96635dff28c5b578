//! The experiment coordinator: admission control (concurrency, RAM budget), thermal policy and
//! shutdown awareness. Stateless: systemd is the source of truth, so a restart loses nothing.
//!
//! Mechanism: every experiment unit has `ExecStartPre=brain-admit`, a gate that asks the
//! coordinator over `/run/brain-in-jar/admission.sock` (socket-activated, so it is held while
//! the coordinator restarts) and waits. A queued experiment is visibly `activating (start-pre)`;
//! a direct `systemctl start` is gated like the target's; and the gate, not the coordinator,
//! starts nothing, so nothing is started twice.

pub mod config;
pub mod nvml;
pub mod policy;
pub mod thermal;

use crate::experiment::config::{SLICE, TEMPLATE_PATTERN, TRANSIENT_PATTERN};
use crate::systemd::dbus::{self, SystemdError};
use crate::{log_info, log_warn, systemd};
use config::Config;
use policy::{Admitted, Thermal, Verdict, Waiting};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const SOCKET: &str = "/run/brain-in-jar/admission.sock";
/// Why each queued experiment waits, for `brainctl status`.
pub const QUEUE_FILE: &str = "/run/brain-in-jar/queue.json";

static RELOAD: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sighup(_: nix::libc::c_int) {
    RELOAD.store(true, Ordering::SeqCst);
}

enum Event {
    /// A gate asks for its unit.
    Gate(UnixStream, String),
    /// An experiment unit changed state.
    Changed,
}

struct Coordinator {
    config_path: PathBuf,
    cfg: Config,
    thermal: Thermal,
    hottest: Option<(PathBuf, f64)>,
    frozen: bool,
    /// Gates waiting, by unit: their connection and when they asked.
    waiting: BTreeMap<String, (UnixStream, u64)>,
    /// Admitted units whose gate may not have exited yet (still `start-pre`).
    granted: BTreeSet<String>,
    inhibitor: Option<zbus::zvariant::OwnedFd>,
    reasons: BTreeMap<String, String>,
    /// Experiments active at the last evaluation (for the status line).
    running: usize,
    /// NVIDIA GPUs, when the NVML library is there.
    nvml: Option<nvml::Nvml>,
}

/// Runs the coordinator until killed.
pub fn run(config_path: &Path) -> anyhow::Result<()> {
    let cfg = Config::load(config_path).map_err(|e| anyhow::anyhow!(e))?;
    let listener = match listenfd::ListenFd::from_env().take_unix_listener(0)? {
        Some(l) => l,
        None => {
            let _ = std::fs::remove_file(SOCKET);
            UnixListener::bind(SOCKET)
                .map_err(|e| anyhow::anyhow!("cannot listen on {SOCKET}: {e}"))?
        }
    };
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        let action = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::Handler(on_sighup),
            nix::sys::signal::SaFlags::SA_RESTART,
            nix::sys::signal::SigSet::empty(),
        );
        nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGHUP, &action)?;
    }
    let (tx, rx) = mpsc::channel();
    let gates = tx.clone();
    std::thread::spawn(move || accept_gates(listener, gates));
    watch_units(tx)?;

    let mut c = Coordinator {
        config_path: config_path.to_path_buf(),
        cfg,
        thermal: Thermal::Normal,
        hottest: None,
        frozen: false,
        waiting: BTreeMap::new(),
        granted: BTreeSet::new(),
        inhibitor: None,
        reasons: BTreeMap::new(),
        nvml: nvml::Nvml::load(),
        running: 0,
    };
    if c.nvml.is_some() {
        log_info!("reading GPU temperatures through NVML");
    }
    let watchdog = sd_notify::watchdog_enabled();
    c.check_temperature();
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
        match rx.recv_timeout(wait) {
            Ok(Event::Gate(stream, unit)) => {
                let since = now_usec();
                c.waiting.insert(unit, (stream, since));
                dirty = true;
            }
            Ok(Event::Changed) => dirty = true,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => anyhow::bail!("the event threads stopped"),
        }
        // Coalesce a burst of events into one evaluation.
        while let Ok(ev) = rx.try_recv() {
            if let Event::Gate(stream, unit) = ev {
                c.waiting.insert(unit, (stream, now_usec()));
            }
            dirty = true;
        }
        if RELOAD.swap(false, Ordering::SeqCst) {
            c.reload();
            dirty = true;
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
    }
}

fn now_usec() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The unit a process runs in, from its cgroup path.
fn unit_of_pid(pid: i32) -> Option<String> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    cgroups
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .find(|u| u.ends_with(".service"))
        .map(str::to_string)
}

fn accept_gates(listener: UnixListener, tx: mpsc::Sender<Event>) {
    for stream in listener.incoming().flatten() {
        let pid = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
            .map(|c| c.pid());
        let Some(unit) = pid.ok().and_then(unit_of_pid) else {
            continue;
        };
        if crate::experiment::config::id_of(&unit).is_none() {
            let _ = (&stream).write_all(b"REFUSE not an experiment unit\n");
            continue;
        }
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut line = String::new();
        if BufReader::new(&stream).read_line(&mut line).is_err() || line.trim() != "ADMIT" {
            continue;
        }
        if tx.send(Event::Gate(stream, unit)).is_err() {
            return;
        }
    }
}

/// Subscribes to systemd's signals and turns state changes of experiment units into events.
fn watch_units(tx: mpsc::Sender<Event>) -> anyhow::Result<()> {
    let bus = dbus::system_bus()?;
    dbus::manager()?.subscribe().map_err(SystemdError::from)?;
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface("org.freedesktop.DBus.Properties")?
        .member("PropertiesChanged")?
        .path_namespace("/org/freedesktop/systemd1/unit")?
        .build();
    let iter = zbus::blocking::MessageIterator::for_match_rule(rule, bus, Some(256))?;
    std::thread::spawn(move || {
        for msg in iter.flatten() {
            // Object paths escape '-' as _2d: brain-experiment@… and brain-run-….
            let ours = msg
                .header()
                .path()
                .is_some_and(|p| p.as_str().contains("/brain_2d"));
            if ours && tx.send(Event::Changed).is_err() {
                return;
            }
        }
    });
    Ok(())
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
        let m = match dbus::manager() {
            Ok(m) => m,
            Err(e) => {
                log_warn!("{e}");
                return false;
            }
        };
        let quota = match next {
            Thermal::Normal => u64::MAX,
            _ => throttled_quota_usec(),
        };
        if let Err(e) = m.set_unit_properties(
            SLICE,
            true,
            &[("CPUQuotaPerSecUSec", zbus::zvariant::Value::from(quota))],
        ) {
            log_warn!(
                "cannot set the CPU quota of {SLICE}: {}",
                SystemdError::from(e)
            );
        }
        if next != Thermal::Critical && self.frozen {
            match m.thaw_unit(SLICE) {
                Ok(()) => log_warn!("thawed {SLICE}"),
                Err(e) => log_warn!("cannot thaw {SLICE}: {}", SystemdError::from(e)),
            }
            self.frozen = false;
        }
        self.thermal = next;
        true
    }

    /// Critical heat: freeze the slice where cgroup v2 allows it; else stop the newest running
    /// experiment, one per check, gracefully.
    fn pause(&mut self) {
        if self.frozen {
            return;
        }
        let Ok(m) = dbus::manager() else { return };
        if self.thermal != Thermal::Critical {
            match m.freeze_unit(SLICE) {
                Ok(()) => {
                    log_warn!("critical temperature: froze {SLICE}");
                    self.frozen = true;
                    return;
                }
                Err(e) => log_warn!(
                    "critical temperature: cannot freeze {SLICE} ({}); stopping the newest experiment",
                    SystemdError::from(e)
                ),
            }
        }
        let newest = self
            .experiments()
            .into_iter()
            .filter(|u| u.3 == "active")
            .map(|u| {
                (
                    dbus::service_u64(&u.6, "ExecMainStartTimestamp").unwrap_or(0),
                    u.0,
                )
            })
            .max();
        if let Some((_, unit)) = newest {
            log_warn!("critical temperature: stopping {unit}, the newest experiment");
            if let Err(e) = m.stop_unit(&unit, "replace") {
                log_warn!("cannot stop {unit}: {}", SystemdError::from(e));
            }
        }
    }

    fn experiments(&self) -> Vec<dbus::UnitStatus> {
        dbus::list_units(&[TEMPLATE_PATTERN, TRANSIENT_PATTERN]).unwrap_or_else(|e| {
            log_warn!("{e}");
            Vec::new()
        })
    }

    /// Admission: what runs (or was admitted) counts; the waiting gates are answered in order.
    fn evaluate(&mut self) {
        let units = self.experiments();
        let state: BTreeMap<&str, (&str, &str)> = units
            .iter()
            .map(|u| (u.0.as_str(), (u.3.as_str(), u.4.as_str())))
            .collect();
        let memory_of = |unit: &str| -> u64 {
            units
                .iter()
                .find(|u| u.0 == unit)
                .and_then(|u| dbus::service_u64(&u.6, "MemoryMax"))
                .unwrap_or(u64::MAX)
        };
        // A gate whose unit is no longer starting (stopped while queued) is gone.
        self.waiting.retain(|unit, _| {
            state
                .get(unit.as_str())
                .is_some_and(|s| *s == ("activating", "start-pre"))
        });
        self.granted.retain(|unit| {
            state
                .get(unit.as_str())
                .is_some_and(|s| *s == ("activating", "start-pre"))
        });
        let admitted: Vec<Admitted> = units
            .iter()
            .filter(|u| {
                matches!(u.3.as_str(), "active" | "reloading" | "deactivating")
                    || (u.3 == "activating" && (u.4 != "start-pre" || self.granted.contains(&u.0)))
            })
            .map(|u| Admitted {
                unit: u.0.clone(),
                memory: memory_of(&u.0),
            })
            .collect();
        let waiting: Vec<Waiting> = self
            .waiting
            .iter()
            .map(|(unit, (_, since))| Waiting {
                unit: unit.clone(),
                memory: memory_of(unit),
                since_usec: *since,
            })
            .collect();
        self.reasons.clear();
        for (unit, verdict) in policy::decide(&self.cfg, self.thermal, &admitted, &waiting) {
            match verdict {
                Verdict::Admit => {
                    if let Some((mut stream, _)) = self.waiting.remove(&unit)
                        && stream.write_all(b"OK\n").is_ok()
                    {
                        log_info!("admitted {unit}");
                        self.granted.insert(unit);
                    }
                }
                Verdict::Refuse(why) => {
                    if let Some((mut stream, _)) = self.waiting.remove(&unit) {
                        log_warn!("refused {unit}: {why}");
                        let _ = stream.write_all(format!("REFUSE {why}\n").as_bytes());
                    }
                }
                Verdict::Wait(why) => {
                    self.reasons.insert(unit, why);
                }
            }
        }
        let _ = crate::statefile::save(Path::new(QUEUE_FILE), &self.reasons);
        self.running = units.iter().filter(|u| u.3 == "active").count();
        self.hold_inhibitor(admitted.len() + self.granted.len());
    }

    /// While experiments run, a logind delay inhibitor gives them time to stop at shutdown.
    fn hold_inhibitor(&mut self, running: usize) {
        if running > 0 && self.inhibitor.is_none() {
            let login = dbus::system_bus().and_then(|b| Ok(dbus::LoginManagerProxy::new(b)?));
            match login.and_then(|l| {
                Ok(l.inhibit(
                    "shutdown",
                    "brain-experiment-coordinator",
                    "experiments are running and stop gracefully",
                    "delay",
                )?)
            }) {
                Ok(fd) => self.inhibitor = Some(fd),
                Err(e) => log_warn!("cannot take a shutdown inhibitor: {e}"),
            }
        } else if running == 0 {
            self.inhibitor = None;
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

/// The slice's CPU quota while throttled: half of the machine's CPUs.
fn throttled_quota_usec() -> u64 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    cpus * 500_000
}

/// The gate (`brain-admit`, an `ExecStartPre=` of every experiment): asks the coordinator and
/// waits for its answer; reconnects while the coordinator restarts.
pub fn gate(socket: &Path) -> Result<(), String> {
    let mut announced = false;
    loop {
        match UnixStream::connect(socket) {
            Ok(mut stream) => {
                if stream.write_all(b"ADMIT\n").is_ok() {
                    let mut line = String::new();
                    if BufReader::new(&stream).read_line(&mut line).is_ok() {
                        let line = line.trim();
                        if line == "OK" {
                            return Ok(());
                        }
                        if let Some(why) = line.strip_prefix("REFUSE ") {
                            return Err(why.to_string());
                        }
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
