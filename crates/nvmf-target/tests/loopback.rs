//! Loopback tests: `serve()` on 127.0.0.1:0 with RAM namespaces, driven by
//! the minimal test host in `common`.

mod common;

use std::time::Duration;

use common::*;
use nvmf_proto::fabrics::{prop, Cap};
use nvmf_proto::identify::{IdentifyController, IdentifyNamespace};
use nvmf_proto::log::{parse_discovery_entries, parse_discovery_header, subtype, GetLogPageCmd};
use nvmf_proto::opcodes::{admin as aop, cns, fid, io as iop};
use nvmf_proto::pdu::{encode_capsule_cmd, encode_data_pdu, fes, flags, DataHdr};
use nvmf_proto::status::{cmd, generic, media, sct};
use nvmf_proto::{features::FeatureCmd, Sgl, Sqe, Status, DISCOVERY_NQN};

fn rw(op: u8, nsid: u32, slba: u64, nlb: u32) -> Sqe {
    let mut s = Sqe::rw(op, 0, nsid, slba, nlb);
    s.cid = 0;
    s
}

fn read(h: &mut Host, nsid: u32, slba: u64, nlb: u32, bs: u32) -> (Status, Vec<u8>) {
    let mut s = rw(iop::READ, nsid, slba, nlb);
    s.sgl1 = Sgl::transport(nlb * bs);
    let (c, d) = h.exec(s, &[], false);
    (c.status, d)
}

fn write(h: &mut Host, nsid: u32, slba: u64, data: &[u8], bs: u32, in_capsule: bool) -> Status {
    let s = rw(iop::WRITE, nsid, slba, (data.len() / bs as usize) as u32);
    h.exec(s, data, in_capsule).0.status
}

fn full_bringup(addr: std::net::SocketAddr, hd: bool, dd: bool, hpda: u8) -> (Host, Host) {
    let (mut a, cntlid) = admin(addr, hd, dd, 0);
    let (c, _) = a.exec(FeatureCmd::set_sqe(0, fid::NUM_QUEUES, 0x0003_0003), &[], true);
    assert!(c.status.is_success());
    assert_eq!(c.dw0, 0x0003_0003, "4 queues granted (limit 8)");
    let q = io_queue(addr, cntlid, 1, hd, dd, hpda);
    (a, q)
}

#[test]
fn admin_bringup_identify_and_properties() {
    let srv = start_target(small_limits());
    let addr = srv.io_addrs()[0];
    let (mut a, cntlid) = admin(addr, false, false, 0);
    assert!(cntlid >= 1);
    let cap = Cap::from_u64(a.prop_get(prop::CAP, true));
    assert_eq!(cap.mqes, 127);
    assert!(cap.css_nvm);
    assert_eq!(a.prop_get(prop::VS, false), 0x0001_0300);

    let (c, d) = a.identify(cns::CONTROLLER, 0);
    assert!(c.status.is_success());
    let id = IdentifyController::parse(&d).unwrap();
    assert_eq!(id.cntlid, cntlid);
    assert_eq!(id.subnqn, NQN);
    assert_eq!((id.sqes, id.cqes), (0x66, 0x44));
    assert_eq!(id.mdts, 6, "256 KiB / 4 KiB = 2^6");
    assert_eq!(id.ioccsz, (64 + 8192) / 16);
    assert_eq!(id.sgls & 0b101, 0b101);
    assert_eq!(id.firmware, "0.1.0");
    assert_eq!(id.vwc & 1, 1);

    let (c, d) = a.identify(cns::NAMESPACE, 1);
    assert!(c.status.is_success());
    let n = IdentifyNamespace::parse(&d).unwrap();
    assert_eq!(n.nsze, 4 * 1024 * 1024 / 512);
    assert_eq!(n.block_size(), 512);
    let (_, d) = a.identify(cns::NAMESPACE, 2);
    let n = IdentifyNamespace::parse(&d).unwrap();
    assert_eq!((n.nsze, n.block_size()), (256, 4096));

    let (c, d) = a.identify(cns::ACTIVE_NS_LIST, 0);
    assert!(c.status.is_success());
    assert_eq!(nvmf_proto::identify::parse_ns_list(&d), vec![1, 2]);
    let (c, d) = a.identify(cns::NS_ID_DESCRIPTORS, 1);
    assert!(c.status.is_success());
    let descs = nvmf_proto::identify::parse_ns_id_descriptors(&d);
    assert_eq!(descs.len(), 4);
    let (c, _) = a.identify(cns::NAMESPACE, 0);
    assert_eq!(c.status.sc, generic::INVALID_NAMESPACE);
    let (c, _) = a.identify(0x55, 0);
    assert_eq!(c.status.sc, generic::INVALID_FIELD);

    // Log pages: SMART, ANA, unknown.
    for (lid, ok) in [(0x02u8, true), (0x0c, true), (0x05, true), (0x04, true), (0x42, false)] {
        let g = GetLogPageCmd { lid, lsp: 0, rae: false, len: 512, offset: 0, lsi: 0, nsid: 0xffff_ffff };
        let (c, d) = a.exec(g.to_sqe(0), &[], true);
        assert_eq!(c.status.is_success(), ok, "log {lid:#x}: {}", c.status);
        if ok {
            assert_eq!(d.len(), 512);
        } else {
            assert_eq!((c.status.sct, c.status.sc), (sct::COMMAND_SPECIFIC, cmd::INVALID_LOG_PAGE));
        }
    }
    // Keep Alive, Abort, unknown opcode.
    assert!(a.exec(Sqe::new(aop::KEEP_ALIVE, 0, 0), &[], true).0.status.is_success());
    let (c, _) = a.exec(Sqe::new(aop::ABORT, 0, 0), &[], true);
    assert_eq!(c.dw0 & 1, 1);
    let (c, _) = a.exec(Sqe::new(0x77, 0, 0), &[], true);
    assert_eq!((c.status.sct, c.status.sc, c.status.dnr), (0, generic::INVALID_OPCODE, true));
    // Unknown feature.
    let (c, _) = a.exec(FeatureCmd::get_sqe(0, 0x7e), &[], true);
    assert_eq!(c.status.sc, generic::INVALID_FIELD);
    srv.shutdown(Duration::from_secs(2));
}

