//! The state file: what we remember of each schedule (action, creation time) beyond what
//! systemd knows, so recurring schedules come back after a reboot. Written atomically.

use super::schedule::Stored;
use crate::{log_warn, statefile};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// `StateDirectory=shutdown-service`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/shutdown-service";
pub const STATE_FILE: &str = "schedules.json";

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    /// By timer unit name.
    pub schedules: BTreeMap<String, Stored>,
}

pub struct StateStore {
    path: PathBuf,
}

impl StateStore {
    /// The store in `$STATE_DIRECTORY` (set by systemd), or `dir`.
    pub fn new(dir: Option<&Path>) -> StateStore {
        let dir = dir.map_or_else(
            || statefile::state_dir(DEFAULT_STATE_DIR),
            Path::to_path_buf,
        );
        StateStore {
            path: dir.join(STATE_FILE),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The state; a missing file is empty, a corrupt one is moved aside (with an error in the
    /// journal) and the service goes on with an empty state.
    pub fn load(&self) -> State {
        statefile::load(&self.path)
    }

    /// Writes the whole state atomically.
    pub fn save(&self, state: &State) -> anyhow::Result<()> {
        statefile::save(&self.path, state)
    }

    /// Loads, applies `change`, and saves when it changed anything.
    pub fn update(&self, change: impl FnOnce(&mut State)) -> anyhow::Result<State> {
        let mut state = self.load();
        let before = state.clone();
        change(&mut state);
        state.version = 1;
        if state != before {
            self.save(&state)?;
        }
        Ok(state)
    }
}

/// Reads the action recorded for `unit`, for the root-owned power-action runner: any problem
/// with the file means the default action (power off), never no action.
pub fn recorded_action(dir: &Path, unit: &str) -> super::schedule::Action {
    let path = dir.join(STATE_FILE);
    match fs::read(&path).map(|b| serde_json::from_slice::<State>(&b)) {
        Ok(Ok(state)) => state
            .schedules
            .get(unit)
            .map(|s| s.action)
            .unwrap_or_default(),
        Ok(Err(e)) => {
            log_warn!("{} is unreadable ({e}); powering off", path.display());
            Default::default()
        }
        Err(_) => Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::schedule::Action;
    use super::*;

    fn stored(cal: &str) -> Stored {
        Stored {
            calendar: cal.into(),
            action: Action::Reboot,
            created_at: "t".into(),
            minutes: None,
        }
    }

    #[test]
    fn saves_atomically_and_loads_back() {
        let dir = tempdir();
        let store = StateStore::new(Some(&dir));
        assert!(store.load().schedules.is_empty());
        store
            .update(|s| {
                s.schedules.insert("u1".into(), stored("Mon 23:00"));
            })
            .unwrap();
        assert_eq!(store.load().schedules["u1"], stored("Mon 23:00"));
        assert!(!dir.join("schedules.tmp").exists());
        assert_eq!(recorded_action(&dir, "u1"), Action::Reboot);
        assert_eq!(recorded_action(&dir, "other"), Action::Poweroff);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_corrupt_file_is_moved_aside() {
        let dir = tempdir();
        let store = StateStore::new(Some(&dir));
        fs::write(store.path(), b"{not json").unwrap();
        assert!(store.load().schedules.is_empty());
        let aside: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().into_string().unwrap())
            .collect();
        assert!(
            aside
                .iter()
                .any(|n| n.starts_with("schedules.json.corrupt-")),
            "{aside:?}"
        );
        assert!(!store.path().exists());
        assert_eq!(recorded_action(&dir, "u1"), Action::Poweroff);
        let _ = fs::remove_dir_all(dir);
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "homelab-state-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }
}
