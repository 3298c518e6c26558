//! Secure channel concatenation in the DH-HMAC-CHAP state machines: the SC_C
//! values (Linux 6.15 `NVME_AUTH_SECP_*`), the value threaded into both
//! responses, C2 always sent with S2 = 0, the controller accepting only the
//! value its queue allows, the generated PSK and TLS PSK both sides derive.

mod auth_util;

use auth_util::rng;
use nvmf_proto::auth::messages::{
    AuthMessage, AUTH_ID_REPLY, SC_C_NEW_TLS_PSK, SC_C_NONE, SC_C_REPLACE_TLS_PSK, SC_C_SC,
};
use nvmf_proto::auth::tls_psk;
use nvmf_proto::auth::{
    Authenticated, CtrlAuth, CtrlConfig, CtrlStatus, DhGroup, DhchapKey, FailureReason, HashId, HostAuth, HostConfig,
    HostStep,
};

const HOST_NQN: &str = "nqn.2014-08.org.nvmexpress:uuid:8ae2b12c-3d28-4458-83e3-658e571ed4b8";
const SUBSYS_NQN: &str = "nqn.2026-12.io.nvmf:concat-test";

fn key(fill: u8) -> DhchapKey {
    DhchapKey::from_secret(Some(HashId::Sha256), &[fill; 32]).unwrap()
}

fn configs(hash: HashId, group: DhGroup, host_sc_c: u8, ctrl_sc_c: u8) -> (HostConfig, CtrlConfig) {
    let mut host = HostConfig::new(HOST_NQN, SUBSYS_NQN, key(0x11));
    host.sc_c = host_sc_c;
    host.transaction_id = 7;
    // A controller key does not make a concatenation bidirectional.
    host.ctrl_key = Some(key(0x22));
    let mut ctrl = CtrlConfig::new(HOST_NQN, SUBSYS_NQN, key(0x11));
    ctrl.ctrl_key = Some(key(0x22));
    ctrl.hashes = vec![hash];
    ctrl.dh_groups = vec![group];
    ctrl.concat_sc_c = ctrl_sc_c;
    (host, ctrl)
}

struct Outcome {
    host: Result<Authenticated, FailureReason>,
    host_auth: HostAuth,
    ctrl: CtrlAuth,
    /// Every message the host sent.
    sent: Vec<Vec<u8>>,
}

fn drive(host: HostConfig, ctrl: CtrlConfig, mut tamper: impl FnMut(Vec<u8>) -> Vec<u8>) -> Outcome {
    let mut h = HostAuth::with_rng(host, rng(1));
    let mut c = CtrlAuth::with_rng(ctrl, rng(2));
    let mut sent = Vec::new();
    let mut to_ctrl = h.start();
    for _ in 0..4 {
        let bytes = tamper(to_ctrl);
        sent.push(bytes.clone());
        c.on_send(&bytes);
        let (last, result) = match h.on_message(&c.receive()) {
            HostStep::Send(bytes) => {
                to_ctrl = bytes;
                continue;
            }
            HostStep::Done { send, outcome } => (send, Ok(outcome)),
            HostStep::Failed { send, reason } => (send, Err(reason)),
        };
        if let Some(bytes) = last {
            sent.push(bytes.clone());
            c.on_send(&bytes);
        }
        return Outcome { host: result, host_auth: h, ctrl: c, sent };
    }
    panic!("a transaction takes at most three round trips");
}

#[test]
fn sc_c_values_are_linux_6_15s() {
    assert_eq!((SC_C_NONE, SC_C_SC, SC_C_NEW_TLS_PSK, SC_C_REPLACE_TLS_PSK), (0, 1, 2, 3));
}

