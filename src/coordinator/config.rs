//! `/etc/brain-in-jar/coordinator.env`: the original coordinator's keys and defaults, validated at start.

use anyhow::{Context, anyhow, bail};
use std::path::{Path, PathBuf};

pub const DEFAULT_PATH: &str = "/etc/brain-in-jar/coordinator.env";

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub max_concurrent: u32,
    /// The RAM budget for all experiments together, in bytes.
    pub total_ram: u64,
    pub throttle_celsius: f64,
    pub critical_celsius: f64,
    pub check_interval_secs: u64,
    /// Files in sysfs format (millidegrees Celsius); empty: the machine's thermal zones and
    /// hwmon inputs.
    pub temperature_sources: Vec<PathBuf>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_concurrent: 4,
            total_ram: 48 << 30,
            throttle_celsius: 75.0,
            critical_celsius: 85.0,
            check_interval_secs: 10,
            temperature_sources: Vec::new(),
        }
    }
}

impl Config {
    /// The file at `path`, or the defaults where there is none.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text).with_context(|| path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(anyhow!("cannot read {}: {e}", path.display())),
        }
    }

    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let mut c = Config::default();
        for (key, value) in crate::envfile::parse(text) {
            let v = value.trim();
            let bad = |what: &str| anyhow!("{key}={v:?}: {what}");
            match key.as_str() {
                "MAX_CONCURRENT_EXPERIMENTS" => {
                    c.max_concurrent = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=1000).contains(n))
                        .ok_or_else(|| bad("use a whole number from 1 to 1000"))?
                }
                "TOTAL_RAM_LIMIT_GB" => {
                    let gb: f64 = v
                        .parse()
                        .ok()
                        .filter(|g: &f64| g.is_finite() && *g > 0.0 && *g <= 1_048_576.0)
                        .ok_or_else(|| bad("use a number of GB, e.g. 48"))?;
                    c.total_ram = (gb * (1u64 << 30) as f64) as u64;
                }
                "THROTTLE_TEMP_CELSIUS" => {
                    c.throttle_celsius =
                        parse_celsius(v).ok_or_else(|| bad("use degrees Celsius, e.g. 75"))?
                }
                "CRITICAL_TEMP_CELSIUS" => {
                    c.critical_celsius =
                        parse_celsius(v).ok_or_else(|| bad("use degrees Celsius, e.g. 85"))?
                }
                "TEMPERATURE_CHECK_INTERVAL_SECONDS" => {
                    c.check_interval_secs = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=3600).contains(n))
                        .ok_or_else(|| bad("use 1 to 3600 seconds"))?
                }
                "TEMPERATURE_SOURCES" => {
                    c.temperature_sources = v
                        .split([' ', ',', ':'])
                        .filter(|s| !s.is_empty())
                        .map(PathBuf::from)
                        .collect();
                    if let Some(p) = c.temperature_sources.iter().find(|p| !p.is_absolute()) {
                        bail!(
                            "TEMPERATURE_SOURCES: {} is not an absolute path",
                            p.display()
                        );
                    }
                }
                _ => {
                    bail!(
                        "unknown key {key}: use MAX_CONCURRENT_EXPERIMENTS, TOTAL_RAM_LIMIT_GB, THROTTLE_TEMP_CELSIUS, CRITICAL_TEMP_CELSIUS, TEMPERATURE_CHECK_INTERVAL_SECONDS, TEMPERATURE_SOURCES"
                    );
                }
            }
        }
        if c.critical_celsius <= c.throttle_celsius {
            bail!(
                "CRITICAL_TEMP_CELSIUS ({}) must be above THROTTLE_TEMP_CELSIUS ({})",
                c.critical_celsius,
                c.throttle_celsius
            );
        }
        Ok(c)
    }
}

fn parse_celsius(v: &str) -> Option<f64> {
    v.parse()
        .ok()
        .filter(|t: &f64| t.is_finite() && (0.0..=150.0).contains(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_original_values_are_the_defaults() {
        let c = Config::parse("MAX_CONCURRENT_EXPERIMENTS=4\nTOTAL_RAM_LIMIT_GB=48\nTHROTTLE_TEMP_CELSIUS=75\nCRITICAL_TEMP_CELSIUS=85\n").unwrap();
        assert_eq!(c, Config::default());
        let c = Config::parse("TOTAL_RAM_LIMIT_GB=2\nTEMPERATURE_SOURCES=/run/t1 /run/t2\nTEMPERATURE_CHECK_INTERVAL_SECONDS=1\n").unwrap();
        assert_eq!(
            (
                c.total_ram,
                c.check_interval_secs,
                c.temperature_sources.len()
            ),
            (2 << 30, 1, 2)
        );
    }

    #[test]
    fn bad_values_are_clear_errors() {
        for (text, needle) in [
            ("MAX_CONCURRENT_EXPERIMENTS=0", "MAX_CONCURRENT_EXPERIMENTS"),
            ("MAX_CONCURRENT_EXPERIMENTS=four", "whole number"),
            ("TOTAL_RAM_LIMIT_GB=-1", "GB"),
            ("THROTTLE_TEMP_CELSIUS=hot", "Celsius"),
            (
                "THROTTLE_TEMP_CELSIUS=90\nCRITICAL_TEMP_CELSIUS=80",
                "must be above",
            ),
            ("TEMPERATURE_SOURCES=relative/file", "absolute"),
            ("TEMPERATURE_CHECK_INTERVAL_SECONDS=0", "seconds"),
            ("MAX_EXPERIMENTS=3", "unknown key"),
        ] {
            let e = Config::parse(text).unwrap_err();
            assert!(e.to_string().contains(needle), "{text}: {e}");
        }
    }
}
