//! NVMe/TCP TLS on the host (NVMe/TCP transport spec section 3.6, TP 8011):
//! TLS 1.3 with a pre-shared key, set up on every queue after the TCP connect
//! and before the ICReq; afterwards every PDU byte goes through the session.
//!
//! The key and the identity follow libnvme's `nvme connect --tls-key`
//! (`__nvme_import_tls_key` in `src/nvme/linux.c`):
//!
//! - The key is a configured PSK in the interchange format
//!   (`NVMeTLSkey-1:hh:<base64>:`). Without an explicit identity the retained
//!   PSK, the identity and the TLS PSK are derived from it, the host NQN and
//!   the subsystem NQN (`nvmf_proto::auth::tls_psk::derive`). libnvme passes
//!   the interchange format's version (1) as the identity version, so its
//!   connect offers a v1 identity `NVMe1Rhh <hostnqn> <subnqn> <digest>`
//!   whatever `hh` (00, 01 or 02) is; that is the default here too
//!   ([`TlsOptions::identity_version`]). For `hh` 00 the configured PSK is
//!   the retained PSK and its length picks the hash.
//! - With an explicit identity (`--tls-key-identity`) and `hh` 01/02, libnvme
//!   puts the key into the keyring *as is* under that identity: the key is
//!   then the TLS PSK itself, as `nvme tls-key --export` prints keys from a
//!   keyring. Same here. An explicit identity with an `hh` 00 key is refused
//!   (libnvme would only use it to look the keyring up, then derive its own).
//! - `compat` ([`HkdfLabelLayout::LibnvmeLegacy`]): the HKDF-Expand-Label
//!   layout of libnvme before 1.16 (nvme-cli `--compat`), for a controller
//!   whose keyring was filled by such a libnvme (Debian trixie's nvme-cli 2.13).
//! - Discovery controllers use the same mechanism, with the discovery NQN as
//!   the subsystem NQN (as nvme-cli).
//!
//! Secrets: the configured key and the TLS PSK are [`Secret`]s (zeroed on
//! drop, redacted in `Debug`); no error text contains them. Identities are
//! not secret.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use nvmf_proto::auth::tls_psk::{self, ConfiguredPsk, HkdfLabelLayout, IdentityVersion};
use nvmf_proto::auth::{HashId, Secret};
use nvmf_tls::{ClientOptions, Limits, TlsError, TlsHash, TlsSession, MAX_RECORD_LEN};

use crate::error::{Error, Result};

/// Ciphertext read per socket read (besides one record of slack).
const CT_READ_BYTES: usize = 64 * 1024;

/// The TLS settings of [`ConnectOptions::tls`](crate::ConnectOptions::tls).
#[derive(Clone)]
pub struct TlsOptions {
    /// The configured PSK (interchange format `NVMeTLSkey-1:hh:<base64>:`),
    /// or with [`identity`](Self::identity) the TLS PSK itself.
    pub key: ConfiguredPsk,
    /// Version of the derived identity. Default v1, as libnvme's connect.
    pub identity_version: IdentityVersion,
    /// HKDF-Expand-Label layout of the derivations. Default RFC 8446;
    /// [`HkdfLabelLayout::LibnvmeLegacy`] for `--tls-key-compat`.
    pub layout: HkdfLabelLayout,
    /// Offer this identity, with [`key`](Self::key) (`hh` 01 or 02) as the
    /// TLS PSK as is (nvme-cli `--tls-key-identity`).
    pub identity: Option<String>,
    /// Offer a SHA-384 (48-byte) TLS PSK as a SHA-256 one: binder and suite
    /// TLS_AES_128_GCM_SHA256 (a deviation from NVMe/TCP, which pairs SHA-384
    /// PSKs with TLS_AES_256_GCM_SHA384). For Linux targets whose tlshd runs
    /// on GnuTLS before 3.8.10, which computes every external PSK's binder
    /// with SHA-256 (ktls-utils commit a5a25e9): the Linux host there ends up
    /// on a SHA-256 suite too (TLS_CHACHA20_POLY1305_SHA256). Default false.
    pub sha256_suite: bool,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("key", &format_args!("<redacted, hh {:02}>", self.key.transform().map_or(0, HashId::id)))
            .field("identity_version", &self.identity_version)
            .field("layout", &self.layout)
            .field("identity", &self.identity)
            .field("sha256_suite", &self.sha256_suite)
            .finish()
    }
}

impl TlsOptions {
    /// Derive from `key` with the defaults (v1 identity, RFC 8446 layout).
    pub fn new(key: ConfiguredPsk) -> TlsOptions {
        TlsOptions {
            key,
            identity_version: IdentityVersion::V1,
            layout: HkdfLabelLayout::Rfc8446,
            identity: None,
            sha256_suite: false,
        }
    }