fn io_suite(hd: bool, dd: bool, hpda: u8) {
    let srv = start_target(small_limits());
    let addr = srv.io_addrs()[0];
    let (_a, mut q) = full_bringup(addr, hd, dd, hpda);

    // In-capsule write (4 KiB), read back.
    let d = pattern(4096, 1);
    assert!(write(&mut q, 1, 8, &d, 512, true).is_success());
    let (s, r) = read(&mut q, 1, 8, 8, 512);
    assert!(s.is_success());
    assert_eq!(r, d);

    // R2T write of 100 KiB (several H2CData of 16 KiB), multi-PDU read.
    let d = pattern(100 * 1024, 7);
    assert!(write(&mut q, 1, 100, &d, 512, false).is_success());
    let (s, r) = read(&mut q, 1, 100, 200, 512);
    assert!(s.is_success());
    assert_eq!(r, d);

    // 4 KiB-block namespace.
    let d = pattern(8192, 3);
    assert!(write(&mut q, 2, 5, &d, 4096, false).is_success());
    assert_eq!(read(&mut q, 2, 5, 2, 4096).1, d);

    // Flush.
    assert!(q.exec(rw(iop::FLUSH, 1, 0, 1), &[], true).0.status.is_success());

    // Compare: equal, then different.
    let d = pattern(1024, 9);
    assert!(write(&mut q, 1, 300, &d, 512, true).is_success());
    let s = rw(iop::COMPARE, 1, 300, 2);
    assert!(q.exec(s, &d, true).0.status.is_success());
    let mut other = d.clone();
    other[1000] ^= 0xff;
    let st = q.exec(rw(iop::COMPARE, 1, 300, 2), &other, false).0.status;
    assert_eq!((st.sct, st.sc), (sct::MEDIA, media::COMPARE_FAILURE));

    // Write Zeroes.
    let mut wz = rw(iop::WRITE_ZEROES, 1, 100, 4);
    wz.sgl1 = Sgl::default();
    assert!(q.exec(wz, &[], true).0.status.is_success());
    let (_, r) = read(&mut q, 1, 100, 5, 512);
    assert!(r[..2048].iter().all(|b| *b == 0));
    assert_eq!(&r[2048..], &pattern(100 * 1024, 7)[2048..2560]);

    // DSM deallocate (range via R2T and in capsule).
    let mut range = vec![0u8; 16];
    range[4..8].copy_from_slice(&8u32.to_le_bytes());
    range[8..16].copy_from_slice(&8u64.to_le_bytes());
    let mut dsm = Sqe::new(iop::DATASET_MANAGEMENT, 0, 1);
    dsm.cdw10 = 0;
    dsm.cdw11 = 1 << 2;
    assert!(q.exec(dsm, &range, true).0.status.is_success());
    assert!(read(&mut q, 1, 8, 8, 512).1.iter().all(|b| *b == 0));
    assert!(q.exec(dsm, &range, false).0.status.is_success());

    // LBA out of range, MDTS, SGL length mismatch, bad nsid, unknown opcode.
    let (s, _) = read(&mut q, 1, 8191, 2, 512);
    assert_eq!((s.sct, s.sc, s.dnr), (0, generic::LBA_OUT_OF_RANGE, true));
    let (s, _) = read(&mut q, 1, 0, 1024, 512);
    assert_eq!(s.sc, generic::INVALID_FIELD, "512 KiB > MDTS");
    let mut bad = rw(iop::READ, 1, 0, 8);
    bad.sgl1 = Sgl::transport(512);
    assert_eq!(q.exec(bad, &[], true).0.status.sc, generic::DATA_SGL_LENGTH_INVALID);
    let (s, _) = read(&mut q, 9, 0, 1, 512);
    assert_eq!(s.sc, generic::INVALID_NAMESPACE);
    let (c, _) = q.exec(Sqe::new(0x7e, 0, 1), &[], true);
    assert_eq!(c.status.sc, generic::INVALID_OPCODE);
    // Still healthy.
    assert!(read(&mut q, 1, 0, 1, 512).0.is_success());
    srv.shutdown(Duration::from_secs(2));
}

