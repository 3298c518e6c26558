//! In-memory client→server TLS throughput, for the docs (not a test):
//! `cargo run --release -p nvmf-tls --example throughput [seconds-per-case]`.
//!
//! Each write of W bytes is encrypted, its ciphertext taken (buffer swap, no
//! copy) and fed to the server, which decrypts into a reused buffer — the
//! path an engine takes per PDU. Prints plaintext MB/s (10^6 bytes/s) and the
//! ciphertext overhead. One thread does both sides, so the figure is the sum
//! of encrypt + decrypt work on one core.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nvmf_tls::{ClientOptions, TlsHash, TlsSession};
use zeroize::Zeroizing;

/// Counts Rust-side allocations (OpenSSL's own go to libc directly), to show
/// the session allocates nothing per record in steady state.
struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(p, l, n) }
    }
}
#[global_allocator]
static GLOBAL: Counting = Counting;

fn pair(hash: TlsHash) -> (TlsSession, TlsSession) {
    let id = "NVMe0R01 nqn.2014-08.org.nvmexpress:uuid:bench nqn.2024-01.io.nvmf:bench";
    let key = vec![0x5a; hash.psk_len()];
    let k2 = key.clone();
    let mut s = TlsSession::server(Arc::new(move |_: &[u8]| Some((Zeroizing::new(k2.clone()), hash)))).unwrap();
    let mut c = TlsSession::client(id, &key, hash, ClientOptions::default()).unwrap();
    let mut buf = Vec::new();
    for _ in 0..4 {
        c.take_ciphertext(&mut buf);
        s.feed(&buf).unwrap();
        buf.clear();
        s.take_ciphertext(&mut buf);
        c.feed(&buf).unwrap();
        buf.clear();
    }
    assert!(c.handshake_done() && s.handshake_done());
    (c, s)
}

fn run(hash: TlsHash, write_size: usize, secs: f64) -> (f64, f64, f64) {
    let (mut c, mut s) = pair(hash);
    let data: Vec<u8> = (0..write_size).map(|i| i as u8).collect();
    let mut ct = Vec::with_capacity(1 << 20);
    let mut sink = vec![0u8; 256 * 1024];
    let (mut plain_bytes, mut wire_bytes, mut writes) = (0u64, 0u64, 0u64);
    let mut allocs_before = None;
    let start = Instant::now();
    let limit = Duration::from_secs_f64(secs);
    while start.elapsed() < limit {
        if allocs_before.is_none() && start.elapsed() > limit / 4 {
            // Steady state from here on (buffers have grown to size).
            allocs_before = Some((ALLOCS.load(Ordering::Relaxed), writes));
        }
        for _ in 0..64 {
            writes += 1;
            let mut off = 0;
            while off < data.len() {
                off += c.write_plaintext(&data[off..]).unwrap();
                c.take_ciphertext(&mut ct);
                wire_bytes += ct.len() as u64;
                let mut fed = 0;
                while fed < ct.len() {
                    fed += s.feed(&ct[fed..]).unwrap();
                    loop {
                        let n = s.read_plaintext_into(&mut sink).unwrap();
                        plain_bytes += n as u64;
                        if n < sink.len() {
                            break;
                        }
                    }
                }
                ct.clear();
            }
        }
    }
    let t = start.elapsed().as_secs_f64();
    assert!(plain_bytes > 0);
    let (a0, w0) = allocs_before.unwrap_or((0, 0));
    let allocs_per_write = (ALLOCS.load(Ordering::Relaxed) - a0) as f64 / (writes - w0).max(1) as f64;
    (plain_bytes as f64 / t / 1e6, wire_bytes as f64 / plain_bytes as f64, allocs_per_write)
}

fn main() {
    let secs: f64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2.0);
    println!("{:<24} {:>6} {:>8} {:>11} {:>13}", "suite", "write", "MB/s", "wire/plain", "allocs/write");
    for hash in [TlsHash::Sha256, TlsHash::Sha384] {
        for size in [128 * 1024, 4 * 1024] {
            let (mbs, ratio, allocs) = run(hash, size, secs);
            println!("{:<24} {:>5}K {:>8.0} {:>11.4} {:>13.4}", hash.suite_name(), size / 1024, mbs, ratio, allocs);
        }
    }
}
