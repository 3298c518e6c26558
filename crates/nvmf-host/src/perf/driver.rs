//! The engine side of one perf queue: an `nvmf_engine::Handler` that drives a
//! [`HostQueue`] (IC, I/O queue Connect, DH-HMAC-CHAP when asked for, then the
//! workload) with bytes from
//! the core's io_uring (plaintext: with TLS the engine runs the session). All state here belongs to the queue's core; the only
//! cross-thread traffic is a per-tick progress counter store and one message
//! with the final [`QueueStats`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use nvmf_engine::{CloseReason, ConnIo, Flow, Handler};
use nvmf_proto::fabrics::{ConnectCmd, ConnectData, CATTR_DISABLE_SQ_FLOW_CONTROL};
use nvmf_proto::opcodes::io as io_op;
use nvmf_proto::Sqe;

use super::config::Geometry;
use super::stats::{monotonic_ns, QueueStats, Stamp};
use super::verify::{check_io, fill_io};
use super::workload::{IoSpec, Op, Phase, Workload};
use crate::auth::{auth_required, host_config, AuthProgress, QueueAuth, AUTH_TAG};
use crate::queue::{Completion, HostQueue, OutputPiece, QueueConfig, Request};

/// A queue that has not finished its IC + Connect by then is failed.
pub const CONNECT_TIMEOUT_MS: u64 = 10_000;
/// Tag of the Connect command (I/O tags are slot indices < iodepth).
const CONNECT_TAG: u64 = u64::MAX;

/// Shared between the run's control thread and every queue: set to end the
/// timed phase early (Ctrl-C, another queue failed, overall deadline).
#[derive(Debug, Default)]
pub struct RunControl {
    pub stop: AtomicBool,
    /// Set once every queue is connected, so all queues start their work
    /// together (otherwise the first queue runs alone while the others connect).
    pub go: AtomicBool,
}

/// Published by a queue every tick for the progress line (relaxed stores, not per I/O).
#[derive(Debug, Default)]
pub struct QueueProgress {
    pub ios: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
    /// 0 connecting, 1 prefill, 2 timed run, 3 readback, 4 done.
    pub phase: AtomicU64,
    /// The I/O queue Connect succeeded (or the queue already failed): the run may start.
    pub connected: AtomicBool,
}

/// Everything one queue needs, built by the control thread.
#[derive(Debug, Clone)]
pub struct QueueSetup {
    pub queue_index: u32,
    pub queue: QueueConfig,
    pub cntlid: u16,
    pub hostid: [u8; 16],
    pub hostnqn: String,
    pub subnqn: String,
    pub nsid: u32,
    pub iodepth: u32,
    pub geometry: Geometry,
    /// Workload of this queue (already bound to its LBA partition).
    pub workload_seed: u64,
    pub partition: (u64, u64),
    pub rw: super::config::RwPattern,
    pub rwmixread: u8,
    pub verify: bool,
    pub verify_seed: u32,
    /// Ask the controller to disable SQ flow control (Connect CATTR bit 2).
    pub disable_sq_flow_control: bool,
    /// Length of the timed phase.
    pub runtime_ns: u64,
    /// DH-HMAC-CHAP secrets (see [`crate::auth`]); the transaction ID is the QID.
    pub dhchap_secret: Option<nvmf_proto::auth::DhchapKey>,
    pub dhchap_ctrl_secret: Option<nvmf_proto::auth::DhchapKey>,
    /// The connection was made with `Engine::connect_tls`.
    pub tls: bool,
    /// Start a TLS KeyUpdate every this many ms while running (0: never).
    pub tls_key_update_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// ICReq sent, waiting for the ICResp.
    Ic,
    /// Connect submitted.
    Connecting,
    /// DH-HMAC-CHAP exchange in progress (before any I/O).
    Authenticating,
    Running,
    Finished,
}

#[derive(Debug)]
struct InFlight {
    spec: IoSpec,
    start_ns: u64,
}

