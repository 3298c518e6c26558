//! Unit tests of the NVMe/TCP queue, driven by bytes and a virtual clock
//! ([`crate::testing::Driven`]): no sockets, no sleeps. The file holds every
//! queue-level behaviour test (protocol, controller lifecycle, timeouts,
//! storage actions), so it is longer than the modules it tests.

use super::*;
use crate::action::{StorageKind, StorageOp};
use crate::config::{NamespaceConfig, SubsystemConfig, TargetConfig};
use crate::ctrl::CtrlKind;
use crate::testing::{fuzz_queue_input, test_config_base, test_opener, test_target, Driven, StorageMode, TEST_NQN};
use nvmf_proto::fabrics::{cc, csts, prop, ConnectCmd, ConnectData, PropertyCmd, CATTR_DISABLE_SQ_FLOW_CONTROL};
use nvmf_proto::opcodes::{admin as adm, io as iop};
use nvmf_proto::pdu::{encode_capsule_cmd, encode_data_pdu, encode_ic_req, DataHdr, IcReq};
use nvmf_proto::{Sgl, Sqe};

const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001";
const SEC: u64 = 1_000_000;

/// Host-side decode of everything in `out`.
fn pdus(out: &[u8], hdgst: bool, ddgst: bool) -> Vec<Pdu<'_>> {
    let cfg = FrameConfig { role: Role::Host, hdgst, ddgst, pdu_len_max: 1 << 24, rx_data_align: 4 };
    let mut v = Vec::new();
    let mut pos = 0;
    while pos < out.len() {
        match decode(&out[pos..], &cfg).expect("target output decodes") {
            Decoded::Pdu(p, n) => {
                v.push(p);
                pos += n;
            }
            Decoded::NeedMore(_) => panic!("partial PDU in output"),
        }
    }
    v
}

fn cqes(out: &[u8]) -> Vec<Cqe> {
    pdus(out, false, false)
        .into_iter()
        .filter_map(|p| match p {
            Pdu::CapsuleResp(c) => Some(c),
            _ => None,
        })
        .collect()
}

/// The last completion in `out`: a CapsuleResp, or a C2HData with SUCCESS
/// (flow control disabled) standing for one.
fn last_cqe(out: &[u8]) -> Cqe {
    let p = pdus(out, false, false);
    match p.last() {
        Some(Pdu::CapsuleResp(c)) => *c,
        Some(Pdu::C2HData { hdr, flags: f, .. }) if f & flags::SUCCESS != 0 => {
            Cqe { dw0: 0, dw1: 0, sqhd: 0, sqid: 0, cid: hdr.cccid, status: Status::SUCCESS }
        }
        _ => panic!("expected a completion in {} PDUs: {:?}", p.len(), p.iter().map(pdu_kind).collect::<Vec<_>>()),
    }
}

fn pdu_kind(p: &Pdu<'_>) -> String {
    match p {
        Pdu::CapsuleResp(c) => format!("CapsuleResp(cid {}, {})", c.cid, c.status),
        Pdu::C2HData { hdr, flags: f, .. } => format!("C2HData(cid {}, {} bytes, flags {f:#x})", hdr.cccid, hdr.length),
        Pdu::R2T(r) => format!("R2T(cid {})", r.cccid),
        Pdu::TermReq { fes, fei, .. } => format!("TermReq({fes:#x}, {fei})"),
        other => format!("{other:?}"),
    }
}

fn ic_bytes(dg: u8) -> Vec<u8> {
    let mut b = Vec::new();
    encode_ic_req(&mut b, &IcReq { pfv: 0, hpda: 0, dgst: dg, maxr2t: 0 });
    b
}

fn capsule(sqe: &Sqe, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    encode_capsule_cmd(&mut b, sqe, data, &TxConfig::default());
    b
}

fn connect_bytes_as(qid: u16, cntlid: u16, kato_ms: u32, subnqn: &str, hostnqn: &str) -> Vec<u8> {
    let c = ConnectCmd { recfmt: 0, qid, sqsize: 15, cattr: CATTR_DISABLE_SQ_FLOW_CONTROL, kato_ms };
    let d = ConnectData { hostid: [1; 16], cntlid, subnqn: subnqn.into(), hostnqn: hostnqn.into() };
    capsule(&c.to_sqe(1), &d.encode())
}

fn connect_bytes(qid: u16, cntlid: u16, kato_ms: u32) -> Vec<u8> {
    connect_bytes_as(qid, cntlid, kato_ms, TEST_NQN, HOST)
}

fn prop_set_cc(cid: u16, v: u32) -> Vec<u8> {
    capsule(&PropertyCmd::set_sqe(cid, prop::CC, false, v as u64), &[])
}

fn prop_get_csts(cid: u16) -> Vec<u8> {
    capsule(&PropertyCmd::get_sqe(cid, prop::CSTS, false), &[])
}

/// An admin queue connected and enabled; returns it and its CNTLID.
fn admin(target: &Arc<Target>, kato_ms: u32) -> (Driven, u16) {
    let mut d = Driven::new(target.clone());
    d.recv(&ic_bytes(0));
    d.recv(&connect_bytes(0, 0xffff, kato_ms));
    let c = last_cqe(&d.take_out());
    assert!(c.status.is_success(), "{}", c.status);
    assert!(d.established);
    d.recv(&prop_set_cc(2, cc::LINUX_ENABLE));
    assert!(last_cqe(&d.take_out()).status.is_success());
    (d, c.dw0 as u16)
}

