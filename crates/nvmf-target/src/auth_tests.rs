//! Authentication on a queue, driven in memory: the target's queue against
//! the host side of `nvmf_proto::auth`, through Authentication Send/Receive
//! capsules and C2HData.

use std::sync::Arc;

use nvmf_proto::auth::messages::{SC_C_NEW_TLS_PSK, SC_C_NONE, SC_C_REPLACE_TLS_PSK};
use nvmf_proto::auth::{DhGroup, DhchapKey, HashId, HostAuth, HostConfig as HostAuthConfig, HostStep};
use nvmf_proto::fabrics::{cc, prop, ConnectCmd, ConnectData, PropertyCmd, CATTR_DISABLE_SQ_FLOW_CONTROL};
use nvmf_proto::opcodes::{admin as adm, fctype, io as iop};
use nvmf_proto::pdu::{encode_capsule_cmd, encode_ic_req, flags, IcReq, TxConfig};
use nvmf_proto::status::{cmd, sct};
use nvmf_proto::{decode, Decoded, FrameConfig, Pdu, Role, Sgl, Sqe};

use crate::config::{HostConfig, NamespaceConfig, SubsystemConfig, TargetConfig};
use crate::subsys::Target;
use crate::tcp::QueueFlow;
use crate::testing::{test_config_base, test_opener, Driven};

const NQN: &str = "nqn.2026-12.io.nvmf:auth";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:aaaaaaaa-0000-0000-0000-000000000001";

fn key(seed: u8) -> DhchapKey {
    DhchapKey::from_secret(Some(HashId::Sha256), &[seed; 32]).unwrap()
}

fn target(host_key: &DhchapKey, ctrl_key: Option<&DhchapKey>, group: Option<&str>) -> Arc<Target> {
    let mut ns = NamespaceConfig::ram("1MiB");
    ns.nsid = Some(1);
    let mut sub = SubsystemConfig::with_namespaces(NQN, vec![ns]);
    sub.hosts = vec![HostConfig {
        nqn: HOST.into(),
        dhchap_key: Some(host_key.format().to_string()),
        dhchap_ctrl_key: ctrl_key.map(|k| k.format().to_string()),
        dhchap_dhgroup: group.map(str::to_string),
        ..Default::default()
    }];
    let cfg = TargetConfig { subsystems: vec![sub], ..test_config_base() };
    Target::new(&cfg, &test_opener).unwrap()
}

fn pdus(out: &[u8]) -> Vec<Pdu<'_>> {
    let cfg = FrameConfig { role: Role::Host, hdgst: false, ddgst: false, pdu_len_max: 1 << 24, rx_data_align: 4 };
    let mut v = Vec::new();
    let mut pos = 0;
    while pos < out.len() {
        match decode(&out[pos..], &cfg).expect("decodes") {
            Decoded::Pdu(p, n) => {
                v.push(p);
                pos += n;
            }
            Decoded::NeedMore(_) => panic!("partial PDU"),
        }
    }
    v
}

fn capsule(sqe: &Sqe, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    encode_capsule_cmd(&mut b, sqe, data, &TxConfig::default());
    b
}

/// (status sct, sc, dw0) of the last CapsuleResp, or success for a C2HData
/// with SUCCESS, and the C2H data.
fn result(out: &[u8]) -> ((u8, u8), u32, Vec<u8>) {
    let mut data = Vec::new();
    for p in pdus(out) {
        match p {
            Pdu::C2HData { data: d, flags: f, .. } => {
                data.extend_from_slice(d);
                if f & flags::SUCCESS != 0 {
                    return ((0, 0), 0, data);
                }
            }
            Pdu::CapsuleResp(c) => return ((c.status.sct, c.status.sc), c.dw0, data),
            _ => {}
        }
    }
    panic!("no completion");
}

fn connect(t: &Arc<Target>, qid: u16, cntlid: u16) -> (Driven, u32) {
    connect_tls(t, qid, cntlid, None)
}

