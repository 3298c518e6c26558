//! The TLS 1.3 record layer once the handshake is done (RFC 8446 section 5,
//! and 4.6 for the post-handshake messages), as the kernel's kTLS runs it
//! after a user-space handshake.
//!
//! Why not OpenSSL's own: every record through `SSL_read`/`SSL_write` over a
//! memory BIO costs three copies (into the BIO, into OpenSSL's record
//! buffer, out to the caller) and OpenSSL 3's per-record provider work
//! (parameter lookups, BIO calls); on the 4 KiB path that was more than the
//! cipher itself (BENCHMARKS.md, 17:27 profile). Here a record is decrypted
//! in place in the caller's receive buffer and copied once to its
//! destination; a record is encrypted in place in the outgoing buffer after
//! one copy of the plaintext.
//!
//! No primitive is written here: the AEAD (AES-GCM, ChaCha20-Poly1305) and
//! HKDF come from aws-lc-rs (AWS-LC, the library under rustls' default
//! provider), whose AES-GCM runs about twice as fast as the system
//! OpenSSL 3.0's on the CPUs we measured (BENCHMARKS.md). What is here is
//! the framing: the nonce (the IV XOR the record sequence number), the inner
//! content type and its padding, the traffic secret update for KeyUpdate
//! ("traffic upd"), and the post-handshake messages (KeyUpdate answered,
//! NewSessionTicket ignored: we never resume).
//!
//! The traffic secrets come from OpenSSL at the end of the handshake (see
//! `session.rs`); from then on OpenSSL's SSL object only answers questions
//! (identity, suite, group).

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305, NONCE_LEN};
use aws_lc_rs::hkdf;
use zeroize::Zeroizing;

use crate::{TlsError, MAX_PLAINTEXT};

/// Record header: type, legacy version, length.
pub(crate) const HEADER_LEN: usize = 5;
/// AEAD tag of every suite we negotiate.
const TAG_LEN: usize = 16;
/// Largest TLSCiphertext.length a peer may send (2^14 + 256).
const CIPHERTEXT_MAX: usize = MAX_PLAINTEXT + 256;

const CT_ALERT: u8 = 21;
const CT_HANDSHAKE: u8 = 22;
const CT_APPLICATION_DATA: u8 = 23;

const HS_NEW_SESSION_TICKET: u8 = 4;
const HS_KEY_UPDATE: u8 = 24;

const ALERT_CLOSE_NOTIFY: u8 = 0;
const ALERT_UNEXPECTED_MESSAGE: u8 = 10;
const ALERT_BAD_RECORD_MAC: u8 = 20;
const ALERT_RECORD_OVERFLOW: u8 = 22;
const ALERT_DECODE_ERROR: u8 = 50;
const ALERT_PROTOCOL_VERSION: u8 = 70;
const ALERT_INTERNAL_ERROR: u8 = 80;
const ALERT_USER_CANCELED: u8 = 90;

/// Records sealed with one key before we update it ourselves: RFC 8446
/// section 5.5 allows 2^24.5 full records per AES-GCM key; half of 2^24
/// keeps a wide margin and costs one small record per 128 GiB.
pub(crate) const RECORDS_PER_KEY_MAX: u64 = 1 << 23;

/// Post-handshake handshake bytes buffered while a message is incomplete:
/// a NewSessionTicket may carry a ticket of up to 2^16 - 1 bytes plus
/// extensions; anything longer is refused (decode_error).
pub(crate) const HANDSHAKE_BUFFER_MAX: usize = 72 * 1024;

/// The negotiated suite, named by what the record layer needs of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Suite {
    Aes128GcmSha256,
    Aes256GcmSha384,
    Chacha20Poly1305Sha256,
}

