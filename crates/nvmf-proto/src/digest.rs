//! CRC32C (Castagnoli) digests as NVMe/TCP uses them: initial value and final
//! XOR 0xFFFF_FFFF, stored little-endian.
//!
//! Small buffers (PDU headers) go through the `crc32c` crate, which uses the
//! SSE4.2 / ARMv8 `crc32` instruction with three parallel streams. That
//! instruction retires 8 bytes a cycle at best (~15 GB/s here, 190-220 ns per
//! 4 KiB), which made data digests cost 13-19% of the IOPS at 4 KiB QD32.
//! From [`FOLD_MIN_BYTES`] up, x86_64 machines with VPCLMULQDQ fold the data
//! instead: carry-less multiplications by constants `x^(D±32) mod P` bring
//! the data forward by D bits, the lanes are folded into one 128-bit value
//! with the same CRC, and the `crc32` instruction finishes those 16 bytes and
//! the tail (Intel, "Fast CRC Computation for Generic Polynomials Using
//! PCLMULQDQ Instruction", 2009). Whole chunks also run three `crc32`
//! instruction streams over part of the chunk in the same loop (other
//! execution units) and join the four partial CRCs by carry-less
//! multiplication ("shifting" a CRC over the bytes after it). Two widths,
//! the widest the CPU has chosen once per process ([`path`]):
//!
//! * AVX-512: four 512-bit lanes (256 bytes an iteration), the three-way XOR
//!   of a fold in one `vpternlogq`; 4096-byte chunks (13 folding iterations
//!   and 3 x 256 bytes of `crc32` streams).
//! * AVX2: four 256-bit lanes (128 bytes an iteration); 4080-byte chunks.
//!
//! The constants are computed at compile time (`x_pow_mod_p`) and checked in
//! the tests. Measured on this project's AMD EPYC, 2026-12-03
//! (`cargo run --release -p nvmf-proto --example copy_crc`, same run): 4 KiB
//! in 69-78 ns (AVX-512) against 94-131 ns (AVX2) and 190-220 ns for the
//! crate; 128 KiB in 2.0-2.3 µs against 3.0 µs and 4.8-5.1 µs. The machine's
//! slow state makes all three ~1.5x slower, in the same ratios. (Folding
//! alone with 256-bit lanes did 4 KiB in 212 ns and with 512-bit lanes in
//! 74-78 ns; 128-bit lanes were slower than the crate here, PCLMULQDQ being
//! slow on this CPU, so 128-bit folding only finishes the lanes.)

/// From this length up the folding path is used when the CPU has it.
pub const FOLD_MIN_BYTES: usize = 256;

/// Digest of one buffer.
#[inline]
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c_append(0, data)
}

/// Continue a digest over a further buffer (for data split across slices).
#[inline]
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    if data.len() >= FOLD_MIN_BYTES {
        // path() only ever picks a path the CPU has.
        return dispatch(path(), crc, data);
    }
    crc32c::crc32c_append(crc, data)
}

/// The ways this build can compute a CRC32C, fastest last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Crc32cPath {
    /// The `crc32c` crate (SSE4.2 / ARMv8 `crc32` instruction, or software).
    Crate = 1,
    /// 256-bit VPCLMULQDQ folding fused with three `crc32` streams (AVX2).
    FoldAvx2 = 2,
    /// 512-bit VPCLMULQDQ folding with three-way XORs (AVX-512), fused with
    /// three `crc32` streams.
    FoldAvx512 = 3,
}

impl Crc32cPath {
    /// Every path, slowest first.
    pub const ALL: [Crc32cPath; 3] = [Crc32cPath::Crate, Crc32cPath::FoldAvx2, Crc32cPath::FoldAvx512];

