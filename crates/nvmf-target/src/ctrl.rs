//! Controller state shared by the queues of one controller.
//!
//! A controller's admin queue and I/O queues are separate TCP connections that
//! may live on different cores, so what they share is here, behind atomics and
//! `Mutex`es that are only touched on the control path (Connect, admin
//! commands, events): never per I/O, except one relaxed load of the
//! [`Controller::gate`] word per I/O command. Controller registers (CC, CSTS),
//! keep-alive and the held AERs live in the admin queue's own state instead.
//!
//! ## Lifecycle (NVMe Base 3.x "Controller Initialization / Reset / Shutdown")
//!
//! The gate word holds the controller state and a reset epoch:
//! - CC.EN 0→1 opens it ([`CtrlState::Enabled`]): I/O queues may connect and
//!   run commands.
//! - CC.EN 1→0 closes it and bumps the epoch; every I/O queue is woken, sees
//!   its epoch is stale, ends its commands (those waiting for data are
//!   aborted, storage operations in flight finish) and closes. CSTS.RDY stays
//!   1 until the last I/O queue has released its queue ID, so a host that saw
//!   RDY go to 0 knows the old controller does no more I/O.
//! - CC.SHN moves it to [`CtrlState::ShuttingDown`] (I/O refused) while the
//!   admin queue flushes every namespace, then [`CtrlState::ShutDown`] with
//!   CSTS.SHST complete.
//! - Keep-alive expiry, an admin queue that closes and management removing
//!   the subsystem kill it: dead is final and every queue is woken to close.
//!
//! Queues register a [`QueueWaker`] when they connect; a change of state, a
//! kill or a new asynchronous event wakes them on their own cores.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nvmf_proto::opcodes::aen;

use crate::stats::{IoStatsSnapshot, QueueCounters};
use crate::subsys::{NsTable, Subsystem};

/// Wakes one queue on the core that owns it (the driver implements it with the
/// engine's connection waker). Must be cheap and never block.
pub trait QueueWaker: Send + Sync {
    fn wake(&self);
}

/// Controller state carried in the low bits of [`Controller::gate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum CtrlState {
    /// CC.EN = 0 (after Connect, or after a reset).
    Disabled = 0,
    Enabled = 1,
    /// CC.SHN written: flushing; I/O refused.
    ShuttingDown = 2,
    /// Shutdown complete (CSTS.SHST = 10b); I/O refused until a reset.
    ShutDown = 3,
}

const GATE_STATE_BITS: u32 = 2;
const GATE_STATE_MASK: u64 = (1 << GATE_STATE_BITS) - 1;

/// The gate word an I/O queue of `epoch` expects when it may run commands.
pub const fn gate_open(epoch: u64) -> u64 {
    (epoch << GATE_STATE_BITS) | CtrlState::Enabled as u64
}

/// What a controller serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtrlKind {
    Io,
    Discovery,
}

/// Pending asynchronous events and the Changed Namespace List.
#[derive(Default)]
struct Events {
    /// Async Event Configuration (feature 0x0B) bits.
    config: u32,
    /// Completion DW0 values waiting for an AER.
    pending: VecDeque<u32>,
    /// Log pages whose event was reported and not yet read (events of the
    /// same kind are masked until then, as the spec requires).
    masked_lids: u32,
    changed_nsids: Vec<u32>,
}

/// Bound on undelivered events per controller.
const EVENTS_PENDING_MAX: usize = 64;
/// Bound on the changed-namespace list before it collapses to "all".
const CHANGED_NS_MAX: usize = 1024;

/// Shared state of one controller.
pub struct Controller {
    pub cntlid: u16,
    pub kind: CtrlKind,
    /// `None` for discovery controllers.
    pub subsys: Option<Arc<Subsystem>>,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    pub port_id: u16,
    /// I/O queues the host may create (Set Features Number of Queues).
    pub io_queues_granted: AtomicU32,
    /// Upper bound for io_queues_granted.
    pub io_queues_max: u32,
    /// Connected I/O queue IDs (index = qid).
    io_qids: Mutex<Vec<bool>>,
    /// `(reset epoch << 2) | CtrlState`: one relaxed load per I/O command.
    gate: AtomicU64,
    /// Connected I/O queues (equals the `true` entries of `io_qids`); read by
    /// CSTS while a reset tears them down.
    io_queues_live: AtomicU32,
    /// Wakers of the connected queues (qid 0: the admin queue).
    wakers: Mutex<Vec<(u16, Arc<dyn QueueWaker>)>>,
    dead: AtomicBool,
    events: Mutex<Events>,
    events_flag: AtomicBool,
    queue_counters: Mutex<Vec<Arc<QueueCounters>>>,
    /// (queue ID, host address) of each connected queue, for management.
    peers: Mutex<Vec<(u16, std::net::SocketAddr)>>,
    /// Keep Alive Timeout in ms (0 = off); admin queue owns the timer.
    pub kato_ms: AtomicU32,
    /// This controller's namespace view and the subsystem namespace
    /// generation it was made at, shared by its queues (built once per
    /// change, not once per queue).
    ns_view: Mutex<Option<(u64, Arc<NsTable>)>>,
}

