//! NVMe/TCP queue state machine (controller side), sans-IO.
//!
//! One [`Queue`] per TCP connection. Bytes go in through [`Queue::on_recv`],
//! PDUs come out appended to a `Vec<u8>`; storage for fd backends is requested
//! through the [`StorageIo`] trait and completes through
//! [`Queue::on_storage`]; time is passed in as `now_ms`. No sockets, clocks
//! or threads here, so every path is unit-testable with byte vectors.
//!
//! Sequence: ICReq -> ICResp; then the first capsule must be a Connect, which
//! binds the queue to a controller (admin queue: a new one; I/O queue: an
//! existing one, maybe owned by another core). Commands then flow:
//! - host -> controller data: in the capsule (up to IOCCSZ) or fetched with
//!   one R2T for the whole transfer, answered by H2CData PDUs of at most
//!   MAXH2CDATA bytes;
//! - controller -> host data: C2HData PDUs of at most `max_c2h_data_bytes`,
//!   PDO aligned to the host's HPDA, the last one with SUCCESS (and no
//!   CapsuleResp) when the host disabled SQ flow control.
//!
//! Fatal transport errors send a C2HTermReq (FES/FEI) and close after flush.
//!
//! ## Bounds
//!
//! | what | bound |
//! | --- | --- |
//! | largest PDU accepted | 72 + 260 + max(`in_capsule_data_bytes`, 8 KiB, `max_h2c_data_bytes`) bytes, checked from the 8-byte header ([`QueueLimits::pdu_len_max`]) |
//! | in-capsule data | I/O queues `limits.in_capsule_data_bytes`, admin queue [`ADMIN_IN_CAPSULE_BYTES`] |
//! | commands holding state (R2T, storage) | SQSIZE + 1 slots, fixed at Connect; more → Internal Error |
//! | R2Ts per command | 1 (the whole transfer; the host splits into ≤ MAXH2CDATA PDUs) |
//! | data buffers | one per slot, grown to the largest transfer it served (≤ `mdts_bytes`, 2× for Compare); none for memory-backend reads/writes |
//! | admin data transfer | [`ADMIN_XFER_BYTES_MAX`] |
//! | held AERs | `limits.aer_max`; undelivered events per controller 64 |
//! | ICReq + Connect | within `limits.connect_timeout_ms` |
//! | keep-alive | KATO × 1.5 without admin-queue traffic tears the controller down |

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use nvmf_proto::copy::copy_bytes;
use nvmf_proto::cqe::Cqe;
use nvmf_proto::digest::crc32c;
use nvmf_proto::fabrics::{ConnectCmd, CONNECT_DATA_LEN};
use nvmf_proto::log::ana_state;
use nvmf_proto::opcodes::{admin as admin_op, fctype};
use nvmf_proto::pdu::{
    self, dgst, encode_capsule_resp, encode_data_pdu, encode_data_pdu_header, encode_ic_resp, encode_r2t,
    encode_term_req, fes, finish_data_pdu, flags, DataHdr, IcReq, IcResp, TxConfig,
};
use nvmf_proto::status::{generic, media, path, sct};
use nvmf_proto::{decode, Decoded, FrameConfig, Pdu, PduError, Role, Sqe, Status};

use crate::admin::{self, AdminCtx, AdminOutcome, AdminState};
use crate::buf::AlignedBuf;
use crate::ctrl::{Controller, CtrlKind, QueueCounters};
use crate::fabrics::{self, CcChange};
use crate::io_cmd::{self, IoPlan};
use crate::subsys::{Namespace, NsTable, Port, Target};

/// In-capsule data the admin queue accepts (Linux NVME_TCP_ADMIN_CCSZ: Connect data and small Set Features).
pub const ADMIN_IN_CAPSULE_BYTES: u32 = 8192;
/// Largest data transfer of an admin command (Get Log Page, Identify).
pub const ADMIN_XFER_BYTES_MAX: u32 = 4 << 20;
/// Data PDU overhead bound: largest PDO (one byte) plus the data digest.
const PDU_OVERHEAD_MAX: u32 = 256 + pdu::DIGEST_LEN as u32;

/// Storage submissions for descriptor backends (the engine's io_uring).
pub trait StorageIo {
    /// # Safety
    /// `buf` must stay valid and untouched until the completion for `token`.
    unsafe fn read(&mut self, fd: RawFd, offset: u64, buf: *mut u8, len: u32, token: u64);
    /// # Safety
    /// `buf` must stay valid and untouched until the completion for `token`.
    unsafe fn write(&mut self, fd: RawFd, offset: u64, buf: *const u8, len: u32, token: u64);
    fn fsync(&mut self, fd: RawFd, datasync: bool, token: u64);
}

/// What the driver should do with the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueFlow {
    Continue,
    CloseAfterFlush,
    CloseNow,
}

/// Queue limits derived from the target configuration.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub in_capsule_data_bytes: u32,
    pub max_h2c_data_bytes: u32,
    pub max_c2h_data_bytes: u32,
    pub mdts_bytes: u32,
    pub connect_timeout_ms: u64,
}

impl QueueLimits {
    pub fn from_target(t: &Target) -> QueueLimits {
        let l = &t.limits;
        QueueLimits {
            in_capsule_data_bytes: l.in_capsule_data_bytes,
            max_h2c_data_bytes: l.max_h2c_data_bytes.max(4096),
            max_c2h_data_bytes: l.max_c2h_data_bytes.max(4096),
            mdts_bytes: l.mdts_bytes.max(4096),
            connect_timeout_ms: l.connect_timeout_ms as u64,
        }
    }
    /// Largest PDU a host may send us (the receive buffer must hold two).
    pub fn pdu_len_max(&self) -> u32 {
        pdu::CAPSULE_CMD_HLEN as u32
            + PDU_OVERHEAD_MAX
            + self.in_capsule_data_bytes.max(ADMIN_IN_CAPSULE_BYTES).max(self.max_h2c_data_bytes)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitIcReq,
    Ready,
    /// A TermReq was sent or received: ignore input, close.
    Closing,
}

/// A fatal transport error: C2HTermReq with these fields, then close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fatal {
    fes: u16,
    fei: u32,
    why: &'static str,
}

fn fatal(fes: u16, fei: u32, why: &'static str) -> Fatal {
    Fatal { fes, fei, why }
}

/// State bound at Connect.
struct Conn {
    ctrl: Arc<Controller>,
    qid: u16,
    sq_flow_control_disabled: bool,
    /// SQ head we report (only meaningful with flow control).
    sqhd: u16,
    /// Entries in the SQ (SQSIZE + 1).
    sq_entries: u32,
    /// Namespace snapshot; `None` only while an I/O command borrows it.
    ns: Option<Arc<NsTable>>,
    ns_generation: u64,
    admin: Option<Box<AdminState>>,
    /// ANA change count the cache below was built at.
    ana_chgcnt: u64,
    /// (ANA group, state) for groups not accessible through this port; empty
    /// in the common case, so the per-command check is one counter load.
    ana_unusable: Vec<(u32, u8)>,
}

/// Stand-in while the snapshot is borrowed (never observed in practice).
static NO_NAMESPACES: NsTable = NsTable { list: Vec::new() };

impl Conn {
    /// Pick up namespace changes: one relaxed-cost load per command.
    #[inline]
    fn refresh_namespaces(&mut self) {
        if let Some(s) = &self.ctrl.subsys {
            let g = s.ns_generation.load(Ordering::Acquire);
            if g != self.ns_generation {
                self.ns = Some(s.namespaces());
                self.ns_generation = g;
            }
        }
    }
}

/// What a slot does once its data or storage op completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    Admin,
    Io(IoPlan),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Free,
    /// R2T sent; collecting H2CData.
    AwaitData,
    /// Storage op in flight.
    Storage,
}

/// One in-flight command that outlives the PDU that carried it.
struct Slot {
    stage: Stage,
    /// Bumped on every reuse; part of storage tokens.
    generation: u16,
    sqe: Sqe,
    work: Work,
    ns: Option<Arc<Namespace>>,
    buf: AlignedBuf,
    /// Host data expected (R2T length) and received so far.
    xfer_len: u32,
    received: u32,
    /// Set when an H2CData digest failed: complete with this once all data is in.
    error: Option<Status>,
    /// Storage progress in bytes (short reads/writes are resubmitted).
    done_bytes: u32,
    /// A write to a memory backend stored piece by piece as H2CData arrives.
    streamed: bool,
    /// µs times (latency histograms): slot taken, storage op submitted (0: none).
    arrival_us: u64,
    submit_us: u64,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            stage: Stage::Free,
            generation: 0,
            sqe: Sqe::default(),
            work: Work::Admin,
            ns: None,
            buf: AlignedBuf::default(),
            xfer_len: 0,
            received: 0,
            error: None,
            done_bytes: 0,
            streamed: false,
            arrival_us: 0,
            submit_us: 0,
        }
    }
}

const OP_READ: u64 = 1;
const OP_WRITE: u64 = 2;
const OP_FSYNC: u64 = 3;

fn token(slot: usize, generation: u16, op: u64) -> u64 {
    slot as u64 | ((generation as u64) << 16) | (op << 48)
}
fn untoken(t: u64) -> (usize, u16, u64) {
    ((t & 0xffff) as usize, (t >> 16) as u16, t >> 48)
}