/// [`connect`] as if over TLS with `identity` (the handshake is not run).
fn connect_tls(t: &Arc<Target>, qid: u16, cntlid: u16, identity: Option<&str>) -> (Driven, u32) {
    let mut d = Driven::new(t.clone());
    if let Some(identity) = identity {
        d.q.set_tls_identity(identity);
    }
    let mut b = Vec::new();
    encode_ic_req(&mut b, &IcReq::default());
    d.recv(&b);
    d.take_out();
    let c = ConnectCmd { recfmt: 0, qid, sqsize: 15, cattr: CATTR_DISABLE_SQ_FLOW_CONTROL, kato_ms: 0 };
    let data = ConnectData { hostid: [1; 16], cntlid, subnqn: NQN.into(), hostnqn: HOST.into() };
    d.recv(&capsule(&c.to_sqe(1), &data.encode()));
    let (st, dw0, _) = result(&d.take_out());
    assert_eq!(st, (0, 0), "connect");
    (d, dw0)
}

fn auth_sqe(cid: u16, send: bool, len: u32) -> Sqe {
    let ft = if send { fctype::AUTH_SEND } else { fctype::AUTH_RECV };
    // FCTYPE sits in byte 4 (the NSID field of other commands).
    let mut s = Sqe::new(adm::FABRICS, cid, ft as u32);
    s.cdw10 = (nvmf_proto::auth::SECP_DHCHAP as u32) << 24
        | (nvmf_proto::auth::SPSP1_DHCHAP as u32) << 16
        | (nvmf_proto::auth::SPSP0_DHCHAP as u32) << 8;
    s.cdw11 = len;
    s.sgl1 = if send { Sgl::in_capsule(0, len) } else { Sgl::transport(len) };
    s
}

/// Run the host side of one transaction over the queue; returns the host's
/// verdict (Ok: authenticated).
fn authenticate(d: &mut Driven, host_key: &DhchapKey, ctrl_key: Option<&DhchapKey>) -> Result<(), String> {
    authenticate_sc(d, host_key, ctrl_key, SC_C_NONE)
}

/// [`authenticate`] asking for secure channel concatenation `sc_c`.
fn authenticate_sc(d: &mut Driven, host_key: &DhchapKey, ctrl_key: Option<&DhchapKey>, sc_c: u8) -> Result<(), String> {
    let mut cfg = HostAuthConfig::new(HOST, NQN, host_key.clone());
    cfg.ctrl_key = ctrl_key.cloned();
    cfg.sc_c = sc_c;
    let mut host = HostAuth::new(cfg);
    let mut msg = host.start();
    let mut cid = 10;
    loop {
        cid += 1;
        d.recv(&capsule(&auth_sqe(cid, true, msg.len() as u32), &msg));
        assert_eq!(result(&d.take_out()).0, (0, 0), "auth send");
        cid += 1;
        d.recv(&capsule(&auth_sqe(cid, false, 4096), &[]));
        let (st, _, data) = result(&d.take_out());
        assert_eq!(st, (0, 0), "auth receive");
        match host.on_message(&data) {
            HostStep::Send(next) => msg = next,
            HostStep::Done { send, .. } => {
                if let Some(s2) = send {
                    cid += 1;
                    d.recv(&capsule(&auth_sqe(cid, true, s2.len() as u32), &s2));
                    assert_eq!(result(&d.take_out()).0, (0, 0), "success2");
                }
                return Ok(());
            }
            HostStep::Failed { reason, .. } => return Err(format!("{reason:?}")),
        }
    }
}

fn property_get_cap(d: &mut Driven) -> (u8, u8) {
    d.recv(&capsule(&PropertyCmd::get_sqe(50, prop::CAP, true), &[]));
    result(&d.take_out()).0
}

