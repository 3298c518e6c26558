//! Sans-IO NVMe/TCP host queue: one TCP connection carrying one NVMe queue
//! (admin or I/O), seen from the host.
//!
//! [`HostQueue`] is a pure state machine. It never touches a socket or a clock:
//!
//! * bytes the controller sent go in through [`HostQueue::receive`], which
//!   returns how many bytes it consumed (whole PDUs only; leave the rest
//!   buffered and call again when more arrive);
//! * bytes for the controller accumulate in an internal output buffer that
//!   the driver moves to its socket with [`HostQueue::output`] /
//!   [`HostQueue::consume_output`] (blocking driver) or
//!   [`HostQueue::move_output_to`] (an `nvmf_engine::Handler`, whose
//!   `io.rx()` and `io.tx()` cannot be borrowed at the same time);
//! * finished commands are popped with [`HostQueue::pop_completion`];
//! * time is passed in (`now_ms`, any monotonic milliseconds) to
//!   [`HostQueue::submit`] and [`HostQueue::on_tick`].
//!
//! # Lifecycle
//!
//! [`HostQueue::new`] queues the ICReq in the output. Once the ICResp has
//! been received and validated, [`HostQueue::is_ready`] turns true and
//! commands may be submitted (the first one on a fresh connection is a
//! Fabrics Connect, which the driver builds with `nvmf_proto::fabrics`).
//! When the queue fails (a malformed PDU from the controller, a C2HTermReq,
//! or the driver reporting the connection lost through
//! [`HostQueue::fail`]) every outstanding command is completed once with
//! [`Fate::Unknown`], and the queue refuses further work.
//!
//! # Buffers without per-I/O allocation
//!
//! A command's data buffer is a caller-owned `Vec<u8>` moved in with the
//! [`Request`] and handed back in its [`Completion`] (also when the submit is
//! refused, inside [`SubmitError`]). The transfer length is `buf.len()`, so a
//! driver keeps a pool of `Vec`s with enough capacity and only `resize`s them.
//! The queue itself allocates only in [`HostQueue::new`]: command slots, the
//! completion ring (one entry per slot) and the output buffer (which grows to
//! its high-water mark and is then reused).
//!
//! # Zero-copy writes
//!
//! With [`QueueConfig::h2c_data_borrowed`], write payloads of
//! [`LEND_MIN_BYTES`] or more (H2CData and in-capsule data) are not copied
//! into the output: [`HostQueue::take_output`] hands them out as
//! [`OutputPiece::Lent`] slices of the command's own buffer, and the driver
//! sends them from there (the engine's `send_borrowed`) and confirms each
//! with [`HostQueue::output_sent`]. Until then the command's completion is
//! held back, so its buffer cannot be reused while the kernel still reads it;
//! [`HostQueue::release_output`] ends every loan once the connection is gone.
//! `nvmf perf` runs this way.
//!
//! # Example: a blocking loop
//!
//! ```no_run
//! use std::io::{Read, Write};
//! use nvmf_host::queue::{HostQueue, QueueConfig, Request};
//! use nvmf_proto::{opcodes::io, Sqe};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut sock = std::net::TcpStream::connect("127.0.0.1:4420")?;
//! let mut q = HostQueue::new(QueueConfig::io(1, 32));
//! let mut rx = vec![0u8; 1 << 20];
//! let mut rx_len = 0;
//! // ... IC exchange and Connect as in nvmf_host::controller ...
//! let cid = q.submit(Request::read(Sqe::rw(io::READ, 0, 1, 0, 8), vec![0; 4096]), 0).map_err(|e| e.kind)?;
//! loop {
//!     sock.write_all(q.output())?;
//!     q.clear_output();
//!     if let Some(c) = q.pop_completion() {
//!         assert_eq!(c.cid, cid);
//!         println!("status {}", c.status());
//!         break;
//!     }
//!     let n = sock.read(&mut rx[rx_len..])?;
//!     rx_len += n;
//!     let used = q.receive(&rx[..rx_len])?;
//!     rx.copy_within(used..rx_len, 0);
//!     rx_len -= used;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Limits
//!
//! | what | bound |
//! | --- | --- |
//! | [`QueueConfig::queue_depth`] | `1..=`[`QUEUE_DEPTH_MAX`] outstanding commands |
//! | data per command | [`QueueConfig::transfer_len_max_bytes`] (`<=` [`TRANSFER_LEN_MAX_BYTES`]) |
//! | largest PDU accepted | transfer limit + header, digests and padding ([`HostQueue::rx_pdu_len_max`]) |
//! | ICResp | PFV 0, MAXH2CDATA `>=` 4096, CPDA `<=` 31, digests exactly as asked |
//! | per-command timeout | [`QueueConfig::command_timeout_ms`] or [`Request::timeout_ms`]; reported once by [`HostQueue::on_tick`] |
//! | data sent per write | never more than the command's buffer, whatever R2Ts ask for |

use std::collections::VecDeque;

use nvmf_proto::copy::{copy_bytes, extend_bytes};
use nvmf_proto::digest::{crc32c, crc32c_append};
use nvmf_proto::opcodes::{admin, fctype};
use nvmf_proto::pdu::{self, dgst, fes, flags, DataHdr, IcReq, IcResp, TxConfig};
use nvmf_proto::status::{generic, path, sct};
use nvmf_proto::{Cqe, Decoded, FrameConfig, Pdu, Role, Sgl, Sqe, Status};

/// Most commands one queue can have outstanding (Linux caps queue_size at 1024 too).
pub const QUEUE_DEPTH_MAX: u16 = 1024;
/// Largest data transfer of one command the queue accepts to configure (64 MiB).
pub const TRANSFER_LEN_MAX_BYTES: u32 = 64 << 20;
/// In-capsule data limit on the admin queue: an 8 KiB capsule (as Linux's
/// NVME_TCP_ADMIN_CCSZ) minus the 64-byte SQE. It holds the 1 KiB Connect data.
pub const ADMIN_IN_CAPSULE_DATA_MAX_BYTES: u32 = 8192 - 64;
/// With [`QueueConfig::h2c_data_borrowed`], payloads from this size up are
/// lent to the driver; smaller ones are cheaper to copy than to track.
pub const LEND_MIN_BYTES: usize = 16 * 1024;
/// [`HostQueue::recv_sink`] offers the rest of a C2HData payload for a direct
/// receive from this many bytes up; a smaller rest is cheaper to take with the
/// next PDUs in one receive and copy.
pub const SINK_MIN_BYTES: usize = 16 * 1024;
/// [`HostQueue::recv_len_hint`] while large reads are outstanding: enough for a
/// C2HData header (and a dozen capsule responses), little enough that most
/// of a large payload is left for [`HostQueue::recv_sink`].
pub const RECV_HINT_BYTES: usize = 1024;
/// Smallest MAXH2CDATA a host accepts (Linux and SPDK reject less).
pub const MAXH2CDATA_MIN_BYTES: u32 = 4096;
/// Largest CPDA / HPDA value (0's based dwords: 128-byte alignment).
pub const PDA_MAX: u8 = 31;
/// Linux default admin command timeout (`admin_timeout`, 60 s).
pub const ADMIN_COMMAND_TIMEOUT_MS: u64 = 60_000;
/// Linux default I/O command timeout (`io_timeout`, 30 s).
pub const IO_COMMAND_TIMEOUT_MS: u64 = 30_000;

/// Command identifiers: slot index in the low bits, a 4-bit generation in the
/// high bits (as Linux does), so a late PDU for a finished command that reused
/// its slot is recognised as unknown instead of corrupting the new command.
const CID_INDEX_BITS: u32 = 12;
const CID_INDEX_MASK: u16 = (1 << CID_INDEX_BITS) - 1;
const CID_GEN_MASK: u8 = 0xf;
const _: () = assert!(QUEUE_DEPTH_MAX as u32 <= 1 << CID_INDEX_BITS);

/// Byte offsets inside received PDUs, used as FEI of "invalid header field".
mod fei {
    pub const FLAGS: u32 = 1;
    pub const CCCID: u32 = 8;
    pub const DATAL: u32 = 16;
    pub const CQE_CID: u32 = 8 + 12;
    pub const IC_PFV: u32 = 8;
    pub const IC_PDA: u32 = 10;
    pub const IC_DGST: u32 = 11;
    pub const IC_MAXH2CDATA: u32 = 12;
}

/// Static parameters of one host queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// Queue ID this connection will Connect as (0 = admin).
    pub qid: u16,
    /// Most outstanding commands, `1..=QUEUE_DEPTH_MAX`. The Connect SQSIZE
    /// should be `queue_depth - 1` (0's based), as Linux does.
    pub queue_depth: u16,
    /// Ask for header digests (CRC32C on every PDU header).
    pub hdr_digest: bool,
    /// Ask for data digests (CRC32C on every PDU's data).
    pub data_digest: bool,
    /// HPDA sent in the ICReq: alignment we want for C2H data, 0's based dwords (`0..=31`).
    pub hpda: u8,
    /// MAXR2T sent in the ICReq, 0's based. We answer every R2T as soon as it
    /// is parsed, so 0 (one at a time, like Linux) is enough.
    pub maxr2t: u32,
    /// Largest write payload sent inside the command capsule. Admin queue:
    /// [`ADMIN_IN_CAPSULE_DATA_MAX_BYTES`]; I/O queues: IOCCSZ * 16 - 64 from
    /// Identify Controller. Larger writes wait for R2Ts. A Connect always
    /// travels in-capsule.
    pub in_capsule_data_max_bytes: u32,
    /// Largest data transfer of one command (bounds buffers and accepted PDU size).
    pub transfer_len_max_bytes: u32,
    /// Default per-command timeout (0 = none).
    pub command_timeout_ms: u64,
    /// Leave write payloads of at least [`LEND_MIN_BYTES`] (H2CData and
    /// in-capsule data) in the request buffers instead of copying them
    /// into the output: the output then holds borrowed pieces that only
    /// [`HostQueue::take_output`] hands out, and the driver confirms each with
    /// [`HostQueue::output_sent`] (or all at once with
    /// [`HostQueue::release_output`] once the connection is gone). A command
    /// whose data is still lent out completes only after that. For drivers
    /// that can send from borrowed memory (the engine's `send_borrowed`).
    pub h2c_data_borrowed: bool,
}

