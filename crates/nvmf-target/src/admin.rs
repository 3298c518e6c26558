//! Admin commands: Identify, Get Log Page, Get/Set Features, Keep Alive,
//! Asynchronous Event Request, Abort, for I/O and discovery controllers.
//!
//! Pure functions of the command, the registry and the admin queue's own
//! state; data for the host is written to an output buffer the transport
//! sends as C2HData.

use std::net::SocketAddr;

use nvmf_proto::identify::{
    cntrltype, encode_ns_id_descriptors, encode_ns_list, nidt, oncs, IdentifyCmd, IdentifyController,
    IdentifyNamespace, LbaFormat, NsIdDescriptor, IDENTIFY_LEN,
};
use nvmf_proto::log::{
    effects, encode_ana_log, encode_changed_ns_list, encode_effects_log, AnaGroup, GetLogPageCmd, SmartLog, ANA_LSP_RGO,
};
use nvmf_proto::opcodes::{admin, aen, cns, csi, fid, io, lid};
use nvmf_proto::status::{cmd, generic, sct};
use nvmf_proto::{Sqe, Status};

use crate::ctrl::{Controller, CtrlKind};
use crate::fabrics::{Registers, VERSION};
use crate::limits::{ADMIN_XFER_BYTES_MAX, ANA_GROUP_ID_MAX, NSID_MAX};
use crate::slots::Work;
use crate::subsys::{NsTable, Port, Target};
use crate::tcp::{c2h_sgl_ok, data_direction, host_data, HostData, Queue, DIR_C2H, DIR_H2C, NO_NAMESPACES};

/// Firmware revision reported in Identify Controller and the firmware slot log.
pub const FIRMWARE_REVISION: &str = "0.1.0";
/// Keep Alive granularity: KAS in 100 ms units.
pub const KAS_100MS: u16 = 1;
/// ANA Transition Time in seconds.
pub const ANATT_S: u8 = 10;
/// Size of the Host Behavior Support feature data.
const HOST_BEHAVIOR_LEN: usize = 512;

/// State an admin queue keeps for its controller.
pub struct AdminState {
    pub regs: Registers,
    /// Last command seen on the admin queue (keep-alive traffic).
    pub last_traffic_us: u64,
    /// I/O commands the controller had completed when the KATO-0 idle check
    /// last looked (traffic on I/O queues counts as life too).
    pub io_commands_seen: u64,
    /// CIDs of held Asynchronous Event Requests.
    pub aers: Vec<u16>,
    pub temp_threshold: u32,
    pub vwc_enabled: bool,
    /// (host timestamp ms, our now_ms when it was set).
    pub timestamp: Option<(u64, u64)>,
    pub host_behavior: Vec<u8>,
    pub irq_coalescing: u32,
    /// Namespaces a shutdown is flushing (keeps their descriptors open).
    pub shutdown_ns: Option<std::sync::Arc<NsTable>>,
}

impl AdminState {
    pub fn new(now_us: u64) -> AdminState {
        AdminState {
            regs: Registers::default(),
            last_traffic_us: now_us,
            io_commands_seen: 0,
            aers: Vec::new(),
            // 0x157 K = 70 C over-temperature threshold, a common default.
            temp_threshold: 0x157,
            vwc_enabled: true,
            timestamp: None,
            host_behavior: vec![0; HOST_BEHAVIOR_LEN],
            irq_coalescing: 0,
            shutdown_ns: None,
        }
    }
}

/// Everything an admin command may look at.
pub struct AdminCtx<'a> {
    pub target: &'a Target,
    pub ctrl: &'a Controller,
    pub ns: &'a NsTable,
    pub st: &'a mut AdminState,
    pub port: &'a Port,
    pub local: SocketAddr,
    pub now_ms: u64,
    /// In-capsule data bytes for I/O queues (IOCCSZ).
    pub icd_bytes: u32,
}

/// Result of an admin command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminOutcome {
    /// Complete with this status; DW0 as given. When the command transfers
    /// data to the host, `out` holds exactly the transfer length.
    Complete { status: Status, dw0: u32 },
    /// An AER: hold it until an event fires.
    HoldAer,
}

