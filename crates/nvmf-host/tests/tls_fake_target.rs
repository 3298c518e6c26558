//! NVMe/TCP TLS on the host against the fake controller behind a TLS 1.3 PSK
//! front (`common/tls_front.rs`, an `nvmf_tls` server session per
//! connection): identify, write and read on every queue over TLS, v0 and v1
//! identities, SHA-256 and SHA-384 keys, hh 00 keys, the libnvme < 1.16
//! ("compat") derivation, an explicit identity with an exported key,
//! discovery, TLS with DH-HMAC-CHAP, KeyUpdates from the controller while
//! data flows, close_notify, and clean failures (wrong PSK, unknown identity,
//! TLS against a plain controller and the reverse).

mod common;
#[path = "common/tls_front.rs"]
mod tls_front;

use std::time::{Duration, Instant};

use common::{FakeAuth, FakeTarget, BLOCK_SIZE, SUBNQN};
use nvmf_host::{discover, ConnectOptions, Controller, DhchapKey, Error, TlsOptions};
use nvmf_proto::auth::tls_psk::{self, ConfiguredPsk, HkdfLabelLayout, IdentityVersion};
use nvmf_proto::auth::{CtrlConfig, CtrlStatus, DhGroup, HashId};
use nvmf_proto::DISCOVERY_NQN;
use nvmf_tls::{TlsError, TlsHash};
use tls_front::{Handshake, PskTable, TlsFront};

const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-000000000001";
/// libnvme's test/psk.c key, hh 01 and 02 (SHA-256, 32 bytes; SHA-384, 48 bytes).
const KEY_01: &str = "NVMeTLSkey-1:01:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwNf9LrZ:";
const KEY_02: &str = "NVMeTLSkey-1:02:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwP/w0S89ELi3W2LxIcLXVsDn8kXZQ==:";
const HOST_KEY: &str = "DHHC-1:01:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:";

fn psk(text: &str) -> ConfiguredPsk {
    ConfiguredPsk::parse(text).unwrap()
}

/// A key of `len` bytes `fill` in the interchange format with hash `hh`.
fn key_of(transform: Option<HashId>, len: usize, fill: u8) -> String {
    ConfiguredPsk::from_bytes(transform, &vec![fill; len]).unwrap().format().to_string()
}

fn hash_of(h: HashId) -> TlsHash {
    if h == HashId::Sha384 {
        TlsHash::Sha384
    } else {
        TlsHash::Sha256
    }
}

/// What the controller's keyring holds for `key`: the derived identity and
/// TLS PSK for `subnqns`, as libnvme inserts them.
fn table(key: &str, subnqns: &[&str], version: IdentityVersion, layout: HkdfLabelLayout) -> PskTable {
    let k = psk(key);
    subnqns
        .iter()
        .map(|s| {
            let d = tls_psk::derive(&k, HOSTNQN, s, version, layout).unwrap();
            (d.identity, (d.tls_psk.as_bytes().to_vec(), hash_of(k.tls_hash())))
        })
        .collect()
}

fn identity(key: &str, subnqn: &str, version: IdentityVersion) -> String {
    tls_psk::derive(&psk(key), HOSTNQN, subnqn, version, HkdfLabelLayout::Rfc8446).unwrap().identity
}

fn opts(tls: Option<TlsOptions>) -> ConnectOptions {
    let mut o = ConnectOptions::new(SUBNQN);
    o.hostnqn = HOSTNQN.into();
    o.ctrl_loss_tmo_s = 0;
    o.connect_timeout_ms = 3000;
    o.tls = tls;
    o
}

fn tls(key: &str) -> TlsOptions {
    TlsOptions::from_interchange(key).unwrap()
}

fn write_read(c: &mut Controller, len: usize) {
    let data: Vec<u8> = (0..len).map(|i| (i * 13 + i / 512) as u8).collect();
    c.write_range(1, 16, BLOCK_SIZE as u32, &data).unwrap();
    let mut back = vec![0u8; data.len()];
    c.read_range(1, 16, BLOCK_SIZE as u32, &mut back).unwrap();
    assert!(back == data, "read back differs");
}

fn handshakes(f: &TlsFront) -> Vec<Handshake> {
    f.state.handshakes.lock().unwrap().clone()
}

