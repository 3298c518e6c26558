//! NVMe/TCP PDU encoders: every PDU either side sends, with the digests and
//! the data alignment negotiated at IC.

use super::*;
use crate::cqe::Cqe;
use crate::digest::crc32c;
use crate::sqe::Sqe;

/// Digest settings and the receiver's alignment, for encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TxConfig {
    pub hdgst: bool,
    pub ddgst: bool,
    /// Alignment the receiver asked for, in bytes ((xPDA + 1) * 4).
    pub data_align: u32,
}

impl TxConfig {
    fn hd_len(&self) -> usize {
        if self.hdgst {
            DIGEST_LEN
        } else {
            0
        }
    }
    /// PDO for a header of `hlen` bytes: after the header digest, aligned up.
    pub fn pdo(&self, hlen: usize) -> usize {
        let start = hlen + self.hd_len();
        let align = (self.data_align.max(4)) as usize;
        start.div_ceil(align) * align
    }
}

fn common_header(b: &mut [u8], ty: PduType, pflags: u8, pdo: usize, plen: usize) {
    debug_assert!(pdo <= u8::MAX as usize);
    b[0] = ty as u8;
    b[1] = pflags;
    b[2] = ty.hlen() as u8;
    b[3] = pdo as u8;
    put_u32(b, 4, plen as u32);
}

/// Append a 128-byte ICReq.
pub fn encode_ic_req(out: &mut Vec<u8>, ic: &IcReq) {
    let mut b = [0u8; IC_PDU_LEN];
    common_header(&mut b, PduType::IcReq, 0, 0, IC_PDU_LEN);
    put_u16(&mut b, 8, ic.pfv);
    b[10] = ic.hpda;
    b[11] = ic.dgst;
    put_u32(&mut b, 12, ic.maxr2t);
    out.extend_from_slice(&b);
}

/// Append a 128-byte ICResp.
pub fn encode_ic_resp(out: &mut Vec<u8>, ic: &IcResp) {
    let mut b = [0u8; IC_PDU_LEN];
    common_header(&mut b, PduType::IcResp, 0, 0, IC_PDU_LEN);
    put_u16(&mut b, 8, ic.pfv);
    b[10] = ic.cpda;
    b[11] = ic.dgst;
    put_u32(&mut b, 12, ic.maxh2cdata);
    out.extend_from_slice(&b);
}

/// Append a TermReq (`c2h` chooses C2HTermReq vs H2CTermReq). `offending` is
/// truncated to 128 bytes; TermReq carries no digests.
pub fn encode_term_req(out: &mut Vec<u8>, c2h: bool, fes_v: u16, fei: u32, offending: &[u8]) {
    let n = offending.len().min(TERM_DATA_LEN_MAX);
    let ty = if c2h { PduType::C2HTermReq } else { PduType::H2CTermReq };
    let mut b = [0u8; TERM_HLEN];
    common_header(&mut b, ty, 0, 0, TERM_HLEN + n);
    put_u16(&mut b, 8, fes_v);
    put_u32(&mut b, 10, fei);
    out.extend_from_slice(&b);
    out.extend_from_slice(&offending[..n]);
}

fn push_header(out: &mut Vec<u8>, hdr: &[u8], tx: &TxConfig) {
    out.extend_from_slice(hdr);
    if tx.hdgst {
        out.extend_from_slice(&crc32c(hdr).to_le_bytes());
    }
}

fn push_padding(out: &mut Vec<u8>, n: usize) {
    out.resize(out.len() + n, 0);
}

/// Append a CapsuleCmd with optional in-capsule data.
pub fn encode_capsule_cmd(out: &mut Vec<u8>, sqe: &Sqe, data: &[u8], tx: &TxConfig) {
    encode_capsule_cmd_header(out, sqe, data.len(), tx);
    if !data.is_empty() {
        crate::copy::extend_bytes(out, data);
        if tx.ddgst {
            out.extend_from_slice(&crc32c(data).to_le_bytes());
        }
    }
}

