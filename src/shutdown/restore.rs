//! The boot-time restore (`shutdown-service --restore`, from homelab-shutdown-restore.service):
//! the timers of the state file's schedules started again, and what passed while the machine
//! was off dropped.

use super::actor;
use super::schedule;
use super::state::{State, StateStore};
use crate::systemd::{Systemd, Verb};
use crate::{log_info, log_warn};

/// Starts again the timers of every schedule in the state file, except one-off times that
/// passed while the machine was off (`now`, seconds since the epoch): those are dropped with a
/// log line and never acted on, and a wake alarm such a one-off had set that is still ahead
/// (the machine was started before it by hand) is cleared by root
/// (`homelab-power-action@clear-wake-EPOCH.service`, which clears only an alarm it set and the
/// RTC still holds). Each timer is named from the entry's calendar and action (an entry kept
/// under another name, as a reboot under `homelab-shutdown@`, gets the timer of its action).
pub fn restore(store: &StateStore, systemd: &dyn Systemd, now: i64) -> anyhow::Result<()> {
    let now_usec = u64::try_from(now).unwrap_or(0) * 1_000_000;
    let _guard = store.lock()?;
    let state = store.load();
    let mut keep = State {
        version: 1,
        ..State::default()
    };
    for (key, stored) in &state.schedules {
        if schedule::one_off_usec(&stored.calendar).is_some_and(|t| t <= now_usec) {
            log_warn!(
                "dropping the one-off {} scheduled for {}: it passed while the machine was off",
                stored.action.as_str(),
                stored.calendar
            );
            if let Some(at) = stored.wake_alarm_set.filter(|at| *at > now) {
                let unit = actor::unit(&actor::clear_wake_instance(at));
                match systemd.enqueue(Verb::Start, &unit) {
                    Ok(()) => log_info!(
                        "clearing the wake alarm {} that the dropped one-off set ({unit})",
                        crate::time::epoch_rfc3339(at)
                    ),
                    Err(e) => log_warn!("could not clear the wake alarm {at}: {e}"),
                }
            }
            continue;
        }
        let Some(unit) = schedule::timer_unit(&stored.calendar, stored.action) else {
            log_warn!("dropping the entry {key:?}: its calendar cannot be a timer's name");
            continue;
        };
        match systemd.enqueue(Verb::Start, &unit) {
            Ok(()) => {
                log_info!(
                    "restored {} schedule {} ({unit})",
                    stored.action.as_str(),
                    stored.calendar
                );
                // An entry kept under another timer of ours (a reboot under homelab-shutdown@,
                // from before the action was in the name): that timer must not fire too.
                if key != &unit
                    && schedule::parse_unit(key).is_some()
                    && let Err(e) = systemd.enqueue(Verb::Stop, key)
                {
                    log_warn!("could not stop {key}: {e}");
                }
                // A wait the power-off (or the reboot) ended is over.
                let mut stored = stored.clone();
                stored.waiting = None;
                keep.schedules.insert(unit, stored);
            }
            Err(e) => log_warn!("could not restore {unit}: {e}"),
        }
    }
    if keep != state {
        store.save(&keep)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shutdown::busy::{Waiting, WhenBusy};
    use crate::shutdown::schedule::{Action, Stored};
    use crate::systemd::fake::{FakeSystemd, Refusal};

    const NOW: i64 = 1_795_000_000;

    fn stored(calendar: &str, action: Action) -> Stored {
        Stored {
            calendar: calendar.into(),
            action,
            created_at: "2026-11-18T00:00:00+00:00".into(),
            ..Stored::default()
        }
    }

    fn timer(calendar: &str, action: Action) -> String {
        schedule::timer_unit(calendar, action).unwrap()
    }

    #[test]
    fn recurring_schedules_come_back_and_passed_one_offs_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(Some(dir.path()));
        let weekly = timer("Mon 04:00", Action::Poweroff);
        let ahead = format!("@{}", NOW + 600);
        let passed = format!("@{}", NOW - 600);
        let passed_with_alarm = format!("@{}", NOW - 60);
        store
            .update(|s| {
                let mut w = stored("Mon 04:00", Action::Poweroff);
                w.when_busy = Some(WhenBusy::Skip);
                // A wait the power-off ended.
                w.waiting = Some(Waiting {
                    since: NOW - 7200,
                    until: NOW - 3600,
                    busy: Vec::new(),
                });
                s.schedules.insert(weekly.clone(), w);
                s.schedules.insert(
                    timer(&ahead, Action::Reboot),
                    stored(&ahead, Action::Reboot),
                );
                s.schedules.insert(
                    timer(&passed, Action::Poweroff),
                    stored(&passed, Action::Poweroff),
                );
                let mut p = stored(&passed_with_alarm, Action::Poweroff);
                // It armed the RTC for an hour from now, and the machine was started by hand.
                p.wake_alarm_set = Some(NOW + 3600);
                s.schedules
                    .insert(timer(&passed_with_alarm, Action::Poweroff), p);
                // A reboot kept under the power-off template: its own timer, the other stopped.
                s.schedules.insert(
                    timer("Tue 05:00", Action::Poweroff),
                    stored("Tue 05:00", Action::Reboot),
                );
            })
            .unwrap();
        let fake = FakeSystemd::new();
        restore(&store, &fake, NOW).unwrap();

        let calls = fake.calls();
        let reboot_tue = timer("Tue 05:00", Action::Reboot);
        for started in [&weekly, &timer(&ahead, Action::Reboot), &reboot_tue] {
            assert!(
                calls.contains(&format!("enqueue-start {started}")),
                "{started}: {calls:?}"
            );
            assert_eq!(fake.active_state(started).as_deref(), Some("active"));
        }
        assert!(calls.contains(&format!(
            "enqueue-stop {}",
            timer("Tue 05:00", Action::Poweroff)
        )));
        // Passed one-offs are never started; the alarm one of them set is cleared by root.
        for dropped in [&passed, &passed_with_alarm] {
            let unit = timer(dropped, Action::Poweroff);
            assert!(!calls.iter().any(|c| c.ends_with(&unit)), "{calls:?}");
        }
        let clear = format!(
            "enqueue-start homelab-power-action@clear-wake-{}.service",
            NOW + 3600
        );
        assert_eq!(
            calls
                .iter()
                .filter(|c| c.contains("clear-wake"))
                .collect::<Vec<_>>(),
            [&clear]
        );

        let state = store.load();
        let kept: Vec<&String> = state.schedules.keys().collect();
        let mut expected = vec![&weekly, &reboot_tue];
        let ahead_timer = timer(&ahead, Action::Reboot);
        expected.push(&ahead_timer);
        expected.sort();
        assert_eq!(kept, expected);
        let w = &state.schedules[&weekly];
        assert_eq!(
            (w.waiting.as_ref(), w.when_busy),
            (None, Some(WhenBusy::Skip))
        );
    }

    #[test]
    fn a_schedule_systemd_refuses_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(Some(dir.path()));
        let weekly = timer("Mon 04:00", Action::Poweroff);
        store
            .update(|s| {
                s.schedules
                    .insert(weekly.clone(), stored("Mon 04:00", Action::Poweroff));
            })
            .unwrap();
        let fake = FakeSystemd::new();
        fake.refuse("enqueue-start", "homelab-shutdown@*", Refusal::Denied);
        restore(&store, &fake, NOW).unwrap();
        assert!(store.load().schedules.is_empty());
        assert_eq!(fake.active_state(&weekly), None);
    }
}
