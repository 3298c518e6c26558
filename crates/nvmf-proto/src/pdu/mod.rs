//! NVMe/TCP PDUs and the stream framer.
//!
//! [`decode`] takes the bytes buffered from a connection and returns either one
//! complete, validated PDU (borrowing its payload from the buffer, no copy), a
//! request for more bytes, or a [`PduError`] that names the Fatal Error Status
//! (FES) and Fatal Error Information (FEI) the receiver must put in its TermReq
//! before closing. A length is checked against [`FrameConfig::pdu_len_max`]
//! from the 8-byte common header alone, so a hostile peer can never make the
//! receiver buffer more than that bound.

use crate::cqe::{Cqe, CQE_LEN};
use crate::digest::crc32c;
use crate::sqe::{Sqe, SQE_LEN};
use crate::wire::*;

pub const COMMON_HDR_LEN: usize = 8;
pub const IC_PDU_LEN: usize = 128;
pub const CAPSULE_CMD_HLEN: usize = COMMON_HDR_LEN + SQE_LEN;
pub const CAPSULE_RESP_HLEN: usize = COMMON_HDR_LEN + CQE_LEN;
pub const DATA_HLEN: usize = 24;
pub const R2T_HLEN: usize = 24;
pub const TERM_HLEN: usize = 24;
/// Most error data bytes a TermReq carries (the offending header).
pub const TERM_DATA_LEN_MAX: usize = 128;
pub const DIGEST_LEN: usize = 4;
/// Largest data alignment a receiver may ask for: (31 + 1) * 4 bytes. PDO
/// itself is one byte, so padding never exceeds 255 - header.
pub const PDA_BYTES_MAX: usize = 128;

/// PDU types (common header byte 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PduType {
    IcReq = 0x00,
    IcResp = 0x01,
    H2CTermReq = 0x02,
    C2HTermReq = 0x03,
    CapsuleCmd = 0x04,
    CapsuleResp = 0x05,
    H2CData = 0x06,
    C2HData = 0x07,
    R2T = 0x09,
}

impl PduType {
    pub fn from_u8(v: u8) -> Option<PduType> {
        Some(match v {
            0x00 => PduType::IcReq,
            0x01 => PduType::IcResp,
            0x02 => PduType::H2CTermReq,
            0x03 => PduType::C2HTermReq,
            0x04 => PduType::CapsuleCmd,
            0x05 => PduType::CapsuleResp,
            0x06 => PduType::H2CData,
            0x07 => PduType::C2HData,
            0x09 => PduType::R2T,
            _ => return None,
        })
    }
    /// Header length (hlen) the spec fixes for this type.
    pub fn hlen(self) -> usize {
        match self {
            PduType::IcReq | PduType::IcResp => IC_PDU_LEN,
            PduType::CapsuleCmd => CAPSULE_CMD_HLEN,
            PduType::CapsuleResp => CAPSULE_RESP_HLEN,
            PduType::H2CData | PduType::C2HData => DATA_HLEN,
            PduType::R2T => R2T_HLEN,
            PduType::H2CTermReq | PduType::C2HTermReq => TERM_HLEN,
        }
    }
    /// Whether a PDU of this type may carry data (and so a data digest).
    fn may_carry_data(self) -> bool {
        matches!(self, PduType::CapsuleCmd | PduType::H2CData | PduType::C2HData)
    }
}

/// Common header flag bits.
pub mod flags {
    pub const HDGSTF: u8 = 1 << 0;
    pub const DDGSTF: u8 = 1 << 1;
    pub const LAST_PDU: u8 = 1 << 2;
    pub const SUCCESS: u8 = 1 << 3;
}

