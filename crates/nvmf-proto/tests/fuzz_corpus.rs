//! Replays the checked-in fuzz corpus (fuzz/corpus/<target>/*) through the
//! same entry points the `cargo fuzz` targets use, so every input the fuzzer
//! ever kept is re-checked on stable Rust in CI.
//!
//! `NVMF_WRITE_SEEDS=1 cargo test -p nvmf-proto --test fuzz_corpus` rewrites
//! the seed inputs (valid PDUs of every type, admin structures, and recorded
//! DH-HMAC-CHAP transactions from `nvmf_proto::auth::fuzz::seeds`).

use std::path::PathBuf;

use nvmf_proto::cqe::Cqe;
use nvmf_proto::pdu::{self, DataHdr, IcReq, IcResp, TxConfig};
use nvmf_proto::{Sqe, Status};

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target)
}

fn replay(target: &str, f: fn(&[u8])) -> usize {
    nvmf_proto::fuzz::replay_corpus(&corpus_dir(target), f)
}

fn seeds_pdu() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for sel in [0u8, 1, 2 | 4, 1 | 2 | 4, 16, 17 | 2] {
        let tx = TxConfig { hdgst: sel & 2 != 0, ddgst: sel & 4 != 0, data_align: if sel & 16 != 0 { 32 } else { 4 } };
        let mut b = vec![sel];
        if sel & 1 == 0 {
            // Controller side: what a host sends.
            if !tx.hdgst {
                pdu::encode_ic_req(&mut b, &IcReq { pfv: 0, hpda: 0, dgst: 3, maxr2t: 0 });
            }
            pdu::encode_capsule_cmd(&mut b, &Sqe::rw(2, 1, 1, 0, 8), &[], &tx);
            pdu::encode_capsule_cmd(&mut b, &Sqe::rw(1, 2, 1, 0, 1), &[0x5a; 512], &tx);
            let h = DataHdr { cccid: 3, ttag: 1, offset: 0, length: 1024 };
            pdu::encode_data_pdu(&mut b, false, pdu::flags::LAST_PDU, &h, &[7; 1024], &tx);
            pdu::encode_term_req(&mut b, false, 1, 4, &[0; 24]);
        } else {
            if !tx.hdgst {
                pdu::encode_ic_resp(&mut b, &IcResp { pfv: 0, cpda: 0, dgst: 0, maxh2cdata: 131072 });
            }
            pdu::encode_capsule_resp(&mut b, &Cqe::new(1, Status::SUCCESS), &tx);
            pdu::encode_r2t(&mut b, &DataHdr { cccid: 2, ttag: 1, offset: 0, length: 65536 }, &tx);
            let h = DataHdr { cccid: 1, ttag: 0, offset: 0, length: 4096 };
            pdu::encode_data_pdu(&mut b, true, pdu::flags::LAST_PDU | pdu::flags::SUCCESS, &h, &[1; 4096], &tx);
            pdu::encode_term_req(&mut b, true, 3, 0, &[0; 8]);
        }
        out.push((format!("seed-stream-{sel:02x}"), b));
    }
    out
}

fn seeds_admin() -> Vec<(String, Vec<u8>)> {
    use nvmf_proto::identify::*;
    use nvmf_proto::log::*;
    let ctrl = IdentifyController { serial: "s".into(), model: "m".into(), mdts: 5, nn: 4, ..Default::default() };
    let ns = IdentifyNamespace { nsze: 8, lbaf: vec![LbaFormat { ms: 0, lbads: 9, rp: 0 }], ..Default::default() };
    let disc = encode_discovery_log(
        1,
        &[DiscoveryEntry { trtype: 3, subtype: 2, subnqn: "nqn.2026-11.io.nvmf:x".into(), ..Default::default() }],
    );
    let ana = encode_ana_log(1, &[AnaGroup { grpid: 1, chgcnt: 1, state: 1, nsids: vec![1, 2] }], false);
    vec![
        ("seed-id-ctrl".into(), ctrl.encode().to_vec()),
        ("seed-id-ns".into(), ns.encode().to_vec()),
        ("seed-disc-log".into(), disc),
        ("seed-ana-log".into(), ana),
    ]
}

#[test]
fn corpus_replays_without_panic() {
    if std::env::var_os("NVMF_WRITE_SEEDS").is_some() {
        let targets = [
            ("pdu_stream", seeds_pdu()),
            ("admin_structures", seeds_admin()),
            ("auth_messages", nvmf_proto::auth::fuzz::seeds()),
        ];
        for (target, seeds) in targets {
            let dir = corpus_dir(target);
            std::fs::create_dir_all(&dir).unwrap();
            for (name, data) in seeds {
                std::fs::write(dir.join(name), data).unwrap();
            }
        }
    }
    let n = replay("pdu_stream", nvmf_proto::fuzz::pdu_stream);
    assert!(n >= 6, "pdu_stream corpus has {n} inputs");
    let n = replay("admin_structures", nvmf_proto::fuzz::admin_structures);
    assert!(n >= 4, "admin_structures corpus has {n} inputs");
    let n = replay("auth_messages", nvmf_proto::auth::fuzz::auth_messages);
    assert!(n >= 20, "auth_messages corpus has {n} inputs");
}

#[test]
fn seeds_are_valid_streams() {
    // Every seed decodes completely (no error) so the fuzzer starts from valid input.
    for (name, data) in seeds_pdu() {
        let sel = data[0];
        let cfg = pdu::FrameConfig {
            role: if sel & 1 == 0 { pdu::Role::Controller } else { pdu::Role::Host },
            hdgst: sel & 2 != 0,
            ddgst: sel & 4 != 0,
            pdu_len_max: 1 << 20,
            rx_data_align: if sel & 16 != 0 { 32 } else { 4 },
        };
        let mut rest = &data[1..];
        while !rest.is_empty() {
            match pdu::decode(rest, &cfg) {
                Ok(pdu::Decoded::Pdu(_, n)) => rest = &rest[n..],
                other => panic!("{name}: {other:?}"),
            }
        }
    }
}
