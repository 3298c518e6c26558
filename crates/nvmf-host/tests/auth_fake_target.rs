//! DH-HMAC-CHAP on the host against the scripted fake controller, whose side
//! of every transaction is nvmf_proto's `CtrlAuth`: the blocking controller
//! (admin and I/O queues), discovery, the multipath device, and `perf` (admin
//! session and engine queues); unidirectional and bidirectional, wrong keys
//! on either side, ATR on I/O queues only, a silent controller, and the
//! choices of `nvmf_host::auth`.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{AuthEvent, FakeAuth, FakeTarget, BLOCK_SIZE, SUBNQN};
use nvmf_host::perf::admin::AdminSession;
use nvmf_host::perf::{run, PerfConfig, RwPattern};
use nvmf_host::{discover, AuthFailure, ConnectOptions, Controller, DhchapKey, Error};
use nvmf_proto::auth::{CtrlConfig, CtrlStatus, DhGroup, FailureReason, HashId};

const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-000000000001";
/// A host secret (hh 01, 32 bytes 0..=31) and a controller secret (hh 02, 48 bytes 64..=111).
const HOST_KEY: &str = "DHHC-1:01:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:";
const CTRL_KEY: &str = "DHHC-1:02:QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl9gYWJjZGVmZ2hpamtsbW5voBXMjQ==:";
/// The same shapes, other bytes.
const OTHER_KEY: &str = "DHHC-1:00:ia6zGodOr4SEG0Zzaw398rpY0wqipUWj4jWjUh4HWUz6aQ2n:";

fn key(text: &str) -> DhchapKey {
    DhchapKey::parse(text).unwrap()
}

fn opts(host: Option<&str>, ctrl: Option<&str>) -> ConnectOptions {
    let mut o = ConnectOptions::new(SUBNQN);
    o.hostnqn = HOSTNQN.into();
    o.ctrl_loss_tmo_s = 0;
    o.connect_timeout_ms = 2000;
    o.dhchap_secret = host.map(key);
    o.dhchap_ctrl_secret = ctrl.map(key);
    o
}

fn fake_auth(host: &str, ctrl: Option<&str>, hashes: &[HashId], groups: &[DhGroup]) -> FakeAuth {
    let mut c = CtrlConfig::new(HOSTNQN, SUBNQN, key(host));
    c.ctrl_key = ctrl.map(key);
    c.hashes = hashes.to_vec();
    c.dh_groups = groups.to_vec();
    FakeAuth { ctrl: c, admin_atr: true, io_atr: true }
}

fn events(t: &FakeTarget) -> Vec<AuthEvent> {
    t.auth_events.lock().unwrap().clone()
}

/// A small write and read back on the I/O queue(s).
fn write_read(c: &mut Controller) {
    let data: Vec<u8> = (0..4 * BLOCK_SIZE).map(|i| (i * 7) as u8).collect();
    c.write_range(1, 8, 512, &data).unwrap();
    let mut back = vec![0u8; data.len()];
    c.read_range(1, 8, 512, &mut back).unwrap();
    assert_eq!(back, data);
}

fn assert_all_authenticated(ev: &[AuthEvent], queues: u16, bidirectional: bool) {
    assert_eq!(ev.len(), queues as usize + 1, "{ev:?}");
    assert!(ev.iter().all(|e| e.status == CtrlStatus::Authenticated && e.bidirectional == bidirectional), "{ev:?}");
    let qids: BTreeSet<u16> = ev.iter().map(|e| e.qid).collect();
    assert_eq!(qids, (0..=queues).collect(), "every queue authenticated on its own");
    let t_ids: BTreeSet<u16> = ev.iter().map(|e| e.t_id).collect();
    assert_eq!(t_ids.len(), ev.len(), "one transaction ID per queue: {ev:?}");
}

#[test]
fn unidirectional_on_every_queue() {
    for (hash, group) in [(HashId::Sha256, DhGroup::Null), (HashId::Sha384, DhGroup::Ffdhe2048)] {
        let t = FakeTarget::start_with_auth(fake_auth(HOST_KEY, None, &[hash], &[group]));
        let mut o = opts(Some(HOST_KEY), None);
        o.nr_io_queues = 2;
        let mut c = Controller::connect(t.addr, o).unwrap();
        assert_eq!(c.identify().serial, "fake0001", "admin commands pass the ATR gate");
        write_read(&mut c);
        c.disconnect().unwrap();
        assert_all_authenticated(&events(&t), 2, false);
    }
}

#[test]
fn bidirectional_on_every_queue() {
    for (hash, group) in [(HashId::Sha512, DhGroup::Ffdhe3072), (HashId::Sha256, DhGroup::Null)] {
        let t = FakeTarget::start_with_auth(fake_auth(HOST_KEY, Some(CTRL_KEY), &[hash], &[group]));
        let mut c = Controller::connect(t.addr, opts(Some(HOST_KEY), Some(CTRL_KEY))).unwrap();
        write_read(&mut c);
        c.disconnect().unwrap();
        assert_all_authenticated(&events(&t), 1, true);
    }
}

