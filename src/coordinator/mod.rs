//! The experiment coordinator: admission control (concurrency, RAM budget), thermal policy and
//! shutdown awareness. systemd is the source of truth and nothing is kept on disk: what runs is
//! what systemd runs, and the queue is the gates that wait, ordered by when their processes
//! started, so the order survives a restart; what this process keeps in memory (connections,
//! the status each gate was told, `MemoryMax` readings, the record of admitted units) is
//! rebuilt after one (docs/coordinator.md, "Across a restart of the coordinator", says what
//! is not promised). The decisions are pure, in [`policy`]; the rooms around it do their I/O:
//! [`event_loop`] (the loop), [`gates`] (accepting), [`identity`] (who a connection speaks
//! for), [`admit`] (admission and the inhibitor), [`heat`] (the thermal states' effects),
//! [`report`] (status line and figures), [`state`] (what is held between events).
//!
//! Mechanism: every experiment unit runs `brain-admit` as its main process (`Type=notify`). The
//! gate connects to [`crate::admission::SOCKET`] (socket-activated, so it is held while the
//! coordinator restarts) and waits for an answer ([`crate::admission::protocol`]): admitted (it
//! tells systemd it is ready and `exec`s the experiment), queued (it is ready, and shows why in
//! its status) or refused (it exits with [`crate::admission::EXIT_REFUSED`], which the units
//! keep from a restart). So a start job ends with the first answer, and a queue holds up neither
//! the target nor boot; a refused experiment fails its start at once. The coordinator reads
//! nothing from a gate: who it speaks for comes from its peer credentials, cgroup, executable
//! and systemd's `MainPID`, so no client can stall it, grow its memory or pass for a gate.

pub mod admit;
pub mod config;
pub mod event_loop;
pub mod gates;
pub mod heat;
pub mod identity;
pub mod metrics;
pub mod nvml;
pub mod policy;
pub mod report;
pub mod state;
pub mod thermal;

pub use event_loop::run;

#[cfg(test)]
mod tests;
