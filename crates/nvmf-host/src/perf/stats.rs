//! Per-queue statistics (owned by the queue's core, never shared while the run
//! goes on), merged into one [`Summary`] at the end, printed as text or JSON.

use hdrhistogram::Histogram;

pub use super::latency::{self, Latency};
use serde_json::{json, Value};

/// Latencies are recorded in nanoseconds, 1 ns ..= 60 s, 3 significant digits.
pub const LATENCY_MAX_NS: u64 = 60_000_000_000;
/// Error messages kept per queue (the rest are only counted).
pub const ERROR_SAMPLES_MAX: usize = 8;

/// CPU time of one thread (`getrusage(RUSAGE_THREAD)`), microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTime {
    pub user_us: u64,
    pub system_us: u64,
}

impl CpuTime {
    /// CPU time used so far by the calling thread.
    pub fn thread_now() -> CpuTime {
        // SAFETY: getrusage fills the struct we pass; RUSAGE_THREAD is Linux-specific.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
        if rc != 0 {
            return CpuTime::default();
        }
        let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
        CpuTime { user_us: us(ru.ru_utime), system_us: us(ru.ru_stime) }
    }
    pub fn total_us(&self) -> u64 {
        self.user_us + self.system_us
    }
}

/// Monotonic nanoseconds (CLOCK_MONOTONIC), for latency and wall time.
#[inline]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we pass (vDSO, no syscall).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Where a thread's CPU and wall clock stood at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stamp {
    pub wall_ns: u64,
    pub cpu: CpuTime,
}

impl Stamp {
    pub fn now() -> Stamp {
        Stamp { wall_ns: monotonic_ns(), cpu: CpuTime::thread_now() }
    }
}

/// Everything one queue measured.
#[derive(Debug, Clone)]
pub struct QueueStats {
    pub queue: u32,
    /// Engine core index of the queue.
    pub core: usize,
    /// Latency of timed I/Os, nanoseconds: all, reads, writes.
    pub latency_ns: Histogram<u64>,
    pub read_latency_ns: Histogram<u64>,
    pub write_latency_ns: Histogram<u64>,
    pub reads: u64,
    pub writes: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    /// I/Os completed with an error status or lost with the connection.
    pub io_errors: u64,
    pub verify_errors: u64,
    /// Reads whose data was checked (all phases).
    pub verified_reads: u64,
    /// Prefill and readback I/Os (not in the latency or IOPS numbers).
    pub verify_phase_ios: u64,
    pub error_samples: Vec<String>,
    /// Timed phase start and end on the queue's core thread.
    pub main_start: Option<Stamp>,
    pub main_end: Option<Stamp>,
    /// The queue ran over TLS (its handshake finished).
    pub tls: bool,
    /// TLS KeyUpdates the queue started (`--tls-key-update-ms`).
    pub tls_key_updates: u64,
}

impl QueueStats {
    pub fn new(queue: u32, core: usize) -> QueueStats {
        QueueStats {
            queue,
            core,
            latency_ns: new_histogram(),
            read_latency_ns: new_histogram(),
            write_latency_ns: new_histogram(),
            reads: 0,
            writes: 0,
            read_bytes: 0,
            write_bytes: 0,
            io_errors: 0,
            verify_errors: 0,
            verified_reads: 0,
            verify_phase_ios: 0,
            error_samples: Vec::new(),
            main_start: None,
            main_end: None,
            tls: false,
            tls_key_updates: 0,
        }
    }

    /// One timed I/O finished (successfully or not) after `latency_ns`.
    #[inline]
    pub fn record(&mut self, is_read: bool, bytes: u64, latency_ns: u64) {
        // Saturate instead of failing: a > 60 s I/O is still counted.
        let ns = latency_ns.max(1);
        self.latency_ns.saturating_record(ns);
        if is_read {
            self.read_latency_ns.saturating_record(ns);
            self.reads += 1;
            self.read_bytes += bytes;
        } else {
            self.write_latency_ns.saturating_record(ns);
            self.writes += 1;
            self.write_bytes += bytes;
        }
    }

    pub fn io_error(&mut self, msg: impl FnOnce() -> String) {
        self.io_errors += 1;
        if self.error_samples.len() < ERROR_SAMPLES_MAX {
            self.error_samples.push(msg());
        }
    }

