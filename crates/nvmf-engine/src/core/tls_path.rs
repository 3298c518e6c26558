//! The TLS side of a core's data path (see `crate::tls`): first-byte
//! detection, ciphertext in → plaintext into the receive buffer, handler
//! output → ciphertext out.

use nvmf_proto::limited;
use nvmf_tls::TlsError;

use super::Core;
use crate::conn::{Conn, State};
use crate::ctx::CoreCtx;
use crate::rx::RxReady;
use crate::tls::{detect, Detected, Phase, TLS_LAND_BYTES};
use crate::tx::ExtSeg;
use crate::CloseReason;

impl Core {
    /// The first bytes of a connection on a listener that allows or
    /// requires TLS are in its receive buffer. Returns true when the
    /// connection is plain NVMe/TCP and the handler should see them; false
    /// when it turned TLS (the bytes went to the session), must wait for
    /// more bytes, or was closed.
    pub(super) fn tls_detect(ctx: &mut CoreCtx, c: &mut Conn, idx: u32) -> bool {
        let Some(t) = c.tls.as_mut() else { return true };
        let Phase::Detect { cfg, required } = &t.phase else { return true };
        match detect(c.rx.data()) {
            Detected::Wait => false,
            Detected::Plain if *required => {
                ctx.stats.tls_refused_plain += 1;
                limited!(
                    ctx.limits.log,
                    ctx.clock.now_ms,
                    info,
                    "core {}: {} sent plain NVMe/TCP to a listener that requires TLS; closing",
                    ctx.core_index,
                    c.info.peer
                );
                c.hard_close(ctx, idx, CloseReason::TlsRequired);
                false
            }
            Detected::Plain => {
                c.tls = None;
                true
            }
            Detected::Tls => {
                let session = match cfg.session() {
                    Ok(s) => s,
                    Err(e) => {
                        Self::tls_fail(ctx, c, idx, &e);
                        return false;
                    }
                };
                t.phase = Phase::Session(Box::new(session));
                t.land = Vec::with_capacity(TLS_LAND_BYTES);
                // The ClientHello moves from the receive buffer to the
                // landing buffer. A client sends nothing more before our
                // answer, so more than a record here is not a TLS client.
                let data = c.rx.data();
                if data.len() > TLS_LAND_BYTES {
                    let e = TlsError::Handshake("more than one record before the server's answer".into());
                    Self::tls_fail(ctx, c, idx, &e);
                    return false;
                }
                let n = data.len();
                t.land.extend_from_slice(data);
                c.rx.consume(n);
                Self::tls_deliver(ctx, c, idx);
                false
            }
        }
    }

    /// A receive into the landing buffer of a TLS connection returned `n`
    /// bytes.
    pub(super) fn tls_landed(ctx: &mut CoreCtx, c: &mut Conn, idx: u32, n: usize) {
        let Some(t) = c.tls.as_mut() else { return };
        t.land_commit(n);
        Self::tls_deliver(ctx, c, idx);
        // The receive has completed and the next is not armed yet.
        debug_assert!(!c.recv_fly, "a landing receive in flight while its buffer may grow");
        if let Some(t) = c.tls.as_mut() {
            t.land_grow_if_established();
        }
    }

