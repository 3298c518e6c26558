//! Per-namespace host masking end to end: `serve()` plus the management
//! socket; two hosts (A, B) connect to one subsystem whose namespace 2 is
//! limited to A. B must find NSID 2 exactly as an inactive NSID (lists,
//! Identify, I/O, ANA log); `ns_add_host` / `ns_remove_host` change that
//! live with a Namespace Attribute Changed event to the hosts whose view
//! changed, and only to them; save_config keeps the lists.

mod common;
#[path = "mgmt_common.rs"]
mod mgmt_common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{HPdu, Host};
use mgmt_common::*;
use nvmf_proto::fabrics::{cc, prop, PropertyCmd};
use nvmf_proto::features::FeatureCmd;
use nvmf_proto::identify::{parse_ns_list, IdentifyNamespace};
use nvmf_proto::log::{parse_ana_log, GetLogPageCmd};
use nvmf_proto::opcodes::{admin as aop, cns, fid, io as iop};
use nvmf_proto::status::{generic, sct};
use nvmf_proto::{Sgl, Sqe, Status};
use nvmf_target::config::{ListenerConfig, NamespaceConfig, SubsystemConfig, TargetConfig};
use nvmf_target::mgmt::{code, Mgmt, MgmtListeners, RpcOptions};
use serde_json::json;

const NQN: &str = "nqn.2026-12.io.nvmf:masked";
const HA: &str = "nqn.2026-12.io.nvmf:host-a";
const HB: &str = "nqn.2026-12.io.nvmf:host-b";
/// Namespace Attribute Changed notice, Changed Namespace List log (0x04).
const NS_CHANGED_DW0: u32 = 0x0004_0002;

struct Running {
    server: Arc<nvmf_target::Server>,
    listeners: MgmtListeners,
}

impl Running {
    fn start(cfg: &TargetConfig, sock: &Path) -> Running {
        let server = Arc::new(nvmf_target::serve(cfg).unwrap());
        let mgmt = Mgmt::new(server.clone(), cfg).unwrap();
        let opts = RpcOptions { socket_path: Some(sock.to_path_buf()), socket_required: true, ..RpcOptions::default() };
        let listeners = MgmtListeners::start(mgmt, &opts).unwrap();
        Running { server, listeners }
    }
    fn addr(&self) -> SocketAddr {
        self.server.io_addrs()[0]
    }
    fn stop(self) {
        self.listeners.stop();
        let s = Arc::try_unwrap(self.server).ok().expect("management released the server");
        s.shutdown(Duration::from_secs(2));
    }
}

/// Namespace 1 for every host; namespace 2 (ANA group 2) for host A only.
fn config() -> TargetConfig {
    let mut ns1 = NamespaceConfig::ram("1MiB");
    ns1.nsid = Some(1);
    let mut ns2 = NamespaceConfig::ram("1MiB");
    ns2.nsid = Some(2);
    ns2.ana_group = Some(2);
    ns2.hosts = vec![HA.into()];
    let mut cfg = TargetConfig::embedded_default();
    cfg.engine.mode = "interrupt".into();
    cfg.listeners =
        vec![ListenerConfig { addr: "127.0.0.1:0".into(), port_id: None, subsystems: vec![], tls: Default::default() }];
    cfg.discovery = Default::default();
    let mut sub = SubsystemConfig::with_namespaces(NQN, vec![ns1, ns2]);
    sub.allow_any_host = Some(true);
    cfg.subsystems = vec![sub];
    cfg
}

/// One controller of `host`: its admin queue and I/O queue 1.
struct Ctrl {
    admin: Host,
    io: Host,
}

impl Ctrl {
    fn connect(addr: SocketAddr, host: &str) -> Ctrl {
        let mut admin = Host::ic(addr, false, false, 0);
        let c = admin.connect(0, 31, 0, NQN, host, 0xffff);
        assert!(c.status.is_success(), "{host}: admin connect: {}", c.status);
        let cntlid = c.dw0 as u16;
        let en = PropertyCmd::set_sqe(admin.cid(), prop::CC, false, cc::LINUX_ENABLE as u64);
        assert!(admin.exec(en, &[], true).0.status.is_success());
        // Namespace Attribute notices only (bit 8), as a host enabling AENs would.
        let (c, _) = admin.exec(FeatureCmd::set_sqe(0, fid::ASYNC_EVENT_CONFIG, 1 << 8), &[], true);
        assert!(c.status.is_success());
        let mut io = Host::ic(addr, false, false, 0);
        let c = io.connect(1, 31, 0, NQN, host, cntlid);
        assert!(c.status.is_success(), "{host}: io connect: {}", c.status);
        Ctrl { admin, io }
    }

