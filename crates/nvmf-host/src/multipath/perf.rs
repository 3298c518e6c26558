//! `nvmf perf --paths`: the perf workload (same generator, verify pattern and
//! statistics as [`crate::perf`]) over a [`MultipathDevice`], with per-path
//! counters and failover records in the result.
//!
//! One workload keeps `iodepth` I/Os in flight on the device; the device's
//! policy spreads them over the paths (one I/O queue per path). Every
//! completion is checked against the I/O it belongs to (slot and sequence
//! number in the tag): a completion that matches nothing in flight is
//! counted in [`MpPerfResult::double_completions`] (must stay 0).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nvmf_proto::opcodes::io as io_op;
use nvmf_proto::Sqe;
use serde_json::{json, Value};

use super::core::{Counters, FailoverRecord, IoResult};
use super::device::{MultipathDevice, PathInfo};
use crate::perf::stats::{monotonic_ns, QueueStats, Stamp, Summary};
use crate::perf::verify::{check_io, fill_io};
use crate::perf::workload::{IoSpec, Op, Phase, Workload};
use crate::perf::PerfConfig;
use crate::queue::Request;

/// Longest a run may wait with I/O in flight and nothing completing before
/// it is declared stuck (covers the write fence and reconnects many times over).
pub const STALL_TIMEOUT_MS: u64 = 120_000;

/// What a multipath perf run produced.
#[derive(Debug, Clone)]
pub struct MpPerfResult {
    pub summary: Summary,
    pub paths: Vec<PathInfo>,
    pub counters: Counters,
    pub failovers: Vec<FailoverRecord>,
    /// Completions that matched no I/O in flight (duplicates): must be 0.
    pub double_completions: u64,
    /// I/Os that failed for lack of a path (included in `summary.errors`).
    pub no_path_errors: u64,
}

fn percentile(v: &mut [u64], q: f64) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    Some(v[i])
}

impl MpPerfResult {
    /// Failover times (failure report to first success elsewhere), ms: (p50, max).
    pub fn failover_ms(&self) -> (Option<u64>, Option<u64>) {
        let mut v: Vec<u64> = self.failovers.iter().filter_map(|f| f.failover_ms()).collect();
        (percentile(&mut v, 0.5), v.iter().max().copied())
    }
    /// I/O pauses (last success before to first success after), ms: (p50, max).
    pub fn pause_ms(&self) -> (Option<u64>, Option<u64>) {
        let mut v: Vec<u64> = self.failovers.iter().filter_map(|f| f.pause_ms()).collect();
        (percentile(&mut v, 0.5), v.iter().max().copied())
    }

    pub fn paths_json(&self) -> Value {
        let (f50, fmax) = self.failover_ms();
        let (p50, pmax) = self.pause_ms();
        json!({
            "paths": self.paths.iter().map(|p| json!({
                "addr": p.addr.to_string(),
                "state": if p.health == super::PathHealth::Live { "live" } else { "down" },
                "ana": p.ana.name(),
                "cntlid": p.cntlid,
                "ios": p.counters.completed,
                "reads": p.counters.read_ios,
                "writes": p.counters.write_ios,
                "sent": p.counters.sent,
                "fate_unknown": p.counters.fate_unknown,
                "path_errors": p.counters.path_errors,
                "downs": p.counters.downs,
            })).collect::<Vec<_>>(),
            "retries": self.counters.retries,
            "fenced_writes": self.counters.fenced_writes,
            "path_switches": self.counters.path_switches,
            "stale_completions": self.counters.stale_completions,
            "double_completions": self.double_completions,
            "no_path_errors": self.no_path_errors,
            "failovers": self.failovers.len(),
            "failover_ms": { "p50": f50, "max": fmax },
            "io_pause_ms": { "p50": p50, "max": pmax },
        })
    }

    pub fn paths_text(&self) -> String {
        let mut s = String::from("paths:\n");
        for (i, p) in self.paths.iter().enumerate() {
            s += &format!(
                "  [{i}] {:<21} {:<5} ana={:<15} ios={:<10} reads={:<10} writes={:<10} fate_unknown={} path_errors={} downs={}\n",
                p.addr.to_string(),
                if p.health == super::PathHealth::Live { "live" } else { "down" },
                p.ana.name(),
                p.counters.completed,
                p.counters.read_ios,
                p.counters.write_ios,
                p.counters.fate_unknown,
                p.counters.path_errors,
                p.counters.downs,
            );
        }
        let (f50, fmax) = self.failover_ms();
        let (p50, pmax) = self.pause_ms();
        let ms = |v: Option<u64>| v.map(|v| format!("{v} ms")).unwrap_or_else(|| "-".into());
        s += &format!(
            "failovers={} failover p50={} max={}  io pause p50={} max={}  retries={} fenced_writes={} switches={} double_completions={}",
            self.failovers.len(),
            ms(f50),
            ms(fmax),
            ms(p50),
            ms(pmax),
            self.counters.retries,
            self.counters.fenced_writes,
            self.counters.path_switches,
            self.double_completions
        );
        s
    }
}

