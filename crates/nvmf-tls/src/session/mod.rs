//! The session: an OpenSSL `SSL` over an in-memory transport ([`MemIo`])
//! for the handshake, then our record layer (`crate::record`); its data
//! path after the handshake (open, read, write, KeyUpdate, close) is in
//! `data.rs`.
//!
//! Longer than the project's ~800 lines on purpose: the session and the
//! OpenSSL callbacks that fill its per-connection state (`ConnState`, in the
//! SSL's ex_data) are one unit of unsafe code to review; split, that state
//! and its invariants would have to be shared across files.

use std::io::{self, Read, Write};
use std::os::raw::{c_int, c_uchar};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock};

use foreign_types_shared::ForeignTypeRef;
use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::ssl::{
    ClientHelloResponse, ErrorCode, Ssl, SslAlert, SslContext, SslContextBuilder, SslMethod, SslOptions, SslRef,
    SslSessionCacheMode, SslStream, SslVerifyMode, SslVersion,
};
use openssl_sys::{EVP_MD, SSL, SSL_SESSION};
use zeroize::Zeroizing;

mod data;

use crate::record::{Records, Suite, HEADER_LEN};
use crate::{ffi, KeyExchange, TlsError, TlsHash, MAX_RECORD_LEN};

/// The server's PSK lookup: identity bytes → the TLS PSK and its hash, or
/// None for an unknown identity. Called once per handshake, on the thread
/// that feeds the session; it must not panic (a panic fails the handshake).
pub type PskLookup = dyn Fn(&[u8]) -> Option<(Zeroizing<Vec<u8>>, TlsHash)> + Send + Sync;

/// Buffer bounds of one session (see the crate docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Ciphertext fed but not yet consumed by OpenSSL, bytes (at least one record).
    pub inbound_max: usize,
    /// Ciphertext produced but not yet taken, bytes (at least one record).
    pub outbound_max: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { inbound_max: 256 * 1024, outbound_max: 256 * 1024 }
    }
}

impl Limits {
    fn clamped(self) -> Limits {
        Limits {
            inbound_max: self.inbound_max.max(MAX_RECORD_LEN),
            outbound_max: self.outbound_max.max(MAX_RECORD_LEN),
        }
    }
}

/// Client settings besides the identity and the PSK.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientOptions {
    /// Offer psk_ke (no (EC)DHE) besides psk_dhe_ke. Default false: only
    /// psk_dhe_ke. (OpenSSL cannot offer psk_ke alone.)
    pub allow_psk_ke: bool,
    /// Take a 32- or 48-byte PSK whatever `hash` says (default false: the
    /// PSK must be the hash's length). For peers that bind every external
    /// PSK to SHA-256, such as tlshd on GnuTLS before 3.8.10: a 48-byte PSK
    /// then goes with TLS_AES_128_GCM_SHA256 (a spec deviation, by request).
    pub any_psk_len: bool,
    pub limits: Limits,
}

/// What the PSK callbacks and the session share, in the SSL's ex_data.
#[derive(Default)]
struct ConnState {
    /// Client: the identity to offer. Server: the identity looked up.
    identity: Option<String>,
    key: Option<Zeroizing<Vec<u8>>>,
    hash: Option<TlsHash>,
    /// Server: the suite chosen for the PSK (its two-byte code).
    suite: Option<[u8; 2]>,
    /// Server: why the ClientHello was refused (our words, no secrets).
    failure: Option<&'static str>,
    /// Server: the PSK went to OpenSSL (so a later failure is the binder's).
    psk_offered: bool,
    /// The application traffic secrets, from OpenSSL's key log callback;
    /// taken by the record layer when the handshake ends.
    traffic: Mutex<TrafficSecrets>,
}

#[derive(Default)]
struct TrafficSecrets {
    client: Option<Zeroizing<Vec<u8>>>,
    server: Option<Zeroizing<Vec<u8>>>,
}