    pub fn verify_error(&mut self, msg: impl FnOnce() -> String) {
        self.verify_errors += 1;
        if self.error_samples.len() < ERROR_SAMPLES_MAX {
            self.error_samples.push(msg());
        }
    }
}

/// CPU use of one engine core over the timed phase.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CoreCpu {
    pub core: usize,
    /// CPU the thread was pinned to.
    pub cpu: Option<usize>,
    /// (user + system) / wall, in percent of one CPU.
    pub busy_percent: f64,
    pub user_percent: f64,
    pub system_percent: f64,
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3).expect("valid histogram bounds")
}

/// The merged result of a run.
#[derive(Debug, Clone)]
pub struct Summary {
    pub runtime_s: f64,
    pub reads: u64,
    pub writes: u64,
    pub iops: f64,
    pub mib_per_s: f64,
    pub read_mib_per_s: f64,
    pub write_mib_per_s: f64,
    pub latency_us: Latency,
    pub errors: u64,
    pub verify_errors: u64,
    pub verified_reads: u64,
    pub cores: Vec<CoreCpu>,
    pub error_samples: Vec<String>,
    /// KeyUpdates the queues started, when any queue ran over TLS.
    pub tls_key_updates: Option<u64>,
    /// The run was cut short by Ctrl-C (SIGINT): the figures are those of
    /// the run so far.
    pub interrupted: bool,
    /// Reads' and writes' latency histograms (ns), merged over the queues.
    pub read_latency_ns: Histogram<u64>,
    pub write_latency_ns: Histogram<u64>,
    /// Report the histograms too (`--latency-histogram`), not only percentiles.
    pub show_histogram: bool,
}

impl Summary {
    /// Merge queue results. `pinned[i]` is the CPU of engine core `i`.
    pub fn merge(queues: &[QueueStats], pinned: &[usize]) -> Summary {
        let mut hist = new_histogram();
        let (mut read_hist, mut write_hist) = (new_histogram(), new_histogram());
        let (mut reads, mut writes, mut rb, mut wb, mut errors, mut verrs, mut vreads) = (0, 0, 0, 0, 0, 0, 0);
        let mut samples = Vec::new();
        let mut tls_key_updates: Option<u64> = None;
        // The timed window: from the first queue's start to the last queue's end.
        let mut start = u64::MAX;
        let mut end = 0u64;
        for q in queues {
            hist.add(&q.latency_ns).expect("same bounds");
            read_hist.add(&q.read_latency_ns).expect("same bounds");
            write_hist.add(&q.write_latency_ns).expect("same bounds");
            reads += q.reads;
            writes += q.writes;
            rb += q.read_bytes;
            wb += q.write_bytes;
            errors += q.io_errors;
            verrs += q.verify_errors;
            vreads += q.verified_reads;
            if q.tls {
                *tls_key_updates.get_or_insert(0) += q.tls_key_updates;
            }
            for s in &q.error_samples {
                if samples.len() < 4 * ERROR_SAMPLES_MAX {
                    samples.push(format!("I/O queue {}: {s}", q.queue + 1));
                }
            }
            if let (Some(s), Some(e)) = (q.main_start, q.main_end) {
                start = start.min(s.wall_ns);
                end = end.max(e.wall_ns);
            }
        }
        let runtime_s = if end > start { (end - start) as f64 / 1e9 } else { 0.0 };
        let per_s = |v: f64| if runtime_s > 0.0 { v / runtime_s } else { 0.0 };
        let ops = (reads + writes) as f64;
        let latency_us = Latency::of(&hist);
        Summary {
            runtime_s,
            reads,
            writes,
            iops: per_s(ops),
            mib_per_s: per_s((rb + wb) as f64 / 1048576.0),
            read_mib_per_s: per_s(rb as f64 / 1048576.0),
            write_mib_per_s: per_s(wb as f64 / 1048576.0),
            latency_us,
            errors,
            verify_errors: verrs,
            verified_reads: vreads,
            cores: core_cpu(queues, pinned),
            error_samples: samples,
            tls_key_updates,
            interrupted: false,
            read_latency_ns: read_hist,
            write_latency_ns: write_hist,
            show_histogram: false,
        }
    }