struct Slot {
    spec: IoSpec,
    seq: u32,
    start_ns: u64,
}

/// Run `cfg` (single workload: `io_queues` must be 1) on `dev` until done
/// or `stop` is set.
pub fn run(cfg: &PerfConfig, dev: &mut MultipathDevice, stop: &AtomicBool) -> Result<MpPerfResult, String> {
    cfg.validate()?;
    if cfg.io_queues != 1 {
        return Err("with --paths, one workload runs over one I/O queue per path: --nr-io-queues must be 1".into());
    }
    let geometry = cfg.geometry(dev.block_size() as u64, dev.nsze())?;
    let seed = if cfg.seed != 0 {
        cfg.seed
    } else {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    };
    let verify_seed = (seed ^ (seed >> 32)) as u32 | 1;
    let mut w = Workload::new(geometry, (0, geometry.units), cfg.rw, cfg.rwmixread, cfg.verify, seed);
    let depth = cfg.iodepth as usize;
    let unit_bytes = geometry.unit_bytes() as usize;
    let lba_bytes = geometry.lba_bytes as usize;
    let mut slots: Vec<Option<Slot>> = (0..depth).map(|_| None).collect();
    let mut free: Vec<usize> = (0..depth).rev().collect();
    let mut buffers: Vec<Vec<u8>> = (0..depth).map(|_| vec![0xa5u8; unit_bytes]).collect();
    let mut stats = QueueStats::new(0, 0);
    let mut seq = 0u32;
    let mut double_completions = 0u64;
    let mut no_path_errors = 0u64;
    let mut deadline_ns = u64::MAX;
    let mut last_progress = Instant::now();
    loop {
        let now_ns = monotonic_ns();
        if w.phase() == Phase::Main {
            if stats.main_start.is_none() {
                stats.main_start = Some(Stamp::now());
                deadline_ns = now_ns + cfg.runtime_s * 1_000_000_000;
            }
            if now_ns >= deadline_ns || stop.load(Ordering::Relaxed) {
                w.stop();
            }
        } else if w.phase() == Phase::Prefill && stop.load(Ordering::Relaxed) {
            w.stop();
        }
        while let Some(&slot) = free.last() {
            let Some(spec) = w.next_io() else { break };
            free.pop();
            let mut buf = buffers.pop().expect("one buffer per free slot");
            let req = match spec.op {
                Op::Read => Request::read(Sqe::rw(io_op::READ, 0, dev.nsid(), spec.slba, spec.nlb), buf),
                Op::Write => {
                    if cfg.verify {
                        fill_io(&mut buf, lba_bytes, verify_seed, spec.slba, spec.generation);
                    }
                    Request::write(Sqe::rw(io_op::WRITE, 0, dev.nsid(), spec.slba, spec.nlb), buf)
                }
            };
            seq = seq.wrapping_add(1);
            let tag = (slot as u64) | (seq as u64) << 32;
            match dev.submit(tag, req) {
                Ok(()) => slots[slot] = Some(Slot { spec, seq, start_ns: now_ns }),
                Err(req) => {
                    buffers.push(req.buf);
                    free.push(slot);
                    stats.io_error(|| "multipath queue full".into());
                    w.complete(&spec, false);
                    break;
                }
            }
        }
        if w.is_done() && free.len() == depth {
            break;
        }
        let Some(c) = dev.poll(Some(Instant::now() + Duration::from_millis(100))) else {
            if last_progress.elapsed() > Duration::from_millis(STALL_TIMEOUT_MS) {
                return Err(format!("no completion for {STALL_TIMEOUT_MS} ms with I/O in flight"));
            }
            continue;
        };
        last_progress = Instant::now();
        let now_ns = monotonic_ns();
        let slot = (c.tag & 0xffff_ffff) as usize;
        let cseq = (c.tag >> 32) as u32;
        let Some(s) = slots.get_mut(slot).filter(|s| s.as_ref().is_some_and(|s| s.seq == cseq)).and_then(Option::take)
        else {
            double_completions += 1;
            continue;
        };
        let ok = c.is_success();
        let spec = s.spec;
        if spec.phase == Phase::Main {
            stats.record(spec.op == Op::Read, c.buf.len() as u64, now_ns.saturating_sub(s.start_ns));
        } else {
            stats.verify_phase_ios += 1;
        }
        if !ok {
            if c.result == IoResult::NoPath {
                no_path_errors += 1;
            }
            let what = if spec.op == Op::Read { "read" } else { "write" };
            stats.io_error(|| format!("{what} lba {} failed: {:?}", spec.slba, c.result));
        } else if spec.must_check() {
            stats.verified_reads += 1;
            if let Err(e) = check_io(&c.buf, lba_bytes, verify_seed, spec.slba, spec.generation) {
                stats.verify_error(|| e.to_string());
            }
        }
        let mut buf = c.buf;
        buf.resize(unit_bytes, 0);
        buffers.push(buf);
        free.push(slot);
        let was_main = w.phase() == Phase::Main;
        w.complete(&spec, ok);
        if was_main && w.phase() != Phase::Main {
            stats.main_end = Some(Stamp::now());
        }
    }
    if stats.main_start.is_some() && stats.main_end.is_none() {
        stats.main_end = Some(Stamp::now());
    }
    Ok(MpPerfResult {
        summary: Summary::merge(&[stats], &[]),
        paths: dev.paths(),
        counters: dev.counters(),
        failovers: dev.failovers().to_vec(),
        double_completions,
        no_path_errors,
    })
}