#[test]
fn io_without_digests() {
    io_suite(false, false, 0);
}

#[test]
fn io_with_digests_and_hpda() {
    io_suite(true, true, 7);
}

#[test]
fn connect_errors() {
    let srv = start_target(small_limits());
    let addr = srv.io_addrs()[0];
    // Unknown subsystem: Invalid Parameters, IATTR=1, IPO=256.
    let mut h = Host::ic(addr, false, false, 0);
    let c = h.connect(0, 31, 0, "nqn.2026-11.io.nvmf:nope", HOSTNQN, 0xffff);
    assert_eq!((c.status.sct, c.status.sc), (sct::COMMAND_SPECIFIC, cmd::CONNECT_INVALID_PARAM));
    assert_eq!(c.dw0, (1 << 16) | 256);
    // Host not allowed.
    let c = h.connect(0, 31, 0, NQN_RESTRICTED, HOSTNQN, 0xffff);
    assert_eq!((c.status.sct, c.status.sc), (sct::COMMAND_SPECIFIC, cmd::CONNECT_INVALID_HOST));
    // Static cntlid on admin connect.
    let c = h.connect(0, 31, 0, NQN, HOSTNQN, 5);
    assert_eq!(c.status.sc, cmd::CONNECT_INVALID_PARAM);
    assert_eq!(c.dw0, (1 << 16) | 16);
    // SQSIZE 0 and too large.
    let c = h.connect(0, 0, 0, NQN, HOSTNQN, 0xffff);
    assert_eq!(c.dw0, 44);
    // The allowed host gets in.
    let c = h.connect(0, 31, 0, NQN_RESTRICTED, ALLOWED_HOST, 0xffff);
    assert!(c.status.is_success());
    let cntlid = c.dw0 as u16;

    // I/O connect: unknown controller, qid beyond the granted count, duplicate.
    let (_a, real) = admin(addr, false, false, 0);
    let mut q = Host::ic(addr, false, false, 0);
    let c = q.connect(1, 31, 0, NQN, HOSTNQN, 999);
    assert_eq!(c.status.sc, cmd::CONNECT_INVALID_PARAM);
    let c = q.connect(100, 31, 0, NQN, HOSTNQN, real);
    assert_eq!(c.dw0, 42, "IPO = QID");
    let c = q.connect(1, 1000, 0, NQN, HOSTNQN, real);
    assert_eq!(c.dw0, 44, "IPO = SQSIZE");
    let c = q.connect(1, 31, 0, NQN, HOSTNQN, real);
    assert!(c.status.is_success());
    let mut q2 = Host::ic(addr, false, false, 0);
    let c = q2.connect(1, 31, 0, NQN, HOSTNQN, real);
    assert!(!c.status.is_success(), "duplicate qid");
    // The restricted controller's ID is of another subsystem.
    let c = q2.connect(1, 31, 0, NQN, HOSTNQN, cntlid.wrapping_add(100));
    assert!(!c.status.is_success());
    // RECFMT != 0.
    let mut q3 = Host::ic(addr, false, false, 0);
    let mut sqe = nvmf_proto::fabrics::ConnectCmd { recfmt: 1, qid: 0, sqsize: 31, cattr: 4, kato_ms: 0 }.to_sqe(9);
    sqe.cid = 9;
    let d = nvmf_proto::fabrics::ConnectData {
        hostid: [1; 16],
        cntlid: 0xffff,
        subnqn: NQN.into(),
        hostnqn: HOSTNQN.into(),
    };
    let (c, _) = q3.exec(sqe, &d.encode(), true);
    assert_eq!(c.status.sc, cmd::CONNECT_INCOMPATIBLE_FORMAT);
    srv.shutdown(Duration::from_secs(2));
}