/// Latency histogram index of an I/O opcode: 0 read, 1 write, None for others.
#[inline]
fn latency_index(opcode: u8) -> Option<usize> {
    match opcode {
        nvmf_proto::opcodes::io::READ => Some(0),
        nvmf_proto::opcodes::io::WRITE => Some(1),
        _ => None,
    }
}

fn st(sct_v: u8, sc: u8) -> Status {
    Status::new(sct_v, sc).dnr()
}

/// Data transfer direction from the opcode (bits 1:0; FCTYPE for Fabrics).
fn data_direction(sqe: &Sqe) -> u8 {
    if sqe.opcode == admin_op::FABRICS {
        sqe.fctype() & 3
    } else {
        sqe.opcode & 3
    }
}
const DIR_H2C: u8 = 1;
const DIR_C2H: u8 = 2;

/// Where the host data of a command is.
enum HostData<'a> {
    None,
    Capsule(&'a [u8]),
    R2t(u32),
}

/// One NVMe/TCP queue (connection) on the controller side.
pub struct Queue {
    target: Arc<Target>,
    port: Arc<Port>,
    local: SocketAddr,
    peer: SocketAddr,
    limits: QueueLimits,
    phase: Phase,
    created_ms: Option<u64>,
    now_ms: u64,
    frame: FrameConfig,
    tx: TxConfig,
    conn: Option<Conn>,
    slots: Vec<Slot>,
    free: Vec<u16>,
    /// Admin command output, reused.
    scratch: Vec<u8>,
    counters: Arc<QueueCounters>,
    /// Latency histograms wanted (metrics on): the driver then passes µs time.
    latency: bool,
    /// µs clock from the driver ([`Queue::set_now_us`]); 0 when latency is off.
    now_us: u64,
    /// Read data the driver sends without copying: (byte position in the
    /// output where it belongs, the data). Drained with [`Queue::take_lent`]
    /// after every call that writes output.
    lent: Vec<(usize, &'static [u8])>,
}

impl Queue {
    pub fn new(target: Arc<Target>, port: Arc<Port>, local: SocketAddr, peer: SocketAddr) -> Queue {
        let limits = QueueLimits::from_target(&target);
        let latency = target.latency_histograms.load(Ordering::Relaxed);
        Queue {
            target,
            port,
            local,
            peer,
            limits,
            phase: Phase::AwaitIcReq,
            created_ms: None,
            now_ms: 0,
            frame: FrameConfig::before_ic(Role::Controller),
            tx: TxConfig::default(),
            conn: None,
            slots: Vec::new(),
            free: Vec::new(),
            lent: Vec::new(),
            scratch: Vec::new(),
            counters: Arc::new(QueueCounters::default()),
            latency,
            now_us: 0,
        }
    }

    /// Whether the driver should call [`Queue::set_now_us`] before each input.
    #[inline]
    pub fn wants_time_us(&self) -> bool {
        self.latency
    }
    /// Microsecond time for latency histograms (monotonic, any epoch).
    #[inline]
    pub fn set_now_us(&mut self, now_us: u64) {
        self.now_us = now_us;
    }

    /// Controller ID and queue ID once connected.
    pub fn ids(&self) -> Option<(u16, u16)> {
        self.conn.as_ref().map(|c| (c.ctrl.cntlid, c.qid))
    }

    /// Commands holding a slot (awaiting data or storage).
    pub fn inflight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    // ------------------------------------------------------------ input

    /// Read data to splice into the output without copying, in order: each
    /// `(at, data)` goes before byte `at` of the output this queue wrote (the
    /// `out` of the call that produced it). The driver must take them after
    /// every `on_recv` / `on_storage`; the data is `'static` and never changes.
    pub fn take_lent(&mut self) -> std::vec::Drain<'_, (usize, &'static [u8])> {
        self.lent.drain(..)
    }

    /// Parse every complete PDU in `rx`; returns the bytes consumed.
    pub fn on_recv(&mut self, rx: &[u8], now_ms: u64, out: &mut Vec<u8>, io: &mut dyn StorageIo) -> (usize, QueueFlow) {
        debug_assert!(self.lent.is_empty(), "lent data not taken after the previous call");
        self.now_ms = now_ms;
        self.created_ms.get_or_insert(now_ms);
        let mut pos = 0;
        loop {
            if self.phase == Phase::Closing {
                return (rx.len(), QueueFlow::CloseAfterFlush);
            }
            let buf = &rx[pos..];
            if self.phase == Phase::AwaitIcReq && !buf.is_empty() {
                // Only ICReq (or a TermReq) may open the connection: any other
                // known PDU type is out of sequence, whatever its length.
                let t = pdu::PduType::from_u8(buf[0]);
                if t.is_some_and(|t| !matches!(t, pdu::PduType::IcReq | pdu::PduType::H2CTermReq)) {
                    let hdr = &buf[..buf.len().min(8)];
                    self.terminate(out, fatal(fes::PDU_SEQUENCE_ERROR, 0, "PDU before ICReq"), hdr);
                    return (rx.len(), QueueFlow::CloseAfterFlush);
                }
            }
            match decode(buf, &self.frame) {
                Ok(Decoded::NeedMore(_)) => return (pos, QueueFlow::Continue),
                Ok(Decoded::Pdu(p, n)) => {
                    debug_assert!(n > 0 && n <= buf.len());
                    let hlen = (buf[2] as usize).min(n);
                    match self.on_pdu(p, out, io) {
                        Ok(QueueFlow::Continue) => pos += n,
                        Ok(flow) => {
                            self.phase = Phase::Closing;
                            return (rx.len(), flow);
                        }
                        Err(f) => {
                            self.terminate(out, f, &buf[..hlen]);
                            return (rx.len(), QueueFlow::CloseAfterFlush);
                        }
                    }
                }
                Err(PduError { fes, fei, reason }) => {
                    if fes == pdu::fes::HEADER_DIGEST_ERROR {
                        QueueCounters::bump(&self.counters.io.digest_errors, 1);
                    }
                    let hdr = &buf[..buf.len().min(pdu::TERM_DATA_LEN_MAX).min(buf[2].max(8) as usize)];
                    self.terminate(out, Fatal { fes, fei, why: reason }, hdr);
                    return (rx.len(), QueueFlow::CloseAfterFlush);
                }
            }
        }
    }

    fn terminate(&mut self, out: &mut Vec<u8>, f: Fatal, offending: &[u8]) {
        tracing::warn!(
            peer = %self.peer,
            "protocol error from host: {} (FES {:#x}, FEI {}); sending C2HTermReq and closing",
            f.why,
            f.fes,
            f.fei
        );
        encode_term_req(out, true, f.fes, f.fei, offending);
        self.phase = Phase::Closing;
    }

    fn on_pdu(&mut self, p: Pdu<'_>, out: &mut Vec<u8>, io: &mut dyn StorageIo) -> Result<QueueFlow, Fatal> {
        match p {
            Pdu::IcReq(ic) => self.on_ic_req(&ic, out).map(|_| QueueFlow::Continue),
            Pdu::TermReq { fes: f, fei, .. } => {
                tracing::warn!(peer = %self.peer, "host sent H2CTermReq (FES {f:#x}, FEI {fei}); closing");
                Ok(QueueFlow::CloseNow)
            }
            _ if self.phase != Phase::Ready => Err(fatal(fes::PDU_SEQUENCE_ERROR, 0, "PDU before ICReq")),
            Pdu::CapsuleCmd { sqe, data, data_digest_ok } => self.on_capsule(sqe, data, data_digest_ok, out, io),
            Pdu::H2CData { hdr, flags: f, data, data_digest_ok } => {
                self.on_h2c_data(&hdr, f, data, data_digest_ok, out, io).map(|_| QueueFlow::Continue)
            }
            // decode() rejects controller-to-host PDUs for the controller role.
            _ => Err(fatal(fes::INVALID_HEADER_FIELD, 0, "unexpected PDU type")),
        }
    }

    fn on_ic_req(&mut self, ic: &IcReq, out: &mut Vec<u8>) -> Result<(), Fatal> {
        if self.phase != Phase::AwaitIcReq {
            return Err(fatal(fes::PDU_SEQUENCE_ERROR, 0, "second ICReq"));
        }
        if ic.pfv != 0 {
            return Err(fatal(fes::INVALID_HEADER_FIELD, 8, "unsupported PDU format version"));
        }
        if ic.hpda > 31 {
            return Err(fatal(fes::INVALID_HEADER_FIELD, 10, "HPDA out of range"));
        }
        let hd = ic.dgst & dgst::HEADER != 0;
        let dd = ic.dgst & dgst::DATA != 0;
        encode_ic_resp(
            out,
            &IcResp {
                pfv: 0,
                cpda: 0,
                dgst: ic.dgst & (dgst::HEADER | dgst::DATA),
                maxh2cdata: self.limits.max_h2c_data_bytes,
            },
        );
        self.frame = FrameConfig {
            role: Role::Controller,
            hdgst: hd,
            ddgst: dd,
            pdu_len_max: self.limits.pdu_len_max(),
            rx_data_align: 4,
        };
        self.tx = TxConfig { hdgst: hd, ddgst: dd, data_align: (ic.hpda as u32 + 1) * 4 };
        self.phase = Phase::Ready;
        tracing::debug!(peer = %self.peer, hdgst = hd, ddgst = dd, hpda = ic.hpda, "ICReq accepted");
        Ok(())
    }