fn done(status: Status) -> AdminOutcome {
    AdminOutcome::Complete { status, dw0: 0 }
}
fn ok(dw0: u32) -> AdminOutcome {
    AdminOutcome::Complete { status: Status::SUCCESS, dw0 }
}
fn invalid_field() -> AdminOutcome {
    done(Status::new(sct::GENERIC, generic::INVALID_FIELD).dnr())
}
fn invalid_opcode() -> AdminOutcome {
    done(Status::new(sct::GENERIC, generic::INVALID_OPCODE).dnr())
}
fn invalid_ns() -> AdminOutcome {
    done(Status::new(sct::GENERIC, generic::INVALID_NAMESPACE).dnr())
}

/// Copy `page[offset..]` into `out`, truncated or zero padded to `xfer_len`.
fn put_page(out: &mut Vec<u8>, page: &[u8], offset: usize, xfer_len: usize) {
    out.clear();
    out.resize(xfer_len, 0);
    if offset < page.len() {
        let n = (page.len() - offset).min(xfer_len);
        out[..n].copy_from_slice(&page[offset..offset + n]);
    }
}

/// Execute an admin command (not Fabrics). `host_data` is the data the host
/// sent (Set Features), `out` receives data for the host (sized to the SGL).
pub fn execute(cx: &mut AdminCtx<'_>, sqe: &Sqe, host_data: &[u8], out: &mut Vec<u8>) -> AdminOutcome {
    out.clear();
    if !cx.st.regs.enabled() {
        return done(Status::new(sct::GENERIC, generic::COMMAND_SEQUENCE_ERROR).dnr());
    }
    let xfer = sqe.sgl1.length as usize;
    let disc = cx.ctrl.kind == CtrlKind::Discovery;
    match sqe.opcode {
        admin::IDENTIFY => identify(cx, sqe, out, xfer),
        admin::GET_LOG_PAGE => get_log_page(cx, sqe, out, xfer),
        admin::GET_FEATURES => get_features(cx, sqe, out, xfer),
        admin::SET_FEATURES => set_features(cx, sqe, host_data),
        admin::KEEP_ALIVE => ok(0),
        admin::ASYNC_EVENT_REQUEST => {
            if cx.st.aers.len() >= cx.target.limits.aer_max as usize {
                return done(Status::new(sct::COMMAND_SPECIFIC, cmd::AER_LIMIT_EXCEEDED));
            }
            AdminOutcome::HoldAer
        }
        // Commands complete too quickly to be aborted: DW0 bit 0 = "not aborted".
        admin::ABORT if !disc => ok(1),
        _ => invalid_opcode(),
    }
}

// ------------------------------------------------------------------ identify

