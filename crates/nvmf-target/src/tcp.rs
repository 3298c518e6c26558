//! NVMe/TCP queue (controller side), sans-IO: ICReq, the PDU loop, capsule
//! dispatch and responses. One [`Queue`] per TCP connection.
//!
//! The queue takes bytes, storage completions, wake-ups and one clock
//! (`now_us`, monotonic microseconds) and gives back bytes (appended to the
//! caller's output), [`Action`]s the driver executes (storage operations,
//! registry changes), and a next deadline ([`Queue::next_deadline_us`]) at
//! which the driver calls [`Queue::on_timeout`]. It never blocks, never makes
//! a system call and never changes shared state itself, so every path runs
//! in tests with byte vectors and a virtual clock.
//!
//! Sequence: ICReq -> ICResp; then the first capsule must be a Connect, which
//! binds the queue to a controller (admin queue: a new one; I/O queue: an
//! existing, enabled one, maybe served by another core). Commands then flow:
//! - host -> controller data: in the capsule (up to IOCCSZ) or fetched with
//!   one R2T for the whole transfer, answered by H2CData PDUs of at most
//!   MAXH2CDATA bytes whose payload is taken piece by piece as it arrives
//!   ([`crate::r2t`]);
//! - controller -> host data: C2HData PDUs of at most `max_c2h_data_bytes`,
//!   PDO aligned to the host's HPDA, the last one with SUCCESS (and no
//!   CapsuleResp) when the host disabled SQ flow control.
//!
//! Where the rest lives, as in Linux `drivers/nvme/target/`: [`crate::fabrics`]
//! (Connect, Property Get/Set, Disconnect), [`crate::admin`],
//! [`crate::discovery`], [`crate::io_cmd`] (I/O validation and dispatch),
//! [`crate::io_cmd_mem`] and [`crate::io_cmd_fd`] (I/O per backend kind),
//! [`crate::ana`], [`crate::keepalive`] (every timeout).
//!
//! Fatal transport errors send a C2HTermReq (FES/FEI) and close after flush.
//!
//! ## Bounds
//!
//! | what | bound |
//! | --- | --- |
//! | receive buffer before Connect | [`crate::limits::RECV_BUF_SMALL_BYTES`]: the largest PDU accepted before Connect is an admin capsule |
//! | largest PDU accepted | 72 + 260 + max(`in_capsule_data_bytes`, admin capsule, `max_h2c_data_bytes`) bytes, checked from the 8-byte header; H2CData payloads are taken in pieces and never need a buffer of their size |
//! | in-capsule data | I/O queues `in_capsule_data_bytes`, admin queue [`ADMIN_IN_CAPSULE_DATA_BYTES_MAX`] |
//! | commands holding state (R2T, storage) | SQSIZE + 1 slots, fixed at Connect; a CID already in flight gets Command ID Conflict |
//! | R2Ts per command | 1 (the whole transfer; the host splits it into ≤ MAXH2CDATA PDUs) |
//! | data buffers | taken from the core's pool while a command needs one ([`crate::buf`]) |
//! | admin data transfer | [`crate::limits::ADMIN_XFER_BYTES_MAX`] |
//! | time | see [`crate::keepalive`]: ICReq and Connect, a started PDU, R2T data, keep-alive, KATO 0 |

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use nvmf_proto::cqe::Cqe;
use nvmf_proto::fabrics::ADMIN_IN_CAPSULE_DATA_BYTES_MAX;
use nvmf_proto::opcodes::admin as admin_op;
use nvmf_proto::pdu::{
    self, dgst, encode_capsule_resp, encode_data_pdu, encode_ic_resp, encode_term_req, fes, flags, DataHdr, IcReq,
    IcResp, TxConfig,
};
use nvmf_proto::status::{generic, sct};
use nvmf_proto::{decode, Decoded, FrameConfig, Pdu, PduError, Role, Sqe, Status};

use crate::action::Action;
use crate::admin::AdminState;
use crate::ana::AnaCache;
use crate::ctrl::Controller;
use crate::r2t::H2cStream;
use crate::slots::SlotTable;
use crate::stats::QueueCounters;
use crate::subsys::{NsTable, Port, Target};

/// Data PDU overhead bound: largest PDO (one byte) plus the data digest.
const PDU_OVERHEAD_MAX: u32 = 256 + pdu::DIGEST_LEN as u32;

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
    pub connect_timeout_us: u64,
    pub pdu_timeout_us: u64,
    pub data_timeout_us: u64,
    /// Keep-alive applied to a controller whose host asked for KATO 0.
    pub kato_zero_us: u64,
}

