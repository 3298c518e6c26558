//! Receive buffers: anonymous mappings (never malloc), one small buffer per
//! connection for life, and large ones from a per-core pool while a
//! connection needs them.
//!
//! Why mappings: glibc serves large `malloc`s from arenas that are never
//! given back once its dynamic mmap threshold moved, so waves of idle
//! connections used to leave the process at its peak RSS for good. An
//! untouched anonymous mapping costs no RSS, and `munmap` returns it at once.

use std::collections::VecDeque;
use std::io;
use std::ptr::NonNull;

use nvmf_proto::copy::copy_raw;

use crate::timer::DueQueue;
use crate::EngineConfig;

/// A large buffer taken for receive bursts (no reservation) goes back to the
/// pool after this many receives in a row that the small buffer could have
/// taken (at most half of it each).
pub const RX_CALM_RECVS_MAX: u32 = 8;

/// A large buffer taken for a receive burst goes back to the pool once its
/// connection has received nothing for this long (checked every tick; an
/// armed receive into it is cancelled and re-armed on the small buffer).
pub const RX_BURST_IDLE_MS: u64 = 100;

/// An anonymous private mapping, read-write.
pub(crate) struct MmapBuf {
    ptr: NonNull<u8>,
    len: usize,
}

impl MmapBuf {
    fn map(len: usize) -> io::Result<MmapBuf> {
        assert!(len > 0, "empty mapping");
        // SAFETY: a fresh anonymous private mapping; no fd, no fixed address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        match NonNull::new(p as *mut u8) {
            Some(ptr) => Ok(MmapBuf { ptr, len }),
            None => {
                // Address 0 is only possible with vm.mmap_min_addr = 0; we
                // do not hand out null pointers.
                // SAFETY: the mapping we just made.
                unsafe { libc::munmap(p, len) };
                Err(io::Error::new(io::ErrorKind::OutOfMemory, "mmap returned address 0"))
            }
        }
    }
    #[inline]
    fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    #[inline]
    fn len(&self) -> usize {
        self.len
    }
}

impl Drop for MmapBuf {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once; nothing references it any
        // more (the engine frees buffers only when no receive is in flight).
        unsafe { libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.len) };
    }
}

/// A connection's receive buffer: `[start..end)` of the active buffer (the
/// small one, or a large one from the pool) holds unconsumed bytes,
/// `[end..cap)` is where the next receive lands.
pub(crate) struct RxBuf {
    /// Active buffer: `small` or `large`.
    ptr: *mut u8,
    cap: usize,
    start: usize,
    end: usize,
    small: MmapBuf,
    large: Option<MmapBuf>,
    /// Room the handler asked for ([`crate::ConnIo::rx_reserve`]); 0 = none.
    /// Cleared before every `on_recv`.
    pub(crate) reserve_bytes: usize,
    /// Not receiving: the small buffer is full and a reservation was not
    /// granted yet.
    pub(crate) parked: bool,
    /// Listed in the pool's waiters (at most once).
    pub(crate) waiting: bool,
    /// The large buffer was taken for a burst, not for a reservation.
    large_for_burst: bool,
    /// The last receive into the small buffer filled all it was offered.
    burst: bool,
    /// Receives in a row on a large buffer that the small one could have taken.
    calm_recvs: u32,
    /// Listed in the pool's burst holders (idle check every tick).
    pub(crate) burst_listed: bool,
}