impl QueueConfig {
    /// Admin queue defaults: depth 32 (Linux NVME_AQ_DEPTH), 8 KiB capsule,
    /// 1 MiB transfers, 60 s timeout, no digests.
    pub fn admin() -> QueueConfig {
        QueueConfig {
            qid: 0,
            queue_depth: 32,
            hdr_digest: false,
            data_digest: false,
            hpda: 0,
            maxr2t: 0,
            in_capsule_data_max_bytes: ADMIN_IN_CAPSULE_DATA_MAX_BYTES,
            transfer_len_max_bytes: 1 << 20,
            command_timeout_ms: ADMIN_COMMAND_TIMEOUT_MS,
            h2c_data_borrowed: false,
        }
    }
    /// I/O queue defaults: no in-capsule data until the caller sets it from
    /// Identify Controller, 1 MiB transfers, 30 s timeout, no digests.
    pub fn io(qid: u16, queue_depth: u16) -> QueueConfig {
        QueueConfig {
            qid,
            queue_depth,
            in_capsule_data_max_bytes: 0,
            command_timeout_ms: IO_COMMAND_TIMEOUT_MS,
            ..QueueConfig::admin()
        }
    }
}

/// Direction of a command's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DataDir {
    /// No data.
    #[default]
    None,
    /// Host to controller (Write, Connect, Set Features with data...).
    ToController,
    /// Controller to host (Read, Identify, Get Log Page...).
    FromController,
}

/// A command to submit. The queue fills in the SQE's CID, PSDT and SGL1.
#[derive(Debug)]
pub struct Request {
    pub sqe: Sqe,
    pub dir: DataDir,
    /// The data buffer; its length is the transfer length. Returned in the completion.
    pub buf: Vec<u8>,
    /// Caller's value, returned untouched in the completion.
    pub tag: u64,
    /// Timeout of this command: `None` uses [`QueueConfig::command_timeout_ms`],
    /// `Some(0)` never expires (Asynchronous Event Requests).
    pub timeout_ms: Option<u64>,
}

impl Request {
    /// A command without data.
    pub fn new(sqe: Sqe) -> Request {
        Request { sqe, dir: DataDir::None, buf: Vec::new(), tag: 0, timeout_ms: None }
    }
    /// A command reading `buf.len()` bytes from the controller into `buf`.
    pub fn read(sqe: Sqe, buf: Vec<u8>) -> Request {
        Request { dir: DataDir::FromController, buf, ..Request::new(sqe) }
    }
    /// A command sending `buf` to the controller.
    pub fn write(sqe: Sqe, buf: Vec<u8>) -> Request {
        Request { dir: DataDir::ToController, buf, ..Request::new(sqe) }
    }
    pub fn with_tag(mut self, tag: u64) -> Request {
        self.tag = tag;
        self
    }
    pub fn with_timeout_ms(mut self, timeout_ms: u64) -> Request {
        self.timeout_ms = Some(timeout_ms);
        self
    }
}

/// Whether the controller's verdict on a command is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// The completion's status is the controller's answer (or a transport
    /// error detected on its data, e.g. a data digest mismatch on a read).
    Known,
    /// The command was handed to the transport but the queue failed before an
    /// answer arrived: it may or may not have been executed. A write in this
    /// state must not be retried blindly; that is the caller's policy.
    Unknown,
}

/// A finished command. Every submitted command completes exactly once.
#[derive(Debug)]
pub struct Completion {
    pub cid: u16,
    pub tag: u64,
    /// The controller's CQE, or a host-made one for [`Fate::Unknown`] (status
    /// "Command Aborted By Host") and for data digest errors (status
    /// "Transient Transport Error").
    pub cqe: Cqe,
    pub fate: Fate,
    /// The request's buffer, handed back. For reads it holds the data.
    pub buf: Vec<u8>,
}

impl Completion {
    pub fn status(&self) -> Status {
        self.cqe.status
    }
    /// Success with a known fate.
    pub fn is_success(&self) -> bool {
        self.fate == Fate::Known && self.cqe.status.is_success()
    }
}

/// Why the queue stopped working. After this every call returns the error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The controller broke the protocol; we queued an H2CTermReq with this
    /// FES/FEI (send it, then close).
    #[error("controller protocol error: {reason} (we sent H2CTermReq FES {fes:#x} FEI {fei})")]
    Protocol { fes: u16, fei: u32, reason: &'static str },
    /// The controller terminated the connection with a C2HTermReq.
    #[error("controller terminated the connection (C2HTermReq FES {fes:#x} FEI {fei})")]
    TerminatedByController { fes: u16, fei: u32 },
    /// The driver failed the queue (connection lost, timeout recovery, shutdown).
    #[error("queue failed: {0}")]
    Failed(&'static str),
}

/// Why [`HostQueue::submit`] refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitErrorKind {
    #[error("queue not ready (ICResp not received yet)")]
    NotReady,
    #[error("queue failed")]
    Failed,
    #[error("queue full")]
    QueueFull,
    #[error("data transfer larger than the queue's limit")]
    TooLarge,
    #[error("data direction set but buffer empty")]
    EmptyBuffer,
}

/// A refused submit; the request's buffer comes back.
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub struct SubmitError {
    pub kind: SubmitErrorKind,
    pub buf: Vec<u8>,
    pub tag: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    AwaitIcResp,
    Ready,
    Failed(QueueError),
}

#[derive(Debug, Default)]
struct Slot {
    busy: bool,
    gen: u8,
    dir: DataDir,
    buf: Vec<u8>,
    tag: u64,
    /// Absolute deadline in the caller's milliseconds; `u64::MAX` = none.
    deadline_ms: u64,
    expired_reported: bool,
    /// Write sent in the capsule: an R2T for it is a protocol error.
    in_capsule: bool,
    /// C2H bytes received so far (data must arrive in order).
    received_len: u32,
    /// H2C bytes the controller asked for with R2Ts so far.
    requested_len: u32,
    data_digest_error: bool,
    /// H2CData payloads of this command lent to the driver and not yet
    /// confirmed sent: the buffer must not leave the queue before it is 0.
    lent_pieces: u32,
    /// The command's completion, held back while `lent_pieces > 0`.
    parked: Option<(Cqe, Fate)>,
}

/// An H2CData payload left in its command's buffer, spliced into the output
/// stream at byte `at` of `out`.
#[derive(Clone, Copy, Debug)]
struct LentPiece {
    at: usize,
    slot: u16,
    offset: u32,
    len: u32,
}