/// OpenSSL's key log callback (`SSL_CTX_set_keylog_callback`), the only
/// interface of OpenSSL 3.0 that hands out the TLS 1.3 traffic secrets (as
/// it does to its own kTLS code internally). Keeps the two application
/// traffic secrets in the connection's state; no line is written anywhere.
/// OpenSSL cleanses the line after the call.
fn keylog(ssl: &SslRef, line: &str) {
    let mut words = line.split(' ');
    let (Some(label), Some(_client_random), Some(hex), None) = (words.next(), words.next(), words.next(), words.next())
    else {
        return;
    };
    let client = match label {
        "CLIENT_TRAFFIC_SECRET_0" => true,
        "SERVER_TRAFFIC_SECRET_0" => false,
        _ => return,
    };
    let Ok(index) = conn_index() else { return };
    let Some(st) = ssl.ex_data(index) else { return };
    let Some(secret) = decode_hex(hex) else { return };
    let Ok(mut t) = st.traffic.lock() else { return };
    if client {
        t.client = Some(secret);
    } else {
        t.server = Some(secret);
    }
}

fn decode_hex(hex: &str) -> Option<Zeroizing<Vec<u8>>> {
    if !hex.len().is_multiple_of(2) || hex.len() > 2 * 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Zeroizing::new(Vec::with_capacity(hex.len() / 2));
    for pair in hex.as_bytes().chunks_exact(2) {
        out.push(digit(pair[0])? << 4 | digit(pair[1])?);
    }
    Some(out)
}

fn conn_index() -> Result<Index<Ssl, ConnState>, TlsError> {
    static INDEX: OnceLock<Index<Ssl, ConnState>> = OnceLock::new();
    if let Some(i) = INDEX.get() {
        return Ok(*i);
    }
    let i = Ssl::new_ex_index::<ConnState>().map_err(|e| config_error("ex_data index", &e))?;
    // A racing thread may have set another index: use whichever won.
    Ok(*INDEX.get_or_init(|| i))
}

fn config_error(what: &str, e: &ErrorStack) -> TlsError {
    TlsError::Config(format!("{what}: {}", reasons(e)))
}

fn reasons(e: &ErrorStack) -> String {
    let v: Vec<&str> = e.errors().iter().filter_map(|e| e.reason()).collect();
    if v.is_empty() {
        "no reason given".to_string()
    } else {
        v.join("; ")
    }
}

const EXT_PRE_SHARED_KEY: u32 = 41;
const EXT_SUPPORTED_VERSIONS: u32 = 43;

/// The first identity of a pre_shared_key extension (RFC 8446 4.2.11).
fn first_psk_identity(ext: &[u8]) -> Option<&[u8]> {
    let list_len = usize::from(u16::from_be_bytes([*ext.first()?, *ext.get(1)?]));
    let list = ext.get(2..2 + list_len)?;
    let id_len = usize::from(u16::from_be_bytes([*list.first()?, *list.get(1)?]));
    let id = list.get(2..2 + id_len)?;
    // The obfuscated_ticket_age follows.
    list.get(2 + id_len..2 + id_len + 4)?;
    (!id.is_empty()).then_some(id)
}

/// SHA-256 suites a server may pick for a SHA-384 PSK that the client bound
/// with SHA-256 (see `server_client_hello`): code and OpenSSL name.
const SUITE_AES_128_GCM_SHA256: ([u8; 2], &str) = ([0x13, 0x01], "TLS_AES_128_GCM_SHA256");
const SUITE_CHACHA20_POLY1305_SHA256: ([u8; 2], &str) = ([0x13, 0x03], "TLS_CHACHA20_POLY1305_SHA256");

/// The length of the first PSK binder of a pre_shared_key extension: the
/// hash the client computed it with (32: SHA-256, 48: SHA-384).
fn first_binder_len(ext: &[u8]) -> Option<usize> {
    let list_len = usize::from(u16::from_be_bytes([*ext.first()?, *ext.get(1)?]));
    let binders = ext.get(2 + list_len..)?;
    // u16 length of the binder list, then u8 length of the first binder.
    let len = usize::from(*binders.get(2)?);
    binders.get(3..3 + len)?;
    Some(len)
}

/// Whether a supported_versions extension (ClientHello form) lists TLS 1.3.
fn offers_tls13(ext: &[u8]) -> bool {
    let Some((&len, list)) = ext.split_first() else { return false };
    list.get(..usize::from(len)).is_some_and(|l| l.chunks_exact(2).any(|v| v == [0x03, 0x04]))
}

