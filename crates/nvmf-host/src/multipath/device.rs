//! [`MultipathDevice`]: a blocking multipath block device over several
//! [`Controller`]s, driven by the sans-IO [`Multipath`] core.
//!
//! Threads (control plane, not a per-core data path): the caller's thread
//! runs the core; one thread per path owns that path's controller, submits
//! what the core sends it, reports completions, and
//!
//! * probes the controller with a Keep Alive every `probe_interval_ms`
//!   that must be answered within `probe_timeout_ms`: a dead path (also an
//!   idle one whose packets silently vanish) is detected within
//!   `probe_interval_ms + probe_timeout_ms` (750 ms by default);
//! * on failure closes *every* connection of the controller before it
//!   reports the path down and the in-flight commands as fate-unknown (the
//!   fence of the write retry counts from then);
//! * reconnects every `reconnect_delay_ms` and reports the path up with the
//!   namespace's ANA state (ANA log page, Return Groups Only);
//! * re-reads the ANA log on an ANA change AEN.
//!
//! All paths must lead to the same namespace: the subsystem NQN is the same
//! by construction (one [`ConnectOptions::subnqn`]) and the NGUID (or EUI-64)
//! of the first path that comes up is required of the others.

use std::collections::VecDeque;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nvmf_proto::log::{parse_ana_log, ANA_LSP_RGO};
use nvmf_proto::opcodes::{admin, io, lid};
use nvmf_proto::status::{generic, sct};
use nvmf_proto::{Sqe, Status};

use super::core::{
    fence_ms_for_kato, Action, AnaState, Counters, FailoverRecord, IoId, IoResult, Multipath, MultipathConfig, Outcome,
    PathCounters, PathHealth, WriteRetry,
};
use crate::controller::AsyncEvent;
use crate::error::{Error, Result};
use crate::options::ConnectOptions;
use crate::queue::{Completion, DataDir, Fate, Request, SubmitErrorKind};
use crate::Controller;

/// Default [`MultipathOptions::probe_interval_ms`].
pub const PROBE_INTERVAL_DEFAULT_MS: u64 = 250;
/// Default [`MultipathOptions::probe_timeout_ms`].
pub const PROBE_TIMEOUT_DEFAULT_MS: u64 = 500;
/// Default [`MultipathOptions::reconnect_delay_ms`].
pub const RECONNECT_DELAY_DEFAULT_MS: u64 = 500;
/// Default [`MultipathOptions::open_timeout_ms`].
pub const OPEN_TIMEOUT_DEFAULT_MS: u64 = 10_000;
/// Default keep-alive timeout of multipath controllers, shorter than the
/// crate's [`KATO_DEFAULT_S`](crate::options::KATO_DEFAULT_S) for fast
/// path-loss detection: the target notices a lost path by its controller's
/// keep-alive expiry, and a write of unknown fate waits for that before it
/// is retried on another path (the write fence, 2 x KATO + margin, see
/// [`fence_ms_for_kato`]): 5 s with 2 s, 11 s with the default 5 s.
pub const MP_KATO_DEFAULT_S: u32 = 2;
/// Bytes of the ANA log we read (header + 127 group descriptors without NSID lists).
const ANA_LOG_READ_BYTES: u64 = 4096;
/// Longest wait of a path thread for its channel or socket, so it notices stop requests.
const PATH_WAIT_SLICE_MS: u64 = 50;

/// Options of [`MultipathDevice::open`].
#[derive(Clone, Debug)]
pub struct MultipathOptions {
    /// Per-controller options (subsystem NQN, host NQN/ID, KATO, queue size,
    /// digests). `ctrl_loss_tmo_s` is ignored: paths reconnect forever.
    pub connect: ConnectOptions,
    pub nsid: u32,
    pub mp: MultipathConfig,
    pub probe_interval_ms: u64,
    pub probe_timeout_ms: u64,
    pub reconnect_delay_ms: u64,
    /// How long `open` waits for the first path.
    pub open_timeout_ms: u64,
}