/// Fatal Error Status codes carried by TermReq.
pub mod fes {
    pub const INVALID_HEADER_FIELD: u16 = 0x01;
    pub const PDU_SEQUENCE_ERROR: u16 = 0x02;
    pub const HEADER_DIGEST_ERROR: u16 = 0x03;
    pub const DATA_OUT_OF_RANGE: u16 = 0x04;
    pub const DATA_LIMIT_EXCEEDED: u16 = 0x05;
    /// R2T limit exceeded uses the same code as data transfer limit exceeded.
    pub const R2T_LIMIT_EXCEEDED: u16 = 0x05;
    pub const UNSUPPORTED_PARAMETER: u16 = 0x06;
}

/// ICReq / ICResp DGST bits.
pub mod dgst {
    pub const HEADER: u8 = 1 << 0;
    pub const DATA: u8 = 1 << 1;
}

/// Which side of the connection is decoding, so that PDUs that only flow the
/// other way are rejected as invalid header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// We are the controller: we receive ICReq, H2CTermReq, CapsuleCmd, H2CData.
    Controller,
    /// We are the host: we receive ICResp, C2HTermReq, CapsuleResp, C2HData, R2T.
    Host,
}

/// Connection parameters the framer needs; they change once, after IC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameConfig {
    pub role: Role,
    /// Header digest negotiated.
    pub hdgst: bool,
    /// Data digest negotiated.
    pub ddgst: bool,
    /// Largest whole PDU (header, digests, padding and data) we accept.
    pub pdu_len_max: u32,
    /// Data alignment we asked the peer for, in bytes ((xPDA + 1) * 4); PDO
    /// of received data PDUs must be a multiple of it when it is above 4.
    pub rx_data_align: u32,
}

impl FrameConfig {
    /// Before IC: no digests, and the only PDUs in sequence are 128 bytes (or a TermReq).
    pub fn before_ic(role: Role) -> FrameConfig {
        FrameConfig { role, hdgst: false, ddgst: false, pdu_len_max: IC_PDU_LEN as u32, rx_data_align: 4 }
    }
    fn hd_len(&self) -> usize {
        if self.hdgst {
            DIGEST_LEN
        } else {
            0
        }
    }
}

/// ICReq (host to controller).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IcReq {
    pub pfv: u16,
    /// Host PDU data alignment, 0's based dwords.
    pub hpda: u8,
    pub dgst: u8,
    /// R2Ts per command the host accepts outstanding, 0's based.
    pub maxr2t: u32,
}

/// ICResp (controller to host).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IcResp {
    pub pfv: u16,
    /// Controller PDU data alignment, 0's based dwords.
    pub cpda: u8,
    pub dgst: u8,
    /// Most data bytes in one H2CData PDU.
    pub maxh2cdata: u32,
}

/// The 16 bytes after the common header shared by H2CData, C2HData and R2T.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DataHdr {
    pub cccid: u16,
    /// Transfer tag: from the R2T, echoed in H2CData; reserved in C2HData.
    pub ttag: u16,
    /// DATAO / R2TO: offset into the command's data.
    pub offset: u32,
    /// DATAL / R2TL.
    pub length: u32,
}

impl DataHdr {
    fn decode(b: &[u8]) -> DataHdr {
        DataHdr { cccid: u16_at(b, 8), ttag: u16_at(b, 10), offset: u32_at(b, 12), length: u32_at(b, 16) }
    }
    fn encode(&self, b: &mut [u8]) {
        put_u16(b, 8, self.cccid);
        put_u16(b, 10, self.ttag);
        put_u32(b, 12, self.offset);
        put_u32(b, 16, self.length);
        b[20..24].fill(0);
    }
}

/// One decoded PDU. Payloads borrow from the receive buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pdu<'a> {
    IcReq(IcReq),
    IcResp(IcResp),
    /// H2CTermReq or C2HTermReq (the direction follows from the role).
    TermReq {
        fes: u16,
        fei: u32,
        data: &'a [u8],
    },
    CapsuleCmd {
        sqe: Sqe,
        data: &'a [u8],
        data_digest_ok: bool,
    },
    CapsuleResp(Cqe),
    H2CData {
        hdr: DataHdr,
        flags: u8,
        data: &'a [u8],
        data_digest_ok: bool,
    },
    C2HData {
        hdr: DataHdr,
        flags: u8,
        data: &'a [u8],
        data_digest_ok: bool,
    },
    R2T(DataHdr),
}

