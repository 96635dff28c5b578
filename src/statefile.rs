//! JSON state files under a service's `StateDirectory=`: written atomically, and a corrupt one
//! is moved aside (with an error in the journal) rather than stopping the service.

use anyhow::Context;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The first folder of `$STATE_DIRECTORY` (set by systemd for `StateDirectory=`), else `default`.
pub fn state_dir(default: &str) -> PathBuf {
    std::env::var_os("STATE_DIRECTORY")
        .and_then(|d| d.to_string_lossy().split(':').next().map(PathBuf::from))
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from(default))
}

/// Reads `path`; missing means `T::default()`, corrupt means moved aside and `T::default()`.
pub fn load<T: DeserializeOwned + Default>(path: &Path) -> T {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return T::default(),
        Err(e) => {
            crate::log_err!("cannot read {}: {e}; going on without it", path.display());
            return T::default();
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            let ext = format!(
                "{}.corrupt-{}",
                path.extension().and_then(|x| x.to_str()).unwrap_or("json"),
                chrono::Local::now().format("%Y%m%dT%H%M%S")
            );
            let aside = path.with_extension(ext);
            match fs::rename(path, &aside) {
                Ok(()) => crate::log_err!(
                    "{} is corrupt ({e}); moved it to {} and started empty",
                    path.display(),
                    aside.display()
                ),
                Err(re) => crate::log_err!(
                    "{} is corrupt ({e}) and could not be moved aside ({re})",
                    path.display()
                ),
            }
            T::default()
        }
    }
}

/// Writes `value` as JSON: temporary file (0600), fsync, rename over `path`, fsync the folder.
pub fn save<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let dir = path.parent().context("state file has no folder")?;
    let tmp = path.with_extension("tmp");
    let mut data = serde_json::to_vec_pretty(value)?;
    data.push(b'\n');
    let result = (|| -> anyhow::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}
