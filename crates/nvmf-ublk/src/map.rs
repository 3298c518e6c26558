//! Pure request mapping: a ublk I/O descriptor (op, flags, 512-byte sectors)
//! to one NVMe I/O command (opcode, LBA, block count, FUA), and the block
//! device limits derived from the namespace and the controller.
//!
//! No kernel, socket or ring here, so every rule is unit-tested: the kernel
//! is told limits ([`DeviceLimits`]) under which it never sends a request
//! that needs splitting, and a request outside them anyway is refused
//! ([`MapError`]) rather than split: one ublk tag is one NVMe command.

use nvmf_proto::identify::oncs;
use nvmf_proto::opcodes::io;
use nvmf_proto::Sqe;

/// The kernel block layer counts in 512-byte sectors whatever the LBA size.
pub const SECTOR_BYTES: u64 = 512;
/// Largest logical block ublk accepts: the kernel refuses a logical block
/// shift above PAGE_SHIFT (4 KiB pages on x86-64 and most arm64 kernels).
pub const BLOCK_BYTES_MAX: u32 = 4096;
/// Blocks one Read / Write / Write Zeroes carries at most (NLB: 16 bits, 0's based).
pub const RW_BLOCKS_MAX: u32 = 65_536;
/// Bytes of one Dataset Management range (context attributes, NLB, SLBA).
pub const DSM_RANGE_BYTES: usize = 16;
/// Largest I/O buffer per ublk tag: bounds the memory of a deep queue
/// (depth x this) whatever MDTS allows; the host's default transfer limit
/// (`TRANSFER_LEN_MAX_DEFAULT_BYTES`) is the same.
pub const IO_BYTES_MAX_CAP: u32 = 1 << 20;

/// ublk I/O operations (`UBLK_IO_OP_*` of `<linux/ublk_cmd.h>`).
pub mod ublk_op {
    pub const READ: u32 = 0;
    pub const WRITE: u32 = 1;
    pub const FLUSH: u32 = 2;
    pub const DISCARD: u32 = 3;
    pub const WRITE_SAME: u32 = 4;
    pub const WRITE_ZEROES: u32 = 5;
}

/// ublk I/O flags in `op_flags` above the op byte (`UBLK_IO_F_*`).
pub mod ublk_flag {
    pub const FUA: u32 = 1 << 13;
    pub const NOUNMAP: u32 = 1 << 15;
}

/// NVMe Read/Write CDW12 bit 30: Force Unit Access.
pub const CDW12_FUA: u32 = 1 << 30;
/// Dataset Management CDW11 bit 2: Attribute Deallocate.
pub const DSM_CDW11_DEALLOCATE: u32 = 1 << 2;

/// What the device is: the namespace's LBA size and size, the largest data
/// transfer of one command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Logical block (LBA) size of the namespace's current format.
    pub block_size_bytes: u32,
    /// Namespace size (NSZE) in logical blocks.
    pub capacity_blocks: u64,
    /// Largest Read/Write payload of one command (MDTS, options, caps):
    /// a multiple of the block size.
    pub io_bytes_max: u32,
}

impl Geometry {
    /// From the namespace's block size and NSZE and the controller's transfer
    /// limit; `None` for a block size ublk cannot take (not a power of two
    /// from 512 B to [`BLOCK_BYTES_MAX`]), an empty namespace or a transfer
    /// limit below one block.
    pub fn new(block_size_bytes: u32, capacity_blocks: u64, transfer_len_max_bytes: u32) -> Option<Geometry> {
        if !block_size_bytes.is_power_of_two()
            || !(SECTOR_BYTES as u32..=BLOCK_BYTES_MAX).contains(&block_size_bytes)
            || capacity_blocks == 0
        {
            return None;
        }
        let by_nlb = (RW_BLOCKS_MAX as u64 * block_size_bytes as u64).min(u32::MAX as u64) as u32;
        let io = transfer_len_max_bytes.min(IO_BYTES_MAX_CAP).min(by_nlb) / block_size_bytes * block_size_bytes;
        if io == 0 {
            return None;
        }
        Some(Geometry { block_size_bytes, capacity_blocks, io_bytes_max: io })
    }
    pub fn block_shift(&self) -> u8 {
        self.block_size_bytes.trailing_zeros() as u8
    }
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_blocks * self.block_size_bytes as u64
    }
    fn sectors_per_block(&self) -> u64 {
        self.block_size_bytes as u64 / SECTOR_BYTES
    }
}

