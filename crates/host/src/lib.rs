//! # nvmf-host: NVMe over TCP host (initiator) library
//!
//! Layers, from the wire up:
//!
//! * [`queue`]: [`HostQueue`], the sans-IO state machine of one NVMe/TCP
//!   connection (IC exchange, command IDs, in-capsule data, R2T / H2CData,
//!   C2HData reassembly, digests, TermReq, per-command timeouts). It is
//!   driven by bytes and milliseconds, so it runs under a blocking socket
//!   ([`controller`]) as well as inside an `nvmf_engine::Handler`.
//!
//! The blocking controller driver, discovery and options live in further
//! modules of this crate.
#![warn(missing_debug_implementations)]

pub mod queue;

pub use queue::{Completion, DataDir, Fate, HostQueue, QueueConfig, QueueError, Request, SubmitError};

pub mod perf;
