//! # nvmf-engine: thread-per-core io_uring I/O engine
//!
//! The engine runs one pinned thread per configured core. Every thread owns one
//! io_uring, its connections, and every byte buffer of those connections; nothing
//! is shared between cores on the per-I/O path (no locks, no shared atomics).
//! Protocol code is sans-IO and plugs in through the [`Handler`] trait.
//!
//! ## Event loop (per core)
//!
//! 1. Drain the completion queue; for every CQE call the owning connection's
//!    handler ([`Handler::on_recv`], [`Handler::on_storage`]).
//! 2. Run [`Handler::on_tick`] on every connection when `tick_ms` elapsed.
//! 3. Flush: for every connection touched in this iteration, queue one `Send`
//!    with *all* bytes the handlers appended to [`ConnIo::tx`] (coalescing many
//!    PDUs into one send) and re-arm its single `Recv`.
//! 4. One `io_uring_enter` submits everything and (for [`Mode::Interrupt`])
//!    waits for at least one completion or the next tick. In [`Mode::Poll`]
//!    the thread never sleeps: it enters the kernel only when it has SQEs to
//!    submit or the kernel flagged pending task work (`IORING_SQ_TASKRUN`),
//!    and otherwise spins on the completion queue.
//!
//! In [`Mode::Poll`], while at most `poll_direct_recv_conns_max` connections
//! of the core received data during the last tick, a connection whose last
//! receive returned data is received with a direct non-blocking `recv` on
//! every spin instead of an armed io_uring `Recv`: io_uring's poll arming and
//! task-work wake-up cost ~1 µs per receive on each side of a round trip, a
//! `recv` that finds data costs nothing extra. After [`DIRECT_RECV_EMPTY_MAX`]
//! empty receives in a row it goes back to an armed `Recv`, so idle
//! connections cost no syscalls; with more busy connections than the bound all
//! go back to the ring, whose one `io_uring_enter` serves them all. Sends and
//! storage always go through the ring. A direct receive at a point where the
//! connection's rx buffer holds nothing unconsumed may go into a slice the
//! handler names ([`Handler::recv_sink`], e.g. the rest of a large data
//! payload, so it crosses memory once), or be capped
//! ([`Handler::recv_len_hint`]) so that a large PDU's header comes without
//! much of its payload.
//!
//! ## Per-connection I/O
//!
//! * Receive: a fixed-capacity buffer of `recv_buf_bytes`; one outstanding
//!   `Recv` into its free tail. The handler sees all unconsumed bytes
//!   ([`ConnIo::rx`]) and consumes complete PDUs. A partial remainder is
//!   moved to the front before re-arming when less than half the buffer is free.
//!   If the buffer is full and the handler consumed nothing, the connection is
//!   closed with [`CloseReason::RxOverflow`] (a PDU larger than the buffer is a
//!   protocol violation the handler should have rejected).
//! * Send: double buffer. The `Vec` being sent is never touched while the send
//!   is in flight; new output accumulates in the other one; they swap when the
//!   send completes. Short sends are resubmitted for the remainder.
//! * Backpressure: while more than `send_buf_max_bytes` are queued for
//!   transmission (in flight + accumulated), no receive is armed, so a peer
//!   that does not read its responses stops being read from.
//! * Storage: [`ConnIo::submit_read`], [`ConnIo::submit_write`] and
//!   [`ConnIo::submit_fsync`] go through the same ring; completions are
//!   delivered to [`Handler::on_storage`] with the caller's token. A connection
//!   is never freed (and [`Handler::on_closed`] is not called) while storage
//!   ops are in flight, because their buffers belong to the handler.
//!
//! * Zero-copy output: [`ConnIo::send_borrowed`] splices a handler-owned buffer
//!   into the output stream (sent with `sendmsg` + iovec, no copy);
//!   [`Handler::on_sent`] returns it. Batches without borrowed segments use a
//!   plain `Send`.
//! * Cross-thread work: [`ConnIo::waker`] gives a `Send + Sync` [`ConnWaker`];
//!   `wake()` from any thread makes the owning core call [`Handler::on_wake`]
//!   (a channel send + an eventfd write; the core keeps a read armed on the
//!   eventfd, so this is the only cross-thread path and it is off the per-I/O path
//!   of the engine itself).
//! * A panicking handler closes only its own connection (`catch_unwind` around
//!   every callback; `on_closed` is not called on a poisoned handler, but the
//!   connection still waits for its in-flight storage ops before being freed).
//!
//! ## io_uring setup
//!
//! Each core tries, in order, `SINGLE_ISSUER|DEFER_TASKRUN|TASKRUN_FLAG`, then
//! `SINGLE_ISSUER|COOP_TASKRUN|TASKRUN_FLAG`, then no flags (always with
//! `SUBMIT_ALL` and a CQ 4x the SQ), and registers the ring fd
//! (`IORING_REGISTER_RING_FDS`) for the poll-mode `io_uring_enter`. The
//! environment variable `NVMF_ENGINE_RING=defer|coop|plain` forces one variant
//! (for measurements); `NVMF_ENGINE_NO_REGRING=1` disables the registered ring fd.
//! If no variant can be created (io_uring disabled by
//! `/proc/sys/kernel/io_uring_disabled`, seccomp, old kernel) [`Engine::start`]
//! fails with [`EngineError::IoUringSetup`].
//!
//! Syscalls per operation (measured with `nvmf-pingpong e ... --stats`, see
//! README.md): a QD1 request/response costs 2 `io_uring_enter` per op in
//! interrupt mode (one that runs the deferred recv completion, one that submits
//! the send and re-arms the recv), the same count as raw `recv`+`send`; in poll
//! mode with direct receives 1 enter (the send) plus the spinning `recv` calls,
//! one of which returns the request; at QD32 the engine needs about
//! 0.07 enters per op (72 B → 4120 B) because one recv carries many requests and
//! one send carries all their responses.
//!
//! ## Limits (bounds)
//!
//! | what | bound |
//! | --- | --- |
//! | cores in [`parse_core_list`] / [`EngineConfig::cores`] | at most [`MAX_CORES`] entries, each core id `< MAX_CORE_ID` (1024), no duplicates |
//! | threads | one per entry of `cores` (or one unpinned thread if empty) + one acceptor thread per listener |
//! | `recv_buf_bytes` | `4 KiB ..= 64 MiB` (default 256 KiB + 4 KiB); largest PDU a handler can receive |
//! | `send_buf_max_bytes` | `>= 4 KiB` (default 4 MiB); a handler may still append more in one callback, it only pauses receiving |
//! | one send SQE | at most `u32::MAX` bytes; larger tx is sent in pieces |
//! | `max_connections_per_core` | `1 ..= 1_000_000` (default 4096); beyond it the core refuses (closes) new sockets |
//! | `tick_ms` | `1 ..= 60_000` (default 10) |
//! | `poll_direct_recv_conns_max` | `0 ..= 1024` (default 2); poll mode only; direct receives only while at most this many connections of the core are busy; members leave after [`DIRECT_RECV_EMPTY_MAX`] empty receives |
//! | `ring_entries` | `8 ..= 32768`, power of two is not required (the kernel rounds up); default 1024; the CQ is 4x |
//! | in-flight ops per core | 2 per connection (recv + send) + 1 wakeup + storage ops (bounded by the handlers, the engine does not cap them; a full SQ is flushed with an extra `submit`) |
//! | storage op length | `u32` bytes per op |
//! | borrowed tx segments | any number per batch; at most 1024 iovecs (`UIO_MAXIOV`) per `sendmsg`, the rest follows in later sends |
//! | `CloseAfterFlush` | waits for all queued tx to be sent and storage ops to finish; a peer that never reads keeps it open until engine shutdown's timeout |
//! | shutdown | [`Engine::shutdown`] waits at most `timeout` for graceful close, then force-closes sockets and waits at most 2 s more for in-flight storage ops; handlers of ops that never complete are leaked rather than freed |
//!
//! ## Threading
//!
//! Handlers are created on the core that owns the connection (via
//! [`HandlerFactory::create`] or the closure given to [`Engine::connect`]) and
//! never move. Accepted sockets cross threads once (channel + eventfd wake-up),
//! to the least-loaded core (live connections + handoffs in flight, ties
//! round-robin). Do not call [`Engine::shutdown`] from a core thread (it joins them).