    /// Whether this CPU can run the path.
    pub fn available(self) -> bool {
        match self {
            Crc32cPath::Crate => true,
            #[cfg(target_arch = "x86_64")]
            Crc32cPath::FoldAvx2 => fold::available_wide(),
            #[cfg(target_arch = "x86_64")]
            Crc32cPath::FoldAvx512 => fold::available_512(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Lower-case name, as `NVMF_CRC32C_PATH` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Crc32cPath::Crate => "crate",
            Crc32cPath::FoldAvx2 => "avx2",
            Crc32cPath::FoldAvx512 => "avx512",
        }
    }
}

/// The path large buffers take: the fastest the CPU has, unless the
/// environment variable `NVMF_CRC32C_PATH` (`crate`, `avx2`, `avx512`) names
/// an available slower one (for A/B measurements). Chosen once per process.
pub fn path() -> Crc32cPath {
    use std::sync::atomic::{AtomicU8, Ordering};
    static CHOSEN: AtomicU8 = AtomicU8::new(0);
    match CHOSEN.load(Ordering::Relaxed) {
        1 => return Crc32cPath::Crate,
        2 => return Crc32cPath::FoldAvx2,
        3 => return Crc32cPath::FoldAvx512,
        _ => {}
    }
    let fastest = Crc32cPath::ALL.into_iter().rev().find(|p| p.available()).unwrap_or(Crc32cPath::Crate);
    let requested = std::env::var("NVMF_CRC32C_PATH")
        .ok()
        .and_then(|name| Crc32cPath::ALL.into_iter().find(|p| p.name() == name && p.available()));
    let chosen = requested.unwrap_or(fastest);
    CHOSEN.store(chosen as u8, Ordering::Relaxed);
    chosen
}

/// [`crc32c_append`] by a given path; a path the CPU lacks falls back to the crate.
pub fn crc32c_append_with(path: Crc32cPath, crc: u32, data: &[u8]) -> u32 {
    dispatch(if path.available() { path } else { Crc32cPath::Crate }, crc, data)
}

/// [`crc32c_append`] by `path`, which the CPU must have ([`Crc32cPath::available`]).
#[inline]
fn dispatch(path: Crc32cPath, crc: u32, data: &[u8]) -> u32 {
    debug_assert!(path.available());
    #[cfg(target_arch = "x86_64")]
    if data.len() >= FOLD_MIN_BYTES {
        match path {
            // SAFETY (both): the caller checked that the CPU has the path's features.
            Crc32cPath::FoldAvx512 => return !unsafe { fold::crc32c_fused_512(!crc, data) },
            Crc32cPath::FoldAvx2 => return !unsafe { fold::crc32c_fused(!crc, data) },
            Crc32cPath::Crate => {}
        }
    }
    let _ = path; // only the x86_64 paths look at it
    crc32c::crc32c_append(crc, data)
}

#[cfg(target_arch = "x86_64")]
mod fold {
    use std::arch::x86_64::*;

    // Folding constants for P = 0x1_1EDC_6F41, bit-reflected: the low qword
    // is multiplied by x^(D+32) mod P, the high one by x^(D-32) mod P, for a
    // distance of D bits.
    /// 128-byte distance (1024 bits), both 128-bit lanes: n = 1056, 992.
    const K_1024: (i64, i64) = (x_pow_mod_p(1024 + 32), x_pow_mod_p(1024 - 32)); // 0x6992cea2, 0x0d3b6092
    /// 32-byte distance (256 bits): n = 288, 224.
    const K_256: (i64, i64) = (x_pow_mod_p(256 + 32), x_pow_mod_p(256 - 32)); // 0x1384aa63a, 0xba4fc28e
    /// 16-byte distance (128 bits): n = 160, 96.
    const K_128: (i64, i64) = (x_pow_mod_p(128 + 32), x_pow_mod_p(128 - 32)); // 0xf20c0dfe, 0x14cd00bd6

    /// `reflect32(x^n mod P) << 1`, evaluated at compile time.
    pub(super) const fn x_pow_mod_p(n: u32) -> i64 {
        const P: u64 = 0x1_1EDC_6F41;
        let mut r: u64 = 1;
        let mut i = 0;
        while i < n {
            r <<= 1;
            if r & (1 << 32) != 0 {
                r ^= P;
            }
            i += 1;
        }
        ((r as u32).reverse_bits() as i64) << 1
    }

