//! JSON state files under a service's `StateDirectory=`: read without following symlinks or
//! blocking, bounded in size, written atomically; a corrupt one is moved aside (with an error in
//! the journal) rather than stopping the service.

use anyhow::Context;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The folder of `$STATE_DIRECTORY` (set by systemd for `StateDirectory=`), else `default`.
pub fn state_dir(default: &str) -> PathBuf {
    pick_state_dir(std::env::var_os("STATE_DIRECTORY"), default)
}

/// [`state_dir`] from the value of `STATE_DIRECTORY`: a unit with several `StateDirectory=`
/// names gets them all, `:`-separated; the one named like `default`'s last component wins, else
/// the first.
fn pick_state_dir(var: Option<std::ffi::OsString>, default: &str) -> PathBuf {
    let var = var
        .map(|v| v.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dirs: Vec<&str> = var.split(':').filter(|d| !d.is_empty()).collect();
    let name = Path::new(default).file_name();
    dirs.iter()
        .find(|d| Path::new(d).file_name() == name)
        .or(dirs.first())
        .map_or_else(|| PathBuf::from(default), PathBuf::from)
}

/// Largest state file [`load`] reads; a bigger one is treated as corrupt.
pub const MAX_BYTES: u64 = 1 << 20;

/// Reads the regular file `path`, at most `max` bytes: without following a symlink (an error),
/// without blocking (a FIFO or device opens at once and is refused), never quoting what is in it.
pub fn read_regular(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    read_checked(path, max, |_| Ok(()))
}

/// [`read_regular`] of a configuration file a process running as root acts on: it must also be
/// owned by root and writable by nobody else.
pub fn read_root_owned(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::MetadataExt;
    read_checked(path, max, |meta| {
        if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "it must be owned by root and writable only by root (chown root; chmod 644)",
            ));
        }
        Ok(())
    })
}

fn read_checked(
    path: &Path,
    max: u64,
    check: impl FnOnce(&std::fs::Metadata) -> std::io::Result<()>,
) -> std::io::Result<Vec<u8>> {
    use nix::fcntl::OFlag;
    use std::io::{Error, ErrorKind};
    let file = OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY).bits())
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) {
                Error::new(ErrorKind::InvalidData, "it is a symbolic link")
            } else {
                e
            }
        })?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(Error::new(
            ErrorKind::InvalidData,
            "it is not a regular file",
        ));
    }
    check(&meta)?;
    let mut data = Vec::new();
    file.take(max + 1).read_to_end(&mut data)?;
    if data.len() as u64 > max {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("it is larger than {max} bytes"),
        ));
    }
    Ok(data)
}

/// Why JSON did not parse, by kind and place only: the content itself never reaches the log.
pub fn describe(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let kind = match e.classify() {
        Category::Io => "read error",
        Category::Syntax => "not JSON",
        Category::Data => "unexpected shape",
        Category::Eof => "truncated",
    };
    format!("{kind} at line {}, column {}", e.line(), e.column())
}

