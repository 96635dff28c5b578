//! The idle policy, run by `inference-idle-check.timer` (a timer, because the service itself
//! exits when idle): stop running models idle past the threshold; when enabled and every model
//! has been idle that long, schedule a power-off through the shutdown module, which owns
//! scheduling (one function, one lock shared with the shutdown service's process).

use super::activity::{self, Activity, ActivityStore};
use super::config::Config;
use super::models;
use crate::shutdown::schedule::{Action, ScheduleRequest};
use crate::shutdown::state::StateStore;
use crate::shutdown::{Outcome, Schedules};
use crate::systemd::view::UnitView;
use crate::systemd::{Systemd, Verb};
use crate::{log_info, log_warn};
use chrono::{DateTime, Duration, Local};
use std::sync::Arc;

/// How far ahead the idle power-off is scheduled: time to see it and cancel it.
pub const POWER_OFF_DELAY_SECONDS: i64 = 60;

/// What one check decided, for the log and the tests.
#[derive(Debug, Default, PartialEq)]
pub struct Decision {
    pub stop: Vec<String>,
    /// All idle since then (kept in the state for the next check).
    pub all_idle_since: Option<DateTime<Local>>,
    pub power_off: bool,
}

/// The pure policy: given the running models (with when each unit started) and the activity,
/// which to stop, and whether everything has been idle long enough to power off.
pub fn decide(
    config: &Config,
    activity: &Activity,
    running: &[(String, Option<DateTime<Local>>)],
    now: DateTime<Local>,
) -> Decision {
    let idle_minutes = config.idle_threshold_minutes;
    let stop: Vec<String> = running
        .iter()
        .filter(|(name, since)| activity.is_idle(name, now, idle_minutes, *since))
        .map(|(name, _)| name.clone())
        .collect();
    let still_running = running.iter().any(|(n, _)| !stop.contains(n));
    let recent = activity
        .last_activity
        .keys()
        .any(|m| !activity.is_idle(m, now, idle_minutes, None));
    if still_running || recent {
        return Decision {
            stop,
            all_idle_since: None,
            power_off: false,
        };
    }
    let since = activity
        .all_idle_since
        .as_deref()
        .and_then(activity::parse_time)
        .unwrap_or(now);
    let power_off =
        config.power_off_when_idle && now - since >= Duration::minutes(idle_minutes as i64);
    Decision {
        stop,
        all_idle_since: Some(since),
        power_off,
    }
}

/// One run of the check (`inference-service --check-idle`) on this machine: over `systemd`,
/// with the shutdown module's owner of the schedules for the idle power-off.
pub fn check(
    config: &Config,
    store: &ActivityStore,
    systemd: Arc<dyn Systemd>,
) -> anyhow::Result<()> {
    // A process of its own that lives for one check: its view asks systemd on every read.
    let schedules = Schedules::new(
        StateStore::new(None),
        systemd.clone(),
        UnitView::new(crate::shutdown::schedule::UNIT_PATTERNS),
        crate::shutdown::config::Config::load()
            .map(|c| c.policy)
            .unwrap_or_default(),
    );
    run(config, store, &*systemd, &schedules, Local::now())
}

/// One check at `now`: stops the models idle past the threshold, and schedules the idle
/// power-off through `schedules` when that is on and everything has been idle long enough.
pub fn run(
    config: &Config,
    store: &ActivityStore,
    systemd: &dyn Systemd,
    schedules: &Schedules,
    now: DateTime<Local>,
) -> anyhow::Result<()> {
    let mut activity = store.load();
    if let Some(last) = activity
        .last_check
        .as_deref()
        .and_then(activity::parse_time)
        && now - last
            < Duration::minutes(config.shutdown_check_interval_minutes as i64)
                - Duration::seconds(5)
    {
        return Ok(());
    }
    // A one-shot check: a view that is not watching reads from systemd once.
    let running = models::running_since(systemd, &UnitView::new(&[models::UNIT_PATTERN]))?;
    let decision = decide(config, &activity, &running, now);
    for name in &decision.stop {
        let unit = models::unit_of(name).expect("names from unit names fit");
        match systemd.run_and_wait(Verb::Stop, &unit, Some(std::time::Duration::from_secs(90))) {
            Ok(()) => log_info!(
                "stopped {unit}: no activity for {} minutes",
                config.idle_threshold_minutes
            ),
            Err(e) => log_warn!("could not stop idle {unit}: {e}"),
        }
    }
    if decision.power_off {
        schedule_power_off(schedules, now)?;
    }
    activity.last_check = Some(crate::time::rfc3339(&now));
    activity.all_idle_since = decision.all_idle_since.map(|t| crate::time::rfc3339(&t));
    store.save(&activity)
}

