//! Host and controller DH-HMAC-CHAP state machines talking to each other in
//! memory, as the AUTH_Send / AUTH_Receive commands would carry the messages.
//!
//! The DH arithmetic does not depend on the hash, so every hash is crossed with
//! the cheap groups and each large group runs once or a few times; the test
//! `every_hash_and_group_both_directions` (ignored; run it with `--ignored`,
//! preferably `--release`) runs the whole matrix.

mod auth_util;

use auth_util::rng;
use nvmf_proto::auth::dh;
use nvmf_proto::auth::messages::{AuthMessage, Challenge, Reply, Success1};
use nvmf_proto::auth::{
    Authenticated, CtrlAuth, CtrlConfig, CtrlStatus, DhGroup, DhchapKey, FailureReason, HashId, HostAuth, HostConfig,
    HostStep,
};

const HOST_NQN: &str = "nqn.2014-08.org.nvmexpress:uuid:8ae2b12c-3d28-4458-83e3-658e571ed4b8";
const SUBSYS_NQN: &str = "nqn.2026-11.io.nvmf:auth-test";

fn key(hash: Option<HashId>, len: usize, fill: u8) -> DhchapKey {
    DhchapKey::from_secret(hash, &vec![fill; len]).unwrap()
}

struct Setup {
    host: HostConfig,
    ctrl: CtrlConfig,
}

fn setup(hash: HashId, group: DhGroup, bidirectional: bool) -> Setup {
    let host_key = key(Some(HashId::Sha256), 32, 0x11);
    let ctrl_key = key(Some(HashId::Sha512), 64, 0x22);
    let mut host = HostConfig::new(HOST_NQN, SUBSYS_NQN, host_key.clone());
    host.transaction_id = 0x0102;
    host.ctrl_key = bidirectional.then(|| ctrl_key.clone());
    let mut ctrl = CtrlConfig::new(HOST_NQN, SUBSYS_NQN, host_key);
    ctrl.ctrl_key = Some(ctrl_key);
    ctrl.hashes = vec![hash];
    ctrl.dh_groups = vec![group];
    Setup { host, ctrl }
}

/// What the host ended with, what it sent last, and the controller's status.
struct Outcome {
    host: Result<Authenticated, FailureReason>,
    ctrl: CtrlStatus,
    ctrl_auth: CtrlAuth,
    host_sent_failure2: bool,
}

/// Run one transaction; `tamper` may rewrite any message in flight
/// (`to_ctrl` tells the direction).
fn drive(setup: Setup, mut tamper: impl FnMut(bool, Vec<u8>) -> Vec<u8>) -> Outcome {
    let mut host = HostAuth::with_rng(setup.host, rng(1));
    let mut ctrl = CtrlAuth::with_rng(setup.ctrl, rng(2));
    let mut to_ctrl = host.start();
    for _ in 0..4 {
        ctrl.on_send(&tamper(true, to_ctrl));
        let to_host = tamper(false, ctrl.receive());
        let (last, result) = match host.on_message(&to_host) {
            HostStep::Send(bytes) => {
                to_ctrl = bytes;
                continue;
            }
            HostStep::Done { send, outcome } => (send, Ok(outcome)),
            HostStep::Failed { send, reason } => (send, Err(reason)),
        };
        let host_sent_failure2 = last.as_deref().is_some_and(|b| b.get(1) == Some(&0xf0));
        if let Some(bytes) = last {
            ctrl.on_send(&tamper(true, bytes));
        }
        return Outcome { host: result, ctrl: ctrl.status(), ctrl_auth: ctrl, host_sent_failure2 };
    }
    panic!("a transaction takes at most three round trips");
}

fn untouched(_: bool, bytes: Vec<u8>) -> Vec<u8> {
    bytes
}

fn assert_success(hash: HashId, group: DhGroup, bidirectional: bool) {
    let out = drive(setup(hash, group, bidirectional), untouched);
    let host = out.host.unwrap_or_else(|r| panic!("{hash} {group} bidirectional={bidirectional}: host failed: {r}"));
    assert_eq!(out.ctrl, CtrlStatus::Authenticated, "{hash} {group} {bidirectional}");
    let ctrl = out.ctrl_auth.authenticated().unwrap();
    assert_eq!((host.hash, host.dh_group), (hash, group));
    assert_eq!((ctrl.hash, ctrl.dh_group), (hash, group));
    assert_eq!(host.bidirectional, bidirectional);
    assert_eq!(ctrl.bidirectional, bidirectional);
    assert_eq!(host.c1, ctrl.c1);
    assert_eq!(host.c1.len(), hash.digest_len());
    assert_eq!(host.c2, ctrl.c2);
    let (hk, ck) = (host.session_key.as_ref(), ctrl.session_key.as_ref());
    assert_eq!(hk.map(|k| k.as_bytes().to_vec()), ck.map(|k| k.as_bytes().to_vec()));
    assert_eq!(hk.is_some(), group != DhGroup::Null);
    if let Some(k) = hk {
        assert_eq!(k.len(), hash.digest_len(), "Ks = H(g^xy)");
    }
    let (hp, cp) = (host.generated_psk(), ctrl.generated_psk());
    assert_eq!(hp.is_some(), bidirectional && group != DhGroup::Null);
    assert_eq!(hp.map(|k| k.as_bytes().to_vec()), cp.map(|k| k.as_bytes().to_vec()));
}

