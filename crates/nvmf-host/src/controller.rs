//! Blocking controller driver: bring-up of the admin and I/O queues over
//! `std::net::TcpStream`, admin commands, keep alive, asynchronous events,
//! blocking I/O helpers and the reconnect policy.
//!
//! The bring-up follows the NVMe over Fabrics specification and what Linux
//! does: admin queue IC + Connect (dynamic controller, KATO), Property Get
//! CAP and VS, Property Set CC (EN, CSS, IOSQES 6, IOCQES 4), wait for
//! CSTS.RDY within CAP.TO, Identify Controller, Set Features Number of
//! Queues, one IC + Connect per I/O queue (QID 1..=n, SQSIZE = queue size -
//! 1), Asynchronous Event Configuration and one Asynchronous Event Request.
//! Each queue authenticates (DH-HMAC-CHAP) right after its Connect when the
//! controller or the options ask for it ([`crate::auth`]).
//!
//! Longer than the project's ~800 lines for now: bring-up, reconnect and the
//! blocking I/O helpers still share the `Admin` state here. Issue 14 moves
//! bring-up, keep-alive and reconnect into one sans-IO controller session;
//! this file then shrinks to the blocking wrapper.
//!
//! Threads: a keep-alive thread (control plane) shares the admin queue with
//! the caller through a mutex; it sends Keep Alive every KATO/2 and, between
//! those, picks up Asynchronous Event completions and forwards them to
//! [`Controller::events`]. I/O queues belong to the caller (`&mut self`).
//!
//! Longer than the project's ~800 lines: this blocking driver is replaced by
//! the one sans-IO controller session of the host control-plane issue (#14),
//! which splits bring-up, keep-alive and reconnect into their own modules.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nvmf_proto::fabrics::{self, cc, csts, prop, Cap, ConnectCmd, ConnectData, PropertyCmd};
use nvmf_proto::features::{self, FeatureCmd};
use nvmf_proto::identify::{
    self, cntrltype, IdentifyCmd, IdentifyController, IdentifyNamespace, NsIdDescriptor, IDENTIFY_LEN,
};
use nvmf_proto::log::{GetLogPageCmd, DISC_LOG_HDR_LEN};
use nvmf_proto::opcodes::{admin, aen, cns, fid, io, lid};
use nvmf_proto::{Sqe, DISCOVERY_NQN};

use crate::conn::QueueConn;
use crate::error::{Error, Result};
use crate::options::{ConnectOptions, TRANSFER_LEN_MIN_BYTES};
use crate::queue::{Completion, Fate, QueueConfig, Request, SubmitErrorKind};

pub use crate::queue::ADMIN_QUEUE_DEPTH;
/// How long a normal shutdown (CC.SHN) may take before we just close (Linux
/// `shutdown_timeout` default).
pub const SHUTDOWN_TIMEOUT_MS: u64 = 5_000;
/// Granularity of the keep-alive thread: how often it looks for async events.
const KEEP_ALIVE_THREAD_TICK_MS: u64 = 250;
/// Most log page bytes one `get_log_page` call returns (bounds allocation).
pub const LOG_PAGE_LEN_MAX_BYTES: u64 = 64 << 20;
/// Blocks in one Read/Write command at most (NLB is 16 bits, 0's based).
const NLB_MAX: u32 = 65_536;
/// Commands a range helper keeps in flight on one queue.
const RANGE_INFLIGHT_MAX: usize = 16;

const TAG_USER: u64 = 0;
const TAG_AER: u64 = u64::MAX;
const TAG_INTERNAL: u64 = u64::MAX - 1;

/// An asynchronous event the controller reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsyncEvent {
    /// Namespace attributes changed (namespace added, removed, resized).
    NamespaceChanged,
    /// Asymmetric Namespace Access state changed.
    AnaChange,
    /// The discovery log page changed.
    DiscoveryChange,
    /// Anything else, with the raw completion DW0.
    Other { dw0: u32 },
}

impl AsyncEvent {
    fn from_dw0(dw0: u32) -> AsyncEvent {
        let (ty, info) = (dw0 & 0x7, (dw0 >> 8) & 0xff);
        match (ty, info) {
            (aen::TYPE_NOTICE, aen::NOTICE_NS_CHANGED) => AsyncEvent::NamespaceChanged,
            (aen::TYPE_NOTICE, aen::NOTICE_ANA_CHANGE) => AsyncEvent::AnaChange,
            (aen::TYPE_NOTICE, aen::NOTICE_DISC_CHANGE) => AsyncEvent::DiscoveryChange,
            _ => AsyncEvent::Other { dw0 },
        }
    }
}

/// Turn a completion into `Ok` only when it succeeded with a known fate.
fn check(what: &'static str, c: Completion) -> Result<Completion> {
    match c.fate {
        Fate::Unknown => Err(Error::FateUnknown { what }),
        Fate::Known if c.cqe.status.is_success() => Ok(c),
        Fate::Known => Err(Error::Status { what, status: c.cqe.status }),
    }
}

/// The admin queue and what the keep-alive thread needs with it.
#[derive(Debug)]
struct Admin {
    conn: QueueConn,
    events: Sender<AsyncEvent>,
    last_keep_alive: Instant,
    aer_armed: bool,
}

