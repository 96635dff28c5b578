//! The shutdown service (port 5001): scheduled shutdowns as systemd timers.
//!
//! `POST /shutdown/schedule` starts `homelab-shutdown@<calendar>.timer` (power off) or
//! `homelab-reboot@<calendar>.timer` (polkit lets user `abc` start and stop exactly those); the
//! timer triggers its gate (`homelab-shutdown@.service`, `homelab-reboot@.service`; `fire.rs`),
//! which applies the schedule's policy when busy and has root act (`homelab-power-action@`).
//! What is pending is what systemd has, joined with the state file. Read-only requests write
//! nothing; mutating ones (and the boot-time restore) drop entries whose timer is gone.
//!
//! The rooms: `api` (the HTTP handlers and the setup), `schedules` (the one owner of the
//! schedules), `restore` (the boot-time restore), `fire` (the gate), `schedule`, `fields`,
//! `busy` and `wake` (what a schedule is, without I/O), `actor` (root's power action),
//! `machine` (the clock and the RTC), `state`, `config`, `metrics`, `system`.

pub mod actor;
pub mod api;
pub mod busy;
pub mod config;
pub mod fields;
pub mod fire;
pub mod machine;
pub mod metrics;
pub mod restore;
pub mod rtc;
pub mod schedule;
pub mod schedules;
pub mod state;
pub mod system;
pub mod wake;

pub use actor::ACTOR_PREFIX;
pub use api::{SERVICE_NAME, ShutdownService, VIEW_PATTERNS, from_environment};
pub use restore::restore;
pub use schedules::{Outcome, Schedules};
