//! Identify data structures (NVMe Base: Identify Controller, Identify
//! Namespace, Namespace Identification Descriptors, namespace lists) and the
//! Identify command fields.

use crate::opcodes::admin;
use crate::sqe::{Sgl, Sqe};
use crate::wire::*;

/// Every Identify data structure is 4 KiB.
pub const IDENTIFY_LEN: usize = 4096;

/// Identify command fields (CDW10 CNS/CNTID, CDW11 CSI).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdentifyCmd {
    pub cns: u8,
    pub cntid: u16,
    pub csi: u8,
    pub nsid: u32,
}

impl IdentifyCmd {
    pub fn parse(sqe: &Sqe) -> IdentifyCmd {
        IdentifyCmd {
            cns: sqe.cdw10 as u8,
            cntid: (sqe.cdw10 >> 16) as u16,
            csi: (sqe.cdw11 >> 24) as u8,
            nsid: sqe.nsid,
        }
    }
    pub fn to_sqe(&self, cid: u16) -> Sqe {
        let mut s = Sqe::new(admin::IDENTIFY, cid, self.nsid);
        s.sgl1 = Sgl::transport(IDENTIFY_LEN as u32);
        s.cdw10 = self.cns as u32 | ((self.cntid as u32) << 16);
        s.cdw11 = (self.csi as u32) << 24;
        s
    }
}

/// Controller type (CNTRLTYPE).
pub mod cntrltype {
    pub const IO: u8 = 1;
    pub const DISCOVERY: u8 = 2;
    pub const ADMIN: u8 = 3;
}

/// Identify Controller: the fields this project sets or reads. Unlisted fields
/// encode as zero.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct IdentifyController {
    pub vid: u16,
    pub ssvid: u16,
    pub serial: String,
    pub model: String,
    pub firmware: String,
    pub rab: u8,
    pub ieee_oui: [u8; 3],
    /// Multi-path I/O and namespace sharing capabilities (bit 0 multiple
    /// ports, bit 1 multiple controllers, bit 3 ANA reporting).
    pub cmic: u8,
    /// Maximum Data Transfer Size as a power of two of the minimum page (4 KiB).
    pub mdts: u8,
    pub cntlid: u16,
    pub ver: u32,
    /// Optional Asynchronous Events Supported (bit 8 namespace attribute,
    /// bit 11 ANA change, bit 31 discovery log change).
    pub oaes: u32,
    pub ctratt: u32,
    pub cntrltype: u8,
    pub fguid: [u8; 16],
    pub oacs: u16,
    /// Abort Command Limit, 0's based.
    pub acl: u8,
    /// Asynchronous Event Request Limit, 0's based.
    pub aerl: u8,
    pub frmw: u8,
    /// Log Page Attributes (bit 1 command effects, bit 2 extended data).
    pub lpa: u8,
    /// Error Log Page Entries, 0's based.
    pub elpe: u8,
    pub npss: u8,
    pub wctemp: u16,
    pub cctemp: u16,
    /// Keep Alive Support granularity in 100 ms units.
    pub kas: u16,
    pub anatt: u8,
    pub anacap: u8,
    pub anagrpmax: u32,
    pub nanagrpid: u32,
    pub sqes: u8,
    pub cqes: u8,
    pub maxcmd: u16,
    pub nn: u32,
    pub oncs: u16,
    pub fuses: u16,
    pub fna: u8,
    pub vwc: u8,
    pub awun: u16,
    pub awupf: u16,
    pub acwu: u16,
    pub sgls: u32,
    pub mnan: u32,
    pub subnqn: String,
    /// I/O Queue Command Capsule Supported Size in 16-byte units.
    pub ioccsz: u32,
    /// I/O Queue Response Capsule Supported Size in 16-byte units.
    pub iorcsz: u32,
    pub icdoff: u16,
    pub fcatt: u8,
    pub msdbd: u8,
    pub ofcs: u16,
}