/// One NVMe I/O command for one ublk request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NvmeIo {
    Read {
        slba: u64,
        nlb: u32,
    },
    Write {
        slba: u64,
        nlb: u32,
        fua: bool,
    },
    Flush,
    /// Dataset Management, one range, Attribute Deallocate.
    Deallocate {
        slba: u64,
        nlb: u32,
    },
    WriteZeroes {
        slba: u64,
        nlb: u32,
    },
}

/// Why a ublk request has no NVMe command (answered with an errno).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// An op this device does not serve (WRITE_SAME, zoned ops...).
    Unsupported { op: u32 },
    /// Offset or length not a whole number of logical blocks.
    Unaligned,
    /// Zero length, or past the end of the namespace.
    OutOfRange,
    /// More than one command carries (the limits told the kernel should prevent it).
    TooLarge,
}

impl MapError {
    /// The negative errno the ublk driver completes the request with.
    pub fn errno(&self) -> i32 {
        match self {
            MapError::Unsupported { .. } => -libc::EOPNOTSUPP,
            MapError::Unaligned | MapError::OutOfRange | MapError::TooLarge => -libc::EINVAL,
        }
    }
}

/// Map one ublk request (`op_flags`, `start_sector`, `nr_sectors` of its
/// `ublksrv_io_desc`) to one NVMe command.
pub fn map_request(op_flags: u32, start_sector: u64, nr_sectors: u32, geo: &Geometry) -> Result<NvmeIo, MapError> {
    let op = op_flags & 0xff;
    if op == ublk_op::FLUSH {
        return Ok(NvmeIo::Flush);
    }
    if !matches!(op, ublk_op::READ | ublk_op::WRITE | ublk_op::DISCARD | ublk_op::WRITE_ZEROES) {
        return Err(MapError::Unsupported { op });
    }
    let (slba, blocks) = blocks_of(start_sector, nr_sectors, geo)?;
    let nlb_max = match op {
        ublk_op::READ | ublk_op::WRITE => geo.io_bytes_max as u64 / geo.block_size_bytes as u64,
        ublk_op::WRITE_ZEROES => RW_BLOCKS_MAX as u64,
        _ => u32::MAX as u64, // a DSM range's NLB is 32 bits
    };
    if blocks > nlb_max {
        return Err(MapError::TooLarge);
    }
    let nlb = blocks as u32;
    Ok(match op {
        ublk_op::READ => NvmeIo::Read { slba, nlb },
        ublk_op::WRITE => NvmeIo::Write { slba, nlb, fua: op_flags & ublk_flag::FUA != 0 },
        ublk_op::DISCARD => NvmeIo::Deallocate { slba, nlb },
        _ => NvmeIo::WriteZeroes { slba, nlb },
    })
}

/// 512-byte sectors to (first LBA, block count), checked against the namespace.
pub fn blocks_of(start_sector: u64, nr_sectors: u32, geo: &Geometry) -> Result<(u64, u64), MapError> {
    let per_block = geo.sectors_per_block();
    if nr_sectors == 0 {
        return Err(MapError::OutOfRange);
    }
    if !start_sector.is_multiple_of(per_block) || !(nr_sectors as u64).is_multiple_of(per_block) {
        return Err(MapError::Unaligned);
    }
    let (slba, blocks) = (start_sector / per_block, nr_sectors as u64 / per_block);
    match slba.checked_add(blocks) {
        Some(end) if end <= geo.capacity_blocks => Ok((slba, blocks)),
        _ => Err(MapError::OutOfRange),
    }
}

impl NvmeIo {
    /// The submission entry (CID 0: the queue assigns it).
    pub fn to_sqe(&self, nsid: u32) -> Sqe {
        match *self {
            NvmeIo::Read { slba, nlb } => Sqe::rw(io::READ, 0, nsid, slba, nlb),
            NvmeIo::Write { slba, nlb, fua } => {
                let mut s = Sqe::rw(io::WRITE, 0, nsid, slba, nlb);
                if fua {
                    s.cdw12 |= CDW12_FUA;
                }
                s
            }
            NvmeIo::Flush => Sqe::new(io::FLUSH, 0, nsid),
            NvmeIo::Deallocate { .. } => {
                let mut s = Sqe::new(io::DATASET_MANAGEMENT, 0, nsid);
                s.cdw10 = 0; // NR: one range, 0's based
                s.cdw11 = DSM_CDW11_DEALLOCATE;
                s
            }
            NvmeIo::WriteZeroes { slba, nlb } => Sqe::rw(io::WRITE_ZEROES, 0, nsid, slba, nlb),
        }
    }

