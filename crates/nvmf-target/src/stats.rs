//! Data-path statistics of I/O queues: command and byte counters, latency
//! histograms and error counts. Each [`QueueCounters`] is written by the core
//! that owns its queue only (plain relaxed load and store, no read-modify-write
//! and no lock per I/O) and summed by management scrapes and SMART.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

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

/// Latency histogram index of an I/O opcode: 0 read, 1 write, None for others.
#[inline]
pub fn latency_index(opcode: u8) -> Option<usize> {
    match opcode {
        nvmf_proto::opcodes::io::READ => Some(0),
        nvmf_proto::opcodes::io::WRITE => Some(1),
        _ => None,
    }
}

impl QueueCounters {
    /// A completed read of `bytes` from namespace `nsid` (owning core only).
    #[inline]
    pub fn count_read(&self, nsid: u32, bytes: u64) {
        Self::bump(&self.read_cmds, 1);
        Self::bump(&self.read_bytes, bytes);
        self.count_ns(nsid, false, bytes);
    }
    /// A completed write of `bytes` to namespace `nsid` (owning core only).
    #[inline]
    pub fn count_write(&self, nsid: u32, bytes: u64) {
        Self::bump(&self.write_cmds, 1);
        Self::bump(&self.write_bytes, bytes);
        self.count_ns(nsid, true, bytes);
    }

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