    // Fused loop: each iteration folds 128 bytes of region A with VPCLMULQDQ
    // and runs 48 bytes through each of three crc32-instruction streams over
    // regions B1, B2, B3. The two kinds of instruction use different
    // execution units, so they overlap; each alone does ~8 bytes a cycle here.
    const FUSE_ITERS: usize = 15;
    const FUSE_A: usize = 128 * FUSE_ITERS;
    const FUSE_B: usize = 48 * FUSE_ITERS;
    /// Bytes of one fused chunk (4080: a 4 KiB payload is one chunk and a
    /// 16-byte tail).
    pub(super) const FUSE_CHUNK: usize = FUSE_A + 3 * FUSE_B;
    /// Multipliers that move a CRC forward by B, 2B and 3B bytes:
    /// `x^(8 * bytes - 32) mod P` (the crc32 instruction adds the other x^32).
    const K_SHIFT: [i64; 3] = [
        x_pow_mod_p(8 * FUSE_B as u32 - 32),
        x_pow_mod_p(16 * FUSE_B as u32 - 32),
        x_pow_mod_p(24 * FUSE_B as u32 - 32),
    ];

    /// `crc` (a raw state) followed by `bytes` zero bytes' worth of shift.
    #[inline]
    #[target_feature(enable = "pclmulqdq,sse4.2")]
    fn shift(crc: u32, k: i64) -> u32 {
        let p = _mm_clmulepi64_si128(_mm_cvtsi32_si128(crc as i32), _mm_cvtsi64_si128(k), 0x00);
        _mm_crc32_u64(0, _mm_cvtsi128_si64(p) as u64) as u32
    }

    /// Raw CRC state continued over `bytes` by the crc32 instruction alone.
    #[inline]
    #[target_feature(enable = "sse4.2")]
    fn crc32_bytes(state: u32, bytes: &[u8]) -> u32 {
        let mut words = bytes.chunks_exact(8);
        let mut crc = state as u64;
        for w in &mut words {
            crc = _mm_crc32_u64(crc, u64::from_le_bytes(w.try_into().unwrap()));
        }
        let mut crc = crc as u32;
        for &byte in words.remainder() {
            crc = _mm_crc32_u8(crc, byte);
        }
        crc
    }

    /// CRC state of 16 folded bytes (they carry the CRC of everything folded
    /// into them), from a zero state.
    #[inline]
    #[target_feature(enable = "sse4.2")]
    fn crc32_folded(x: __m128i) -> u32 {
        _mm_crc32_u64(_mm_crc32_u64(0, _mm_cvtsi128_si64(x) as u64), _mm_extract_epi64(x, 1) as u64) as u32
    }

    /// Join a fused chunk's four partial CRCs: region A's (`ca`) and the three
    /// `crc32` streams', each shifted over the stream regions after it (`k`:
    /// one, two and three stream lengths).
    #[inline]
    #[target_feature(enable = "pclmulqdq,sse4.2")]
    fn join_streams(ca: u32, c: [u64; 3], k: [i64; 3]) -> u32 {
        shift(ca, k[2]) ^ shift(c[0] as u32, k[1]) ^ shift(c[1] as u32, k[0]) ^ c[2] as u32
    }

