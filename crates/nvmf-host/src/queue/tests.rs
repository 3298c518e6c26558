//! Unit tests of the host queue: bytes in as a controller would send them,
//! PDUs out decoded as a controller would.

use super::*;
use nvmf_proto::opcodes::{admin, io};
use nvmf_proto::pdu::{fes, flags, DataHdr, IcResp};
use nvmf_proto::status::generic;
use nvmf_proto::{Decoded, Pdu, PduError};

const MAXH2CDATA: u32 = 8192;

fn ctrl_frame(hd: bool, dd: bool) -> FrameConfig {
    FrameConfig { role: Role::Controller, hdgst: hd, ddgst: dd, pdu_len_max: 1 << 24, rx_data_align: 4 }
}
fn ctrl_tx(hd: bool, dd: bool) -> TxConfig {
    TxConfig { hdgst: hd, ddgst: dd, data_align: 4 }
}

/// A queue past IC with the given digests.
fn ready(cfg: QueueConfig) -> HostQueue {
    ready_maxh2c(cfg, MAXH2CDATA)
}

fn ready_maxh2c(mut cfg: QueueConfig, maxh2cdata: u32) -> HostQueue {
    cfg.queue_depth = cfg.queue_depth.max(1);
    let (hd, dd) = (cfg.hdr_digest, cfg.data_digest);
    let mut q = HostQueue::new(cfg);
    assert_eq!(q.output().len(), 128);
    assert_eq!(q.output()[0], 0x00);
    q.clear_output();
    let mut b = Vec::new();
    let dg = (hd as u8) | ((dd as u8) << 1);
    pdu::encode_ic_resp(&mut b, &IcResp { pfv: 0, cpda: 0, dgst: dg, maxh2cdata });
    assert_eq!(q.receive(&b), Ok(128));
    assert!(q.is_ready());
    q
}

/// Decode every PDU in the host's output as the controller would.
fn host_pdus(q: &mut HostQueue, hd: bool, dd: bool) -> Vec<(Pdu<'static>, Vec<u8>)> {
    let bytes: &'static [u8] = Vec::leak(q.output().to_vec());
    q.clear_output();
    let mut at = 0;
    let mut v = Vec::new();
    while at < bytes.len() {
        match pdu::decode(&bytes[at..], &ctrl_frame(hd, dd)).unwrap() {
            Decoded::Pdu(p, n) => {
                v.push((p, bytes[at..at + n].to_vec()));
                at += n;
            }
            Decoded::NeedMore(_) => panic!("partial PDU in output"),
        }
    }
    v
}

fn resp(cid: u16, st: Status, tx: &TxConfig) -> Vec<u8> {
    let mut b = Vec::new();
    pdu::encode_capsule_resp(&mut b, &Cqe::new(cid, st), tx);
    b
}

fn term_req_of(q: &mut HostQueue) -> (u16, u32) {
    let out = q.output().to_vec();
    q.clear_output();
    match pdu::decode(&out, &ctrl_frame(false, false)).unwrap() {
        Decoded::Pdu(Pdu::TermReq { fes, fei, .. }, _) => (fes, fei),
        other => panic!("expected a TermReq, got {other:?}"),
    }
}

#[test]
fn ic_req_fields_and_refusal_before_icresp() {
    let cfg = QueueConfig { hdr_digest: true, data_digest: true, hpda: 7, maxr2t: 3, ..QueueConfig::admin() };
    let mut q = HostQueue::new(cfg);
    let out = q.output().to_vec();
    let Decoded::Pdu(Pdu::IcReq(ic), 128) = pdu::decode(&out, &FrameConfig::before_ic(Role::Controller)).unwrap()
    else {
        panic!()
    };
    assert_eq!(ic, IcReq { pfv: 0, hpda: 7, dgst: 3, maxr2t: 3 });
    let e = q.submit(Request::read(Sqe::new(admin::IDENTIFY, 0, 0), vec![0; 16]).with_tag(9), 0).unwrap_err();
    assert_eq!((e.kind, e.buf.len(), e.tag), (SubmitErrorKind::NotReady, 16, 9));
}

