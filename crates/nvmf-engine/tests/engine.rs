//! Behavioural tests of the engine over loopback (never timing
//! assertions): echo, framing, overflow, backpressure, listeners, shutdown,
//! handler-initiated close, ticks. More in `engine_io.rs`.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use nvmf_engine::*;

// ------------------------------------------------------------------ echo

fn echo_roundtrips(mode: Mode) {
    let ev = Arc::new(Events::default());
    let eng = Engine::start(cfg(mode, vec![])).unwrap();
    let l = eng.listen(lo(), Arc::new(EchoFactory(ev.clone()))).unwrap();
    let mut s = connect(l.local_addr());
    for size in [1usize, 72, 4096, 4120, 65536, 300_000, 1 << 20] {
        echo_once(&mut s, size, size as u8);
    }
    let st = eng.stats();
    assert_eq!(st.len(), 1);
    drop(s);
    wait_until("on_closed", || ev.closed.lock().unwrap().len() == 1);
    assert_eq!(ev.closed.lock().unwrap()[0], CloseReason::PeerClosed);
    eng.shutdown(Duration::from_secs(2));
}

#[test]
fn echo_poll() {
    echo_roundtrips(Mode::Poll);
}

#[test]
fn echo_interrupt() {
    echo_roundtrips(Mode::Interrupt);
}

#[test]
fn stats_count_bytes_and_connections() {
    let ev = Arc::new(Events::default());
    let eng = Engine::start(cfg(Mode::Interrupt, vec![])).unwrap();
    let l = eng.listen(lo(), Arc::new(EchoFactory(ev.clone()))).unwrap();
    let mut s = connect(l.local_addr());
    s.write_all(&[9u8; 1000]).unwrap();
    let mut b = [0u8; 1000];
    s.read_exact(&mut b).unwrap();
    wait_until("stats", || {
        let st = &eng.stats()[0];
        st.bytes_rx == 1000 && st.bytes_tx == 1000 && st.connections == 1 && st.connections_total == 1
    });
    eng.shutdown(Duration::from_secs(2));
}

#[test]
fn many_connections_two_cores() {
    let cores = cpus(2);
    // A missing prerequisite fails loudly rather than passing silently.
    assert_eq!(cores.len(), 2, "this test needs 2 CPUs to run on, found {cores:?}");
    for mode in [Mode::Poll, Mode::Interrupt] {
        let ev = Arc::new(Events::default());
        let eng = Engine::start(cfg(mode, cores.clone())).unwrap();
        assert_eq!(eng.core_count(), 2);
        let l = eng.listen(lo(), Arc::new(EchoFactory(ev.clone()))).unwrap();
        let mut conns: Vec<TcpStream> = (0..64).map(|_| connect(l.local_addr())).collect();
        for round in 0..20u8 {
            for (i, s) in conns.iter_mut().enumerate() {
                let msg = vec![round ^ i as u8; 100 + i * 10];
                s.write_all(&msg).unwrap();
            }
            for (i, s) in conns.iter_mut().enumerate() {
                let mut got = vec![0u8; 100 + i * 10];
                s.read_exact(&mut got).unwrap();
                assert!(got.iter().all(|b| *b == round ^ i as u8));
            }
        }
        assert_eq!(ev.created.load(Ordering::SeqCst), 64);
        let on: Vec<usize> = ev.cores.lock().unwrap().clone();
        assert!(on.contains(&0) && on.contains(&1), "connections spread over both cores: {on:?}");
        let per: Vec<u64> = eng.stats().iter().map(|s| s.connections).collect();
        assert!(per.iter().all(|c| (24..=40).contains(c)), "least-loaded placement is balanced: {per:?}");
        let total: u64 = eng.stats().iter().map(|s| s.connections).sum();
        assert_eq!(total, 64);
        drop(conns);
        wait_until("all closed", || ev.closed.lock().unwrap().len() == 64);
        eng.shutdown(Duration::from_secs(2));
    }
}

// ------------------------------------------------------------------ framing