#[test]
fn a_host_with_a_key_authenticates_every_queue_before_anything_else() {
    let k = key(1);
    let t = target(&k, None, Some("ffdhe2048"));
    let (mut a, dw0) = connect(&t, 0, 0xffff);
    assert_eq!(dw0 & nvmf_proto::fabrics::CONNECT_DW0_AUTH_REQUIRED, nvmf_proto::fabrics::CONNECT_DW0_AUTH_REQUIRED);
    assert!(!a.established, "on probation until authenticated");
    assert_eq!(property_get_cap(&mut a), (sct::COMMAND_SPECIFIC, cmd::AUTH_REQUIRED));
    authenticate(&mut a, &k, None).unwrap();
    assert!(a.established);
    assert_eq!(property_get_cap(&mut a), (0, 0));
    a.recv(&capsule(&PropertyCmd::set_sqe(51, prop::CC, false, cc::LINUX_ENABLE as u64), &[]));
    let cntlid = (dw0 & 0xffff) as u16;
    // The I/O queue authenticates on its own.
    let (mut io, dw0) = connect(&t, 1, cntlid);
    assert_ne!(dw0 & nvmf_proto::fabrics::CONNECT_DW0_AUTH_REQUIRED, 0);
    let mut r = Sqe::rw(iop::READ, 60, 1, 0, 1);
    r.sgl1 = Sgl::transport(512);
    io.recv(&capsule(&r, &[]));
    assert_eq!(result(&io.take_out()).0, (sct::COMMAND_SPECIFIC, cmd::AUTH_REQUIRED));
    authenticate(&mut io, &k, None).unwrap();
    io.recv(&capsule(&r, &[]));
    assert_eq!(result(&io.take_out()).0, (0, 0));
}

#[test]
fn bidirectional_and_the_null_group() {
    let (k, ck) = (key(2), key(3));
    for group in [None, Some("null")] {
        let t = target(&k, Some(&ck), group);
        let (mut a, _) = connect(&t, 0, 0xffff);
        authenticate(&mut a, &k, Some(&ck)).unwrap();
        assert!(a.established);
    }
}

#[test]
fn a_wrong_host_key_is_refused_and_the_queue_closes() {
    let t = target(&key(4), None, Some("ffdhe2048"));
    let (mut a, _) = connect(&t, 0, 0xffff);
    let e = authenticate(&mut a, &key(5), None).unwrap_err();
    assert!(e.contains("Failed"), "{e}");
    assert!(!a.established);
    assert_eq!(a.closed, Some(QueueFlow::CloseAfterFlush), "after the Failure1");
}

#[test]
fn a_wrong_controller_key_is_refused_by_the_host() {
    let t = target(&key(6), Some(&key(7)), None);
    let (mut a, _) = connect(&t, 0, 0xffff);
    assert!(authenticate(&mut a, &key(6), Some(&key(8))).is_err());
}

#[test]
fn an_unauthenticated_queue_is_closed_after_the_connect_timeout() {
    let t = target(&key(9), None, None);
    let (mut a, _) = connect(&t, 0, 0xffff);
    assert_eq!(a.advance_to(10_000_000), QueueFlow::CloseNow);
}

#[test]
fn hosts_without_a_key_and_other_protocols() {
    let t = target(&key(10), None, None);
    // Another host NQN is not in the table: refused at Connect (restricted subsystem).
    let mut d = Driven::new(t.clone());
    let mut b = Vec::new();
    encode_ic_req(&mut b, &IcReq::default());
    d.recv(&b);
    d.take_out();
    let c = ConnectCmd { recfmt: 0, qid: 0, sqsize: 15, cattr: 0, kato_ms: 0 };
    let data = ConnectData {
        hostid: [1; 16],
        cntlid: 0xffff,
        subnqn: NQN.into(),
        hostnqn: "nqn.2014-08.org.nvmexpress:uuid:bbbbbbbb-0000-0000-0000-000000000001".into(),
    };
    d.recv(&capsule(&c.to_sqe(1), &data.encode()));
    assert_eq!(result(&d.take_out()).0, (sct::COMMAND_SPECIFIC, cmd::CONNECT_INVALID_HOST));
    // Another security protocol: Invalid Field.
    let (mut a, _) = connect(&t, 0, 0xffff);
    let mut s = auth_sqe(70, true, 8);
    s.cdw10 = 0xea << 24;
    a.recv(&capsule(&s, &[0; 8]));
    assert_eq!(result(&a.take_out()).0, (sct::GENERIC, nvmf_proto::status::generic::INVALID_FIELD));
    let _ = DhGroup::Null;
}

