//! Fabrics commands: the FCTYPE dispatch, Connect (admin and I/O queues),
//! Property Get/Set with the controller registers they expose (CAP, VS, CC,
//! CSTS) and the controller lifecycle they drive (enable, reset, shutdown),
//! and Disconnect.
//!
//! Connect has two halves: the queue checks the capsule and hands a
//! [`ConnectRequest`] to its driver ([`Action::Connect`]); the driver runs
//! [`connect`] against the registry and feeds the answer to
//! [`Queue::on_connected`], which binds the queue and completes the command.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use nvmf_proto::auth::tls_psk::{self, PskOrigin};
use nvmf_proto::fabrics::{
    cc, connect_data_off, connect_invalid_param_dw0, connect_sqe_off, csts, prop, Cap, ConnectCmd, ConnectData,
    PropertyCmd, CATTR_DISABLE_SQ_FLOW_CONTROL, CNTLID_DYNAMIC, CONNECT_DATA_LEN, CONNECT_DW0_AUTH_REQUIRED,
};
use nvmf_proto::opcodes::fctype;
use nvmf_proto::status::{cmd, generic, sct};
use nvmf_proto::{FrameConfig, Role, Sqe, Status, DISCOVERY_NQN};

use crate::action::{Action, ConnectRequest};
use crate::admin::AdminState;
use crate::ana::AnaCache;
use crate::ctrl::{gate_open, Controller, CtrlKind, CtrlState};
use crate::slots::SlotTable;
use crate::subsys::{DhchapPolicy, Port, Target};
use crate::tcp::{capsule_len_max, host_data, st, Bound, HostData, Phase, Queue, QueueFlow};

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
    /// The host must authenticate this queue (DH-HMAC-CHAP) before anything else.
    pub dhchap: Option<Arc<DhchapPolicy>>,
    /// Admin queue with `dhchap`: where a secure channel concatenation
    /// keeps its generated TLS PSK.
    pub generated_psks: Option<Arc<crate::generated_psk::GeneratedPsks>>,
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
fn sequence_error() -> ConnectError {
    status_only(Status::new(sct::GENERIC, generic::COMMAND_SEQUENCE_ERROR).dnr())
}

