//! Data verification for `nvmf perf --verify`.
//!
//! Every logical block written in verify mode starts with a 24-byte header and
//! is followed by a pseudo-random fill derived from the header, so a reader can
//! check a block without keeping a copy of what was written:
//!
//! | bytes | field |
//! | --- | --- |
//! | 0..4 | magic `"NVPF"` |
//! | 4..8 | run seed (random per run: data left by an earlier run never matches) |
//! | 8..16 | LBA the block was written to (catches misdirected reads/writes) |
//! | 16..20 | generation (per block counter: catches lost and stale writes) |
//! | 20..24 | CRC32C of bytes 0..20 and 24..block end (catches corruption, torn blocks) |
//!
//! The writer keeps the generation of each unit it owns in a [`GenerationMap`]
//! (one per queue, over the queue's private LBA partition, so no other queue
//! can write the same blocks and a read always knows what it must find).

use nvmf_proto::digest::{crc32c, crc32c_append};

/// `"NVPF"` little-endian.
pub const BLOCK_MAGIC: u32 = u32::from_le_bytes(*b"NVPF");
/// Bytes of the per-block header.
pub const BLOCK_HEADER_BYTES: usize = 24;
/// Smallest logical block verify mode supports (the header plus some fill).
pub const BLOCK_BYTES_MIN: usize = 512;
/// Generation value meaning "content unknown" (a write failed or is unaccounted):
/// reads of such a unit are not checked until it is written again.
pub const GENERATION_UNKNOWN: u32 = u32::MAX;
/// Generation value meaning "never written in this run".
pub const GENERATION_NONE: u32 = 0;

/// What a verify check found wrong with one block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    BadMagic { lba: u64, found: u32 },
    WrongSeed { lba: u64, expected: u32, found: u32 },
    WrongLba { lba: u64, found: u64 },
    WrongGeneration { lba: u64, expected: u32, found: u32 },
    BadCrc { lba: u64, expected: u32, found: u32 },
    BadFill { lba: u64, offset: usize },
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerifyError::BadMagic { lba, found } => {
                write!(f, "lba {lba}: no verify header (magic {found:#010x}; never written or overwritten)")
            }
            VerifyError::WrongSeed { lba, expected, found } => {
                write!(f, "lba {lba}: data from another run (seed {found:#x}, expected {expected:#x})")
            }
            VerifyError::WrongLba { lba, found } => write!(f, "lba {lba}: block holds data written to lba {found}"),
            VerifyError::WrongGeneration { lba, expected, found } => {
                write!(f, "lba {lba}: stale or lost write (generation {found}, expected {expected})")
            }
            VerifyError::BadCrc { lba, expected, found } => {
                write!(f, "lba {lba}: corrupted block (crc {found:#010x}, header says {expected:#010x})")
            }
            VerifyError::BadFill { lba, offset } => write!(f, "lba {lba}: wrong fill at byte {offset}"),
        }
    }
}

/// splitmix64 step: a well-mixed 64-bit value from a counter.
#[inline]
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[inline]
fn fill_seed(seed: u32, lba: u64, generation: u32) -> u64 {
    mix64(lba ^ ((seed as u64) << 32 | generation as u64).rotate_left(17))
}

/// Write the verify pattern of one logical block into `block`.
pub fn fill_block(block: &mut [u8], seed: u32, lba: u64, generation: u32) {
    debug_assert!(block.len() >= BLOCK_BYTES_MIN && block.len().is_multiple_of(8));
    block[0..4].copy_from_slice(&BLOCK_MAGIC.to_le_bytes());
    block[4..8].copy_from_slice(&seed.to_le_bytes());
    block[8..16].copy_from_slice(&lba.to_le_bytes());
    block[16..20].copy_from_slice(&generation.to_le_bytes());
    let mut state = fill_seed(seed, lba, generation);
    for chunk in block[BLOCK_HEADER_BYTES..].chunks_exact_mut(8) {
        // xorshift64: cheap enough to fill 128 KiB per I/O.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes());
    }
    let crc = block_crc(block);
    block[20..24].copy_from_slice(&crc.to_le_bytes());
}