fn identify_controller(cx: &AdminCtx<'_>) -> IdentifyController {
    let limits = &cx.target.limits;
    let aerl = limits.aer_max.clamp(1, 16) as u8 - 1;
    match &cx.ctrl.subsys {
        None => IdentifyController {
            firmware: FIRMWARE_REVISION.into(),
            cntlid: cx.ctrl.cntlid,
            ver: VERSION,
            oaes: aen::CFG_DISC_CHANGE,
            cntrltype: cntrltype::DISCOVERY,
            aerl,
            lpa: 1 << 2,
            kas: KAS_100MS,
            maxcmd: limits.admin_queue_depth_max.min(u16::MAX as u32) as u16,
            sgls: (1 << 0) | (1 << 2) | (1 << 20),
            subnqn: nvmf_proto::DISCOVERY_NQN.into(),
            ioccsz: (64 + cx.icd_bytes) / 16,
            iorcsz: 1,
            msdbd: 1,
            ..Default::default()
        },
        Some(sub) => {
            let mdts = (limits.mdts_bytes.max(4096) / 4096).trailing_zeros() as u8;
            IdentifyController {
                vid: 0,
                ssvid: 0,
                serial: sub.serial.clone(),
                model: sub.model.clone(),
                firmware: FIRMWARE_REVISION.into(),
                rab: 6,
                // Multiple ports, multiple controllers, ANA reporting.
                cmic: (1 << 0) | (1 << 1) | (1 << 3),
                mdts,
                cntlid: cx.ctrl.cntlid,
                ver: VERSION,
                oaes: aen::CFG_NS_ATTR | aen::CFG_ANA_CHANGE,
                // 128-bit host identifier.
                ctratt: 1 << 0,
                cntrltype: cntrltype::IO,
                fguid: sub.fguid,
                acl: 3,
                aerl,
                // Firmware slot 1 read-only, one slot.
                frmw: (1 << 0) | (1 << 1),
                // Commands supported and effects log, extended data for Get Log Page.
                lpa: (1 << 1) | (1 << 2),
                elpe: 0,
                wctemp: 0x157,
                cctemp: 0x175,
                kas: KAS_100MS,
                anatt: ANATT_S,
                anacap: (1 << 0) | (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4),
                anagrpmax: ANA_GROUP_ID_MAX,
                nanagrpid: ANA_GROUP_ID_MAX,
                sqes: 0x66,
                cqes: 0x44,
                maxcmd: sub.queue_depth_max.min(u16::MAX as u32) as u16,
                nn: NSID_MAX,
                oncs: oncs::COMPARE | oncs::DSM | oncs::WRITE_ZEROES,
                vwc: 1,
                sgls: (1 << 0) | (1 << 2) | (1 << 20),
                mnan: NSID_MAX,
                subnqn: sub.nqn.clone(),
                ioccsz: (64 + cx.icd_bytes) / 16,
                iorcsz: 1,
                icdoff: 0,
                msdbd: 1,
                ..Default::default()
            }
        }
    }
}

fn identify(cx: &mut AdminCtx<'_>, sqe: &Sqe, out: &mut Vec<u8>, xfer: usize) -> AdminOutcome {
    let id = IdentifyCmd::parse(sqe);
    if xfer != IDENTIFY_LEN {
        // Every Identify structure is 4 KiB; like Linux nvmet, a transfer of
        // another length is refused.
        return done(Status::new(sct::GENERIC, generic::DATA_SGL_LENGTH_INVALID).dnr());
    }
    let disc = cx.ctrl.kind == CtrlKind::Discovery;
    if disc && id.cns != cns::CONTROLLER {
        return invalid_opcode();
    }
    let page: Box<[u8; IDENTIFY_LEN]> = match id.cns {
        cns::CONTROLLER => identify_controller(cx).encode(),
        cns::NAMESPACE => {
            if id.nsid == 0 || id.nsid > NSID_MAX {
                return invalid_ns();
            }
            match cx.ns.get(id.nsid) {
                // An allocated-but-inactive NSID gets a zeroed structure.
                None => Box::new([0u8; IDENTIFY_LEN]),
                Some(ns) => {
                    let blocks = ns.size_blocks();
                    IdentifyNamespace {
                        nsze: blocks,
                        ncap: blocks,
                        nuse: blocks,
                        nlbaf: 0,
                        flbas: 0,
                        // Deallocated blocks read as zeros.
                        dlfeat: 1,
                        // Shared namespace (may be reached by several controllers).
                        nmic: 1,
                        nvmcap: ns.backend.size_bytes() as u128,
                        anagrpid: ns.ana_group,
                        nguid: ns.nguid,
                        eui64: ns.eui64,
                        lbaf: vec![LbaFormat { ms: 0, lbads: ns.block_shift as u8, rp: 0 }],
                        ..Default::default()
                    }
                    .encode()
                }
            }
        }
        cns::ACTIVE_NS_LIST | cns::CSI_ACTIVE_NS_LIST => {
            if id.nsid >= 0xffff_fffe {
                return invalid_ns();
            }
            if id.cns == cns::CSI_ACTIVE_NS_LIST && id.csi != csi::NVM {
                return {
                    put_page(out, &encode_ns_list(&[], 0)[..], 0, xfer);
                    ok(0)
                };
            }
            encode_ns_list(&cx.ns.nsids(), id.nsid)
        }
        cns::NS_ID_DESCRIPTORS => {
            let Some(ns) = cx.ns.get(id.nsid) else { return invalid_ns() };
            encode_ns_id_descriptors(&[
                NsIdDescriptor { nidt: nidt::EUI64, nid: ns.eui64.to_vec() },
                NsIdDescriptor { nidt: nidt::NGUID, nid: ns.nguid.to_vec() },
                NsIdDescriptor { nidt: nidt::UUID, nid: ns.uuid.to_vec() },
                NsIdDescriptor { nidt: nidt::CSI, nid: vec![csi::NVM] },
            ])
        }
        cns::CSI_NAMESPACE => {
            if id.csi != csi::NVM {
                return invalid_field();
            }
            if cx.ns.get(id.nsid).is_none() {
                return invalid_ns();
            }
            // NVM command set specific fields: all zero (no PI, no extended LBA formats).
            Box::new([0u8; IDENTIFY_LEN])
        }
        cns::CSI_CONTROLLER => {
            if id.csi != csi::NVM {
                return invalid_field();
            }
            // VSL/WZSL/WUSL/DMRL 0: no limits beyond MDTS.
            Box::new([0u8; IDENTIFY_LEN])
        }
        cns::CS_INDEPENDENT_NAMESPACE => {
            let Some(ns) = cx.ns.get(id.nsid) else { return invalid_ns() };
            let mut b = Box::new([0u8; IDENTIFY_LEN]);
            b[1] = 1; // NMIC: shared
            b[4..8].copy_from_slice(&ns.ana_group.to_le_bytes());
            b[13] = 1; // NSTAT: namespace ready
            b
        }
        cns::COMMAND_SET_STRUCTURE => {
            // One I/O command set combination: NVM only.
            let mut b = Box::new([0u8; IDENTIFY_LEN]);
            b[0] = 1;
            b
        }
        _ => return invalid_field(),
    };
    put_page(out, &page[..], 0, xfer);
    ok(0)
}