impl Admin {
    fn execute(&mut self, what: &'static str, req: Request) -> Result<Completion> {
        let c = self.conn.execute(req.with_tag(TAG_USER));
        self.drain_events();
        check(what, c?)
    }

    /// The admin queue's Connect.
    fn connect(&mut self, req: Request, opts: &ConnectOptions) -> Result<Completion> {
        let c = self.conn.execute(req.with_tag(TAG_USER))?;
        check_connect("Connect", c, opts)
    }

    /// Deliver AER completions (re-arming the AER and clearing the event's
    /// log page, as the spec asks before the next event of that type is sent).
    fn drain_events(&mut self) {
        while let Ok(Some(c)) = self.conn.next_completion(None) {
            if c.tag != TAG_AER {
                continue; // internal log page reads and stale answers
            }
            self.aer_armed = false;
            if !c.is_success() {
                continue; // e.g. aborted at shutdown: do not re-arm
            }
            let ev = AsyncEvent::from_dw0(c.cqe.dw0);
            let _ = self.events.send(ev);
            let log_id = ((c.cqe.dw0 >> 16) & 0xff) as u8;
            if log_id != 0 {
                let len = if log_id == lid::DISCOVERY { DISC_LOG_HDR_LEN as u64 } else { 4096 };
                let glp = GetLogPageCmd { lid: log_id, lsp: 0, rae: false, len, offset: 0, lsi: 0, nsid: 0 };
                let _ = self.conn.submit(Request::read(glp.to_sqe(0), vec![0; len as usize]).with_tag(TAG_INTERNAL));
            }
            self.arm_aer();
        }
    }

    fn arm_aer(&mut self) {
        if self.aer_armed {
            return;
        }
        let req = Request::new(Sqe::new(admin::ASYNC_EVENT_REQUEST, 0, 0)).with_tag(TAG_AER).with_timeout_ms(0);
        if self.conn.submit(req).is_ok() {
            self.aer_armed = true;
        }
    }
}

#[derive(Debug)]
struct KeepAlive {
    stop: Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn keep_alive_thread(admin: Arc<Mutex<Admin>>, period: Duration, stop: Receiver<()>) {
    loop {
        match stop.recv_timeout(Duration::from_millis(KEEP_ALIVE_THREAD_TICK_MS)) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let mut a = lock(&admin);
        if a.conn.queue().error().is_some() {
            continue; // the owner reconnects
        }
        if a.last_keep_alive.elapsed() >= period {
            a.last_keep_alive = Instant::now();
            if let Err(e) = a.execute("Keep Alive", Request::new(Sqe::new(admin::KEEP_ALIVE, 0, 0))) {
                tracing::warn!("keep alive failed: {e}");
            }
        } else {
            let _ = a.conn.pump(None);
            a.drain_events();
        }
    }
}

fn lock(a: &Mutex<Admin>) -> MutexGuard<'_, Admin> {
    // A panic while holding the lock leaves a queue that is still consistent
    // (the state machine never panics half-way on wire input).
    a.lock().unwrap_or_else(|p| p.into_inner())
}

/// Everything one successful bring-up produces.
#[derive(Debug)]
struct Session {
    admin: Arc<Mutex<Admin>>,
    io: Vec<QueueConn>,
    cntlid: u16,
    cap: Cap,
    vs: u32,
    id: IdentifyController,
    keep_alive: Option<KeepAlive>,
}

/// A connected NVMe controller (I/O or discovery) over TCP.
///
/// ```no_run
/// use nvmf_host::{ConnectOptions, Controller};
///
/// # fn main() -> Result<(), nvmf_host::Error> {
/// let mut opts = ConnectOptions::new("nqn.2026-11.io.nvmf:default");
/// opts.nr_io_queues = 2;
/// let mut ctrl = Controller::connect("127.0.0.1:4420", opts)?;
/// let ns = ctrl.identify_namespace(1)?;
/// let mut buf = vec![0u8; ns.block_size() as usize * 8];
/// ctrl.read(1, 0, 8, &mut buf)?;
/// ctrl.write(1, 0, 8, &mut buf)?;
/// ctrl.flush(1)?;
/// ctrl.disconnect()?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Controller {
    addr: SocketAddr,
    opts: ConnectOptions,
    s: Session,
    events_tx: Sender<AsyncEvent>,
    events_rx: Receiver<AsyncEvent>,
    /// When the connection was lost (reconnect in progress), for ctrl_loss_tmo.
    lost_at: Option<Instant>,
    gone: bool,
    next_queue: usize,
}

