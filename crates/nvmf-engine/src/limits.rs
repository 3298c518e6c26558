//! Connection admission: engine-wide limits, probation and eviction.
//!
//! Every accepted connection starts unestablished (on probation) until its
//! handler calls [`crate::ConnIo::set_established`]. Two engine-wide counts
//! (atomics, touched once per accept, establishment and close, never per
//! I/O) bound open connections (`connections_max`) and unestablished ones
//! (`unestablished_max`). An acceptor reserves a place for a new socket
//! first; where that goes over a limit it asks the core holding the oldest
//! connection that never sent a byte (else the oldest unestablished one) to
//! evict it, and refuses the socket only when nothing is evictable. A core
//! evicts only its own connections, in registration order, found in O(1)
//! amortized through two queues with lazily dropped stale entries.
//!
//! Counting: a new socket below both limits takes a place in the
//! engine-wide counts (compare-and-swap, so it never takes one beyond a
//! limit); at a limit it takes the place of the victim it asks a core to
//! evict, so the counts do not change. The victim's close then does not
//! count again. A request that finds nothing left to evict on its core (the
//! victim got established or closed meanwhile: a miss, counted in
//! `CoreStats::evict_missed`) puts the victim's place back, which is the only
//! way a count exceeds its limit; the next admission evicts for the excess
//! too (at most [`EVICTIONS_PER_ADMISSION_MAX`] victims), so it does not
//! accumulate. Sockets of victims not yet closed are at most
//! [`EVICTIONS_PENDING_MAX`] engine-wide: admission waits for the cores
//! beyond that.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicIsize, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use nvmf_proto::log_limit::LogLimiter;

use crate::stats::CoreShared;

/// Evictions one admission may request (more than one only to repair an
/// excess left by a race).
pub(crate) const EVICTIONS_PER_ADMISSION_MAX: usize = 4;
/// Eviction requests sent to cores and not yet handled, engine-wide, beyond
/// which admission waits (an evicted connection holds its socket until its
/// core handles the request, so this bounds how far the sockets held can
/// exceed `connections_max` while cores lag behind a flood).
pub const EVICTIONS_PENDING_MAX: usize = 64;
/// How long admission waits for cores to work pending evictions off before
/// refusing the socket.
pub(crate) const EVICTIONS_PENDING_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// Engine-wide counts, shared by acceptors, [`crate::Engine::connect`] and cores.
pub(crate) struct Admission {
    pub(crate) connections_max: usize,
    pub(crate) unestablished_max: usize,
    /// Open connections (not yet closing) plus sockets reserved for a core
    /// and not yet registered or refused there, minus eviction requests not
    /// yet handled (signed: a race may take it below the truth for a moment).
    open: AtomicIsize,
    /// The unestablished part of `open`, likewise.
    unestablished: AtomicIsize,
}

/// What one core publishes for acceptors choosing an eviction victim.
#[derive(Default)]
pub(crate) struct EvictionInfo {
    silent: AtomicUsize,
    unestablished: AtomicUsize,
    oldest_silent_us: AtomicU64,
    oldest_unestablished_us: AtomicU64,
    /// Eviction requests sent to the core and not yet handled.
    pub(crate) evict_pending: AtomicUsize,
}

/// Outcome of [`Admission::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// A place is reserved (after `evictions` eviction requests).
    Admitted { evictions: usize },
    /// A limit is reached and nothing is evictable: close the socket.
    Refused,
}

impl Admission {
    pub(crate) fn new(connections_max: usize, unestablished_max: usize) -> Admission {
        assert!(connections_max > 0 && unestablished_max > 0);
        Admission { connections_max, unestablished_max, open: AtomicIsize::new(0), unestablished: AtomicIsize::new(0) }
    }