/// The per-queue handler.
#[derive(Debug)]
pub struct PerfQueue {
    setup: QueueSetup,
    queue: HostQueue,
    workload: Workload,
    state: State,
    stats: QueueStats,
    /// Indexed by request tag; `None` = free.
    inflight: Vec<Option<InFlight>>,
    free_tags: Vec<u32>,
    /// Data buffers not lent to the queue (iodepth of them, each `bs` bytes).
    buffers: Vec<Vec<u8>>,
    created_ms: Option<u64>,
    /// The queue clock (engine milliseconds) of the callback in progress.
    now_ms: u64,
    /// The authentication exchange while [`State::Authenticating`].
    auth: Option<QueueAuth>,
    main_deadline_ns: u64,
    /// Engine ms of the next KeyUpdate (`tls_key_update_ms`), once running.
    next_key_update_ms: Option<u64>,
    expired: Vec<u16>,
    control: Arc<RunControl>,
    progress: Arc<QueueProgress>,
    result: Option<Sender<QueueStats>>,
}

impl PerfQueue {
    pub fn new(
        setup: QueueSetup,
        core: usize,
        control: Arc<RunControl>,
        progress: Arc<QueueProgress>,
        result: Sender<QueueStats>,
    ) -> PerfQueue {
        let depth = setup.iodepth as usize;
        let unit_bytes = setup.geometry.unit_bytes() as usize;
        assert!(setup.queue.queue_depth as usize >= depth, "queue depth below iodepth");
        let workload = Workload::new(
            setup.geometry,
            setup.partition,
            setup.rw,
            setup.rwmixread,
            setup.verify,
            setup.workload_seed,
        );
        // Write payloads go out from the I/O buffers (engine send_borrowed), not copied.
        let queue_cfg = QueueConfig { h2c_data_borrowed: true, ..setup.queue.clone() };
        PerfQueue {
            queue: HostQueue::new(queue_cfg),
            workload,
            state: State::Ic,
            stats: QueueStats::new(setup.queue_index, core),
            inflight: (0..depth).map(|_| None).collect(),
            free_tags: (0..depth as u32).rev().collect(),
            // Non-zero bytes so a write never sends the zero page pattern by accident.
            buffers: (0..depth).map(|_| vec![0xa5u8; unit_bytes]).collect(),
            created_ms: None,
            now_ms: 0,
            auth: None,
            main_deadline_ns: u64::MAX,
            next_key_update_ms: None,
            expired: Vec::new(),
            control,
            progress,
            result: Some(result),
            setup,
        }
    }

    fn submit_connect(&mut self, now_ms: u64) {
        let cmd = ConnectCmd {
            recfmt: 0,
            qid: self.setup.queue.qid,
            sqsize: self.setup.queue.queue_depth - 1,
            cattr: if self.setup.disable_sq_flow_control { CATTR_DISABLE_SQ_FLOW_CONTROL } else { 0 },
            kato_ms: 0,
        };
        let data = ConnectData {
            hostid: self.setup.hostid,
            cntlid: self.setup.cntlid,
            subnqn: self.setup.subnqn.clone(),
            hostnqn: self.setup.hostnqn.clone(),
        };
        let req = Request::write(cmd.to_sqe(0), data.encode().to_vec()).with_tag(CONNECT_TAG);
        match self.queue.submit(req, now_ms) {
            Ok(_) => self.state = State::Connecting,
            Err(e) => self.fail(format!("cannot submit Connect: {e}")),
        }
    }

    /// Issue I/Os until iodepth are in flight or the workload has none now.
    fn fill(&mut self, now_ms: u64, now_ns: u64) {
        if self.state != State::Running || !self.control.go.load(Ordering::Relaxed) {
            return;
        }
        if self.workload.phase() == Phase::Main {
            if self.stats.main_start.is_none() {
                self.stats.main_start = Some(Stamp::now());
                self.main_deadline_ns = now_ns.saturating_add(self.setup.runtime_ns);
            }
            if now_ns >= self.main_deadline_ns || self.control.stop.load(Ordering::Relaxed) {
                self.workload.stop();
            }
        } else if self.workload.phase() == Phase::Prefill && self.control.stop.load(Ordering::Relaxed) {
            self.workload.stop();
        }
        while let Some(&tag) = self.free_tags.last() {
            let Some(spec) = self.workload.next_io() else { break };
            self.free_tags.pop();
            let mut buf = self.buffers.pop().expect("one buffer per free tag");
            let bytes = self.setup.geometry.unit_bytes() as usize;
            debug_assert_eq!(buf.len(), bytes);
            let lba_bytes = self.setup.geometry.lba_bytes as usize;
            let req = match spec.op {
                Op::Read => Request::read(Sqe::rw(io_op::READ, 0, self.setup.nsid, spec.slba, spec.nlb), buf),
                Op::Write => {
                    if self.setup.verify {
                        fill_io(&mut buf, lba_bytes, self.setup.verify_seed, spec.slba, spec.generation);
                    }
                    Request::write(Sqe::rw(io_op::WRITE, 0, self.setup.nsid, spec.slba, spec.nlb), buf)
                }
            };
            match self.queue.submit(req.with_tag(tag as u64), now_ms) {
                Ok(_) => self.inflight[tag as usize] = Some(InFlight { spec, start_ns: now_ns }),
                Err(e) => {
                    // The queue failed (or a bug in depth accounting): give the I/O back as failed.
                    self.buffers.push(e.buf);
                    self.free_tags.push(tag);
                    self.stats.io_error(|| format!("submit refused: {}", e.kind));
                    self.workload.complete(&spec, false);
                    self.workload.abort();
                    break;
                }
            }
        }
    }