fn common_context(ctx: &mut SslContextBuilder) -> Result<(), TlsError> {
    let e = |what: &'static str| move |err: ErrorStack| config_error(what, &err);
    ctx.set_min_proto_version(Some(SslVersion::TLS1_3)).map_err(e("min version"))?;
    ctx.set_max_proto_version(Some(SslVersion::TLS1_3)).map_err(e("max version"))?;
    ctx.set_options(SslOptions::NO_TICKET | SslOptions::NO_RENEGOTIATION);
    ctx.set_num_tickets(0).map_err(e("num_tickets"))?;
    ctx.set_session_cache_mode(SslSessionCacheMode::OFF);
    ctx.set_max_early_data(0).map_err(e("max_early_data"))?;
    ctx.set_verify(SslVerifyMode::NONE);
    // No read-ahead: OpenSSL reads exactly the records it is given (the
    // session feeds it whole handshake records and stops at the end of the
    // handshake; what follows belongs to our record layer).
    ctx.set_read_ahead(false);
    ctx.set_keylog_callback(keylog);
    Ok(())
}

/// Server side: a context made once per listener, a session per connection.
#[derive(Clone)]
pub struct ServerConfig {
    ctx: SslContext,
    pub limits: Limits,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig").field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl ServerConfig {
    pub fn new(lookup: Arc<PskLookup>) -> Result<ServerConfig, TlsError> {
        let index = conn_index()?;
        let mut ctx = SslContext::builder(SslMethod::tls_server()).map_err(|e| config_error("SSL_CTX_new", &e))?;
        common_context(&mut ctx)?;
        // Both suites; the ClientHello callback narrows to the PSK's.
        ctx.set_ciphersuites("TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384")
            .map_err(|e| config_error("ciphersuites", &e))?;
        ctx.set_options(SslOptions::from_bits_retain(ffi::SSL_OP_ALLOW_NO_DHE_KEX as _));
        ctx.set_client_hello_callback(move |ssl, alert| server_client_hello(ssl, alert, index, &*lookup));
        ffi::set_find_session_callback(&mut ctx, server_find_session);
        Ok(ServerConfig { ctx: ctx.build(), limits: Limits::default() })
    }

    /// A new server session (waits for the ClientHello).
    pub fn session(&self) -> Result<TlsSession, TlsError> {
        let index = conn_index()?;
        let mut ssl = Ssl::new(&self.ctx).map_err(|e| config_error("SSL_new", &e))?;
        ssl.set_ex_data(index, ConnState::default());
        ssl.set_accept_state();
        TlsSession::new(ssl, self.limits, index)
    }
}

