//! I/O on file and block namespaces: every storage operation is an
//! [`Action::Storage`] the driver submits to the core's io_uring, completing
//! through [`Queue::on_storage`]. The core never blocks on storage: reads,
//! writes, Flush (`fdatasync`), Write Zeroes (`fallocate(ZERO_RANGE)`) and
//! Deallocate (`fallocate(PUNCH_HOLE)` on files, a discard command on block
//! devices) all go through the ring; io_uring runs the ones the kernel cannot
//! do without blocking (fsync, fallocate) on its own worker threads.
//!
//! Fallbacks, when the file system or device does not do an operation:
//! - Write Zeroes without ZERO_RANGE (tmpfs, NFS): zeros are written from a
//!   static page-aligned buffer, [`ZERO_CHUNK_BYTES`] at a time;
//! - Deallocate on a file without hole punching: the range is zeroed the same
//!   way (file namespaces promise that deallocated blocks read as zeros);
//! - Deallocate on a block device without the discard command (Linux < 6.12):
//!   `fallocate(PUNCH_HOLE)`, and if that is refused too the hint is dropped
//!   (block namespaces do not promise zeros: DLFEAT says so).
//!
//! A shutdown (CC.SHN) flushes every file and block namespace of the
//! subsystem from the admin queue the same way.

use std::os::fd::RawFd;
use std::sync::Arc;

use nvmf_proto::status::{generic, media, sct};
use nvmf_proto::{Sqe, Status};

use crate::action::{Action, StorageKind, StorageOp};
use crate::buf::DataBuf;
use crate::ctrl::CtrlState;
use crate::io_cmd::{dsm_ranges, IoPlan, DSM_RANGE_LEN};
use crate::slots::{Stage, Work};
use crate::subsys::{Namespace, NsTable};
use crate::tcp::{Queue, QueueFlow};

/// Zeros written per operation when a backend cannot zero a range itself.
pub const ZERO_CHUNK_BYTES: usize = 1 << 20;

#[repr(C, align(4096))]
struct Zeros([u8; ZERO_CHUNK_BYTES]);
/// Page-aligned zeros (valid under O_DIRECT), in .bss: never written.
static ZEROS: Zeros = Zeros([0; ZERO_CHUNK_BYTES]);

// Token layout: op (8 bits) | aux (16) | generation (16) | slot (16).
const OP_READ: u64 = 1;
const OP_WRITE: u64 = 2;
const OP_FSYNC: u64 = 3;
const OP_FALLOCATE: u64 = 4;
const OP_DISCARD: u64 = 5;
const OP_WRITE_ZEROS: u64 = 6;
/// Slot number of the admin queue's shutdown flushes (no command holds them).
const SHUTDOWN_SLOT: u16 = 0xffff;

fn token(slot: u16, generation: u16, op: u64, aux: u16) -> u64 {
    slot as u64 | (generation as u64) << 16 | (aux as u64) << 32 | op << 56
}
fn untoken(t: u64) -> (u16, u16, u64, u16) {
    (t as u16, (t >> 16) as u16, t >> 56, (t >> 32) as u16)
}

/// What a Write Zeroes or Deallocate step is doing.
mod step {
    /// The backend's own operation (fallocate, discard).
    pub const NATIVE: u8 = 0;
    /// Block device without discard: fallocate(PUNCH_HOLE).
    pub const PUNCH: u8 = 1;
    /// Writing zeros from the static buffer.
    pub const ZEROS: u8 = 2;
}

fn unsupported(errno: i32) -> bool {
    matches!(errno, libc::EOPNOTSUPP | libc::ENOSYS | libc::ENOTTY | libc::EINVAL | libc::ENODEV)
}

fn is_block(ns: &Namespace) -> bool {
    ns.backend.kind() == "block"
}

impl Queue {
    fn storage(&mut self, fd: RawFd, kind: StorageKind, token: u64) {
        self.actions.push(Action::Storage(StorageOp { fd, kind, token }));
    }

