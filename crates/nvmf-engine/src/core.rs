//! Per-core event loop: one io_uring, the connections it owns, their buffers.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};

use crate::{
    CloseReason, ConnInfo, ConnIo, CoreSender, CoreStats, EngineConfig, EngineError, Flow, Handler, HandlerFactory,
    MakeHandler, Mode,
};

const K_RECV: u64 = 1;
const K_SEND: u64 = 2;
const K_STORAGE: u64 = 3;
const K_WAKE: u64 = 4;
const K_CANCEL: u64 = 5;
const KIND_SHIFT: u32 = 56;
const IORING_ENTER_GETEVENTS: u32 = 1;
const IORING_ENTER_REGISTERED_RING: u32 = 16;
const IORING_REGISTER_RING_FDS: u32 = 20;

/// Register the ring fd with itself (`IORING_REGISTER_RING_FDS`); returns its index.
fn register_ring_fd(ring: &IoUring) -> Option<u32> {
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
const IDX_MASK: u64 = (1 << 32) - 1;

#[inline]
fn ud(kind: u64, idx: u32) -> u64 {
    (kind << KIND_SHIFT) | idx as u64
}

/// Max bytes in one send SQE.
const MAX_SEND_CHUNK: usize = 1 << 30;
/// Grace period for in-flight ops after a forced shutdown close.
const FORCED_GRACE: Duration = Duration::from_secs(2);

pub(crate) struct NewConn {
    pub fd: OwnedFd,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub listener_id: Option<u64>,
}

pub(crate) enum Command {
    Accepted { conn: NewConn, factory: Arc<dyn HandlerFactory> },
    Connect { conn: NewConn, make: MakeHandler },
    RemoveListener { id: u64, ack: mpsc::Sender<()> },
    Wake { slot: u32, id: u64 },
    Shutdown { deadline: Instant },
}

// ---------------------------------------------------------------- stats

#[derive(Default, Clone, Copy)]
struct LocalStats {
    busy_loops: u64,
    idle_loops: u64,
    enters: u64,
    connections: u64,
    connections_total: u64,
    bytes_rx: u64,
    bytes_tx: u64,
    recv_ops: u64,
    send_ops: u64,
    storage_ops: u64,
    direct_recv_ops: u64,
    sink_recv_ops: u64,
}

const NSTAT: usize = 12;

pub(crate) struct CoreShared {
    core_index: usize,
    cpu: Option<usize>,
    v: [AtomicU64; NSTAT],
    /// Sockets handed to this core by acceptors and not yet registered or refused
    /// (control path only: once per connection).
    pub(crate) pending_handoffs: AtomicU64,
}

impl CoreShared {
    pub(crate) fn new(core_index: usize, cpu: Option<usize>) -> Self {
        CoreShared { core_index, cpu, v: Default::default(), pending_handoffs: AtomicU64::new(0) }
    }
    /// Load estimate used by acceptors: live connections + pending handoffs.
    pub(crate) fn load(&self) -> u64 {
        self.v[3].load(Ordering::Relaxed) + self.pending_handoffs.load(Ordering::Relaxed)
    }
    fn publish(&self, s: &LocalStats) {
        let a = [
            s.busy_loops,
            s.idle_loops,
            s.enters,
            s.connections,
            s.connections_total,
            s.bytes_rx,
            s.bytes_tx,
            s.recv_ops,
            s.send_ops,
            s.storage_ops,
            s.direct_recv_ops,
            s.sink_recv_ops,
        ];
        for (d, x) in self.v.iter().zip(a) {
            d.store(x, Ordering::Relaxed);
        }
    }
    pub(crate) fn snapshot(&self) -> CoreStats {
        let g = |i: usize| self.v[i].load(Ordering::Relaxed);
        CoreStats {
            core_index: self.core_index,
            cpu: self.cpu,
            busy_loops: g(0),
            idle_loops: g(1),
            enters: g(2),
            connections: g(3),
            connections_total: g(4),
            bytes_rx: g(5),
            bytes_tx: g(6),
            recv_ops: g(7),
            send_ops: g(8),
            storage_ops: g(9),
            direct_recv_ops: g(10),
            sink_recv_ops: g(11),
        }
    }
}

// ---------------------------------------------------------------- buffers

/// Fixed-capacity receive buffer: `buf[start..end]` holds unconsumed bytes,
/// `buf[end..]` is where the next recv lands.
pub(crate) struct RxBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl RxBuf {
    fn new(cap: usize) -> Self {
        RxBuf { buf: vec![0u8; cap], start: 0, end: 0 }
    }
    #[inline]
    pub(crate) fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }
    #[inline]
    pub(crate) fn consume(&mut self, n: usize) {
        assert!(n <= self.end - self.start, "consume({n}) beyond rx data ({})", self.end - self.start);
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }
    #[inline]
    fn is_full_unconsumed(&self) -> bool {
        self.start == 0 && self.end == self.buf.len()
    }
    /// Move the partial remainder to the front when the free tail is under half.
    /// Only called while no recv is in flight.
    #[inline]
    fn compact(&mut self) {
        if self.start > 0 && self.buf.len() - self.end < self.buf.len() / 2 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }
}

