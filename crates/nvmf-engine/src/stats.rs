//! Per-core counters: kept in plain fields by the core, published to
//! relaxed atomics every tick (and on registration) for [`crate::Engine::stats`].

use std::sync::atomic::{AtomicU64, Ordering};

use crate::limits::EvictionInfo;

macro_rules! core_stats {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Per-core counters (published by the owning core every tick with relaxed stores).
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct CoreStats {
            /// Core index (position in `EngineConfig::cores`).
            pub core_index: usize,
            /// CPU the thread is pinned to, if any.
            pub cpu: Option<usize>,
            /// New sockets an acceptor refused because a limit was reached and
            /// nothing was evictable (counted on the core it would have gone to).
            pub refused_limit: u64,
            $($(#[$doc])* pub $name: u64,)*
        }

        /// The core's own copy of the published counters.
        #[derive(Default, Clone, Copy)]
        pub(crate) struct LocalStats {
            $(pub(crate) $name: u64,)*
        }

        const NSTAT: usize = [$(stringify!($name)),*].len();

        impl LocalStats {
            fn to_array(self) -> [u64; NSTAT] {
                [$(self.$name),*]
            }
        }

        impl CoreShared {
            pub(crate) fn snapshot(&self) -> CoreStats {
                let mut v = self.v.iter().map(|a| a.load(Ordering::Relaxed));
                CoreStats {
                    core_index: self.core_index,
                    cpu: self.cpu,
                    refused_limit: self.refused_limit.load(Ordering::Relaxed),
                    $($name: v.next().unwrap_or(0),)*
                }
            }
        }
    };
}

core_stats! {
    /// Loop iterations that handled at least one completion.
    busy_loops,
    /// Loop iterations that found nothing to do.
    idle_loops,
    /// `io_uring_enter` calls.
    enters,
    /// Connections registered on this core and not yet freed (closing ones
    /// included).
    connections,
    connections_total,
    /// Open connections of this core not yet established
    /// ([`crate::ConnIo::set_established`]).
    unestablished,
    bytes_rx,
    bytes_tx,
    recv_ops,
    send_ops,
    storage_ops,
    /// Receives that returned data through a direct `recv` (poll mode; also
    /// counted in `recv_ops`).
    direct_recv_ops,
    /// Receives that went into a handler's sink ([`crate::Handler::recv_sink`]
    /// or [`crate::Handler::recv_sink_armed`]; also counted in `recv_ops`).
    sink_recv_ops,
    /// New sockets refused because the engine was shutting down.
    refused_shutdown,
    /// New sockets the handler factory refused (`create` returned `None`).
    refused_handler,
    /// New sockets refused because their receive buffer could not be mapped.
    refused_nomem,
    /// Connections evicted that had never sent a byte.
    evicted_silent,
    /// Connections evicted that had sent bytes but were not established.
    evicted_unestablished,
    /// Eviction requests that found nothing left to evict (a race with
    /// establishment or close; the engine-wide count may then exceed its
    /// limit by one until the next admission evicts again).
    evict_missed,
    /// Bytes of receive buffer mappings of this core (small buffers, large
    /// buffers in use and free in the pool). Pages never received into cost
    /// no memory, so RSS is lower.
    rx_mapped_bytes,
    /// Large receive buffers lent to connections.
    rx_large_in_use,
    /// Large receive buffers kept free for reuse (at most `recv_pool_free_max`).
    rx_large_free,
    /// Reservations ([`crate::ConnIo::rx_reserve`]) granted with a large buffer.
    rx_reserve_granted,
    /// Attempts to grant a reservation that found the pool at
    /// `recv_pool_bytes_max` (one per flush of a waiting connection).
    rx_reserve_denied,
    /// Large buffers lent for receive bursts (no reservation: the receives
    /// kept filling the small buffer).
    rx_burst_granted,
    /// Burst buffers given back because their connection went idle
    /// ([`crate::RX_BURST_IDLE_MS`]).
    rx_idle_reclaims,
    /// Connections not receiving while they wait for a large buffer.
    rx_parked,
    /// Deadline entries in the timer heap (live and stale).
    timer_entries,
    /// Connections ticked every `tick_ms` ([`crate::Wakeup::EveryTick`]).
    tick_conns,
    /// `on_tick` calls for [`crate::Wakeup::At`] deadlines.
    deadline_ticks,
    /// `on_tick` calls of the every-tick list.
    periodic_ticks,
    /// Connections whose send buffers gave capacity back.
    tx_trims,
    /// TLS handshakes finished (both sides).
    tls_handshakes,
    /// TLS sessions that failed (handshake or record; the peer's alert
    /// included).
    tls_failures,
    /// Connections to a listener that requires TLS whose first bytes were
    /// not a TLS handshake.
    tls_refused_plain,
    /// Plaintext bytes decrypted for handlers.
    tls_bytes_decrypted,
    /// Plaintext bytes encrypted from handlers' output.
    tls_bytes_encrypted,
}

pub(crate) struct CoreShared {
    core_index: usize,
    cpu: Option<usize>,
    v: [AtomicU64; NSTAT],
    /// Sockets handed to this core by acceptors and not yet registered or refused
    /// (control path only: once per connection).
    pub(crate) pending_handoffs: AtomicU64,
    /// Registered connections, kept current on every registration and free
    /// (the acceptors' load estimate).
    pub(crate) live: AtomicU64,
    /// Incremented by acceptors.
    pub(crate) refused_limit: AtomicU64,
    /// What acceptors need to choose eviction victims.
    pub(crate) eviction: EvictionInfo,
}

impl CoreShared {
    pub(crate) fn new(core_index: usize, cpu: Option<usize>) -> Self {
        CoreShared {
            core_index,
            cpu,
            v: std::array::from_fn(|_| AtomicU64::new(0)),
            pending_handoffs: AtomicU64::new(0),
            live: AtomicU64::new(0),
            refused_limit: AtomicU64::new(0),
            eviction: EvictionInfo::default(),
        }
    }
    /// Load estimate used by acceptors: live connections + pending handoffs.
    pub(crate) fn load(&self) -> u64 {
        self.live.load(Ordering::Relaxed) + self.pending_handoffs.load(Ordering::Relaxed)
    }
    pub(crate) fn publish(&self, s: &LocalStats) {
        for (d, x) in self.v.iter().zip(s.to_array()) {
            d.store(x, Ordering::Relaxed);
        }
    }
}