#[test]
fn discovery_log_page() {
    let srv = start_target(small_limits());
    for addr in [srv.discovery_addrs()[0], srv.io_addrs()[0]] {
        let mut h = Host::ic(addr, false, false, 0);
        let c = h.connect(0, 31, 0, DISCOVERY_NQN, HOSTNQN, 0xffff);
        assert!(c.status.is_success());
        h.enable();
        let (_, d) = h.identify(cns::CONTROLLER, 0);
        let id = IdentifyController::parse(&d).unwrap();
        assert_eq!(id.cntrltype, 2);
        assert_eq!(id.subnqn, DISCOVERY_NQN);
        let g = GetLogPageCmd { lid: 0x70, lsp: 0, rae: false, len: 4096, offset: 0, lsi: 0, nsid: 0 };
        let (c, d) = h.exec(g.to_sqe(0), &[], true);
        assert!(c.status.is_success());
        let hdr = parse_discovery_header(&d).unwrap();
        // current discovery + NQN (the restricted subsystem is hidden from this host).
        assert_eq!(hdr.numrec, 2);
        let e = parse_discovery_entries(&d, hdr.numrec);
        assert_eq!(e[0].subtype, subtype::CURRENT_DISCOVERY);
        assert_eq!(e[0].trsvcid, addr.port().to_string());
        assert_eq!(e[1].subtype, subtype::NVME);
        assert_eq!(e[1].subnqn, NQN);
        assert_eq!(e[1].traddr, "127.0.0.1");
        assert_eq!(e[1].trsvcid, srv.io_addrs()[0].port().to_string());
        assert_eq!(e[1].trtype, 3);
        // Discovery controllers do not do I/O things.
        let (c, _) = h.identify(cns::NAMESPACE, 1);
        assert!(!c.status.is_success());
    }
    // The allowed host sees the restricted subsystem as well.
    let mut h = Host::ic(srv.discovery_addrs()[0], false, false, 0);
    assert!(h.connect(0, 31, 0, DISCOVERY_NQN, ALLOWED_HOST, 0xffff).status.is_success());
    h.enable();
    let g = GetLogPageCmd { lid: 0x70, lsp: 0, rae: false, len: 4096, offset: 0, lsi: 0, nsid: 0 };
    let (_, d) = h.exec(g.to_sqe(0), &[], true);
    assert_eq!(parse_discovery_header(&d).unwrap().numrec, 3);
    // An I/O subsystem is not reachable through a dedicated discovery listener.
    let mut h = Host::ic(srv.discovery_addrs()[0], false, false, 0);
    assert!(!h.connect(0, 31, 0, NQN, HOSTNQN, 0xffff).status.is_success());
    srv.shutdown(Duration::from_secs(2));
}

#[test]
fn keep_alive_expiry_tears_down_the_controller() {
    let srv = start_target(small_limits());
    let addr = srv.io_addrs()[0];
    let (mut a, cntlid) = admin(addr, false, false, 300);
    let mut q = io_queue(addr, cntlid, 1, false, false, 0);
    // Traffic on the admin queue keeps it alive.
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(150));
        assert!(a.exec(Sqe::new(aop::KEEP_ALIVE, 0, 0), &[], true).0.status.is_success());
    }
    // Then silence: both queues are closed by the target.
    a.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    q.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(a.closed_by_peer(), "admin queue closed after KATO");
    assert!(q.closed_by_peer(), "I/O queue closed with its controller");
    // The controller is gone: a new I/O queue for it is refused.
    let mut q2 = Host::ic(addr, false, false, 0);
    assert!(!q2.connect(1, 31, 0, NQN, HOSTNQN, cntlid).status.is_success());
    srv.shutdown(Duration::from_secs(2));
}

#[test]
fn data_digest_error_is_a_transient_transport_error() {
    let srv = start_target(small_limits());
    let addr = srv.io_addrs()[0];
    let (_a, mut q) = full_bringup(addr, true, true, 0);
    // In-capsule write with a corrupted data digest.
    let d = pattern(512, 5);
    let mut s = rw(iop::WRITE, 1, 0, 1);
    s.cid = 77;
    s.sgl1 = Sgl::in_capsule(0, 512);
    let mut out = Vec::new();
    encode_capsule_cmd(&mut out, &s, &d, &q.tx);
    let n = out.len();
    out[n - 1] ^= 0xff;
    q.send_raw(&out);
    match q.recv() {
        HPdu::Resp(c) => {
            assert_eq!(c.cid, 77);
            assert_eq!((c.status.sct, c.status.sc), (0, generic::TRANSIENT_TRANSPORT_ERROR));
        }
        other => panic!("{other:?}"),
    }
    // R2T write whose H2CData digest is bad.
    let mut s = rw(iop::WRITE, 1, 0, 1);
    s.cid = 78;
    s.sgl1 = Sgl::transport(512);
    q.send_cmd(&s, &[]);
    let HPdu::R2T(r) = q.recv() else { panic!("R2T") };
    let mut out = Vec::new();
    encode_data_pdu(
        &mut out,
        false,
        flags::LAST_PDU,
        &DataHdr { cccid: 78, ttag: r.ttag, offset: 0, length: 512 },
        &d,
        &q.tx,
    );
    let n = out.len();
    out[n - 1] ^= 0xff;
    q.send_raw(&out);
    match q.recv() {
        HPdu::Resp(c) => assert_eq!((c.cid, c.status.sc), (78, generic::TRANSIENT_TRANSPORT_ERROR)),
        other => panic!("{other:?}"),
    }
    // The connection is still good.
    assert!(write(&mut q, 1, 0, &d, 512, false).is_success());
    assert_eq!(read(&mut q, 1, 0, 1, 512).1, d);
    srv.shutdown(Duration::from_secs(2));
}