impl QueueLimits {
    pub fn from_target(t: &Target) -> QueueLimits {
        let l = &t.limits;
        QueueLimits {
            in_capsule_data_bytes: l.in_capsule_data_bytes,
            max_h2c_data_bytes: l.max_h2c_data_bytes.max(4096),
            max_c2h_data_bytes: l.max_c2h_data_bytes.max(4096),
            mdts_bytes: l.mdts_bytes.max(4096),
            connect_timeout_us: l.connect_timeout_ms as u64 * 1000,
            pdu_timeout_us: l.pdu_timeout_ms as u64 * 1000,
            data_timeout_us: l.data_timeout_ms as u64 * 1000,
            kato_zero_us: l.kato_default_ms as u64 * 1000,
        }
    }
    /// Largest PDU a host may send on a connected I/O queue.
    pub fn pdu_len_max(&self) -> u32 {
        capsule_len_max(self.in_capsule_data_bytes.max(ADMIN_IN_CAPSULE_DATA_BYTES_MAX).max(self.max_h2c_data_bytes))
    }
}

/// Largest PDU carrying `data_bytes` of data (header, digests, padding).
pub fn capsule_len_max(data_bytes: u32) -> u32 {
    pdu::CAPSULE_CMD_HLEN as u32 + PDU_OVERHEAD_MAX + data_bytes
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    AwaitIcReq,
    Ready,
    /// A TermReq was sent or received, or the queue is tearing down: ignore
    /// input, close.
    Closing,
}

/// State bound at Connect.
pub(crate) struct Bound {
    pub ctrl: Arc<Controller>,
    pub qid: u16,
    pub sq_flow_control_disabled: bool,
    /// SQ head we report (only meaningful with flow control).
    pub sqhd: u16,
    /// Entries in the SQ (SQSIZE + 1).
    pub sq_entries: u32,
    /// Namespace snapshot; `None` only while an I/O command borrows it.
    pub ns: Option<Arc<NsTable>>,
    pub ns_generation: u64,
    pub admin: Option<Box<AdminState>>,
    pub ana: AnaCache,
    /// The controller gate value under which this queue may run I/O: the
    /// controller enabled in the epoch the queue connected in.
    pub gate_open: u64,
    /// In-band authentication, when the host must authenticate.
    pub auth: Option<crate::auth::QueueAuth>,
}

/// Stand-in while the snapshot is borrowed (never observed in practice).
pub(crate) static NO_NAMESPACES: NsTable = NsTable { list: Vec::new() };

impl Bound {
    /// Pick up namespace changes (including host masking): one
    /// relaxed-cost load per command; the controller builds the new view.
    #[inline]
    pub fn refresh_namespaces(&mut self) {
        if let Some(s) = &self.ctrl.subsys {
            let g = s.ns_generation.load(Ordering::Acquire);
            if g != self.ns_generation {
                self.ns = Some(self.ctrl.namespaces());
                self.ns_generation = g;
            }
        }
    }
}

/// One NVMe/TCP queue (connection) on the controller side.
pub struct Queue {
    pub(crate) target: Arc<Target>,
    pub(crate) port: Arc<Port>,
    /// The TLS PSK identity of the connection (`None`: in clear), set by
    /// the driver before the first byte is handed over.
    pub(crate) tls_identity: Option<Arc<str>>,
    pub(crate) local: SocketAddr,
    pub(crate) peer: SocketAddr,
    pub(crate) limits: QueueLimits,
    pub(crate) phase: Phase,
    /// When the connection was accepted.
    pub(crate) created_us: u64,
    pub(crate) now_us: u64,
    pub(crate) frame: FrameConfig,
    pub(crate) tx: TxConfig,
    /// A Connect handed to the driver whose result has not come back.
    pub(crate) connecting: Option<u16>,
    pub(crate) conn: Option<Bound>,
    pub(crate) slots: SlotTable,
    /// The H2CData PDU whose payload is arriving piece by piece.
    pub(crate) h2c: Option<H2cStream>,
    /// Since when a PDU is partly received (`None`: at a PDU boundary).
    pub(crate) pdu_started_us: Option<u64>,
    /// Last command received on this queue (KATO-0 idle and keep-alive).
    pub(crate) last_command_us: u64,
    /// Bytes the receive buffer should hold for the PDU in progress.
    pub(crate) rx_wanted: usize,
    /// Admin command output, reused.
    pub(crate) scratch: Vec<u8>,
    pub(crate) counters: Arc<QueueCounters>,
    /// Latency histograms wanted (metrics on).
    pub(crate) latency: bool,
    /// Read data the driver sends without copying (see [`Queue::take_lent`]).
    pub(crate) lent: Vec<(usize, &'static [u8])>,
    pub(crate) actions: Vec<Action>,
}

impl Queue {
    pub fn new(target: Arc<Target>, port: Arc<Port>, local: SocketAddr, peer: SocketAddr, now_us: u64) -> Queue {
        let limits = QueueLimits::from_target(&target);
        let latency = target.latency_histograms.load(Ordering::Relaxed);
        Queue {
            target,
            port,
            tls_identity: None,
            local,
            peer,
            limits,
            phase: Phase::AwaitIcReq,
            created_us: now_us,
            now_us,
            frame: FrameConfig::before_ic(Role::Controller),
            tx: TxConfig::default(),
            connecting: None,
            conn: None,
            slots: SlotTable::default(),
            h2c: None,
            pdu_started_us: None,
            last_command_us: now_us,
            rx_wanted: 0,
            scratch: Vec::new(),
            counters: Arc::new(QueueCounters::default()),
            latency,
            lent: Vec::new(),
            actions: Vec::new(),
        }
    }

