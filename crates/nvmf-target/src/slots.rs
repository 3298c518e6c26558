//! Command slots: the commands of one queue that outlive the PDU that carried
//! them (waiting for R2T data, or for storage), indexed by TTAG.
//!
//! A queue has SQSIZE + 1 slots, fixed at Connect. Commands that complete
//! within the call that received them (every command on a memory namespace
//! whose data came in the capsule, every read of one) never take a slot.
//! The table also keeps:
//! - which CIDs are in flight, so a CID the host reuses before its command
//!   completed gets Command ID Conflict (one probe of a small open-addressed
//!   table per command that takes a slot, and per new command while any is
//!   in flight);
//! - the order in which R2Ts were sent, so the oldest transfer's deadline is
//!   known in O(1) (see [`SlotTable::oldest_r2t_us`]).

use std::collections::VecDeque;
use std::sync::Arc;

use nvmf_proto::{Sqe, Status};

use crate::buf::DataBuf;
use crate::io_cmd::IoPlan;
use crate::subsys::{Namespace, NsTable};

/// What a slot does once its data or storage op completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    Admin,
    /// Fabrics Authentication Send whose message came with R2T.
    AuthSend,
    Io(IoPlan),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Free,
    /// R2T sent; collecting H2CData.
    AwaitData,
    /// Storage op(s) in flight.
    Storage,
}

/// Where the H2CData payload of a slot goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sink {
    /// Into the slot's [`DataBuf`].
    Buffer,
    /// Straight into a memory namespace, piece by piece (no data digest to
    /// check first).
    Memory,
}

/// One in-flight command.
pub struct Slot {
    pub stage: Stage,
    /// Bumped on every reuse; part of storage tokens.
    pub generation: u16,
    pub sqe: Sqe,
    pub work: Work,
    pub ns: Option<Arc<Namespace>>,
    /// Every namespace, kept alive while a Flush of all of them runs.
    pub table: Option<Arc<NsTable>>,
    pub buf: Option<DataBuf>,
    pub sink: Sink,
    /// Host data expected (R2T length) and received so far.
    pub xfer_len: u32,
    pub received: u32,
    /// Set when a transfer or storage op failed: complete with this once the
    /// command's data and operations are done.
    pub error: Option<Status>,
    /// Storage progress in bytes (short transfers are resubmitted), or the
    /// index of the next range / namespace for multi-operation commands.
    pub done_bytes: u64,
    pub step: u32,
    /// Which way of zeroing or deallocating is being tried (io_cmd_fd).
    pub fallback: u8,
    /// Storage operations in flight for this slot.
    pub ops_in_flight: u32,
    /// µs times: slot taken (latency histograms), R2T sent (data deadline),
    /// storage op submitted (backend latency; 0: none).
    pub arrival_us: u64,
    pub r2t_us: u64,
    pub submit_us: u64,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            stage: Stage::Free,
            generation: 0,
            sqe: Sqe::default(),
            work: Work::Admin,
            ns: None,
            table: None,
            buf: None,
            sink: Sink::Buffer,
            xfer_len: 0,
            received: 0,
            error: None,
            done_bytes: 0,
            step: 0,
            fallback: 0,
            ops_in_flight: 0,
            arrival_us: 0,
            r2t_us: 0,
            submit_us: 0,
        }
    }
}

/// Slots plus the in-flight CID set and the R2T order.
#[derive(Default)]
pub struct SlotTable {
    slots: Vec<Slot>,
    free: Vec<u16>,
    /// Open addressing: CID + 1 (0 = empty) → slot, capacity a power of two
    /// at least twice the slot count, so probes stay short.
    cids: Vec<(u32, u16)>,
    /// Slots in the order their R2T was sent: (slot, generation). Entries of
    /// slots that moved on are dropped lazily from the front.
    r2t_order: VecDeque<(u16, u16)>,
}