/// (name, IC first, bytes sent, expected FES, expected FEI).
type TermCase = (&'static str, bool, Vec<u8>, u16, Option<u32>);

/// Each case: bytes sent after a good IC (or instead of it) -> (FES, FEI).
#[test]
fn malformed_pdus_get_term_req() {
    let srv = start_target(small_limits());
    let addr = srv.io_addrs()[0];
    let capsule = |sqe: &Sqe| {
        let mut out = Vec::new();
        encode_capsule_cmd(&mut out, sqe, &[], &Default::default());
        out
    };
    let mut cases: Vec<TermCase> = vec![
        ("unknown type", true, vec![0x08, 0, 24, 0, 24, 0, 0, 0], fes::INVALID_HEADER_FIELD, Some(0)),
        ("C2H type from host", true, vec![0x05, 0, 24, 0, 24, 0, 0, 0], fes::INVALID_HEADER_FIELD, Some(0)),
        ("bad hlen", true, vec![0x04, 0, 71, 0, 72, 0, 0, 0], fes::INVALID_HEADER_FIELD, Some(2)),
        ("hdgst flag not negotiated", true, vec![0x04, 1, 72, 0, 76, 0, 0, 0], fes::INVALID_HEADER_FIELD, Some(1)),
        ("plen short", true, vec![0x04, 0, 72, 0, 10, 0, 0, 0], fes::INVALID_HEADER_FIELD, Some(4)),
        ("capsule before IC", false, capsule(&Sqe::new(aop::KEEP_ALIVE, 1, 0)), fes::PDU_SEQUENCE_ERROR, None),
        (
            "second ICReq",
            true,
            {
                let mut o = Vec::new();
                nvmf_proto::pdu::encode_ic_req(&mut o, &Default::default());
                o
            },
            fes::PDU_SEQUENCE_ERROR,
            None,
        ),
        (
            "H2CData unknown ttag",
            true,
            {
                let mut o = Vec::new();
                encode_data_pdu(
                    &mut o,
                    false,
                    flags::LAST_PDU,
                    &DataHdr { cccid: 1, ttag: 9, offset: 0, length: 4 },
                    &[0; 4],
                    &Default::default(),
                );
                o
            },
            fes::INVALID_HEADER_FIELD,
            Some(10),
        ),
        ("oversized H2CData", true, vec![0x06, 0, 24, 24, 0, 0, 0, 0x10], fes::DATA_LIMIT_EXCEEDED, None),
    ];
    // Header digest mismatch (digests negotiated).
    cases.push(("header digest", true, Vec::new(), fes::HEADER_DIGEST_ERROR, None));
    for (name, do_ic, bytes, want_fes, want_fei) in cases {
        let hd = name == "header digest";
        let mut h = if do_ic { Host::ic(addr, hd, false, 0) } else { Host::tcp(addr) };
        let bytes = if hd {
            let mut o = Vec::new();
            let tx = nvmf_proto::pdu::TxConfig { hdgst: true, ddgst: false, data_align: 4 };
            encode_capsule_cmd(&mut o, &Sqe::new(aop::KEEP_ALIVE, 1, 0), &[], &tx);
            o[20] ^= 1;
            o
        } else {
            bytes
        };
        h.send_raw(&bytes);
        match h.try_recv() {
            Some(HPdu::Term { fes: f, fei }) => {
                assert_eq!(f, want_fes, "{name}: FES");
                if let Some(w) = want_fei {
                    assert_eq!(fei, w, "{name}: FEI");
                }
            }
            other => panic!("{name}: expected a TermReq, got {other:?}"),
        }
        assert!(h.closed_by_peer(), "{name}: closed after the TermReq");
    }
    srv.shutdown(Duration::from_secs(2));
}

#[test]
fn killed_connection_mid_io_does_not_disturb_another() {
    let srv = start_target(small_limits());
    let addr = srv.io_addrs()[0];
    let (_a, cntlid) = admin(addr, false, false, 0);
    let mut q1 = io_queue(addr, cntlid, 1, false, false, 0);
    let mut q2 = io_queue(addr, cntlid, 2, false, false, 0);
    // q1: start an R2T write and vanish mid-transfer.
    let mut s = rw(iop::WRITE, 1, 0, 128);
    s.cid = 5;
    s.sgl1 = Sgl::transport(65536);
    q1.send_cmd(&s, &[]);
    let HPdu::R2T(r) = q1.recv() else { panic!("R2T") };
    let mut out = Vec::new();
    encode_data_pdu(
        &mut out,
        false,
        0,
        &DataHdr { cccid: 5, ttag: r.ttag, offset: 0, length: 4096 },
        &[1; 4096],
        &Default::default(),
    );
    q1.send_raw(&out[..out.len() - 100]);
    drop(q1);
    // q2 keeps working.
    for i in 0..20u64 {
        let d = pattern(16384, i as u8);
        assert!(write(&mut q2, 1, i * 64, &d, 512, false).is_success());
        assert_eq!(read(&mut q2, 1, i * 64, 32, 512).1, d);
    }
    // Queue 1 can be reconnected once the target noticed the close.
    std::thread::sleep(Duration::from_millis(100));
    let mut q1 = io_queue(addr, cntlid, 1, false, false, 0);
    assert!(read(&mut q1, 1, 0, 1, 512).0.is_success());
    srv.shutdown(Duration::from_secs(2));
}

#[test]
fn async_event_on_namespace_change() {
    let srv = start_target(small_limits());
    let addr = srv.io_addrs()[0];
    let (mut a, _) = admin(addr, false, false, 0);
    let (c, _) = a.exec(FeatureCmd::set_sqe(0, fid::ASYNC_EVENT_CONFIG, 1 << 8), &[], true);
    assert!(c.status.is_success());
    let mut aer = Sqe::new(aop::ASYNC_EVENT_REQUEST, 200, 0);
    aer.cid = 200;
    a.send_cmd(&aer, &[]);
    // AER limit: 4 held; the 5th is refused.
    for cid in 201..204 {
        let mut s = aer;
        s.cid = cid;
        a.send_cmd(&s, &[]);
    }
    let mut s = aer;
    s.cid = 204;
    a.send_cmd(&s, &[]);
    match a.recv() {
        HPdu::Resp(c) => assert_eq!((c.cid, c.status.sc), (204, cmd::AER_LIMIT_EXCEEDED)),
        other => panic!("{other:?}"),
    }
    srv.target().add_namespace(NQN, &ns(3, "1MiB", 512), &nvmf_target::backend::open).unwrap();
    match a.recv() {
        HPdu::Resp(c) => {
            assert_eq!(c.cid, 200);
            assert_eq!(c.dw0, 0x0004_0002, "notice, ns attribute changed, log 0x04");
        }
        other => panic!("{other:?}"),
    }
    let g = GetLogPageCmd { lid: 0x04, lsp: 0, rae: false, len: 4096, offset: 0, lsi: 0, nsid: 0xffff_ffff };
    let (_, d) = a.exec(g.to_sqe(0), &[], true);
    assert_eq!(&d[..8], &[3, 0, 0, 0, 0, 0, 0, 0]);
    let (_, d) = a.identify(cns::ACTIVE_NS_LIST, 0);
    assert_eq!(nvmf_proto::identify::parse_ns_list(&d), vec![1, 2, 3]);
    srv.shutdown(Duration::from_secs(2));
}

/// A target (interrupt mode, small limits, any host) with one namespace.
fn serve_one_namespace(n: nvmf_target::config::NamespaceConfig) -> nvmf_target::Server {
    let mut sub = nvmf_target::config::SubsystemConfig::with_namespaces(NQN, vec![n]);
    sub.allow_any_host = Some(true);
    let cfg = nvmf_target::config::TargetConfig {
        engine: nvmf_target::config::EngineSection { mode: "interrupt".into(), ..Default::default() },
        limits: small_limits(),
        listeners: vec![nvmf_target::config::ListenerConfig {
            addr: "127.0.0.1:0".into(),
            port_id: None,
            subsystems: Vec::new(),
            tls: Default::default(),
        }],
        discovery: Default::default(),
        subsystems: vec![sub],
    };
    nvmf_target::serve(&cfg).expect("serve")
}

#[test]
fn file_backend_through_the_ring() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ns.img");
    let mut n = nvmf_target::config::NamespaceConfig::new("file");
    n.nsid = Some(1);
    n.size = Some("8MiB".into());
    n.path = Some(path.to_string_lossy().into_owned());
    let srv = serve_one_namespace(n);
    let addr = srv.io_addrs()[0];
    let (_a, mut q) = full_bringup(addr, false, true, 0);
    let d = pattern(128 * 1024, 11);
    assert!(write(&mut q, 1, 2048, &d, 512, false).is_success());
    let small = pattern(4096, 12);
    assert!(write(&mut q, 1, 0, &small, 512, true).is_success());
    let mut fua = rw(iop::WRITE, 1, 8, 8);
    fua.cdw12 |= 1 << 30;
    assert!(q.exec(fua, &small, true).0.status.is_success());
    assert!(q.exec(rw(iop::FLUSH, 1, 0, 1), &[], true).0.status.is_success());
    let (s, r) = read(&mut q, 1, 2048, 256, 512);
    assert!(s.is_success());
    assert_eq!(r, d);
    assert_eq!(read(&mut q, 1, 0, 8, 512).1, small);
    assert!(q.exec(rw(iop::COMPARE, 1, 0, 8), &small, false).0.status.is_success());
    let mut wz = rw(iop::WRITE_ZEROES, 1, 0, 8);
    wz.sgl1 = Sgl::default();
    assert!(q.exec(wz, &[], true).0.status.is_success());
    assert!(read(&mut q, 1, 0, 8, 512).1.iter().all(|b| *b == 0));
    srv.shutdown(Duration::from_secs(2));
    // The bytes are in the file.
    let f = std::fs::read(&path).unwrap();
    assert_eq!(&f[2048 * 512..2048 * 512 + d.len()], &d[..]);
    assert_eq!(&f[8 * 512..16 * 512], &small[..]);
}