/// ClientHello callback: look the first PSK identity up and allow only the
/// suite of its hash for this connection.
fn server_client_hello(
    ssl: &mut SslRef,
    alert: &mut SslAlert,
    index: Index<Ssl, ConnState>,
    lookup: &PskLookup,
) -> Result<ClientHelloResponse, ErrorStack> {
    let refuse = |ssl: &mut SslRef, alert: &mut SslAlert, why: &'static str, a: SslAlert| {
        if let Some(st) = ssl.ex_data_mut(index) {
            st.failure = Some(why);
        }
        *alert = a;
        Err(ErrorStack::get())
    };
    let Some(psk_ext) = ffi::client_hello_ext(ssl, EXT_PRE_SHARED_KEY) else {
        if !ffi::client_hello_ext(ssl, EXT_SUPPORTED_VERSIONS).is_some_and(offers_tls13) {
            // Let OpenSSL refuse the version with its protocol_version alert.
            if let Some(st) = ssl.ex_data_mut(index) {
                st.failure = Some("the client does not offer TLS 1.3");
            }
            return Ok(ClientHelloResponse::SUCCESS);
        }
        return refuse(
            ssl,
            alert,
            "the client offered no PSK (certificate-based TLS is not supported)",
            SslAlert::HANDSHAKE_FAILURE,
        );
    };
    let Some(identity) = first_psk_identity(psk_ext).map(<[u8]>::to_vec) else {
        return refuse(ssl, alert, "malformed pre_shared_key extension", SslAlert::DECODE_ERROR);
    };
    let found = catch_unwind(AssertUnwindSafe(|| lookup(&identity))).unwrap_or(None);
    let Some((key, hash)) = found else {
        return refuse(ssl, alert, "PSK identity not known", SslAlert::UNKNOWN_PSK_IDENTITY);
    };
    if key.len() != hash.psk_len() {
        return refuse(
            ssl,
            alert,
            "the PSK found for this identity is not as long as its hash",
            SslAlert::INTERNAL_ERROR,
        );
    }
    let Ok(identity) = String::from_utf8(identity) else {
        return refuse(ssl, alert, "PSK identity is not UTF-8", SslAlert::UNKNOWN_PSK_IDENTITY);
    };
    let offered = |code: [u8; 2]| ssl.client_hello_ciphers().is_some_and(|c| c.chunks_exact(2).any(|c| c == code));
    // The suite's hash must be the one the client bound the PSK with. tlshd
    // on GnuTLS before 3.8.10 (Debian 13's Linux hosts) binds every PSK with
    // SHA-256, a 48-byte SHA-384 one too, and then needs a SHA-256 suite
    // (it does not offer TLS_AES_128_GCM_SHA256 for it, so ChaCha20 is
    // what remains); Linux nvmet + tlshd accept that, so we do too
    // (docs/deviations.md). The PSK stays the one the lookup found.
    let suite = match (hash, first_binder_len(psk_ext)) {
        (TlsHash::Sha384, Some(32)) => {
            [SUITE_AES_128_GCM_SHA256, SUITE_CHACHA20_POLY1305_SHA256].into_iter().find(|(code, _)| offered(*code))
        }
        _ => Some((hash.suite_code(), hash.suite_name())).filter(|(code, _)| offered(*code)),
    };
    let Some((code, name)) = suite else {
        return refuse(
            ssl,
            alert,
            match hash {
                TlsHash::Sha256 => "the client does not offer TLS_AES_128_GCM_SHA256, the suite of this SHA-256 PSK",
                TlsHash::Sha384 => "the client does not offer TLS_AES_256_GCM_SHA384, the suite of this SHA-384 PSK",
            },
            SslAlert::HANDSHAKE_FAILURE,
        );
    };
    ssl.set_ciphersuites(name)?;
    if let Some(st) = ssl.ex_data_mut(index) {
        st.identity = Some(identity);
        st.key = Some(key);
        st.hash = Some(hash);
        st.suite = Some(code);
    }
    Ok(ClientHelloResponse::SUCCESS)
}

/// `SSL_psk_find_session_cb_func`: hand OpenSSL the PSK found by the
/// ClientHello callback when the identity matches; otherwise no PSK.
unsafe extern "C" fn server_find_session(
    ssl: *mut SSL,
    identity: *const c_uchar,
    identity_len: usize,
    sess: *mut *mut SSL_SESSION,
) -> c_int {
    let r = catch_unwind(|| {
        // SAFETY: OpenSSL passes a valid `sess` out-pointer.
        unsafe { *sess = std::ptr::null_mut() };
        let Ok(index) = conn_index() else { return 0 };
        // SAFETY: `ssl` is the live SSL this callback runs for; the borrow
        // ends with the callback.
        let ssl_ref = unsafe { SslRef::from_ptr_mut(ssl) };
        let Some(st) = ssl_ref.ex_data_mut(index) else { return 0 };
        // SAFETY: OpenSSL passes `identity_len` readable bytes at `identity`.
        let id = unsafe { std::slice::from_raw_parts(identity, identity_len) };
        let (Some(known), Some(key), Some(code)) = (&st.identity, &st.key, st.suite) else { return 1 };
        if known.as_bytes() != id {
            return 1; // another identity of the list: no PSK for it
        }
        // SAFETY: `ssl` is live; the session's ownership passes to OpenSSL
        // through `*sess` (SSL_CTX_set_psk_find_session_callback(3)).
        match unsafe { ffi::psk_session(ssl, key, code) } {
            Some(s) => {
                // SAFETY: as above, valid out-pointer.
                unsafe { *sess = s };
                st.psk_offered = true;
                1
            }
            None => 0,
        }
    });
    r.unwrap_or(0)
}