    /// Raw CRC state over `data` (any length): whole fused chunks, then the
    /// rest folded ([`crc32c_fold_wide`]) or, under 128 bytes, by the crc32
    /// instruction.
    ///
    /// # Safety
    /// As [`crc32c_fold_wide`].
    #[target_feature(enable = "vpclmulqdq,avx2,pclmulqdq,sse4.2")]
    pub(super) unsafe fn crc32c_fused(mut state: u32, data: &[u8]) -> u32 {
        let k1024 = _mm256_set_epi64x(K_1024.1, K_1024.0, K_1024.1, K_1024.0);
        let k256 = _mm256_set_epi64x(K_256.1, K_256.0, K_256.1, K_256.0);
        let k128 = _mm_set_epi64x(K_128.1, K_128.0);
        let mut at = 0;
        while data.len() - at >= FUSE_CHUNK {
            let chunk = &data[at..at + FUSE_CHUNK];
            let (a, b) = chunk.split_at(FUSE_A);
            let (b1, rest) = b.split_at(FUSE_B);
            let (b2, b3) = rest.split_at(FUSE_B);
            let ld = |i: usize| -> __m256i {
                debug_assert!(i + 32 <= a.len());
                // SAFETY: i + 32 <= FUSE_A at every call.
                unsafe { _mm256_loadu_si256(a.as_ptr().add(i) as *const __m256i) }
            };
            let q = |s: &[u8], i: usize| -> u64 { u64::from_le_bytes(s[i..i + 8].try_into().unwrap()) };
            let mut y0 = _mm256_xor_si256(ld(0), _mm256_set_epi64x(0, 0, 0, state as i64));
            let mut y1 = ld(32);
            let mut y2 = ld(64);
            let mut y3 = ld(96);
            let (mut c1, mut c2, mut c3) = (0u64, 0u64, 0u64);
            for it in 0..FUSE_ITERS {
                if it > 0 {
                    let o = 128 * it;
                    y0 = fold256(y0, k1024, ld(o));
                    y1 = fold256(y1, k1024, ld(o + 32));
                    y2 = fold256(y2, k1024, ld(o + 64));
                    y3 = fold256(y3, k1024, ld(o + 96));
                }
                let o = 48 * it;
                for j in (0..48).step_by(8) {
                    c1 = _mm_crc32_u64(c1, q(b1, o + j));
                    c2 = _mm_crc32_u64(c2, q(b2, o + j));
                    c3 = _mm_crc32_u64(c3, q(b3, o + j));
                }
            }
            let mut y = fold256(y0, k256, y1);
            y = fold256(y, k256, y2);
            y = fold256(y, k256, y3);
            let x = fold(_mm256_castsi256_si128(y), k128, _mm256_extracti128_si256(y, 1));
            state = join_streams(crc32_folded(x), [c1, c2, c3], K_SHIFT);
            at += FUSE_CHUNK;
        }
        let rest = &data[at..];
        if rest.len() >= 128 {
            // SAFETY: same features.
            return unsafe { crc32c_fold_wide(state, rest) };
        }
        crc32_bytes(state, rest)
    }

    /// 256-byte distance (2048 bits): n = 2080, 2016.
    const K_2048: (i64, i64) = (x_pow_mod_p(2048 + 32), x_pow_mod_p(2048 - 32));
    /// 64-byte distance (512 bits): n = 544, 480.
    const K_512: (i64, i64) = (x_pow_mod_p(512 + 32), x_pow_mod_p(512 - 32));

    #[inline]
    pub(super) fn available_512() -> bool {
        std::is_x86_feature_detected!("vpclmulqdq")
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("pclmulqdq")
            && std::is_x86_feature_detected!("sse4.2")
    }

    // Fused 512-bit loop: 13 iterations fold 256 bytes of region A each
    // (3328 bytes) while three crc32 streams run over regions B1..B3 of 256
    // bytes each (16 bytes a stream an iteration, the last 48 after the
    // loop): exactly 4096 bytes a chunk.
    const FUSE512_ITERS: usize = 13;
    const FUSE512_A: usize = 256 * FUSE512_ITERS;
    const FUSE512_B: usize = 256;
    /// Bytes of each crc32 stream an iteration.
    const FUSE512_STEP: usize = (FUSE512_B / FUSE512_ITERS) & !7;
    pub(super) const FUSE512_CHUNK: usize = FUSE512_A + 3 * FUSE512_B;
    const K512_SHIFT: [i64; 3] = [
        x_pow_mod_p(8 * FUSE512_B as u32 - 32),
        x_pow_mod_p(16 * FUSE512_B as u32 - 32),
        x_pow_mod_p(24 * FUSE512_B as u32 - 32),
    ];