    fn on_completion(&mut self, c: Completion, now_ns: u64) {
        if c.tag == AUTH_TAG {
            self.on_auth_completion(c);
            return;
        }
        if c.tag == CONNECT_TAG {
            if c.is_success() {
                self.after_connect(c.cqe.dw0);
            } else {
                let hint = if self.setup.disable_sq_flow_control {
                    " (perf asked to disable SQ flow control; --sq-flow-control keeps it)"
                } else {
                    ""
                };
                self.fail(format!("I/O queue Connect failed: {}{hint}", c.status().name()));
            }
            return;
        }
        let tag = c.tag as usize;
        let Some(f) = self.inflight.get_mut(tag).and_then(Option::take) else {
            debug_assert!(false, "completion with unknown tag {tag}");
            return;
        };
        let spec = f.spec;
        let ok = c.is_success();
        if spec.phase == Phase::Main {
            self.stats.record(spec.op == Op::Read, c.buf.len() as u64, now_ns.saturating_sub(f.start_ns));
        } else {
            self.stats.verify_phase_ios += 1;
        }
        if !ok {
            let what = if spec.op == Op::Read { "read" } else { "write" };
            let status = c.status();
            let fate = c.fate;
            self.stats.io_error(|| format!("{what} lba {} failed: {} ({fate:?})", spec.slba, status.name()));
        } else if spec.must_check() {
            self.stats.verified_reads += 1;
            let g = &self.setup.geometry;
            if let Err(e) = check_io(&c.buf, g.lba_bytes as usize, self.setup.verify_seed, spec.slba, spec.generation) {
                self.stats.verify_error(|| e.to_string());
            }
        }
        self.buffers.push(c.buf);
        self.free_tags.push(tag as u32);
        let was_main = self.workload.phase() == Phase::Main;
        self.workload.complete(&spec, ok);
        if was_main && self.workload.phase() != Phase::Main {
            self.stats.main_end = Some(Stamp::now());
        }
    }

    /// Connected: authenticate first when asked to, then run.
    fn after_connect(&mut self, connect_dw0: u32) {
        let qid = self.setup.queue.qid;
        let (host_key, ctrl_key) = (self.setup.dhchap_secret.as_ref(), self.setup.dhchap_ctrl_secret.as_ref());
        match auth_required(qid, connect_dw0, host_key, ctrl_key) {
            Ok(false) => {
                self.state = State::Running;
                self.publish();
            }
            Ok(true) => {
                let host_key = host_key.expect("auth_required checked the host secret");
                let config = host_config(&self.setup.hostnqn, &self.setup.subnqn, host_key, ctrl_key, qid);
                // Bounded by the queue's command timeout (0 = take it from the queue).
                let mut auth = QueueAuth::new(qid, config, 0);
                match auth.start(&mut self.queue, self.now_ms) {
                    AuthProgress::Pending => {
                        self.auth = Some(auth);
                        self.state = State::Authenticating;
                    }
                    AuthProgress::Done(_) => unreachable!("an exchange takes several commands"),
                    AuthProgress::Failed(f) => self.fail(format!("authentication failed: {f}")),
                }
            }
            Err(f) => self.fail(format!("authentication failed: {f}")),
        }
    }

