//! Load generator behind `nvmf perf` (in the spirit of `spdk_nvme_perf` and fio).
//!
//! Sans-IO parts, unit-tested on their own:
//! - [`config`]: the run's parameters and their limits, LBA range and its
//!   partition among queues (no two queues ever write the same block).
//! - [`workload`]: per-queue generator (sequential/random, read/write mix,
//!   verify phases).
//! - [`verify`]: per-block pattern (header with LBA, generation, run seed,
//!   CRC32C) and the per-queue generation map.
//! - [`stats`]: per-queue latency histograms (all, reads, writes) and
//!   counters, merged into a [`stats::Summary`] (text or JSON);
//!   [`latency`]: percentiles and log-scale buckets of a histogram.
//!
//! Every queue (one TCP connection) lives on one engine core; its statistics
//! are only touched by that core until the queue finishes and hands them back.

pub mod admin;
pub mod config;
pub mod driver;
pub mod latency;
pub mod run;
pub mod stats;
pub mod verify;
pub mod workload;

pub use config::{parse_size, Geometry, PerfConfig, RwPattern};
pub use stats::{QueueStats, Summary};