impl Controller {
    pub fn new(
        cntlid: u16,
        kind: CtrlKind,
        subsys: Option<Arc<Subsystem>>,
        hostnqn: &str,
        hostid: [u8; 16],
        port_id: u16,
        io_queues_max: u32,
    ) -> Controller {
        Controller {
            cntlid,
            kind,
            subsys,
            hostnqn: hostnqn.to_string(),
            hostid,
            port_id,
            io_queues_granted: AtomicU32::new(io_queues_max),
            io_queues_max,
            io_qids: Mutex::new(vec![false; io_queues_max as usize + 1]),
            gate: AtomicU64::new(CtrlState::Disabled as u64),
            io_queues_live: AtomicU32::new(0),
            wakers: Mutex::new(Vec::new()),
            dead: AtomicBool::new(false),
            events: Mutex::new(Events::default()),
            events_flag: AtomicBool::new(false),
            queue_counters: Mutex::new(Vec::new()),
            peers: Mutex::new(Vec::new()),
            kato_ms: AtomicU32::new(0),
            ns_view: Mutex::new(None),
        }
    }

    pub fn nqn(&self) -> &str {
        match &self.subsys {
            Some(s) => &s.nqn,
            None => nvmf_proto::DISCOVERY_NQN,
        }
    }

    /// The namespaces this controller serves: its subsystem's, less those
    /// masked from its host ([`crate::subsys::Namespace::visible_to`]). Every
    /// queue takes its namespace snapshot from here (at Connect, and when the
    /// subsystem's namespace generation moves), so Identify, log pages, I/O
    /// and flushes all see the same view. Control path: a lock, no I/O.
    pub fn namespaces(&self) -> Arc<NsTable> {
        let Some(s) = &self.subsys else { return Arc::new(NsTable::default()) };
        // Generation first: the table read after it is at least that new.
        let gen = s.ns_generation.load(Ordering::Acquire);
        let mut v = self.ns_view.lock().unwrap();
        if let Some((g, view)) = &*v {
            if *g == gen {
                return view.clone();
            }
        }
        let view = s.namespaces_for(&self.hostnqn);
        debug_assert!(view.list.iter().all(|n| n.visible_to(&self.hostnqn)));
        *v = Some((gen, view.clone()));
        view
    }