/// Run a Connect against the registry (the driver's half). `data` is the
/// 1024-byte Connect data.
pub fn connect(
    target: &Target,
    port: &Port,
    tls_identity: Option<&str>,
    sqe: &Sqe,
    data: &[u8],
) -> Result<Connected, ConnectError> {
    let c = ConnectCmd::parse(sqe);
    if c.recfmt != 0 {
        return Err(status_only(Status::new(sct::COMMAND_SPECIFIC, cmd::CONNECT_INCOMPATIBLE_FORMAT).dnr()));
    }
    if data.len() < CONNECT_DATA_LEN {
        return Err(status_only(Status::new(sct::GENERIC, generic::DATA_SGL_LENGTH_INVALID).dnr()));
    }
    let d = ConnectData::parse(data).ok_or(invalid_param(true, connect_data_off::HOSTID))?;
    // An empty host NQN is what stock spdk_nvme_perf sends; SPDK's target
    // accepts it, and so do we where any host may connect (checked below).
    if !d.hostnqn.is_empty() && nvmf_proto::validate_nqn(&d.hostnqn).is_err() {
        return Err(invalid_param(true, connect_data_off::HOSTNQN));
    }
    if nvmf_proto::validate_nqn(&d.subnqn).is_err() {
        return Err(invalid_param(true, connect_data_off::SUBNQN));
    }
    let flow_off = c.cattr & CATTR_DISABLE_SQ_FLOW_CONTROL != 0;
    let limits = &target.limits;

    let has_tls_key = target.tls_key(&d.hostnqn, &d.subnqn).is_some();
    if let Err(why) = crate::tls::check_connect(tls_identity, &d.hostnqn, &d.subnqn, has_tls_key) {
        tracing::debug!(host = %d.hostnqn, subsystem = %d.subnqn, "Connect refused: {why:?}");
        return Err(status_only(Status::new(sct::COMMAND_SPECIFIC, cmd::CONNECT_INVALID_HOST).dnr()));
    }
    if d.subnqn == DISCOVERY_NQN {
        if c.qid != 0 {
            return Err(invalid_param(false, connect_sqe_off::QID));
        }
        return admin_connect(target, port, &c, &d, None, flow_off);
    }
    let Some(sub) = target.subsystem(&d.subnqn).filter(|_| port.exports(&d.subnqn)) else {
        return Err(invalid_param(true, connect_data_off::SUBNQN));
    };
    let host_ok = if d.hostnqn.is_empty() { sub.allow_any_host() } else { sub.host_allowed(&d.hostnqn) };
    if !host_ok {
        return Err(status_only(Status::new(sct::COMMAND_SPECIFIC, cmd::CONNECT_INVALID_HOST).dnr()));
    }
    let dhchap = sub.dhchap_policy(&d.hostnqn);
    if c.qid == 0 {
        let generated_psks = dhchap.as_ref().map(|_| target.generated_psks.clone());
        return admin_connect(target, port, &c, &d, Some(sub), flow_off).map(|ok| Connected {
            dhchap,
            generated_psks,
            ..ok
        });
    }
    // Secure channel concatenation: an I/O queue over TLS with a generated
    // PSK proved the admin queue's DH-HMAC-CHAP exchange; it does not
    // authenticate again (Linux 6.15 nvmet: no ATR on I/O queues then).
    let generated = tls_identity.and_then(tls_psk::parse_identity).is_some_and(|p| p.origin == PskOrigin::Generated);
    let dhchap = if generated { None } else { dhchap };
    // I/O queue: find the controller created by this host's admin Connect.
    let Some(ctrl) = target.find_controller(&sub, d.cntlid, &d.hostnqn) else {
        return Err(invalid_param(true, connect_data_off::CNTLID));
    };
    // Like Linux nvmet: no I/O queue on a controller that is not enabled
    // (CC.EN = 0, or shut down).
    if ctrl.state() != CtrlState::Enabled {
        return Err(sequence_error());
    }
    let depth_max = sub.queue_depth_max.min(limits.queue_depth_max);
    if c.sqsize < 1 || c.sqsize as u32 + 1 > depth_max {
        return Err(invalid_param(false, connect_sqe_off::SQSIZE));
    }
    match ctrl.claim_qid(c.qid) {
        Ok(()) => {}
        Err(true) => return Err(invalid_param(false, connect_sqe_off::QID)),
        Err(false) => return Err(sequence_error()),
    }
    Ok(Connected {
        ctrl,
        qid: c.qid,
        sqsize: c.sqsize,
        sq_flow_control_disabled: flow_off,
        dhchap,
        generated_psks: None,
    })
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
    let kato_ms = c.kato_ms.min(limits.kato_max_ms);
    let Some(ctrl) = target.create_controller(kind, sub, &d.hostnqn, d.hostid, port.port_id) else {
        return Err(status_only(Status::new(sct::COMMAND_SPECIFIC, cmd::CONNECT_CTRL_BUSY)));
    };
    ctrl.kato_ms.store(kato_ms, Ordering::Relaxed);
    Ok(Connected {
        ctrl,
        qid: 0,
        sqsize: c.sqsize,
        sq_flow_control_disabled: flow_off,
        dhchap: None,
        generated_psks: None,
    })
}