/// I/O queue `qid` of controller `cntlid`, connected.
fn io_queue(target: &Arc<Target>, cntlid: u16, qid: u16) -> Driven {
    let mut d = Driven::new(target.clone());
    d.recv(&ic_bytes(0));
    d.recv(&connect_bytes(qid, cntlid, 0));
    let c = last_cqe(&d.take_out());
    assert!(c.status.is_success(), "I/O connect: {}", c.status);
    d
}

fn read_sqe(cid: u16, slba: u64, nlb: u32, bs: u32) -> Sqe {
    let mut s = Sqe::rw(iop::READ, cid, 1, slba, nlb);
    s.sgl1 = Sgl::transport(nlb * bs);
    s
}

fn status_of(c: &Cqe) -> (u8, u8) {
    (c.status.sct, c.status.sc)
}

/// Write `fill` over the first 16 blocks of namespace 1 (in-capsule).
fn fill_16_blocks(io: &mut Driven, fill: u8) {
    let mut w = Sqe::rw(iop::WRITE, 1, 1, 0, 16);
    w.sgl1 = Sgl::in_capsule(0, 8192);
    io.recv(&capsule(&w, &[fill; 8192]));
    assert!(last_cqe(&io.take_out()).status.is_success());
}

/// Read the first 16 blocks of namespace 1 back (storage run synchronously).
fn read_16_blocks(io: &mut Driven) -> Vec<u8> {
    io.storage_mode = StorageMode::Sync;
    io.recv(&capsule(&read_sqe(90, 0, 16, 512), &[]));
    let out = io.take_out();
    let data: Vec<u8> = pdus(&out, false, false)
        .into_iter()
        .filter_map(|p| if let Pdu::C2HData { data, .. } = p { Some(data.to_vec()) } else { None })
        .flatten()
        .collect();
    assert_eq!(data.len(), 8192);
    data
}

/// A target with one file namespace in a temp dir.
fn file_target(dir: &std::path::Path) -> Arc<Target> {
    let mut ns = NamespaceConfig::new("file");
    ns.path = Some(dir.join("ns.img").to_str().unwrap().to_string());
    ns.size = Some("1MiB".into());
    ns.nsid = Some(1);
    let cfg =
        TargetConfig { subsystems: vec![SubsystemConfig::with_namespaces(TEST_NQN, vec![ns])], ..test_config_base() };
    Target::new(&cfg, &crate::backend::open).unwrap()
}

// ------------------------------------------------------------------ framing

#[test]
fn ic_response_echoes_digests_and_limits() {
    let mut d = Driven::new(test_target());
    d.recv(&ic_bytes(3));
    match pdus(&d.take_out(), false, false)[..] {
        [Pdu::IcResp(r)] => {
            assert_eq!((r.pfv, r.cpda, r.dgst), (0, 0, 3));
            assert_eq!(r.maxh2cdata, 128 * 1024);
        }
        ref other => panic!("{other:?}"),
    }
}

#[test]
fn capsule_before_ic_is_a_sequence_error() {
    let mut d = Driven::new(test_target());
    assert_eq!(d.recv(&connect_bytes(0, 0xffff, 0)), QueueFlow::CloseAfterFlush);
    match pdus(&d.take_out(), false, false)[..] {
        [Pdu::TermReq { fes: f, .. }] => assert_eq!(f, fes::PDU_SEQUENCE_ERROR),
        ref other => panic!("{other:?}"),
    }
}

#[test]
fn byte_at_a_time_equals_all_at_once() {
    let mut stream = ic_bytes(0);
    stream.extend(connect_bytes(0, 0xffff, 0));
    stream.extend(capsule(&PropertyCmd::get_sqe(3, prop::CAP, true), &[]));
    let mut whole = Driven::new(test_target());
    whole.recv(&stream);
    let mut bytes = Driven::new(test_target());
    for b in &stream {
        assert_eq!(bytes.recv(std::slice::from_ref(b)), QueueFlow::Continue);
    }
    assert!(bytes.rx.is_empty());
    let (a, b) = (whole.take_out(), bytes.take_out());
    assert_eq!(pdus(&a, false, false).len(), 3);
    // Same PDUs (CNTLIDs are equal: two fresh targets start at the same ID).
    assert_eq!(a, b);
}

#[test]
fn before_connect_no_pdu_beyond_an_admin_capsule_is_accepted() {
    // A peer that has proven nothing may not make the target buffer a
    // 128 KiB PDU: the header alone gets the TermReq.
    let mut d = Driven::new(test_target());
    d.recv(&ic_bytes(0));
    let mut s = Sqe::new(adm::SET_FEATURES, 5, 0);
    s.sgl1 = Sgl::in_capsule(0, 64 * 1024);
    let big = capsule(&s, &vec![0u8; 64 * 1024]);
    d.take_out();
    assert_eq!(d.recv(&big[..8]), QueueFlow::CloseAfterFlush);
    match pdus(&d.take_out(), false, false)[..] {
        [Pdu::TermReq { fes: f, fei, .. }] => assert_eq!((f, fei), (fes::INVALID_HEADER_FIELD, 4)),
        ref other => panic!("{other:?}"),
    }
}