    /// Bytes the command moves to the controller (Write data, the DSM range).
    pub fn data_out_bytes(&self, geo: &Geometry) -> usize {
        match *self {
            NvmeIo::Write { nlb, .. } => nlb as usize * geo.block_size_bytes as usize,
            NvmeIo::Deallocate { .. } => DSM_RANGE_BYTES,
            _ => 0,
        }
    }

    /// Bytes the command brings back (Read data).
    pub fn data_in_bytes(&self, geo: &Geometry) -> usize {
        match *self {
            NvmeIo::Read { nlb, .. } => nlb as usize * geo.block_size_bytes as usize,
            _ => 0,
        }
    }

    /// What ublk is told on success: the bytes of a read or write, 0 otherwise.
    pub fn ublk_result(&self, geo: &Geometry) -> i32 {
        match *self {
            NvmeIo::Read { nlb, .. } | NvmeIo::Write { nlb, .. } => (nlb as u64 * geo.block_size_bytes as u64) as i32,
            _ => 0,
        }
    }

    /// Distinct commands, for per-kind counters indexed by [`kind_index`](Self::kind_index).
    pub const KINDS: usize = 5;
    /// Read 0, Write 1, Flush 2, Dataset Management 3, Write Zeroes 4.
    pub fn kind_index(&self) -> usize {
        match self {
            NvmeIo::Read { .. } => 0,
            NvmeIo::Write { .. } => 1,
            NvmeIo::Flush => 2,
            NvmeIo::Deallocate { .. } => 3,
            NvmeIo::WriteZeroes { .. } => 4,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            NvmeIo::Read { .. } => "Read",
            NvmeIo::Write { .. } => "Write",
            NvmeIo::Flush => "Flush",
            NvmeIo::Deallocate { .. } => "Dataset Management",
            NvmeIo::WriteZeroes { .. } => "Write Zeroes",
        }
    }
}

/// The one Dataset Management range (context attributes 0).
pub fn dsm_range(slba: u64, nlb: u32) -> [u8; DSM_RANGE_BYTES] {
    let mut r = [0u8; DSM_RANGE_BYTES];
    r[4..8].copy_from_slice(&nlb.to_le_bytes());
    r[8..16].copy_from_slice(&slba.to_le_bytes());
    r
}

/// What the ublk device advertises, in the kernel's units (512-byte sectors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceLimits {
    pub logical_block_shift: u8,
    pub capacity_sectors: u64,
    /// Largest read/write request.
    pub io_sectors_max: u32,
    /// The controller has a volatile write cache (VWC): flush and FUA are sent.
    pub volatile_cache: bool,
    /// 0: no discard (the controller lacks Dataset Management).
    pub discard_sectors_max: u32,
    /// 0: no write zeroes (the controller lacks Write Zeroes).
    pub write_zeroes_sectors_max: u32,
}

