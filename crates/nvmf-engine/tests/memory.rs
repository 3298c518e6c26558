//! Process-level memory behaviour (its own test binary, so the RSS it reads
//! is this test's alone): receive buffers of closed connections go back to
//! the OS, wave after wave.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use nvmf_engine::*;

/// Consumes everything.
fn consume_all(io: &mut ConnIo<'_>) -> Flow {
    let n = io.rx().len();
    io.consume(n);
    Flow::Continue
}

#[test]
fn receive_memory_goes_back_when_connections_close() {
    const CONNS: usize = 3000;
    const BYTES: usize = 3 * 1024;
    const WAVES: usize = 3;
    let fds = raise_fd_limit().unwrap();
    assert!(fds as usize > 2 * CONNS + 256, "fd limit {fds} too low");
    let small = EngineConfig::default().recv_buf_bytes as u64;
    let eng = Engine::start(EngineConfig {
        mode: Mode::Interrupt,
        connections_max: 2 * CONNS,
        unestablished_max: 2 * CONNS,
        ..Default::default()
    })
    .unwrap();
    let addr = eng.listen(lo(), std::sync::Arc::new(OnRecv::new(consume_all).never_ticking())).unwrap().local_addr();
    let stats = || eng.stats()[0].clone();
    let payload = vec![7u8; BYTES];
    let before_kib = rss_kib();
    let mut after_kib = Vec::new();
    for wave in 0..WAVES {
        let mut conns: Vec<TcpStream> = (0..CONNS).map(|_| TcpStream::connect(addr).unwrap()).collect();
        wait_until("registered", || stats().connections == CONNS as u64);
        // Mapped, not resident: an idle connection costs no buffer pages.
        assert_eq!(stats().rx_mapped_bytes, CONNS as u64 * small);
        let idle_kib = rss_kib();
        for s in &mut conns {
            s.write_all(&payload).unwrap();
        }
        let received = ((wave + 1) * CONNS * BYTES) as u64;
        wait_until("received", || stats().bytes_rx == received);
        let busy_kib = rss_kib();
        drop(conns);
        wait_for_stats(&eng, "freed and unmapped", |st| st.connections == 0 && st.rx_mapped_bytes == 0);
        // Let the stats settle: nothing large was ever lent.
        assert_eq!((stats().rx_large_in_use, stats().rx_large_free, stats().rx_burst_granted), (0, 0, 0));
        let after = rss_kib();
        eprintln!(
            "wave {wave}: RSS before {before_kib} KiB, {CONNS} idle +{} KiB ({} B each), after {BYTES} B each \
             +{} KiB ({} B each), after close {after} KiB",
            idle_kib.saturating_sub(before_kib),
            idle_kib.saturating_sub(before_kib) * 1024 / CONNS as u64,
            busy_kib.saturating_sub(before_kib),
            busy_kib.saturating_sub(before_kib) * 1024 / CONNS as u64,
        );
        // Coarse: the pages received into (one per connection) came back.
        assert!(
            busy_kib.saturating_sub(after) >= (CONNS * 4 / 2) as u64,
            "receive pages not returned: busy {busy_kib} KiB, after close {after} KiB"
        );
        after_kib.push(after);
    }
    // Waves do not pile up (the old buffers never came back: ~1 GB after
    // three waves of 4,000 idle sockets).
    assert!(after_kib[WAVES - 1] <= after_kib[0] + 16 * 1024, "RSS grows wave over wave: {after_kib:?} KiB");
    eng.shutdown(Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(10));
}