    fn on_auth_completion(&mut self, c: Completion) {
        // None after fail(): the exchange is over, its commands come back aborted.
        let Some(auth) = self.auth.as_mut() else { return };
        match auth.on_completion(&mut self.queue, c, self.now_ms) {
            AuthProgress::Pending => {}
            AuthProgress::Done(summary) => {
                tracing::debug!("{summary}");
                self.auth = None;
                self.state = State::Running;
                self.publish();
            }
            AuthProgress::Failed(f) => {
                self.auth = None;
                self.fail(format!("authentication failed: {f}"));
            }
        }
    }

    fn drain_completions(&mut self, now_ns: u64) {
        while let Some(c) = self.queue.pop_completion() {
            self.on_completion(c, now_ns);
        }
    }

    /// The queue cannot go on: count what is lost, finish.
    fn fail(&mut self, msg: String) {
        self.auth = None;
        self.stats.io_error(|| msg);
        self.queue.fail("perf queue failed");
        self.drain_completions(monotonic_ns());
        self.workload.abort();
        self.finish();
    }

    fn finish(&mut self) {
        if self.stats.main_start.is_some() && self.stats.main_end.is_none() {
            self.stats.main_end = Some(Stamp::now());
        }
        self.state = State::Finished;
        self.publish();
        if let Some(tx) = self.result.take() {
            let _ = tx.send(self.stats.clone());
        }
    }

    fn publish(&self) {
        let p = &self.progress;
        p.ios.store(self.stats.reads + self.stats.writes + self.stats.verify_phase_ios, Ordering::Relaxed);
        p.bytes.store(self.stats.read_bytes + self.stats.write_bytes, Ordering::Relaxed);
        p.errors.store(self.stats.io_errors + self.stats.verify_errors, Ordering::Relaxed);
        let phase = match (self.state, self.workload.phase()) {
            (State::Finished, _) | (_, Phase::Done) => 4,
            (State::Ic | State::Connecting | State::Authenticating, _) => 0,
            (_, Phase::Prefill) => 1,
            (_, Phase::Main) => 2,
            (_, Phase::Readback) => 3,
        };
        p.phase.store(phase, Ordering::Relaxed);
        let connected = matches!(self.state, State::Running | State::Finished);
        p.connected.store(connected, Ordering::Relaxed);
    }

    /// `--tls-key-update-ms`: at most one KeyUpdate per call, once its
    /// interval has passed (called from `on_tick`). The record goes out with
    /// the queue's next send; the controller answers with its own.
    fn tls_key_update(&mut self, io: &mut ConnIo<'_>, now_ms: u64) {
        let every = self.setup.tls_key_update_ms;
        if every == 0 || self.state != State::Running {
            return;
        }
        let next = *self.next_key_update_ms.get_or_insert(now_ms.saturating_add(every));
        if now_ms < next {
            return;
        }
        if io.tls_key_update(true) {
            self.stats.tls_key_updates += 1;
        } else {
            self.stats.io_error(|| "TLS KeyUpdate refused by the session".to_string());
        }
        self.next_key_update_ms = Some(now_ms.saturating_add(every));
    }

    /// Hand the queue's output to the engine: bytes are appended to tx, write
    /// payloads are sent from the I/O buffers they live in.
    fn move_output(&mut self, io: &mut ConnIo<'_>) {
        if !self.queue.has_lent_output() {
            self.queue.move_output_to(io.tx());
            return;
        }
        self.queue.take_output(|piece| match piece {
            OutputPiece::Bytes(b) => io.tx().extend_from_slice(b),
            // SAFETY: the payload is inside a command buffer owned by
            // self.queue, which keeps it (and its command) until output_sent
            // (called from on_sent) or release_output (called from on_closed,
            // after which the engine no longer reads it).
            OutputPiece::Lent { data, token } => unsafe { io.send_borrowed(data.as_ptr(), data.len(), token) },
        });
    }

    /// Common tail of every callback: issue work, move output, decide the flow.
    fn step(&mut self, io: &mut ConnIo<'_>, now_ns: u64) -> Flow {
        let now_ms = io.now_ms();
        self.now_ms = now_ms;
        if self.state == State::Ic && self.queue.is_ready() {
            // The ICResp came through the session: the handshake is done.
            self.stats.tls = io.tls().is_some();
            self.submit_connect(now_ms);
        }
        self.drain_completions(now_ns);
        // Stamp submissions after the completions were handled: the new
        // commands leave when this callback returns, not when it started.
        let submit_ns = if self.state == State::Running { monotonic_ns() } else { now_ns };
        self.fill(now_ms, submit_ns);
        // A refused submit completes at once (queue failed).
        self.drain_completions(submit_ns);
        if self.state == State::Running && self.workload.is_done() {
            self.finish();
        }
        self.move_output(io);
        if self.state == State::Finished {
            Flow::CloseAfterFlush
        } else {
            Flow::Continue
        }
    }
}

