//! What a queue asks its driver to do.
//!
//! The queue is sans-IO: it never makes a system call, never changes the
//! shared registry and never wakes another queue. Every such effect comes
//! back as an [`Action`] that the driver executes right after the call that
//! produced it (the engine glue in [`crate::server`], or a test harness):
//! storage operations on descriptor backends, and control-plane changes,
//! which [`crate::driver::apply_control`] performs against the registry.

use std::os::fd::RawFd;
use std::sync::Arc;

use nvmf_proto::Sqe;

use crate::ctrl::{Controller, CtrlState};
use crate::stats::QueueCounters;
use crate::subsys::Port;

/// A storage operation on a file or block namespace. Completes through
/// `Queue::on_storage(token, result)` with the byte count or a negative errno,
/// as io_uring reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StorageOp {
    pub fd: RawFd,
    pub kind: StorageKind,
    pub token: u64,
}

/// The operation. Buffers stay valid and untouched until the completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageKind {
    Read {
        offset: u64,
        buf: *mut u8,
        len: u32,
    },
    Write {
        offset: u64,
        buf: *const u8,
        len: u32,
    },
    Fsync {
        datasync: bool,
    },
    /// `fallocate(fd, mode, offset, len)`.
    Fallocate {
        mode: i32,
        offset: u64,
        len: u64,
    },
    /// Block device discard (io_uring `BLOCK_URING_CMD_DISCARD`).
    Discard {
        offset: u64,
        len: u64,
    },
}

/// A Connect for the registry: find or create the controller.
#[derive(Clone, Debug)]
pub struct ConnectRequest {
    pub sqe: Sqe,
    /// The 1024-byte Connect data.
    pub data: Vec<u8>,
    pub port: Arc<Port>,
    /// The TLS PSK identity the connection was established with (`None`: in clear).
    pub tls_identity: Option<Arc<str>>,
}

/// An effect for the driver.
pub enum Action {
    Storage(StorageOp),
    /// Run [`crate::fabrics::connect`] and feed the result to `Queue::on_connected`.
    Connect(Box<ConnectRequest>),
    /// The queue is bound to `ctrl` as queue `qid`: its waker is registered
    /// with the controller, and I/O queues register `counters` too.
    Bound {
        ctrl: Arc<Controller>,
        qid: u16,
        counters: Option<Arc<QueueCounters>>,
    },
    /// The queue passed its probation: connected, and authenticated when the
    /// host must authenticate (the engine stops counting it as unestablished).
    Established,
    /// The queue is gone: release its queue ID, or the whole controller for
    /// an admin queue.
    Release {
        ctrl: Arc<Controller>,
        qid: u16,
        counters: Option<Arc<QueueCounters>>,
    },
    /// The host wrote CC: change the controller's state (waking its I/O queues).
    SetState {
        ctrl: Arc<Controller>,
        state: CtrlState,
    },
    /// Keep-alive (or the KATO-0 idle timeout) expired: tear the controller down.
    Expire {
        ctrl: Arc<Controller>,
    },
}

impl std::fmt::Debug for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Storage(op) => write!(f, "Storage({op:?})"),
            Action::Connect(r) => write!(f, "Connect(cid {})", r.sqe.cid),
            Action::Bound { ctrl, qid, .. } => write!(f, "Bound(ctrl {}, qid {qid})", ctrl.cntlid),
            Action::Established => write!(f, "Established"),
            Action::Release { ctrl, qid, .. } => write!(f, "Release(ctrl {}, qid {qid})", ctrl.cntlid),
            Action::SetState { ctrl, state } => write!(f, "SetState(ctrl {}, {state:?})", ctrl.cntlid),
            Action::Expire { ctrl } => write!(f, "Expire(ctrl {})", ctrl.cntlid),
        }
    }
}
