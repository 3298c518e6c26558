//! Fabrics commands: Connect (admin and I/O queues), Property Get/Set and the
//! controller registers they expose (CAP, VS, CC, CSTS).

use std::sync::Arc;

use nvmf_proto::fabrics::{
    cc, connect_data_off, connect_invalid_param_dw0, connect_sqe_off, csts, prop, Cap, ConnectCmd, ConnectData,
    PropertyCmd, CATTR_DISABLE_SQ_FLOW_CONTROL, CNTLID_DYNAMIC, CONNECT_DATA_LEN,
};
use nvmf_proto::status::{cmd, generic, sct};
use nvmf_proto::{Sqe, Status, DISCOVERY_NQN};

use crate::ctrl::{Controller, CtrlKind};
use crate::subsys::{Port, Target};

/// Version we report: NVMe 1.3 (what the Linux host needs for Identify CNS 3
/// descriptors; nothing we implement depends on 1.4+ semantics).
pub const VERSION: u32 = nvmf_proto::fabrics::vs::V1_3;
/// CAP.TO in 500 ms units: how long a host waits for CSTS.RDY.
pub const CAP_TIMEOUT_500MS: u8 = 15;

/// A successful Connect.
pub struct Connected {
    pub ctrl: Arc<Controller>,
    pub qid: u16,
    /// 0's based.
    pub sqsize: u16,
    pub sq_flow_control_disabled: bool,
}

/// Failed Connect: status and the completion DW0 (IATTR/IPO for Invalid Parameters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectError {
    pub status: Status,
    pub dw0: u32,
}

fn invalid_param(in_data: bool, off: u16) -> ConnectError {
    ConnectError {
        status: Status::new(sct::COMMAND_SPECIFIC, cmd::CONNECT_INVALID_PARAM).dnr(),
        dw0: connect_invalid_param_dw0(in_data, off),
    }
}
fn status_only(s: Status) -> ConnectError {
    ConnectError { status: s, dw0: 0 }
}

/// Handle a Connect command with its 1024-byte data.
pub fn connect(target: &Target, port: &Port, sqe: &Sqe, data: &[u8]) -> Result<Connected, ConnectError> {
    let c = ConnectCmd::parse(sqe);
    if c.recfmt != 0 {
        return Err(status_only(Status::new(sct::COMMAND_SPECIFIC, cmd::CONNECT_INCOMPATIBLE_FORMAT).dnr()));
    }
    if data.len() < CONNECT_DATA_LEN {
        return Err(status_only(Status::new(sct::GENERIC, generic::DATA_SGL_LENGTH_INVALID).dnr()));
    }
    let d = ConnectData::parse(data).ok_or(invalid_param(true, connect_data_off::HOSTID))?;
    if nvmf_proto::validate_nqn(&d.hostnqn).is_err() {
        return Err(invalid_param(true, connect_data_off::HOSTNQN));
    }
    if nvmf_proto::validate_nqn(&d.subnqn).is_err() {
        return Err(invalid_param(true, connect_data_off::SUBNQN));
    }
    let flow_off = c.cattr & CATTR_DISABLE_SQ_FLOW_CONTROL != 0;
    let limits = &target.limits;

    if d.subnqn == DISCOVERY_NQN {
        if c.qid != 0 {
            return Err(invalid_param(false, connect_sqe_off::QID));
        }
        return admin_connect(target, port, &c, &d, None, flow_off);
    }
    let Some(sub) = target.subsystem(&d.subnqn).filter(|_| port.exports(&d.subnqn)) else {
        return Err(invalid_param(true, connect_data_off::SUBNQN));
    };
    if !sub.host_allowed(&d.hostnqn) {
        return Err(status_only(Status::new(sct::COMMAND_SPECIFIC, cmd::CONNECT_INVALID_HOST).dnr()));
    }
    if c.qid == 0 {
        return admin_connect(target, port, &c, &d, Some(sub), flow_off);
    }
    // I/O queue: find the controller created by this host's admin Connect.
    let Some(ctrl) = target.find_controller(&sub, d.cntlid, &d.hostnqn) else {
        return Err(invalid_param(true, connect_data_off::CNTLID));
    };
    let depth_max = sub.queue_depth_max.min(limits.queue_depth_max);
    if c.sqsize < 1 || c.sqsize as u32 + 1 > depth_max {
        return Err(invalid_param(false, connect_sqe_off::SQSIZE));
    }
    match ctrl.claim_qid(c.qid) {
        Ok(()) => {}
        Err(true) => return Err(invalid_param(false, connect_sqe_off::QID)),
        Err(false) => return Err(status_only(Status::new(sct::GENERIC, generic::COMMAND_SEQUENCE_ERROR).dnr())),
    }
    Ok(Connected { ctrl, qid: c.qid, sqsize: c.sqsize, sq_flow_control_disabled: flow_off })
}

