//! dlc's runtime: engines that execute compiled graphs, data and training loop,
//! optimizer state, checkpoints, metrics, and the `dlc` command line.
//!
//! Modules in the order a `dlc train` uses them: `cli` → `session` (compile, data) →
//! `init` → `trainer` (with `engine`) → `metrics`, `checkpoint`.

/// `println!` that ignores a closed stdout (`dlc train … | head`) instead of panicking.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// `print!` with the same care.
macro_rules! say_raw {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($t)*);
    }};
}

pub mod agent;
pub mod attack;
pub mod checkpoint;
pub mod cli;
pub mod datasig;
#[cfg(feature = "mpi")]
pub mod distributed;
pub mod engine;
pub mod envs;
pub mod images;
pub mod init;
pub mod interrupt;
pub mod memory;
pub mod metrics;
pub mod numerics;
pub mod picture;
pub mod plot;
pub mod sample;
pub mod search;
pub mod session;
pub mod trainer;
pub mod uncertainty;