/// What a state file holds: missing is `None`; unusable (refused, unreadable, corrupt) says why.
fn parse<T: DeserializeOwned>(path: &Path, max: u64) -> anyhow::Result<Option<T>> {
    match read_regular(path, max) {
        // The error describes where the JSON is wrong, never what it holds.
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| anyhow::anyhow!(describe(&e))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Reads `path` (at most [`MAX_BYTES`]); missing means `T::default()`, unusable means moved
/// aside and `T::default()`.
pub fn load<T: DeserializeOwned + Default>(path: &Path) -> T {
    load_capped(path, MAX_BYTES)
}

/// [`load`] with a size limit of `max` bytes.
pub fn load_capped<T: DeserializeOwned + Default>(path: &Path, max: u64) -> T {
    match parse(path, max) {
        Ok(v) => v.unwrap_or_default(),
        Err(why) => {
            let ext = format!(
                "{}.corrupt-{}",
                path.extension().and_then(|x| x.to_str()).unwrap_or("json"),
                chrono::Local::now().format("%Y%m%dT%H%M%S")
            );
            let aside = path.with_extension(ext);
            // rename() moves a symlink or FIFO itself, never what it points at.
            match fs::rename(path, &aside) {
                Ok(()) => crate::log_err!(
                    "{} is corrupt ({why}); moved it to {} and started empty",
                    path.display(),
                    aside.display()
                ),
                Err(re) => crate::log_err!(
                    "{} is corrupt ({why}) and could not be moved aside ({re})",
                    path.display()
                ),
            }
            T::default()
        }
    }
}

/// Reads `path` like [`load_capped`] but changes nothing: an unusable file is reported and read
/// as `T::default()`, and left where it is (for read-only requests).
pub fn peek<T: DeserializeOwned + Default>(path: &Path, max: u64) -> T {
    parse(path, max)
        .unwrap_or_else(|why| {
            crate::log_err!("{} is corrupt ({why}); reading it as empty", path.display());
            None
        })
        .unwrap_or_default()
}

/// Writes `value` as JSON through [`write_atomic`], mode 0600.
pub fn save<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let mut data = serde_json::to_vec_pretty(value)?;
    data.push(b'\n');
    write_atomic(path, &data, 0o600).with_context(|| format!("cannot write {}", path.display()))
}

/// Replaces `path` with `data` atomically: a temporary file in the same folder, fsync, rename
/// over `path`, fsync the folder. The temporary file is created with `O_EXCL | O_NOFOLLOW` under a
/// name of this process's own (`.NAME.tmp-PID`), so a link planted under that name is never
/// followed, even by root, and a reader never sees half a file. Its name ends in neither `.json`
/// nor `.prom`, so no collector reads it.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind};
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| Error::new(ErrorKind::InvalidInput, "the path names no file"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let open = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .mode(mode)
            .open(&tmp)
    };
    // A file of that name is a leftover of a process that had our PID before: remove it (a
    // symlink is removed, not followed) and create ours afresh.
    let mut f = match open() {
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            fs::remove_file(&tmp)?;
            open()?
        }
        other => other?,
    };
    let result = (|| {
        f.write_all(data)?;
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
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    type Map = BTreeMap<String, u32>;

    #[test]
    fn the_state_directory_named_like_the_default_wins() {
        let var = |v: &str| Some(std::ffi::OsString::from(v));
        let both = var("/var/lib/inference-service:/var/lib/shutdown-service");
        assert_eq!(
            pick_state_dir(both.clone(), "/var/lib/shutdown-service"),
            PathBuf::from("/var/lib/shutdown-service")
        );
        assert_eq!(
            pick_state_dir(both, "/var/lib/inference-service"),
            PathBuf::from("/var/lib/inference-service")
        );
        assert_eq!(
            pick_state_dir(var("/tmp/x"), "/var/lib/shutdown-service"),
            PathBuf::from("/tmp/x")
        );
        assert_eq!(
            pick_state_dir(None, "/var/lib/shutdown-service"),
            PathBuf::from("/var/lib/shutdown-service")
        );
    }

    #[test]
    fn only_small_regular_files_are_read() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let f = dir.join("s.json");
        fs::write(&f, b"{\"a\": 1}").unwrap();
        assert_eq!(read_regular(&f, 64).unwrap(), b"{\"a\": 1}");
        let e = read_regular(&f, 4).unwrap_err();
        assert!(e.to_string().contains("larger than 4 bytes"), "{e}");
        let link = dir.join("link.json");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let e = read_regular(&link, 64).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let fifo = dir.join("fifo.json");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = read_regular(&fifo, 64).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        assert_eq!(
            read_regular(&dir.join("none"), 64).unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
    }

    #[test]
    fn peek_changes_nothing_and_load_moves_aside() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let f = dir.join("s.json");
        fs::write(&f, b"{\"secret-line\": \"x\"}").unwrap();
        assert!(peek::<Map>(&f, 64).is_empty());
        assert!(f.exists(), "peek moved the file");
        assert!(load_capped::<Map>(&f, 64).is_empty());
        assert!(!f.exists(), "load did not move the file aside");
        let fifo = dir.join("fifo.json");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(load::<Map>(&fifo).is_empty());
        assert!(!fifo.exists(), "a FIFO is moved aside, never read");
    }

    #[test]
    fn parse_errors_never_quote_the_content() {
        for text in ["{\"a\": \"secret\"}", "secret", "{\"a\": 1, secret"] {
            let e = serde_json::from_str::<Map>(text).unwrap_err();
            let d = describe(&e);
            assert!(!d.contains("secret"), "{d}");
            assert!(d.contains("line 1"), "{d}");
        }
    }

    #[test]
    fn an_atomic_write_never_follows_a_link_at_its_temporary_name() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let victim = dir.join("victim");
        fs::write(&victim, b"keep").unwrap();
        let target = dir.join("homelab.prom");
        let planted = dir.join(format!(".homelab.prom.tmp-{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        write_atomic(&target, b"new\n", 0o644).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep", "the link was followed");
        assert_eq!(fs::read(&target).unwrap(), b"new\n");
        assert!(
            fs::symlink_metadata(&planted).is_err(),
            "the temporary name is left behind"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
    }
}
