//! Known-answer tests for DH-HMAC-CHAP and the NVMe/TCP TLS PSKs.
//!
//! Where each value comes from:
//! - `libnvme`: linux-nvme/libnvme `test/psk.c` (interchange strings, v1
//!   identities for the RFC 8446 and both legacy HKDF layouts), computed by
//!   libnvme with OpenSSL: an independent implementation.
//! - `spdk` / `nvme-cli docs`: strings published in SPDK's `doc/nvmf.md`, its
//!   unit tests, and nvme-cli's manual pages.
//! - `rfc8448`: the TLS 1.3 example trace ("derived" secret).
//! - `python`: `tests/auth_vectors.py`, a second implementation of our reading
//!   of the Linux byte layouts on Python's hmac/hashlib/pow. It catches slips
//!   in the Rust code, not a misreading shared by both; the Linux kernel
//!   interop run is the check for that.

use nvmf_proto::auth::dh::DhKeyPair;
use nvmf_proto::auth::messages::AuthMessage;
use nvmf_proto::auth::tls_psk::{self, ConfiguredPsk, HkdfLabelLayout, IdentityVersion, PskOrigin};
use nvmf_proto::auth::{
    chap, CtrlAuth, CtrlConfig, CtrlStatus, DhGroup, DhchapKey, HashId, HostAuth, HostConfig, HostStep, RandomFill,
    Secret,
};

const HOST_NQN: &str = "nqn.2014-08.org.nvmexpress:uuid:8ae2b12c-3d28-4458-83e3-658e571ed4b8";
const SUBSYS_NQN: &str = "nqn.2026-11.io.nvmf:auth-test";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&chap::digest(HashId::Sha256, bytes))
}

/// Randomness that hands out a fixed sequence of buffers, one per request.
fn tape(chunks: Vec<Vec<u8>>) -> RandomFill {
    let mut chunks = chunks.into_iter();
    Box::new(move |buf: &mut [u8]| {
        let next = chunks.next().expect("tape exhausted");
        assert_eq!(next.len(), buf.len(), "tape chunk size");
        buf.copy_from_slice(&next);
    })
}

fn seq(from: u8, len: u8) -> Vec<u8> {
    (from..from + len).collect()
}

// python: tests/auth_vectors.py
const HOST_KEY: &str = "DHHC-1:01:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:";
const CTRL_KEY: &str = "DHHC-1:02:QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl9gYWJjZGVmZ2hpamtsbW5voBXMjQ==:";

#[test]
fn key_transform_python() {
    let host = DhchapKey::parse(HOST_KEY).unwrap();
    assert_eq!(host.secret().as_bytes(), seq(0, 32));
    assert_eq!(
        hex(host.transform(HOST_NQN).as_bytes()),
        "669734c3367390d9fb210b0e41e7bc5b4909b3b81ddfc55300e87cd26f5ae812"
    );
    let ctrl = DhchapKey::parse(CTRL_KEY).unwrap();
    assert_eq!(ctrl.format().as_str(), CTRL_KEY);
    assert_eq!(
        hex(ctrl.transform(SUBSYS_NQN).as_bytes()),
        "d34ed1bacb2e64feb590ca6b08b2b85979c110a4bdc1af1021c8f79c7677cf9a4dc000d4d11c9f4a520a3ec6b37faf14"
    );
}

#[test]
fn responses_null_group_python() {
    let kh = DhchapKey::parse(HOST_KEY).unwrap().transform(HOST_NQN);
    let kc = DhchapKey::parse(CTRL_KEY).unwrap().transform(SUBSYS_NQN);
    let c1 = seq(0x80, 32);
    let c2 = seq(0xa0, 32);
    let mut input = chap::ResponseInput {
        hash: HashId::Sha256,
        challenge: &c1,
        session_key: None,
        seqnum: 0x01020304,
        transaction_id: 0x0506,
        sc_c: 0,
        host_nqn: HOST_NQN,
        subsys_nqn: SUBSYS_NQN,
    };
    assert_eq!(
        hex(&chap::host_response(&kh, &input)),
        "6e1dc32bdaae4f5b63e42685f5cb250b5fbcc00c9a599aee091359e1a2942886"
    );
    input.challenge = &c2;
    input.seqnum = 0x0a0b0c0d;
    assert_eq!(
        hex(&chap::ctrl_response(&kc, &input)),
        "de66b3831809e3aea33a920abd8da3bc837b169360ff0c0220e0dec5e1827fda"
    );
}