impl RxBuf {
    fn new(small: MmapBuf) -> RxBuf {
        RxBuf {
            ptr: small.ptr(),
            cap: small.len(),
            start: 0,
            end: 0,
            small,
            large: None,
            reserve_bytes: 0,
            parked: false,
            waiting: false,
            large_for_burst: false,
            burst: false,
            calm_recvs: 0,
            burst_listed: false,
        }
    }
    #[inline]
    pub(crate) fn data(&self) -> &[u8] {
        // SAFETY: [start..end) lies within the active buffer (start <= end <= cap)
        // and was written by receives (mappings are zero-filled anyway); no
        // receive writes there (receives only land in [end..cap)).
        unsafe { std::slice::from_raw_parts(self.ptr.add(self.start), self.end - self.start) }
    }
    #[inline]
    pub(crate) fn consume(&mut self, n: usize) {
        assert!(n <= self.end - self.start, "consume({n}) beyond rx data ({})", self.end - self.start);
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }
    #[inline]
    pub(crate) fn capacity(&self) -> usize {
        self.cap
    }
    #[inline]
    fn unconsumed(&self) -> usize {
        self.end - self.start
    }
    #[inline]
    pub(crate) fn is_full_unconsumed(&self) -> bool {
        self.start == 0 && self.end == self.cap
    }
    /// Move the partial remainder to the front when the free tail is under
    /// half. Then a partial PDU at the front can always grow to the whole
    /// buffer. Only while no receive is in flight.
    #[inline]
    pub(crate) fn compact(&mut self) {
        if self.start > 0 && self.cap - self.end < self.cap / 2 {
            // SAFETY: both ranges lie within the active buffer; ptr::copy is memmove.
            unsafe { std::ptr::copy(self.ptr.add(self.start), self.ptr, self.end - self.start) };
            self.end -= self.start;
            self.start = 0;
        }
    }
    /// Where the next receive lands: the free tail.
    #[inline]
    pub(crate) fn tail(&mut self) -> (*mut u8, usize) {
        // SAFETY: end <= cap.
        (unsafe { self.ptr.add(self.end) }, self.cap - self.end)
    }
    /// Holds a large buffer taken for a burst (not for a reservation).
    #[inline]
    pub(crate) fn holds_burst_buffer(&self) -> bool {
        self.large.is_some() && self.large_for_burst
    }
    /// The connection went idle: its burst buffer goes back at the next
    /// decision (if its unconsumed bytes fit).
    pub(crate) fn calm_down(&mut self) {
        self.calm_recvs = RX_CALM_RECVS_MAX;
    }
    /// `n` bytes of plaintext were decrypted into the tail (TLS): no burst
    /// accounting, the socket is read into the TLS landing buffer instead.
    #[inline]
    pub(crate) fn commit_decrypted(&mut self, n: usize) {
        assert!(n <= self.cap - self.end, "decrypted beyond the rx tail");
        self.end += n;
    }
    /// `n` bytes were received into the tail, which offered `offered` bytes.
    #[inline]
    pub(crate) fn commit(&mut self, n: usize, offered: usize) {
        assert!(n <= offered && offered <= self.cap - self.end, "receive beyond the rx tail");
        self.end += n;
        let small = self.small.len();
        if self.large.is_none() {
            // More is probably waiting: the next receive may go to a large buffer.
            self.burst = n == offered && offered >= small / 4;
        } else if n > small / 2 {
            self.calm_recvs = 0;
        } else {
            self.calm_recvs = self.calm_recvs.saturating_add(1);
        }
    }
}

/// What [`RxPool::prepare`] decided for the next receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RxReady {
    /// Receive into [`RxBuf::tail`].
    Ready,
    /// Full of unconsumed bytes, waiting for a large buffer: no receive.
    Park,
    /// Full of unconsumed bytes, nothing to wait for: close.
    Overflow,
}

/// Per-core receive memory: small buffers are mapped per connection, large
/// ones are lent from here.
pub(crate) struct RxPool {
    small_bytes: usize,
    /// 0 when large buffers would not be larger than small ones.
    large_bytes: usize,
    free: Vec<MmapBuf>,
    free_max: usize,
    in_use_bytes: usize,
    in_use_bytes_max: usize,
    page_bytes: usize,
    /// Parked connections (slot, connection id) in arrival order; stale
    /// entries are skipped.
    waiters: VecDeque<(u32, u64)>,
    /// Bytes of all receive mappings of the core (small, large in use, free).
    pub(crate) mapped_bytes: u64,
    pub(crate) large_in_use: u64,
    pub(crate) reserve_granted: u64,
    pub(crate) reserve_denied: u64,
    pub(crate) burst_granted: u64,
    pub(crate) parked: u64,
    /// Connections holding a burst buffer, to check for idleness.
    pub(crate) burst_holders: DueQueue,
}

