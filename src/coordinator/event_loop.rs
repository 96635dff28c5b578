//! The coordinator's event loop: gates arriving, experiment units changing, `SIGHUP` and the
//! temperature check, coalesced into evaluations, with the watchdog and status kept alive.

use super::config::Config;
use super::gates::{self, Gate};
use super::state::Coordinator;
use super::{metrics, nvml};
use crate::admission::SOCKET;
use crate::experiment::config::EXPERIMENTS_DIR;
use crate::systemd::{self, Systemd};
use crate::{log_info, log_warn};
use anyhow::Context;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Instant;

/// Gates accepted but not yet looked at; past this, further connections wait in the kernel.
const GATE_BACKLOG: usize = 64;

enum Event {
    Gate(Gate),
    /// An experiment unit changed (its name, when the signal's path gives it).
    Changed(Option<String>),
    /// `SIGHUP` (`systemctl reload`): read the configuration again.
    Reload,
}

/// Runs the coordinator until killed.
pub fn run(config_path: &Path, sd: Arc<dyn Systemd>) -> anyhow::Result<()> {
    let cfg = Config::load(config_path)?;
    let listener = match listenfd::ListenFd::from_env().take_unix_listener(0)? {
        Some(l) => l,
        None => {
            let _ = std::fs::remove_file(SOCKET);
            UnixListener::bind(SOCKET).with_context(|| format!("cannot listen on {SOCKET}"))?
        }
    };
    // Before any thread starts, so that SIGHUP reaches us only through the descriptor.
    let hup = crate::signals::take(&[nix::sys::signal::Signal::SIGHUP], false)?;
    let (tx, rx) = mpsc::sync_channel(GATE_BACKLOG);
    let arrivals = tx.clone();
    std::thread::spawn(move || {
        gates::accept(listener, |gate| arrivals.send(Event::Gate(gate)).is_ok())
    });
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
    watch_units(sd.as_ref(), tx, missed.clone())?;

    let mut c = Coordinator::new(sd, config_path, cfg, Path::new(EXPERIMENTS_DIR));
    c.nvml = nvml::Nvml::load();
    if c.nvml.is_some() {
        log_info!("reading GPU temperatures through NVML");
    }
    let watchdog = sd_notify::watchdog_enabled();
    c.admissions =
        super::identity::Admissions::kept_in(Path::new(super::identity::ADMISSIONS_FILE));
    if !c.admissions.is_empty() {
        log_info!(
            "{} experiments were admitted before this start",
            c.admissions.len()
        );
    }
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

/// Subscribes to systemd's signals and turns state changes of experiment units into events.
fn watch_units(
    sd: &dyn Systemd,
    tx: mpsc::SyncSender<Event>,
    missed: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let changes = sd.unit_changes()?;
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
                Err(mpsc::TrySendError::Disconnected(_)) => {
                    log_warn!("the event loop is gone: no longer watching units");
                    return;
                }
            }
        }
    });
    Ok(())
}