/// Connect with `o`, identify, write/read on every I/O queue; every queue did
/// its own handshake with `want_identity`.
fn round_trip(f: &TlsFront, o: ConnectOptions, want_identity: &str, want_hash: TlsHash) {
    let queues = o.nr_io_queues;
    let mut c = Controller::connect(f.addr, o).unwrap();
    assert_eq!(c.identify().serial, "fake0001");
    assert!(c.io_queue(0).unwrap().is_tls());
    write_read(&mut c, 64 * BLOCK_SIZE);
    c.disconnect().unwrap();
    let hs = handshakes(f);
    assert_eq!(hs.len(), usize::from(queues) + 1, "one handshake per queue: {hs:?}");
    assert!(hs.iter().all(|h| h.identity == want_identity && h.hash == want_hash), "{hs:?}");
}

#[test]
fn v1_identity_sha256_on_every_queue() {
    let t = FakeTarget::start();
    let f = TlsFront::start(t.addr, table(KEY_01, &[SUBNQN], IdentityVersion::V1, HkdfLabelLayout::Rfc8446));
    let mut o = opts(Some(tls(KEY_01)));
    o.nr_io_queues = 2;
    let want = identity(KEY_01, SUBNQN, IdentityVersion::V1);
    assert!(want.starts_with(&format!("NVMe1R01 {HOSTNQN} {SUBNQN} ")), "{want}");
    round_trip(&f, o, &want, TlsHash::Sha256);
}

#[test]
fn v0_and_v1_identities_sha384() {
    for version in [IdentityVersion::V0, IdentityVersion::V1] {
        let t = FakeTarget::start();
        let f = TlsFront::start(t.addr, table(KEY_02, &[SUBNQN], version, HkdfLabelLayout::Rfc8446));
        let mut tl = tls(KEY_02);
        tl.identity_version = version;
        let want = identity(KEY_02, SUBNQN, version);
        if version == IdentityVersion::V0 {
            assert_eq!(want, format!("NVMe0R02 {HOSTNQN} {SUBNQN}"));
        }
        round_trip(&f, opts(Some(tl)), &want, TlsHash::Sha384);
    }
}

#[test]
fn hh_00_keys_take_the_hash_of_their_length() {
    for (len, hash, hh) in [(32, TlsHash::Sha256, "01"), (48, TlsHash::Sha384, "02")] {
        let key = key_of(None, len, 0x5a);
        assert!(key.starts_with("NVMeTLSkey-1:00:"));
        let t = FakeTarget::start();
        let f = TlsFront::start(t.addr, table(&key, &[SUBNQN], IdentityVersion::V1, HkdfLabelLayout::Rfc8446));
        let want = identity(&key, SUBNQN, IdentityVersion::V1);
        assert!(want.starts_with(&format!("NVMe1R{hh} ")), "{want}");
        round_trip(&f, opts(Some(tls(&key))), &want, hash);
    }
}

#[test]
fn compat_derivation_matches_an_old_libnvme_keyring_only_with_compat() {
    let t = FakeTarget::start();
    let f = TlsFront::start(t.addr, table(KEY_01, &[SUBNQN], IdentityVersion::V1, HkdfLabelLayout::LibnvmeLegacy));
    let mut tl = tls(KEY_01);
    tl.layout = HkdfLabelLayout::LibnvmeLegacy;
    let want = tls_psk::derive(&psk(KEY_01), HOSTNQN, SUBNQN, IdentityVersion::V1, HkdfLabelLayout::LibnvmeLegacy)
        .unwrap()
        .identity;
    round_trip(&f, opts(Some(tl)), &want, TlsHash::Sha256);
    // The RFC 8446 layout gives another v1 digest: an identity the controller does not know.
    let e = Controller::connect(f.addr, opts(Some(tls(KEY_01)))).unwrap_err();
    assert!(matches!(&e, Error::Tls { qid: 0, error: TlsError::Handshake(_) }), "{e}");
    // v0 identities do not depend on the layout, the PSK does: same identity, other PSK.
    let f = TlsFront::start(t.addr, table(KEY_01, &[SUBNQN], IdentityVersion::V0, HkdfLabelLayout::LibnvmeLegacy));
    let mut tl = tls(KEY_01);
    tl.identity_version = IdentityVersion::V0;
    let e = Controller::connect(f.addr, opts(Some(tl.clone()))).unwrap_err();
    assert!(matches!(&e, Error::Tls { qid: 0, error: TlsError::Handshake(_) }), "{e}");
    tl.layout = HkdfLabelLayout::LibnvmeLegacy;
    Controller::connect(f.addr, opts(Some(tl))).unwrap().disconnect().unwrap();
}

