//! NVMe/TCP TLS (NVMe/TCP transport spec, "Transport Layer Security"; TP 8011):
//! TLS 1.3 with external pre-shared keys, both sides, as a **sans-IO session**.
//! Ciphertext in ([`TlsSession::feed`]), plaintext out
//! ([`TlsSession::read_plaintext`]), plaintext in
//! ([`TlsSession::write_plaintext`]), ciphertext out
//! ([`TlsSession::take_ciphertext`]). No sockets, no clocks, no threads: the
//! engine moves the bytes.
//!
//! The handshake is the system OpenSSL's (>= 1.1.1; 3.0 here) through the
//! `openssl` crate, plus a small FFI (`src/ffi.rs`) for the TLS 1.3 PSK
//! callbacks the crate does not wrap. After it, our record layer
//! (`src/record.rs`) seals and opens records with aws-lc-rs's AEAD, from
//! the traffic secrets OpenSSL logs; README.md says why.
//!
//! # What is negotiated
//! - TLS 1.3 only. No certificates, no session tickets (`SSL_OP_NO_TICKET`,
//!   `num_tickets` 0), no renegotiation (TLS 1.3 has none; `SSL_OP_NO_RENEGOTIATION`
//!   anyway), no early data (our PSK sessions allow none).
//! - The PSK's hash picks the suite ([`TlsHash`]): SHA-256 ↔
//!   TLS_AES_128_GCM_SHA256, SHA-384 ↔ TLS_AES_256_GCM_SHA384. The client
//!   offers only that suite; the server, once it has looked the identity up
//!   (in its ClientHello callback), allows only that suite for the connection,
//!   so a peer offering both suites in any order still gets the right one.
//! - Key exchange: the server accepts psk_dhe_ke and psk_ke; OpenSSL's server
//!   picks psk_dhe_ke whenever the client offers it. The client offers
//!   psk_dhe_ke, plus psk_ke with [`ClientOptions::allow_psk_ke`].
//! - Identities are ASCII strings such as `NVMe0R01 <hostnqn> <subnqn>`
//!   (derived by `nvmf_proto::auth::tls_psk`); the server looks the first
//!   identity the client offers up through the caller's [`PskLookup`].
//!
//! # Bounds (memory per session)
//! - A TLS record is at most [`MAX_RECORD_LEN`] bytes on the wire (5-byte header
//!   + 2^14 + 256) and carries at most [`MAX_PLAINTEXT`] bytes.
//! - Inbound ciphertext waiting for OpenSSL: at most [`Limits::inbound_max`]
//!   (default 256 KiB); [`TlsSession::feed`] takes only what fits and returns
//!   how much it took (backpressure: read the plaintext, then feed the rest).
//! - Outbound ciphertext not yet taken: at most [`Limits::outbound_max`] + one
//!   `write_plaintext` step (≤ [`Limits::outbound_max`] of plaintext + record
//!   overhead) + a few small control records (KeyUpdate, alerts);
//!   [`TlsSession::write_plaintext`] takes only what fits and returns how much.
//! - OpenSSL's own per-connection buffers during the handshake: one read and
//!   one write record buffer (about 17 KiB each, 2^14 + overhead).
//! - After the handshake: an incomplete post-handshake message (a
//!   NewSessionTicket) of at most 72 KiB; anything longer is refused.
//! - [`TlsSession::read_plaintext`] grows `out` by at most `max`.
//! - Plaintext is never buffered by this crate: a record is decrypted in
//!   place in the input and copied to the caller.
//!
//! # Secrets
//! The PSK lives in a [`Zeroizing`](zeroize::Zeroizing) buffer on our side and
//! in OpenSSL's session object (cleansed by `SSL_SESSION_free`). No `Debug`
//! impl or error message contains it; errors carry OpenSSL's reason strings
//! and our own fixed texts only. Identities are not secret.
//!
//! # Driving a session
//! After any call, [`TlsSession::take_ciphertext`] may have bytes to send
//! (handshake flights, KeyUpdate answers, alerts — also after an error: send
//! the alert, then close). A peer's KeyUpdate is processed when its record is
//! opened (by reading plaintext, or [`TlsSession::open_into`]), and an
//! update_requested is answered at once, before any later record of ours.

mod ffi;
pub mod fuzz;
mod record;
mod session;

pub use session::{ClientOptions, Limits, PskLookup, ServerConfig, TlsSession};

