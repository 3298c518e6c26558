//! Replays the checked-in corpora of the target queue, host queue and config
//! fuzz targets (fuzz/corpus/<target>/*) on stable Rust, through the same
//! entry points `cargo fuzz` runs. (The proto crate replays its own.)
//!
//! `NVMF_WRITE_SEEDS=1 cargo test --test fuzz_corpus` rewrites the seeds:
//! whole valid sessions, so the fuzzer starts deep in the state machines.

use std::path::PathBuf;

use nvmf_proto::cqe::Cqe;
use nvmf_proto::fabrics::{cc, prop, ConnectCmd, ConnectData, PropertyCmd, CATTR_DISABLE_SQ_FLOW_CONTROL};
use nvmf_proto::identify::IdentifyCmd;
use nvmf_proto::opcodes::{cns, io};
use nvmf_proto::pdu::{self, DataHdr, IcReq, TxConfig};
use nvmf_proto::{Sqe, Status};

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target)
}

fn replay(target: &str, f: fn(&[u8])) -> usize {
    nvmf_proto::fuzz::replay_corpus(&corpus_dir(target), f)
}

/// What a host sends: IC, admin Connect, enable, Identify, then I/O on the
/// same connection (the target answers I/O on an admin queue with an error,
/// which is a path worth fuzzing too), and an I/O-queue session.
fn target_seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, hdgst, ddgst, qid) in
        [("admin", false, false, 0u16), ("admin-digests", true, true, 0), ("io", false, false, 1)]
    {
        let tx = TxConfig { hdgst, ddgst, data_align: 4 };
        // Selector 0: no preface (fuzz_queue_input), the session is the body.
        let mut b = vec![0u8];
        pdu::encode_ic_req(&mut b, &IcReq { pfv: 0, hpda: 0, dgst: (hdgst as u8) | ((ddgst as u8) << 1), maxr2t: 0 });
        let conn = ConnectCmd { recfmt: 0, qid, sqsize: 31, cattr: CATTR_DISABLE_SQ_FLOW_CONTROL, kato_ms: 5000 };
        let data = ConnectData {
            hostid: [1; 16],
            cntlid: if qid == 0 { 0xffff } else { 1 },
            subnqn: nvmf_target::testing::TEST_NQN.into(),
            hostnqn: "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001".into(),
        };
        pdu::encode_capsule_cmd(&mut b, &conn.to_sqe(0), &data.encode(), &tx);
        if qid == 0 {
            pdu::encode_capsule_cmd(&mut b, &PropertyCmd::get_sqe(1, prop::CAP, true), &[], &tx);
            pdu::encode_capsule_cmd(
                &mut b,
                &PropertyCmd::set_sqe(2, prop::CC, false, cc::LINUX_ENABLE as u64),
                &[],
                &tx,
            );
            let id = IdentifyCmd { cns: cns::CONTROLLER, cntid: 0, csi: 0, nsid: 0 };
            pdu::encode_capsule_cmd(&mut b, &id.to_sqe(3), &[], &tx);
        }
        let mut w = Sqe::rw(io::WRITE, 4, 1, 0, 1);
        w.sgl1 = nvmf_proto::Sgl::in_capsule(0, 512);
        pdu::encode_capsule_cmd(&mut b, &w, &[0xa5; 512], &tx);
        let mut w = Sqe::rw(io::WRITE, 5, 1, 8, 16);
        w.sgl1 = nvmf_proto::Sgl::transport(8192);
        pdu::encode_capsule_cmd(&mut b, &w, &[], &tx);
        let h = DataHdr { cccid: 5, ttag: 0, offset: 0, length: 8192 };
        pdu::encode_data_pdu(&mut b, false, pdu::flags::LAST_PDU, &h, &[0x5a; 8192], &tx);
        let mut r = Sqe::rw(io::READ, 6, 1, 0, 8);
        r.sgl1 = nvmf_proto::Sgl::transport(4096);
        pdu::encode_capsule_cmd(&mut b, &r, &[], &tx);
        pdu::encode_capsule_cmd(&mut b, &nvmf_proto::fabrics::disconnect_sqe(7), &[], &tx);
        out.push((format!("seed-session-{name}"), b));
    }
    out
}

/// What a controller sends back to the host queue fuzz entry (first byte
/// selects digests; the entry point has already fed the ICResp).
fn host_seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for sel in [0u8, 3, 4] {
        let tx = TxConfig { hdgst: sel & 1 != 0, ddgst: sel & 2 != 0, data_align: if sel & 4 != 0 { 32 } else { 4 } };
        let mut b = vec![sel];
        // CIDs are slot index | generation << 8 or similar: answer the first
        // three slots with a few plausible encodings.
        for cid in [0u16, 1, 2, 0x100, 0x101, 0x102] {
            let h = DataHdr { cccid: cid, ttag: 0, offset: 0, length: 4096 };
            pdu::encode_data_pdu(&mut b, true, pdu::flags::LAST_PDU, &h, &[7; 4096], &tx);
            pdu::encode_r2t(&mut b, &DataHdr { cccid: cid, ttag: 3, offset: 0, length: 32768 }, &tx);
            pdu::encode_capsule_resp(&mut b, &Cqe::new(cid, Status::SUCCESS), &tx);
        }
        pdu::encode_term_req(&mut b, true, 1, 0, &[0; 24]);
        out.push((format!("seed-answers-{sel:02x}"), b));
    }
    out
}

#[test]
fn corpora_replay_without_panic() {
    if std::env::var_os("NVMF_WRITE_SEEDS").is_some() {
        for (target, seeds) in [("target_queue", target_seeds()), ("host_queue", host_seeds())] {
            let dir = corpus_dir(target);
            std::fs::create_dir_all(&dir).unwrap();
            for (name, data) in seeds {
                std::fs::write(dir.join(name), data).unwrap();
            }
        }
    }
    assert!(replay("target_queue", nvmf_target::fuzz_queue_input) >= 3);
    assert!(replay("host_queue", nvmf_host::fuzzing::host_queue_input) >= 3);
    assert!(replay("config_toml", nvmf_target::config::fuzz_config_toml) >= 3);
    assert!(replay("http_request", nvmf_target::mgmt::http::fuzz_parse_request) >= 4);
}