/// Append a CapsuleCmd's header (and the padding up to its data) for
/// `data_len` bytes of in-capsule data that the caller sends next, followed
/// by their digest when data digests are on ([`finish_data_pdu`]).
pub fn encode_capsule_cmd_header(out: &mut Vec<u8>, sqe: &Sqe, data_len: usize, tx: &TxConfig) {
    let hlen = CAPSULE_CMD_HLEN;
    let hd = tx.hd_len();
    let with_data = data_len != 0;
    let pdo = if with_data { tx.pdo(hlen) } else { 0 };
    let dd = if with_data && tx.ddgst { DIGEST_LEN } else { 0 };
    let plen = if with_data { pdo + data_len + dd } else { hlen + hd };
    let mut pflags = if tx.hdgst { flags::HDGSTF } else { 0 };
    if dd != 0 {
        pflags |= flags::DDGSTF;
    }
    let mut b = [0u8; CAPSULE_CMD_HLEN];
    common_header(&mut b, PduType::CapsuleCmd, pflags, pdo, plen);
    sqe.encode(&mut b[8..]);
    push_header(out, &b, tx);
    if with_data {
        push_padding(out, pdo - hlen - hd);
    }
}

/// Append a CapsuleResp.
pub fn encode_capsule_resp(out: &mut Vec<u8>, cqe: &Cqe, tx: &TxConfig) {
    let mut b = [0u8; CAPSULE_RESP_HLEN];
    let plen = CAPSULE_RESP_HLEN + tx.hd_len();
    common_header(&mut b, PduType::CapsuleResp, if tx.hdgst { flags::HDGSTF } else { 0 }, 0, plen);
    cqe.encode(&mut b[8..]);
    push_header(out, &b, tx);
}

/// Append an R2T.
pub fn encode_r2t(out: &mut Vec<u8>, r2t: &DataHdr, tx: &TxConfig) {
    let mut b = [0u8; R2T_HLEN];
    let plen = R2T_HLEN + tx.hd_len();
    common_header(&mut b, PduType::R2T, if tx.hdgst { flags::HDGSTF } else { 0 }, 0, plen);
    r2t.encode(&mut b);
    push_header(out, &b, tx);
}

/// Append the header (and padding) of an H2CData or C2HData PDU that will carry
/// `hdr.length` data bytes. The caller appends exactly that many data bytes
/// next (for example copied straight from a backend), then calls
/// [`finish_data_pdu`] with the same data when data digests are on.
pub fn encode_data_pdu_header(out: &mut Vec<u8>, c2h: bool, extra_flags: u8, hdr: &DataHdr, tx: &TxConfig) {
    debug_assert!(hdr.length > 0, "data PDUs carry data");
    debug_assert!(extra_flags & !(flags::LAST_PDU | flags::SUCCESS) == 0);
    let ty = if c2h { PduType::C2HData } else { PduType::H2CData };
    let hd = tx.hd_len();
    let pdo = tx.pdo(DATA_HLEN);
    let dd = if tx.ddgst { DIGEST_LEN } else { 0 };
    let plen = pdo + hdr.length as usize + dd;
    let mut pflags = extra_flags;
    if tx.hdgst {
        pflags |= flags::HDGSTF;
    }
    if tx.ddgst {
        pflags |= flags::DDGSTF;
    }
    let mut b = [0u8; DATA_HLEN];
    common_header(&mut b, ty, pflags, pdo, plen);
    hdr.encode(&mut b);
    push_header(out, &b, tx);
    push_padding(out, pdo - DATA_HLEN - hd);
}

/// Append the data digest of a data PDU's payload when data digests are on.
pub fn finish_data_pdu(out: &mut Vec<u8>, data_crc: u32, tx: &TxConfig) {
    if tx.ddgst {
        out.extend_from_slice(&data_crc.to_le_bytes());
    }
}

/// Append a whole H2CData or C2HData PDU, copying `data`.
pub fn encode_data_pdu(out: &mut Vec<u8>, c2h: bool, extra_flags: u8, hdr: &DataHdr, data: &[u8], tx: &TxConfig) {
    debug_assert_eq!(hdr.length as usize, data.len());
    encode_data_pdu_header(out, c2h, extra_flags, hdr, tx);
    crate::copy::extend_bytes(out, data);
    if tx.ddgst {
        finish_data_pdu(out, crc32c(data), tx);
    }
}

/// Bytes a data PDU adds around its payload (header, digests, padding).
pub fn data_pdu_overhead(tx: &TxConfig) -> usize {
    tx.pdo(DATA_HLEN) + if tx.ddgst { DIGEST_LEN } else { 0 }
}
