//! TLS between the socket and the handler (NVMe/TCP TLS 1.3, TP 8011): a
//! user-space record layer on the core that owns the connection.
//!
//! The handler never sees ciphertext. With TLS on a connection:
//! * receives land in a ciphertext buffer of the connection (`land`);
//!   during the handshake its records are fed to the [`TlsSession`]
//!   (OpenSSL); afterwards the session's record layer decrypts them in place
//!   in `land` and copies the plaintext once into the connection's receive
//!   buffer ([`crate::ConnIo::rx`]), with the same large-buffer reservations
//!   and parking as plain connections;
//! * everything the handler queues ([`crate::ConnIo::tx`] and borrowed
//!   segments) is encrypted when its batch is taken for sending: copied
//!   once into records of up to 16 KiB and sealed in place; borrowed
//!   segments are reported through [`crate::Handler::on_sent`] as soon as
//!   they are encrypted (the ciphertext is a copy);
//! * the session's own records (handshake flights, KeyUpdate answers,
//!   alerts) go out in the same stream.
//!
//! A listener with [`ListenerTls::Allowed`] tells TLS from plain NVMe/TCP by
//! the first bytes ([`nvmf_tls::looks_like_tls`]: a TLS handshake record
//! starts 0x16 0x03, an ICReq starts 0x00); [`ListenerTls::Required`] closes
//! a connection whose first bytes are not TLS. Until then the bytes are
//! received into the ordinary receive buffer, so a plain connection on such
//! a listener costs nothing more.
//!
//! Bounds per TLS connection: `land` holds at most [`TLS_LAND_BYTES`] (taken
//! when the connection turns out to be TLS); the session holds at most
//! [`TLS_INBOUND_BYTES_MAX`] of fed ciphertext (no receive is armed while it
//! is full: backpressure to the peer) and OpenSSL's two record buffers.
//! The handshake is bounded in time by the handler's own deadlines (e.g.
//! the target's `connect_timeout_ms` until ICReq), like any unestablished
//! connection.

use std::sync::Arc;

use nvmf_tls::{KeyExchange, Limits, ServerConfig, TlsError, TlsHash, TlsSession, MAX_RECORD_LEN};

/// Ciphertext received but not yet fed to the session, bytes: one full
/// record, so a receive never has to wait for a partial one.
pub const TLS_LAND_BYTES: usize = MAX_RECORD_LEN;
/// Ciphertext fed to a session but not yet decrypted (OpenSSL's inbound
/// buffer), bytes: two records. Small on purpose: it is held for every
/// connection, authenticated or not; the plaintext goes on to the receive
/// buffer as fast as the handler consumes it.
pub const TLS_INBOUND_BYTES_MAX: usize = 2 * MAX_RECORD_LEN;
/// Landing buffer once the handshake finished, bytes: the peer has proven
/// it holds the PSK, and one receive of several records costs one syscall
/// or ring operation instead of one per 16 KiB record.
pub const TLS_LAND_ESTABLISHED_BYTES: usize = 8 * MAX_RECORD_LEN;
/// Ciphertext produced but not yet taken, bytes (the engine takes it at
/// every send, so this only bounds one encryption step).
pub const TLS_OUTBOUND_BYTES_MAX: usize = 256 * 1024;

/// The session limits the engine uses on both sides.
pub fn session_limits() -> Limits {
    Limits { inbound_max: TLS_INBOUND_BYTES_MAX, outbound_max: TLS_OUTBOUND_BYTES_MAX }
}

/// TLS on a listener.
#[derive(Clone, Default)]
pub enum ListenerTls {
    /// Plain NVMe/TCP only (a TLS ClientHello is handed to the handler as
    /// bytes, which it rejects as a bad PDU).
    #[default]
    Off,
    /// TLS or plain, told apart by the first bytes.
    Allowed(Arc<ServerConfig>),
    /// TLS only: a connection whose first bytes are not a TLS handshake is
    /// closed ([`crate::CloseReason::TlsRequired`]).
    Required(Arc<ServerConfig>),
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ListenerTls::Off => "Off",
            ListenerTls::Allowed(_) => "Allowed",
            ListenerTls::Required(_) => "Required",
        })
    }
}