#[test]
fn read_uses_success_flag_with_flow_control_disabled() {
    let t = test_target();
    let (_admin, cntlid) = admin(&t, 0);
    let mut io = io_queue(&t, cntlid, 1);
    io.recv(&capsule(&read_sqe(9, 0, 8, 512), &[]));
    match pdus(&io.take_out(), false, false)[..] {
        [Pdu::C2HData { hdr, flags: f, data, .. }] => {
            assert_eq!((hdr.cccid, hdr.offset, data.len()), (9, 0, 4096));
            assert_eq!(f, flags::LAST_PDU | flags::SUCCESS);
        }
        ref other => panic!("{other:?}"),
    }
}

#[test]
fn h2c_data_outside_the_r2t_is_fatal() {
    let t = test_target();
    let (_admin, cntlid) = admin(&t, 0);
    let mut io = io_queue(&t, cntlid, 1);
    let mut s = Sqe::rw(iop::WRITE, 4, 1, 0, 8);
    s.sgl1 = Sgl::transport(4096);
    io.recv(&capsule(&s, &[]));
    let ttag = match pdus(&io.take_out(), false, false)[..] {
        [Pdu::R2T(r)] => {
            assert_eq!((r.cccid, r.offset, r.length), (4, 0, 4096));
            r.ttag
        }
        ref other => panic!("{other:?}"),
    };
    let mut b = Vec::new();
    let hdr = DataHdr { cccid: 4, ttag, offset: 4000, length: 512 };
    encode_data_pdu(&mut b, false, flags::LAST_PDU, &hdr, &[0; 512], &TxConfig::default());
    assert_eq!(io.recv(&b), QueueFlow::CloseAfterFlush);
    match pdus(&io.take_out(), false, false)[..] {
        [Pdu::TermReq { fes: f, data, .. }] => {
            assert_eq!(f, fes::DATA_OUT_OF_RANGE);
            assert_eq!(data, &b[..24], "offending header echoed");
        }
        ref other => panic!("{other:?}"),
    }
}

/// Write 64 KiB with R2T in H2CData PDUs fed in `chunk`-byte pieces, read it
/// back, compare.
fn r2t_write_read_back(t: &Arc<Target>, dg: u8, chunk: usize, len: u32, pdu_bytes: u32) {
    let (_admin, cntlid) = admin(t, 0);
    let mut io = Driven::new(t.clone());
    io.recv(&ic_bytes(dg));
    let tx = TxConfig { hdgst: dg & 1 != 0, ddgst: dg & 2 != 0, data_align: 4 };
    let conn = {
        let c = ConnectCmd { recfmt: 0, qid: 1, sqsize: 15, cattr: CATTR_DISABLE_SQ_FLOW_CONTROL, kato_ms: 0 };
        let d = ConnectData { hostid: [1; 16], cntlid, subnqn: TEST_NQN.into(), hostnqn: HOST.into() };
        let mut b = Vec::new();
        encode_capsule_cmd(&mut b, &c.to_sqe(1), &d.encode(), &tx);
        b
    };
    io.recv(&conn);
    io.take_out();
    let data: Vec<u8> = (0..len).map(|i| (i * 31 + dg as u32) as u8).collect();
    let mut w = Sqe::rw(iop::WRITE, 7, 1, 16, len / 512);
    w.sgl1 = Sgl::transport(len);
    let mut b = Vec::new();
    encode_capsule_cmd(&mut b, &w, &[], &tx);
    io.recv(&b);
    let out = io.take_out();
    let r2t = match pdus(&out, tx.hdgst, false)[..] {
        [Pdu::R2T(r)] => r,
        ref other => panic!("{other:?}"),
    };
    let mut stream = Vec::new();
    for off in (0..len).step_by(pdu_bytes as usize) {
        let hdr = DataHdr { cccid: 7, ttag: r2t.ttag, offset: off, length: pdu_bytes };
        let f = if off + pdu_bytes == len { flags::LAST_PDU } else { 0 };
        encode_data_pdu(&mut stream, false, f, &hdr, &data[off as usize..(off + pdu_bytes) as usize], &tx);
    }
    for piece in stream.chunks(chunk) {
        io.recv(piece);
    }
    let out = io.take_out();
    let resp = pdus(&out, tx.hdgst, tx.ddgst);
    assert!(
        matches!(resp[..], [Pdu::CapsuleResp(c)] if c.status.is_success() && c.cid == 7),
        "{resp:?} (dg {dg}, chunk {chunk})"
    );
    let mut r = read_sqe(8, 16, len / 512, 512);
    r.nsid = 1;
    let mut b = Vec::new();
    encode_capsule_cmd(&mut b, &r, &[], &tx);
    io.recv(&b);
    let out = io.take_out();
    let mut got = Vec::new();
    for p in pdus(&out, tx.hdgst, tx.ddgst) {
        if let Pdu::C2HData { data, data_digest_ok, .. } = p {
            assert!(data_digest_ok);
            got.extend_from_slice(data);
        }
    }
    assert_eq!(got, data, "dg {dg} chunk {chunk}");
}