fn block_crc(block: &[u8]) -> u32 {
    crc32c_append(crc32c(&block[0..20]), &block[BLOCK_HEADER_BYTES..])
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// Check one logical block read from `lba` against what generation `generation` of run `seed` wrote.
pub fn check_block(block: &[u8], seed: u32, lba: u64, generation: u32) -> Result<(), VerifyError> {
    debug_assert!(block.len() >= BLOCK_BYTES_MIN && block.len().is_multiple_of(8));
    let magic = le_u32(block, 0);
    if magic != BLOCK_MAGIC {
        return Err(VerifyError::BadMagic { lba, found: magic });
    }
    let stored_crc = le_u32(block, 20);
    let crc = block_crc(block);
    if crc != stored_crc {
        return Err(VerifyError::BadCrc { lba, expected: stored_crc, found: crc });
    }
    let found_seed = le_u32(block, 4);
    if found_seed != seed {
        return Err(VerifyError::WrongSeed { lba, expected: seed, found: found_seed });
    }
    let found_lba = u64::from_le_bytes(block[8..16].try_into().unwrap());
    if found_lba != lba {
        return Err(VerifyError::WrongLba { lba, found: found_lba });
    }
    let found_gen = le_u32(block, 16);
    if found_gen != generation {
        return Err(VerifyError::WrongGeneration { lba, expected: generation, found: found_gen });
    }
    // The CRC matched the header, so a wrong fill means the writer was broken
    // (or a collision); still check, it is cheap next to the CRC.
    let mut state = fill_seed(seed, lba, generation);
    for (i, chunk) in block[BLOCK_HEADER_BYTES..].chunks_exact(8).enumerate() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        if chunk != state.to_le_bytes() {
            return Err(VerifyError::BadFill { lba, offset: BLOCK_HEADER_BYTES + i * 8 });
        }
    }
    Ok(())
}

/// Fill a multi-block I/O buffer starting at `slba`.
pub fn fill_io(buf: &mut [u8], block_bytes: usize, seed: u32, slba: u64, generation: u32) {
    debug_assert_eq!(buf.len() % block_bytes, 0);
    for (i, block) in buf.chunks_exact_mut(block_bytes).enumerate() {
        fill_block(block, seed, slba + i as u64, generation);
    }
}

/// Check a multi-block I/O buffer read from `slba`; returns the first error.
pub fn check_io(buf: &[u8], block_bytes: usize, seed: u32, slba: u64, generation: u32) -> Result<(), VerifyError> {
    debug_assert_eq!(buf.len() % block_bytes, 0);
    for (i, block) in buf.chunks_exact(block_bytes).enumerate() {
        check_block(block, seed, slba + i as u64, generation)?;
    }
    Ok(())
}

/// Per-queue record of the last generation written to each unit (one unit =
/// one I/O of `--bs` bytes at a `--bs` aligned offset) and of the units with an
/// I/O in flight, so a unit is never read and written at the same time.
#[derive(Debug)]
pub struct GenerationMap {
    generations: Vec<u32>,
    busy: Vec<u64>,
}

