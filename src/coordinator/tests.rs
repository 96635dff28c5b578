//! The coordinator in-process, against the fake systemd: admission, the queue's order,
//! refusals, the thermal states, the shutdown inhibitor and a forged gate. Each test asserts
//! what the gates were told and what the fake saw.

use super::admit::INHIBITOR_WHO;
use super::config::Config;
use super::gates::Gate;
use super::heat::throttled_quota_usec;
use super::identity::ONLY_THE_MAIN_PROCESS;
use super::policy::Thermal;
use super::state::Coordinator;
use crate::admission::Answer;
use crate::experiment::config::SLICE;
use crate::systemd::fake::FakeSystemd;
use crate::systemd::quota;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;

/// The main PID the fake gives every unit that is up.
const MAIN_PID: u32 = 4242;
const GB: u64 = 1 << 30;

struct World {
    fake: Arc<FakeSystemd>,
    c: Coordinator,
    temperature: PathBuf,
    _dir: tempfile::TempDir,
}

fn world(max_concurrent: u32, ram_gb: u64) -> World {
    let dir = tempfile::tempdir().unwrap();
    let temperature = dir.path().join("temp");
    std::fs::write(&temperature, "40000\n").unwrap();
    let cfg = Config {
        max_concurrent,
        total_ram: ram_gb * GB,
        temperature_sources: vec![temperature.clone()],
        ..Config::default()
    };
    let fake = Arc::new(FakeSystemd::new());
    let c = Coordinator::new(
        fake.clone(),
        &dir.path().join("coordinator.env"),
        cfg,
        dir.path(),
    );
    World {
        fake,
        c,
        temperature,
        _dir: dir,
    }
}

/// A transient experiment (its limits are its unit's, as systemd has them).
fn unit(id: &str) -> String {
    format!("brain-run-{id}.service")
}

/// The gate of `id`'s unit arrives, its process started at `since`, with `gb` declared: the
/// unit is up (a gate reports ready once queued). Returns the gate's end of the connection.
fn gate(w: &mut World, id: &str, gb: u64, since: u64) -> UnixStream {
    let u = unit(id);
    w.fake.add(&u, "active", "running");
    w.fake.set_state(&u, |s| s.memory_max = Some(gb * GB));
    gate_of(w, &u, MAIN_PID, since)
}

/// A connection from process `pid` of `unit` arrives, as the accepting thread hands it on.
fn gate_of(w: &mut World, unit: &str, pid: u32, since: u64) -> UnixStream {
    let (ours, theirs) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    theirs.set_nonblocking(true).unwrap();
    w.c.arrive(Gate {
        stream: ours,
        unit: unit.to_string(),
        pid,
        since_usec: since,
        told: None,
    });
    theirs
}

/// Everything a gate was told so far.
fn told(s: &mut UnixStream) -> Vec<Answer> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    String::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(|l| Answer::parse(l).unwrap_or_else(|| panic!("not an answer: {l:?}")))
        .collect()
}

fn last(s: &mut UnixStream) -> Option<Answer> {
    told(s).pop()
}

fn queued(text: &str) -> Answer {
    Answer::Queued(text.to_string())
}

#[test]
fn admits_to_the_limit_and_queues_first_come_first_served() {
    let mut w = world(2, 48);
    // They connect out of order; the queue is by when each gate's process started.
    let mut g3 = gate(&mut w, "e3", 1, 30);
    let mut g1 = gate(&mut w, "e1", 1, 10);
    let mut g4 = gate(&mut w, "e4", 1, 40);
    let mut g2 = gate(&mut w, "e2", 1, 20);
    w.c.evaluate();
    assert_eq!(told(&mut g1), [Answer::Admitted]);
    assert_eq!(told(&mut g2), [Answer::Admitted]);
    assert_eq!(
        told(&mut g3),
        [queued(
            "queued, position 1 of 2: 2 of MAX_CONCURRENT_EXPERIMENTS=2 running"
        )]
    );
    assert_eq!(
        told(&mut g4),
        [queued(
            "queued, position 2 of 2: behind brain-run-e3.service"
        )]
    );
    assert_eq!(
        w.c.status_line(),
        "2 running (max 2), 2 queued, normal, no temperature"
    );
    // Nothing changed: a waiting gate is not told its status again.
    w.c.evaluate();
    assert_eq!(told(&mut g3), []);
    // e1 ends: the first in the queue starts, and the other moves up.
    w.fake.add(&unit("e1"), "inactive", "dead");
    w.c.evaluate();
    assert_eq!(told(&mut g3), [Answer::Admitted]);
    assert_eq!(
        told(&mut g4),
        [queued(
            "queued, position 1 of 1: 2 of MAX_CONCURRENT_EXPERIMENTS=2 running"
        )]
    );
    assert_eq!(
        w.fake.held_inhibitors(),
        [(
            INHIBITOR_WHO.to_string(),
            "experiments running: e2, e3".to_string()
        )]
    );
}

#[test]
fn the_ram_budget_queues_and_what_never_fits_is_refused() {
    let mut w = world(10, 4);
    let mut a = gate(&mut w, "a", 3, 1);
    let mut b = gate(&mut w, "b", 2, 2);
    let mut huge = gate(&mut w, "huge", 8, 3);
    w.c.evaluate();
    assert_eq!(told(&mut a), [Answer::Admitted]);
    assert_eq!(
        told(&mut b),
        [queued(
            "queued, position 1 of 1: needs 2.0 GB, 3.0 GB of TOTAL_RAM_LIMIT_GB=4.0 GB in use"
        )]
    );
    match last(&mut huge) {
        Some(Answer::Refused(why)) => assert!(
            why.contains("more than the whole budget TOTAL_RAM_LIMIT_GB=4.0 GB"),
            "{why}"
        ),
        other => panic!("the experiment too large for the budget: {other:?}"),
    }
    assert!(!w.c.waiting.contains_key(&unit("huge")));
    // Refused, its gate exits 78 and its unit fails; then a ends: b fits now.
    w.fake.add(&unit("huge"), "failed", "failed");
    w.fake.add(&unit("a"), "inactive", "dead");
    w.c.evaluate();
    assert_eq!(told(&mut b), [Answer::Admitted]);
}

