//! What the kernel tells about a unit's main process without asking systemd: the memory figures
//! of the unit's cgroup, read from cgroupfs as systemd itself reads them for `MemoryCurrent` (and
//! `systemd-cgtop` for its table), and when the process started, as `ps` reads it. One file read
//! instead of a message through the bus per unit and figure.

use std::path::PathBuf;

/// Where a unit's memory accounting files are: the unit's own cgroup directory and whether it
/// is on the unified (v2) hierarchy.
#[derive(Debug, PartialEq, Eq)]
pub struct MemoryCgroup {
    pub dir: PathBuf,
    pub unified: bool,
}

/// The memory cgroup of `unit`, from the `/proc/PID/cgroup` text of one of its processes: the
/// v1 `memory` controller's line if there is one (legacy and hybrid set-ups), else the v2 line.
/// `None` unless the path runs through a directory named after the unit (a process of another
/// unit, or a memory controller systemd does not manage for it, as in a container).
pub fn memory_cgroup(proc_cgroup: &str, unit: &str) -> Option<MemoryCgroup> {
    let mut v1 = None;
    let mut v2 = None;
    for (id, controllers, path) in cgroup_lines(proc_cgroup) {
        if controllers.split(',').any(|c| c == "memory") {
            v1 = Some(path);
        } else if id == "0" && controllers.is_empty() {
            v2 = Some(path);
        }
    }
    let (path, unified) = match (v1, v2) {
        (Some(p), _) => (p, false),
        (None, Some(p)) => (p, true),
        (None, None) => return None,
    };
    // The unit's own cgroup: the path up to its name (the process may sit in a sub-cgroup).
    let mut own = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        own.push('/');
        own.push_str(part);
        if part == unit {
            let root = if unified {
                "/sys/fs/cgroup"
            } else {
                "/sys/fs/cgroup/memory"
            };
            return Some(MemoryCgroup {
                dir: PathBuf::from(format!("{root}{own}")),
                unified,
            });
        }
    }
    None
}