    fn active(&mut self) -> Vec<u32> {
        let (c, d) = self.admin.identify(cns::ACTIVE_NS_LIST, 0);
        assert!(c.status.is_success(), "active list: {}", c.status);
        let l = parse_ns_list(&d);
        let (c, d) = self.admin.identify(cns::CSI_ACTIVE_NS_LIST, 0);
        assert!(c.status.is_success(), "CSI active list: {}", c.status);
        assert_eq!(parse_ns_list(&d), l, "CNS 02h and 07h list the same NSIDs");
        l
    }

    fn io(&mut self, opcode: u8, nsid: u32) -> Status {
        let mut s = Sqe::rw(opcode, 0, nsid, 0, 1);
        s.cid = 0;
        let write = [0x5au8; 512];
        let data: &[u8] = match opcode {
            iop::WRITE => &write,
            iop::READ => {
                s.sgl1 = Sgl::transport(512);
                &[]
            }
            _ => &[],
        };
        self.io.exec(s, data, true).0.status
    }

    fn arm_aer(&mut self, cid: u16) {
        let mut aer = Sqe::new(aop::ASYNC_EVENT_REQUEST, cid, 0);
        aer.cid = cid;
        self.admin.send_cmd(&aer, &[]);
    }

    fn expect_event(&mut self, cid: u16) -> Vec<u32> {
        match self.admin.recv() {
            HPdu::Resp(c) => assert_eq!((c.cid, c.dw0), (cid, NS_CHANGED_DW0), "{}", c.status),
            other => panic!("expected the AER completion, got {other:?}"),
        }
        let g = GetLogPageCmd { lid: 0x04, lsp: 0, rae: false, len: 4096, offset: 0, lsi: 0, nsid: 0xffff_ffff };
        let (c, d) = self.admin.exec(g.to_sqe(0), &[], true);
        assert!(c.status.is_success());
        d.chunks(4).map(|x| u32::from_le_bytes(x.try_into().unwrap())).take_while(|n| *n != 0).collect()
    }

    fn expect_no_event(&mut self) {
        self.admin.s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let got = self.admin.try_recv();
        assert!(got.is_none(), "unexpected {got:?}");
        self.admin.s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }

    /// NSIDs per ANA group in the ANA log page.
    fn ana_nsids(&mut self) -> Vec<(u32, Vec<u32>)> {
        let g = GetLogPageCmd { lid: 0x0c, lsp: 0, rae: true, len: 4096, offset: 0, lsi: 0, nsid: 0 };
        let (c, d) = self.admin.exec(g.to_sqe(0), &[], true);
        assert!(c.status.is_success());
        parse_ana_log(&d).expect("ANA log").1.into_iter().map(|g| (g.grpid, g.nsids)).collect()
    }
}

fn invalid_ns(s: Status) -> bool {
    (s.sct, s.sc, s.dnr) == (sct::GENERIC, generic::INVALID_NAMESPACE, true)
}

