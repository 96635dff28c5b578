//! The state file: what we remember of each schedule (action, creation time) beyond what
//! systemd knows, so recurring schedules come back after a reboot. Written atomically by abc and
//! read only by abc's processes (root never reads it: the action is in the timer's name).

use super::schedule::Stored;
use crate::statefile;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `StateDirectory=shutdown-service`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/shutdown-service";
pub const STATE_FILE: &str = "schedules.json";
/// The lock every change of schedules takes, beside the state file (see [`StateStore::lock`]).
pub const LOCK_FILE: &str = "schedules.lock";
/// Largest state file read: far above what schedules need, small enough to bound memory.
pub const MAX_STATE_BYTES: u64 = 64 * 1024;

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    /// By timer unit name.
    pub schedules: BTreeMap<String, Stored>,
}

pub struct StateStore {
    path: PathBuf,
    /// The last state [`StateStore::peek`] read, and the file it read it from: a read-only
    /// request whose file has not changed since (same inode, size, mtime and ctime; every save
    /// is a rename, so a new inode) costs one `lstat`, not an open, a read and a parse.
    cache: std::sync::Mutex<Option<(Stamp, State)>>,
}

/// What identifies one version of the state file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_nsec: i128,
    ctime_nsec: i128,
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(path).ok()?;
        Some(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_nsec: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_nsec: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        })
    }
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
            cache: std::sync::Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the schedules' lock, blocking until it is free; it is held until the value is
    /// dropped. An exclusive `flock` on `schedules.lock` in the state folder, so it serialises
    /// the shutdown service's requests with each other and with the idle check and the
    /// boot-time restore, which are other processes: every `open` is its own lock holder, so
    /// threads of one process exclude each other too.
    pub fn lock(&self) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
        use anyhow::Context;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.path.with_file_name(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&path)
            .with_context(|| format!("cannot open the lock {}", path.display()))?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| anyhow::anyhow!("cannot lock {}: {e}", path.display()))
    }

    /// The state; a missing file is empty, an unusable one (corrupt, a symlink, a FIFO, over
    /// 64 KiB) is moved aside (with an error in the journal) and the service goes on empty.
    pub fn load(&self) -> State {
        statefile::load_capped(&self.path, MAX_STATE_BYTES)
    }

    /// The state for a read-only request: like [`StateStore::load`], but writes nothing.
    pub fn peek(&self) -> State {
        let Some(stamp) = Stamp::of(&self.path) else {
            return statefile::peek(&self.path, MAX_STATE_BYTES);
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, state)) = cache.as_ref()
            && *seen == stamp
        {
            return state.clone();
        }
        // Stamped before the read: a change during the read shows as a new stamp next time.
        let state: State = statefile::peek(&self.path, MAX_STATE_BYTES);
        *cache = Some((stamp, state.clone()));
        state
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

#[cfg(test)]
mod tests {
    use super::super::schedule::Action;
    use super::*;
    use std::fs;

    fn stored(cal: &str) -> Stored {
        Stored {
            calendar: cal.into(),
            action: Action::Reboot,
            created_at: "t".into(),
            ..Stored::default()
        }
    }

    #[test]
    fn a_peek_sees_every_change_whoever_made_it() {
        let dir = tempdir();
        let store = StateStore::new(Some(dir.path()));
        assert!(store.peek().schedules.is_empty());
        store
            .update(|s| {
                s.schedules.insert("u1".into(), stored("Mon 23:00"));
            })
            .unwrap();
        assert_eq!(store.peek().schedules.len(), 1);
        assert_eq!(store.peek().schedules["u1"], stored("Mon 23:00"));
        // Another process (the idle check) saves through its own store.
        StateStore::new(Some(dir.path()))
            .update(|s| {
                s.schedules.insert("u2".into(), stored("Tue 23:00"));
            })
            .unwrap();
        assert_eq!(store.peek().schedules.len(), 2);
        // Rewritten in place, same size: the ctime and mtime still move.
        let text = fs::read_to_string(store.path()).unwrap();
        fs::write(store.path(), text.replace("Tue 23:00", "Wed 23:00")).unwrap();
        assert_eq!(store.peek().schedules["u2"], stored("Wed 23:00"));
        fs::remove_file(store.path()).unwrap();
        assert!(store.peek().schedules.is_empty());
    }

    #[test]
    fn saves_atomically_and_loads_back() {
        let dir = tempdir();
        let store = StateStore::new(Some(dir.path()));
        assert!(store.load().schedules.is_empty());
        store
            .update(|s| {
                s.schedules.insert("u1".into(), stored("Mon 23:00"));
            })
            .unwrap();
        assert_eq!(store.load().schedules["u1"], stored("Mon 23:00"));
        assert!(!dir.path().join("schedules.tmp").exists());
    }

    #[test]
    fn a_corrupt_file_is_moved_aside() {
        let dir = tempdir();
        let store = StateStore::new(Some(dir.path()));
        fs::write(store.path(), b"{not json").unwrap();
        assert!(store.peek().schedules.is_empty());
        assert!(store.path().exists(), "a read-only peek moved it");
        assert!(store.load().schedules.is_empty());
        let aside: Vec<_> = fs::read_dir(dir.path())
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
    }

    #[test]
    fn the_lock_excludes_other_holders_until_dropped() {
        let dir = tempdir();
        let store = StateStore::new(Some(dir.path()));
        let held = store.lock().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let other = StateStore::new(Some(dir.path()));
        let waiter = std::thread::spawn(move || {
            let _second = other.lock().unwrap();
            tx.send(()).unwrap();
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(200))
                .is_err(),
            "a second holder got the lock while the first held it"
        );
        drop(held);
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("the second holder gets the lock once the first drops it");
        waiter.join().unwrap();
    }

    fn tempdir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }
}