/// Memory in use by `unit` now and at its peak, in bytes, found through its process `pid`;
/// `None` for a figure the kernel does not give (no memory accounting, v2 `memory.peak` needs
/// Linux 5.19) or a process that is gone.
pub fn memory_of(pid: u32, unit: &str) -> (Option<u64>, Option<u64>) {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return (None, None);
    };
    let Some(cg) = memory_cgroup(&text, unit) else {
        return (None, None);
    };
    let (current, peak) = if cg.unified {
        ("memory.current", "memory.peak")
    } else {
        ("memory.usage_in_bytes", "memory.max_usage_in_bytes")
    };
    let read = |file: &str| -> Option<u64> {
        std::fs::read_to_string(cg.dir.join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    (read(current), read(peak))
}

/// The unit a process runs in: the last `.service` component of its cgroup path (the same on
/// the v1 and v2 hierarchies); `None` when it is gone or runs in no service.
pub fn unit_of_pid(pid: u32) -> Option<String> {
    unit_of_cgroup(&std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
}

/// [`unit_of_pid`] from the text of `/proc/PID/cgroup`.
fn unit_of_cgroup(proc_cgroup: &str) -> Option<String> {
    cgroup_lines(proc_cgroup)
        .filter_map(|(_, _, path)| path.rsplit('/').next())
        .find(|u| u.ends_with(".service"))
        .map(str::to_string)
}

/// The lines of `/proc/PID/cgroup` (the one parser of it): hierarchy id, controllers (empty on
/// the unified hierarchy), path. Malformed lines are skipped.
fn cgroup_lines(proc_cgroup: &str) -> impl Iterator<Item = (&str, &str, &str)> {
    proc_cgroup.lines().filter_map(|line| {
        let mut fields = line.splitn(3, ':');
        Some((fields.next()?, fields.next()?, fields.next()?))
    })
}

/// The parent of process `pid` (field 4 of `/proc/PID/stat`).
pub fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The process's name as the kernel keeps it (`/proc/PID/comm`: the executable's file name, at
/// most 15 bytes).
pub fn comm(pid: u32) -> Option<String> {
    Some(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .ok()?
            .trim_end_matches('\n')
            .to_string(),
    )
}

/// When the process `pid` started, in microseconds since the epoch (10 ms resolution: the
/// kernel counts in clock ticks since boot); `None` when it is gone.
pub fn start_usec(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    start_usec_from(&stat, &boot, u64::try_from(ticks).ok()?)
}

/// [`start_usec`] from the texts of `/proc/PID/stat` and `/proc/stat`.
fn start_usec_from(stat: &str, proc_stat: &str, ticks_per_sec: u64) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // Field 22 is the start time; `rest` begins with field 3.
    let start_ticks: u64 = rest.split_whitespace().nth(22 - 3)?.parse().ok()?;
    let boot_sec: u64 = proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    if ticks_per_sec == 0 {
        return None;
    }
    Some(boot_sec * 1_000_000 + start_ticks * 1_000_000 / ticks_per_sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_of_a_process_from_its_cgroup() {
        let v2 = "0::/system.slice/brain-experiments.slice/brain-experiment@e1.service\n";
        assert_eq!(
            unit_of_cgroup(v2).as_deref(),
            Some("brain-experiment@e1.service")
        );
        let v1 = "12:pids:/system.slice/brain-run-x.service\n1:name=systemd:/system.slice/brain-run-x.service\n";
        assert_eq!(unit_of_cgroup(v1).as_deref(), Some("brain-run-x.service"));
        assert_eq!(unit_of_cgroup("0::/user.slice/session-1.scope\n"), None);
        assert!(comm(std::process::id()).is_some());
        assert_eq!(
            parent(std::process::id()),
            Some(std::os::unix::process::parent_id())
        );
    }

    #[test]
    fn start_time_from_proc() {
        let stat = "4242 (sleep (x) y) S 1 4242 4242 0 -1 4194560 92 0 0 0 0 0 0 0 20 0 1 0 \
                    12345 5636096 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        let proc_stat = "cpu  1 2 3\nbtime 1763884800\nprocesses 9\n";
        assert_eq!(
            start_usec_from(stat, proc_stat, 100),
            Some(1_763_884_800_000_000 + 123_450_000)
        );
        assert_eq!(start_usec_from(stat, "cpu 1\n", 100), None);
        assert_eq!(start_usec_from("4242 (trunc", proc_stat, 100), None);
        assert_eq!(start_usec_from(stat, proc_stat, 0), None);
    }

    #[test]
    fn start_time_of_this_process_is_recent() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        let started = start_usec(std::process::id()).expect("our own /proc/PID/stat");
        // btime is whole seconds and drifts a little from the wall clock: a generous window.
        assert!(started <= now + 2_000_000, "{started} vs {now}");
        assert!(now - started.min(now) < 3_600_000_000, "{started} vs {now}");
    }

    const UNIT: &str = "brain-experiment@a.service";

    #[test]
    fn unified_hierarchy() {
        let text = "0::/brain.slice/brain-experiments.slice/brain-experiment@a.service\n";
        assert_eq!(
            memory_cgroup(text, UNIT),
            Some(MemoryCgroup {
                dir:
                    "/sys/fs/cgroup/brain.slice/brain-experiments.slice/brain-experiment@a.service"
                        .into(),
                unified: true
            })
        );
    }

    #[test]
    fn sub_cgroup_is_cut_at_the_unit() {
        let text = "0::/system.slice/brain-experiment@a.service/worker\n";
        let cg = memory_cgroup(text, UNIT).unwrap();
        assert_eq!(
            cg.dir,
            PathBuf::from("/sys/fs/cgroup/system.slice/brain-experiment@a.service")
        );
    }

    #[test]
    fn legacy_memory_controller_wins_over_the_unified_line() {
        let text = "12:cpu,cpuacct:/x\n5:memory:/brain.slice/brain-experiment@a.service\n\
                    1:name=systemd:/brain.slice/brain-experiment@a.service\n0::/brain.slice\n";
        assert_eq!(
            memory_cgroup(text, UNIT),
            Some(MemoryCgroup {
                dir: "/sys/fs/cgroup/memory/brain.slice/brain-experiment@a.service".into(),
                unified: false
            })
        );
    }

    #[test]
    fn a_memory_cgroup_not_of_the_unit_is_not_used() {
        // A container whose memory controller systemd does not manage: the whole container's
        // figure must not be reported as the unit's.
        let text = "5:memory:/\n1:name=systemd:/brain.slice/brain-experiment@a.service\n";
        assert_eq!(memory_cgroup(text, UNIT), None);
        assert_eq!(
            memory_cgroup("0::/system.slice/other.service\n", UNIT),
            None
        );
        // A unit name only as a prefix of a component is not the unit.
        assert_eq!(
            memory_cgroup("0::/brain-experiment@a.service.d/x\n", UNIT),
            None
        );
        assert_eq!(memory_cgroup("", UNIT), None);
    }
}
