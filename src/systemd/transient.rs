//! The settings of a transient unit (`StartTransientUnit`, as `systemd-run -p` takes them),
//! typed: each D-Bus property is named here once, as a variant carrying the type systemd expects.

use zbus::zvariant::Value;

/// A yes/no setting (`NoNewPrivileges=yes`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flag {
    NoNewPrivileges,
    PrivateTmp,
    ProtectKernelTunables,
    ProtectKernelModules,
    ProtectKernelLogs,
    ProtectControlGroups,
    ProtectClock,
    ProtectHostname,
    LockPersonality,
    RestrictRealtime,
    RestrictSUIDSGID,
    RemoveIPC,
}

impl Flag {
    fn name(self) -> &'static str {
        match self {
            Flag::NoNewPrivileges => "NoNewPrivileges",
            Flag::PrivateTmp => "PrivateTmp",
            Flag::ProtectKernelTunables => "ProtectKernelTunables",
            Flag::ProtectKernelModules => "ProtectKernelModules",
            Flag::ProtectKernelLogs => "ProtectKernelLogs",
            Flag::ProtectControlGroups => "ProtectControlGroups",
            Flag::ProtectClock => "ProtectClock",
            Flag::ProtectHostname => "ProtectHostname",
            Flag::LockPersonality => "LockPersonality",
            Flag::RestrictRealtime => "RestrictRealtime",
            Flag::RestrictSUIDSGID => "RestrictSUIDSGID",
            Flag::RemoveIPC => "RemoveIPC",
        }
    }
}

/// One setting of a transient service.
#[derive(Clone, Debug, PartialEq)]
pub enum Setting {
    Description(String),
    /// `Type=` (`notify`, `simple`, ...).
    Type(&'static str),
    NotifyAccess(&'static str),
    TimeoutStartUSec(u64),
    TimeoutStopUSec(u64),
    /// Exit statuses that never restart the unit.
    RestartPreventExitStatus(Vec<i32>),
    Wants(Vec<String>),
    After(Vec<String>),
    PartOf(Vec<String>),
    /// `ExecStart=`: the program (absolute) and the whole argv, `argv[0]` included.
    ExecStart {
        program: String,
        argv: Vec<String>,
    },
    Slice(String),
    MemoryMax(u64),
    /// CPU time per second of wall time, microseconds (see [`super::quota`]).
    CPUQuotaPerSecUSec(u64),
    Restart(&'static str),
    RestartUSec(u64),
    StartLimitBurst(u32),
    StartLimitIntervalUSec(u64),
    KillSignal(i32),
    User(String),
    Group(String),
    Environment(Vec<String>),
    SyslogIdentifier(String),
    LogsDirectory(Vec<String>),
    /// Capabilities kept, as a bit mask (0: none).
    CapabilityBoundingSet(u64),
    Bool(Flag, bool),
    ProtectSystem(&'static str),
    ProtectHome(&'static str),
    ProtectProc(&'static str),
    DevicePolicy(&'static str),
    /// Device nodes and their access (`rw`).
    DeviceAllow(Vec<(String, String)>),
    /// Only these address families (an allow list).
    RestrictAddressFamilies(Vec<String>),
    /// Namespace types the unit may create, as a `CLONE_NEW*` mask (0: none).
    RestrictNamespaces(u64),
    SystemCallArchitectures(Vec<String>),
    /// Only these system calls or `@groups` (an allow list).
    SystemCallFilter(Vec<String>),
    UMask(u32),
}

impl Setting {
    /// The property as `StartTransientUnit` takes it.
    pub fn to_property(&self) -> (&'static str, Value<'static>) {
        use Setting::*;
        match self.clone() {
            Description(v) => ("Description", Value::from(v)),
            Type(v) => ("Type", Value::from(v)),
            NotifyAccess(v) => ("NotifyAccess", Value::from(v)),
            TimeoutStartUSec(v) => ("TimeoutStartUSec", Value::from(v)),
            TimeoutStopUSec(v) => ("TimeoutStopUSec", Value::from(v)),
            RestartPreventExitStatus(v) => (
                "RestartPreventExitStatus",
                Value::from((v, Vec::<i32>::new())),
            ),
            Wants(v) => ("Wants", Value::from(v)),
            After(v) => ("After", Value::from(v)),
            PartOf(v) => ("PartOf", Value::from(v)),
            ExecStart { program, argv } => ("ExecStart", Value::from(vec![(program, argv, false)])),
            Slice(v) => ("Slice", Value::from(v)),
            MemoryMax(v) => ("MemoryMax", Value::from(v)),
            CPUQuotaPerSecUSec(v) => ("CPUQuotaPerSecUSec", Value::from(v)),
            Restart(v) => ("Restart", Value::from(v)),
            RestartUSec(v) => ("RestartUSec", Value::from(v)),
            StartLimitBurst(v) => ("StartLimitBurst", Value::from(v)),
            StartLimitIntervalUSec(v) => ("StartLimitIntervalUSec", Value::from(v)),
            KillSignal(v) => ("KillSignal", Value::from(v)),
            User(v) => ("User", Value::from(v)),
            Group(v) => ("Group", Value::from(v)),
            Environment(v) => ("Environment", Value::from(v)),
            SyslogIdentifier(v) => ("SyslogIdentifier", Value::from(v)),
            LogsDirectory(v) => ("LogsDirectory", Value::from(v)),
            CapabilityBoundingSet(v) => ("CapabilityBoundingSet", Value::from(v)),
            Bool(f, v) => (f.name(), Value::from(v)),
            ProtectSystem(v) => ("ProtectSystem", Value::from(v)),
            ProtectHome(v) => ("ProtectHome", Value::from(v)),
            ProtectProc(v) => ("ProtectProc", Value::from(v)),
            DevicePolicy(v) => ("DevicePolicy", Value::from(v)),
            DeviceAllow(v) => ("DeviceAllow", Value::from(v)),
            RestrictAddressFamilies(v) => ("RestrictAddressFamilies", Value::from((true, v))),
            RestrictNamespaces(v) => ("RestrictNamespaces", Value::from(v)),
            SystemCallArchitectures(v) => ("SystemCallArchitectures", Value::from(v)),
            SystemCallFilter(v) => ("SystemCallFilter", Value::from((true, v))),
            UMask(v) => ("UMask", Value::from(v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_take_the_types_systemd_expects() {
        let (name, value) = Setting::ExecStart {
            program: "/bin/true".into(),
            argv: vec!["/bin/true".into()],
        }
        .to_property();
        assert_eq!(name, "ExecStart");
        assert_eq!(value.value_signature().to_string(), "a(sasb)");
        let (name, value) = Setting::RestartPreventExitStatus(vec![78]).to_property();
        assert_eq!(name, "RestartPreventExitStatus");
        assert_eq!(value.value_signature().to_string(), "(aiai)");
        let (name, value) = Setting::RestrictAddressFamilies(vec!["AF_UNIX".into()]).to_property();
        assert_eq!(name, "RestrictAddressFamilies");
        assert_eq!(value.value_signature().to_string(), "(bas)");
        let (name, value) = Setting::Bool(Flag::NoNewPrivileges, true).to_property();
        assert_eq!((name, value), ("NoNewPrivileges", Value::from(true)));
        let (_, value) =
            Setting::DeviceAllow(vec![("/dev/nvidia0".into(), "rw".into())]).to_property();
        assert_eq!(value.value_signature().to_string(), "a(ss)");
    }
}
