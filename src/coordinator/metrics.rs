//! The coordinator's figures for Prometheus, through node_exporter's textfile collector: running,
//! queued and refused experiments, thermal state, hottest temperature, each experiment's memory
//! and CPU time.
//!
//! A textfile rather than an HTTP endpoint of its own: the coordinator runs as root with
//! `PrivateNetwork=yes` and speaks only over a Unix socket, and a TCP listener would be a new
//! attack surface for figures that node_exporter (already on most machines Prometheus watches)
//! can serve. The file is replaced atomically and only when a figure changed.

use crate::metrics::{self, Kind, Writer};
use crate::systemd::{Prop, Systemd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Debian's `prometheus-node-exporter` reads `*.prom` files of this folder.
pub const TEXTFILE_DIR: &str = "/var/lib/prometheus/node-exporter";
pub const TEXTFILE: &str = "/var/lib/prometheus/node-exporter/homelab.prom";

/// Gates refused since the coordinator started.
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Counts one refused experiment.
pub fn refused() {
    REFUSED.fetch_add(1, Ordering::Relaxed);
}

/// What the coordinator knows, for one page.
#[derive(Debug, Default)]
pub struct Figures {
    pub running: usize,
    pub queued: usize,
    pub max_concurrent: usize,
    pub ram_budget_bytes: u64,
    pub thermal: &'static str,
    pub frozen: bool,
    /// The hottest source and its reading, °C.
    pub hottest: Option<(String, f64)>,
    pub experiments: Vec<Experiment>,
}

/// One experiment unit that runs or waits.
#[derive(Debug, Default)]
pub struct Experiment {
    pub unit: String,
    pub id: String,
    pub queued: bool,
    /// Declared `MemoryMax=` (what admission counts), bytes.
    pub memory_max: Option<u64>,
    /// In use now, bytes (from the unit's cgroup; `None` where the kernel does not say).
    pub memory: Option<u64>,
    /// CPU time used, seconds (systemd's `CPUUsageNSec`, else the main process's from `/proc`).
    pub cpu_seconds: Option<f64>,
}

/// Memory and CPU of `unit` (object path `path`): one pipelined batch of property reads.
pub fn measure(
    sd: &dyn Systemd,
    path: &zbus::zvariant::OwnedObjectPath,
    unit: &str,
) -> (Option<u64>, Option<f64>) {
    let Ok(mut states) = sd.states(&[(path, &[Prop::MainPID, Prop::CPUUsageNSec])]) else {
        return (None, None);
    };
    let Some(state) = states.pop() else {
        return (None, None);
    };
    let pid = state.main_pid.filter(|&p| p > 0);
    let cpu = state
        .cpu_usage_nsec
        .filter(|&n| n != u64::MAX)
        .map(|n| n as f64 / 1e9)
        .or_else(|| pid.and_then(process_cpu_seconds));
    let memory = pid.and_then(|p| crate::systemd::procfs::memory_of(p, unit).0);
    (memory, cpu)
}

/// utime + stime of a process, seconds (clock ticks of 1/100 s, as on every Linux we run on).
fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based, as proc(5) counts).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// The page, in the text format.
pub fn page(f: &Figures) -> String {
    let mut w = Writer::new();
    w.gauge(
        "coordinator_up",
        "1 while the coordinator runs (the file is removed when it stops).",
        1.0,
    );
    w.gauge(
        "experiments_running",
        "Experiments admitted and running.",
        f.running as f64,
    );
    w.gauge(
        "experiments_queued",
        "Experiments waiting for admission.",
        f.queued as f64,
    );
    w.gauge(
        "experiments_max_concurrent",
        "MAX_CONCURRENT_EXPERIMENTS.",
        f.max_concurrent as f64,
    );
    w.gauge(
        "experiments_memory_budget_bytes",
        "TOTAL_RAM_LIMIT_GB in bytes.",
        f.ram_budget_bytes as f64,
    );
    w.family(
        "experiments_refused_total",
        "Experiments refused since the coordinator started (they can never fit, or their .env is invalid).",
        Kind::Counter,
    )
    .sample(&[], REFUSED.load(Ordering::Relaxed) as f64);
    let mut fam = w.family(
        "coordinator_thermal_state",
        "The thermal state: 1 for the current one.",
        Kind::Gauge,
    );
    for state in ["normal", "throttled", "critical"] {
        fam.sample(
            &[("state", state)],
            if state == f.thermal { 1.0 } else { 0.0 },
        );
    }
    w.gauge(
        "coordinator_frozen",
        "1 while the experiments' slice is frozen for heat.",
        if f.frozen { 1.0 } else { 0.0 },
    );
    let mut fam = w.family(
        "coordinator_hottest_temperature_celsius",
        "The hottest temperature source's reading.",
        Kind::Gauge,
    );
    if let Some((source, t)) = &f.hottest {
        fam.sample(&[("source", source)], *t);
    }
    let mut fam = w.family(
        "experiment_queued",
        "Each running or waiting experiment unit: 1 if it waits for admission, 0 if it runs.",
        Kind::Gauge,
    );
    for e in &f.experiments {
        fam.sample(
            &[("id", &e.id), ("unit", &e.unit)],
            if e.queued { 1.0 } else { 0.0 },
        );
    }
    let mut fam = w.family(
        "experiment_memory_max_bytes",
        "Each experiment's declared memory limit (MemoryMax=), bytes.",
        Kind::Gauge,
    );
    for e in &f.experiments {
        if let Some(m) = e.memory_max {
            fam.sample(&[("id", &e.id), ("unit", &e.unit)], m as f64);
        }
    }
    let mut fam = w.family(
        "experiment_memory_bytes",
        "Each experiment's memory in use (its cgroup), bytes.",
        Kind::Gauge,
    );
    for e in &f.experiments {
        if let Some(m) = e.memory {
            fam.sample(&[("id", &e.id), ("unit", &e.unit)], m as f64);
        }
    }
    let mut fam = w.family(
        "experiment_cpu_seconds_total",
        "Each experiment's CPU time, seconds.",
        Kind::Counter,
    );
    for e in &f.experiments {
        if let Some(s) = e.cpu_seconds {
            fam.sample(&[("id", &e.id), ("unit", &e.unit)], s);
        }
    }
    w.finish()
}