#[test]
fn ana_inaccessible_group_fails_io_with_a_path_status() {
    use nvmf_proto::log::{ana_state, parse_ana_log};
    let srv = start_target(small_limits());
    let addr = srv.io_addrs()[0];
    let (mut a, mut q) = full_bringup(addr, false, false, 0);
    assert!(read(&mut q, 1, 0, 1, 512).0.is_success());
    srv.target().set_ana_state(NQN, 1, 1, ana_state::INACCESSIBLE).unwrap();
    let (s, _) = read(&mut q, 1, 0, 1, 512);
    assert_eq!((s.sct, s.sc, s.dnr), (sct::PATH, nvmf_proto::status::path::ANA_INACCESSIBLE, false));
    let g = GetLogPageCmd { lid: 0x0c, lsp: 0, rae: false, len: 4096, offset: 0, lsi: 0, nsid: 0 };
    let (_, d) = a.exec(g.to_sqe(0), &[], true);
    let (_, groups) = parse_ana_log(&d[..16 + 32 + 8]).unwrap();
    assert_eq!((groups[0].grpid, groups[0].state, groups[0].nsids.clone()), (1, ana_state::INACCESSIBLE, vec![1, 2]));
    // Return Groups Only: no NSID lists; and a log page offset.
    let g = GetLogPageCmd { lid: 0x0c, lsp: 1, rae: true, len: 64, offset: 0, lsi: 0, nsid: 0 };
    let (_, d) = a.exec(g.to_sqe(0), &[], true);
    let (_, groups) = parse_ana_log(&d[..48]).unwrap();
    assert!(groups[0].nsids.is_empty());
    let g = GetLogPageCmd { lid: 0x0c, lsp: 0, rae: true, len: 8, offset: 16, lsi: 0, nsid: 0 };
    let (c, d) = a.exec(g.to_sqe(0), &[], true);
    assert!(c.status.is_success());
    assert_eq!(&d[..4], &1u32.to_le_bytes(), "offset 16 starts at the first group descriptor");
    let g = GetLogPageCmd { lid: 0x0c, lsp: 0, rae: true, len: 8, offset: 1 << 20, lsi: 0, nsid: 0 };
    assert_eq!(a.exec(g.to_sqe(0), &[], true).0.status.sc, generic::INVALID_FIELD, "offset beyond the log");
    srv.target().set_ana_state(NQN, 1, 1, ana_state::OPTIMIZED).unwrap();
    assert!(read(&mut q, 1, 0, 1, 512).0.is_success());
    srv.shutdown(Duration::from_secs(2));
}

