//! `brainctl run`: a transient experiment unit (`StartTransientUnit`, as `systemd-run` does).
//!
//! The properties below are the transient twin of `systemd/brain-experiment@.service`: the same
//! slice, target, restart policy, user and hardening. Change one, change the other.

use super::config::{GPU_DEVICES, SLICE, TARGET, transient_unit, validate_id};
use std::path::PathBuf;
use zbus::zvariant::Value;

/// Restart policy shared with the template: `Restart=on-failure`, at most 3 starts in 10 min.
pub const RESTART_USEC: u64 = 2_000_000;
pub const START_LIMIT_BURST: u32 = 3;
pub const START_LIMIT_INTERVAL_USEC: u64 = 600_000_000;
pub const TIMEOUT_STOP_USEC: u64 = 60_000_000;
/// The wait for the coordinator's first answer (the template's `TimeoutStartSec=90s`).
pub const TIMEOUT_START_USEC: u64 = 90_000_000;
pub const USER: &str = "brain";
/// The admission gate, installed beside brainctl: the first main process, as in the template.
pub const GATE: &str = concat!(env!("HOMELAB_BINDIR"), "/brain-admit");
pub const COORDINATOR_SOCKET: &str = "brain-experiment-coordinator.socket";

#[derive(Clone, Debug, PartialEq)]
pub struct RunSpec {
    pub id: String,
    /// Program (absolute) and arguments.
    pub command: Vec<String>,
    pub memory_max: u64,
    pub cpu_quota_percent: Option<u32>,
    pub gpu: bool,
    pub config: Option<PathBuf>,
}

impl RunSpec {
    pub fn unit(&self) -> String {
        transient_unit(&self.id)
    }

    /// Checks what the properties are built from; resolves the program through `PATH` as
    /// `systemd-run` does (systemd wants an absolute path).
    pub fn validate(mut self) -> Result<RunSpec, String> {
        validate_id(&self.id)?;
        let program = self
            .command
            .first()
            .ok_or("no command given: brainctl run ID -- COMMAND [ARGS...]")?;
        // As systemd-run does: a missing program is an error now, not a failed unit later.
        let found = crate::exec::resolve_program(program, std::env::var_os("PATH").as_deref())?;
        self.command[0] = found.to_string_lossy().into_owned();
        if let Some(c) = &self.config
            && !c.is_absolute()
        {
            return Err(format!("--config {}: give an absolute path", c.display()));
        }
        Ok(self)
    }

