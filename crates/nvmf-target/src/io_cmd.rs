//! NVM command set I/O commands (Read, Write, Flush, Write Zeroes, Dataset
//! Management, Compare): the controller gate, validation against the
//! namespace and MDTS (turning a SQE into an [`IoPlan`]), ANA, and the
//! dispatch to the backend kind: [`crate::io_cmd_mem`] for memory namespaces
//! (executed within the call), [`crate::io_cmd_fd`] for file and block
//! namespaces (storage operations through the driver's ring).

use std::sync::Arc;

use nvmf_proto::opcodes::io;
use nvmf_proto::status::{generic, sct};
use nvmf_proto::{Sqe, Status};

use crate::fabrics::io_allowed;
use crate::slots::Work;
use crate::stats::latency_index;
use crate::subsys::{Namespace, NsTable};
use crate::tcp::{c2h_sgl_ok, host_data, st, HostData, Queue};

/// NSID meaning "every namespace" (Flush).
pub const NSID_ALL: u32 = 0xffff_ffff;
/// DSM ranges per command (NR is 8 bits, 0's based).
pub const DSM_RANGES_MAX: u32 = 256;
/// Bytes per DSM range descriptor.
pub const DSM_RANGE_LEN: usize = 16;

/// A validated I/O command. Offsets and lengths are in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoPlan {
    Read {
        off: u64,
        len: u32,
    },
    Write {
        off: u64,
        len: u32,
        fua: bool,
    },
    Compare {
        off: u64,
        len: u32,
    },
    /// `all`: NSID 0xFFFFFFFF, flush every namespace.
    Flush {
        all: bool,
    },
    WriteZeroes {
        off: u64,
        len: u64,
    },
    /// Ranges follow as data (`nr` × 16 bytes); `deallocate`: the AD attribute.
    Dsm {
        nr: u32,
        deallocate: bool,
    },
}

impl IoPlan {
    /// Bytes the host sends for this command (R2T / in-capsule).
    pub fn host_data_len(&self) -> u32 {
        match *self {
            IoPlan::Write { len, .. } | IoPlan::Compare { len, .. } => len,
            IoPlan::Dsm { nr, .. } => nr * DSM_RANGE_LEN as u32,
            _ => 0,
        }
    }
}

fn invalid_field() -> Status {
    Status::new(sct::GENERIC, generic::INVALID_FIELD).dnr()
}

/// Validate an I/O SQE. `mdts_bytes` bounds data transfers.
pub fn plan<'t>(
    sqe: &Sqe,
    ns_table: &'t NsTable,
    mdts_bytes: u32,
) -> Result<(Option<&'t Arc<Namespace>>, IoPlan), Status> {
    if sqe.opcode == io::FLUSH && sqe.nsid == NSID_ALL {
        return Ok((None, IoPlan::Flush { all: true }));
    }
    let ns = ns_table.get(sqe.nsid).ok_or(Status::new(sct::GENERIC, generic::INVALID_NAMESPACE).dnr())?;
    if sqe.fuse() != 0 {
        return Err(invalid_field());
    }
    let sgl_len = sqe.sgl1.length;
    let rw_range = |with_data: bool| -> Result<(u64, u64), Status> {
        let slba = sqe.slba();
        let nlb = sqe.nlb() as u64;
        let end = slba.checked_add(nlb).ok_or(Status::new(sct::GENERIC, generic::LBA_OUT_OF_RANGE).dnr())?;
        if end > ns.size_blocks() {
            return Err(Status::new(sct::GENERIC, generic::LBA_OUT_OF_RANGE).dnr());
        }
        let len = nlb << ns.block_shift;
        if with_data {
            if len > mdts_bytes as u64 {
                return Err(invalid_field());
            }
            if sgl_len as u64 != len {
                return Err(Status::new(sct::GENERIC, generic::DATA_SGL_LENGTH_INVALID).dnr());
            }
        }
        Ok((slba << ns.block_shift, len))
    };
    let plan = match sqe.opcode {
        io::READ => {
            let (off, len) = rw_range(true)?;
            IoPlan::Read { off, len: len as u32 }
        }
        io::WRITE => {
            let (off, len) = rw_range(true)?;
            IoPlan::Write { off, len: len as u32, fua: sqe.fua() }
        }
        io::COMPARE => {
            let (off, len) = rw_range(true)?;
            IoPlan::Compare { off, len: len as u32 }
        }
        io::FLUSH => IoPlan::Flush { all: false },
        io::WRITE_ZEROES => {
            let (off, len) = rw_range(false)?;
            IoPlan::WriteZeroes { off, len }
        }
        io::DATASET_MANAGEMENT => {
            let nr = (sqe.cdw10 & 0xff) + 1;
            let deallocate = sqe.cdw11 & (1 << 2) != 0;
            if sgl_len != nr * DSM_RANGE_LEN as u32 {
                return Err(Status::new(sct::GENERIC, generic::DATA_SGL_LENGTH_INVALID).dnr());
            }
            IoPlan::Dsm { nr, deallocate }
        }
        _ => return Err(Status::new(sct::GENERIC, generic::INVALID_OPCODE).dnr()),
    };
    Ok((Some(ns), plan))
}