#[test]
fn h2c_payloads_taken_in_pieces_match_whole_ones_on_memory_and_files() {
    let dir = tempfile::tempdir().unwrap();
    for t in [test_target(), file_target(dir.path())] {
        for dg in 0..4u8 {
            for chunk in [usize::MAX, 4096, 1000, 7] {
                r2t_write_read_back(&t, dg, chunk, 64 * 1024, 16 * 1024);
            }
            r2t_write_read_back(&t, dg, 17 * 1024, 128 * 1024, 128 * 1024);
        }
    }
}

#[test]
fn h2c_data_digest_error_fails_the_command_not_the_queue() {
    let t = test_target();
    let (_admin, cntlid) = admin(&t, 0);
    let mut io = Driven::new(t.clone());
    io.recv(&ic_bytes(2));
    let tx = TxConfig { hdgst: false, ddgst: true, data_align: 4 };
    let c = ConnectCmd { recfmt: 0, qid: 1, sqsize: 15, cattr: CATTR_DISABLE_SQ_FLOW_CONTROL, kato_ms: 0 };
    let d = ConnectData { hostid: [1; 16], cntlid, subnqn: TEST_NQN.into(), hostnqn: HOST.into() };
    let mut b = Vec::new();
    encode_capsule_cmd(&mut b, &c.to_sqe(1), &d.encode(), &tx);
    io.recv(&b);
    io.take_out();
    let mut w = Sqe::rw(iop::WRITE, 3, 1, 0, 8);
    w.sgl1 = Sgl::transport(4096);
    let mut b = Vec::new();
    encode_capsule_cmd(&mut b, &w, &[], &tx);
    io.recv(&b);
    let r2t = match pdus(&io.take_out(), false, false)[..] {
        [Pdu::R2T(r)] => r,
        ref other => panic!("{other:?}"),
    };
    let mut d = Vec::new();
    let hdr = DataHdr { cccid: 3, ttag: r2t.ttag, offset: 0, length: 4096 };
    encode_data_pdu(&mut d, false, flags::LAST_PDU, &hdr, &[9; 4096], &tx);
    let n = d.len();
    d[n - 1] ^= 0xff;
    for piece in d.chunks(1500) {
        assert_eq!(io.recv(piece), QueueFlow::Continue);
    }
    let c = last_cqe(&io.take_out());
    assert_eq!(status_of(&c), (sct::GENERIC, generic::TRANSIENT_TRANSPORT_ERROR));
    // The digest was checked before anything was stored: still zeros.
    let mut b = Vec::new();
    encode_capsule_cmd(&mut b, &read_sqe(4, 0, 8, 512), &[], &tx);
    io.recv(&b);
    let out = io.take_out();
    assert!(pdus(&out, false, true)
        .iter()
        .any(|p| matches!(p, Pdu::C2HData { data, .. } if data.iter().all(|&x| x == 0))));
}

// ------------------------------------------------------------------ commands

#[test]
fn a_cid_in_flight_gets_command_id_conflict() {
    let t = test_target();
    let (_admin, cntlid) = admin(&t, 0);
    let mut io = io_queue(&t, cntlid, 1);
    let mut w = Sqe::rw(iop::WRITE, 4, 1, 0, 8);
    w.sgl1 = Sgl::transport(4096);
    io.recv(&capsule(&w, &[]));
    assert!(matches!(pdus(&io.take_out(), false, false)[..], [Pdu::R2T(_)]));
    // The same CID again while the first waits for its data.
    io.recv(&capsule(&read_sqe(4, 0, 1, 512), &[]));
    let c = last_cqe(&io.take_out());
    assert_eq!((c.cid, status_of(&c)), (4, (sct::GENERIC, generic::CID_CONFLICT)));
    assert!(c.status.dnr);
    // Another CID works, and so does 4 once its command is done.
    io.recv(&capsule(&read_sqe(5, 0, 1, 512), &[]));
    assert!(!pdus(&io.take_out(), false, false).is_empty());
}

fn identify_sqe(cid: u16, cns: u8, xfer: u32) -> Sqe {
    let mut s = Sqe::new(adm::IDENTIFY, cid, 0);
    s.cdw10 = cns as u32;
    s.sgl1 = Sgl::transport(xfer);
    s
}

#[test]
fn admin_transfer_lengths_follow_linux() {
    let t = test_target();
    let (mut a, _) = admin(&t, 0);
    // Identify: exactly 4096 bytes.
    for (xfer, ok) in [(4096, true), (4095, false), (8192, false)] {
        a.recv(&capsule(&identify_sqe(10, 1, xfer), &[]));
        let c = last_cqe(&a.take_out());
        assert_eq!(c.status.is_success(), ok, "identify {xfer}");
        if !ok {
            assert_eq!(status_of(&c), (sct::GENERIC, generic::DATA_SGL_LENGTH_INVALID));
        }
    }
    // Get Log Page: NUMD and the SGL must agree.
    let glp = |numd_bytes: u32, xfer: u32| {
        let mut s = Sqe::new(adm::GET_LOG_PAGE, 11, 0xffff_ffff);
        s.cdw10 = 0x02 | (((numd_bytes / 4) - 1) << 16);
        s.sgl1 = Sgl::transport(xfer);
        capsule(&s, &[])
    };
    a.recv(&glp(512, 512));
    assert!(last_cqe(&a.take_out()).status.is_success());
    a.recv(&glp(512, 4096));
    assert_eq!(status_of(&last_cqe(&a.take_out())), (sct::GENERIC, generic::DATA_SGL_LENGTH_INVALID));
    // Admin transfers are bounded.
    let big = crate::limits::ADMIN_XFER_BYTES_MAX + 4;
    a.recv(&glp(big, big));
    assert_eq!(status_of(&last_cqe(&a.take_out())), (sct::GENERIC, generic::INVALID_FIELD));
}

