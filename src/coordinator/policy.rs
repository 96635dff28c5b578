//! The coordinator's decisions, as pure functions: which queued experiments to admit, which wait
//! (and why), which are refused; and the thermal state, with hysteresis.

use super::config::Config;
use crate::admission::QueuedStatus;

/// Degrees below a threshold the hottest source must fall before the state eases.
pub const HYSTERESIS_CELSIUS: f64 = 5.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Thermal {
    Normal,
    /// At or above THROTTLE_TEMP_CELSIUS: the slice's CPU quota is lowered, nothing new starts.
    Throttled,
    /// At or above CRITICAL_TEMP_CELSIUS: experiments are paused (or the newest stopped).
    Critical,
}

impl Thermal {
    pub fn as_str(self) -> &'static str {
        match self {
            Thermal::Normal => "normal",
            Thermal::Throttled => "throttled",
            Thermal::Critical => "critical",
        }
    }
}

/// The next thermal state from the hottest reading. Rising takes the threshold; easing takes
/// [`HYSTERESIS_CELSIUS`] below it, so a reading hovering at a threshold does not flap.
pub fn thermal_next(current: Thermal, hottest: Option<f64>, cfg: &Config) -> Thermal {
    let Some(t) = hottest else { return current };
    let critical_hold =
        current == Thermal::Critical && t >= cfg.critical_celsius - HYSTERESIS_CELSIUS;
    let throttle_hold =
        current != Thermal::Normal && t >= cfg.throttle_celsius - HYSTERESIS_CELSIUS;
    if t >= cfg.critical_celsius || critical_hold {
        Thermal::Critical
    } else if t >= cfg.throttle_celsius || throttle_hold {
        Thermal::Throttled
    } else {
        Thermal::Normal
    }
}

/// An experiment that counts against the limits: running, or admitted and starting.
#[derive(Clone, Debug, PartialEq)]
pub struct Admitted {
    pub unit: String,
    pub memory: u64,
}

/// An experiment waiting at its gate.
#[derive(Clone, Debug, PartialEq)]
pub struct Waiting {
    pub unit: String,
    /// Its declared `MemoryMax`, in bytes (`u64::MAX`: none).
    pub memory: u64,
    /// When its gate process started (microseconds since the epoch): the queue's order, which
    /// a restart of the coordinator does not change.
    pub since_usec: u64,
    /// The status line it was last told, if any.
    pub told: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Admit,
    Wait(String),
    Refuse(String),
}

fn gb(bytes: u64) -> String {
    format!("{:.1} GB", bytes as f64 / (1u64 << 30) as f64)
}

/// Decides for every waiting experiment, in the order they asked: strictly first come, first
/// served (a small one does not overtake a large one that waits for RAM).
pub fn decide(
    cfg: &Config,
    thermal: Thermal,
    admitted: &[Admitted],
    waiting: &[Waiting],
) -> Vec<(String, Verdict)> {
    let mut queue: Vec<&Waiting> = waiting.iter().collect();
    queue.sort_by_key(|w| (w.since_usec, w.unit.clone()));
    let mut count = admitted.len() as u64;
    let mut memory: u64 = admitted
        .iter()
        .map(|a| a.memory)
        .fold(0, u64::saturating_add);
    let mut blocked: Option<String> = None;
    let mut out = Vec::new();
    for w in queue {
        let verdict = if w.memory > cfg.total_ram {
            Verdict::Refuse(format!(
                "{} declares MemoryMax {}, more than the whole budget TOTAL_RAM_LIMIT_GB={}: lower EXPERIMENT_RAM_LIMIT",
                w.unit,
                if w.memory == u64::MAX {
                    "infinity".to_string()
                } else {
                    gb(w.memory)
                },
                gb(cfg.total_ram)
            ))
        } else if thermal != Thermal::Normal {
            Verdict::Wait(format!(
                "temperature is {}: nothing new starts until it cools",
                thermal.as_str()
            ))
        } else if let Some(ahead) = &blocked {
            Verdict::Wait(format!("behind {ahead}"))
        } else if count >= u64::from(cfg.max_concurrent) {
            Verdict::Wait(format!(
                "{count} of MAX_CONCURRENT_EXPERIMENTS={} running",
                cfg.max_concurrent
            ))
        } else if memory.saturating_add(w.memory) > cfg.total_ram {
            Verdict::Wait(format!(
                "needs {}, {} of TOTAL_RAM_LIMIT_GB={} in use",
                gb(w.memory),
                gb(memory),
                gb(cfg.total_ram)
            ))
        } else {
            count += 1;
            memory = memory.saturating_add(w.memory);
            Verdict::Admit
        };
        if matches!(verdict, Verdict::Wait(_)) && blocked.is_none() {
            blocked = Some(w.unit.clone());
        }
        out.push((w.unit.clone(), verdict));
    }
    out
}

