//! Property tests: every encoder's output decodes to the same value, and the
//! framer never panics or over-reads on arbitrary input.

use nvmf_proto::cqe::Cqe;
use nvmf_proto::fabrics::{ConnectCmd, ConnectData};
use nvmf_proto::pdu::{self, DataHdr, Decoded, FrameConfig, Pdu, Role, TxConfig};
use nvmf_proto::{Sgl, Sqe, Status};
use proptest::prelude::*;

fn arb_sqe() -> impl Strategy<Value = Sqe> {
    (any::<[u32; 16]>()).prop_map(|d| {
        let mut b = [0u8; 64];
        for (i, w) in d.iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        // Bytes 36..39 of the SGL are reserved and not kept by the decoder.
        b[36..39].fill(0);
        Sqe::decode(&b)
    })
}

fn arb_status() -> impl Strategy<Value = Status> {
    (0u8..8, any::<u8>(), any::<bool>(), any::<bool>(), 0u8..4).prop_map(|(sct, sc, dnr, more, crd)| Status {
        sct,
        sc,
        dnr,
        more,
        crd,
    })
}

fn arb_tx() -> impl Strategy<Value = TxConfig> {
    (any::<bool>(), any::<bool>(), 0u32..32).prop_map(|(hdgst, ddgst, pda)| TxConfig {
        hdgst,
        ddgst,
        data_align: (pda + 1) * 4,
    })
}

fn rx_cfg(role: Role, tx: &TxConfig) -> FrameConfig {
    FrameConfig { role, hdgst: tx.hdgst, ddgst: tx.ddgst, pdu_len_max: 1 << 20, rx_data_align: tx.data_align }
}

proptest! {
    #[test]
    fn sqe_roundtrip(s in arb_sqe()) {
        prop_assert_eq!(Sqe::decode(&s.to_bytes()), s);
    }

    #[test]
    fn cqe_roundtrip(dw0: u32, dw1: u32, sqhd: u16, sqid: u16, cid: u16, st in arb_status()) {
        let c = Cqe { dw0, dw1, sqhd, sqid, cid, status: st };
        prop_assert_eq!(Cqe::decode(&c.to_bytes()), c);
    }

    #[test]
    fn capsule_cmd_roundtrip(s in arb_sqe(), data in proptest::collection::vec(any::<u8>(), 0..9000), tx in arb_tx()) {
        let mut out = Vec::new();
        pdu::encode_capsule_cmd(&mut out, &s, &data, &tx);
        match pdu::decode(&out, &rx_cfg(Role::Controller, &tx)).unwrap() {
            Decoded::Pdu(Pdu::CapsuleCmd { sqe, data: d, data_digest_ok }, n) => {
                prop_assert_eq!(sqe, s);
                prop_assert_eq!(d, &data[..]);
                prop_assert!(data_digest_ok);
                prop_assert_eq!(n, out.len());
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn data_pdu_roundtrip(c2h: bool, cccid: u16, ttag: u16, offset: u32,
                          data in proptest::collection::vec(any::<u8>(), 1..5000), tx in arb_tx(), last: bool) {
        let hdr = DataHdr { cccid, ttag, offset, length: data.len() as u32 };
        let f = if last { pdu::flags::LAST_PDU } else { 0 };
        let mut out = Vec::new();
        pdu::encode_data_pdu(&mut out, c2h, f, &hdr, &data, &tx);
        prop_assert_eq!(out.len(), data.len() + pdu::data_pdu_overhead(&tx));
        let role = if c2h { Role::Host } else { Role::Controller };
        let Decoded::Pdu(p, n) = pdu::decode(&out, &rx_cfg(role, &tx)).unwrap() else { panic!("incomplete") };
        prop_assert_eq!(n, out.len());
        match p {
            Pdu::C2HData { hdr: h, flags, data: d, data_digest_ok } | Pdu::H2CData { hdr: h, flags, data: d, data_digest_ok } => {
                prop_assert_eq!(h, hdr);
                prop_assert_eq!(flags & pdu::flags::LAST_PDU != 0, last);
                prop_assert_eq!(d, &data[..]);
                prop_assert!(data_digest_ok);
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn resp_stream_split_anywhere(cids in proptest::collection::vec(any::<u16>(), 1..20), cut in 0usize..1000, hdgst: bool) {
        // A stream of responses decodes the same whatever the read boundaries.
        let tx = TxConfig { hdgst, ddgst: false, data_align: 4 };
        let mut out = Vec::new();
        for &cid in &cids {
            pdu::encode_capsule_resp(&mut out, &Cqe::new(cid, Status::SUCCESS), &tx);
        }
        let cfg = rx_cfg(Role::Host, &tx);
        let cut = cut.min(out.len());
        let mut buf = out[..cut].to_vec();
        let mut got = Vec::new();
        let feed = |buf: &mut Vec<u8>, got: &mut Vec<u16>| loop {
            match pdu::decode(buf, &cfg).unwrap() {
                Decoded::Pdu(Pdu::CapsuleResp(c), n) => { got.push(c.cid); buf.drain(..n); }
                Decoded::NeedMore(_) => break,
                other => panic!("{other:?}"),
            }
        };
        feed(&mut buf, &mut got);
        buf.extend_from_slice(&out[cut..]);
        feed(&mut buf, &mut got);
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, cids);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
        nvmf_proto::fuzz::pdu_stream(&data);
        nvmf_proto::fuzz::admin_structures(&data);
    }

    #[test]
    fn arbitrary_headers_never_panic(ty in 0u8..12, fl: u8, hlen: u8, pdo: u8, plen in 0u32..300_000,
                                     tail in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut b = vec![ty, fl, hlen, pdo];
        b.extend_from_slice(&plen.to_le_bytes());
        b.extend_from_slice(&tail);
        for role in [Role::Controller, Role::Host] {
            for (hdgst, ddgst) in [(false, false), (true, true)] {
                let cfg = FrameConfig { role, hdgst, ddgst, pdu_len_max: 65536, rx_data_align: 4 };
                if let Ok(Decoded::NeedMore(n)) = pdu::decode(&b, &cfg) {
                    prop_assert!(n <= 65536);
                }
            }
        }
    }

    #[test]
    fn connect_roundtrip(qid: u16, sqsize: u16, cattr: u8, kato_ms: u32, hostid: [u8; 16], cntlid: u16,
                         sub in "nqn\\.2026-11\\.[a-z]{1,40}", host in "nqn\\.2014-08\\.[a-z:0-9-]{1,60}") {
        let c = ConnectCmd { recfmt: 0, qid, sqsize, cattr, kato_ms };
        prop_assert_eq!(ConnectCmd::parse(&c.to_sqe(1)), c);
        let d = ConnectData { hostid, cntlid, subnqn: sub, hostnqn: host };
        prop_assert_eq!(ConnectData::parse(&d.encode()).unwrap(), d);
    }

    #[test]
    fn sgl_roundtrip(address: u64, length: u32, ts: u8) {
        let s = Sgl { address, length, type_subtype: ts };
        let mut b = [0u8; 16];
        s.encode(&mut b);
        prop_assert_eq!(Sgl::decode(&b), s);
    }
}
