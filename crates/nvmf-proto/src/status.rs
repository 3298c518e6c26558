//! NVMe completion status: Status Code Type (SCT), Status Code (SC), More and
//! Do Not Retry, as carried in CQE DW3 bits 31:17.

use std::fmt;

/// A completion status without the phase tag.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Status {
    pub sct: u8,
    pub sc: u8,
    /// Do Not Retry: the same command would fail again.
    pub dnr: bool,
    pub more: bool,
    /// Command Retry Delay index (0 = none).
    pub crd: u8,
}

impl Status {
    pub const SUCCESS: Status = Status::new(sct::GENERIC, 0x00);

    pub const fn new(sct: u8, sc: u8) -> Status {
        Status { sct, sc, dnr: false, more: false, crd: 0 }
    }
    /// The same status with Do Not Retry set.
    pub const fn dnr(mut self) -> Status {
        self.dnr = true;
        self
    }
    pub const fn is_success(&self) -> bool {
        self.sct == 0 && self.sc == 0
    }
    /// The 16-bit field of CQE DW3 bits 31:16 (with phase bit 0 clear).
    pub const fn to_field(self) -> u16 {
        ((self.sc as u16) << 1)
            | (((self.sct & 0x7) as u16) << 9)
            | (((self.crd & 0x3) as u16) << 12)
            | ((self.more as u16) << 14)
            | ((self.dnr as u16) << 15)
    }
    pub const fn from_field(f: u16) -> Status {
        Status {
            sc: ((f >> 1) & 0xff) as u8,
            sct: ((f >> 9) & 0x7) as u8,
            crd: ((f >> 12) & 0x3) as u8,
            more: (f >> 14) & 1 == 1,
            dnr: (f >> 15) & 1 == 1,
        }
    }
    /// A short human name for the status, for logs and CLI errors.
    pub fn name(&self) -> &'static str {
        name(self.sct, self.sc)
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (sct {:#x} sc {:#04x}{})", self.name(), self.sct, self.sc, if self.dnr { " dnr" } else { "" })
    }
}
impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Status Code Types.
pub mod sct {
    pub const GENERIC: u8 = 0;
    pub const COMMAND_SPECIFIC: u8 = 1;
    pub const MEDIA: u8 = 2;
    pub const PATH: u8 = 3;
}

/// Generic command status (SCT 0).
pub mod generic {
    pub const SUCCESS: u8 = 0x00;
    pub const INVALID_OPCODE: u8 = 0x01;
    pub const INVALID_FIELD: u8 = 0x02;
    pub const CID_CONFLICT: u8 = 0x03;
    pub const DATA_TRANSFER_ERROR: u8 = 0x04;
    pub const INTERNAL_ERROR: u8 = 0x06;
    pub const ABORT_REQUESTED: u8 = 0x07;
    pub const ABORTED_SQ_DELETION: u8 = 0x08;
    pub const INVALID_NAMESPACE: u8 = 0x0b;
    pub const COMMAND_SEQUENCE_ERROR: u8 = 0x0c;
    pub const SGL_DESCRIPTOR_INVALID: u8 = 0x0d;
    pub const SGL_COUNT_INVALID: u8 = 0x0e;
    pub const DATA_SGL_LENGTH_INVALID: u8 = 0x0f;
    pub const SGL_TYPE_INVALID: u8 = 0x11;
    pub const SGL_OFFSET_INVALID: u8 = 0x16;
    pub const HOST_ID_INCONSISTENT: u8 = 0x18;
    pub const KEEP_ALIVE_EXPIRED: u8 = 0x19;
    pub const KEEP_ALIVE_INVALID: u8 = 0x1a;
    pub const NS_WRITE_PROTECTED: u8 = 0x20;
    pub const TRANSIENT_TRANSPORT_ERROR: u8 = 0x22;
    pub const LBA_OUT_OF_RANGE: u8 = 0x80;
    pub const CAPACITY_EXCEEDED: u8 = 0x81;
    pub const NS_NOT_READY: u8 = 0x82;
}

/// Command specific status (SCT 1), including Fabrics.
pub mod cmd {
    pub const INVALID_QID: u8 = 0x01;
    pub const INVALID_QUEUE_SIZE: u8 = 0x02;
    pub const ABORT_LIMIT_EXCEEDED: u8 = 0x03;
    pub const AER_LIMIT_EXCEEDED: u8 = 0x05;
    pub const INVALID_LOG_PAGE: u8 = 0x09;
    pub const FEATURE_NOT_SAVEABLE: u8 = 0x0d;
    pub const FEATURE_NOT_CHANGEABLE: u8 = 0x0e;
    pub const FEATURE_NOT_NS_SPECIFIC: u8 = 0x0f;
    pub const CONFLICTING_ATTRIBUTES: u8 = 0x80;
    /// Fabrics: Connect Incompatible Format.
    pub const CONNECT_INCOMPATIBLE_FORMAT: u8 = 0x80;
    /// Fabrics: Connect Controller Busy.
    pub const CONNECT_CTRL_BUSY: u8 = 0x81;
    /// Fabrics: Connect Invalid Parameters (DW0 carries IATTR/IPO).
    pub const CONNECT_INVALID_PARAM: u8 = 0x82;
    /// Fabrics: Connect Restart Discovery.
    pub const CONNECT_RESTART_DISC: u8 = 0x83;
    /// Fabrics: Connect Invalid Host.
    pub const CONNECT_INVALID_HOST: u8 = 0x84;
    /// Fabrics: Invalid Queue Type.
    pub const INVALID_QUEUE_TYPE: u8 = 0x85;
    /// Fabrics: Authentication Required (a command before the queue authenticated).
    pub const AUTH_REQUIRED: u8 = 0x91;
}

/// Media and data integrity errors (SCT 2).
pub mod media {
    pub const WRITE_FAULT: u8 = 0x80;
    pub const UNRECOVERED_READ: u8 = 0x81;
    pub const COMPARE_FAILURE: u8 = 0x85;
    pub const ACCESS_DENIED: u8 = 0x86;
}

/// Path related status (SCT 3).
pub mod path {
    pub const INTERNAL_PATH_ERROR: u8 = 0x00;
    pub const ANA_PERSISTENT_LOSS: u8 = 0x01;
    pub const ANA_INACCESSIBLE: u8 = 0x02;
    pub const ANA_TRANSITION: u8 = 0x03;
    pub const CTRL_PATHING_ERROR: u8 = 0x60;
    pub const HOST_PATHING_ERROR: u8 = 0x70;
    pub const ABORTED_BY_HOST: u8 = 0x71;
}

fn name(sct_v: u8, sc: u8) -> &'static str {
    match (sct_v, sc) {
        (0, 0x00) => "Success",
        (0, 0x01) => "Invalid Command Opcode",
        (0, 0x02) => "Invalid Field in Command",
        (0, 0x03) => "Command ID Conflict",
        (0, 0x04) => "Data Transfer Error",
        (0, 0x06) => "Internal Error",
        (0, 0x07) => "Command Abort Requested",
        (0, 0x08) => "Command Aborted due to SQ Deletion",
        (0, 0x0b) => "Invalid Namespace or Format",
        (0, 0x0c) => "Command Sequence Error",
        (0, 0x0d) => "Invalid SGL Segment Descriptor",
        (0, 0x0e) => "Invalid Number of SGL Descriptors",
        (0, 0x0f) => "Data SGL Length Invalid",
        (0, 0x11) => "SGL Descriptor Type Invalid",
        (0, 0x16) => "SGL Offset Invalid",
        (0, 0x18) => "Host Identifier Inconsistent Format",
        (0, 0x19) => "Keep Alive Timer Expired",
        (0, 0x1a) => "Keep Alive Timeout Invalid",
        (0, 0x20) => "Namespace is Write Protected",
        (0, 0x22) => "Transient Transport Error",
        (0, 0x80) => "LBA Out of Range",
        (0, 0x81) => "Capacity Exceeded",
        (0, 0x82) => "Namespace Not Ready",
        (1, 0x01) => "Invalid Queue Identifier",
        (1, 0x02) => "Invalid Queue Size",
        (1, 0x03) => "Abort Command Limit Exceeded",
        (1, 0x05) => "Asynchronous Event Request Limit Exceeded",
        (1, 0x09) => "Invalid Log Page",
        (1, 0x0d) => "Feature Identifier Not Saveable",
        (1, 0x0e) => "Feature Not Changeable",
        (1, 0x0f) => "Feature Not Namespace Specific",
        (1, 0x80) => "Connect Incompatible Format / Conflicting Attributes",
        (1, 0x81) => "Connect Controller Busy",
        (1, 0x82) => "Connect Invalid Parameters",
        (1, 0x83) => "Connect Restart Discovery",
        (1, 0x84) => "Connect Invalid Host",
        (1, 0x85) => "Invalid Queue Type",
        (1, 0x91) => "Authentication Required",
        (2, 0x80) => "Write Fault",
        (2, 0x81) => "Unrecovered Read Error",
        (2, 0x85) => "Compare Failure",
        (2, 0x86) => "Access Denied",
        (3, 0x00) => "Internal Path Error",
        (3, 0x01) => "Asymmetric Access Persistent Loss",
        (3, 0x02) => "Asymmetric Access Inaccessible",
        (3, 0x03) => "Asymmetric Access Transition",
        (3, 0x60) => "Controller Pathing Error",
        (3, 0x70) => "Host Pathing Error",
        (3, 0x71) => "Command Aborted By Host",
        _ => "Unknown Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_layout() {
        // LBA Out of Range (SCT 0, SC 0x80) with DNR: bits 8:1 = 0x80, bit 15.
        let s = Status::new(sct::GENERIC, generic::LBA_OUT_OF_RANGE).dnr();
        assert_eq!(s.to_field(), 0x8100);
        assert_eq!(Status::from_field(0x8100), s);
        // Connect Invalid Host: SCT 1 SC 0x84 -> 0x84<<1 | 1<<9 = 0x0308.
        let s = Status::new(sct::COMMAND_SPECIFIC, cmd::CONNECT_INVALID_HOST);
        assert_eq!(s.to_field(), 0x0308);
        assert_eq!(Status::from_field(0x0308 | 1), s, "phase bit ignored");
        assert_eq!(s.name(), "Connect Invalid Host");
    }
}
