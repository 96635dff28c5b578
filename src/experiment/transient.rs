//! `brainctl run`: a transient experiment unit (`StartTransientUnit`, as `systemd-run` does).
//!
//! The settings below are the transient twin of `systemd/brain-experiment@.service`: the same
//! slice, target, restart policy, user and hardening. Change one, change the other.

use super::config::{GPU_DEVICES, SLICE, TARGET, transient_unit, validate_id};
use crate::admission::{EXIT_REFUSED, GATE};
use crate::systemd::transient::{Flag, Setting};
use anyhow::{anyhow, bail};
use std::path::PathBuf;

/// Restart policy shared with the template: `Restart=on-failure`, at most 3 starts in 10 min.
pub const RESTART_USEC: u64 = 2_000_000;
pub const START_LIMIT_BURST: u32 = 3;
pub const START_LIMIT_INTERVAL_USEC: u64 = 600_000_000;
pub const TIMEOUT_STOP_USEC: u64 = 60_000_000;
/// The wait for the coordinator's first answer (the template's `TimeoutStartSec=90s`).
pub const TIMEOUT_START_USEC: u64 = 90_000_000;
pub const USER: &str = "brain";
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
    pub fn validate(mut self) -> anyhow::Result<RunSpec> {
        validate_id(&self.id)?;
        let program = self
            .command
            .first()
            .ok_or_else(|| anyhow!("no command given: brainctl run ID -- COMMAND [ARGS...]"))?;
        // As systemd-run does: a missing program is an error now, not a failed unit later.
        let found = crate::exec::resolve_program(program, std::env::var_os("PATH").as_deref())
            .map_err(anyhow::Error::msg)?;
        self.command[0] = found.to_string_lossy().into_owned();
        if let Some(c) = &self.config
            && !c.is_absolute()
        {
            bail!("--config {}: give an absolute path", c.display());
        }
        Ok(self)
    }

    /// The unit's settings for `StartTransientUnit`.
    pub fn settings(&self) -> Vec<Setting> {
        use Setting::*;
        let mut env = vec![format!("EXPERIMENT_ID={}", self.id)];
        if let Some(c) = &self.config {
            env.push(format!("EXPERIMENT_CONFIG={}", c.display()));
        }
        // The gate runs first and execs the command once admitted (as the template's ExecStart=).
        let mut argv = vec![GATE.to_string()];
        argv.extend(self.command.iter().cloned());
        let mut settings = vec![
            Description(format!("Brain-in-jar experiment {} (transient)", self.id)),
            Type("notify"),
            NotifyAccess("main"),
            TimeoutStartUSec(TIMEOUT_START_USEC),
            RestartPreventExitStatus(vec![i32::from(EXIT_REFUSED)]),
            Wants(vec![COORDINATOR_SOCKET.to_string()]),
            After(vec![COORDINATOR_SOCKET.to_string()]),
            ExecStart {
                program: GATE.to_string(),
                argv,
            },
            Slice(SLICE.to_string()),
            PartOf(vec![TARGET.to_string()]),
            MemoryMax(self.memory_max),
            Restart("on-failure"),
            RestartUSec(RESTART_USEC),
            StartLimitBurst(START_LIMIT_BURST),
            StartLimitIntervalUSec(START_LIMIT_INTERVAL_USEC),
            TimeoutStopUSec(TIMEOUT_STOP_USEC),
            KillSignal(15),
            User(USER.to_string()),
            Group(USER.to_string()),
            Environment(env),
            SyslogIdentifier(format!("brain-experiment-{}", self.id)),
            LogsDirectory(vec!["brain-in-jar".to_string()]),
            // Hardening, as in brain-experiment@.service.
            CapabilityBoundingSet(0),
            ProtectSystem("strict"),
            ProtectHome("read-only"),
            DevicePolicy("closed"),
            ProtectProc("invisible"),
            RestrictAddressFamilies(
                ["AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"]
                    .map(String::from)
                    .to_vec(),
            ),
            // The namespaces an experiment may create: none (RestrictNamespaces=yes).
            RestrictNamespaces(0),
            SystemCallArchitectures(vec!["native".to_string()]),
            SystemCallFilter(vec!["@system-service".to_string()]),
            UMask(0o027),
        ];
        settings.extend(
            [
                Flag::NoNewPrivileges,
                Flag::PrivateTmp,
                Flag::ProtectKernelTunables,
                Flag::ProtectKernelModules,
                Flag::ProtectKernelLogs,
                Flag::ProtectControlGroups,
                Flag::ProtectClock,
                Flag::ProtectHostname,
                Flag::LockPersonality,
                Flag::RestrictRealtime,
                Flag::RestrictSUIDSGID,
                Flag::RemoveIPC,
            ]
            .map(|f| Setting::Bool(f, true)),
        );
        if let Some(usec) = self
            .cpu_quota_percent
            .map(crate::systemd::quota::usec_from_percent)
        {
            settings.push(CPUQuotaPerSecUSec(usec));
        }
        if self.gpu {
            settings.push(DeviceAllow(
                GPU_DEVICES
                    .iter()
                    .map(|d| (d.to_string(), "rw".to_string()))
                    .collect(),
            ));
        }
        settings
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
        let settings = s.settings();
        let has = |x: Setting| settings.contains(&x);
        assert!(has(Setting::MemoryMax(1 << 30)));
        assert!(has(Setting::CPUQuotaPerSecUSec(1_500_000)));
        assert!(has(Setting::Slice("brain-experiments.slice".into())));
        assert!(has(Setting::Restart("on-failure")));
        assert!(has(Setting::StartLimitBurst(3)));
        assert!(has(Setting::Bool(Flag::NoNewPrivileges, true)));
        assert!(
            settings
                .iter()
                .any(|x| matches!(x, Setting::DeviceAllow(_)))
        );
        assert!(has(Setting::Environment(vec![
            "EXPERIMENT_ID=exp1".to_string(),
            "EXPERIMENT_CONFIG=/etc/x.json".to_string()
        ])));
        assert_eq!(s.unit(), "brain-run-exp1.service");
        let no_cpu = RunSpec {
            cpu_quota_percent: None,
            ..spec()
        };
        assert!(
            !no_cpu
                .settings()
                .iter()
                .any(|x| matches!(x, Setting::CPUQuotaPerSecUSec(_)))
        );
    }
}
