//! Timers and housekeeping of a core: deadlines, the periodic tick, send
//! buffer trimming, stats, parked connections, lazy structure bounds.

use std::sync::atomic::Ordering;

use io_uring::opcode;

use super::Core;
use crate::ctx::{ud, K_CANCEL, K_RECV};
use crate::rx::RX_BURST_IDLE_MS;
use crate::tx::{self, TX_TRIM_IDLE_MS};

impl Core {
    /// `on_tick` for every connection whose deadline is due.
    pub(super) fn fire_deadlines(&mut self) {
        let now_ms = self.ctx.clock.now_ms;
        let mut due = std::mem::take(&mut self.due);
        self.ctx.timers.pop_due(now_ms, &mut due);
        for &(ms, slot, id) in &due {
            let Some(c) = Self::conn(&mut self.conns, slot, id).filter(|c| c.live()) else { continue };
            if !self.ctx.timers.fire(slot, id, &mut c.timer, ms, now_ms) {
                continue;
            }
            self.ctx.stats.deadline_ticks += 1;
            let f = c.call(&mut self.ctx, slot, |h, io| h.on_tick(io));
            c.apply(&mut self.ctx, slot, f);
            Self::mark(&mut self.dirty, c, slot);
        }
        due.clear();
        self.due = due;
    }

    /// Every `tick_ms`: the every-tick handlers, the direct-receive gate,
    /// send buffer trimming, stats. Costs O(every-tick connections + trim
    /// entries due), never a pass over all connections.
    pub(super) fn tick(&mut self) {
        self.direct_ok = self.hot_max > 0 && self.ctx.rx_busy_conns <= self.hot_max;
        self.ctx.rx_epoch = self.ctx.rx_epoch.wrapping_add(1).max(1);
        self.ctx.rx_busy_conns = 0;

        let Core { conns, ctx, dirty, .. } = self;
        let mut list = std::mem::take(&mut ctx.timers.tick_list);
        list.retain(|&(slot, id)| {
            let Some(c) = Self::conn(conns, slot, id) else { return false };
            if !c.live() || !c.timer.every_tick {
                c.timer.in_tick_list = false;
                return false;
            }
            ctx.stats.periodic_ticks += 1;
            let f = c.call(ctx, slot, |h, io| h.on_tick(io));
            c.apply(ctx, slot, f);
            Self::mark(dirty, c, slot);
            true
        });
        // Connections that switched to EveryTick during the pass.
        list.append(&mut ctx.timers.tick_list);
        ctx.timers.tick_list = list;

        self.trim_tx();
        self.reclaim_idle_bursts();
        self.publish();
    }

    /// Give send buffer capacity above the retained bound back on
    /// connections whose output has been empty and small for a while.
    pub(super) fn trim_tx(&mut self) {
        let now_ms = self.ctx.clock.now_ms;
        for _ in 0..self.tx_trim.len() {
            let Some((slot, id)) = self.tx_trim.pop_due(now_ms) else { break };
            let Some(c) = Self::conn(&mut self.conns, slot, id) else { continue };
            let quiet_at = c.tx_big_at_ms + TX_TRIM_IDLE_MS;
            if quiet_at > now_ms || c.send_fly || c.tx_pending() > 0 {
                self.tx_trim.push(slot, id, quiet_at.max(now_ms + 1));
                continue;
            }
            tx::trim(&mut c.tx_acc, &mut c.ext_acc);
            tx::trim(&mut c.tx_fly, &mut c.ext_fly);
            c.iov = Vec::new();
            c.tx_trim_listed = false;
            self.ctx.stats.tx_trims += 1;
        }
    }

