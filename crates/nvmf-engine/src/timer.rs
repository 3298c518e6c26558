//! Handler timers: a list of connections ticked every `tick_ms`
//! ([`Wakeup::EveryTick`]) and a min-heap of deadlines ([`Wakeup::At`]).
//!
//! The heap uses lazy invalidation: a connection has an entry for the
//! earliest deadline it asked for (`ConnTimer::heap_at`); asking for a later
//! one pushes nothing (the earlier entry fires, finds the deadline moved and
//! pushes the new one); asking for an earlier one pushes a new entry and the
//! old one is skipped when it fires. So a (re)schedule costs O(1) or
//! O(log n) and idle connections cost nothing per loop. Stale entries are
//! bounded: the core rebuilds the heap from the connections when it holds
//! more than [`Timers::needs_rebuild`] allows.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use crate::Wakeup;

/// Per-connection timer state.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnTimer {
    /// [`Wakeup::EveryTick`]: ticked with the tick list.
    pub(crate) every_tick: bool,
    /// Listed in the tick list (entries of connections that left it are
    /// dropped at the next tick).
    pub(crate) in_tick_list: bool,
    /// Deadline the handler asked for last (`u64::MAX`: none).
    pub(crate) want_at: u64,
    /// Earliest deadline with an entry in the heap (`u64::MAX`: none).
    pub(crate) heap_at: u64,
    /// Engine ms of the last deadline delivered: a deadline not after it is
    /// delivered one ms later (a handler that keeps asking for the past
    /// gets at most one `on_tick` per ms).
    pub(crate) fired_ms: u64,
}

impl Default for ConnTimer {
    fn default() -> Self {
        ConnTimer { every_tick: false, in_tick_list: false, want_at: u64::MAX, heap_at: u64::MAX, fired_ms: 0 }
    }
}

/// One heap entry: deadline, slot, connection id.
type Entry = Reverse<(u64, u32, u64)>;

#[derive(Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Entry>,
    /// Connections with [`Wakeup::EveryTick`] (slot, connection id).
    pub(crate) tick_list: Vec<(u32, u64)>,
}

impl Timers {
    /// Record what the handler of `(slot, id)` answered to `next_wakeup`.
    #[inline]
    pub(crate) fn schedule(&mut self, slot: u32, id: u64, t: &mut ConnTimer, w: Wakeup) {
        match w {
            Wakeup::EveryTick => {
                t.every_tick = true;
                t.want_at = u64::MAX;
                if !t.in_tick_list {
                    t.in_tick_list = true;
                    self.tick_list.push((slot, id));
                }
            }
            Wakeup::At(ms) => {
                t.every_tick = false;
                let ms = if ms <= t.fired_ms { t.fired_ms + 1 } else { ms };
                t.want_at = ms;
                if ms < t.heap_at {
                    t.heap_at = ms;
                    self.heap.push(Reverse((ms, slot, id)));
                }
            }
            Wakeup::Never => {
                t.every_tick = false;
                t.want_at = u64::MAX;
            }
        }
    }

    /// Earliest deadline in the heap (possibly stale).
    #[inline]
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((ms, _, _))| *ms)
    }

    /// Move every entry due by `now_ms` into `due` (processed by the caller,
    /// so entries pushed meanwhile wait for the next pass).
    pub(crate) fn pop_due(&mut self, now_ms: u64, due: &mut Vec<(u64, u32, u64)>) {
        while let Some(Reverse(e)) = self.heap.peek() {
            if e.0 > now_ms {
                break;
            }
            due.push(*e);
            self.heap.pop();
        }
    }

    /// Decide what a due entry `ms` means for its connection's timer:
    /// `true` = deliver `on_tick` now. A moved deadline is pushed again.
    pub(crate) fn fire(&mut self, slot: u32, id: u64, t: &mut ConnTimer, ms: u64, now_ms: u64) -> bool {
        if t.heap_at != ms {
            return false; // superseded by an earlier entry
        }
        t.heap_at = u64::MAX;
        if t.every_tick || t.want_at == u64::MAX {
            return false;
        }
        if t.want_at > now_ms {
            t.heap_at = t.want_at;
            self.heap.push(Reverse((t.want_at, slot, id)));
            return false;
        }
        t.fired_ms = now_ms;
        t.want_at = u64::MAX;
        true
    }

    /// Whether the heap holds so many stale entries that it should be rebuilt.
    #[inline]
    pub(crate) fn needs_rebuild(&self, conns: usize) -> bool {
        self.heap.len() > 2 * conns + 1024
    }

    /// Rebuild the heap from the live timers: `(slot, id, timer)` of every connection.
    pub(crate) fn rebuild<'a>(&mut self, live: impl Iterator<Item = (u32, u64, &'a ConnTimer)>) {
        let mut v: Vec<Entry> = std::mem::take(&mut self.heap).into_vec();
        v.clear();
        v.extend(live.filter(|(_, _, t)| t.heap_at != u64::MAX).map(|(slot, id, t)| Reverse((t.heap_at, slot, id))));
        self.heap = BinaryHeap::from(v);
    }

    pub(crate) fn heap_len(&self) -> usize {
        self.heap.len()
    }
}

