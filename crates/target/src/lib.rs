//! nvmf-target: a user-space NVMe/TCP target.
//!
//! Layout (mirrors Linux `drivers/nvme/target/`):
//! - [`config`]: the TOML configuration model, defaults and validation.
//! - [`backend`]: namespace storage (`null`, `ram`, `file`, `block`).
//! - the transport (NVMe/TCP queue state machine), controller, admin, fabrics,
//!   discovery and I/O command handling live in their own modules.

pub mod backend;
pub mod config;