/// A handler-owned buffer spliced into the tx stream at byte position `at` of the
/// accumulated tx bytes.
pub(crate) struct ExtSeg {
    pub(crate) at: usize,
    pub(crate) ptr: *const u8,
    pub(crate) len: usize,
    pub(crate) token: u64,
}

struct StorageOp {
    slot: u32,
    token: u64,
}

/// The ring plus what handlers need to submit through it.
pub(crate) struct SubmitCtx {
    ring: IoUring,
    storage: Vec<StorageOp>,
    storage_free: Vec<u32>,
    pub(crate) now_ms: u64,
    pub(crate) core_index: usize,
    pub(crate) sender: CoreSender,
    storage_ops: u64,
}

impl SubmitCtx {
    #[inline]
    fn push(&mut self, e: &squeue::Entry) {
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
}

// ---------------------------------------------------------------- connections

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Open,
    /// Handler asked to close after flush: no more recv.
    Draining(CloseReason),
    /// Socket shut down; waiting for in-flight ops before on_closed.
    Closing(CloseReason),
}

struct Conn {
    id: u64,
    fd: OwnedFd,
    info: ConnInfo,
    handler: Box<dyn Handler>,
    rx: RxBuf,
    tx_acc: Vec<u8>,
    /// Borrowed segments spliced into `tx_acc` (ConnIo::send_borrowed).
    ext_acc: Vec<ExtSeg>,
    tx_fly: Vec<u8>,
    ext_fly: Vec<ExtSeg>,
    /// Logical bytes of the in-flight batch (tx_fly + ext_fly) already sent.
    tx_off: usize,
    /// Logical size of the in-flight batch.
    tx_total: usize,
    /// ext_fly segments already reported through on_sent.
    ext_done: usize,
    iov: Vec<libc::iovec>,
    msg: Box<libc::msghdr>,
    recv_fly: bool,
    send_fly: bool,
    storage_fly: u32,
    state: State,
    dirty: bool,
    rerun_recv: bool,
    poisoned: bool,
    /// Poll mode: in `Core::hot` (received with direct non-blocking `recv`
    /// calls each spin instead of an armed io_uring `Recv`).
    hot: bool,
    /// Poll mode: the last receive returned data, so the next one may go hot.
    hot_eligible: bool,
    /// Consecutive empty direct receives while hot.
    hot_empty: u32,
    /// `now_ms` of the last receive that returned data.
    rx_at_ms: u64,
}

impl Conn {
    #[inline]
    fn tx_pending(&self) -> usize {
        (self.tx_total - self.tx_off) + self.tx_acc.len() + self.ext_acc.iter().map(|e| e.len).sum::<usize>()
    }
    #[inline]
    fn live(&self) -> bool {
        !matches!(self.state, State::Closing(_))
    }
    /// Run a handler callback. A panicking handler poisons (and closes) only its
    /// own connection: `on_closed` is then not called on it.
    #[inline]
    fn call(
        &mut self,
        sq: &mut SubmitCtx,
        slot: u32,
        f: impl FnOnce(&mut dyn Handler, &mut ConnIo<'_>) -> Flow,
    ) -> Flow {
        let Conn { handler, rx, tx_acc, ext_acc, info, storage_fly, rerun_recv, id, poisoned, .. } = self;
        let peer = info.peer;
        let mut io = ConnIo {
            rx,
            tx: tx_acc,
            tx_ext: ext_acc,
            info,
            sq,
            slot,
            conn_id: *id,
            storage_inflight: storage_fly,
            rerun_recv,
        };
        guarded(poisoned, peer, || f(handler.as_mut(), &mut io)).unwrap_or(Flow::CloseNow)
    }
    /// The handler's [`Handler::recv_sink`] as a raw slice (`Err` if the
    /// handler panicked: the connection is then poisoned).
    /// Without a sink, the second value is the handler's
    /// [`Handler::recv_len_hint`].
    fn sink(&mut self) -> Result<(Option<RawSlice>, usize), ()> {
        let Conn { handler, poisoned, info, .. } = self;
        guarded(poisoned, info.peer, || {
            match handler.recv_sink().filter(|s| !s.is_empty()).map(|s| (s.as_mut_ptr(), s.len())) {
                Some(sink) => (Some(sink), usize::MAX),
                None => (None, handler.recv_len_hint()),
            }
        })
        .ok_or(())
    }
    /// Shut the socket down (in-flight recv/send complete promptly) and cancel them.
    fn hard_close(&mut self, sq: &mut SubmitCtx, slot: u32, reason: CloseReason) {
        if !self.live() {
            return;
        }
        self.state = State::Closing(reason);
        self.tx_acc = Vec::new();
        self.ext_acc = Vec::new();
        // SAFETY: plain syscall on an fd we own.
        unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_RDWR) };
        if self.recv_fly {
            sq.push(&opcode::AsyncCancel::new(ud(K_RECV, slot)).build().user_data(ud(K_CANCEL, slot)));
        }
        if self.send_fly {
            sq.push(&opcode::AsyncCancel::new(ud(K_SEND, slot)).build().user_data(ud(K_CANCEL, slot)));
        }
    }
    fn apply(&mut self, sq: &mut SubmitCtx, slot: u32, flow: Flow) {
        match flow {
            Flow::Continue => {}
            Flow::CloseAfterFlush => {
                if self.state == State::Open {
                    self.state = State::Draining(CloseReason::Handler);
                }
            }
            Flow::CloseNow => self.hard_close(sq, slot, CloseReason::Handler),
        }
    }
}