    /// Reserve a place for a new connection (`established`: outbound). Where
    /// a limit would be exceeded, ask cores to evict (`evict(core)` sends the
    /// request; false if the core is gone). While [`EVICTIONS_PENDING_MAX`]
    /// requests are pending, waits up to [`EVICTIONS_PENDING_WAIT`] for the
    /// cores (acceptor threads and `Engine::connect` callers only, never a
    /// core), then refuses.
    pub(crate) fn admit<'a>(
        &self,
        established: bool,
        cores: usize,
        info: impl Fn(usize) -> &'a EvictionInfo,
        mut evict: impl FnMut(usize) -> bool,
    ) -> Admit {
        if evictions_pending(cores, &info) >= EVICTIONS_PENDING_MAX {
            let started = std::time::Instant::now();
            while evictions_pending(cores, &info) >= EVICTIONS_PENDING_MAX {
                if started.elapsed() >= EVICTIONS_PENDING_WAIT {
                    return Admit::Refused;
                }
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
        }
        let took_open = take_place(&self.open, self.connections_max);
        let took_unestablished = established || (took_open && take_place(&self.unestablished, self.unestablished_max));
        if took_open && took_unestablished {
            return Admit::Admitted { evictions: 0 };
        }
        if took_open {
            self.open.fetch_sub(1, Ordering::AcqRel);
        }
        // At a limit: the new connection takes the place of the oldest
        // evictable one (the counts do not change).
        let Some(core) = pick_victim_core(cores, &info) else { return Admit::Refused };
        info(core).evict_pending.fetch_add(1, Ordering::AcqRel);
        if !evict(core) {
            info(core).evict_pending.fetch_sub(1, Ordering::AcqRel);
            return Admit::Refused;
        }
        if established {
            // An outbound connection needs no unestablished place.
            self.unestablished.fetch_sub(1, Ordering::AcqRel);
        }
        // A count above its limit (left by a miss) is repaired by evicting more.
        let mut evictions = 1;
        while evictions < EVICTIONS_PER_ADMISSION_MAX
            && (self.open.load(Ordering::Acquire) > self.connections_max as isize
                || self.unestablished.load(Ordering::Acquire) > self.unestablished_max as isize)
        {
            let Some(core) = pick_victim_core(cores, &info) else { break };
            info(core).evict_pending.fetch_add(1, Ordering::AcqRel);
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.unestablished.fetch_sub(1, Ordering::AcqRel);
            if !evict(core) {
                self.evict_missed();
                info(core).evict_pending.fetch_sub(1, Ordering::AcqRel);
                break;
            }
            evictions += 1;
        }
        Admit::Admitted { evictions }
    }

    /// Give back the place of a socket admitted by [`admit`](Self::admit)
    /// and not registered after all, or of a connection that starts closing.
    pub(crate) fn release(&self, established: bool) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        if !established {
            self.unestablished.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// An unestablished connection got established.
    fn established(&self) {
        self.unestablished.fetch_sub(1, Ordering::AcqRel);
    }

    /// An eviction request found no victim: its place comes back.
    fn evict_missed(&self) {
        self.open.fetch_add(1, Ordering::AcqRel);
        self.unestablished.fetch_add(1, Ordering::AcqRel);
    }

    /// (open, unestablished) right now, net of pending evictions.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let get = |a: &AtomicIsize| a.load(Ordering::Acquire).max(0) as usize;
        (get(&self.open), get(&self.unestablished))
    }
}

/// Eviction requests sent to cores and not yet handled.
pub(crate) fn evictions_pending<'a>(cores: usize, info: impl Fn(usize) -> &'a EvictionInfo) -> usize {
    (0..cores).map(|i| info(i).evict_pending.load(Ordering::Acquire)).sum()
}

impl Admission {}

/// Take one place of `count` if it is below `max`.
fn take_place(count: &AtomicIsize, max: usize) -> bool {
    count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| (v < max as isize).then_some(v + 1)).is_ok()
}

/// The core with the oldest evictable connection that never sent a byte,
/// else the one with the oldest unestablished connection (counting requests
/// already sent against what a core has).
fn pick_victim_core<'a>(cores: usize, info: &impl Fn(usize) -> &'a EvictionInfo) -> Option<usize> {
    let oldest = |count: fn(&EvictionInfo) -> (usize, u64)| {
        (0..cores)
            .filter_map(|i| {
                let e = info(i);
                let (n, at_us) = count(e);
                (n > e.evict_pending.load(Ordering::Acquire)).then_some((at_us, i))
            })
            .min()
            .map(|(_, i)| i)
    };
    oldest(|e| (e.silent.load(Ordering::Acquire), e.oldest_silent_us.load(Ordering::Acquire))).or_else(|| {
        oldest(|e| (e.unestablished.load(Ordering::Acquire), e.oldest_unestablished_us.load(Ordering::Acquire)))
    })
}

/// Per-connection admission state.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnAdmission {
    pub(crate) established: bool,
    /// The peer sent at least one byte.
    pub(crate) heard: bool,
    /// Still counted in the engine-wide counts (until it starts closing).
    pub(crate) counted: bool,
    /// Chosen by an eviction request, which already took it off the counts.
    pub(crate) evicted: bool,
    /// Engine µs of registration (orders eviction victims across cores).
    pub(crate) since_us: u64,
}

impl ConnAdmission {
    fn silent(&self) -> bool {
        self.counted && !self.established && !self.heard
    }
    fn unestablished(&self) -> bool {
        self.counted && !self.established
    }
}

/// Which kind of connection an eviction hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EvictKind {
    /// Never sent a byte.
    Silent,
    /// Sent bytes, not established.
    Unestablished,
}