/// `SSL_psk_use_session_cb_func`: offer our identity and PSK.
unsafe extern "C" fn client_use_session(
    ssl: *mut SSL,
    md: *const EVP_MD,
    id: *mut *const c_uchar,
    idlen: *mut usize,
    sess: *mut *mut SSL_SESSION,
) -> c_int {
    let r = catch_unwind(|| {
        // SAFETY: valid out-pointers from OpenSSL.
        unsafe {
            *sess = std::ptr::null_mut();
            *id = std::ptr::null();
            *idlen = 0;
        }
        let Ok(index) = conn_index() else { return 0 };
        // SAFETY: `ssl` is the live SSL this callback runs for.
        let ssl_ref = unsafe { SslRef::from_ptr(ssl) };
        let Some(st) = ssl_ref.ex_data(index) else { return 0 };
        let (Some(identity), Some(key), Some(hash)) = (&st.identity, &st.key, st.hash) else { return 0 };
        if !md.is_null() {
            // Second call (after a HelloRetryRequest): the PSK must fit the
            // handshake hash the server chose.
            // SAFETY: OpenSSL passes a valid EVP_MD.
            let size = unsafe { openssl::hash::MessageDigest::from_ptr(md) }.size();
            if size != hash.psk_len() {
                return 1; // no PSK: the handshake fails
            }
        }
        // SAFETY: `ssl` is live; ownership of the session passes to OpenSSL.
        let Some(s) = (unsafe { ffi::psk_session(ssl, key, hash.suite_code()) }) else { return 0 };
        // SAFETY: valid out-pointers; `identity` lives in the SSL's ex_data,
        // as long as the SSL (OpenSSL copies it anyway).
        unsafe {
            *sess = s;
            *id = identity.as_ptr();
            *idlen = identity.len();
        }
        1
    });
    r.unwrap_or(0)
}

/// The in-memory transport under OpenSSL's BIO.
#[derive(Default)]
struct MemIo {
    inbound: Vec<u8>,
    in_pos: usize,
    outbound: Vec<u8>,
    out_pos: usize,
}

impl MemIo {
    fn in_pending(&self) -> usize {
        self.inbound.len() - self.in_pos
    }
    fn out_pending(&self) -> usize {
        self.outbound.len() - self.out_pos
    }
}

impl Read for MemIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let avail = &self.inbound[self.in_pos..];
        if avail.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.in_pos += n;
        if self.in_pos == self.inbound.len() {
            self.inbound.clear();
            self.in_pos = 0;
        }
        Ok(n)
    }
}

impl Write for MemIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Never refuses: the session bounds what it asks OpenSSL to write.
        self.outbound.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One TLS connection, either side. Not `Sync`; `Send`.
