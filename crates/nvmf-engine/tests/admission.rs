//! Connection admission over loopback: engine-wide limits, probation
//! (`ConnIo::set_established`) and eviction of idle or unestablished
//! connections (behaviour only, no timing assertions).

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use nvmf_engine::*;

/// Echoes every byte; a `H` (hello) establishes the connection.
fn echo_hello(io: &mut ConnIo<'_>) -> Flow {
    let (rx, tx) = io.rx_tx();
    let n = rx.len();
    let hello = rx.contains(&b'H');
    tx.extend_from_slice(rx);
    io.consume(n);
    if hello {
        io.set_established();
        assert!(io.is_established());
    }
    Flow::Continue
}

/// Connections answered by [`echo_hello`]; never ticking.
fn probe() -> Arc<OnRecv> {
    Arc::new(OnRecv::new(echo_hello).never_ticking())
}

/// Connect, say hello, wait for the echo: an established connection.
fn host(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = connect(addr);
    s.write_all(b"H").unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"H");
    s
}

fn echo(s: &mut TcpStream, byte: u8) {
    s.write_all(&[byte]).unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    assert_eq!(b[0], byte);
}

fn sum(eng: &Engine, f: impl Fn(&CoreStats) -> u64) -> u64 {
    eng.stats().iter().map(f).sum()
}

/// The largest counts seen while sampling in the background.
#[derive(Default, Debug, Clone, Copy)]
struct Peaks {
    open: usize,
    unestablished: usize,
    evicting: usize,
}