#[test]
fn wrong_host_key_fails_cleanly_and_closes() {
    let t = FakeTarget::start_with_auth(fake_auth(OTHER_KEY, None, &[HashId::Sha256], &[DhGroup::Null]));
    let e = Controller::connect(t.addr, opts(Some(HOST_KEY), None)).unwrap_err();
    assert!(
        matches!(e, Error::Auth(AuthFailure::RejectedByController { qid: 0, reason: FailureReason::Failed })),
        "{e}"
    );
    let text = e.to_string();
    assert!(text.starts_with("authentication failed: qid 0: the controller refused"), "{text}");
    assert!(!text.contains("DHHC") && !text.contains("AAECAwQF"), "no key material: {text}");
    assert!(t.wait_closed(1), "the connection is closed");
    let ev = events(&t);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].status, CtrlStatus::Failed(FailureReason::Failed));
}

#[test]
fn wrong_controller_key_is_refused_by_the_host() {
    let t = FakeTarget::start_with_auth(fake_auth(HOST_KEY, Some(OTHER_KEY), &[HashId::Sha256], &[DhGroup::Ffdhe2048]));
    let e = Controller::connect(t.addr, opts(Some(HOST_KEY), Some(CTRL_KEY))).unwrap_err();
    assert!(matches!(e, Error::Auth(AuthFailure::RejectedByHost { qid: 0, reason: FailureReason::Failed })), "{e}");
    assert!(e.to_string().contains("wrong controller secret"), "{e}");
    assert!(t.wait_closed(1));
    // The controller got the host's Failure2.
    assert_eq!(events(&t)[0].status, CtrlStatus::Failed(FailureReason::Failed));
}

#[test]
fn atr_on_io_queues_only() {
    let mut a = fake_auth(HOST_KEY, None, &[HashId::Sha256], &[DhGroup::Ffdhe2048]);
    a.admin_atr = false;
    let t = FakeTarget::start_with_auth(a);
    let mut o = opts(Some(HOST_KEY), None);
    o.nr_io_queues = 2;
    let mut c = Controller::connect(t.addr, o).unwrap();
    write_read(&mut c);
    c.disconnect().unwrap();
    let ev = events(&t);
    let qids: BTreeSet<u16> = ev.iter().map(|e| e.qid).collect();
    assert_eq!(qids, BTreeSet::from([1, 2]), "{ev:?}");
    assert!(ev.iter().all(|e| e.status == CtrlStatus::Authenticated));
}

#[test]
fn atr_without_a_secret_is_an_error() {
    let t = FakeTarget::start_with_auth(fake_auth(HOST_KEY, None, &[HashId::Sha256], &[DhGroup::Null]));
    let e = Controller::connect(t.addr, opts(None, None)).unwrap_err();
    assert!(matches!(e, Error::Auth(AuthFailure::KeyRequired { qid: 0 })), "{e}");
    assert!(t.wait_closed(1));
    // ATR on an I/O queue only: the admin queue comes up, the I/O queue does not.
    let mut a = fake_auth(HOST_KEY, None, &[HashId::Sha256], &[DhGroup::Null]);
    a.admin_atr = false;
    let t = FakeTarget::start_with_auth(a);
    let e = Controller::connect(t.addr, opts(None, None)).unwrap_err();
    assert!(matches!(e, Error::Auth(AuthFailure::KeyRequired { qid: 1 })), "{e}");
}

#[test]
fn a_controller_secret_makes_the_host_authenticate_unasked() {
    let mut a = fake_auth(HOST_KEY, Some(CTRL_KEY), &[HashId::Sha256], &[DhGroup::Null]);
    (a.admin_atr, a.io_atr) = (false, false);
    let t = FakeTarget::start_with_auth(a);
    let mut c = Controller::connect(t.addr, opts(Some(HOST_KEY), Some(CTRL_KEY))).unwrap();
    write_read(&mut c);
    c.disconnect().unwrap();
    assert_all_authenticated(&events(&t), 1, true);
    // A host secret alone and no ATR: nothing to do (as Linux).
    let t = FakeTarget::start();
    Controller::connect(t.addr, opts(Some(HOST_KEY), None)).unwrap().disconnect().unwrap();
    // A controller that cannot authenticate itself is not used.
    let e = Controller::connect(t.addr, opts(Some(HOST_KEY), Some(CTRL_KEY))).unwrap_err();
    assert!(matches!(e, Error::Auth(AuthFailure::Status { qid: 0, .. })), "{e}");
}

#[test]
fn a_silent_controller_times_the_exchange_out() {
    let t = FakeTarget::start_with_auth(fake_auth(HOST_KEY, None, &[HashId::Sha256], &[DhGroup::Null]));
    t.faults.ignore_auth_receive.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut o = opts(Some(HOST_KEY), None);
    o.admin_timeout_ms = 300;
    let start = std::time::Instant::now();
    let e = Controller::connect(t.addr, o).unwrap_err();
    assert!(matches!(e, Error::Auth(AuthFailure::Timeout { qid: 0, timeout_ms: 300 })), "{e}");
    assert!(start.elapsed() < Duration::from_secs(20), "bounded");
    assert!(t.wait_closed(1));
}