    /// Start `plan` on file or block namespace `ns`; host data (if any) comes
    /// from the capsule (`data`).
    pub(crate) fn fd_start(
        &mut self,
        sqe: &Sqe,
        ns: Arc<Namespace>,
        plan: IoPlan,
        data: Option<&[u8]>,
        out: &mut Vec<u8>,
    ) {
        let buf_len = match plan {
            IoPlan::Compare { len, .. } => 2 * len as usize,
            IoPlan::Read { len, .. } => len as usize,
            _ => plan.host_data_len() as usize,
        };
        let buf = if buf_len > 0 {
            match DataBuf::take(buf_len) {
                Some(b) => Some(b),
                None => {
                    let s = Status::new(sct::GENERIC, generic::INTERNAL_ERROR);
                    return self.respond(out, sqe.cid, s, 0, 0);
                }
            }
        } else {
            None
        };
        let Some(i) = self.slots.alloc(sqe, Work::Io(plan), self.now_us) else { return self.no_slot(out, sqe.cid) };
        let s = self.slots.get_mut(i).expect("slot");
        s.ns = Some(ns);
        s.buf = buf;
        if let (Some(d), Some(b)) = (data, s.buf.as_mut()) {
            nvmf_proto::copy::copy_bytes(b.as_mut_slice(d.len()), d);
        }
        s.stage = Stage::Storage;
        self.fd_start_slot(i, out);
    }

    /// Start the storage work of slot `i` (its host data is in its buffer).
    pub(crate) fn fd_start_slot(&mut self, i: usize, out: &mut Vec<u8>) {
        let s = self.slots.get_mut(i).expect("slot");
        s.stage = Stage::Storage;
        s.submit_us = self.now_us.max(1);
        s.done_bytes = 0;
        s.step = 0;
        s.fallback = step::NATIVE;
        if let Work::Io(IoPlan::Dsm { nr, deallocate }) = s.work {
            let ns = s.ns.clone().expect("namespace");
            let ranges = dsm_ranges(&ns, s.buf.as_ref().expect("ranges").as_slice(nr as usize * DSM_RANGE_LEN), nr);
            let ranges = match ranges {
                Ok(r) => r,
                Err(st) => {
                    let cid = s.sqe.cid;
                    self.free_slot(i);
                    return self.respond(out, cid, st, 0, 0);
                }
            };
            // Attributes other than Deallocate are hints we do not use, and
            // ranges of zero blocks ask for nothing.
            if !deallocate || ranges.is_empty() {
                let cid = s.sqe.cid;
                self.free_slot(i);
                return self.respond(out, cid, Status::SUCCESS, 0, 0);
            }
        }
        self.submit_next(i);
    }