// ------------------------------------------------------------------ log pages

fn get_log_page(cx: &mut AdminCtx<'_>, sqe: &Sqe, out: &mut Vec<u8>, xfer: usize) -> AdminOutcome {
    let g = GetLogPageCmd::parse(sqe);
    if !g.offset.is_multiple_of(4) {
        return invalid_field();
    }
    let disc = cx.ctrl.kind == CtrlKind::Discovery;
    // NUMD and the SGL must describe the same transfer (Linux nvmet
    // answers a mismatch the same way).
    if g.len != xfer as u64 {
        return done(Status::new(sct::GENERIC, generic::DATA_SGL_LENGTH_INVALID).dnr());
    }
    let page: Vec<u8> = match g.lid {
        lid::DISCOVERY if disc => {
            let p = crate::discovery::discovery_log(cx.target, &cx.ctrl.hostnqn, cx.port, cx.local);
            if !g.rae {
                cx.ctrl.log_page_read(lid::DISCOVERY, false);
            }
            p
        }
        _ if disc => return done(Status::new(sct::COMMAND_SPECIFIC, cmd::INVALID_LOG_PAGE).dnr()),
        lid::SUPPORTED_LOG_PAGES => {
            let mut b = vec![0u8; 1024];
            for l in [lid::SUPPORTED_LOG_PAGES, lid::ERROR_INFO, lid::SMART_HEALTH, lid::FW_SLOT, lid::CHANGED_NS_LIST]
                .into_iter()
                .chain([lid::CMD_EFFECTS, lid::ANA])
            {
                b[l as usize * 4] = 1;
            }
            b
        }
        lid::ERROR_INFO => vec![0u8; 64],
        lid::SMART_HEALTH => {
            let (rc, wc, rb, wb) = cx.ctrl.io_totals();
            // Data units are thousands of 512-byte units, rounded up.
            let units = |b: u64| (b / 512).div_ceil(1000) as u128;
            SmartLog {
                temperature_k: 293,
                avail_spare: 100,
                spare_thresh: 10,
                data_units_read: units(rb),
                data_units_written: units(wb),
                host_reads: rc as u128,
                host_writes: wc as u128,
                ..Default::default()
            }
            .encode()
            .to_vec()
        }
        lid::FW_SLOT => {
            let mut b = vec![0u8; 512];
            b[0] = 1; // AFI: slot 1 active
            let fw = FIRMWARE_REVISION.as_bytes();
            b[8..16].fill(b' ');
            b[8..8 + fw.len()].copy_from_slice(fw);
            b
        }
        lid::CHANGED_NS_LIST => {
            let l = cx.ctrl.log_page_read(lid::CHANGED_NS_LIST, g.rae);
            encode_changed_ns_list(&l).to_vec()
        }
        lid::CMD_EFFECTS => {
            let a = effects::CSUPP;
            let admin_ops: Vec<(u8, u32)> = [
                admin::GET_LOG_PAGE,
                admin::IDENTIFY,
                admin::ABORT,
                admin::SET_FEATURES,
                admin::GET_FEATURES,
                admin::ASYNC_EVENT_REQUEST,
                admin::KEEP_ALIVE,
            ]
            .iter()
            .map(|&o| (o, a))
            .collect();
            let w = effects::CSUPP | effects::LBCC;
            let io_ops = [
                (io::FLUSH, w),
                (io::WRITE, w),
                (io::READ, a),
                (io::COMPARE, a),
                (io::WRITE_ZEROES, w),
                (io::DATASET_MANAGEMENT, w),
            ];
            encode_effects_log(&admin_ops, &io_ops).to_vec()
        }
        lid::ANA => {
            let Some(sub) = &cx.ctrl.subsys else { return invalid_field() };
            let chg = sub.ana_chgcnt.load(std::sync::atomic::Ordering::Relaxed);
            let mut groups: Vec<AnaGroup> = Vec::new();
            for ns in &cx.ns.list {
                match groups.iter_mut().find(|g| g.grpid == ns.ana_group) {
                    Some(g) => g.nsids.push(ns.nsid),
                    None => groups.push(AnaGroup {
                        grpid: ns.ana_group,
                        chgcnt: chg,
                        state: sub.ana_state(cx.ctrl.port_id, ns.ana_group),
                        nsids: vec![ns.nsid],
                    }),
                }
            }
            groups.sort_by_key(|g| g.grpid);
            if !g.rae {
                cx.ctrl.log_page_read(lid::ANA, false);
            }
            encode_ana_log(chg, &groups, g.lsp & ANA_LSP_RGO != 0)
        }
        _ => return done(Status::new(sct::COMMAND_SPECIFIC, cmd::INVALID_LOG_PAGE).dnr()),
    };
    if g.offset > page.len() as u64 {
        return invalid_field();
    }
    put_page(out, &page, g.offset as usize, xfer);
    ok(0)
}

