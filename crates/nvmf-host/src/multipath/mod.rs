//! Multipath: one namespace reached through several controllers (paths).
//!
//! * [`core`]: the sans-IO state machine (path selection by ANA state and
//!   [`IoPolicy`], bounded queueing, the safe-retry fence, exactly-once
//!   completion, per-path counters, failover records).
//! * [`device`]: [`MultipathDevice`], a blocking driver: one control thread
//!   per path owning a [`Controller`](crate::Controller), fast failure
//!   detection, reconnects, ANA log reads on AEN.
//! * [`perf`]: `nvmf perf --paths`, the perf workload over a [`MultipathDevice`].
//!
//! See `docs/multipath.md` for the design, the limits and measured failover times.

pub mod core;
pub mod device;
pub mod perf;

pub use self::core::{
    fence_ms_for_kato, AnaState, Counters, FailoverRecord, IoPolicy, IoResult, Multipath, MultipathConfig,
    PathCounters, PathHealth, QueueFull, WriteRetry,
};
pub use device::{MpCompletion, MultipathDevice, MultipathOptions, PathInfo};