    /// Raw CRC state over `data` (any length): whole 4096-byte fused chunks,
    /// then the rest by [`crc32c_fold_512`] or the crc32 instruction.
    ///
    /// # Safety
    /// As [`crc32c_fold_512`].
    #[target_feature(enable = "vpclmulqdq,avx512f,avx512vl,pclmulqdq,sse4.2")]
    pub(super) unsafe fn crc32c_fused_512(mut state: u32, data: &[u8]) -> u32 {
        let k2048 = _mm512_set_epi64(K_2048.1, K_2048.0, K_2048.1, K_2048.0, K_2048.1, K_2048.0, K_2048.1, K_2048.0);
        let k512 = _mm512_set_epi64(K_512.1, K_512.0, K_512.1, K_512.0, K_512.1, K_512.0, K_512.1, K_512.0);
        let k128 = _mm_set_epi64x(K_128.1, K_128.0);
        let mut at = 0;
        while data.len() - at >= FUSE512_CHUNK {
            let chunk = &data[at..at + FUSE512_CHUNK];
            let (a, b) = chunk.split_at(FUSE512_A);
            let (b1, rest) = b.split_at(FUSE512_B);
            let (b2, b3) = rest.split_at(FUSE512_B);
            let ld = |i: usize| -> __m512i {
                debug_assert!(i + 64 <= a.len());
                // SAFETY: i + 64 <= FUSE512_A at every call.
                unsafe { _mm512_loadu_si512(a.as_ptr().add(i) as *const __m512i) }
            };
            let q = |s: &[u8], i: usize| -> u64 { u64::from_le_bytes(s[i..i + 8].try_into().unwrap()) };
            let mut z0 = _mm512_xor_si512(ld(0), _mm512_set_epi64(0, 0, 0, 0, 0, 0, 0, state as i64));
            let mut z1 = ld(64);
            let mut z2 = ld(128);
            let mut z3 = ld(192);
            let (mut c1, mut c2, mut c3) = (0u64, 0u64, 0u64);
            for it in 0..FUSE512_ITERS {
                if it > 0 {
                    let o = 256 * it;
                    z0 = fold512(z0, k2048, ld(o));
                    z1 = fold512(z1, k2048, ld(o + 64));
                    z2 = fold512(z2, k2048, ld(o + 128));
                    z3 = fold512(z3, k2048, ld(o + 192));
                }
                let o = FUSE512_STEP * it;
                for j in (0..FUSE512_STEP).step_by(8) {
                    c1 = _mm_crc32_u64(c1, q(b1, o + j));
                    c2 = _mm_crc32_u64(c2, q(b2, o + j));
                    c3 = _mm_crc32_u64(c3, q(b3, o + j));
                }
            }
            for j in (FUSE512_STEP * FUSE512_ITERS..FUSE512_B).step_by(8) {
                c1 = _mm_crc32_u64(c1, q(b1, j));
                c2 = _mm_crc32_u64(c2, q(b2, j));
                c3 = _mm_crc32_u64(c3, q(b3, j));
            }
            let mut z = fold512(z0, k512, z1);
            z = fold512(z, k512, z2);
            z = fold512(z, k512, z3);
            state = join_streams(crc32_folded(lanes_512(z, k128)), [c1, c2, c3], K512_SHIFT);
            at += FUSE512_CHUNK;
        }
        let rest = &data[at..];
        if rest.len() >= 256 {
            // SAFETY: same features.
            return unsafe { crc32c_fold_512(state, rest) };
        }
        crc32_bytes(state, rest)
    }

    /// Fold the four 128-bit lanes of `z` (each 16 bytes before the next) into one.
    #[inline]
    #[target_feature(enable = "vpclmulqdq,avx512f,avx512vl,pclmulqdq,sse4.2")]
    fn lanes_512(z: __m512i, k128: __m128i) -> __m128i {
        let x = fold(_mm512_castsi512_si128(z), k128, _mm512_extracti32x4_epi32(z, 1));
        let x = fold(x, k128, _mm512_extracti32x4_epi32(z, 2));
        fold(x, k128, _mm512_extracti32x4_epi32(z, 3))
    }

    /// [`fold`] on four 128-bit lanes, the three-way XOR in one instruction.
    #[inline]
    #[target_feature(enable = "vpclmulqdq,avx512f,avx512vl,pclmulqdq,sse4.2")]
    fn fold512(x: __m512i, k: __m512i, y: __m512i) -> __m512i {
        let lo = _mm512_clmulepi64_epi128(x, k, 0x00);
        let hi = _mm512_clmulepi64_epi128(x, k, 0x11);
        _mm512_ternarylogic_epi64(lo, hi, y, 0x96)
    }