impl GenerationMap {
    /// `units` entries; memory is 4 bytes + 1 bit per unit (bounded by the caller).
    pub fn new(units: usize) -> GenerationMap {
        GenerationMap { generations: vec![GENERATION_NONE; units], busy: vec![0; units.div_ceil(64)] }
    }
    pub fn units(&self) -> usize {
        self.generations.len()
    }
    pub fn generation(&self, unit: usize) -> u32 {
        self.generations[unit]
    }
    /// Generation the next write of `unit` must carry (never NONE or UNKNOWN).
    pub fn next_generation(&self, unit: usize) -> u32 {
        match self.generations[unit] {
            GENERATION_UNKNOWN => 1,
            g if g == GENERATION_UNKNOWN - 1 => 1,
            g => g + 1,
        }
    }
    /// A write of `generation` to `unit` completed: `ok` = the target acknowledged it.
    pub fn write_done(&mut self, unit: usize, generation: u32, ok: bool) {
        self.generations[unit] = if ok { generation } else { GENERATION_UNKNOWN };
    }
    pub fn is_busy(&self, unit: usize) -> bool {
        self.busy[unit / 64] & (1 << (unit % 64)) != 0
    }
    pub fn set_busy(&mut self, unit: usize, busy: bool) {
        debug_assert_ne!(self.is_busy(unit), busy, "unit {unit} busy state flipped twice");
        if busy {
            self.busy[unit / 64] |= 1 << (unit % 64);
        } else {
            self.busy[unit / 64] &= !(1 << (unit % 64));
        }
    }
    /// First unit at or after `start` (wrapping) that has no I/O in flight.
    pub fn free_unit_from(&self, start: usize) -> Option<usize> {
        let n = self.units();
        (0..n).map(|i| (start + i) % n).find(|u| !self.is_busy(*u))
    }
    /// Units whose content is known (written successfully this run).
    pub fn written_units(&self) -> impl Iterator<Item = usize> + '_ {
        self.generations
            .iter()
            .enumerate()
            .filter(|(_, g)| **g != GENERATION_NONE && **g != GENERATION_UNKNOWN)
            .map(|(u, _)| u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BS: usize = 4096;

    fn block(lba: u64, generation: u32) -> Vec<u8> {
        let mut b = vec![0u8; BS];
        fill_block(&mut b, 0xabcd, lba, generation);
        b
    }

    #[test]
    fn roundtrip() {
        let b = block(77, 3);
        assert_eq!(check_block(&b, 0xabcd, 77, 3), Ok(()));
        let mut io = vec![0u8; 8 * 512];
        fill_io(&mut io, 512, 9, 1000, 5);
        assert_eq!(check_io(&io, 512, 9, 1000, 5), Ok(()));
    }

    #[test]
    fn detects_flipped_bit_anywhere() {
        for pos in [0usize, 5, 9, 17, 21, 24, 100, BS - 1] {
            let mut b = block(10, 1);
            b[pos] ^= 0x40;
            assert!(check_block(&b, 0xabcd, 10, 1).is_err(), "flip at {pos} not detected");
        }
    }

    #[test]
    fn detects_corruption_as_crc_error() {
        let mut b = block(10, 1);
        b[2000] ^= 1;
        assert!(matches!(check_block(&b, 0xabcd, 10, 1), Err(VerifyError::BadCrc { lba: 10, .. })));
    }

    #[test]
    fn detects_misdirected_stale_foreign_and_zero_blocks() {
        let b = block(10, 2);
        assert_eq!(check_block(&b, 0xabcd, 11, 2), Err(VerifyError::WrongLba { lba: 11, found: 10 }));
        assert_eq!(
            check_block(&b, 0xabcd, 10, 3),
            Err(VerifyError::WrongGeneration { lba: 10, expected: 3, found: 2 })
        );
        assert!(matches!(check_block(&b, 0x1234, 10, 2), Err(VerifyError::WrongSeed { .. })));
        assert!(matches!(check_block(&[0u8; BS], 0xabcd, 10, 2), Err(VerifyError::BadMagic { found: 0, .. })));
    }

    #[test]
    fn multi_block_io_reports_the_bad_block() {
        let mut io = vec![0u8; 4 * 512];
        fill_io(&mut io, 512, 1, 40, 1);
        io[2 * 512 + 300] ^= 0xff;
        assert!(matches!(check_io(&io, 512, 1, 40, 1), Err(VerifyError::BadCrc { lba: 42, .. })));
        // A block swapped with its neighbour is a misdirected block.
        let mut io2 = vec![0u8; 2 * 512];
        fill_io(&mut io2, 512, 1, 40, 1);
        let (a, b) = io2.split_at_mut(512);
        a.swap_with_slice(b);
        assert_eq!(check_io(&io2, 512, 1, 40, 1), Err(VerifyError::WrongLba { lba: 40, found: 41 }));
    }

    #[test]
    fn generation_map() {
        let mut m = GenerationMap::new(130);
        assert_eq!(m.generation(5), GENERATION_NONE);
        assert_eq!(m.next_generation(5), 1);
        m.set_busy(5, true);
        assert!(m.is_busy(5));
        assert_eq!(m.free_unit_from(5), Some(6));
        m.write_done(5, 1, true);
        m.set_busy(5, false);
        assert_eq!(m.generation(5), 1);
        assert_eq!(m.next_generation(5), 2);
        m.write_done(7, 1, false);
        assert_eq!(m.generation(7), GENERATION_UNKNOWN);
        assert_eq!(m.next_generation(7), 1);
        assert_eq!(m.written_units().collect::<Vec<_>>(), vec![5]);
        for u in 0..130 {
            m.set_busy(u, true);
        }
        assert_eq!(m.free_unit_from(0), None);
        m.set_busy(129, false);
        assert_eq!(m.free_unit_from(3), Some(129));
    }
}