/// Writes the page to [`TEXTFILE`] when node_exporter's folder exists and a figure changed.
pub fn publish(f: &Figures) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !Path::new(TEXTFILE_DIR).is_dir() {
        return;
    }
    if let Err(e) = metrics::write_textfile(Path::new(TEXTFILE), &page(f))
        && !WARNED.swap(true, Ordering::Relaxed)
    {
        crate::log_warn!("cannot write the metrics file {TEXTFILE}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_every_figure() {
        let f = Figures {
            running: 1,
            queued: 1,
            max_concurrent: 1,
            ram_budget_bytes: 48 << 30,
            thermal: "throttled",
            frozen: false,
            hottest: Some(("/sys/class/thermal/thermal_zone0/temp".into(), 76.5)),
            experiments: vec![
                Experiment {
                    unit: "brain-experiment@a.service".into(),
                    id: "a".into(),
                    queued: false,
                    memory_max: Some(1 << 30),
                    memory: Some(4096),
                    cpu_seconds: Some(1.25),
                },
                Experiment {
                    unit: "brain-experiment@b.service".into(),
                    id: "b".into(),
                    queued: true,
                    ..Experiment::default()
                },
            ],
        };
        let page = page(&f);
        for line in [
            "homelab_experiments_running 1\n",
            "homelab_experiments_queued 1\n",
            "homelab_coordinator_thermal_state{state=\"throttled\"} 1\n",
            "homelab_coordinator_thermal_state{state=\"normal\"} 0\n",
            "homelab_coordinator_hottest_temperature_celsius{source=\"/sys/class/thermal/thermal_zone0/temp\"} 76.5\n",
            "homelab_experiment_queued{id=\"b\",unit=\"brain-experiment@b.service\"} 1\n",
            "homelab_experiment_memory_bytes{id=\"a\",unit=\"brain-experiment@a.service\"} 4096\n",
            "homelab_experiment_memory_max_bytes{id=\"a\",unit=\"brain-experiment@a.service\"} 1073741824\n",
            "homelab_experiment_cpu_seconds_total{id=\"a\",unit=\"brain-experiment@a.service\"} 1.25\n",
            "# TYPE homelab_experiments_refused_total counter\n",
        ] {
            assert!(page.contains(line), "no {line:?} in\n{page}");
        }
        assert!(!page.contains("id=\"b\",unit=\"brain-experiment@b.service\"} 0\n# HELP homelab_experiment_memory_bytes"));
    }

    #[test]
    fn process_cpu_time_is_read_from_proc() {
        let s = process_cpu_seconds(std::process::id()).expect("our own stat");
        assert!(s >= 0.0);
    }
}