/// Decode and bound-check DSM ranges: (byte offset, byte length) pairs.
pub fn dsm_ranges(ns: &Namespace, data: &[u8], nr: u32) -> Result<Vec<(u64, u64)>, Status> {
    debug_assert!(nr <= DSM_RANGES_MAX);
    let size = ns.size_blocks();
    let mut out = Vec::with_capacity(nr as usize);
    for r in data.chunks_exact(DSM_RANGE_LEN).take(nr as usize) {
        let nlb = u32::from_le_bytes([r[4], r[5], r[6], r[7]]) as u64;
        let slba = u64::from_le_bytes([r[8], r[9], r[10], r[11], r[12], r[13], r[14], r[15]]);
        if nlb == 0 {
            continue;
        }
        match slba.checked_add(nlb) {
            Some(end) if end <= size => out.push((slba << ns.block_shift, nlb << ns.block_shift)),
            _ => return Err(Status::new(sct::GENERIC, generic::LBA_OUT_OF_RANGE).dnr()),
        }
    }
    Ok(out)
}

impl Queue {
    /// An I/O command on an I/O queue.
    pub(crate) fn io_command(&mut self, sqe: Sqe, data: &[u8], out: &mut Vec<u8>) {
        let Some(c) = self.conn.as_mut() else { return };
        // One relaxed load: the controller must be enabled, in the epoch this
        // queue connected in (a reset or shutdown refuses further I/O).
        if !io_allowed(&c.ctrl, c.gate_open) {
            if c.ctrl.is_dead() {
                // The controller is gone (keep-alive expired, its admin queue
                // closed): run nothing and end the queue, as its wake-up is
                // about to. No answer: the host sees the connection end and
                // treats the command's fate as unknown, which its failover
                // rules handle (a Command Sequence Error with DNR would be a
                // hard error for a command that never ran).
                tracing::debug!("ctrl {}: command {} on a dead controller; closing", c.ctrl.cntlid, sqe.cid);
                self.abort_waiting(out);
                self.phase = crate::tcp::Phase::Closing;
                return;
            }
            // CC.EN = 0 or shut down: as Linux nvmet answers.
            return self.respond(out, sqe.cid, st(sct::GENERIC, generic::COMMAND_SEQUENCE_ERROR), 0, 0);
        }
        // The snapshot is moved out for the command (no refcount traffic on
        // the shared namespace per I/O) and put back afterwards.
        c.refresh_namespaces();
        let Some(table) = c.ns.take() else { return };
        self.io_command_on(&table, sqe, data, out);
        if let Some(c) = self.conn.as_mut() {
            c.ns = Some(table);
        }
    }