#[test]
fn a_masked_namespace_is_inactive_for_other_hosts_and_follows_live_changes() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("rpc.sock");
    let r = Running::start(&config(), &sock);
    let mut a = Ctrl::connect(r.addr(), HA);
    let mut b = Ctrl::connect(r.addr(), HB);

    // Lists.
    assert_eq!(a.active(), [1, 2]);
    assert_eq!(b.active(), [1]);
    assert_eq!(a.ana_nsids(), [(1, vec![1]), (2, vec![2])]);
    assert_eq!(b.ana_nsids(), [(1, vec![1])], "B's ANA log does not leak NSID 2");

    // Identify: NSID 2 is to B what an allocated-but-inactive NSID is.
    let (c, d) = a.admin.identify(cns::NAMESPACE, 2);
    assert!(c.status.is_success());
    assert_eq!(IdentifyNamespace::parse(&d).unwrap().nsze, 2048);
    let (c, d2) = b.admin.identify(cns::NAMESPACE, 2);
    let (c9, d9) = b.admin.identify(cns::NAMESPACE, 9);
    assert!(c.status.is_success() && c9.status.is_success());
    assert!(d2.iter().all(|x| *x == 0) && d2 == d9, "zeroed, as for NSID 9 that was never allocated");
    for cns_ in [cns::NS_ID_DESCRIPTORS, cns::CS_INDEPENDENT_NAMESPACE] {
        assert!(a.admin.identify(cns_, 2).0.status.is_success(), "A: CNS {cns_:#x}");
        let s = b.admin.identify(cns_, 2).0.status;
        assert!(invalid_ns(s), "B: CNS {cns_:#x}: {s}");
    }

    // I/O: Invalid Namespace or Format with DNR for B, fine for A; B's
    // flush of every namespace succeeds (over the ones it sees).
    for op in [iop::READ, iop::WRITE, iop::FLUSH, iop::WRITE_ZEROES] {
        assert!(a.io(op, 2).is_success(), "A: opcode {op:#x}");
        let s = b.io(op, 2);
        assert!(invalid_ns(s), "B: opcode {op:#x}: {s}");
        assert!(b.io(op, 1).is_success(), "B: opcode {op:#x} on NSID 1");
    }
    assert!(b.io(iop::FLUSH, 0xffff_ffff).is_success());

    // Live: B is let in; only B hears of it (A's view did not change).
    a.arm_aer(300);
    b.arm_aer(300);
    let out = ok(&sock, "ns_add_host", json!({"nqn": NQN, "nsid": 2, "host": HB}));
    assert_eq!(out["hosts"], json!([HA, HB]));
    assert_eq!(b.expect_event(300), [2]);
    a.expect_no_event();
    assert_eq!(b.active(), [1, 2]);
    assert!(b.io(iop::READ, 2).is_success());
    let sub = ok(&sock, "subsystem_get", json!({"nqn": NQN}));
    assert_eq!(sub["namespaces"][1]["hosts"], json!([HA, HB]));
    assert_eq!(sub["namespaces"][0]["hosts"], json!([]));

    // A namespace added live for A only: A hears of it, B does not.
    b.arm_aer(301);
    ok(&sock, "namespace_add", json!({"nqn": NQN, "kind": "ram", "size": "1MiB", "nsid": 3, "hosts": [HA]}));
    assert_eq!(a.expect_event(300), [3]);
    b.expect_no_event();
    assert_eq!((a.active(), b.active()), (vec![1, 2, 3], vec![1, 2]));
    // Removed again: still only A hears of it.
    a.arm_aer(302);
    ok(&sock, "namespace_remove", json!({"nqn": NQN, "nsid": 3}));
    assert_eq!(a.expect_event(302), [3]);
    b.expect_no_event();

    // A is hidden from NSID 2: A hears of it and loses it.
    a.arm_aer(303);
    ok(&sock, "ns_remove_host", json!({"nqn": NQN, "nsid": 2, "host": HA}));
    assert_eq!(a.expect_event(303), [2]);
    b.expect_no_event();
    assert_eq!(a.active(), [1]);
    assert!(invalid_ns(a.io(iop::READ, 2)));
    assert!(b.io(iop::READ, 2).is_success());

    // Refusals change nothing.
    let p = |host: &str| json!({"nqn": NQN, "nsid": 2, "host": host});
    err(&sock, "ns_remove_host", p(HB), code::CONFLICT, "last host");
    err(&sock, "ns_add_host", p(HB), code::EXISTS, "already");
    err(&sock, "ns_remove_host", p(HA), code::NOT_FOUND, HA);
    err(&sock, "ns_add_host", p("not an nqn"), code::INVALID_PARAMS, "host");
    err(&sock, "ns_add_host", json!({"nqn": NQN, "nsid": 9, "host": HA}), code::NOT_FOUND, "no namespace 9");
    err(&sock, "ns_add_host", json!({"nqn": "nqn.2026-12.io.nvmf:nope", "nsid": 2, "host": HA}), code::NOT_FOUND, "");
    err(&sock, "ns_add_host", json!({"nqn": NQN, "nsid": 2}), code::INVALID_PARAMS, "host");
    assert_eq!(b.active(), [1, 2]);
    assert_eq!(a.active(), [1]);

    // The running configuration keeps the list, and a target started from it
    // masks the same way.
    let toml = ok(&sock, "save_config", json!({}))["toml"].as_str().unwrap().to_string();
    drop((a, b));
    r.stop();
    let saved = TargetConfig::from_toml_str(&toml).unwrap();
    assert_eq!(saved.subsystems[0].namespaces[1].hosts, [HB]);
    assert!(saved.subsystems[0].namespaces[0].hosts.is_empty());
    let sock2 = dir.path().join("rpc2.sock");
    let r = Running::start(&saved, &sock2);
    let mut a = Ctrl::connect(r.addr(), HA);
    let mut b = Ctrl::connect(r.addr(), HB);
    assert_eq!((a.active(), b.active()), (vec![1], vec![1, 2]));
    drop((a, b));
    r.stop();
}