impl Handler for PerfQueue {
    fn on_recv(&mut self, io: &mut ConnIo<'_>) -> Flow {
        if self.state == State::Finished {
            let n = io.rx().len();
            io.consume(n);
            return Flow::CloseAfterFlush;
        }
        let now_ns = monotonic_ns();
        let res = self.queue.receive(io.rx());
        match res {
            Ok(n) => io.consume(n),
            Err(e) => {
                let n = io.rx().len();
                io.consume(n);
                self.fail(e.to_string());
                self.move_output(io);
                return Flow::CloseAfterFlush;
            }
        }
        self.step(io, now_ns)
    }

    fn recv_sink(&mut self) -> Option<&mut [u8]> {
        if self.state == State::Finished {
            return None;
        }
        self.queue.recv_sink()
    }

    fn recv_len_hint(&self) -> usize {
        self.queue.recv_len_hint()
    }

    fn on_sink_recv(&mut self, io: &mut ConnIo<'_>, n: usize) -> Flow {
        let now_ns = monotonic_ns();
        if let Err(e) = self.queue.sink_received(n) {
            self.fail(e.to_string());
            self.move_output(io);
            return Flow::CloseAfterFlush;
        }
        self.step(io, now_ns)
    }

    fn on_storage(&mut self, _io: &mut ConnIo<'_>, _token: u64, _result: i32) -> Flow {
        debug_assert!(false, "perf queues submit no storage ops");
        Flow::Continue
    }

    fn on_tick(&mut self, io: &mut ConnIo<'_>) -> Flow {
        let now_ms = io.now_ms();
        self.now_ms = now_ms;
        let created = *self.created_ms.get_or_insert(now_ms);
        if self.state == State::Finished {
            return Flow::CloseAfterFlush;
        }
        if matches!(self.state, State::Ic | State::Connecting) && now_ms.saturating_sub(created) > CONNECT_TIMEOUT_MS {
            if self.setup.tls && io.tls().is_none() {
                self.fail(format!("TLS handshake did not finish in {CONNECT_TIMEOUT_MS} ms"));
            } else {
                self.fail(format!("no IC/Connect answer in {CONNECT_TIMEOUT_MS} ms"));
            }
            self.move_output(io);
            return Flow::CloseAfterFlush;
        }
        self.expired.clear();
        if self.queue.on_tick(now_ms, &mut self.expired) > 0 {
            let n = self.expired.len();
            if self.state == State::Authenticating {
                let qid = self.setup.queue.qid;
                self.fail(format!("authentication failed: qid {qid}: no answer in time"));
            } else {
                self.fail(format!("{n} command(s) timed out"));
            }
            self.move_output(io);
            return Flow::CloseAfterFlush;
        }
        self.publish();
        self.tls_key_update(io, now_ms);
        self.step(io, monotonic_ns())
    }

    fn on_sent(&mut self, io: &mut ConnIo<'_>, token: u64) -> Flow {
        self.queue.output_sent(token);
        if self.state == State::Finished {
            return Flow::CloseAfterFlush;
        }
        self.step(io, monotonic_ns())
    }

    fn on_closed(&mut self, reason: CloseReason) {
        if self.state != State::Finished {
            let why = match reason {
                // Before the ICResp: the handshake (the engine logs the details).
                CloseReason::Tls if self.state == State::Ic => {
                    "TLS handshake failed (the controller may not know this \
                                                                PSK identity, or its PSK differs)"
                        .to_string()
                }
                CloseReason::Tls => "TLS failed (a record the session refused, or the controller's alert)".to_string(),
                _ => format!("connection closed ({reason:?})"),
            };
            self.fail(why);
        }
        // The engine reads no lent payload any more: take the buffers back.
        self.queue.release_output();
        while let Some(c) = self.queue.pop_completion() {
            self.buffers.push(c.buf);
        }
    }

    fn on_shutdown(&mut self, _io: &mut ConnIo<'_>) -> Flow {
        if self.state != State::Finished {
            self.fail("engine shut down during the run".to_string());
        }
        Flow::CloseAfterFlush
    }
}