/// One piece of the output, in stream order (see [`HostQueue::take_output`]).
#[derive(Debug)]
pub enum OutputPiece<'a> {
    /// Bytes to send (copy them: they are gone after `take_output` returns).
    Bytes(&'a [u8]),
    /// A payload inside a command's buffer: send it from there and confirm
    /// with [`HostQueue::output_sent`]`(token)`. The memory stays valid and
    /// unchanged until then (the command cannot complete before).
    Lent { data: &'a [u8], token: u64 },
}

/// The host side of one NVMe/TCP queue. See the [module docs](self).
#[derive(Debug)]
pub struct HostQueue {
    cfg: QueueConfig,
    state: State,
    frame: FrameConfig,
    tx: TxConfig,
    maxh2cdata: u32,
    cpda: u8,
    slots: Vec<Slot>,
    free: Vec<u16>,
    done: VecDeque<Completion>,
    out: Vec<u8>,
    /// Borrowed payloads of the output (only with `h2c_data_borrowed`), by position.
    out_lent: Vec<LentPiece>,
    /// A C2HData PDU whose payload is arriving in pieces.
    c2h: Option<C2hStream>,
    /// Outstanding reads of at least [`SINK_MIN_BYTES`].
    large_reads: u32,
}

/// A C2HData PDU taken piece by piece: its header was checked in full when it
/// arrived, each payload piece goes straight into the command's buffer (from
/// the receive buffer, or received there directly through
/// [`HostQueue::recv_sink`]), and the PDU completes when the last payload byte
/// and the data digest are in. Saves buffering a whole large PDU and copying
/// it once more.
#[derive(Clone, Copy, Debug)]
struct C2hStream {
    slot: usize,
    flags: u8,
    /// Next buffer offset to fill, and the end of this PDU's data in the buffer.
    at: u32,
    end: u32,
    /// A data digest follows the payload; `crc` is the running CRC32C of the
    /// payload so far.
    ddgst: bool,
    crc: u32,
}

impl HostQueue {
    /// Create the queue and queue its ICReq in the output.
    ///
    /// Panics if the configuration is out of its documented bounds (a
    /// programming error, not a wire condition).
    pub fn new(cfg: QueueConfig) -> HostQueue {
        assert!((1..=QUEUE_DEPTH_MAX).contains(&cfg.queue_depth), "queue_depth out of 1..=1024");
        assert!(cfg.hpda <= PDA_MAX, "hpda out of 0..=31");
        assert!(cfg.transfer_len_max_bytes <= TRANSFER_LEN_MAX_BYTES, "transfer_len_max_bytes over 64 MiB");
        let depth = cfg.queue_depth as usize;
        let mut q = HostQueue {
            state: State::AwaitIcResp,
            frame: FrameConfig::before_ic(Role::Host),
            tx: TxConfig::default(),
            maxh2cdata: 0,
            cpda: 0,
            slots: (0..depth).map(|_| Slot::default()).collect(),
            free: (0..depth as u16).rev().collect(),
            done: VecDeque::with_capacity(depth),
            out: Vec::with_capacity(pdu::IC_PDU_LEN),
            out_lent: Vec::new(),
            c2h: None,
            large_reads: 0,
            cfg,
        };
        let mut dg = 0;
        if q.cfg.hdr_digest {
            dg |= dgst::HEADER;
        }
        if q.cfg.data_digest {
            dg |= dgst::DATA;
        }
        pdu::encode_ic_req(&mut q.out, &IcReq { pfv: 0, hpda: q.cfg.hpda, dgst: dg, maxr2t: q.cfg.maxr2t });
        q
    }

    pub fn config(&self) -> &QueueConfig {
        &self.cfg
    }
    pub fn qid(&self) -> u16 {
        self.cfg.qid
    }
    /// ICResp received and accepted; commands may be submitted.
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }
    /// The error that failed the queue, if it failed.
    pub fn error(&self) -> Option<&QueueError> {
        match &self.state {
            State::Failed(e) => Some(e),
            _ => None,
        }
    }
    /// Commands submitted and not yet completed.
    pub fn outstanding(&self) -> usize {
        self.slots.len() - self.free.len()
    }
    /// Free command slots.
    pub fn free_slots(&self) -> usize {
        self.free.len()
    }
    /// MAXH2CDATA the controller announced (0 before ICResp).
    pub fn maxh2cdata(&self) -> u32 {
        self.maxh2cdata
    }
    /// CPDA the controller announced.
    pub fn cpda(&self) -> u8 {
        self.cpda
    }
    /// Largest PDU this queue accepts once connected.
    pub fn rx_pdu_len_max(&self) -> usize {
        rx_pdu_len_max(&self.cfg)
    }
    /// Change the in-capsule data limit (after Identify Controller told IOCCSZ).
    pub fn set_in_capsule_data_max_bytes(&mut self, n: u32) {
        self.cfg.in_capsule_data_max_bytes = n;
    }

    // ------------------------------------------------------------ output

    /// Bytes waiting to be sent to the controller, in order. Not for queues
    /// with [`QueueConfig::h2c_data_borrowed`] (use [`take_output`](Self::take_output)).
    pub fn output(&self) -> &[u8] {
        assert!(self.out_lent.is_empty(), "output() on a queue with lent payloads: use take_output");
        &self.out
    }
    /// The first `n` bytes of [`output`](Self::output) were sent.
    pub fn consume_output(&mut self, n: usize) {
        assert!(n <= self.out.len());
        assert!(self.out_lent.is_empty(), "consume_output on a queue with lent payloads: use take_output");
        self.out.drain(..n);
    }
    /// All of the output was sent (lent payloads included: their loans end).
    pub fn clear_output(&mut self) {
        self.out.clear();
        for i in 0..self.out_lent.len() {
            let slot = self.out_lent[i].slot;
            self.output_sent(make_cid(slot, self.slots[slot as usize].gen) as u64);
        }
        self.out_lent.clear();
    }
    /// Move all pending output to the end of `tx` (swapping buffers when `tx`
    /// is empty, so no bytes are copied). Not for queues with lent payloads
    /// pending ([`has_lent_output`](Self::has_lent_output)).
    pub fn move_output_to(&mut self, tx: &mut Vec<u8>) {
        assert!(self.out_lent.is_empty(), "move_output_to on a queue with lent payloads: use take_output");
        if tx.is_empty() {
            std::mem::swap(tx, &mut self.out);
        } else {
            tx.append(&mut self.out);
        }
    }

    /// The output holds payloads lent from command buffers.
    pub fn has_lent_output(&self) -> bool {
        !self.out_lent.is_empty()
    }

    /// Hand the whole output to `f` piece by piece, in stream order, and clear
    /// it. Every [`OutputPiece::Lent`] must later be confirmed with
    /// [`output_sent`](Self::output_sent) or [`release_output`](Self::release_output).
    pub fn take_output(&mut self, mut f: impl FnMut(OutputPiece<'_>)) {
        let mut pos = 0;
        for p in &self.out_lent {
            debug_assert!(p.at >= pos && p.at <= self.out.len(), "lent pieces out of order");
            if p.at > pos {
                f(OutputPiece::Bytes(&self.out[pos..p.at]));
                pos = p.at;
            }
            let s = &self.slots[p.slot as usize];
            debug_assert!(s.busy && s.lent_pieces > 0, "lent piece of an idle slot");
            let data = &s.buf[p.offset as usize..(p.offset + p.len) as usize];
            f(OutputPiece::Lent { data, token: make_cid(p.slot, s.gen) as u64 });
        }
        if pos < self.out.len() {
            f(OutputPiece::Bytes(&self.out[pos..]));
        }
        self.out.clear();
        self.out_lent.clear();
    }

    /// A lent payload (its `token`) was handed to the kernel: the driver no
    /// longer reads it. Unknown tokens are ignored (a bug in the driver, not
    /// a wire condition).
    pub fn output_sent(&mut self, token: u64) {
        let cid = token as u16;
        let index = (cid & CID_INDEX_MASK) as usize;
        let Some(s) = self.slots.get_mut(index) else { return };
        if !s.busy || make_cid(index as u16, s.gen) != cid || s.lent_pieces == 0 {
            debug_assert!(false, "output_sent for a token with nothing lent");
            return;
        }
        s.lent_pieces -= 1;
        if s.lent_pieces == 0 {
            if let Some((cqe, fate)) = s.parked.take() {
                self.complete(index, cqe, fate);
            }
        }
    }

    /// The connection is gone and the driver references no lent payload any
    /// more (after the engine's `on_closed`): drop every loan and release the
    /// completions that waited for them.
    pub fn release_output(&mut self) {
        self.out_lent.clear();
        for i in 0..self.slots.len() {
            let s = &mut self.slots[i];
            s.lent_pieces = 0;
            if let Some((cqe, fate)) = s.parked.take() {
                self.complete(i, cqe, fate);
            }
        }
    }

    // ------------------------------------------------------------ completions

    /// The next finished command, if any.
    pub fn pop_completion(&mut self) -> Option<Completion> {
        self.done.pop_front()
    }
    /// Finished commands waiting to be popped.
    pub fn completions_ready(&self) -> usize {
        self.done.len()
    }

    // ------------------------------------------------------------ submit

    /// Queue a command (CapsuleCmd, with in-capsule data when it fits) in the
    /// output and return its CID. `now_ms` starts its timeout.
    pub fn submit(&mut self, req: Request, now_ms: u64) -> Result<u16, SubmitError> {
        let refuse = |kind, req: Request| Err(SubmitError { kind, buf: req.buf, tag: req.tag });
        match self.state {
            State::AwaitIcResp => return refuse(SubmitErrorKind::NotReady, req),
            State::Failed(_) => return refuse(SubmitErrorKind::Failed, req),
            State::Ready => {}
        }
        if req.dir != DataDir::None && req.buf.is_empty() {
            return refuse(SubmitErrorKind::EmptyBuffer, req);
        }
        let len = if req.dir == DataDir::None { 0 } else { req.buf.len() };
        if len > self.cfg.transfer_len_max_bytes as usize {
            return refuse(SubmitErrorKind::TooLarge, req);
        }
        let Some(index) = self.free.pop() else {
            return refuse(SubmitErrorKind::QueueFull, req);
        };
        if req.dir == DataDir::FromController && len >= SINK_MIN_BYTES {
            self.large_reads += 1;
        }
        let slot = &mut self.slots[index as usize];
        debug_assert!(!slot.busy, "free list holds a busy slot");
        let cid = make_cid(index, slot.gen);
        let is_connect = req.sqe.opcode == admin::FABRICS && req.sqe.fctype() == fctype::CONNECT;
        let in_capsule = req.dir == DataDir::ToController
            && (len <= self.cfg.in_capsule_data_max_bytes as usize
                || (is_connect && len <= ADMIN_IN_CAPSULE_DATA_MAX_BYTES as usize));
        let mut sqe = req.sqe;
        sqe.cid = cid;
        sqe.flags = (sqe.flags & 0x3f) | (nvmf_proto::sqe::sgl::PSDT_SGL_MPTR_CONTIG << 6);
        sqe.sgl1 = if in_capsule { Sgl::in_capsule(0, len as u32) } else { Sgl::transport(len as u32) };
        let timeout_ms = req.timeout_ms.unwrap_or(self.cfg.command_timeout_ms);
        *slot = Slot {
            busy: true,
            gen: slot.gen,
            dir: req.dir,
            buf: req.buf,
            tag: req.tag,
            deadline_ms: if timeout_ms == 0 { u64::MAX } else { now_ms.saturating_add(timeout_ms) },
            expired_reported: false,
            in_capsule,
            received_len: 0,
            requested_len: 0,
            data_digest_error: false,
            lent_pieces: 0,
            parked: None,
        };
        if in_capsule && self.cfg.h2c_data_borrowed && len >= LEND_MIN_BYTES {
            // Zero copy: the driver sends the in-capsule data from the buffer.
            pdu::encode_capsule_cmd_header(&mut self.out, &sqe, len, &self.tx);
            self.out_lent.push(LentPiece { at: self.out.len(), slot: index, offset: 0, len: len as u32 });
            slot.lent_pieces += 1;
            if self.tx.ddgst {
                pdu::finish_data_pdu(&mut self.out, crc32c(&slot.buf), &self.tx);
            }
        } else {
            let data: &[u8] = if in_capsule { &slot.buf } else { &[] };
            pdu::encode_capsule_cmd(&mut self.out, &sqe, data, &self.tx);
        }
        Ok(cid)
    }

    // ------------------------------------------------------------ time

    /// Report commands whose timeout passed at `now_ms`: their CIDs are
    /// appended to `expired`, each only once. The commands stay outstanding:
    /// the driver decides (Abort, then reset the controller and
    /// [`fail`](Self::fail) the queue). Returns how many were appended.
    pub fn on_tick(&mut self, now_ms: u64, expired: &mut Vec<u16>) -> usize {
        let before = expired.len();
        for (i, s) in self.slots.iter_mut().enumerate() {
            if s.busy && s.parked.is_none() && !s.expired_reported && now_ms >= s.deadline_ms {
                s.expired_reported = true;
                expired.push(make_cid(i as u16, s.gen));
            }
        }
        expired.len() - before
    }

    // ------------------------------------------------------------ failure

    /// Fail the queue (connection lost, timeout recovery, shutdown): every
    /// outstanding command completes with [`Fate::Unknown`]. Idempotent: the
    /// first reason sticks.
    pub fn fail(&mut self, reason: &'static str) -> QueueError {
        self.fail_with(QueueError::Failed(reason))
    }

    fn fail_with(&mut self, e: QueueError) -> QueueError {
        if let State::Failed(first) = &self.state {
            return first.clone();
        }
        self.state = State::Failed(e.clone());
        // A payload in progress targets a buffer about to be handed back.
        self.c2h = None;
        let aborted = Status::new(sct::PATH, path::ABORTED_BY_HOST);
        for i in 0..self.slots.len() {
            if self.slots[i].busy {
                self.complete(i, Cqe::new(0, aborted), Fate::Unknown);
            }
        }
        e
    }

    /// Queue an H2CTermReq carrying the offending header, then fail.
    fn protocol_error(&mut self, fes_v: u16, fei_v: u32, reason: &'static str, offending: &[u8]) -> QueueError {
        if self.error().is_none() {
            let n = offending.len().min(pdu::TERM_DATA_LEN_MAX);
            pdu::encode_term_req(&mut self.out, false, fes_v, fei_v, &offending[..n]);
        }
        self.fail_with(QueueError::Protocol { fes: fes_v, fei: fei_v, reason })
    }

    // ------------------------------------------------------------ receive

    /// Parse every whole PDU at the front of `rx` and return the number of
    /// bytes consumed. Completions become available through
    /// [`pop_completion`](Self::pop_completion); H2CData answering R2Ts goes to
    /// the output. On `Err` the queue has failed (an H2CTermReq may be in the
    /// output: send it, then close the connection).
    pub fn receive(&mut self, rx: &[u8]) -> Result<usize, QueueError> {
        if let State::Failed(e) = &self.state {
            return Err(e.clone());
        }
        let mut consumed = 0;
        loop {
            let buf = &rx[consumed..];
            if self.c2h.is_some() {
                match self.c2h_continue(buf) {
                    Ok(0) => return Ok(consumed),
                    Ok(n) => consumed += n,
                    Err(e) => return Err(e),
                }
                continue;
            }
            match pdu::decode(buf, &self.frame) {
                Ok(Decoded::NeedMore(_)) => {
                    // A data PDU not all here yet: take its header now and its
                    // payload as it comes.
                    match pdu::decode_data_start(buf, &self.frame) {
                        Ok(None) => return Ok(consumed),
                        Ok(Some(st)) => {
                            let hdr = &buf[..st.data_at.min(pdu::TERM_DATA_LEN_MAX)];
                            if let Err((fes_v, fei_v, reason)) = self.on_c2h_start(&st) {
                                return Err(self.protocol_error(fes_v, fei_v, reason, hdr));
                            }
                            consumed += st.data_at;
                        }
                        Err(e) => {
                            let hdr = &buf[..buf.len().min(pdu::TERM_DATA_LEN_MAX)];
                            return Err(self.protocol_error(e.fes, e.fei, e.reason, hdr));
                        }
                    }
                }
                Ok(Decoded::Pdu(p, n)) => {
                    let hdr = &buf[..n.min(pdu::TERM_DATA_LEN_MAX)];
                    if let Err((fes_v, fei_v, reason)) = self.handle(p) {
                        return Err(self.protocol_error(fes_v, fei_v, reason, hdr));
                    }
                    if let State::Failed(e) = &self.state {
                        return Err(e.clone());
                    }
                    consumed += n;
                }
                Err(e) => {
                    let hdr = &buf[..buf.len().min(pdu::TERM_DATA_LEN_MAX)];
                    return Err(self.protocol_error(e.fes, e.fei, e.reason, hdr));
                }
            }
        }
    }

    /// Where the driver may receive the next bytes of the stream directly,
    /// with nothing copied: the rest of a C2HData payload, in the command's
    /// buffer, while one is arriving in pieces and at least
    /// [`SINK_MIN_BYTES`] of it are left. Only valid while the driver has no
    /// unparsed received bytes (they come first); report what landed with
    /// [`sink_received`](Self::sink_received) before anything else.
    pub fn recv_sink(&mut self) -> Option<&mut [u8]> {
        let st = self.c2h.as_ref()?;
        if ((st.end - st.at) as usize) < SINK_MIN_BYTES || !matches!(self.state, State::Ready) {
            return None;
        }
        Some(&mut self.slots[st.slot].buf[st.at as usize..st.end as usize])
    }

    /// The most bytes the driver's next receive into its own buffer should
    /// take when that buffer holds nothing unparsed. While reads of
    /// [`SINK_MIN_BYTES`] or more are outstanding: the rest of the C2HData
    /// PDU in progress (if any) and [`RECV_HINT_BYTES`] more, so that the
    /// next large C2HData's header arrives with little of its payload and
    /// the rest of that payload can go straight to its buffer through
    /// [`recv_sink`](Self::recv_sink). Otherwise no limit.
    pub fn recv_len_hint(&self) -> usize {
        if self.large_reads == 0 {
            return usize::MAX;
        }
        let rest = self.c2h.as_ref().map_or(0, |st| (st.end - st.at) as usize + if st.ddgst { 4 } else { 0 });
        rest + RECV_HINT_BYTES
    }

    /// `n` bytes were received into the slice [`recv_sink`](Self::recv_sink)
    /// returned (its first `n` bytes).
    pub fn sink_received(&mut self, n: usize) -> Result<(), QueueError> {
        if let State::Failed(e) = &self.state {
            return Err(e.clone());
        }
        let st = self.c2h.as_ref().expect("sink_received without a sink");
        assert!(n <= (st.end - st.at) as usize, "sink_received({n}) beyond the sink");
        self.c2h_advance(n);
        Ok(())
    }

    /// `n` more payload bytes of the C2HData PDU in progress are in the
    /// command's buffer: digest them, and without a data digest to wait for,
    /// finish the PDU when its payload is complete.
    fn c2h_advance(&mut self, n: usize) {
        let st = self.c2h.as_mut().expect("c2h_advance without a stream");
        debug_assert!(self.slots[st.slot].busy, "a stream's command completes only through it or fail");
        let (at, end) = (st.at as usize, st.at as usize + n);
        if st.ddgst {
            st.crc = crc32c_append(st.crc, &self.slots[st.slot].buf[at..end]);
        }
        st.at = end as u32;
        if st.at == st.end && !st.ddgst {
            self.c2h_finish(true);
        }
    }

    /// Feed `buf` (received bytes after what was consumed) to the C2HData
    /// PDU in progress; returns the bytes taken (0: need more).
    fn c2h_continue(&mut self, buf: &[u8]) -> Result<usize, QueueError> {
        let st = self.c2h.as_ref().expect("c2h_continue without a stream");
        if st.at < st.end {
            let n = ((st.end - st.at) as usize).min(buf.len());
            if n == 0 {
                return Ok(0);
            }
            let at = st.at as usize;
            copy_bytes(&mut self.slots[st.slot].buf[at..at + n], &buf[..n]);
            self.c2h_advance(n);
            return Ok(n);
        }
        debug_assert!(st.ddgst, "a finished stream without a digest is already closed");
        if buf.len() < pdu::DIGEST_LEN {
            return Ok(0);
        }
        let want = u32::from_le_bytes(buf[..pdu::DIGEST_LEN].try_into().unwrap());
        let ok = want == st.crc;
        self.c2h_finish(ok);
        Ok(pdu::DIGEST_LEN)
    }

    /// Check a C2HData header whose payload will come in pieces, as
    /// [`on_c2h_data`](Self::on_c2h_data) checks a whole one, and start taking it.
    fn on_c2h_start(&mut self, st: &pdu::DataStart) -> Result<(), (u16, u32, &'static str)> {
        debug_assert!(self.c2h.is_none());
        if self.state != State::Ready {
            return Err((fes::PDU_SEQUENCE_ERROR, 0, "C2HData before ICResp"));
        }
        let i = self.check_c2h(&st.hdr, st.flags)?;
        self.c2h = Some(C2hStream {
            slot: i,
            flags: st.flags,
            at: st.hdr.offset,
            end: st.hdr.offset + st.hdr.length,
            ddgst: st.ddgst,
            crc: 0,
        });
        Ok(())
    }

    /// The C2HData PDU in progress is complete (payload in the buffer, digest
    /// checked): as the end of [`on_c2h_data`](Self::on_c2h_data).
    fn c2h_finish(&mut self, digest_ok: bool) {
        let st = self.c2h.take().expect("c2h_finish without a stream");
        debug_assert_eq!(st.at, st.end);
        if !digest_ok {
            // The bytes are in the buffer already; the command completes with
            // a transport error, so nobody reads them.
            self.slots[st.slot].data_digest_error = true;
        }
        self.c2h_received(st.slot, st.end, st.flags);
    }

    fn handle(&mut self, p: Pdu<'_>) -> Result<(), (u16, u32, &'static str)> {
        if self.state == State::AwaitIcResp {
            return match p {
                Pdu::IcResp(ic) => self.on_ic_resp(ic),
                Pdu::TermReq { fes, fei, .. } => {
                    self.fail_with(QueueError::TerminatedByController { fes, fei });
                    Ok(())
                }
                _ => Err((fes::PDU_SEQUENCE_ERROR, 0, "PDU before ICResp")),
            };
        }
        match p {
            Pdu::CapsuleResp(cqe) => self.on_capsule_resp(cqe),
            Pdu::C2HData { hdr, flags, data, data_digest_ok } => self.on_c2h_data(hdr, flags, data, data_digest_ok),
            Pdu::R2T(hdr) => self.on_r2t(hdr),
            Pdu::TermReq { fes, fei, .. } => {
                self.fail_with(QueueError::TerminatedByController { fes, fei });
                Ok(())
            }
            Pdu::IcResp(_) => Err((fes::PDU_SEQUENCE_ERROR, 0, "second ICResp")),
            // The framer rejects host-to-controller PDU types for Role::Host.
            Pdu::IcReq(_) | Pdu::CapsuleCmd { .. } | Pdu::H2CData { .. } => {
                Err((fes::INVALID_HEADER_FIELD, 0, "PDU type not valid for a host"))
            }
        }
    }

    fn on_ic_resp(&mut self, ic: IcResp) -> Result<(), (u16, u32, &'static str)> {
        if ic.pfv != 0 {
            return Err((fes::INVALID_HEADER_FIELD, fei::IC_PFV, "ICResp PFV is not 0"));
        }
        if ic.cpda > PDA_MAX {
            return Err((fes::INVALID_HEADER_FIELD, fei::IC_PDA, "ICResp CPDA over 31"));
        }
        let mut want = 0;
        if self.cfg.hdr_digest {
            want |= dgst::HEADER;
        }
        if self.cfg.data_digest {
            want |= dgst::DATA;
        }
        if ic.dgst & (dgst::HEADER | dgst::DATA) != want {
            return Err((fes::INVALID_HEADER_FIELD, fei::IC_DGST, "ICResp digests differ from the ICReq's"));
        }
        if ic.maxh2cdata < MAXH2CDATA_MIN_BYTES {
            return Err((fes::INVALID_HEADER_FIELD, fei::IC_MAXH2CDATA, "ICResp MAXH2CDATA under 4096"));
        }
        self.maxh2cdata = ic.maxh2cdata;
        self.cpda = ic.cpda;
        self.frame = FrameConfig {
            role: Role::Host,
            hdgst: self.cfg.hdr_digest,
            ddgst: self.cfg.data_digest,
            pdu_len_max: rx_pdu_len_max(&self.cfg) as u32,
            rx_data_align: (self.cfg.hpda as u32 + 1) * 4,
        };
        self.tx =
            TxConfig { hdgst: self.cfg.hdr_digest, ddgst: self.cfg.data_digest, data_align: (ic.cpda as u32 + 1) * 4 };
        self.state = State::Ready;
        Ok(())
    }

    /// The slot of a CID the controller names, if that command is outstanding.
    fn lookup(&self, cid: u16) -> Option<usize> {
        let index = (cid & CID_INDEX_MASK) as usize;
        let s = self.slots.get(index)?;
        // A parked command already has its answer: a second one is not outstanding.
        (s.busy && s.parked.is_none() && make_cid(index as u16, s.gen) == cid).then_some(index)
    }

    fn on_capsule_resp(&mut self, mut cqe: Cqe) -> Result<(), (u16, u32, &'static str)> {
        let Some(i) = self.lookup(cqe.cid) else {
            return Err((fes::INVALID_HEADER_FIELD, fei::CQE_CID, "CapsuleResp for a CID not outstanding"));
        };
        let s = &self.slots[i];
        if s.data_digest_error {
            cqe.status = Status::new(sct::GENERIC, generic::TRANSIENT_TRANSPORT_ERROR);
        } else if s.dir == DataDir::FromController && cqe.status.is_success() && s.received_len as usize != s.buf.len()
        {
            // Never report success for a read buffer the controller did not fill.
            cqe.status = Status::new(sct::GENERIC, generic::DATA_TRANSFER_ERROR);
        }
        self.complete(i, cqe, Fate::Known);
        Ok(())
    }

    fn on_c2h_data(
        &mut self,
        hdr: DataHdr,
        pflags: u8,
        data: &[u8],
        digest_ok: bool,
    ) -> Result<(), (u16, u32, &'static str)> {
        // The framer checks DATAL against the payload; checked again because a
        // mismatch here would corrupt the buffer, not just fail an assertion.
        if hdr.length as usize != data.len() || data.is_empty() {
            return Err((fes::INVALID_HEADER_FIELD, fei::DATAL, "C2HData DATAL does not match its data"));
        }
        let i = self.check_c2h(&hdr, pflags)?;
        let end = hdr.offset + hdr.length;
        if digest_ok {
            copy_bytes(&mut self.slots[i].buf[hdr.offset as usize..end as usize], data);
        } else {
            // Keep receiving; the command completes with a transport error.
            self.slots[i].data_digest_error = true;
        }
        self.c2h_received(i, end, pflags);
        Ok(())
    }

    /// Everything a C2HData header must satisfy before its data may touch
    /// the command's buffer; returns the command's slot.
    fn check_c2h(&self, hdr: &DataHdr, pflags: u8) -> Result<usize, (u16, u32, &'static str)> {
        let Some(i) = self.lookup(hdr.cccid) else {
            return Err((fes::INVALID_HEADER_FIELD, fei::CCCID, "C2HData for a CID not outstanding"));
        };
        let s = &self.slots[i];
        if s.dir != DataDir::FromController {
            return Err((fes::INVALID_HEADER_FIELD, fei::CCCID, "C2HData for a command without read data"));
        }
        if hdr.length == 0 {
            return Err((fes::INVALID_HEADER_FIELD, fei::DATAL, "C2HData DATAL does not match its data"));
        }
        let end = hdr.offset as u64 + hdr.length as u64;
        if end > s.buf.len() as u64 {
            return Err((fes::DATA_OUT_OF_RANGE, 0, "C2HData beyond the command's buffer"));
        }
        if hdr.offset != s.received_len {
            return Err((fes::DATA_OUT_OF_RANGE, 0, "C2HData offset not contiguous"));
        }
        if pflags & flags::SUCCESS != 0 && pflags & flags::LAST_PDU == 0 {
            return Err((fes::INVALID_HEADER_FIELD, fei::FLAGS, "C2HData SUCCESS without LAST_PDU"));
        }
        Ok(i)
    }

    /// A C2HData PDU's data up to `end` is in slot `i`'s buffer: account for
    /// it and complete the command when the PDU carries SUCCESS.
    fn c2h_received(&mut self, i: usize, end: u32, pflags: u8) {
        self.slots[i].received_len = end;
        if pflags & flags::SUCCESS != 0 {
            // complete() sets the CID from the slot.
            let mut cqe = Cqe::new(0, Status::SUCCESS);
            cqe.sqid = self.cfg.qid;
            let s = &self.slots[i];
            if s.data_digest_error {
                cqe.status = Status::new(sct::GENERIC, generic::TRANSIENT_TRANSPORT_ERROR);
            } else if s.received_len as usize != s.buf.len() {
                cqe.status = Status::new(sct::GENERIC, generic::DATA_TRANSFER_ERROR);
            }
            self.complete(i, cqe, Fate::Known);
        }
    }

    fn on_r2t(&mut self, hdr: DataHdr) -> Result<(), (u16, u32, &'static str)> {
        let Some(i) = self.lookup(hdr.cccid) else {
            return Err((fes::INVALID_HEADER_FIELD, fei::CCCID, "R2T for a CID not outstanding"));
        };
        let s = &mut self.slots[i];
        if s.dir != DataDir::ToController || s.in_capsule {
            return Err((fes::INVALID_HEADER_FIELD, fei::CCCID, "R2T for a command with no data to transfer"));
        }
        if hdr.length == 0 {
            return Err((fes::INVALID_HEADER_FIELD, fei::DATAL, "R2T of zero length"));
        }
        let end = hdr.offset as u64 + hdr.length as u64;
        if end > s.buf.len() as u64 {
            return Err((fes::DATA_OUT_OF_RANGE, 0, "R2T beyond the command's data"));
        }
        if s.requested_len as u64 + hdr.length as u64 > s.buf.len() as u64 {
            return Err((fes::R2T_LIMIT_EXCEEDED, 0, "R2Ts ask for more than the command's data"));
        }
        s.requested_len += hdr.length;
        // Answer at once, split at MAXH2CDATA; LAST_PDU ends this R2T's transfer.
        debug_assert!(self.maxh2cdata >= MAXH2CDATA_MIN_BYTES);
        let mut off = hdr.offset;
        while off < end as u32 {
            let n = (end as u32 - off).min(self.maxh2cdata);
            let last = off + n == end as u32;
            let h = DataHdr { cccid: hdr.cccid, ttag: hdr.ttag, offset: off, length: n };
            let chunk = &s.buf[off as usize..(off + n) as usize];
            pdu::encode_data_pdu_header(&mut self.out, false, if last { flags::LAST_PDU } else { 0 }, &h, &self.tx);
            if self.cfg.h2c_data_borrowed && n as usize >= LEND_MIN_BYTES {
                // Zero copy: the driver sends the payload from the command's buffer.
                self.out_lent.push(LentPiece { at: self.out.len(), slot: i as u16, offset: off, len: n });
                s.lent_pieces += 1;
            } else {
                extend_bytes(&mut self.out, chunk);
            }
            if self.tx.ddgst {
                pdu::finish_data_pdu(&mut self.out, crc32c(chunk), &self.tx);
            }
            off += n;
        }
        Ok(())
    }

    fn complete(&mut self, i: usize, mut cqe: Cqe, fate: Fate) {
        let s = &mut self.slots[i];
        debug_assert!(s.busy, "completing a free slot");
        if s.lent_pieces > 0 {
            // The driver still sends from this buffer: hand it back only after
            // output_sent / release_output.
            if s.parked.is_none() {
                s.parked = Some((cqe, fate));
            }
            return;
        }
        let cid = make_cid(i as u16, s.gen);
        cqe.cid = cid;
        if s.dir == DataDir::FromController && s.buf.len() >= SINK_MIN_BYTES {
            debug_assert!(self.large_reads > 0);
            self.large_reads -= 1;
        }
        let c = Completion { cid, tag: s.tag, cqe, fate, buf: std::mem::take(&mut s.buf) };
        s.busy = false;
        s.gen = (s.gen + 1) & CID_GEN_MASK;
        s.dir = DataDir::None;
        self.free.push(i as u16);
        debug_assert!(self.done.len() < self.slots.len(), "more completions than slots");
        self.done.push_back(c);
    }
}

fn make_cid(index: u16, gen: u8) -> u16 {
    index | ((gen as u16) << CID_INDEX_BITS)
}

fn rx_pdu_len_max(cfg: &QueueConfig) -> usize {
    // Largest C2HData: header, header digest, padding up to PDO, data, data digest.
    cfg.transfer_len_max_bytes as usize + pdu::PDA_BYTES_MAX + 2 * pdu::DIGEST_LEN + pdu::DATA_HLEN
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvmf_proto::opcodes::io;

    const MAXH2CDATA: u32 = 8192;

    fn ctrl_frame(hd: bool, dd: bool) -> FrameConfig {
        FrameConfig { role: Role::Controller, hdgst: hd, ddgst: dd, pdu_len_max: 1 << 24, rx_data_align: 4 }
    }
    fn ctrl_tx(hd: bool, dd: bool) -> TxConfig {
        TxConfig { hdgst: hd, ddgst: dd, data_align: 4 }
    }

    /// A queue past IC with the given digests.
    fn ready(cfg: QueueConfig) -> HostQueue {
        ready_maxh2c(cfg, MAXH2CDATA)
    }

    fn ready_maxh2c(mut cfg: QueueConfig, maxh2cdata: u32) -> HostQueue {
        cfg.queue_depth = cfg.queue_depth.max(1);
        let (hd, dd) = (cfg.hdr_digest, cfg.data_digest);
        let mut q = HostQueue::new(cfg);
        assert_eq!(q.output().len(), 128);
        assert_eq!(q.output()[0], 0x00);
        q.clear_output();
        let mut b = Vec::new();
        let dg = (hd as u8) | ((dd as u8) << 1);
        pdu::encode_ic_resp(&mut b, &IcResp { pfv: 0, cpda: 0, dgst: dg, maxh2cdata });
        assert_eq!(q.receive(&b), Ok(128));
        assert!(q.is_ready());
        q
    }

    /// Decode every PDU in the host's output as the controller would.
    fn host_pdus(q: &mut HostQueue, hd: bool, dd: bool) -> Vec<(Pdu<'static>, Vec<u8>)> {
        let bytes: &'static [u8] = Vec::leak(q.output().to_vec());
        q.clear_output();
        let mut at = 0;
        let mut v = Vec::new();
        while at < bytes.len() {
            match pdu::decode(&bytes[at..], &ctrl_frame(hd, dd)).unwrap() {
                Decoded::Pdu(p, n) => {
                    v.push((p, bytes[at..at + n].to_vec()));
                    at += n;
                }
                Decoded::NeedMore(_) => panic!("partial PDU in output"),
            }
        }
        v
    }

    fn resp(cid: u16, st: Status, tx: &TxConfig) -> Vec<u8> {
        let mut b = Vec::new();
        pdu::encode_capsule_resp(&mut b, &Cqe::new(cid, st), tx);
        b
    }

    fn term_req_of(q: &mut HostQueue) -> (u16, u32) {
        let out = q.output().to_vec();
        q.clear_output();
        match pdu::decode(&out, &ctrl_frame(false, false)).unwrap() {
            Decoded::Pdu(Pdu::TermReq { fes, fei, .. }, _) => (fes, fei),
            other => panic!("expected a TermReq, got {other:?}"),
        }
    }

    #[test]
    fn ic_req_fields_and_refusal_before_icresp() {
        let cfg = QueueConfig { hdr_digest: true, data_digest: true, hpda: 7, maxr2t: 3, ..QueueConfig::admin() };
        let mut q = HostQueue::new(cfg);
        let out = q.output().to_vec();
        let Decoded::Pdu(Pdu::IcReq(ic), 128) = pdu::decode(&out, &FrameConfig::before_ic(Role::Controller)).unwrap()
        else {
            panic!()
        };
        assert_eq!(ic, IcReq { pfv: 0, hpda: 7, dgst: 3, maxr2t: 3 });
        let e = q.submit(Request::read(Sqe::new(admin::IDENTIFY, 0, 0), vec![0; 16]).with_tag(9), 0).unwrap_err();
        assert_eq!((e.kind, e.buf.len(), e.tag), (SubmitErrorKind::NotReady, 16, 9));
    }

    #[test]
    fn bad_icresp_gets_termreq_with_field_offset() {
        let cases = [
            (IcResp { pfv: 1, cpda: 0, dgst: 0, maxh2cdata: 8192 }, 8),
            (IcResp { pfv: 0, cpda: 32, dgst: 0, maxh2cdata: 8192 }, 10),
            (IcResp { pfv: 0, cpda: 0, dgst: 1, maxh2cdata: 8192 }, 11),
            (IcResp { pfv: 0, cpda: 0, dgst: 0, maxh2cdata: 4095 }, 12),
        ];
        for (ic, want_fei) in cases {
            let mut q = HostQueue::new(QueueConfig::admin());
            q.clear_output();
            let mut b = Vec::new();
            pdu::encode_ic_resp(&mut b, &ic);
            let e = q.receive(&b).unwrap_err();
            assert!(matches!(e, QueueError::Protocol { fes: 1, fei, .. } if fei == want_fei), "{e:?}");
            assert_eq!(term_req_of(&mut q), (fes::INVALID_HEADER_FIELD, want_fei));
            assert!(!q.is_ready());
        }
    }

    #[test]
    fn pdu_before_icresp_is_sequence_error() {
        let mut q = HostQueue::new(QueueConfig::admin());
        q.clear_output();
        // A CapsuleResp before IC: the pre-IC framer accepts its length, the queue rejects it.
        let b = resp(0, Status::SUCCESS, &TxConfig::default());
        assert!(q.receive(&b).is_err());
        assert_eq!(term_req_of(&mut q).0, fes::PDU_SEQUENCE_ERROR);
    }

    #[test]
    fn read_reassembles_c2h_data_and_completes_on_resp() {
        let mut q = ready(QueueConfig::io(1, 4));
        let cid = q.submit(Request::read(Sqe::rw(io::READ, 0, 1, 8, 2), vec![0; 1024]).with_tag(77), 5).unwrap();
        let pdus = host_pdus(&mut q, false, false);
        let Pdu::CapsuleCmd { sqe, data, .. } = pdus[0].0 else { panic!() };
        assert_eq!((sqe.cid, sqe.opcode, sqe.slba(), data.len()), (cid, io::READ, 8, 0));
        assert!(sqe.sgl1.is_transport());
        assert_eq!(sqe.sgl1.length, 1024);
        let tx = ctrl_tx(false, false);
        let mut b = Vec::new();
        pdu::encode_data_pdu(&mut b, true, 0, &DataHdr { cccid: cid, offset: 0, length: 512, ttag: 0 }, &[1; 512], &tx);
        let h = DataHdr { cccid: cid, offset: 512, length: 512, ttag: 0 };
        pdu::encode_data_pdu(&mut b, true, flags::LAST_PDU, &h, &[2; 512], &tx);
        b.extend(resp(cid, Status::SUCCESS, &tx));
        // Byte by byte: partial PDUs are left unconsumed.
        let mut buf = Vec::new();
        for &x in &b {
            buf.push(x);
            let n = q.receive(&buf).unwrap();
            buf.drain(..n);
        }
        assert!(buf.is_empty());
        let c = q.pop_completion().unwrap();
        assert_eq!((c.cid, c.tag, c.fate), (cid, 77, Fate::Known));
        assert!(c.is_success());
        assert_eq!(&c.buf[..512], &[1; 512]);
        assert_eq!(&c.buf[512..], &[2; 512]);
        assert_eq!(q.outstanding(), 0);
        assert!(q.pop_completion().is_none());
    }

    /// A 128 KiB read answered by two C2HData PDUs (the second with SUCCESS).
    fn large_read(q: &mut HostQueue, dd: bool, hd: bool) -> (u16, Vec<u8>, Vec<u8>) {
        let len = 128 * 1024;
        let cid = q.submit(Request::read(Sqe::rw(io::READ, 0, 1, 0, 256), vec![0; len]), 0).unwrap();
        q.clear_output();
        let data: Vec<u8> = (0..len as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let tx = ctrl_tx(hd, dd);
        let mut b = Vec::new();
        let half = len as u32 / 2;
        let h = DataHdr { cccid: cid, offset: 0, length: half, ttag: 0 };
        pdu::encode_data_pdu(&mut b, true, 0, &h, &data[..half as usize], &tx);
        let h = DataHdr { cccid: cid, offset: half, length: half, ttag: 0 };
        pdu::encode_data_pdu(&mut b, true, flags::LAST_PDU | flags::SUCCESS, &h, &data[half as usize..], &tx);
        (cid, data, b)
    }

    #[test]
    fn c2h_payload_arrives_in_pieces_and_through_the_sink() {
        for (hd, dd) in [(false, false), (true, true), (false, true)] {
            for piece in [1usize, 100, 4096, 20_000, 70_000] {
                for sink in [false, true] {
                    let mut q = ready(QueueConfig { hdr_digest: hd, data_digest: dd, ..QueueConfig::io(1, 4) });
                    let (cid, data, wire) = large_read(&mut q, dd, hd);
                    let (mut fed, mut buf, mut sunk) = (0, Vec::new(), 0);
                    while fed < wire.len() {
                        if sink && buf.is_empty() {
                            if let Some(dst) = q.recv_sink() {
                                assert!(dst.len() >= SINK_MIN_BYTES);
                                let n = dst.len().min(piece).min(wire.len() - fed);
                                dst[..n].copy_from_slice(&wire[fed..fed + n]);
                                q.sink_received(n).unwrap();
                                fed += n;
                                sunk += n;
                                continue;
                            }
                        }
                        let n = piece.min(wire.len() - fed);
                        buf.extend_from_slice(&wire[fed..fed + n]);
                        fed += n;
                        let used = q.receive(&buf).unwrap();
                        buf.drain(..used);
                        // Never more buffered than one piece beyond a PDU header.
                        assert!(buf.len() < piece + 128, "hd {hd} dd {dd} piece {piece}: {} buffered", buf.len());
                    }
                    assert!(buf.is_empty());
                    assert_eq!(sink, sunk > 0, "hd {hd} dd {dd} piece {piece}");
                    let c = q.pop_completion().expect("completed by the SUCCESS flag");
                    assert_eq!(c.cid, cid);
                    assert!(c.is_success(), "hd {hd} dd {dd} piece {piece} sink {sink}: {:?}", c.cqe.status);
                    assert!(c.buf == data, "hd {hd} dd {dd} piece {piece} sink {sink}: data differs");
                    assert!(q.recv_sink().is_none());
                }
            }
        }
    }

    #[test]
    fn streamed_c2h_with_a_bad_data_digest_fails_the_command_not_the_queue() {
        for sink in [false, true] {
            let mut q = ready(QueueConfig { data_digest: true, ..QueueConfig::io(1, 4) });
            let (cid, _, mut wire) = large_read(&mut q, true, false);
            let last = wire.len() - 1;
            wire[last] ^= 0x40; // the second PDU's data digest
            let mut at = 0;
            let mut buf = Vec::new();
            while at < wire.len() {
                if sink && buf.is_empty() {
                    if let Some(dst) = q.recv_sink() {
                        let n = dst.len().min(wire.len() - at);
                        dst[..n].copy_from_slice(&wire[at..at + n]);
                        q.sink_received(n).unwrap();
                        at += n;
                        continue;
                    }
                }
                let n = 3000.min(wire.len() - at);
                buf.extend_from_slice(&wire[at..at + n]);
                at += n;
                let used = q.receive(&buf).unwrap();
                buf.drain(..used);
            }
            let c = q.pop_completion().unwrap();
            assert_eq!(c.cid, cid);
            assert_eq!(c.cqe.status, Status::new(sct::GENERIC, generic::TRANSIENT_TRANSPORT_ERROR));
            assert!(q.is_ready(), "a data digest error fails the command only");
        }
    }

    #[test]
    fn streamed_c2h_header_is_checked_before_any_payload() {
        let mut q = ready(QueueConfig::io(1, 4));
        let cid = q.submit(Request::read(Sqe::rw(io::READ, 0, 1, 0, 8), vec![0; 4096]), 0).unwrap();
        q.clear_output();
        // Beyond the buffer: refused from the header, though the payload is not here.
        let mut b = Vec::new();
        let h = DataHdr { cccid: cid, offset: 0, length: 8192, ttag: 0 };
        pdu::encode_data_pdu(&mut b, true, 0, &h, &[7; 8192], &ctrl_tx(false, false));
        assert!(q.receive(&b[..100]).is_err());
        assert_eq!(term_req_of(&mut q).0, fes::DATA_OUT_OF_RANGE);
        assert!(q.recv_sink().is_none());
        let c = q.pop_completion().unwrap();
        assert_eq!((c.cid, c.fate), (cid, Fate::Unknown));
    }

    #[test]
    fn failing_mid_stream_hands_the_buffer_back_once() {
        let mut q = ready(QueueConfig::io(1, 4));
        let (cid, _, wire) = large_read(&mut q, false, false);
        assert_eq!(q.receive(&wire[..30_000]), Ok(30_000));
        assert!(q.recv_sink().is_some());
        q.fail("connection lost");
        assert!(q.recv_sink().is_none());
        let c = q.pop_completion().unwrap();
        assert_eq!((c.cid, c.fate, c.buf.len()), (cid, Fate::Unknown, 128 * 1024));
        assert!(q.pop_completion().is_none());
        assert!(q.receive(&wire[30_000..]).is_err());
    }

    #[test]
    fn success_flag_completes_without_capsule_resp_and_short_read_is_an_error() {
        let mut q = ready(QueueConfig::io(1, 4));
        let tx = ctrl_tx(false, false);
        let cid = q.submit(Request::read(Sqe::rw(io::READ, 0, 1, 0, 1), vec![0; 512]), 0).unwrap();
        let mut b = Vec::new();
        let h = DataHdr { cccid: cid, offset: 0, length: 512, ttag: 0 };
        pdu::encode_data_pdu(&mut b, true, flags::LAST_PDU | flags::SUCCESS, &h, &[3; 512], &tx);
        assert_eq!(q.receive(&b), Ok(b.len()));
        let c = q.pop_completion().unwrap();
        assert!(c.is_success());
        assert_eq!(c.buf, vec![3; 512]);

        // The controller claims success but sent half the data.
        let cid = q.submit(Request::read(Sqe::rw(io::READ, 0, 1, 0, 2), vec![0; 1024]), 0).unwrap();
        let mut b = Vec::new();
        let h = DataHdr { cccid: cid, offset: 0, length: 512, ttag: 0 };
        pdu::encode_data_pdu(&mut b, true, flags::LAST_PDU, &h, &[3; 512], &tx);
        b.extend(resp(cid, Status::SUCCESS, &tx));
        q.receive(&b).unwrap();
        let c = q.pop_completion().unwrap();
        assert_eq!(c.status().sc, generic::DATA_TRANSFER_ERROR);
    }

    #[test]
    fn small_write_goes_in_capsule_large_write_waits_for_r2t_and_splits_at_maxh2cdata() {
        let mut cfg = QueueConfig::io(1, 4);
        cfg.in_capsule_data_max_bytes = 4096;
        let mut q = ready(cfg);
        let data: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
        let cid = q.submit(Request::write(Sqe::rw(io::WRITE, 0, 1, 0, 8), data.clone()), 0).unwrap();
        let pdus = host_pdus(&mut q, false, false);
        let Pdu::CapsuleCmd { sqe, data: d, .. } = pdus[0].0 else { panic!() };
        assert!(sqe.sgl1.is_in_capsule());
        assert_eq!((sqe.sgl1.length, d), (4096, &data[..]));
        let tx = ctrl_tx(false, false);
        q.receive(&resp(cid, Status::SUCCESS, &tx)).unwrap();
        assert!(q.pop_completion().unwrap().is_success());

        let big: Vec<u8> = (0..20000u32).map(|i| (i * 7) as u8).collect();
        let cid = q.submit(Request::write(Sqe::rw(io::WRITE, 0, 1, 0, 40), big.clone()), 0).unwrap();
        let pdus = host_pdus(&mut q, false, false);
        let Pdu::CapsuleCmd { sqe, data: d, .. } = pdus[0].0 else { panic!() };
        assert!(sqe.sgl1.is_transport() && d.is_empty());
        // Two R2Ts: 0..12000 and 12000..20000.
        let mut b = Vec::new();
        pdu::encode_r2t(&mut b, &DataHdr { cccid: cid, ttag: 5, offset: 0, length: 12000 }, &tx);
        pdu::encode_r2t(&mut b, &DataHdr { cccid: cid, ttag: 6, offset: 12000, length: 8000 }, &tx);
        q.receive(&b).unwrap();
        let pdus = host_pdus(&mut q, false, false);
        let got: Vec<(u16, u32, u32, bool)> = pdus
            .iter()
            .map(|(p, _)| match p {
                Pdu::H2CData { hdr, flags: f, data, .. } => {
                    assert_eq!(*data, &big[hdr.offset as usize..(hdr.offset + hdr.length) as usize]);
                    (hdr.ttag, hdr.offset, hdr.length, f & flags::LAST_PDU != 0)
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, vec![(5, 0, 8192, false), (5, 8192, 3808, true), (6, 12000, 8000, true)]);
        // A third R2T would ask for more than the command's data.
        let mut b = Vec::new();
        pdu::encode_r2t(&mut b, &DataHdr { cccid: cid, ttag: 7, offset: 0, length: 100 }, &tx);
        assert!(q.receive(&b).is_err());
        assert_eq!(term_req_of(&mut q).0, fes::R2T_LIMIT_EXCEEDED);
        let c = q.pop_completion().unwrap();
        assert_eq!((c.cid, c.fate, c.buf.len()), (cid, Fate::Unknown, 20000));
    }

    /// Flatten lent output the way a driver's socket would see it; returns
    /// the bytes and the tokens of the lent pieces.
    fn take_all(q: &mut HostQueue) -> (Vec<u8>, Vec<u64>) {
        let (mut bytes, mut tokens) = (Vec::new(), Vec::new());
        q.take_output(|p| match p {
            OutputPiece::Bytes(b) => bytes.extend_from_slice(b),
            OutputPiece::Lent { data, token } => {
                bytes.extend_from_slice(data);
                tokens.push(token);
            }
        });
        (bytes, tokens)
    }

    #[test]
    fn lent_write_payloads_hold_the_completion_until_sent() {
        let cfg = QueueConfig { h2c_data_borrowed: true, data_digest: true, ..QueueConfig::io(1, 4) };
        let mut q = ready_maxh2c(QueueConfig { in_capsule_data_max_bytes: 32768, ..cfg }, 16384);
        let tx = ctrl_tx(false, true);
        let frame = FrameConfig { role: Role::Controller, ..ctrl_frame(false, true) };
        // In-capsule 20000 bytes (over LEND_MIN_BYTES): header copied, data lent.
        let small: Vec<u8> = (0..20000u32).map(|i| (i * 3) as u8).collect();
        let cid = q.submit(Request::write(Sqe::rw(io::WRITE, 0, 1, 0, 40), small.clone()), 0).unwrap();
        assert!(q.has_lent_output());
        let (bytes, tokens) = take_all(&mut q);
        assert!(!q.has_lent_output() && tokens.len() == 1);
        let Ok(Decoded::Pdu(Pdu::CapsuleCmd { data, data_digest_ok, .. }, n)) = pdu::decode(&bytes, &frame) else {
            panic!("bad capsule")
        };
        assert_eq!((data, data_digest_ok, n), (&small[..], true, bytes.len()));
        // The controller answers before the driver confirmed the send: the
        // completion (and the buffer) waits for output_sent.
        q.receive(&resp(cid, Status::SUCCESS, &tx)).unwrap();
        assert!(q.pop_completion().is_none());
        assert_eq!(q.outstanding(), 1);
        q.output_sent(tokens[0]);
        let c = q.pop_completion().unwrap();
        assert!(c.is_success() && c.buf == small);

        // R2T path: 40000 bytes split at MAXH2CDATA (16384): two full chunks
        // are lent, the 7232-byte tail (under LEND_MIN_BYTES) is copied.
        let big: Vec<u8> = (0..40000u32).map(|i| (i * 7) as u8).collect();
        let cid = q.submit(Request::write(Sqe::rw(io::WRITE, 0, 1, 0, 80), big.clone()), 0).unwrap();
        let (bytes, tokens) = take_all(&mut q);
        assert!(tokens.is_empty(), "over the in-capsule limit: no data in the capsule");
        assert!(matches!(pdu::decode(&bytes, &frame), Ok(Decoded::Pdu(Pdu::CapsuleCmd { .. }, _))));
        let mut b = Vec::new();
        pdu::encode_r2t(&mut b, &DataHdr { cccid: cid, ttag: 1, offset: 0, length: 40000 }, &tx);
        q.receive(&b).unwrap();
        let (bytes, tokens) = take_all(&mut q);
        assert_eq!(tokens, vec![cid as u64, cid as u64]);
        let mut at = 0;
        let mut got = Vec::new();
        while at < bytes.len() {
            let Ok(Decoded::Pdu(Pdu::H2CData { data, data_digest_ok: true, .. }, n)) =
                pdu::decode(&bytes[at..], &frame)
            else {
                panic!("bad H2CData")
            };
            got.extend_from_slice(data);
            at += n;
        }
        assert_eq!(got, big);
        q.receive(&resp(cid, Status::SUCCESS, &tx)).unwrap();
        q.output_sent(tokens[0]);
        assert!(q.pop_completion().is_none(), "one piece still lent");
        q.output_sent(tokens[1]);
        assert!(q.pop_completion().unwrap().is_success());
    }

    #[test]
    fn failing_with_lent_payloads_parks_until_release() {
        let cfg = QueueConfig { h2c_data_borrowed: true, in_capsule_data_max_bytes: 32768, ..QueueConfig::io(1, 4) };
        let mut q = ready(cfg);
        let cid = q.submit(Request::write(Sqe::rw(io::WRITE, 0, 1, 0, 40), vec![7u8; 20000]), 0).unwrap();
        let (_, tokens) = take_all(&mut q);
        assert_eq!(tokens.len(), 1);
        q.fail("connection lost");
        assert!(q.pop_completion().is_none(), "buffer still lent");
        // A late answer for the parked command is not outstanding any more.
        let tx = ctrl_tx(false, false);
        q.release_output();
        let c = q.pop_completion().unwrap();
        assert_eq!((c.cid, c.fate, c.buf.len()), (cid, Fate::Unknown, 20000));
        assert!(q.receive(&resp(cid, Status::SUCCESS, &tx)).is_err());
        assert!(q.pop_completion().is_none(), "completed exactly once");
    }

    #[test]
    fn r2t_out_of_range_is_fes_4() {
        let mut q = ready(QueueConfig::io(1, 4));
        let cid = q.submit(Request::write(Sqe::rw(io::WRITE, 0, 1, 0, 1), vec![0; 512]), 0).unwrap();
        q.clear_output();
        let mut b = Vec::new();
        pdu::encode_r2t(&mut b, &DataHdr { cccid: cid, ttag: 1, offset: 256, length: 512 }, &ctrl_tx(false, false));
        assert!(matches!(q.receive(&b), Err(QueueError::Protocol { fes: 4, .. })));
        assert_eq!(term_req_of(&mut q), (fes::DATA_OUT_OF_RANGE, 0));
    }

    #[test]
    fn c2h_data_out_of_range_fails_every_command_once() {
        let mut q = ready(QueueConfig::io(1, 8));
        let a = q.submit(Request::read(Sqe::rw(io::READ, 0, 1, 0, 1), vec![0; 512]).with_tag(1), 0).unwrap();
        let w = q.submit(Request::write(Sqe::rw(io::WRITE, 0, 1, 0, 1), vec![0; 512]).with_tag(2), 0).unwrap();
        q.clear_output();
        let mut b = Vec::new();
        let h = DataHdr { cccid: a, offset: 0, length: 1024, ttag: 0 };
        pdu::encode_data_pdu(&mut b, true, flags::LAST_PDU, &h, &[0; 1024], &ctrl_tx(false, false));
        assert!(q.receive(&b).is_err());
        assert_eq!(term_req_of(&mut q).0, fes::DATA_OUT_OF_RANGE);
        let mut cids = vec![];
        while let Some(c) = q.pop_completion() {
            assert_eq!(c.fate, Fate::Unknown);
            assert_eq!(c.status(), Status::new(sct::PATH, path::ABORTED_BY_HOST));
            cids.push((c.cid, c.tag));
        }
        cids.sort();
        assert_eq!(cids, vec![(a, 1), (w, 2)]);
        // Failed for good: no more output, no more completions, submits refused.
        assert!(q.receive(&b).is_err());
        assert!(q.output().is_empty());
        assert_eq!(q.submit(Request::new(Sqe::new(io::FLUSH, 0, 1)), 0).unwrap_err().kind, SubmitErrorKind::Failed);
        assert!(q.pop_completion().is_none());
    }

    #[test]
    fn data_digest_error_fails_only_that_command() {
        let cfg = QueueConfig { hdr_digest: true, data_digest: true, ..QueueConfig::io(1, 4) };
        let mut q = ready(cfg);
        let tx = ctrl_tx(true, true);
        let a = q.submit(Request::read(Sqe::rw(io::READ, 0, 1, 0, 1), vec![0; 512]), 0).unwrap();
        let b_cid = q.submit(Request::read(Sqe::rw(io::READ, 0, 1, 1, 1), vec![0; 512]), 0).unwrap();
        let pdus = host_pdus(&mut q, true, true);
        assert_eq!(pdus.len(), 2, "host PDUs carry header digests the controller accepts");
        let mut b = Vec::new();
        let h = DataHdr { cccid: a, offset: 0, length: 512, ttag: 0 };
        pdu::encode_data_pdu(&mut b, true, flags::LAST_PDU, &h, &[9; 512], &tx);
        let last = b.len() - 1;
        b[last] ^= 0xff; // corrupt the data digest
        b.extend(resp(a, Status::SUCCESS, &tx));
        let h = DataHdr { cccid: b_cid, offset: 0, length: 512, ttag: 0 };
        pdu::encode_data_pdu(&mut b, true, flags::LAST_PDU | flags::SUCCESS, &h, &[8; 512], &tx);
        assert_eq!(q.receive(&b), Ok(b.len()));
        let c = q.pop_completion().unwrap();
        assert_eq!((c.cid, c.fate), (a, Fate::Known));
        assert_eq!(c.status().sc, generic::TRANSIENT_TRANSPORT_ERROR);
        let c = q.pop_completion().unwrap();
        assert_eq!(c.cid, b_cid);
        assert!(c.is_success());
        assert_eq!(c.buf, vec![8; 512]);
        assert!(q.is_ready());
    }

    #[test]
    fn header_digest_error_is_fes_3() {
        let cfg = QueueConfig { hdr_digest: true, ..QueueConfig::io(1, 4) };
        let mut q = ready(cfg);
        let cid = q.submit(Request::new(Sqe::new(io::FLUSH, 0, 1)), 0).unwrap();
        q.clear_output();
        let mut b = resp(cid, Status::SUCCESS, &ctrl_tx(true, false));
        b[10] ^= 1;
        assert!(matches!(q.receive(&b), Err(QueueError::Protocol { fes: 3, .. })));
        assert_eq!(term_req_of(&mut q).0, fes::HEADER_DIGEST_ERROR);
        assert_eq!(q.pop_completion().unwrap().fate, Fate::Unknown);
    }

    #[test]
    fn c2h_term_req_fails_the_queue_without_reply() {
        let mut q = ready(QueueConfig::io(1, 4));
        q.submit(Request::new(Sqe::new(io::FLUSH, 0, 1)), 0).unwrap();
        q.clear_output();
        let mut b = Vec::new();
        pdu::encode_term_req(&mut b, true, fes::INVALID_HEADER_FIELD, 3, &[0; 8]);
        assert_eq!(q.receive(&b), Err(QueueError::TerminatedByController { fes: 1, fei: 3 }));
        assert!(q.output().is_empty());
        assert_eq!(q.pop_completion().unwrap().fate, Fate::Unknown);
    }

    #[test]
    fn unknown_and_stale_cids_are_rejected() {
        let mut q = ready(QueueConfig::io(1, 1));
        let tx = ctrl_tx(false, false);
        let cid = q.submit(Request::new(Sqe::new(io::FLUSH, 0, 1)), 0).unwrap();
        assert_eq!(q.submit(Request::new(Sqe::new(io::FLUSH, 0, 1)), 0).unwrap_err().kind, SubmitErrorKind::QueueFull);
        q.receive(&resp(cid, Status::SUCCESS, &tx)).unwrap();
        q.pop_completion().unwrap();
        let cid2 = q.submit(Request::new(Sqe::new(io::FLUSH, 0, 1)), 0).unwrap();
        q.clear_output();
        assert_ne!(cid, cid2, "same slot, new generation");
        // A duplicate answer for the first command must not complete the second.
        assert!(q.receive(&resp(cid, Status::SUCCESS, &tx)).is_err());
        assert_eq!(term_req_of(&mut q), (fes::INVALID_HEADER_FIELD, 20));
        let c = q.pop_completion().unwrap();
        assert_eq!((c.cid, c.fate), (cid2, Fate::Unknown));
    }

    #[test]
    fn timeouts_are_reported_once_and_zero_means_never() {
        let mut q = ready(QueueConfig { command_timeout_ms: 100, ..QueueConfig::admin() });
        let a = q.submit(Request::new(Sqe::new(admin::KEEP_ALIVE, 0, 0)), 1000).unwrap();
        let _aer = q.submit(Request::new(Sqe::new(admin::ASYNC_EVENT_REQUEST, 0, 0)).with_timeout_ms(0), 1000).unwrap();
        let b = q.submit(Request::new(Sqe::new(admin::KEEP_ALIVE, 0, 0)).with_timeout_ms(500), 1000).unwrap();
        let mut exp = Vec::new();
        assert_eq!(q.on_tick(1099, &mut exp), 0);
        assert_eq!(q.on_tick(1100, &mut exp), 1);
        assert_eq!(exp, vec![a]);
        assert_eq!(q.on_tick(1200, &mut exp), 0);
        assert_eq!(q.on_tick(u64::MAX - 1, &mut exp), 1);
        assert_eq!(exp, vec![a, b]);
        assert_eq!(q.outstanding(), 3);
        q.fail("timeout recovery");
        assert_eq!(q.completions_ready(), 3);
    }

    #[test]
    fn connect_is_in_capsule_even_without_io_capsule_room() {
        let mut q = ready(QueueConfig::io(3, 4));
        let c = nvmf_proto::fabrics::ConnectCmd { recfmt: 0, qid: 3, sqsize: 3, cattr: 0, kato_ms: 0 };
        q.submit(Request::write(c.to_sqe(0), vec![0; 1024]), 0).unwrap();
        let pdus = host_pdus(&mut q, false, false);
        let Pdu::CapsuleCmd { sqe, data, .. } = pdus[0].0 else { panic!() };
        assert!(sqe.sgl1.is_in_capsule());
        assert_eq!(data.len(), 1024);
    }

    #[test]
    fn hpda_alignment_is_enforced_on_c2h_data() {
        let mut q = ready(QueueConfig { hpda: 7, ..QueueConfig::io(1, 2) });
        let cid = q.submit(Request::read(Sqe::rw(io::READ, 0, 1, 0, 1), vec![0; 8]), 0).unwrap();
        q.clear_output();
        let h = DataHdr { cccid: cid, offset: 0, length: 8, ttag: 0 };
        let mut ok = Vec::new();
        pdu::encode_data_pdu(
            &mut ok,
            true,
            flags::LAST_PDU | flags::SUCCESS,
            &h,
            &[1; 8],
            &TxConfig { data_align: 32, ..Default::default() },
        );
        assert_eq!(ok[3], 32);
        assert_eq!(q.receive(&ok), Ok(ok.len()));
        assert!(q.pop_completion().unwrap().is_success());
        let cid = q.submit(Request::read(Sqe::rw(io::READ, 0, 1, 0, 1), vec![0; 8]), 0).unwrap();
        q.clear_output();
        let mut bad = Vec::new();
        let h = DataHdr { cccid: cid, offset: 0, length: 8, ttag: 0 };
        pdu::encode_data_pdu(&mut bad, true, flags::LAST_PDU, &h, &[1; 8], &TxConfig::default());
        assert!(q.receive(&bad).is_err());
        assert_eq!(term_req_of(&mut q), (fes::INVALID_HEADER_FIELD, 3));
    }

    #[test]
    fn random_bytes_never_panic() {
        // A tiny deterministic generator: the queue must fail cleanly or wait, never panic.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let mut q = ready(QueueConfig::io(1, 4));
            let _ = q.submit(Request::read(Sqe::rw(io::READ, 0, 1, 0, 1), vec![0; 512]), 0);
            let _ = q.submit(Request::write(Sqe::rw(io::WRITE, 0, 1, 0, 1), vec![0; 512]), 0);
            let mut b = vec![0u8; 64];
            for byte in b.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *byte = x as u8;
            }
            b[0] = [0x01, 0x03, 0x05, 0x07, 0x09][(x % 5) as usize];
            b[2] = [128, 24, 24, 24, 24][(x % 5) as usize];
            b[4..8].copy_from_slice(&((x >> 8) as u32 % 200).to_le_bytes());
            let _ = q.receive(&b);
        }
    }

    proptest::proptest! {
        /// Whatever the controller sends after IC, the queue consumes whole
        /// PDUs or fails cleanly: no panic, every command completes once.
        #[test]
        fn arbitrary_controller_bytes(chunks in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), 1..8)) {
            let mut q = ready(QueueConfig { in_capsule_data_max_bytes: 64, ..QueueConfig::io(1, 4) });
            let mut submitted = 0;
            for (i, req) in [
                Request::read(Sqe::rw(io::READ, 0, 1, 0, 1), vec![0; 512]),
                Request::write(Sqe::rw(io::WRITE, 0, 1, 0, 1), vec![0; 512]),
                Request::write(Sqe::rw(io::WRITE, 0, 1, 0, 1), vec![0; 32]),
                Request::new(Sqe::new(io::FLUSH, 0, 1)),
            ].into_iter().enumerate() {
                q.submit(req.with_tag(i as u64), 0).unwrap();
                submitted += 1;
            }
            let mut rx = Vec::new();
            let mut completed = std::collections::HashSet::new();
            for c in chunks {
                rx.extend_from_slice(&c);
                match q.receive(&rx) {
                    Ok(n) => { rx.drain(..n); }
                    Err(_) => break,
                }
                while let Some(c) = q.pop_completion() {
                    proptest::prop_assert!(completed.insert(c.tag), "completed twice");
                }
                q.clear_output();
            }
            q.fail("test over");
            while let Some(c) = q.pop_completion() {
                proptest::prop_assert!(completed.insert(c.tag), "completed twice");
            }
            proptest::prop_assert_eq!(completed.len(), submitted);
        }
    }
}