/// Limits from the geometry and Identify Controller's ONCS and VWC.
pub fn device_limits(geo: &Geometry, oncs_v: u16, vwc: u8) -> DeviceLimits {
    let per_block = geo.sectors_per_block() as u32;
    DeviceLimits {
        logical_block_shift: geo.block_shift(),
        capacity_sectors: geo.capacity_blocks * geo.sectors_per_block(),
        io_sectors_max: geo.io_bytes_max / SECTOR_BYTES as u32,
        volatile_cache: vwc & 1 != 0,
        // Whole blocks only, so every request maps to a whole NLB.
        discard_sectors_max: if oncs_v & oncs::DSM != 0 { u32::MAX / per_block * per_block } else { 0 },
        write_zeroes_sectors_max: if oncs_v & oncs::WRITE_ZEROES != 0 { RW_BLOCKS_MAX * per_block } else { 0 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(bs: u32, blocks: u64) -> Geometry {
        Geometry::new(bs, blocks, 1 << 20).unwrap()
    }

    #[test]
    fn constants_match_the_kernel_header() {
        assert_eq!(ublk_op::READ, libublk::sys::UBLK_IO_OP_READ);
        assert_eq!(ublk_op::WRITE, libublk::sys::UBLK_IO_OP_WRITE);
        assert_eq!(ublk_op::FLUSH, libublk::sys::UBLK_IO_OP_FLUSH);
        assert_eq!(ublk_op::DISCARD, libublk::sys::UBLK_IO_OP_DISCARD);
        assert_eq!(ublk_op::WRITE_SAME, libublk::sys::UBLK_IO_OP_WRITE_SAME);
        assert_eq!(ublk_op::WRITE_ZEROES, libublk::sys::UBLK_IO_OP_WRITE_ZEROES);
        assert_eq!(ublk_flag::FUA, libublk::sys::UBLK_IO_F_FUA);
        assert_eq!(ublk_flag::NOUNMAP, libublk::sys::UBLK_IO_F_NOUNMAP);
    }

    #[test]
    fn read_write_512_byte_blocks_are_sectors() {
        let g = geo(512, 1 << 20);
        assert_eq!(map_request(ublk_op::READ, 8, 16, &g), Ok(NvmeIo::Read { slba: 8, nlb: 16 }));
        assert_eq!(map_request(ublk_op::WRITE, 0, 1, &g), Ok(NvmeIo::Write { slba: 0, nlb: 1, fua: false }));
        let s = NvmeIo::Read { slba: 8, nlb: 16 }.to_sqe(3);
        assert_eq!((s.opcode, s.nsid, s.cdw10, s.cdw11, s.cdw12), (io::READ, 3, 8, 0, 15));
    }

    #[test]
    fn read_write_4096_byte_blocks_divide_by_eight() {
        let g = geo(4096, 1 << 20);
        assert_eq!(map_request(ublk_op::READ, 64, 8, &g), Ok(NvmeIo::Read { slba: 8, nlb: 1 }));
        assert_eq!(map_request(ublk_op::WRITE, 0, 256, &g), Ok(NvmeIo::Write { slba: 0, nlb: 32, fua: false }));
        assert_eq!(map_request(ublk_op::READ, 4, 8, &g), Err(MapError::Unaligned));
        assert_eq!(map_request(ublk_op::READ, 8, 4, &g), Err(MapError::Unaligned));
        let w = NvmeIo::Write { slba: 0, nlb: 32, fua: false };
        assert_eq!((w.data_out_bytes(&g), w.ublk_result(&g)), (131_072, 131_072));
    }

    #[test]
    fn high_lba_goes_to_cdw11() {
        let g = geo(512, 1 << 40);
        let slba = (5u64 << 32) | 7;
        let s = map_request(ublk_op::READ, slba, 8, &g).unwrap().to_sqe(1);
        assert_eq!((s.cdw10, s.cdw11), (7, 5));
    }

    #[test]
    fn end_of_namespace_and_zero_length() {
        let g = geo(4096, 100); // 800 sectors
        assert!(map_request(ublk_op::READ, 792, 8, &g).is_ok());
        assert_eq!(map_request(ublk_op::READ, 800, 8, &g), Err(MapError::OutOfRange));
        assert_eq!(map_request(ublk_op::READ, 792, 16, &g), Err(MapError::OutOfRange));
        assert_eq!(map_request(ublk_op::READ, 0, 0, &g), Err(MapError::OutOfRange));
        assert_eq!(map_request(ublk_op::READ, u64::MAX - 7, 8, &g), Err(MapError::OutOfRange));
    }

    #[test]
    fn larger_than_one_command_is_refused_not_split() {
        let g = geo(512, 1 << 30); // 1 MiB = 2048 sectors
        assert!(map_request(ublk_op::WRITE, 0, 2048, &g).is_ok());
        assert_eq!(map_request(ublk_op::WRITE, 0, 2056, &g), Err(MapError::TooLarge));
        assert_eq!(MapError::TooLarge.errno(), -libc::EINVAL);
        // MDTS below 1 MiB shrinks the limit, rounded down to whole blocks.
        let small = Geometry::new(4096, 1 << 20, 130_000).unwrap();
        assert_eq!(small.io_bytes_max, 126_976);
        assert_eq!(map_request(ublk_op::READ, 0, 256, &small), Err(MapError::TooLarge));
        // Write Zeroes: 65,536 blocks per command.
        assert!(map_request(ublk_op::WRITE_ZEROES, 0, 65_536, &g).is_ok());
        assert_eq!(map_request(ublk_op::WRITE_ZEROES, 0, 65_537, &g), Err(MapError::TooLarge));
    }

    #[test]
    fn fua_sets_cdw12_bit_30() {
        let g = geo(512, 1 << 20);
        let io = map_request(ublk_op::WRITE | ublk_flag::FUA, 0, 8, &g).unwrap();
        assert_eq!(io, NvmeIo::Write { slba: 0, nlb: 8, fua: true });
        assert_eq!(io.to_sqe(1).cdw12, CDW12_FUA | 7);
    }

    #[test]
    fn flush_discard_write_zeroes() {
        let g = geo(4096, 1 << 20);
        let f = map_request(ublk_op::FLUSH, 0, 0, &g).unwrap();
        assert_eq!((f, f.to_sqe(2).opcode, f.to_sqe(2).nsid), (NvmeIo::Flush, io::FLUSH, 2));
        let d = map_request(ublk_op::DISCARD, 80, 800, &g).unwrap();
        assert_eq!(d, NvmeIo::Deallocate { slba: 10, nlb: 100 });
        let s = d.to_sqe(1);
        assert_eq!((s.opcode, s.cdw10, s.cdw11), (io::DATASET_MANAGEMENT, 0, DSM_CDW11_DEALLOCATE));
        let r = dsm_range(10, 100);
        assert_eq!(
            (u32::from_le_bytes(r[4..8].try_into().unwrap()), u64::from_le_bytes(r[8..].try_into().unwrap())),
            (100, 10)
        );
        assert_eq!(d.data_out_bytes(&g), DSM_RANGE_BYTES);
        let z = map_request(ublk_op::WRITE_ZEROES | ublk_flag::NOUNMAP, 8, 16, &g).unwrap();
        assert_eq!(z, NvmeIo::WriteZeroes { slba: 1, nlb: 2 });
        assert_eq!((z.to_sqe(1).opcode, z.to_sqe(1).cdw12), (io::WRITE_ZEROES, 1));
        assert_eq!(z.ublk_result(&g), 0);
    }

    #[test]
    fn other_ops_are_unsupported() {
        let g = geo(512, 1 << 20);
        assert_eq!(map_request(ublk_op::WRITE_SAME, 0, 8, &g), Err(MapError::Unsupported { op: 4 }));
        assert_eq!(map_request(10, 0, 8, &g).unwrap_err().errno(), -libc::EOPNOTSUPP);
    }

    #[test]
    fn geometry_rejects_unusable_namespaces() {
        assert!(Geometry::new(0, 10, 1 << 20).is_none());
        assert!(Geometry::new(520, 10, 1 << 20).is_none());
        assert!(Geometry::new(8192, 10, 1 << 20).is_none(), "above the page size");
        assert!(Geometry::new(4096, 0, 1 << 20).is_none());
        assert!(Geometry::new(4096, 10, 2048).is_none(), "MDTS below one block");
        assert_eq!(Geometry::new(512, 10, 8 << 20).unwrap().io_bytes_max, IO_BYTES_MAX_CAP);
    }

    #[test]
    fn limits_follow_oncs_and_vwc() {
        let g = geo(4096, 1000);
        let l = device_limits(&g, oncs::DSM | oncs::WRITE_ZEROES, 1);
        assert_eq!((l.logical_block_shift, l.capacity_sectors, l.io_sectors_max), (12, 8000, 2048));
        assert!(l.volatile_cache);
        assert_eq!(l.discard_sectors_max % 8, 0);
        assert_eq!(l.write_zeroes_sectors_max, 65_536 * 8);
        let none = device_limits(&g, 0, 0);
        assert_eq!((none.discard_sectors_max, none.write_zeroes_sectors_max, none.volatile_cache), (0, 0, false));
        // The largest discard the kernel may send still maps to one 32-bit range.
        let d =
            map_request(ublk_op::DISCARD, 0, l.discard_sectors_max, &Geometry { capacity_blocks: u64::MAX / 16, ..g });
        assert!(d.is_ok());
    }
}
