//! The TLS side of a core's data path (see `crate::tls`): first-byte
//! detection, ciphertext in → plaintext into the receive buffer, handler
//! output → ciphertext out.

use nvmf_proto::limited;
use nvmf_tls::{TlsError, TlsSession, MAX_PLAINTEXT};

use super::Core;
use crate::conn::{Conn, State};
use crate::ctx::CoreCtx;
use crate::rx::RxReady;
use crate::tls::{detect, Detected, Phase, TLS_COALESCE_BYTES, TLS_LAND_BYTES};
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
            let before = t.land.len();
            if let Err(e) = t.feed_land() {
                Self::tls_fail(ctx, c, idx, &e);
                return;
            }
            let fed = t.land.len() < before;
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
            let tail = unsafe { std::slice::from_raw_parts_mut(ptr, free) };
            let t = c.tls.as_mut().expect("checked above");
            let s = t.session().expect("checked above");
            let n = match s.read_plaintext_into(tail) {
                Ok(n) => n,
                Err(e) => {
                    Self::tls_fail(ctx, c, idx, &e);
                    return;
                }
            };
            let peer_closed = s.peer_closed();
            if n == 0 {
                t.plain_pending = false;
                if peer_closed {
                    c.hard_close(ctx, idx, CloseReason::PeerClosed);
                    return;
                }
                if fed && !t.land.is_empty() {
                    continue;
                }
                return;
            }
            if n < free {
                // Drained what the session had; more only if landed bytes wait.
                t.plain_pending = !t.land.is_empty();
            }
            ctx.stats.tls_bytes_decrypted += n as u64;
            c.rx.commit_decrypted(n);
            c.rx.reserve_bytes = 0;
            let f = c.call(ctx, idx, |h, io| h.on_recv(io));
            c.apply(ctx, idx, f);
        }
    }

    /// The previous batch is sent: make the next one, all ciphertext: the
    /// handler's output (once the handshake finished), then the session's
    /// own records. Borrowed segments are returned through `on_sent` right
    /// after encryption. Returns true if those callbacks queued more output.
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
            match encrypt_batch(s, &mut t.gather, &acc, &ext, &mut c.tx_fly) {
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

/// Encrypt the handler's output: the bytes of `acc` with the borrowed
/// segments spliced in at their positions. Small pieces are gathered into
/// records of up to [`MAX_PLAINTEXT`]; large ones are written as they are.
fn encrypt_batch(
    s: &mut TlsSession,
    gather: &mut Vec<u8>,
    acc: &[u8],
    ext: &[ExtSeg],
    out: &mut Vec<u8>,
) -> Result<(), TlsError> {
    gather.clear();
    let mut pos = 0;
    for e in ext {
        assert!(e.at >= pos && e.at <= acc.len(), "borrowed segment out of order");
        put(s, gather, &acc[pos..e.at], out)?;
        // SAFETY: the handler keeps a borrowed segment valid and unmodified
        // until on_sent (send_borrowed's contract), which comes after this.
        let seg = unsafe { std::slice::from_raw_parts(e.ptr, e.len) };
        put(s, gather, seg, out)?;
        pos = e.at;
    }
    put(s, gather, &acc[pos..], out)?;
    write_all(s, gather, out)?;
    gather.clear();
    Ok(())
}

fn put(s: &mut TlsSession, gather: &mut Vec<u8>, data: &[u8], out: &mut Vec<u8>) -> Result<(), TlsError> {
    if data.is_empty() {
        return Ok(());
    }
    if data.len() >= TLS_COALESCE_BYTES {
        write_all(s, gather, out)?;
        gather.clear();
        return write_all(s, data, out);
    }
    if gather.len() + data.len() > MAX_PLAINTEXT {
        write_all(s, gather, out)?;
        gather.clear();
    }
    gather.extend_from_slice(data);
    Ok(())
}

/// Encrypt `data`. The ciphertext stays in the session (taken once per
/// batch by the caller, with no copy when the batch fits its outbound
/// bound) unless that bound is reached first.
fn write_all(s: &mut TlsSession, data: &[u8], out: &mut Vec<u8>) -> Result<(), TlsError> {
    let mut off = 0;
    while off < data.len() {
        let n = s.write_plaintext(&data[off..])?;
        off += n;
        if off < data.len() {
            // The outbound bound was reached: make room. Taking nothing and
            // having nothing to take would never progress.
            if n == 0 && !s.wants_write() {
                return Err(TlsError::Protocol("the session took no plaintext".into()));
            }
            s.take_ciphertext(out);
        }
    }
    Ok(())
}
