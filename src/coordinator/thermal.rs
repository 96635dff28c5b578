//! Temperature sources: sysfs-format files (millidegrees Celsius), read at each check.

use std::path::{Path, PathBuf};

/// The machine's thermal zones and hwmon temperature inputs.
pub fn default_sources() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for (dir, prefix, file) in [
        ("/sys/class/thermal", "thermal_zone", Some("temp")),
        ("/sys/class/hwmon", "hwmon", None),
    ] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with(prefix) {
                continue;
            }
            match file {
                Some(f) => out.push(e.path().join(f)),
                None => {
                    let Ok(inner) = std::fs::read_dir(e.path()) else {
                        continue;
                    };
                    out.extend(inner.flatten().map(|i| i.path()).filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("temp") && n.ends_with("_input"))
                    }));
                }
            }
        }
    }
    out.sort();
    out
}

/// Reads one source: millidegrees (sysfs) or, for small values, degrees.
pub fn read(path: &Path) -> Option<f64> {
    let v: f64 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    let c = if v.abs() >= 1000.0 { v / 1000.0 } else { v };
    (-50.0..=200.0).contains(&c).then_some(c)
}

/// The hottest readable source and its reading.
pub fn hottest(sources: &[PathBuf]) -> Option<(PathBuf, f64)> {
    sources
        .iter()
        .filter_map(|p| read(p).map(|t| (p.clone(), t)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_millidegrees_and_picks_the_hottest() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (a, b, c) = (dir.join("a"), dir.join("b"), dir.join("c"));
        std::fs::write(&a, "45000\n").unwrap();
        std::fs::write(&b, "76500\n").unwrap();
        std::fs::write(&c, "garbage\n").unwrap();
        assert_eq!(read(&a), Some(45.0));
        assert_eq!(read(&c), None);
        assert_eq!(
            hottest(&[a.clone(), b.clone(), c, dir.join("missing")]),
            Some((b, 76.5))
        );
    }
}