#[test]
fn every_hash_with_null_2048_and_3072_both_directions() {
    for hash in HashId::ALL {
        for group in [DhGroup::Null, DhGroup::Ffdhe2048, DhGroup::Ffdhe3072] {
            assert_success(hash, group, false);
            assert_success(hash, group, true);
        }
    }
}

#[test]
fn every_hash_with_ffdhe4096() {
    for hash in HashId::ALL {
        assert_success(hash, DhGroup::Ffdhe4096, true);
    }
}

#[test]
fn ffdhe6144_sha384() {
    assert_success(HashId::Sha384, DhGroup::Ffdhe6144, true);
}

#[test]
fn ffdhe8192_sha512() {
    assert_success(HashId::Sha512, DhGroup::Ffdhe8192, false);
}

#[test]
#[ignore = "slow in debug builds: the whole matrix"]
fn every_hash_and_group_both_directions() {
    for hash in HashId::ALL {
        for group in DhGroup::ALL {
            assert_success(hash, group, false);
            assert_success(hash, group, true);
        }
    }
}

#[test]
fn hh00_keys_and_controller_preference() {
    let mut s = setup(HashId::Sha256, DhGroup::Null, true);
    s.host.host_key = key(None, 48, 0x33);
    s.ctrl.host_key = key(None, 48, 0x33);
    s.ctrl.hashes = vec![HashId::Sha384, HashId::Sha256];
    s.ctrl.dh_groups = vec![DhGroup::Ffdhe2048, DhGroup::Null];
    let out = drive(s, untouched);
    let host = out.host.unwrap();
    assert_eq!((host.hash, host.dh_group), (HashId::Sha384, DhGroup::Ffdhe2048));
}

#[test]
fn wrong_host_key_gets_failure1() {
    let mut s = setup(HashId::Sha256, DhGroup::Ffdhe2048, false);
    s.host.host_key = key(Some(HashId::Sha256), 32, 0x12);
    let out = drive(s, untouched);
    assert_eq!(out.host.unwrap_err(), FailureReason::Failed);
    assert!(!out.host_sent_failure2, "a Failure1 is not answered");
    assert_eq!(out.ctrl, CtrlStatus::Failed(FailureReason::Failed));
}

#[test]
fn wrong_ctrl_key_is_refused_with_failure2() {
    let mut s = setup(HashId::Sha384, DhGroup::Null, true);
    s.host.ctrl_key = Some(key(Some(HashId::Sha512), 64, 0x23));
    let out = drive(s, untouched);
    assert_eq!(out.host.unwrap_err(), FailureReason::Failed);
    assert!(out.host_sent_failure2);
    assert_eq!(out.ctrl, CtrlStatus::Failed(FailureReason::Failed));
}

#[test]
fn bidirectional_request_without_ctrl_key_fails() {
    let mut s = setup(HashId::Sha256, DhGroup::Null, true);
    s.ctrl.ctrl_key = None;
    let out = drive(s, untouched);
    assert_eq!(out.host.unwrap_err(), FailureReason::Failed);
    assert_eq!(out.ctrl, CtrlStatus::Failed(FailureReason::Failed));
}

#[test]
fn nothing_in_common_is_reported() {
    let mut s = setup(HashId::Sha512, DhGroup::Null, false);
    s.host.hashes = vec![HashId::Sha256];
    assert_eq!(drive(s, untouched).host.unwrap_err(), FailureReason::HashUnusable);
    let mut s = setup(HashId::Sha256, DhGroup::Ffdhe4096, false);
    s.host.dh_groups = vec![DhGroup::Null, DhGroup::Ffdhe2048];
    assert_eq!(drive(s, untouched).host.unwrap_err(), FailureReason::DhGroupUnusable);
    let mut s = setup(HashId::Sha256, DhGroup::Null, false);
    s.host.hashes = vec![];
    assert_eq!(drive(s, untouched).host.unwrap_err(), FailureReason::HashUnusable);
}

/// Rewrite one decoded message in flight.
fn rewrite(to_ctrl: bool, bytes: Vec<u8>, f: &mut impl FnMut(&mut AuthMessage)) -> Vec<u8> {
    let _ = to_ctrl;
    let mut m = AuthMessage::decode(&bytes).unwrap();
    f(&mut m);
    m.to_bytes()
}

