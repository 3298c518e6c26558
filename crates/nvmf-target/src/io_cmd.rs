//! NVM command set I/O commands (Read, Write, Flush, Write Zeroes, Dataset
//! Management, Compare): validation against the namespace and MDTS, turning a
//! SQE into an [`IoPlan`] the transport executes on the memory or fd path.

use std::sync::Arc;

use nvmf_proto::opcodes::io;
use nvmf_proto::status::{generic, sct};
use nvmf_proto::{Sqe, Status};

use crate::subsys::{Namespace, NsTable};

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