    pub fn to_json(&self, config: Value) -> Value {
        let l = &self.latency_us;
        let r2 = |v: f64| (v * 100.0).round() / 100.0;
        let mut v = json!({
            "iops": r2(self.iops),
            "mib_per_s": r2(self.mib_per_s),
            "read_mib_per_s": r2(self.read_mib_per_s),
            "write_mib_per_s": r2(self.write_mib_per_s),
            "errors": self.errors,
            "verify_errors": self.verify_errors,
            "verified_reads": self.verified_reads,
            "reads": self.reads,
            "writes": self.writes,
            "runtime_s": (self.runtime_s * 1000.0).round() / 1000.0,
            "latency_us": {
                "avg": r2(l.avg), "min": r2(l.min), "max": r2(l.max),
                "p50": r2(l.p50), "p90": r2(l.p90), "p99": r2(l.p99),
                "p99_9": r2(l.p99_9), "p99_99": r2(l.p99_99),
            },
            "cpu": self.cores.iter().map(|c| json!({
                "core": c.core, "cpu": c.cpu, "busy_percent": r2(c.busy_percent),
                "user_percent": r2(c.user_percent), "system_percent": r2(c.system_percent),
            })).collect::<Vec<_>>(),
            "error_samples": self.error_samples,
            "config": config,
        });
        if let Some(n) = self.tls_key_updates {
            v["tls_key_updates"] = json!(n);
        }
        if self.interrupted {
            v["interrupted"] = json!(true);
        }
        if !self.read_latency_ns.is_empty() {
            v["read_latency_us"] = Latency::of(&self.read_latency_ns).to_json();
        }
        if !self.write_latency_ns.is_empty() {
            v["write_latency_us"] = Latency::of(&self.write_latency_ns).to_json();
        }
        if self.show_histogram {
            v["latency_histogram"] = json!({
                "read": latency::buckets_json(&self.read_latency_ns),
                "write": latency::buckets_json(&self.write_latency_ns),
            });
        }
        v
    }

    /// Human-readable report (several lines, no trailing newline).
    pub fn to_text(&self, title: &str) -> String {
        let l = &self.latency_us;
        let mut s = format!(
            "{title}\n  runtime {:.2} s  reads {}  writes {}\n  IOPS {:.0}  {:.1} MiB/s (read {:.1}, write {:.1})\n  \
             latency us: avg {:.2}  min {:.2}  max {:.2}\n              p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  p99.99 {:.2}\n  \
             errors {}  verify errors {}  verified reads {}",
            self.runtime_s,
            self.reads,
            self.writes,
            self.iops,
            self.mib_per_s,
            self.read_mib_per_s,
            self.write_mib_per_s,
            l.avg,
            l.min,
            l.max,
            l.p50,
            l.p90,
            l.p99,
            l.p99_9,
            l.p99_99,
            self.errors,
            self.verify_errors,
            self.verified_reads
        );
        if let Some(n) = self.tls_key_updates {
            s.push_str(&format!("\n  TLS key updates {n}"));
        }
        // Reads and writes apart, when the run did both.
        if !self.read_latency_ns.is_empty() && !self.write_latency_ns.is_empty() {
            s.push_str(&format!("\n  {}", Latency::of(&self.read_latency_ns).to_text("read latency us")));
            s.push_str(&format!("\n  {}", Latency::of(&self.write_latency_ns).to_text("write latency us")));
        }
        if self.show_histogram {
            for (label, h) in [("read", &self.read_latency_ns), ("write", &self.write_latency_ns)] {
                if !h.is_empty() {
                    s.push_str(&format!("\n{}", latency::buckets_text(label, h)));
                }
            }
        }
        if self.interrupted {
            s.push_str("\n  interrupted (Ctrl-C): the figures are those of the run so far");
        }
        for c in &self.cores {
            let pin = c.cpu.map(|c| format!(" (cpu {c})")).unwrap_or_default();
            s.push_str(&format!(
                "\n  core {}{pin}: {:.0}% busy (user {:.0}%, system {:.0}%)",
                c.core, c.busy_percent, c.user_percent, c.system_percent
            ));
        }
        for e in &self.error_samples {
            s.push_str(&format!("\n  error: {e}"));
        }
        s
    }
}