#[test]
fn both_sides_derive_the_same_generated_tls_psk() {
    for (hash, sc_c) in [(HashId::Sha256, SC_C_NEW_TLS_PSK), (HashId::Sha384, SC_C_REPLACE_TLS_PSK)] {
        let (host, ctrl) = configs(hash, DhGroup::Ffdhe2048, sc_c, sc_c);
        let out = drive(host, ctrl, |b| b);
        let h = out.host.expect("host succeeded");
        assert_eq!(out.ctrl.status(), CtrlStatus::Authenticated);
        let c = out.ctrl.authenticated().unwrap();
        assert_eq!((h.sc_c, c.sc_c), (sc_c, sc_c));
        // Not bidirectional though both have the controller key; no Success2.
        assert!(!h.bidirectional && !c.bidirectional);
        assert_eq!(out.sent.len(), 2, "Negotiate and Reply only");
        // The Negotiate carries sc_c; the Reply has C2 and S2 = 0.
        assert_eq!(out.sent[0][6], sc_c);
        let Ok(AuthMessage::Reply(r)) = AuthMessage::decode(&out.sent[1]) else { panic!("a Reply") };
        assert_eq!(out.sent[1][1], AUTH_ID_REPLY);
        assert_eq!(r.seqnum, 0);
        assert_eq!(r.challenge.as_ref().map(Vec::len), Some(hash.digest_len()));
        let (hp, cp) = (h.generated_psk().unwrap(), c.generated_psk().unwrap());
        assert_eq!(hp.as_bytes(), cp.as_bytes());
        let hd = tls_psk::derive_generated(h.hash, &hp, HOST_NQN, SUBSYS_NQN).unwrap();
        let cd = tls_psk::derive_generated(c.hash, &cp, HOST_NQN, SUBSYS_NQN).unwrap();
        assert_eq!(hd.identity, cd.identity);
        assert_eq!(hd.tls_psk.as_bytes(), cd.tls_psk.as_bytes());
        let p = tls_psk::parse_identity(&hd.identity).unwrap();
        assert_eq!((p.origin, p.hash), (tls_psk::PskOrigin::Generated, hash));
    }
}

#[test]
fn sc_c_is_part_of_the_host_response() {
    // The controller allows REPLACE; the host hashed NEW, which a middlebox
    // rewrote to REPLACE in the Negotiate: R1 no longer verifies.
    let (host, ctrl) = configs(HashId::Sha256, DhGroup::Ffdhe2048, SC_C_NEW_TLS_PSK, SC_C_REPLACE_TLS_PSK);
    let out = drive(host, ctrl, |mut b| {
        if b[1] == 0 && b.len() > 8 {
            b[6] = SC_C_REPLACE_TLS_PSK;
        }
        b
    });
    assert_eq!(out.ctrl.status(), CtrlStatus::Failed(FailureReason::Failed));
    assert_eq!(out.host.unwrap_err(), FailureReason::Failed);
}

#[test]
fn the_controller_takes_only_its_queues_value() {
    for (host_sc_c, ctrl_sc_c) in [
        (SC_C_NEW_TLS_PSK, SC_C_NONE),
        (SC_C_NEW_TLS_PSK, SC_C_REPLACE_TLS_PSK),
        (SC_C_REPLACE_TLS_PSK, SC_C_NEW_TLS_PSK),
        (SC_C_SC, SC_C_NEW_TLS_PSK),
    ] {
        let (host, ctrl) = configs(HashId::Sha256, DhGroup::Ffdhe2048, host_sc_c, ctrl_sc_c);
        let out = drive(host, ctrl, |b| b);
        assert_eq!(out.host.unwrap_err(), FailureReason::ConcatMismatch, "{host_sc_c} on {ctrl_sc_c}");
        assert_eq!(out.ctrl.status(), CtrlStatus::Failed(FailureReason::ConcatMismatch));
    }
    // No concatenation asked: fine whatever the queue allows.
    let (host, ctrl) = configs(HashId::Sha256, DhGroup::Ffdhe2048, SC_C_NONE, SC_C_NEW_TLS_PSK);
    let out = drive(host, ctrl, |b| b);
    let h = out.host.unwrap();
    assert!(h.bidirectional && h.sc_c == SC_C_NONE);
}

#[test]
fn the_null_group_gives_no_generated_psk_and_the_host_refuses_it() {
    let (host, ctrl) = configs(HashId::Sha256, DhGroup::Null, SC_C_NEW_TLS_PSK, SC_C_NEW_TLS_PSK);
    let out = drive(host, ctrl, |b| b);
    assert_eq!(out.host.unwrap_err(), FailureReason::DhGroupUnusable);
    assert!(out.host_auth.concat_without_dh());
    assert_eq!(out.ctrl.status(), CtrlStatus::Failed(FailureReason::DhGroupUnusable));
    // Without concatenation the null group is fine and says nothing of it.
    let (host, ctrl) = configs(HashId::Sha256, DhGroup::Null, SC_C_NONE, SC_C_NONE);
    let out = drive(host, ctrl, |b| b);
    assert!(out.host.unwrap().generated_psk().is_none());
    assert!(!out.host_auth.concat_without_dh());
}
