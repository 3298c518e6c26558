//! Client ↔ server in memory: handshakes, data, bounds, failures.

mod common;

use std::io::{Read, Write};

use common::*;
use nvmf_tls::{ClientOptions, KeyExchange, Limits, TlsError, TlsHash, TlsSession, MAX_PLAINTEXT, MAX_RECORD_LEN};

#[test]
fn handshake_sha256_and_sha384() {
    for hash in [TlsHash::Sha256, TlsHash::Sha384] {
        let (c, s) = pair(hash);
        assert_eq!(c.s.hash(), Some(hash));
        assert_eq!(s.s.hash(), Some(hash));
        assert_eq!(s.s.peer_identity(), Some(identity(hash).as_str()));
        assert_eq!(c.s.key_exchange(), Some(KeyExchange::PskDhe));
        assert_eq!(s.s.key_exchange(), Some(KeyExchange::PskDhe));
        assert!(s.s.is_server() && !c.s.is_server());
    }
}

#[test]
fn client_offering_psk_ke_too_still_gets_dhe_from_openssl() {
    // OpenSSL's server prefers psk_dhe_ke whenever offered; psk_ke alone is
    // checked against gnutls-cli in tests/openssl_cli.rs.
    for hash in [TlsHash::Sha256, TlsHash::Sha384] {
        let (c, s) = pair_with(hash, ClientOptions { allow_psk_ke: true, ..Default::default() });
        assert_eq!(c.s.key_exchange(), Some(KeyExchange::PskDhe));
        assert_eq!(s.s.key_exchange(), Some(KeyExchange::PskDhe));
    }
}

#[test]
fn data_both_ways_small_and_large() {
    for hash in [TlsHash::Sha256, TlsHash::Sha384] {
        let (mut c, mut s) = pair(hash);
        let small = pattern(100, 1);
        transfer(&mut c, &mut s, &small, 7);
        assert_eq!(s.received, small);
        transfer(&mut s, &mut c, &small, 100);
        assert_eq!(c.received, small);

        // Several MiB, writes straddling record boundaries.
        let big = pattern(5 * 1024 * 1024 + 123, 2);
        s.received.clear();
        transfer(&mut c, &mut s, &big, 128 * 1024 + 1);
        assert!(s.received == big, "client→server data differs");
        c.received.clear();
        transfer(&mut s, &mut c, &big, MAX_PLAINTEXT - 1);
        assert!(c.received == big, "server→client data differs");

        // Exactly record-sized and tiny writes.
        for size in [1, MAX_PLAINTEXT, MAX_PLAINTEXT + 1, 3 * MAX_PLAINTEXT] {
            let d = pattern(size * 3, size as u64);
            s.received.clear();
            transfer(&mut c, &mut s, &d, size);
            assert!(s.received == d, "size {size}");
        }
    }
}

#[test]
fn one_byte_feeds_and_big_chunks() {
    for hash in [TlsHash::Sha256, TlsHash::Sha384] {
        let id = identity(hash);
        let k = key(hash, 3);
        let server = TlsSession::server(lookup(vec![(id.clone(), k.clone(), hash)])).unwrap();
        let client = TlsSession::client(&id, &k, hash, ClientOptions::default()).unwrap();
        let (mut c, mut s) = (Peer::new(client), Peer::new(server));
        c.chunk = 1;
        s.chunk = 1;
        settle(&mut c, &mut s);
        assert!(c.s.handshake_done() && s.s.handshake_done(), "{:?} {:?}", c.err, s.err);
        let d = pattern(70_000, 9);
        transfer(&mut c, &mut s, &d, 20_000);
        assert!(s.received == d);
        transfer(&mut s, &mut c, &d, 50_000);
        assert!(c.received == d);

        // Many records batched into one feed (bounded by inbound_max).
        let mut ct = Vec::new();
        let d = pattern(2 * 1024 * 1024, 10);
        let mut off = 0;
        while off < d.len() {
            off += c.s.write_plaintext(&d[off..]).unwrap();
            c.s.take_ciphertext(&mut ct);
        }
        s.received.clear();
        s.chunk = usize::MAX;
        s.carry = ct;
        s.ingest();
        assert!(s.received == d);
    }
}