fn dh_value_p_minus(k: u8) -> Vec<u8> {
    let mut v = dh::prime(DhGroup::Ffdhe2048).unwrap().to_vec();
    *v.last_mut().unwrap() -= k;
    v
}

#[test]
fn controller_dh_value_out_of_range_is_refused() {
    for bad in [
        vec![0u8; 256],
        {
            let mut v = vec![0u8; 256];
            v[255] = 1;
            v
        },
        dh_value_p_minus(1),
        dh_value_p_minus(0),
    ] {
        let out = drive(setup(HashId::Sha256, DhGroup::Ffdhe2048, false), |to_ctrl, b| {
            rewrite(to_ctrl, b, &mut |m| {
                if let AuthMessage::Challenge(Challenge { dh_value, .. }) = m {
                    *dh_value = bad.clone();
                }
            })
        });
        assert_eq!(out.host.unwrap_err(), FailureReason::IncorrectPayload);
        assert!(out.host_sent_failure2);
        assert_eq!(out.ctrl, CtrlStatus::Failed(FailureReason::IncorrectPayload));
    }
}

#[test]
fn host_dh_value_out_of_range_is_refused() {
    let out = drive(setup(HashId::Sha256, DhGroup::Ffdhe2048, false), |to_ctrl, b| {
        rewrite(to_ctrl, b, &mut |m| {
            if let AuthMessage::Reply(Reply { dh_value, .. }) = m {
                *dh_value = dh_value_p_minus(1);
            }
        })
    });
    assert_eq!(out.host.unwrap_err(), FailureReason::DhGroupUnusable);
    assert_eq!(out.ctrl, CtrlStatus::Failed(FailureReason::DhGroupUnusable));
}

#[test]
fn dh_value_of_wrong_size_or_with_null_group_is_incorrect_payload() {
    let out = drive(setup(HashId::Sha256, DhGroup::Ffdhe2048, false), |to_ctrl, b| {
        rewrite(to_ctrl, b, &mut |m| {
            if let AuthMessage::Reply(Reply { dh_value, .. }) = m {
                dh_value.pop();
            }
        })
    });
    assert_eq!(out.ctrl, CtrlStatus::Failed(FailureReason::IncorrectPayload));
    let out = drive(setup(HashId::Sha256, DhGroup::Null, false), |to_ctrl, b| {
        rewrite(to_ctrl, b, &mut |m| {
            if let AuthMessage::Challenge(Challenge { dh_value, .. }) = m {
                *dh_value = vec![2; 256];
            }
        })
    });
    assert_eq!(out.host.unwrap_err(), FailureReason::IncorrectPayload);
    let out = drive(setup(HashId::Sha256, DhGroup::Ffdhe2048, false), |to_ctrl, b| {
        rewrite(to_ctrl, b, &mut |m| {
            if let AuthMessage::Challenge(Challenge { dh_value, .. }) = m {
                dh_value.clear();
            }
        })
    });
    assert_eq!(out.host.unwrap_err(), FailureReason::DhGroupUnusable);
}

#[test]
fn tampered_responses_fail() {
    // R1 flipped: the controller refuses the host.
    let out = drive(setup(HashId::Sha256, DhGroup::Null, true), |to_ctrl, b| {
        rewrite(to_ctrl, b, &mut |m| {
            if let AuthMessage::Reply(Reply { response, .. }) = m {
                response[0] ^= 1;
            }
        })
    });
    assert_eq!(out.ctrl, CtrlStatus::Failed(FailureReason::Failed));
    // R2 flipped or missing: the host refuses the controller.
    let out = drive(setup(HashId::Sha256, DhGroup::Ffdhe2048, true), |to_ctrl, b| {
        rewrite(to_ctrl, b, &mut |m| {
            if let AuthMessage::Success1(Success1 { response: Some(r), .. }) = m {
                r[31] ^= 0x80;
            }
        })
    });
    assert_eq!(out.host.unwrap_err(), FailureReason::Failed);
    assert_eq!(out.ctrl, CtrlStatus::Failed(FailureReason::Failed));
    let out = drive(setup(HashId::Sha256, DhGroup::Null, true), |to_ctrl, b| {
        rewrite(to_ctrl, b, &mut |m| {
            if let AuthMessage::Success1(s) = m {
                s.response = None;
            }
        })
    });
    assert_eq!(out.host.unwrap_err(), FailureReason::IncorrectPayload);
    assert!(out.host_sent_failure2);
}

