//! Control thread of a perf run: engine start, one connection per I/O queue
//! spread over the cores, progress line, keep-alive hook, result collection.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use nvmf_engine::{Engine, EngineConfig, Mode};

use super::config::PerfConfig;
use super::driver::{PerfQueue, QueueProgress, QueueSetup, RunControl, CONNECT_TIMEOUT_MS};
use super::stats::{QueueStats, Summary};
use crate::queue::QueueConfig;

/// What the admin queue bring-up learned about the controller and namespace.
#[derive(Debug, Clone)]
pub struct ControllerFacts {
    pub cntlid: u16,
    pub hostid: [u8; 16],
    pub hostnqn: String,
    pub subnqn: String,
    /// Logical block size of the namespace.
    pub lba_bytes: u64,
    /// Namespace size in logical blocks.
    pub nsze: u64,
    /// In-capsule data an I/O command may carry (IOCCSZ * 16 - 64).
    pub in_capsule_data_bytes: u32,
    /// Largest transfer (MDTS), `None` = unlimited.
    pub mdts_bytes: Option<u64>,
    /// Largest I/O queue size (CAP.MQES + 1).
    pub queue_entries_max: u32,
    /// I/O queues the controller granted (Set Features Number of Queues).
    pub io_queues_granted: u32,
    /// With secure channel concatenation (`--concat`): the TLS PSK the admin
    /// queue's authentication generated, which every I/O queue offers.
    pub concat_psk: Option<crate::tls::TlsPsk>,
}

/// Set by SIGINT once [`stop_on_interrupt`] is installed: the run stops
/// its timed phase and reports what it has (a multipath run polls it too).
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    // Only async-signal-safe work here: an atomic store, and back to the
    // default action so that a second Ctrl-C ends the process at once.
    INTERRUPTED.store(true, Ordering::Relaxed);
    // SAFETY: signal(2) is async-signal-safe.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
}

/// Ctrl-C (SIGINT) ends the run early with its summary so far (as fio and
/// spdk_nvme_perf do); a second Ctrl-C kills the process.
pub fn stop_on_interrupt() {
    let handler: extern "C" fn(libc::c_int) = on_interrupt;
    // SAFETY: the handler only stores an atomic and calls signal(2).
    unsafe { libc::signal(libc::SIGINT, handler as libc::sighandler_t) };
}

/// Extra time after the timed phase for queues to drain and report before
/// the run is declared stuck (prefill and readback are excluded: they make
/// progress or fail through per-command timeouts).
pub const DRAIN_GRACE_MS: u64 = 35_000;