impl MultipathOptions {
    /// Defaults for namespace `nsid` of `subnqn`: KATO [`MP_KATO_DEFAULT_S`],
    /// failover policy, write fence 2 x KATO + 1 s.
    pub fn new(subnqn: &str, nsid: u32) -> MultipathOptions {
        let mut o = MultipathOptions {
            connect: ConnectOptions::new(subnqn),
            nsid,
            mp: MultipathConfig::default(),
            probe_interval_ms: PROBE_INTERVAL_DEFAULT_MS,
            probe_timeout_ms: PROBE_TIMEOUT_DEFAULT_MS,
            reconnect_delay_ms: RECONNECT_DELAY_DEFAULT_MS,
            open_timeout_ms: OPEN_TIMEOUT_DEFAULT_MS,
        };
        o.set_kato_s(MP_KATO_DEFAULT_S);
        o
    }
    /// Set KATO and the matching write fence.
    pub fn set_kato_s(&mut self, kato_s: u32) {
        self.connect.kato_s = kato_s;
        self.mp.write_retry = WriteRetry::Fenced { fence_ms: fence_ms_for_kato(self.connect.kato_ms(), 0) };
    }
    fn validate(&self) -> Result<()> {
        if self.connect.kato_s == 0 {
            return Err(Error::Invalid("multipath needs keep alive (kato_s > 0): it bounds the write fence".into()));
        }
        if let WriteRetry::Fenced { fence_ms } = self.mp.write_retry {
            if fence_ms < fence_ms_for_kato(self.connect.kato_ms(), 0) {
                tracing::warn!("write fence {fence_ms} ms is shorter than 2 x KATO + margin: retries may be unsafe");
            }
        }
        if self.probe_interval_ms == 0 || self.probe_timeout_ms == 0 {
            return Err(Error::Invalid("probe interval and timeout must be > 0".into()));
        }
        Ok(())
    }
}

/// State of one path, for display.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathInfo {
    pub addr: SocketAddr,
    pub health: PathHealth,
    pub ana: AnaState,
    pub cntlid: Option<u16>,
    pub outstanding: u32,
    pub counters: PathCounters,
    /// Why the path is refused for good (e.g. another namespace behind it).
    pub error: Option<String>,
}

/// A finished I/O.
#[derive(Debug)]
pub struct MpCompletion {
    pub tag: u64,
    pub result: IoResult,
    /// The request's buffer (read data for reads).
    pub buf: Vec<u8>,
    /// Path of the last attempt.
    pub path: Option<usize>,
}

impl MpCompletion {
    pub fn is_success(&self) -> bool {
        self.result == IoResult::Status(Status::SUCCESS)
    }
}

enum ToPath {
    Io { io: IoId, attempt: u32, req: Request },
    Stop,
}

struct NsFacts {
    block_size: u32,
    nsze: u64,
    id: [u8; 16],
}

enum FromPath {
    Up { path: usize, ana: AnaState, cntlid: u16, ns: NsFacts, cqt_ms: u16, anatt_s: u8 },
    Down { path: usize, why: String },
    Ana { path: usize, ana: AnaState },
    Done { path: usize, io: IoId, attempt: u32, c: Completion },
    NotSent { path: usize, io: IoId, attempt: u32, buf: Vec<u8> },
}

/// What the device keeps of an I/O between attempts.
#[derive(Debug)]
struct Held {
    sqe: Sqe,
    dir: DataDir,
    buf: Option<Vec<u8>>,
    last_path: Option<usize>,
}

struct PathHandle {
    addr: SocketAddr,
    tx: Sender<ToPath>,
    thread: Option<JoinHandle<()>>,
    cntlid: Option<u16>,
    error: Option<String>,
}

impl std::fmt::Debug for PathHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PathHandle").field("addr", &self.addr).field("cntlid", &self.cntlid).finish()
    }
}

/// One namespace through several paths. See the [module docs](self).
#[derive(Debug)]
pub struct MultipathDevice {
    core: Multipath,
    paths: Vec<PathHandle>,
    events: Receiver<FromPathMsg>,
    held: Vec<Option<Held>>,
    done: VecDeque<MpCompletion>,
    epoch: Instant,
    nsid: u32,
    block_size: u32,
    nsze: u64,
    ns_id: Option<[u8; 16]>,
    kato_ms: u64,
}

/// Wrapper so the channel type can be `Debug`.
struct FromPathMsg(FromPath);
impl std::fmt::Debug for FromPathMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FromPath")
    }
}

