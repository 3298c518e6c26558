//! Subcommands. Each file owns its clap argument structs and a `run` function.

pub mod connect;
pub mod ctl;
pub mod host;
pub mod keys;
pub mod perf;
pub mod report;
pub mod signals;
pub mod target;
