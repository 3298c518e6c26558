//! Log pages: Get Log Page command fields, discovery log, error information,
//! SMART / health, changed namespace list, commands supported and effects, ANA.

use crate::opcodes::admin;
use crate::sqe::{Sgl, Sqe};
use crate::wire::*;

/// Get Log Page command fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GetLogPageCmd {
    pub lid: u8,
    /// Log Specific Parameter (CDW10 bits 14:8).
    pub lsp: u8,
    /// Retain Asynchronous Event (CDW10 bit 15).
    pub rae: bool,
    /// Bytes requested (from NUMD, which is 0's based in dwords).
    pub len: u64,
    /// Log Page Offset in bytes.
    pub offset: u64,
    /// Log Specific Identifier (CDW11 bits 31:16).
    pub lsi: u16,
    pub nsid: u32,
}

impl GetLogPageCmd {
    pub fn parse(sqe: &Sqe) -> GetLogPageCmd {
        let numdl = (sqe.cdw10 >> 16) as u64;
        let numdu = (sqe.cdw11 & 0xffff) as u64;
        let numd = (numdu << 16 | numdl) + 1;
        GetLogPageCmd {
            lid: sqe.cdw10 as u8,
            lsp: ((sqe.cdw10 >> 8) & 0x7f) as u8,
            rae: (sqe.cdw10 >> 15) & 1 == 1,
            len: numd * 4,
            offset: sqe.cdw12 as u64 | ((sqe.cdw13 as u64) << 32),
            lsi: (sqe.cdw11 >> 16) as u16,
            nsid: sqe.nsid,
        }
    }
    /// Build the SQE; `len` must be a non-zero multiple of 4.
    pub fn to_sqe(&self, cid: u16) -> Sqe {
        debug_assert!(self.len >= 4 && self.len.is_multiple_of(4));
        let numd = self.len / 4 - 1;
        let mut s = Sqe::new(admin::GET_LOG_PAGE, cid, self.nsid);
        s.sgl1 = Sgl::transport(self.len as u32);
        s.cdw10 = self.lid as u32
            | ((self.lsp as u32 & 0x7f) << 8)
            | ((self.rae as u32) << 15)
            | ((numd as u32 & 0xffff) << 16);
        s.cdw11 = ((numd >> 16) as u32 & 0xffff) | ((self.lsi as u32) << 16);
        s.cdw12 = self.offset as u32;
        s.cdw13 = (self.offset >> 32) as u32;
        s
    }
}

// ------------------------------------------------------------------ discovery

pub const DISC_LOG_HDR_LEN: usize = 1024;
pub const DISC_LOG_ENTRY_LEN: usize = 1024;

/// Discovery log entry subtypes.
pub mod subtype {
    pub const REFERRAL: u8 = 1;
    pub const NVME: u8 = 2;
    pub const CURRENT_DISCOVERY: u8 = 3;
}
/// Transport types.
pub mod trtype {
    pub const RDMA: u8 = 1;
    pub const FC: u8 = 2;
    pub const TCP: u8 = 3;
    pub const LOOP: u8 = 254;
}
/// Address families.
pub mod adrfam {
    pub const IPV4: u8 = 1;
    pub const IPV6: u8 = 2;
}
/// TREQ secure channel values (bits 1:0) and bit 2 "SQ flow control disable supported".
pub mod treq {
    pub const NOT_SPECIFIED: u8 = 0;
    pub const REQUIRED: u8 = 1;
    pub const NOT_REQUIRED: u8 = 2;
    pub const DISABLE_SQFLOW: u8 = 1 << 2;
}
/// TCP transport-specific address subtype (TSAS) SECTYPE values.
pub mod sectype {
    pub const NONE: u8 = 0;
    pub const TLS12: u8 = 1;
    pub const TLS13: u8 = 2;
}
/// EFLAGS bits.
pub mod eflags {
    pub const DUPLICATE_RETURNED_INFO: u16 = 1 << 0;
    pub const EXPLICIT_PERSISTENT_CONN: u16 = 1 << 1;
    pub const NO_CDC_CONNECTIVITY: u16 = 1 << 2;
}