/// ONCS bits.
pub mod oncs {
    pub const COMPARE: u16 = 1 << 0;
    pub const WRITE_UNCORRECTABLE: u16 = 1 << 1;
    pub const DSM: u16 = 1 << 2;
    pub const WRITE_ZEROES: u16 = 1 << 3;
    pub const SAVE_SELECT: u16 = 1 << 4;
    pub const RESERVATIONS: u16 = 1 << 5;
    pub const TIMESTAMP: u16 = 1 << 6;
    pub const VERIFY: u16 = 1 << 7;
}

impl IdentifyController {
    pub fn encode(&self) -> Box<[u8; IDENTIFY_LEN]> {
        let mut b = Box::new([0u8; IDENTIFY_LEN]);
        put_u16(&mut b[..], 0, self.vid);
        put_u16(&mut b[..], 2, self.ssvid);
        put_str(&mut b[..], 4, 20, &self.serial, b' ');
        put_str(&mut b[..], 24, 40, &self.model, b' ');
        put_str(&mut b[..], 64, 8, &self.firmware, b' ');
        b[72] = self.rab;
        b[73..76].copy_from_slice(&self.ieee_oui);
        b[76] = self.cmic;
        b[77] = self.mdts;
        put_u16(&mut b[..], 78, self.cntlid);
        put_u32(&mut b[..], 80, self.ver);
        put_u32(&mut b[..], 92, self.oaes);
        put_u32(&mut b[..], 96, self.ctratt);
        b[111] = self.cntrltype;
        b[112..128].copy_from_slice(&self.fguid);
        put_u16(&mut b[..], 256, self.oacs);
        b[258] = self.acl;
        b[259] = self.aerl;
        b[260] = self.frmw;
        b[261] = self.lpa;
        b[262] = self.elpe;
        b[263] = self.npss;
        put_u16(&mut b[..], 266, self.wctemp);
        put_u16(&mut b[..], 268, self.cctemp);
        put_u16(&mut b[..], 320, self.kas);
        b[342] = self.anatt;
        b[343] = self.anacap;
        put_u32(&mut b[..], 344, self.anagrpmax);
        put_u32(&mut b[..], 348, self.nanagrpid);
        b[512] = self.sqes;
        b[513] = self.cqes;
        put_u16(&mut b[..], 514, self.maxcmd);
        put_u32(&mut b[..], 516, self.nn);
        put_u16(&mut b[..], 520, self.oncs);
        put_u16(&mut b[..], 522, self.fuses);
        b[524] = self.fna;
        b[525] = self.vwc;
        put_u16(&mut b[..], 526, self.awun);
        put_u16(&mut b[..], 528, self.awupf);
        put_u16(&mut b[..], 532, self.acwu);
        put_u32(&mut b[..], 536, self.sgls);
        put_u32(&mut b[..], 540, self.mnan);
        put_str(&mut b[..], 768, 256, &self.subnqn, 0);
        put_u32(&mut b[..], 1792, self.ioccsz);
        put_u32(&mut b[..], 1796, self.iorcsz);
        put_u16(&mut b[..], 1800, self.icdoff);
        b[1802] = self.fcatt;
        b[1803] = self.msdbd;
        put_u16(&mut b[..], 1804, self.ofcs);
        // Power state descriptor 0: max power 0 (not reported).
        b
    }

