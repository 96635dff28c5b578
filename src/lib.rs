//! homelab: systemd-native helpers for a home lab or research rig.
//!
//! systemd does the work; this library is the thin, validated glue: it parses, validates,
//! decides and calls systemd. The binaries in `src/bin/` are thin wrappers around it.

pub mod admission;
pub mod cli;
pub mod completions;
pub mod coordinator;
pub mod envfile;
pub mod exec;
pub mod experiment;
pub mod http;
pub mod inference;
pub mod log;
pub mod metrics;
pub mod shutdown;
pub mod signals;
pub mod statefile;
pub mod systemd;
pub mod time;