impl MultipathDevice {
    /// Connect every path (in the background) and wait until one is usable.
    pub fn open(addrs: &[SocketAddr], opts: MultipathOptions) -> Result<MultipathDevice> {
        opts.validate()?;
        if addrs.is_empty() {
            return Err(Error::Invalid("no paths".into()));
        }
        let mut mp = opts.mp;
        mp.path_depth_max = mp.path_depth_max.min(opts.connect.queue_size.saturating_sub(1).max(1) as u32);
        let (ev_tx, ev_rx) = mpsc::channel();
        let mut paths = Vec::new();
        for (i, &addr) in addrs.iter().enumerate() {
            let (tx, rx) = mpsc::channel();
            let ctx = PathCtx { index: i, addr, opts: opts.clone(), events: ev_tx.clone(), cmds: rx };
            let thread = std::thread::Builder::new()
                .name(format!("nvmf-mp-path{i}"))
                .spawn(move || path_main(ctx))
                .map_err(Error::Io)?;
            paths.push(PathHandle { addr, tx, thread: Some(thread), cntlid: None, error: None });
        }
        let mut d = MultipathDevice {
            core: Multipath::new(mp, addrs.len()),
            paths,
            events: ev_rx,
            held: Vec::new(),
            done: VecDeque::new(),
            epoch: Instant::now(),
            nsid: opts.nsid,
            block_size: 0,
            nsze: 0,
            ns_id: None,
            kato_ms: opts.connect.kato_ms(),
        };
        let deadline = Instant::now() + Duration::from_millis(opts.open_timeout_ms);
        while (0..d.paths.len()).all(|p| d.core.path_health(p) == PathHealth::Down) {
            if Instant::now() >= deadline {
                let errs: Vec<String> = d.paths.iter().filter_map(|p| p.error.clone()).collect();
                return Err(Error::Gone(format!("no path came up within {} ms {errs:?}", opts.open_timeout_ms)));
            }
            d.pump(Some(deadline.min(Instant::now() + Duration::from_millis(PATH_WAIT_SLICE_MS))));
        }
        Ok(d)
    }

    /// Addresses of the I/O controllers of `subnqn` in a discovery log.
    pub fn paths_from_discovery(discovery: impl ToSocketAddrs, subnqn: &str) -> Result<Vec<SocketAddr>> {
        let log = crate::discover(discovery, ConnectOptions::default())?;
        let mut v = Vec::new();
        for e in log.entries.iter().filter(|e| e.subnqn == subnqn) {
            if let Ok(mut a) = (e.traddr.as_str(), e.trsvcid.parse::<u16>().unwrap_or(4420)).to_socket_addrs() {
                v.extend(a.next());
            }
        }
        v.dedup();
        Ok(v)
    }

    pub fn nsid(&self) -> u32 {
        self.nsid
    }
    pub fn block_size(&self) -> u32 {
        self.block_size
    }
    /// Namespace size in blocks.
    pub fn nsze(&self) -> u64 {
        self.nsze
    }
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
    pub fn counters(&self) -> Counters {
        self.core.counters()
    }
    pub fn failovers(&self) -> &[FailoverRecord] {
        self.core.failovers()
    }
    /// I/Os submitted and not yet returned by [`poll`](Self::poll).
    pub fn pending(&self) -> usize {
        self.core.pending() + self.done.len()
    }
    pub fn paths(&self) -> Vec<PathInfo> {
        (0..self.paths.len())
            .map(|p| PathInfo {
                addr: self.paths[p].addr,
                health: self.core.path_health(p),
                ana: self.core.path_ana(p),
                cntlid: self.paths[p].cntlid,
                outstanding: self.core.path_outstanding(p),
                counters: self.core.path_counters(p),
                error: self.paths[p].error.clone(),
            })
            .collect()
    }

