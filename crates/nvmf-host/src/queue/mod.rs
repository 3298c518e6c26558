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
//!
//! # Code layout
//!
//! The files follow the order in which the NVMe/TCP specification describes
//! a queue, each with one concern:
//!
//! | file | what |
//! | --- | --- |
//! | `mod.rs` | the public types, bring-up ([`HostQueue::new`], ICReq), state, completions, failure |
//! | `slots.rs` | command slots: CIDs with generations, lookup, timeouts, completing a command once |
//! | `submit.rs` | host to controller: CapsuleCmd (with in-capsule data), R2T answered with H2CData, the output and its lent pieces |
//! | `receive.rs` | controller to host: the PDU receive loop, ICResp, CapsuleResp, C2HData (whole or piece by piece with the sink), TermReq |
//! | `tests.rs` | unit tests, fed bytes as a controller would send them |

use std::collections::VecDeque;

use nvmf_proto::fabrics::ADMIN_IN_CAPSULE_DATA_BYTES_MAX;
use nvmf_proto::pdu::{self, dgst, IcReq, PduError, TxConfig};
use nvmf_proto::status::{path, sct};
use nvmf_proto::{Cqe, FrameConfig, Role, Sqe, Status};

mod receive;
mod slots;
mod submit;
#[cfg(test)]
mod tests;

use receive::C2hStream;
use slots::Slot;
use submit::LentPiece;

/// Most commands one queue can have outstanding (Linux caps queue_size at 1024 too).
pub const QUEUE_DEPTH_MAX: u16 = 1024;
/// Admin queue depth (Linux NVME_AQ_DEPTH).
pub const ADMIN_QUEUE_DEPTH: u16 = 32;
/// Largest data transfer of one command the queue accepts to configure (64 MiB).
pub const TRANSFER_LEN_MAX_BYTES: u32 = 64 << 20;
/// Default largest data transfer of one command (1 MiB): bounds the buffers
/// a driver keeps, whatever MDTS allows.
pub const TRANSFER_LEN_MAX_DEFAULT_BYTES: u32 = 1 << 20;
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
pub const PDA_MAX: u8 = (pdu::PDA_BYTES_MAX / 4 - 1) as u8;
/// Linux default admin command timeout (`admin_timeout`, 60 s).
pub const ADMIN_COMMAND_TIMEOUT_MS: u64 = 60_000;
/// Linux default I/O command timeout (`io_timeout`, 30 s).
pub const IO_COMMAND_TIMEOUT_MS: u64 = 30_000;

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
    /// [`ADMIN_IN_CAPSULE_DATA_BYTES_MAX`]; I/O queues: IOCCSZ * 16 - 64 from
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
            queue_depth: ADMIN_QUEUE_DEPTH,
            hdr_digest: false,
            data_digest: false,
            hpda: 0,
            maxr2t: 0,
            in_capsule_data_max_bytes: ADMIN_IN_CAPSULE_DATA_BYTES_MAX,
            transfer_len_max_bytes: TRANSFER_LEN_MAX_DEFAULT_BYTES,
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
    /// error's FES and FEI (send it, then close).
    #[error("controller protocol error: {0}; we sent an H2CTermReq")]
    Protocol(PduError),
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

impl HostQueue {
    /// Create the queue and queue its ICReq in the output.
    ///
    /// Panics if the configuration is out of its documented bounds (a
    /// programming error, not a wire condition).
    pub fn new(cfg: QueueConfig) -> HostQueue {
        assert!((1..=QUEUE_DEPTH_MAX).contains(&cfg.queue_depth), "queue_depth out of 1..={QUEUE_DEPTH_MAX}");
        assert!(cfg.hpda <= PDA_MAX, "hpda out of 0..={PDA_MAX}");
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
        let ic = IcReq { pfv: 0, hpda: q.cfg.hpda, dgst: dgst_flags(&q.cfg), maxr2t: q.cfg.maxr2t };
        pdu::encode_ic_req(&mut q.out, &ic);
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

    // ------------------------------------------------------------ completions

    /// The next finished command, if any.
    pub fn pop_completion(&mut self) -> Option<Completion> {
        self.done.pop_front()
    }
    /// Finished commands waiting to be popped.
    pub fn completions_ready(&self) -> usize {
        self.done.len()
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
}

fn rx_pdu_len_max(cfg: &QueueConfig) -> usize {
    // Largest C2HData: header, header digest, padding up to PDO, data, data digest.
    cfg.transfer_len_max_bytes as usize + pdu::PDA_BYTES_MAX + 2 * pdu::DIGEST_LEN + pdu::DATA_HLEN
}

/// The ICReq DGST field for the digests `cfg` asks for; the ICResp must echo it.
fn dgst_flags(cfg: &QueueConfig) -> u8 {
    let mut flags = 0;
    if cfg.hdr_digest {
        flags |= dgst::HEADER;
    }
    if cfg.data_digest {
        flags |= dgst::DATA;
    }
    flags
}

/// Data alignment in bytes of a CPDA / HPDA value (0's based dwords).
fn pda_bytes(pda: u8) -> u32 {
    (pda as u32 + 1) * 4
}