    /// The driver's first callback: the queue's clock starts (the connect
    /// timeout counts from here).
    pub fn on_start(&mut self, now_us: u64) {
        self.created_us = now_us;
        self.now_us = now_us;
        self.last_command_us = now_us;
    }

    /// The connection runs over TLS with this PSK identity (the driver
    /// says so before it hands over the first byte).
    pub fn set_tls_identity(&mut self, identity: &str) {
        assert!(self.conn.is_none() && self.connecting.is_none(), "TLS identity set after Connect");
        self.tls_identity = Some(identity.into());
    }

    /// The host's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Controller ID and queue ID once connected.
    pub fn ids(&self) -> Option<(u16, u16)> {
        self.conn.as_ref().map(|c| (c.ctrl.cntlid, c.qid))
    }

    /// Commands holding a slot (awaiting data or storage).
    pub fn inflight(&self) -> usize {
        self.slots.in_flight()
    }

    /// Read data to splice into the output without copying, in order: each
    /// `(at, data)` goes before byte `at` of the output this queue wrote (the
    /// `out` of the call that produced it). Take them after every call that
    /// writes output; the data is `'static` and never changes.
    pub fn take_lent(&mut self) -> std::vec::Drain<'_, (usize, &'static [u8])> {
        self.lent.drain(..)
    }