/// Length-prefixed frames: u32 LE length + payload; replies with payload reversed.
struct Framed {
    frames: Arc<AtomicUsize>,
}
impl Handler for Framed {
    fn on_recv(&mut self, io: &mut ConnIo<'_>) -> Flow {
        loop {
            let rx = io.rx();
            let Some(len) = message_len(rx) else {
                return Flow::Continue;
            };
            if len > 100_000 {
                return Flow::CloseNow;
            }
            if rx.len() < 4 + len {
                return Flow::Continue;
            }
            let mut payload = rx[4..4 + len].to_vec();
            payload.reverse();
            io.consume(4 + len);
            io.tx().extend_from_slice(&(len as u32).to_le_bytes());
            io.tx().extend_from_slice(&payload);
            self.frames.fetch_add(1, Ordering::SeqCst);
        }
    }
    fn on_storage(&mut self, _io: &mut ConnIo<'_>, _t: u64, _r: i32) -> Flow {
        Flow::Continue
    }
    fn on_tick(&mut self, _io: &mut ConnIo<'_>) -> Flow {
        Flow::Continue
    }
    fn on_closed(&mut self, _reason: CloseReason) {}
}
struct FramedFactory(Arc<AtomicUsize>);
impl HandlerFactory for FramedFactory {
    fn create(&self, _info: &ConnInfo) -> Option<Box<dyn Handler>> {
        Some(Box::new(Framed { frames: self.0.clone() }))
    }
}

#[test]
fn partial_pdus_are_reassembled() {
    for mode in [Mode::Poll, Mode::Interrupt] {
        let frames = Arc::new(AtomicUsize::new(0));
        // small rx buffer so compaction and wrap-around happen
        let eng = Engine::start(EngineConfig { recv_buf_bytes: 128 * 1024, ..cfg(mode, vec![]) }).unwrap();
        let l = eng.listen(lo(), Arc::new(FramedFactory(frames.clone()))).unwrap();
        let mut s = connect(l.local_addr());
        let mut stream = Vec::new();
        let mut expect = Vec::new();
        let mut seed = 12345u64;
        let mut rnd = |m: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % m
        };
        for i in 0..300 {
            let len = if i % 50 == 0 { 100_000 } else { rnd(5000) as usize };
            let payload: Vec<u8> = (0..len).map(|j| (j ^ i) as u8).collect();
            stream.extend_from_slice(&(len as u32).to_le_bytes());
            stream.extend_from_slice(&payload);
            let mut r = payload.clone();
            r.reverse();
            expect.extend_from_slice(&(len as u32).to_le_bytes());
            expect.extend_from_slice(&r);
        }
        let mut w = s.try_clone().unwrap();
        let t = std::thread::spawn(move || {
            // dribble: random chunk sizes, occasional pauses so PDUs split across recvs
            let mut off = 0;
            let mut k = 0u64;
            while off < stream.len() {
                k = k.wrapping_mul(31).wrapping_add(17);
                let n = (1 + (k % 9000) as usize).min(stream.len() - off);
                w.write_all(&stream[off..off + n]).unwrap();
                off += n;
                if k % 7 == 3 {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        });
        let mut got = vec![0u8; expect.len()];
        s.read_exact(&mut got).unwrap();
        t.join().unwrap();
        assert!(got == expect, "framed replies match");
        assert_eq!(frames.load(Ordering::SeqCst), 300);
        eng.shutdown(Duration::from_secs(2));
    }
}

// ------------------------------------------------------------------ rx overflow

struct Hoarder(mpsc::Sender<CloseReason>);
impl Handler for Hoarder {
    fn on_recv(&mut self, _io: &mut ConnIo<'_>) -> Flow {
        Flow::Continue // never consumes
    }
    fn on_storage(&mut self, _io: &mut ConnIo<'_>, _t: u64, _r: i32) -> Flow {
        Flow::Continue
    }
    fn on_tick(&mut self, _io: &mut ConnIo<'_>) -> Flow {
        Flow::Continue
    }
    fn on_closed(&mut self, reason: CloseReason) {
        let _ = self.0.send(reason);
    }
}
struct HoarderFactory(Mutex<mpsc::Sender<CloseReason>>);
impl HandlerFactory for HoarderFactory {
    fn create(&self, _info: &ConnInfo) -> Option<Box<dyn Handler>> {
        Some(Box::new(Hoarder(self.0.lock().unwrap().clone())))
    }
}

#[test]
fn full_rx_buffer_without_progress_closes() {
    for mode in [Mode::Poll, Mode::Interrupt] {
        // Large buffers disabled (not larger than the small one), or enabled:
        // then a burst moves the connection to a large buffer, which fills too.
        for (large, write) in [(8192, 20_000), (64 * 1024, 200_000)] {
            let (tx, rx) = mpsc::channel();
            let eng =
                Engine::start(EngineConfig { recv_buf_bytes: 8192, recv_buf_large_bytes: large, ..cfg(mode, vec![]) })
                    .unwrap();
            let l = eng.listen(lo(), Arc::new(HoarderFactory(Mutex::new(tx)))).unwrap();
            let mut s = connect(l.local_addr());
            let _ = s.write_all(&vec![1u8; write]);
            assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), CloseReason::RxOverflow);
            expect_eof(&mut s);
            wait_until("buffers returned", || {
                let st = &eng.stats()[0];
                st.connections == 0 && st.rx_large_in_use == 0
            });
            eng.shutdown(Duration::from_secs(2));
        }
    }
}