#[test]
fn discovery_authenticates() {
    let mut a = fake_auth(HOST_KEY, None, &[HashId::Sha256], &[DhGroup::Ffdhe2048]);
    a.ctrl.subsys_nqn = nvmf_proto::DISCOVERY_NQN.into();
    let t = FakeTarget::start_with_auth(a);
    let mut o = opts(Some(HOST_KEY), None);
    o.subnqn = nvmf_proto::DISCOVERY_NQN.into();
    let log = discover(t.addr, o.clone()).unwrap();
    assert_eq!(log.entries.len(), 1);
    assert_eq!(events(&t).len(), 1);
    assert_eq!(events(&t)[0].status, CtrlStatus::Authenticated);
    o.dhchap_secret = None;
    let e = discover(t.addr, o).unwrap_err();
    assert!(matches!(e, Error::Auth(AuthFailure::KeyRequired { qid: 0 })), "{e}");
}

#[test]
fn secrets_stay_out_of_debug_output() {
    let o = opts(Some(HOST_KEY), Some(CTRL_KEY));
    let shown = format!("{o:?}");
    assert!(!shown.contains("AAECAwQF") && !shown.contains("QEFCQ0RF"), "{shown}");
    assert!(shown.contains("redacted"), "{shown}");
    let mut bad = opts(None, Some(CTRL_KEY));
    assert!(bad.validate().is_err(), "a controller secret needs a host secret");
    bad.dhchap_secret = Some(key(HOST_KEY));
    assert!(bad.validate().is_ok());
}

fn perf(t: &FakeTarget, cfg: &PerfConfig) -> Result<nvmf_host::perf::Summary, String> {
    let admin = AdminSession::open(t.addr, SUBNQN, Some(HOSTNQN), cfg)?;
    let facts = admin.facts().clone();
    let mut admin = admin;
    let mut ka = || admin.keep_alive();
    let s = run::run(cfg, t.addr, &facts, Some(Duration::from_millis(200)), &mut ka, false);
    admin.disconnect();
    s
}

#[test]
fn perf_authenticates_admin_and_engine_queues() {
    let t = FakeTarget::start_with_auth(fake_auth(HOST_KEY, Some(CTRL_KEY), &[HashId::Sha384], &[DhGroup::Ffdhe2048]));
    let cfg = PerfConfig {
        rw: RwPattern::RandRw,
        runtime_s: 1,
        iodepth: 4,
        io_queues: 2,
        seed: 7,
        size_bytes: 1 << 20,
        dhchap_secret: Some(key(HOST_KEY)),
        dhchap_ctrl_secret: Some(key(CTRL_KEY)),
        ..PerfConfig::default()
    };
    let s = perf(&t, &cfg).unwrap();
    assert_eq!(s.errors, 0, "{:?}", s.error_samples);
    assert!(s.reads + s.writes > 0);
    assert_all_authenticated(&events(&t), 2, true);

    // A wrong host secret fails the admin queue; ATR on the I/O queues only
    // fails each engine queue before any I/O.
    let wrong = PerfConfig { dhchap_secret: Some(key(OTHER_KEY)), dhchap_ctrl_secret: None, ..cfg.clone() };
    let e = perf(&t, &wrong).unwrap_err();
    assert!(e.starts_with("authentication failed: qid 0"), "{e}");
    let mut a = fake_auth(HOST_KEY, None, &[HashId::Sha256], &[DhGroup::Null]);
    a.admin_atr = false;
    let t = FakeTarget::start_with_auth(a);
    let r = perf(&t, &wrong);
    let s = match r {
        Ok(s) => s,
        Err(e) => panic!("the run reports queue errors in its summary: {e}"),
    };
    assert_eq!(s.reads + s.writes, 0, "no I/O on a queue that did not authenticate");
    assert!(s.errors > 0);
    assert!(s.error_samples.iter().any(|e| e.contains("authentication failed: qid")), "{:?}", s.error_samples);
}

#[test]
fn multipath_paths_authenticate() {
    use nvmf_host::multipath::{MultipathDevice, MultipathOptions};
    let t = FakeTarget::start_with_auth(fake_auth(HOST_KEY, Some(CTRL_KEY), &[HashId::Sha256], &[DhGroup::Ffdhe2048]));
    let mut o = MultipathOptions::new(SUBNQN, 1);
    o.connect = ConnectOptions { kato_s: o.connect.kato_s, ..opts(Some(HOST_KEY), Some(CTRL_KEY)) };
    let mut dev = MultipathDevice::open(&[t.addr], o).unwrap();
    let mut b = vec![0u8; 512];
    dev.read(0, 1, &mut b).unwrap();
    dev.close();
    let ev = events(&t);
    assert!(ev.len() >= 2 && ev.iter().all(|e| e.status == CtrlStatus::Authenticated && e.bidirectional), "{ev:?}");
}