impl Controller {
    /// Connect to the subsystem `opts.subnqn` at `addr` ("host:port") and
    /// bring the controller up. See the [module docs](self) for the steps.
    pub fn connect(addr: impl ToSocketAddrs, opts: ConnectOptions) -> Result<Controller> {
        opts.validate().map_err(Error::Invalid)?;
        let addr =
            addr.to_socket_addrs()?.next().ok_or_else(|| Error::Invalid("address resolves to nothing".into()))?;
        let (events_tx, events_rx) = mpsc::channel();
        let s = establish(addr, &opts, events_tx.clone())?;
        Ok(Controller { addr, opts, s, events_tx, events_rx, lost_at: None, gone: false, next_queue: 0 })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn options(&self) -> &ConnectOptions {
        &self.opts
    }
    /// Controller ID the subsystem assigned.
    pub fn cntlid(&self) -> u16 {
        self.s.cntlid
    }
    /// CAP as read at connect.
    pub fn cap(&self) -> Cap {
        self.s.cap
    }
    /// VS as read at connect.
    pub fn version(&self) -> u32 {
        self.s.vs
    }
    /// Identify Controller data read at connect.
    pub fn identify(&self) -> &IdentifyController {
        &self.s.id
    }
    /// Whether this is a discovery controller.
    pub fn is_discovery(&self) -> bool {
        is_discovery(&self.opts, &self.s.id)
    }
    /// Asynchronous events (namespace change, ANA change, discovery change).
    pub fn events(&self) -> &Receiver<AsyncEvent> {
        &self.events_rx
    }
    /// Number of connected I/O queues.
    pub fn nr_io_queues(&self) -> usize {
        self.s.io.len()
    }
    /// Largest data transfer per command (MDTS and the option, whichever is less).
    pub fn transfer_len_max_bytes(&self) -> u32 {
        transfer_len_max(&self.opts, &self.s.id)
    }
    /// I/O queue `index` (0-based; QID `index + 1`) for the explicit
    /// submit/poll API: [`QueueConn::submit`], [`QueueConn::next_completion`].
    pub fn io_queue(&mut self, index: usize) -> Option<&mut QueueConn> {
        self.s.io.get_mut(index)
    }
    /// Move the connected I/O queues out, for a driver that runs each one on
    /// its own thread with many commands in flight (the ublk block device).
    /// The controller keeps the admin queue and its keep-alive thread; its
    /// own I/O helpers then have no queue, and a reconnect would bring up
    /// new I/O queues the caller does not see.
    pub fn take_io_queues(&mut self) -> Vec<QueueConn> {
        std::mem::take(&mut self.s.io)
    }

    // ------------------------------------------------------------ admin

    /// Run one admin command and wait for it (errors carry the NVMe status).
    /// A transport failure starts the reconnect policy; a command refused
    /// because the admin queue had already failed (so never sent) is retried
    /// once reconnected, anything else returns the error.
    pub fn admin_command(&mut self, what: &'static str, req: Request) -> Result<Completion> {
        let (sqe, dir, buf, timeout_ms) = (req.sqe, req.dir, req.buf, req.timeout_ms);
        let rebuild = |buf: Vec<u8>| Request { sqe, dir, buf, tag: 0, timeout_ms };
        let failed = lock(&self.s.admin).conn.queue().error().is_some();
        if failed {
            self.recover()?;
        }
        let r = lock(&self.s.admin).execute(what, rebuild(buf));
        if let Err(e) = &r {
            if e.is_transport() {
                let _ = self.recover();
            }
        }
        r
    }

    pub fn identify_controller(&mut self) -> Result<IdentifyController> {
        let c = self.identify_raw(cns::CONTROLLER, 0)?;
        let id = IdentifyController::parse(&c).ok_or_else(|| Error::Controller("short Identify".into()))?;
        Ok(id)
    }

    pub fn identify_namespace(&mut self, nsid: u32) -> Result<IdentifyNamespace> {
        let b = self.identify_raw(cns::NAMESPACE, nsid)?;
        IdentifyNamespace::parse(&b).ok_or_else(|| Error::Controller("short Identify".into()))
    }

    /// Active namespace IDs, ascending (CNS 02h, paging through lists of 1024).
    pub fn active_namespaces(&mut self) -> Result<Vec<u32>> {
        let mut all = Vec::new();
        let mut after = 0u32;
        loop {
            let b = self.identify_raw(cns::ACTIVE_NS_LIST, after)?;
            let page = identify::parse_ns_list(&b);
            let full = page.len() == IDENTIFY_LEN / 4;
            // Guard against a controller repeating itself: IDs must ascend.
            let page: Vec<u32> = page.into_iter().filter(|&id| id > after).collect();
            let Some(&last) = page.last() else { break };
            all.extend(page);
            if !full || last >= 0xffff_fffe || all.len() > 1 << 20 {
                break;
            }
            after = last;
        }
        Ok(all)
    }

    /// Namespace Identification Descriptors (CNS 03h).
    pub fn ns_id_descriptors(&mut self, nsid: u32) -> Result<Vec<NsIdDescriptor>> {
        let b = self.identify_raw(cns::NS_ID_DESCRIPTORS, nsid)?;
        Ok(identify::parse_ns_id_descriptors(&b))
    }

    /// Raw 4 KiB Identify data.
    pub fn identify_raw(&mut self, cns_v: u8, nsid: u32) -> Result<Vec<u8>> {
        let sqe = IdentifyCmd { cns: cns_v, cntid: 0, csi: 0, nsid }.to_sqe(0);
        Ok(self.admin_command("Identify", Request::read(sqe, vec![0; IDENTIFY_LEN]))?.buf)
    }

    /// Read `len` bytes of log page `lid_v` from byte `offset` (split into
    /// commands of the transfer limit).
    pub fn get_log_page(&mut self, lid_v: u8, lsp: u8, nsid: u32, offset: u64, len: u64, rae: bool) -> Result<Vec<u8>> {
        let step = self.transfer_len_max_bytes();
        get_log_page_with(&mut |req| self.admin_command("Get Log Page", req), step, lid_v, lsp, nsid, offset, len, rae)
    }

    /// Get Features: returns completion DW0.
    pub fn get_features(&mut self, fid_v: u8, cdw11: u32, nsid: u32) -> Result<u32> {
        let mut sqe = FeatureCmd::get_sqe(0, fid_v);
        sqe.cdw11 = cdw11;
        sqe.nsid = nsid;
        Ok(self.admin_command("Get Features", Request::new(sqe))?.cqe.dw0)
    }

    /// Set Features: returns completion DW0.
    pub fn set_features(&mut self, fid_v: u8, cdw11: u32, nsid: u32) -> Result<u32> {
        let mut sqe = FeatureCmd::set_sqe(0, fid_v, cdw11);
        sqe.nsid = nsid;
        Ok(self.admin_command("Set Features", Request::new(sqe))?.cqe.dw0)
    }

    /// Property Get (Fabrics): `size8` for 8-byte properties such as CAP.
    pub fn property_get(&mut self, offset: u32, size8: bool) -> Result<u64> {
        let sqe = PropertyCmd::get_sqe(0, offset, size8);
        Ok(self.admin_command("Property Get", Request::new(sqe))?.cqe.result64())
    }

    /// Property Set (Fabrics).
    pub fn property_set(&mut self, offset: u32, size8: bool, value: u64) -> Result<()> {
        let sqe = PropertyCmd::set_sqe(0, offset, size8, value);
        self.admin_command("Property Set", Request::new(sqe)).map(|_| ())
    }

    // ------------------------------------------------------------ I/O

    /// Why I/O queue `qi` failed, as an error (for commands of unknown fate).
    fn queue_error(&self, qi: usize) -> Error {
        match self.s.io[qi].queue().error() {
            Some(e) => Error::Queue(e.clone()),
            None => Error::FateUnknown { what: "I/O" },
        }
    }

    fn pick_queue(&mut self) -> Result<usize> {
        if self.s.io.is_empty() {
            return Err(Error::Invalid("no I/O queues (discovery controller?)".into()));
        }
        self.next_queue = (self.next_queue + 1) % self.s.io.len();
        Ok(self.next_queue)
    }

    /// One I/O command, waiting for it. Transport failures trigger the
    /// reconnect policy; reads (and writes only with
    /// `retry_writes_of_unknown_fate`) are then retried.
    fn io_command(&mut self, what: &'static str, sqe: Sqe, dir: IoData, buf: &mut Vec<u8>) -> Result<()> {
        let retry_unknown =
            !matches!(dir, IoData::Write | IoData::WriteNoData) || self.opts.retry_writes_of_unknown_fate;
        loop {
            let qi = self.pick_queue()?;
            let data = std::mem::take(buf);
            let req = match dir {
                IoData::None | IoData::WriteNoData => Request::new(sqe),
                IoData::Read => Request::read(sqe, data),
                IoData::Write => Request::write(sqe, data),
            };
            let cid = match self.s.io[qi].submit(req) {
                Ok(cid) => cid,
                Err(e) => {
                    *buf = e.buf;
                    if e.kind == SubmitErrorKind::Failed {
                        // Nothing was sent: safe to retry after reconnecting.
                        self.recover()?;
                        continue;
                    }
                    return Err(Error::Submit(e.kind));
                }
            };
            let c = self.s.io[qi].wait_for(cid)?;
            *buf = c.buf;
            match c.fate {
                Fate::Known if c.cqe.status.is_success() => return Ok(()),
                Fate::Known => return Err(Error::Status { what, status: c.cqe.status }),
                Fate::Unknown => {
                    if !retry_unknown {
                        // Report now; the next call reconnects (its submit finds the queue failed).
                        tracing::warn!("{what}: {}", self.queue_error(qi));
                        return Err(Error::FateUnknown { what });
                    }
                    let cause = self.queue_error(qi);
                    self.recover().map_err(|_| cause)?;
                }
            }
        }
    }

    /// Read `nlb` blocks (counted from 1) at `slba` into `buf`, whose length
    /// must be `nlb` * block size (the controller checks it).
    pub fn read(&mut self, nsid: u32, slba: u64, nlb: u32, buf: &mut Vec<u8>) -> Result<()> {
        check_nlb(nlb)?;
        self.io_command("Read", Sqe::rw(io::READ, 0, nsid, slba, nlb), IoData::Read, buf)
    }

    /// Write `nlb` blocks at `slba` from `buf` (`nlb` * block size bytes).
    /// The buffer is moved into the command and put back, never copied.
    pub fn write(&mut self, nsid: u32, slba: u64, nlb: u32, buf: &mut Vec<u8>) -> Result<()> {
        check_nlb(nlb)?;
        self.io_command("Write", Sqe::rw(io::WRITE, 0, nsid, slba, nlb), IoData::Write, buf)
    }

    /// Flush the namespace's volatile write cache.
    pub fn flush(&mut self, nsid: u32) -> Result<()> {
        self.io_command("Flush", Sqe::new(io::FLUSH, 0, nsid), IoData::None, &mut Vec::new())
    }

    /// Write Zeroes over `nlb` blocks at `slba`.
    pub fn write_zeroes(&mut self, nsid: u32, slba: u64, nlb: u32) -> Result<()> {
        check_nlb(nlb)?;
        let sqe = Sqe::rw(io::WRITE_ZEROES, 0, nsid, slba, nlb);
        self.io_command("Write Zeroes", sqe, IoData::WriteNoData, &mut Vec::new())
    }

    /// Dataset Management, Deallocate the given (slba, nlb) ranges (at most 256).
    pub fn dsm_deallocate(&mut self, nsid: u32, ranges: &[(u64, u32)]) -> Result<()> {
        if ranges.is_empty() || ranges.len() > 256 {
            return Err(Error::Invalid("DSM takes 1..=256 ranges".into()));
        }
        let mut data = vec![0u8; ranges.len() * 16];
        for (i, &(slba, nlb)) in ranges.iter().enumerate() {
            data[i * 16 + 4..i * 16 + 8].copy_from_slice(&nlb.to_le_bytes());
            data[i * 16 + 8..i * 16 + 16].copy_from_slice(&slba.to_le_bytes());
        }
        let mut sqe = Sqe::new(io::DATASET_MANAGEMENT, 0, nsid);
        sqe.cdw10 = ranges.len() as u32 - 1;
        sqe.cdw11 = 1 << 2; // AD: deallocate
        self.io_command("Dataset Management", sqe, IoData::Write, &mut data)
    }

    /// Read `data.len() / block_size` blocks from `slba` into `data`, split
    /// into commands of the transfer limit with several in flight.
    pub fn read_range(&mut self, nsid: u32, slba: u64, block_size: u32, data: &mut [u8]) -> Result<()> {
        self.range(nsid, slba, block_size, RangeData::Read(data))
    }

    /// Write `data` (a whole number of blocks) from `slba`, split into
    /// commands of the transfer limit with several in flight. Returns only
    /// once every command was acknowledged.
    pub fn write_range(&mut self, nsid: u32, slba: u64, block_size: u32, data: &[u8]) -> Result<()> {
        self.range(nsid, slba, block_size, RangeData::Write(data))
    }

    fn range(&mut self, nsid: u32, slba: u64, block_size: u32, mut data: RangeData<'_>) -> Result<()> {
        let total = data.len();
        if block_size == 0 || !total.is_multiple_of(block_size as usize) {
            return Err(Error::Invalid(format!("{total} bytes is not a whole number of {block_size}-byte blocks")));
        }
        let chunk_blocks = (self.transfer_len_max_bytes() / block_size).clamp(1, NLB_MAX);
        let chunk_bytes = chunk_blocks as usize * block_size as usize;
        let nchunks = total.div_ceil(chunk_bytes);
        let is_write = matches!(data, RangeData::Write(_));
        let mut pool: Vec<Vec<u8>> = Vec::new();
        let mut next = 0usize; // next chunk to submit
        let mut done = 0usize;
        let mut failed_chunks: Vec<usize> = Vec::new();
        let mut qi = self.pick_queue()?;
        let depth = (self.s.io[qi].queue().config().queue_depth as usize).min(RANGE_INFLIGHT_MAX);
        let mut inflight = 0usize;
        while done < nchunks {
            while inflight < depth && (next < nchunks || !failed_chunks.is_empty()) {
                let k = failed_chunks.pop().unwrap_or_else(|| {
                    next += 1;
                    next - 1
                });
                let off = k * chunk_bytes;
                let len = chunk_bytes.min(total - off);
                let nlb = (len / block_size as usize) as u32;
                let lba = slba + (off / block_size as usize) as u64;
                let mut buf = pool.pop().unwrap_or_default();
                buf.resize(len, 0);
                let req = match &data {
                    RangeData::Read(_) => Request::read(Sqe::rw(io::READ, 0, nsid, lba, nlb), buf),
                    RangeData::Write(d) => {
                        buf.copy_from_slice(&d[off..off + len]);
                        Request::write(Sqe::rw(io::WRITE, 0, nsid, lba, nlb), buf)
                    }
                };
                match self.s.io[qi].submit(req.with_tag(k as u64)) {
                    Ok(_) => inflight += 1,
                    Err(e) if e.kind == SubmitErrorKind::Failed && inflight == 0 => {
                        // Not sent: reconnect and submit it again.
                        failed_chunks.push(k);
                        pool.push(e.buf);
                        self.recover()?;
                        qi = self.pick_queue()?;
                    }
                    Err(e) if e.kind == SubmitErrorKind::Failed => {
                        // Outstanding commands complete (unknown fate) first.
                        failed_chunks.push(k);
                        pool.push(e.buf);
                        break;
                    }
                    Err(e) => return Err(Error::Submit(e.kind)),
                }
            }
            let c = match self.s.io[qi].next_completion(Some(Instant::now() + Duration::from_secs(3600))) {
                Ok(Some(c)) => c,
                Ok(None) => continue,
                Err(e) => {
                    // Every outstanding command comes back with an unknown fate first;
                    // reaching here means nothing is left in flight.
                    debug_assert_eq!(self.s.io[qi].queue().outstanding(), 0);
                    let cause = self.queue_error(qi);
                    self.recover().map_err(|_| cause)?;
                    qi = self.pick_queue()?;
                    if inflight > 0 {
                        return Err(e);
                    }
                    continue;
                }
            };
            inflight -= 1;
            let k = c.tag as usize;
            match c.fate {
                Fate::Known if c.cqe.status.is_success() => {
                    if let RangeData::Read(d) = &mut data {
                        let off = k * chunk_bytes;
                        d[off..off + c.buf.len()].copy_from_slice(&c.buf);
                    }
                    done += 1;
                    pool.push(c.buf);
                }
                Fate::Known => {
                    return Err(Error::Status { what: if is_write { "Write" } else { "Read" }, status: c.cqe.status })
                }
                Fate::Unknown => {
                    if is_write && !self.opts.retry_writes_of_unknown_fate {
                        // Let the rest come back, then report; the caller decides.
                        while inflight > 0 {
                            if let Ok(Some(_)) = self.s.io[qi].next_completion(None) {
                                inflight -= 1;
                            } else {
                                break;
                            }
                        }
                        tracing::warn!("write: {}", self.queue_error(qi));
                        return Err(Error::FateUnknown { what: "Write" });
                    }
                    failed_chunks.push(k);
                    pool.push(c.buf);
                    if inflight == 0 {
                        let cause = self.queue_error(qi);
                        self.recover().map_err(|_| cause)?;
                        qi = self.pick_queue()?;
                    }
                }
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------ lifecycle

    /// Reconnect after a transport failure, following `reconnect_delay_s`,
    /// `ctrl_loss_tmo_s` and `fast_io_fail_tmo_s`. Returns once connected, or
    /// an error when the I/O should fail (fast_io_fail) or the controller is
    /// gone (ctrl_loss).
    pub fn recover(&mut self) -> Result<()> {
        if self.gone {
            return Err(Error::Gone("controller lost".into()));
        }
        let lost_at = *self.lost_at.get_or_insert_with(Instant::now);
        let started = Instant::now();
        self.teardown("reconnecting");
        loop {
            let lost_for = lost_at.elapsed();
            if lost_for >= Duration::from_secs(self.opts.ctrl_loss_tmo_s as u64) {
                self.gone = true;
                return Err(Error::Gone(format!(
                    "not reconnected within ctrl_loss_tmo {} s",
                    self.opts.ctrl_loss_tmo_s
                )));
            }
            if let Some(f) = self.opts.fast_io_fail_tmo_s {
                if started.elapsed() >= Duration::from_secs(f as u64) {
                    return Err(Error::Gone(format!("not reconnected within fast_io_fail_tmo {f} s")));
                }
            }
            match establish(self.addr, &self.opts, self.events_tx.clone()) {
                Ok(s) => {
                    tracing::info!(addr = %self.addr, "reconnected");
                    self.s = s;
                    self.lost_at = None;
                    return Ok(());
                }
                Err(e) if e.is_security_refusal() => {
                    // The same secrets fail the same way: give up at once.
                    self.gone = true;
                    return Err(e);
                }
                Err(e) => tracing::warn!(addr = %self.addr, "reconnect failed: {e}"),
            }
            let left = Duration::from_secs(self.opts.ctrl_loss_tmo_s as u64).saturating_sub(lost_at.elapsed());
            std::thread::sleep(Duration::from_secs(self.opts.reconnect_delay_s.max(1) as u64).min(left));
        }
    }

    fn teardown(&mut self, why: &'static str) {
        self.s.keep_alive = None; // stops and joins the thread
        for q in &mut self.s.io {
            q.close(why);
        }
        lock(&self.s.admin).conn.close(why);
    }

    /// Normal shutdown (CC.SHN, wait for CSTS.SHST complete), then close every queue.
    pub fn disconnect(mut self) -> Result<()> {
        self.s.keep_alive = None;
        let r = shutdown(&mut lock(&self.s.admin));
        self.teardown("disconnect");
        r
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.s.keep_alive = None;
    }
}

#[derive(Clone, Copy, Debug)]
enum IoData {
    None,
    Read,
    Write,
    /// Changes data without carrying any (Write Zeroes): a write for the retry policy.
    WriteNoData,
}

enum RangeData<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
}

impl RangeData<'_> {
    fn len(&self) -> usize {
        match self {
            RangeData::Read(d) => d.len(),
            RangeData::Write(d) => d.len(),
        }
    }
}

fn check_nlb(nlb: u32) -> Result<()> {
    if (1..=NLB_MAX).contains(&nlb) {
        Ok(())
    } else {
        Err(Error::Invalid(format!("block count {nlb} out of 1..={NLB_MAX}")))
    }
}

fn is_discovery(opts: &ConnectOptions, id: &IdentifyController) -> bool {
    opts.subnqn == DISCOVERY_NQN || id.cntrltype == cntrltype::DISCOVERY
}

fn transfer_len_max(opts: &ConnectOptions, id: &IdentifyController) -> u32 {
    let mdts = id.mdts_bytes().unwrap_or(u64::MAX);
    (opts.transfer_len_max_bytes as u64).min(mdts).max(TRANSFER_LEN_MIN_BYTES as u64) as u32
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn get_log_page_with(
    exec: &mut dyn FnMut(Request) -> Result<Completion>,
    transfer_len_max_bytes: u32,
    lid_v: u8,
    lsp: u8,
    nsid: u32,
    offset: u64,
    len: u64,
    rae: bool,
) -> Result<Vec<u8>> {
    if len == 0 || len > LOG_PAGE_LEN_MAX_BYTES || !len.is_multiple_of(4) || !offset.is_multiple_of(4) {
        return Err(Error::Invalid(format!("log page length {len} / offset {offset} must be dword multiples")));
    }
    let mut out = Vec::with_capacity(len as usize);
    let step = (transfer_len_max_bytes as u64) & !3;
    while (out.len() as u64) < len {
        let n = step.min(len - out.len() as u64);
        let cmd = GetLogPageCmd { lid: lid_v, lsp, rae, len: n, offset: offset + out.len() as u64, lsi: 0, nsid };
        let c = exec(Request::read(cmd.to_sqe(0), vec![0; n as usize]))?;
        out.extend_from_slice(&c.buf);
    }
    Ok(out)
}

/// A Connect's completion: success, or the refusal in words.
fn check_connect(what: &'static str, c: Completion, opts: &ConnectOptions) -> Result<Completion> {
    let dw0 = c.cqe.dw0;
    match check(what, c) {
        Err(Error::Status { what, status }) => {
            Err(match fabrics::connect_refusal(status, dw0, &opts.subnqn, &opts.hostnqn) {
                Some(why) => Error::ConnectRefused { what, status, why },
                None => Error::Status { what, status },
            })
        }
        r => r,
    }
}

fn connect_data(opts: &ConnectOptions, cntlid: u16) -> Vec<u8> {
    let d = ConnectData { hostid: opts.hostid, cntlid, subnqn: opts.subnqn.clone(), hostnqn: opts.hostnqn.clone() };
    d.encode().to_vec()
}

/// One full bring-up. On error everything opened so far is closed (dropped).
fn establish(addr: SocketAddr, opts: &ConnectOptions, events: Sender<AsyncEvent>) -> Result<Session> {
    let timeout = opts.connect_timeout();
    let discovery_nqn = opts.subnqn == DISCOVERY_NQN;
    let acfg = QueueConfig {
        hdr_digest: opts.hdr_digest,
        data_digest: opts.data_digest,
        queue_depth: ADMIN_QUEUE_DEPTH,
        transfer_len_max_bytes: opts.transfer_len_max_bytes,
        command_timeout_ms: opts.admin_timeout_ms,
        ..QueueConfig::admin()
    };
    // TLS: every queue does its own handshake with the same identity and PSK.
    let mut tls = opts.tls_psk().map_err(Error::Invalid)?;
    if opts.concat && tls.is_some() {
        return Err(Error::Invalid("concat (secure channel concatenation) generates its TLS PSK: drop tls".into()));
    }
    let conn = QueueConn::connect_tls(addr, acfg.clone(), timeout, tls.as_ref())?;
    let mut a = Admin { conn, events, last_keep_alive: Instant::now(), aer_armed: false };

    // Admin Connect. Linux sends KATO on the admin Connect only.
    let kato_ms = opts.kato_s.saturating_mul(1000);
    let sqe = ConnectCmd { recfmt: 0, qid: 0, sqsize: ADMIN_QUEUE_DEPTH - 1, cattr: 0, kato_ms }.to_sqe(0);
    let c = a.connect(Request::write(sqe, connect_data(opts, fabrics::CNTLID_DYNAMIC)), opts)?;
    let mut cntlid = c.cqe.dw0 as u16;
    // DH-HMAC-CHAP: one transaction per queue, T_IDs counted per controller (as Linux).
    let mut transaction_id = 0u16;
    if opts.concat {
        // Secure channel concatenation (Linux 6.15 nvme_tcp_setup_ctrl):
        // authenticate in clear for a generated PSK, then reset the admin
        // connection: the plain queue (and its controller) goes, the admin
        // queue comes back over TLS with that PSK, connects a new controller
        // and authenticates again, replacing the PSK the I/O queues then use.
        let generated = a.conn.authenticate_concat(opts, transaction_id)?;
        a.conn.close("secure channel concatenation: reconnecting over TLS");
        a.conn = QueueConn::connect_tls(addr, acfg, timeout, Some(&generated))?;
        let c = a.connect(Request::write(sqe, connect_data(opts, fabrics::CNTLID_DYNAMIC)), opts)?;
        cntlid = c.cqe.dw0 as u16;
        transaction_id = transaction_id.wrapping_add(1);
        tls = Some(a.conn.authenticate_concat(opts, transaction_id)?);
    } else {
        a.conn.authenticate_after_connect(opts, c.cqe.dw0, transaction_id)?;
    }

    let prop_get = |a: &mut Admin, off: u32, size8: bool| -> Result<u64> {
        Ok(a.execute("Property Get", Request::new(PropertyCmd::get_sqe(0, off, size8)))?.cqe.result64())
    };
    let cap_raw = prop_get(&mut a, prop::CAP, true)?;
    let cap = Cap::from_u64(cap_raw);
    let vs = prop_get(&mut a, prop::VS, false)? as u32;

    // Enable: CSS = I/O command sets when CAP says so (as Linux), else NVM.
    let css = if cap.css_io_sets { 6 } else { 0 };
    let cc_v = cc::EN | (css << cc::CSS_SHIFT) | (6 << cc::IOSQES_SHIFT) | (4 << cc::IOCQES_SHIFT);
    a.execute("Property Set CC", Request::new(PropertyCmd::set_sqe(0, prop::CC, false, cc_v as u64)))?;
    let ready_ms = (cap.to_500ms as u64).max(1) * 500;
    let deadline = Instant::now() + Duration::from_millis(ready_ms);
    let mut backoff_ms = 1;
    loop {
        let st = prop_get(&mut a, prop::CSTS, false)? as u32;
        if st & csts::CFS != 0 {
            return Err(Error::Controller("CSTS.CFS set (controller fatal status) while enabling".into()));
        }
        if st & csts::RDY != 0 {
            break;
        }
        if Instant::now() >= deadline {
            return Err(Error::Controller(format!("CSTS.RDY not set within CAP.TO ({ready_ms} ms)")));
        }
        std::thread::sleep(Duration::from_millis(backoff_ms));
        backoff_ms = (backoff_ms * 2).min(100);
    }

    let b = a
        .execute(
            "Identify",
            Request::read(
                IdentifyCmd { cns: cns::CONTROLLER, cntid: 0, csi: 0, nsid: 0 }.to_sqe(0),
                vec![0; IDENTIFY_LEN],
            ),
        )?
        .buf;
    let id = IdentifyController::parse(&b).ok_or_else(|| Error::Controller("short Identify Controller".into()))?;
    let disc = discovery_nqn || id.cntrltype == cntrltype::DISCOVERY;

    let mut io = Vec::new();
    if !disc {
        let want = opts.nr_io_queues;
        let v = a.execute(
            "Set Features Number of Queues",
            Request::new(FeatureCmd::set_sqe(0, fid::NUM_QUEUES, features::num_queues_value(want, want))),
        )?;
        let (nsq, ncq) = features::num_queues_from(v.cqe.dw0);
        let n = (want as u32).min(nsq).min(ncq) as u16;
        let depth = opts.queue_size.min(cap.mqes.saturating_add(1)).max(2);
        let in_capsule = id.in_capsule_data_bytes();
        for qid in 1..=n {
            let cfg = QueueConfig {
                hdr_digest: opts.hdr_digest,
                data_digest: opts.data_digest,
                in_capsule_data_max_bytes: in_capsule,
                transfer_len_max_bytes: transfer_len_max(opts, &id),
                command_timeout_ms: opts.io_timeout_ms,
                ..QueueConfig::io(qid, depth)
            };
            let mut c = QueueConn::connect_tls(addr, cfg, timeout, tls.as_ref())?;
            let sqe = ConnectCmd { recfmt: 0, qid, sqsize: depth - 1, cattr: 0, kato_ms: 0 }.to_sqe(0);
            let data = connect_data(opts, cntlid);
            let done = check_connect("Connect I/O queue", c.execute(Request::write(sqe, data))?, opts)?;
            transaction_id = transaction_id.wrapping_add(1);
            // Concatenation: the I/O queues are not authenticated (Linux:
            // admin queue only), unless the controller asks all the same.
            if !opts.concat || done.cqe.dw0 & crate::auth::CONNECT_DW0_ATR != 0 {
                c.authenticate_after_connect(opts, done.cqe.dw0, transaction_id)?;
            }
            io.push(c);
        }
    }

    // Asynchronous events: enable what the controller supports, arm one AER.
    let wanted = aen::CFG_NS_ATTR | aen::CFG_ANA_CHANGE | aen::CFG_DISC_CHANGE;
    let mask = id.oaes & wanted;
    if mask != 0 {
        let r = a.execute(
            "Set Features Async Event Config",
            Request::new(FeatureCmd::set_sqe(0, fid::ASYNC_EVENT_CONFIG, mask)),
        );
        if let Err(e) = r {
            tracing::debug!("async event configuration refused: {e}");
        }
    }
    a.arm_aer();

    let admin = Arc::new(Mutex::new(a));
    let keep_alive = if opts.kato_s > 0 {
        let (stop_tx, stop_rx) = mpsc::channel();
        let period = Duration::from_millis(opts.kato_ms() / 2);
        let a2 = admin.clone();
        let t = std::thread::Builder::new()
            .name("nvmf-keepalive".into())
            .spawn(move || keep_alive_thread(a2, period, stop_rx))
            .map_err(Error::Io)?;
        Some(KeepAlive { stop: stop_tx, thread: Some(t) })
    } else {
        None
    };
    Ok(Session { admin, io, cntlid, cap, vs, id, keep_alive })
}

fn shutdown(a: &mut Admin) -> Result<()> {
    if a.conn.queue().error().is_some() {
        return Ok(()); // nothing to shut down over
    }
    let cc_v = a.execute("Property Get CC", Request::new(PropertyCmd::get_sqe(0, prop::CC, false)))?.cqe.dw0;
    let cc_v = (cc_v & !cc::SHN_MASK) | (1 << cc::SHN_SHIFT);
    a.execute("Property Set CC", Request::new(PropertyCmd::set_sqe(0, prop::CC, false, cc_v as u64)))?;
    let deadline = Instant::now() + Duration::from_millis(SHUTDOWN_TIMEOUT_MS);
    loop {
        let st = a.execute("Property Get CSTS", Request::new(PropertyCmd::get_sqe(0, prop::CSTS, false)))?.cqe.dw0;
        if st & csts::SHST_MASK == csts::SHST_COMPLETE {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout("shutdown (CSTS.SHST)"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