fn admin_connect(
    target: &Target,
    port: &Port,
    c: &ConnectCmd,
    d: &ConnectData,
    sub: Option<Arc<crate::subsys::Subsystem>>,
    flow_off: bool,
) -> Result<Connected, ConnectError> {
    let limits = &target.limits;
    if d.cntlid != CNTLID_DYNAMIC {
        return Err(invalid_param(true, connect_data_off::CNTLID));
    }
    if c.sqsize < 1 || c.sqsize as u32 + 1 > limits.admin_queue_depth_max {
        return Err(invalid_param(false, connect_sqe_off::SQSIZE));
    }
    let kind = if sub.is_some() { CtrlKind::Io } else { CtrlKind::Discovery };
    let kato_ms = if c.kato_ms == 0 && kind == CtrlKind::Io { limits.kato_default_ms } else { c.kato_ms };
    let kato_ms = kato_ms.min(limits.kato_max_ms);
    let Some(ctrl) = target.create_controller(kind, sub, &d.hostnqn, d.hostid, port.port_id) else {
        return Err(status_only(Status::new(sct::COMMAND_SPECIFIC, cmd::CONNECT_CTRL_BUSY)));
    };
    ctrl.kato_ms.store(kato_ms, std::sync::atomic::Ordering::Relaxed);
    Ok(Connected { ctrl, qid: 0, sqsize: c.sqsize, sq_flow_control_disabled: flow_off })
}

/// Controller registers kept by the admin queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Registers {
    pub cc: u32,
    pub csts: u32,
}

/// What a CC write did, for the caller to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CcChange {
    None,
    Enabled,
    /// EN 1 -> 0: controller reset.
    Reset,
    Shutdown,
}

impl Registers {
    pub fn enabled(&self) -> bool {
        self.csts & csts::RDY != 0
    }
    fn write_cc(&mut self, v: u32) -> CcChange {
        let old = self.cc;
        self.cc = v;
        let mut change = CcChange::None;
        if v & cc::EN != 0 && old & cc::EN == 0 {
            self.csts |= csts::RDY;
            change = CcChange::Enabled;
        } else if v & cc::EN == 0 && old & cc::EN != 0 {
            self.csts &= !(csts::RDY | csts::SHST_MASK);
            change = CcChange::Reset;
        }
        if v & cc::SHN_MASK != 0 && old & cc::SHN_MASK == 0 {
            // Nothing is cached in the target: shutdown completes at once.
            self.csts = (self.csts & !csts::SHST_MASK) | csts::SHST_COMPLETE;
            change = CcChange::Shutdown;
        } else if v & cc::SHN_MASK == 0 {
            self.csts &= !csts::SHST_MASK;
        }
        change
    }
}

/// CAP for this controller.
pub fn cap_value(kind: CtrlKind, queue_depth_max: u32) -> u64 {
    Cap {
        mqes: (queue_depth_max.clamp(2, 65536) - 1) as u16,
        to_500ms: CAP_TIMEOUT_500MS,
        css_nvm: kind == CtrlKind::Io,
        css_io_sets: false,
        css_admin_only: kind == CtrlKind::Discovery,
    }
    .to_u64()
}

/// Property Get / Set. Returns (status, 64-bit value, CC change).
pub fn property(
    sqe: &Sqe,
    set: bool,
    regs: &mut Registers,
    kind: CtrlKind,
    queue_depth_max: u32,
) -> (Status, u64, CcChange) {
    let p = PropertyCmd::parse(sqe);
    let invalid = (Status::new(sct::GENERIC, generic::INVALID_FIELD).dnr(), 0, CcChange::None);
    let size_ok = |want8: bool| p.size8 == want8;
    if set {
        return match p.offset {
            prop::CC if size_ok(false) => (Status::SUCCESS, 0, regs.write_cc(p.value as u32)),
            // NSSR is optional; a write to a read-only register is invalid.
            _ => invalid,
        };
    }
    match p.offset {
        prop::CAP if size_ok(true) => (Status::SUCCESS, cap_value(kind, queue_depth_max), CcChange::None),
        prop::VS if size_ok(false) => (Status::SUCCESS, VERSION as u64, CcChange::None),
        prop::CC if size_ok(false) => (Status::SUCCESS, regs.cc as u64, CcChange::None),
        prop::CSTS if size_ok(false) => (Status::SUCCESS, regs.csts as u64, CcChange::None),
        _ => invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cc_enable_reset_shutdown() {
        let mut r = Registers::default();
        assert_eq!(r.write_cc(cc::LINUX_ENABLE), CcChange::Enabled);
        assert!(r.enabled());
        assert_eq!(r.write_cc(cc::LINUX_ENABLE | (1 << cc::SHN_SHIFT)), CcChange::Shutdown);
        assert_eq!(r.csts & csts::SHST_MASK, csts::SHST_COMPLETE);
        assert_eq!(r.write_cc(0), CcChange::Reset);
        assert_eq!(r.csts, 0);
    }

    #[test]
    fn property_sizes() {
        let mut r = Registers::default();
        let s = PropertyCmd::get_sqe(1, prop::CAP, true);
        let (st, v, _) = property(&s, false, &mut r, CtrlKind::Io, 128);
        assert!(st.is_success());
        assert_eq!(Cap::from_u64(v).mqes, 127);
        let s = PropertyCmd::get_sqe(1, prop::CAP, false);
        assert!(!property(&s, false, &mut r, CtrlKind::Io, 128).0.is_success());
        let s = PropertyCmd::get_sqe(1, prop::VS, false);
        assert_eq!(property(&s, false, &mut r, CtrlKind::Io, 128).1, VERSION as u64);
    }
}