/// Result of [`decode`].
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// Not a whole PDU yet: at least this many bytes must be buffered in total.
    NeedMore(usize),
    /// A PDU and the number of bytes it took from the front of the buffer.
    Pdu(Pdu<'a>, usize),
}

/// A fatal framing error: send a TermReq with `fes`/`fei`, then close.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (FES {fes:#x}, FEI {fei})")]
pub struct PduError {
    pub fes: u16,
    pub fei: u32,
    pub reason: &'static str,
}

impl PduError {
    fn field(fei: u32, reason: &'static str) -> PduError {
        PduError { fes: fes::INVALID_HEADER_FIELD, fei, reason }
    }
}

/// Byte offsets within the common header, used as FEI for invalid fields.
mod off {
    pub const TYPE: u32 = 0;
    pub const FLAGS: u32 = 1;
    pub const HLEN: u32 = 2;
    pub const PDO: u32 = 3;
    pub const PLEN: u32 = 4;
    pub const DATAL: u32 = 16;
}

/// Decode the PDU at the front of `buf`.
pub fn decode<'a>(buf: &'a [u8], cfg: &FrameConfig) -> Result<Decoded<'a>, PduError> {
    let h = match check_header(buf, cfg)? {
        Header::NeedMore(n) => return Ok(Decoded::NeedMore(n)),
        Header::Whole(pdu, n) => return Ok(Decoded::Pdu(pdu, n)),
        Header::Checked(h) => h,
    };
    if buf.len() < h.plen {
        return Ok(Decoded::NeedMore(h.plen));
    }
    check_header_digest(buf, cfg, h.ty.hlen())?;
    let (data, data_digest_ok) = if h.has_data {
        let data = &buf[h.pdo..h.plen - h.dd];
        let ok = h.dd == 0 || crc32c(data) == u32_at(buf, h.plen - h.dd);
        (data, ok)
    } else {
        (&buf[0..0], true)
    };
    let pdu = match h.ty {
        PduType::CapsuleCmd => Pdu::CapsuleCmd { sqe: Sqe::decode(&buf[8..8 + SQE_LEN]), data, data_digest_ok },
        PduType::CapsuleResp => Pdu::CapsuleResp(Cqe::decode(&buf[8..8 + CQE_LEN])),
        PduType::R2T => Pdu::R2T(DataHdr::decode(buf)),
        PduType::H2CData | PduType::C2HData => {
            let hdr = DataHdr::decode(buf);
            if hdr.length as usize != data.len() {
                return Err(PduError::field(off::DATAL, "DATAL does not match the PDU's data"));
            }
            if h.ty == PduType::H2CData {
                Pdu::H2CData { hdr, flags: h.pflags, data, data_digest_ok }
            } else {
                Pdu::C2HData { hdr, flags: h.pflags, data, data_digest_ok }
            }
        }
        _ => unreachable!("IC and TermReq returned above"),
    };
    Ok(Decoded::Pdu(pdu, h.plen))
}

/// The front of a data PDU (C2HData or H2CData) whose header, header digest
/// and padding are buffered but whose payload is not all there yet: the
/// receiver may take the payload piece by piece (or receive it straight into
/// its destination) instead of buffering the whole PDU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataStart {
    pub ty: PduType,
    pub hdr: DataHdr,
    pub flags: u8,
    /// Bytes from the PDU's start to its payload (PDO): consume these, then
    /// `hdr.length` payload bytes follow, then the data digest if `ddgst`.
    pub data_at: usize,
    /// A 4-byte data digest (CRC32C of the payload) follows the payload.
    pub ddgst: bool,
}