#![deny(unsafe_op_in_unsafe_fn)]

mod core;

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::core::{Command, CoreShared, NewConn};

/// Maximum number of entries in a core list.
pub const MAX_CORES: usize = 256;
/// Core ids must be below this (the size of the affinity mask used).
pub const MAX_CORE_ID: usize = 1024;

/// Engine errors.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid core list: {0}")]
    InvalidCoreList(String),
    #[error("invalid engine configuration: {0}")]
    InvalidConfig(String),
    #[error("io_uring setup failed (is io_uring disabled? see /proc/sys/kernel/io_uring_disabled): {0}")]
    IoUringSetup(io::Error),
    #[error("cannot pin thread to core {core}: {err}")]
    Pin { core: usize, err: io::Error },
    #[error("no such core index {0}")]
    NoSuchCore(usize),
    #[error("no such listener {0}")]
    NoSuchListener(u64),
    #[error("engine is shutting down")]
    ShuttingDown,
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// How a core thread waits for work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Busy-poll the completion queue; never sleep. Lowest latency, 100% CPU.
    #[default]
    Poll,
    /// Sleep in `io_uring_enter` when idle (woken by completions or the tick).
    Interrupt,
}

impl FromStr for Mode {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "poll" => Ok(Mode::Poll),
            "interrupt" => Ok(Mode::Interrupt),
            other => {
                Err(EngineError::InvalidConfig(format!("unknown mode {other:?} (expected \"poll\" or \"interrupt\")")))
            }
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Poll => "poll",
            Mode::Interrupt => "interrupt",
        })
    }
}