    /// Raw CRC state over `data`, `data.len() >= 256`, in four 512-bit lanes
    /// (256 bytes an iteration).
    ///
    /// # Safety
    /// The CPU must have what [`available_512`] checks.
    #[target_feature(enable = "vpclmulqdq,avx512f,avx512vl,pclmulqdq,sse4.2")]
    pub(super) unsafe fn crc32c_fold_512(state: u32, data: &[u8]) -> u32 {
        assert!(data.len() >= 256, "512-bit folding needs a 256-byte first block");
        let load = |at: usize| -> __m512i {
            debug_assert!(at + 64 <= data.len());
            // SAFETY: at + 64 <= data.len() at every call below.
            unsafe { _mm512_loadu_si512(data.as_ptr().add(at) as *const __m512i) }
        };
        let k2048 = _mm512_set_epi64(K_2048.1, K_2048.0, K_2048.1, K_2048.0, K_2048.1, K_2048.0, K_2048.1, K_2048.0);
        let k512 = _mm512_set_epi64(K_512.1, K_512.0, K_512.1, K_512.0, K_512.1, K_512.0, K_512.1, K_512.0);
        let mut z0 = _mm512_xor_si512(load(0), _mm512_set_epi64(0, 0, 0, 0, 0, 0, 0, state as i64));
        let mut z1 = load(64);
        let mut z2 = load(128);
        let mut z3 = load(192);
        let mut at = 256;
        while at + 256 <= data.len() {
            z0 = fold512(z0, k2048, load(at));
            z1 = fold512(z1, k2048, load(at + 64));
            z2 = fold512(z2, k2048, load(at + 128));
            z3 = fold512(z3, k2048, load(at + 192));
            at += 256;
        }
        let mut z = fold512(z0, k512, z1);
        z = fold512(z, k512, z2);
        z = fold512(z, k512, z3);
        while at + 64 <= data.len() {
            z = fold512(z, k512, load(at));
            at += 64;
        }
        let k128 = _mm_set_epi64x(K_128.1, K_128.0);
        let mut x = lanes_512(z, k128);
        while at + 16 <= data.len() {
            // SAFETY: at + 16 <= data.len().
            let next = unsafe { _mm_loadu_si128(data.as_ptr().add(at) as *const __m128i) };
            x = fold(x, k128, next);
            at += 16;
        }
        crc32_bytes(crc32_folded(x), &data[at..])
    }

    #[inline]
    pub(super) fn available_wide() -> bool {
        std::is_x86_feature_detected!("vpclmulqdq")
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("pclmulqdq")
            && std::is_x86_feature_detected!("sse4.2")
    }

    /// Move `x` forward by the distance of `k` and add `y`.
    #[inline]
    #[target_feature(enable = "pclmulqdq,sse4.2")]
    fn fold(x: __m128i, k: __m128i, y: __m128i) -> __m128i {
        let lo = _mm_clmulepi64_si128(x, k, 0x00);
        let hi = _mm_clmulepi64_si128(x, k, 0x11);
        _mm_xor_si128(_mm_xor_si128(lo, hi), y)
    }

    /// [`fold`] on both 128-bit lanes.
    #[inline]
    #[target_feature(enable = "vpclmulqdq,avx2,pclmulqdq,sse4.2")]
    fn fold256(x: __m256i, k: __m256i, y: __m256i) -> __m256i {
        let lo = _mm256_clmulepi64_epi128(x, k, 0x00);
        let hi = _mm256_clmulepi64_epi128(x, k, 0x11);
        _mm256_xor_si256(_mm256_xor_si256(lo, hi), y)
    }