    /// Queue an I/O command (Read, Write, Flush, Write Zeroes...; the NSID is
    /// set here). Completes through [`poll`](Self::poll) exactly once.
    /// Refused (request handed back) when `queued_ios_max` I/Os already wait.
    pub fn submit(&mut self, tag: u64, mut req: Request) -> std::result::Result<(), Request> {
        req.sqe.nsid = self.nsid;
        let is_write = req.sqe.opcode != io::READ;
        let now = self.now_ms();
        // Park the request before the core may ask for it.
        let slot = Held { sqe: req.sqe, dir: req.dir, buf: Some(std::mem::take(&mut req.buf)), last_path: None };
        let id = match self.core.submit(tag, is_write, now) {
            Ok(id) => id,
            Err(_) => {
                req.buf = slot.buf.unwrap_or_default();
                return Err(req);
            }
        };
        let i = id as usize;
        if self.held.len() <= i {
            self.held.resize_with(i + 1, || None);
        }
        debug_assert!(self.held[i].is_none());
        self.held[i] = Some(slot);
        self.run_actions();
        Ok(())
    }

    /// The next finished I/O, waiting until `deadline` (`None`: don't wait).
    pub fn poll(&mut self, deadline: Option<Instant>) -> Option<MpCompletion> {
        loop {
            if let Some(c) = self.done.pop_front() {
                return Some(c);
            }
            let now = Instant::now();
            if deadline.is_none_or(|d| now >= d) {
                self.pump(None);
                return self.done.pop_front();
            }
            self.pump(deadline);
        }
    }

    /// Blocking read of `nlb` blocks at `slba` into `buf`.
    pub fn read(&mut self, slba: u64, nlb: u32, buf: &mut [u8]) -> Result<()> {
        let req = Request::read(Sqe::rw(io::READ, 0, self.nsid, slba, nlb), vec![0; buf.len()]);
        let c = self.execute(req)?;
        buf.copy_from_slice(&c.buf);
        Ok(())
    }

    /// Blocking write of `nlb` blocks at `slba`.
    pub fn write(&mut self, slba: u64, nlb: u32, data: &[u8]) -> Result<()> {
        self.execute(Request::write(Sqe::rw(io::WRITE, 0, self.nsid, slba, nlb), data.to_vec())).map(|_| ())
    }

    /// Submit one command and wait for it (other completions stay queued).
    pub fn execute(&mut self, req: Request) -> Result<MpCompletion> {
        const TAG: u64 = u64::MAX - 7;
        self.submit(TAG, req).map_err(|_| Error::Submit(crate::queue::SubmitErrorKind::QueueFull))?;
        let mut others = Vec::new();
        let r = loop {
            match self.poll(Some(Instant::now() + Duration::from_millis(100))) {
                Some(c) if c.tag == TAG => break c,
                Some(c) => others.push(c),
                None => {}
            }
        };
        for c in others.into_iter().rev() {
            self.done.push_front(c);
        }
        match r.result {
            IoResult::Status(s) if s.is_success() => Ok(r),
            IoResult::Status(status) => Err(Error::Status { what: "I/O", status }),
            IoResult::NoPath => Err(Error::Gone("no usable path".into())),
            IoResult::TooManyAttempts => Err(Error::Gone("too many attempts".into())),
        }
    }

