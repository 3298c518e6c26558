//! The handler contract: [`Handler`], [`ConnIo`] and what they exchange.

use std::net::SocketAddr;
use std::os::fd::RawFd;

use crate::ctx::CoreCtx;
use crate::limits::ConnAdmission;
use crate::rx::RxBuf;
use crate::tls::{TlsConn, TlsInfo};
use crate::tx::ExtSeg;
use crate::ConnWaker;

/// `BLOCK_URING_CMD_DISCARD` (`_IO(0x12, 0)`, linux/fs.h, Linux 6.12+).
pub const BLOCK_URING_CMD_DISCARD: u32 = 0x12 << 8;

/// Identity of a connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// Index of the owning core (0-based position in `EngineConfig::cores`).
    pub core: usize,
    /// Listener that accepted the connection; `None` for outbound connections.
    pub listener_id: Option<u64>,
}

/// What the engine should do with the connection after a handler callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Stop receiving; close once all queued tx is sent and no storage op is in flight.
    CloseAfterFlush,
    /// Close immediately (queued tx is dropped; in-flight storage ops are awaited
    /// silently before `on_closed`).
    CloseNow,
}

/// Why a connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed (EOF).
    PeerClosed,
    /// Socket error (positive errno).
    Error(i32),
    /// The handler returned `CloseAfterFlush` / `CloseNow`.
    Handler,
    /// The receive buffer was full and the handler consumed nothing (and had
    /// no grantable [`ConnIo::rx_reserve`] for more room).
    RxOverflow,
    /// [`Engine::remove_listener`](crate::Engine::remove_listener) with `close_connections`.
    ListenerRemoved,
    /// Engine shutdown.
    Shutdown,
    /// A listener with TLS required got a first byte that does not start a
    /// TLS handshake (e.g. a plain ICReq).
    TlsRequired,
    /// TLS failed: the handshake (unknown identity, wrong PSK, no common
    /// suite) or a record (bad MAC, the peer's fatal alert). The alert, if
    /// any, was sent before the close.
    Tls,
    /// Not yet established ([`ConnIo::set_established`]) and the oldest such
    /// connection (preferring those that never sent a byte) when a new socket
    /// arrived at [`EngineConfig::connections_max`](crate::EngineConfig::connections_max)
    /// or [`EngineConfig::unestablished_max`](crate::EngineConfig::unestablished_max).
    Evicted,
}

/// When a handler wants [`Handler::on_tick`] (see [`Handler::next_wakeup`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wakeup {
    /// Every `tick_ms` (the behaviour of handlers that do not say otherwise).
    EveryTick,
    /// Once the engine clock ([`ConnIo::now_ms`]) reaches this value.
    At(u64),
    /// No timer.
    Never,
}

/// A handler-owned buffer for a receive armed on the ring (see
/// [`Handler::recv_sink_armed`]).
#[derive(Debug)]
pub struct ArmedSink {
    pub(crate) ptr: *mut u8,
    pub(crate) len: usize,
}

impl ArmedSink {
    /// # Safety
    /// `ptr..ptr + len` must be valid for writes and must not be read,
    /// written, moved or freed by anyone else until the engine calls
    /// [`Handler::on_sink_recv`] or [`Handler::on_closed`] on this
    /// connection, whatever other callbacks run in between (the kernel writes
    /// into it asynchronously).
    pub unsafe fn new(ptr: *mut u8, len: usize) -> ArmedSink {
        ArmedSink { ptr, len }
    }
}