#[test]
fn an_empty_host_nqn_connects_where_any_host_may() {
    let t = test_target();
    let mut d = Driven::new(t.clone());
    d.recv(&ic_bytes(0));
    d.recv(&connect_bytes_as(0, 0xffff, 0, TEST_NQN, ""));
    assert!(last_cqe(&d.take_out()).status.is_success(), "SPDK's perf sends an empty host NQN");
    // Restricted subsystem: refused.
    t.subsystem(TEST_NQN).unwrap().set_hosts(false, vec![HOST.into()]);
    let mut d = Driven::new(t.clone());
    d.recv(&ic_bytes(0));
    d.recv(&connect_bytes_as(0, 0xffff, 0, TEST_NQN, ""));
    let c = last_cqe(&d.take_out());
    assert_eq!(status_of(&c), (sct::COMMAND_SPECIFIC, nvmf_proto::status::cmd::CONNECT_INVALID_HOST));
}

// ------------------------------------------------------------------ controller lifecycle

#[test]
fn no_io_on_a_controller_that_is_not_enabled() {
    let t = test_target();
    // Connected, CC.EN still 0: no I/O queue.
    let mut a = Driven::new(t.clone());
    a.recv(&ic_bytes(0));
    a.recv(&connect_bytes(0, 0xffff, 0));
    let cntlid = last_cqe(&a.take_out()).dw0 as u16;
    let mut io = Driven::new(t.clone());
    io.recv(&ic_bytes(0));
    io.recv(&connect_bytes(1, cntlid, 0));
    let c = last_cqe(&io.take_out());
    assert_eq!(status_of(&c), (sct::GENERIC, generic::COMMAND_SEQUENCE_ERROR));
    assert!(c.status.dnr);
    // Enabled: works; after shutdown: I/O refused.
    a.recv(&prop_set_cc(2, cc::LINUX_ENABLE));
    let mut io = io_queue(&t, cntlid, 1);
    io.recv(&capsule(&read_sqe(3, 0, 1, 512), &[]));
    assert!(pdus(&io.take_out(), false, false)
        .iter()
        .all(|p| !matches!(p, Pdu::CapsuleResp(c) if !c.status.is_success())));
    a.recv(&prop_set_cc(3, cc::LINUX_ENABLE | (1 << cc::SHN_SHIFT)));
    a.recv(&prop_get_csts(4));
    let csts_v = last_cqe(&a.take_out()).dw0;
    assert_eq!(csts_v & csts::SHST_MASK, csts::SHST_COMPLETE, "memory namespaces flush at once");
    let mut w = Sqe::rw(iop::WRITE, 5, 1, 0, 1);
    w.sgl1 = Sgl::in_capsule(0, 512);
    io.recv(&capsule(&w, &[1; 512]));
    let c = last_cqe(&io.take_out());
    assert_eq!(status_of(&c), (sct::GENERIC, generic::COMMAND_SEQUENCE_ERROR));
}

#[test]
fn a_reset_ends_the_io_queues_before_rdy_drops() {
    let t = test_target();
    let (mut a, cntlid) = admin(&t, 0);
    let mut io1 = io_queue(&t, cntlid, 1);
    let mut io2 = io_queue(&t, cntlid, 2);
    // io1 has a write waiting for its data.
    let mut w = Sqe::rw(iop::WRITE, 9, 1, 0, 8);
    w.sgl1 = Sgl::transport(4096);
    io1.recv(&capsule(&w, &[]));
    io1.take_out();
    // CC.EN 1 -> 0.
    a.recv(&prop_set_cc(5, 0));
    a.recv(&prop_get_csts(6));
    assert_eq!(last_cqe(&a.take_out()).dw0 & csts::RDY, csts::RDY, "I/O queues still there");
    // A command racing the reset on a queue not yet woken is refused.
    io2.recv(&capsule(&read_sqe(1, 0, 1, 512), &[]));
    assert_eq!(status_of(&last_cqe(&io2.take_out())), (sct::GENERIC, generic::COMMAND_SEQUENCE_ERROR));
    // The queues are woken (io2 while it handled the read): the waiting
    // write is aborted, the queues close.
    assert!(io1.deliver_wake());
    for io in [&io1, &io2] {
        assert_eq!(io.closed, Some(QueueFlow::CloseAfterFlush));
    }
    let c = last_cqe(&io1.take_out());
    assert_eq!((c.cid, status_of(&c)), (9, (sct::GENERIC, generic::ABORTED_SQ_DELETION)));
    io1.close();
    a.recv(&prop_get_csts(7));
    assert_eq!(last_cqe(&a.take_out()).dw0 & csts::RDY, csts::RDY, "one I/O queue left");
    io2.close();
    a.recv(&prop_get_csts(8));
    assert_eq!(last_cqe(&a.take_out()).dw0 & csts::RDY, 0, "reset complete");
    // Enable again: a new I/O queue 1 connects.
    a.recv(&prop_set_cc(9, cc::LINUX_ENABLE));
    let mut io = io_queue(&t, cntlid, 1);
    io.recv(&capsule(&read_sqe(2, 0, 1, 512), &[]));
    assert!(matches!(pdus(&io.take_out(), false, false)[..], [Pdu::C2HData { .. }]));
}

