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
//!    handler ([`Handler::on_recv`], [`Handler::on_storage`], ...).
//! 2. Timers: [`Handler::on_tick`] for connections whose deadline
//!    ([`Wakeup::At`]) is due, and every `tick_ms` for those that tick
//!    periodically ([`Wakeup::EveryTick`], the default).
//! 3. Flush: for every connection touched in this iteration, queue one `Send`
//!    with *all* bytes the handlers appended to [`ConnIo::tx`] (coalescing many
//!    PDUs into one send) and re-arm its single `Recv`.
//! 4. One `io_uring_enter` submits everything and (for [`Mode::Interrupt`])
//!    waits for at least one completion, the next deadline or the next tick.
//!    In [`Mode::Poll`] the thread never sleeps: it enters the kernel only
//!    when it has SQEs to submit or the kernel flagged pending task work
//!    (`IORING_SQ_TASKRUN`), and otherwise spins on the completion queue.
//!
//! In [`Mode::Poll`], while at most `poll_direct_recv_conns_max` connections
//! of the core received data during the last tick, a connection whose last
//! receive returned data is received with a direct non-blocking `recv` on
//! every spin instead of an armed io_uring `Recv`: io_uring's poll arming and
//! task-work wake-up cost ~1 µs per receive on each side of a round trip, a
//! `recv` that finds data costs nothing extra. After [`DIRECT_RECV_EMPTY_MAX`]
//! empty receives in a row it goes back to an armed `Recv`, so idle
//! connections cost no syscalls; with more busy connections than the bound all
//! go back to the ring, whose one `io_uring_enter` serves them all (the busy
//! count is kept per tick epoch as receives happen, not by a pass over the
//! connections). Sends and storage always go through the ring. A direct
//! receive at a point where the connection's rx buffer holds nothing
//! unconsumed may go into a slice the handler names ([`Handler::recv_sink`],
//! e.g. the rest of a large data payload, so it crosses memory once), or be
//! capped ([`Handler::recv_len_hint`]) so that a large PDU's header comes
//! without much of its payload. An armed `Recv` (interrupt mode, or poll mode
//! outside direct receives) may likewise go into a sink the handler promises
//! to keep valid until it completes ([`Handler::recv_sink_armed`]).
//!
//! ## Per-connection I/O
//!
//! * Receive: every connection has a small buffer of `recv_buf_bytes` (an
//!   anonymous `mmap`, never malloc: an idle connection costs only the pages
//!   it received into, and `munmap` on close gives the memory back). One
//!   outstanding `Recv` into its free tail. The handler sees all unconsumed
//!   bytes ([`ConnIo::rx`]) and consumes complete PDUs. A partial remainder is
//!   moved to the front before re-arming when less than half the buffer is
//!   free, so a partial PDU at the front can always grow to the whole buffer.
//! * Large buffers: a handler expecting a PDU larger than the small buffer
//!   calls [`ConnIo::rx_reserve`]; before the next receive the engine moves
//!   the connection to a buffer of `recv_buf_large_bytes` from a per-core
//!   pool (copying the unconsumed bytes). Reservations are cleared before
//!   every `on_recv`; a connection without one gives its large buffer back at
//!   the next flush once its unconsumed bytes fit in half a small buffer. A
//!   connection whose receives keep filling the small buffer (a burst: more
//!   is waiting in the socket) also gets a large buffer, from at most half of
//!   the pool's cap, and gives it back after [`RX_CALM_RECVS_MAX`] receives
//!   in a row the small buffer could have taken, or once it received nothing
//!   for [`RX_BURST_IDLE_MS`] (checked every tick; a receive armed into the
//!   buffer is cancelled and re-armed on the small one). The pool keeps at most
//!   `recv_pool_free_max` free buffers mapped and lends at most
//!   `recv_pool_bytes_max` bytes per core; at the cap a reservation is not
//!   granted. A connection whose small buffer is then full of unconsumed
//!   bytes is parked (no receive armed) and retried when a large buffer comes
//!   back, in arrival order; the handler's own deadline bounds the wait.
//!   Without a reservation, a full buffer the handler consumed nothing from
//!   closes the connection with [`CloseReason::RxOverflow`] (a PDU larger
//!   than the buffer is a protocol violation the handler should have rejected).
//! * Send: double buffer. The `Vec` being sent is never touched while the send
//!   is in flight; new output accumulates in the other one; they swap when the
//!   send completes. Short sends are resubmitted for the remainder. A
//!   connection that once sent a batch larger than [`TX_RETAIN_BYTES`] gives
//!   the excess capacity back once its output has been empty and small for
//!   [`TX_TRIM_IDLE_MS`] (checked every tick, so busy connections do not
//!   reallocate per I/O).
//! * Backpressure: while more than `send_buf_max_bytes` are queued for
//!   transmission (in flight + accumulated), no receive is armed, so a peer
//!   that does not read its responses stops being read from.
//! * Storage: [`ConnIo::submit_read`], [`ConnIo::submit_write`],
//!   [`ConnIo::submit_fsync`] (`fsync` or `fdatasync`),
//!   [`ConnIo::submit_fallocate`] and [`ConnIo::submit_discard`] (block
//!   devices, `BLOCK_URING_CMD_DISCARD`, Linux 6.12+; a negative errno
//!   elsewhere) go through the same ring; completions are delivered to
//!   [`Handler::on_storage`] with the caller's token. A connection is never
//!   freed (and [`Handler::on_closed`] is not called) while storage ops are
//!   in flight, because their buffers belong to the handler.
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
//! ## Timers
//!
//! After every callback the engine asks [`Handler::next_wakeup`]:
//! [`Wakeup::EveryTick`] (default) puts the connection on the core's tick
//! list (`on_tick` every `tick_ms`), [`Wakeup::At`] schedules one `on_tick`
//! when the engine clock ([`ConnIo::now_ms`]) reaches the deadline, never
//! before, [`Wakeup::Never`] none. Deadlines live in a per-core min-heap
//! with lazy invalidation (a later deadline pushes nothing, the earlier
//! entry fires and re-schedules; an earlier one pushes a new entry), rebuilt
//! when it holds more than `2 x connections + 1024` entries. The loop
//! checks the heap's minimum once per iteration; idle connections with
//! `At`/`Never` cost nothing per tick. The periodic tick itself costs
//! O(every-tick connections), never a pass over all connections.
//! [`ConnIo::now_us`] gives the same clock in microseconds.
//!
//! ## Admission: limits, probation, eviction
//!
//! `connections_max` bounds open connections engine-wide (accepted and
//! outbound). Accepted connections start unestablished until their handler
//! calls [`ConnIo::set_established`] (the target: after a successful NVMe
//! Connect); `unestablished_max` bounds those engine-wide. When a new socket
//! would exceed either, the acceptor asks the core holding the oldest
//! connection that never sent a byte (else the oldest unestablished one) to
//! hard-close it ([`CloseReason::Evicted`]) and admits the new socket; only
//! when nothing is evictable is the socket refused (closed at once).
//! Outbound connections ([`Engine::connect`]) count toward `connections_max`
//! and start established. Counts are engine-wide atomics touched once per
//! accept, establishment and close; a core evicts only its own connections,
//! oldest first, in O(1) amortized. Below a limit a new socket takes a
//! place with a compare-and-swap; at a limit it takes the place of the
//! victim it asks a core to evict, so the counts never pass a limit, except
//! after a miss (the chosen connection got established or closed before its
//! core saw the request; counted in `CoreStats::evict_missed`), which the
//! next admission repairs by evicting one more. Closing connections
//! (waiting for in-flight ops) no longer count. [`Engine::connection_counts`]
//! shows the counts. Measured with `nvmf-pingpong f` (README.md): 19,000
//! idle sockets opened as fast as the client's kernel allows (4-5 s, its
//! port allocation is the bottleneck) against `connections_max` 16384 and
//! `unestablished_max` 1024: all but 1,023 evicted, real clients arriving
//! meanwhile answered within 0.1-130 ms and never evicted.
//! Refusals and evictions are counted per core in [`CoreStats`] and logged
//! at WARN, at most a few lines a second per core (and per acceptor) with
//! the number suppressed. Listeners use a backlog of `somaxconn`. Binaries
//! should call [`raise_fd_limit`] at start.
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
//! | `connections_max` | `1 ..= 1_000_000` (default 16384); engine-wide open connections; exceeded only by the eviction requests in flight in a race (see Admission) |
//! | `unestablished_max` | `1 ..= connections_max` (default 1024); engine-wide accepted connections not yet established |
//! | evictions per admission | at most 4 (more than 1 only to repair the excess left by an eviction miss) |
//! | eviction requests in flight | at most [`EVICTIONS_PENDING_MAX`] (64) engine-wide (victims' sockets still open); beyond, admission waits up to 100 ms for the cores, then refuses |
//! | sockets handed to a core, not yet registered | at most [`HANDOFFS_PENDING_MAX`] (1024) per core; beyond, the acceptor waits up to 100 ms; at a limit with nothing evictable but sockets in flight, admission waits up to 100 ms for them to become evictable |
//! | commands per loop iteration | 16 (new sockets, evictions, wake-ups); the rest in the next iterations, so a flood does not hold back completions |
//! | listen backlog | `/proc/sys/net/core/somaxconn` (default [`LISTEN_BACKLOG_DEFAULT`], 4096) |
//! | `recv_buf_bytes` | `4 KiB ..= 64 MiB` (default 16 KiB); small receive buffer per connection, mapped for its life, resident only where received into |
//! | `recv_buf_large_bytes` | `4 KiB ..= 64 MiB` (default 256 KiB + 4 KiB); large buffers are `max(this, recv_buf_bytes)`; largest PDU a handler can receive (with [`ConnIo::rx_reserve`]) |
//! | `recv_pool_bytes_max` | `0 ..= 64 GiB` per core (default 256 MiB); large buffers lent at once; bursts without a reservation take at most half; below one large buffer, large buffers are off |
//! | `recv_pool_free_max` | `0 ..= 4096` per core (default 16); free large buffers kept mapped |
//! | burst buffers | at most half of `recv_pool_bytes_max` per core; each back after [`RX_CALM_RECVS_MAX`] (8) receives that fit the small buffer or [`RX_BURST_IDLE_MS`] (100 ms) without receiving (within a tick more) |
//! | parked connections | at most the connections of the core; each waits until a large buffer is free or its handler closes it |
//! | receive memory per core | `connections x recv_buf_bytes + recv_pool_bytes_max + recv_pool_free_max x large` mapped (one mapping per buffer: keep `vm.max_map_count`, default 65530, above connections + large buffers) |
//! | `send_buf_max_bytes` | `>= 4 KiB` (default 4 MiB); a handler may still append more in one callback, it only pauses receiving |
//! | send buffer capacity kept | [`TX_RETAIN_BYTES`] (64 KiB) per buffer (two per connection) once output was empty and small for [`TX_TRIM_IDLE_MS`] (1 s), checked every tick |
//! | one send SQE | at most `u32::MAX` bytes; larger tx is sent in pieces |
//! | `tick_ms` | `1 ..= 60_000` (default 10) |
//! | timer heap | at most `2 x connections + 1024` entries (rebuilt beyond); one `on_tick` per connection per ms for deadlines in the past |
//! | `poll_direct_recv_conns_max` | `0 ..= 1024` (default 2); poll mode only; direct receives only while at most this many connections of the core are busy; members leave after [`DIRECT_RECV_EMPTY_MAX`] empty receives |
//! | `ring_entries` | `8 ..= 32768`, power of two is not required (the kernel rounds up); default 1024; the CQ is 4x |
//! | in-flight ops per core | 2 per connection (recv + send) + 1 wakeup + storage ops (bounded by the handlers, the engine does not cap them; a full SQ is flushed with an extra `submit`) |
//! | storage op length | `u32` bytes per read/write op; `u64` for fallocate and discard |
//! | borrowed tx segments | any number per batch; at most 1024 iovecs (`UIO_MAXIOV`) per `sendmsg`, the rest follows in later sends |
//! | `CloseAfterFlush` | waits for all queued tx to be sent and storage ops to finish; a peer that never reads keeps it open until engine shutdown's timeout |
//! | shutdown | [`Engine::shutdown`] waits at most `timeout` for graceful close, then force-closes sockets and waits at most 2 s more for in-flight storage ops; handlers of ops that never complete are leaked rather than freed |
//! | log lines a peer can provoke | refusals, evictions, overflow closes, handler panics: at most 5 a second per core (or acceptor), then one line with the number suppressed |
//!
//! ## TLS
//!
//! A listener may allow or require TLS ([`Engine::listen_tls`],
//! [`ListenerTls`]) and an outbound connection may start one
//! ([`Engine::connect_tls`]). The record layer runs on the owning core in
//! user space (OpenSSL through `nvmf-tls`): ciphertext is received into a
//! landing buffer of [`TLS_LAND_BYTES`], decrypted into the connection's
//! receive buffer, and everything the handler sends is encrypted when its
//! batch is taken for sending (borrowed segments are returned right after
//! encryption). Handlers see only plaintext and learn the PSK identity from
//! [`ConnIo::tls`]. The session holds at most [`TLS_INBOUND_BYTES_MAX`] of
//! undecrypted ciphertext; beyond it no receive is armed. See `tls.rs`.
//!
//! ## Threading
//!
//! Handlers are created on the core that owns the connection (via
//! [`HandlerFactory::create`] or the closure given to [`Engine::connect`]) and
//! never move. Accepted sockets cross threads once (channel + eventfd wake-up),
//! to the least-loaded core (live connections + handoffs in flight, ties
//! round-robin). Do not call [`Engine::shutdown`] from a core thread (it joins them).