    /// Parse the interchange format; the error never repeats the text.
    pub fn from_interchange(text: &str) -> std::result::Result<TlsOptions, String> {
        ConfiguredPsk::parse(text)
            .map(TlsOptions::new)
            .map_err(|e| format!("not a usable TLS PSK (NVMeTLSkey-1:hh:<base64>:): {e}"))
    }

    /// The identity offered and the TLS PSK for this host and subsystem.
    pub fn psk(&self, host_nqn: &str, subsys_nqn: &str) -> std::result::Result<TlsPsk, String> {
        if let Some(identity) = &self.identity {
            let Some(hash) = self.key.transform() else {
                return Err("an explicit TLS identity needs the TLS PSK itself (interchange hash 01 or 02, as \
                            `nvme tls-key --export` prints it); an hh 00 key is a configured PSK whose identity is \
                            derived: drop the identity"
                    .into());
            };
            if identity.is_empty() || identity.len() > usize::from(u16::MAX) {
                return Err("the TLS identity must be 1 to 65535 bytes".into());
            }
            return Ok(TlsPsk { identity: identity.clone(), psk: self.key.key().clone(), hash: self.suite(hash)? });
        }
        let d = tls_psk::derive(&self.key, host_nqn, subsys_nqn, self.identity_version, self.layout)
            .map_err(|e| format!("TLS PSK derivation: {e}"))?;
        Ok(TlsPsk { identity: d.identity, psk: d.tls_psk, hash: self.suite(self.key.tls_hash())? })
    }

    /// The suite's hash for a PSK of hash `h`.
    fn suite(&self, h: HashId) -> std::result::Result<TlsHash, String> {
        if self.sha256_suite {
            return Ok(TlsHash::Sha256);
        }
        tls_hash(h)
    }
}

fn tls_hash(h: HashId) -> std::result::Result<TlsHash, String> {
    TlsHash::from_psk_len(h.digest_len()).ok_or_else(|| "SHA-512 has no NVMe/TCP TLS cipher suite".into())
}

/// What one controller's queues offer: the identity and the TLS PSK.
#[derive(Clone, Debug)]
pub struct TlsPsk {
    pub identity: String,
    /// Redacted in `Debug`, zeroed on drop.
    pub psk: Secret,
    pub hash: TlsHash,
}

impl TlsPsk {
    /// A client session offering this identity and PSK, with `limits` (the
    /// blocking drivers use the defaults, engine queues
    /// `nvmf_engine::tls_session_limits()`). Every host queue, blocking or
    /// on an engine core, makes its session here.
    pub fn client_session(&self, limits: Limits) -> std::result::Result<TlsSession, TlsError> {
        // A PSK longer than its suite's hash only with TlsOptions::sha256_suite.
        let opts =
            ClientOptions { any_psk_len: self.psk.len() != self.hash.psk_len(), limits, ..ClientOptions::default() };
        TlsSession::client(&self.identity, self.psk.as_bytes(), self.hash, opts)
    }
}

/// What one socket read gave.
pub(crate) enum Rx {
    /// Plaintext bytes (possibly 0: a control record, or nothing yet).
    Data(usize),
    /// The connection ended; the reason.
    Closed(&'static str),
}

/// The TLS session of one queue and its ciphertext buffers.
pub(crate) struct TlsLink {
    session: TlsSession,
    /// Ciphertext read from the socket; `ct[ct_pos..ct_len]` not yet fed.
    ct: Vec<u8>,
    ct_pos: usize,
    ct_len: usize,
    /// Ciphertext to send (swapped with the session's buffer: no copy).
    out: Vec<u8>,
}

impl std::fmt::Debug for TlsLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsLink").field("session", &self.session).finish_non_exhaustive()
    }
}

fn tls_err(qid: u16) -> impl Fn(TlsError) -> Error {
    move |error| Error::Tls { qid, error }
}