#[test]
fn buffers_stay_bounded() {
    let hash = TlsHash::Sha256;
    let (mut c, mut s) = pair(hash);
    let limits = Limits::default();
    // Writer side: no take_ciphertext, the session stops taking plaintext.
    let d = pattern(8 * 1024 * 1024, 4);
    let n = c.s.write_plaintext(&d).unwrap();
    assert!(n <= limits.outbound_max + MAX_PLAINTEXT, "took {n}");
    let pending = c.s.pending_ciphertext().len();
    assert!(pending <= limits.outbound_max + 2 * MAX_RECORD_LEN, "{pending}");
    assert_eq!(c.s.write_plaintext(&d[n..]).unwrap(), 0);
    // Reader side: feed everything without reading plaintext.
    let mut ct = Vec::new();
    c.s.take_ciphertext(&mut ct);
    // OpenSSL pulls up to a record or two into its own read buffer; beyond
    // that the session refuses more until plaintext is read.
    let mut took = 0;
    loop {
        let n = s.s.feed(&ct[took..]).unwrap();
        assert!(s.s.inbound_pending() <= limits.inbound_max);
        if n == 0 {
            break;
        }
        took += n;
    }
    assert!(took <= limits.inbound_max + 2 * MAX_RECORD_LEN, "{took}");
    // Reading drains it; the rest then goes in.
    let mut out = Vec::new();
    let mut off = took;
    loop {
        s.s.read_plaintext(&mut out, 1 << 20).unwrap();
        if off == ct.len() {
            break;
        }
        off += s.s.feed(&ct[off..]).unwrap();
    }
    s.s.read_plaintext(&mut out, usize::MAX).unwrap();
    assert!(out == d[..n]);
    // `max` is honoured.
    let more = pattern(50_000, 5);
    assert_eq!(c.s.write_plaintext(&more).unwrap(), more.len());
    let mut ct = Vec::new();
    c.s.take_ciphertext(&mut ct);
    s.s.feed(&ct).unwrap();
    let mut out = Vec::new();
    assert_eq!(s.s.read_plaintext(&mut out, 1000).unwrap(), 1000);
    let mut slice = vec![0u8; 49_000];
    assert_eq!(s.s.read_plaintext_into(&mut slice).unwrap(), 49_000);
    out.extend_from_slice(&slice);
    assert!(out == more);
}

#[test]
fn pending_and_consume() {
    let (mut c, mut s) = pair(TlsHash::Sha384);
    c.s.write_plaintext(b"hello").unwrap();
    let ct = c.s.pending_ciphertext().to_vec();
    assert!(c.s.wants_write());
    // Send it in two pieces from the session's own buffer.
    c.s.consume_ciphertext(3);
    assert_eq!(c.s.pending_ciphertext(), &ct[3..]);
    c.s.consume_ciphertext(ct.len());
    assert!(!c.s.wants_write());
    s.carry = ct;
    s.ingest();
    assert_eq!(s.received, b"hello");
}

fn assert_no_secret(e: &TlsError, k: &[u8]) {
    let text = e.to_string();
    let hex: String = k.iter().map(|b| format!("{b:02x}")).collect();
    assert!(!text.contains(&hex) && !text.contains(&hex.to_uppercase()), "{text}");
    assert!(!format!("{e:?}").contains(&hex));
}

#[test]
fn wrong_psk_fails_on_both_sides() {
    for hash in [TlsHash::Sha256, TlsHash::Sha384] {
        let id = identity(hash);
        let (ks, kc) = (key(hash, 1), key(hash, 2));
        let server = TlsSession::server(lookup(vec![(id.clone(), ks.clone(), hash)])).unwrap();
        let client = TlsSession::client(&id, &kc, hash, ClientOptions::default()).unwrap();
        let (mut c, mut s) = (Peer::new(client), Peer::new(server));
        settle(&mut c, &mut s);
        let (ce, se) = (c.err.clone().expect("client error"), s.err.clone().expect("server error"));
        eprintln!("client: {ce}\nserver: {se}");
        assert!(matches!(ce, TlsError::Handshake(_)) && matches!(se, TlsError::Handshake(_)));
        assert!(se.to_string().contains("PSK"), "{se}");
        assert!(ce.to_string().contains("PSK"), "{ce}");
        for e in [&ce, &se] {
            assert_no_secret(e, &ks);
            assert_no_secret(e, &kc);
        }
        assert!(!c.s.handshake_done() && !s.s.handshake_done());
        assert_eq!(c.s.write_plaintext(b"x"), Err(ce.clone()));
        assert!(format!("{:?}", c.s).contains("failed"));
    }
}

#[test]
fn unknown_identity_fails() {
    let hash = TlsHash::Sha256;
    let k = key(hash, 1);
    let server = TlsSession::server(lookup(vec![(identity(hash), k.clone(), hash)])).unwrap();
    let client = TlsSession::client("NVMe0R01 nqn.other nqn.sub", &k, hash, ClientOptions::default()).unwrap();
    let (mut c, mut s) = (Peer::new(client), Peer::new(server));
    settle(&mut c, &mut s);
    let (ce, se) = (c.err.clone().unwrap(), s.err.clone().unwrap());
    eprintln!("client: {ce}\nserver: {se}");
    assert!(se.to_string().contains("PSK identity not known"), "{se}");
    assert!(ce.to_string().contains("identity"), "{ce}");
    assert_eq!(s.s.peer_identity(), None);
}