// ------------------------------------------------------------------ backpressure

/// Each received byte produces 64 bytes of output.
fn amplify(io: &mut ConnIo<'_>) -> Flow {
    let n = io.rx().len();
    for i in 0..n {
        let b = io.rx()[i];
        let l = io.tx().len();
        io.tx().resize(l + 64, b);
    }
    io.consume(n);
    Flow::Continue
}

#[test]
fn backpressure_pauses_receive_and_recovers() {
    for mode in [Mode::Poll, Mode::Interrupt] {
        let eng = Engine::start(EngineConfig { send_buf_max_bytes: 64 * 1024, ..cfg(mode, vec![]) }).unwrap();
        let l = eng.listen(lo(), Arc::new(OnRecv::new(amplify))).unwrap();
        let mut s = connect(l.local_addr());
        for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
            let v: libc::c_int = 16 * 1024;
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    &v as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as u32,
                )
            };
        }
        // Write without reading until the socket would block: the engine must stop
        // reading once its tx queue exceeds the bound, so this terminates.
        s.set_nonblocking(true).unwrap();
        let chunk = [7u8; 1024];
        let mut sent = 0usize;
        let mut stalls = 0;
        while stalls < 20 {
            match s.write(&chunk) {
                Ok(n) => {
                    sent += n;
                    stalls = 0;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    stalls += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("{e}"),
            }
            assert!(sent < 512 * 1024 * 1024, "engine never applied backpressure");
        }
        // The engine has read only a bounded amount (tx queue bound + socket buffers).
        let rx_bytes = eng.stats()[0].bytes_rx as usize;
        assert!(rx_bytes < sent, "engine read {rx_bytes} of {sent} while tx was stuck");
        // Now drain everything; all output must arrive.
        s.set_nonblocking(false).unwrap();
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 20];
        while got < sent * 64 {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0);
            assert!(buf[..n].iter().all(|b| *b == 7));
            got += n;
        }
        assert_eq!(got, sent * 64);
        eng.shutdown(Duration::from_secs(2));
    }
}

// ------------------------------------------------------------------ listeners & shutdown

#[test]
fn remove_listener_closes_its_connections() {
    let ev = Arc::new(Events::default());
    let ev2 = Arc::new(Events::default());
    let eng = Engine::start(cfg(Mode::Interrupt, vec![])).unwrap();
    let l1 = eng.listen(lo(), Arc::new(EchoFactory(ev.clone()))).unwrap();
    let l2 = eng.listen(lo(), Arc::new(EchoFactory(ev2.clone()))).unwrap();
    assert_ne!(l1.id(), l2.id());
    let mut a = connect(l1.local_addr());
    let mut b = connect(l2.local_addr());
    for s in [&mut a, &mut b] {
        s.write_all(b"ping").unwrap();
        let mut r = [0u8; 4];
        s.read_exact(&mut r).unwrap();
        assert_eq!(&r, b"ping");
    }
    eng.remove_listener(l1, true).unwrap();
    expect_eof(&mut a);
    wait_until("on_closed", || ev.closed.lock().unwrap().len() == 1);
    assert_eq!(ev.closed.lock().unwrap()[0], CloseReason::ListenerRemoved);
    // new connections to l1 are refused
    assert!(TcpStream::connect(l1.local_addr()).is_err());
    // l2 unaffected
    b.write_all(b"pong").unwrap();
    let mut r = [0u8; 4];
    b.read_exact(&mut r).unwrap();
    assert_eq!(&r, b"pong");
    assert!(matches!(eng.remove_listener(l1, true), Err(EngineError::NoSuchListener(_))));
    // removing without closing keeps connections
    eng.remove_listener(l2, false).unwrap();
    b.write_all(b"more").unwrap();
    b.read_exact(&mut r).unwrap();
    assert_eq!(&r, b"more");
    eng.shutdown(Duration::from_secs(2));
    expect_eof(&mut b);
    assert_eq!(ev2.closed.lock().unwrap().as_slice(), &[CloseReason::Shutdown]);
}