impl TlsLink {
    /// Run the client handshake on `sock` (connected, nothing sent yet),
    /// bounded by `deadline`.
    pub(crate) fn handshake(sock: &mut TcpStream, qid: u16, psk: &TlsPsk, deadline: Instant) -> Result<TlsLink> {
        let session = psk.client_session(ClientOptions::default().limits).map_err(tls_err(qid))?;
        let mut l =
            TlsLink { session, ct: vec![0; CT_READ_BYTES + MAX_RECORD_LEN], ct_pos: 0, ct_len: 0, out: Vec::new() };
        let mut first = true;
        loop {
            l.send_pending(sock)?;
            if l.session.handshake_done() {
                tracing::debug!(qid, identity = %psk.identity, hash = ?psk.hash, "TLS handshake done");
                return Ok(l);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout("TLS handshake"));
            }
            sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
            let n = match sock.read(&mut l.ct[l.ct_len..]) {
                Ok(0) => {
                    return Err(Error::Io(std::io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "the controller closed the connection during the TLS handshake (it may not know this \
                         PSK identity, its PSK may differ, or it has no TLS handshake agent running)",
                    )))
                }
                Ok(n) => n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                    continue
                }
                Err(e) => return Err(e.into()),
            };
            if std::mem::take(&mut first) && !(0x14..=0x17).contains(&l.ct[0]) {
                // Not a TLS record (an NVMe/TCP PDU type is 0x00..=0x09).
                return Err(tls_err(qid)(TlsError::Handshake(format!(
                    "the controller did not answer with TLS (first byte {:#04x}): TLS is not enabled on its port",
                    l.ct[0]
                ))));
            }
            l.ct_len += n;
            if let Err(e) = l.feed_pending() {
                let _ = l.send_pending(sock); // the alert
                return Err(tls_err(qid)(e));
            }
        }
    }

    /// Feed what the session takes of the ciphertext read so far.
    fn feed_pending(&mut self) -> std::result::Result<(), TlsError> {
        // Again after a partial take: the session stops at the handshake's
        // last record, and the record layer takes what follows.
        while self.ct_pos < self.ct_len {
            let n = self.session.feed(&self.ct[self.ct_pos..self.ct_len])?;
            if n == 0 {
                break;
            }
            self.ct_pos += n;
        }
        if self.ct_pos == self.ct_len {
            (self.ct_pos, self.ct_len) = (0, 0);
        }
        Ok(())
    }

    /// Send the ciphertext the session produced (flights, KeyUpdate answers, alerts).
    fn send_pending(&mut self, sock: &mut TcpStream) -> std::io::Result<()> {
        debug_assert!(self.out.is_empty());
        self.session.take_ciphertext(&mut self.out);
        if self.out.is_empty() {
            return Ok(());
        }
        let r = sock.write_all(&self.out);
        self.out.clear();
        r
    }

    /// Encrypt and send `plaintext`.
    pub(crate) fn write(&mut self, sock: &mut TcpStream, qid: u16, plaintext: &[u8]) -> Result<()> {
        let mut done = 0;
        while done < plaintext.len() {
            done += self.session.write_plaintext(&plaintext[done..]).map_err(tls_err(qid))?;
            self.send_pending(sock)?;
        }
        Ok(())
    }

    /// Plaintext into `buf`: first what the session already holds; only when
    /// it holds none, one socket read through `read` (which applies the
    /// caller's wait). A peer's KeyUpdate is answered here.
    pub(crate) fn read(
        &mut self,
        sock: &mut TcpStream,
        qid: u16,
        buf: &mut [u8],
        read: impl FnOnce(&mut TcpStream, &mut [u8]) -> std::io::Result<usize>,
    ) -> Result<Rx> {
        let n = self.drain(sock, qid, buf)?;
        if n > 0 {
            return Ok(Rx::Data(n));
        }
        if self.session.peer_closed() {
            return Ok(Rx::Closed("the controller closed the TLS session (close_notify)"));
        }
        if self.ct_pos > 0 {
            self.ct.copy_within(self.ct_pos..self.ct_len, 0);
            (self.ct_pos, self.ct_len) = (0, self.ct_len - self.ct_pos);
        }
        if self.ct_len == self.ct.len() {
            return Ok(Rx::Data(0)); // the session holds a full buffer: drained next time
        }
        let got = match read(sock, &mut self.ct[self.ct_len..]) {
            Ok(0) => return Ok(Rx::Closed("connection closed by the controller (without TLS close_notify)")),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                return Ok(Rx::Data(0))
            }
            Err(e) => return Err(e.into()),
        };
        self.ct_len += got;
        let n = self.drain(sock, qid, buf)?;
        if n == 0 && self.session.peer_closed() {
            return Ok(Rx::Closed("the controller closed the TLS session (close_notify)"));
        }
        Ok(Rx::Data(n))
    }

    /// Feed pending ciphertext, read the plaintext it gives, send answers.
    fn drain(&mut self, sock: &mut TcpStream, qid: u16, buf: &mut [u8]) -> Result<usize> {
        let mut got = 0;
        loop {
            let fed = self.feed_pending().and_then(|_| self.session.read_plaintext_into(&mut buf[got..]));
            let sent = self.send_pending(sock);
            let n = fed.map_err(tls_err(qid))?;
            sent?;
            got += n;
            // More ciphertext waits only when the session's inbound was full:
            // reading plaintext made room, so feed again while there is space.
            if n == 0 || got == buf.len() || self.ct_pos == self.ct_len {
                return Ok(got);
            }
        }
    }

    /// Send close_notify, best effort and without blocking.
    pub(crate) fn close(&mut self, sock: &mut TcpStream) {
        self.session.close();
        if sock.set_nonblocking(true).is_ok() {
            let _ = self.send_pending(sock);
        }
        self.out.clear();
    }
}