    /// Feed landed ciphertext to the session and decrypt into the receive
    /// buffer, calling `on_recv`, as long as there is plaintext and room
    /// (reservations and parking as for plain receives).
    pub(super) fn tls_deliver(ctx: &mut CoreCtx, c: &mut Conn, idx: u32) {
        loop {
            if c.state != State::Open {
                return;
            }
            let Some(t) = c.tls.as_mut() else { return };
            if let Err(e) = t.feed_land() {
                Self::tls_fail(ctx, c, idx, &e);
                return;
            }
            let Some(s) = t.session() else { return };
            if !s.handshake_done() {
                // The handshake's answer goes out at flush.
                return;
            }
            if t.note_established() {
                ctx.stats.tls_handshakes += 1;
            }
            if !t.plain_pending {
                return;
            }
            // As a plain receive: with nothing unparsed in rx, the handler
            // may want the next bytes in a buffer of its own (a payload), or
            // only so many in rx (a header first). Decrypted data goes there
            // directly.
            let mut len_max = usize::MAX;
            if c.rx.data().is_empty() {
                match c.sink() {
                    Ok((Some((ptr, len)), _)) => {
                        // SAFETY: the handler's sink stays valid and untouched
                        // until on_sink_recv (no handler call between).
                        let sink = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
                        let Some(n) = Self::tls_open(ctx, c, idx, sink) else { return };
                        ctx.stats.sink_recv_ops += 1;
                        let f = c.call(ctx, idx, |h, io| h.on_sink_recv(io, n));
                        c.apply(ctx, idx, f);
                        continue;
                    }
                    Ok((None, hint)) => len_max = hint.max(1),
                    Err(()) => {
                        c.apply(ctx, idx, crate::handler::Flow::CloseNow);
                        return;
                    }
                }
            }
            match ctx.rx_pool.prepare(&mut c.rx, idx, c.id, ctx.clock.now_ms) {
                RxReady::Ready => {}
                // Retried when a large buffer is free (housekeeping marks it).
                RxReady::Park => return,
                RxReady::Overflow => {
                    limited!(
                        ctx.limits.log,
                        ctx.clock.now_ms,
                        debug,
                        "core {}: rx buffer full, closing {}",
                        ctx.core_index,
                        c.info.peer
                    );
                    c.hard_close(ctx, idx, CloseReason::RxOverflow);
                    return;
                }
            }
            let (ptr, free) = c.rx.tail();
            // SAFETY: the rx tail is ours: receives of a TLS connection land
            // in its landing buffer, never in the receive buffer.
            let free = free.min(len_max);
            let tail = unsafe { std::slice::from_raw_parts_mut(ptr, free) };
            let Some(n) = Self::tls_open(ctx, c, idx, tail) else { return };
            c.rx.commit_decrypted(n);
            c.rx.reserve_bytes = 0;
            let f = c.call(ctx, idx, |h, io| h.on_recv(io));
            c.apply(ctx, idx, f);
        }
    }

    /// Open the landed records into `dst` (the handler's sink or the rx
    /// tail). Returns the plaintext bytes written, or None when there are
    /// none (the connection failed, closed, or waits for more ciphertext).
    fn tls_open(ctx: &mut CoreCtx, c: &mut Conn, idx: u32, dst: &mut [u8]) -> Option<usize> {
        let t = c.tls.as_mut()?;
        let n = match t.open_land(dst) {
            Ok(n) => n,
            Err(e) => {
                Self::tls_fail(ctx, c, idx, &e);
                return None;
            }
        };
        if n < dst.len() {
            // Every complete record landed so far is opened.
            t.plain_pending = false;
        }
        if n == 0 {
            if t.session().is_some_and(|s| s.peer_closed()) {
                c.hard_close(ctx, idx, CloseReason::PeerClosed);
            }
            return None;
        }
        ctx.stats.tls_bytes_decrypted += n as u64;
        Some(n)
    }