impl DataStart {
    /// Length of the whole PDU.
    pub fn pdu_len(&self) -> usize {
        self.data_at + self.hdr.length as usize + if self.ddgst { DIGEST_LEN } else { 0 }
    }
}

/// [`decode`] for a data PDU that is only partly buffered: `Ok(Some(..))` when
/// `buf` starts with a C2HData or H2CData PDU whose bytes up to the payload
/// (PDO) are buffered but not the whole PDU, after every check [`decode`]
/// makes on those bytes (the header digest included, and DATAL against the
/// PDU length). `Ok(None)` when the PDU is of another type, is whole (use
/// [`decode`]) or its header is not complete yet. Errors as [`decode`].
pub fn decode_data_start(buf: &[u8], cfg: &FrameConfig) -> Result<Option<DataStart>, PduError> {
    if buf.len() < COMMON_HDR_LEN || !matches!(PduType::from_u8(buf[0]), Some(PduType::C2HData | PduType::H2CData)) {
        return Ok(None);
    }
    let h = match check_header(buf, cfg)? {
        Header::Checked(h) => h,
        Header::NeedMore(_) | Header::Whole(..) => return Ok(None),
    };
    debug_assert!(h.has_data, "check_header accepts no data PDU without data");
    if buf.len() >= h.plen || buf.len() < h.pdo {
        return Ok(None);
    }
    check_header_digest(buf, cfg, h.ty.hlen())?;
    let hdr = DataHdr::decode(buf);
    let data_len = h.plen - h.pdo - h.dd;
    if hdr.length as usize != data_len {
        return Err(PduError::field(off::DATAL, "DATAL does not match the PDU's data"));
    }
    Ok(Some(DataStart { ty: h.ty, hdr, flags: h.pflags, data_at: h.pdo, ddgst: h.dd != 0 }))
}

/// What [`check_header`] learnt from a PDU's fixed fields.
struct Checked {
    ty: PduType,
    pflags: u8,
    pdo: usize,
    plen: usize,
    /// Data digest bytes at the end (0 or 4).
    dd: usize,
    has_data: bool,
}

enum Header<'a> {
    NeedMore(usize),
    /// IC and TermReq PDUs are decoded whole here.
    Whole(Pdu<'a>, usize),
    Checked(Checked),
}

