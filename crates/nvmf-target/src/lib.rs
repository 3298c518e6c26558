//! nvmf-target: a user-space NVMe/TCP target.
//!
//! Layout (mirrors Linux `drivers/nvme/target/`):
//! - [`tcp`]: the NVMe/TCP queue (sans-IO): ICReq, the PDU loop, capsules,
//!   responses; [`r2t`]: R2T and H2CData; [`slots`]: commands in flight.
//! - [`fabrics`]: Connect, Property Get/Set, the controller lifecycle;
//!   [`auth`]: Authentication Send/Receive (DH-HMAC-CHAP).
//! - [`admin`]: Identify, Get Log Page, Get/Set Features, AER, Keep Alive.
//! - [`discovery`]: the discovery log page.
//! - [`io_cmd`]: NVM I/O validation and dispatch; [`io_cmd_mem`] (`ram`,
//!   `null`) and [`io_cmd_fd`] (`file`, `block`) execute it per backend kind.
//! - [`ana`]: ANA on the I/O path; [`keepalive`]: every timeout.
//! - [`action`]: the effects a queue asks of its driver; [`driver`]: the
//!   control-plane half of executing them.
//! - [`ctrl`]: state shared by the queues of one controller; [`stats`]:
//!   data-path counters; [`buf`]: per-core command buffers.
//! - [`config`]: the TOML configuration model; [`limits`]: fixed limits.
//! - [`backend`]: namespace storage (`null`, `ram`, `file`, `block`).
//! - [`subsys`]: the runtime registry ([`subsys::Target`]); [`namespace`]:
//!   namespaces, per-namespace host masking, live namespace changes.
//! - [`server`]: glue to the io_uring engine ([`server::serve`]).
//! - [`mgmt`]: live management (JSON-RPC), metrics, nvmetcli import.

pub mod action;
pub mod admin;
pub mod ana;
pub mod auth;
pub mod backend;
pub mod buf;
pub mod config;
pub mod ctrl;
pub mod discovery;
pub mod driver;
pub mod fabrics;
pub mod generated_psk;
pub mod io_cmd;
pub mod io_cmd_fd;
pub mod io_cmd_mem;
pub mod keepalive;
pub mod limits;
pub mod mgmt;
pub mod namespace;
#[doc(hidden)]
pub mod peerlog;
pub mod r2t;
pub mod secret;
pub mod server;
pub mod slots;
pub mod stats;
pub mod subsys;
pub mod tcp;
#[doc(hidden)]
pub mod testing;
#[doc(hidden)]
pub mod testing_tls;
pub mod tls;

pub use server::{serve, serve_with, Server};
pub use subsys::Target;
pub use testing::fuzz_queue_input;
pub use testing_tls::fuzz_tls_pdu_input;