// ------------------------------------------------------------------ features

fn get_features(cx: &mut AdminCtx<'_>, sqe: &Sqe, out: &mut Vec<u8>, xfer: usize) -> AdminOutcome {
    let f = nvmf_proto::features::FeatureCmd::parse_get(sqe);
    let disc = cx.ctrl.kind == CtrlKind::Discovery;
    if disc && f.fid != fid::KEEP_ALIVE_TIMER && f.fid != fid::ASYNC_EVENT_CONFIG {
        return invalid_field();
    }
    // SEL 3: supported capabilities: every feature here is changeable, none saveable.
    if f.sel_or_sv == 3 {
        return ok(1 << 2);
    }
    let st = &*cx.st;
    let v = match f.fid {
        fid::ARBITRATION | fid::POWER_MGMT | fid::ERROR_RECOVERY | fid::WRITE_ATOMICITY => 0,
        fid::TEMP_THRESHOLD => st.temp_threshold,
        fid::VOLATILE_WRITE_CACHE => st.vwc_enabled as u32,
        fid::NUM_QUEUES => {
            let n = cx.ctrl.io_queues_granted.load(std::sync::atomic::Ordering::Relaxed).max(1);
            nvmf_proto::features::num_queues_value(n as u16, n as u16)
        }
        fid::IRQ_COALESCING => st.irq_coalescing,
        fid::IRQ_CONFIG => f.cdw11 & 0xffff,
        fid::ASYNC_EVENT_CONFIG => cx.ctrl.event_config(),
        fid::KEEP_ALIVE_TIMER => cx.ctrl.kato_ms.load(std::sync::atomic::Ordering::Relaxed),
        fid::TIMESTAMP => {
            let (ts, origin) = match st.timestamp {
                Some((v, at)) => (v + cx.now_ms.saturating_sub(at), 1u8 << 1),
                None => (cx.now_ms, 0),
            };
            let mut b = [0u8; 8];
            b[..6].copy_from_slice(&ts.to_le_bytes()[..6]);
            b[6] = origin;
            put_page(out, &b, 0, xfer);
            0
        }
        fid::HOST_BEHAVIOR => {
            put_page(out, &st.host_behavior, 0, xfer);
            0
        }
        fid::HOST_ID => {
            // Only the 128-bit form (EXHID) exists on fabrics.
            if f.cdw11 & 1 == 0 {
                return invalid_field();
            }
            put_page(out, &cx.ctrl.hostid, 0, xfer);
            0
        }
        _ => return invalid_field(),
    };
    if out.len() != xfer {
        put_page(out, &[], 0, xfer);
    }
    ok(v)
}