/// Parse a core list such as `"0,2-3"` into `[0, 2, 3]`.
///
/// Bounds: at most [`MAX_CORES`] entries, every id `< MAX_CORE_ID`, ranges must be
/// ascending (`lo <= hi`), duplicates and empty items are rejected. Whitespace
/// around items is ignored. An empty string is an error.
pub fn parse_core_list(s: &str) -> Result<Vec<usize>, EngineError> {
    let bad = |m: String| EngineError::InvalidCoreList(m);
    if s.trim().is_empty() {
        return Err(bad("empty core list".into()));
    }
    if s.len() > 4096 {
        return Err(bad("core list string too long".into()));
    }
    let mut out: Vec<usize> = Vec::new();
    let parse_id = |t: &str| -> Result<usize, EngineError> {
        let t = t.trim();
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(format!("{t:?} is not a core number")));
        }
        let v: usize = t.parse().map_err(|_| bad(format!("{t:?} is not a core number")))?;
        if v >= MAX_CORE_ID {
            return Err(bad(format!("core {v} out of range (must be < {MAX_CORE_ID})")));
        }
        Ok(v)
    };
    for item in s.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(bad("empty item".into()));
        }
        let (lo, hi) = match item.split_once('-') {
            Some((a, b)) => (parse_id(a)?, parse_id(b)?),
            None => {
                let v = parse_id(item)?;
                (v, v)
            }
        };
        if lo > hi {
            return Err(bad(format!("descending range {item:?}")));
        }
        for c in lo..=hi {
            if out.contains(&c) {
                return Err(bad(format!("duplicate core {c}")));
            }
            if out.len() >= MAX_CORES {
                return Err(bad(format!("more than {MAX_CORES} cores")));
            }
            out.push(c);
        }
    }
    Ok(out)
}