    /// The unit's properties for `StartTransientUnit`.
    pub fn properties(&self) -> Vec<(&'static str, Value<'static>)> {
        let mut env = vec![format!("EXPERIMENT_ID={}", self.id)];
        if let Some(c) = &self.config {
            env.push(format!("EXPERIMENT_CONFIG={}", c.display()));
        }
        // The gate runs first and execs the command once admitted (as the template's ExecStart=).
        let mut argv = vec![GATE.to_string()];
        argv.extend(self.command.iter().cloned());
        let exec = vec![(GATE.to_string(), argv, false)];
        let mut props: Vec<(&'static str, Value<'static>)> = vec![
            (
                "Description",
                Value::from(format!("Brain-in-jar experiment {} (transient)", self.id)),
            ),
            ("Type", Value::from("notify")),
            ("NotifyAccess", Value::from("main")),
            ("TimeoutStartUSec", Value::from(TIMEOUT_START_USEC)),
            (
                "RestartPreventExitStatus",
                Value::from((
                    vec![i32::from(crate::coordinator::EXIT_REFUSED)],
                    Vec::<i32>::new(),
                )),
            ),
            ("Wants", Value::from(vec![COORDINATOR_SOCKET.to_string()])),
            ("After", Value::from(vec![COORDINATOR_SOCKET.to_string()])),
            ("ExecStart", Value::from(exec)),
            ("Slice", Value::from(SLICE)),
            ("PartOf", Value::from(vec![TARGET.to_string()])),
            ("MemoryMax", Value::from(self.memory_max)),
            ("Restart", Value::from("on-failure")),
            ("RestartUSec", Value::from(RESTART_USEC)),
            ("StartLimitBurst", Value::from(START_LIMIT_BURST)),
            (
                "StartLimitIntervalUSec",
                Value::from(START_LIMIT_INTERVAL_USEC),
            ),
            ("TimeoutStopUSec", Value::from(TIMEOUT_STOP_USEC)),
            ("KillSignal", Value::from(15i32)),
            ("User", Value::from(USER)),
            ("Group", Value::from(USER)),
            ("Environment", Value::from(env)),
            (
                "SyslogIdentifier",
                Value::from(format!("brain-experiment-{}", self.id)),
            ),
            (
                "LogsDirectory",
                Value::from(vec!["brain-in-jar".to_string()]),
            ),
            // Hardening, as in brain-experiment@.service.
            ("CapabilityBoundingSet", Value::from(0u64)),
            ("NoNewPrivileges", Value::from(true)),
            ("PrivateTmp", Value::from(true)),
            ("ProtectSystem", Value::from("strict")),
            ("ProtectHome", Value::from("read-only")),
            ("ProtectKernelTunables", Value::from(true)),
            ("ProtectKernelModules", Value::from(true)),
            ("ProtectKernelLogs", Value::from(true)),
            ("ProtectControlGroups", Value::from(true)),
            ("ProtectClock", Value::from(true)),
            ("ProtectHostname", Value::from(true)),
            ("LockPersonality", Value::from(true)),
            ("RestrictRealtime", Value::from(true)),
            ("RestrictSUIDSGID", Value::from(true)),
            ("DevicePolicy", Value::from("closed")),
            ("ProtectProc", Value::from("invisible")),
            ("RemoveIPC", Value::from(true)),
            (
                "RestrictAddressFamilies",
                Value::from((
                    true,
                    vec!["AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"]
                        .into_iter()
                        .map(String::from)
                        .collect::<Vec<_>>(),
                )),
            ),
            // The namespaces an experiment may create: none (RestrictNamespaces=yes).
            ("RestrictNamespaces", Value::from(0u64)),
            (
                "SystemCallArchitectures",
                Value::from(vec!["native".to_string()]),
            ),
            (
                "SystemCallFilter",
                Value::from((true, vec!["@system-service".to_string()])),
            ),
            ("UMask", Value::from(0o027u32)),
        ];
        if let Some(usec) = self
            .cpu_quota_percent
            .map(crate::systemd::quota::usec_from_percent)
        {
            props.push(("CPUQuotaPerSecUSec", Value::from(usec)));
        }
        if self.gpu {
            let devices: Vec<(String, String)> = GPU_DEVICES
                .iter()
                .map(|d| (d.to_string(), "rw".to_string()))
                .collect();
            props.push(("DeviceAllow", Value::from(devices)));
        }
        props
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RunSpec {
        RunSpec {
            id: "exp1".into(),
            command: vec!["true".into()],
            memory_max: 1 << 30,
            cpu_quota_percent: Some(150),
            gpu: false,
            config: None,
        }
    }

    #[test]
    fn programs_resolve_through_path() {
        let s = spec().validate().unwrap();
        assert!(
            s.command[0].starts_with('/') && s.command[0].ends_with("/true"),
            "{:?}",
            s.command
        );
        assert!(
            RunSpec {
                command: vec!["no-such-program-xyz".into()],
                ..spec()
            }
            .validate()
            .is_err()
        );
        assert!(
            RunSpec {
                command: vec![],
                ..spec()
            }
            .validate()
            .is_err()
        );
        assert!(
            RunSpec {
                command: vec!["./x".into()],
                ..spec()
            }
            .validate()
            .is_err()
        );
        assert!(
            RunSpec {
                command: vec!["/no/such/program".into()],
                ..spec()
            }
            .validate()
            .is_err()
        );
        assert!(
            RunSpec {
                command: vec!["/etc/passwd".into()],
                ..spec()
            }
            .validate()
            .is_err()
        );
        assert!(
            RunSpec {
                id: "../x".into(),
                ..spec()
            }
            .validate()
            .is_err()
        );
        assert!(
            RunSpec {
                config: Some("rel.json".into()),
                ..spec()
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn properties_carry_the_limits_and_policy() {
        let s = RunSpec {
            gpu: true,
            config: Some("/etc/x.json".into()),
            ..spec().validate().unwrap()
        };
        let props = s.properties();
        let get = |k: &str| props.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        assert_eq!(get("MemoryMax"), Some(Value::from(1u64 << 30)));
        assert_eq!(get("CPUQuotaPerSecUSec"), Some(Value::from(1_500_000u64)));
        assert_eq!(get("Slice"), Some(Value::from("brain-experiments.slice")));
        assert_eq!(get("Restart"), Some(Value::from("on-failure")));
        assert_eq!(get("StartLimitBurst"), Some(Value::from(3u32)));
        assert!(get("DeviceAllow").is_some());
        assert_eq!(
            get("Environment"),
            Some(Value::from(vec![
                "EXPERIMENT_ID=exp1".to_string(),
                "EXPERIMENT_CONFIG=/etc/x.json".to_string()
            ]))
        );
        assert_eq!(s.unit(), "brain-run-exp1.service");
        let no_cpu = RunSpec {
            cpu_quota_percent: None,
            ..spec()
        };
        assert!(
            !no_cpu
                .properties()
                .iter()
                .any(|(n, _)| *n == "CPUQuotaPerSecUSec")
        );
    }
}