#[test]
fn hash_mismatch_between_sides_fails() {
    // Client thinks SHA-384, server's lookup says SHA-256 for the identity.
    let id = identity(TlsHash::Sha256);
    let server = TlsSession::server(lookup(vec![(id.clone(), key(TlsHash::Sha256, 1), TlsHash::Sha256)])).unwrap();
    let client = TlsSession::client(&id, &key(TlsHash::Sha384, 1), TlsHash::Sha384, ClientOptions::default()).unwrap();
    let (mut c, mut s) = (Peer::new(client), Peer::new(server));
    settle(&mut c, &mut s);
    eprintln!("client: {:?}\nserver: {:?}", c.err, s.err);
    assert!(s.err.as_ref().unwrap().to_string().contains("does not offer TLS_AES_128_GCM_SHA256"), "{:?}", s.err);
    assert!(c.err.as_ref().unwrap().to_string().contains("handshake_failure"), "{:?}", c.err);
}

#[test]
fn bad_arguments() {
    let e = TlsSession::client("id", &[0u8; 31], TlsHash::Sha256, ClientOptions::default()).unwrap_err();
    assert!(matches!(e, TlsError::Config(_)), "{e}");
    let e = TlsSession::client("", &[0u8; 32], TlsHash::Sha256, ClientOptions::default()).unwrap_err();
    assert!(matches!(e, TlsError::Config(_)), "{e}");
    // A lookup that returns a key of the wrong length refuses the handshake.
    let server = TlsSession::server(lookup(vec![(identity(TlsHash::Sha384), vec![1; 32], TlsHash::Sha384)])).unwrap();
    let client =
        TlsSession::client(&identity(TlsHash::Sha384), &[1; 48], TlsHash::Sha384, ClientOptions::default()).unwrap();
    let (mut c, mut s) = (Peer::new(client), Peer::new(server));
    settle(&mut c, &mut s);
    assert!(s.err.as_ref().unwrap().to_string().contains("not as long as its hash"), "{:?}", s.err);
}

#[test]
fn write_before_handshake_and_after_close() {
    let hash = TlsHash::Sha256;
    let client = TlsSession::client(&identity(hash), &key(hash, 7), hash, ClientOptions::default()).unwrap();
    let mut client = client;
    assert_eq!(client.write_plaintext(b"x"), Err(TlsError::NotReady));
    assert_eq!(client.key_update(true), Err(TlsError::NotReady));

    let (mut c, mut s) = pair(hash);
    transfer(&mut c, &mut s, b"last words", 100);
    c.s.close();
    assert_eq!(c.s.write_plaintext(b"x"), Err(TlsError::Closed));
    settle(&mut c, &mut s);
    assert_eq!(s.received, b"last words");
    assert!(s.s.peer_closed());
    let mut out = Vec::new();
    assert_eq!(s.s.read_plaintext(&mut out, 100).unwrap(), 0);
    // The server answers with its own close_notify.
    s.s.close();
    settle(&mut c, &mut s);
    assert!(c.s.peer_closed());
}

#[test]
fn looks_like_tls_tells_icreq_apart() {
    use nvmf_tls::looks_like_tls;
    let hash = TlsHash::Sha256;
    let mut client = TlsSession::client(&identity(hash), &key(hash, 7), hash, ClientOptions::default()).unwrap();
    let mut hello = Vec::new();
    client.take_ciphertext(&mut hello);
    assert!(looks_like_tls(&hello));
    assert!(!looks_like_tls(&[0x00, 0x00, 0x80, 0x00]), "ICReq");
    assert!(!looks_like_tls(&[0x16, 0x03]));
    assert!(!looks_like_tls(&[0x16, 0x03, 0x05]));
    assert!(!looks_like_tls(&[0x17, 0x03, 0x03]));
}