    /// Parse; `None` if shorter than 4096 bytes.
    pub fn parse(b: &[u8]) -> Option<IdentifyController> {
        if b.len() < IDENTIFY_LEN {
            return None;
        }
        let mut fguid = [0u8; 16];
        fguid.copy_from_slice(&b[112..128]);
        Some(IdentifyController {
            vid: u16_at(b, 0),
            ssvid: u16_at(b, 2),
            serial: get_str(b, 4, 20),
            model: get_str(b, 24, 40),
            firmware: get_str(b, 64, 8),
            rab: b[72],
            ieee_oui: [b[73], b[74], b[75]],
            cmic: b[76],
            mdts: b[77],
            cntlid: u16_at(b, 78),
            ver: u32_at(b, 80),
            oaes: u32_at(b, 92),
            ctratt: u32_at(b, 96),
            cntrltype: b[111],
            fguid,
            oacs: u16_at(b, 256),
            acl: b[258],
            aerl: b[259],
            frmw: b[260],
            lpa: b[261],
            elpe: b[262],
            npss: b[263],
            wctemp: u16_at(b, 266),
            cctemp: u16_at(b, 268),
            kas: u16_at(b, 320),
            anatt: b[342],
            anacap: b[343],
            anagrpmax: u32_at(b, 344),
            nanagrpid: u32_at(b, 348),
            sqes: b[512],
            cqes: b[513],
            maxcmd: u16_at(b, 514),
            nn: u32_at(b, 516),
            oncs: u16_at(b, 520),
            fuses: u16_at(b, 522),
            fna: b[524],
            vwc: b[525],
            awun: u16_at(b, 526),
            awupf: u16_at(b, 528),
            acwu: u16_at(b, 532),
            sgls: u32_at(b, 536),
            mnan: u32_at(b, 540),
            subnqn: get_str(b, 768, 256),
            ioccsz: u32_at(b, 1792),
            iorcsz: u32_at(b, 1796),
            icdoff: u16_at(b, 1800),
            fcatt: b[1802],
            msdbd: b[1803],
            ofcs: u16_at(b, 1804),
        })
    }

    /// Maximum data transfer in bytes, or `None` for "no limit" (MDTS 0).
    pub fn mdts_bytes(&self) -> Option<u64> {
        if self.mdts == 0 {
            None
        } else {
            Some(4096u64 << self.mdts.min(40))
        }
    }
    /// In-capsule data bytes an I/O command may carry.
    pub fn in_capsule_data_bytes(&self) -> u32 {
        (self.ioccsz.saturating_mul(16)).saturating_sub(64)
    }
}

/// One LBA format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LbaFormat {
    /// Metadata bytes per block.
    pub ms: u16,
    /// LBA data size as a power of two (9 = 512, 12 = 4096).
    pub lbads: u8,
    /// Relative performance (0 best).
    pub rp: u8,
}

/// Identify Namespace (NVM command set): the fields this project uses.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct IdentifyNamespace {
    pub nsze: u64,
    pub ncap: u64,
    pub nuse: u64,
    pub nsfeat: u8,
    /// Number of LBA formats, 0's based.
    pub nlbaf: u8,
    pub flbas: u8,
    pub dlfeat: u8,
    pub nmic: u8,
    pub noiob: u16,
    pub nvmcap: u128,
    pub npwg: u16,
    pub npwa: u16,
    pub npdg: u16,
    pub npda: u16,
    pub nows: u16,
    pub mssrl: u16,
    pub mcl: u32,
    pub msrc: u8,
    pub anagrpid: u32,
    pub nsattr: u8,
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
    pub lbaf: Vec<LbaFormat>,
}

impl IdentifyNamespace {
    pub fn encode(&self) -> Box<[u8; IDENTIFY_LEN]> {
        let mut b = Box::new([0u8; IDENTIFY_LEN]);
        put_u64(&mut b[..], 0, self.nsze);
        put_u64(&mut b[..], 8, self.ncap);
        put_u64(&mut b[..], 16, self.nuse);
        b[24] = self.nsfeat;
        b[25] = self.nlbaf;
        b[26] = self.flbas;
        b[33] = self.dlfeat;
        b[30] = self.nmic;
        put_u16(&mut b[..], 46, self.noiob);
        b[48..64].copy_from_slice(&self.nvmcap.to_le_bytes());
        put_u16(&mut b[..], 64, self.npwg);
        put_u16(&mut b[..], 66, self.npwa);
        put_u16(&mut b[..], 68, self.npdg);
        put_u16(&mut b[..], 70, self.npda);
        put_u16(&mut b[..], 72, self.nows);
        put_u16(&mut b[..], 74, self.mssrl);
        put_u32(&mut b[..], 76, self.mcl);
        b[80] = self.msrc;
        put_u32(&mut b[..], 92, self.anagrpid);
        b[99] = self.nsattr;
        b[104..120].copy_from_slice(&self.nguid);
        b[120..128].copy_from_slice(&self.eui64);
        for (i, f) in self.lbaf.iter().take(64).enumerate() {
            let o = 128 + 4 * i;
            put_u16(&mut b[..], o, f.ms);
            b[o + 2] = f.lbads;
            b[o + 3] = f.rp & 0x3;
        }
        b
    }

