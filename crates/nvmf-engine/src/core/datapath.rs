//! The data path of a core: completions, direct receives, flush (sends,
//! receive arming, closes).

use std::io;
use std::os::fd::AsRawFd;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;

use io_uring::{opcode, types};
use nvmf_proto::limited;

use super::Core;
use crate::conn::{Conn, State};
use crate::ctx::{ud, CoreCtx, IDX_MASK, KIND_SHIFT, K_RECV, K_SEND, K_STORAGE, K_WAKE};
use crate::rx::RxReady;
use crate::tx::{self, MAX_SEND_CHUNK, TX_TRIM_IDLE_MS};
use crate::{CloseReason, Flow};

impl Core {
    pub(super) fn dispatch(&mut self, u: u64, res: i32) {
        let kind = u >> KIND_SHIFT;
        let idx = (u & IDX_MASK) as u32;
        match kind {
            K_RECV => {
                let Some(c) = self.conns.get_mut(idx as usize).and_then(|c| c.as_mut()) else {
                    return;
                };
                c.recv_fly = false;
                let sunk = std::mem::take(&mut c.recv_sink_fly);
                if std::mem::take(&mut c.recv_reclaim) && res == -libc::ECANCELED {
                    // Cancelled to give an idle burst buffer back: flush
                    // returns it and re-arms on the small buffer.
                    Self::mark(&mut self.dirty, c, idx);
                    return;
                }
                let offered = c.recv_offered;
                Self::recv_result(&mut self.ctx, &mut self.dirty, c, idx, res, sunk, offered);
            }
            K_SEND => {
                let Some(c) = self.conns.get_mut(idx as usize).and_then(|c| c.as_mut()) else {
                    return;
                };
                c.send_fly = false;
                Self::mark(&mut self.dirty, c, idx);
                if res > 0 {
                    self.ctx.stats.bytes_tx += res as u64;
                    self.ctx.stats.send_ops += 1;
                    c.tx_off += res as usize;
                    if !c.ext_fly.is_empty() {
                        // report borrowed segments that are now fully handed to the kernel
                        let mut prefix: usize = c.ext_fly[..c.ext_done].iter().map(|e| e.len).sum();
                        while c.ext_done < c.ext_fly.len() {
                            let e = &c.ext_fly[c.ext_done];
                            if c.tx_off < e.at + prefix + e.len {
                                break;
                            }
                            prefix += e.len;
                            let token = e.token;
                            c.ext_done += 1;
                            if c.live() {
                                let f = c.call(&mut self.ctx, idx, |h, io| h.on_sent(io, token));
                                c.apply(&mut self.ctx, idx, f);
                            }
                        }
                    }
                    if c.tx_off >= c.tx_total {
                        c.tx_fly.clear();
                        c.ext_fly.clear();
                        c.tx_off = 0;
                        c.tx_total = 0;
                        c.ext_done = 0;
                    }
                } else {
                    let e = -res;
                    if e != libc::EAGAIN && e != libc::EINTR && e != libc::ENOBUFS {
                        c.hard_close(&mut self.ctx, idx, CloseReason::Error(e.max(1)));
                    }
                }
            }
            K_STORAGE => {
                let Some((slot, token)) = self.ctx.storage_done(idx) else { return };
                let Some(c) = self.conns.get_mut(slot as usize).and_then(|c| c.as_mut()) else {
                    return;
                };
                c.storage_fly -= 1;
                Self::mark(&mut self.dirty, c, slot);
                if c.live() {
                    let f = c.call(&mut self.ctx, slot, |h, io| h.on_storage(io, token, res));
                    c.apply(&mut self.ctx, slot, f);
                }
            }
            K_WAKE => {
                self.arm_wake();
                self.commands();
            }
            _ => {}
        }
    }

