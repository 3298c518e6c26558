//! nvmf-target: a user-space NVMe/TCP target.
//!
//! Layout (mirrors Linux `drivers/nvme/target/`):
//! - [`config`]: the TOML configuration model, defaults and validation.
//! - [`backend`]: namespace storage (`null`, `ram`, `file`, `block`).
//! - [`transport`]: the NVMe/TCP queue state machine (sans-IO).
//! - [`fabrics`]: Connect, Property Get/Set, controller registers.
//! - [`admin`]: Identify, Get Log Page, Get/Set Features, AER, Keep Alive.
//! - [`io_cmd`]: NVM I/O command validation.
//! - [`discovery`]: the discovery log page.
//! - [`ctrl`]: state shared by the queues of one controller.
//! - [`subsys`]: the runtime registry ([`subsys::Target`]).
//! - [`server`]: glue to the io_uring engine ([`server::serve`]).
//! - [`mgmt`]: live management (JSON-RPC), metrics, nvmetcli import.

pub mod admin;
pub mod backend;
pub mod buf;
pub mod config;
pub mod ctrl;
pub mod discovery;
pub mod fabrics;
pub mod io_cmd;
pub mod mgmt;
pub mod server;
pub mod subsys;
#[doc(hidden)]
pub mod testing;
pub mod transport;

pub use server::{serve, serve_with, Server};
pub use subsys::Target;
pub use testing::fuzz_queue_input;