/// Every check on the common header and the lengths, from the first 8 bytes;
/// IC and TermReq PDUs (fixed layouts, no digests) are decoded whole.
fn check_header<'a>(buf: &'a [u8], cfg: &FrameConfig) -> Result<Header<'a>, PduError> {
    if buf.len() < COMMON_HDR_LEN {
        return Ok(Header::NeedMore(COMMON_HDR_LEN));
    }
    let ty = PduType::from_u8(buf[0]).ok_or(PduError::field(off::TYPE, "unknown PDU type"))?;
    let pflags = buf[1];
    let hlen = buf[2] as usize;
    let pdo = buf[3] as usize;
    let plen = u32_at(buf, 4) as usize;

    let expected = match cfg.role {
        Role::Controller => matches!(ty, PduType::IcReq | PduType::H2CTermReq | PduType::CapsuleCmd | PduType::H2CData),
        Role::Host => {
            matches!(ty, PduType::IcResp | PduType::C2HTermReq | PduType::CapsuleResp | PduType::C2HData | PduType::R2T)
        }
    };
    if !expected {
        return Err(PduError::field(off::TYPE, "PDU type not valid in this direction"));
    }
    if hlen != ty.hlen() {
        return Err(PduError::field(off::HLEN, "wrong header length for PDU type"));
    }

    match ty {
        PduType::IcReq | PduType::IcResp => {
            if plen != IC_PDU_LEN {
                return Err(PduError::field(off::PLEN, "IC PDU length must be 128"));
            }
            if buf.len() < IC_PDU_LEN {
                return Ok(Header::NeedMore(IC_PDU_LEN));
            }
            let pfv = u16_at(buf, 8);
            let pdu = if ty == PduType::IcReq {
                Pdu::IcReq(IcReq { pfv, hpda: buf[10], dgst: buf[11], maxr2t: u32_at(buf, 12) })
            } else {
                Pdu::IcResp(IcResp { pfv, cpda: buf[10], dgst: buf[11], maxh2cdata: u32_at(buf, 12) })
            };
            return Ok(Header::Whole(pdu, IC_PDU_LEN));
        }
        PduType::H2CTermReq | PduType::C2HTermReq => {
            // TermReq never carries digests: the peer may be terminating because
            // digest negotiation itself went wrong.
            if !(TERM_HLEN..=TERM_HLEN + TERM_DATA_LEN_MAX).contains(&plen) {
                return Err(PduError::field(off::PLEN, "TermReq length out of range"));
            }
            if buf.len() < plen {
                return Ok(Header::NeedMore(plen));
            }
            let pdu = Pdu::TermReq { fes: u16_at(buf, 8), fei: u32_at(buf, 10), data: &buf[TERM_HLEN..plen] };
            return Ok(Header::Whole(pdu, plen));
        }
        _ => {}
    }

    // Capsules, data and R2T: digests as negotiated.
    let has_hd = pflags & flags::HDGSTF != 0;
    if has_hd != cfg.hdgst {
        return Err(PduError::field(off::FLAGS, "HDGSTF does not match the negotiated header digest"));
    }
    let has_dd = pflags & flags::DDGSTF != 0;
    if has_dd && (!cfg.ddgst || !ty.may_carry_data()) {
        return Err(PduError::field(off::FLAGS, "DDGSTF set without a negotiated data digest"));
    }
    let hd = cfg.hd_len();
    let dd = if has_dd { DIGEST_LEN } else { 0 };
    let hdr_end = hlen + hd;
    if plen < hdr_end {
        return Err(PduError::field(off::PLEN, "PDU length shorter than its header"));
    }
    if plen > cfg.pdu_len_max as usize {
        if ty == PduType::H2CData {
            return Err(PduError { fes: fes::DATA_LIMIT_EXCEEDED, fei: 0, reason: "H2CData PDU over MAXH2CDATA" });
        }
        return Err(PduError::field(off::PLEN, "PDU length over the negotiated limit"));
    }
    let has_data = plen > hdr_end;
    if !has_data && matches!(ty, PduType::H2CData | PduType::C2HData) {
        return Err(PduError::field(off::PLEN, "data PDU without data"));
    }
    if has_data && !ty.may_carry_data() {
        return Err(PduError::field(off::PLEN, "PDU type carries no data"));
    }
    if has_data {
        if pdo < hdr_end || pdo + dd > plen {
            return Err(PduError::field(off::PDO, "PDO outside the PDU"));
        }
        if cfg.rx_data_align > 4 && !pdo.is_multiple_of(cfg.rx_data_align as usize) {
            return Err(PduError::field(off::PDO, "PDO not aligned to the negotiated PDA"));
        }
        if pdo + dd == plen {
            return Err(PduError::field(off::PLEN, "data PDU without data"));
        }
        if cfg.ddgst && !has_dd {
            return Err(PduError::field(off::FLAGS, "DDGSTF missing on a data-carrying PDU"));
        }
    } else if has_dd {
        return Err(PduError::field(off::FLAGS, "DDGSTF set on a PDU without data"));
    }
    Ok(Header::Checked(Checked { ty, pflags, pdo, plen, dd, has_data }))
}

/// The header digest, when negotiated (`buf` holds at least `hlen + 4` bytes).
fn check_header_digest(buf: &[u8], cfg: &FrameConfig, hlen: usize) -> Result<(), PduError> {
    if cfg.hdgst {
        debug_assert!(buf.len() >= hlen + DIGEST_LEN);
        let want = u32_at(buf, hlen);
        if crc32c(&buf[..hlen]) != want {
            return Err(PduError { fes: fes::HEADER_DIGEST_ERROR, fei: 0, reason: "header digest mismatch" });
        }
    }
    Ok(())
}