#[test]
fn shutdown_flushes_file_namespaces_before_reporting_complete() {
    let dir = tempfile::tempdir().unwrap();
    let t = file_target(dir.path());
    let (mut a, _) = admin(&t, 0);
    a.storage_mode = StorageMode::Hold;
    a.recv(&prop_set_cc(3, cc::LINUX_ENABLE | (1 << cc::SHN_SHIFT)));
    assert!(last_cqe(&a.take_out()).status.is_success());
    assert!(matches!(a.storage[..], [StorageOp { kind: StorageKind::Fsync { datasync: true }, .. }]));
    a.recv(&prop_get_csts(4));
    assert_eq!(last_cqe(&a.take_out()).dw0 & csts::SHST_MASK, csts::SHST_OCCURRING);
    a.complete_held(crate::testing::exec_storage_sync);
    a.recv(&prop_get_csts(5));
    assert_eq!(last_cqe(&a.take_out()).dw0 & csts::SHST_MASK, csts::SHST_COMPLETE);
}

// ------------------------------------------------------------------ storage never blocks

#[test]
fn flush_write_zeroes_and_deallocate_on_files_are_storage_actions() {
    let dir = tempfile::tempdir().unwrap();
    let t = file_target(dir.path());
    let (_a, cntlid) = admin(&t, 0);
    let mut io = io_queue(&t, cntlid, 1);
    fill_16_blocks(&mut io, 0x5a);
    io.storage_mode = StorageMode::Hold;
    // Flush, Write Zeroes of blocks 2..4, Deallocate of block 8.
    io.recv(&capsule(&Sqe::new(iop::FLUSH, 2, 1), &[]));
    let mut z = Sqe::rw(iop::WRITE_ZEROES, 3, 1, 2, 2);
    z.sgl1 = Sgl::default();
    io.recv(&capsule(&z, &[]));
    let mut dsm = Sqe::new(iop::DATASET_MANAGEMENT, 4, 1);
    dsm.cdw11 = 1 << 2;
    dsm.sgl1 = Sgl::in_capsule(0, 16);
    let mut range = [0u8; 16];
    range[4] = 1; // one block
    range[8] = 8; // at LBA 8
    io.recv(&capsule(&dsm, &range));
    assert!(io.take_out().is_empty(), "nothing completes before storage does");
    assert!(io.storage.iter().any(|o| matches!(o.kind, StorageKind::Fsync { datasync: true })));
    assert!(io.storage.iter().any(|o| matches!(o.kind, StorageKind::Fallocate { offset: 1024, len: 1024, .. })));
    assert!(io.storage.iter().any(|o| matches!(o.kind, StorageKind::Fallocate { offset: 4096, len: 512, .. })));
    io.complete_held(crate::testing::exec_storage_sync);
    let done = cqes(&io.take_out());
    assert_eq!(done.len(), 3);
    assert!(done.iter().all(|c| c.status.is_success()), "{done:?}");
    let data = read_16_blocks(&mut io);
    assert!(data[..1024].iter().all(|&x| x == 0x5a));
    assert!(data[1024..2048].iter().all(|&x| x == 0));
    assert!(data[2048..4096].iter().all(|&x| x == 0x5a));
    assert!(data[4096..4608].iter().all(|&x| x == 0));
    assert!(data[4608..].iter().all(|&x| x == 0x5a));
}

#[test]
fn write_zeroes_falls_back_to_writing_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let t = file_target(dir.path());
    let (_a, cntlid) = admin(&t, 0);
    let mut io = io_queue(&t, cntlid, 1);
    fill_16_blocks(&mut io, 0x77);
    io.storage_mode = StorageMode::Hold;
    io.recv(&capsule(&Sqe::rw(iop::WRITE_ZEROES, 2, 1, 4, 4), &[]));
    // The file system "cannot" zero ranges: the queue writes zeros instead.
    io.complete_held(|op| match op.kind {
        StorageKind::Fallocate { .. } => -libc::EOPNOTSUPP,
        _ => crate::testing::exec_storage_sync(op),
    });
    assert!(last_cqe(&io.take_out()).status.is_success());
    let data = read_16_blocks(&mut io);
    assert!(data[..2048].iter().all(|&x| x == 0x77));
    assert!(data[2048..4096].iter().all(|&x| x == 0));
    assert!(data[4096..].iter().all(|&x| x == 0x77));
}

// ------------------------------------------------------------------ time

#[test]
fn connect_timeout_closes_idle_connections() {
    let mut d = Driven::new(test_target());
    assert_eq!(d.q.next_deadline_us(), Some(10 * SEC));
    assert_eq!(d.advance_to(10 * SEC - 1), QueueFlow::Continue);
    assert_eq!(d.advance_to(10 * SEC), QueueFlow::CloseNow);
}

#[test]
fn keep_alive_timeout_kills_the_controller() {
    let t = test_target();
    let (mut a, _) = admin(&t, 100);
    let ctrl = a.q.conn.as_ref().unwrap().ctrl.clone();
    assert_eq!(a.advance_to(149_000), QueueFlow::Continue);
    assert_eq!(a.advance_to(151_000), QueueFlow::CloseNow);
    assert!(ctrl.is_dead());
    assert_eq!(t.keep_alive_expiries.load(Ordering::Relaxed), 1);
    a.close();
}

