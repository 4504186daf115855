//! dlc's runtime: engines that execute compiled graphs, data and training loop,
//! optimizer state, checkpoints, metrics, and the `dlc` command line.
//!
//! Modules in the order a `dlc train` uses them: `cli` → `session` (compile, data) →
//! `init` → `trainer` (with `engine`) → `metrics`, `checkpoint`.

pub mod checkpoint;
pub mod cli;
pub mod datasig;
pub mod engine;
pub mod init;
pub mod metrics;
pub mod session;
pub mod trainer;