/// How `nvmf perf --paths` reaches the namespace.
#[derive(Debug, Clone)]
pub struct PathsSetup {
    pub paths: Vec<std::net::SocketAddr>,
    pub subnqn: String,
    /// `None`: the host library's default (/etc/nvme/hostnqn...).
    pub hostnqn: Option<String>,
    pub policy: super::IoPolicy,
}

/// Parse `--paths`: comma-separated `ADDR:PORT` (IPv6 as `[ADDR]:PORT`).
pub fn parse_paths(s: &str) -> Result<Vec<std::net::SocketAddr>, String> {
    use std::net::ToSocketAddrs;
    let mut v = Vec::new();
    for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let a = p
            .to_socket_addrs()
            .map_err(|e| format!("--paths {p:?}: {e} (expected ADDR:PORT)"))?
            .next()
            .ok_or_else(|| format!("--paths {p:?} resolves to nothing"))?;
        if v.contains(&a) {
            return Err(format!("--paths lists {a} twice"));
        }
        v.push(a);
    }
    if v.is_empty() {
        return Err("--paths needs at least one ADDR:PORT".into());
    }
    if v.len() > PATHS_MAX {
        return Err(format!("--paths: at most {PATHS_MAX} paths"));
    }
    Ok(v)
}

/// Most paths of one multipath device (one thread and one controller each).
pub const PATHS_MAX: usize = 32;

/// Open the device over `setup`, run `cfg`, close. Digests and the queue size
/// come from `cfg`.
pub fn run_paths(cfg: &PerfConfig, setup: &PathsSetup, stop: &AtomicBool) -> Result<MpPerfResult, String> {
    let mut o = super::MultipathOptions::new(&setup.subnqn, cfg.namespace_id);
    if let Some(h) = &setup.hostnqn {
        o.connect.hostnqn = h.clone();
    }
    o.connect.hdr_digest = cfg.header_digest;
    o.connect.data_digest = cfg.data_digest;
    o.connect.dhchap_secret = cfg.dhchap_secret.clone();
    o.connect.dhchap_ctrl_secret = cfg.dhchap_ctrl_secret.clone();
    if cfg.tls_key_update_ms != 0 {
        return Err("--tls-key-update-ms: not with --paths (the paths' queues are blocking drivers)".into());
    }
    o.connect.tls = cfg.tls.clone();
    let q = (cfg.iodepth + 1).clamp(crate::options::QUEUE_SIZE_MIN as u32, crate::options::QUEUE_SIZE_MAX as u32);
    o.connect.queue_size = q as u16;
    o.mp.policy = setup.policy;
    let mut dev = MultipathDevice::open(&setup.paths, o).map_err(|e| format!("multipath open: {e}"))?;
    // Give the other paths a moment to come up so the run starts with all of them.
    let t = Instant::now();
    while dev.paths().iter().any(|p| p.cntlid.is_none() && p.error.is_none()) && t.elapsed() < Duration::from_secs(3) {
        let _ = dev.poll(Some(Instant::now() + Duration::from_millis(20)));
    }
    let r = run(cfg, &mut dev, stop);
    dev.close();
    r
}