    /// Submit the next storage operation of slot `i`, or complete it.
    fn submit_next(&mut self, i: usize) {
        let s = self.slots.get_mut(i).expect("slot");
        let Work::Io(plan) = s.work else { unreachable!("admin commands do no storage") };
        let ns = s.ns.clone().expect("namespace");
        let fd = ns.backend.fd().expect("fd namespace");
        let gen = s.generation;
        let done = s.done_bytes;
        let slot = i as u16;
        s.ops_in_flight += 1;
        let (kind, op) = match plan {
            IoPlan::Read { off, len } => {
                let buf = s.buf.as_mut().expect("buffer");
                // SAFETY (for the driver): the buffer stays in the slot, untouched,
                // until the completion; the slot cannot be freed while an op is
                // in flight (SlotTable::free asserts it).
                let p = unsafe { buf.as_mut_ptr().add(done as usize) };
                (StorageKind::Read { offset: off + done, buf: p, len: len - done as u32 }, OP_READ)
            }
            IoPlan::Compare { off, len } => {
                // Host data in buf[..len], the media's read into buf[len..2 len].
                let buf = s.buf.as_mut().expect("buffer");
                let p = unsafe { buf.as_mut_ptr().add(len as usize + done as usize) };
                (StorageKind::Read { offset: off + done, buf: p, len: len - done as u32 }, OP_READ)
            }
            IoPlan::Write { off, len, .. } if done < len as u64 => {
                let buf = s.buf.as_ref().expect("buffer");
                let p = unsafe { buf.as_ptr().add(done as usize) };
                (StorageKind::Write { offset: off + done, buf: p, len: len - done as u32 }, OP_WRITE)
            }
            // A written FUA command, or a Flush.
            IoPlan::Write { .. } | IoPlan::Flush { .. } => (StorageKind::Fsync { datasync: true }, OP_FSYNC),
            IoPlan::WriteZeroes { off, len } => zero_step(s.fallback, off, len, done),
            IoPlan::Dsm { nr, .. } => {
                let ranges = dsm_ranges(&ns, s.buf.as_ref().expect("ranges").as_slice(nr as usize * 16), nr)
                    .expect("checked at start");
                let (off, len) = ranges[s.step as usize];
                match (is_block(&ns), s.fallback) {
                    (true, step::NATIVE) => (StorageKind::Discard { offset: off, len }, OP_DISCARD),
                    (true, _) => (punch(off, len), OP_FALLOCATE),
                    (false, step::ZEROS) => zero_step(step::ZEROS, off, len, done),
                    (false, _) => (punch(off, len), OP_FALLOCATE),
                }
            }
        };
        self.storage(fd, kind, token(slot, gen, op, 0));
    }

    /// Flush every namespace (NSID FFFFFFFFh): one fdatasync per file or
    /// block namespace, concurrently; memory namespaces need none.
    pub(crate) fn flush_all(&mut self, sqe: &Sqe, table: &Arc<NsTable>, out: &mut Vec<u8>) {
        let fds: Vec<RawFd> = table.list.iter().filter_map(|n| n.backend.fd()).collect();
        if fds.is_empty() {
            return self.respond(out, sqe.cid, Status::SUCCESS, 0, 0);
        }
        let Some(i) = self.slots.alloc(sqe, Work::Io(IoPlan::Flush { all: true }), self.now_us) else {
            return self.no_slot(out, sqe.cid);
        };
        let s = self.slots.get_mut(i).expect("slot");
        s.stage = Stage::Storage;
        s.submit_us = self.now_us.max(1);
        // The table keeps every descriptor open until the last fsync ends.
        s.table = Some(table.clone());
        s.ops_in_flight = fds.len() as u32;
        let gen = s.generation;
        for fd in fds {
            self.storage(fd, StorageKind::Fsync { datasync: true }, token(i as u16, gen, OP_FSYNC, 0));
        }
    }

    /// CC.SHN: flush every file and block namespace; CSTS.SHST reports
    /// complete once all are done.
    pub(crate) fn start_shutdown_flushes(&mut self) {
        let Some(c) = self.conn.as_mut() else { return };
        // The controller's own namespaces (masked ones are not its to flush).
        let table = c.ctrl.subsys.as_ref().map(|_| c.ctrl.namespaces());
        let fds: Vec<RawFd> = table.iter().flat_map(|t| t.list.iter()).filter_map(|n| n.backend.fd()).collect();
        let ctrl = c.ctrl.clone();
        let Some(a) = c.admin.as_mut() else { return };
        a.regs.shutdown_flushes += fds.len() as u32;
        a.shutdown_ns = table;
        if a.regs.shutdown_flushes == 0 {
            self.shutdown_complete(&ctrl);
            return;
        }
        for fd in fds {
            self.storage(fd, StorageKind::Fsync { datasync: true }, token(SHUTDOWN_SLOT, 0, OP_FSYNC, 0));
        }
    }

    fn shutdown_complete(&mut self, ctrl: &Arc<crate::ctrl::Controller>) {
        if let Some(a) = self.conn.as_mut().and_then(|c| c.admin.as_mut()) {
            a.shutdown_ns = None;
            a.regs.shutdown_done();
        }
        tracing::info!("ctrl {}: shutdown complete", ctrl.cntlid);
        self.actions.push(Action::SetState { ctrl: ctrl.clone(), state: CtrlState::ShutDown });
    }