#[test]
fn dh_values_python() {
    let host = DhKeyPair::generate(DhGroup::Ffdhe2048, &mut tape(vec![seq(1, 32)])).unwrap();
    let ctrl = DhKeyPair::generate(DhGroup::Ffdhe2048, &mut tape(vec![seq(101, 32)])).unwrap();
    assert_eq!(sha256_hex(host.public_value()), "53b37a098c5882b9f56495d787706d354ac8ebc273e680a7047c70228ce24ad3");
    assert_eq!(sha256_hex(ctrl.public_value()), "2e26cf10a1d144863e17441ad415e321e89ea4fe97435a9352dae7d7ae3fbf2f");
    let z = host.shared_value(ctrl.public_value()).unwrap();
    assert_eq!(
        hex(chap::session_key(HashId::Sha384, &z).as_bytes()),
        "1756029d095462ef5fbe37809c4ccd7268ad1e8ae0363df3eff40e46495b87bb504f1efab58280cdbff17f89c2b1b8c3"
    );
}

/// A whole bidirectional ffdhe2048 / SHA-384 transaction with scripted
/// randomness: the R1 and R2 on the wire and the generated PSK match Python.
#[test]
fn transaction_ffdhe2048_sha384_python() {
    let host_key = DhchapKey::parse(HOST_KEY).unwrap();
    let ctrl_key = DhchapKey::parse(CTRL_KEY).unwrap();
    let mut hc = HostConfig::new(HOST_NQN, SUBSYS_NQN, host_key.clone());
    hc.ctrl_key = Some(ctrl_key.clone());
    hc.transaction_id = 0x0506;
    let mut cc = CtrlConfig::new(HOST_NQN, SUBSYS_NQN, host_key);
    cc.ctrl_key = Some(ctrl_key);
    cc.hashes = vec![HashId::Sha384];
    cc.dh_groups = vec![DhGroup::Ffdhe2048];
    // Host draws its exponent, then C2, then S2; the controller C1, S1, exponent.
    let mut host = HostAuth::with_rng(hc, tape(vec![seq(1, 32), seq(48, 48), vec![0x0d, 0x0c, 0x0b, 0x0a]]));
    let mut ctrl = CtrlAuth::with_rng(cc, tape(vec![seq(0, 48), vec![4, 3, 2, 1], seq(101, 32)]));

    ctrl.on_send(&host.start());
    let HostStep::Send(reply) = host.on_message(&ctrl.receive()) else { panic!("no reply") };
    let AuthMessage::Reply(r) = AuthMessage::decode(&reply).unwrap() else { panic!("not a reply") };
    assert_eq!(
        hex(&r.response),
        "08cd232b2b6e3e6ea91cd6485ba41abc0bc53b7e2c2df4afe74c569de9f549c1cc6672863cc8718c28305f35dfccbee8"
    );
    assert_eq!(r.seqnum, 0x0a0b0c0d);
    ctrl.on_send(&reply);
    let success1 = ctrl.receive();
    let AuthMessage::Success1(s) = AuthMessage::decode(&success1).unwrap() else { panic!("not success1") };
    assert_eq!(
        hex(s.response.as_deref().unwrap()),
        "63be0dc31f68407ff62d7fd51494b13e3b84d8fd4a395ff130a0dd21be5f3ce5298737c9d5516a49f0a13a586ec428dd"
    );
    let HostStep::Done { send: Some(success2), outcome } = host.on_message(&success1) else { panic!("not done") };
    assert_eq!(ctrl.on_send(&success2), CtrlStatus::Authenticated);
    let generated = outcome.generated_psk().unwrap();
    assert_eq!(
        hex(generated.as_bytes()),
        "c066bc9b3550fac87368b59b462c8acd24aead5fe769e81760d5c5d02beaf9779c44cc58c2d73de19ec105cbe7a824fb"
    );
    let derived = tls_psk::derive_generated(HashId::Sha384, &generated, HOST_NQN, SUBSYS_NQN).unwrap();
    assert_eq!(
        derived.identity,
        format!("NVMe1G02 {HOST_NQN} {SUBSYS_NQN} FrubxD6W9V1fYUBLEhMD4wKv55ulaHWrofqnhDmCVi5SS0DSov8Vb8kHqj7CBIqt")
    );
    assert_eq!(
        hex(derived.tls_psk.as_bytes()),
        "15f1744e8c7fe2bf53ae7b563ac9b6a30da352c40976dd4b7faf8d62652f8f0bb28eb78326713822d39ed01dde6fe246"
    );
}

