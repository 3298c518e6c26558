//! The OpenSSL calls that `openssl-sys` 0.9 does not declare, and the few
//! `unsafe` steps that use them. Everything else goes through the `openssl`
//! crate's safe API.
//!
//! Declared here (OpenSSL >= 1.1.1, all present in the system's 3.0):
//!
//! | function | why |
//! | --- | --- |
//! | `SSL_CTX_set_psk_find_session_callback` | server: TLS 1.3 external PSK lookup by identity |
//! | `SSL_CTX_set_psk_use_session_callback` | client: offer an identity and its PSK |
//! | `SSL_SESSION_new` | both callbacks hand OpenSSL the PSK as a session |
//! | `SSL_SESSION_set1_master_key` | the PSK itself (OpenSSL copies it and cleanses its copy on free) |
//! | `SSL_SESSION_set_cipher` | the suite whose hash the PSK is for |
//! | `SSL_SESSION_set_protocol_version` | TLS 1.3 |
//! | `SSL_CIPHER_find` | the suite by its two-byte code (0x13 0x01 / 0x13 0x02) |
//! | `SSL_key_update` | initiate a KeyUpdate, or send the answer to the peer's now |
//! | `SSL_get_key_update_type` | whether the peer asked for an answer not sent yet |
//!
//! Already in `openssl-sys` and used from it: `SSL_SESSION_free`,
//! `SSL_client_hello_get0_ext`, `SSL_ctrl` (for the negotiated group).

use std::os::raw::{c_int, c_long, c_uchar};

use openssl_sys::{EVP_MD, SSL, SSL_CIPHER, SSL_CTX, SSL_SESSION};

/// `SSL_psk_find_session_cb_func` (ssl.h).
pub(crate) type PskFindSessionCb = unsafe extern "C" fn(
    ssl: *mut SSL,
    identity: *const c_uchar,
    identity_len: usize,
    sess: *mut *mut SSL_SESSION,
) -> c_int;

/// `SSL_psk_use_session_cb_func` (ssl.h).
pub(crate) type PskUseSessionCb = unsafe extern "C" fn(
    ssl: *mut SSL,
    md: *const EVP_MD,
    id: *mut *const c_uchar,
    idlen: *mut usize,
    sess: *mut *mut SSL_SESSION,
) -> c_int;

extern "C" {
    fn SSL_CTX_set_psk_find_session_callback(ctx: *mut SSL_CTX, cb: Option<PskFindSessionCb>);
    fn SSL_CTX_set_psk_use_session_callback(ctx: *mut SSL_CTX, cb: Option<PskUseSessionCb>);
    fn SSL_SESSION_new() -> *mut SSL_SESSION;
    fn SSL_SESSION_set1_master_key(sess: *mut SSL_SESSION, in_: *const c_uchar, len: usize) -> c_int;
    fn SSL_SESSION_set_cipher(sess: *mut SSL_SESSION, cipher: *const SSL_CIPHER) -> c_int;
    fn SSL_SESSION_set_protocol_version(sess: *mut SSL_SESSION, version: c_int) -> c_int;
    fn SSL_CIPHER_find(ssl: *mut SSL, ptr: *const c_uchar) -> *const SSL_CIPHER;
}

/// `SSL_OP_ALLOW_NO_DHE_KEX` (ssl.h: `SSL_OP_BIT(10)`), not in `openssl-sys`:
/// lets TLS 1.3 use psk_ke (no (EC)DHE). Client: also offer psk_ke; server:
/// accept a client that offers only psk_ke.
pub(crate) const SSL_OP_ALLOW_NO_DHE_KEX: u64 = 1 << 10;
/// `SSL_CTRL_GET_NEGOTIATED_GROUP` (ssl.h; `SSL_get_negotiated_group` is a macro).
const SSL_CTRL_GET_NEGOTIATED_GROUP: c_int = 134;

pub(crate) fn set_find_session_callback(ctx: &mut openssl::ssl::SslContextBuilder, cb: PskFindSessionCb) {
    // SAFETY: `ctx.as_ptr()` is a live SSL_CTX owned by the builder; the
    // callback is a plain function with the C signature OpenSSL expects.
    unsafe { SSL_CTX_set_psk_find_session_callback(ctx.as_ptr(), Some(cb)) }
}

pub(crate) fn set_use_session_callback(ctx: &mut openssl::ssl::SslContextBuilder, cb: PskUseSessionCb) {
    // SAFETY: as above.
    unsafe { SSL_CTX_set_psk_use_session_callback(ctx.as_ptr(), Some(cb)) }
}

/// A new SSL_SESSION carrying `key` as a TLS 1.3 external PSK for the suite of
/// `hash`, or None if OpenSSL refuses any step. The caller passes ownership
/// to OpenSSL (both PSK callbacks do) or frees it.
///
/// # Safety
/// `ssl` must be a live SSL (the one the callback was called for).
pub(crate) unsafe fn psk_session(ssl: *mut SSL, key: &[u8], code: [u8; 2]) -> Option<*mut SSL_SESSION> {
    // SAFETY: `ssl` is live (caller); `code` is two readable bytes, the length
    // SSL_CIPHER_find reads. The result is a static table entry or NULL.
    let cipher = unsafe { SSL_CIPHER_find(ssl, code.as_ptr()) };
    if cipher.is_null() {
        return None;
    }
    // SAFETY: no preconditions; NULL on allocation failure.
    let sess = unsafe { SSL_SESSION_new() };
    if sess.is_null() {
        return None;
    }
    // SAFETY: `sess` is the session just made and owned here; `key` is valid
    // for `key.len()` bytes and OpenSSL copies it (at most 64 bytes, checked
    // by set1_master_key itself); `cipher` came from SSL_CIPHER_find.
    let ok = unsafe {
        SSL_SESSION_set1_master_key(sess, key.as_ptr(), key.len()) == 1
            && SSL_SESSION_set_cipher(sess, cipher) == 1
            && SSL_SESSION_set_protocol_version(sess, openssl_sys::TLS1_3_VERSION) == 1
    };
    if ok {
        Some(sess)
    } else {
        // SAFETY: `sess` is ours and not handed out; freeing cleanses the key.
        unsafe { openssl_sys::SSL_SESSION_free(sess) };
        None
    }
}

/// The (EC)DHE group NID the handshake used, 0 (NID_undef) for psk_ke.
pub(crate) fn negotiated_group(ssl: &openssl::ssl::SslRef) -> c_long {
    use foreign_types_shared::ForeignTypeRef;
    // SAFETY: `ssl` is live; this ctrl reads one integer and ignores parg.
    unsafe { openssl_sys::SSL_ctrl(ssl.as_ptr(), SSL_CTRL_GET_NEGOTIATED_GROUP, 0, std::ptr::null_mut()) }
}

/// The raw body of a ClientHello extension, inside the client hello callback.
pub(crate) fn client_hello_ext(ssl: &openssl::ssl::SslRef, ext_type: u32) -> Option<&[u8]> {
    use foreign_types_shared::ForeignTypeRef;
    let mut out: *const c_uchar = std::ptr::null();
    let mut len: usize = 0;
    // SAFETY: `ssl` is live and inside its client hello callback (the only
    // place this is called), where OpenSSL keeps the parsed ClientHello; the
    // returned pointer stays valid for that callback, which the borrow of
    // `ssl` covers.
    unsafe {
        if openssl_sys::SSL_client_hello_get0_ext(ssl.as_ptr(), ext_type, &mut out, &mut len) != 1 || out.is_null() {
            return None;
        }
        Some(std::slice::from_raw_parts(out, len))
    }
}