/// Run handler code; a panic poisons the connection (it is closed without
/// `on_closed`) and gives `None`, other connections are unaffected.
fn guarded<T>(poisoned: &mut bool, peer: SocketAddr, f: impl FnOnce() -> T) -> Option<T> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => Some(v),
        Err(_) => {
            *poisoned = true;
            tracing::error!(peer = %peer, "connection handler panicked; closing the connection");
            None
        }
    }
}

/// A handler-owned slice handed to a direct `recv` (pointer, length).
type RawSlice = (*mut u8, usize);

/// Max iovecs per sendmsg (UIO_MAXIOV).
const MAX_IOV: usize = 1024;

/// Fill `iov` with the part of the logical stream (own bytes of `fly` with `ext`
/// segments spliced in) from logical offset `off`, at most MAX_IOV entries.
fn build_iov(fly: &[u8], ext: &[ExtSeg], off: usize, iov: &mut Vec<libc::iovec>) {
    iov.clear();
    let mut logical = 0usize;
    let push = |ptr: *const u8, len: usize, logical: &mut usize, iov: &mut Vec<libc::iovec>| {
        let start = *logical;
        *logical += len;
        if len == 0 || start + len <= off || iov.len() >= MAX_IOV {
            return;
        }
        let skip = off.saturating_sub(start);
        // SAFETY: skip < len; pointer arithmetic within the segment.
        let p = unsafe { ptr.add(skip) };
        iov.push(libc::iovec { iov_base: p as *mut libc::c_void, iov_len: len - skip });
    };
    let mut own = 0usize;
    for e in ext {
        // `at` is append-only by contract; clamp so a misbehaving handler cannot
        // make us index out of bounds.
        let at = e.at.clamp(own, fly.len());
        push(fly[own..at].as_ptr(), at - own, &mut logical, iov);
        own = at;
        push(e.ptr, e.len, &mut logical, iov);
    }
    push(fly[own..].as_ptr(), fly.len() - own, &mut logical, iov);
}

// ---------------------------------------------------------------- ring setup

fn build_ring(entries: u32) -> io::Result<(IoUring, &'static str, bool)> {
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

// ---------------------------------------------------------------- core

struct Core {
    sq: SubmitCtx,
    conns: Vec<Option<Conn>>,
    free: Vec<u32>,
    dirty: Vec<u32>,
    dirty_next: Vec<u32>,
    cqes: Vec<(u64, i32)>,
    cfg: EngineConfig,
    idx: usize,
    wake_fd: RawFd,
    next_conn_id: u64,
    wake_buf: &'static mut u64,
    cmd_rx: mpsc::Receiver<Command>,
    shutdown_deadline: Option<Instant>,
    forced_at: Option<Instant>,
    stats: LocalStats,
    shared: Arc<CoreShared>,
    epoch: Instant,
    next_tick_ms: u64,
    taskrun_flag: bool,
    reg_ring_idx: Option<u32>,
    /// Poll mode: connections received with direct `recv` calls (no armed SQE).
    hot: Vec<u32>,
    hot_max: usize,
    /// Direct receives are allowed: at most `hot_max` connections received data
    /// during the last tick. With more busy connections one `io_uring_enter`
    /// serving them all is cheaper than a `recv` per connection and spin.
    direct_ok: bool,
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn run_core(
    idx: usize,
    cpu: Option<usize>,
    cfg: EngineConfig,
    cmd_rx: mpsc::Receiver<Command>,
    sender: CoreSender,
    shared: Arc<CoreShared>,
    epoch: Instant,
    ready: mpsc::SyncSender<Result<(), EngineError>>,
) {
    if let Some(c) = cpu {
        if let Err(err) = crate::pin_current_thread(c) {
            let _ = ready.send(Err(EngineError::Pin { core: c, err }));
            return;
        }
    }
    let wake_fd = sender.wake_fd();
    let (ring, variant, taskrun_flag) = match build_ring(cfg.ring_entries) {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(EngineError::IoUringSetup(e)));
            return;
        }
    };
    tracing::debug!(core = idx, ?cpu, variant, mode = %cfg.mode, "engine core started");
    let mut core = Core {
        sq: SubmitCtx {
            ring,
            storage: Vec::new(),
            storage_free: Vec::new(),
            now_ms: epoch.elapsed().as_millis() as u64,
            core_index: idx,
            storage_ops: 0,
            sender,
        },
        conns: Vec::new(),
        free: Vec::new(),
        dirty: Vec::new(),
        dirty_next: Vec::new(),
        cqes: Vec::with_capacity(512),
        idx,
        wake_fd,
        next_conn_id: 1,
        wake_buf: Box::leak(Box::new(0u64)),
        cmd_rx,
        shutdown_deadline: None,
        forced_at: None,
        stats: LocalStats::default(),
        shared,
        epoch,
        next_tick_ms: 0,
        taskrun_flag,
        reg_ring_idx: None,
        hot: Vec::new(),
        direct_ok: false, // set by the first tick
        hot_max: if cfg.mode == Mode::Poll {
            // NVMF_ENGINE_DIRECT_RECV overrides the config (for A/B measurements).
            std::env::var("NVMF_ENGINE_DIRECT_RECV")
                .ok()
                .and_then(|v| v.parse().ok())
                .map_or(cfg.poll_direct_recv_conns_max, |v: usize| v.min(crate::DIRECT_RECV_CONNS_MAX))
        } else {
            0
        },
        cfg,
    };
    core.next_tick_ms = core.sq.now_ms + core.cfg.tick_ms;
    if std::env::var_os("NVMF_ENGINE_NO_REGRING").is_none() {
        core.reg_ring_idx = register_ring_fd(&core.sq.ring);
    }
    core.arm_wake();
    if let Err(e) = core.sq.ring.submit() {
        let _ = ready.send(Err(EngineError::IoUringSetup(e)));
        return;
    }
    let _ = ready.send(Ok(()));
    drop(ready);
    core.run();
}