#[test]
fn a_slow_header_is_closed_after_the_pdu_timeout_whatever_kato_says() {
    let t = test_target();
    let (mut a, _) = admin(&t, 0);
    // One byte of a capsule every 2 s.
    let b = capsule(&identify_sqe(20, 1, 4096), &[]);
    let mut at = a.now_us;
    for byte in b.iter().take(6) {
        at += 2 * SEC;
        if a.advance_to(at) != QueueFlow::Continue {
            break;
        }
        a.recv(std::slice::from_ref(byte));
    }
    assert_eq!(a.closed, Some(QueueFlow::CloseNow), "closed within pdu_timeout_ms of the first byte");
    assert!(a.now_us <= 2 * SEC + 10 * SEC + 2 * SEC);
}

#[test]
fn a_partial_capsule_with_kato_zero_is_not_held_forever() {
    let t = test_target();
    let (_a, cntlid) = admin(&t, 0);
    let mut io = io_queue(&t, cntlid, 1);
    let mut w = Sqe::rw(iop::WRITE, 4, 1, 0, 16);
    w.sgl1 = Sgl::in_capsule(0, 8192);
    let b = capsule(&w, &[1; 8192]);
    io.recv(&b[..4000]);
    assert_eq!(io.q.next_deadline_us(), Some(10 * SEC));
    assert_eq!(io.advance_to(10 * SEC), QueueFlow::CloseNow);
}

#[test]
fn pipelined_pdus_do_not_trip_the_pdu_timeout() {
    // Under load every receive ends inside the next PDU: the clock restarts
    // with each whole PDU.
    let t = test_target();
    let (mut a, _) = admin(&t, 0);
    let mut stream = Vec::new();
    for cid in 0..200u16 {
        stream.extend(capsule(&identify_sqe(100 + cid, 1, 4096), &[]));
    }
    let mut now = 0;
    for piece in stream.chunks(100) {
        now += SEC;
        assert_eq!(a.advance_to(now), QueueFlow::Continue);
        a.recv(piece);
    }
    let out = a.take_out();
    let done = pdus(&out, false, false)
        .iter()
        .filter(|p| matches!(p, Pdu::C2HData { flags: f, .. } if f & flags::SUCCESS != 0))
        .count();
    assert_eq!(done, 200);
}

#[test]
fn r2t_data_that_never_comes_is_bounded_in_time() {
    let t = test_target();
    let (_a, cntlid) = admin(&t, 0);
    let mut io = io_queue(&t, cntlid, 1);
    let mut w = Sqe::rw(iop::WRITE, 4, 1, 0, 8);
    w.sgl1 = Sgl::transport(4096);
    io.recv(&capsule(&w, &[]));
    assert_eq!(io.q.next_deadline_us(), Some(30 * SEC));
    assert_eq!(io.advance_to(30 * SEC), QueueFlow::CloseNow);
}

#[test]
fn kato_zero_controllers_expire_when_idle_but_not_while_io_flows() {
    let t = test_target();
    let (mut a, cntlid) = admin(&t, 0);
    let mut io = io_queue(&t, cntlid, 1);
    let limit = 120 * SEC;
    // I/O on the I/O queue keeps the controller alive.
    io.advance_to(limit - SEC);
    let mut w = Sqe::rw(iop::WRITE, 1, 1, 0, 1);
    w.sgl1 = Sgl::in_capsule(0, 512);
    io.recv(&capsule(&w, &[1; 512]));
    assert_eq!(a.advance_to(limit + SEC), QueueFlow::Continue);
    // Then nothing for the limit: torn down, and the I/O queue is woken.
    assert_eq!(a.advance_to(2 * limit + 2 * SEC), QueueFlow::CloseNow);
    assert!(io.deliver_wake());
    assert_eq!(io.closed, Some(QueueFlow::CloseAfterFlush));
}

#[test]
fn discovery_controllers_with_kato_zero_are_reclaimed() {
    let t = test_target();
    let mut d = Driven::new(t.clone());
    d.recv(&ic_bytes(0));
    d.recv(&connect_bytes_as(0, 0xffff, 0, nvmf_proto::DISCOVERY_NQN, HOST));
    assert!(last_cqe(&d.take_out()).status.is_success());
    assert_eq!(d.q.ctrl_kind(), Some(CtrlKind::Discovery));
    assert_eq!(d.advance_to(121 * SEC), QueueFlow::CloseNow);
}

// ------------------------------------------------------------------ fuzz

