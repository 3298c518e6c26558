//! The unsafe case of multipath write retry, made visible (acceptance 3).
//!
//! Write #1 (old data) is sent on path A while A's proxy holds every byte:
//! the host sees path A die with the write's fate unknown. The write is
//! retried on path B and completes; the application then writes newer data
//! to the same blocks on B. Finally A's proxy delivers the held bytes late.
//!
//! * With the fence (the default), the retry waits until the target must
//!   have torn down A's controller (keep-alive expiry); the late copy then
//!   reaches a closed queue and the newer data survives.
//! * With an immediate retry (`WriteRetry::Immediate`, test-only), A's
//!   controller is still alive when the late copy lands, and it overwrites
//!   the newer data: the test asserts that this corruption happens, proving
//!   the scenario really exercises the hazard.

mod multipath_util;

use std::time::{Duration, Instant};

use multipath_util::{mp_options, start_target, FaultProxy};
use nvmf_host::multipath::{IoPolicy, MultipathDevice, WriteRetry};

const LBA: u64 = 100;
const NLB: u32 = 8; // 4 KiB: in-capsule data, so the held bytes carry the whole write

/// Returns the first byte of the block after the late delivery, and how long
/// write #1 took to complete.
fn scenario(write_retry: Option<WriteRetry>) -> (u8, Duration) {
    let srv = start_target(None, None);
    let io = srv.io_addrs();
    let pa = FaultProxy::start(io[0]);
    let pb = FaultProxy::start(io[1]);
    let mut o = mp_options(IoPolicy::Failover { failback: false });
    if let Some(w) = write_retry {
        o.mp.write_retry = w;
    }
    let mut dev = MultipathDevice::open(&[pa.addr, pb.addr], o).unwrap();
    // Both paths up before the fault.
    let t = Instant::now();
    while dev.paths().iter().any(|p| p.cntlid.is_none()) {
        assert!(t.elapsed() < Duration::from_secs(10), "paths did not come up: {:?}", dev.paths());
        let _ = dev.poll(Some(Instant::now() + Duration::from_millis(20)));
    }
    dev.write(LBA, NLB, &[0u8; 4096]).unwrap();
    assert_eq!(dev.paths()[0].counters.write_ios, 1, "failover policy uses path A first");

    pa.hold();
    let t1 = Instant::now();
    dev.write(LBA, NLB, &[0x01u8; 4096]).unwrap(); // write #1: stuck on A, retried on B
    let write1 = t1.elapsed();
    dev.write(LBA, NLB, &[0x02u8; 4096]).unwrap(); // the newer write, on B
    assert!(dev.paths()[1].counters.write_ios >= 2, "{:?}", dev.paths());
    pa.release(); // the stale copy of write #1 reaches the target now
    std::thread::sleep(Duration::from_millis(500));
    let mut back = vec![0u8; 4096];
    dev.read(LBA, NLB, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == back[0]), "torn block");
    dev.close();
    srv.shutdown(Duration::from_secs(2));
    (back[0], write1)
}

#[test]
fn fenced_retry_keeps_the_newer_write() {
    let (v, write1) = scenario(None);
    eprintln!("fenced: write #1 completed after {write1:?}; final data {v:#04x}");
    assert_eq!(v, 0x02, "the newer write must survive the late delivery");
    // KATO 2 s: the fence is 2 x 2 s + 1 s after detection.
    assert!(write1 >= Duration::from_secs(5), "write #1 retried before the fence: {write1:?}");
}

#[test]
fn immediate_retry_loses_the_newer_write() {
    let (v, write1) = scenario(Some(WriteRetry::Immediate));
    eprintln!("immediate (unsafe): write #1 completed after {write1:?}; final data {v:#04x}");
    assert_eq!(v, 0x01, "the naive design must show the corruption (stale write landed last)");
}
