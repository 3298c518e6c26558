//! Fabrics commands (NVMe over Fabrics): Connect, Property Get/Set,
//! Disconnect, and the controller properties they read and write.

use crate::opcodes::{admin, fctype};
use crate::sqe::{Sgl, Sqe};
use crate::wire::*;

/// Size of the Connect command's data (host ID, controller ID, NQNs).
pub const CONNECT_DATA_LEN: usize = 1024;
/// Controller ID a host sends on an admin Connect to ask for a dynamic controller.
pub const CNTLID_DYNAMIC: u16 = 0xffff;
/// Command capsule size of an NVMe/TCP admin queue: SQE plus in-capsule data
/// (Linux `NVME_TCP_ADMIN_CCSZ`). The one source for host and target.
pub const ADMIN_CAPSULE_BYTES: u32 = 8192;
/// In-capsule data an admin queue carries at most: the capsule less its
/// 64-byte SQE (holds the 1024-byte Connect data and small Set Features).
pub const ADMIN_IN_CAPSULE_DATA_BYTES_MAX: u32 = ADMIN_CAPSULE_BYTES - crate::sqe::SQE_LEN as u32;
/// CATTR bit 2: the host disables SQ flow control (SQHD is then meaningless).
pub const CATTR_DISABLE_SQ_FLOW_CONTROL: u8 = 1 << 2;
/// Connect response DW0: authentication required (ATR) before other commands.
pub const CONNECT_DW0_AUTH_REQUIRED: u32 = 1 << 17;
/// Connect response DW0: secure channel concatenation required (ASCR).
pub const CONNECT_DW0_SECURE_CONCAT_REQUIRED: u32 = 1 << 18;

/// Parsed fields of a Connect command SQE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectCmd {
    pub recfmt: u16,
    pub qid: u16,
    /// Submission queue size, 0's based.
    pub sqsize: u16,
    pub cattr: u8,
    /// Keep Alive Timeout in milliseconds (admin queue; 0 = disabled).
    pub kato_ms: u32,
}

impl ConnectCmd {
    pub fn parse(sqe: &Sqe) -> ConnectCmd {
        ConnectCmd {
            recfmt: sqe.cdw10 as u16,
            qid: (sqe.cdw10 >> 16) as u16,
            sqsize: sqe.cdw11 as u16,
            cattr: (sqe.cdw11 >> 16) as u8,
            kato_ms: sqe.cdw12,
        }
    }
    /// Build the SQE (in-capsule data SGL for the 1024-byte Connect data).
    pub fn to_sqe(&self, cid: u16) -> Sqe {
        let mut s = Sqe::new(admin::FABRICS, cid, fctype::CONNECT as u32);
        s.sgl1 = Sgl::in_capsule(0, CONNECT_DATA_LEN as u32);
        s.cdw10 = self.recfmt as u32 | ((self.qid as u32) << 16);
        s.cdw11 = self.sqsize as u32 | ((self.cattr as u32) << 16);
        s.cdw12 = self.kato_ms;
        s
    }
}

/// Byte offsets in the Connect SQE, for the Invalid Parameters IPO field.
pub mod connect_sqe_off {
    pub const RECFMT: u16 = 40;
    pub const QID: u16 = 42;
    pub const SQSIZE: u16 = 44;
    pub const CATTR: u16 = 46;
    pub const KATO: u16 = 48;
}
/// Byte offsets in the Connect data, for the Invalid Parameters IPO field.
pub mod connect_data_off {
    pub const HOSTID: u16 = 0;
    pub const CNTLID: u16 = 16;
    pub const SUBNQN: u16 = 256;
    pub const HOSTNQN: u16 = 512;
}

/// Completion DW0 for "Connect Invalid Parameters": IATTR (bit 16, set when
/// the offset is into the Connect data) and IPO (bits 15:0).
pub fn connect_invalid_param_dw0(in_data: bool, offset: u16) -> u32 {
    ((in_data as u32) << 16) | offset as u32
}

