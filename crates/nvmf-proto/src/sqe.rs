//! The 64-byte Submission Queue Entry and the SGL descriptors NVMe/TCP uses.

use crate::wire::*;

/// Size of a submission queue entry on the wire.
pub const SQE_LEN: usize = 64;

/// SGL descriptor types (byte 15, bits 7:4) and subtypes (bits 3:0).
pub mod sgl {
    pub const TYPE_DATA_BLOCK: u8 = 0x0;
    pub const TYPE_TRANSPORT_DATA_BLOCK: u8 = 0x5;
    pub const SUBTYPE_ADDRESS: u8 = 0x0;
    pub const SUBTYPE_OFFSET: u8 = 0x1;
    pub const SUBTYPE_TRANSPORT: u8 = 0xa;
    /// PSDT value in SQE byte 1 bits 7:6 for "SGL, metadata in a contiguous buffer".
    pub const PSDT_SGL_MPTR_CONTIG: u8 = 0x1;
}

/// A 16-byte SGL descriptor (SGL1 in DPTR).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Sgl {
    pub address: u64,
    pub length: u32,
    /// Byte 15: type in bits 7:4, subtype in bits 3:0.
    pub type_subtype: u8,
}

impl Sgl {
    /// In-capsule data: Data Block with Offset (type 0, subtype 1).
    pub fn in_capsule(offset: u64, length: u32) -> Sgl {
        Sgl { address: offset, length, type_subtype: (sgl::TYPE_DATA_BLOCK << 4) | sgl::SUBTYPE_OFFSET }
    }
    /// Data moved by R2T/H2CData or C2HData: Transport SGL Data Block (type 5, subtype 0xA).
    pub fn transport(length: u32) -> Sgl {
        Sgl { address: 0, length, type_subtype: (sgl::TYPE_TRANSPORT_DATA_BLOCK << 4) | sgl::SUBTYPE_TRANSPORT }
    }
    pub fn sgl_type(&self) -> u8 {
        self.type_subtype >> 4
    }
    pub fn sgl_subtype(&self) -> u8 {
        self.type_subtype & 0xf
    }
    pub fn is_in_capsule(&self) -> bool {
        self.sgl_type() == sgl::TYPE_DATA_BLOCK && self.sgl_subtype() == sgl::SUBTYPE_OFFSET
    }
    pub fn is_transport(&self) -> bool {
        self.sgl_type() == sgl::TYPE_TRANSPORT_DATA_BLOCK && self.sgl_subtype() == sgl::SUBTYPE_TRANSPORT
    }
    pub fn decode(b: &[u8]) -> Sgl {
        Sgl { address: u64_at(b, 0), length: u32_at(b, 8), type_subtype: b[15] }
    }
    pub fn encode(&self, b: &mut [u8]) {
        put_u64(b, 0, self.address);
        put_u32(b, 8, self.length);
        b[12..15].fill(0);
        b[15] = self.type_subtype;
    }
}

/// A submission queue entry, decoded into its dwords.
///
/// Fabrics commands reuse the same layout with FCTYPE in byte 4 (what is NSID
/// for other commands); [`Sqe::fctype`] reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Sqe {
    pub opcode: u8,
    /// Byte 1: FUSE in bits 1:0, PSDT in bits 7:6.
    pub flags: u8,
    pub cid: u16,
    pub nsid: u32,
    pub cdw2: u32,
    pub cdw3: u32,
    pub mptr: u64,
    pub sgl1: Sgl,
    pub cdw10: u32,
    pub cdw11: u32,
    pub cdw12: u32,
    pub cdw13: u32,
    pub cdw14: u32,
    pub cdw15: u32,
}