impl Core {
    fn arm_wake(&mut self) {
        let e = opcode::Read::new(types::Fd(self.wake_fd), self.wake_buf as *mut u64 as *mut u8, 8)
            .build()
            .user_data(ud(K_WAKE, 0));
        self.sq.push(&e);
    }

    #[inline]
    fn mark(dirty: &mut Vec<u32>, c: &mut Conn, slot: u32) {
        if !c.dirty {
            c.dirty = true;
            dirty.push(slot);
        }
    }

    fn run(&mut self) {
        let poll = self.cfg.mode == Mode::Poll;
        let mut ts = types::Timespec::new();
        let mut idle_streak: u32 = 0;
        loop {
            // While busy-polling an idle ring, read the clock only every 64 spins
            // (clock_gettime dominated the idle spin otherwise).
            if !poll || idle_streak & 63 == 0 {
                self.sq.now_ms = self.epoch.elapsed().as_millis() as u64;
            }
            let now_ms = self.sq.now_ms;

            // 1. completions
            self.cqes.clear();
            {
                let mut cq = self.sq.ring.completion();
                cq.sync();
                for c in &mut cq {
                    self.cqes.push((c.user_data(), c.result()));
                }
            }
            let n = self.cqes.len();
            for i in 0..n {
                let (u, r) = self.cqes[i];
                self.dispatch(u, r);
            }
            // 1b. direct receives on hot connections (poll mode)
            let hot_got = !self.hot.is_empty() && self.poll_hot();
            if n > 0 || hot_got {
                idle_streak = 0;
                self.stats.busy_loops += 1;
            } else {
                idle_streak = idle_streak.wrapping_add(1);
                self.stats.idle_loops += 1;
            }

            // 2. ticks
            if now_ms >= self.next_tick_ms {
                self.next_tick_ms = now_ms + self.cfg.tick_ms;
                self.tick();
            }

            // 3. flush tx / re-arm recv / finalize closes
            let rerun = self.flush();

            // 4. shutdown progress
            if let Some(deadline) = self.shutdown_deadline {
                if self.stats.connections == 0 {
                    break;
                }
                let now = Instant::now();
                match self.forced_at {
                    None if now >= deadline => {
                        self.force_close_all();
                        self.forced_at = Some(now);
                        self.flush();
                    }
                    Some(t) if now >= t + FORCED_GRACE => {
                        tracing::warn!(
                            core = self.idx,
                            "leaking {} connections with ops that never completed",
                            self.stats.connections
                        );
                        for c in self.conns.drain(..).flatten() {
                            std::mem::forget(c);
                        }
                        break;
                    }
                    _ => {}
                }
            }

            // 5. one enter per iteration
            let pending_sqes = !self.sq.ring.submission().is_empty();
            if poll || rerun || !self.dirty.is_empty() || !self.sq.ring.completion().is_empty() {
                // never sleep
                let need = pending_sqes || !self.taskrun_flag || {
                    let sq = self.sq.ring.submission();
                    sq.taskrun() || sq.cq_overflow()
                };
                if need {
                    self.stats.enters += 1;
                    let to_submit = self.sq.ring.submission().len() as u32;
                    // SAFETY: no extra argument.
                    let r = self.enter_getevents(to_submit);
                    if let Err(e) = r {
                        self.enter_error(e);
                    }
                } else {
                    std::hint::spin_loop();
                }
            } else {
                let now_ms = self.epoch.elapsed().as_millis() as u64;
                let mut wait_ms = self.next_tick_ms.saturating_sub(now_ms).max(1);
                if self.shutdown_deadline.is_some() {
                    wait_ms = wait_ms.min(5);
                }
                ts = ts.sec(wait_ms / 1000).nsec(((wait_ms % 1000) * 1_000_000) as u32);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.stats.enters += 1;
                if let Err(e) = self.sq.ring.submitter().submit_with_args(1, &args) {
                    self.enter_error(e);
                }
            }
        }
        self.stats.connections = 0;
        self.stats.storage_ops = self.sq.storage_ops;
        self.shared.publish(&self.stats);
        tracing::debug!(core = self.idx, "engine core stopped");
    }