/// Why a controller refused a Connect, in words, from its status and the
/// completion's DW0 (IATTR/IPO for Invalid Parameters). None for a status
/// that is not a Connect refusal.
pub fn connect_refusal(status: crate::Status, dw0: u32, subnqn: &str, hostnqn: &str) -> Option<String> {
    use crate::status::{cmd, sct};
    if status.sct != sct::COMMAND_SPECIFIC {
        return None;
    }
    let why = match status.sc {
        cmd::CONNECT_INCOMPATIBLE_FORMAT => "the controller does not support this Connect record format".to_string(),
        cmd::CONNECT_CTRL_BUSY => "the controller is busy (no more controllers or queues for now)".to_string(),
        cmd::CONNECT_RESTART_DISC => "the discovery controller asks to restart discovery".to_string(),
        cmd::CONNECT_INVALID_HOST => format!(
            "host {hostnqn} is not allowed to connect to subsystem {subnqn} (not among its hosts, or it must use \
             TLS or a different TLS identity)"
        ),
        cmd::CONNECT_INVALID_PARAM => {
            let (in_data, offset) = (dw0 & (1 << 16) != 0, dw0 as u16);
            match (in_data, offset) {
                (true, connect_data_off::SUBNQN) => {
                    format!("subsystem {subnqn} is not served on this port (or does not exist)")
                }
                (true, connect_data_off::HOSTNQN) => format!("host NQN {hostnqn} is refused as invalid"),
                (true, connect_data_off::CNTLID) => {
                    "the controller ID is unknown (the admin queue's controller is gone)".to_string()
                }
                (true, connect_data_off::HOSTID) => "the host ID is refused".to_string(),
                (false, connect_sqe_off::QID) => "the queue ID is refused (already connected, or too many)".to_string(),
                (false, connect_sqe_off::SQSIZE) => {
                    "the queue size is refused (over the controller's limit)".to_string()
                }
                (false, connect_sqe_off::KATO) => "the keep-alive timeout is refused".to_string(),
                (false, connect_sqe_off::CATTR) => "the Connect attributes are refused".to_string(),
                (in_data, offset) => format!(
                    "invalid parameter at byte {offset} of the Connect {}",
                    if in_data { "data" } else { "command" }
                ),
            }
        }
        _ => return None,
    };
    Some(why)
}

/// The 1024-byte Connect data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectData {
    pub hostid: [u8; 16],
    pub cntlid: u16,
    pub subnqn: String,
    pub hostnqn: String,
}

impl ConnectData {
    /// Parse; `None` if shorter than 1024 bytes. NQN fields are read up to the
    /// first NUL and may still be invalid: the caller validates them.
    pub fn parse(b: &[u8]) -> Option<ConnectData> {
        if b.len() < CONNECT_DATA_LEN {
            return None;
        }
        let mut hostid = [0u8; 16];
        hostid.copy_from_slice(&b[0..16]);
        Some(ConnectData {
            hostid,
            cntlid: u16_at(b, 16),
            subnqn: nqn_field(&b[256..512]),
            hostnqn: nqn_field(&b[512..768]),
        })
    }
    pub fn encode(&self) -> [u8; CONNECT_DATA_LEN] {
        let mut b = [0u8; CONNECT_DATA_LEN];
        b[0..16].copy_from_slice(&self.hostid);
        put_u16(&mut b, 16, self.cntlid);
        put_str(&mut b, 256, 256, &self.subnqn, 0);
        put_str(&mut b, 512, 256, &self.hostnqn, 0);
        b
    }
}

/// An NQN field: bytes up to the first NUL. Non-UTF-8 bytes become U+FFFD, so
/// such an NQN never matches a configured one.
fn nqn_field(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Property Get / Set fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PropertyCmd {
    /// true: 8-byte property (ATTRIB size bits = 1).
    pub size8: bool,
    pub offset: u32,
    /// Property Set value (ignored for Get).
    pub value: u64,
}

impl PropertyCmd {
    pub fn parse(sqe: &Sqe) -> PropertyCmd {
        PropertyCmd {
            size8: sqe.cdw10 & 0x7 == 1,
            offset: sqe.cdw11,
            value: sqe.cdw12 as u64 | ((sqe.cdw13 as u64) << 32),
        }
    }
    pub fn get_sqe(cid: u16, offset: u32, size8: bool) -> Sqe {
        let mut s = Sqe::new(admin::FABRICS, cid, fctype::PROPERTY_GET as u32);
        s.cdw10 = size8 as u32;
        s.cdw11 = offset;
        s
    }
    pub fn set_sqe(cid: u16, offset: u32, size8: bool, value: u64) -> Sqe {
        let mut s = Sqe::new(admin::FABRICS, cid, fctype::PROPERTY_SET as u32);
        s.cdw10 = size8 as u32;
        s.cdw11 = offset;
        s.cdw12 = value as u32;
        s.cdw13 = (value >> 32) as u32;
        s
    }
}

/// Disconnect SQE (NVMe-oF 1.1: deletes the I/O queue it is sent on).
pub fn disconnect_sqe(cid: u16) -> Sqe {
    let mut s = Sqe::new(admin::FABRICS, cid, fctype::DISCONNECT as u32);
    s.cdw10 = 0;
    s
}

/// Controller property offsets.
pub mod prop {
    pub const CAP: u32 = 0x00;
    pub const VS: u32 = 0x08;
    pub const CC: u32 = 0x14;
    pub const CSTS: u32 = 0x1c;
    pub const NSSR: u32 = 0x20;
}

/// Controller Capabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap {
    /// Maximum Queue Entries Supported, 0's based.
    pub mqes: u16,
    /// Worst-case time to ready in 500 ms units.
    pub to_500ms: u8,
    /// Supports the NVM command set (CSS bit 37).
    pub css_nvm: bool,
    /// Supports I/O command sets (CSS bit 43).
    pub css_io_sets: bool,
    /// Supports no I/O command set (CSS bit 44), as a discovery controller.
    pub css_admin_only: bool,
}