#[test]
fn explicit_identity_offers_the_key_as_the_tls_psk() {
    // As `nvme tls-key --export` prints a keyring's key: hh from its length.
    let tls_key = key_of(Some(HashId::Sha384), 48, 0x33);
    let id = "NVMe0R02 some-host some-subsystem";
    let mut table = PskTable::new();
    table.insert(id.into(), (vec![0x33; 48], TlsHash::Sha384));
    let t = FakeTarget::start();
    let f = TlsFront::start(t.addr, table);
    let mut tl = tls(&tls_key);
    tl.identity = Some(id.into());
    round_trip(&f, opts(Some(tl)), id, TlsHash::Sha384);
    // An hh 00 key is a configured PSK: an explicit identity is refused up front.
    let mut tl = tls(&key_of(None, 32, 1));
    tl.identity = Some(id.into());
    let e = Controller::connect(f.addr, opts(Some(tl))).unwrap_err();
    assert!(matches!(&e, Error::Invalid(m) if m.contains("hh 00")), "{e}");
    assert_eq!(f.state.accepted.load(std::sync::atomic::Ordering::Relaxed), 2, "no connection attempted");
}

#[test]
fn discovery_over_tls_uses_the_discovery_nqn() {
    let t = FakeTarget::start();
    let f = TlsFront::start(t.addr, table(KEY_01, &[DISCOVERY_NQN], IdentityVersion::V1, HkdfLabelLayout::Rfc8446));
    let mut o = opts(Some(tls(KEY_01)));
    o.subnqn = String::new();
    let log = discover(f.addr, o).unwrap();
    assert_eq!(log.entries.len(), 1);
    let hs = handshakes(&f);
    assert_eq!(hs.len(), 1);
    assert_eq!(hs[0].identity, identity(KEY_01, DISCOVERY_NQN, IdentityVersion::V1));
}

#[test]
fn tls_and_dh_hmac_chap_together() {
    let mut c = CtrlConfig::new(HOSTNQN, SUBNQN, DhchapKey::parse(HOST_KEY).unwrap());
    c.hashes = vec![HashId::Sha256];
    c.dh_groups = vec![DhGroup::Ffdhe2048];
    let t = FakeTarget::start_with_auth(FakeAuth { ctrl: c, admin_atr: true, io_atr: true });
    let f = TlsFront::start(t.addr, table(KEY_02, &[SUBNQN], IdentityVersion::V1, HkdfLabelLayout::Rfc8446));
    let mut o = opts(Some(tls(KEY_02)));
    o.dhchap_secret = Some(DhchapKey::parse(HOST_KEY).unwrap());
    round_trip(&f, o, &identity(KEY_02, SUBNQN, IdentityVersion::V1), TlsHash::Sha384);
    let ev = t.auth_events.lock().unwrap().clone();
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert!(ev.iter().all(|e| e.status == CtrlStatus::Authenticated), "{ev:?}");
}

#[test]
fn key_updates_from_the_controller_mid_stream() {
    let t = FakeTarget::start();
    let f = TlsFront::start(t.addr, table(KEY_01, &[SUBNQN], IdentityVersion::V1, HkdfLabelLayout::Rfc8446));
    let mut c = Controller::connect(f.addr, opts(Some(tls(KEY_01)))).unwrap();
    f.state.key_update_every.store(20_000, std::sync::atomic::Ordering::Relaxed);
    // Reads: many KeyUpdates among the C2HData; writes after each answer (the
    // host's sending keys changed, the controller must still decrypt them).
    for round in 0..3 {
        write_read(&mut c, 1 << 20);
        assert!(f.state.key_updates_sent.load(std::sync::atomic::Ordering::Relaxed) >= 50 * (round + 1));
    }
    c.disconnect().unwrap();
    assert!(f.state.failures.lock().unwrap().is_empty(), "{:?}", f.state.failures.lock().unwrap());
}