    /// Effects to execute, in order, after every call.
    pub fn take_actions(&mut self) -> std::vec::Drain<'_, Action> {
        self.actions.drain(..)
    }

    /// Bytes the receive buffer should be able to hold now (a PDU larger
    /// than the small buffer is on its way); 0 when the small one will do.
    pub fn rx_wanted(&self) -> usize {
        self.rx_wanted
    }

    /// Whether the queue stopped reading input for now (a Connect is with
    /// the driver): call [`Queue::on_recv`] again once it was answered.
    pub fn input_paused(&self) -> bool {
        self.connecting.is_some()
    }

    // ------------------------------------------------------------ input

    /// Parse every complete PDU (and every payload piece of a large H2CData
    /// PDU) in `rx`; returns the bytes consumed.
    pub fn on_recv(&mut self, rx: &[u8], now_us: u64, out: &mut Vec<u8>) -> (usize, QueueFlow) {
        debug_assert!(self.lent.is_empty(), "lent data not taken after the previous call");
        self.now_us = now_us;
        self.rx_wanted = 0;
        let mut pos = 0;
        let mut whole_pdus = 0u32;
        let flow = loop {
            if self.phase == Phase::Closing {
                break QueueFlow::CloseAfterFlush;
            }
            if self.connecting.is_some() {
                // The Connect result decides how the rest is read.
                break QueueFlow::Continue;
            }
            if self.h2c.is_some() {
                let n = match self.h2c_feed(&rx[pos..], out) {
                    Ok(n) => n,
                    Err(f) => {
                        self.terminate(out, f, &[]);
                        break QueueFlow::CloseAfterFlush;
                    }
                };
                pos += n;
                if self.h2c.is_some() {
                    // The payload ended and its digest may follow in `rx`.
                    if n > 0 && pos < rx.len() {
                        continue;
                    }
                    break QueueFlow::Continue;
                }
                whole_pdus += 1;
                continue;
            }
            let buf = &rx[pos..];
            if buf.is_empty() {
                break QueueFlow::Continue;
            }
            if self.phase == Phase::AwaitIcReq {
                // Only ICReq (or a TermReq) may open the connection: any other
                // known PDU type is out of sequence, whatever its length.
                let t = pdu::PduType::from_u8(buf[0]);
                if t.is_some_and(|t| !matches!(t, pdu::PduType::IcReq | pdu::PduType::H2CTermReq)) {
                    let hdr = &buf[..buf.len().min(8)];
                    self.terminate(out, fatal(fes::PDU_SEQUENCE_ERROR, 0, "PDU before ICReq"), hdr);
                    break QueueFlow::CloseAfterFlush;
                }
            }
            match decode(buf, &self.frame) {
                Ok(Decoded::NeedMore(need)) => {
                    match self.h2c_try_start(buf) {
                        Ok(Some(n)) => {
                            pos += n;
                            continue;
                        }
                        Ok(None) => {}
                        Err(f) => {
                            let hlen = buf.len().min(pdu::DATA_HLEN);
                            self.terminate(out, f, &buf[..hlen]);
                            break QueueFlow::CloseAfterFlush;
                        }
                    }
                    self.rx_wanted = need;
                    break QueueFlow::Continue;
                }
                Ok(Decoded::Pdu(p, n)) => {
                    debug_assert!(n > 0 && n <= buf.len());
                    let hlen = (buf[2] as usize).min(n);
                    whole_pdus += 1;
                    match self.on_pdu(p, out) {
                        Ok(QueueFlow::Continue) => pos += n,
                        Ok(flow) => {
                            self.phase = Phase::Closing;
                            break flow;
                        }
                        Err(f) => {
                            self.terminate(out, f, &buf[..hlen]);
                            break QueueFlow::CloseAfterFlush;
                        }
                    }
                }
                Err(e) => {
                    if e.fes == fes::HEADER_DIGEST_ERROR {
                        QueueCounters::bump(&self.counters.io.digest_errors, 1);
                    }
                    let hdr = &buf[..buf.len().min(pdu::TERM_DATA_LEN_MAX).min(buf[2].max(8) as usize)];
                    self.terminate(out, e, hdr);
                    break QueueFlow::CloseAfterFlush;
                }
            }
        };
        if flow != QueueFlow::Continue {
            return (rx.len(), flow);
        }
        // A started PDU must finish within pdu_timeout, whatever KATO says:
        // the clock restarts whenever a PDU completes.
        let partial = pos < rx.len() || self.h2c.is_some();
        if !partial {
            self.pdu_started_us = None;
        } else if whole_pdus > 0 || self.pdu_started_us.is_none() {
            self.pdu_started_us = Some(now_us);
        }
        (pos, QueueFlow::Continue)
    }

    pub(crate) fn terminate(&mut self, out: &mut Vec<u8>, f: PduError, offending: &[u8]) {
        crate::peer_warn!(
            self.now_us,
            "protocol error from host {}: {} (FES {:#x}, FEI {}); sending C2HTermReq and closing",
            self.peer,
            f.reason,
            f.fes,
            f.fei
        );
        encode_term_req(out, true, f.fes, f.fei, offending);
        self.phase = Phase::Closing;
    }

    fn on_pdu(&mut self, p: Pdu<'_>, out: &mut Vec<u8>) -> Result<QueueFlow, PduError> {
        match p {
            Pdu::IcReq(ic) => self.on_ic_req(&ic, out).map(|_| QueueFlow::Continue),
            Pdu::TermReq { fes: f, fei, .. } => {
                crate::peer_warn!(self.now_us, "host {} sent H2CTermReq (FES {f:#x}, FEI {fei}); closing", self.peer);
                Ok(QueueFlow::CloseNow)
            }
            _ if self.phase != Phase::Ready => Err(fatal(fes::PDU_SEQUENCE_ERROR, 0, "PDU before ICReq")),
            Pdu::CapsuleCmd { sqe, data, data_digest_ok } => Ok(self.on_capsule(sqe, data, data_digest_ok, out)),
            Pdu::H2CData { hdr, data, data_digest_ok, .. } => {
                self.h2c_whole(&hdr, data, data_digest_ok, out).map(|_| QueueFlow::Continue)
            }
            // decode() rejects controller-to-host PDUs for the controller role.
            _ => Err(fatal(fes::INVALID_HEADER_FIELD, 0, "unexpected PDU type")),
        }
    }

    fn on_ic_req(&mut self, ic: &IcReq, out: &mut Vec<u8>) -> Result<(), PduError> {
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
        // Until Connect, nothing larger than an admin capsule is accepted: a
        // peer that has not proven anything holds no more than the small
        // receive buffer.
        self.frame = FrameConfig {
            role: Role::Controller,
            hdgst: hd,
            ddgst: dd,
            pdu_len_max: capsule_len_max(ADMIN_IN_CAPSULE_DATA_BYTES_MAX),
            rx_data_align: 4,
        };
        self.tx = TxConfig { hdgst: hd, ddgst: dd, data_align: (ic.hpda as u32 + 1) * 4 };
        self.phase = Phase::Ready;
        tracing::debug!(peer = %self.peer, hdgst = hd, ddgst = dd, hpda = ic.hpda, "ICReq accepted");
        Ok(())
    }

    // ------------------------------------------------------------ capsules

    fn on_capsule(&mut self, sqe: Sqe, data: &[u8], digest_ok: bool, out: &mut Vec<u8>) -> QueueFlow {
        self.last_command_us = self.now_us;
        if let Some(c) = self.conn.as_mut() {
            if !c.sq_flow_control_disabled {
                c.sqhd = ((c.sqhd as u32 + 1) % c.sq_entries) as u16;
            }
            if let Some(a) = c.admin.as_mut() {
                a.last_traffic_us = self.now_us;
            }
        }
        tracing::trace!(peer = %self.peer, opcode = sqe.opcode, cid = sqe.cid, "capsule");
        if self.slots.cid_in_flight(sqe.cid) {
            // Linux nvmet cannot tell; the spec's answer is this status.
            crate::peer_warn!(self.now_us, "host {} reused CID {} while it is in flight", self.peer, sqe.cid);
            self.respond(out, sqe.cid, st(sct::GENERIC, generic::CID_CONFLICT), 0, 0);
            return QueueFlow::Continue;
        }
        if !data.is_empty() && !digest_ok {
            crate::peer_warn!(self.now_us, "data digest error in a command capsule from {}", self.peer);
            QueueCounters::bump(&self.counters.io.digest_errors, 1);
            self.respond(out, sqe.cid, Status::new(sct::GENERIC, generic::TRANSIENT_TRANSPORT_ERROR), 0, 0);
            return QueueFlow::Continue;
        }
        let is_admin_queue = self.conn.as_ref().map(|c| c.qid == 0).unwrap_or(true);
        let icd_limit =
            if is_admin_queue { ADMIN_IN_CAPSULE_DATA_BYTES_MAX } else { self.limits.in_capsule_data_bytes };
        if data.len() as u32 > icd_limit {
            self.respond(out, sqe.cid, st(sct::GENERIC, generic::SGL_OFFSET_INVALID), 0, 0);
            return QueueFlow::Continue;
        }
        if sqe.opcode == admin_op::FABRICS {
            return self.fabrics_command(sqe, data, out);
        }
        if self.auth_pending() {
            self.auth_required(out, sqe.cid);
            return QueueFlow::Continue;
        }
        if self.conn.is_none() {
            self.respond(out, sqe.cid, st(sct::GENERIC, generic::COMMAND_SEQUENCE_ERROR), 0, 0);
            return QueueFlow::Continue;
        }
        if sqe.sgl1.length > 0 && sqe.psdt() == 0 {
            // PRPs do not exist on fabrics.
            self.respond(out, sqe.cid, st(sct::GENERIC, generic::INVALID_FIELD), 0, 0);
            return QueueFlow::Continue;
        }
        if is_admin_queue {
            self.admin_command(sqe, data, out);
        } else {
            self.io_command(sqe, data, out);
        }
        QueueFlow::Continue
    }

    // ------------------------------------------------------------ output

    pub(crate) fn respond(&mut self, out: &mut Vec<u8>, cid: u16, status: Status, dw0: u32, dw1: u32) {
        if !status.is_success() {
            self.counters.io.count_error(status.sct, status.sc);
        }
        let (sqhd, sqid) = self.conn.as_ref().map(|c| (c.sqhd, c.qid)).unwrap_or((0, 0));
        let cqe = Cqe { dw0, dw1, sqhd, sqid, cid, status };
        encode_capsule_resp(out, &cqe, &self.tx);
    }

    /// Whether reads may complete with the SUCCESS flag on their last C2HData.
    pub(crate) fn success_flag_allowed(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.sq_flow_control_disabled)
    }

    /// C2HData PDUs for `data`, then the completion (SUCCESS flag when allowed).
    pub(crate) fn send_data_and_complete(&mut self, out: &mut Vec<u8>, cid: u16, data: &[u8], dw0: u32) {
        let success_flag = dw0 == 0 && self.success_flag_allowed();
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

    /// The flow after a completion: closing queues close once output is sent.
    pub(crate) fn flow(&self) -> QueueFlow {
        if self.phase == Phase::Closing {
            QueueFlow::CloseAfterFlush
        } else {
            QueueFlow::Continue
        }
    }

    // ------------------------------------------------------------ teardown

    /// End every command that waits for the host (R2T data, held AERs) with
    /// Aborted due to SQ Deletion and stop reading; storage operations in
    /// flight complete normally (the driver keeps the connection until they
    /// drain), then the connection closes. Used for engine shutdown and for
    /// a controller reset.
    pub fn on_shutdown(&mut self, out: &mut Vec<u8>) -> QueueFlow {
        self.abort_waiting(out);
        self.phase = Phase::Closing;
        QueueFlow::CloseAfterFlush
    }

    pub(crate) fn abort_waiting(&mut self, out: &mut Vec<u8>) {
        let aborted = Status::new(sct::GENERIC, generic::ABORTED_SQ_DELETION);
        self.h2c = None;
        let waiting: Vec<(usize, u16)> = self
            .slots
            .iter_mut()
            .filter(|(_, s)| s.stage == crate::slots::Stage::AwaitData)
            .map(|(i, s)| (i, s.sqe.cid))
            .collect();
        for (i, cid) in waiting {
            self.free_slot(i);
            self.respond(out, cid, aborted, 0, 0);
        }
        let aers = self.conn.as_mut().and_then(|c| c.admin.as_mut()).map(|a| std::mem::take(&mut a.aers));
        for cid in aers.unwrap_or_default() {
            self.respond(out, cid, aborted, 0, 0);
        }
    }

    /// The connection is gone: the driver releases the queue ID, or the
    /// controller for an admin queue ([`Action::Release`]).
    pub fn on_closed(&mut self) {
        self.phase = Phase::Closing;
        self.h2c = None;
        let Some(c) = self.conn.take() else { return };
        if c.qid == 0 {
            tracing::info!("ctrl {} disconnected: host {}, subsystem {}", c.ctrl.cntlid, c.ctrl.hostnqn, c.ctrl.nqn());
        } else {
            tracing::debug!("ctrl {}: I/O queue {} closed", c.ctrl.cntlid, c.qid);
        }
        let counters = (c.qid != 0).then(|| self.counters.clone());
        self.actions.push(Action::Release { ctrl: c.ctrl, qid: c.qid, counters });
    }

    /// Kind of controller this queue belongs to, once connected.
    pub fn ctrl_kind(&self) -> Option<crate::ctrl::CtrlKind> {
        self.conn.as_ref().map(|c| c.ctrl.kind)
    }
}