impl SlotTable {
    pub fn new(entries: u32) -> SlotTable {
        assert!((2..=65536).contains(&entries), "queue entries {entries}");
        let cap = (2 * entries as usize).next_power_of_two();
        SlotTable {
            slots: (0..entries).map(|_| Slot::default()).collect(),
            free: (0..entries as u16).rev().collect(),
            cids: vec![(0, 0); cap],
            r2t_order: VecDeque::with_capacity(entries as usize),
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }
    pub fn get(&self, i: usize) -> Option<&Slot> {
        self.slots.get(i)
    }
    pub fn get_mut(&mut self, i: usize) -> Option<&mut Slot> {
        self.slots.get_mut(i)
    }
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (usize, &mut Slot)> {
        self.slots.iter_mut().enumerate()
    }

    fn probe(&self, cid: u16) -> (usize, bool) {
        let mask = self.cids.len() - 1;
        let mut i = (cid as usize).wrapping_mul(0x9e37) & mask;
        loop {
            match self.cids[i] {
                (0, _) => return (i, false),
                (k, _) if k == cid as u32 + 1 => return (i, true),
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Whether a command with `cid` holds a slot.
    #[inline]
    pub fn cid_in_flight(&self, cid: u16) -> bool {
        self.in_flight() > 0 && self.probe(cid).1
    }

    /// Take a slot for `sqe` (its CID must not be in flight).
    pub fn alloc(&mut self, sqe: &Sqe, work: Work, now_us: u64) -> Option<usize> {
        debug_assert!(!self.cid_in_flight(sqe.cid));
        let i = self.free.pop()? as usize;
        let (at, found) = self.probe(sqe.cid);
        assert!(!found, "CID {} already in flight", sqe.cid);
        self.cids[at] = (sqe.cid as u32 + 1, i as u16);
        let s = &mut self.slots[i];
        assert_eq!(s.stage, Stage::Free);
        assert!(s.buf.is_none() && s.ns.is_none() && s.ops_in_flight == 0);
        s.generation = s.generation.wrapping_add(1);
        s.sqe = *sqe;
        s.work = work;
        s.sink = Sink::Buffer;
        s.xfer_len = 0;
        s.received = 0;
        s.error = None;
        s.done_bytes = 0;
        s.step = 0;
        s.fallback = 0;
        s.arrival_us = now_us;
        s.r2t_us = 0;
        s.submit_us = 0;
        Some(i)
    }

    /// Give slot `i` back: its buffer returns to the pool, its namespaces are
    /// released, its CID may be used again.
    pub fn free(&mut self, i: usize) {
        let s = &mut self.slots[i];
        assert_ne!(s.stage, Stage::Free, "double free of slot {i}");
        assert_eq!(s.ops_in_flight, 0, "slot {i} freed with storage ops in flight");
        s.stage = Stage::Free;
        s.ns = None;
        s.table = None;
        s.buf = None;
        let cid = s.sqe.cid;
        self.remove_cid(cid);
        self.free.push(i as u16);
        self.prune_r2t();
        debug_assert!(self.free.len() <= self.slots.len());
    }

    fn remove_cid(&mut self, cid: u16) {
        let (mut at, found) = self.probe(cid);
        assert!(found, "CID {cid} of a busy slot not in the table");
        // Backward-shift deletion keeps every other key reachable.
        let mask = self.cids.len() - 1;
        self.cids[at] = (0, 0);
        let mut next = (at + 1) & mask;
        while self.cids[next].0 != 0 {
            let key = (self.cids[next].0 - 1) as usize;
            let home = key.wrapping_mul(0x9e37) & mask;
            // Move the entry back if its home is not in (at, next].
            let dist_next = next.wrapping_sub(home) & mask;
            let dist_at = at.wrapping_sub(home) & mask;
            if dist_at < dist_next {
                self.cids[at] = self.cids[next];
                self.cids[next] = (0, 0);
                at = next;
            }
            next = (next + 1) & mask;
        }
    }

    /// Record that slot `i` sent its R2T now.
    pub fn r2t_sent(&mut self, i: usize, now_us: u64) {
        let s = &mut self.slots[i];
        s.r2t_us = now_us;
        let gen = s.generation;
        self.prune_r2t();
        self.r2t_order.push_back((i as u16, gen));
        assert!(self.r2t_order.len() <= 2 * self.slots.len() + 1, "R2T order list unbounded");
    }

    /// When the oldest transfer still waiting for H2CData got its R2T.
    pub fn oldest_r2t_us(&self) -> Option<u64> {
        self.r2t_order.iter().find_map(|&(i, gen)| {
            let s = &self.slots[i as usize];
            (s.stage == Stage::AwaitData && s.generation == gen).then_some(s.r2t_us)
        })
    }

    /// Drop the front entries of transfers that moved on (called as slots
    /// are freed, so the order list stays at most twice the slot count).
    fn prune_r2t(&mut self) {
        while let Some(&(i, gen)) = self.r2t_order.front() {
            let s = &self.slots[i as usize];
            if s.stage == Stage::AwaitData && s.generation == gen {
                return;
            }
            self.r2t_order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqe(cid: u16) -> Sqe {
        Sqe { cid, ..Sqe::default() }
    }

    #[test]
    fn cids_in_flight_are_tracked_through_reuse() {
        let mut t = SlotTable::new(16);
        let mut held = Vec::new();
        for cid in [5u16, 5 + 32, 5 + 64, 7, 0xffff] {
            assert!(!t.cid_in_flight(cid));
            let i = t.alloc(&sqe(cid), Work::Admin, 0).unwrap();
            t.get_mut(i).unwrap().stage = Stage::Storage;
            assert!(t.cid_in_flight(cid));
            held.push((cid, i));
        }
        // Free one in the middle of a probe chain: the others stay reachable.
        let (cid, i) = held.remove(1);
        t.free(i);
        assert!(!t.cid_in_flight(cid));
        for (c, _) in &held {
            assert!(t.cid_in_flight(*c), "{c}");
        }
        for (_, i) in held {
            t.free(i);
        }
        assert_eq!(t.in_flight(), 0);
        assert!(t.cids.iter().all(|e| e.0 == 0));
    }

    #[test]
    fn cid_table_survives_random_churn() {
        let mut t = SlotTable::new(128);
        let mut x: u32 = 7;
        let mut live: Vec<(u16, usize)> = Vec::new();
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if live.len() < 128 && !x.is_multiple_of(3) {
                let cid = (x >> 8) as u16;
                if t.cid_in_flight(cid) {
                    assert!(live.iter().any(|(c, _)| *c == cid));
                    continue;
                }
                let i = t.alloc(&sqe(cid), Work::Admin, 0).unwrap();
                t.get_mut(i).unwrap().stage = Stage::AwaitData;
                live.push((cid, i));
            } else if !live.is_empty() {
                let (cid, i) = live.swap_remove(x as usize % live.len());
                t.free(i);
                assert!(!t.cid_in_flight(cid));
            }
            for (c, _) in &live {
                assert!(t.cid_in_flight(*c));
            }
        }
    }

    #[test]
    fn oldest_r2t_skips_finished_transfers() {
        let mut t = SlotTable::new(4);
        let a = t.alloc(&sqe(1), Work::Admin, 0).unwrap();
        t.get_mut(a).unwrap().stage = Stage::AwaitData;
        t.r2t_sent(a, 100);
        let b = t.alloc(&sqe(2), Work::Admin, 0).unwrap();
        t.get_mut(b).unwrap().stage = Stage::AwaitData;
        t.r2t_sent(b, 200);
        assert_eq!(t.oldest_r2t_us(), Some(100));
        t.free(a);
        assert_eq!(t.oldest_r2t_us(), Some(200));
        // Reused slot with a new generation: the old entry does not count.
        let c = t.alloc(&sqe(3), Work::Admin, 0).unwrap();
        assert_eq!(c, a);
        t.get_mut(c).unwrap().stage = Stage::Storage;
        t.free(b);
        assert_eq!(t.oldest_r2t_us(), None);
        t.free(c);
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn double_free_is_caught() {
        let mut t = SlotTable::new(2);
        let a = t.alloc(&sqe(1), Work::Admin, 0).unwrap();
        t.get_mut(a).unwrap().stage = Stage::Storage;
        t.free(a);
        t.free(a);
    }
}