/// What a handler learns about its connection's TLS ([`crate::ConnIo::tls`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// The PSK identity in use (not secret), e.g. `NVMe1R01 <hostnqn> <subnqn> <digest>`.
    pub identity: String,
    /// The PSK's hash (decides the suite).
    pub hash: TlsHash,
    pub key_exchange: KeyExchange,
}

pub(crate) enum Phase {
    /// Listener with TLS allowed or required: the first bytes decide.
    Detect { cfg: Arc<ServerConfig>, required: bool },
    /// A session (handshake or established).
    Session(Box<TlsSession>),
}

/// The TLS state of one connection (boxed in [`crate::conn::Conn`]).
pub(crate) struct TlsConn {
    pub(crate) phase: Phase,
    /// Received ciphertext; `Vec` length = bytes held, capacity
    /// [`TLS_LAND_BYTES`] ([`TLS_LAND_ESTABLISHED_BYTES`] once established).
    /// Receives land in its spare capacity, so it is never reallocated nor
    /// its bytes moved while one is in flight: done-with bytes are only
    /// skipped (`land_pos`) and dropped in [`TlsConn::land_tail`].
    pub(crate) land: Vec<u8>,
    /// `land[..land_pos]` is done with (fed, or opened and delivered).
    pub(crate) land_pos: usize,
    /// Set once the handshake finished.
    pub(crate) info: Option<TlsInfo>,
    /// Decrypted data may be waiting in the session (the last delivery
    /// stopped for lack of room, or new ciphertext was fed).
    pub(crate) plain_pending: bool,
    /// close_notify queued (once).
    pub(crate) close_sent: bool,
    /// Tokens of borrowed segments encrypted in the last batch (reported
    /// through `on_sent` after the batch is made).
    pub(crate) sent_tokens: Vec<u64>,
}

