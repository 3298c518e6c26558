//! Per-namespace host masking inside the queue, driven in memory: what the
//! views share, and that the storage work of a flush of every namespace
//! (and of a shutdown) covers only the namespaces the host sees.

use std::sync::Arc;

use nvmf_proto::fabrics::{cc, prop, ConnectCmd, ConnectData, PropertyCmd, CATTR_DISABLE_SQ_FLOW_CONTROL};
use nvmf_proto::opcodes::io as iop;
use nvmf_proto::pdu::{encode_capsule_cmd, encode_ic_req, IcReq, TxConfig};
use nvmf_proto::{decode, Decoded, FrameConfig, Pdu, Role, Sqe, Status};

use crate::action::StorageKind;
use crate::config::{NamespaceConfig, SubsystemConfig, TargetConfig};
use crate::ctrl::{CtrlKind, CtrlState};
use crate::subsys::Target;
use crate::testing::{exec_storage_sync, test_config_base, test_opener, Driven, StorageMode};

const NQN: &str = "nqn.2026-12.io.nvmf:nsmask";
const HA: &str = "nqn.2026-12.io.nvmf:host-a";
const HB: &str = "nqn.2026-12.io.nvmf:host-b";

fn capsule(sqe: &Sqe, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    encode_capsule_cmd(&mut b, sqe, data, &TxConfig::default());
    b
}

/// Status of the last completion in `out`.
fn last_status(out: &[u8]) -> Status {
    let cfg = FrameConfig { role: Role::Host, hdgst: false, ddgst: false, pdu_len_max: 1 << 24, rx_data_align: 4 };
    let (mut pos, mut last) = (0, None);
    while pos < out.len() {
        match decode(&out[pos..], &cfg).expect("target output decodes") {
            Decoded::Pdu(Pdu::CapsuleResp(c), n) => {
                last = Some(c.status);
                pos += n;
            }
            Decoded::Pdu(_, n) => pos += n,
            Decoded::NeedMore(_) => panic!("partial PDU"),
        }
    }
    last.expect("a completion")
}

/// File namespaces 1 (every host) and 2 (host A only) in `dir`.
fn file_target(dir: &std::path::Path) -> Arc<Target> {
    let ns = |nsid: u32, hosts: &[&str]| {
        let mut n = NamespaceConfig::new("file");
        n.path = Some(dir.join(format!("ns{nsid}.img")).to_str().unwrap().to_string());
        n.size = Some("1MiB".into());
        n.nsid = Some(nsid);
        n.hosts = hosts.iter().map(|h| h.to_string()).collect();
        n
    };
    let sub = SubsystemConfig::with_namespaces(NQN, vec![ns(1, &[]), ns(2, &[HA])]);
    let cfg = TargetConfig { subsystems: vec![sub], ..test_config_base() };
    Target::new(&cfg, &crate::backend::open).unwrap()
}

/// A queue `qid` of a fresh enabled controller of `host` (qid 0 also gets
/// CC.EN = 1 written, as a host does).
fn queue(t: &Arc<Target>, host: &str, qid: u16) -> Driven {
    let sub = t.subsystem(NQN).unwrap();
    let cntlid = if qid == 0 {
        nvmf_proto::fabrics::CNTLID_DYNAMIC
    } else {
        let c = t.create_controller(CtrlKind::Io, Some(sub), host, [0; 16], 1).unwrap();
        c.set_state(CtrlState::Enabled);
        c.cntlid
    };
    let mut d = Driven::new(t.clone());
    let mut b = Vec::new();
    encode_ic_req(&mut b, &IcReq { pfv: 0, hpda: 0, dgst: 0, maxr2t: 0 });
    let c = ConnectCmd { recfmt: 0, qid, sqsize: 15, cattr: CATTR_DISABLE_SQ_FLOW_CONTROL, kato_ms: 0 };
    let data = ConnectData { hostid: [2; 16], cntlid, subnqn: NQN.into(), hostnqn: host.into() };
    b.extend(capsule(&c.to_sqe(1), &data.encode()));
    if qid == 0 {
        b.extend(capsule(&PropertyCmd::set_sqe(2, prop::CC, false, cc::LINUX_ENABLE as u64), &[]));
    }
    d.recv(&b);
    assert!(last_status(&d.take_out()).is_success(), "{host}: connect / enable");
    d
}

fn fsyncs(d: &Driven) -> usize {
    d.storage.iter().filter(|op| matches!(op.kind, StorageKind::Fsync { .. })).count()
}

#[test]
fn views_are_shared_when_nothing_is_hidden_and_cached_per_controller() {
    let mut ns2 = NamespaceConfig::ram("1MiB");
    ns2.hosts = vec![HA.into()];
    let sub = SubsystemConfig::with_namespaces(NQN, vec![NamespaceConfig::ram("1MiB"), ns2]);
    let t = Target::new(&TargetConfig { subsystems: vec![sub], ..test_config_base() }, &test_opener).unwrap();
    let s = t.subsystem(NQN).unwrap();
    let all = s.namespaces();
    assert!(Arc::ptr_eq(&s.namespaces_for(HA), &all), "A sees everything: the shared table");
    assert_eq!(s.namespaces_for(HB).nsids(), [1]);
    let b = t.create_controller(CtrlKind::Io, Some(s.clone()), HB, [0; 16], 1).unwrap();
    let v = b.namespaces();
    assert!(Arc::ptr_eq(&v, &b.namespaces()), "one view per controller and generation");
    t.ns_add_host(NQN, 2, HB).unwrap();
    assert_eq!(b.namespaces().nsids(), [1, 2], "a new generation makes a new view");
    assert_eq!(v.nsids(), [1], "the old snapshot is left as it was");
    // The registry keeps its invariants on its own entry points too.
    assert!(t.ns_add_host(NQN, 2, HB).is_err());
    assert!(t.ns_add_host(NQN, 2, "not an nqn").is_err());
    assert!(t.ns_add_host(NQN, 1, HA).is_ok(), "an unmasked namespace gets limited to its first host");
    assert_eq!(s.namespaces_for(HB).nsids(), [2]);
    assert!(t.ns_remove_host(NQN, 1, HA).is_err(), "never the last host");
    assert!(t.ns_remove_host(NQN, 7, HA).is_err());
    b.kill("test over");
    t.release_controller(&b);
}

#[test]
fn flush_of_every_namespace_and_shutdown_skip_masked_ones() {
    let dir = tempfile::tempdir().unwrap();
    let t = file_target(dir.path());
    for (host, seen) in [(HA, 2), (HB, 1)] {
        let mut io = queue(&t, host, 1);
        io.storage_mode = StorageMode::Hold;
        io.recv(&capsule(&Sqe::new(iop::FLUSH, 5, 0xffff_ffff), &[]));
        assert_eq!(fsyncs(&io), seen, "{host}: one fdatasync per namespace it sees");
        io.complete_held(exec_storage_sync);
        assert!(last_status(&io.take_out()).is_success());

        let mut a = queue(&t, host, 0);
        a.storage_mode = StorageMode::Hold;
        a.recv(&capsule(
            &PropertyCmd::set_sqe(3, prop::CC, false, (cc::LINUX_ENABLE | (1 << cc::SHN_SHIFT)) as u64),
            &[],
        ));
        assert!(last_status(&a.take_out()).is_success());
        assert_eq!(fsyncs(&a), seen, "{host}: shutdown flushes the namespaces it sees");
        a.complete_held(exec_storage_sync);
    }
}