    /// A storage operation finished (`result`: bytes or -errno).
    pub fn on_storage(&mut self, tok: u64, result: i32, now_us: u64, out: &mut Vec<u8>) -> QueueFlow {
        self.now_us = now_us;
        let (slot, gen, op, _aux) = untoken(tok);
        if slot == SHUTDOWN_SLOT {
            self.on_shutdown_flush(result);
            return self.flow();
        }
        let i = slot as usize;
        let Some(s) = self.slots.get_mut(i).filter(|s| s.stage == Stage::Storage && s.generation == gen) else {
            debug_assert!(false, "storage completion for a free slot");
            return self.flow();
        };
        assert!(s.ops_in_flight > 0);
        s.ops_in_flight -= 1;
        let Work::Io(plan) = s.work else { unreachable!("admin commands do no storage") };
        let cid = s.sqe.cid;
        if result < 0 {
            let errno = -result;
            match (plan, op) {
                // Try the next way of zeroing or deallocating.
                (IoPlan::WriteZeroes { .. }, OP_FALLOCATE) if unsupported(errno) => {
                    s.fallback = step::ZEROS;
                    s.done_bytes = 0;
                    self.submit_next(i);
                    return self.flow();
                }
                (IoPlan::Dsm { .. }, OP_DISCARD) if unsupported(errno) => {
                    s.fallback = step::PUNCH;
                    self.submit_next(i);
                    return self.flow();
                }
                (IoPlan::Dsm { .. }, OP_FALLOCATE) if unsupported(errno) => {
                    let block = s.ns.as_ref().is_some_and(|n| is_block(n));
                    if block {
                        // A hint the device cannot take: the data stays.
                        return self.dsm_range_done(i, out);
                    }
                    s.fallback = step::ZEROS;
                    s.done_bytes = 0;
                    self.submit_next(i);
                    return self.flow();
                }
                _ => {}
            }
            let e = std::io::Error::from_raw_os_error(errno);
            let nsid = s.ns.as_ref().map(|n| n.nsid).unwrap_or(0);
            tracing::warn!("nsid {nsid}: storage operation {op} failed: {e}");
            let status = match op {
                OP_READ => Status::new(sct::MEDIA, media::UNRECOVERED_READ),
                _ => Status::new(sct::MEDIA, media::WRITE_FAULT),
            };
            s.error.get_or_insert(status);
            if s.ops_in_flight == 0 {
                self.free_slot(i);
                self.respond(out, cid, status, 0, 0);
            }
            return self.flow();
        }
        if matches!(op, OP_READ | OP_WRITE | OP_WRITE_ZEROS) {
            if result == 0 {
                self.free_slot(i);
                self.respond(out, cid, Status::new(sct::GENERIC, generic::DATA_TRANSFER_ERROR), 0, 0);
                return self.flow();
            }
            s.done_bytes += result as u64;
        }
        let done = s.done_bytes;
        let in_flight = s.ops_in_flight;
        let error = s.error;
        let nsid = s.sqe.nsid;
        match (plan, op) {
            (IoPlan::Read { len, .. } | IoPlan::Compare { len, .. }, OP_READ) if done < len as u64 => {
                self.submit_next(i)
            }
            (IoPlan::Read { len, .. }, OP_READ) => {
                let buf = s.buf.take().expect("buffer");
                self.free_slot(i);
                self.counters.count_read(nsid, len as u64);
                self.send_data_and_complete(out, cid, buf.as_slice(len as usize), 0);
            }
            (IoPlan::Compare { len, .. }, OP_READ) => {
                let b = s.buf.as_ref().expect("buffer").as_slice(2 * len as usize);
                let same = b[..len as usize] == b[len as usize..];
                self.free_slot(i);
                let status = if same { Status::SUCCESS } else { Status::new(sct::MEDIA, media::COMPARE_FAILURE).dnr() };
                self.respond(out, cid, status, 0, 0);
            }
            // Short write: the rest; FUA: the flush; else done.
            (IoPlan::Write { len, fua, .. }, OP_WRITE) if done < len as u64 || fua => self.submit_next(i),
            (IoPlan::Write { len, .. }, _) => {
                self.free_slot(i);
                self.counters.count_write(nsid, len as u64);
                self.respond(out, cid, Status::SUCCESS, 0, 0);
            }
            (IoPlan::WriteZeroes { len, .. }, OP_WRITE_ZEROS) if done < len => self.submit_next(i),
            (IoPlan::Dsm { .. }, OP_WRITE_ZEROS) if done < self.dsm_range(i).1 => self.submit_next(i),
            (IoPlan::Dsm { .. }, _) => return self.dsm_range_done(i, out),
            (IoPlan::Flush { .. }, _) if in_flight > 0 => {}
            _ => {
                self.free_slot(i);
                self.respond(out, cid, error.unwrap_or(Status::SUCCESS), 0, 0);
            }
        }
        self.flow()
    }

