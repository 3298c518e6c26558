//! Entry points shared by the `cargo fuzz` targets (fuzz/) and the corpus
//! replay test (tests/fuzz_corpus.rs), so that CI on stable Rust re-runs every
//! checked-in corpus input through exactly the code the fuzzer exercised.
//!
//! Each function must never panic, whatever the input; the invariants they
//! assert are the decoders' contracts.

use std::path::Path;

use crate::pdu::{self, Decoded, FrameConfig, Pdu, Role, TxConfig};

/// Run every file of a corpus directory through `f` and return how many ran.
/// The replay tests of every crate use this, so a corpus is read one way.
pub fn replay_corpus(dir: &Path, f: fn(&[u8])) -> usize {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut n = 0;
    for entry in entries {
        let path = entry.expect("corpus directory entry").path();
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        f(&data);
        n += 1;
    }
    n
}

/// Decode a stream of PDUs as either side, with the framing parameters taken
/// from the first input byte, and check the framer's contracts.
pub fn pdu_stream(data: &[u8]) {
    let Some((&sel, mut rest)) = data.split_first() else { return };
    let cfg = FrameConfig {
        role: if sel & 1 == 0 { Role::Controller } else { Role::Host },
        hdgst: sel & 2 != 0,
        ddgst: sel & 4 != 0,
        pdu_len_max: if sel & 8 != 0 { 8192 } else { 1 << 20 },
        rx_data_align: if sel & 16 != 0 { 32 } else { 4 },
    };
    // Bounded: every successful step consumes at least one byte.
    while !rest.is_empty() {
        let start = pdu::decode_data_start(rest, &cfg);
        match pdu::decode(rest, &cfg) {
            Ok(Decoded::NeedMore(n)) => {
                assert!(n > rest.len(), "NeedMore must ask for more than is buffered");
                assert!(n <= cfg.pdu_len_max.max(128) as usize, "never ask to buffer past the limit");
                // A partial data PDU's start agrees with the length decode waits for.
                match start {
                    Ok(Some(st)) => {
                        assert_eq!(st.pdu_len(), n, "data start and NeedMore disagree on the PDU length");
                        assert!(st.data_at <= rest.len() && st.data_at < n);
                    }
                    Ok(None) => {}
                    Err(e) => assert!((1..=6).contains(&e.fes), "FES must be a defined code"),
                }
                return;
            }
            Ok(Decoded::Pdu(p, used)) => {
                assert_eq!(start, Ok(None), "a whole PDU is never a partial data start");
                assert!(used > 0 && used <= rest.len());
                assert!(used <= cfg.pdu_len_max.max(128 + 24) as usize);
                reencode_check(&p, &cfg);
                rest = &rest[used..];
            }
            Err(e) => {
                assert!((1..=6).contains(&e.fes), "FES must be a defined code");
                return;
            }
        }
    }
}

/// Re-encoding a decoded PDU and decoding it again gives the same PDU.
fn reencode_check(p: &Pdu<'_>, cfg: &FrameConfig) {
    let tx = TxConfig { hdgst: cfg.hdgst, ddgst: cfg.ddgst, data_align: cfg.rx_data_align };
    let mut out = Vec::new();
    match *p {
        Pdu::CapsuleResp(c) => pdu::encode_capsule_resp(&mut out, &c, &tx),
        Pdu::R2T(h) => pdu::encode_r2t(&mut out, &h, &tx),
        Pdu::CapsuleCmd { sqe, data, data_digest_ok: true } => pdu::encode_capsule_cmd(&mut out, &sqe, data, &tx),
        Pdu::H2CData { hdr, flags, data, data_digest_ok: true } => {
            pdu::encode_data_pdu(&mut out, false, flags & 0x0c, &hdr, data, &tx)
        }
        Pdu::C2HData { hdr, flags, data, data_digest_ok: true } => {
            pdu::encode_data_pdu(&mut out, true, flags & 0x0c, &hdr, data, &tx)
        }
        _ => return,
    }
    match pdu::decode(&out, cfg) {
        Ok(Decoded::Pdu(q, n)) => {
            assert_eq!(n, out.len());
            match (p, &q) {
                (Pdu::H2CData { hdr: a, data: x, .. }, Pdu::H2CData { hdr: b, data: y, .. })
                | (Pdu::C2HData { hdr: a, data: x, .. }, Pdu::C2HData { hdr: b, data: y, .. }) => {
                    assert_eq!((a, x), (b, y))
                }
                _ => assert_eq!(p, &q),
            }
        }
        other => panic!("re-encoded PDU does not decode: {other:?}"),
    }
}

/// Parse every admin data structure a host reads from a target.
pub fn admin_structures(data: &[u8]) {
    let mut page = [0u8; 4096];
    let n = data.len().min(4096);
    page[..n].copy_from_slice(&data[..n]);
    if let Some(c) = crate::identify::IdentifyController::parse(&page) {
        let _ = c.mdts_bytes();
        let _ = c.in_capsule_data_bytes();
        assert_eq!(crate::identify::IdentifyController::parse(&c.encode()[..]).map(|d| d.cntlid), Some(c.cntlid));
    }
    if let Some(ns) = crate::identify::IdentifyNamespace::parse(&page) {
        let _ = ns.block_size();
        let _ = ns.current_lbaf();
    }
    let _ = crate::identify::parse_ns_id_descriptors(data);
    let _ = crate::identify::parse_ns_list(data);
    if let Some(h) = crate::log::parse_discovery_header(data) {
        let entries = crate::log::parse_discovery_entries(data, h.numrec);
        assert!(entries.len() as u64 <= h.numrec);
    }
    let _ = crate::log::parse_ana_log(data);
    let _ = crate::fabrics::ConnectData::parse(data);
}

#[cfg(test)]
mod tests {
    #[test]
    fn smoke() {
        super::pdu_stream(&[]);
        super::pdu_stream(&[0, 4, 0, 72, 0, 72, 0, 0, 0]);
        super::admin_structures(&[0xff; 5000]);
    }
}