    // ------------------------------------------------------------ capsules

    fn on_capsule(
        &mut self,
        sqe: Sqe,
        data: &[u8],
        digest_ok: bool,
        out: &mut Vec<u8>,
        io: &mut dyn StorageIo,
    ) -> Result<QueueFlow, Fatal> {
        if let Some(c) = self.conn.as_mut() {
            if !c.sq_flow_control_disabled {
                c.sqhd = ((c.sqhd as u32 + 1) % c.sq_entries) as u16;
            }
            if let Some(a) = c.admin.as_mut() {
                a.last_traffic_ms = self.now_ms;
            }
        }
        tracing::trace!(peer = %self.peer, opcode = sqe.opcode, cid = sqe.cid, "capsule");
        if !data.is_empty() && !digest_ok {
            tracing::warn!(peer = %self.peer, cid = sqe.cid, "data digest error in command capsule");
            QueueCounters::bump(&self.counters.io.digest_errors, 1);
            self.respond(out, sqe.cid, Status::new(sct::GENERIC, generic::TRANSIENT_TRANSPORT_ERROR), 0, 0);
            return Ok(QueueFlow::Continue);
        }
        let is_admin_queue = self.conn.as_ref().map(|c| c.qid == 0).unwrap_or(true);
        let icd_limit = if is_admin_queue { ADMIN_IN_CAPSULE_BYTES } else { self.limits.in_capsule_data_bytes };
        if data.len() as u32 > icd_limit {
            self.respond(out, sqe.cid, st(sct::GENERIC, generic::SGL_OFFSET_INVALID), 0, 0);
            return Ok(QueueFlow::Continue);
        }
        if sqe.opcode == admin_op::FABRICS {
            return Ok(self.fabrics_command(sqe, data, out));
        }
        if self.conn.is_none() {
            self.respond(out, sqe.cid, st(sct::GENERIC, generic::COMMAND_SEQUENCE_ERROR), 0, 0);
            return Ok(QueueFlow::Continue);
        }
        if sqe.sgl1.length > 0 && sqe.psdt() == 0 {
            // PRPs do not exist on fabrics.
            self.respond(out, sqe.cid, st(sct::GENERIC, generic::INVALID_FIELD), 0, 0);
            return Ok(QueueFlow::Continue);
        }
        if is_admin_queue {
            self.admin_command(sqe, data, out);
        } else {
            self.io_command(sqe, data, out, io);
        }
        Ok(QueueFlow::Continue)
    }