/// Per core: the thread's CPU counter is cumulative, so its use over the timed
/// window is (latest end − earliest start) over the queues on that core.
fn core_cpu(queues: &[QueueStats], pinned: &[usize]) -> Vec<CoreCpu> {
    let mut cores: Vec<usize> = queues.iter().map(|q| q.core).collect();
    cores.sort_unstable();
    cores.dedup();
    cores
        .into_iter()
        .filter_map(|core| {
            let mut first: Option<Stamp> = None;
            let mut last: Option<Stamp> = None;
            for q in queues.iter().filter(|q| q.core == core) {
                if let (Some(s), Some(e)) = (q.main_start, q.main_end) {
                    if first.is_none_or(|f| s.wall_ns < f.wall_ns) {
                        first = Some(s);
                    }
                    if last.is_none_or(|l| e.wall_ns > l.wall_ns) {
                        last = Some(e);
                    }
                }
            }
            let (s, e) = (first?, last?);
            let wall_us = (e.wall_ns.saturating_sub(s.wall_ns)) as f64 / 1000.0;
            if wall_us <= 0.0 {
                return None;
            }
            let pct = |a: u64, b: u64| a.saturating_sub(b) as f64 * 100.0 / wall_us;
            Some(CoreCpu {
                core,
                cpu: pinned.get(core).copied(),
                busy_percent: pct(e.cpu.total_us(), s.cpu.total_us()),
                user_percent: pct(e.cpu.user_us, s.cpu.user_us),
                system_percent: pct(e.cpu.system_us, s.cpu.system_us),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(queue: u32, core: usize, lat: &[u64], start_ns: u64, end_ns: u64, cpu: (u64, u64)) -> QueueStats {
        let mut s = QueueStats::new(queue, core);
        for l in lat {
            s.record(true, 4096, *l);
        }
        s.main_start = Some(Stamp { wall_ns: start_ns, cpu: CpuTime { user_us: cpu.0, system_us: 0 } });
        s.main_end = Some(Stamp { wall_ns: end_ns, cpu: CpuTime { user_us: cpu.1, system_us: 0 } });
        s
    }

    #[test]
    fn merge_and_json_keys() {
        let a = q(0, 0, &[10_000, 20_000], 0, 2_000_000_000, (0, 1_000_000));
        let mut b = q(1, 0, &[30_000], 100, 1_000_000_000, (500, 600_000));
        b.verify_error(|| "lba 1: bad".into());
        let s = Summary::merge(&[a, b], &[3]);
        assert_eq!(s.reads, 3);
        assert!((s.runtime_s - 2.0).abs() < 1e-6);
        assert!((s.iops - 1.5).abs() < 1e-6);
        assert!((s.latency_us.avg - 20.0).abs() < 0.1);
        assert!((s.latency_us.max - 30.0).abs() < 0.1);
        assert_eq!(s.verify_errors, 1);
        assert_eq!(s.cores.len(), 1);
        assert_eq!(s.cores[0].cpu, Some(3));
        assert!((s.cores[0].busy_percent - 50.0).abs() < 0.01);
        let j = s.to_json(json!({"rw": "randread"}));
        for k in ["iops", "mib_per_s", "errors", "verify_errors", "reads", "writes", "runtime_s", "config"] {
            assert!(j.get(k).is_some(), "missing {k}");
        }
        for k in ["avg", "min", "max", "p50", "p90", "p99", "p99_9", "p99_99"] {
            assert!(j["latency_us"].get(k).is_some(), "missing latency_us.{k}");
        }
        assert!(s.to_text("x").contains("verify errors 1"));
        assert!(j.get("tls_key_updates").is_none(), "no TLS: no tls_key_updates");
    }

    #[test]
    fn tls_key_updates_summed_over_tls_queues() {
        let mut a = q(0, 0, &[10_000], 0, 1_000_000_000, (0, 1));
        let mut b = q(1, 0, &[10_000], 0, 1_000_000_000, (0, 1));
        (a.tls, a.tls_key_updates) = (true, 3);
        (b.tls, b.tls_key_updates) = (true, 0);
        let s = Summary::merge(&[a, b], &[]);
        assert_eq!(s.tls_key_updates, Some(3));
        assert_eq!(s.to_json(Value::Null)["tls_key_updates"], json!(3));
        assert!(s.to_text("x").contains("TLS key updates 3"));
    }

    #[test]
    fn empty_merge_is_zero_not_nan() {
        let s = Summary::merge(&[], &[]);
        assert_eq!(s.iops, 0.0);
        assert_eq!(s.latency_us, Latency::default());
        let j = s.to_json(Value::Null);
        assert_eq!(j["iops"], json!(0.0));
    }
}
