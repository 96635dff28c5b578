//! What the coordinator tells about itself: its status line (the unit's status text) and its
//! figures for the metrics textfile.

use super::metrics;
use super::state::Coordinator;
use crate::experiment::config as experiments;

impl Coordinator {
    /// The figures of `metrics.rs`: the running and waiting units with their memory and CPU.
    pub fn figures(&self) -> metrics::Figures {
        let experiments = self
            .experiments()
            .iter()
            .filter(|u| self.memory.contains_key(&u.name) || self.waiting.contains_key(&u.name))
            .map(|u| {
                let queued = self.waiting.contains_key(&u.name);
                let (memory, cpu_seconds) = metrics::measure(self.sd.as_ref(), &u.path, &u.name);
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

    pub fn status_line(&self) -> String {
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