#[test]
fn sq_flow_control_enabled_reports_sqhd_and_no_success_flag() {
    use nvmf_proto::fabrics::{ConnectCmd, ConnectData};
    let srv = start_target(small_limits());
    let addr = srv.io_addrs()[0];
    let (_a, cntlid) = admin(addr, false, false, 0);
    let mut q = Host::ic(addr, false, false, 0);
    // CATTR 0: the host keeps SQ flow control, so SQHD must advance (SQ of 8 entries).
    let c = ConnectCmd { recfmt: 0, qid: 1, sqsize: 7, cattr: 0, kato_ms: 0 };
    let d = ConnectData { hostid: [7; 16], cntlid, subnqn: NQN.into(), hostnqn: HOSTNQN.into() };
    let (cqe, _) = q.exec(c.to_sqe(1), &d.encode(), true);
    assert!(cqe.status.is_success());
    assert_eq!(cqe.sqhd, 1);
    for i in 0..10u16 {
        let mut s = rw(iop::READ, 1, 0, 1);
        s.cid = 100 + i;
        s.sgl1 = Sgl::transport(512);
        q.send_cmd(&s, &[]);
        match q.recv() {
            HPdu::C2H { flags: f, .. } => assert_eq!(f & flags::SUCCESS, 0, "no SUCCESS flag with flow control"),
            other => panic!("{other:?}"),
        }
        match q.recv() {
            HPdu::Resp(c) => {
                assert_eq!(c.cid, 100 + i);
                assert_eq!(c.sqhd, (i + 2) % 8, "SQHD wraps at SQSIZE + 1");
                assert_eq!(c.sqid, 1);
            }
            other => panic!("{other:?}"),
        }
    }
    srv.shutdown(Duration::from_secs(2));
}

