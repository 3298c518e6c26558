//! What a core shares with the handlers it calls: the ring, the clock,
//! timers, receive memory, admission state and counters.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Instant;

use io_uring::{squeue, IoUring};

use crate::limits::CoreLimits;
use crate::rx::RxPool;
use crate::stats::LocalStats;
use crate::timer::Timers;
use crate::CoreSender;

pub(crate) const K_RECV: u64 = 1;
pub(crate) const K_SEND: u64 = 2;
pub(crate) const K_STORAGE: u64 = 3;
pub(crate) const K_WAKE: u64 = 4;
pub(crate) const K_CANCEL: u64 = 5;
pub(crate) const KIND_SHIFT: u32 = 56;
pub(crate) const IDX_MASK: u64 = (1 << 32) - 1;
const IORING_REGISTER_RING_FDS: u32 = 20;

/// io_uring user data: operation kind and slot (connection or storage op).
#[inline]
pub(crate) fn ud(kind: u64, idx: u32) -> u64 {
    (kind << KIND_SHIFT) | idx as u64
}

/// The engine clock: one reading per loop iteration that has work.
pub(crate) struct Clock {
    epoch: Instant,
    pub(crate) now_us: u64,
    pub(crate) now_ms: u64,
    /// Read during this loop iteration.
    fresh: bool,
}

impl Clock {
    pub(crate) fn new(epoch: Instant) -> Clock {
        let mut c = Clock { epoch, now_us: 0, now_ms: 0, fresh: false };
        c.refresh();
        c
    }
    #[inline]
    pub(crate) fn refresh(&mut self) {
        let us = self.epoch.elapsed().as_micros() as u64;
        // Monotonic by construction (Instant), asserted because deadlines rely on it.
        debug_assert!(us >= self.now_us);
        self.now_us = us;
        self.now_ms = us / 1000;
        self.fresh = true;
    }
    /// Read the clock unless it was read in this loop iteration.
    #[inline]
    pub(crate) fn ensure_fresh(&mut self) {
        if !self.fresh {
            self.refresh();
        }
    }
    /// A new loop iteration starts.
    #[inline]
    pub(crate) fn next_iteration(&mut self) {
        self.fresh = false;
    }
    /// Milliseconds since the epoch, read now (for sleeping).
    pub(crate) fn read_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

struct StorageOp {
    slot: u32,
    token: u64,
}

/// Per-core state reachable from handler callbacks.
pub(crate) struct CoreCtx {
    pub(crate) ring: IoUring,
    storage: Vec<StorageOp>,
    storage_free: Vec<u32>,
    pub(crate) storage_ops: u64,
    pub(crate) clock: Clock,
    pub(crate) core_index: usize,
    pub(crate) sender: CoreSender,
    pub(crate) timers: Timers,
    pub(crate) rx_pool: RxPool,
    pub(crate) limits: CoreLimits,
    pub(crate) stats: LocalStats,
    /// Direct-receive gate: the current tick epoch (never 0) and how many
    /// connections received data in it (each counted once through its own
    /// epoch stamp, so the tick needs no pass over all connections).
    pub(crate) rx_epoch: u32,
    pub(crate) rx_busy_conns: usize,
}

impl CoreCtx {
    pub(crate) fn new(
        ring: IoUring,
        clock: Clock,
        core_index: usize,
        sender: CoreSender,
        rx_pool: RxPool,
        limits: CoreLimits,
    ) -> CoreCtx {
        CoreCtx {
            ring,
            storage: Vec::new(),
            storage_free: Vec::new(),
            storage_ops: 0,
            clock,
            core_index,
            sender,
            timers: Timers::default(),
            rx_pool,
            limits,
            stats: LocalStats::default(),
            rx_epoch: 1,
            rx_busy_conns: 0,
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, e: &squeue::Entry) {
        loop {
            // SAFETY: every SQE built by the engine references memory that stays
            // valid until its CQE (conn buffers are only freed when no op is in flight).
            if unsafe { self.ring.submission().push(e) }.is_ok() {
                return;
            }
            // SQ full: hand what we have to the kernel and retry.
            if let Err(err) = self.ring.submit() {
                if err.raw_os_error() != Some(libc::EBUSY) && err.raw_os_error() != Some(libc::EINTR) {
                    tracing::error!("io_uring submit failed: {err}");
                }
            }
        }
    }

    pub(crate) fn push_storage(&mut self, e: squeue::Entry, slot: u32, token: u64) {
        let idx = match self.storage_free.pop() {
            Some(i) => {
                self.storage[i as usize] = StorageOp { slot, token };
                i
            }
            None => {
                self.storage.push(StorageOp { slot, token });
                (self.storage.len() - 1) as u32
            }
        };
        self.storage_ops += 1;
        self.push(&e.user_data(ud(K_STORAGE, idx)));
    }

    /// A storage op completed: its (slot, token); the op's index is reused.
    pub(crate) fn storage_done(&mut self, idx: u32) -> Option<(u32, u64)> {
        let op = self.storage.get(idx as usize)?;
        let r = (op.slot, op.token);
        self.storage_free.push(idx);
        Some(r)
    }
}

/// Register the ring fd with itself (`IORING_REGISTER_RING_FDS`); returns its index.
pub(crate) fn register_ring_fd(ring: &IoUring) -> Option<u32> {
    #[repr(C)]
    struct RsrcUpdate {
        offset: u32,
        resv: u32,
        data: u64,
    }
    let mut up = RsrcUpdate { offset: u32::MAX, resv: 0, data: ring.as_raw_fd() as u64 };
    // SAFETY: valid pointer to one io_uring_rsrc_update.
    let r = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            ring.as_raw_fd() as libc::c_long,
            IORING_REGISTER_RING_FDS as libc::c_long,
            &mut up as *mut RsrcUpdate,
            1 as libc::c_long,
        )
    };
    (r == 1).then_some(up.offset)
}

/// Create the ring: `SINGLE_ISSUER|DEFER_TASKRUN|TASKRUN_FLAG`, then
/// `COOP_TASKRUN`, then plain (`NVMF_ENGINE_RING` forces one). Returns the
/// ring, the variant's name and whether the TASKRUN flag is available.
pub(crate) fn build_ring(entries: u32) -> io::Result<(IoUring, &'static str, bool)> {
    let want = std::env::var("NVMF_ENGINE_RING").unwrap_or_default();
    let cq = entries.saturating_mul(4);
    let mut last_err = None;
    for variant in ["defer", "coop", "plain"] {
        if !want.is_empty() && want != variant {
            continue;
        }
        let mut b = IoUring::builder();
        b.setup_cqsize(cq).setup_submit_all();
        match variant {
            "defer" => {
                b.setup_single_issuer().setup_defer_taskrun().setup_taskrun_flag();
            }
            "coop" => {
                b.setup_single_issuer().setup_coop_taskrun().setup_taskrun_flag();
            }
            _ => {}
        }
        match b.build(entries) {
            Ok(r) => {
                return Ok((r, variant, variant != "plain"));
            }
            Err(e) => {
                tracing::debug!("io_uring setup variant {variant} failed: {e}");
                last_err = Some(e);
            }
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "unknown NVMF_ENGINE_RING variant")))
}
