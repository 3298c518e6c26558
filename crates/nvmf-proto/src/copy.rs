//! Payload copies that avoid a `rep movsb` pathology.
//!
//! glibc's `memcpy` moves blocks of 2 KiB and more with `rep movsb`. On the AMD
//! EPYC (Zen 3) machines this project is measured on, `rep movsb` runs about
//! 25x slower when the destination sits a few bytes (1..=31) past the source
//! modulo 4 KiB: a 4 KiB copy takes ~2 µs instead of ~80 ns, a 128 KiB copy
//! ~51 µs instead of ~3 µs (measured with both buffers from `malloc`; see
//! BENCHMARKS.md, "Copies"). NVMe/TCP hits that case all the time: a payload
//! appended after a 24-byte data PDU header to a buffer whose start has the
//! same page offset as the source lands exactly 24 bytes ahead.
//!
//! [`copy_bytes`] and [`extend_bytes`] copy large payloads with a plain AVX2
//! load/store loop (chosen at run time; no `rep movsb`), and small ones (under
//! [`VECTOR_COPY_MIN_BYTES`]) with the ordinary `copy_from_slice`, which glibc
//! does with vector moves at those sizes anyway.

/// From this size up the explicit vector loop is used (glibc's default
/// `rep movsb` threshold is 2 KiB).
pub const VECTOR_COPY_MIN_BYTES: usize = 2048;

/// `dst.copy_from_slice(src)` without `rep movsb` for large sizes.
/// Panics if the lengths differ (as `copy_from_slice` does).
#[inline]
pub fn copy_bytes(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "copy_bytes: length mismatch");
    // SAFETY: both slices are valid for len bytes and cannot overlap (one is
    // borrowed mutably).
    unsafe { copy_raw(dst.as_mut_ptr(), src.as_ptr(), src.len()) }
}

/// `out.extend_from_slice(src)` without `rep movsb` for large sizes.
#[inline]
pub fn extend_bytes(out: &mut Vec<u8>, src: &[u8]) {
    if src.len() < VECTOR_COPY_MIN_BYTES {
        out.extend_from_slice(src);
        return;
    }
    out.reserve(src.len());
    let start = out.len();
    // SAFETY: the spare capacity holds at least src.len() bytes (reserved
    // above); `src` cannot alias it (it is borrowed while `out` is borrowed
    // mutably); every byte up to start + len is written before set_len.
    unsafe {
        copy_raw(out.as_mut_ptr().add(start), src.as_ptr(), src.len());
        out.set_len(start + src.len());
    }
}

/// Raw-pointer form of [`copy_bytes`] (for memory the borrow checker cannot
/// see, such as a memory-mapped namespace).
///
/// # Safety
/// `src` must be valid for reads and `dst` for writes of `len` bytes, and the
/// two ranges must not overlap.
#[inline]
pub unsafe fn copy_raw(dst: *mut u8, src: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    if len >= VECTOR_COPY_MIN_BYTES && std::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 present; the caller guarantees the ranges.
        unsafe { copy_avx2(dst, src, len) };
        return;
    }
    // SAFETY: the caller guarantees the ranges.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, len) };
}

/// 128 bytes per iteration with unaligned 32-byte loads and stores, then the
/// tail (< 128 bytes, where `memcpy` uses vector moves, not `rep movsb`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn copy_avx2(dst: *mut u8, src: *const u8, len: usize) {
    use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm256_storeu_si256};
    let mut i = 0;
    // SAFETY (whole block): i + 128 <= len, so every load and store stays
    // inside the ranges the caller vouched for.
    unsafe {
        while i + 128 <= len {
            let a = _mm256_loadu_si256(src.add(i) as *const __m256i);
            let b = _mm256_loadu_si256(src.add(i + 32) as *const __m256i);
            let c = _mm256_loadu_si256(src.add(i + 64) as *const __m256i);
            let d = _mm256_loadu_si256(src.add(i + 96) as *const __m256i);
            _mm256_storeu_si256(dst.add(i) as *mut __m256i, a);
            _mm256_storeu_si256(dst.add(i + 32) as *mut __m256i, b);
            _mm256_storeu_si256(dst.add(i + 64) as *mut __m256i, c);
            _mm256_storeu_si256(dst.add(i + 96) as *mut __m256i, d);
            i += 128;
        }
        std::ptr::copy_nonoverlapping(src.add(i), dst.add(i), len - i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i.wrapping_mul(131) ^ (i >> 8)) as u8).collect()
    }

    #[test]
    fn copies_every_size_and_offset_exactly() {
        let src = pattern(140_000);
        for &len in &[0usize, 1, 127, 128, 129, 2047, 2048, 2049, 4096, 4096 + 24, 131_072] {
            for &(so, d_o) in &[(0usize, 0usize), (0, 24), (24, 0), (7, 13), (100, 1)] {
                let s = &src[so..so + len];
                let mut dst = vec![0xeeu8; len + d_o + 8];
                copy_bytes(&mut dst[d_o..d_o + len], s);
                assert_eq!(&dst[d_o..d_o + len], s, "len {len} so {so} do {d_o}");
                assert!(dst[..d_o].iter().all(|&b| b == 0xee), "wrote before the range");
                assert!(dst[d_o + len..].iter().all(|&b| b == 0xee), "wrote past the range");
                let mut out = vec![1u8; d_o];
                extend_bytes(&mut out, s);
                assert_eq!(out.len(), d_o + len);
                assert_eq!(&out[d_o..], s);
            }
        }
    }

    #[test]
    #[should_panic(expected = "length mismatch")]
    fn length_mismatch_panics() {
        copy_bytes(&mut [0u8; 3], &[0u8; 4]);
    }
}