/// One discovery log page entry.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct DiscoveryEntry {
    pub trtype: u8,
    pub adrfam: u8,
    pub subtype: u8,
    pub treq: u8,
    pub portid: u16,
    pub cntlid: u16,
    pub asqsz: u16,
    pub eflags: u16,
    pub trsvcid: String,
    pub subnqn: String,
    pub traddr: String,
    /// TCP: SECTYPE in byte 0 (0 none, 1 TLS 1.2, 2 TLS 1.3).
    pub sectype: u8,
}

impl DiscoveryEntry {
    pub fn encode(&self, b: &mut [u8]) {
        b[..DISC_LOG_ENTRY_LEN].fill(0);
        b[0] = self.trtype;
        b[1] = self.adrfam;
        b[2] = self.subtype;
        b[3] = self.treq;
        put_u16(b, 4, self.portid);
        put_u16(b, 6, self.cntlid);
        put_u16(b, 8, self.asqsz);
        put_u16(b, 10, self.eflags);
        // TRSVCID and TRADDR are space padded ASCII per the spec; the NQN is NUL padded.
        put_str(b, 32, 32, &self.trsvcid, b' ');
        put_str(b, 256, 256, &self.subnqn, 0);
        put_str(b, 512, 256, &self.traddr, b' ');
        b[768] = self.sectype;
    }
    pub fn parse(b: &[u8]) -> DiscoveryEntry {
        DiscoveryEntry {
            trtype: b[0],
            adrfam: b[1],
            subtype: b[2],
            treq: b[3],
            portid: u16_at(b, 4),
            cntlid: u16_at(b, 6),
            asqsz: u16_at(b, 8),
            eflags: u16_at(b, 10),
            trsvcid: get_str(b, 32, 32),
            subnqn: get_str(b, 256, 256),
            traddr: get_str(b, 512, 256),
            sectype: b[768],
        }
    }
}

/// Encode a whole discovery log page (header + entries).
pub fn encode_discovery_log(genctr: u64, entries: &[DiscoveryEntry]) -> Vec<u8> {
    let mut b = vec![0u8; DISC_LOG_HDR_LEN + entries.len() * DISC_LOG_ENTRY_LEN];
    put_u64(&mut b, 0, genctr);
    put_u64(&mut b, 8, entries.len() as u64);
    put_u16(&mut b, 16, 0); // RECFMT
    for (i, e) in entries.iter().enumerate() {
        let o = DISC_LOG_HDR_LEN + i * DISC_LOG_ENTRY_LEN;
        e.encode(&mut b[o..o + DISC_LOG_ENTRY_LEN]);
    }
    b
}

/// Discovery log header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiscoveryLogHeader {
    pub genctr: u64,
    pub numrec: u64,
    pub recfmt: u16,
}

pub fn parse_discovery_header(b: &[u8]) -> Option<DiscoveryLogHeader> {
    if b.len() < 18 {
        return None;
    }
    Some(DiscoveryLogHeader { genctr: u64_at(b, 0), numrec: u64_at(b, 8), recfmt: u16_at(b, 16) })
}

/// Parse the entries present in `b` (header included), at most `numrec`.
pub fn parse_discovery_entries(b: &[u8], numrec: u64) -> Vec<DiscoveryEntry> {
    b.get(DISC_LOG_HDR_LEN..)
        .unwrap_or(&[])
        .chunks_exact(DISC_LOG_ENTRY_LEN)
        .take(numrec.min(4096) as usize)
        .map(DiscoveryEntry::parse)
        .collect()
}

// ------------------------------------------------------------------ error log

pub const ERROR_LOG_ENTRY_LEN: usize = 64;

/// One Error Information log entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ErrorLogEntry {
    pub error_count: u64,
    pub sqid: u16,
    pub cid: u16,
    /// Status field (bits 15:1 = status, bit 0 = phase).
    pub status_field: u16,
    pub param_error_location: u16,
    pub lba: u64,
    pub nsid: u32,
}