fn set_features(cx: &mut AdminCtx<'_>, sqe: &Sqe, data: &[u8]) -> AdminOutcome {
    let f = nvmf_proto::features::FeatureCmd::parse_set(sqe);
    let disc = cx.ctrl.kind == CtrlKind::Discovery;
    if f.sel_or_sv != 0 {
        return done(Status::new(sct::COMMAND_SPECIFIC, cmd::FEATURE_NOT_SAVEABLE).dnr());
    }
    if disc && f.fid != fid::KEEP_ALIVE_TIMER && f.fid != fid::ASYNC_EVENT_CONFIG {
        return invalid_field();
    }
    match f.fid {
        fid::ARBITRATION | fid::POWER_MGMT | fid::ERROR_RECOVERY | fid::WRITE_ATOMICITY => ok(0),
        fid::TEMP_THRESHOLD => {
            cx.st.temp_threshold = f.cdw11 & 0xffff;
            ok(0)
        }
        fid::VOLATILE_WRITE_CACHE => {
            cx.st.vwc_enabled = f.cdw11 & 1 != 0;
            ok(0)
        }
        fid::NUM_QUEUES => {
            let (nsq, ncq) = nvmf_proto::features::num_queues_from(f.cdw11);
            if nsq == 65536 || ncq == 65536 {
                return invalid_field();
            }
            if cx.ctrl.connected_io_queues() > 0 {
                return done(Status::new(sct::GENERIC, generic::COMMAND_SEQUENCE_ERROR).dnr());
            }
            let n = nsq.min(ncq).min(cx.ctrl.io_queues_max).max(1);
            cx.ctrl.io_queues_granted.store(n, std::sync::atomic::Ordering::Relaxed);
            ok(nvmf_proto::features::num_queues_value(n as u16, n as u16))
        }
        fid::IRQ_COALESCING => {
            cx.st.irq_coalescing = f.cdw11 & 0xffff;
            ok(0)
        }
        fid::IRQ_CONFIG => ok(0),
        fid::ASYNC_EVENT_CONFIG => {
            let supported = if disc { aen::CFG_DISC_CHANGE } else { aen::CFG_NS_ATTR | aen::CFG_ANA_CHANGE };
            cx.ctrl.set_event_config(f.cdw11 & supported);
            ok(0)
        }
        fid::KEEP_ALIVE_TIMER => {
            let kato = f.cdw11.min(cx.target.limits.kato_max_ms);
            cx.ctrl.kato_ms.store(kato, std::sync::atomic::Ordering::Relaxed);
            ok(0)
        }
        fid::TIMESTAMP => {
            if data.len() < 8 {
                return done(Status::new(sct::GENERIC, generic::DATA_SGL_LENGTH_INVALID).dnr());
            }
            let mut b = [0u8; 8];
            b[..6].copy_from_slice(&data[..6]);
            cx.st.timestamp = Some((u64::from_le_bytes(b), cx.now_ms));
            ok(0)
        }
        fid::HOST_BEHAVIOR => {
            if data.len() < HOST_BEHAVIOR_LEN {
                return done(Status::new(sct::GENERIC, generic::DATA_SGL_LENGTH_INVALID).dnr());
            }
            cx.st.host_behavior.copy_from_slice(&data[..HOST_BEHAVIOR_LEN]);
            ok(0)
        }
        // The host identifier comes with Connect and cannot change afterwards.
        fid::HOST_ID => done(Status::new(sct::GENERIC, generic::COMMAND_SEQUENCE_ERROR).dnr()),
        _ => invalid_field(),
    }
}