/// Controller registers kept by the admin queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Registers {
    pub cc: u32,
    pub csts: u32,
    /// CC.EN went 1 -> 0 and CSTS.RDY waits for the I/O queues to end.
    pub resetting: bool,
    /// Namespace flushes of a shutdown still running.
    pub shutdown_flushes: u32,
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
    /// Whether admin commands other than Fabrics may run (CC.EN = 1 and ready).
    pub fn enabled(&self) -> bool {
        self.cc & cc::EN != 0 && self.csts & csts::RDY != 0
    }
    pub fn write_cc(&mut self, v: u32) -> CcChange {
        let old = self.cc;
        self.cc = v;
        let mut change = CcChange::None;
        if v & cc::EN != 0 && old & cc::EN == 0 {
            self.csts = (self.csts | csts::RDY) & !csts::SHST_MASK;
            self.resetting = false;
            change = CcChange::Enabled;
        } else if v & cc::EN == 0 && old & cc::EN != 0 {
            // RDY drops once the I/O queues have ended (see `csts`).
            self.csts &= !csts::SHST_MASK;
            self.resetting = true;
            change = CcChange::Reset;
        }
        if v & cc::SHN_MASK != 0 && old & cc::SHN_MASK == 0 {
            self.csts = (self.csts & !csts::SHST_MASK) | csts::SHST_OCCURRING;
            change = CcChange::Shutdown;
        }
        change
    }
    /// Every flush of a shutdown is done: CSTS.SHST complete.
    pub fn shutdown_done(&mut self) {
        debug_assert_eq!(self.shutdown_flushes, 0);
        self.csts = (self.csts & !csts::SHST_MASK) | csts::SHST_COMPLETE;
    }
    /// CSTS as the host reads it: RDY stays 1 after a reset until every I/O
    /// queue of the controller has ended.
    pub fn csts(&mut self, io_queues_live: u32) -> u32 {
        if self.resetting && io_queues_live == 0 {
            self.resetting = false;
            self.csts &= !csts::RDY;
        }
        self.csts
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

impl Queue {
    pub(crate) fn fabrics_command(&mut self, sqe: Sqe, data: &[u8], out: &mut Vec<u8>) -> QueueFlow {
        match sqe.fctype() {
            fctype::CONNECT => {
                if self.conn.is_some() {
                    self.respond(out, sqe.cid, st(sct::GENERIC, generic::COMMAND_SEQUENCE_ERROR), 0, 0);
                    return QueueFlow::Continue;
                }
                match host_data(&sqe, data, CONNECT_DATA_LEN as u32) {
                    Ok(HostData::Capsule(d)) if d.len() == CONNECT_DATA_LEN => {
                        self.connecting = Some(sqe.cid);
                        let port = self.port.clone();
                        let tls_identity = self.tls_identity.clone();
                        self.actions.push(Action::Connect(Box::new(ConnectRequest {
                            sqe,
                            data: d.to_vec(),
                            port,
                            tls_identity,
                        })));
                    }
                    // Connect data always travels in the capsule (the queue
                    // is not set up for R2T yet) and is exactly 1024 bytes.
                    Ok(_) => self.respond(out, sqe.cid, st(sct::GENERIC, generic::DATA_SGL_LENGTH_INVALID), 0, 0),
                    Err(s) => self.respond(out, sqe.cid, s, 0, 0),
                }
                QueueFlow::Continue
            }
            fctype::PROPERTY_GET | fctype::PROPERTY_SET if self.auth_pending() => {
                self.auth_required(out, sqe.cid);
                QueueFlow::Continue
            }
            fctype::PROPERTY_GET | fctype::PROPERTY_SET => {
                self.property(&sqe, sqe.fctype() == fctype::PROPERTY_SET, out);
                QueueFlow::Continue
            }
            fctype::AUTH_SEND | fctype::AUTH_RECV => {
                self.auth_command(sqe, data, sqe.fctype() == fctype::AUTH_SEND, out);
                QueueFlow::Continue
            }
            fctype::DISCONNECT => match &self.conn {
                Some(c) if c.qid != 0 => {
                    self.respond(out, sqe.cid, Status::SUCCESS, 0, 0);
                    QueueFlow::CloseAfterFlush
                }
                _ => {
                    self.respond(out, sqe.cid, st(sct::GENERIC, generic::INVALID_FIELD), 0, 0);
                    QueueFlow::Continue
                }
            },
            other => {
                tracing::debug!(peer = %self.peer, "unsupported Fabrics command type {other:#x}");
                self.respond(out, sqe.cid, st(sct::GENERIC, generic::INVALID_OPCODE), 0, 0);
                QueueFlow::Continue
            }
        }
    }

    /// The driver's answer to [`Action::Connect`]: bind the queue and complete
    /// the Connect command.
    pub fn on_connected(&mut self, result: Result<Connected, ConnectError>, now_us: u64, out: &mut Vec<u8>) {
        self.now_us = now_us;
        let Some(cid) = self.connecting.take() else {
            debug_assert!(false, "Connect result without a Connect");
            return;
        };
        if self.phase == Phase::Closing {
            // The queue went away meanwhile: give back what was taken.
            if let Ok(ok) = result {
                self.actions.push(Action::Release { ctrl: ok.ctrl, qid: ok.qid, counters: None });
            }
            return;
        }
        let ok = match result {
            Ok(ok) => ok,
            Err(e) => {
                crate::peer_warn!(self.now_us, "connect from {} refused: {}", self.peer, e.status);
                self.respond(out, cid, e.status, e.dw0, 0);
                return;
            }
        };
        let ctrl = ok.ctrl;
        let entries = ok.sqsize as u32 + 1;
        self.slots = SlotTable::new(entries);
        // Generation before the view: a change in between is picked up by
        // the first command's refresh.
        let gen = ctrl.subsys.as_ref().map_or(0, |s| s.ns_generation.load(Ordering::Acquire));
        let ns = ctrl.namespaces();
        let admin = (ok.qid == 0).then(|| Box::new(AdminState::new(self.now_us)));
        if ok.qid == 0 {
            tracing::info!(
                "ctrl {} connected: host {}, subsystem {}, peer {}, kato {} ms",
                ctrl.cntlid,
                ctrl.hostnqn,
                ctrl.nqn(),
                self.peer,
                ctrl.kato_ms.load(Ordering::Relaxed)
            );
        } else {
            tracing::debug!("ctrl {}: I/O queue {} connected ({} entries)", ctrl.cntlid, ok.qid, entries);
        }
        // An admin queue takes admin capsules only; an I/O queue its
        // configured capsules and H2CData up to MAXH2CDATA.
        if ok.qid != 0 {
            self.frame = FrameConfig { pdu_len_max: self.limits.pdu_len_max(), ..self.frame };
        } else {
            self.frame = FrameConfig {
                pdu_len_max: capsule_len_max(nvmf_proto::fabrics::ADMIN_IN_CAPSULE_DATA_BYTES_MAX),
                ..self.frame
            };
        }
        debug_assert_eq!(self.frame.role, Role::Controller);
        let counters = (ok.qid != 0).then(|| self.counters.clone());
        self.actions.push(Action::Bound { ctrl: ctrl.clone(), qid: ok.qid, counters });
        // A host that must authenticate stays on probation until it has.
        let tls = self.tls_identity.is_some();
        let auth = ok.dhchap.map(|p| {
            crate::auth::QueueAuth::new(p, &ctrl.hostnqn, ctrl.nqn()).with_concat(ok.generated_psks.clone(), tls)
        });
        let dw0_auth = if auth.is_some() { CONNECT_DW0_AUTH_REQUIRED } else { 0 };
        if auth.is_none() {
            self.actions.push(Action::Established);
        }
        let cntlid = ctrl.cntlid;
        let gate = gate_open(ctrl.epoch());
        self.conn = Some(Bound {
            ctrl,
            qid: ok.qid,
            sq_flow_control_disabled: ok.sq_flow_control_disabled,
            // SQHD after consuming the Connect itself.
            sqhd: if ok.sq_flow_control_disabled { 0 } else { (1 % entries) as u16 },
            sq_entries: entries,
            ns: Some(ns),
            ns_generation: gen,
            admin,
            ana: AnaCache::default(),
            gate_open: gate,
            auth,
        });
        self.respond(out, cid, Status::SUCCESS, cntlid as u32 | dw0_auth, 0);
    }

    fn property(&mut self, sqe: &Sqe, set: bool, out: &mut Vec<u8>) {
        let Some(c) = self.conn.as_mut() else {
            return self.respond(out, sqe.cid, st(sct::GENERIC, generic::COMMAND_SEQUENCE_ERROR), 0, 0);
        };
        let depth = c.ctrl.subsys.as_ref().map(|s| s.queue_depth_max).unwrap_or(2);
        let ctrl = c.ctrl.clone();
        let Some(a) = c.admin.as_mut() else {
            return self.respond(out, sqe.cid, st(sct::GENERIC, generic::INVALID_OPCODE), 0, 0);
        };
        let p = PropertyCmd::parse(sqe);
        let invalid = st(sct::GENERIC, generic::INVALID_FIELD);
        let size_ok = |want8: bool| p.size8 == want8;
        let (status, v) = if set {
            match p.offset {
                prop::CC if size_ok(false) => {
                    let change = a.regs.write_cc(p.value as u32);
                    self.cc_changed(&ctrl, change);
                    (Status::SUCCESS, 0)
                }
                // NSSR is optional; a write to a read-only register is invalid.
                _ => (invalid, 0),
            }
        } else {
            match p.offset {
                prop::CAP if size_ok(true) => (Status::SUCCESS, cap_value(ctrl.kind, depth)),
                prop::VS if size_ok(false) => (Status::SUCCESS, VERSION as u64),
                prop::CC if size_ok(false) => (Status::SUCCESS, a.regs.cc as u64),
                prop::CSTS if size_ok(false) => (Status::SUCCESS, a.regs.csts(ctrl.io_queues_live()) as u64),
                _ => (invalid, 0),
            }
        };
        self.respond(out, sqe.cid, status, v as u32, (v >> 32) as u32);
    }

    fn cc_changed(&mut self, ctrl: &Arc<Controller>, change: CcChange) {
        match change {
            CcChange::None => {}
            CcChange::Enabled => {
                tracing::debug!("ctrl {}: enabled", ctrl.cntlid);
                self.actions.push(Action::SetState { ctrl: ctrl.clone(), state: CtrlState::Enabled });
            }
            CcChange::Reset => {
                // Held AERs die with the reset; the host forgets them too.
                if let Some(a) = self.conn.as_mut().and_then(|c| c.admin.as_mut()) {
                    a.aers.clear();
                }
                tracing::info!("ctrl {}: reset by host (CC.EN 1 -> 0)", ctrl.cntlid);
                self.actions.push(Action::SetState { ctrl: ctrl.clone(), state: CtrlState::Disabled });
            }
            CcChange::Shutdown => {
                tracing::info!("ctrl {}: shutdown by host", ctrl.cntlid);
                self.actions.push(Action::SetState { ctrl: ctrl.clone(), state: CtrlState::ShuttingDown });
                self.start_shutdown_flushes();
            }
        }
    }

    /// A controller event woke this queue: it was killed, reset, or (admin
    /// queue) has events or a finished reset to report.
    pub fn on_wake(&mut self, now_us: u64, out: &mut Vec<u8>) -> QueueFlow {
        self.now_us = now_us;
        let Some(c) = self.conn.as_ref() else { return self.flow() };
        if c.ctrl.is_dead() {
            tracing::debug!("ctrl {}: queue {} closing (controller gone)", c.ctrl.cntlid, c.qid);
            self.abort_waiting(out);
            self.phase = Phase::Closing;
            return QueueFlow::CloseAfterFlush;
        }
        if c.qid != 0 && c.ctrl.epoch() != (c.gate_open >> 2) {
            // CC.EN 1 -> 0: end this queue's commands and go; the controller
            // reports RDY = 0 once every I/O queue has released its ID.
            tracing::debug!("ctrl {}: I/O queue {} torn down by a reset", c.ctrl.cntlid, c.qid);
            return self.on_shutdown(out);
        }
        if c.qid == 0 {
            self.deliver_events(out);
        }
        self.flow()
    }
}

/// Whether `ctrl`'s gate lets a queue of gate value `open` run I/O.
#[inline]
pub(crate) fn io_allowed(ctrl: &Controller, open: u64) -> bool {
    ctrl.gate() == open
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
        assert_eq!(r.csts(0) & csts::SHST_MASK, csts::SHST_OCCURRING);
        assert_eq!(r.write_cc(0), CcChange::Reset);
        // RDY stays while I/O queues still run, then drops.
        assert_eq!(r.csts(2) & csts::RDY, csts::RDY);
        assert_eq!(r.csts(0), 0);
    }

    #[test]
    fn cap_reports_queue_depth_and_kind() {
        assert_eq!(Cap::from_u64(cap_value(CtrlKind::Io, 128)).mqes, 127);
        assert!(Cap::from_u64(cap_value(CtrlKind::Discovery, 32)).css_admin_only);
    }
}