    fn dsm_range(&self, i: usize) -> (u64, u64) {
        let s = self.slots.get(i).expect("slot");
        let Work::Io(IoPlan::Dsm { nr, .. }) = s.work else { unreachable!() };
        let ns = s.ns.as_ref().expect("namespace");
        let ranges = dsm_ranges(ns, s.buf.as_ref().expect("ranges").as_slice(nr as usize * 16), nr).expect("checked");
        ranges[s.step as usize]
    }

    /// One Deallocate range is done: the next, or the completion.
    fn dsm_range_done(&mut self, i: usize, out: &mut Vec<u8>) -> QueueFlow {
        let s = self.slots.get_mut(i).expect("slot");
        let Work::Io(IoPlan::Dsm { nr, .. }) = s.work else { unreachable!() };
        let ns = s.ns.clone().expect("namespace");
        let count = dsm_ranges(&ns, s.buf.as_ref().expect("ranges").as_slice(nr as usize * 16), nr)
            .map(|r| r.len())
            .unwrap_or(0);
        s.step += 1;
        s.fallback = step::NATIVE;
        s.done_bytes = 0;
        if (s.step as usize) < count {
            self.submit_next(i);
        } else {
            let cid = s.sqe.cid;
            self.free_slot(i);
            self.respond(out, cid, Status::SUCCESS, 0, 0);
        }
        self.flow()
    }

    fn on_shutdown_flush(&mut self, result: i32) {
        let Some(c) = self.conn.as_mut() else { return };
        let ctrl = c.ctrl.clone();
        let Some(a) = c.admin.as_mut() else { return };
        if result < 0 {
            let e = std::io::Error::from_raw_os_error(-result);
            tracing::warn!("ctrl {}: flush at shutdown failed: {e}", ctrl.cntlid);
        }
        assert!(a.regs.shutdown_flushes > 0);
        a.regs.shutdown_flushes -= 1;
        if a.regs.shutdown_flushes == 0 {
            self.shutdown_complete(&ctrl);
        }
    }
}

fn punch(offset: u64, len: u64) -> StorageKind {
    StorageKind::Fallocate { mode: libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, offset, len }
}

/// The next operation zeroing `off..off+len`, `done` bytes of which are zero.
fn zero_step(fallback: u8, off: u64, len: u64, done: u64) -> (StorageKind, u64) {
    if fallback == step::NATIVE {
        let mode = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
        return (StorageKind::Fallocate { mode, offset: off, len }, OP_FALLOCATE);
    }
    let n = (len - done).min(ZERO_CHUNK_BYTES as u64) as u32;
    (StorageKind::Write { offset: off + done, buf: ZEROS.0.as_ptr(), len: n }, OP_WRITE_ZEROS)
}