impl Cap {
    pub fn to_u64(&self) -> u64 {
        let mut v = self.mqes as u64;
        v |= 1 << 16; // CQR: queues must be physically contiguous (always, for fabrics).
        v |= (self.to_500ms as u64) << 24;
        v |= (self.css_nvm as u64) << 37;
        v |= (self.css_io_sets as u64) << 43;
        v |= (self.css_admin_only as u64) << 44;
        v
    }
    pub fn from_u64(v: u64) -> Cap {
        Cap {
            mqes: v as u16,
            to_500ms: (v >> 24) as u8,
            css_nvm: (v >> 37) & 1 == 1,
            css_io_sets: (v >> 43) & 1 == 1,
            css_admin_only: (v >> 44) & 1 == 1,
        }
    }
}

/// Controller Configuration bits.
pub mod cc {
    pub const EN: u32 = 1 << 0;
    pub const CSS_SHIFT: u32 = 4;
    pub const CSS_MASK: u32 = 0x7 << 4;
    pub const MPS_SHIFT: u32 = 7;
    pub const SHN_SHIFT: u32 = 14;
    pub const SHN_MASK: u32 = 0x3 << 14;
    pub const IOSQES_SHIFT: u32 = 16;
    pub const IOCQES_SHIFT: u32 = 20;
    /// A value the Linux host writes: EN, CSS NVM, MPS 4 KiB, IOSQES 6, IOCQES 4.
    pub const LINUX_ENABLE: u32 = EN | (6 << IOSQES_SHIFT) | (4 << IOCQES_SHIFT);
}

/// Controller Status bits.
pub mod csts {
    pub const RDY: u32 = 1 << 0;
    pub const CFS: u32 = 1 << 1;
    pub const SHST_SHIFT: u32 = 2;
    pub const SHST_MASK: u32 = 0x3 << 2;
    pub const SHST_OCCURRING: u32 = 1 << 2;
    pub const SHST_COMPLETE: u32 = 2 << 2;
}

/// Version register values.
pub mod vs {
    pub const V1_3: u32 = 0x0001_0300;
    pub const V1_4: u32 = 0x0001_0400;
    pub const V2_0: u32 = 0x0002_0000;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_roundtrip_and_offsets() {
        let c = ConnectCmd { recfmt: 0, qid: 3, sqsize: 127, cattr: CATTR_DISABLE_SQ_FLOW_CONTROL, kato_ms: 0 };
        let sqe = c.to_sqe(5);
        let b = sqe.to_bytes();
        assert_eq!(b[0], 0x7f);
        assert_eq!(b[4], 0x01, "FCTYPE Connect");
        assert_eq!(&b[40..48], &[0, 0, 3, 0, 127, 0, 4, 0]);
        assert_eq!(ConnectCmd::parse(&Sqe::decode(&b)), c);

        let d = ConnectData {
            hostid: [7; 16],
            cntlid: CNTLID_DYNAMIC,
            subnqn: "nqn.2026-11.io.nvmf:default".into(),
            hostnqn: "nqn.2014-08.org.nvmexpress:uuid:0000".into(),
        };
        let bytes = d.encode();
        assert_eq!(&bytes[16..18], &[0xff, 0xff]);
        assert_eq!(&bytes[256..260], b"nqn.");
        assert_eq!(bytes[256 + 27], 0);
        assert_eq!(ConnectData::parse(&bytes).unwrap(), d);
        assert!(ConnectData::parse(&bytes[..1000]).is_none());
        assert_eq!(connect_invalid_param_dw0(true, connect_data_off::SUBNQN), 0x0001_0100);
        let invalid =
            crate::Status::new(crate::status::sct::COMMAND_SPECIFIC, crate::status::cmd::CONNECT_INVALID_PARAM);
        let why = connect_refusal(invalid, connect_invalid_param_dw0(true, connect_data_off::SUBNQN), "nqn.x:s", "h");
        assert_eq!(why.as_deref(), Some("subsystem nqn.x:s is not served on this port (or does not exist)"));
        let why = connect_refusal(invalid, connect_invalid_param_dw0(false, connect_sqe_off::SQSIZE), "s", "h");
        assert!(why.unwrap().contains("queue size"));
        let host = crate::Status::new(crate::status::sct::COMMAND_SPECIFIC, crate::status::cmd::CONNECT_INVALID_HOST);
        assert!(connect_refusal(host, 0, "s", "nqn.h").unwrap().contains("host nqn.h is not allowed"));
        assert_eq!(connect_refusal(crate::Status::new(0, 2), 0, "s", "h"), None);
    }

    #[test]
    fn property_and_cap() {
        let s = PropertyCmd::set_sqe(1, prop::CC, false, cc::LINUX_ENABLE as u64);
        let p = PropertyCmd::parse(&s);
        assert_eq!((p.offset, p.value, p.size8), (prop::CC, 0x0046_0001, false));
        let cap = Cap { mqes: 127, to_500ms: 15, css_nvm: true, css_io_sets: false, css_admin_only: false };
        assert_eq!(cap.to_u64(), 0x0000_0020_0f01_007f);
        assert_eq!(Cap::from_u64(cap.to_u64()), cap);
    }
}