/// Connections to look at again at a due time, checked every tick in
/// arrival order (for coarse idle checks: each connection is listed at most
/// once by its owner, so the queue is bounded by the connections).
#[derive(Default)]
pub(crate) struct DueQueue {
    q: VecDeque<(u32, u64, u64)>,
}

impl DueQueue {
    /// List connection `(slot, id)` to be looked at from `due_ms` on.
    pub(crate) fn push(&mut self, slot: u32, id: u64, due_ms: u64) {
        self.q.push_back((slot, id, due_ms));
    }
    /// The next entry due by `now_ms`, if the front one is.
    pub(crate) fn pop_due(&mut self, now_ms: u64) -> Option<(u32, u64)> {
        match self.q.front() {
            Some(&(slot, id, due)) if due <= now_ms => {
                self.q.pop_front();
                Some((slot, id))
            }
            _ => None,
        }
    }
    pub(crate) fn len(&self) -> usize {
        self.q.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_deadline_fires_the_old_entry_which_reschedules() {
        let mut ts = Timers::default();
        let mut t = ConnTimer::default();
        ts.schedule(1, 7, &mut t, Wakeup::At(100));
        ts.schedule(1, 7, &mut t, Wakeup::At(200));
        assert_eq!(ts.heap_len(), 1, "a later deadline pushes nothing");
        let mut due = Vec::new();
        ts.pop_due(150, &mut due);
        assert_eq!(due, vec![(100, 1, 7)]);
        assert!(!ts.fire(1, 7, &mut t, 100, 150), "not before the moved deadline");
        assert_eq!(ts.next_deadline(), Some(200));
        due.clear();
        ts.pop_due(200, &mut due);
        assert!(ts.fire(1, 7, &mut t, 200, 200));
        assert_eq!(t.want_at, u64::MAX);
    }

    #[test]
    fn earlier_deadline_supersedes_and_the_stale_entry_is_skipped() {
        let mut ts = Timers::default();
        let mut t = ConnTimer::default();
        ts.schedule(1, 7, &mut t, Wakeup::At(100));
        ts.schedule(1, 7, &mut t, Wakeup::At(50));
        let mut due = Vec::new();
        ts.pop_due(100, &mut due);
        assert_eq!(due.len(), 2);
        let fired: Vec<bool> = due.iter().map(|&(ms, s, id)| ts.fire(s, id, &mut t, ms, 100)).collect();
        assert_eq!(fired, vec![true, false], "one on_tick for two entries");
    }

    #[test]
    fn never_and_every_tick_cancel_a_deadline() {
        let mut ts = Timers::default();
        let mut t = ConnTimer::default();
        ts.schedule(1, 7, &mut t, Wakeup::At(10));
        ts.schedule(1, 7, &mut t, Wakeup::Never);
        assert!(!ts.fire(1, 7, &mut t, 10, 10));
        ts.schedule(1, 7, &mut t, Wakeup::At(20));
        ts.schedule(1, 7, &mut t, Wakeup::EveryTick);
        assert!(!ts.fire(1, 7, &mut t, 20, 20));
        assert_eq!(ts.tick_list, vec![(1, 7)]);
        ts.schedule(1, 7, &mut t, Wakeup::EveryTick);
        assert_eq!(ts.tick_list.len(), 1, "listed once");
    }

    #[test]
    fn a_deadline_in_the_past_is_delivered_once_per_ms() {
        let mut ts = Timers::default();
        let mut t = ConnTimer::default();
        ts.schedule(1, 7, &mut t, Wakeup::At(5));
        let mut due = Vec::new();
        ts.pop_due(9, &mut due);
        assert!(ts.fire(1, 7, &mut t, 5, 9));
        ts.schedule(1, 7, &mut t, Wakeup::At(0));
        assert_eq!(ts.next_deadline(), Some(10));
    }

    #[test]
    fn rebuild_keeps_one_entry_per_timer() {
        let mut ts = Timers::default();
        let mut timers = [ConnTimer::default(); 4];
        for round in 0..1000u64 {
            for (i, t) in timers.iter_mut().enumerate() {
                ts.schedule(i as u32, i as u64, t, Wakeup::At(1_000_000 - round));
            }
        }
        assert!(ts.needs_rebuild(timers.len()));
        ts.rebuild(timers.iter().enumerate().map(|(i, t)| (i as u32, i as u64, t)));
        assert_eq!(ts.heap_len(), 4);
        assert_eq!(ts.next_deadline(), Some(1_000_000 - 999));
    }
}