impl RxPool {
    pub(crate) fn new(cfg: &EngineConfig) -> RxPool {
        let large = cfg.recv_buf_large_effective_bytes();
        // SAFETY: plain syscall.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        RxPool {
            small_bytes: cfg.recv_buf_bytes,
            // No large buffers if they would not be larger, or if the cap
            // leaves no room for one (reservations then fail at once rather
            // than park for ever).
            large_bytes: if large > cfg.recv_buf_bytes && large <= cfg.recv_pool_bytes_max { large } else { 0 },
            free: Vec::new(),
            free_max: cfg.recv_pool_free_max,
            in_use_bytes: 0,
            in_use_bytes_max: cfg.recv_pool_bytes_max,
            page_bytes: if page > 0 { page as usize } else { 4096 },
            waiters: VecDeque::new(),
            mapped_bytes: 0,
            large_in_use: 0,
            reserve_granted: 0,
            reserve_denied: 0,
            burst_granted: 0,
            parked: 0,
            burst_holders: DueQueue::default(),
        }
    }

    fn mapped(&self, len: usize) -> u64 {
        len.div_ceil(self.page_bytes) as u64 * self.page_bytes as u64
    }

    /// A new connection's receive buffer.
    pub(crate) fn new_rx(&mut self) -> io::Result<RxBuf> {
        let small = MmapBuf::map(self.small_bytes)?;
        self.mapped_bytes += self.mapped(small.len());
        Ok(RxBuf::new(small))
    }

    /// A freed connection's receive buffer: a large one goes back to the
    /// pool, the small one is unmapped. No receive may be in flight into it.
    pub(crate) fn release(&mut self, rx: RxBuf) {
        let RxBuf { small, large, parked, .. } = rx;
        if parked {
            self.parked -= 1;
        }
        if let Some(l) = large {
            self.give_large(l);
        }
        self.mapped_bytes -= self.mapped(small.len());
        drop(small);
    }

    fn take_large(&mut self, for_burst: bool) -> Option<MmapBuf> {
        // Bursts (no reservation) leave half of the cap to reservations.
        let cap = if for_burst { self.in_use_bytes_max / 2 } else { self.in_use_bytes_max };
        if self.large_bytes == 0 || self.in_use_bytes + self.large_bytes > cap {
            return None;
        }
        let b = match self.free.pop() {
            Some(b) => b,
            None => {
                let b = MmapBuf::map(self.large_bytes).ok()?;
                self.mapped_bytes += self.mapped(b.len());
                b
            }
        };
        assert_eq!(b.len(), self.large_bytes);
        self.in_use_bytes += self.large_bytes;
        self.large_in_use += 1;
        Some(b)
    }

    fn give_large(&mut self, b: MmapBuf) {
        assert!(self.in_use_bytes >= b.len() && self.large_in_use > 0, "large buffer returned twice");
        self.in_use_bytes -= b.len();
        self.large_in_use -= 1;
        if self.free.len() < self.free_max {
            self.free.push(b);
        } else {
            self.mapped_bytes -= self.mapped(b.len());
            drop(b);
        }
    }

    /// Move `rx` to a large buffer (copying its unconsumed bytes). Only
    /// while no receive is in flight into it.
    fn promote(&mut self, rx: &mut RxBuf, for_burst: bool) -> bool {
        debug_assert!(rx.large.is_none());
        let Some(large) = self.take_large(for_burst) else { return false };
        let n = rx.unconsumed();
        assert!(n <= large.len());
        // SAFETY: the source lies within the active (small) buffer, the
        // destination is a different mapping of at least n bytes.
        unsafe { copy_raw(large.ptr(), rx.ptr.add(rx.start), n) };
        rx.ptr = large.ptr();
        rx.cap = large.len();
        rx.start = 0;
        rx.end = n;
        rx.large = Some(large);
        rx.large_for_burst = for_burst;
        rx.burst = false;
        rx.calm_recvs = 0;
        true
    }

    /// Back to the small buffer (the unconsumed bytes must fit). Only while
    /// no receive is in flight into it.
    fn demote(&mut self, rx: &mut RxBuf) {
        let n = rx.unconsumed();
        assert!(n <= rx.small.len(), "demoting {n} unconsumed bytes into a small buffer");
        let Some(large) = rx.large.take() else { return };
        // SAFETY: the source lies within the large buffer, the destination is
        // the small mapping, which holds n bytes.
        unsafe { copy_raw(rx.small.ptr(), large.ptr().add(rx.start), n) };
        rx.ptr = rx.small.ptr();
        rx.cap = rx.small.len();
        rx.start = 0;
        rx.end = n;
        rx.large_for_burst = false;
        rx.burst = false;
        rx.calm_recvs = 0;
        self.give_large(large);
    }

    /// Decide the next receive of connection `(slot, id)` at `now_ms`: grant
    /// or return a large buffer, compact, and check for a full buffer. Only
    /// while no receive is in flight into `rx`.
    pub(crate) fn prepare(&mut self, rx: &mut RxBuf, slot: u32, id: u64, now_ms: u64) -> RxReady {
        let small = self.small_bytes;
        if self.large_bytes > 0 {
            if rx.large.is_none() {
                if rx.reserve_bytes > rx.cap {
                    if rx.reserve_bytes <= self.large_bytes {
                        if self.promote(rx, false) {
                            self.reserve_granted += 1;
                        } else {
                            self.reserve_denied += 1;
                        }
                    }
                } else if rx.burst && self.promote(rx, true) {
                    self.burst_granted += 1;
                    if !rx.burst_listed {
                        rx.burst_listed = true;
                        self.burst_holders.push(slot, id, now_ms + RX_BURST_IDLE_MS);
                    }
                }
            } else if rx.reserve_bytes > small {
                // Held for a reservation now, whatever it was taken for.
                rx.large_for_burst = false;
            } else if rx.unconsumed() <= small / 2 && (!rx.large_for_burst || rx.calm_recvs >= RX_CALM_RECVS_MAX) {
                self.demote(rx);
            }
        }
        rx.compact();
        if rx.is_full_unconsumed() {
            if rx.reserve_bytes > rx.cap && rx.reserve_bytes <= self.large_bytes {
                if !rx.parked {
                    rx.parked = true;
                    self.parked += 1;
                }
                if !rx.waiting {
                    rx.waiting = true;
                    self.waiters.push_back((slot, id));
                }
                return RxReady::Park;
            }
            return RxReady::Overflow;
        }
        if rx.parked {
            // Room again (the handler consumed, or a buffer was granted).
            rx.parked = false;
            self.parked -= 1;
        }
        RxReady::Ready
    }

    /// The next waiting connection to retry, when a reservation could be
    /// granted now (possibly stale: the caller checks the connection id and
    /// clears its [`RxBuf::waiting`]).
    pub(crate) fn next_waiter(&mut self) -> Option<(u32, u64)> {
        if self.waiters.is_empty() || self.in_use_bytes + self.large_bytes > self.in_use_bytes_max {
            return None;
        }
        let w = self.waiters.pop_front();
        if self.waiters.is_empty() && self.waiters.capacity() > 64 {
            self.waiters.shrink_to(64);
        }
        w
    }

    /// Entries in the waiters list (live and stale).
    pub(crate) fn waiters_len(&self) -> usize {
        self.waiters.len()
    }

    /// Drop stale waiters (closed connections): the list stays within a
    /// constant factor of the live connections.
    pub(crate) fn retain_waiters(&mut self, mut live: impl FnMut(u32, u64) -> bool) {
        self.waiters.retain(|&(slot, id)| live(slot, id));
    }

    /// Free large buffers kept for reuse.
    pub(crate) fn large_free(&self) -> u64 {
        self.free.len() as u64
    }
}
