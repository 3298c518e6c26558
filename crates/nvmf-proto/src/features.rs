//! Get/Set Features command fields and feature values.

use crate::opcodes::admin;
use crate::sqe::Sqe;

/// Get/Set Features fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeatureCmd {
    pub fid: u8,
    /// Get: SEL (CDW10 bits 10:8). Set: SV (CDW10 bit 31) as 0/1.
    pub sel_or_sv: u8,
    pub cdw11: u32,
    pub nsid: u32,
}

impl FeatureCmd {
    pub fn parse_get(sqe: &Sqe) -> FeatureCmd {
        FeatureCmd { fid: sqe.cdw10 as u8, sel_or_sv: ((sqe.cdw10 >> 8) & 0x7) as u8, cdw11: sqe.cdw11, nsid: sqe.nsid }
    }
    pub fn parse_set(sqe: &Sqe) -> FeatureCmd {
        FeatureCmd { fid: sqe.cdw10 as u8, sel_or_sv: (sqe.cdw10 >> 31) as u8, cdw11: sqe.cdw11, nsid: sqe.nsid }
    }
    pub fn set_sqe(cid: u16, fid: u8, cdw11: u32) -> Sqe {
        let mut s = Sqe::new(admin::SET_FEATURES, cid, 0);
        s.cdw10 = fid as u32;
        s.cdw11 = cdw11;
        s
    }
    pub fn get_sqe(cid: u16, fid: u8) -> Sqe {
        let mut s = Sqe::new(admin::GET_FEATURES, cid, 0);
        s.cdw10 = fid as u32;
        s
    }
}

/// Number of Queues: both counts are 0's based in the wire value.
pub fn num_queues_value(nsq: u16, ncq: u16) -> u32 {
    (nsq.saturating_sub(1) as u32) | ((ncq.saturating_sub(1) as u32) << 16)
}

/// Decode a Number of Queues value into 1-based (submission, completion) counts.
pub fn num_queues_from(v: u32) -> (u32, u32) {
    ((v & 0xffff) + 1, (v >> 16) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn num_queues() {
        assert_eq!(num_queues_value(4, 4), 0x0003_0003);
        assert_eq!(num_queues_from(0x0003_0003), (4, 4));
        assert_eq!(num_queues_from(0xffff_ffff), (65536, 65536));
    }
}
