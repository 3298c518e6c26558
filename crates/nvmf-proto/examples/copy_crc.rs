//! Micro-benchmark behind the payload copy and CRC32C choices (see
//! `nvmf_proto::copy`, `nvmf_proto::digest` and BENCHMARKS.md, "Copies and
//! digests"). Run pinned on an otherwise idle core:
//!
//! ```sh
//! cargo run --release -p nvmf-proto --example copy_crc
//! ```
//!
//! Prints ns per operation for glibc `memcpy` (`copy_from_slice`) against
//! `copy_bytes` with the destination 0..72 bytes past the source (modulo
//! 4 KiB), and CRC32C by every path this CPU has (`nvmf_proto::digest::Crc32cPath`:
//! the `crc32c` crate, AVX2 folding, AVX-512 folding).

use std::hint::black_box;
use std::time::Instant;

fn ns_per_op(iters: usize, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed().as_secs_f64() * 1e9 / iters as f64
}

fn main() {
    let src = vec![1u8; 1 << 20];
    let mut dst = vec![0u8; 1 << 20];
    println!("copy: bytes, destination offset past the source (mod 4 KiB), memcpy ns, copy_bytes ns");
    for &n in &[4096usize, 131_072] {
        for &d in &[0usize, 8, 24, 32, 72] {
            let iters = (64 << 20) / n;
            // Both buffers come from the same allocator with the same page
            // offset, so dst - src (mod 4096) is exactly d.
            let m = ns_per_op(iters, || {
                dst[8192 + d..8192 + d + n].copy_from_slice(black_box(&src[..n]));
                black_box(&dst);
            });
            let c = ns_per_op(iters, || {
                nvmf_proto::copy::copy_bytes(&mut dst[8192 + d..8192 + d + n], black_box(&src[..n]));
                black_box(&dst);
            });
            println!("{n:>7} {d:>3} {m:>10.1} {c:>10.1}");
        }
    }
    use nvmf_proto::digest::{crc32c_append_with, Crc32cPath};
    let paths: Vec<Crc32cPath> = Crc32cPath::ALL.into_iter().filter(|p| p.available()).collect();
    let names: Vec<&str> = paths.iter().map(|p| p.name()).collect();
    println!("crc32c ns by path: bytes, {}", names.join(", "));
    for &n in &[512usize, 4096, 4120, 8192, 131_072] {
        let buf: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
        let iters = (256 << 20) / n;
        let mut line = format!("{n:>7}");
        for &p in &paths {
            assert_eq!(crc32c_append_with(p, 0, &buf), crc32c::crc32c(&buf));
            let t = ns_per_op(iters, || {
                black_box(crc32c_append_with(p, 0, black_box(&buf)));
            });
            line.push_str(&format!(" {t:>10.1}"));
        }
        println!("{line}");
    }
}