pub struct TlsSession {
    /// OpenSSL runs the handshake; afterwards it only answers questions
    /// (identity, suite, group) and `MemIo` holds the record layer's
    /// buffers for callers of `feed`/`take_ciphertext`.
    stream: SslStream<MemIo>,
    limits: Limits,
    index: Index<Ssl, ConnState>,
    is_server: bool,
    established: bool,
    /// The record layer, from the end of the handshake on.
    records: Option<Records>,
    /// During the handshake: where the fed ciphertext's records end.
    boundary: RecordBoundary,
    peer_closed: bool,
    closed: bool,
    failed: Option<TlsError>,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field("is_server", &self.is_server)
            .field("established", &self.established)
            .field("peer_identity", &self.peer_identity())
            .field("peer_closed", &self.peer_closed)
            .field("closed", &self.closed)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// Where the handshake's ciphertext stands in its record framing.
#[derive(Debug, Default)]
struct RecordBoundary {
    header: [u8; HEADER_LEN],
    header_len: usize,
    /// Bytes of the current record's body still to come (0: a header next).
    body_left: usize,
}

fn is_want(e: &openssl::ssl::Error) -> bool {
    e.code() == ErrorCode::WANT_READ || e.code() == ErrorCode::WANT_WRITE
}

impl TlsSession {
    /// A client offering `identity` with `psk` (32 bytes for SHA-256, 48 for
    /// SHA-384). Its ClientHello is ready in [`TlsSession::take_ciphertext`].
    pub fn client(identity: &str, psk: &[u8], hash: TlsHash, opts: ClientOptions) -> Result<TlsSession, TlsError> {
        if identity.is_empty() || identity.len() > usize::from(u16::MAX) {
            return Err(TlsError::Config("PSK identity must be 1 to 65535 bytes".into()));
        }
        let len_ok = psk.len() == hash.psk_len() || (opts.any_psk_len && matches!(psk.len(), 32 | 48));
        if !len_ok {
            return Err(TlsError::Config(format!(
                "the PSK must be {} bytes for {:?}, it has {}",
                hash.psk_len(),
                hash,
                psk.len()
            )));
        }
        let index = conn_index()?;
        let mut ctx = SslContext::builder(SslMethod::tls_client()).map_err(|e| config_error("SSL_CTX_new", &e))?;
        common_context(&mut ctx)?;
        ctx.set_ciphersuites(hash.suite_name()).map_err(|e| config_error("ciphersuites", &e))?;
        if opts.allow_psk_ke {
            ctx.set_options(SslOptions::from_bits_retain(ffi::SSL_OP_ALLOW_NO_DHE_KEX as _));
        }
        ffi::set_use_session_callback(&mut ctx, client_use_session);
        let ctx = ctx.build();
        let mut ssl = Ssl::new(&ctx).map_err(|e| config_error("SSL_new", &e))?;
        ssl.set_ex_data(
            index,
            ConnState {
                identity: Some(identity.to_string()),
                key: Some(Zeroizing::new(psk.to_vec())),
                hash: Some(hash),
                ..ConnState::default()
            },
        );
        ssl.set_connect_state();
        let mut s = TlsSession::new(ssl, opts.limits, index)?;
        s.drive_handshake();
        match &s.failed {
            Some(e) => Err(e.clone()),
            None => Ok(s),
        }
    }

    /// A server with its own context (use [`ServerConfig`] to share one).
    pub fn server(lookup: Arc<PskLookup>) -> Result<TlsSession, TlsError> {
        ServerConfig::new(lookup)?.session()
    }

    fn new(ssl: Ssl, limits: Limits, index: Index<Ssl, ConnState>) -> Result<TlsSession, TlsError> {
        let is_server = ssl.is_server();
        let stream = SslStream::new(ssl, MemIo::default()).map_err(|e| config_error("BIO", &e))?;
        Ok(TlsSession {
            stream,
            limits: limits.clamped(),
            index,
            is_server,
            established: false,
            records: None,
            boundary: RecordBoundary::default(),
            peer_closed: false,
            closed: false,
            failed: None,
        })
    }

    /// Give it ciphertext received from the peer; returns how much it took.
    /// During the handshake it takes whole records and stops right after
    /// the one that ends the handshake (call again with the rest: from then
    /// on the record layer takes it); afterwards it takes what fits in
    /// [`Limits::inbound_max`] (read plaintext, then feed the rest). Control
    /// records (KeyUpdate, alerts) are handled when plaintext is read.
    pub fn feed(&mut self, ciphertext: &[u8]) -> Result<usize, TlsError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let io = self.stream.get_mut();
        if io.in_pos > 0 {
            io.inbound.drain(..io.in_pos);
            io.in_pos = 0;
        }
        if self.established {
            let room = self.limits.inbound_max.saturating_sub(io.inbound.len());
            let n = room.min(ciphertext.len());
            io.inbound.extend_from_slice(&ciphertext[..n]);
            // Control records (KeyUpdate, alerts) before the next data take
            // effect now, so a side that only writes answers a KeyUpdate too.
            if !self.peer_closed {
                self.open_inbound(&mut [])?;
            }
            return Ok(n);
        }
        let mut taken = 0;
        while taken < ciphertext.len() && !self.established && self.failed.is_none() {
            // Up to the end of the current record's header or body, so that
            // OpenSSL never sees a byte past its last handshake record.
            let io = self.stream.get_mut();
            let rest = &ciphertext[taken..];
            let room = self.limits.inbound_max.saturating_sub(io.inbound.len());
            let b = &mut self.boundary;
            let in_header = b.body_left == 0;
            let want = if in_header { HEADER_LEN - b.header_len } else { b.body_left };
            let n = want.min(rest.len()).min(room);
            if n == 0 {
                break;
            }
            if in_header {
                b.header[b.header_len..b.header_len + n].copy_from_slice(&rest[..n]);
                b.header_len += n;
                if b.header_len == HEADER_LEN {
                    b.header_len = 0;
                    b.body_left = usize::from(u16::from_be_bytes([b.header[3], b.header[4]]));
                }
            } else {
                b.body_left -= n;
            }
            io.inbound.extend_from_slice(&rest[..n]);
            taken += n;
            self.drive_handshake();
        }
        match &self.failed {
            Some(e) => Err(e.clone()),
            None => Ok(taken),
        }
    }