    /// Raw CRC state (already inverted) over `data`, `data.len() >= 128`,
    /// in four 256-bit lanes (128 bytes an iteration).
    ///
    /// # Safety
    /// The CPU must have VPCLMULQDQ, AVX2, PCLMULQDQ and SSE4.2 ([`available_wide`]).
    #[target_feature(enable = "vpclmulqdq,avx2,pclmulqdq,sse4.2")]
    pub(super) unsafe fn crc32c_fold_wide(state: u32, data: &[u8]) -> u32 {
        assert!(data.len() >= 128, "wide folding needs a 128-byte first block");
        let load = |at: usize| -> __m256i {
            debug_assert!(at + 32 <= data.len());
            // SAFETY: at + 32 <= data.len() at every call below.
            unsafe { _mm256_loadu_si256(data.as_ptr().add(at) as *const __m256i) }
        };
        let k1024 = _mm256_set_epi64x(K_1024.1, K_1024.0, K_1024.1, K_1024.0);
        let k256 = _mm256_set_epi64x(K_256.1, K_256.0, K_256.1, K_256.0);
        // The initial state enters as an XOR into the first 4 bytes.
        let mut y0 = _mm256_xor_si256(load(0), _mm256_set_epi64x(0, 0, 0, state as i64));
        let mut y1 = load(32);
        let mut y2 = load(64);
        let mut y3 = load(96);
        let mut at = 128;
        while at + 128 <= data.len() {
            y0 = fold256(y0, k1024, load(at));
            y1 = fold256(y1, k1024, load(at + 32));
            y2 = fold256(y2, k1024, load(at + 64));
            y3 = fold256(y3, k1024, load(at + 96));
            at += 128;
        }
        let mut y = fold256(y0, k256, y1);
        y = fold256(y, k256, y2);
        y = fold256(y, k256, y3);
        // Two 128-bit lanes: the earlier one folds 16 bytes forward into the later.
        let k128 = _mm_set_epi64x(K_128.1, K_128.0);
        let mut x = fold(_mm256_castsi256_si128(y), k128, _mm256_extracti128_si256(y, 1));
        while at + 16 <= data.len() {
            // SAFETY: at + 16 <= data.len().
            let next = unsafe { _mm_loadu_si128(data.as_ptr().add(at) as *const __m128i) };
            x = fold(x, k128, next);
            at += 16;
        }
        // The 16 folded bytes carry the CRC of everything so far: finish them
        // (from a zero state) and the tail with the crc32 instruction.
        crc32_bytes(crc32_folded(x), &data[at..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // RFC 3720 B.4 test vectors for CRC32C.
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8_ab43);
        let inc: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&inc), 0x46dd_794e);
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c_append(crc32c(b"1234"), b"56789"), 0xe306_9283);
    }

    #[test]
    fn folding_matches_the_crc32c_crate_for_every_length_and_split() {
        let data: Vec<u8> = (0..140_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
        for len in
            (0..600).chain([1023, 1024, 1025, 4079, 4080, 4081, 4095, 4096, 4097, 4120, 7941, 65_536, 131_072, 131_101])
        {
            for start in [0usize, 1, 7, 24] {
                let d = &data[start..start + len];
                assert_eq!(crc32c(d), crc32c::crc32c(d), "len {len} start {start}");
            }
        }
        let d = &data[..131_072];
        for split in [0usize, 3, 64, 255, 256, 4096, 100_000] {
            assert_eq!(crc32c_append(crc32c(&d[..split]), &d[split..]), crc32c::crc32c(d), "split {split}");
        }
    }

    #[test]
    fn every_available_path_matches_the_crate() {
        let data: Vec<u8> = (0..140_000u32).map(|i| (i.wrapping_mul(2_246_822_519) >> 9) as u8).collect();
        assert!(Crc32cPath::Crate.available());
        assert!(Crc32cPath::ALL.contains(&path()) && path().available());
        for p in Crc32cPath::ALL.into_iter().filter(|p| p.available()) {
            for len in (0..700).chain([4095, 4096, 4097, 4120, 8191, 8192, 8193, 12_288 + 255, 65_536, 131_072 + 17]) {
                for start in [0usize, 3, 24] {
                    let d = &data[start..start + len];
                    assert_eq!(crc32c_append_with(p, 0, d), crc32c::crc32c(d), "{p:?} len {len} start {start}");
                    let seed = crc32c::crc32c(&data[..start]);
                    assert_eq!(crc32c_append_with(p, seed, d), crc32c::crc32c(&data[..start + len]), "{p:?} append");
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_and_split_match_the_crate(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..9000), split in 0usize..9000) {
            let split = split.min(data.len());
            proptest::prop_assert_eq!(crc32c(&data), crc32c::crc32c(&data));
            proptest::prop_assert_eq!(crc32c_append(crc32c(&data[..split]), &data[split..]), crc32c::crc32c(&data));
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn known_folding_constants() {
        // Values computed independently (a Python model of x^n mod P) for D = 128.
        assert_eq!(fold::x_pow_mod_p(128 + 32), 0xf20c_0dfe);
        assert_eq!(fold::x_pow_mod_p(128 - 32), 0x1_4cd0_0bd6);
    }
}