#[test]
fn bad_icresp_gets_termreq_with_field_offset() {
    let cases = [
        (IcResp { pfv: 1, cpda: 0, dgst: 0, maxh2cdata: 8192 }, 8),
        (IcResp { pfv: 0, cpda: 32, dgst: 0, maxh2cdata: 8192 }, 10),
        (IcResp { pfv: 0, cpda: 0, dgst: 1, maxh2cdata: 8192 }, 11),
        (IcResp { pfv: 0, cpda: 0, dgst: 0, maxh2cdata: 4095 }, 12),
    ];
    for (ic, want_fei) in cases {
        let mut q = HostQueue::new(QueueConfig::admin());
        q.clear_output();
        let mut b = Vec::new();
        pdu::encode_ic_resp(&mut b, &ic);
        let e = q.receive(&b).unwrap_err();
        assert!(matches!(e, QueueError::Protocol(PduError { fes: 1, fei, .. }) if fei == want_fei), "{e:?}");
        assert_eq!(term_req_of(&mut q), (fes::INVALID_HEADER_FIELD, want_fei));
        assert!(!q.is_ready());
    }
}

#[test]
fn protocol_error_message_names_the_reason_fes_and_fei() {
    let mut q = ready(QueueConfig::io(1, 4));
    let cid = q.submit(Request::write(Sqe::rw(io::WRITE, 0, 1, 0, 1), vec![0; 512]), 0).unwrap();
    q.clear_output();
    let mut b = Vec::new();
    pdu::encode_r2t(&mut b, &DataHdr { cccid: cid, ttag: 1, offset: 0, length: 0 }, &TxConfig::default());
    let e = q.receive(&b).unwrap_err();
    assert_eq!(e.to_string(), "controller protocol error: R2T of zero length (FES 0x1, FEI 16); we sent an H2CTermReq");
}

#[test]
fn pdu_before_icresp_is_sequence_error() {
    let mut q = HostQueue::new(QueueConfig::admin());
    q.clear_output();
    // A CapsuleResp before IC: the pre-IC framer accepts its length, the queue rejects it.
    let b = resp(0, Status::SUCCESS, &TxConfig::default());
    assert!(q.receive(&b).is_err());
    assert_eq!(term_req_of(&mut q).0, fes::PDU_SEQUENCE_ERROR);
}

#[test]
fn read_reassembles_c2h_data_and_completes_on_resp() {
    let mut q = ready(QueueConfig::io(1, 4));
    let cid = q.submit(Request::read(Sqe::rw(io::READ, 0, 1, 8, 2), vec![0; 1024]).with_tag(77), 5).unwrap();
    let pdus = host_pdus(&mut q, false, false);
    let Pdu::CapsuleCmd { sqe, data, .. } = pdus[0].0 else { panic!() };
    assert_eq!((sqe.cid, sqe.opcode, sqe.slba(), data.len()), (cid, io::READ, 8, 0));
    assert!(sqe.sgl1.is_transport());
    assert_eq!(sqe.sgl1.length, 1024);
    let tx = ctrl_tx(false, false);
    let mut b = Vec::new();
    pdu::encode_data_pdu(&mut b, true, 0, &DataHdr { cccid: cid, offset: 0, length: 512, ttag: 0 }, &[1; 512], &tx);
    let h = DataHdr { cccid: cid, offset: 512, length: 512, ttag: 0 };
    pdu::encode_data_pdu(&mut b, true, flags::LAST_PDU, &h, &[2; 512], &tx);
    b.extend(resp(cid, Status::SUCCESS, &tx));
    // Byte by byte: partial PDUs are left unconsumed.
    let mut buf = Vec::new();
    for &x in &b {
        buf.push(x);
        let n = q.receive(&buf).unwrap();
        buf.drain(..n);
    }
    assert!(buf.is_empty());
    let c = q.pop_completion().unwrap();
    assert_eq!((c.cid, c.tag, c.fate), (cid, 77, Fate::Known));
    assert!(c.is_success());
    assert_eq!(&c.buf[..512], &[1; 512]);
    assert_eq!(&c.buf[512..], &[2; 512]);
    assert_eq!(q.outstanding(), 0);
    assert!(q.pop_completion().is_none());
}