// ------------------------------------------------------------------ on the queue

impl Queue {
    /// An admin command (not Fabrics) on the admin queue: its data comes in
    /// the capsule or with R2T; data for the host is at most
    /// [`ADMIN_XFER_BYTES_MAX`].
    pub(crate) fn admin_command(&mut self, sqe: Sqe, data: &[u8], out: &mut Vec<u8>) {
        let dir = data_direction(&sqe);
        if dir == DIR_H2C {
            let limit = nvmf_proto::fabrics::ADMIN_IN_CAPSULE_DATA_BYTES_MAX;
            match host_data(&sqe, data, limit) {
                Err(s) => self.respond(out, sqe.cid, s, 0, 0),
                Ok(HostData::None) => self.run_admin(&sqe, &[], out),
                Ok(HostData::Capsule(d)) => self.run_admin(&sqe, d, out),
                Ok(HostData::R2t(len)) => self.start_r2t(sqe, Work::Admin, None, len, len as usize, out),
            }
            return;
        }
        if dir == DIR_C2H {
            if let Err(s) = c2h_sgl_ok(&sqe, ADMIN_XFER_BYTES_MAX) {
                self.respond(out, sqe.cid, s, 0, 0);
                return;
            }
        }
        self.run_admin(&sqe, &[], out);
    }

    pub(crate) fn run_admin(&mut self, sqe: &Sqe, data: &[u8], out: &mut Vec<u8>) {
        let mut page = std::mem::take(&mut self.scratch);
        let outcome = {
            let Some(c) = self.conn.as_mut() else { return };
            c.refresh_namespaces();
            let Some(st_admin) = c.admin.as_mut() else { return };
            let mut cx = AdminCtx {
                target: &self.target,
                ctrl: &c.ctrl,
                ns: c.ns.as_deref().unwrap_or(&NO_NAMESPACES),
                st: st_admin,
                port: &self.port,
                local: self.local,
                now_ms: self.now_us / 1000,
                icd_bytes: self.limits.in_capsule_data_bytes,
            };
            execute(&mut cx, sqe, data, &mut page)
        };
        match outcome {
            AdminOutcome::Complete { status, dw0 } => {
                if status.is_success() && !page.is_empty() {
                    self.send_data_and_complete(out, sqe.cid, &page, dw0);
                } else {
                    self.respond(out, sqe.cid, status, dw0, 0);
                }
            }
            AdminOutcome::HoldAer => {
                if let Some(a) = self.conn.as_mut().and_then(|c| c.admin.as_mut()) {
                    a.aers.push(sqe.cid);
                }
                self.deliver_events(out);
            }
        }
        page.clear();
        // Keep no more than a typical page between commands.
        if page.capacity() > 2 * IDENTIFY_LEN {
            page = Vec::new();
        }
        self.scratch = page;
    }

    /// Complete held AERs with pending events.
    pub(crate) fn deliver_events(&mut self, out: &mut Vec<u8>) {
        loop {
            let Some(c) = self.conn.as_mut() else { return };
            let Some(a) = c.admin.as_mut() else { return };
            if a.aers.is_empty() || !c.ctrl.has_events() {
                return;
            }
            let Some(dw0) = c.ctrl.pop_event() else { return };
            let cid = a.aers.remove(0);
            tracing::debug!("ctrl {}: async event {dw0:#x}", c.ctrl.cntlid);
            self.respond(out, cid, Status::SUCCESS, dw0, 0);
        }
    }
}