mod encode;
pub use encode::*;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Status;

    fn ctrl_cfg(hdgst: bool, ddgst: bool) -> FrameConfig {
        FrameConfig { role: Role::Controller, hdgst, ddgst, pdu_len_max: 1 << 20, rx_data_align: 4 }
    }
    fn host_cfg(hdgst: bool, ddgst: bool) -> FrameConfig {
        FrameConfig { role: Role::Host, ..ctrl_cfg(hdgst, ddgst) }
    }

    #[test]
    fn ic_req_bytes_match_linux_host() {
        // What the Linux kernel host sends (seen in the interop lab): PFV 0,
        // HPDA 0, DGST 0, MAXR2T 0.
        let mut out = Vec::new();
        encode_ic_req(&mut out, &IcReq::default());
        assert_eq!(&out[..8], &[0x00, 0x00, 0x80, 0x00, 0x80, 0x00, 0x00, 0x00]);
        assert_eq!(out.len(), 128);
        let cfg = FrameConfig::before_ic(Role::Controller);
        assert_eq!(decode(&out, &cfg).unwrap(), Decoded::Pdu(Pdu::IcReq(IcReq::default()), 128));
    }

    #[test]
    fn ic_resp_bytes() {
        let mut out = Vec::new();
        encode_ic_resp(&mut out, &IcResp { pfv: 0, cpda: 0, dgst: 3, maxh2cdata: 0x40_0000 });
        assert_eq!(&out[..16], &[0x01, 0, 0x80, 0, 0x80, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0x40, 0]);
    }

    #[test]
    fn capsule_cmd_with_digests_and_data() {
        let tx = TxConfig { hdgst: true, ddgst: true, data_align: 0 };
        let sqe = Sqe::rw(crate::opcodes::io::WRITE, 7, 1, 0, 1);
        let data = vec![0xabu8; 512];
        let mut out = Vec::new();
        encode_capsule_cmd(&mut out, &sqe, &data, &tx);
        assert_eq!(out[0], 0x04);
        assert_eq!(out[1], flags::HDGSTF | flags::DDGSTF);
        assert_eq!(out[2], 72);
        assert_eq!(out[3], 76, "pdo right after the header digest");
        assert_eq!(u32_at(&out, 4) as usize, 72 + 4 + 512 + 4);
        assert_eq!(out.len(), 592);
        match decode(&out, &ctrl_cfg(true, true)).unwrap() {
            Decoded::Pdu(Pdu::CapsuleCmd { sqe: s, data: d, data_digest_ok }, n) => {
                assert_eq!(s, sqe);
                assert_eq!(d, &data[..]);
                assert!(data_digest_ok);
                assert_eq!(n, 592);
            }
            other => panic!("{other:?}"),
        }
        // Flip a data byte: the PDU still decodes, flagged as a digest error.
        let mut bad = out.clone();
        bad[100] ^= 1;
        assert!(matches!(
            decode(&bad, &ctrl_cfg(true, true)).unwrap(),
            Decoded::Pdu(Pdu::CapsuleCmd { data_digest_ok: false, .. }, _)
        ));
        // Flip a header byte: fatal header digest error.
        let mut bad = out.clone();
        bad[20] ^= 1;
        assert_eq!(decode(&bad, &ctrl_cfg(true, true)).unwrap_err().fes, fes::HEADER_DIGEST_ERROR);
    }

    #[test]
    fn partial_input_asks_for_more() {
        let mut out = Vec::new();
        encode_capsule_cmd(&mut out, &Sqe::default(), &[1, 2, 3, 4], &TxConfig::default());
        for cut in 0..out.len() {
            match decode(&out[..cut], &ctrl_cfg(false, false)).unwrap() {
                Decoded::NeedMore(n) => assert!(n > cut && n <= out.len()),
                other => panic!("cut {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn c2h_data_alignment_and_flags() {
        let tx = TxConfig { hdgst: false, ddgst: false, data_align: 32 };
        let hdr = DataHdr { cccid: 3, ttag: 0, offset: 4096, length: 8 };
        let mut out = Vec::new();
        encode_data_pdu(&mut out, true, flags::LAST_PDU | flags::SUCCESS, &hdr, &[9; 8], &tx);
        assert_eq!(out[3], 32, "PDO honours the host's HPDA");
        assert_eq!(out.len(), 40);
        let cfg = FrameConfig { rx_data_align: 32, ..host_cfg(false, false) };
        match decode(&out, &cfg).unwrap() {
            Decoded::Pdu(Pdu::C2HData { hdr: h, flags: f, data, .. }, 40) => {
                assert_eq!(h, hdr);
                assert_eq!(f, flags::LAST_PDU | flags::SUCCESS);
                assert_eq!(data, &[9; 8]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn resp_and_r2t_roundtrip() {
        let tx = TxConfig { hdgst: true, ..Default::default() };
        let mut out = Vec::new();
        encode_capsule_resp(&mut out, &Cqe::new(9, Status::SUCCESS), &tx);
        let r2t = DataHdr { cccid: 9, ttag: 2, offset: 0, length: 65536 };
        encode_r2t(&mut out, &r2t, &tx);
        let cfg = host_cfg(true, false);
        let Decoded::Pdu(Pdu::CapsuleResp(c), n) = decode(&out, &cfg).unwrap() else { panic!() };
        assert_eq!((c.cid, n), (9, 28));
        assert_eq!(decode(&out[n..], &cfg).unwrap(), Decoded::Pdu(Pdu::R2T(r2t), 28));
    }

    #[test]
    fn malformed_headers_name_the_field() {
        let cfg = ctrl_cfg(false, false);
        // Unknown type.
        assert_eq!(decode(&[0x08, 0, 24, 0, 24, 0, 0, 0], &cfg).unwrap_err().fei, 0);
        // C2H PDU sent to a controller.
        assert_eq!(decode(&[0x05, 0, 24, 0, 24, 0, 0, 0], &cfg).unwrap_err().fei, 0);
        // Wrong hlen.
        assert_eq!(decode(&[0x04, 0, 71, 0, 72, 0, 0, 0], &cfg).unwrap_err().fei, 2);
        // Header digest flag without negotiation.
        assert_eq!(decode(&[0x04, 1, 72, 0, 76, 0, 0, 0], &cfg).unwrap_err().fei, 1);
        // plen shorter than the header.
        assert_eq!(decode(&[0x04, 0, 72, 0, 10, 0, 0, 0], &cfg).unwrap_err().fei, 4);
        // Oversized H2CData: limit exceeded, judged from the header alone.
        let e = decode(&[0x06, 0, 24, 24, 0, 0, 0, 0x10], &cfg).unwrap_err();
        assert_eq!(e.fes, fes::DATA_LIMIT_EXCEEDED);
        // PDO inside the header.
        assert_eq!(decode(&[0x04, 0, 72, 8, 80, 0, 0, 0], &cfg).unwrap_err().fei, 3);
    }

    #[test]
    fn term_req_roundtrip() {
        let mut out = Vec::new();
        encode_term_req(&mut out, true, fes::HEADER_DIGEST_ERROR, 0, &[0x04; 200]);
        assert_eq!(out.len(), 24 + 128);
        let cfg = host_cfg(true, true);
        match decode(&out, &cfg).unwrap() {
            Decoded::Pdu(Pdu::TermReq { fes: f, fei, data }, 152) => {
                assert_eq!((f, fei, data.len()), (fes::HEADER_DIGEST_ERROR, 0, 128));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn data_start_for_every_partial_cut() {
        for (hdgst, ddgst, align) in [(false, false, 0u32), (true, true, 0), (true, false, 32), (false, true, 128)] {
            let tx = TxConfig { hdgst, ddgst, data_align: align };
            let rx = FrameConfig { rx_data_align: align.max(4), ..host_cfg(hdgst, ddgst) };
            let data: Vec<u8> = (0..5000u32).map(|i| (i * 31) as u8).collect();
            let hdr = DataHdr { cccid: 7, ttag: 0, offset: 8192, length: data.len() as u32 };
            let mut out = Vec::new();
            encode_data_pdu(&mut out, true, flags::LAST_PDU | flags::SUCCESS, &hdr, &data, &tx);
            let pdo = tx.pdo(DATA_HLEN);
            for cut in 0..out.len() {
                let got = decode_data_start(&out[..cut], &rx).unwrap();
                if cut < pdo {
                    assert_eq!(got, None, "cut {cut} before the payload");
                    continue;
                }
                let st = got.unwrap_or_else(|| panic!("cut {cut}: no start"));
                assert_eq!((st.ty, st.hdr, st.data_at, st.ddgst), (PduType::C2HData, hdr, pdo, ddgst));
                assert_eq!(st.flags & (flags::LAST_PDU | flags::SUCCESS), flags::LAST_PDU | flags::SUCCESS);
                assert_eq!(st.pdu_len(), out.len());
                assert_eq!(&out[st.data_at..st.data_at + data.len()], &data[..]);
            }
            // Whole: decode takes it, decode_data_start does not.
            assert_eq!(decode_data_start(&out, &rx).unwrap(), None);
            assert!(matches!(decode(&out, &rx).unwrap(), Decoded::Pdu(Pdu::C2HData { .. }, n) if n == out.len()));
            // Other PDU types are never a data start.
            let mut r2t = Vec::new();
            encode_r2t(&mut r2t, &hdr, &tx);
            assert_eq!(decode_data_start(&r2t[..r2t.len() - 1], &rx).unwrap(), None);
        }
    }

    #[test]
    fn data_start_checks_what_decode_checks() {
        let tx = TxConfig { hdgst: true, ddgst: true, data_align: 0 };
        let rx = host_cfg(true, true);
        let data = vec![9u8; 3000];
        let hdr = DataHdr { cccid: 1, ttag: 0, offset: 0, length: 3000 };
        let mut out = Vec::new();
        encode_data_pdu(&mut out, true, 0, &hdr, &data, &tx);
        // Header digest.
        let mut bad = out.clone();
        bad[12] ^= 1;
        assert_eq!(decode_data_start(&bad[..100], &rx).unwrap_err().fes, fes::HEADER_DIGEST_ERROR);
        assert_eq!(decode(&bad, &rx).unwrap_err().fes, fes::HEADER_DIGEST_ERROR);
        // DATAL against PLEN (header digest recomputed so only DATAL is wrong).
        let mut bad = out.clone();
        put_u32(&mut bad, 16, 2999);
        let crc = crc32c(&bad[..DATA_HLEN]);
        bad[DATA_HLEN..DATA_HLEN + 4].copy_from_slice(&crc.to_le_bytes());
        let e = decode_data_start(&bad[..100], &rx).unwrap_err();
        assert_eq!((e.fes, e.fei), (fes::INVALID_HEADER_FIELD, off::DATAL));
        assert_eq!(decode(&bad, &rx).unwrap_err(), e);
        // PDU length over the limit: refused from the common header alone.
        let small = FrameConfig { pdu_len_max: 1000, ..rx };
        assert_eq!(decode_data_start(&out[..100], &small).unwrap_err(), decode(&out[..100], &small).unwrap_err());
        // Wrong direction.
        let ctrl = ctrl_cfg(true, true);
        assert_eq!(decode_data_start(&out[..100], &ctrl).unwrap_err(), decode(&out[..100], &ctrl).unwrap_err());
    }
}
