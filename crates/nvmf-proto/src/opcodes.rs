//! Opcodes and identifiers from the NVMe Base and NVM Command Set specifications.

/// Admin command opcodes.
pub mod admin {
    pub const DELETE_IO_SQ: u8 = 0x00;
    pub const CREATE_IO_SQ: u8 = 0x01;
    pub const GET_LOG_PAGE: u8 = 0x02;
    pub const DELETE_IO_CQ: u8 = 0x04;
    pub const CREATE_IO_CQ: u8 = 0x05;
    pub const IDENTIFY: u8 = 0x06;
    pub const ABORT: u8 = 0x08;
    pub const SET_FEATURES: u8 = 0x09;
    pub const GET_FEATURES: u8 = 0x0a;
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0c;
    pub const NS_MANAGEMENT: u8 = 0x0d;
    pub const FW_COMMIT: u8 = 0x10;
    pub const FW_DOWNLOAD: u8 = 0x11;
    pub const NS_ATTACHMENT: u8 = 0x15;
    pub const KEEP_ALIVE: u8 = 0x18;
    pub const DIRECTIVE_SEND: u8 = 0x19;
    pub const DIRECTIVE_RECV: u8 = 0x1a;
    pub const FABRICS: u8 = 0x7f;
    pub const FORMAT_NVM: u8 = 0x80;
}

/// NVM command set I/O opcodes.
pub mod io {
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
    pub const WRITE_UNCORRECTABLE: u8 = 0x04;
    pub const COMPARE: u8 = 0x05;
    pub const WRITE_ZEROES: u8 = 0x08;
    pub const DATASET_MANAGEMENT: u8 = 0x09;
    pub const VERIFY: u8 = 0x0c;
}

/// Fabrics command types (FCTYPE, SQE byte 4) under opcode 0x7F.
pub mod fctype {
    pub const PROPERTY_SET: u8 = 0x00;
    pub const CONNECT: u8 = 0x01;
    pub const PROPERTY_GET: u8 = 0x04;
    pub const AUTH_SEND: u8 = 0x05;
    pub const AUTH_RECV: u8 = 0x06;
    pub const DISCONNECT: u8 = 0x08;
}

/// Identify CNS values.
pub mod cns {
    pub const NAMESPACE: u8 = 0x00;
    pub const CONTROLLER: u8 = 0x01;
    pub const ACTIVE_NS_LIST: u8 = 0x02;
    pub const NS_ID_DESCRIPTORS: u8 = 0x03;
    pub const CSI_NAMESPACE: u8 = 0x05;
    pub const CSI_CONTROLLER: u8 = 0x06;
    pub const CSI_ACTIVE_NS_LIST: u8 = 0x07;
    pub const CS_INDEPENDENT_NAMESPACE: u8 = 0x08;
    pub const ALLOCATED_NS_LIST: u8 = 0x10;
    pub const CTRL_LIST: u8 = 0x13;
    pub const COMMAND_SET_STRUCTURE: u8 = 0x1c;
}

/// Log page identifiers.
pub mod lid {
    pub const SUPPORTED_LOG_PAGES: u8 = 0x00;
    pub const ERROR_INFO: u8 = 0x01;
    pub const SMART_HEALTH: u8 = 0x02;
    pub const FW_SLOT: u8 = 0x03;
    pub const CHANGED_NS_LIST: u8 = 0x04;
    pub const CMD_EFFECTS: u8 = 0x05;
    pub const ANA: u8 = 0x0c;
    pub const DISCOVERY: u8 = 0x70;
}

/// Feature identifiers.
pub mod fid {
    pub const ARBITRATION: u8 = 0x01;
    pub const POWER_MGMT: u8 = 0x02;
    pub const TEMP_THRESHOLD: u8 = 0x04;
    pub const ERROR_RECOVERY: u8 = 0x05;
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    pub const NUM_QUEUES: u8 = 0x07;
    pub const IRQ_COALESCING: u8 = 0x08;
    pub const IRQ_CONFIG: u8 = 0x09;
    pub const WRITE_ATOMICITY: u8 = 0x0a;
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0b;
    pub const AUTONOMOUS_POWER_STATE: u8 = 0x0c;
    pub const TIMESTAMP: u8 = 0x0e;
    pub const KEEP_ALIVE_TIMER: u8 = 0x0f;
    pub const HOST_BEHAVIOR: u8 = 0x16;
    pub const HOST_ID: u8 = 0x81;
}

/// Command Set Identifiers.
pub mod csi {
    pub const NVM: u8 = 0x00;
    pub const KEY_VALUE: u8 = 0x01;
    pub const ZNS: u8 = 0x02;
}

/// Asynchronous event completion DW0 fields.
pub mod aen {
    /// Async event type "notice".
    pub const TYPE_NOTICE: u32 = 0x2;
    /// Notice: Namespace Attribute Changed.
    pub const NOTICE_NS_CHANGED: u32 = 0x00;
    /// Notice: ANA change.
    pub const NOTICE_ANA_CHANGE: u32 = 0x03;
    /// Notice: Discovery Log Page Change.
    pub const NOTICE_DISC_CHANGE: u32 = 0xf0;

    /// Build the completion DW0 of an Asynchronous Event Request.
    pub const fn dw0(event_type: u32, info: u32, log_page: u8) -> u32 {
        (event_type & 0x7) | ((info & 0xff) << 8) | ((log_page as u32) << 16)
    }

    /// Async Event Configuration (feature 0x0B) enable bits.
    pub const CFG_NS_ATTR: u32 = 1 << 8;
    pub const CFG_FW_ACTIVATION: u32 = 1 << 9;
    pub const CFG_ANA_CHANGE: u32 = 1 << 11;
    pub const CFG_DISC_CHANGE: u32 = 1 << 31;
}