impl TlsConn {
    pub(crate) fn detect(cfg: Arc<ServerConfig>, required: bool) -> TlsConn {
        TlsConn::new(Phase::Detect { cfg, required })
    }
    pub(crate) fn client(session: TlsSession) -> TlsConn {
        let mut t = TlsConn::new(Phase::Session(Box::new(session)));
        t.land = Vec::with_capacity(TLS_LAND_BYTES);
        t
    }
    fn new(phase: Phase) -> TlsConn {
        TlsConn {
            phase,
            land: Vec::new(),
            land_pos: 0,
            info: None,
            plain_pending: false,
            close_sent: false,
            sent_tokens: Vec::new(),
        }
    }
    /// Receives go to `land` (a session exists), not to the receive buffer.
    #[inline]
    pub(crate) fn lands(&self) -> bool {
        matches!(self.phase, Phase::Session(_))
    }
    #[inline]
    pub(crate) fn session(&mut self) -> Option<&mut TlsSession> {
        match &mut self.phase {
            Phase::Session(s) => Some(s),
            Phase::Detect { .. } => None,
        }
    }
    /// Where the next receive lands and how much it may take, if there is
    /// room: the spare capacity of `land`, while the session can take it.
    /// Only when no receive is in flight: it drops the done-with bytes.
    pub(crate) fn land_tail(&mut self) -> Option<(*mut u8, usize)> {
        let inbound = match &self.phase {
            Phase::Session(s) => s.inbound_pending(),
            Phase::Detect { .. } => return None,
        };
        if self.land_pos > 0 {
            // The bytes after land_pos move to the front unchanged (a partly
            // delivered record among them, as the session's contract allows).
            self.land.drain(..self.land_pos);
            self.land_pos = 0;
        }
        let free = self.land.capacity() - self.land.len();
        // Ciphertext beyond what the session can take soon stays in the
        // socket: the peer sees a full window, not a growing buffer here.
        let held_max = if self.info.is_some() { TLS_LAND_ESTABLISHED_BYTES } else { TLS_INBOUND_BYTES_MAX };
        if free == 0 || inbound + self.land_held() >= held_max {
            return None;
        }
        // SAFETY: len <= capacity; the spare capacity is ours.
        Some((unsafe { self.land.as_mut_ptr().add(self.land.len()) }, free))
    }
    /// `n` bytes were received into [`land_tail`](Self::land_tail).
    pub(crate) fn land_commit(&mut self, n: usize) {
        assert!(n <= self.land.capacity() - self.land.len(), "receive beyond the TLS landing buffer");
        // SAFETY: the receive initialised these n bytes of the spare capacity.
        unsafe { self.land.set_len(self.land.len() + n) };
        self.plain_pending = true;
    }
    /// Once established, grow `land` to [`TLS_LAND_ESTABLISHED_BYTES`].
    /// Only between receives (a receive in flight writes into its spare
    /// capacity, which a reallocation would move).
    pub(crate) fn land_grow_if_established(&mut self) {
        if self.info.is_some() && self.land.capacity() < TLS_LAND_ESTABLISHED_BYTES {
            self.land.reserve_exact(TLS_LAND_ESTABLISHED_BYTES - self.land.len());
        }
    }
    /// During the handshake: feed what `land` holds to the session (as much
    /// as it takes; it stops after the handshake's last record, and what
    /// follows is the record layer's, see [`TlsConn::open_land`]).
    pub(crate) fn feed_land(&mut self) -> Result<(), TlsError> {
        let Phase::Session(s) = &mut self.phase else { return Ok(()) };
        if self.land_pos == self.land.len() || s.handshake_done() {
            return Ok(());
        }
        let n = s.feed(&self.land[self.land_pos..])?;
        self.land_pos += n;
        if n > 0 {
            self.plain_pending = true;
        }
        Ok(())
    }
    /// After the handshake: open the landed records into `out`; returns the
    /// plaintext bytes written.
    pub(crate) fn open_land(&mut self, out: &mut [u8]) -> Result<usize, TlsError> {
        let Phase::Session(s) = &mut self.phase else { return Ok(0) };
        let (consumed, produced) = s.open_into(&mut self.land[self.land_pos..], out)?;
        self.land_pos += consumed;
        debug_assert!(self.land_pos <= self.land.len());
        Ok(produced)
    }
    /// Landed bytes not done with.
    pub(crate) fn land_held(&self) -> usize {
        self.land.len() - self.land_pos
    }
    /// The handshake just finished: record what the handler may ask.
    pub(crate) fn note_established(&mut self) -> bool {
        if self.info.is_some() {
            return false;
        }
        let Phase::Session(s) = &self.phase else { return false };
        if !s.handshake_done() {
            return false;
        }
        self.info = Some(TlsInfo {
            identity: s.peer_identity().unwrap_or_default().to_string(),
            hash: s.hash().unwrap_or(TlsHash::Sha256),
            key_exchange: s.key_exchange().unwrap_or(KeyExchange::PskDhe),
        });
        true
    }
}

/// What the first bytes of a connection on a TLS-allowing listener say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detected {
    /// Not enough bytes yet (a lone 0x16 or 0x16 0x03).
    Wait,
    Tls,
    Plain,
}

pub(crate) fn detect(first: &[u8]) -> Detected {
    if nvmf_tls::looks_like_tls(first) {
        return Detected::Tls;
    }
    match first {
        [] | [0x16] | [0x16, 0x03] => Detected::Wait,
        _ => Detected::Plain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_tell_tls_from_icreq() {
        assert_eq!(detect(&[]), Detected::Wait);
        assert_eq!(detect(&[0x16]), Detected::Wait);
        assert_eq!(detect(&[0x16, 0x03]), Detected::Wait);
        assert_eq!(detect(&[0x16, 0x03, 0x01]), Detected::Tls);
        assert_eq!(detect(&[0x16, 0x03, 0x03, 0x00]), Detected::Tls);
        // ICReq: PDU type 0, HLEN 128
        assert_eq!(detect(&[0x00, 0x00, 0x80, 0x00]), Detected::Plain);
        assert_eq!(detect(&[0x16, 0x02]), Detected::Plain);
        assert_eq!(detect(&[0x16, 0x03, 0x09]), Detected::Plain);
    }
}
