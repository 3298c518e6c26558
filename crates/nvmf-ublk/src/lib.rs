//! # nvmf-ublk: a remote NVMe/TCP namespace as a local Linux block device
//!
//! Each active namespace of a connected [`nvmf_host::Controller`] becomes a
//! ublk device (`/dev/ublkbN`, Linux >= 6.0 with `ublk_drv`), served by this
//! process through [libublk](https://crates.io/crates/libublk):
//!
//! * [`map`]: pure mapping of a ublk request to one NVMe command (Read,
//!   Write with FUA, Flush, Dataset Management deallocate, Write Zeroes) and
//!   the device limits (block size, capacity, MDTS) the kernel is given.
//! * [`nvme_queue`]: one NVMe/TCP I/O queue driven from a ublk queue
//!   thread's io_uring, one command in flight per ublk tag.
//! * [`device`]: the device itself: one ublk queue per NVMe I/O queue.
//! * [`state`]: the per-device records `nvmf list` and `nvmf disconnect` read.
//!
//! See docs/block-device.md for use and limits.

pub mod device;
pub mod map;
pub mod nvme_queue;
pub mod state;

pub use device::{delete_device, serve, stop_device, DeviceConfig};
pub use map::{device_limits, Geometry};