    fn drive_handshake(&mut self) {
        match self.stream.do_handshake() {
            Ok(()) => {
                if let Err(e) = self.start_records() {
                    self.failed = Some(e);
                } else {
                    self.established = true;
                }
            }
            Err(e) if is_want(&e) => {}
            Err(e) => self.failed = Some(self.handshake_error(&e)),
        }
    }

    /// The handshake is done: our record layer takes over with the traffic
    /// secrets OpenSSL logged. OpenSSL must not hold a byte past the
    /// handshake (it was fed record by record, without read-ahead).
    fn start_records(&mut self) -> Result<(), TlsError> {
        let internal = |why: &str| TlsError::Handshake(format!("internal: {why}"));
        let ssl = self.stream.ssl();
        let suite =
            ssl.current_cipher().and_then(|c| Suite::from_name(c.name())).ok_or_else(|| internal("no suite"))?;
        let st = ssl.ex_data(self.index).ok_or_else(|| internal("no connection state"))?;
        let (client, server) = {
            let mut t = st.traffic.lock().map_err(|_| internal("traffic secrets poisoned"))?;
            (t.client.take(), t.server.take())
        };
        let (Some(client), Some(server)) = (client, server) else {
            return Err(internal("OpenSSL gave no traffic secrets"));
        };
        if self.stream.get_ref().in_pending() != 0 {
            return Err(internal("ciphertext past the handshake reached OpenSSL"));
        }
        let (ours, theirs) = if self.is_server { (server, client) } else { (client, server) };
        self.records = Some(Records::new(suite, ours, theirs)?);
        Ok(())
    }

    /// Ciphertext to send now, appended to `out`. When `out` is empty its
    /// buffer and ours are swapped (no copy; hand the same Vec back next time
    /// and neither side allocates).
    pub fn take_ciphertext(&mut self, out: &mut Vec<u8>) {
        let io = self.stream.get_mut();
        if out.is_empty() && io.out_pos == 0 {
            std::mem::swap(out, &mut io.outbound);
        } else {
            out.extend_from_slice(&io.outbound[io.out_pos..]);
            io.outbound.clear();
            io.out_pos = 0;
        }
    }

    /// Ciphertext waiting to be sent, for a caller that sends from our buffer;
    /// follow with [`TlsSession::consume_ciphertext`].
    pub fn pending_ciphertext(&self) -> &[u8] {
        let io = self.stream.get_ref();
        &io.outbound[io.out_pos..]
    }

    /// Mark `n` bytes of [`TlsSession::pending_ciphertext`] as sent.
    pub fn consume_ciphertext(&mut self, n: usize) {
        let io = self.stream.get_mut();
        io.out_pos = (io.out_pos + n).min(io.outbound.len());
        if io.out_pos == io.outbound.len() {
            io.outbound.clear();
            io.out_pos = 0;
        }
    }

    /// Whether ciphertext waits to be taken.
    pub fn wants_write(&self) -> bool {
        self.stream.get_ref().out_pending() > 0
    }

    /// Ciphertext fed but not yet consumed by OpenSSL.
    pub fn inbound_pending(&self) -> usize {
        self.stream.get_ref().in_pending()
    }

    pub fn handshake_done(&self) -> bool {
        self.established
    }

    pub fn is_server(&self) -> bool {
        self.is_server
    }