    pub fn parse(b: &[u8]) -> Option<IdentifyNamespace> {
        if b.len() < IDENTIFY_LEN {
            return None;
        }
        let nlbaf = b[25];
        let lbaf = (0..=(nlbaf as usize).min(63))
            .map(|i| {
                let o = 128 + 4 * i;
                LbaFormat { ms: u16_at(b, o), lbads: b[o + 2], rp: b[o + 3] & 0x3 }
            })
            .collect();
        let mut nguid = [0u8; 16];
        nguid.copy_from_slice(&b[104..120]);
        let mut eui64 = [0u8; 8];
        eui64.copy_from_slice(&b[120..128]);
        let mut cap = [0u8; 16];
        cap.copy_from_slice(&b[48..64]);
        Some(IdentifyNamespace {
            nsze: u64_at(b, 0),
            ncap: u64_at(b, 8),
            nuse: u64_at(b, 16),
            nsfeat: b[24],
            nlbaf,
            flbas: b[26],
            nmic: b[30],
            dlfeat: b[33],
            noiob: u16_at(b, 46),
            nvmcap: u128::from_le_bytes(cap),
            npwg: u16_at(b, 64),
            npwa: u16_at(b, 66),
            npdg: u16_at(b, 68),
            npda: u16_at(b, 70),
            nows: u16_at(b, 72),
            mssrl: u16_at(b, 74),
            mcl: u32_at(b, 76),
            msrc: b[80],
            anagrpid: u32_at(b, 92),
            nsattr: b[99],
            nguid,
            eui64,
            lbaf,
        })
    }

    /// The LBA format in use (FLBAS bits 3:0, plus bits 6:5 as the high bits).
    pub fn current_lbaf(&self) -> LbaFormat {
        let idx = ((self.flbas & 0xf) | ((self.flbas >> 1) & 0x30)) as usize;
        self.lbaf.get(idx).copied().unwrap_or_default()
    }
    /// Logical block size in bytes (0 when the format is absurd).
    pub fn block_size(&self) -> u32 {
        let l = self.current_lbaf().lbads;
        if (9..=16).contains(&l) {
            1 << l
        } else {
            0
        }
    }
}

/// Namespace Identification Descriptor types.
pub mod nidt {
    pub const EUI64: u8 = 1;
    pub const NGUID: u8 = 2;
    pub const UUID: u8 = 3;
    pub const CSI: u8 = 4;
}

/// A Namespace Identification Descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NsIdDescriptor {
    pub nidt: u8,
    pub nid: Vec<u8>,
}

/// Encode a descriptor list (CNS 0x03) into 4 KiB.
pub fn encode_ns_id_descriptors(list: &[NsIdDescriptor]) -> Box<[u8; IDENTIFY_LEN]> {
    let mut b = Box::new([0u8; IDENTIFY_LEN]);
    let mut o = 0;
    for d in list {
        let n = d.nid.len();
        if o + 4 + n > IDENTIFY_LEN {
            break;
        }
        b[o] = d.nidt;
        b[o + 1] = n as u8;
        b[o + 4..o + 4 + n].copy_from_slice(&d.nid);
        o += 4 + n;
    }
    b
}