/// Schedules a one-off power-off [`POWER_OFF_DELAY_SECONDS`] ahead through the shutdown
/// module's one scheduling function (its lock, its conflict rules, its state file): nothing
/// happens when a one-off power action (power-off or reboot) is pending already.
fn schedule_power_off(schedules: &Schedules, now: DateTime<Local>) -> anyhow::Result<()> {
    let request = ScheduleRequest {
        calendar: format!("@{}", now.timestamp() + POWER_OFF_DELAY_SECONDS),
        action: Action::Poweroff,
        replace: false,
        minutes: None,
        // The configuration's policy when busy, applied when it fires, as for any schedule.
        when_busy: None,
        max_wait_minutes: None,
        wake: None,
    };
    match schedules
        .schedule(&request, now)
        .map_err(|e| anyhow::anyhow!("cannot schedule the idle power-off: {}", e.message))?
    {
        Outcome::Conflict(c) => log_info!(
            "every model is idle; a one-off {} is already scheduled ({})",
            c.existing().action.as_str(),
            c.existing().unit
        ),
        Outcome::Scheduled(p) => log_warn!(
            "every model has been idle past the threshold: powering off in {POWER_OFF_DELAY_SECONDS} s ({}); cancel with POST /shutdown/cancel on port 5001",
            p.unit
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(min_ago: i64, now: DateTime<Local>) -> String {
        crate::time::rfc3339(&(now - Duration::minutes(min_ago)))
    }

    #[test]
    fn stops_idle_models_and_powers_off_only_after_the_period() {
        let now = Local.timestamp_opt(1_795_000_000, 0).unwrap();
        let config = Config {
            idle_threshold_minutes: 30,
            power_off_when_idle: true,
            ..Config::default()
        };
        let mut a = Activity::default();
        a.last_activity.insert("busy".into(), at(5, now));
        a.last_activity.insert("quiet".into(), at(45, now));
        let running = vec![
            ("busy".to_string(), Some(now - Duration::minutes(60))),
            ("quiet".to_string(), Some(now - Duration::minutes(60))),
        ];
        let d = decide(&config, &a, &running, now);
        assert_eq!(d.stop, ["quiet"]);
        assert!(!d.power_off && d.all_idle_since.is_none());

        // A model started a minute ago with no activity yet is not idle.
        let d = decide(
            &config,
            &Activity::default(),
            &[("new".to_string(), Some(now - Duration::minutes(1)))],
            now,
        );
        assert!(d.stop.is_empty() && !d.power_off);

        // Nothing running, nothing recent: idle from now; power off once that lasted 30 minutes.
        a.last_activity.remove("busy");
        let d = decide(&config, &a, &[], now);
        assert_eq!((d.all_idle_since, d.power_off), (Some(now), false));
        a.all_idle_since = Some(at(31, now));
        assert!(decide(&config, &a, &[], now).power_off);
        let off = Config {
            power_off_when_idle: false,
            ..config
        };
        assert!(
            !decide(&off, &a, &[], now).power_off,
            "power_off_when_idle is off by default"
        );
    }

    /// A check's world: models `running` (unit states in the fake), the activity store and the
    /// schedules' state in fresh folders.
    struct World {
        fake: std::sync::Arc<crate::systemd::fake::FakeSystemd>,
        activity: ActivityStore,
        schedules: Schedules,
        _dirs: (tempfile::TempDir, tempfile::TempDir),
    }

    fn world(running: &[&str]) -> World {
        let fake = std::sync::Arc::new(crate::systemd::fake::FakeSystemd::new());
        for name in running {
            fake.add(&models::unit_of(name).unwrap(), "active", "running");
        }
        let (a, s) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        World {
            activity: ActivityStore::new(Some(a.path())),
            schedules: Schedules::new(
                StateStore::new(Some(s.path())),
                fake.clone(),
                UnitView::new(crate::shutdown::schedule::UNIT_PATTERNS),
                crate::shutdown::busy::Policy::default(),
            ),
            fake,
            _dirs: (a, s),
        }
    }

    fn config() -> Config {
        Config {
            idle_threshold_minutes: 30,
            power_off_when_idle: true,
            ..Config::default()
        }
    }

    fn started_timers(w: &World) -> Vec<String> {
        w.fake
            .calls()
            .into_iter()
            .filter(|c| c.starts_with("start homelab-shutdown@"))
            .collect()
    }

    #[test]
    fn the_check_stops_idle_models_and_keeps_the_active_ones() {
        let now = Local.timestamp_opt(1_795_000_000, 0).unwrap();
        let w = world(&["busy", "quiet"]);
        let mut a = Activity::default();
        a.last_activity.insert("busy".into(), at(5, now));
        a.last_activity.insert("quiet".into(), at(45, now));
        w.activity.save(&a).unwrap();
        run(&config(), &w.activity, &*w.fake, &w.schedules, now).unwrap();
        assert!(
            w.fake
                .calls()
                .contains(&"stop model@quiet.service".to_string())
        );
        assert_eq!(
            w.fake.active_state("model@quiet.service").as_deref(),
            Some("inactive")
        );
        assert_eq!(
            w.fake.active_state("model@busy.service").as_deref(),
            Some("active")
        );
        // A model still runs: no power-off.
        assert!(started_timers(&w).is_empty());
        let saved = w.activity.load();
        assert_eq!(saved.last_check, Some(crate::time::rfc3339(&now)));
        assert_eq!(saved.all_idle_since, None);
    }

    #[test]
    fn everything_idle_long_enough_schedules_the_power_off_once() {
        let now = Local.timestamp_opt(1_795_000_000, 0).unwrap();
        let w = world(&[]);
        let a = Activity {
            all_idle_since: Some(at(31, now)),
            ..Activity::default()
        };
        w.activity.save(&a).unwrap();
        run(&config(), &w.activity, &*w.fake, &w.schedules, now).unwrap();
        let timer = crate::shutdown::schedule::timer_unit(
            &format!("@{}", now.timestamp() + POWER_OFF_DELAY_SECONDS),
            Action::Poweroff,
        )
        .unwrap();
        assert_eq!(started_timers(&w), [format!("start {timer}")]);
        assert_eq!(w.fake.active_state(&timer).as_deref(), Some("active"));
        assert!(w.schedules.store().load().schedules.contains_key(&timer));
        // The next check, with the power-off pending: the conflict rules start nothing more.
        let later = now + Duration::minutes(10);
        run(&config(), &w.activity, &*w.fake, &w.schedules, later).unwrap();
        assert_eq!(started_timers(&w).len(), 1);
    }

    #[test]
    fn recent_activity_or_a_recent_check_keeps_the_machine_up() {
        let now = Local.timestamp_opt(1_795_000_000, 0).unwrap();
        let w = world(&[]);
        let mut a = Activity {
            all_idle_since: Some(at(120, now)),
            ..Activity::default()
        };
        a.last_activity.insert("m".into(), at(5, now));
        w.activity.save(&a).unwrap();
        run(&config(), &w.activity, &*w.fake, &w.schedules, now).unwrap();
        assert!(started_timers(&w).is_empty());
        assert_eq!(
            w.activity.load().all_idle_since,
            None,
            "activity restarts the count"
        );
        // Idle long enough, but checked a minute ago: this run does nothing at all.
        let b = Activity {
            all_idle_since: Some(at(120, now)),
            last_check: Some(at(1, now)),
            ..Activity::default()
        };
        w.activity.save(&b).unwrap();
        let calls = w.fake.calls().len();
        run(&config(), &w.activity, &*w.fake, &w.schedules, now).unwrap();
        assert_eq!(w.fake.calls().len(), calls);
        assert_eq!(w.activity.load(), b);
    }
}