    /// Locate the host data of `sqe` (in the capsule or to fetch with R2T).
    fn host_data<'a>(sqe: &Sqe, capsule: &'a [u8], limit: u32) -> Result<HostData<'a>, Status> {
        let len = sqe.sgl1.length;
        if len == 0 {
            return Ok(HostData::None);
        }
        if sqe.sgl1.is_in_capsule() {
            let off = sqe.sgl1.address;
            if off > capsule.len() as u64 {
                return Err(st(sct::GENERIC, generic::SGL_OFFSET_INVALID));
            }
            let off = off as usize;
            if off + len as usize > capsule.len() {
                return Err(st(sct::GENERIC, generic::DATA_SGL_LENGTH_INVALID));
            }
            Ok(HostData::Capsule(&capsule[off..off + len as usize]))
        } else if sqe.sgl1.is_transport() {
            if len > limit {
                return Err(st(sct::GENERIC, generic::INVALID_FIELD));
            }
            Ok(HostData::R2t(len))
        } else {
            Err(st(sct::GENERIC, generic::SGL_TYPE_INVALID))
        }
    }

    /// Check the SGL of a controller-to-host transfer.
    fn c2h_sgl_ok(sqe: &Sqe, limit: u32) -> Result<(), Status> {
        let len = sqe.sgl1.length;
        if len == 0 {
            return Ok(());
        }
        if !sqe.sgl1.is_transport() {
            return Err(st(sct::GENERIC, generic::SGL_TYPE_INVALID));
        }
        if len > limit {
            return Err(st(sct::GENERIC, generic::INVALID_FIELD));
        }
        Ok(())
    }

    fn fabrics_command(&mut self, sqe: Sqe, data: &[u8], out: &mut Vec<u8>) -> QueueFlow {
        match sqe.fctype() {
            fctype::CONNECT => {
                if self.conn.is_some() {
                    self.respond(out, sqe.cid, st(sct::GENERIC, generic::COMMAND_SEQUENCE_ERROR), 0, 0);
                    return QueueFlow::Continue;
                }
                let connect_data = match Self::host_data(&sqe, data, CONNECT_DATA_LEN as u32) {
                    Ok(HostData::Capsule(d)) => d,
                    // Connect data always travels in the capsule (the queue is not set up for R2T yet).
                    Ok(_) => {
                        self.respond(out, sqe.cid, st(sct::GENERIC, generic::DATA_SGL_LENGTH_INVALID), 0, 0);
                        return QueueFlow::Continue;
                    }
                    Err(s) => {
                        self.respond(out, sqe.cid, s, 0, 0);
                        return QueueFlow::Continue;
                    }
                };
                self.connect(&sqe, connect_data, out)
            }
            fctype::PROPERTY_GET | fctype::PROPERTY_SET => {
                let set = sqe.fctype() == fctype::PROPERTY_SET;
                let Some(c) = self.conn.as_mut() else {
                    self.respond(out, sqe.cid, st(sct::GENERIC, generic::COMMAND_SEQUENCE_ERROR), 0, 0);
                    return QueueFlow::Continue;
                };
                let depth = c.ctrl.subsys.as_ref().map(|s| s.queue_depth_max).unwrap_or(2);
                let kind = c.ctrl.kind;
                let Some(a) = c.admin.as_mut() else {
                    self.respond(out, sqe.cid, st(sct::GENERIC, generic::INVALID_OPCODE), 0, 0);
                    return QueueFlow::Continue;
                };
                let (status, v, change) = fabrics::property(&sqe, set, &mut a.regs, kind, depth);
                match change {
                    CcChange::Enabled => tracing::debug!("ctrl {}: enabled", c.ctrl.cntlid),
                    CcChange::Reset => {
                        // Outstanding AERs die with the reset; the host forgets them too.
                        a.aers.clear();
                        tracing::info!("ctrl {}: reset by host (CC.EN 1 -> 0)", c.ctrl.cntlid);
                    }
                    CcChange::Shutdown => tracing::info!("ctrl {}: shutdown by host", c.ctrl.cntlid),
                    CcChange::None => {}
                }
                self.respond(out, sqe.cid, status, v as u32, (v >> 32) as u32);
                QueueFlow::Continue
            }
            fctype::DISCONNECT => match &self.conn {
                Some(c) if c.qid != 0 => {
                    self.respond(out, sqe.cid, Status::SUCCESS, 0, 0);
                    QueueFlow::CloseAfterFlush
                }
                _ => {
                    self.respond(out, sqe.cid, st(sct::GENERIC, generic::INVALID_FIELD), 0, 0);
                    QueueFlow::Continue
                }
            },
            _ => {
                self.respond(out, sqe.cid, st(sct::GENERIC, generic::INVALID_OPCODE), 0, 0);
                QueueFlow::Continue
            }
        }
    }

    fn connect(&mut self, sqe: &Sqe, data: &[u8], out: &mut Vec<u8>) -> QueueFlow {
        let c = ConnectCmd::parse(sqe);
        match fabrics::connect(&self.target, &self.port, sqe, data) {
            Err(e) => {
                let d = nvmf_proto::fabrics::ConnectData::parse(data);
                tracing::warn!(
                    peer = %self.peer,
                    "connect refused: {} (qid {}, subsystem {:?}, host {:?})",
                    e.status,
                    c.qid,
                    d.as_ref().map(|d| d.subnqn.as_str()).unwrap_or("?"),
                    d.as_ref().map(|d| d.hostnqn.as_str()).unwrap_or("?"),
                );
                self.respond(out, sqe.cid, e.status, e.dw0, 0);
                QueueFlow::Continue
            }
            Ok(ok) => {
                let ctrl = ok.ctrl;
                let entries = ok.sqsize as u32 + 1;
                self.slots = (0..entries).map(|_| Slot::default()).collect();
                self.free = (0..entries as u16).rev().collect();
                let (ns, gen) = match &ctrl.subsys {
                    Some(s) => (s.namespaces(), s.ns_generation.load(Ordering::Acquire)),
                    None => (Arc::new(NsTable::default()), 0),
                };
                let admin = (ok.qid == 0).then(|| Box::new(AdminState::new(self.now_ms)));
                ctrl.add_peer(ok.qid, self.peer);
                if ok.qid == 0 {
                    tracing::info!(
                        "ctrl {} connected: host {}, subsystem {}, peer {}, kato {} ms",
                        ctrl.cntlid,
                        ctrl.hostnqn,
                        ctrl.nqn(),
                        self.peer,
                        ctrl.kato_ms.load(Ordering::Relaxed)
                    );
                } else {
                    ctrl.register_counters(self.counters.clone());
                    tracing::debug!("ctrl {}: I/O queue {} connected ({} entries)", ctrl.cntlid, ok.qid, entries);
                }
                let cntlid = ctrl.cntlid;
                self.conn = Some(Conn {
                    ctrl,
                    qid: ok.qid,
                    sq_flow_control_disabled: ok.sq_flow_control_disabled,
                    sqhd: 0,
                    sq_entries: entries,
                    ns: Some(ns),
                    ns_generation: gen,
                    admin,
                    ana_chgcnt: 0,
                    ana_unusable: Vec::new(),
                });
                // SQHD after consuming the Connect itself.
                if let Some(c) = self.conn.as_mut() {
                    if !c.sq_flow_control_disabled {
                        c.sqhd = 1 % c.sq_entries as u16;
                    }
                }
                self.respond(out, sqe.cid, Status::SUCCESS, cntlid as u32, 0);
                QueueFlow::Continue
            }
        }
    }

    // ------------------------------------------------------------ admin

    fn admin_command(&mut self, sqe: Sqe, data: &[u8], out: &mut Vec<u8>) {
        let dir = data_direction(&sqe);
        if dir == DIR_H2C {
            match Self::host_data(&sqe, data, ADMIN_IN_CAPSULE_BYTES) {
                Err(s) => self.respond(out, sqe.cid, s, 0, 0),
                Ok(HostData::None) => self.run_admin(&sqe, &[], out),
                Ok(HostData::Capsule(d)) => self.run_admin(&sqe, d, out),
                Ok(HostData::R2t(len)) => self.start_r2t(sqe, Work::Admin, None, len, len as usize, out),
            }
            return;
        }
        if dir == DIR_C2H {
            if let Err(s) = Self::c2h_sgl_ok(&sqe, ADMIN_XFER_BYTES_MAX) {
                self.respond(out, sqe.cid, s, 0, 0);
                return;
            }
        }
        self.run_admin(&sqe, &[], out);
    }

    fn run_admin(&mut self, sqe: &Sqe, data: &[u8], out: &mut Vec<u8>) {
        let mut page = std::mem::take(&mut self.scratch);
        let outcome = {
            let Some(c) = self.conn.as_mut() else { return };
            c.refresh_namespaces();
            let Some(st_admin) = c.admin.as_mut() else { return };
            let mut cx = AdminCtx {
                target: &self.target,
                ctrl: &c.ctrl,
                ns: c.ns.as_deref().unwrap_or(&NO_NAMESPACES),
                st: st_admin,
                port: &self.port,
                local: self.local,
                now_ms: self.now_ms,
                icd_bytes: self.limits.in_capsule_data_bytes,
            };
            admin::execute(&mut cx, sqe, data, &mut page)
        };
        match outcome {
            AdminOutcome::Complete { status, dw0 } => {
                if status.is_success() && !page.is_empty() {
                    self.send_data_and_complete(out, sqe.cid, &page, dw0);
                } else {
                    self.respond(out, sqe.cid, status, dw0, 0);
                }
            }
            AdminOutcome::HoldAer => {
                if let Some(a) = self.conn.as_mut().and_then(|c| c.admin.as_mut()) {
                    a.aers.push(sqe.cid);
                }
                self.deliver_events(out);
            }
        }
        page.clear();
        self.scratch = page;
    }

    /// Complete held AERs with pending events.
    fn deliver_events(&mut self, out: &mut Vec<u8>) {
        loop {
            let Some(c) = self.conn.as_mut() else { return };
            let Some(a) = c.admin.as_mut() else { return };
            if a.aers.is_empty() || !c.ctrl.has_events() {
                return;
            }
            let Some(dw0) = c.ctrl.pop_event() else { return };
            let cid = a.aers.remove(0);
            tracing::debug!("ctrl {}: async event {dw0:#x}", c.ctrl.cntlid);
            self.respond(out, cid, Status::SUCCESS, dw0, 0);
        }
    }

    // ------------------------------------------------------------ I/O

    fn io_command(&mut self, sqe: Sqe, data: &[u8], out: &mut Vec<u8>, io: &mut dyn StorageIo) {
        // The snapshot is moved out for the command (no refcount traffic on
        // the shared namespace per I/O) and put back afterwards.
        let Some(table) = self.conn.as_mut().and_then(|c| {
            c.refresh_namespaces();
            c.ns.take()
        }) else {
            return;
        };
        self.io_command_on(&table, sqe, data, out, io);
        if let Some(c) = self.conn.as_mut() {
            c.ns = Some(table);
        }
    }

    fn io_command_on(&mut self, table: &NsTable, sqe: Sqe, data: &[u8], out: &mut Vec<u8>, io: &mut dyn StorageIo) {
        let (ns, plan) = match io_cmd::plan(&sqe, table, self.limits.mdts_bytes) {
            Ok(v) => v,
            Err(s) => {
                tracing::trace!(cid = sqe.cid, "I/O command rejected: {s}");
                self.respond(out, sqe.cid, s, 0, 0);
                return;
            }
        };
        if let Some(n) = ns {
            if let Some(s) = self.ana_refusal(table, n.ana_group) {
                self.respond(out, sqe.cid, s, 0, 0);
                return;
            }
        }
        let h2c_len = plan.host_data_len();
        if h2c_len > 0 {
            match Self::host_data(&sqe, data, self.limits.mdts_bytes) {
                Err(s) => self.respond(out, sqe.cid, s, 0, 0),
                Ok(HostData::None) => {
                    self.respond(out, sqe.cid, st(sct::GENERIC, generic::DATA_SGL_LENGTH_INVALID), 0, 0)
                }
                Ok(HostData::Capsule(d)) => self.exec_io(None, sqe, ns, plan, Some(d), out, io),
                Ok(HostData::R2t(len)) => {
                    let cap = if matches!(plan, IoPlan::Compare { .. }) { 2 * len as usize } else { len as usize };
                    self.start_r2t(sqe, Work::Io(plan), ns.cloned(), len, cap, out)
                }
            }
            return;
        }
        if let IoPlan::Read { .. } = plan {
            if let Err(s) = Self::c2h_sgl_ok(&sqe, self.limits.mdts_bytes) {
                self.respond(out, sqe.cid, s, 0, 0);
                return;
            }
        }
        self.exec_io(None, sqe, ns, plan, None, out, io);
    }

    /// Path status when `group` is not accessible through this queue's port.
    #[inline]
    fn ana_refusal(&mut self, table: &NsTable, group: u32) -> Option<Status> {
        let c = self.conn.as_mut()?;
        let sub = c.ctrl.subsys.as_ref()?;
        let chg = sub.ana_chgcnt.load(Ordering::Relaxed);
        if chg != c.ana_chgcnt {
            c.ana_chgcnt = chg;
            c.ana_unusable.clear();
            for n in &table.list {
                let st = sub.ana_state(self.port.port_id, n.ana_group);
                let usable = matches!(st, ana_state::OPTIMIZED | ana_state::NON_OPTIMIZED);
                if !usable && !c.ana_unusable.iter().any(|(g, _)| *g == n.ana_group) {
                    c.ana_unusable.push((n.ana_group, st));
                }
            }
        }
        if c.ana_unusable.is_empty() {
            return None;
        }
        let (_, st) = *c.ana_unusable.iter().find(|(g, _)| *g == group)?;
        // No DNR: the host retries on another path.
        Some(Status::new(
            sct::PATH,
            match st {
                ana_state::INACCESSIBLE => path::ANA_INACCESSIBLE,
                ana_state::PERSISTENT_LOSS => path::ANA_PERSISTENT_LOSS,
                _ => path::ANA_TRANSITION,
            },
        ))
    }

    fn alloc_slot(&mut self) -> Option<usize> {
        let i = self.free.pop()? as usize;
        let s = &mut self.slots[i];
        debug_assert_eq!(s.stage, Stage::Free);
        s.arrival_us = self.now_us;
        s.submit_us = 0;
        s.generation = s.generation.wrapping_add(1);
        s.received = 0;
        s.xfer_len = 0;
        s.error = None;
        s.done_bytes = 0;
        s.streamed = false;
        Some(i)
    }

    fn free_slot(&mut self, i: usize) {
        let s = &mut self.slots[i];
        debug_assert_ne!(s.stage, Stage::Free);
        if self.latency {
            if let (Work::Io(_), Some(k)) = (s.work, latency_index(s.sqe.opcode)) {
                let backend_us = if s.submit_us != 0 { self.now_us.saturating_sub(s.submit_us) } else { 0 };
                self.counters.io.total[k].record(self.now_us.saturating_sub(s.arrival_us));
                self.counters.io.backend[k].record(backend_us);
            }
        }
        s.stage = Stage::Free;
        s.ns = None;
        self.free.push(i as u16);
    }

    /// Too many commands outstanding for the negotiated queue size.
    fn no_slot(&mut self, out: &mut Vec<u8>, cid: u16) {
        tracing::warn!(peer = %self.peer, cid, "host exceeded the queue size; failing the command");
        self.respond(out, cid, Status::new(sct::GENERIC, generic::INTERNAL_ERROR), 0, 0);
    }

    fn start_r2t(
        &mut self,
        sqe: Sqe,
        work: Work,
        ns: Option<Arc<Namespace>>,
        len: u32,
        buf_len: usize,
        out: &mut Vec<u8>,
    ) {
        let Some(i) = self.alloc_slot() else { return self.no_slot(out, sqe.cid) };
        let s = &mut self.slots[i];
        s.stage = Stage::AwaitData;
        s.sqe = sqe;
        s.work = work;
        s.ns = ns;
        s.xfer_len = len;
        s.streamed = Self::streams(s);
        if !s.streamed {
            s.buf.ensure(buf_len);
        }
        let r2t = DataHdr { cccid: sqe.cid, ttag: i as u16, offset: 0, length: len };
        encode_r2t(out, &r2t, &self.tx);
    }

    /// Whether the R2T data of this slot goes straight to a memory backend.
    fn streams(s: &Slot) -> bool {
        matches!(s.work, Work::Io(IoPlan::Write { .. })) && s.ns.as_ref().is_some_and(|n| n.backend.fd().is_none())
    }

    fn on_h2c_data(
        &mut self,
        hdr: &DataHdr,
        _flags: u8,
        data: &[u8],
        digest_ok: bool,
        out: &mut Vec<u8>,
        io: &mut dyn StorageIo,
    ) -> Result<(), Fatal> {
        let i = hdr.ttag as usize;
        let Some(s) = self.slots.get_mut(i).filter(|s| s.stage == Stage::AwaitData) else {
            return Err(fatal(fes::INVALID_HEADER_FIELD, 10, "H2CData with an unknown TTAG"));
        };
        if s.sqe.cid != hdr.cccid {
            return Err(fatal(fes::INVALID_HEADER_FIELD, 8, "H2CData CCCID does not match its TTAG"));
        }
        if hdr.length > self.limits.max_h2c_data_bytes {
            return Err(fatal(fes::DATA_LIMIT_EXCEEDED, 16, "H2CData over MAXH2CDATA"));
        }
        if hdr.offset != s.received || hdr.offset as u64 + hdr.length as u64 > s.xfer_len as u64 {
            return Err(fatal(fes::DATA_OUT_OF_RANGE, 12, "H2CData outside the R2T window"));
        }
        if digest_ok {
            if s.streamed {
                // Memory backend: store each H2CData payload where it belongs,
                // straight from the receive buffer (no bounce copy). The
                // command is acknowledged only after every piece is stored.
                if let (Work::Io(IoPlan::Write { off, .. }), Some(ns)) = (s.work, s.ns.as_ref()) {
                    match ns.backend.write_sync(off + hdr.offset as u64, data) {
                        Some(Ok(())) => {}
                        _ => s.error = Some(Status::new(sct::MEDIA, media::WRITE_FAULT)),
                    }
                }
            } else {
                let o = hdr.offset as usize;
                copy_bytes(&mut s.buf.as_mut_slice(o + data.len())[o..], data);
            }
        } else {
            tracing::warn!(peer = %self.peer, cid = hdr.cccid, "data digest error in H2CData");
            QueueCounters::bump(&self.counters.io.digest_errors, 1);
            s.error = Some(Status::new(sct::GENERIC, generic::TRANSIENT_TRANSPORT_ERROR));
        }
        s.received += hdr.length;
        if s.received < s.xfer_len {
            return Ok(());
        }
        // All data is in.
        let sqe = s.sqe;
        if let Some(e) = s.error {
            self.free_slot(i);
            self.respond(out, sqe.cid, e, 0, 0);
            return Ok(());
        }
        match s.work {
            Work::Admin => {
                let buf = std::mem::take(&mut self.slots[i].buf);
                let len = self.slots[i].xfer_len as usize;
                self.free_slot(i);
                self.run_admin(&sqe, buf.as_slice(len), out);
                self.slots[i].buf = buf;
            }
            Work::Io(IoPlan::Write { len, fua, .. }) if s.streamed => {
                let flushed = !fua || s.ns.as_ref().is_some_and(|n| n.backend.flush_sync().is_ok());
                self.free_slot(i);
                let status = if flushed {
                    QueueCounters::bump(&self.counters.write_cmds, 1);
                    QueueCounters::bump(&self.counters.write_bytes, len as u64);
                    self.counters.count_ns(self.slots[i].sqe.nsid, true, len as u64);
                    Status::SUCCESS
                } else {
                    Status::new(sct::MEDIA, media::WRITE_FAULT)
                };
                self.respond(out, sqe.cid, status, 0, 0);
            }
            Work::Io(plan) => {
                let ns = s.ns.take();
                self.exec_io(Some(i), sqe, ns.as_ref(), plan, None, out, io);
            }
        }
        Ok(())
    }

    /// Execute a validated I/O command. Host data is in `capsule` or, when
    /// `slot` is given and `capsule` is None, in that slot's buffer.
    #[allow(clippy::too_many_arguments)]
    fn exec_io(
        &mut self,
        slot: Option<usize>,
        sqe: Sqe,
        ns: Option<&Arc<Namespace>>,
        plan: IoPlan,
        capsule: Option<&[u8]>,
        out: &mut Vec<u8>,
        io: &mut dyn StorageIo,
    ) {
        let fd = ns.as_ref().and_then(|n| n.backend.fd());
        let needs_ring = fd.is_some()
            && matches!(
                plan,
                IoPlan::Read { .. } | IoPlan::Write { .. } | IoPlan::Compare { .. } | IoPlan::Flush { all: false }
            );
        if !needs_ring {
            // Memory backends (and the synchronous commands of fd backends).
            let status = match slot {
                Some(i) => {
                    let buf = std::mem::take(&mut self.slots[i].buf);
                    let len = plan.host_data_len() as usize;
                    let data = (len > 0).then(|| buf.as_slice(len));
                    let s = self.exec_sync(&sqe, ns.map(|n| &**n), plan, data, out);
                    self.slots[i].buf = buf;
                    self.free_slot(i);
                    s
                }
                None => {
                    if self.latency {
                        // Done within the callback that received it: < 1 µs at callback resolution.
                        if let Some(k) = latency_index(sqe.opcode) {
                            self.counters.io.total[k].record(0);
                            self.counters.io.backend[k].record(0);
                        }
                    }
                    self.exec_sync(&sqe, ns.map(|n| &**n), plan, capsule, out)
                }
            };
            if let Some(s) = status {
                self.respond(out, sqe.cid, s, 0, 0);
            }
            return;
        }
        let (Some(fd), Some(ns)) = (fd, ns) else { return };
        let i = match slot {
            Some(i) => i,
            None => {
                let Some(i) = self.alloc_slot() else { return self.no_slot(out, sqe.cid) };
                let s = &mut self.slots[i];
                s.sqe = sqe;
                s.work = Work::Io(plan);
                let len = plan.host_data_len() as usize;
                let cap = match plan {
                    IoPlan::Compare { len, .. } => 2 * len as usize,
                    IoPlan::Read { len, .. } => len as usize,
                    _ => len,
                };
                s.buf.ensure(cap.max(1));
                if let Some(d) = capsule {
                    copy_bytes(s.buf.as_mut_slice(d.len()), d);
                }
                i
            }
        };
        let s = &mut self.slots[i];
        s.stage = Stage::Storage;
        s.submit_us = self.now_us.max(1);
        // The slot keeps the namespace (and so the fd) alive while the op is in flight.
        s.ns = Some(ns.clone());
        s.done_bytes = 0;
        self.submit_next(i, fd, io);
    }

    /// Submit (or resubmit after a short transfer) the storage op of slot `i`.
    fn submit_next(&mut self, i: usize, fd: RawFd, io: &mut dyn StorageIo) {
        let s = &mut self.slots[i];
        let Work::Io(plan) = s.work else { return };
        let done = s.done_bytes;
        let gen = s.generation;
        match plan {
            IoPlan::Read { off, len } => {
                // SAFETY: the slot buffer holds `len` bytes and is not touched
                // (or reallocated) until this op completes: the slot stays in
                // Stage::Storage and the engine keeps the handler alive.
                unsafe {
                    io.read(
                        fd,
                        off + done as u64,
                        s.buf.as_mut_ptr().add(done as usize),
                        len - done,
                        token(i, gen, OP_READ),
                    )
                };
            }
            IoPlan::Compare { off, len } => {
                // Host data in buf[..len], media data read into buf[len..2 len].
                // SAFETY: as above; the buffer holds 2 * len bytes.
                unsafe {
                    io.read(
                        fd,
                        off + done as u64,
                        s.buf.as_mut_ptr().add((len + done) as usize),
                        len - done,
                        token(i, gen, OP_READ),
                    )
                };
            }
            IoPlan::Write { off, len, .. } => {
                // SAFETY: as above.
                unsafe {
                    io.write(
                        fd,
                        off + done as u64,
                        s.buf.as_mut_ptr().add(done as usize),
                        len - done,
                        token(i, gen, OP_WRITE),
                    )
                };
            }
            IoPlan::Flush { .. } => io.fsync(fd, false, token(i, gen, OP_FSYNC)),
            _ => debug_assert!(false, "synchronous plan on the ring path"),
        }
    }

    /// Run a command synchronously. Returns the status to send in a
    /// CapsuleResp, or None when the response already went out (a read whose
    /// last C2HData carried SUCCESS).
    fn exec_sync(
        &mut self,
        sqe: &Sqe,
        ns: Option<&Namespace>,
        plan: IoPlan,
        data: Option<&[u8]>,
        out: &mut Vec<u8>,
    ) -> Option<Status> {
        let write_fault = Status::new(sct::MEDIA, media::WRITE_FAULT);
        let read_error = Status::new(sct::MEDIA, media::UNRECOVERED_READ);
        let internal = Status::new(sct::GENERIC, generic::INTERNAL_ERROR);
        let Some(ns) = ns else {
            // Flush of every namespace.
            if let Some(s) = self.conn.as_ref().and_then(|c| c.ctrl.subsys.clone()) {
                for n in s.namespaces().list.iter() {
                    if n.backend.flush_sync().is_err() {
                        return Some(write_fault);
                    }
                }
            }
            return Some(Status::SUCCESS);
        };
        let b = &ns.backend;
        match plan {
            IoPlan::Read { off, len } => {
                let r = self.send_read_from_backend(out, sqe.cid, ns, off, len);
                if r.is_some() {
                    return r.map(|ok| if ok { Status::SUCCESS } else { read_error });
                }
                None
            }
            IoPlan::Write { off, len, fua } => {
                let Some(d) = data else { return Some(internal) };
                debug_assert_eq!(d.len(), len as usize);
                match b.write_sync(off, d) {
                    Some(Ok(())) => {}
                    Some(Err(e)) => {
                        tracing::warn!("nsid {}: write at {off} failed: {e}", ns.nsid);
                        return Some(write_fault);
                    }
                    None => return Some(internal),
                }
                if fua && b.flush_sync().is_err() {
                    return Some(write_fault);
                }
                QueueCounters::bump(&self.counters.write_cmds, 1);
                QueueCounters::bump(&self.counters.write_bytes, len as u64);
                self.counters.count_ns(sqe.nsid, true, len as u64);
                Some(Status::SUCCESS)
            }
            IoPlan::Compare { off, len } => {
                let Some(d) = data else { return Some(internal) };
                let mut media_data = std::mem::take(&mut self.scratch);
                media_data.clear();
                media_data.resize(len as usize, 0);
                let r = match b.read_sync(off, &mut media_data) {
                    Some(Ok(())) if media_data[..] == d[..] => Status::SUCCESS,
                    Some(Ok(())) => Status::new(sct::MEDIA, media::COMPARE_FAILURE).dnr(),
                    _ => read_error,
                };
                media_data.clear();
                self.scratch = media_data;
                Some(r)
            }
            IoPlan::Flush { .. } => Some(if b.flush_sync().is_ok() { Status::SUCCESS } else { write_fault }),
            IoPlan::WriteZeroes { off, len } => Some(match b.write_zeroes(off, len) {
                Ok(()) => Status::SUCCESS,
                Err(e) => {
                    tracing::warn!("nsid {}: write zeroes failed: {e}", ns.nsid);
                    write_fault
                }
            }),
            IoPlan::Dsm { nr, deallocate } => {
                let Some(d) = data else { return Some(internal) };
                let ranges = match io_cmd::dsm_ranges(ns, d, nr) {
                    Ok(r) => r,
                    Err(s) => return Some(s),
                };
                if deallocate {
                    for (off, len) in ranges {
                        if let Err(e) = b.deallocate(off, len) {
                            tracing::warn!("nsid {}: deallocate failed: {e}", ns.nsid);
                            return Some(internal);
                        }
                    }
                }
                Some(Status::SUCCESS)
            }
        }
    }

    /// Read straight from a memory backend into C2HData PDUs in `out`.
    /// Returns None when the SUCCESS flag completed the command, Some(true)
    /// when a CapsuleResp(success) must follow, Some(false) on a read error.
    fn send_read_from_backend(
        &mut self,
        out: &mut Vec<u8>,
        cid: u16,
        ns: &Namespace,
        off: u64,
        len: u32,
    ) -> Option<bool> {
        let success_flag = self.conn.as_ref().map(|c| c.sq_flow_control_disabled).unwrap_or(false);
        let chunk_max = self.limits.max_c2h_data_bytes;
        let mut done = 0u32;
        while done < len {
            let n = (len - done).min(chunk_max);
            let last = done + n == len;
            let mut f = 0;
            if last {
                f |= flags::LAST_PDU;
                if success_flag {
                    f |= flags::SUCCESS;
                }
            }
            let pdu_start = out.len();
            let hdr = DataHdr { cccid: cid, ttag: 0, offset: done, length: n };
            encode_data_pdu_header(out, true, f, &hdr, &self.tx);
            let data_start = out.len();
            if let Some(r) = ns.backend.read_static(off + done as u64, n as usize) {
                // Unchanging memory: the driver sends it from where it is.
                let Ok(data) = r else {
                    out.truncate(pdu_start);
                    return Some(false);
                };
                debug_assert_eq!(data.len(), n as usize);
                self.lent.push((data_start, data));
                if self.tx.ddgst {
                    finish_data_pdu(out, crc32c(data), &self.tx);
                }
            } else {
                match ns.backend.read_append(off + done as u64, n as usize, out) {
                    Some(Ok(())) => debug_assert_eq!(out.len(), data_start + n as usize),
                    _ => {
                        out.truncate(pdu_start);
                        return Some(false);
                    }
                }
                if self.tx.ddgst {
                    let crc = crc32c(&out[data_start..]);
                    finish_data_pdu(out, crc, &self.tx);
                }
            }
            done += n;
        }
        QueueCounters::bump(&self.counters.read_cmds, 1);
        QueueCounters::bump(&self.counters.read_bytes, len as u64);
        self.counters.count_ns(ns.nsid, false, len as u64);
        if success_flag {
            None
        } else {
            Some(true)
        }
    }

    // ------------------------------------------------------------ storage completions

    /// A storage op finished (`result`: bytes or -errno).
    pub fn on_storage(
        &mut self,
        tok: u64,
        result: i32,
        now_ms: u64,
        out: &mut Vec<u8>,
        io: &mut dyn StorageIo,
    ) -> QueueFlow {
        self.now_ms = now_ms;
        let (i, gen, op) = untoken(tok);
        let Some(s) = self.slots.get_mut(i).filter(|s| s.stage == Stage::Storage && s.generation == gen) else {
            debug_assert!(false, "storage completion for a free slot");
            return QueueFlow::Continue;
        };
        let Work::Io(plan) = s.work else { return QueueFlow::Continue };
        let cid = s.sqe.cid;
        let Some(fd) = s.ns.as_ref().and_then(|n| n.backend.fd()) else { return QueueFlow::Continue };
        let (len, fua) = match plan {
            IoPlan::Read { len, .. } | IoPlan::Compare { len, .. } => (len, false),
            IoPlan::Write { len, fua, .. } => (len, fua),
            _ => (0, false),
        };
        if result < 0 {
            let e = std::io::Error::from_raw_os_error(-result);
            let nsid = s.ns.as_ref().map(|n| n.nsid).unwrap_or(0);
            tracing::warn!("nsid {nsid}: storage op {op} failed: {e}");
            let status = match op {
                OP_READ => Status::new(sct::MEDIA, media::UNRECOVERED_READ),
                _ => Status::new(sct::MEDIA, media::WRITE_FAULT),
            };
            self.free_slot(i);
            self.respond(out, cid, status, 0, 0);
            return self.after_completion();
        }
        if op != OP_FSYNC {
            if result == 0 {
                self.free_slot(i);
                self.respond(out, cid, Status::new(sct::GENERIC, generic::DATA_TRANSFER_ERROR), 0, 0);
                return self.after_completion();
            }
            s.done_bytes += result as u32;
            if s.done_bytes < len {
                self.submit_next(i, fd, io);
                return QueueFlow::Continue;
            }
        }
        match (op, plan) {
            (OP_READ, IoPlan::Read { .. }) => {
                let buf = std::mem::take(&mut self.slots[i].buf);
                self.free_slot(i);
                QueueCounters::bump(&self.counters.read_cmds, 1);
                QueueCounters::bump(&self.counters.read_bytes, len as u64);
                self.counters.count_ns(self.slots[i].sqe.nsid, false, len as u64);
                self.send_data_and_complete(out, cid, buf.as_slice(len as usize), 0);
                self.slots[i].buf = buf;
            }
            (OP_READ, IoPlan::Compare { .. }) => {
                let b = self.slots[i].buf.as_slice(2 * len as usize);
                let same = b[..len as usize] == b[len as usize..];
                self.free_slot(i);
                let status = if same { Status::SUCCESS } else { Status::new(sct::MEDIA, media::COMPARE_FAILURE).dnr() };
                self.respond(out, cid, status, 0, 0);
            }
            (OP_WRITE, _) if fua => {
                let s = &mut self.slots[i];
                s.work = Work::Io(IoPlan::Flush { all: false });
                io.fsync(fd, true, token(i, gen, OP_FSYNC));
                // FUA: the completion waits for the fdatasync; the data moved already.
                QueueCounters::bump(&self.counters.write_cmds, 1);
                QueueCounters::bump(&self.counters.write_bytes, len as u64);
                self.counters.count_ns(s.sqe.nsid, true, len as u64);
                return QueueFlow::Continue;
            }
            (OP_WRITE, _) => {
                QueueCounters::bump(&self.counters.write_cmds, 1);
                QueueCounters::bump(&self.counters.write_bytes, len as u64);
                self.counters.count_ns(self.slots[i].sqe.nsid, true, len as u64);
                self.free_slot(i);
                self.respond(out, cid, Status::SUCCESS, 0, 0);
            }
            _ => {
                self.free_slot(i);
                self.respond(out, cid, Status::SUCCESS, 0, 0);
            }
        }
        self.after_completion()
    }

    fn after_completion(&self) -> QueueFlow {
        if self.phase == Phase::Closing {
            QueueFlow::CloseAfterFlush
        } else {
            QueueFlow::Continue
        }
    }

    // ------------------------------------------------------------ output

    fn respond(&mut self, out: &mut Vec<u8>, cid: u16, status: Status, dw0: u32, dw1: u32) {
        if !status.is_success() {
            self.counters.io.count_error(status.sct, status.sc);
        }
        let (sqhd, sqid) = self.conn.as_ref().map(|c| (c.sqhd, c.qid)).unwrap_or((0, 0));
        let cqe = Cqe { dw0, dw1, sqhd, sqid, cid, status };
        encode_capsule_resp(out, &cqe, &self.tx);
    }

    /// C2HData PDUs for `data`, then the completion (SUCCESS flag when allowed).
    fn send_data_and_complete(&mut self, out: &mut Vec<u8>, cid: u16, data: &[u8], dw0: u32) {
        let success_flag = dw0 == 0 && self.conn.as_ref().map(|c| c.sq_flow_control_disabled).unwrap_or(false);
        let chunk_max = self.limits.max_c2h_data_bytes as usize;
        let mut off = 0;
        while off < data.len() {
            let n = (data.len() - off).min(chunk_max);
            let last = off + n == data.len();
            let mut f = 0;
            if last {
                f |= flags::LAST_PDU;
                if success_flag {
                    f |= flags::SUCCESS;
                }
            }
            let hdr = DataHdr { cccid: cid, ttag: 0, offset: off as u32, length: n as u32 };
            encode_data_pdu(out, true, f, &hdr, &data[off..off + n], &self.tx);
            off += n;
        }
        if !success_flag || data.is_empty() {
            self.respond(out, cid, Status::SUCCESS, dw0, 0);
        }
    }

    // ------------------------------------------------------------ time and teardown

    /// Periodic work: connect timeout, keep-alive, controller teardown, AENs.
    pub fn on_tick(&mut self, now_ms: u64, out: &mut Vec<u8>) -> QueueFlow {
        self.now_ms = now_ms;
        let created = *self.created_ms.get_or_insert(now_ms);
        if self.phase == Phase::Closing {
            return QueueFlow::CloseAfterFlush;
        }
        let Some(c) = self.conn.as_mut() else {
            if now_ms.saturating_sub(created) > self.limits.connect_timeout_ms {
                tracing::warn!(peer = %self.peer, "no ICReq/Connect within {} ms; closing", self.limits.connect_timeout_ms);
                self.phase = Phase::Closing;
                return QueueFlow::CloseNow;
            }
            return QueueFlow::Continue;
        };
        if c.ctrl.is_dead() {
            tracing::debug!("ctrl {}: queue {} closing (controller gone)", c.ctrl.cntlid, c.qid);
            self.phase = Phase::Closing;
            return QueueFlow::CloseAfterFlush;
        }
        if let Some(a) = c.admin.as_mut() {
            let kato = c.ctrl.kato_ms.load(Ordering::Relaxed) as u64;
            // Hosts send Keep Alive every KATO/2; allow KATO plus half again.
            if kato > 0 && now_ms.saturating_sub(a.last_traffic_ms) > kato + kato / 2 {
                tracing::warn!(
                    "ctrl {}: keep-alive timeout ({} ms without traffic, KATO {} ms); tearing down",
                    c.ctrl.cntlid,
                    now_ms - a.last_traffic_ms,
                    kato
                );
                c.ctrl.kill("keep-alive timeout");
                self.target.keep_alive_expiries.fetch_add(1, Ordering::Relaxed);
                self.target.release_controller(&c.ctrl);
                self.phase = Phase::Closing;
                return QueueFlow::CloseNow;
            }
            if !a.aers.is_empty() && c.ctrl.has_events() {
                self.deliver_events(out);
            }
        }
        QueueFlow::Continue
    }

    /// Graceful shutdown. Nothing is cached, so: commands still waiting for
    /// host data and held AERs are failed (Aborted due to SQ Deletion), storage
    /// ops in flight complete normally (the driver keeps the connection until
    /// they drain), then the connection closes.
    pub fn on_shutdown(&mut self, out: &mut Vec<u8>) -> QueueFlow {
        let aborted = Status::new(sct::GENERIC, generic::ABORTED_SQ_DELETION);
        for i in 0..self.slots.len() {
            if self.slots[i].stage == Stage::AwaitData {
                let cid = self.slots[i].sqe.cid;
                self.free_slot(i);
                self.respond(out, cid, aborted, 0, 0);
            }
        }
        let aers = self.conn.as_mut().and_then(|c| c.admin.as_mut()).map(|a| std::mem::take(&mut a.aers));
        for cid in aers.unwrap_or_default() {
            self.respond(out, cid, aborted, 0, 0);
        }
        self.phase = Phase::Closing;
        QueueFlow::CloseAfterFlush
    }

    /// The connection is gone: release the queue ID or the controller.
    pub fn on_closed(&mut self) {
        let Some(c) = self.conn.take() else { return };
        c.ctrl.remove_peer(c.qid);
        if c.qid == 0 {
            c.ctrl.mark_dead();
            self.target.release_controller(&c.ctrl);
            tracing::info!("ctrl {} disconnected: host {}, subsystem {}", c.ctrl.cntlid, c.ctrl.hostnqn, c.ctrl.nqn());
        } else {
            c.ctrl.release_qid(c.qid);
            c.ctrl.unregister_counters(&self.counters);
            tracing::debug!("ctrl {}: I/O queue {} closed", c.ctrl.cntlid, c.qid);
        }
    }

    /// Kind of controller this queue belongs to, once connected.
    pub fn ctrl_kind(&self) -> Option<CtrlKind> {
        self.conn.as_ref().map(|c| c.ctrl.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{fuzz_queue_input, test_queue, test_target, RecordingStorage, TEST_NQN};
    use nvmf_proto::fabrics::{cc, prop, ConnectData, PropertyCmd, CATTR_DISABLE_SQ_FLOW_CONTROL};
    use nvmf_proto::opcodes::io as iop;
    use nvmf_proto::pdu::{encode_capsule_cmd, encode_ic_req};
    use nvmf_proto::Sgl;

    const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001";

    /// Host-side decode of everything in `out`.
    fn pdus(out: &[u8], hdgst: bool, ddgst: bool) -> Vec<Pdu<'_>> {
        let cfg = FrameConfig { role: Role::Host, hdgst, ddgst, pdu_len_max: 1 << 24, rx_data_align: 4 };
        let mut v = Vec::new();
        let mut pos = 0;
        while pos < out.len() {
            match decode(&out[pos..], &cfg).expect("target output decodes") {
                Decoded::Pdu(p, n) => {
                    v.push(p);
                    pos += n;
                }
                Decoded::NeedMore(_) => panic!("partial PDU in output"),
            }
        }
        v
    }

    fn ic(q: &mut Queue, dg: u8) -> Vec<u8> {
        let mut b = Vec::new();
        encode_ic_req(&mut b, &IcReq { pfv: 0, hpda: 0, dgst: dg, maxr2t: 0 });
        let mut out = Vec::new();
        let (n, f) = q.on_recv(&b, 0, &mut out, &mut RecordingStorage::default());
        assert_eq!((n, f), (128, QueueFlow::Continue));
        out
    }

    fn connect_bytes(qid: u16, cntlid: u16, kato_ms: u32) -> Vec<u8> {
        let c = ConnectCmd { recfmt: 0, qid, sqsize: 15, cattr: CATTR_DISABLE_SQ_FLOW_CONTROL, kato_ms };
        let d = ConnectData { hostid: [1; 16], cntlid, subnqn: TEST_NQN.into(), hostnqn: HOST.into() };
        let mut b = Vec::new();
        encode_capsule_cmd(&mut b, &c.to_sqe(1), &d.encode(), &TxConfig::default());
        b
    }

    fn feed(q: &mut Queue, b: &[u8], now: u64) -> (Vec<u8>, QueueFlow) {
        let mut out = Vec::new();
        let (n, f) = q.on_recv(b, now, &mut out, &mut RecordingStorage::default());
        if f == QueueFlow::Continue {
            assert_eq!(n, b.len(), "whole PDUs consumed");
        }
        (out, f)
    }

    fn cqe_of(out: &[u8]) -> Cqe {
        match pdus(out, false, false).last() {
            Some(Pdu::CapsuleResp(c)) => *c,
            other => panic!("expected a CapsuleResp, got {other:?}"),
        }
    }

    /// IC + admin Connect + CC.EN on a fresh queue; returns (queue, cntlid).
    fn admin_queue(kato_ms: u32) -> (Queue, u16) {
        let t = test_target();
        let mut q = test_queue(t);
        ic(&mut q, 0);
        let (out, _) = feed(&mut q, &connect_bytes(0, 0xffff, kato_ms), 0);
        let c = cqe_of(&out);
        assert!(c.status.is_success());
        let mut b = Vec::new();
        encode_capsule_cmd(
            &mut b,
            &PropertyCmd::set_sqe(2, prop::CC, false, cc::LINUX_ENABLE as u64),
            &[],
            &TxConfig::default(),
        );
        let (out, _) = feed(&mut q, &b, 0);
        assert!(cqe_of(&out).status.is_success());
        (q, c.dw0 as u16)
    }

    #[test]
    fn ic_response_echoes_digests_and_limits() {
        let mut q = test_queue(test_target());
        let out = ic(&mut q, 3);
        match pdus(&out, false, false)[..] {
            [Pdu::IcResp(r)] => {
                assert_eq!((r.pfv, r.cpda, r.dgst), (0, 0, 3));
                assert_eq!(r.maxh2cdata, 128 * 1024);
            }
            ref other => panic!("{other:?}"),
        }
    }

    #[test]
    fn capsule_before_ic_is_a_sequence_error() {
        let mut q = test_queue(test_target());
        let (out, f) = feed(&mut q, &connect_bytes(0, 0xffff, 0), 0);
        assert_eq!(f, QueueFlow::CloseAfterFlush);
        match pdus(&out, false, false)[..] {
            [Pdu::TermReq { fes: f, .. }] => assert_eq!(f, fes::PDU_SEQUENCE_ERROR),
            ref other => panic!("{other:?}"),
        }
    }

    #[test]
    fn byte_at_a_time_equals_all_at_once() {
        let mut stream = Vec::new();
        encode_ic_req(&mut stream, &IcReq::default());
        stream.extend(connect_bytes(0, 0xffff, 0));
        encode_capsule_cmd(&mut stream, &PropertyCmd::get_sqe(3, prop::CAP, true), &[], &TxConfig::default());
        let mut q1 = test_queue(test_target());
        let (whole, _) = feed(&mut q1, &stream, 0);
        let mut q2 = test_queue(test_target());
        let mut rx = Vec::new();
        let mut out = Vec::new();
        for b in &stream {
            rx.push(*b);
            let (n, f) = q2.on_recv(&rx, 0, &mut out, &mut RecordingStorage::default());
            assert_eq!(f, QueueFlow::Continue);
            rx.drain(..n);
        }
        assert!(rx.is_empty());
        assert_eq!(pdus(&whole, false, false).len(), 3);
        // Same PDUs (CNTLIDs differ: two controllers in two targets start at the same ID).
        assert_eq!(whole, out);
    }

    #[test]
    fn read_uses_success_flag_with_flow_control_disabled() {
        let (q, cntlid) = admin_queue(0);
        let t = q.target.clone();
        let mut io = test_queue(t);
        ic(&mut io, 0);
        let (out, _) = feed(&mut io, &connect_bytes(1, cntlid, 0), 0);
        assert!(cqe_of(&out).status.is_success());
        let mut s = Sqe::rw(iop::READ, 9, 1, 0, 8);
        s.sgl1 = Sgl::transport(4096);
        let mut b = Vec::new();
        encode_capsule_cmd(&mut b, &s, &[], &TxConfig::default());
        let (out, _) = feed(&mut io, &b, 0);
        match pdus(&out, false, false)[..] {
            [Pdu::C2HData { hdr, flags: f, data, .. }] => {
                assert_eq!((hdr.cccid, hdr.offset, data.len()), (9, 0, 4096));
                assert_eq!(f, flags::LAST_PDU | flags::SUCCESS);
            }
            ref other => panic!("{other:?}"),
        }
        drop(q);
    }

    #[test]
    fn keep_alive_timeout_kills_the_controller() {
        let (mut q, _) = admin_queue(100);
        let mut out = Vec::new();
        assert_eq!(q.on_tick(100, &mut out), QueueFlow::Continue);
        assert_eq!(q.on_tick(200, &mut out), QueueFlow::CloseNow);
        assert!(q.conn.as_ref().unwrap().ctrl.is_dead());
        q.on_closed();
    }

    #[test]
    fn connect_timeout_closes_idle_connections() {
        let mut q = test_queue(test_target());
        let mut out = Vec::new();
        assert_eq!(q.on_tick(0, &mut out), QueueFlow::Continue);
        assert_eq!(q.on_tick(10_001, &mut out), QueueFlow::CloseNow);
    }

    #[test]
    fn h2c_data_outside_the_r2t_is_fatal() {
        let (q, cntlid) = admin_queue(0);
        let mut io = test_queue(q.target.clone());
        ic(&mut io, 0);
        feed(&mut io, &connect_bytes(1, cntlid, 0), 0);
        let mut s = Sqe::rw(iop::WRITE, 4, 1, 0, 8);
        s.sgl1 = Sgl::transport(4096);
        let mut b = Vec::new();
        encode_capsule_cmd(&mut b, &s, &[], &TxConfig::default());
        let (out, _) = feed(&mut io, &b, 0);
        let ttag = match pdus(&out, false, false)[..] {
            [Pdu::R2T(r)] => {
                assert_eq!((r.cccid, r.offset, r.length), (4, 0, 4096));
                r.ttag
            }
            ref other => panic!("{other:?}"),
        };
        let mut b = Vec::new();
        let hdr = DataHdr { cccid: 4, ttag, offset: 4000, length: 512 };
        encode_data_pdu(&mut b, false, flags::LAST_PDU, &hdr, &[0; 512], &TxConfig::default());
        let (out, f) = feed(&mut io, &b, 0);
        assert_eq!(f, QueueFlow::CloseAfterFlush);
        match pdus(&out, false, false)[..] {
            [Pdu::TermReq { fes: f, data, .. }] => {
                assert_eq!(f, fes::DATA_OUT_OF_RANGE);
                assert_eq!(data, &b[..24], "offending header echoed");
            }
            ref other => panic!("{other:?}"),
        }
    }

    /// Fuzz input for an already connected I/O queue (preface mode 2):
    /// in-capsule write, R2T write with its data, read, compare, DSM.
    fn session_stream(dg: u8) -> Vec<u8> {
        let tx = TxConfig { hdgst: dg & 1 != 0, ddgst: dg & 2 != 0, data_align: 4 };
        let mut s = vec![2 | (dg << 2)];
        let mut w = Sqe::rw(iop::WRITE, 3, 1, 0, 8);
        w.sgl1 = Sgl::in_capsule(0, 4096);
        encode_capsule_cmd(&mut s, &w, &[5; 4096], &tx);
        let mut w = Sqe::rw(iop::WRITE, 4, 1, 8, 8);
        w.sgl1 = Sgl::transport(4096);
        encode_capsule_cmd(&mut s, &w, &[], &tx);
        // The first free slot is 0: the R2T's TTAG.
        let hdr = DataHdr { cccid: 4, ttag: 0, offset: 0, length: 4096 };
        encode_data_pdu(&mut s, false, flags::LAST_PDU, &hdr, &[6; 4096], &tx);
        let mut r = Sqe::rw(iop::READ, 5, 1, 0, 16);
        r.sgl1 = Sgl::transport(8192);
        encode_capsule_cmd(&mut s, &r, &[], &tx);
        let mut c = Sqe::rw(iop::COMPARE, 6, 1, 0, 1);
        c.sgl1 = Sgl::in_capsule(0, 512);
        encode_capsule_cmd(&mut s, &c, &[5; 512], &tx);
        let mut d = Sqe::new(iop::DATASET_MANAGEMENT, 7, 1);
        d.cdw11 = 1 << 2;
        d.sgl1 = Sgl::in_capsule(0, 16);
        let mut range = [0u8; 16];
        range[4] = 8;
        encode_capsule_cmd(&mut s, &d, &range, &tx);
        s
    }

    #[test]
    fn fuzz_preface_session_is_valid() {
        // The unmutated stream runs without a TermReq: the soak starts deep.
        let target = crate::testing::test_target();
        let sub = target.subsystem(TEST_NQN).unwrap();
        let ctrl = target.create_controller(CtrlKind::Io, Some(sub), HOST, [0; 16], 1).unwrap();
        let mut q = test_queue(target.clone());
        ic(&mut q, 0);
        feed(&mut q, &connect_bytes(1, ctrl.cntlid, 0), 0);
        let body = &session_stream(0)[1..];
        let (out, f) = feed(&mut q, body, 0);
        assert_eq!(f, QueueFlow::Continue);
        let resps = pdus(&out, false, false)
            .iter()
            .filter_map(|p| match p {
                Pdu::CapsuleResp(c) => Some(c.status),
                _ => None,
            })
            .collect::<Vec<_>>();
        assert!(resps.iter().all(|s| s.is_success()), "{resps:?}");
        assert_eq!(resps.len(), 4, "2 writes, compare and DSM (the read completes with SUCCESS)");
    }

    #[test]
    fn fuzz_soak_of_mutated_sessions() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for dg in 0..4u8 {
            let base = session_stream(dg);
            fuzz_queue_input(&base);
            for _ in 0..300 {
                let mut m = base.clone();
                for _ in 0..(next() % 4 + 1) {
                    let at = (next() as usize) % m.len();
                    match next() % 4 {
                        0 => m[at] = next() as u8,
                        1 => m[at] ^= 1 << (next() % 8),
                        2 => m.insert(at, next() as u8),
                        _ => {
                            m.remove(at);
                        }
                    }
                }
                fuzz_queue_input(&m);
            }
        }
    }

    #[test]
    fn fuzz_entry_survives_garbage_and_mutations() {
        fuzz_queue_input(&[]);
        fuzz_queue_input(&[0xff; 300]);
        let mut stream = Vec::new();
        encode_ic_req(&mut stream, &IcReq::default());
        stream.extend(connect_bytes(0, 0xffff, 0));
        fuzz_queue_input(&stream);
        let mut x: u32 = 12345;
        for i in 0..200 {
            let mut m = stream.clone();
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let at = (x as usize >> 8) % m.len();
            m[at] ^= (x >> 3) as u8 | 1;
            if i % 3 == 0 {
                m.truncate(at);
            }
            fuzz_queue_input(&m);
        }
    }
}