    /// Mark the controller dead and wake its queues, which then close.
    pub fn kill(&self, why: &str) {
        if !self.dead.swap(true, Ordering::AcqRel) {
            tracing::info!("ctrl {} ({}) torn down: {why}", self.cntlid, self.nqn());
        }
        self.close_gate();
        self.wake_all();
    }
    /// Mark dead without a log line (normal disconnect, logged by the caller)
    /// and wake the queues.
    pub fn mark_dead(&self) {
        self.dead.store(true, Ordering::Release);
        self.close_gate();
        self.wake_all();
    }
    /// A dead controller runs no further I/O: the gate moves to a new epoch,
    /// so a command that reaches an I/O queue before its wake-up does is
    /// refused too.
    fn close_gate(&self) {
        let epoch = self.epoch() + 1;
        self.gate.store((epoch << GATE_STATE_BITS) | CtrlState::Disabled as u64, Ordering::Release);
    }
    #[inline]
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
    }

    // ------------------------------------------------------------ lifecycle

    /// The gate word (see the module docs). Compared per I/O command with the
    /// value the queue cached at Connect ([`gate_open`] of its epoch).
    #[inline]
    pub fn gate(&self) -> u64 {
        self.gate.load(Ordering::Relaxed)
    }
    pub fn state(&self) -> CtrlState {
        match self.gate() & GATE_STATE_MASK {
            0 => CtrlState::Disabled,
            1 => CtrlState::Enabled,
            2 => CtrlState::ShuttingDown,
            _ => CtrlState::ShutDown,
        }
    }
    pub fn epoch(&self) -> u64 {
        self.gate() >> GATE_STATE_BITS
    }
    /// Change the state (the admin queue, on CC writes). Leaving `Enabled`
    /// for `Disabled` is a reset: the epoch moves on, so every I/O queue of
    /// the old epoch tears itself down when woken.
    pub fn set_state(&self, to: CtrlState) {
        let old = self.gate();
        let mut epoch = old >> GATE_STATE_BITS;
        if to == CtrlState::Disabled && old & GATE_STATE_MASK != CtrlState::Disabled as u64 {
            epoch += 1;
        }
        self.gate.store((epoch << GATE_STATE_BITS) | to as u64, Ordering::Release);
        debug_assert_eq!(self.state(), to);
        self.wake_io_queues();
    }
    /// I/O queues still connected (a reset is complete when this is 0).
    pub fn io_queues_live(&self) -> u32 {
        self.io_queues_live.load(Ordering::Acquire)
    }

    /// Register the waker of queue `qid` (replacing an older one of that qid).
    pub fn set_waker(&self, qid: u16, w: Arc<dyn QueueWaker>) {
        let mut l = self.wakers.lock().unwrap();
        l.retain(|(q, _)| *q != qid);
        l.push((qid, w));
        drop(l);
        // A kill or reset that raced with the Connect is not missed.
        if self.is_dead() {
            self.wake_all();
        }
    }
    pub fn clear_waker(&self, qid: u16) {
        self.wakers.lock().unwrap().retain(|(q, _)| *q != qid);
    }
    fn wake_where(&self, pick: impl Fn(u16) -> bool) {
        let targets: Vec<Arc<dyn QueueWaker>> =
            self.wakers.lock().unwrap().iter().filter(|(q, _)| pick(*q)).map(|(_, w)| w.clone()).collect();
        for w in targets {
            w.wake();
        }
    }
    pub fn wake_all(&self) {
        self.wake_where(|_| true);
    }
    pub fn wake_io_queues(&self) {
        self.wake_where(|q| q != 0);
    }
    pub fn wake_admin(&self) {
        self.wake_where(|q| q == 0);
    }

    /// Claim an I/O queue ID. Err(true): out of range; Err(false): already connected.
    pub fn claim_qid(&self, qid: u16) -> Result<(), bool> {
        let granted = self.io_queues_granted.load(Ordering::Relaxed);
        if qid == 0 || qid as u32 > granted {
            return Err(true);
        }
        let mut q = self.io_qids.lock().unwrap();
        match q.get_mut(qid as usize) {
            None => Err(true),
            Some(true) => Err(false),
            Some(slot) => {
                *slot = true;
                self.io_queues_live.fetch_add(1, Ordering::AcqRel);
                Ok(())
            }
        }
    }
    pub fn release_qid(&self, qid: u16) {
        let released = match self.io_qids.lock().unwrap().get_mut(qid as usize) {
            Some(s) if *s => {
                *s = false;
                true
            }
            _ => false,
        };
        if released {
            let before = self.io_queues_live.fetch_sub(1, Ordering::AcqRel);
            assert!(before > 0, "io_queues_live underflow");
            if before == 1 {
                // A reset waits for this in CSTS.RDY: let the admin queue look.
                self.wake_admin();
            }
        }
    }
    pub fn connected_io_queues(&self) -> usize {
        self.io_qids.lock().unwrap().iter().filter(|x| **x).count()
    }

    /// A queue connected (`qid`) from `peer` / closed.
    pub fn add_peer(&self, qid: u16, peer: std::net::SocketAddr) {
        self.peers.lock().unwrap().push((qid, peer));
    }
    pub fn remove_peer(&self, qid: u16) {
        self.peers.lock().unwrap().retain(|(q, _)| *q != qid);
    }
    pub fn peers(&self) -> Vec<(u16, std::net::SocketAddr)> {
        self.peers.lock().unwrap().clone()
    }

    pub fn register_counters(&self, c: Arc<QueueCounters>) {
        self.queue_counters.lock().unwrap().push(c);
    }
    pub fn unregister_counters(&self, c: &Arc<QueueCounters>) {
        // Fold the queue's counts into its subsystem's retired totals so that
        // metrics never go backwards (lock order: retired_io, queue_counters).
        let mut retired = self.subsys.as_ref().map(|s| s.retired_io.lock().unwrap());
        let mut l = self.queue_counters.lock().unwrap();
        if let (Some(r), Some(_)) = (retired.as_deref_mut(), l.iter().position(|x| Arc::ptr_eq(x, c))) {
            r.read_cmds += c.read_cmds.load(Ordering::Relaxed);
            r.write_cmds += c.write_cmds.load(Ordering::Relaxed);
            r.read_bytes += c.read_bytes.load(Ordering::Relaxed);
            r.write_bytes += c.write_bytes.load(Ordering::Relaxed);
            r.stats.add(&c.io);
            r.stats.add_queue_ns(c);
        }
        l.retain(|x| !Arc::ptr_eq(x, c));
    }
    /// Histograms, errors and digest errors summed over the live I/O queues.
    pub fn io_stats(&self) -> IoStatsSnapshot {
        let mut t = IoStatsSnapshot::default();
        for c in self.queue_counters.lock().unwrap().iter() {
            t.add(&c.io);
            t.add_queue_ns(c);
        }
        t
    }
    /// (read commands, write commands, read bytes, written bytes) over all queues.
    pub fn io_totals(&self) -> (u64, u64, u64, u64) {
        let l = self.queue_counters.lock().unwrap();
        l.iter().fold((0, 0, 0, 0), |a, c| {
            (
                a.0 + c.read_cmds.load(Ordering::Relaxed),
                a.1 + c.write_cmds.load(Ordering::Relaxed),
                a.2 + c.read_bytes.load(Ordering::Relaxed),
                a.3 + c.write_bytes.load(Ordering::Relaxed),
            )
        })
    }

    // ------------------------------------------------------------ events

    pub fn set_event_config(&self, v: u32) {
        self.events.lock().unwrap().config = v;
    }
    pub fn event_config(&self) -> u32 {
        self.events.lock().unwrap().config
    }

    /// Queue an event if the host enabled `cfg_bit` and the same log page is
    /// not masked. `dw0` carries the log page in bits 23:16.
    pub fn raise_event(&self, cfg_bit: u32, dw0: u32) {
        let lid = (dw0 >> 16) & 0xff;
        let mut e = self.events.lock().unwrap();
        if e.config & cfg_bit == 0 || e.pending.len() >= EVENTS_PENDING_MAX {
            return;
        }
        let bit = lid_mask_bit(lid);
        if e.masked_lids & bit != 0 {
            return;
        }
        e.masked_lids |= bit;
        e.pending.push_back(dw0);
        self.events_flag.store(true, Ordering::Release);
        drop(e);
        self.wake_admin();
    }

    /// A namespace of this controller's subsystem changed.
    pub fn namespace_changed(&self, nsid: u32) {
        {
            let mut e = self.events.lock().unwrap();
            if e.changed_nsids.len() < CHANGED_NS_MAX + 1 && !e.changed_nsids.contains(&nsid) {
                e.changed_nsids.push(nsid);
            }
        }
        self.raise_event(aen::CFG_NS_ATTR, aen::dw0(aen::TYPE_NOTICE, aen::NOTICE_NS_CHANGED, 0x04));
        self.raise_event(aen::CFG_ANA_CHANGE, aen::dw0(aen::TYPE_NOTICE, aen::NOTICE_ANA_CHANGE, 0x0c));
    }

    /// Cheap check for the admin queue.
    #[inline]
    pub fn has_events(&self) -> bool {
        self.events_flag.load(Ordering::Acquire)
    }
    pub fn pop_event(&self) -> Option<u32> {
        let mut e = self.events.lock().unwrap();
        let v = e.pending.pop_front();
        if e.pending.is_empty() {
            self.events_flag.store(false, Ordering::Release);
        }
        v
    }

    /// A log page was read: unmask its events (and, for the changed
    /// namespace list, return and clear it unless `retain`).
    pub fn log_page_read(&self, lid: u8, retain: bool) -> Vec<u32> {
        let mut e = self.events.lock().unwrap();
        let out = if lid == 0x04 { e.changed_nsids.clone() } else { Vec::new() };
        if !retain {
            e.masked_lids &= !lid_mask_bit(lid as u32);
            if lid == 0x04 {
                e.changed_nsids.clear();
            }
        }
        out
    }
}

fn lid_mask_bit(lid: u32) -> u32 {
    match lid {
        0x04 => 1 << 0,
        0x0c => 1 << 1,
        0x70 => 1 << 2,
        _ => 1 << 3,
    }
}