impl ErrorLogEntry {
    pub fn encode(&self, b: &mut [u8]) {
        b[..ERROR_LOG_ENTRY_LEN].fill(0);
        put_u64(b, 0, self.error_count);
        put_u16(b, 8, self.sqid);
        put_u16(b, 10, self.cid);
        put_u16(b, 12, self.status_field);
        put_u16(b, 14, self.param_error_location);
        put_u64(b, 16, self.lba);
        put_u32(b, 24, self.nsid);
    }
}

// ------------------------------------------------------------------ SMART

pub const SMART_LOG_LEN: usize = 512;

/// SMART / Health Information, the fields this project reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SmartLog {
    pub critical_warning: u8,
    /// Composite temperature in kelvin.
    pub temperature_k: u16,
    pub avail_spare: u8,
    pub spare_thresh: u8,
    pub percent_used: u8,
    /// Thousands of 512-byte units read.
    pub data_units_read: u128,
    pub data_units_written: u128,
    pub host_reads: u128,
    pub host_writes: u128,
    pub power_on_hours: u128,
    pub unsafe_shutdowns: u128,
    pub media_errors: u128,
    pub num_err_log_entries: u128,
}

impl SmartLog {
    pub fn encode(&self) -> [u8; SMART_LOG_LEN] {
        let mut b = [0u8; SMART_LOG_LEN];
        b[0] = self.critical_warning;
        put_u16(&mut b, 1, self.temperature_k);
        b[3] = self.avail_spare;
        b[4] = self.spare_thresh;
        b[5] = self.percent_used;
        for (o, v) in [
            (32, self.data_units_read),
            (48, self.data_units_written),
            (64, self.host_reads),
            (80, self.host_writes),
            (128, self.power_on_hours),
            (144, self.unsafe_shutdowns),
            (160, self.media_errors),
            (176, self.num_err_log_entries),
        ] {
            b[o..o + 16].copy_from_slice(&v.to_le_bytes());
        }
        b
    }
}

// ------------------------------------------------------------------ changed ns list

/// Encode the Changed Namespace List: up to 1024 NSIDs; more than that is
/// reported as the single entry 0xFFFFFFFF, as the spec asks.
pub fn encode_changed_ns_list(nsids: &[u32]) -> [u8; 4096] {
    let mut b = [0u8; 4096];
    if nsids.len() > 1024 {
        put_u32(&mut b, 0, 0xffff_ffff);
    } else {
        for (i, id) in nsids.iter().enumerate() {
            put_u32(&mut b, i * 4, *id);
        }
    }
    b
}

// ------------------------------------------------------------------ effects

/// Commands Supported and Effects: CSUPP (bit 0) and LBCC (bit 1, logical
/// block content change) / NCC (bit 2, namespace capability change).
pub mod effects {
    pub const CSUPP: u32 = 1 << 0;
    pub const LBCC: u32 = 1 << 1;
    pub const NCC: u32 = 1 << 2;
    pub const NIC: u32 = 1 << 3;
    pub const CCC: u32 = 1 << 4;
}

/// Encode the effects log from (admin opcode, effects) and (I/O opcode, effects) lists.
pub fn encode_effects_log(admin_ops: &[(u8, u32)], io_ops: &[(u8, u32)]) -> [u8; 4096] {
    let mut b = [0u8; 4096];
    for &(op, e) in admin_ops {
        put_u32(&mut b, op as usize * 4, e);
    }
    for &(op, e) in io_ops {
        put_u32(&mut b, 1024 + op as usize * 4, e);
    }
    b
}

// ------------------------------------------------------------------ ANA

/// ANA states.
pub mod ana_state {
    pub const OPTIMIZED: u8 = 0x01;
    pub const NON_OPTIMIZED: u8 = 0x02;
    pub const INACCESSIBLE: u8 = 0x03;
    pub const PERSISTENT_LOSS: u8 = 0x04;
    pub const CHANGE: u8 = 0x0f;
}
/// LSP bit 0 of the ANA log: Return Groups Only (no NSID lists).
pub const ANA_LSP_RGO: u8 = 1;

