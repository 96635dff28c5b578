//! `ExperimentManager` in-process, against the fake systemd: each call asserts what the fake
//! saw (the job, the enablement, the transient unit's settings) and the error kinds brainctl
//! turns into exit codes.

use super::manager::{ExperimentManager, ManagerError};
use super::transient::RunSpec;
use crate::admission::GATE;
use crate::systemd::fake::{FakeSystemd, Refusal};
use crate::systemd::transient::Setting;
use std::sync::Arc;

struct World {
    fake: Arc<FakeSystemd>,
    m: ExperimentManager,
    _dir: tempfile::TempDir,
}

/// A manager over a folder with experiments `a` (512M) and `pinned` (enabled by its `.env`).
fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.env"),
        "EXPERIMENT_COMMAND=/bin/sleep infinity\nEXPERIMENT_RAM_LIMIT=512M\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("pinned.env"),
        "EXPERIMENT_COMMAND=/bin/true\nEXPERIMENT_ENABLED=yes\n",
    )
    .unwrap();
    let fake = Arc::new(FakeSystemd::new());
    let m = ExperimentManager::with_dir(fake.clone(), dir.path());
    World { fake, m, _dir: dir }
}

#[test]
fn start_and_stop_run_jobs_and_wait() {
    let w = world();
    assert_eq!(
        w.m.start_experiment("a").unwrap(),
        "brain-experiment@a.service"
    );
    assert!(
        w.fake
            .calls()
            .contains(&"start brain-experiment@a.service".to_string())
    );
    assert_eq!(
        w.fake.active_state("brain-experiment@a.service").as_deref(),
        Some("active")
    );
    let status = w.m.get_status("a").unwrap();
    assert_eq!(
        (status.kind, status.active_state.as_str()),
        ("template", "active")
    );
    assert_eq!(
        w.m.stop_experiment("a").unwrap().as_deref(),
        Some("brain-experiment@a.service")
    );
    assert_eq!(
        w.fake.active_state("brain-experiment@a.service").as_deref(),
        Some("inactive")
    );
    // Stopped already: nothing to do, and no job.
    let before = w.fake.calls().len();
    assert_eq!(w.m.stop_experiment("a").unwrap(), None);
    assert!(
        !w.fake.calls()[before..]
            .iter()
            .any(|c| c.starts_with("stop "))
    );
}

#[test]
fn bad_ids_unknown_experiments_and_refusals_are_kinds() {
    let w = world();
    assert!(matches!(
        w.m.start_experiment("../a"),
        Err(ManagerError::InvalidId(_))
    ));
    match w.m.start_experiment("nosuch") {
        Err(ManagerError::Unknown(why)) => assert!(why.contains("no experiment"), "{why}"),
        other => panic!("{other:?}"),
    }
    w.fake
        .refuse("start", "brain-experiment@*", Refusal::Denied);
    match w.m.start_experiment("a") {
        Err(e @ ManagerError::Denied(_)) => {
            assert!(e.to_string().contains("run it as root"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    w.fake
        .refuse("restart", "brain-experiment@*", Refusal::JobFailed);
    match w.m.restart_experiment("a") {
        Err(ManagerError::Systemd(why)) => assert!(why.contains("exit-code"), "{why}"),
        other => panic!("{other:?}"),
    }
    // Nothing was started.
    assert_ne!(
        w.fake.active_state("brain-experiment@a.service").as_deref(),
        Some("active")
    );
}

#[test]
fn enable_and_disable_change_what_the_target_starts() {
    let w = world();
    w.m.enable_experiment("a").unwrap();
    assert!(w.fake.is_enabled("brain-experiment@a.service"));
    w.m.disable_experiment("a").unwrap();
    assert!(!w.fake.is_enabled("brain-experiment@a.service"));
    // Its .env keeps it with the target: disabled in systemd, and an error naming the line.
    w.m.enable_experiment("pinned").unwrap();
    match w.m.disable_experiment("pinned") {
        Err(ManagerError::Invalid(why)) => {
            assert!(
                why.contains("EXPERIMENT_ENABLED=yes; remove that line"),
                "{why}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(!w.fake.is_enabled("brain-experiment@pinned.service"));
}

#[test]
fn start_all_and_stop_all_act_on_the_target() {
    let w = world();
    w.m.start_all().unwrap();
    w.m.stop_all().unwrap();
    let calls = w.fake.calls();
    assert!(
        calls.contains(&"start brain-experiment.target".to_string()),
        "{calls:?}"
    );
    assert!(
        calls.contains(&"stop brain-experiment.target".to_string()),
        "{calls:?}"
    );
}

#[test]
fn run_creates_a_transient_unit_behind_the_gate() {
    let w = world();
    let spec = RunSpec {
        id: "r1".into(),
        command: vec!["/bin/sleep".into(), "60".into()],
        memory_max: 256 << 20,
        cpu_quota_percent: Some(50),
        gpu: false,
        config: None,
    };
    assert_eq!(
        w.m.run_experiment(spec.clone()).unwrap(),
        "brain-run-r1.service"
    );
    let settings = w.fake.transient_settings("brain-run-r1.service").unwrap();
    assert!(
        settings.contains(&Setting::MemoryMax(256 << 20)),
        "{settings:?}"
    );
    assert!(
        settings.iter().any(|s| matches!(s,
            Setting::ExecStart { program, argv } if program == GATE && argv[1..] == ["/bin/sleep", "60"])),
        "{settings:?}"
    );
    // It runs: the transient unit is what the id means now.
    let status = w.m.get_status("r1").unwrap();
    assert_eq!(
        (status.kind, status.active_state.as_str()),
        ("transient", "active")
    );
    // A second run of a live id is systemd's refusal, passed on.
    assert!(matches!(
        w.m.run_experiment(spec),
        Err(ManagerError::Systemd(_))
    ));
    let bad = RunSpec {
        id: "r2".into(),
        command: vec!["no-such-program-anywhere".into()],
        memory_max: 1 << 20,
        cpu_quota_percent: None,
        gpu: false,
        config: None,
    };
    assert!(matches!(
        w.m.run_experiment(bad),
        Err(ManagerError::Invalid(_))
    ));
    assert!(w.fake.transient_settings("brain-run-r2.service").is_none());
}

#[test]
fn the_list_has_configured_and_loaded_experiments() {
    let w = world();
    w.m.start_experiment("a").unwrap();
    let all = w.m.list_experiments().unwrap();
    let ids: Vec<(&str, &str)> = all
        .iter()
        .map(|s| (s.id.as_str(), s.active_state.as_str()))
        .collect();
    assert_eq!(ids, [("a", "active"), ("pinned", "inactive")]);
    let pinned = &all[1];
    assert_eq!(pinned.enabled, Some(true));
    assert_eq!(
        pinned.memory_limit,
        Some(crate::experiment::config::DEFAULT_RAM)
    );
    assert!(w.fake.calls().iter().any(|c| c.starts_with("list ")));
}