    /// Give burst buffers of connections idle for [`RX_BURST_IDLE_MS`] back
    /// (the armed receive into one is cancelled first; flush then returns
    /// it and re-arms on the small buffer).
    fn reclaim_idle_bursts(&mut self) {
        let now_ms = self.ctx.clock.now_ms;
        for _ in 0..self.ctx.rx_pool.burst_holders.len() {
            let Some((slot, id)) = self.ctx.rx_pool.burst_holders.pop_due(now_ms) else { break };
            let Some(c) = Self::conn(&mut self.conns, slot, id) else { continue };
            if !c.rx.holds_burst_buffer() || !c.live() {
                c.rx.burst_listed = false;
                continue;
            }
            let idle_at = c.rx_at_ms + RX_BURST_IDLE_MS;
            if idle_at > now_ms {
                self.ctx.rx_pool.burst_holders.push(slot, id, idle_at);
                continue;
            }
            // Idle: look again later in case the buffer cannot go back yet
            // (unconsumed bytes that do not fit the small buffer).
            self.ctx.rx_pool.burst_holders.push(slot, id, now_ms + RX_BURST_IDLE_MS);
            c.rx.calm_down();
            if c.recv_fly && !c.recv_sink_fly {
                if !c.recv_reclaim {
                    c.recv_reclaim = true;
                    self.ctx.push(&opcode::AsyncCancel::new(ud(K_RECV, slot)).build().user_data(ud(K_CANCEL, slot)));
                    self.ctx.stats.rx_idle_reclaims += 1;
                }
            } else {
                self.ctx.stats.rx_idle_reclaims += 1;
                Self::mark(&mut self.dirty, c, slot);
            }
        }
    }

    pub(super) fn publish(&mut self) {
        let ctx = &mut self.ctx;
        let pool = &ctx.rx_pool;
        let s = &mut ctx.stats;
        s.storage_ops = ctx.storage_ops;
        s.unestablished = ctx.limits.unestablished() as u64;
        s.rx_mapped_bytes = pool.mapped_bytes;
        s.rx_large_in_use = pool.large_in_use;
        s.rx_large_free = pool.large_free();
        s.rx_reserve_granted = pool.reserve_granted;
        s.rx_reserve_denied = pool.reserve_denied;
        s.rx_burst_granted = pool.burst_granted;
        s.rx_parked = pool.parked;
        s.timer_entries = ctx.timers.heap_len() as u64;
        s.tick_conns = ctx.timers.tick_list.len() as u64;
        self.shared.publish(s);
    }

    /// After flush: retry a waiting connection if a large buffer is free,
    /// publish admission changes, keep the lazy structures bounded.
    pub(super) fn housekeeping(&mut self) {
        while let Some((slot, id)) = self.ctx.rx_pool.next_waiter() {
            let Some(c) = Self::conn(&mut self.conns, slot, id) else { continue };
            c.rx.waiting = false;
            if c.rx.parked && c.live() {
                Self::mark(&mut self.dirty, c, slot);
                // One per iteration: its flush takes the buffer, then the next.
                break;
            }
        }
        let live = self.ctx.stats.connections as usize;
        let conns = &self.conns;
        let lookup = |slot: u32, id: u64| {
            conns.get(slot as usize).and_then(|c| c.as_ref()).filter(|c| c.id == id).map(|c| c.admission)
        };
        self.ctx.limits.publish(lookup);
        if self.handoffs_done > 0 {
            self.shared.pending_handoffs.fetch_sub(std::mem::take(&mut self.handoffs_done), Ordering::AcqRel);
        }
        if self.ctx.rx_pool.waiters_len() > 2 * live + 64 {
            self.ctx.rx_pool.retain_waiters(|slot, id| {
                conns.get(slot as usize).and_then(|c| c.as_ref()).is_some_and(|c| c.id == id && c.rx.waiting)
            });
        }
        if self.ctx.timers.needs_rebuild(live) {
            self.ctx
                .timers
                .rebuild(conns.iter().enumerate().filter_map(|(s, c)| c.as_ref().map(|c| (s as u32, c.id, &c.timer))));
        }
    }
}
