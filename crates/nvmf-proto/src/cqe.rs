//! The 16-byte Completion Queue Entry.

use crate::status::Status;
use crate::wire::*;

/// Size of a completion queue entry on the wire.
pub const CQE_LEN: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Cqe {
    /// Command specific DW0 (e.g. the Connect response's CNTLID).
    pub dw0: u32,
    pub dw1: u32,
    /// SQ head pointer. With SQ flow control disabled hosts ignore it.
    pub sqhd: u16,
    pub sqid: u16,
    pub cid: u16,
    pub status: Status,
}

impl Cqe {
    pub fn new(cid: u16, status: Status) -> Cqe {
        Cqe { cid, status, ..Default::default() }
    }
    pub fn decode(b: &[u8]) -> Cqe {
        debug_assert!(b.len() >= CQE_LEN);
        Cqe {
            dw0: u32_at(b, 0),
            dw1: u32_at(b, 4),
            sqhd: u16_at(b, 8),
            sqid: u16_at(b, 10),
            cid: u16_at(b, 12),
            status: Status::from_field(u16_at(b, 14)),
        }
    }
    pub fn encode(&self, b: &mut [u8]) {
        put_u32(b, 0, self.dw0);
        put_u32(b, 4, self.dw1);
        put_u16(b, 8, self.sqhd);
        put_u16(b, 10, self.sqid);
        put_u16(b, 12, self.cid);
        put_u16(b, 14, self.status.to_field());
    }
    pub fn to_bytes(&self) -> [u8; CQE_LEN] {
        let mut b = [0u8; CQE_LEN];
        self.encode(&mut b);
        b
    }
    /// The 64-bit result of DW0..DW1 (Property Get returns 8-byte values here).
    pub fn result64(&self) -> u64 {
        self.dw0 as u64 | ((self.dw1 as u64) << 32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{generic, sct};

    #[test]
    fn bytes() {
        let c = Cqe {
            dw0: 0x0001,
            dw1: 0,
            sqhd: 5,
            sqid: 0,
            cid: 0xabcd,
            status: Status::new(sct::GENERIC, generic::INVALID_FIELD).dnr(),
        };
        let b = c.to_bytes();
        assert_eq!(b, [1, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0xcd, 0xab, 0x04, 0x80]);
        assert_eq!(Cqe::decode(&b), c);
    }
}