/// A fatal transport error: C2HTermReq with these fields, then close.
pub(crate) fn fatal(fes: u16, fei: u32, reason: &'static str) -> PduError {
    PduError { fes, fei, reason }
}

/// A status with DNR.
pub(crate) fn st(sct_v: u8, sc: u8) -> Status {
    Status::new(sct_v, sc).dnr()
}

/// Data transfer direction from the opcode (bits 1:0; FCTYPE for Fabrics).
pub(crate) fn data_direction(sqe: &Sqe) -> u8 {
    if sqe.opcode == admin_op::FABRICS {
        sqe.fctype() & 3
    } else {
        sqe.opcode & 3
    }
}
pub(crate) const DIR_H2C: u8 = 1;
pub(crate) const DIR_C2H: u8 = 2;

/// Where the host data of a command is.
pub(crate) enum HostData<'a> {
    None,
    Capsule(&'a [u8]),
    R2t(u32),
}

/// Locate the host data of `sqe` (in the capsule or to fetch with R2T).
pub(crate) fn host_data<'a>(sqe: &Sqe, capsule: &'a [u8], limit: u32) -> Result<HostData<'a>, Status> {
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
pub(crate) fn c2h_sgl_ok(sqe: &Sqe, limit: u32) -> Result<(), Status> {
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

#[cfg(test)]
#[path = "tcp_tests.rs"]
mod tests;