/// A 128 KiB read answered by two C2HData PDUs (the second with SUCCESS).
fn large_read(q: &mut HostQueue, dd: bool, hd: bool) -> (u16, Vec<u8>, Vec<u8>) {
    let len = 128 * 1024;
    let cid = q.submit(Request::read(Sqe::rw(io::READ, 0, 1, 0, 256), vec![0; len]), 0).unwrap();
    q.clear_output();
    let data: Vec<u8> = (0..len as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let tx = ctrl_tx(hd, dd);
    let mut b = Vec::new();
    let half = len as u32 / 2;
    let h = DataHdr { cccid: cid, offset: 0, length: half, ttag: 0 };
    pdu::encode_data_pdu(&mut b, true, 0, &h, &data[..half as usize], &tx);
    let h = DataHdr { cccid: cid, offset: half, length: half, ttag: 0 };
    pdu::encode_data_pdu(&mut b, true, flags::LAST_PDU | flags::SUCCESS, &h, &data[half as usize..], &tx);
    (cid, data, b)
}

#[test]
fn c2h_payload_arrives_in_pieces_and_through_the_sink() {
    for (hd, dd) in [(false, false), (true, true), (false, true)] {
        for piece in [1usize, 100, 4096, 20_000, 70_000] {
            for sink in [false, true] {
                let mut q = ready(QueueConfig { hdr_digest: hd, data_digest: dd, ..QueueConfig::io(1, 4) });
                let (cid, data, wire) = large_read(&mut q, dd, hd);
                let (mut fed, mut buf, mut sunk) = (0, Vec::new(), 0);
                while fed < wire.len() {
                    if sink && buf.is_empty() {
                        if let Some(dst) = q.recv_sink() {
                            assert!(dst.len() >= SINK_MIN_BYTES);
                            let n = dst.len().min(piece).min(wire.len() - fed);
                            dst[..n].copy_from_slice(&wire[fed..fed + n]);
                            q.sink_received(n).unwrap();
                            fed += n;
                            sunk += n;
                            continue;
                        }
                    }
                    let n = piece.min(wire.len() - fed);
                    buf.extend_from_slice(&wire[fed..fed + n]);
                    fed += n;
                    let used = q.receive(&buf).unwrap();
                    buf.drain(..used);
                    // Never more buffered than one piece beyond a PDU header.
                    assert!(buf.len() < piece + 128, "hd {hd} dd {dd} piece {piece}: {} buffered", buf.len());
                }
                assert!(buf.is_empty());
                assert_eq!(sink, sunk > 0, "hd {hd} dd {dd} piece {piece}");
                let c = q.pop_completion().expect("completed by the SUCCESS flag");
                assert_eq!(c.cid, cid);
                assert!(c.is_success(), "hd {hd} dd {dd} piece {piece} sink {sink}: {:?}", c.cqe.status);
                assert!(c.buf == data, "hd {hd} dd {dd} piece {piece} sink {sink}: data differs");
                assert!(q.recv_sink().is_none());
            }
        }
    }
}

#[test]
fn streamed_c2h_with_a_bad_data_digest_fails_the_command_not_the_queue() {
    for sink in [false, true] {
        let mut q = ready(QueueConfig { data_digest: true, ..QueueConfig::io(1, 4) });
        let (cid, _, mut wire) = large_read(&mut q, true, false);
        let last = wire.len() - 1;
        wire[last] ^= 0x40; // the second PDU's data digest
        let mut at = 0;
        let mut buf = Vec::new();
        while at < wire.len() {
            if sink && buf.is_empty() {
                if let Some(dst) = q.recv_sink() {
                    let n = dst.len().min(wire.len() - at);
                    dst[..n].copy_from_slice(&wire[at..at + n]);
                    q.sink_received(n).unwrap();
                    at += n;
                    continue;
                }
            }
            let n = 3000.min(wire.len() - at);
            buf.extend_from_slice(&wire[at..at + n]);
            at += n;
            let used = q.receive(&buf).unwrap();
            buf.drain(..used);
        }
        let c = q.pop_completion().unwrap();
        assert_eq!(c.cid, cid);
        assert_eq!(c.cqe.status, Status::new(sct::GENERIC, generic::TRANSIENT_TRANSPORT_ERROR));
        assert!(q.is_ready(), "a data digest error fails the command only");
    }
}

#[test]
fn streamed_c2h_header_is_checked_before_any_payload() {
    let mut q = ready(QueueConfig::io(1, 4));
    let cid = q.submit(Request::read(Sqe::rw(io::READ, 0, 1, 0, 8), vec![0; 4096]), 0).unwrap();
    q.clear_output();
    // Beyond the buffer: refused from the header, though the payload is not here.
    let mut b = Vec::new();
    let h = DataHdr { cccid: cid, offset: 0, length: 8192, ttag: 0 };
    pdu::encode_data_pdu(&mut b, true, 0, &h, &[7; 8192], &ctrl_tx(false, false));
    assert!(q.receive(&b[..100]).is_err());
    assert_eq!(term_req_of(&mut q).0, fes::DATA_OUT_OF_RANGE);
    assert!(q.recv_sink().is_none());
    let c = q.pop_completion().unwrap();
    assert_eq!((c.cid, c.fate), (cid, Fate::Unknown));
}

#[test]
fn failing_mid_stream_hands_the_buffer_back_once() {
    let mut q = ready(QueueConfig::io(1, 4));
    let (cid, _, wire) = large_read(&mut q, false, false);
    assert_eq!(q.receive(&wire[..30_000]), Ok(30_000));
    assert!(q.recv_sink().is_some());
    q.fail("connection lost");
    assert!(q.recv_sink().is_none());
    let c = q.pop_completion().unwrap();
    assert_eq!((c.cid, c.fate, c.buf.len()), (cid, Fate::Unknown, 128 * 1024));
    assert!(q.pop_completion().is_none());
    assert!(q.receive(&wire[30_000..]).is_err());
}

#[test]
fn success_flag_completes_without_capsule_resp_and_short_read_is_an_error() {
    let mut q = ready(QueueConfig::io(1, 4));
    let tx = ctrl_tx(false, false);
    let cid = q.submit(Request::read(Sqe::rw(io::READ, 0, 1, 0, 1), vec![0; 512]), 0).unwrap();
    let mut b = Vec::new();
    let h = DataHdr { cccid: cid, offset: 0, length: 512, ttag: 0 };
    pdu::encode_data_pdu(&mut b, true, flags::LAST_PDU | flags::SUCCESS, &h, &[3; 512], &tx);
    assert_eq!(q.receive(&b), Ok(b.len()));
    let c = q.pop_completion().unwrap();
    assert!(c.is_success());
    assert_eq!(c.buf, vec![3; 512]);

    // The controller claims success but sent half the data.
    let cid = q.submit(Request::read(Sqe::rw(io::READ, 0, 1, 0, 2), vec![0; 1024]), 0).unwrap();
    let mut b = Vec::new();
    let h = DataHdr { cccid: cid, offset: 0, length: 512, ttag: 0 };
    pdu::encode_data_pdu(&mut b, true, flags::LAST_PDU, &h, &[3; 512], &tx);
    b.extend(resp(cid, Status::SUCCESS, &tx));
    q.receive(&b).unwrap();
    let c = q.pop_completion().unwrap();
    assert_eq!(c.status().sc, generic::DATA_TRANSFER_ERROR);
}

#[test]
fn small_write_goes_in_capsule_large_write_waits_for_r2t_and_splits_at_maxh2cdata() {
    let mut cfg = QueueConfig::io(1, 4);
    cfg.in_capsule_data_max_bytes = 4096;
    let mut q = ready(cfg);
    let data: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
    let cid = q.submit(Request::write(Sqe::rw(io::WRITE, 0, 1, 0, 8), data.clone()), 0).unwrap();
    let pdus = host_pdus(&mut q, false, false);
    let Pdu::CapsuleCmd { sqe, data: d, .. } = pdus[0].0 else { panic!() };
    assert!(sqe.sgl1.is_in_capsule());
    assert_eq!((sqe.sgl1.length, d), (4096, &data[..]));
    let tx = ctrl_tx(false, false);
    q.receive(&resp(cid, Status::SUCCESS, &tx)).unwrap();
    assert!(q.pop_completion().unwrap().is_success());

    let big: Vec<u8> = (0..20000u32).map(|i| (i * 7) as u8).collect();
    let cid = q.submit(Request::write(Sqe::rw(io::WRITE, 0, 1, 0, 40), big.clone()), 0).unwrap();
    let pdus = host_pdus(&mut q, false, false);
    let Pdu::CapsuleCmd { sqe, data: d, .. } = pdus[0].0 else { panic!() };
    assert!(sqe.sgl1.is_transport() && d.is_empty());
    // Two R2Ts: 0..12000 and 12000..20000.
    let mut b = Vec::new();
    pdu::encode_r2t(&mut b, &DataHdr { cccid: cid, ttag: 5, offset: 0, length: 12000 }, &tx);
    pdu::encode_r2t(&mut b, &DataHdr { cccid: cid, ttag: 6, offset: 12000, length: 8000 }, &tx);
    q.receive(&b).unwrap();
    let pdus = host_pdus(&mut q, false, false);
    let got: Vec<(u16, u32, u32, bool)> = pdus
        .iter()
        .map(|(p, _)| match p {
            Pdu::H2CData { hdr, flags: f, data, .. } => {
                assert_eq!(*data, &big[hdr.offset as usize..(hdr.offset + hdr.length) as usize]);
                (hdr.ttag, hdr.offset, hdr.length, f & flags::LAST_PDU != 0)
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(got, vec![(5, 0, 8192, false), (5, 8192, 3808, true), (6, 12000, 8000, true)]);
    // A third R2T would ask for more than the command's data.
    let mut b = Vec::new();
    pdu::encode_r2t(&mut b, &DataHdr { cccid: cid, ttag: 7, offset: 0, length: 100 }, &tx);
    assert!(q.receive(&b).is_err());
    assert_eq!(term_req_of(&mut q).0, fes::R2T_LIMIT_EXCEEDED);
    let c = q.pop_completion().unwrap();
    assert_eq!((c.cid, c.fate, c.buf.len()), (cid, Fate::Unknown, 20000));
}

/// Flatten lent output the way a driver's socket would see it; returns
/// the bytes and the tokens of the lent pieces.
fn take_all(q: &mut HostQueue) -> (Vec<u8>, Vec<u64>) {
    let (mut bytes, mut tokens) = (Vec::new(), Vec::new());
    q.take_output(|p| match p {
        OutputPiece::Bytes(b) => bytes.extend_from_slice(b),
        OutputPiece::Lent { data, token } => {
            bytes.extend_from_slice(data);
            tokens.push(token);
        }
    });
    (bytes, tokens)
}

#[test]
fn lent_write_payloads_hold_the_completion_until_sent() {
    let cfg = QueueConfig { h2c_data_borrowed: true, data_digest: true, ..QueueConfig::io(1, 4) };
    let mut q = ready_maxh2c(QueueConfig { in_capsule_data_max_bytes: 32768, ..cfg }, 16384);
    let tx = ctrl_tx(false, true);
    let frame = FrameConfig { role: Role::Controller, ..ctrl_frame(false, true) };
    // In-capsule 20000 bytes (over LEND_MIN_BYTES): header copied, data lent.
    let small: Vec<u8> = (0..20000u32).map(|i| (i * 3) as u8).collect();
    let cid = q.submit(Request::write(Sqe::rw(io::WRITE, 0, 1, 0, 40), small.clone()), 0).unwrap();
    assert!(q.has_lent_output());
    let (bytes, tokens) = take_all(&mut q);
    assert!(!q.has_lent_output() && tokens.len() == 1);
    let Ok(Decoded::Pdu(Pdu::CapsuleCmd { data, data_digest_ok, .. }, n)) = pdu::decode(&bytes, &frame) else {
        panic!("bad capsule")
    };
    assert_eq!((data, data_digest_ok, n), (&small[..], true, bytes.len()));
    // The controller answers before the driver confirmed the send: the
    // completion (and the buffer) waits for output_sent.
    q.receive(&resp(cid, Status::SUCCESS, &tx)).unwrap();
    assert!(q.pop_completion().is_none());
    assert_eq!(q.outstanding(), 1);
    q.output_sent(tokens[0]);
    let c = q.pop_completion().unwrap();
    assert!(c.is_success() && c.buf == small);

    // R2T path: 40000 bytes split at MAXH2CDATA (16384): two full chunks
    // are lent, the 7232-byte tail (under LEND_MIN_BYTES) is copied.
    let big: Vec<u8> = (0..40000u32).map(|i| (i * 7) as u8).collect();
    let cid = q.submit(Request::write(Sqe::rw(io::WRITE, 0, 1, 0, 80), big.clone()), 0).unwrap();
    let (bytes, tokens) = take_all(&mut q);
    assert!(tokens.is_empty(), "over the in-capsule limit: no data in the capsule");
    assert!(matches!(pdu::decode(&bytes, &frame), Ok(Decoded::Pdu(Pdu::CapsuleCmd { .. }, _))));
    let mut b = Vec::new();
    pdu::encode_r2t(&mut b, &DataHdr { cccid: cid, ttag: 1, offset: 0, length: 40000 }, &tx);
    q.receive(&b).unwrap();
    let (bytes, tokens) = take_all(&mut q);
    assert_eq!(tokens, vec![cid as u64, cid as u64]);
    let mut at = 0;
    let mut got = Vec::new();
    while at < bytes.len() {
        let Ok(Decoded::Pdu(Pdu::H2CData { data, data_digest_ok: true, .. }, n)) = pdu::decode(&bytes[at..], &frame)
        else {
            panic!("bad H2CData")
        };
        got.extend_from_slice(data);
        at += n;
    }
    assert_eq!(got, big);
    q.receive(&resp(cid, Status::SUCCESS, &tx)).unwrap();
    q.output_sent(tokens[0]);
    assert!(q.pop_completion().is_none(), "one piece still lent");
    q.output_sent(tokens[1]);
    assert!(q.pop_completion().unwrap().is_success());
}

#[test]
fn failing_with_lent_payloads_parks_until_release() {
    let cfg = QueueConfig { h2c_data_borrowed: true, in_capsule_data_max_bytes: 32768, ..QueueConfig::io(1, 4) };
    let mut q = ready(cfg);
    let cid = q.submit(Request::write(Sqe::rw(io::WRITE, 0, 1, 0, 40), vec![7u8; 20000]), 0).unwrap();
    let (_, tokens) = take_all(&mut q);
    assert_eq!(tokens.len(), 1);
    q.fail("connection lost");
    assert!(q.pop_completion().is_none(), "buffer still lent");
    // A late answer for the parked command is not outstanding any more.
    let tx = ctrl_tx(false, false);
    q.release_output();
    let c = q.pop_completion().unwrap();
    assert_eq!((c.cid, c.fate, c.buf.len()), (cid, Fate::Unknown, 20000));
    assert!(q.receive(&resp(cid, Status::SUCCESS, &tx)).is_err());
    assert!(q.pop_completion().is_none(), "completed exactly once");
}

#[test]
fn r2t_out_of_range_is_fes_4() {
    let mut q = ready(QueueConfig::io(1, 4));
    let cid = q.submit(Request::write(Sqe::rw(io::WRITE, 0, 1, 0, 1), vec![0; 512]), 0).unwrap();
    q.clear_output();
    let mut b = Vec::new();
    pdu::encode_r2t(&mut b, &DataHdr { cccid: cid, ttag: 1, offset: 256, length: 512 }, &ctrl_tx(false, false));
    assert!(matches!(q.receive(&b), Err(QueueError::Protocol(PduError { fes: 4, .. }))));
    assert_eq!(term_req_of(&mut q), (fes::DATA_OUT_OF_RANGE, 0));
}

#[test]
fn c2h_data_out_of_range_fails_every_command_once() {
    let mut q = ready(QueueConfig::io(1, 8));
    let a = q.submit(Request::read(Sqe::rw(io::READ, 0, 1, 0, 1), vec![0; 512]).with_tag(1), 0).unwrap();
    let w = q.submit(Request::write(Sqe::rw(io::WRITE, 0, 1, 0, 1), vec![0; 512]).with_tag(2), 0).unwrap();
    q.clear_output();
    let mut b = Vec::new();
    let h = DataHdr { cccid: a, offset: 0, length: 1024, ttag: 0 };
    pdu::encode_data_pdu(&mut b, true, flags::LAST_PDU, &h, &[0; 1024], &ctrl_tx(false, false));
    assert!(q.receive(&b).is_err());
    assert_eq!(term_req_of(&mut q).0, fes::DATA_OUT_OF_RANGE);
    let mut cids = vec![];
    while let Some(c) = q.pop_completion() {
        assert_eq!(c.fate, Fate::Unknown);
        assert_eq!(c.status(), Status::new(sct::PATH, path::ABORTED_BY_HOST));
        cids.push((c.cid, c.tag));
    }
    cids.sort();
    assert_eq!(cids, vec![(a, 1), (w, 2)]);
    // Failed for good: no more output, no more completions, submits refused.
    assert!(q.receive(&b).is_err());
    assert!(q.output().is_empty());
    assert_eq!(q.submit(Request::new(Sqe::new(io::FLUSH, 0, 1)), 0).unwrap_err().kind, SubmitErrorKind::Failed);
    assert!(q.pop_completion().is_none());
}

#[test]
fn data_digest_error_fails_only_that_command() {
    let cfg = QueueConfig { hdr_digest: true, data_digest: true, ..QueueConfig::io(1, 4) };
    let mut q = ready(cfg);
    let tx = ctrl_tx(true, true);
    let a = q.submit(Request::read(Sqe::rw(io::READ, 0, 1, 0, 1), vec![0; 512]), 0).unwrap();
    let b_cid = q.submit(Request::read(Sqe::rw(io::READ, 0, 1, 1, 1), vec![0; 512]), 0).unwrap();
    let pdus = host_pdus(&mut q, true, true);
    assert_eq!(pdus.len(), 2, "host PDUs carry header digests the controller accepts");
    let mut b = Vec::new();
    let h = DataHdr { cccid: a, offset: 0, length: 512, ttag: 0 };
    pdu::encode_data_pdu(&mut b, true, flags::LAST_PDU, &h, &[9; 512], &tx);
    let last = b.len() - 1;
    b[last] ^= 0xff; // corrupt the data digest
    b.extend(resp(a, Status::SUCCESS, &tx));
    let h = DataHdr { cccid: b_cid, offset: 0, length: 512, ttag: 0 };
    pdu::encode_data_pdu(&mut b, true, flags::LAST_PDU | flags::SUCCESS, &h, &[8; 512], &tx);
    assert_eq!(q.receive(&b), Ok(b.len()));
    let c = q.pop_completion().unwrap();
    assert_eq!((c.cid, c.fate), (a, Fate::Known));
    assert_eq!(c.status().sc, generic::TRANSIENT_TRANSPORT_ERROR);
    let c = q.pop_completion().unwrap();
    assert_eq!(c.cid, b_cid);
    assert!(c.is_success());
    assert_eq!(c.buf, vec![8; 512]);
    assert!(q.is_ready());
}

#[test]
fn header_digest_error_is_fes_3() {
    let cfg = QueueConfig { hdr_digest: true, ..QueueConfig::io(1, 4) };
    let mut q = ready(cfg);
    let cid = q.submit(Request::new(Sqe::new(io::FLUSH, 0, 1)), 0).unwrap();
    q.clear_output();
    let mut b = resp(cid, Status::SUCCESS, &ctrl_tx(true, false));
    b[10] ^= 1;
    assert!(matches!(q.receive(&b), Err(QueueError::Protocol(PduError { fes: 3, .. }))));
    assert_eq!(term_req_of(&mut q).0, fes::HEADER_DIGEST_ERROR);
    assert_eq!(q.pop_completion().unwrap().fate, Fate::Unknown);
}

#[test]
fn c2h_term_req_fails_the_queue_without_reply() {
    let mut q = ready(QueueConfig::io(1, 4));
    q.submit(Request::new(Sqe::new(io::FLUSH, 0, 1)), 0).unwrap();
    q.clear_output();
    let mut b = Vec::new();
    pdu::encode_term_req(&mut b, true, fes::INVALID_HEADER_FIELD, 3, &[0; 8]);
    assert_eq!(q.receive(&b), Err(QueueError::TerminatedByController { fes: 1, fei: 3 }));
    assert!(q.output().is_empty());
    assert_eq!(q.pop_completion().unwrap().fate, Fate::Unknown);
}

#[test]
fn unknown_and_stale_cids_are_rejected() {
    let mut q = ready(QueueConfig::io(1, 1));
    let tx = ctrl_tx(false, false);
    let cid = q.submit(Request::new(Sqe::new(io::FLUSH, 0, 1)), 0).unwrap();
    assert_eq!(q.submit(Request::new(Sqe::new(io::FLUSH, 0, 1)), 0).unwrap_err().kind, SubmitErrorKind::QueueFull);
    q.receive(&resp(cid, Status::SUCCESS, &tx)).unwrap();
    q.pop_completion().unwrap();
    let cid2 = q.submit(Request::new(Sqe::new(io::FLUSH, 0, 1)), 0).unwrap();
    q.clear_output();
    assert_ne!(cid, cid2, "same slot, new generation");
    // A duplicate answer for the first command must not complete the second.
    assert!(q.receive(&resp(cid, Status::SUCCESS, &tx)).is_err());
    assert_eq!(term_req_of(&mut q), (fes::INVALID_HEADER_FIELD, 20));
    let c = q.pop_completion().unwrap();
    assert_eq!((c.cid, c.fate), (cid2, Fate::Unknown));
}

#[test]
fn timeouts_are_reported_once_and_zero_means_never() {
    let mut q = ready(QueueConfig { command_timeout_ms: 100, ..QueueConfig::admin() });
    let a = q.submit(Request::new(Sqe::new(admin::KEEP_ALIVE, 0, 0)), 1000).unwrap();
    let _aer = q.submit(Request::new(Sqe::new(admin::ASYNC_EVENT_REQUEST, 0, 0)).with_timeout_ms(0), 1000).unwrap();
    let b = q.submit(Request::new(Sqe::new(admin::KEEP_ALIVE, 0, 0)).with_timeout_ms(500), 1000).unwrap();
    let mut exp = Vec::new();
    assert_eq!(q.on_tick(1099, &mut exp), 0);
    assert_eq!(q.on_tick(1100, &mut exp), 1);
    assert_eq!(exp, vec![a]);
    assert_eq!(q.on_tick(1200, &mut exp), 0);
    assert_eq!(q.on_tick(u64::MAX - 1, &mut exp), 1);
    assert_eq!(exp, vec![a, b]);
    assert_eq!(q.outstanding(), 3);
    q.fail("timeout recovery");
    assert_eq!(q.completions_ready(), 3);
}

#[test]
fn connect_is_in_capsule_even_without_io_capsule_room() {
    let mut q = ready(QueueConfig::io(3, 4));
    let c = nvmf_proto::fabrics::ConnectCmd { recfmt: 0, qid: 3, sqsize: 3, cattr: 0, kato_ms: 0 };
    q.submit(Request::write(c.to_sqe(0), vec![0; 1024]), 0).unwrap();
    let pdus = host_pdus(&mut q, false, false);
    let Pdu::CapsuleCmd { sqe, data, .. } = pdus[0].0 else { panic!() };
    assert!(sqe.sgl1.is_in_capsule());
    assert_eq!(data.len(), 1024);
}

#[test]
fn hpda_alignment_is_enforced_on_c2h_data() {
    let mut q = ready(QueueConfig { hpda: 7, ..QueueConfig::io(1, 2) });
    let cid = q.submit(Request::read(Sqe::rw(io::READ, 0, 1, 0, 1), vec![0; 8]), 0).unwrap();
    q.clear_output();
    let h = DataHdr { cccid: cid, offset: 0, length: 8, ttag: 0 };
    let mut ok = Vec::new();
    pdu::encode_data_pdu(
        &mut ok,
        true,
        flags::LAST_PDU | flags::SUCCESS,
        &h,
        &[1; 8],
        &TxConfig { data_align: 32, ..Default::default() },
    );
    assert_eq!(ok[3], 32);
    assert_eq!(q.receive(&ok), Ok(ok.len()));
    assert!(q.pop_completion().unwrap().is_success());
    let cid = q.submit(Request::read(Sqe::rw(io::READ, 0, 1, 0, 1), vec![0; 8]), 0).unwrap();
    q.clear_output();
    let mut bad = Vec::new();
    let h = DataHdr { cccid: cid, offset: 0, length: 8, ttag: 0 };
    pdu::encode_data_pdu(&mut bad, true, flags::LAST_PDU, &h, &[1; 8], &TxConfig::default());
    assert!(q.receive(&bad).is_err());
    assert_eq!(term_req_of(&mut q), (fes::INVALID_HEADER_FIELD, 3));
}

#[test]
fn random_bytes_never_panic() {
    // A tiny deterministic generator: the queue must fail cleanly or wait, never panic.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..2000 {
        let mut q = ready(QueueConfig::io(1, 4));
        let _ = q.submit(Request::read(Sqe::rw(io::READ, 0, 1, 0, 1), vec![0; 512]), 0);
        let _ = q.submit(Request::write(Sqe::rw(io::WRITE, 0, 1, 0, 1), vec![0; 512]), 0);
        let mut b = vec![0u8; 64];
        for byte in b.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *byte = x as u8;
        }
        b[0] = [0x01, 0x03, 0x05, 0x07, 0x09][(x % 5) as usize];
        b[2] = [128, 24, 24, 24, 24][(x % 5) as usize];
        b[4..8].copy_from_slice(&((x >> 8) as u32 % 200).to_le_bytes());
        let _ = q.receive(&b);
    }
}

proptest::proptest! {
    /// Whatever the controller sends after IC, the queue consumes whole
    /// PDUs or fails cleanly: no panic, every command completes once.
    #[test]
    fn arbitrary_controller_bytes(chunks in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), 1..8)) {
        let mut q = ready(QueueConfig { in_capsule_data_max_bytes: 64, ..QueueConfig::io(1, 4) });
        let mut submitted = 0;
        for (i, req) in [
            Request::read(Sqe::rw(io::READ, 0, 1, 0, 1), vec![0; 512]),
            Request::write(Sqe::rw(io::WRITE, 0, 1, 0, 1), vec![0; 512]),
            Request::write(Sqe::rw(io::WRITE, 0, 1, 0, 1), vec![0; 32]),
            Request::new(Sqe::new(io::FLUSH, 0, 1)),
        ].into_iter().enumerate() {
            q.submit(req.with_tag(i as u64), 0).unwrap();
            submitted += 1;
        }
        let mut rx = Vec::new();
        let mut completed = std::collections::HashSet::new();
        for c in chunks {
            rx.extend_from_slice(&c);
            match q.receive(&rx) {
                Ok(n) => { rx.drain(..n); }
                Err(_) => break,
            }
            while let Some(c) = q.pop_completion() {
                proptest::prop_assert!(completed.insert(c.tag), "completed twice");
            }
            q.clear_output();
        }
        q.fail("test over");
        while let Some(c) = q.pop_completion() {
            proptest::prop_assert!(completed.insert(c.tag), "completed twice");
        }
        proptest::prop_assert_eq!(completed.len(), submitted);
    }
}