// libnvme test/psk.c
const LIBNVME_PSK: &str = "5512DBB6737D0106F65975B773DFB011FFC344BCF442E2DD6D8BC4870B5D5B03";
const LIBNVME_PSK48_TAIL: &str = "FFC344BCF442E2DD6D8BC4870B5D5B03";
const LIBNVME_HOST: &str = "nqn.psk-test-host";
const LIBNVME_SUBSYS: &str = "nqn.psk-test-subsys";

fn libnvme_psk(hash: Option<HashId>, len: usize) -> ConfiguredPsk {
    let bytes = unhex(&format!("{LIBNVME_PSK}{LIBNVME_PSK48_TAIL}"));
    ConfiguredPsk::from_bytes(hash, &bytes[..len]).unwrap()
}

#[test]
fn interchange_format_libnvme_spdk_nvme_cli() {
    let cases = [
        (None, 32, "NVMeTLSkey-1:00:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwNf9LrZ:"),
        (Some(HashId::Sha256), 32, "NVMeTLSkey-1:01:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwNf9LrZ:"),
        (
            Some(HashId::Sha384),
            48,
            "NVMeTLSkey-1:02:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwP/w0S89ELi3W2LxIcLXVsDn8kXZQ==:",
        ),
    ];
    for (hash, len, text) in cases {
        let psk = libnvme_psk(hash, len);
        assert_eq!(psk.format().as_str(), text);
        let parsed = ConfiguredPsk::parse(text).unwrap();
        assert_eq!((parsed.transform(), parsed.key().as_bytes()), (hash, psk.key().as_bytes()));
    }
    // SPDK doc/nvmf.md: the ASCII key "00112233445566778899aabbccddeeff".
    let spdk = ConfiguredPsk::parse("NVMeTLSkey-1:01:MDAxMTIyMzM0NDU1NjY3Nzg4OTlhYWJiY2NkZGVlZmZwJEiQ:").unwrap();
    assert_eq!(spdk.key().as_bytes(), b"00112233445566778899aabbccddeeff");
    // nvme-cli nvme-tls-key(1) example.
    assert!(ConfiguredPsk::parse("NVMeTLSkey-1:01:/b9tVz2OXJVISnoFgrPAygyS86XYJWkAapQeULns6PMpM8wv:").is_ok());
    // Broken CRC, wrong length for the hash, SHA-512, no final colon.
    assert!(ConfiguredPsk::parse("NVMeTLSkey-1:01:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwNf9LrY:").is_err());
    assert!(ConfiguredPsk::parse(cases[2].2.replace(":02:", ":01:").as_str()).is_err());
    assert!(ConfiguredPsk::parse(cases[1].2.replace(":01:", ":03:").as_str()).is_err());
    assert!(ConfiguredPsk::parse(cases[1].2.strip_suffix(':').unwrap()).is_err());
    assert!(!format!("{:?}", libnvme_psk(None, 32)).contains("VRLb"));
}

#[test]
fn identity_v1_digests_libnvme() {
    let cases = [
        (HkdfLabelLayout::Rfc8446, 32, "iSbjiStwJ/1TrTvDlt2fjFmzvsytOJelidNnA+X5lEU="),
        (HkdfLabelLayout::Rfc8446, 48, "QhW2+Rp6RzHlNtCslyRxMnwJ11tKKhz8JCAQpQ+XUD8f9td1VeH5h53yz2wKJG1a"),
        (HkdfLabelLayout::LibnvmeLegacy, 32, "66GuqV08TsAGII39teWUfwQwizjv06Jy8jOcX3NAAzM="),
        (HkdfLabelLayout::LibnvmeLegacy, 48, "RsKmYJ3nAn1ApjjMloJFbAkLPivONDAX/xW327YBUsn2eGShXSjCZvBaOxscLqmz"),
        (HkdfLabelLayout::LibnvmeLegacyLastPieceOnly, 32, "mJUDthe4jhFVFSnaBaydV/EHJK6OvIuw8xap5IkTnG0="),
        (
            HkdfLabelLayout::LibnvmeLegacyLastPieceOnly,
            48,
            "J6B5sIVRCNLtZutDfmNnfPeqOFbnewwc8KEkhcOcO0dAWfdJYe/DrMyIC7znu00M",
        ),
    ];
    for (layout, len, digest) in cases {
        let hash = if len == 32 { HashId::Sha256 } else { HashId::Sha384 };
        let psk = libnvme_psk(Some(hash), len);
        let derived = tls_psk::derive(&psk, LIBNVME_HOST, LIBNVME_SUBSYS, IdentityVersion::V1, layout).unwrap();
        let expected = format!("NVMe1R0{} {LIBNVME_HOST} {LIBNVME_SUBSYS} {digest}", hash.id());
        assert_eq!(derived.identity, expected, "{layout:?}");
        assert_eq!(derived.tls_psk.len(), len);
    }
}