/// Run the workload; `keep_alive` is called about every `keep_alive_interval`
/// (send a Keep Alive on the admin queue; an error ends the run).
pub fn run(
    cfg: &PerfConfig,
    addr: SocketAddr,
    facts: &ControllerFacts,
    keep_alive_interval: Option<Duration>,
    keep_alive: &mut dyn FnMut() -> Result<(), String>,
    show_progress: bool,
) -> Result<Summary, String> {
    cfg.validate()?;
    let geometry = cfg.geometry(facts.lba_bytes, facts.nsze)?;
    if cfg.io_queues > facts.io_queues_granted {
        return Err(format!(
            "--nr-io-queues {} but the controller granted only {} I/O queues",
            cfg.io_queues, facts.io_queues_granted
        ));
    }
    if cfg.iodepth > facts.queue_entries_max {
        return Err(format!(
            "--iodepth {} exceeds the controller's queue size limit {} (CAP.MQES + 1)",
            cfg.iodepth, facts.queue_entries_max
        ));
    }
    if let Some(m) = facts.mdts_bytes {
        if cfg.block_size_bytes > m {
            return Err(format!("--bs {} exceeds the controller's MDTS of {m} bytes", cfg.block_size_bytes));
        }
    }
    let unit_bytes = geometry.unit_bytes();
    // The queue also carries its fabrics commands: Connect (1024 bytes of
    // data) and DH-HMAC-CHAP messages, more than a 512-byte I/O.
    let fabrics_bytes_max = nvmf_proto::fabrics::CONNECT_DATA_LEN.max(nvmf_proto::auth::AUTH_MESSAGE_LEN_MAX) as u64;
    let transfer_len_max =
        u32::try_from(unit_bytes.max(fabrics_bytes_max)).map_err(|_| "--bs too large".to_string())?;
    let seed = if cfg.seed != 0 {
        cfg.seed
    } else {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    };
    let verify_seed = (seed ^ (seed >> 32)) as u32 | 1;
    // The identity and PSK every I/O queue offers (as the admin queue's).
    // With --concat: the generated PSK, and no DH-HMAC-CHAP on I/O queues.
    let tls_psk = match (&facts.concat_psk, &cfg.tls) {
        (Some(generated), _) => Some(generated.clone()),
        (None, Some(t)) => Some(t.psk(&facts.hostnqn, &facts.subnqn)?),
        (None, None) => None,
    };
    let (dhchap_secret, dhchap_ctrl_secret) = match facts.concat_psk {
        Some(_) => (None, None),
        None => (cfg.dhchap_secret.clone(), cfg.dhchap_ctrl_secret.clone()),
    };

    let mut ecfg = EngineConfig {
        cores: cfg.cores.clone(),
        mode: if cfg.poll { Mode::Poll } else { Mode::Interrupt },
        ..EngineConfig::default()
    };
    // The receive buffer must hold the largest C2HData PDU plus the next PDU's start.
    let pdu_max = unit_bytes as usize + 256;
    ecfg.recv_buf_bytes = ecfg.recv_buf_bytes.max(2 * pdu_max);
    ecfg.send_buf_max_bytes = ecfg.send_buf_max_bytes.max(cfg.iodepth as usize * (pdu_max + 128));
    let engine = Engine::start(ecfg).map_err(|e| format!("engine: {e}"))?;
    let cores = engine.core_count();

    let control = Arc::new(RunControl::default());
    let (tx, rx) = mpsc::channel::<QueueStats>();
    let mut progress = Vec::new();
    for q in 0..cfg.io_queues {
        // One SQ entry more than the commands in flight (an SQ of N entries is
        // full at N - 1 under SQ flow control; SQSIZE 0 is invalid anyway),
        // unless the controller's MQES forbids it.
        let sq_entries = (cfg.iodepth + 1).min(facts.queue_entries_max).max(2);
        let mut queue = QueueConfig::io((q + 1) as u16, sq_entries as u16);
        queue.hdr_digest = cfg.header_digest;
        queue.data_digest = cfg.data_digest;
        queue.in_capsule_data_max_bytes = facts.in_capsule_data_bytes;
        queue.transfer_len_max_bytes = transfer_len_max;
        let setup = QueueSetup {
            queue_index: q,
            queue,
            cntlid: facts.cntlid,
            hostid: facts.hostid,
            hostnqn: facts.hostnqn.clone(),
            subnqn: facts.subnqn.clone(),
            nsid: cfg.namespace_id,
            iodepth: cfg.iodepth,
            geometry,
            workload_seed: seed.wrapping_add(q as u64 * 0x1000_0001),
            partition: geometry.queue_partition(q, cfg.io_queues),
            rw: cfg.rw,
            rwmixread: cfg.rwmixread,
            verify: cfg.verify,
            verify_seed,
            disable_sq_flow_control: !cfg.sq_flow_control,
            runtime_ns: cfg.runtime_s * 1_000_000_000,
            dhchap_secret: dhchap_secret.clone(),
            dhchap_ctrl_secret: dhchap_ctrl_secret.clone(),
            tls: tls_psk.is_some(),
            tls_key_update_ms: cfg.tls_key_update_ms,
        };
        let p = Arc::new(QueueProgress::default());
        progress.push(p.clone());
        let (c, t) = (control.clone(), tx.clone());
        let core = q as usize % cores;
        let make: nvmf_engine::MakeHandler =
            Box::new(move |info| Box::new(PerfQueue::new(setup, info.core, c, p, t)) as Box<dyn nvmf_engine::Handler>);
        let made = match &tls_psk {
            None => engine.connect(core, addr, make).map_err(|e| e.to_string()),
            Some(psk) => match psk.client_session(nvmf_engine::tls_session_limits()) {
                Ok(session) => engine
                    .connect_tls(core, addr, Duration::from_millis(CONNECT_TIMEOUT_MS), session, make)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(format!("TLS session: {e}")),
            },
        };
        if let Err(e) = made {
            control.stop.store(true, Ordering::Relaxed);
            engine.shutdown(Duration::from_secs(2));
            return Err(format!("I/O queue {} connect to {addr}: {e}", q + 1));
        }
    }
    drop(tx);

    let show_progress = show_progress && std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let mut last_keep_alive = Instant::now();
    let mut last_ios = 0u64;
    // Without verify the run is bounded; with it, prefill/readback take as long
    // as the range needs, and per-command timeouts guarantee progress or failure.
    let deadline = (!cfg.verify).then(|| {
        started + Duration::from_millis(CONNECT_TIMEOUT_MS + DRAIN_GRACE_MS) + Duration::from_secs(cfg.runtime_s)
    });
    let mut results: Vec<QueueStats> = Vec::with_capacity(cfg.io_queues as usize);
    let mut failure: Option<String> = None;
    let mut interrupted = false;
    while results.len() < cfg.io_queues as usize {
        if !interrupted && INTERRUPTED.load(Ordering::Relaxed) {
            interrupted = true;
            control.stop.store(true, Ordering::Relaxed);
        }
        // Poll quickly until the start barrier is lifted, then at a relaxed pace.
        let wait_ms = if control.go.load(Ordering::Relaxed) { 100 } else { 2 };
        match rx.recv_timeout(Duration::from_millis(wait_ms)) {
            Ok(s) => {
                if s.io_errors > 0 {
                    // One broken queue ends the timed phase of all (like spdk_nvme_perf).
                    control.stop.store(true, Ordering::Relaxed);
                }
                results.push(s);
                continue;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                failure = Some("queues ended without reporting".into());
                break;
            }
        }
        if let Some(iv) = keep_alive_interval {
            if last_keep_alive.elapsed() >= iv {
                last_keep_alive = Instant::now();
                if let Err(e) = keep_alive() {
                    control.stop.store(true, Ordering::Relaxed);
                    failure = Some(format!("admin keep-alive failed: {e}"));
                }
            }
        }
        let phases: Vec<u64> = progress.iter().map(|p| p.phase.load(Ordering::Relaxed)).collect();
        if !control.go.load(Ordering::Relaxed)
            && (progress.iter().all(|p| p.connected.load(Ordering::Relaxed)) || !results.is_empty())
        {
            control.go.store(true, Ordering::Relaxed);
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            control.stop.store(true, Ordering::Relaxed);
            failure = Some("queues did not finish in time".into());
            break;
        }
        if show_progress && last_progress.elapsed() >= Duration::from_secs(1) {
            let dt = last_progress.elapsed().as_secs_f64();
            last_progress = Instant::now();
            let ios: u64 = progress.iter().map(|p| p.ios.load(Ordering::Relaxed)).sum();
            let errors: u64 = progress.iter().map(|p| p.errors.load(Ordering::Relaxed)).sum();
            let phase = match phases.iter().min().copied().unwrap_or(0) {
                0 => "connecting",
                1 => "prefill",
                2 => "running",
                3 => "readback",
                _ => "done",
            };
            let iops = (ios.saturating_sub(last_ios)) as f64 / dt;
            last_ios = ios;
            let mut err = std::io::stderr().lock();
            let _ = write!(
                err,
                "\r[{phase:>10}] {:>5.0}s  {:>10.0} IOPS  {:>9.1} MiB/s  errors {errors}   ",
                started.elapsed().as_secs_f64(),
                iops,
                iops * unit_bytes as f64 / 1048576.0
            );
            let _ = err.flush();
        }
    }
    if show_progress {
        eprintln!();
    }
    control.stop.store(true, Ordering::Relaxed);
    engine.shutdown(Duration::from_secs(2));
    // Queues that reported during shutdown.
    while let Ok(s) = rx.try_recv() {
        results.push(s);
    }
    if let Some(f) = failure {
        if results.len() < cfg.io_queues as usize {
            return Err(f);
        }
    }
    let pinned: Vec<usize> = cfg.cores.clone();
    let mut summary = Summary::merge(&results, &pinned);
    summary.interrupted = interrupted;
    Ok(summary)
}