/// Pin the calling thread to one CPU (`sched_setaffinity`).
pub fn pin_current_thread(core: usize) -> io::Result<()> {
    if core >= MAX_CORE_ID {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "core id out of range"));
    }
    // SAFETY: cpu_set_t is plain data; CPU_SET stays within bounds (core < 1024).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Engine configuration. See the crate docs for bounds.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// One pinned thread per entry; empty = one unpinned thread.
    pub cores: Vec<usize>,
    pub mode: Mode,
    /// Per-connection receive buffer; must hold the largest PDU.
    pub recv_buf_bytes: usize,
    /// Per-connection bound on queued tx bytes before recv is paused.
    pub send_buf_max_bytes: usize,
    pub max_connections_per_core: usize,
    /// `on_tick` period.
    pub tick_ms: u64,
    pub ring_entries: u32,
    /// [`Mode::Poll`] only: direct receives are used while at most this many
    /// connections of the core received data during the last tick (0 = never).
    /// Such a connection is then received with a direct non-blocking `recv` on
    /// every spin instead of an armed io_uring `Recv`, saving io_uring's poll
    /// arming and task-work wake-up on each receive (QD1 round trip ~15%
    /// shorter, BENCHMARKS.md). It joins when a receive returned data and
    /// leaves after [`DIRECT_RECV_EMPTY_MAX`] empty ones in a row. With more
    /// busy connections one `io_uring_enter` serving all of them is cheaper
    /// than a `recv` per connection and spin (8 busy queues: ~7% fewer IOPS
    /// with all of them direct), so all go back to the ring.
    pub poll_direct_recv_conns_max: usize,
}

/// Consecutive empty direct receives after which a connection goes back to an
/// armed io_uring `Recv` (about 1-2 ms of spinning).
pub const DIRECT_RECV_EMPTY_MAX: u32 = 4096;
/// Upper bound of [`EngineConfig::poll_direct_recv_conns_max`].
pub const DIRECT_RECV_CONNS_MAX: usize = 1024;

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            cores: Vec::new(),
            mode: Mode::Poll,
            recv_buf_bytes: 256 * 1024 + 4096,
            send_buf_max_bytes: 4 * 1024 * 1024,
            max_connections_per_core: 4096,
            tick_ms: 10,
            ring_entries: 1024,
            poll_direct_recv_conns_max: 2,
        }
    }
}

impl EngineConfig {
    /// Check the bounds documented in the crate docs.
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |m: &str| Err(EngineError::InvalidConfig(m.to_string()));
        if self.cores.len() > MAX_CORES {
            return bad("too many cores");
        }
        for (i, c) in self.cores.iter().enumerate() {
            if *c >= MAX_CORE_ID {
                return bad("core id out of range");
            }
            if self.cores[..i].contains(c) {
                return bad("duplicate core id");
            }
        }
        if !(4096..=64 << 20).contains(&self.recv_buf_bytes) {
            return bad("recv_buf_bytes must be within 4 KiB ..= 64 MiB");
        }
        if self.send_buf_max_bytes < 4096 {
            return bad("send_buf_max_bytes must be >= 4 KiB");
        }
        if !(1..=1_000_000).contains(&self.max_connections_per_core) {
            return bad("max_connections_per_core must be within 1 ..= 1000000");
        }
        if !(1..=60_000).contains(&self.tick_ms) {
            return bad("tick_ms must be within 1 ..= 60000");
        }
        if !(8..=32768).contains(&self.ring_entries) {
            return bad("ring_entries must be within 8 ..= 32768");
        }
        if self.poll_direct_recv_conns_max > DIRECT_RECV_CONNS_MAX {
            return bad("poll_direct_recv_conns_max must be within 0 ..= 1024");
        }
        Ok(())
    }
}

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
    /// The receive buffer was full and the handler consumed nothing.
    RxOverflow,
    /// [`Engine::remove_listener`] with `close_connections`.
    ListenerRemoved,
    /// Engine shutdown.
    Shutdown,
}