/// Sans-IO protocol state machine adapter. Lives on one core for its whole life (not Send).
pub trait Handler {
    /// Bytes have arrived. `io.rx()` is all buffered unconsumed bytes; call `io.consume(n)` for what you parsed
    /// (parse EVERYTHING complete, leave partial PDUs). Append output to `io.tx()`.
    /// A reservation made with [`ConnIo::rx_reserve`] is cleared before every call.
    fn on_recv(&mut self, io: &mut ConnIo<'_>) -> Flow;
    /// A storage op submitted through `io` finished (result = bytes or -errno, like io_uring cqe.res).
    fn on_storage(&mut self, io: &mut ConnIo<'_>, token: u64, result: i32) -> Flow;
    /// Timer: once right after the connection is registered, then as
    /// [`next_wakeup`](Self::next_wakeup) asks (by default every `tick_ms`).
    /// `io.now_ms()` is monotonic.
    fn on_tick(&mut self, io: &mut ConnIo<'_>) -> Flow;
    /// The connection is gone (peer closed, error, engine shutdown, eviction, or the handler asked). Release resources.
    fn on_closed(&mut self, reason: CloseReason);
    /// When this handler next wants [`on_tick`](Self::on_tick). Asked after
    /// every callback; should be cheap. [`Wakeup::EveryTick`] (the default)
    /// ticks every `tick_ms`; [`Wakeup::At`] once the engine clock reaches
    /// the value (never before; a deadline that is not after the last one
    /// delivered is delivered one millisecond later); [`Wakeup::Never`] not at
    /// all. An idle connection with `At` or `Never` costs the engine nothing
    /// per tick.
    fn next_wakeup(&self) -> Wakeup {
        Wakeup::EveryTick
    }
    /// Where the next received bytes may go instead of the receive buffer: a
    /// slice the handler owns, typically the rest of a large data payload
    /// already known to be coming (the bytes then cross memory once, kernel
    /// to destination). Asked only in poll mode on direct receives and only
    /// while `rx()` holds nothing unconsumed (the stream stays in order); the
    /// slice is written by one `recv` before any other handler call, and
    /// [`on_sink_recv`](Self::on_sink_recv) reports how much landed. Return
    /// `None` (the default) to receive into the buffer as usual.
    fn recv_sink(&mut self) -> Option<&mut [u8]> {
        None
    }
    /// Like [`recv_sink`](Self::recv_sink), for a receive armed on the ring
    /// (interrupt mode, and poll mode outside direct receives), asked while
    /// `rx()` holds nothing unconsumed. Other callbacks may run before the
    /// receive completes, hence the stronger promise [`ArmedSink::new`]
    /// demands. [`on_sink_recv`](Self::on_sink_recv) reports the bytes; if
    /// the connection closes first, [`on_closed`](Self::on_closed) comes only
    /// after the receive finished. Default: `None`.
    fn recv_sink_armed(&mut self) -> Option<ArmedSink> {
        None
    }
    /// The most bytes the next receive into the receive buffer should take,
    /// asked where [`recv_sink`](Self::recv_sink) is (poll mode, direct
    /// receives, nothing unconsumed) when it returned `None`: a handler that
    /// expects a large payload next can take just its header first and the
    /// payload through the sink. Default: no limit.
    fn recv_len_hint(&self) -> usize {
        usize::MAX
    }
    /// `n > 0` bytes were received into the front of the slice the last
    /// [`recv_sink`](Self::recv_sink) or [`recv_sink_armed`](Self::recv_sink_armed) returned.
    fn on_sink_recv(&mut self, io: &mut ConnIo<'_>, n: usize) -> Flow {
        let _ = (io, n);
        debug_assert!(false, "on_sink_recv without a recv_sink");
        Flow::CloseNow
    }
    /// A buffer given to [`ConnIo::send_borrowed`] was fully handed to the kernel
    /// and may be reused.
    fn on_sent(&mut self, io: &mut ConnIo<'_>, token: u64) -> Flow {
        let _ = (io, token);
        Flow::Continue
    }
    /// A [`ConnWaker`] of this connection was woken (from any thread).
    fn on_wake(&mut self, io: &mut ConnIo<'_>) -> Flow {
        let _ = io;
        Flow::Continue
    }
    /// Engine is shutting down gracefully: finish or fail in-flight work; return CloseAfterFlush when done.
    fn on_shutdown(&mut self, io: &mut ConnIo<'_>) -> Flow {
        let _ = io;
        Flow::CloseAfterFlush
    }
}

/// Closure creating the handler of an outbound connection on its core.
pub type MakeHandler = Box<dyn FnOnce(&ConnInfo) -> Box<dyn Handler> + Send>;

/// Creates handlers for accepted connections.
pub trait HandlerFactory: Send + Sync + 'static {
    /// Called ON the core thread that will own the connection; return None to refuse (socket closed).
    fn create(&self, info: &ConnInfo) -> Option<Box<dyn Handler>>;
}

/// Handle given to handler callbacks: the connection's buffers and the core's ring.
pub struct ConnIo<'a> {
    pub(crate) rx: &'a mut RxBuf,
    pub(crate) tx: &'a mut Vec<u8>,
    pub(crate) tx_ext: &'a mut Vec<ExtSeg>,
    pub(crate) info: &'a ConnInfo,
    pub(crate) ctx: &'a mut CoreCtx,
    pub(crate) slot: u32,
    pub(crate) conn_id: u64,
    pub(crate) storage_inflight: &'a mut u32,
    pub(crate) rerun_recv: &'a mut bool,
    pub(crate) admission: &'a mut ConnAdmission,
    pub(crate) tls: &'a mut Option<Box<TlsConn>>,
}

impl ConnIo<'_> {
    /// All buffered, not yet consumed received bytes.
    #[inline]
    pub fn rx(&self) -> &[u8] {
        self.rx.data()
    }
    /// Mark the first `n` bytes of [`rx`](Self::rx) as parsed. Panics if `n > rx().len()`.
    #[inline]
    pub fn consume(&mut self, n: usize) {
        self.rx.consume(n)
    }
    /// Ask for room for at least `bytes` unconsumed bytes in the receive
    /// buffer (e.g. a large PDU whose header just arrived). Up to the large
    /// buffer size the engine moves the connection to a large buffer before
    /// its next receive, if the core's pool has one within
    /// `recv_pool_bytes_max`; otherwise the reservation is not granted (never
    /// blocks), and a connection whose small buffer is then full of
    /// unconsumed bytes waits without receiving until a large buffer is free
    /// (instead of closing with [`CloseReason::RxOverflow`]); bound that wait
    /// with a deadline of your own. Cleared before every
    /// [`Handler::on_recv`]: re-assert it while you still need it. Check
    /// [`rx_capacity`](Self::rx_capacity) to see what you have.
    #[inline]
    pub fn rx_reserve(&mut self, bytes: usize) {
        self.rx.reserve_bytes = self.rx.reserve_bytes.max(bytes);
    }
    /// Capacity of the connection's current receive buffer (small or large).
    #[inline]
    pub fn rx_capacity(&self) -> usize {
        self.rx.capacity()
    }
    /// The peer proved itself (e.g. a successful NVMe Connect): the
    /// connection leaves probation, no longer counts toward
    /// `unestablished_max` and can no longer be evicted. Idempotent.
    pub fn set_established(&mut self) {
        self.ctx.limits.on_established(self.admission);
    }
    /// Whether [`set_established`](Self::set_established) was called (outbound
    /// connections start established).
    pub fn is_established(&self) -> bool {
        self.admission.established
    }
    /// The connection's TLS, once its handshake finished (`None`: plain TCP,
    /// or a listener with TLS allowed that has not seen the first bytes yet;
    /// a handler gets no bytes before the handshake finished).
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref().and_then(|t| t.info.as_ref())
    }
    /// Start a TLS KeyUpdate (`request_peer`: ask the peer to update its
    /// keys too); its record goes out with the next send. `false` on a plain
    /// connection, before the handshake finished, or if the session refused.
    pub fn tls_key_update(&mut self, request_peer: bool) -> bool {
        let Some(t) = self.tls.as_mut().filter(|t| t.info.is_some()) else { return false };
        t.session().is_some_and(|s| s.key_update(request_peer).is_ok())
    }
    /// Output buffer: bytes appended are sent in order, coalesced.
    #[inline]
    pub fn tx(&mut self) -> &mut Vec<u8> {
        self.tx
    }
    /// Unconsumed rx bytes and the output buffer at the same time (parse and
    /// answer in one pass without moving the Vec out); call
    /// [`consume`](Self::consume) afterwards.
    #[inline]
    pub fn rx_tx(&mut self) -> (&[u8], &mut Vec<u8>) {
        (self.rx.data(), self.tx)
    }
    /// Monotonic milliseconds since the engine started (`now_us() / 1000`).
    #[inline]
    pub fn now_ms(&self) -> u64 {
        self.ctx.clock.now_ms
    }
    /// Monotonic microseconds since the engine started, read at least once
    /// per loop iteration that has work (so all callbacks of one iteration
    /// see the same value).
    #[inline]
    pub fn now_us(&self) -> u64 {
        self.ctx.clock.now_us
    }
    #[inline]
    pub fn info(&self) -> &ConnInfo {
        self.info
    }
    #[inline]
    pub fn core_index(&self) -> usize {
        self.ctx.core_index
    }
    /// Zero-copy output: splice `len` bytes at `ptr` into the output stream at the
    /// current end of [`tx`](Self::tx) (bytes appended to `tx()` afterwards follow
    /// it). The engine sends it with `sendmsg` and an iovec, without copying, and
    /// calls [`Handler::on_sent`]`(token)` once all of it was handed to the kernel.
    /// If the connection closes first, `on_sent` is not called for it; after
    /// [`Handler::on_closed`] the engine no longer references the buffer.
    ///
    /// # Safety
    /// The memory must stay valid and unmodified until `on_sent(token)` or `on_closed`.
    pub unsafe fn send_borrowed(&mut self, ptr: *const u8, len: usize, token: u64) {
        // SAFETY: the caller's guarantee, passed on.
        unsafe { self.send_borrowed_at(self.tx.len(), ptr, len, token) }
    }
    /// [`send_borrowed`](Self::send_borrowed) at byte `at` of [`tx`](Self::tx)
    /// instead of its end (for handlers that write headers first and learn
    /// later which payloads go between them). `at` must not be before the
    /// position of an earlier borrowed segment, nor past `tx().len()`.
    ///
    /// # Safety
    /// As [`send_borrowed`](Self::send_borrowed).
    pub unsafe fn send_borrowed_at(&mut self, at: usize, ptr: *const u8, len: usize, token: u64) {
        assert!(at <= self.tx.len(), "borrowed segment past the end of tx");
        assert!(self.tx_ext.last().is_none_or(|e| e.at <= at), "borrowed segments out of order");
        if len == 0 {
            return;
        }
        self.tx_ext.push(ExtSeg { at, ptr, len, token });
    }
    /// A handle that makes the owning core call [`Handler::on_wake`] from any thread.
    pub fn waker(&self) -> ConnWaker {
        ConnWaker::new(self.ctx.sender.clone(), self.slot, self.conn_id)
    }
    /// Ask the engine to call [`Handler::on_recv`] again at the end of this loop
    /// iteration even if no new bytes arrive (e.g. after the handler freed a
    /// queue slot and wants to parse PDUs it left in `rx`).
    #[inline]
    pub fn request_recv_callback(&mut self) {
        *self.rerun_recv = true;
    }

    /// Read `len` bytes at `offset` of `fd` into `buf` through the core's ring.
    ///
    /// # Safety
    /// `buf` must stay valid and untouched until `on_storage(token)` is called.
    pub unsafe fn submit_read(&mut self, fd: RawFd, offset: u64, buf: *mut u8, len: u32, token: u64) {
        let e = io_uring::opcode::Read::new(io_uring::types::Fd(fd), buf, len).offset(offset).build();
        self.push_storage(e, token);
    }
    /// Write `len` bytes from `buf` at `offset` of `fd` through the core's ring.
    ///
    /// # Safety
    /// `buf` must stay valid and untouched until `on_storage(token)` is called.
    pub unsafe fn submit_write(&mut self, fd: RawFd, offset: u64, buf: *const u8, len: u32, token: u64) {
        let e = io_uring::opcode::Write::new(io_uring::types::Fd(fd), buf, len).offset(offset).build();
        self.push_storage(e, token);
    }
    /// `fsync` (`datasync == false`) or `fdatasync` (`IORING_FSYNC_DATASYNC`)
    /// of `fd` through the core's ring.
    pub fn submit_fsync(&mut self, fd: RawFd, datasync: bool, token: u64) {
        let flags = if datasync { io_uring::types::FsyncFlags::DATASYNC } else { io_uring::types::FsyncFlags::empty() };
        let e = io_uring::opcode::Fsync::new(io_uring::types::Fd(fd)).flags(flags).build();
        self.push_storage(e, token);
    }
    /// `fallocate(fd, mode, offset, len)` through the core's ring
    /// (`IORING_OP_FALLOCATE`): e.g. `FALLOC_FL_ZERO_RANGE` for Write Zeroes,
    /// `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE` for deallocate. The
    /// result is 0 or -errno (-EOPNOTSUPP where the file system lacks the
    /// mode).
    pub fn submit_fallocate(&mut self, fd: RawFd, mode: i32, offset: u64, len: u64, token: u64) {
        let e = io_uring::opcode::Fallocate::new(io_uring::types::Fd(fd), len).offset(offset).mode(mode).build();
        self.push_storage(e, token);
    }
    /// Discard `len` bytes at `offset` of the block device `fd` through the
    /// core's ring (`IORING_OP_URING_CMD` with `BLOCK_URING_CMD_DISCARD`,
    /// start in `sqe->addr`, length in `sqe->addr3`; Linux 6.12+). Both must
    /// be multiples of the device's logical block size and `fd` must be open
    /// for writing. The result is 0 or -errno; on kernels or files without
    /// the command it is -EOPNOTSUPP, -EINVAL or -ENOTTY and the caller falls
    /// back (e.g. to `fallocate` with `FALLOC_FL_PUNCH_HOLE`, or writing zeroes).
    pub fn submit_discard(&mut self, fd: RawFd, offset: u64, len: u64, token: u64) {
        let mut cmd = [0u8; 16];
        cmd[..8].copy_from_slice(&len.to_ne_bytes());
        let e = io_uring::opcode::UringCmd16::new(io_uring::types::Fd(fd), BLOCK_URING_CMD_DISCARD)
            .addr(Some(offset))
            .cmd(cmd)
            .build();
        self.push_storage(e, token);
    }
    fn push_storage(&mut self, e: io_uring::squeue::Entry, token: u64) {
        self.ctx.push_storage(e, self.slot, token);
        *self.storage_inflight += 1;
    }
}
