//! Per-core event loop: one io_uring, the connections it owns, their buffers.

mod datapath;
mod periodic;
mod tls_path;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{OwnedFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{opcode, types};
use nvmf_proto::limited;

use crate::conn::{Conn, State};
use crate::ctx::{build_ring, register_ring_fd, ud, Clock, CoreCtx, K_WAKE};
use crate::limits::{Admission, CoreLimits, EvictKind};
use crate::rx::RxPool;
use crate::stats::CoreShared;
use crate::timer::DueQueue;
use crate::{
    CloseReason, ConnInfo, CoreSender, EngineConfig, EngineError, Flow, Handler, HandlerFactory, MakeHandler, Mode,
};

const IORING_ENTER_GETEVENTS: u32 = 1;
const IORING_ENTER_REGISTERED_RING: u32 = 16;
/// Commands (new sockets, evictions, wake-ups) handled per loop iteration.
const COMMANDS_PER_ITERATION_MAX: usize = 16;
/// Grace period for in-flight ops after a forced shutdown close.
const FORCED_GRACE: Duration = Duration::from_secs(2);

pub(crate) struct NewConn {
    pub fd: OwnedFd,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub listener_id: Option<u64>,
    /// TLS from the first byte (listener with TLS, or an outbound session).
    pub tls: Option<Box<crate::tls::TlsConn>>,
}

pub(crate) enum Command {
    Accepted {
        conn: NewConn,
        factory: Arc<dyn HandlerFactory>,
    },
    Connect {
        conn: NewConn,
        make: MakeHandler,
    },
    /// Evict this core's oldest unestablished connection (never heard first).
    Evict,
    RemoveListener {
        id: u64,
        ack: mpsc::Sender<()>,
    },
    Wake {
        slot: u32,
        id: u64,
    },
    Shutdown {
        deadline: Instant,
    },
}

struct Core {
    ctx: CoreCtx,
    conns: Vec<Option<Conn>>,
    free: Vec<u32>,
    dirty: Vec<u32>,
    dirty_next: Vec<u32>,
    cqes: Vec<(u64, i32)>,
    /// Scratch: timer entries due in this iteration.
    due: Vec<(u64, u32, u64)>,
    cfg: EngineConfig,
    idx: usize,
    wake_fd: RawFd,
    next_conn_id: u64,
    wake_buf: &'static mut u64,
    cmd_rx: mpsc::Receiver<Command>,
    shutdown_deadline: Option<Instant>,
    forced_at: Option<Instant>,
    shared: Arc<CoreShared>,
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
    /// Connections that sent a batch above the retained send buffer size.
    tx_trim: DueQueue,
    /// Commands were left in the channel for the next iteration.
    commands_more: bool,
    /// Handed-off sockets handled since the last publish of admission state.
    handoffs_done: u64,
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn run_core(
    idx: usize,
    cpu: Option<usize>,
    cfg: EngineConfig,
    cmd_rx: mpsc::Receiver<Command>,
    sender: CoreSender,
    shared: Arc<CoreShared>,
    admission: Arc<Admission>,
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
    let limits = CoreLimits::new(admission, shared.clone());
    let ctx = CoreCtx::new(ring, Clock::new(epoch), idx, sender, RxPool::new(&cfg), limits);
    let mut core = Core {
        ctx,
        conns: Vec::new(),
        free: Vec::new(),
        dirty: Vec::new(),
        dirty_next: Vec::new(),
        cqes: Vec::with_capacity(512),
        due: Vec::new(),
        idx,
        wake_fd,
        next_conn_id: 1,
        wake_buf: Box::leak(Box::new(0u64)),
        cmd_rx,
        shutdown_deadline: None,
        forced_at: None,
        shared,
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
        tx_trim: DueQueue::default(),
        commands_more: false,
        handoffs_done: 0,
        cfg,
    };
    core.next_tick_ms = core.ctx.clock.now_ms + core.cfg.tick_ms;
    if std::env::var_os("NVMF_ENGINE_NO_REGRING").is_none() {
        core.reg_ring_idx = register_ring_fd(&core.ctx.ring);
    }
    core.arm_wake();
    if let Err(e) = core.ctx.ring.submit() {
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
        self.ctx.push(&e);
    }

    #[inline]
    fn mark(dirty: &mut Vec<u32>, c: &mut Conn, slot: u32) {
        if !c.dirty {
            c.dirty = true;
            dirty.push(slot);
        }
    }

    #[inline]
    fn conn(conns: &mut [Option<Conn>], slot: u32, id: u64) -> Option<&mut Conn> {
        conns.get_mut(slot as usize).and_then(|c| c.as_mut()).filter(|c| c.id == id)
    }

    fn run(&mut self) {
        let poll = self.cfg.mode == Mode::Poll;
        let mut ts = types::Timespec::new();
        let mut idle_streak: u32 = 0;
        loop {
            // While busy-polling an idle ring, read the clock only every 64 spins
            // (clock_gettime dominated the idle spin otherwise); any work reads it.
            self.ctx.clock.next_iteration();
            if !poll || idle_streak & 63 == 0 {
                self.ctx.clock.refresh();
            }

            // 1. completions
            self.cqes.clear();
            {
                let mut cq = self.ctx.ring.completion();
                cq.sync();
                for c in &mut cq {
                    self.cqes.push((c.user_data(), c.result()));
                }
            }
            let n = self.cqes.len();
            if n > 0 {
                self.ctx.clock.ensure_fresh();
            }
            for i in 0..n {
                let (u, r) = self.cqes[i];
                self.dispatch(u, r);
            }
            // 1b. direct receives on hot connections (poll mode)
            let hot_got = !self.hot.is_empty() && self.poll_hot();
            if n > 0 || hot_got {
                idle_streak = 0;
                self.ctx.stats.busy_loops += 1;
            } else {
                idle_streak = idle_streak.wrapping_add(1);
                self.ctx.stats.idle_loops += 1;
            }

            if self.commands_more {
                self.ctx.clock.ensure_fresh();
                self.commands();
            }

            // 2. deadlines, then the periodic tick
            let now_ms = self.ctx.clock.now_ms;
            if self.ctx.timers.next_deadline().is_some_and(|d| d <= now_ms) {
                self.fire_deadlines();
            }
            if now_ms >= self.next_tick_ms {
                self.next_tick_ms = now_ms + self.cfg.tick_ms;
                self.tick();
            }

            // 3. flush tx / re-arm recv / finalize closes (handlers may run:
            // re-run on_recv, on_sink_recv)
            if !self.dirty.is_empty() {
                self.ctx.clock.ensure_fresh();
            }
            let rerun = self.flush();
            self.housekeeping();

            // 4. shutdown progress
            if let Some(deadline) = self.shutdown_deadline {
                if self.ctx.stats.connections == 0 {
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
                            self.ctx.stats.connections
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
            let pending_sqes = !self.ctx.ring.submission().is_empty();
            if poll || rerun || self.commands_more || !self.dirty.is_empty() || !self.ctx.ring.completion().is_empty() {
                // never sleep
                let need = pending_sqes || !self.taskrun_flag || {
                    let sq = self.ctx.ring.submission();
                    sq.taskrun() || sq.cq_overflow()
                };
                if need {
                    self.ctx.stats.enters += 1;
                    let to_submit = self.ctx.ring.submission().len() as u32;
                    if let Err(e) = self.enter_getevents(to_submit) {
                        self.enter_error(e);
                    }
                } else {
                    std::hint::spin_loop();
                }
            } else {
                let now_ms = self.ctx.clock.read_ms();
                let wake_ms = self.ctx.timers.next_deadline().map_or(self.next_tick_ms, |d| d.min(self.next_tick_ms));
                let mut wait_ms = wake_ms.saturating_sub(now_ms).max(1);
                if self.shutdown_deadline.is_some() {
                    wait_ms = wait_ms.min(5);
                }
                ts = ts.sec(wait_ms / 1000).nsec(((wait_ms % 1000) * 1_000_000) as u32);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ctx.stats.enters += 1;
                if let Err(e) = self.ctx.ring.submitter().submit_with_args(1, &args) {
                    self.enter_error(e);
                }
            }
        }
        self.ctx.stats.connections = 0;
        self.shared.live.store(0, Ordering::Relaxed);
        self.publish();
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
            unsafe { self.ctx.ring.submitter().enter::<libc::sigset_t>(to_submit, 0, IORING_ENTER_GETEVENTS, None) }
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

    /// Handle up to [`COMMANDS_PER_ITERATION_MAX`] commands; more wait for
    /// the next iteration (`commands_more`), so that a flood of new sockets
    /// does not hold back completions (a real host's first bytes among them).
    pub(super) fn commands(&mut self) {
        self.commands_more = false;
        for _ in 0..COMMANDS_PER_ITERATION_MAX {
            let Ok(cmd) = self.cmd_rx.try_recv() else { return };
            match cmd {
                Command::Accepted { conn, factory } => {
                    self.register(conn, false, |info| factory.create(info));
                    // Counted down once the connection is published as
                    // evictable (housekeeping): until then acceptors wait
                    // for it rather than refuse for lack of a victim.
                    self.handoffs_done += 1;
                }
                Command::Connect { conn, make } => self.register(conn, true, |info| Some(make(info))),
                Command::Evict => self.evict_one(),
                Command::RemoveListener { id, ack } => {
                    for (slot, c) in self.conns.iter_mut().enumerate() {
                        let Some(c) = c else { continue };
                        if c.info.listener_id == Some(id) && c.live() {
                            c.hard_close(&mut self.ctx, slot as u32, CloseReason::ListenerRemoved);
                            Self::mark(&mut self.dirty, c, slot as u32);
                        }
                    }
                    let _ = ack.send(());
                }
                Command::Wake { slot, id } => {
                    if let Some(c) = Self::conn(&mut self.conns, slot, id).filter(|c| c.live()) {
                        let f = c.call(&mut self.ctx, slot, |h, io| h.on_wake(io));
                        c.apply(&mut self.ctx, slot, f);
                        Self::mark(&mut self.dirty, c, slot);
                    }
                }
                Command::Shutdown { deadline } => {
                    if self.shutdown_deadline.is_none() {
                        self.shutdown_deadline = Some(deadline);
                        for (slot, c) in self.conns.iter_mut().enumerate() {
                            let Some(c) = c else { continue };
                            let slot = slot as u32;
                            if c.state == State::Open {
                                let f = c.call(&mut self.ctx, slot, |h, io| h.on_shutdown(io));
                                match f {
                                    Flow::CloseAfterFlush => c.state = State::Draining(CloseReason::Shutdown),
                                    Flow::CloseNow => c.hard_close(&mut self.ctx, slot, CloseReason::Shutdown),
                                    Flow::Continue => {}
                                }
                                Self::mark(&mut self.dirty, c, slot);
                            }
                        }
                    }
                }
            }
        }
        self.commands_more = true;
    }

    /// Hard-close this core's oldest connection that never sent a byte, else
    /// its oldest unestablished one.
    fn evict_one(&mut self) {
        let conns = &self.conns;
        let victim = self.ctx.limits.victim(|slot, id| {
            conns.get(slot as usize).and_then(|c| c.as_ref()).filter(|c| c.id == id && c.live()).map(|c| c.admission)
        });
        let Some((slot, kind, c)) =
            victim.and_then(|(slot, kind)| Some((slot, kind, self.conns.get_mut(slot as usize)?.as_mut()?)))
        else {
            self.ctx.stats.evict_missed += 1;
            self.ctx.limits.on_eviction_handled(None);
            return;
        };
        self.ctx.limits.on_eviction_handled(Some(&mut c.admission));
        let now_ms = self.ctx.clock.now_ms;
        let what = match kind {
            EvictKind::Silent => {
                self.ctx.stats.evicted_silent += 1;
                "never sent a byte"
            }
            EvictKind::Unestablished => {
                self.ctx.stats.evicted_unestablished += 1;
                "not established"
            }
        };
        let (open, unestablished) = self.ctx.limits.admission().counts();
        let (open_max, unestablished_max) =
            (self.ctx.limits.admission().connections_max, self.ctx.limits.admission().unestablished_max);
        limited!(
            self.ctx.limits.log,
            now_ms,
            warn,
            "core {}: evicting {} ({what}, connected {} ms ago) for a new connection: \
             {open}/{open_max} connections, {unestablished}/{unestablished_max} unestablished",
            self.idx,
            c.info.peer,
            self.ctx.clock.now_us.saturating_sub(c.admission.since_us) / 1000
        );
        c.hard_close(&mut self.ctx, slot, CloseReason::Evicted);
        Self::mark(&mut self.dirty, c, slot);
    }

    /// Register a socket whose place [`Admission::admit`] reserved
    /// (`established`: outbound); any refusal gives the place back.
    fn register(&mut self, nc: NewConn, established: bool, make: impl FnOnce(&ConnInfo) -> Option<Box<dyn Handler>>) {
        let now_ms = self.ctx.clock.now_ms;
        let refuse = |core: &mut Core, why: &str| {
            core.ctx.limits.admission().release(established);
            limited!(
                core.ctx.limits.log,
                now_ms,
                warn,
                "core {}: refusing connection from {}: {why}",
                core.idx,
                nc.peer
            );
        };
        if self.shutdown_deadline.is_some() {
            self.ctx.stats.refused_shutdown += 1;
            refuse(self, "shutting down");
            return;
        }
        let rx = match self.ctx.rx_pool.new_rx() {
            Ok(rx) => rx,
            Err(e) => {
                self.ctx.stats.refused_nomem += 1;
                refuse(self, &format!("cannot map its receive buffer: {e}"));
                return;
            }
        };
        let info = ConnInfo { peer: nc.peer, local: nc.local, core: self.idx, listener_id: nc.listener_id };
        let handler = match std::panic::catch_unwind(AssertUnwindSafe(|| make(&info))) {
            Ok(Some(h)) => h,
            made => {
                self.ctx.stats.refused_handler += 1;
                self.ctx.rx_pool.release(rx);
                self.ctx.limits.admission().release(established);
                if made.is_err() {
                    limited!(
                        self.ctx.limits.log,
                        now_ms,
                        error,
                        "core {}: handler factory panicked; connection from {} refused",
                        self.idx,
                        nc.peer
                    );
                }
                return;
            }
        };
        let id = self.next_conn_id;
        self.next_conn_id += 1;
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.conns.push(None);
                (self.conns.len() - 1) as u32
            }
        };
        let admission = self.ctx.limits.on_register(slot, id, self.ctx.clock.now_us, established);
        let c = self.conns[slot as usize].insert(Conn::new(id, nc.fd, info, handler, rx, admission, nc.tls));
        self.ctx.stats.connections += 1;
        self.ctx.stats.connections_total += 1;
        self.shared.live.store(self.ctx.stats.connections, Ordering::Relaxed);
        let f = c.call(&mut self.ctx, slot, |h, io| h.on_tick(io));
        c.apply(&mut self.ctx, slot, f);
        Self::mark(&mut self.dirty, c, slot);
    }

    fn force_close_all(&mut self) {
        for (slot, c) in self.conns.iter_mut().enumerate() {
            let Some(c) = c else { continue };
            if c.live() {
                c.hard_close(&mut self.ctx, slot as u32, CloseReason::Shutdown);
            }
            Self::mark(&mut self.dirty, c, slot as u32);
        }
    }
}