#[test]
fn graceful_shutdown_calls_on_shutdown_and_closes() {
    for mode in [Mode::Poll, Mode::Interrupt] {
        let ev = Arc::new(Events::default());
        let eng = Engine::start(cfg(mode, vec![])).unwrap();
        let l = eng.listen(lo(), Arc::new(EchoFactory(ev.clone()))).unwrap();
        let mut conns: Vec<TcpStream> = (0..5).map(|_| connect(l.local_addr())).collect();
        for s in &mut conns {
            s.write_all(b"x").unwrap();
            let mut r = [0u8; 1];
            s.read_exact(&mut r).unwrap();
        }
        let t = Instant::now();
        eng.shutdown(Duration::from_secs(5));
        assert!(t.elapsed() < Duration::from_secs(5), "graceful shutdown did not need the timeout");
        assert_eq!(ev.shutdowns.load(Ordering::SeqCst), 5);
        assert_eq!(ev.closed.lock().unwrap().len(), 5);
        assert!(ev.closed.lock().unwrap().iter().all(|r| *r == CloseReason::Shutdown));
        for s in &mut conns {
            expect_eof(s);
        }
    }
}

/// A handler that never finishes: shutdown must still return after the timeout.
struct Stubborn(Arc<Events>);
impl Handler for Stubborn {
    fn on_recv(&mut self, io: &mut ConnIo<'_>) -> Flow {
        let n = io.rx().len();
        io.consume(n);
        Flow::Continue
    }
    fn on_storage(&mut self, _io: &mut ConnIo<'_>, _t: u64, _r: i32) -> Flow {
        Flow::Continue
    }
    fn on_tick(&mut self, _io: &mut ConnIo<'_>) -> Flow {
        Flow::Continue
    }
    fn on_closed(&mut self, reason: CloseReason) {
        self.0.closed.lock().unwrap().push(reason);
    }
    fn on_shutdown(&mut self, _io: &mut ConnIo<'_>) -> Flow {
        Flow::Continue
    }
}
struct StubbornFactory(Arc<Events>);
impl HandlerFactory for StubbornFactory {
    fn create(&self, _info: &ConnInfo) -> Option<Box<dyn Handler>> {
        Some(Box::new(Stubborn(self.0.clone())))
    }
}

#[test]
fn shutdown_timeout_forces_close() {
    let ev = Arc::new(Events::default());
    let eng = Engine::start(cfg(Mode::Poll, vec![])).unwrap();
    let l = eng.listen(lo(), Arc::new(StubbornFactory(ev.clone()))).unwrap();
    let mut s = connect(l.local_addr());
    wait_until("registered", || eng.stats()[0].connections == 1);
    eng.shutdown(Duration::from_millis(200));
    assert_eq!(ev.closed.lock().unwrap().as_slice(), &[CloseReason::Shutdown]);
    expect_eof(&mut s);
}

#[test]
fn factory_refusal_closes_socket() {
    struct No;
    impl HandlerFactory for No {
        fn create(&self, _info: &ConnInfo) -> Option<Box<dyn Handler>> {
            None
        }
    }
    let eng = Engine::start(cfg(Mode::Interrupt, vec![])).unwrap();
    let l = eng.listen(lo(), Arc::new(No)).unwrap();
    let mut s = connect(l.local_addr());
    expect_eof(&mut s);
    eng.shutdown(Duration::from_secs(1));
}

#[test]
fn connections_max_refuses_extra_when_nothing_is_evictable() {
    let ev = Arc::new(Events::default());
    // Both places are held by established connections: nothing to evict,
    // so the third socket is refused (closed at once, no handler made).
    let eng = Engine::start(EngineConfig { connections_max: 2, unestablished_max: 2, ..cfg(Mode::Interrupt, vec![]) })
        .unwrap();
    let l = eng.listen(lo(), Arc::new(EstablishedEchoFactory(ev.clone()))).unwrap();
    let mut a = connect(l.local_addr());
    let _b = connect(l.local_addr());
    wait_until("2 established", || {
        eng.connection_counts() == ConnectionCounts { open: 2, unestablished: 0, evicting: 0 }
    });
    let mut c = connect(l.local_addr());
    expect_eof(&mut c);
    assert_eq!(ev.created.load(Ordering::SeqCst), 2);
    wait_until("refusal counted", || eng.stats()[0].refused_limit == 1);
    assert_eq!(eng.stats()[0].evicted_silent + eng.stats()[0].evicted_unestablished, 0);
    // The established ones are unaffected.
    echo_once(&mut a, 100, 1);
    eng.shutdown(Duration::from_secs(1));
}