/// Sans-IO protocol state machine adapter. Lives on one core for its whole life (not Send).
pub trait Handler {
    /// Bytes have arrived. `io.rx()` is all buffered unconsumed bytes; call `io.consume(n)` for what you parsed
    /// (parse EVERYTHING complete, leave partial PDUs). Append output to `io.tx()`.
    fn on_recv(&mut self, io: &mut ConnIo<'_>) -> Flow;
    /// A storage op submitted through `io` finished (result = bytes or -errno, like io_uring cqe.res).
    fn on_storage(&mut self, io: &mut ConnIo<'_>, token: u64, result: i32) -> Flow;
    /// Periodic, every tick_ms (and once right after the connection is registered). `io.now_ms()` is monotonic.
    fn on_tick(&mut self, io: &mut ConnIo<'_>) -> Flow;
    /// The connection is gone (peer closed, error, engine shutdown, or the handler asked). Release resources.
    fn on_closed(&mut self, reason: CloseReason);
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
    /// The most bytes the next receive into the receive buffer should take,
    /// asked where [`recv_sink`](Self::recv_sink) is (poll mode, direct
    /// receives, nothing unconsumed) when it returned `None`: a handler that
    /// expects a large payload next can take just its header first and the
    /// payload through the sink. Default: no limit.
    fn recv_len_hint(&self) -> usize {
        usize::MAX
    }
    /// `n > 0` bytes were received into the front of the slice the last
    /// [`recv_sink`](Self::recv_sink) returned.
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

/// Handle given to handler callbacks: the connection's buffers and the core's ring.
pub struct ConnIo<'a> {
    pub(crate) rx: &'a mut core::RxBuf,
    pub(crate) tx: &'a mut Vec<u8>,
    pub(crate) tx_ext: &'a mut Vec<core::ExtSeg>,
    pub(crate) info: &'a ConnInfo,
    pub(crate) sq: &'a mut core::SubmitCtx,
    pub(crate) slot: u32,
    pub(crate) conn_id: u64,
    pub(crate) storage_inflight: &'a mut u32,
    pub(crate) rerun_recv: &'a mut bool,
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
    /// Monotonic milliseconds since the engine started.
    #[inline]
    pub fn now_ms(&self) -> u64 {
        self.sq.now_ms
    }
    #[inline]
    pub fn info(&self) -> &ConnInfo {
        self.info
    }
    #[inline]
    pub fn core_index(&self) -> usize {
        self.sq.core_index
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
        self.tx_ext.push(core::ExtSeg { at, ptr, len, token });
    }
    /// A handle that makes the owning core call [`Handler::on_wake`] from any thread.
    pub fn waker(&self) -> ConnWaker {
        ConnWaker { core: self.sq.sender.clone(), slot: self.slot, id: self.conn_id }
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
        self.sq.push_storage(e, self.slot, token);
        *self.storage_inflight += 1;
    }
    /// Write `len` bytes from `buf` at `offset` of `fd` through the core's ring.
    ///
    /// # Safety
    /// `buf` must stay valid and untouched until `on_storage(token)` is called.
    pub unsafe fn submit_write(&mut self, fd: RawFd, offset: u64, buf: *const u8, len: u32, token: u64) {
        let e = io_uring::opcode::Write::new(io_uring::types::Fd(fd), buf, len).offset(offset).build();
        self.sq.push_storage(e, self.slot, token);
        *self.storage_inflight += 1;
    }
    /// fsync / fdatasync `fd` through the core's ring.
    pub fn submit_fsync(&mut self, fd: RawFd, datasync: bool, token: u64) {
        let flags = if datasync { io_uring::types::FsyncFlags::DATASYNC } else { io_uring::types::FsyncFlags::empty() };
        let e = io_uring::opcode::Fsync::new(io_uring::types::Fd(fd)).flags(flags).build();
        self.sq.push_storage(e, self.slot, token);
        *self.storage_inflight += 1;
    }
}

/// Closure creating the handler of an outbound connection on its core.
pub type MakeHandler = Box<dyn FnOnce(&ConnInfo) -> Box<dyn Handler> + Send>;

/// Creates handlers for accepted connections.
pub trait HandlerFactory: Send + Sync + 'static {
    /// Called ON the core thread that will own the connection; return None to refuse (socket closed).
    fn create(&self, info: &ConnInfo) -> Option<Box<dyn Handler>>;
}

/// Identifies a listener registered with [`Engine::listen`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenerId {
    id: u64,
    local: SocketAddr,
}

impl ListenerId {
    /// The bound address (with the actual port if 0 was requested).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
    /// Numeric id, as found in [`ConnInfo::listener_id`].
    pub fn id(&self) -> u64 {
        self.id
    }
}

/// Per-core counters (published by the owning core every tick with relaxed stores).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoreStats {
    /// Core index (position in `EngineConfig::cores`).
    pub core_index: usize,
    /// CPU the thread is pinned to, if any.
    pub cpu: Option<usize>,
    /// Loop iterations that handled at least one completion.
    pub busy_loops: u64,
    /// Loop iterations that found nothing to do.
    pub idle_loops: u64,
    /// `io_uring_enter` calls.
    pub enters: u64,
    pub connections: u64,
    pub connections_total: u64,
    pub bytes_rx: u64,
    pub bytes_tx: u64,
    pub recv_ops: u64,
    pub send_ops: u64,
    pub storage_ops: u64,
    /// Receives that returned data through a direct `recv` (poll mode; also
    /// counted in `recv_ops`).
    pub direct_recv_ops: u64,
    /// Direct receives that went into a handler's [`Handler::recv_sink`]
    /// (also counted in `direct_recv_ops` and `recv_ops`).
    pub sink_recv_ops: u64,
}

