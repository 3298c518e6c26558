//! Controller state shared by the queues of one controller.
//!
//! A controller's admin queue and I/O queues are separate TCP connections that
//! may live on different cores, so what they share is here, behind atomics and
//! `Mutex`es that are only touched on the control path (Connect, admin
//! commands, ticks): never per I/O. Controller registers (CC, CSTS), keep-alive
//! and the held AERs live in the admin queue's own state instead.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nvmf_proto::opcodes::aen;

use crate::subsys::Subsystem;

/// What a controller serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtrlKind {
    Io,
    Discovery,
}

/// Per-queue counters, written only by the queue's own core (plain relaxed
/// load + store, no read-modify-write) and summed for SMART on request.
#[derive(Default, Debug)]
pub struct QueueCounters {
    pub read_cmds: AtomicU64,
    pub write_cmds: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
    /// Histograms, errors, digest errors (management metrics).
    pub io: IoStats,
    /// Per-namespace counts: the first [`NS_COUNTERS_MAX`] NSIDs this queue
    /// sees get a slot each (claimed by the owning core, never released).
    pub per_ns: [NsCounters; NS_COUNTERS_MAX],
    /// Commands to namespaces beyond those slots: (reads, writes, read bytes, written bytes).
    pub per_ns_other: NsCounters,
}

/// Namespaces counted separately per queue (more are summed as "other").
pub const NS_COUNTERS_MAX: usize = 16;

/// Read/write counts of one namespace on one queue (nsid 0: slot unused).
#[derive(Default, Debug)]
pub struct NsCounters {
    pub nsid: AtomicU32,
    pub read_cmds: AtomicU64,
    pub write_cmds: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
}

impl NsCounters {
    fn load(&self) -> [u64; 4] {
        [&self.read_cmds, &self.write_cmds, &self.read_bytes, &self.write_bytes].map(|a| a.load(Ordering::Relaxed))
    }
}

impl QueueCounters {
    #[inline]
    pub fn bump(c: &AtomicU64, by: u64) {
        c.store(c.load(Ordering::Relaxed).wrapping_add(by), Ordering::Relaxed);
    }

    /// Count a completed read or write of `bytes` on namespace `nsid` (owning core only).
    #[inline]
    pub fn count_ns(&self, nsid: u32, write: bool, bytes: u64) {
        let mut slot = &self.per_ns_other;
        for c in &self.per_ns {
            let n = c.nsid.load(Ordering::Relaxed);
            if n == nsid {
                slot = c;
                break;
            }
            if n == 0 {
                c.nsid.store(nsid, Ordering::Relaxed);
                slot = c;
                break;
            }
        }
        if write {
            Self::bump(&slot.write_cmds, 1);
            Self::bump(&slot.write_bytes, bytes);
        } else {
            Self::bump(&slot.read_cmds, 1);
            Self::bump(&slot.read_bytes, bytes);
        }
    }
}

/// Latency histogram buckets: bucket 0 holds < 1 µs, bucket k (1..) holds
/// [2^(k-1), 2^k) µs, the last one everything from 2^(N-2) µs (~4.2 s) up.
pub const LATENCY_BUCKETS: usize = 24;

/// A log2 latency histogram in µs, written by one core only (relaxed load +
/// store), read by metrics scrapes.
#[derive(Default, Debug)]
pub struct LatencyHistogram {
    pub buckets: [AtomicU64; LATENCY_BUCKETS],
    pub sum_us: AtomicU64,
}

impl LatencyHistogram {
    #[inline]
    pub fn record(&self, us: u64) {
        let k = ((u64::BITS - us.leading_zeros()) as usize).min(LATENCY_BUCKETS - 1);
        QueueCounters::bump(&self.buckets[k], 1);
        QueueCounters::bump(&self.sum_us, us);
    }
    /// Add this histogram into `into` (bucket counts, sum).
    pub fn add_to(&self, into: &mut ([u64; LATENCY_BUCKETS], u64)) {
        for (a, b) in into.0.iter_mut().zip(&self.buckets) {
            *a += b.load(Ordering::Relaxed);
        }
        into.1 += self.sum_us.load(Ordering::Relaxed);
    }
}

/// Error statuses counted by kind (index into [`IoStats::errors`]).
pub const ERROR_KINDS: &[(&str, u8, u8)] = &[
    ("invalid_opcode", 0, 0x01),
    ("invalid_field", 0, 0x02),
    ("data_transfer_error", 0, 0x04),
    ("internal_error", 0, 0x06),
    ("invalid_namespace", 0, 0x0b),
    ("transient_transport_error", 0, 0x22),
    ("lba_out_of_range", 0, 0x80),
    ("write_fault", 2, 0x80),
    ("unrecovered_read_error", 2, 0x81),
    ("compare_failure", 2, 0x85),
    ("ana_inaccessible", 3, 0x02),
];