    /// The previous batch is sent: make the next one, all ciphertext, in the
    /// order it was sealed: the session's own records (handshake flights,
    /// KeyUpdate answers) and the handler's output (once the handshake
    /// finished), gathered into records. Borrowed segments are returned
    /// through `on_sent` right after encryption. Returns true if those
    /// callbacks queued more output.
    pub(super) fn tls_fill_tx(ctx: &mut CoreCtx, c: &mut Conn, idx: u32) -> bool {
        c.tx_fly.clear();
        c.ext_fly.clear();
        c.tx_off = 0;
        c.tx_total = 0;
        c.ext_done = 0;
        let Some(t) = c.tls.as_mut() else { return false };
        let Phase::Session(s) = &mut t.phase else {
            // Not known to be TLS yet: the handler has seen no byte and its
            // output (if any) waits.
            return false;
        };
        let ready = s.handshake_done() && s.error().is_none() && !t.close_sent;
        let mut tokens = 0usize;
        let mut failed = None;
        if ready && (!c.tx_acc.is_empty() || !c.ext_acc.is_empty()) {
            let acc = std::mem::take(&mut c.tx_acc);
            let ext = std::mem::take(&mut c.ext_acc);
            let plain = acc.len() + ext.iter().map(|e| e.len).sum::<usize>();
            match s.write_gathered(pieces(&acc, &ext)) {
                Ok(()) => ctx.stats.tls_bytes_encrypted += plain as u64,
                Err(e) => failed = Some(e),
            }
            // Their capacity is kept; the tokens are reported below, once
            // the handler may append to them again.
            c.tx_acc = acc;
            c.tx_acc.clear();
            t.sent_tokens.clear();
            t.sent_tokens.extend(ext.iter().map(|e| e.token));
            tokens = t.sent_tokens.len();
            c.ext_acc = ext;
            c.ext_acc.clear();
        }
        if failed.is_none() && ready && matches!(c.state, State::Draining(_)) {
            // The handler is done: close_notify after its last bytes.
            s.close();
            t.close_sent = true;
        }
        s.take_ciphertext(&mut c.tx_fly);
        c.tx_total = c.tx_fly.len();
        if let Some(e) = failed {
            Self::tls_fail(ctx, c, idx, &e);
            return false;
        }
        for i in 0..tokens {
            if !c.live() {
                break;
            }
            let token = c.tls.as_ref().map_or(0, |t| t.sent_tokens[i]);
            let f = c.call(ctx, idx, |h, io| h.on_sent(io, token));
            c.apply(ctx, idx, f);
        }
        !c.tx_acc.is_empty() || !c.ext_acc.is_empty()
    }

    /// TLS failed on a connection: the session's alert (if any) goes out at
    /// the next flush, then the connection closes.
    pub(super) fn tls_fail(ctx: &mut CoreCtx, c: &mut Conn, idx: u32, e: &TlsError) {
        ctx.stats.tls_failures += 1;
        // nvmf-tls errors never carry key material.
        limited!(ctx.limits.log, ctx.clock.now_ms, info, "core {}: TLS with {}: {e}", ctx.core_index, c.info.peer);
        match c.state {
            State::Open => c.state = State::Draining(CloseReason::Tls),
            State::Draining(_) => {}
            State::Closing(_) => return,
        }
        if !c.tls.as_ref().is_some_and(|t| t.lands()) {
            c.hard_close(ctx, idx, CloseReason::Tls);
        }
    }
}

/// The handler's output in order: the bytes of `acc` with the borrowed
/// segments spliced in at their positions.
fn pieces<'a>(acc: &'a [u8], ext: &'a [ExtSeg]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut pos = 0;
    let mut next = 0;
    let mut segment_due = false;
    std::iter::from_fn(move || {
        if segment_due {
            segment_due = false;
            let e = &ext[next];
            next += 1;
            // SAFETY: the handler keeps a borrowed segment valid and
            // unmodified until on_sent (send_borrowed's contract), which
            // comes after the batch is encrypted.
            return Some(unsafe { std::slice::from_raw_parts(e.ptr, e.len) });
        }
        if let Some(e) = ext.get(next) {
            assert!(e.at >= pos && e.at <= acc.len(), "borrowed segment out of order");
            let before = &acc[pos..e.at];
            pos = e.at;
            segment_due = true;
            return Some(before);
        }
        if pos <= acc.len() {
            let rest = &acc[pos..];
            pos = acc.len() + 1;
            return Some(rest);
        }
        None
    })
}