impl Suite {
    pub(crate) fn from_name(name: &str) -> Option<Suite> {
        match name {
            "TLS_AES_128_GCM_SHA256" => Some(Suite::Aes128GcmSha256),
            "TLS_AES_256_GCM_SHA384" => Some(Suite::Aes256GcmSha384),
            "TLS_CHACHA20_POLY1305_SHA256" => Some(Suite::Chacha20Poly1305Sha256),
            _ => None,
        }
    }
    fn aead(self) -> &'static aws_lc_rs::aead::Algorithm {
        match self {
            Suite::Aes128GcmSha256 => &AES_128_GCM,
            Suite::Aes256GcmSha384 => &AES_256_GCM,
            Suite::Chacha20Poly1305Sha256 => &CHACHA20_POLY1305,
        }
    }
    fn hkdf(self) -> hkdf::Algorithm {
        match self {
            Suite::Aes128GcmSha256 | Suite::Chacha20Poly1305Sha256 => hkdf::HKDF_SHA256,
            Suite::Aes256GcmSha384 => hkdf::HKDF_SHA384,
        }
    }
    /// Traffic secret length: the suite hash's output.
    pub(crate) fn secret_len(self) -> usize {
        match self {
            Suite::Aes128GcmSha256 | Suite::Chacha20Poly1305Sha256 => 32,
            Suite::Aes256GcmSha384 => 48,
        }
    }
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand-Label(secret, label, "", len) (RFC 8446 section 7.1) into `out`.
fn expand_label(suite: Suite, secret: &[u8], label: &[u8], out: &mut [u8]) -> Result<(), TlsError> {
    const PREFIX: &[u8] = b"tls13 ";
    assert!(out.len() <= usize::from(u16::MAX) && PREFIX.len() + label.len() <= 255);
    let length = (out.len() as u16).to_be_bytes();
    let label_len = [(PREFIX.len() + label.len()) as u8];
    let context_len = [0u8];
    let info: [&[u8]; 5] = [&length, &label_len, PREFIX, label, &context_len];
    let prk = hkdf::Prk::new_less_safe(suite.hkdf(), secret);
    prk.expand(&info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .map_err(|_| TlsError::Protocol("HKDF-Expand-Label failed".into()))
}

/// One direction's keys: the traffic secret, the AEAD key and IV made from
/// it, and the next record's sequence number.
struct Keys {
    secret: Zeroizing<Vec<u8>>,
    aead: LessSafeKey,
    iv: [u8; NONCE_LEN],
    seq: u64,
}

impl Keys {
    fn new(suite: Suite, secret: Zeroizing<Vec<u8>>) -> Result<Keys, TlsError> {
        if secret.len() != suite.secret_len() {
            return Err(TlsError::Protocol("traffic secret of the wrong length".into()));
        }
        let alg = suite.aead();
        let mut key = Zeroizing::new(vec![0u8; alg.key_len()]);
        expand_label(suite, &secret, b"key", &mut key)?;
        let mut iv = [0u8; NONCE_LEN];
        expand_label(suite, &secret, b"iv", &mut iv)?;
        let unbound = UnboundKey::new(alg, &key).map_err(|_| TlsError::Protocol("AEAD key refused".into()))?;
        Ok(Keys { secret, aead: LessSafeKey::new(unbound), iv, seq: 0 })
    }

    /// The keys after a KeyUpdate: secret_N+1 = HKDF-Expand-Label(secret_N,
    /// "traffic upd", "", Hash.length) (RFC 8446 section 7.2).
    fn updated(&self, suite: Suite) -> Result<Keys, TlsError> {
        let mut next = Zeroizing::new(vec![0u8; suite.secret_len()]);
        expand_label(suite, &self.secret, b"traffic upd", &mut next)?;
        Keys::new(suite, next)
    }

    /// The per-record nonce (RFC 8446 section 5.3), and the sequence number
    /// moves on. A sequence number never wraps: we update our key long
    /// before ([`RECORDS_PER_KEY_MAX`]) and a peer's 2^64th record is refused.
    fn next_nonce(&mut self) -> Result<Nonce, TlsError> {
        let mut n = self.iv;
        for (b, s) in n[NONCE_LEN - 8..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        self.seq =
            self.seq.checked_add(1).ok_or_else(|| TlsError::Protocol("record sequence number exhausted".into()))?;
        Ok(Nonce::assume_unique_for_key(n))
    }
}

/// A fatal record-layer error: the alert we send and our words for it.
#[derive(Debug)]
pub(crate) struct Fatal {
    /// None: the peer's own fatal alert, which is not answered.
    pub(crate) alert: Option<u8>,
    pub(crate) error: TlsError,
}

fn fatal(alert: u8, why: &str) -> Fatal {
    Fatal { alert: Some(alert), error: TlsError::Protocol(why.to_string()) }
}

fn internal(error: TlsError) -> Fatal {
    Fatal { alert: Some(ALERT_INTERNAL_ERROR), error }
}

/// TLSInnerPlaintext (content, content type, zero padding): the content
/// type and the content's length.
fn inner_type(plain: &[u8]) -> Result<(u8, usize), Fatal> {
    let Some(type_at) = plain.iter().rposition(|&b| b != 0) else {
        return Err(fatal(ALERT_UNEXPECTED_MESSAGE, "a record with no content type"));
    };
    if type_at > MAX_PLAINTEXT {
        return Err(fatal(ALERT_RECORD_OVERFLOW, "a record with more than 2^14 bytes of plaintext"));
    }
    Ok((plain[type_at], type_at))
}

/// A decrypted application-data record at the start of the input, partly
/// delivered: offsets within the record.
#[derive(Debug, Clone, Copy)]
struct Front {
    record_len: usize,
    next: usize,
    end: usize,
}

/// What [`Records::open`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Opened {
    /// Input bytes done with (whole records): drop them before the next call.
    pub(crate) consumed: usize,
    /// Plaintext bytes written to the output.
    pub(crate) produced: usize,
}

/// The record layer of one established session.
pub(crate) struct Records {
    suite: Suite,
    read: Keys,
    write: Keys,
    front: Option<Front>,
    /// An incomplete post-handshake message (bounded by
    /// [`HANDSHAKE_BUFFER_MAX`]).
    handshake: Vec<u8>,
    peer_closed: bool,
}

impl Records {
    /// From the two application traffic secrets (`ours` seals, `theirs` opens).
    pub(crate) fn new(suite: Suite, ours: Zeroizing<Vec<u8>>, theirs: Zeroizing<Vec<u8>>) -> Result<Records, TlsError> {
        Ok(Records {
            suite,
            write: Keys::new(suite, ours)?,
            read: Keys::new(suite, theirs)?,
            front: None,
            handshake: Vec::new(),
            peer_closed: false,
        })
    }

    pub(crate) fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Open the records at the start of `input` (decrypting them in place)
    /// and copy their application data to `out`, as far as it has room.
    /// Control records (alerts, KeyUpdate, NewSessionTicket) are handled on
    /// the way; a KeyUpdate answer is sealed into `outbound`.
    ///
    /// Contract: the caller drops `consumed` bytes from the start of its
    /// input and passes what follows (plus whatever arrived) next time; the
    /// bytes after `consumed` must come back unchanged (a partly delivered
    /// record sits there, already decrypted).
    pub(crate) fn open(&mut self, input: &mut [u8], out: &mut [u8], outbound: &mut Vec<u8>) -> Result<Opened, Fatal> {
        let mut done = Opened::default();
        loop {
            if let Some(mut f) = self.front {
                let rec = &input[done.consumed..done.consumed + f.record_len];
                let n = (f.end - f.next).min(out.len() - done.produced);
                out[done.produced..done.produced + n].copy_from_slice(&rec[f.next..f.next + n]);
                done.produced += n;
                f.next += n;
                if f.next < f.end {
                    self.front = Some(f);
                    return Ok(done);
                }
                self.front = None;
                done.consumed += f.record_len;
            }
            // With `out` full, records go on being opened up to the next
            // application data (decrypted in place and kept at the front):
            // control records before it (KeyUpdate, alerts) take effect now.
            if self.peer_closed {
                return Ok(done);
            }
            let rest = &mut input[done.consumed..];
            let Some(header) = rest.get(..HEADER_LEN) else { return Ok(done) };
            let (outer_type, len) = (header[0], usize::from(u16::from_be_bytes([header[3], header[4]])));
            if outer_type != CT_APPLICATION_DATA {
                return Err(fatal(ALERT_UNEXPECTED_MESSAGE, "an unencrypted record after the handshake"));
            }
            // legacy_record_version is 0x0303 on every record after the
            // handshake; OpenSSL and the kernel's kTLS refuse anything else
            // at once (rather than wait for a body of a garbled length).
            if header[1..3] != [0x03, 0x03] {
                return Err(fatal(ALERT_PROTOCOL_VERSION, "a record with a wrong version"));
            }
            if len > CIPHERTEXT_MAX {
                return Err(fatal(ALERT_RECORD_OVERFLOW, "a record longer than 2^14 + 256 bytes"));
            }
            if len < TAG_LEN + 1 {
                return Err(fatal(ALERT_DECODE_ERROR, "a record too short for its tag"));
            }
            let record_len = HEADER_LEN + len;
            if rest.len() < record_len {
                return Ok(done);
            }
            let (header, body) = rest[..record_len].split_at_mut(HEADER_LEN);
            let nonce = self.read.next_nonce().map_err(internal)?;
            let aad = Aad::from([header[0], header[1], header[2], header[3], header[4]]);
            let bad_mac = || fatal(ALERT_BAD_RECORD_MAC, "a record does not decrypt (bad_record_mac)");
            let room = out.len() - done.produced;
            let (ciphertext, tag) = body.split_at_mut(len - TAG_LEN);
            if room >= ciphertext.len() {
                // Room for the whole inner plaintext: decrypt straight into
                // `out` (its padding, if any, lands past what is reported).
                let dst = &mut out[done.produced..done.produced + ciphertext.len()];
                self.read.aead.open_separate_gather(nonce, aad, ciphertext, tag, dst).map_err(|_| bad_mac())?;
                let (content_type, content_len) = inner_type(dst)?;
                done.consumed += record_len;
                if content_type == CT_APPLICATION_DATA {
                    self.no_fragment_pending()?;
                    done.produced += content_len;
                } else {
                    self.control(content_type, &dst[..content_len], outbound)?;
                }
                continue;
            }
            let plain = self.read.aead.open_in_place(nonce, aad, body).map_err(|_| bad_mac())?;
            let (content_type, content_len) = inner_type(plain)?;
            if content_type == CT_APPLICATION_DATA {
                self.no_fragment_pending()?;
                self.front = Some(Front { record_len, next: HEADER_LEN, end: HEADER_LEN + content_len });
            } else {
                done.consumed += record_len;
                self.control(content_type, &plain[..content_len], outbound)?;
            }
        }
    }

    fn no_fragment_pending(&self) -> Result<(), Fatal> {
        if self.handshake.is_empty() {
            Ok(())
        } else {
            Err(fatal(ALERT_UNEXPECTED_MESSAGE, "data inside a fragmented handshake message"))
        }
    }

    fn control(&mut self, content_type: u8, body: &[u8], outbound: &mut Vec<u8>) -> Result<(), Fatal> {
        match content_type {
            CT_ALERT => self.on_alert(body),
            CT_HANDSHAKE => self.on_handshake(body, outbound),
            _ => Err(fatal(ALERT_UNEXPECTED_MESSAGE, "a record of an unexpected content type")),
        }
    }

    fn on_alert(&mut self, body: &[u8]) -> Result<(), Fatal> {
        let &[_level, description] = body else {
            return Err(fatal(ALERT_DECODE_ERROR, "a malformed alert"));
        };
        match description {
            ALERT_CLOSE_NOTIFY => {
                self.peer_closed = true;
                Ok(())
            }
            ALERT_USER_CANCELED => Ok(()),
            d => Err(Fatal { alert: None, error: TlsError::Protocol(format!("the peer sent fatal alert {d}")) }),
        }
    }

    fn on_handshake(&mut self, fragment: &[u8], outbound: &mut Vec<u8>) -> Result<(), Fatal> {
        if self.handshake.len() + fragment.len() > HANDSHAKE_BUFFER_MAX {
            return Err(fatal(ALERT_DECODE_ERROR, "a post-handshake message longer than we take"));
        }
        self.handshake.extend_from_slice(fragment);
        loop {
            let Some(h) = self.handshake.get(..4) else { return Ok(()) };
            let (msg_type, len) = (h[0], usize::from(h[1]) << 16 | usize::from(h[2]) << 8 | usize::from(h[3]));
            if 4 + len > HANDSHAKE_BUFFER_MAX {
                return Err(fatal(ALERT_DECODE_ERROR, "a post-handshake message longer than we take"));
            }
            if self.handshake.len() < 4 + len {
                return Ok(());
            }
            match msg_type {
                HS_NEW_SESSION_TICKET => {}
                HS_KEY_UPDATE => {
                    // A key change: the message must end its record.
                    if len != 1 || self.handshake.len() != 5 {
                        return Err(fatal(ALERT_UNEXPECTED_MESSAGE, "a KeyUpdate not alone at the end of its record"));
                    }
                    let request_update = match self.handshake[4] {
                        0 => false,
                        1 => true,
                        _ => return Err(fatal(ALERT_DECODE_ERROR, "a KeyUpdate with a bad request_update")),
                    };
                    self.read = self.read.updated(self.suite).map_err(internal)?;
                    if request_update {
                        self.key_update(outbound, false).map_err(internal)?;
                    }
                }
                _ => return Err(fatal(ALERT_UNEXPECTED_MESSAGE, "an unexpected post-handshake message")),
            }
            self.handshake.drain(..4 + len);
        }
    }

    /// Seal `plaintext` as records of up to 2^14 bytes, appended to `outbound`.
    pub(crate) fn seal_app(&mut self, outbound: &mut Vec<u8>, plaintext: &[u8]) -> Result<(), TlsError> {
        let mut w = Writer::default();
        w.push(self, outbound, plaintext)?;
        w.finish(self, outbound)
    }

    /// Send KeyUpdate and switch our sending keys.
    pub(crate) fn key_update(&mut self, outbound: &mut Vec<u8>, request_peer: bool) -> Result<(), TlsError> {
        self.seal_record(outbound, CT_HANDSHAKE, &[HS_KEY_UPDATE, 0, 0, 1, u8::from(request_peer)])?;
        self.write = self.write.updated(self.suite)?;
        Ok(())
    }

    /// An alert record (close_notify, or the alert of a fatal error).
    pub(crate) fn seal_alert(&mut self, outbound: &mut Vec<u8>, description: u8) -> Result<(), TlsError> {
        let level = if description == ALERT_CLOSE_NOTIFY { 1 } else { 2 };
        self.seal_record(outbound, CT_ALERT, &[level, description])
    }

    fn seal_record(&mut self, outbound: &mut Vec<u8>, content_type: u8, body: &[u8]) -> Result<(), TlsError> {
        let start = begin(outbound);
        outbound.extend_from_slice(body);
        self.finish_record(outbound, start, content_type)
    }

    /// Close the record whose header is at `start`: inner content type,
    /// header, in-place encryption, tag.
    fn finish_record(&mut self, outbound: &mut Vec<u8>, start: usize, content_type: u8) -> Result<(), TlsError> {
        let plain_len = outbound.len() - start - HEADER_LEN;
        assert!(plain_len <= MAX_PLAINTEXT, "record plaintext beyond 2^14 bytes");
        outbound.push(content_type);
        let len = u16::try_from(plain_len + 1 + TAG_LEN).expect("bounded above");
        let header = [CT_APPLICATION_DATA, 0x03, 0x03, (len >> 8) as u8, len as u8];
        outbound[start..start + HEADER_LEN].copy_from_slice(&header);
        let nonce = self.write.next_nonce()?;
        let tag = self
            .write
            .aead
            .seal_in_place_separate_tag(nonce, Aad::from(header), &mut outbound[start + HEADER_LEN..])
            .map_err(|_| TlsError::Protocol("AEAD seal failed".into()))?;
        outbound.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// After application data: update our key once it has sealed enough.
    fn after_app_record(&mut self, outbound: &mut Vec<u8>) -> Result<(), TlsError> {
        if self.write.seq >= RECORDS_PER_KEY_MAX {
            self.key_update(outbound, false)?;
        }
        Ok(())
    }
}

fn begin(outbound: &mut Vec<u8>) -> usize {
    let start = outbound.len();
    outbound.extend_from_slice(&[0; HEADER_LEN]);
    start
}

/// Gathers application data into records of up to 2^14 bytes, copying each
/// piece once into the outgoing buffer; the last record is sealed by
/// [`Writer::finish`].
#[derive(Debug, Default)]
pub(crate) struct Writer {
    /// The open record's header offset in the outgoing buffer.
    open: Option<usize>,
}

impl Writer {
    pub(crate) fn push(&mut self, r: &mut Records, outbound: &mut Vec<u8>, mut data: &[u8]) -> Result<(), TlsError> {
        while !data.is_empty() {
            let start = *self.open.get_or_insert_with(|| begin(outbound));
            let room = MAX_PLAINTEXT - (outbound.len() - start - HEADER_LEN);
            let n = room.min(data.len());
            outbound.extend_from_slice(&data[..n]);
            data = &data[n..];
            if n == room {
                self.open = None;
                r.finish_record(outbound, start, CT_APPLICATION_DATA)?;
                r.after_app_record(outbound)?;
            }
        }
        Ok(())
    }

    pub(crate) fn finish(&mut self, r: &mut Records, outbound: &mut Vec<u8>) -> Result<(), TlsError> {
        if let Some(start) = self.open.take() {
            r.finish_record(outbound, start, CT_APPLICATION_DATA)?;
            r.after_app_record(outbound)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(suite: Suite) -> (Records, Records) {
        let a = Zeroizing::new(vec![1u8; suite.secret_len()]);
        let b = Zeroizing::new(vec![2u8; suite.secret_len()]);
        let client = Records::new(suite, a.clone(), b.clone()).unwrap();
        let server = Records::new(suite, b, a).unwrap();
        (client, server)
    }

    fn open_all(r: &mut Records, input: &mut Vec<u8>, out_chunk: usize, back: &mut Vec<u8>) -> Vec<u8> {
        let mut got = Vec::new();
        loop {
            let mut out = vec![0u8; out_chunk];
            let o = r.open(input, &mut out, back).unwrap();
            got.extend_from_slice(&out[..o.produced]);
            input.drain(..o.consumed);
            if o.produced == 0 && o.consumed == 0 {
                return got;
            }
        }
    }

    #[test]
    fn round_trip_every_suite_and_partial_delivery() {
        // 1000-byte outputs: records decrypted in place and delivered in
        // parts; 1 MiB: decrypted straight into the output.
        for (suite, out_chunk) in [
            (Suite::Aes128GcmSha256, 1000),
            (Suite::Aes256GcmSha384, 1000),
            (Suite::Chacha20Poly1305Sha256, 1000),
            (Suite::Aes128GcmSha256, 1 << 20),
            (Suite::Chacha20Poly1305Sha256, 1 << 20),
        ] {
            let (mut c, mut s) = pair(suite);
            let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
            let mut wire = Vec::new();
            c.seal_app(&mut wire, &data).unwrap();
            // 7 records: 6 full and one of 100000 - 6 * 16384.
            assert_eq!(wire.len(), data.len() + 7 * (HEADER_LEN + 1 + TAG_LEN));
            let mut back = Vec::new();
            assert_eq!(open_all(&mut s, &mut wire, out_chunk, &mut back), data);
            assert!(wire.is_empty() && back.is_empty());
        }
    }

    #[test]
    fn key_update_requested_is_answered_and_both_sides_go_on() {
        let (mut c, mut s) = pair(Suite::Aes128GcmSha256);
        let mut wire = Vec::new();
        c.seal_app(&mut wire, b"before").unwrap();
        c.key_update(&mut wire, true).unwrap();
        c.seal_app(&mut wire, b"after").unwrap();
        let mut answer = Vec::new();
        assert_eq!(open_all(&mut s, &mut wire, 64, &mut answer), b"beforeafter");
        assert!(!answer.is_empty(), "update_requested must be answered");
        s.seal_app(&mut answer, b"reply").unwrap();
        let mut none = Vec::new();
        assert_eq!(open_all(&mut c, &mut answer, 64, &mut none), b"reply");
        assert!(none.is_empty(), "an update_not_requested is not answered");
    }

    #[test]
    fn tampering_truncation_and_overflow_are_fatal() {
        let (mut c, mut s) = pair(Suite::Aes128GcmSha256);
        let mut wire = Vec::new();
        c.seal_app(&mut wire, b"data").unwrap();
        let mut bad = wire.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let e = s.open(&mut bad, &mut [0; 64], &mut Vec::new()).unwrap_err();
        assert_eq!(e.alert, Some(ALERT_BAD_RECORD_MAC));
        // A partial record waits, it is not an error.
        let (_, mut s2) = pair(Suite::Aes128GcmSha256);
        let o = s2.open(&mut wire[..10], &mut [0; 64], &mut Vec::new()).unwrap();
        assert_eq!(o, Opened::default());
        let mut long = vec![CT_APPLICATION_DATA, 3, 3, 0x41, 0x01];
        let e = s2.open(&mut long, &mut [0; 64], &mut Vec::new()).unwrap_err();
        assert_eq!(e.alert, Some(ALERT_RECORD_OVERFLOW));
        let mut version = vec![CT_APPLICATION_DATA, 3, 1, 0x40, 0];
        let e = s2.open(&mut version, &mut [0; 64], &mut Vec::new()).unwrap_err();
        assert_eq!(e.alert, Some(ALERT_PROTOCOL_VERSION));
        let mut clear = vec![CT_HANDSHAKE, 3, 3, 0, 4, 1, 2, 3, 4];
        let e = s2.open(&mut clear, &mut [0; 64], &mut Vec::new()).unwrap_err();
        assert_eq!(e.alert, Some(ALERT_UNEXPECTED_MESSAGE));
    }

    #[test]
    fn close_notify_ends_the_stream_and_tickets_are_ignored() {
        let (mut c, mut s) = pair(Suite::Aes256GcmSha384);
        let mut wire = Vec::new();
        c.seal_record(&mut wire, CT_HANDSHAKE, &[HS_NEW_SESSION_TICKET, 0, 0, 2, 9, 9]).unwrap();
        c.seal_app(&mut wire, b"x").unwrap();
        c.seal_alert(&mut wire, ALERT_CLOSE_NOTIFY).unwrap();
        c.seal_app(&mut wire, b"ignored").unwrap();
        let mut back = Vec::new();
        let mut out = [0u8; 64];
        let o = s.open(&mut wire, &mut out, &mut back).unwrap();
        assert_eq!(&out[..o.produced], b"x");
        assert!(s.peer_closed());
        // A tampered record straight into the output fails too.
        let (mut c, mut s) = pair(Suite::Aes128GcmSha256);
        let mut wire = Vec::new();
        c.seal_app(&mut wire, b"data").unwrap();
        wire[7] ^= 0x80;
        let e = s.open(&mut wire, &mut [0; 64], &mut Vec::new()).unwrap_err();
        assert_eq!(e.alert, Some(ALERT_BAD_RECORD_MAC));
    }

    #[test]
    fn our_key_updates_itself_after_its_record_budget() {
        let (mut c, mut s) = pair(Suite::Aes128GcmSha256);
        c.write.seq = RECORDS_PER_KEY_MAX - 1;
        let mut wire = Vec::new();
        c.seal_app(&mut wire, b"last of the old key").unwrap();
        assert_eq!(c.write.seq, 0, "the key was updated");
        c.seal_app(&mut wire, b", first of the new").unwrap();
        s.read.seq = RECORDS_PER_KEY_MAX - 1;
        assert_eq!(open_all(&mut s, &mut wire, 64, &mut Vec::new()), b"last of the old key, first of the new");
    }
}