/// A core's view: its unestablished connections in registration order.
pub(crate) struct CoreLimits {
    admission: Arc<Admission>,
    shared: Arc<CoreShared>,
    /// (slot, connection id, registration µs); stale entries are dropped
    /// from the front lazily and by compaction.
    silent_q: VecDeque<(u32, u64, u64)>,
    unestablished_q: VecDeque<(u32, u64, u64)>,
    silent: usize,
    unestablished: usize,
    /// Eviction requests handled since the last publish (acceptors see them
    /// handled together with the counts they changed).
    evictions_handled: usize,
    /// Something acceptors see changed since the last publish.
    changed: bool,
    /// Refusal and eviction warnings of this core.
    pub(crate) log: LogLimiter,
}

impl CoreLimits {
    pub(crate) fn new(admission: Arc<Admission>, shared: Arc<CoreShared>) -> CoreLimits {
        CoreLimits {
            admission,
            shared,
            silent_q: VecDeque::new(),
            unestablished_q: VecDeque::new(),
            silent: 0,
            unestablished: 0,
            evictions_handled: 0,
            changed: true,
            log: LogLimiter::default(),
        }
    }

    pub(crate) fn admission(&self) -> &Admission {
        &self.admission
    }

    /// Open unestablished connections of this core.
    pub(crate) fn unestablished(&self) -> usize {
        self.unestablished
    }

    /// A connection was registered (its place was reserved by [`Admission::admit`]).
    pub(crate) fn on_register(&mut self, slot: u32, id: u64, now_us: u64, established: bool) -> ConnAdmission {
        if !established {
            self.silent_q.push_back((slot, id, now_us));
            self.unestablished_q.push_back((slot, id, now_us));
            self.silent += 1;
            self.unestablished += 1;
            self.changed = true;
        }
        ConnAdmission { established, heard: false, counted: true, evicted: false, since_us: now_us }
    }

    /// The peer sent its first byte.
    pub(crate) fn on_heard(&mut self, a: &mut ConnAdmission) {
        if a.silent() {
            self.silent -= 1;
            self.changed = true;
        }
        a.heard = true;
    }

    pub(crate) fn on_established(&mut self, a: &mut ConnAdmission) {
        if a.unestablished() {
            if !a.heard {
                self.silent -= 1;
            }
            self.unestablished -= 1;
            self.admission.established();
            self.changed = true;
        }
        a.established = true;
    }

    /// The connection starts closing: it no longer counts.
    pub(crate) fn on_close(&mut self, a: &mut ConnAdmission) {
        if !a.counted {
            return;
        }
        if a.unestablished() {
            if !a.heard {
                self.silent -= 1;
            }
            self.unestablished -= 1;
        }
        if !a.evicted {
            self.admission.release(a.established);
        }
        a.counted = false;
        self.changed = true;
    }

    /// An eviction request was handled: `victim` is the connection it
    /// closes next (`None`: nothing was left to evict).
    pub(crate) fn on_eviction_handled(&mut self, victim: Option<&mut ConnAdmission>) {
        match victim {
            Some(a) => {
                debug_assert!(a.unestablished() && !a.evicted);
                a.evicted = true;
            }
            None => self.admission.evict_missed(),
        }
        self.evictions_handled += 1;
        self.changed = true;
    }

    /// The oldest connection to evict: never heard first, then unestablished.
    /// `lookup(slot, id)` gives the admission state of a live connection.
    pub(crate) fn victim(&mut self, lookup: impl Fn(u32, u64) -> Option<ConnAdmission>) -> Option<(u32, EvictKind)> {
        if let Some((slot, _)) = front_valid(&mut self.silent_q, |s, id| lookup(s, id).is_some_and(|a| a.silent())) {
            return Some((slot, EvictKind::Silent));
        }
        front_valid(&mut self.unestablished_q, |s, id| lookup(s, id).is_some_and(|a| a.unestablished()))
            .map(|(slot, _)| (slot, EvictKind::Unestablished))
    }

    /// Publish what changed for acceptors (once per loop iteration):
    /// eviction requests handled, then counts and oldest registration times.
    /// A reader between the two over-estimates what is evictable (at worst
    /// an eviction request that finds nothing, a miss the next admission
    /// repairs), never under-estimates it (a refusal). Compacts the queues
    /// when stale entries dominate.
    pub(crate) fn publish(&mut self, lookup: impl Fn(u32, u64) -> Option<ConnAdmission>) {
        if !self.changed {
            return;
        }
        self.changed = false;
        let silent = |s: u32, id: u64| lookup(s, id).is_some_and(|a| a.silent());
        let unestablished = |s: u32, id: u64| lookup(s, id).is_some_and(|a| a.unestablished());
        if self.silent_q.len() > 2 * self.silent + 64 {
            self.silent_q.retain(|&(s, id, _)| silent(s, id));
        }
        if self.unestablished_q.len() > 2 * self.unestablished + 64 {
            self.unestablished_q.retain(|&(s, id, _)| unestablished(s, id));
        }
        let oldest_silent = front_valid(&mut self.silent_q, silent).map_or(u64::MAX, |(_, ms)| ms);
        let oldest_unestablished = front_valid(&mut self.unestablished_q, unestablished).map_or(u64::MAX, |(_, ms)| ms);
        let e = &self.shared.eviction;
        e.evict_pending.fetch_sub(std::mem::take(&mut self.evictions_handled), Ordering::AcqRel);
        e.silent.store(self.silent, Ordering::Release);
        e.unestablished.store(self.unestablished, Ordering::Release);
        e.oldest_silent_us.store(oldest_silent, Ordering::Release);
        e.oldest_unestablished_us.store(oldest_unestablished, Ordering::Release);
    }
}