    /// The PSK identity in use: on a server the one the client offered and the
    /// lookup knew (None before the ClientHello or if unknown); on a client
    /// its own.
    pub fn peer_identity(&self) -> Option<&str> {
        self.stream.ssl().ex_data(self.index).and_then(|s| s.identity.as_deref())
    }

    /// The negotiated suite's hash, after the handshake.
    pub fn hash(&self) -> Option<TlsHash> {
        if !self.established {
            return None;
        }
        match self.stream.ssl().current_cipher()?.name() {
            "TLS_AES_128_GCM_SHA256" | "TLS_CHACHA20_POLY1305_SHA256" => Some(TlsHash::Sha256),
            "TLS_AES_256_GCM_SHA384" => Some(TlsHash::Sha384),
            _ => None,
        }
    }

    /// psk_dhe_ke or psk_ke, after the handshake.
    pub fn key_exchange(&self) -> Option<KeyExchange> {
        if !self.established {
            return None;
        }
        Some(if ffi::negotiated_group(self.stream.ssl()) == 0 { KeyExchange::Psk } else { KeyExchange::PskDhe })
    }

    /// The peer sent close_notify.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// A fatal error happened (the same error is returned by every call).
    pub fn error(&self) -> Option<&TlsError> {
        self.failed.as_ref()
    }

    fn handshake_error(&self, e: &openssl::ssl::Error) -> TlsError {
        let st = self.stream.ssl().ex_data(self.index);
        let ours = st.and_then(|s| s.failure);
        let stack = e.ssl_error().map(reasons);
        let alert_in = stack.as_deref().unwrap_or("");
        let text = match ours {
            Some(why) => why.to_string(),
            None if alert_in.contains("binder does not verify") => {
                "PSK binder does not verify: the client's PSK differs from ours".to_string()
            }
            None if alert_in.contains("alert decrypt error") => {
                "the peer refused our PSK binder or Finished (alert decrypt_error): the PSKs differ".to_string()
            }
            None if alert_in.contains("alert illegal parameter") && !self.is_server => {
                "the server refused our ClientHello (alert illegal_parameter; an OpenSSL server sends it when the \
                 PSK binder does not verify: the PSKs differ)"
                    .to_string()
            }
            None if alert_in.contains("alert handshake failure") && !self.is_server => {
                "the server refused the handshake (alert handshake_failure: it may want certificates, or a \
                 different suite for this identity's PSK)"
                    .to_string()
            }
            None if alert_in.contains("unknown psk identity") => {
                "the peer does not know our PSK identity (alert unknown_psk_identity)".to_string()
            }
            None if alert_in.contains("unsupported protocol") || alert_in.contains("protocol version") => {
                "the peer does not speak TLS 1.3".to_string()
            }
            None => describe(e),
        };
        match stack {
            Some(s) if ours.is_some() || !text.contains(&s) => TlsError::Handshake(format!("{text} [openssl: {s}]")),
            _ => TlsError::Handshake(text),
        }
    }
}

fn describe(e: &openssl::ssl::Error) -> String {
    match (e.ssl_error(), e.io_error()) {
        (Some(s), _) => reasons(s),
        (None, Some(io)) => format!("transport: {io}"),
        (None, None) if e.code() == ErrorCode::SYSCALL => "the peer's data ended without close_notify".to_string(),
        (None, None) => format!("OpenSSL error code {}", e.code().as_raw()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psk_identity_parsing() {
        // identities<7..>: one identity "abc" + age; binders follow (ignored).
        let ext = [0, 9, 0, 3, b'a', b'b', b'c', 0, 0, 0, 0, 0, 33];
        assert_eq!(first_psk_identity(&ext), Some(&b"abc"[..]));
        assert_eq!(first_psk_identity(&ext[..6]), None);
        assert_eq!(first_psk_identity(&[0, 6, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(first_psk_identity(&[]), None);
    }

    #[test]
    fn supported_versions_parsing() {
        assert!(offers_tls13(&[4, 0x03, 0x04, 0x03, 0x03]));
        assert!(!offers_tls13(&[2, 0x03, 0x03]));
        assert!(!offers_tls13(&[6, 0x03, 0x04]));
        assert!(!offers_tls13(&[]));
    }
}