    fn io_command_on(&mut self, table: &Arc<NsTable>, sqe: Sqe, data: &[u8], out: &mut Vec<u8>) {
        let (ns, plan) = match plan(&sqe, table, self.limits.mdts_bytes) {
            Ok(v) => v,
            Err(s) => {
                tracing::trace!(cid = sqe.cid, "I/O command rejected: {s}");
                return self.respond(out, sqe.cid, s, 0, 0);
            }
        };
        if let (Some(n), Some(c)) = (ns, self.conn.as_mut()) {
            if let Some(sub) = c.ctrl.subsys.as_ref() {
                if let Some(s) = c.ana.refusal(sub, self.port.port_id, table, n.ana_group) {
                    return self.respond(out, sqe.cid, s, 0, 0);
                }
            }
        }
        let h2c_len = plan.host_data_len();
        if h2c_len > 0 {
            match host_data(&sqe, data, self.limits.mdts_bytes) {
                Err(s) => self.respond(out, sqe.cid, s, 0, 0),
                Ok(HostData::None) => {
                    self.respond(out, sqe.cid, st(sct::GENERIC, generic::DATA_SGL_LENGTH_INVALID), 0, 0)
                }
                Ok(HostData::Capsule(d)) => self.exec_io(&sqe, ns, table, plan, Some(d), out),
                Ok(HostData::R2t(len)) => {
                    // Compare keeps the media's data next to the host's.
                    let cap = if matches!(plan, IoPlan::Compare { .. }) { 2 * len as usize } else { len as usize };
                    self.start_r2t(sqe, Work::Io(plan), ns.cloned(), len, cap, out)
                }
            }
            return;
        }
        if let IoPlan::Read { .. } = plan {
            if let Err(s) = c2h_sgl_ok(&sqe, self.limits.mdts_bytes) {
                return self.respond(out, sqe.cid, s, 0, 0);
            }
        }
        self.exec_io(&sqe, ns, table, plan, None, out);
    }

    /// Execute a validated command whose host data (if any) is `data`.
    fn exec_io(
        &mut self,
        sqe: &Sqe,
        ns: Option<&Arc<Namespace>>,
        table: &Arc<NsTable>,
        plan: IoPlan,
        data: Option<&[u8]>,
        out: &mut Vec<u8>,
    ) {
        match ns {
            Some(n) if n.backend.fd().is_some() => self.fd_start(sqe, n.clone(), plan, data, out),
            Some(n) => {
                self.record_inline_latency(sqe.opcode);
                if let Some(s) = self.mem_exec(sqe, n, plan, data, out) {
                    self.respond(out, sqe.cid, s, 0, 0);
                }
            }
            // Flush of every namespace.
            None => self.flush_all(sqe, table, out),
        }
    }

    /// Execute a command whose host data came with R2T into slot `i`.
    pub(crate) fn exec_io_buffered(&mut self, i: usize, plan: IoPlan, out: &mut Vec<u8>) {
        let s = self.slots.get_mut(i).expect("slot");
        let ns = s.ns.clone().expect("an I/O transfer has its namespace");
        if ns.backend.fd().is_some() {
            return self.fd_start_slot(i, out);
        }
        let sqe = s.sqe;
        let buf = s.buf.take().expect("buffered transfer");
        let len = plan.host_data_len() as usize;
        self.free_slot(i);
        if let Some(st) = self.mem_exec(&sqe, &ns, plan, Some(buf.as_slice(len)), out) {
            self.respond(out, sqe.cid, st, 0, 0);
        }
    }

    /// Commands that complete within the call that received them: < 1 µs at
    /// callback resolution.
    #[inline]
    fn record_inline_latency(&self, opcode: u8) {
        if self.latency {
            if let Some(k) = latency_index(opcode) {
                self.counters.io.total[k].record(0);
                self.counters.io.backend[k].record(0);
            }
        }
    }

    /// Give slot `i` back, recording its latency.
    pub(crate) fn free_slot(&mut self, i: usize) {
        if self.latency {
            let s = self.slots.get(i).expect("slot");
            if let (Work::Io(_), Some(k)) = (s.work, latency_index(s.sqe.opcode)) {
                let backend_us = if s.submit_us != 0 { self.now_us.saturating_sub(s.submit_us) } else { 0 };
                self.counters.io.total[k].record(self.now_us.saturating_sub(s.arrival_us));
                self.counters.io.backend[k].record(backend_us);
            }
        }
        self.slots.free(i);
    }
}