/// A plain OpenSSL peer (not our session code) over an in-memory pipe.
#[derive(Default)]
struct Pipe {
    inbound: Vec<u8>,
    outbound: Vec<u8>,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.inbound.is_empty() {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.inbound.len());
        buf[..n].copy_from_slice(&self.inbound[..n]);
        self.inbound.drain(..n);
        Ok(n)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.outbound.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Run a raw OpenSSL client against our server; returns the server's error.
fn raw_client_against_server(configure: impl FnOnce(&mut openssl::ssl::SslContextBuilder)) -> TlsError {
    use openssl::ssl::{Ssl, SslContext, SslMethod, SslStream};
    let hash = TlsHash::Sha256;
    let mut ctx = SslContext::builder(SslMethod::tls_client()).unwrap();
    configure(&mut ctx);
    let ctx = ctx.build();
    let mut ssl = Ssl::new(&ctx).unwrap();
    ssl.set_connect_state();
    let mut raw = SslStream::new(ssl, Pipe::default()).unwrap();
    let mut server = TlsSession::server(lookup(vec![(identity(hash), key(hash, 7), hash)])).unwrap();
    for _ in 0..10 {
        let _ = raw.do_handshake();
        let out = std::mem::take(&mut raw.get_mut().outbound);
        if let Err(e) = server.feed(&out) {
            return e;
        }
        let mut back = Vec::new();
        server.take_ciphertext(&mut back);
        raw.get_mut().inbound.extend_from_slice(&back);
    }
    panic!("the server accepted the client");
}

#[test]
fn tls12_client_refused() {
    let e = raw_client_against_server(|ctx| {
        ctx.set_max_proto_version(Some(openssl::ssl::SslVersion::TLS1_2)).unwrap();
        ctx.set_cipher_list("PSK-AES128-GCM-SHA256").unwrap();
        ctx.set_psk_client_callback(|_, _, id, psk| {
            let i = identity(TlsHash::Sha256);
            id[..i.len()].copy_from_slice(i.as_bytes());
            id[i.len()] = 0;
            psk[..32].copy_from_slice(&key(TlsHash::Sha256, 7));
            Ok(32)
        });
    });
    eprintln!("{e}");
    assert!(e.to_string().contains("TLS 1.3"), "{e}");
}

#[test]
fn certificate_client_refused() {
    let e = raw_client_against_server(|ctx| {
        ctx.set_min_proto_version(Some(openssl::ssl::SslVersion::TLS1_3)).unwrap();
    });
    eprintln!("{e}");
    assert!(e.to_string().contains("no PSK"), "{e}");
}

#[test]
fn psk_from_nvmf_proto_derivation() {
    use nvmf_proto::auth::tls_psk::{derive, ConfiguredPsk, HkdfLabelLayout, IdentityVersion};
    use nvmf_proto::auth::HashId;
    for (hash_id, hash) in [(HashId::Sha256, TlsHash::Sha256), (HashId::Sha384, TlsHash::Sha384)] {
        let configured = ConfiguredPsk::generate(hash_id, &mut |b: &mut [u8]| b.fill(0x3c)).unwrap();
        for version in [IdentityVersion::V0, IdentityVersion::V1] {
            let d = derive(&configured, HOSTNQN, SUBNQN, version, HkdfLabelLayout::Rfc8446).unwrap();
            assert_eq!(TlsHash::from_psk_len(d.tls_psk.as_bytes().len()), Some(hash));
            let server =
                TlsSession::server(lookup(vec![(d.identity.clone(), d.tls_psk.as_bytes().to_vec(), hash)])).unwrap();
            let client = TlsSession::client(&d.identity, d.tls_psk.as_bytes(), hash, ClientOptions::default()).unwrap();
            let (mut c, mut s) = (Peer::new(client), Peer::new(server));
            settle(&mut c, &mut s);
            assert!(c.s.handshake_done() && s.s.handshake_done(), "{:?} {:?}", c.err, s.err);
            assert_eq!(s.s.peer_identity(), Some(d.identity.as_str()));
            assert_eq!(s.s.hash(), Some(hash));
        }
    }
}

#[test]
fn sha384_psk_bound_with_sha256_gets_a_sha256_suite() {
    // What tlshd on GnuTLS < 3.8.10 does with a 48-byte PSK (the Linux host
    // of Debian 13): the server, whose key is SHA-384, follows the binder.
    let psk = key(TlsHash::Sha384, 9);
    let id = identity(TlsHash::Sha384);
    let server = nvmf_tls::ServerConfig::new(lookup(vec![(id.clone(), psk.clone(), TlsHash::Sha384)])).unwrap();
    let opts = ClientOptions { any_psk_len: true, ..Default::default() };
    let mut c = Peer::new(TlsSession::client(&id, &psk, TlsHash::Sha256, opts).unwrap());
    let mut s = Peer::new(server.session().unwrap());
    settle(&mut c, &mut s);
    assert!(c.s.handshake_done() && s.s.handshake_done());
    assert_eq!(s.s.hash(), Some(TlsHash::Sha256));
    let d = pattern(100_000, 3);
    transfer(&mut c, &mut s, &d, 4096);
    assert!(s.received == d);
}