/// Fuzz input for an already connected I/O queue (preface mode 2):
/// in-capsule write, R2T write with its data, read, compare, DSM.
fn session_stream(dg: u8) -> Vec<u8> {
    let tx = TxConfig { hdgst: dg & 1 != 0, ddgst: dg & 2 != 0, data_align: 4 };
    let mut s = vec![2 | (dg << 2)];
    let mut w = Sqe::rw(iop::WRITE, 3, 1, 0, 8);
    w.sgl1 = Sgl::in_capsule(0, 4096);
    encode_capsule_cmd(&mut s, &w, &[5; 4096], &tx);
    let mut w = Sqe::rw(iop::WRITE, 4, 1, 8, 8);
    w.sgl1 = Sgl::transport(4096);
    encode_capsule_cmd(&mut s, &w, &[], &tx);
    // The first free slot is the last one pushed on the free list: slot 0.
    let hdr = DataHdr { cccid: 4, ttag: 0, offset: 0, length: 4096 };
    encode_data_pdu(&mut s, false, flags::LAST_PDU, &hdr, &[6; 4096], &tx);
    let mut r = Sqe::rw(iop::READ, 5, 1, 0, 16);
    r.sgl1 = Sgl::transport(8192);
    encode_capsule_cmd(&mut s, &r, &[], &tx);
    let mut c = Sqe::rw(iop::COMPARE, 6, 1, 0, 1);
    c.sgl1 = Sgl::in_capsule(0, 512);
    encode_capsule_cmd(&mut s, &c, &[5; 512], &tx);
    let mut d = Sqe::new(iop::DATASET_MANAGEMENT, 7, 1);
    d.cdw11 = 1 << 2;
    d.sgl1 = Sgl::in_capsule(0, 16);
    let mut range = [0u8; 16];
    range[4] = 8;
    encode_capsule_cmd(&mut s, &d, &range, &tx);
    s
}

#[test]
fn fuzz_preface_session_is_valid() {
    // The unmutated stream runs without a TermReq: the soak starts deep.
    let target = test_target();
    let sub = target.subsystem(TEST_NQN).unwrap();
    let ctrl = target.create_controller(CtrlKind::Io, Some(sub), HOST, [0; 16], 1).unwrap();
    ctrl.set_state(crate::ctrl::CtrlState::Enabled);
    let mut d = Driven::new(target.clone());
    d.recv(&ic_bytes(0));
    d.recv(&connect_bytes(1, ctrl.cntlid, 0));
    d.take_out();
    let body = &session_stream(0)[1..];
    assert_eq!(d.recv(body), QueueFlow::Continue);
    let resps: Vec<Status> = cqes(&d.take_out()).iter().map(|c| c.status).collect();
    assert!(resps.iter().all(|s| s.is_success()), "{resps:?}");
    assert_eq!(resps.len(), 4, "2 writes, compare and DSM (the read completes with SUCCESS)");
}

#[test]
fn fuzz_soak_of_mutated_sessions() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for dg in 0..4u8 {
        let base = session_stream(dg);
        fuzz_queue_input(&base);
        for _ in 0..300 {
            let mut m = base.clone();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() as usize) % m.len();
                match next() % 4 {
                    0 => m[at] = next() as u8,
                    1 => m[at] ^= 1 << (next() % 8),
                    2 => m.insert(at, next() as u8),
                    _ => {
                        m.remove(at);
                    }
                }
            }
            fuzz_queue_input(&m);
        }
    }
}

#[test]
fn fuzz_entry_survives_garbage_and_mutations() {
    fuzz_queue_input(&[]);
    fuzz_queue_input(&[0xff; 300]);
    let mut stream = ic_bytes(0);
    stream.extend(connect_bytes(0, 0xffff, 0));
    fuzz_queue_input(&stream);
    let mut x: u32 = 12345;
    for i in 0..200 {
        let mut m = stream.clone();
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let at = (x as usize >> 8) % m.len();
        m[at] ^= (x >> 3) as u8 | 1;
        if i % 3 == 0 {
            m.truncate(at);
        }
        fuzz_queue_input(&m);
    }
}

#[test]
fn test_opener_is_ram() {
    let b = test_opener(&NamespaceConfig::ram("1MiB")).unwrap();
    assert_eq!(b.kind(), "ram");
}

#[test]
fn dataset_management_with_only_empty_ranges_completes_on_files() {
    let dir = tempfile::tempdir().unwrap();
    let t = file_target(dir.path());
    let (_a, cntlid) = admin(&t, 0);
    let mut io = io_queue(&t, cntlid, 1);
    let mut dsm = Sqe::new(iop::DATASET_MANAGEMENT, 4, 1);
    dsm.cdw10 = 1; // two ranges
    dsm.cdw11 = 1 << 2;
    dsm.sgl1 = Sgl::in_capsule(0, 32);
    io.recv(&capsule(&dsm, &[0u8; 32])); // both of zero blocks
    assert!(last_cqe(&io.take_out()).status.is_success());
}

#[test]
fn a_command_racing_a_controllers_death_is_not_run_and_gets_no_answer() {
    let t = test_target();
    let (mut a, cntlid) = admin(&t, 0);
    let mut io = io_queue(&t, cntlid, 1);
    // The admin queue goes away: the controller dies; the I/O queue's wake-up
    // has not been delivered yet when a write arrives.
    a.close();
    let mut w = Sqe::rw(iop::WRITE, 7, 1, 0, 1);
    w.sgl1 = Sgl::in_capsule(0, 512);
    io.waker.0.store(false, Ordering::Release);
    assert_eq!(io.recv(&capsule(&w, &[9; 512])), QueueFlow::CloseAfterFlush);
    assert!(cqes(&io.take_out()).is_empty(), "no answer: the host's failover decides");
    // Nothing was written.
    let ns = t.subsystem(TEST_NQN).unwrap().namespaces();
    let mut b = [0u8; 512];
    ns.get(1).unwrap().backend.read_sync(0, &mut b).unwrap().unwrap();
    assert_eq!(b, [0u8; 512]);
}