#[test]
fn close_notify_from_the_controller_is_a_clean_connection_loss() {
    let t = FakeTarget::start();
    let f = TlsFront::start(t.addr, table(KEY_01, &[SUBNQN], IdentityVersion::V1, HkdfLabelLayout::Rfc8446));
    let mut c = Controller::connect(f.addr, opts(Some(tls(KEY_01)))).unwrap();
    // The fake controller drops the I/O connection on the next write: the
    // front sends close_notify.
    t.faults.drop_on_write.store(1, std::sync::atomic::Ordering::Relaxed);
    let e = c.write_range(1, 0, 512, &[7u8; 512]).unwrap_err();
    assert!(matches!(e, Error::FateUnknown { .. }), "{e}");
    let q = c.io_queue(0).unwrap().queue().error().cloned();
    assert!(q.is_some(), "the queue failed");
}

#[test]
fn wrong_psk_and_unknown_identity_fail_cleanly_and_quickly() {
    let t = FakeTarget::start();
    // Same identity, another PSK: the binder does not verify.
    let mut wrong = table(KEY_01, &[SUBNQN], IdentityVersion::V1, HkdfLabelLayout::Rfc8446);
    for v in wrong.values_mut() {
        v.0[0] ^= 1;
    }
    let f = TlsFront::start(t.addr, wrong);
    let start = Instant::now();
    let e = Controller::connect(f.addr, opts(Some(tls(KEY_01)))).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(3), "no hang: {:?}", start.elapsed());
    assert!(matches!(&e, Error::Tls { qid: 0, error: TlsError::Handshake(_) }), "{e:?}");
    let text = e.to_string();
    assert!(text.starts_with("qid 0: TLS handshake failed"), "{text}");
    assert!(!text.contains("VRLbtnN9"), "no key material: {text}");
    assert!(!e.is_transport() && e.is_security_refusal());
    // An identity the controller does not know.
    let f = TlsFront::start(t.addr, table(KEY_01, &[SUBNQN], IdentityVersion::V0, HkdfLabelLayout::Rfc8446));
    let e = Controller::connect(f.addr, opts(Some(tls(KEY_01)))).unwrap_err();
    assert!(e.to_string().contains("does not know our PSK identity"), "{e}");
}

#[test]
fn tls_and_plain_peers_refuse_each_other_cleanly() {
    let t = FakeTarget::start();
    let start = Instant::now();
    // TLS host, plain controller: it answers the ClientHello with a C2HTermReq (type 0x03).
    let e = Controller::connect(t.addr, opts(Some(tls(KEY_01)))).unwrap_err();
    assert!(matches!(&e, Error::Tls { qid: 0, error: TlsError::Handshake(_) }), "{e:?}");
    assert!(e.to_string().contains("did not answer with TLS (first byte 0x03)"), "{e}");
    // Plain host, TLS controller: the ICReq is no ClientHello.
    let f = TlsFront::start(t.addr, table(KEY_01, &[SUBNQN], IdentityVersion::V1, HkdfLabelLayout::Rfc8446));
    let e = Controller::connect(f.addr, opts(None)).unwrap_err();
    assert!(e.is_transport(), "{e:?}");
    assert!(e.to_string().contains("requires TLS"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(6), "no hang: {:?}", start.elapsed());
}

#[test]
fn tls_secrets_stay_out_of_debug_output() {
    let mut o = opts(Some(tls(KEY_02)));
    o.tls.as_mut().unwrap().identity = Some("NVMe0R02 a b".into());
    let shown = format!("{o:?}");
    assert!(!shown.contains("VRLbtnN9") && !shown.contains("NVMeTLSkey"), "{shown}");
    assert!(shown.contains("redacted") && shown.contains("NVMe0R02 a b"), "{shown}");
    let p = o.tls_psk().unwrap().unwrap();
    assert!(!format!("{p:?}").contains("85, 18"), "{p:?}");
    // --tls-sha256-suite: the 48-byte TLS PSK goes with the SHA-256 suite.
    let mut t = tls(KEY_02);
    t.sha256_suite = true;
    let p = t.psk(HOSTNQN, SUBNQN).unwrap();
    assert_eq!((p.hash, p.psk.len()), (TlsHash::Sha256, 48));
    assert!(p.identity.starts_with("NVMe1R02 "), "the identity keeps the key's hash: {}", p.identity);
    let e = TlsOptions::from_interchange(&KEY_01.replace("VRLb", "VRLc")).unwrap_err();
    assert!(!e.contains("VRL"), "{e}");
}
