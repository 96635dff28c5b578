//! brain-experiment-generator: a systemd generator (see systemd.generator(7)). At boot and on
//! every `systemctl daemon-reload` it turns each `/etc/brain-in-jar/experiments/<id>.env` into a
//! drop-in with real cgroup limits for `brain-experiment@<id>.service` (systemd does not expand
//! variables in `MemoryMax=`), and adds the enabled experiments to `brain-experiment.target`.
//!
//! A bad `.env` never breaks boot: that experiment gets nothing, and the reason goes to the
//! kernel log (the journal picks it up), as generators log.

use homelab::experiment::config::{self, EXPERIMENTS_DIR, TARGET, TEMPLATE};
use libsystemd::logging::{Priority, journal_send};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(normal) = args.first().map(PathBuf::from) else {
        eprintln!(
            "usage: brain-experiment-generator NORMAL_DIR [EARLY_DIR LATE_DIR] (run by systemd)"
        );
        return ExitCode::from(2);
    };
    // For trying it by hand: BRAIN_EXPERIMENTS_DIR points at another folder of .env files.
    let dir = std::env::var_os("BRAIN_EXPERIMENTS_DIR")
        .map_or_else(|| PathBuf::from(EXPERIMENTS_DIR), PathBuf::from);
    match generate(&dir, &normal) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log(3, &format!("cannot write to {}: {e}", normal.display()));
            // Still 0: a failed generator must not make boot worse than no experiments.
            ExitCode::SUCCESS
        }
    }
}

fn generate(dir: &Path, out: &Path) -> std::io::Result<()> {
    let (experiments, bad) = config::load_all(dir);
    for (path, why) in bad {
        log(3, &format!("ignoring {}: {why}", path.display()));
    }
    let template = UNIT_DIRS
        .iter()
        .map(|d| Path::new(d).join(TEMPLATE))
        .find(|p| p.exists())
        .unwrap_or_else(|| Path::new("/usr/lib/systemd/system").join(TEMPLATE));
    for e in experiments {
        let unit = e.unit();
        let dropin_dir = out.join(format!("{unit}.d"));
        std::fs::create_dir_all(&dropin_dir)?;
        std::fs::write(
            dropin_dir.join("50-limits.conf"),
            e.dropin(&dir.join(format!("{}.env", e.id))),
        )?;
        if e.enabled {
            let wants = out.join(format!("{TARGET}.wants"));
            std::fs::create_dir_all(&wants)?;
            let link = wants.join(&unit);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&template, &link)?;
        }
    }
    Ok(())
}

/// Generators log to the kernel log (the journal may not run yet); where there is none (a
/// container), to journald's socket (there on daemon-reload); else to stderr.
fn log(priority: u8, msg: &str) {
    let line = format!("<{priority}>brain-experiment-generator: {msg}\n");
    let to_kmsg = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/kmsg")
        .and_then(|mut kmsg| kmsg.write_all(line.as_bytes()));
    if to_kmsg.is_ok() {
        return;
    }
    let fields = [("SYSLOG_IDENTIFIER", "brain-experiment-generator")];
    let level = if priority <= 3 {
        Priority::Error
    } else {
        Priority::Warning
    };
    if journal_send(level, msg, fields.iter().copied()).is_err() {
        eprint!("{}", &line[3..]);
    }
}
