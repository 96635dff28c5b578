//! `/etc/homelab/shutdown-service.json`, in the original's shape; a missing file means defaults.

use anyhow::Context;
use serde::Deserialize;
use std::path::PathBuf;

pub const DEFAULT_PATH: &str = "/etc/homelab/shutdown-service.json";
/// Overrides [`DEFAULT_PATH`] (for running by hand).
pub const PATH_ENV: &str = "HOMELAB_SHUTDOWN_CONFIG";

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub default_minutes: u64,
    /// What a schedule that does not say does when the machine is busy.
    pub policy: super::busy::Policy,
    pub auth_enabled: bool,
    pub path: PathBuf,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            default_minutes: 1,
            policy: super::busy::Policy::default(),
            auth_enabled: true,
            path: PathBuf::from(DEFAULT_PATH),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// The original's `service.port`/`host`: the socket unit owns the port now; accepted, unused.
    #[serde(default)]
    service: Option<serde_json::Value>,
    #[serde(default)]
    shutdown: ShutdownSection,
    #[serde(default)]
    auth: AuthSection,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ShutdownSection {
    default_minutes: Option<u64>,
    /// `"proceed"`, `"wait"` or `"skip"`.
    when_busy: Option<serde_json::Value>,
    max_wait_minutes: Option<serde_json::Value>,
    /// The original's lock file: the timer unit is the lock now; accepted, unused.
    #[serde(default)]
    lock_file: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AuthSection {
    enabled: Option<bool>,
}

impl Config {
    pub fn load() -> anyhow::Result<Config> {
        let path = std::env::var_os(PATH_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH));
        match std::fs::read(&path) {
            Ok(bytes) => Config::parse(&bytes, path.clone())
                .with_context(|| format!("bad configuration file {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config {
                path,
                ..Config::default()
            }),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    pub fn parse(bytes: &[u8], path: PathBuf) -> anyhow::Result<Config> {
        let file: File = serde_json::from_slice(bytes).context(
            "expected e.g. {\"shutdown\": {\"default_minutes\": 1}, \"auth\": {\"enabled\": true}}",
        )?;
        let _ = (file.service, file.shutdown.lock_file);
        let default_minutes = file.shutdown.default_minutes.unwrap_or(1);
        if !(1..=super::fields::MAX_MINUTES).contains(&default_minutes) {
            anyhow::bail!(
                "shutdown.default_minutes is {default_minutes}: use 1 to {}",
                super::fields::MAX_MINUTES
            );
        }
        let default = super::busy::Policy::default();
        let when_busy = match &file.shutdown.when_busy {
            None => default.when_busy,
            Some(v) => super::busy::WhenBusy::parse(v).map_err(|e| {
                anyhow::anyhow!(
                    "shutdown.{}",
                    e.to_string().trim_start_matches('"').replacen('"', "", 1)
                )
            })?,
        };
        let max_wait_minutes = match &file.shutdown.max_wait_minutes {
            None => default.max_wait_minutes,
            Some(v) => super::busy::parse_max_wait(v).map_err(|e| {
                anyhow::anyhow!(
                    "shutdown.{}",
                    e.to_string().trim_start_matches('"').replacen('"', "", 1)
                )
            })?,
        };
        Ok(Config {
            default_minutes,
            policy: super::busy::Policy {
                when_busy,
                max_wait_minutes,
            },
            auth_enabled: file.auth.enabled.unwrap_or(true),
            path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_originals_file_parses() {
        let c = Config::parse(
            br#"{"service": {"port": 5001, "host": "0.0.0.0"}, "shutdown": {"default_minutes": 5, "lock_file": "shutdown.lock"}}"#,
            PathBuf::from("x"),
        )
        .unwrap();
        assert_eq!((c.default_minutes, c.auth_enabled), (5, true));
        assert_eq!(c.policy, super::super::busy::Policy::default());
        let c = Config::parse(
            br#"{"shutdown": {"when_busy": "skip", "max_wait_minutes": 30}}"#,
            PathBuf::from("x"),
        )
        .unwrap();
        assert_eq!(c.policy.when_busy, super::super::busy::WhenBusy::Skip);
        assert_eq!(c.policy.max_wait_minutes, 30);
        assert!(
            !Config::parse(br#"{"auth": {"enabled": false}}"#, PathBuf::new())
                .unwrap()
                .auth_enabled
        );
    }

    #[test]
    fn bad_files_are_clear_errors() {
        for bad in [
            &br#"{"shutdown": {"default_minutes": 0}}"#[..],
            br#"{"shutdown": {"default_minutes": "5"}}"#,
            br#"{"shutdwn": {}}"#,
            br#"{"shutdown": {"when_busy": "later"}}"#,
            br#"{"shutdown": {"max_wait_minutes": 0}}"#,
            b"{",
        ] {
            assert!(
                Config::parse(bad, PathBuf::new()).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