// ------------------------------------------------------------------ handler-initiated close

/// Replies "bye" and asks for CloseAfterFlush on the first byte 'q'; CloseNow on 'k'.
struct Quitter(Arc<Events>);
impl Handler for Quitter {
    fn on_recv(&mut self, io: &mut ConnIo<'_>) -> Flow {
        let first = io.rx()[0];
        let n = io.rx().len();
        io.consume(n);
        match first {
            b'q' => {
                io.tx().extend_from_slice(&vec![b'b'; 200_000]);
                Flow::CloseAfterFlush
            }
            b'k' => {
                io.tx().extend_from_slice(b"never sent");
                Flow::CloseNow
            }
            _ => Flow::Continue,
        }
    }
    fn on_storage(&mut self, _io: &mut ConnIo<'_>, _t: u64, _r: i32) -> Flow {
        Flow::Continue
    }
    fn on_tick(&mut self, _io: &mut ConnIo<'_>) -> Flow {
        Flow::Continue
    }
    fn on_closed(&mut self, reason: CloseReason) {
        self.0.closed.lock().unwrap().push(reason);
    }
}
struct QuitFactory(Arc<Events>);
impl HandlerFactory for QuitFactory {
    fn create(&self, _info: &ConnInfo) -> Option<Box<dyn Handler>> {
        Some(Box::new(Quitter(self.0.clone())))
    }
}

#[test]
fn close_after_flush_delivers_everything_then_closes() {
    for mode in [Mode::Poll, Mode::Interrupt] {
        let ev = Arc::new(Events::default());
        let eng = Engine::start(cfg(mode, vec![])).unwrap();
        let l = eng.listen(lo(), Arc::new(QuitFactory(ev.clone()))).unwrap();
        let mut s = connect(l.local_addr());
        s.write_all(b"q").unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        assert_eq!(all.len(), 200_000);
        let mut s2 = connect(l.local_addr());
        s2.write_all(b"k").unwrap();
        let mut all = Vec::new();
        let _ = s2.read_to_end(&mut all);
        assert!(all.is_empty());
        wait_until("closed", || ev.closed.lock().unwrap().len() == 2);
        assert!(ev.closed.lock().unwrap().iter().all(|r| *r == CloseReason::Handler));
        eng.shutdown(Duration::from_secs(1));
    }
}

// ------------------------------------------------------------------ ticks

struct Ticker(Arc<Mutex<Vec<u64>>>);
impl Handler for Ticker {
    fn on_recv(&mut self, _io: &mut ConnIo<'_>) -> Flow {
        Flow::Continue
    }
    fn on_storage(&mut self, _io: &mut ConnIo<'_>, _t: u64, _r: i32) -> Flow {
        Flow::Continue
    }
    fn on_tick(&mut self, io: &mut ConnIo<'_>) -> Flow {
        self.0.lock().unwrap().push(io.now_ms());
        Flow::Continue
    }
    fn on_closed(&mut self, _reason: CloseReason) {}
}
struct TickFactory(Arc<Mutex<Vec<u64>>>);
impl HandlerFactory for TickFactory {
    fn create(&self, _info: &ConnInfo) -> Option<Box<dyn Handler>> {
        Some(Box::new(Ticker(self.0.clone())))
    }
}

#[test]
fn ticks_are_periodic_and_monotonic() {
    for mode in [Mode::Poll, Mode::Interrupt] {
        let ticks = Arc::new(Mutex::new(Vec::new()));
        let eng = Engine::start(EngineConfig { tick_ms: 5, ..cfg(mode, vec![]) }).unwrap();
        let l = eng.listen(lo(), Arc::new(TickFactory(ticks.clone()))).unwrap();
        let _s = connect(l.local_addr());
        wait_until("ticks", || ticks.lock().unwrap().len() >= 10);
        let t = ticks.lock().unwrap().clone();
        assert!(t.windows(2).all(|w| w[0] <= w[1]));
        eng.shutdown(Duration::from_secs(1));
    }
}