/// Parse a descriptor list; stops at the first zero type or at a truncated entry.
pub fn parse_ns_id_descriptors(b: &[u8]) -> Vec<NsIdDescriptor> {
    let mut out = Vec::new();
    let mut o = 0;
    while o + 4 <= b.len() {
        let (t, n) = (b[o], b[o + 1] as usize);
        if t == 0 || n == 0 || o + 4 + n > b.len() {
            break;
        }
        out.push(NsIdDescriptor { nidt: t, nid: b[o + 4..o + 4 + n].to_vec() });
        o += 4 + n;
    }
    out
}

/// Encode an active namespace list: up to 1024 NSIDs greater than `after`, ascending.
pub fn encode_ns_list(nsids_sorted: &[u32], after: u32) -> Box<[u8; IDENTIFY_LEN]> {
    let mut b = Box::new([0u8; IDENTIFY_LEN]);
    for (i, id) in nsids_sorted.iter().filter(|&&id| id > after).take(IDENTIFY_LEN / 4).enumerate() {
        put_u32(&mut b[..], i * 4, *id);
    }
    b
}

/// Parse a namespace list (stops at the first zero).
pub fn parse_ns_list(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).take_while(|&x| x != 0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_offsets() {
        let c = IdentifyController {
            vid: 0x1b36,
            serial: "abc".into(),
            model: "nvmf".into(),
            firmware: "0.1".into(),
            mdts: 5,
            cntlid: 7,
            ver: 0x0002_0000,
            cntrltype: cntrltype::IO,
            kas: 10,
            sqes: 0x66,
            cqes: 0x44,
            nn: 1024,
            sgls: 0x0010_0005,
            subnqn: "nqn.2026-11.io.nvmf:default".into(),
            ioccsz: 516,
            iorcsz: 1,
            msdbd: 1,
            ..Default::default()
        };
        let b = c.encode();
        assert_eq!(&b[4..8], b"abc ");
        assert_eq!(b[23], b' ');
        assert_eq!(b[77], 5);
        assert_eq!(&b[78..80], &[7, 0]);
        assert_eq!(b[111], 1);
        assert_eq!(b[512], 0x66);
        assert_eq!(&b[768..772], b"nqn.");
        assert_eq!(&b[1792..1796], &516u32.to_le_bytes());
        assert_eq!(IdentifyController::parse(&b[..]).unwrap(), c);
        assert_eq!(c.mdts_bytes(), Some(128 * 1024));
        assert_eq!(c.in_capsule_data_bytes(), 8192);
    }

    #[test]
    fn namespace_roundtrip() {
        let n = IdentifyNamespace {
            nsze: 2 * 1024 * 1024,
            ncap: 2 * 1024 * 1024,
            nuse: 2 * 1024 * 1024,
            nlbaf: 0,
            flbas: 0,
            nguid: [1; 16],
            eui64: [2; 8],
            anagrpid: 1,
            lbaf: vec![LbaFormat { ms: 0, lbads: 9, rp: 0 }],
            ..Default::default()
        };
        let b = n.encode();
        assert_eq!(&b[0..8], &(2u64 * 1024 * 1024).to_le_bytes());
        assert_eq!(b[130], 9);
        assert_eq!(IdentifyNamespace::parse(&b[..]).unwrap(), n);
        assert_eq!(n.block_size(), 512);
    }

    #[test]
    fn descriptor_and_ns_lists() {
        let l = vec![
            NsIdDescriptor { nidt: nidt::NGUID, nid: vec![3; 16] },
            NsIdDescriptor { nidt: nidt::CSI, nid: vec![0] },
        ];
        let b = encode_ns_id_descriptors(&l);
        assert_eq!(&b[..4], &[2, 16, 0, 0]);
        assert_eq!(parse_ns_id_descriptors(&b[..]), l);
        let b = encode_ns_list(&[1, 2, 5], 1);
        assert_eq!(parse_ns_list(&b[..]), vec![2, 5]);
    }
}
