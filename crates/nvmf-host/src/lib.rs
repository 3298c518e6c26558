//! # nvmf-host: NVMe over TCP host (initiator) library
//!
//! Layers, from the wire up:
//!
//! * [`queue`]: [`HostQueue`], the sans-IO state machine of one NVMe/TCP
//!   connection (IC exchange, command IDs, in-capsule data, R2T / H2CData,
//!   C2HData reassembly, digests, TermReq, per-command timeouts). It is
//!   driven by bytes and milliseconds, so it runs under a blocking socket
//!   ([`conn`]) as well as inside an `nvmf_engine::Handler` (`perf`).
//! * [`conn`]: [`QueueConn`], one queue over a blocking `TcpStream`
//!   (TCP_NODELAY), with an explicit submit / poll API.
//! * [`controller`]: [`Controller`], the bring-up of a controller (admin
//!   queue, CC.EN / CSTS.RDY, Identify, I/O queues), admin commands, keep
//!   alive, asynchronous events, blocking I/O helpers and the reconnect
//!   policy ([`ConnectOptions`], named like Linux's options).
//! * [`discovery`]: [`discover`], a discovery log in one call.
//! * [`auth`]: [`QueueAuth`], in-band authentication (DH-HMAC-CHAP) of one
//!   queue over Authentication Send / Receive, shared by every driver above
//!   and by `perf` ([`ConnectOptions::dhchap_secret`],
//!   [`ConnectOptions::dhchap_ctrl_secret`]).
//! * [`tls`]: NVMe/TCP TLS 1.3 with a pre-shared key on every queue of the
//!   blocking drivers ([`ConnectOptions::tls`], [`TlsOptions`]), through
//!   `nvmf_tls`'s sans-IO session.
//!
//! ```no_run
//! use nvmf_host::{discover, ConnectOptions, Controller};
//!
//! # fn main() -> Result<(), nvmf_host::Error> {
//! for e in discover("127.0.0.1:8009", ConnectOptions::default())?.entries {
//!     let mut ctrl = Controller::connect((e.traddr.as_str(), e.trsvcid.parse().unwrap_or(4420)), ConnectOptions::new(&e.subnqn))?;
//!     println!("{} has namespaces {:?}", e.subnqn, ctrl.active_namespaces()?);
//!     ctrl.disconnect()?;
//! }
//! # Ok(())
//! # }
//! ```
#![warn(missing_debug_implementations)]

pub mod auth;
pub mod conn;
pub mod controller;
pub mod discovery;
pub mod error;
pub mod fuzzing;
pub mod multipath;
pub mod options;
pub mod queue;
pub mod tls;

pub use auth::{AuthFailure, AuthSummary, QueueAuth};
pub use conn::QueueConn;
pub use controller::{AsyncEvent, Controller};
pub use discovery::{discover, DiscoveryEntry, DiscoveryLog};
pub use error::{Error, Result};
pub use nvmf_proto::auth::DhchapKey;
pub use options::ConnectOptions;
pub use queue::{Completion, DataDir, Fate, HostQueue, QueueConfig, QueueError, Request, SubmitError};
pub use tls::TlsOptions;

pub mod perf;
