//! Model activity: when each model last reported being used. Kept under `StateDirectory=` so it
//! survives the service exiting when idle, and restarts.

use crate::statefile;
use chrono::{DateTime, Local};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/inference-service";
pub const STATE_FILE: &str = "activity.json";

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Activity {
    /// Model name -> last activity (RFC 3339).
    #[serde(default)]
    pub last_activity: BTreeMap<String, String>,
    /// When the idle check last ran (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<String>,
    /// Since when the idle check has seen every model idle (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_idle_since: Option<String>,
}

/// An RFC 3339 time of ours, back in local time.
pub fn parse_time(t: &str) -> Option<DateTime<Local>> {
    DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|t| t.with_timezone(&Local))
}

impl Activity {
    pub fn last(&self, model: &str) -> Option<DateTime<Local>> {
        self.last_activity.get(model).and_then(|t| parse_time(t))
    }

    /// Active: activity within `active_minutes`.
    pub fn is_active(&self, model: &str, now: DateTime<Local>, active_minutes: u64) -> bool {
        self.last(model)
            .is_some_and(|t| now - t <= chrono::Duration::minutes(active_minutes as i64))
    }

    /// Idle: no activity within `idle_minutes`; a model that never reported any counts from
    /// `since` (when its unit started), so a model just started is not idle at once.
    pub fn is_idle(
        &self,
        model: &str,
        now: DateTime<Local>,
        idle_minutes: u64,
        since: Option<DateTime<Local>>,
    ) -> bool {
        match self.last(model).or(since) {
            Some(t) => now - t > chrono::Duration::minutes(idle_minutes as i64),
            None => true,
        }
    }
}

pub struct ActivityStore {
    path: PathBuf,
}

impl ActivityStore {
    pub fn new(dir: Option<&Path>) -> ActivityStore {
        let dir = dir.map_or_else(
            || statefile::state_dir(DEFAULT_STATE_DIR),
            Path::to_path_buf,
        );
        ActivityStore {
            path: dir.join(STATE_FILE),
        }
    }

    pub fn load(&self) -> Activity {
        statefile::load(&self.path)
    }

    pub fn record(&self, model: &str, when: DateTime<Local>) -> anyhow::Result<()> {
        let mut a = self.load();
        a.last_activity
            .insert(model.to_string(), crate::time::rfc3339(&when));
        self.save(&a)
    }

    pub fn save(&self, a: &Activity) -> anyhow::Result<()> {
        statefile::save(&self.path, a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn active_and_idle_thresholds() {
        let now = Local.timestamp_opt(1_795_000_000, 0).unwrap();
        let mut a = Activity::default();
        a.last_activity.insert(
            "m".into(),
            crate::time::rfc3339(&(now - chrono::Duration::minutes(3))),
        );
        assert!(a.is_active("m", now, 5));
        assert!(!a.is_active("m", now, 2));
        assert!(!a.is_idle("m", now, 30, None));
        assert!(a.is_idle("m", now, 2, None));
        // Never reported: idle once its unit has run longer than the threshold.
        assert!(a.is_idle("x", now, 30, None));
        assert!(!a.is_idle("x", now, 30, Some(now - chrono::Duration::minutes(10))));
        assert!(a.is_idle("x", now, 30, Some(now - chrono::Duration::minutes(31))));
    }

    #[test]
    fn activity_survives_a_new_store() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let now = Local::now();
        ActivityStore::new(Some(dir)).record("m", now).unwrap();
        assert_eq!(
            ActivityStore::new(Some(dir))
                .load()
                .last("m")
                .unwrap()
                .timestamp(),
            now.timestamp()
        );
    }
}