    /// `io_uring_enter(to_submit, 0, GETEVENTS)`, through the registered ring fd
    /// when available (saves the per-call fd lookup/refcount).
    #[inline]
    fn enter_getevents(&self, to_submit: u32) -> io::Result<usize> {
        if let Some(idx) = self.reg_ring_idx {
            // SAFETY: plain syscall; no argument pointer.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_io_uring_enter,
                    idx as libc::c_long,
                    to_submit as libc::c_long,
                    0 as libc::c_long,
                    (IORING_ENTER_GETEVENTS | IORING_ENTER_REGISTERED_RING) as libc::c_long,
                    std::ptr::null::<libc::c_void>(),
                    0 as libc::c_long,
                )
            };
            if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(r as usize)
            }
        } else {
            // SAFETY: no extra argument.
            unsafe { self.sq.ring.submitter().enter::<libc::sigset_t>(to_submit, 0, IORING_ENTER_GETEVENTS, None) }
        }
    }

    fn enter_error(&mut self, e: io::Error) {
        match e.raw_os_error() {
            Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN) => {}
            _ => {
                tracing::error!(core = self.idx, "io_uring_enter: {e}");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    fn dispatch(&mut self, u: u64, res: i32) {
        let kind = u >> KIND_SHIFT;
        let idx = (u & IDX_MASK) as u32;
        match kind {
            K_RECV => {
                let Some(c) = self.conns.get_mut(idx as usize).and_then(|c| c.as_mut()) else {
                    return;
                };
                c.recv_fly = false;
                Self::recv_result(&mut self.sq, &mut self.stats, &mut self.dirty, c, idx, res, false);
            }
            K_SEND => {
                let Some(c) = self.conns.get_mut(idx as usize).and_then(|c| c.as_mut()) else {
                    return;
                };
                c.send_fly = false;
                Self::mark(&mut self.dirty, c, idx);
                if res > 0 {
                    self.stats.bytes_tx += res as u64;
                    self.stats.send_ops += 1;
                    c.tx_off += res as usize;
                    if !c.ext_fly.is_empty() {
                        // report borrowed segments that are now fully handed to the kernel
                        let mut prefix: usize = c.ext_fly[..c.ext_done].iter().map(|e| e.len).sum();
                        while c.ext_done < c.ext_fly.len() {
                            let e = &c.ext_fly[c.ext_done];
                            if c.tx_off < e.at + prefix + e.len {
                                break;
                            }
                            prefix += e.len;
                            let token = e.token;
                            c.ext_done += 1;
                            if c.live() {
                                let f = c.call(&mut self.sq, idx, |h, io| h.on_sent(io, token));
                                c.apply(&mut self.sq, idx, f);
                            }
                        }
                    }
                    if c.tx_off >= c.tx_total {
                        c.tx_fly.clear();
                        c.ext_fly.clear();
                        c.tx_off = 0;
                        c.tx_total = 0;
                        c.ext_done = 0;
                    }
                } else {
                    let e = -res;
                    if e != libc::EAGAIN && e != libc::EINTR && e != libc::ENOBUFS {
                        c.hard_close(&mut self.sq, idx, CloseReason::Error(e.max(1)));
                    }
                }
            }
            K_STORAGE => {
                let op = &self.sq.storage[idx as usize];
                let (slot, token) = (op.slot, op.token);
                self.sq.storage_free.push(idx);
                let Some(c) = self.conns.get_mut(slot as usize).and_then(|c| c.as_mut()) else {
                    return;
                };
                c.storage_fly -= 1;
                Self::mark(&mut self.dirty, c, slot);
                if c.live() {
                    let f = c.call(&mut self.sq, slot, |h, io| h.on_storage(io, token, res));
                    c.apply(&mut self.sq, slot, f);
                }
            }
            K_WAKE => {
                self.arm_wake();
                self.commands();
            }
            _ => {}
        }
    }

    /// Hand a receive result (io_uring CQE or direct `recv`) to the connection;
    /// `sunk`: the bytes went into the handler's [`Handler::recv_sink`], not `rx`.
    fn recv_result(
        sq: &mut SubmitCtx,
        stats: &mut LocalStats,
        dirty: &mut Vec<u32>,
        c: &mut Conn,
        idx: u32,
        res: i32,
        sunk: bool,
    ) {
        Self::mark(dirty, c, idx);
        if res > 0 {
            stats.bytes_rx += res as u64;
            stats.recv_ops += 1;
            c.hot_eligible = true;
            c.rx_at_ms = sq.now_ms.max(1);
            if c.state == State::Open {
                let f = if sunk {
                    stats.sink_recv_ops += 1;
                    c.call(sq, idx, |h, io| h.on_sink_recv(io, res as usize))
                } else {
                    c.rx.end += res as usize;
                    c.call(sq, idx, |h, io| h.on_recv(io))
                };
                c.apply(sq, idx, f);
            }
        } else if res == 0 {
            c.hard_close(sq, idx, CloseReason::PeerClosed);
        } else {
            let e = -res;
            if e != libc::EAGAIN && e != libc::EINTR && e != libc::ENOBUFS {
                let reason = if e == libc::ECANCELED { CloseReason::PeerClosed } else { CloseReason::Error(e) };
                c.hard_close(sq, idx, reason);
            }
        }
    }

    /// Poll mode: one non-blocking `recv` on every hot connection. Returns
    /// whether any received data.
    fn poll_hot(&mut self) -> bool {
        let max_tx = self.cfg.send_buf_max_bytes;
        let mut got = false;
        if !self.direct_ok {
            // Too many busy connections: all of them go back to the ring.
            for slot in self.hot.drain(..) {
                if let Some(c) = self.conns.get_mut(slot as usize).and_then(|c| c.as_mut()) {
                    if c.hot {
                        c.hot = false;
                        Self::mark(&mut self.dirty, c, slot);
                    }
                }
            }
            return false;
        }
        let mut i = 0;
        while i < self.hot.len() {
            let slot = self.hot[i];
            let Some(c) = self.conns.get_mut(slot as usize).and_then(|c| c.as_mut()).filter(|c| c.hot) else {
                self.hot.swap_remove(i);
                continue;
            };
            if c.state != State::Open || c.tx_pending() > max_tx || c.rx.is_full_unconsumed() {
                // flush decides (backpressure, overflow, close)
                c.hot = false;
                Self::mark(&mut self.dirty, c, slot);
                self.hot.swap_remove(i);
                continue;
            }
            c.rx.compact();
            // With nothing unparsed in rx, the handler may want the next bytes
            // in a buffer of its own (the rest of a large payload): received
            // there, they are not copied again.
            let (sink, len_max) = if c.rx.data().is_empty() {
                match c.sink() {
                    Ok(got) => got,
                    Err(()) => {
                        c.apply(&mut self.sq, slot, Flow::CloseNow);
                        Self::mark(&mut self.dirty, c, slot);
                        c.hot = false;
                        self.hot.swap_remove(i);
                        continue;
                    }
                }
            } else {
                (None, usize::MAX)
            };
            let (ptr, len) = match sink {
                Some(s) => s,
                // SAFETY: end <= buf.len().
                None => {
                    (unsafe { c.rx.buf.as_mut_ptr().add(c.rx.end) }, (c.rx.buf.len() - c.rx.end).min(len_max.max(1)))
                }
            };
            // SAFETY: `ptr..ptr + len` is rx.buf[end..] (ours; no io_uring recv is
            // in flight on a hot connection) or the handler's sink, which stays
            // valid and untouched until on_sink_recv (no handler call between).
            let r = unsafe { libc::recv(c.fd.as_raw_fd(), ptr as *mut libc::c_void, len, libc::MSG_DONTWAIT) };
            let res = if r < 0 { -io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO) } else { r as i32 };
            if res == -libc::EAGAIN {
                c.hot_empty += 1;
                if c.hot_empty >= crate::DIRECT_RECV_EMPTY_MAX {
                    c.hot = false;
                    c.hot_eligible = false;
                    Self::mark(&mut self.dirty, c, slot);
                    self.hot.swap_remove(i);
                    continue;
                }
            } else {
                c.hot_empty = 0;
                got |= res > 0;
                if res > 0 {
                    self.stats.direct_recv_ops += 1;
                }
                Self::recv_result(&mut self.sq, &mut self.stats, &mut self.dirty, c, slot, res, sink.is_some());
            }
            i += 1;
        }
        got
    }

    fn tick(&mut self) {
        let now_ms = self.sq.now_ms;
        let mut busy = 0usize;
        for (slot, c) in self.conns.iter_mut().enumerate() {
            let Some(c) = c else { continue };
            if c.rx_at_ms != 0 && now_ms.saturating_sub(c.rx_at_ms) <= self.cfg.tick_ms {
                busy += 1;
            }
            if c.live() {
                let slot = slot as u32;
                let f = c.call(&mut self.sq, slot, |h, io| h.on_tick(io));
                c.apply(&mut self.sq, slot, f);
                Self::mark(&mut self.dirty, c, slot);
            }
        }
        self.direct_ok = self.hot_max > 0 && busy <= self.hot_max;
        self.stats.storage_ops = self.sq.storage_ops;
        self.shared.publish(&self.stats);
    }

    /// Returns true if some handler asked for another on_recv (do not sleep).
    fn flush(&mut self) -> bool {
        let mut rerun_any = false;
        let max_tx = self.cfg.send_buf_max_bytes;
        let mut list = std::mem::take(&mut self.dirty);
        for &slot in &list {
            let Some(c) = self.conns.get_mut(slot as usize).and_then(|c| c.as_mut()) else {
                continue;
            };
            c.dirty = false;
            if c.rerun_recv && c.state == State::Open {
                c.rerun_recv = false;
                let f = c.call(&mut self.sq, slot, |h, io| h.on_recv(io));
                c.apply(&mut self.sq, slot, f);
                if c.rerun_recv {
                    rerun_any = true;
                    Self::mark(&mut self.dirty_next, c, slot);
                }
            }
            match c.state {
                State::Closing(reason) => {
                    if !c.recv_fly && !c.send_fly && c.storage_fly == 0 {
                        if c.hot {
                            self.hot.retain(|&s| s != slot);
                        }
                        let mut c = self.conns[slot as usize].take().unwrap();
                        let poisoned = c.poisoned;
                        let r = std::panic::catch_unwind(AssertUnwindSafe(move || {
                            if !poisoned {
                                c.handler.on_closed(reason);
                            }
                            drop(c);
                        }));
                        if r.is_err() {
                            tracing::error!(core = self.idx, "connection handler panicked in on_closed/drop");
                        }
                        self.free.push(slot);
                        self.stats.connections -= 1;
                    }
                    continue;
                }
                State::Open | State::Draining(_) => {}
            }
            // tx
            if !c.send_fly {
                if c.tx_off >= c.tx_total && (!c.tx_acc.is_empty() || !c.ext_acc.is_empty()) {
                    std::mem::swap(&mut c.tx_fly, &mut c.tx_acc);
                    std::mem::swap(&mut c.ext_fly, &mut c.ext_acc);
                    c.tx_acc.clear();
                    c.ext_acc.clear();
                    c.tx_off = 0;
                    c.ext_done = 0;
                    c.tx_total = c.tx_fly.len() + c.ext_fly.iter().map(|e| e.len).sum::<usize>();
                }
                if c.tx_off < c.tx_total {
                    let e = if c.ext_fly.is_empty() {
                        let len = (c.tx_total - c.tx_off).min(MAX_SEND_CHUNK);
                        // SAFETY: tx_fly is not touched until the send completes.
                        let p = unsafe { c.tx_fly.as_ptr().add(c.tx_off) };
                        opcode::Send::new(types::Fd(c.fd.as_raw_fd()), p, len as u32).flags(libc::MSG_NOSIGNAL).build()
                    } else {
                        build_iov(&c.tx_fly, &c.ext_fly, c.tx_off, &mut c.iov);
                        c.msg.msg_iov = c.iov.as_mut_ptr();
                        c.msg.msg_iovlen = c.iov.len() as _;
                        opcode::SendMsg::new(types::Fd(c.fd.as_raw_fd()), &*c.msg as *const libc::msghdr)
                            .flags(libc::MSG_NOSIGNAL as u32)
                            .build()
                    };
                    self.sq.push(&e.user_data(ud(K_SEND, slot)));
                    c.send_fly = true;
                }
            }
            match c.state {
                State::Draining(reason) => {
                    if !c.send_fly && c.storage_fly == 0 {
                        c.hard_close(&mut self.sq, slot, reason);
                        // finalize on the next pass once the cancelled recv returns
                        Self::mark(&mut self.dirty_next, c, slot);
                    }
                }
                State::Open => {
                    // A hot connection is received by poll_hot, not by an SQE.
                    if !c.hot && !c.recv_fly && c.tx_pending() <= max_tx {
                        if c.rx.is_full_unconsumed() {
                            tracing::debug!(core = self.idx, peer = %c.info.peer, "rx buffer full, closing");
                            c.hard_close(&mut self.sq, slot, CloseReason::RxOverflow);
                            Self::mark(&mut self.dirty_next, c, slot);
                            continue;
                        }
                        if c.hot_eligible && self.direct_ok && self.hot.len() < self.hot_max {
                            c.hot = true;
                            c.hot_empty = 0;
                            self.hot.push(slot);
                            continue;
                        }
                        c.rx.compact();
                        let cap = c.rx.buf.len();
                        let len = (cap - c.rx.end).min(u32::MAX as usize);
                        // SAFETY: rx.buf[end..] is not touched until the recv completes.
                        let p = unsafe { c.rx.buf.as_mut_ptr().add(c.rx.end) };
                        let e = opcode::Recv::new(types::Fd(c.fd.as_raw_fd()), p, len as u32)
                            .build()
                            .user_data(ud(K_RECV, slot));
                        self.sq.push(&e);
                        c.recv_fly = true;
                    }
                }
                State::Closing(_) => {}
            }
        }
        list.clear();
        // Connections marked during this pass (by handlers) go to the next one.
        self.dirty = list;
        std::mem::swap(&mut self.dirty, &mut self.dirty_next);
        rerun_any
    }

    fn commands(&mut self) {
        while let Ok(cmd) = self.cmd_rx.try_recv() {
            match cmd {
                Command::Accepted { conn, factory } => {
                    self.register(conn, |info| factory.create(info));
                    self.shared.pending_handoffs.fetch_sub(1, Ordering::Relaxed);
                }
                Command::Connect { conn, make } => self.register(conn, |info| Some(make(info))),
                Command::RemoveListener { id, ack } => {
                    for (slot, c) in self.conns.iter_mut().enumerate() {
                        let Some(c) = c else { continue };
                        if c.info.listener_id == Some(id) && c.live() {
                            c.hard_close(&mut self.sq, slot as u32, CloseReason::ListenerRemoved);
                            Self::mark(&mut self.dirty, c, slot as u32);
                        }
                    }
                    let _ = ack.send(());
                }
                Command::Wake { slot, id } => {
                    if let Some(c) = self.conns.get_mut(slot as usize).and_then(|c| c.as_mut()) {
                        if c.id == id && c.live() {
                            let f = c.call(&mut self.sq, slot, |h, io| h.on_wake(io));
                            c.apply(&mut self.sq, slot, f);
                            Self::mark(&mut self.dirty, c, slot);
                        }
                    }
                }
                Command::Shutdown { deadline } => {
                    if self.shutdown_deadline.is_none() {
                        self.shutdown_deadline = Some(deadline);
                        for (slot, c) in self.conns.iter_mut().enumerate() {
                            let Some(c) = c else { continue };
                            let slot = slot as u32;
                            if c.state == State::Open {
                                let f = c.call(&mut self.sq, slot, |h, io| h.on_shutdown(io));
                                match f {
                                    Flow::CloseAfterFlush => c.state = State::Draining(CloseReason::Shutdown),
                                    Flow::CloseNow => c.hard_close(&mut self.sq, slot, CloseReason::Shutdown),
                                    Flow::Continue => {}
                                }
                                Self::mark(&mut self.dirty, c, slot);
                            }
                        }
                    }
                }
            }
        }
    }

    fn register(&mut self, nc: NewConn, make: impl FnOnce(&ConnInfo) -> Option<Box<dyn Handler>>) {
        if self.shutdown_deadline.is_some() || self.stats.connections as usize >= self.cfg.max_connections_per_core {
            tracing::debug!(core = self.idx, peer = %nc.peer, "refusing connection (limit or shutdown)");
            return;
        }
        let info = ConnInfo { peer: nc.peer, local: nc.local, core: self.idx, listener_id: nc.listener_id };
        let Some(handler) = make(&info) else { return };
        let id = self.next_conn_id;
        self.next_conn_id += 1;
        let conn = Conn {
            id,
            fd: nc.fd,
            info,
            handler,
            rx: RxBuf::new(self.cfg.recv_buf_bytes),
            tx_acc: Vec::new(),
            ext_acc: Vec::new(),
            tx_fly: Vec::new(),
            ext_fly: Vec::new(),
            tx_off: 0,
            tx_total: 0,
            ext_done: 0,
            iov: Vec::new(),
            // SAFETY: msghdr is plain data; all-zero is a valid empty header.
            msg: Box::new(unsafe { std::mem::zeroed() }),
            recv_fly: false,
            send_fly: false,
            storage_fly: 0,
            state: State::Open,
            dirty: false,
            rerun_recv: false,
            poisoned: false,
            hot: false,
            hot_eligible: false,
            hot_empty: 0,
            rx_at_ms: 0,
        };
        let slot = match self.free.pop() {
            Some(s) => {
                self.conns[s as usize] = Some(conn);
                s
            }
            None => {
                self.conns.push(Some(conn));
                (self.conns.len() - 1) as u32
            }
        };
        self.stats.connections += 1;
        self.stats.connections_total += 1;
        let c = self.conns[slot as usize].as_mut().unwrap();
        let f = c.call(&mut self.sq, slot, |h, io| h.on_tick(io));
        c.apply(&mut self.sq, slot, f);
        Self::mark(&mut self.dirty, c, slot);
        self.shared.publish(&self.stats);
    }

    fn force_close_all(&mut self) {
        for (slot, c) in self.conns.iter_mut().enumerate() {
            let Some(c) = c else { continue };
            if c.live() {
                c.hard_close(&mut self.sq, slot as u32, CloseReason::Shutdown);
            }
            Self::mark(&mut self.dirty, c, slot as u32);
        }
    }
}