/// One ANA group descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct AnaGroup {
    pub grpid: u32,
    pub chgcnt: u64,
    pub state: u8,
    pub nsids: Vec<u32>,
}

/// Encode the ANA log page; with `rgo` the NSID lists are left out.
pub fn encode_ana_log(chgcnt: u64, groups: &[AnaGroup], rgo: bool) -> Vec<u8> {
    let mut b = vec![0u8; 16];
    put_u64(&mut b, 0, chgcnt);
    put_u16(&mut b, 8, groups.len() as u16);
    for g in groups {
        let o = b.len();
        let n = if rgo { 0 } else { g.nsids.len() };
        b.resize(o + 32 + 4 * n, 0);
        put_u32(&mut b, o, g.grpid);
        put_u32(&mut b, o + 4, n as u32);
        put_u64(&mut b, o + 8, g.chgcnt);
        b[o + 16] = g.state;
        for (i, id) in g.nsids.iter().take(n).enumerate() {
            put_u32(&mut b, o + 32 + 4 * i, *id);
        }
    }
    b
}

/// Parse an ANA log page (bounded by the buffer).
pub fn parse_ana_log(b: &[u8]) -> Option<(u64, Vec<AnaGroup>)> {
    if b.len() < 16 {
        return None;
    }
    let chg = u64_at(b, 0);
    let n = u16_at(b, 8) as usize;
    let mut o = 16;
    let mut groups = Vec::new();
    for _ in 0..n {
        if o + 32 > b.len() {
            return None;
        }
        let nn = u32_at(b, o + 4) as usize;
        if nn > (b.len() - o - 32) / 4 {
            return None;
        }
        let nsids = (0..nn).map(|i| u32_at(b, o + 32 + 4 * i)).collect();
        groups.push(AnaGroup { grpid: u32_at(b, o), chgcnt: u64_at(b, o + 8), state: b[o + 16], nsids });
        o += 32 + 4 * nn;
    }
    Some((chg, groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_log_page_fields() {
        let c = GetLogPageCmd { lid: 0x70, lsp: 0, rae: true, len: 0x10_0000, offset: 1024, lsi: 0, nsid: 0 };
        let s = c.to_sqe(1);
        assert_eq!(s.cdw10, 0x70 | 1 << 15 | (0xffff << 16));
        assert_eq!(s.cdw11, 0x3);
        assert_eq!(GetLogPageCmd::parse(&s), c);
    }

    #[test]
    fn discovery_log_roundtrip() {
        let e = DiscoveryEntry {
            trtype: trtype::TCP,
            adrfam: adrfam::IPV4,
            subtype: subtype::NVME,
            treq: treq::NOT_SPECIFIED,
            portid: 1,
            cntlid: 0xffff,
            asqsz: 32,
            trsvcid: "4420".into(),
            subnqn: "nqn.2026-11.io.nvmf:default".into(),
            traddr: "127.0.0.1".into(),
            ..Default::default()
        };
        let b = encode_discovery_log(3, std::slice::from_ref(&e));
        assert_eq!(b.len(), 2048);
        assert_eq!(&b[1024 + 32..1024 + 37], b"4420 ");
        let h = parse_discovery_header(&b).unwrap();
        assert_eq!((h.genctr, h.numrec), (3, 1));
        assert_eq!(parse_discovery_entries(&b, h.numrec), vec![e]);
    }

    #[test]
    fn ana_log_roundtrip() {
        let g = vec![AnaGroup { grpid: 1, chgcnt: 2, state: ana_state::OPTIMIZED, nsids: vec![1, 2] }];
        let b = encode_ana_log(5, &g, false);
        assert_eq!(b.len(), 16 + 32 + 8);
        assert_eq!(parse_ana_log(&b).unwrap(), (5, g.clone()));
        let b = encode_ana_log(5, &g, true);
        assert_eq!(b.len(), 48);
        assert!(parse_ana_log(&b[..40]).is_none());
    }
}