    /// Stop every path thread (connections closed; pending I/Os are dropped).
    pub fn close(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        for p in &self.paths {
            let _ = p.tx.send(ToPath::Stop);
        }
        for p in &mut self.paths {
            if let Some(t) = p.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// Wait for one path event (until `deadline`, `None`: don't), handle it
    /// and everything else already there, run timers and actions.
    fn pump(&mut self, deadline: Option<Instant>) {
        let due = self.core.next_deadline_ms().map(|ms| self.epoch + Duration::from_millis(ms));
        let wake = match (deadline, due) {
            (Some(d), Some(t)) => Some(d.min(t)),
            (d, None) => d,
            (None, Some(_)) => None,
        };
        let first = match wake {
            None => self.events.try_recv().ok(),
            Some(w) => self.events.recv_timeout(w.saturating_duration_since(Instant::now())).ok(),
        };
        if let Some(m) = first {
            self.handle(m.0);
            while let Ok(m) = self.events.try_recv() {
                self.handle(m.0);
            }
        }
        let now = self.now_ms();
        self.core.on_tick(now);
        self.run_actions();
    }

    fn handle(&mut self, m: FromPath) {
        let now = self.now_ms();
        match m {
            FromPath::Up { path, ana, cntlid, ns, cqt_ms, anatt_s } => {
                match self.ns_id {
                    None => {
                        self.ns_id = Some(ns.id);
                        self.block_size = ns.block_size;
                        self.nsze = ns.nsze;
                    }
                    Some(id) if id != ns.id || ns.block_size != self.block_size => {
                        let e =
                            format!("path {} leads to another namespace (identifier differs)", self.paths[path].addr);
                        tracing::error!("{e}");
                        self.paths[path].error = Some(e);
                        let _ = self.paths[path].tx.send(ToPath::Stop);
                        return;
                    }
                    Some(_) => {}
                }
                tracing::info!(path, addr = %self.paths[path].addr, cntlid, ana = ana.name(), cqt_ms, "path up");
                self.paths[path].cntlid = Some(cntlid);
                self.core.allow_queue_timeout_ms(anatt_s as u64 * 1000);
                if cqt_ms > 0 {
                    self.core.set_path_fence_ms(path, fence_ms_for_kato(self.kato_ms, cqt_ms as u64));
                }
                self.core.path_up(path, ana, now);
            }
            FromPath::Down { path, why } => {
                tracing::warn!(path, addr = %self.paths[path].addr, "path down: {why}");
                self.paths[path].cntlid = None;
                self.core.path_down(path, now);
            }
            FromPath::Ana { path, ana } => {
                tracing::info!(path, ana = ana.name(), "ANA state");
                self.core.set_ana(path, ana, now);
            }
            FromPath::Done { path, io, attempt, c } => {
                let outcome = match c.fate {
                    Fate::Known => Outcome::Status(c.cqe.status),
                    Fate::Unknown => Outcome::FateUnknown,
                };
                if self.core.is_current(io, attempt, path) {
                    self.give_back(io, c.buf);
                }
                self.core.on_outcome(io, attempt, path, outcome, now);
            }
            FromPath::NotSent { path, io, attempt, buf } => {
                if self.core.is_current(io, attempt, path) {
                    self.give_back(io, buf);
                }
                self.core.on_outcome(io, attempt, path, Outcome::NotSent, now);
            }
        }
        self.run_actions();
    }

    fn give_back(&mut self, io: IoId, buf: Vec<u8>) {
        if let Some(Some(h)) = self.held.get_mut(io as usize) {
            if h.buf.is_none() {
                h.buf = Some(buf);
            }
        }
    }

    fn run_actions(&mut self) {
        while let Some(a) = self.core.next_action() {
            match a {
                Action::Send { io, attempt, path } => {
                    let h = self.held[io as usize].as_mut().expect("sent I/O is held");
                    let buf = h.buf.take().expect("an I/O is on one path at a time");
                    h.last_path = Some(path);
                    let req = Request { sqe: h.sqe, dir: h.dir, buf, tag: 0, timeout_ms: None };
                    if let Err(mpsc::SendError(ToPath::Io { req, .. })) =
                        self.paths[path].tx.send(ToPath::Io { io, attempt, req })
                    {
                        self.give_back(io, req.buf);
                        self.core.on_outcome(io, attempt, path, Outcome::NotSent, self.now_ms());
                    }
                }
                Action::Complete { io, tag, result } => {
                    let h = self.held[io as usize].take().expect("completed I/O is held");
                    self.done.push_back(MpCompletion {
                        tag,
                        result,
                        buf: h.buf.unwrap_or_default(),
                        path: h.last_path,
                    });
                }
            }
        }
    }
}

impl Drop for MultipathDevice {
    fn drop(&mut self) {
        self.stop();
    }
}

// ------------------------------------------------------------ path thread

struct PathCtx {
    index: usize,
    addr: SocketAddr,
    opts: MultipathOptions,
    events: Sender<FromPathMsg>,
    cmds: Receiver<ToPath>,
}

impl PathCtx {
    fn send(&self, m: FromPath) {
        let _ = self.events.send(FromPathMsg(m));
    }
    fn refuse(&self, io: IoId, attempt: u32, req: Request) {
        self.send(FromPath::NotSent { path: self.index, io, attempt, buf: req.buf });
    }
}

/// Why the serving loop ended.
enum Ended {
    Stop,
    Failed(String),
}

fn path_main(ctx: PathCtx) {
    let mut copts = ctx.opts.connect.clone();
    copts.ctrl_loss_tmo_s = 0; // we reconnect ourselves, without blocking the thread
    copts.fast_io_fail_tmo_s = None;
    copts.nr_io_queues = 1;
    copts.retry_writes_of_unknown_fate = false;
    // The controller's own keep-alive thread must not hold the admin queue
    // longer than a probe may take.
    copts.admin_timeout_ms = ctx.opts.probe_timeout_ms;
    loop {
        match bring_up(&ctx, &copts) {
            Ok(mut ctrl) => match serve(&ctx, &mut ctrl) {
                Ended::Stop => {
                    let _ = ctrl.disconnect();
                    return;
                }
                Ended::Failed(why) => {
                    let outstanding = collect_outstanding(&mut ctrl);
                    // Every connection of this controller closes here, before
                    // the fate-unknown reports start the write fence.
                    drop(ctrl);
                    ctx.send(FromPath::Down { path: ctx.index, why });
                    for (io, attempt, c) in outstanding {
                        ctx.send(FromPath::Done { path: ctx.index, io, attempt, c });
                    }
                }
            },
            Err(e) => tracing::debug!(path = ctx.index, addr = %ctx.addr, "connect failed: {e}"),
        }
        // Wait before reconnecting; refuse I/O meanwhile (the core believes the path down).
        let until = Instant::now() + Duration::from_millis(ctx.opts.reconnect_delay_ms);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match ctx.cmds.recv_timeout(left) {
                Ok(ToPath::Io { io, attempt, req }) => ctx.refuse(io, attempt, req),
                Ok(ToPath::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => break,
            }
        }
    }
}

fn pack_tag(io: IoId, attempt: u32) -> u64 {
    (io as u64) << 32 | attempt as u64
}
fn unpack_tag(t: u64) -> (IoId, u32) {
    ((t >> 32) as IoId, t as u32)
}

fn bring_up(ctx: &PathCtx, copts: &ConnectOptions) -> Result<Controller> {
    let mut ctrl = Controller::connect(ctx.addr, copts.clone())?;
    if ctrl.nr_io_queues() == 0 {
        return Err(Error::Controller("the controller granted no I/O queue".into()));
    }
    let ns = ctrl.identify_namespace(ctx.opts.nsid)?;
    if ns.nsze == 0 {
        return Err(Error::Controller(format!("namespace {} is not active", ctx.opts.nsid)));
    }
    let id = if ns.nguid != [0; 16] {
        ns.nguid
    } else {
        let mut v = [0u8; 16];
        v[..8].copy_from_slice(&ns.eui64);
        v
    };
    let ana = read_ana(&mut ctrl, ns.anagrpid)?;
    let facts = NsFacts { block_size: ns.block_size(), nsze: ns.nsze, id };
    let cqt_ms = command_quiesce_time_ms(&mut ctrl)?;
    let anatt_s = ctrl.identify().anatt;
    ctx.send(FromPath::Up { path: ctx.index, ana, cntlid: ctrl.cntlid(), ns: facts, cqt_ms, anatt_s });
    Ok(ctrl)
}

/// Identify Controller CQT (bytes 386-387, milliseconds; TP 4129), 0 when not reported.
fn command_quiesce_time_ms(ctrl: &mut Controller) -> Result<u16> {
    const CQT_OFFSET: usize = 386;
    let b = ctrl.identify_raw(nvmf_proto::opcodes::cns::CONTROLLER, 0)?;
    Ok(b.get(CQT_OFFSET..CQT_OFFSET + 2).map(|v| u16::from_le_bytes([v[0], v[1]])).unwrap_or(0))
}

/// ANA state of `group` through this controller (optimized when it does not report ANA).
fn read_ana(ctrl: &mut Controller, group: u32) -> Result<AnaState> {
    const CMIC_ANA_REPORTING: u8 = 1 << 3;
    if ctrl.identify().cmic & CMIC_ANA_REPORTING == 0 || group == 0 {
        return Ok(AnaState::Optimized);
    }
    let b = ctrl.get_log_page(lid::ANA, ANA_LSP_RGO, 0, 0, ANA_LOG_READ_BYTES, false)?;
    let (_, groups) = parse_ana_log(&b).ok_or_else(|| Error::Controller("malformed ANA log page".into()))?;
    Ok(groups.iter().find(|g| g.grpid == group).map(|g| AnaState::from_log(g.state)).unwrap_or(AnaState::Inaccessible))
}

fn serve(ctx: &PathCtx, ctrl: &mut Controller) -> Ended {
    let probe_interval = Duration::from_millis(ctx.opts.probe_interval_ms);
    let mut last_probe = Instant::now();
    let mut group = None;
    loop {
        // Commands from the device.
        let Some(q) = ctrl.io_queue(0) else { return Ended::Failed("no I/O queue".into()) };
        let idle = q.queue().outstanding() == 0;
        let first = if idle {
            match ctx.cmds.recv_timeout(Duration::from_millis(PATH_WAIT_SLICE_MS).min(probe_interval)) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return Ended::Stop,
            }
        } else {
            None
        };
        let mut next = first;
        loop {
            let m = match next.take() {
                Some(m) => m,
                None => match ctx.cmds.try_recv() {
                    Ok(m) => m,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return Ended::Stop,
                },
            };
            match m {
                ToPath::Stop => return Ended::Stop,
                ToPath::Io { io, attempt, req } => {
                    let req = req.with_tag(pack_tag(io, attempt));
                    match q.submit(req) {
                        Ok(_) => {}
                        Err(e) if matches!(e.kind, SubmitErrorKind::TooLarge | SubmitErrorKind::EmptyBuffer) => {
                            // Would fail on every path: a final error, not a retry.
                            let status = Status::new(sct::GENERIC, generic::INVALID_FIELD).dnr();
                            let cqe = nvmf_proto::Cqe::new(0, status);
                            let c =
                                Completion { cid: 0, tag: pack_tag(io, attempt), cqe, fate: Fate::Known, buf: e.buf };
                            report(ctx, c);
                        }
                        Err(e) => {
                            let req = Request { buf: e.buf, ..Request::new(Sqe::new(0, 0, 0)) };
                            ctx.refuse(io, attempt, req);
                        }
                    }
                }
            }
        }
        // Completions.
        if q.queue().outstanding() > 0 {
            match q.next_completion(Some(Instant::now() + Duration::from_millis(1))) {
                Ok(Some(c)) => {
                    report(ctx, c);
                    while let Some(c) = q.queue_mut().pop_completion() {
                        report(ctx, c);
                    }
                }
                Ok(None) => {}
                Err(e) => return Ended::Failed(format!("I/O queue: {e}")),
            }
        }
        if let Some(e) = q.queue().error() {
            return Ended::Failed(format!("I/O queue: {e}"));
        }
        // ANA changes.
        while let Ok(ev) = ctrl.events().try_recv() {
            if ev == AsyncEvent::AnaChange {
                let g = match group {
                    Some(g) => g,
                    None => match ctrl.identify_namespace(ctx.opts.nsid) {
                        Ok(ns) => *group.insert(ns.anagrpid),
                        Err(e) => return Ended::Failed(format!("Identify after ANA change: {e}")),
                    },
                };
                match read_ana(ctrl, g) {
                    Ok(ana) => ctx.send(FromPath::Ana { path: ctx.index, ana }),
                    Err(e) => return Ended::Failed(format!("ANA log: {e}")),
                }
            }
        }
        // Liveness probe.
        if last_probe.elapsed() >= probe_interval {
            last_probe = Instant::now();
            let req = Request::new(Sqe::new(admin::KEEP_ALIVE, 0, 0)).with_timeout_ms(ctx.opts.probe_timeout_ms);
            if let Err(e) = ctrl.admin_command("Keep Alive probe", req) {
                return Ended::Failed(format!("probe: {e}"));
            }
        }
    }
}

fn report(ctx: &PathCtx, c: Completion) {
    let (io, attempt) = unpack_tag(c.tag);
    ctx.send(FromPath::Done { path: ctx.index, io, attempt, c });
}

/// Fail the I/O queue (closing its socket) and take back every command on it,
/// each with an unknown fate unless its answer had already arrived.
fn collect_outstanding(ctrl: &mut Controller) -> Vec<(IoId, u32, Completion)> {
    let mut v = Vec::new();
    if let Some(q) = ctrl.io_queue(0) {
        q.close("path failed");
        while let Some(c) = q.take_stashed().or_else(|| q.queue_mut().pop_completion()) {
            let (io, attempt) = unpack_tag(c.tag);
            v.push((io, attempt, c));
        }
        debug_assert_eq!(q.queue().outstanding(), 0);
    }
    v
}