/// Channel into a core plus its eventfd (the core keeps a read armed on it).
#[derive(Clone)]
pub(crate) struct CoreSender {
    tx: mpsc::Sender<Command>,
    wake: Arc<OwnedFd>,
}

impl CoreSender {
    pub(crate) fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }
    pub(crate) fn send(&self, cmd: Command) -> Result<(), EngineError> {
        self.tx.send(cmd).map_err(|_| EngineError::ShuttingDown)?;
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a valid u64 to an eventfd we own.
        unsafe { libc::write(self.wake.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8) };
        Ok(())
    }
}

/// Wakes one connection's handler from any thread: the owning core calls
/// [`Handler::on_wake`] soon after (one channel send + one eventfd write per call;
/// meant for cross-thread submission, e.g. a host application thread handing
/// work to the core that owns the queue). Waking a closed connection is a no-op.
#[derive(Clone)]
pub struct ConnWaker {
    core: CoreSender,
    slot: u32,
    id: u64,
}

impl ConnWaker {
    /// Returns false if the engine has shut down.
    pub fn wake(&self) -> bool {
        self.core.send(Command::Wake { slot: self.slot, id: self.id }).is_ok()
    }
}

impl fmt::Debug for ConnWaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnWaker").field("slot", &self.slot).field("id", &self.id).finish()
    }
}

