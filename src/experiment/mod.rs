//! Experiments: `brain-experiment@.service` instances with limits from their `.env` files, and
//! transient `brain-run-<id>.service` units, managed over D-Bus (the original's `SystemdManager`).

pub mod config;
pub mod manager;
pub mod transient;

pub use manager::{ExperimentManager, ExperimentStatus};

#[cfg(test)]
mod tests;