#[test]
fn transaction_id_mismatch() {
    let out = drive(setup(HashId::Sha256, DhGroup::Null, false), |to_ctrl, b| {
        rewrite(to_ctrl, b, &mut |m| {
            if let AuthMessage::Challenge(c) = m {
                c.t_id ^= 1;
            }
        })
    });
    assert_eq!(out.host.unwrap_err(), FailureReason::IncorrectMessage);
    let out = drive(setup(HashId::Sha256, DhGroup::Null, false), |to_ctrl, b| {
        rewrite(to_ctrl, b, &mut |m| {
            if let AuthMessage::Reply(r) = m {
                r.t_id ^= 1;
            }
        })
    });
    assert_eq!(out.ctrl, CtrlStatus::Failed(FailureReason::IncorrectPayload));
}

#[test]
fn secure_channel_concatenation_is_declined() {
    let out = drive(setup(HashId::Sha256, DhGroup::Ffdhe2048, false), |to_ctrl, b| {
        rewrite(to_ctrl, b, &mut |m| {
            if let AuthMessage::Negotiate(n) = m {
                n.sc_c = 1;
            }
        })
    });
    assert_eq!(out.host.unwrap_err(), FailureReason::ConcatMismatch);
}

#[test]
fn truncated_and_garbled_messages_fail_cleanly() {
    // Every truncation of the Challenge, Success1 and Reply.
    for cut_to_host in [true, false] {
        for keep in 0..48 {
            let out = drive(setup(HashId::Sha256, DhGroup::Null, true), |to_ctrl, mut b: Vec<u8>| {
                let is_target =
                    if cut_to_host { !to_ctrl && b.get(1) == Some(&1) } else { to_ctrl && b.get(1) == Some(&2) };
                if is_target {
                    b.truncate(keep);
                }
                b
            });
            assert!(out.host.is_err(), "keep {keep}");
            assert!(matches!(out.ctrl, CtrlStatus::Failed(_)));
        }
    }
    // Garbage in place of the Reply.
    let out = drive(setup(HashId::Sha256, DhGroup::Null, false), |to_ctrl, b: Vec<u8>| {
        if to_ctrl && b.get(1) == Some(&2) {
            vec![0x7f; 100]
        } else {
            b
        }
    });
    assert_eq!(out.ctrl, CtrlStatus::Failed(FailureReason::IncorrectMessage));
    assert_eq!(out.host.unwrap_err(), FailureReason::IncorrectMessage);
}

#[test]
fn out_of_order_use() {
    let s = setup(HashId::Sha256, DhGroup::Null, false);
    let mut ctrl = CtrlAuth::with_rng(s.ctrl.clone(), rng(3));
    let f = AuthMessage::decode(&ctrl.receive()).unwrap();
    assert!(matches!(f, AuthMessage::Failure1(x) if x.explanation == FailureReason::IncorrectMessage));
    assert_eq!(ctrl.status(), CtrlStatus::Failed(FailureReason::IncorrectMessage));
    let mut host = HostAuth::with_rng(s.host, rng(4));
    assert!(matches!(host.on_message(&[]), HostStep::Failed { send: None, .. }));
    // A Reply where the Negotiate belongs.
    let mut ctrl = CtrlAuth::with_rng(s.ctrl, rng(5));
    let reply =
        AuthMessage::Reply(Reply { t_id: 0, seqnum: 0, response: vec![0; 32], challenge: None, dh_value: vec![] });
    ctrl.on_send(&reply.to_bytes());
    let f = AuthMessage::decode(&ctrl.receive()).unwrap();
    assert!(matches!(f, AuthMessage::Failure1(x) if x.explanation == FailureReason::IncorrectMessage));
}

#[test]
fn failure2_from_host_ends_the_transaction() {
    let s = setup(HashId::Sha256, DhGroup::Null, false);
    let mut host = HostAuth::with_rng(s.host, rng(6));
    let mut ctrl = CtrlAuth::with_rng(s.ctrl, rng(7));
    ctrl.on_send(&host.start());
    let _challenge = ctrl.receive();
    let f2 = AuthMessage::Failure2(nvmf_proto::auth::messages::Failure::new(0x0102, FailureReason::HashUnusable));
    assert_eq!(ctrl.on_send(&f2.to_bytes()), CtrlStatus::Failed(FailureReason::HashUnusable));
}

#[test]
fn secrets_stay_out_of_debug_output() {
    let s = setup(HashId::Sha256, DhGroup::Ffdhe2048, true);
    let secret_hex: String = s.host.host_key.secret().as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    let printed = format!("{:?} {:?} {:?}", s.host, s.ctrl, s.host.host_key.format().len());
    assert!(!printed.contains(&*s.host.host_key.format()), "{printed}");
    assert!(!printed.contains(&secret_hex));
    assert!(!printed.contains("17, 17, 17"), "{printed}");
    let out = drive(setup(HashId::Sha256, DhGroup::Ffdhe2048, true), untouched);
    let printed = format!("{:?}", out.host.unwrap());
    assert!(printed.contains("redacted"), "{printed}");
}