    /// Hand a receive result (io_uring CQE or direct `recv`) to the connection;
    /// `sunk`: the bytes went into the handler's sink, not `rx`, whose tail
    /// was offered `offered` bytes otherwise.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn recv_result(
        ctx: &mut CoreCtx,
        dirty: &mut Vec<u32>,
        c: &mut Conn,
        idx: u32,
        res: i32,
        sunk: bool,
        offered: usize,
    ) {
        Self::mark(dirty, c, idx);
        if res > 0 {
            ctx.stats.bytes_rx += res as u64;
            ctx.stats.recv_ops += 1;
            c.hot_eligible = true;
            c.rx_at_ms = ctx.clock.now_ms;
            if c.rx_epoch != ctx.rx_epoch {
                c.rx_epoch = ctx.rx_epoch;
                ctx.rx_busy_conns += 1;
            }
            if !c.admission.heard {
                ctx.limits.on_heard(&mut c.admission);
            }
            if c.state == State::Open {
                if c.tls.as_ref().is_some_and(|t| t.lands()) {
                    // Ciphertext: decrypted into rx, then on_recv.
                    Self::tls_landed(ctx, c, idx, res as usize);
                    return;
                }
                let f = if sunk {
                    ctx.stats.sink_recv_ops += 1;
                    c.call(ctx, idx, |h, io| h.on_sink_recv(io, res as usize))
                } else {
                    c.rx.commit(res as usize, offered);
                    c.rx.reserve_bytes = 0;
                    if c.tls.is_some() && !Self::tls_detect(ctx, c, idx) {
                        return;
                    }
                    c.call(ctx, idx, |h, io| h.on_recv(io))
                };
                c.apply(ctx, idx, f);
            }
        } else if res == 0 {
            c.hard_close(ctx, idx, CloseReason::PeerClosed);
        } else {
            let e = -res;
            if e != libc::EAGAIN && e != libc::EINTR && e != libc::ENOBUFS {
                let reason = if e == libc::ECANCELED { CloseReason::PeerClosed } else { CloseReason::Error(e) };
                c.hard_close(ctx, idx, reason);
            }
        }
    }

    /// Poll mode: one non-blocking `recv` on every hot connection. Returns
    /// whether any received data.
    pub(super) fn poll_hot(&mut self) -> bool {
        let max_tx = self.cfg.send_buf_max_bytes;
        let now_ms = self.ctx.clock.now_ms;
        let mut got = false;
        if !self.direct_ok {
            // Too many busy connections: all of them go back to the ring.
            for slot in self.hot.drain(..) {
                if let Some(c) = self.conns.get_mut(slot as usize).and_then(|c| c.as_mut()) {
                    if c.hot {
                        c.hot = false;
                        Self::mark(&mut self.dirty, c, slot);
                    }
                }
            }
            return false;
        }
        let mut i = 0;
        while i < self.hot.len() {
            let slot = self.hot[i];
            let Some(c) = self.conns.get_mut(slot as usize).and_then(|c| c.as_mut()).filter(|c| c.hot) else {
                self.hot.swap_remove(i);
                continue;
            };
            // Receive-buffer decisions as in flush (no receive is in flight on
            // a hot connection); anything but a plain receive goes to flush.
            // TLS: ciphertext lands in the landing buffer while it has room.
            let lands = c.tls.as_ref().is_some_and(|t| t.lands());
            let ready = c.state == State::Open
                && c.tx_pending() <= max_tx
                && if lands {
                    c.tls.as_mut().is_some_and(|t| t.land_tail().is_some())
                } else {
                    self.ctx.rx_pool.prepare(&mut c.rx, slot, c.id, now_ms) == RxReady::Ready
                };
            if !ready {
                c.hot = false;
                Self::mark(&mut self.dirty, c, slot);
                self.hot.swap_remove(i);
                continue;
            }
            // With nothing unparsed in rx, the handler may want the next bytes
            // in a buffer of its own (the rest of a large payload): received
            // there, they are not copied again.
            let (sink, len_max) = if !lands && c.rx.data().is_empty() {
                match c.sink() {
                    Ok(got) => got,
                    Err(()) => {
                        c.apply(&mut self.ctx, slot, Flow::CloseNow);
                        Self::mark(&mut self.dirty, c, slot);
                        c.hot = false;
                        self.hot.swap_remove(i);
                        continue;
                    }
                }
            } else {
                (None, usize::MAX)
            };
            let (ptr, len) = match sink {
                Some(s) => s,
                None if lands => c.tls.as_mut().and_then(|t| t.land_tail()).expect("checked in ready"),
                None => {
                    let (p, free) = c.rx.tail();
                    (p, free.min(len_max.max(1)))
                }
            };
            // SAFETY: `ptr..ptr + len` is the rx tail or the TLS landing
            // buffer's spare capacity (ours; no io_uring recv is in flight on
            // a hot connection) or the handler's sink, which stays valid and
            // untouched until on_sink_recv (no handler call between).
            let r = unsafe { libc::recv(c.fd.as_raw_fd(), ptr as *mut libc::c_void, len, libc::MSG_DONTWAIT) };
            let res = if r < 0 { -io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO) } else { r as i32 };
            if res == -libc::EAGAIN {
                c.hot_empty += 1;
                if c.hot_empty >= crate::DIRECT_RECV_EMPTY_MAX {
                    c.hot = false;
                    c.hot_eligible = false;
                    Self::mark(&mut self.dirty, c, slot);
                    self.hot.swap_remove(i);
                    continue;
                }
            } else {
                c.hot_empty = 0;
                got |= res > 0;
                if res > 0 {
                    self.ctx.stats.direct_recv_ops += 1;
                    self.ctx.clock.ensure_fresh();
                }
                Self::recv_result(&mut self.ctx, &mut self.dirty, c, slot, res, sink.is_some(), len);
            }
            i += 1;
        }
        got
    }

    /// Send what handlers queued, arm receives, free closed connections.
    /// Returns true if some handler asked for another on_recv (do not sleep).
    pub(super) fn flush(&mut self) -> bool {
        let mut rerun_any = false;
        let max_tx = self.cfg.send_buf_max_bytes;
        let now_ms = self.ctx.clock.now_ms;
        let mut list = std::mem::take(&mut self.dirty);
        for &slot in &list {
            let Some(c) = self.conns.get_mut(slot as usize).and_then(|c| c.as_mut()) else {
                continue;
            };
            c.dirty = false;
            if c.rerun_recv && c.state == State::Open {
                c.rerun_recv = false;
                c.rx.reserve_bytes = 0;
                let f = c.call(&mut self.ctx, slot, |h, io| h.on_recv(io));
                c.apply(&mut self.ctx, slot, f);
                if c.rerun_recv {
                    rerun_any = true;
                    Self::mark(&mut self.dirty_next, c, slot);
                }
            }
            if let State::Closing(reason) = c.state {
                if !c.recv_fly && !c.send_fly && c.storage_fly == 0 {
                    self.finalize(slot, reason);
                }
                continue;
            }
            if c.state == State::Open && c.tls.as_ref().is_some_and(|t| t.lands() && t.plain_pending) {
                // Decrypted data waited for room (the handler consumed, or a
                // large buffer was granted).
                Self::tls_deliver(&mut self.ctx, c, slot);
            }
            // tx
            if !c.send_fly && c.tls.is_some() && c.tx_off >= c.tx_total {
                // TLS: the next batch is ciphertext.
                if Self::tls_fill_tx(&mut self.ctx, c, slot) {
                    Self::mark(&mut self.dirty_next, c, slot);
                }
                if tx::batch_is_big(&c.tx_fly, &c.ext_fly) {
                    c.tx_big_at_ms = now_ms;
                    if !c.tx_trim_listed {
                        c.tx_trim_listed = true;
                        self.tx_trim.push(slot, c.id, now_ms + TX_TRIM_IDLE_MS);
                    }
                }
            }
            if !c.send_fly {
                if c.tx_off >= c.tx_total && (!c.tx_acc.is_empty() || !c.ext_acc.is_empty()) && c.tls.is_none() {
                    std::mem::swap(&mut c.tx_fly, &mut c.tx_acc);
                    std::mem::swap(&mut c.ext_fly, &mut c.ext_acc);
                    c.tx_acc.clear();
                    c.ext_acc.clear();
                    c.tx_off = 0;
                    c.ext_done = 0;
                    c.tx_total = c.tx_fly.len() + c.ext_fly.iter().map(|e| e.len).sum::<usize>();
                    if tx::batch_is_big(&c.tx_fly, &c.ext_fly) {
                        c.tx_big_at_ms = now_ms;
                        if !c.tx_trim_listed {
                            c.tx_trim_listed = true;
                            self.tx_trim.push(slot, c.id, now_ms + TX_TRIM_IDLE_MS);
                        }
                    }
                }
                if c.tx_off < c.tx_total {
                    let e = if c.ext_fly.is_empty() {
                        let len = (c.tx_total - c.tx_off).min(MAX_SEND_CHUNK);
                        // SAFETY: tx_fly is not touched until the send completes.
                        let p = unsafe { c.tx_fly.as_ptr().add(c.tx_off) };
                        opcode::Send::new(types::Fd(c.fd.as_raw_fd()), p, len as u32).flags(libc::MSG_NOSIGNAL).build()
                    } else {
                        tx::build_iov(&c.tx_fly, &c.ext_fly, c.tx_off, &mut c.iov);
                        c.msg.msg_iov = c.iov.as_mut_ptr();
                        c.msg.msg_iovlen = c.iov.len() as _;
                        opcode::SendMsg::new(types::Fd(c.fd.as_raw_fd()), &*c.msg as *const libc::msghdr)
                            .flags(libc::MSG_NOSIGNAL as u32)
                            .build()
                    };
                    self.ctx.push(&e.user_data(ud(K_SEND, slot)));
                    c.send_fly = true;
                }
            }
            match c.state {
                State::Draining(reason) => {
                    if !c.send_fly && c.storage_fly == 0 {
                        c.hard_close(&mut self.ctx, slot, reason);
                        // finalize on the next pass once the cancelled recv returns
                        Self::mark(&mut self.dirty_next, c, slot);
                    }
                }
                State::Open => {
                    // A hot connection is received by poll_hot, not by an SQE.
                    if !c.hot && !c.recv_fly && c.tx_pending() <= max_tx && c.tls.as_ref().is_some_and(|t| t.lands()) {
                        // TLS: receive ciphertext into the landing buffer while
                        // the session can take it (else: backpressure).
                        let Some((p, len)) = c.tls.as_mut().and_then(|t| t.land_tail()) else { continue };
                        if c.hot_eligible && self.direct_ok && self.hot.len() < self.hot_max {
                            c.hot = true;
                            c.hot_empty = 0;
                            self.hot.push(slot);
                            continue;
                        }
                        // SAFETY: the landing buffer's spare capacity is not
                        // touched (nor the Vec reallocated) until the recv
                        // completes: it only changes through land_commit and
                        // land_grow_if_established, both on completion.
                        let e = opcode::Recv::new(types::Fd(c.fd.as_raw_fd()), p, len as u32)
                            .build()
                            .user_data(ud(K_RECV, slot));
                        self.ctx.push(&e);
                        c.recv_fly = true;
                        c.recv_sink_fly = false;
                        c.recv_offered = len;
                        continue;
                    }
                    if !c.hot && !c.recv_fly && c.tx_pending() <= max_tx {
                        match self.ctx.rx_pool.prepare(&mut c.rx, slot, c.id, now_ms) {
                            RxReady::Ready => {}
                            RxReady::Park => continue,
                            RxReady::Overflow => {
                                limited!(
                                    self.ctx.limits.log,
                                    now_ms,
                                    debug,
                                    "core {}: rx buffer full, closing {}",
                                    self.idx,
                                    c.info.peer
                                );
                                c.hard_close(&mut self.ctx, slot, CloseReason::RxOverflow);
                                Self::mark(&mut self.dirty_next, c, slot);
                                continue;
                            }
                        }
                        if c.hot_eligible && self.direct_ok && self.hot.len() < self.hot_max {
                            c.hot = true;
                            c.hot_empty = 0;
                            self.hot.push(slot);
                            continue;
                        }
                        let (p, len, sunk) = match c.rx.data().is_empty().then(|| c.armed_sink()) {
                            Some(Err(())) => {
                                c.apply(&mut self.ctx, slot, Flow::CloseNow);
                                Self::mark(&mut self.dirty_next, c, slot);
                                continue;
                            }
                            Some(Ok(Some(s))) => (s.ptr, s.len, true),
                            _ => {
                                let (p, len) = c.rx.tail();
                                (p, len, false)
                            }
                        };
                        let len = len.min(u32::MAX as usize);
                        // SAFETY: the rx tail is not touched until the recv
                        // completes; an armed sink is the handler's promise.
                        let e = opcode::Recv::new(types::Fd(c.fd.as_raw_fd()), p, len as u32)
                            .build()
                            .user_data(ud(K_RECV, slot));
                        self.ctx.push(&e);
                        c.recv_fly = true;
                        c.recv_sink_fly = sunk;
                        c.recv_offered = len;
                    }
                }
                State::Closing(_) => {}
            }
        }
        list.clear();
        // Connections marked during this pass (by handlers) go to the next one.
        self.dirty = list;
        std::mem::swap(&mut self.dirty, &mut self.dirty_next);
        rerun_any
    }

    /// Free a closed connection with no op in flight: its receive memory goes
    /// back, then `on_closed` (unless the handler panicked earlier).
    pub(super) fn finalize(&mut self, slot: u32, reason: CloseReason) {
        let Some(c) = self.conns.get_mut(slot as usize).and_then(|c| c.take()) else { return };
        assert!(!c.recv_fly && !c.send_fly && c.storage_fly == 0, "freeing a connection with ops in flight");
        if c.hot {
            self.hot.retain(|&s| s != slot);
        }
        let Conn { handler, rx, poisoned, fd, .. } = c;
        self.ctx.rx_pool.release(rx);
        drop(fd);
        let r = std::panic::catch_unwind(AssertUnwindSafe(move || {
            let mut handler = handler;
            if !poisoned {
                handler.on_closed(reason);
            }
            drop(handler);
        }));
        if r.is_err() {
            let now_ms = self.ctx.clock.now_ms;
            limited!(
                self.ctx.limits.log,
                now_ms,
                error,
                "core {}: connection handler panicked in on_closed/drop",
                self.idx
            );
        }
        self.free.push(slot);
        self.ctx.stats.connections -= 1;
        self.shared.live.store(self.ctx.stats.connections, Ordering::Relaxed);
    }
}