#[test]
fn tls_psk_python_and_identity_v0_spdk() {
    let psk = libnvme_psk(Some(HashId::Sha256), 32);
    let v0 =
        tls_psk::derive(&psk, LIBNVME_HOST, LIBNVME_SUBSYS, IdentityVersion::V0, HkdfLabelLayout::Rfc8446).unwrap();
    assert_eq!(v0.identity, format!("NVMe0R01 {LIBNVME_HOST} {LIBNVME_SUBSYS}"));
    assert_eq!(hex(v0.tls_psk.as_bytes()), "05c6503551ad136e6ee32e6eeb3f6d500b69701d84ec71e328f65c7f51566f68");
    let v1 =
        tls_psk::derive(&psk, LIBNVME_HOST, LIBNVME_SUBSYS, IdentityVersion::V1, HkdfLabelLayout::Rfc8446).unwrap();
    assert_eq!(hex(v1.tls_psk.as_bytes()), "8fc3c0badfd4c0c66fa3ca33aadd0314f85536cc9bc47338b60f3e6e563786ca");
    // The layouts give different keys for the same input.
    let legacy =
        tls_psk::derive(&psk, LIBNVME_HOST, LIBNVME_SUBSYS, IdentityVersion::V0, HkdfLabelLayout::LibnvmeLegacy);
    assert_ne!(legacy.unwrap().tls_psk.as_bytes(), v0.tls_psk.as_bytes());
    // SPDK test/unit/lib/nvmf/tcp.c: the v0 identity string.
    let id = tls_psk::identity(
        IdentityVersion::V0,
        PskOrigin::Retained,
        HashId::Sha256,
        "nqn.2016-06.io.spdk:host1",
        "nqn.2016-06.io.spdk:cnode1",
        None,
    );
    assert_eq!(id.unwrap(), "NVMe0R01 nqn.2016-06.io.spdk:host1 nqn.2016-06.io.spdk:cnode1");
    // hh = 00 keeps the configured PSK and picks the hash by length.
    let plain = libnvme_psk(None, 48);
    assert_eq!(plain.tls_hash(), HashId::Sha384);
    assert_eq!(plain.retained(LIBNVME_HOST, HkdfLabelLayout::Rfc8446).unwrap().as_bytes(), plain.key().as_bytes());
    let derived = tls_psk::derive(&plain, LIBNVME_HOST, LIBNVME_SUBSYS, IdentityVersion::V0, HkdfLabelLayout::Rfc8446);
    assert!(derived.unwrap().identity.starts_with("NVMe0R02 "));
}

/// RFC 8448 section 3: the "derived" secret is
/// HKDF-Expand-Label(Extract(0, 0^32), "derived", SHA-256(""), 32).
#[test]
fn hkdf_expand_label_rfc8448() {
    let zeros = Secret::new(vec![0; 32]);
    let empty_hash = chap::digest(HashId::Sha256, b"");
    let derived =
        tls_psk::extract_expand_label(HashId::Sha256, &zeros, "derived", &empty_hash, 32, HkdfLabelLayout::Rfc8446);
    assert_eq!(hex(derived.unwrap().as_bytes()), "6f2615a108c702c5678f54fc9dbab69716c076189c48250cebeac3576c3611ba");
    let too_long = vec![b'x'; 256];
    assert!(
        tls_psk::extract_expand_label(HashId::Sha256, &zeros, "l", &too_long, 32, HkdfLabelLayout::Rfc8446).is_err()
    );
    assert!(tls_psk::derive_generated(HashId::Sha512, &Secret::new(vec![1; 64]), "a", "b").is_err());
}

#[test]
fn generated_tls_keys_round_trip() {
    for hash in [HashId::Sha256, HashId::Sha384] {
        let psk = ConfiguredPsk::generate(hash, &mut |b: &mut [u8]| b.fill(0x42)).unwrap();
        assert_eq!(psk.key().len(), hash.digest_len());
        let text = psk.format();
        assert!(text.starts_with(&format!("NVMeTLSkey-1:0{}:", hash.id())));
        assert_eq!(ConfiguredPsk::parse(&text).unwrap().key().as_bytes(), psk.key().as_bytes());
    }
    assert!(ConfiguredPsk::generate(HashId::Sha512, &mut |b: &mut [u8]| b.fill(0)).is_err());
}