/// Data-path statistics of one I/O queue beyond [`QueueCounters`]: latency
/// histograms (total time and backend time, reads and writes), completions
/// with an error status by kind, and data digest errors. Same ownership rule:
/// written by the queue's own core only.
#[derive(Default, Debug)]
pub struct IoStats {
    /// [read, write] × total time (command received → response queued).
    pub total: [LatencyHistogram; 2],
    /// [read, write] × backend time (storage op submitted → completed).
    pub backend: [LatencyHistogram; 2],
    /// One per [`ERROR_KINDS`] entry, then one for every other error status.
    pub errors: [AtomicU64; 12],
    pub digest_errors: AtomicU64,
}

/// A plain sum of [`IoStats`] (scrapes, and queues that closed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoStatsSnapshot {
    /// [read, write] (bucket counts, sum in µs).
    pub total: [([u64; LATENCY_BUCKETS], u64); 2],
    pub backend: [([u64; LATENCY_BUCKETS], u64); 2],
    pub errors: [u64; 12],
    pub digest_errors: u64,
    /// (nsid, [reads, writes, read bytes, written bytes]); nsid 0 = unused.
    pub per_ns: [(u32, [u64; 4]); NS_COUNTERS_MAX],
    /// Namespaces that did not fit in `per_ns`.
    pub per_ns_other: [u64; 4],
}

impl IoStatsSnapshot {
    /// Add one namespace's counts (by NSID).
    pub fn add_ns(&mut self, nsid: u32, v: [u64; 4]) {
        if nsid == 0 {
            return;
        }
        let target = match self.per_ns.iter().position(|(n, _)| *n == nsid || *n == 0) {
            Some(i) => {
                self.per_ns[i].0 = nsid;
                &mut self.per_ns[i].1
            }
            None => &mut self.per_ns_other,
        };
        for (a, b) in target.iter_mut().zip(v) {
            *a += b;
        }
    }
    /// Add the per-namespace counts of one queue.
    pub fn add_queue_ns(&mut self, q: &QueueCounters) {
        for c in &q.per_ns {
            self.add_ns(c.nsid.load(Ordering::Relaxed), c.load());
        }
        for (a, b) in self.per_ns_other.iter_mut().zip(q.per_ns_other.load()) {
            *a += b;
        }
    }
    pub fn add(&mut self, s: &IoStats) {
        for k in 0..2 {
            s.total[k].add_to(&mut self.total[k]);
            s.backend[k].add_to(&mut self.backend[k]);
        }
        for (a, b) in self.errors.iter_mut().zip(&s.errors) {
            *a += b.load(Ordering::Relaxed);
        }
        self.digest_errors += s.digest_errors.load(Ordering::Relaxed);
    }
    pub fn merge(&mut self, o: &IoStatsSnapshot) {
        for k in 0..2 {
            for (h, oh) in [(&mut self.total[k], &o.total[k]), (&mut self.backend[k], &o.backend[k])] {
                for (a, b) in h.0.iter_mut().zip(&oh.0) {
                    *a += b;
                }
                h.1 += oh.1;
            }
        }
        for (a, b) in self.errors.iter_mut().zip(&o.errors) {
            *a += b;
        }
        self.digest_errors += o.digest_errors;
        for (n, v) in o.per_ns {
            self.add_ns(n, v);
        }
        for (a, b) in self.per_ns_other.iter_mut().zip(o.per_ns_other) {
            *a += b;
        }
    }
}

impl IoStats {
    #[inline]
    pub fn count_error(&self, sct: u8, sc: u8) {
        let k = ERROR_KINDS.iter().position(|(_, t, c)| *t == sct && *c == sc).unwrap_or(ERROR_KINDS.len());
        debug_assert!(k < self.errors.len());
        QueueCounters::bump(&self.errors[k], 1);
    }
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
    dead: AtomicBool,
    events: Mutex<Events>,
    events_flag: AtomicBool,
    queue_counters: Mutex<Vec<Arc<QueueCounters>>>,
    /// (queue ID, host address) of each connected queue, for management.
    peers: Mutex<Vec<(u16, std::net::SocketAddr)>>,
    /// Keep Alive Timeout in ms (0 = off); admin queue owns the timer.
    pub kato_ms: AtomicU32,
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
            dead: AtomicBool::new(false),
            events: Mutex::new(Events::default()),
            events_flag: AtomicBool::new(false),
            queue_counters: Mutex::new(Vec::new()),
            peers: Mutex::new(Vec::new()),
            kato_ms: AtomicU32::new(0),
        }
    }

    pub fn nqn(&self) -> &str {
        match &self.subsys {
            Some(s) => &s.nqn,
            None => nvmf_proto::DISCOVERY_NQN,
        }
    }

    /// Mark the controller dead: its queues close on their next tick.
    pub fn kill(&self, why: &str) {
        if !self.dead.swap(true, Ordering::AcqRel) {
            tracing::info!("ctrl {} ({}) torn down: {why}", self.cntlid, self.nqn());
        }
    }
    /// Mark dead without a log line (normal disconnect, logged by the caller).
    pub fn mark_dead(&self) {
        self.dead.store(true, Ordering::Release);
    }
    #[inline]
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
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
                Ok(())
            }
        }
    }
    pub fn release_qid(&self, qid: u16) {
        if let Some(s) = self.io_qids.lock().unwrap().get_mut(qid as usize) {
            *s = false;
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

    /// Cheap check for the admin queue's tick.
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