/// Largest TLSPlaintext fragment (2^14).
pub const MAX_PLAINTEXT: usize = 16 * 1024;
/// Largest record on the wire: 5-byte header + TLSCiphertext (2^14 + 256).
pub const MAX_RECORD_LEN: usize = 5 + MAX_PLAINTEXT + 256;

/// The PSK's hash, which decides the cipher suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsHash {
    /// 32-byte PSK, TLS_AES_128_GCM_SHA256.
    Sha256,
    /// 48-byte PSK, TLS_AES_256_GCM_SHA384.
    Sha384,
}

impl TlsHash {
    /// PSK (and digest) length in bytes.
    pub fn psk_len(self) -> usize {
        match self {
            TlsHash::Sha256 => 32,
            TlsHash::Sha384 => 48,
        }
    }

    /// The hash of a PSK of `len` bytes (32 or 48), as Linux tlshd pairs them.
    pub fn from_psk_len(len: usize) -> Option<TlsHash> {
        match len {
            32 => Some(TlsHash::Sha256),
            48 => Some(TlsHash::Sha384),
            _ => None,
        }
    }

    /// The TLS 1.3 cipher suite (IANA and OpenSSL name).
    pub fn suite_name(self) -> &'static str {
        match self {
            TlsHash::Sha256 => "TLS_AES_128_GCM_SHA256",
            TlsHash::Sha384 => "TLS_AES_256_GCM_SHA384",
        }
    }

    /// The suite's two-byte code.
    pub(crate) fn suite_code(self) -> [u8; 2] {
        match self {
            TlsHash::Sha256 => [0x13, 0x01],
            TlsHash::Sha384 => [0x13, 0x02],
        }
    }
}

/// How the handshake's keys were made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyExchange {
    /// psk_dhe_ke: PSK plus (EC)DHE (forward secrecy).
    PskDhe,
    /// psk_ke: the PSK alone.
    Psk,
}

/// Errors. Messages never contain key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// Bad arguments or OpenSSL refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// The handshake failed (locally detected, or the peer's alert).
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    /// After the handshake: a bad record, a peer's fatal alert, an internal error.
    #[error("TLS protocol error: {0}")]
    Protocol(String),
    /// Plaintext written before the handshake finished.
    #[error("TLS handshake not finished")]
    NotReady,
    /// Plaintext written after `close` or after the peer's close_notify.
    #[error("TLS session closed")]
    Closed,
}

/// True if `first_bytes` (at least 3 of them) start a TLS handshake record
/// (0x16 0x03 0x01..=0x04), which an NVMe/TCP ICReq (PDU type 0x00) never does:
/// a listener that allows TLS and plain TCP tells them apart with this.
/// Fewer than 3 bytes: false (wait for more if `first_bytes[0] == 0x16`).
pub fn looks_like_tls(first_bytes: &[u8]) -> bool {
    matches!(first_bytes, [0x16, 0x03, 0x01..=0x04, ..])
}

/// The PSK as a DER `SSL_SESSION` (what `openssl s_server/s_client
/// -psk_session` read, after `openssl sess_id -inform DER`): the tests use it
/// to give the openssl tool a SHA-384 PSK, which its `-psk` cannot (that one
/// is fixed to TLS_AES_128_GCM_SHA256). Contains the key: handle as secret.
#[doc(hidden)]
pub fn psk_session_der(psk: &[u8], hash: TlsHash) -> Result<zeroize::Zeroizing<Vec<u8>>, TlsError> {
    use foreign_types_shared::ForeignType;
    use openssl::ssl::{Ssl, SslContext, SslMethod, SslSession};
    let e = |what: &str, err: openssl::error::ErrorStack| TlsError::Config(format!("{what}: {err}"));
    let ctx = SslContext::builder(SslMethod::tls()).map_err(|x| e("SSL_CTX_new", x))?.build();
    let ssl = Ssl::new(&ctx).map_err(|x| e("SSL_new", x))?;
    // SAFETY: `ssl` is live for the call; the new session is owned by the
    // SslSession wrapper, which frees it.
    let sess = unsafe { ffi::psk_session(ssl.as_ptr(), psk, hash.suite_code()) }
        .ok_or_else(|| TlsError::Config("OpenSSL refused the PSK session".into()))?;
    // SAFETY: `sess` is a valid SSL_SESSION whose ownership moves here.
    let sess = unsafe { SslSession::from_ptr(sess) };
    sess.to_der().map(zeroize::Zeroizing::new).map_err(|x| e("i2d_SSL_SESSION", x))
}