#[test]
fn concatenation_on_admin_queues_only_and_io_queues_over_the_generated_psk() {
    let k = key(11);
    let t = target(&k, None, Some("ffdhe2048"));
    // A plain admin queue takes NEWTLSPSK, not REPLACETLSPSK.
    let (mut a, _) = connect(&t, 0, 0xffff);
    assert_eq!(authenticate_sc(&mut a, &k, None, SC_C_REPLACE_TLS_PSK).unwrap_err(), "ConcatMismatch");
    assert!(t.generated_psks.is_empty());
    let (mut a, dw0) = connect(&t, 0, 0xffff);
    authenticate_sc(&mut a, &k, None, SC_C_NEW_TLS_PSK).unwrap();
    assert!(a.established);
    let first = t.generated_psks.identity(HOST, NQN).expect("generated");
    // An admin queue over TLS takes REPLACETLSPSK, not NEWTLSPSK.
    let (mut b, _) = connect_tls(&t, 0, 0xffff, Some(&first));
    assert_eq!(authenticate_sc(&mut b, &k, None, SC_C_NEW_TLS_PSK).unwrap_err(), "ConcatMismatch");
    let (mut b, _) = connect_tls(&t, 0, 0xffff, Some(&first));
    authenticate_sc(&mut b, &k, None, SC_C_REPLACE_TLS_PSK).unwrap();
    let second = t.generated_psks.identity(HOST, NQN).unwrap();
    assert_ne!(first, second, "replaced");
    assert_eq!(t.generated_psks.len(), 1);

    a.recv(&capsule(&PropertyCmd::set_sqe(51, prop::CC, false, cc::LINUX_ENABLE as u64), &[]));
    let cntlid = (dw0 & 0xffff) as u16;
    // I/O queues: no concatenation; over TLS with a generated PSK, no ATR.
    let (mut io, dw0) = connect(&t, 1, cntlid);
    assert_ne!(dw0 & nvmf_proto::fabrics::CONNECT_DW0_AUTH_REQUIRED, 0);
    assert_eq!(authenticate_sc(&mut io, &k, None, SC_C_NEW_TLS_PSK).unwrap_err(), "ConcatMismatch");
    let (mut io, dw0) = connect_tls(&t, 2, cntlid, Some(&second));
    assert_eq!(dw0 & nvmf_proto::fabrics::CONNECT_DW0_AUTH_REQUIRED, 0);
    assert!(io.established);
    let mut r = Sqe::rw(iop::READ, 60, 1, 0, 1);
    r.sgl1 = Sgl::transport(512);
    io.recv(&capsule(&r, &[]));
    assert_eq!(result(&io.take_out()).0, (0, 0));
    // Over TLS with a retained (configured) PSK identity: authenticates.
    let retained = second.replacen("NVMe1G", "NVMe1R", 1);
    let (_, dw0) = connect_tls(&t, 3, cntlid, Some(&retained));
    assert_ne!(dw0 & nvmf_proto::fabrics::CONNECT_DW0_AUTH_REQUIRED, 0);
}

#[test]
fn concatenation_with_the_null_group_keeps_no_psk() {
    let k = key(12);
    let t = target(&k, None, Some("null"));
    let (mut a, _) = connect(&t, 0, 0xffff);
    assert_eq!(authenticate_sc(&mut a, &k, None, SC_C_NEW_TLS_PSK).unwrap_err(), "DhGroupUnusable");
    assert!(t.generated_psks.is_empty());
}