#[test]
fn shutdown_fails_commands_waiting_for_data_and_closes() {
    let srv = start_target(small_limits());
    let addr = srv.io_addrs()[0];
    let (mut a, mut q) = full_bringup(addr, false, false, 0);
    let mut aer = Sqe::new(aop::ASYNC_EVENT_REQUEST, 0, 0);
    aer.cid = 300;
    a.send_cmd(&aer, &[]);
    let mut s = rw(iop::WRITE, 1, 0, 8);
    s.cid = 301;
    s.sgl1 = Sgl::transport(4096);
    q.send_cmd(&s, &[]);
    assert!(matches!(q.recv(), HPdu::R2T(_)));
    std::thread::sleep(Duration::from_millis(50));
    srv.shutdown(Duration::from_secs(2));
    match q.recv() {
        HPdu::Resp(c) => assert_eq!((c.cid, c.status.sc), (301, generic::ABORTED_SQ_DELETION)),
        other => panic!("{other:?}"),
    }
    match a.recv() {
        HPdu::Resp(c) => assert_eq!((c.cid, c.status.sc), (300, generic::ABORTED_SQ_DELETION)),
        other => panic!("{other:?}"),
    }
    assert!(q.closed_by_peer());
    assert!(a.closed_by_peer());
}

/// A loop device for a block namespace test (detached on drop).
struct LoopDev {
    dev: String,
    _dir: tempfile::TempDir,
}
impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

#[test]
#[ignore = "needs root, losetup and a free loop device (scripts/test.sh runs it as root)"]
fn block_backend_through_the_ring() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let img = dir.path().join("blk.img");
    std::fs::File::create(&img).unwrap().set_len(8 << 20).unwrap();
    let out = std::process::Command::new("losetup").args(["-f", "--show"]).arg(&img).output().unwrap();
    assert!(out.status.success(), "losetup: {}", String::from_utf8_lossy(&out.stderr));
    let lo = LoopDev { dev: String::from_utf8(out.stdout).unwrap().trim().to_string(), _dir: dir };
    let mut n = nvmf_target::config::NamespaceConfig::new("block");
    n.nsid = Some(1);
    n.path = Some(lo.dev.clone());
    let srv = serve_one_namespace(n);
    let (_a, mut q) = full_bringup(srv.io_addrs()[0], false, false, 0);
    let d = pattern(64 * 1024, 21);
    assert!(write(&mut q, 1, 0, &d, 512, false).is_success());
    assert!(q.exec(rw(iop::FLUSH, 1, 0, 1), &[], true).0.status.is_success());
    assert_eq!(read(&mut q, 1, 0, 128, 512).1, d);
    // Write Zeroes (fallocate ZERO_RANGE on the device) of blocks 8..16.
    let mut wz = rw(iop::WRITE_ZEROES, 1, 8, 8);
    wz.sgl1 = Sgl::default();
    assert!(q.exec(wz, &[], true).0.status.is_success());
    let back = read(&mut q, 1, 0, 128, 512).1;
    assert!(back[4096..8192].iter().all(|&x| x == 0));
    assert_eq!(&back[..4096], &d[..4096]);
    // Deallocate (discard through io_uring, or its fallbacks) succeeds.
    let mut dsm = Sqe::new(iop::DATASET_MANAGEMENT, 0, 1);
    dsm.cdw11 = 1 << 2;
    let mut range = [0u8; 16];
    range[4..8].copy_from_slice(&2048u32.to_le_bytes());
    range[8..16].copy_from_slice(&4096u64.to_le_bytes());
    assert!(q.exec(dsm, &range, true).0.status.is_success());
    srv.shutdown(Duration::from_secs(2));
}