fn sample_counts(eng: &Engine, stop: &AtomicBool, peaks: &Mutex<Peaks>) {
    while !stop.load(Ordering::Relaxed) {
        let c = eng.connection_counts();
        let mut p = peaks.lock().unwrap();
        p.open = p.open.max(c.open);
        p.unestablished = p.unestablished.max(c.unestablished);
        p.evicting = p.evicting.max(c.evicting);
        drop(p);
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn idle_flood(mode: Mode, flood: usize) {
    const N: usize = 128;
    const M: usize = 64;
    let fds = raise_fd_limit().unwrap();
    assert!(fds as usize > 2 * flood + 256, "fd limit {fds} too low for a flood of {flood}");
    let cores = cpus(2);
    assert_eq!(cores.len(), 2, "this test needs 2 CPUs to run on, found {cores:?}");
    let factory = probe();
    let eng =
        Engine::start(EngineConfig { cores, mode, connections_max: N, unestablished_max: M, ..Default::default() })
            .unwrap();
    let addr = eng.listen(lo(), factory.clone()).unwrap().local_addr();

    // Real hosts first: established, never evicted.
    let mut hosts: Vec<TcpStream> = (0..40).map(|_| host(addr)).collect();
    wait_until("40 established", || {
        let c = eng.connection_counts();
        c.open == 40 && c.unestablished == 0
    });

    let stop = AtomicBool::new(false);
    let peaks = Mutex::new(Peaks::default());
    let mut fresh = None;
    // Sockets that never send a byte, opened as fast as possible (kept open
    // by the test until the end).
    let mut idle = Vec::with_capacity(flood);
    std::thread::scope(|scope| {
        scope.spawn(|| sample_counts(&eng, &stop, &peaks));
        for i in 0..flood {
            idle.push(TcpStream::connect(addr).unwrap());
            if i == flood / 2 {
                // A real host arriving in the middle of the flood says hello at
                // once and is served.
                let mut s = connect(addr);
                s.write_all(b"H").unwrap();
                let mut b = [0u8; 1];
                if let Err(e) = s.read_exact(&mut b) {
                    let st = eng.stats();
                    panic!("{e}: {:?} {:?}", eng.connection_counts(), st);
                }
                fresh = Some(s);
            }
        }
        wait_until_or(
            "all idle sockets accepted and the oldest evicted",
            || {
                sum(&eng, |s| s.evicted_silent) == (flood - M) as u64
                    && eng.connection_counts() == ConnectionCounts { open: 41 + M, unestablished: M, evicting: 0 }
            },
            || format!("{:?} {:?}", eng.connection_counts(), eng.stats()),
        );
        stop.store(true, Ordering::Relaxed);
        // The newest idle sockets are the ones left: oldest first on each
        // core, across cores by the registration times they last published
        // (so only roughly when cores lag behind the flood).
        let open: Vec<usize> = (0..flood).filter(|&i| !is_closed(&idle[i])).collect();
        assert_eq!(open.len(), M);
        assert!(open.iter().all(|&i| i >= flood / 2), "old idle sockets survived: {open:?}");
    });
    let peaks = *peaks.lock().unwrap();
    // Only an eviction request that found nothing (a race with
    // establishment or close, none here) can take a count over its limit.
    let missed = sum(&eng, |s| s.evict_missed) as usize;
    assert!(peaks.open <= N + missed, "open connections beyond the limit: {peaks:?}, {missed} missed");
    assert!(peaks.unestablished <= M + missed, "unestablished beyond the limit: {peaks:?}, {missed} missed");
    assert!(peaks.evicting <= EVICTIONS_PENDING_MAX, "{peaks:?}");
    let mut fresh = fresh.unwrap();
    echo(&mut fresh, b'f');
    for h in &mut hosts {
        echo(h, b'e');
    }
    assert_eq!(sum(&eng, |s| s.evicted_unestablished), 0);
    assert_eq!(sum(&eng, |s| s.refused_limit), 0);
    let evicted = factory.closed.lock().unwrap().iter().filter(|r| **r == CloseReason::Evicted).count();
    assert_eq!(evicted, flood - M, "on_closed(Evicted) for every eviction");

    // Fill the rest with real hosts: each evicts one idle socket (connections_max
    // binds now); then nothing is left to evict and a new socket is refused.
    hosts.extend((0..N - 41).map(|_| host(addr)));
    wait_until("all established", || {
        let c = eng.connection_counts();
        c.open == N && c.unestablished == 0 && c.evicting == 0
    });
    let mut refused = TcpStream::connect(addr).unwrap();
    refused.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    expect_eof(&mut refused);
    wait_until_or(
        "refusal and evictions counted",
        || sum(&eng, |s| s.refused_limit) == 1 && sum(&eng, |s| s.evicted_silent) == flood as u64,
        || format!("{:?} {:?}", eng.connection_counts(), eng.stats()),
    );
    assert_eq!(eng.connection_counts().open, N);
    for h in &mut hosts {
        echo(h, b'g');
    }
    echo(&mut fresh, b'g');
    eng.shutdown(Duration::from_secs(2));
    drop(idle);
}

#[test]
fn idle_flood_evicts_idle_sockets_and_real_hosts_are_served_interrupt() {
    idle_flood(Mode::Interrupt, 3000);
}

#[test]
fn idle_flood_evicts_idle_sockets_and_real_hosts_are_served_poll() {
    idle_flood(Mode::Poll, 600);
}

#[test]
fn silent_connections_are_evicted_before_ones_that_spoke() {
    const M: usize = 4;
    let factory = probe();
    let eng = Engine::start(EngineConfig {
        mode: Mode::Interrupt,
        connections_max: 100,
        unestablished_max: M,
        ..Default::default()
    })
    .unwrap();
    let addr = eng.listen(lo(), factory.clone()).unwrap().local_addr();
    // The oldest connection spoke (heard) but is not established.
    let mut talker = connect(addr);
    echo(&mut talker, b'x');
    // Ten silent ones: the oldest silent ones go, the talker stays.
    let silent: Vec<TcpStream> = (0..10).map(|_| connect(addr)).collect();
    wait_until("7 evicted", || sum(&eng, |s| s.evicted_silent) == 7);
    wait_until("evictions done", || {
        eng.connection_counts() == ConnectionCounts { open: M, unestablished: M, evicting: 0 }
    });
    assert!(silent[..7].iter().all(is_closed));
    assert!(!silent[7..].iter().any(is_closed));
    echo(&mut talker, b'y');
    assert_eq!(sum(&eng, |s| s.evicted_unestablished), 0);
    drop(silent);
    wait_until("only the talker left", || eng.connection_counts().open == 1);
    // Three more talkers fill the bound; the fourth evicts the oldest
    // unestablished connection, which now is the first talker.
    let mut talkers = Vec::new();
    for i in 0..M {
        let mut t = connect(addr);
        echo(&mut t, i as u8);
        talkers.push(t);
    }
    expect_eof(&mut talker);
    wait_until("counted", || sum(&eng, |s| s.evicted_unestablished) == 1);
    for t in &mut talkers {
        echo(t, b'z');
    }
    assert_eq!(sum(&eng, |s| s.unestablished), M as u64);
    eng.shutdown(Duration::from_secs(2));
    let closed = factory.closed.lock().unwrap();
    assert_eq!(closed.iter().filter(|r| **r == CloseReason::Evicted).count(), 8);
}

#[test]
fn outbound_connections_count_and_start_established() {
    let eng = Engine::start(EngineConfig {
        mode: Mode::Interrupt,
        connections_max: 2,
        unestablished_max: 1,
        ..Default::default()
    })
    .unwrap();
    let server = TcpListener::bind(lo()).unwrap();
    let target = server.local_addr().unwrap();
    let factory = probe();
    let addr = eng.listen(lo(), factory.clone()).unwrap().local_addr();
    let make = |f: &Arc<OnRecv>| -> MakeHandler {
        let handler = OnRecv::clone(f);
        Box::new(move |_: &ConnInfo| Box::new(handler) as Box<dyn Handler>)
    };
    // One unestablished inbound and one outbound fill the limit.
    let inbound = connect(addr);
    wait_until("inbound registered", || eng.connection_counts().unestablished == 1);
    eng.connect(0, target, make(&factory)).unwrap();
    let (mut out1, _) = server.accept().unwrap();
    wait_until("2 open", || eng.connection_counts() == ConnectionCounts { open: 2, unestablished: 1, evicting: 0 });
    // A second outbound evicts the unestablished inbound one.
    eng.connect(0, target, make(&factory)).unwrap();
    let (mut out2, _) = server.accept().unwrap();
    let mut inbound = inbound;
    expect_eof(&mut inbound);
    wait_until("evicted", || eng.connection_counts() == ConnectionCounts { open: 2, unestablished: 0, evicting: 0 });
    // Now nothing is evictable.
    assert!(matches!(eng.connect(0, target, make(&factory)), Err(EngineError::ConnectionLimit)));
    for s in [&mut out1, &mut out2] {
        echo(s, b'o');
    }
    eng.shutdown(Duration::from_secs(2));
}

#[test]
fn limits_are_validated() {
    let base = EngineConfig::default();
    assert!(EngineConfig { connections_max: 0, ..base.clone() }.validate().is_err());
    assert!(EngineConfig { connections_max: CONNECTIONS_MAX + 1, ..base.clone() }.validate().is_err());
    assert!(EngineConfig { unestablished_max: 0, ..base.clone() }.validate().is_err());
    assert!(EngineConfig { connections_max: 10, unestablished_max: 11, ..base.clone() }.validate().is_err());
    assert!(EngineConfig { connections_max: 10, unestablished_max: 10, ..base }.validate().is_ok());
}