impl Sqe {
    pub fn new(opcode: u8, cid: u16, nsid: u32) -> Sqe {
        Sqe { opcode, cid, nsid, flags: sgl::PSDT_SGL_MPTR_CONTIG << 6, ..Default::default() }
    }
    /// Decode from exactly 64 bytes (the caller has checked the length).
    pub fn decode(b: &[u8]) -> Sqe {
        debug_assert!(b.len() >= SQE_LEN);
        Sqe {
            opcode: b[0],
            flags: b[1],
            cid: u16_at(b, 2),
            nsid: u32_at(b, 4),
            cdw2: u32_at(b, 8),
            cdw3: u32_at(b, 12),
            mptr: u64_at(b, 16),
            sgl1: Sgl::decode(&b[24..40]),
            cdw10: u32_at(b, 40),
            cdw11: u32_at(b, 44),
            cdw12: u32_at(b, 48),
            cdw13: u32_at(b, 52),
            cdw14: u32_at(b, 56),
            cdw15: u32_at(b, 60),
        }
    }
    pub fn encode(&self, b: &mut [u8]) {
        b[0] = self.opcode;
        b[1] = self.flags;
        put_u16(b, 2, self.cid);
        put_u32(b, 4, self.nsid);
        put_u32(b, 8, self.cdw2);
        put_u32(b, 12, self.cdw3);
        put_u64(b, 16, self.mptr);
        self.sgl1.encode(&mut b[24..40]);
        put_u32(b, 40, self.cdw10);
        put_u32(b, 44, self.cdw11);
        put_u32(b, 48, self.cdw12);
        put_u32(b, 52, self.cdw13);
        put_u32(b, 56, self.cdw14);
        put_u32(b, 60, self.cdw15);
    }
    pub fn to_bytes(&self) -> [u8; SQE_LEN] {
        let mut b = [0u8; SQE_LEN];
        self.encode(&mut b);
        b
    }
    /// Fabrics command type (byte 4), meaningful when opcode is 0x7F.
    pub fn fctype(&self) -> u8 {
        (self.nsid & 0xff) as u8
    }
    /// PSDT (bits 7:6 of byte 1): 0 = PRP, 1/2 = SGL.
    pub fn psdt(&self) -> u8 {
        self.flags >> 6
    }
    /// FUSE (bits 1:0 of byte 1).
    pub fn fuse(&self) -> u8 {
        self.flags & 0x3
    }

    // NVM command set accessors (Read, Write, Compare, Write Zeroes).
    /// Starting LBA (CDW10-11).
    pub fn slba(&self) -> u64 {
        (self.cdw10 as u64) | ((self.cdw11 as u64) << 32)
    }
    /// Number of logical blocks, 1-based (NLB in CDW12 is 0's based).
    pub fn nlb(&self) -> u32 {
        (self.cdw12 & 0xffff) + 1
    }
    /// Force Unit Access (CDW12 bit 30).
    pub fn fua(&self) -> bool {
        self.cdw12 & (1 << 30) != 0
    }
    /// Build a Read or Write: `nlb` counts blocks from 1.
    pub fn rw(opcode: u8, cid: u16, nsid: u32, slba: u64, nlb: u32) -> Sqe {
        debug_assert!((1..=65536).contains(&nlb));
        let mut s = Sqe::new(opcode, cid, nsid);
        s.cdw10 = slba as u32;
        s.cdw11 = (slba >> 32) as u32;
        s.cdw12 = (nlb - 1) & 0xffff;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_command_bytes() {
        let mut s = Sqe::rw(crate::opcodes::io::READ, 0x1234, 1, 0x1_0000_0002, 8);
        s.sgl1 = Sgl::transport(4096);
        let b = s.to_bytes();
        assert_eq!(b[0], 0x02);
        assert_eq!(b[1], 0x40, "PSDT=01b: SGL");
        assert_eq!(&b[2..4], &[0x34, 0x12]);
        assert_eq!(&b[4..8], &[1, 0, 0, 0]);
        assert_eq!(&b[24..40], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0x5a]);
        assert_eq!(&b[40..52], &[2, 0, 0, 0, 1, 0, 0, 0, 7, 0, 0, 0]);
        let d = Sqe::decode(&b);
        assert_eq!(d, s);
        assert_eq!(d.slba(), 0x1_0000_0002);
        assert_eq!(d.nlb(), 8);
        assert!(d.sgl1.is_transport());
    }

    #[test]
    fn in_capsule_sgl() {
        let s = Sgl::in_capsule(0, 512);
        let mut b = [0u8; 16];
        s.encode(&mut b);
        assert_eq!(b[15], 0x01);
        assert!(Sgl::decode(&b).is_in_capsule());
    }
}