/// Drop stale entries from the front; the first valid one's (slot, µs).
fn front_valid(q: &mut VecDeque<(u32, u64, u64)>, valid: impl Fn(u32, u64) -> bool) -> Option<(u32, u64)> {
    while let Some(&(slot, id, ms)) = q.front() {
        if valid(slot, id) {
            return Some((slot, ms));
        }
        q.pop_front();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn infos(n: usize) -> Vec<EvictionInfo> {
        (0..n).map(|_| EvictionInfo::default()).collect()
    }

    /// Admit an unestablished connection over the cores of `i`, granting
    /// every eviction asked for and recording its core in `evicted`.
    fn admit_evicting(a: &Admission, i: &[EvictionInfo], evicted: &mut Vec<usize>) -> Admit {
        a.admit(
            false,
            i.len(),
            |k| &i[k],
            |core| {
                evicted.push(core);
                true
            },
        )
    }

    #[test]
    fn admits_below_the_limits_without_evicting() {
        let a = Admission::new(2, 2);
        let i = infos(1);
        assert_eq!(a.admit(false, 1, |k| &i[k], |_| panic!("no eviction")), Admit::Admitted { evictions: 0 });
        assert_eq!(a.admit(true, 1, |k| &i[k], |_| panic!("no eviction")), Admit::Admitted { evictions: 0 });
        assert_eq!(a.counts(), (2, 1));
    }

    #[test]
    fn refuses_at_the_limit_when_nothing_is_evictable() {
        let a = Admission::new(1, 1);
        let i = infos(2);
        assert_eq!(a.admit(false, 2, |k| &i[k], |_| true), Admit::Admitted { evictions: 0 });
        assert_eq!(a.admit(false, 2, |k| &i[k], |_| true), Admit::Refused);
        assert_eq!(a.counts(), (1, 1), "a refusal gives its reservation back");
    }

    #[test]
    fn evicts_the_oldest_silent_first_then_the_oldest_unestablished() {
        let a = Admission::new(2, 100);
        let i = infos(3);
        i[0].unestablished.store(1, Ordering::Relaxed);
        i[0].oldest_unestablished_us.store(5, Ordering::Relaxed);
        i[1].silent.store(1, Ordering::Relaxed);
        i[1].unestablished.store(1, Ordering::Relaxed);
        i[1].oldest_silent_us.store(50, Ordering::Relaxed);
        i[2].silent.store(2, Ordering::Relaxed);
        i[2].unestablished.store(2, Ordering::Relaxed);
        i[2].oldest_silent_us.store(40, Ordering::Relaxed);
        a.open.store(2, Ordering::Relaxed);
        a.unestablished.store(2, Ordering::Relaxed);
        let mut sent = Vec::new();
        for _ in 0..4 {
            admit_evicting(&a, &i, &mut sent);
        }
        // Core 2 has two silent (oldest 40), then core 1, then only
        // unestablished ones are left (core 0, and core 1's which is its silent one).
        assert_eq!(sent, vec![2, 2, 1, 0]);
        assert_eq!(a.admit(false, 3, |k| &i[k], |_| true), Admit::Refused);
    }

    #[test]
    fn pending_evictions_count_as_done() {
        let a = Admission::new(1, 10);
        let i = infos(1);
        i[0].silent.store(5, Ordering::Relaxed);
        i[0].unestablished.store(5, Ordering::Relaxed);
        a.open.store(1, Ordering::Relaxed);
        a.unestablished.store(1, Ordering::Relaxed);
        let mut sent = Vec::new();
        admit_evicting(&a, &i, &mut sent);
        assert_eq!(sent.len(), 1);
        // The first request is not handled yet: one more admission needs one
        // more eviction, not two.
        admit_evicting(&a, &i, &mut sent);
        assert_eq!(sent.len(), 2);
        assert_eq!(i[0].evict_pending.load(Ordering::Relaxed), 2);
    }
}