#![deny(unsafe_op_in_unsafe_fn)]

mod config;
mod conn;
mod core;
mod ctx;
mod engine;
mod handler;
mod limits;
mod rx;
mod stats;
mod timer;
mod tls;
mod tx;

use std::io;

pub use crate::config::{
    parse_core_list, pin_current_thread, raise_fd_limit, EngineConfig, Mode, CONNECTIONS_MAX, DIRECT_RECV_CONNS_MAX,
    DIRECT_RECV_EMPTY_MAX, MAX_CORES, MAX_CORE_ID, RECV_BUF_BYTES_MAX, RECV_BUF_BYTES_MIN, RECV_POOL_BYTES_MAX,
    RECV_POOL_FREE_MAX,
};
pub(crate) use crate::engine::CoreSender;
pub use crate::engine::{
    ConnWaker, ConnectionCounts, Engine, ListenerId, HANDOFFS_PENDING_MAX, LISTEN_BACKLOG_DEFAULT,
};
pub use crate::handler::{
    ArmedSink, CloseReason, ConnInfo, ConnIo, Flow, Handler, HandlerFactory, MakeHandler, Wakeup,
    BLOCK_URING_CMD_DISCARD,
};
pub use crate::limits::EVICTIONS_PENDING_MAX;
pub use crate::rx::{RX_BURST_IDLE_MS, RX_CALM_RECVS_MAX};
pub use crate::stats::CoreStats;
pub use crate::tls::{
    session_limits as tls_session_limits, ListenerTls, TlsInfo, TLS_INBOUND_BYTES_MAX, TLS_LAND_BYTES,
    TLS_LAND_ESTABLISHED_BYTES, TLS_OUTBOUND_BYTES_MAX,
};
pub use crate::tx::{TX_RETAIN_BYTES, TX_TRIM_IDLE_MS};
/// The TLS crate the engine speaks (sessions for [`Engine::connect_tls`],
/// server configurations for [`ListenerTls`]).
pub use nvmf_tls;

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
    #[error("connection limit reached and no unestablished connection to evict")]
    ConnectionLimit,
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}