/// What one evaluation does, in the order the gates started.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Evaluation {
    /// Admit these: apply their `.env` limits, then tell them so.
    pub admit: Vec<String>,
    /// Refuse these, with why ([`crate::admission::Answer::Refused`]).
    pub refuse: Vec<(String, String)>,
    /// Tell these waiting gates their new status ([`crate::admission::Answer::Queued`]); a
    /// gate whose status has not changed is not told again.
    pub tell: Vec<(String, String)>,
}

/// The coordinator's evaluation: [`decide`] for every waiting gate, and each waiting one's place
/// in the queue as a status line.
pub fn evaluate(
    cfg: &Config,
    thermal: Thermal,
    admitted: &[Admitted],
    waiting: &[Waiting],
) -> Evaluation {
    let verdicts = decide(cfg, thermal, admitted, waiting);
    let queued = verdicts
        .iter()
        .filter(|(_, v)| matches!(v, Verdict::Wait(_)))
        .count();
    let queued = u32::try_from(queued).unwrap_or(u32::MAX);
    let mut out = Evaluation::default();
    let mut position = 0;
    for (unit, verdict) in verdicts {
        match verdict {
            Verdict::Admit => out.admit.push(unit),
            Verdict::Refuse(why) => out.refuse.push((unit, why)),
            Verdict::Wait(why) => {
                position += 1;
                let line = QueuedStatus {
                    position,
                    of: queued,
                    why,
                }
                .to_string();
                let told = waiting
                    .iter()
                    .find(|w| w.unit == unit)
                    .and_then(|w| w.told.as_deref());
                if told != Some(line.as_str()) {
                    out.tell.push((unit, line));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max: u32, ram_gb: u64) -> Config {
        Config {
            max_concurrent: max,
            total_ram: ram_gb << 30,
            ..Config::default()
        }
    }

    fn waiting(n: usize, gb: u64) -> Vec<Waiting> {
        (0..n)
            .map(|i| Waiting {
                unit: format!("e{i}"),
                memory: gb << 30,
                since_usec: i as u64,
                told: None,
            })
            .collect()
    }

    fn admitted(v: &[(String, Verdict)]) -> Vec<&str> {
        v.iter()
            .filter(|(_, d)| *d == Verdict::Admit)
            .map(|(u, _)| u.as_str())
            .collect()
    }

    #[test]
    fn concurrency_limit_admits_in_order() {
        let d = decide(&cfg(2, 48), Thermal::Normal, &[], &waiting(4, 1));
        assert_eq!(admitted(&d), ["e0", "e1"]);
        assert!(matches!(&d[2].1, Verdict::Wait(w) if w.contains("MAX_CONCURRENT_EXPERIMENTS")));
        assert!(matches!(&d[3].1, Verdict::Wait(w) if w.contains("behind e2")));
        // One stops: exactly one more.
        let running = vec![Admitted {
            unit: "e0".into(),
            memory: 1 << 30,
        }];
        let d = decide(&cfg(2, 48), Thermal::Normal, &running, &waiting(4, 1)[2..]);
        assert_eq!(admitted(&d), ["e2"]);
    }

    #[test]
    fn ram_budget_and_refusal() {
        let d = decide(&cfg(10, 2), Thermal::Normal, &[], &waiting(3, 1));
        assert_eq!(admitted(&d), ["e0", "e1"]);
        assert!(matches!(&d[2].1, Verdict::Wait(w) if w.contains("TOTAL_RAM_LIMIT_GB")));
        let big = [Waiting {
            unit: "huge".into(),
            memory: 3 << 30,
            since_usec: 0,
            told: None,
        }];
        let d = decide(&cfg(10, 2), Thermal::Normal, &[], &big);
        assert!(matches!(&d[0].1, Verdict::Refuse(r) if r.contains("more than the whole budget")));
        let unlimited = [Waiting {
            unit: "nolimit".into(),
            memory: u64::MAX,
            since_usec: 0,
            told: None,
        }];
        assert!(matches!(
            decide(&cfg(10, 2), Thermal::Normal, &[], &unlimited)[0].1,
            Verdict::Refuse(_)
        ));
    }

    #[test]
    fn evaluation_orders_by_start_and_tells_only_changes() {
        // Started in the order e2, e0, e1, e3 (whatever order they connected in).
        let mut w = waiting(4, 1);
        for (x, since) in w.iter_mut().zip([20, 30, 10, 40]) {
            x.since_usec = since;
        }
        let e = evaluate(&cfg(1, 48), Thermal::Normal, &[], &w);
        assert_eq!(e.admit, ["e2"]);
        assert!(e.refuse.is_empty());
        let lines: Vec<&str> = e.tell.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(
            lines,
            [
                "queued, position 1 of 3: 1 of MAX_CONCURRENT_EXPERIMENTS=1 running",
                "queued, position 2 of 3: behind e0",
                "queued, position 3 of 3: behind e0",
            ]
        );
        assert_eq!(e.tell[0].0, "e0");
        // A gate already told its line is not told again; one whose place changed is.
        w[0].told = Some(e.tell[0].1.clone());
        w[1].told = Some("queued, position 1 of 1: old".into());
        let again = evaluate(&cfg(1, 48), Thermal::Normal, &[], &w);
        let told: Vec<&str> = again.tell.iter().map(|(u, _)| u.as_str()).collect();
        assert_eq!(told, ["e1", "e3"]);
        // Too large for the whole budget: refused, with why.
        let mut big = waiting(1, 100);
        big[0].unit = "huge".into();
        let e = evaluate(&cfg(4, 48), Thermal::Normal, &[], &big);
        assert_eq!(e.refuse.len(), 1);
        assert!(
            e.refuse[0].1.contains("TOTAL_RAM_LIMIT_GB"),
            "{:?}",
            e.refuse
        );
        assert!(e.admit.is_empty() && e.tell.is_empty());
    }

    #[test]
    fn heat_stops_admission() {
        for t in [Thermal::Throttled, Thermal::Critical] {
            let d = decide(&cfg(4, 48), t, &[], &waiting(2, 1));
            assert!(admitted(&d).is_empty());
            assert!(matches!(&d[0].1, Verdict::Wait(w) if w.contains("temperature")));
        }
    }

    #[test]
    fn thermal_states_have_hysteresis() {
        let c = Config {
            throttle_celsius: 75.0,
            critical_celsius: 85.0,
            ..Config::default()
        };
        use Thermal::*;
        assert_eq!(thermal_next(Normal, Some(74.9), &c), Normal);
        assert_eq!(thermal_next(Normal, Some(75.0), &c), Throttled);
        assert_eq!(
            thermal_next(Throttled, Some(72.0), &c),
            Throttled,
            "within the hysteresis"
        );
        assert_eq!(thermal_next(Throttled, Some(69.9), &c), Normal);
        assert_eq!(thermal_next(Normal, Some(85.0), &c), Critical);
        assert_eq!(thermal_next(Critical, Some(81.0), &c), Critical);
        assert_eq!(thermal_next(Critical, Some(79.0), &c), Throttled);
        assert_eq!(thermal_next(Critical, Some(60.0), &c), Normal);
        assert_eq!(
            thermal_next(Throttled, None, &c),
            Throttled,
            "no reading keeps the state"
        );
    }
}