struct CoreHandle {
    sender: CoreSender,
    shared: Arc<CoreShared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl CoreHandle {
    fn send(&self, cmd: Command) -> Result<(), EngineError> {
        self.sender.send(cmd)
    }
}

struct ListenerEntry {
    id: u64,
    stop: Arc<AtomicBool>,
    /// Shared with the acceptor thread so the fd stays valid until both are done.
    listener: Arc<TcpListener>,
    thread: Option<JoinHandle<()>>,
}

struct Inner {
    cores: Vec<CoreHandle>,
    listeners: Mutex<Vec<ListenerEntry>>,
    next_listener: AtomicU64,
    rr: Arc<AtomicUsize>,
    stopped: AtomicBool,
}

/// The running engine: core threads plus acceptor threads.
pub struct Engine {
    inner: Arc<Inner>,
    done: bool,
}

impl Engine {
    /// Spawn the core threads (pinned), each creating its own io_uring.
    pub fn start(cfg: EngineConfig) -> Result<Engine, EngineError> {
        cfg.validate()?;
        let cpus: Vec<Option<usize>> =
            if cfg.cores.is_empty() { vec![None] } else { cfg.cores.iter().map(|c| Some(*c)).collect() };
        let epoch = Instant::now();
        let mut cores = Vec::with_capacity(cpus.len());
        let mut ready_rx = Vec::new();
        for (idx, cpu) in cpus.iter().enumerate() {
            // SAFETY: plain syscall.
            let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
            if efd < 0 {
                return Err(EngineError::Io(io::Error::last_os_error()));
            }
            // SAFETY: fresh fd we own.
            let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(efd) });
            let (tx, rx) = mpsc::channel::<Command>();
            let sender = CoreSender { tx, wake };
            let s2 = sender.clone();
            let shared = Arc::new(CoreShared::new(idx, *cpu));
            let (rtx, rrx) = mpsc::sync_channel::<Result<(), EngineError>>(1);
            let c2 = cfg.clone();
            let sh2 = shared.clone();
            let cpu = *cpu;
            let th = std::thread::Builder::new()
                .name(format!("nvmf-core{idx}"))
                .spawn(move || core::run_core(idx, cpu, c2, rx, s2, sh2, epoch, rtx))
                .map_err(EngineError::Io)?;
            cores.push(CoreHandle { sender, shared, thread: Mutex::new(Some(th)) });
            ready_rx.push(rrx);
        }
        let mut err = None;
        for r in ready_rx {
            match r.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    err.get_or_insert(e);
                }
                Err(_) => {
                    err.get_or_insert(EngineError::InvalidConfig("core thread died during start".into()));
                }
            }
        }
        let engine = Engine {
            inner: Arc::new(Inner {
                cores,
                listeners: Mutex::new(Vec::new()),
                next_listener: AtomicU64::new(1),
                rr: Arc::new(AtomicUsize::new(0)),
                stopped: AtomicBool::new(false),
            }),
            done: false,
        };
        if let Some(e) = err {
            engine.stop_all(Duration::from_millis(100));
            return Err(e);
        }
        Ok(engine)
    }

    /// Number of core threads.
    pub fn core_count(&self) -> usize {
        self.inner.cores.len()
    }

    /// Bind `addr` and start an acceptor thread; accepted sockets (TCP_NODELAY)
    /// are handed to the least-loaded core (live connections + handoffs in
    /// flight; ties round-robin), where `factory.create` makes the handler.
    pub fn listen(&self, addr: SocketAddr, factory: Arc<dyn HandlerFactory>) -> Result<ListenerId, EngineError> {
        if self.inner.stopped.load(Ordering::Acquire) {
            return Err(EngineError::ShuttingDown);
        }
        let listener = Arc::new(TcpListener::bind(addr)?);
        let local = listener.local_addr()?;
        let id = self.inner.next_listener.fetch_add(1, Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        let l2 = listener.clone();
        let inner = Arc::downgrade(&self.inner);
        let stop2 = stop.clone();
        let th = std::thread::Builder::new()
            .name(format!("nvmf-accept{id}"))
            .spawn(move || acceptor(l2, id, stop2, inner, factory))
            .map_err(EngineError::Io)?;
        self.inner.listeners.lock().unwrap().push(ListenerEntry { id, stop, listener, thread: Some(th) });
        Ok(ListenerId { id, local })
    }

    /// Stop accepting on that listener and (optionally) close every connection
    /// accepted through it. Returns once the listener socket is closed and every
    /// core has started closing the connections (peers see EOF promptly; the
    /// handlers' `on_closed` runs once in-flight ops drain).
    pub fn remove_listener(&self, id: ListenerId, close_connections: bool) -> Result<(), EngineError> {
        let entry = {
            let mut l = self.inner.listeners.lock().unwrap();
            let pos = l.iter().position(|e| e.id == id.id).ok_or(EngineError::NoSuchListener(id.id))?;
            l.remove(pos)
        };
        stop_listener(entry);
        if close_connections {
            let mut acks = Vec::new();
            for c in &self.inner.cores {
                let (atx, arx) = mpsc::channel();
                if c.send(Command::RemoveListener { id: id.id, ack: atx }).is_ok() {
                    acks.push(arx);
                }
            }
            for a in acks {
                let _ = a.recv_timeout(Duration::from_secs(5));
            }
        }
        Ok(())
    }

    /// Outbound connection (host side), owned by core `core_index`. The TCP
    /// connect happens synchronously on the calling thread (errors are returned
    /// here); the handler is then created on the owning core by `make`.
    pub fn connect(&self, core_index: usize, addr: SocketAddr, make: MakeHandler) -> Result<(), EngineError> {
        self.connect_timeout(core_index, addr, Duration::from_secs(10), make)
    }

    /// [`connect`](Self::connect) with an explicit TCP connect timeout.
    pub fn connect_timeout(
        &self,
        core_index: usize,
        addr: SocketAddr,
        timeout: Duration,
        make: MakeHandler,
    ) -> Result<(), EngineError> {
        if self.inner.stopped.load(Ordering::Acquire) {
            return Err(EngineError::ShuttingDown);
        }
        let core = self.inner.cores.get(core_index).ok_or(EngineError::NoSuchCore(core_index))?;
        let s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_nodelay(true)?;
        let local = s.local_addr()?;
        let peer = s.peer_addr()?;
        // SAFETY: into_raw_fd transfers ownership.
        let fd = unsafe { OwnedFd::from_raw_fd(s.into_raw_fd()) };
        core.send(Command::Connect { conn: NewConn { fd, peer, local, listener_id: None }, make })
    }

    /// Graceful shutdown: stop accepting, call `on_shutdown` on each connection,
    /// flush tx, wait at most `timeout`, then force-close and join the threads.
    pub fn shutdown(mut self, timeout: Duration) {
        self.done = true;
        self.stop_all(timeout);
    }

    /// Per-core counters.
    pub fn stats(&self) -> Vec<CoreStats> {
        self.inner.cores.iter().map(|c| c.shared.snapshot()).collect()
    }

    fn stop_all(&self, timeout: Duration) {
        if self.inner.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        let entries: Vec<ListenerEntry> = std::mem::take(&mut *self.inner.listeners.lock().unwrap());
        for e in entries {
            stop_listener(e);
        }
        let deadline = Instant::now() + timeout;
        for c in &self.inner.cores {
            let _ = c.send(Command::Shutdown { deadline });
        }
        for c in &self.inner.cores {
            if let Some(t) = c.thread.lock().unwrap().take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if !self.done {
            self.stop_all(Duration::from_secs(1));
        }
    }
}

fn stop_listener(mut e: ListenerEntry) {
    e.stop.store(true, Ordering::Release);
    // Wake the blocking accept(): shutdown on a listening socket makes accept fail (Linux).
    // SAFETY: plain syscall on a listener we keep alive (Arc) until after the join.
    unsafe { libc::shutdown(e.listener.as_raw_fd(), libc::SHUT_RDWR) };
    if let Some(t) = e.thread.take() {
        let _ = t.join();
    }
}

fn acceptor(
    listener: Arc<TcpListener>,
    id: u64,
    stop: Arc<AtomicBool>,
    inner: std::sync::Weak<Inner>,
    factory: Arc<dyn HandlerFactory>,
) {
    loop {
        let res = listener.accept();
        if stop.load(Ordering::Acquire) {
            return;
        }
        let (s, peer) = match res {
            Ok(v) => v,
            Err(e) => {
                match e.raw_os_error() {
                    Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM) => {
                        tracing::warn!("accept: {e}; backing off");
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Some(libc::EINVAL) => return,
                    _ => tracing::debug!("accept: {e}"),
                }
                continue;
            }
        };
        let Some(inner) = inner.upgrade() else { return };
        if inner.stopped.load(Ordering::Acquire) {
            return;
        }
        let _ = s.set_nodelay(true);
        let local = match s.local_addr() {
            Ok(l) => l,
            Err(_) => continue,
        };
        // Least-loaded core (live connections + sockets still in flight to it),
        // ties broken round-robin.
        let n = inner.cores.len();
        let start = inner.rr.fetch_add(1, Ordering::Relaxed);
        let idx = (0..n).map(|k| (start + k) % n).min_by_key(|&i| inner.cores[i].shared.load()).unwrap_or(0);
        inner.cores[idx].shared.pending_handoffs.fetch_add(1, Ordering::Relaxed);
        // SAFETY: ownership transfer.
        let fd = unsafe { OwnedFd::from_raw_fd(s.into_raw_fd()) };
        let _ = inner.cores[idx].send(Command::Accepted {
            conn: NewConn { fd, peer, local, listener_id: Some(id) },
            factory: factory.clone(),
        });
    }
}