#[test]
fn a_gate_must_be_its_units_main_process() {
    let mut w = world(4, 48);
    let u = unit("x");
    w.fake.add(&u, "active", "running");
    let mut child = gate_of(&mut w, &u, MAIN_PID + 1, 5);
    assert_eq!(
        last(&mut child),
        Some(Answer::Refused(ONLY_THE_MAIN_PROCESS.into()))
    );
    assert!(w.c.waiting.is_empty());
    assert!(w.fake.calls().contains(&format!("state {u}")));
}

#[test]
fn an_admitted_experiment_that_asks_again_is_refused_and_keeps_counting() {
    let mut w = world(1, 48);
    let mut first = gate(&mut w, "a", 1, 7);
    w.c.evaluate();
    assert_eq!(told(&mut first), [Answer::Admitted]);
    // Its process (the same: exec keeps the PID and the start time) runs the gate again.
    let mut again = gate_of(&mut w, &unit("a"), MAIN_PID, 7);
    let mut other = gate(&mut w, "b", 1, 8);
    w.c.evaluate();
    match last(&mut again) {
        Some(Answer::Refused(why)) => assert!(why.contains("admitted already"), "{why}"),
        other => panic!("a second queue request: {other:?}"),
    }
    // a still counts: against the limit, and in the shutdown inhibitor.
    assert!(!w.c.waiting.contains_key(&unit("a")));
    assert_eq!(
        told(&mut other),
        [queued(
            "queued, position 1 of 1: 1 of MAX_CONCURRENT_EXPERIMENTS=1 running"
        )]
    );
    assert_eq!(
        w.fake.held_inhibitors(),
        [(
            INHIBITOR_WHO.to_string(),
            "experiments running: a".to_string()
        )]
    );
    // A restart of the unit is a new main process: a new admission, queued behind b.
    let mut restarted = gate_of(&mut w, &unit("a"), MAIN_PID, 9);
    w.c.evaluate();
    assert!(w.c.waiting.contains_key(&unit("a")));
    assert!(matches!(last(&mut restarted), Some(Answer::Queued(_))));
}

#[test]
fn heat_throttles_then_freezes_then_recovers() {
    let mut w = world(4, 48);
    assert!(!w.c.check_temperature());
    assert_eq!(w.c.thermal, Thermal::Normal);
    std::fs::write(&w.temperature, "80000\n").unwrap();
    assert!(w.c.check_temperature());
    assert_eq!(w.c.thermal, Thermal::Throttled);
    assert_eq!(w.fake.limits(SLICE), Some((None, throttled_quota_usec())));
    // Nothing new starts while hot.
    let mut g = gate(&mut w, "h", 1, 1);
    w.c.evaluate();
    assert_eq!(
        told(&mut g),
        [queued(
            "queued, position 1 of 1: temperature is throttled: nothing new starts until it cools"
        )]
    );
    std::fs::write(&w.temperature, "90000\n").unwrap();
    assert!(w.c.check_temperature());
    assert_eq!(w.c.thermal, Thermal::Critical);
    assert!(w.fake.is_frozen(SLICE));
    assert!(
        w.c.status_line().ends_with(", frozen"),
        "{}",
        w.c.status_line()
    );
    // Below the critical threshold but within the hysteresis: still critical, still frozen.
    std::fs::write(&w.temperature, "82000\n").unwrap();
    assert!(!w.c.check_temperature());
    assert!(w.fake.is_frozen(SLICE));
    // Cool: thawed, no quota, and the queue moves.
    std::fs::write(&w.temperature, "50000\n").unwrap();
    assert!(w.c.check_temperature());
    assert_eq!(w.c.thermal, Thermal::Normal);
    assert!(!w.fake.is_frozen(SLICE));
    assert_eq!(w.fake.limits(SLICE), Some((None, quota::UNLIMITED)));
    w.c.evaluate();
    assert_eq!(told(&mut g), [Answer::Admitted]);
}

#[test]
fn the_inhibitor_names_what_runs_and_goes_when_nothing_does() {
    let mut w = world(4, 48);
    w.c.evaluate();
    assert!(w.fake.held_inhibitors().is_empty());
    let _a = gate(&mut w, "a", 1, 1);
    let _b = gate(&mut w, "b", 1, 2);
    w.c.evaluate();
    assert_eq!(
        w.fake.held_inhibitors(),
        [(
            INHIBITOR_WHO.to_string(),
            "experiments running: a, b".to_string()
        )]
    );
    w.fake.add(&unit("a"), "failed", "failed");
    w.c.evaluate();
    assert_eq!(
        w.fake.held_inhibitors(),
        [(
            INHIBITOR_WHO.to_string(),
            "experiments running: b".to_string()
        )]
    );
    w.fake.remove(&unit("b"));
    w.c.evaluate();
    assert!(w.fake.held_inhibitors().is_empty());
    assert_eq!(w.c.running, 0);
}

#[test]
fn the_inhibitors_why_names_at_most_eight() {
    use super::admit::inhibitor_why;
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
