//! Engine configuration, core lists and thread pinning.

use std::fmt;
use std::io;
use std::str::FromStr;

use crate::EngineError;

/// Maximum number of entries in a core list.
pub const MAX_CORES: usize = 256;
/// Core ids must be below this (the size of the affinity mask used).
pub const MAX_CORE_ID: usize = 1024;

/// Consecutive empty direct receives after which a connection goes back to an
/// armed io_uring `Recv` (about 1-2 ms of spinning).
pub const DIRECT_RECV_EMPTY_MAX: u32 = 4096;
/// Upper bound of [`EngineConfig::poll_direct_recv_conns_max`].
pub const DIRECT_RECV_CONNS_MAX: usize = 1024;

/// Bounds of [`EngineConfig::recv_buf_bytes`] and
/// [`EngineConfig::recv_buf_large_bytes`].
pub const RECV_BUF_BYTES_MIN: usize = 4096;
/// See [`RECV_BUF_BYTES_MIN`].
pub const RECV_BUF_BYTES_MAX: usize = 64 << 20;
/// Upper bound of [`EngineConfig::recv_pool_free_max`].
pub const RECV_POOL_FREE_MAX: usize = 4096;
/// Upper bound of [`EngineConfig::recv_pool_bytes_max`] (per core).
pub const RECV_POOL_BYTES_MAX: usize = 64 << 30;
/// Upper bound of [`EngineConfig::connections_max`].
pub const CONNECTIONS_MAX: usize = 1_000_000;

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

/// Raise this process's `RLIMIT_NOFILE` soft limit to its hard limit (capped
/// by `/proc/sys/fs/nr_open` when the hard limit is infinite) and return the
/// new soft limit. Binaries call it at start: every connection is a file
/// descriptor, and the usual soft limit of 1024 is far below
/// [`EngineConfig::connections_max`].
pub fn raise_fd_limit() -> io::Result<u64> {
    // SAFETY: rlimit is plain data filled by the kernel.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to one rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut want = lim.rlim_max;
    if want == libc::RLIM_INFINITY {
        // The kernel refuses a soft limit above nr_open.
        want = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(1 << 20);
    }
    if lim.rlim_cur >= want {
        return Ok(lim.rlim_cur);
    }
    lim.rlim_cur = want;
    // SAFETY: valid pointer to one rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(want)
}

/// Engine configuration. See the crate docs for bounds.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// One pinned thread per entry; empty = one unpinned thread.
    pub cores: Vec<usize>,
    pub mode: Mode,
    /// Receive buffer every connection starts with and normally keeps (an
    /// anonymous mapping: an idle connection costs only the pages it
    /// received into). A PDU that does not fit needs
    /// [`ConnIo::rx_reserve`](crate::ConnIo::rx_reserve) to move the
    /// connection to a large buffer.
    pub recv_buf_bytes: usize,
    /// Size of a large receive buffer, taken from the core's pool while a
    /// connection needs it (a reservation, or receives that keep filling the
    /// small buffer). Large buffers are `max(recv_buf_large_bytes,
    /// recv_buf_bytes)`; when that is not larger than `recv_buf_bytes`, no
    /// connection ever moves.
    pub recv_buf_large_bytes: usize,
    /// Free large buffers a core keeps mapped for reuse; returned ones beyond
    /// this are unmapped.
    pub recv_pool_free_max: usize,
    /// Per core: bytes of large receive buffers in use at once. At the cap a
    /// reservation is not granted (never blocks); buffers for receive bursts
    /// (no reservation) use at most half of it. Below one large buffer, no
    /// connection ever moves to one.
    pub recv_pool_bytes_max: usize,
    /// Per-connection bound on queued tx bytes before recv is paused.
    pub send_buf_max_bytes: usize,
    /// Engine-wide cap on open connections (accepted and outbound, all
    /// cores). A new socket beyond it evicts the oldest unestablished
    /// connection, or is refused when there is none.
    pub connections_max: usize,
    /// Engine-wide cap on accepted connections whose handler has not called
    /// [`ConnIo::set_established`](crate::ConnIo::set_established); a new
    /// socket beyond it evicts the oldest of them (those that never sent a
    /// byte first).
    pub unestablished_max: usize,
    /// Period of [`Handler::on_tick`](crate::Handler::on_tick) for handlers
    /// whose [`Handler::next_wakeup`](crate::Handler::next_wakeup) is
    /// [`Wakeup::EveryTick`](crate::Wakeup::EveryTick), and of the core's
    /// housekeeping (stats, direct-receive gate, send buffer trimming).
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

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            cores: Vec::new(),
            mode: Mode::Poll,
            recv_buf_bytes: 16 * 1024,
            recv_buf_large_bytes: 256 * 1024 + 4096,
            recv_pool_free_max: 16,
            recv_pool_bytes_max: 256 << 20,
            send_buf_max_bytes: 4 * 1024 * 1024,
            connections_max: 16384,
            unestablished_max: 1024,
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
        let buf_range = RECV_BUF_BYTES_MIN..=RECV_BUF_BYTES_MAX;
        if !buf_range.contains(&self.recv_buf_bytes) {
            return bad("recv_buf_bytes must be within 4 KiB ..= 64 MiB");
        }
        if !buf_range.contains(&self.recv_buf_large_bytes) {
            return bad("recv_buf_large_bytes must be within 4 KiB ..= 64 MiB");
        }
        if self.recv_pool_free_max > RECV_POOL_FREE_MAX {
            return bad("recv_pool_free_max must be within 0 ..= 4096");
        }
        if self.recv_pool_bytes_max > RECV_POOL_BYTES_MAX {
            return bad("recv_pool_bytes_max must be within 0 ..= 64 GiB");
        }
        if self.send_buf_max_bytes < 4096 {
            return bad("send_buf_max_bytes must be >= 4 KiB");
        }
        if !(1..=CONNECTIONS_MAX).contains(&self.connections_max) {
            return bad("connections_max must be within 1 ..= 1000000");
        }
        if !(1..=self.connections_max).contains(&self.unestablished_max) {
            return bad("unestablished_max must be within 1 ..= connections_max");
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

    /// Size of a large receive buffer (see
    /// [`recv_buf_large_bytes`](Self::recv_buf_large_bytes)).
    pub fn recv_buf_large_effective_bytes(&self) -> usize {
        self.recv_buf_large_bytes.max(self.recv_buf_bytes)
    }
}
