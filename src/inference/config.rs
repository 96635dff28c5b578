//! `/etc/homelab/inference-service.json`, with the original's keys; a missing file means defaults.

use anyhow::Context;
use serde::Deserialize;
use std::path::PathBuf;

pub const DEFAULT_PATH: &str = "/etc/homelab/inference-service.json";
/// Overrides [`DEFAULT_PATH`] (for running by hand).
pub const PATH_ENV: &str = "HOMELAB_INFERENCE_CONFIG";

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// A running model with no activity for this long is stopped by the idle check.
    pub idle_threshold_minutes: u64,
    /// A model with activity this recent counts as active.
    pub active_threshold_minutes: u64,
    /// How often the idle check acts: `inference-idle-check.timer` fires every minute
    /// (`OnCalendar=minutely`) and the check does nothing until this much has passed.
    pub shutdown_check_interval_minutes: u64,
    /// When every model has been idle for the idle threshold, schedule a power-off through the
    /// shutdown service's timers.
    pub power_off_when_idle: bool,
    pub auth: AuthSection,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    pub enabled: bool,
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection { enabled: true }
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            idle_threshold_minutes: 30,
            active_threshold_minutes: 5,
            shutdown_check_interval_minutes: 5,
            power_off_when_idle: false,
            auth: AuthSection::default(),
        }
    }
}

impl Config {
    pub fn path() -> PathBuf {
        std::env::var_os(PATH_ENV).map_or_else(|| PathBuf::from(DEFAULT_PATH), PathBuf::from)
    }

    pub fn load() -> anyhow::Result<Config> {
        let path = Config::path();
        match std::fs::read(&path) {
            Ok(bytes) => Config::parse(&bytes)
                .with_context(|| format!("bad configuration file {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    pub fn parse(bytes: &[u8]) -> anyhow::Result<Config> {
        let c: Config = serde_json::from_slice(bytes)
            .context("expected e.g. {\"idle_threshold_minutes\": 30, \"active_threshold_minutes\": 5, \"power_off_when_idle\": false}")?;
        for (name, v) in [
            ("idle_threshold_minutes", c.idle_threshold_minutes),
            ("active_threshold_minutes", c.active_threshold_minutes),
            (
                "shutdown_check_interval_minutes",
                c.shutdown_check_interval_minutes,
            ),
        ] {
            if !(1..=10_080).contains(&v) {
                anyhow::bail!("{name} is {v}: use 1 to 10080 (a week)");
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let c = Config::parse(br#"{"idle_threshold_minutes": 10, "power_off_when_idle": true}"#)
            .unwrap();
        assert_eq!(
            (
                c.idle_threshold_minutes,
                c.active_threshold_minutes,
                c.power_off_when_idle
            ),
            (10, 5, true)
        );
        assert!(c.auth.enabled);
        for bad in [
            &br#"{"idle_threshold_minutes": 0}"#[..],
            br#"{"idle": 1}"#,
            br#"{"power_off_when_idle": "yes"}"#,
            b"[",
        ] {
            assert!(
                Config::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
