//! Behavioural tests of the engine over loopback (never timing
//! assertions): storage, outbound connections, configuration, cross-thread
//! wake-ups, panics, zero-copy sends, direct receives and sinks.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use nvmf_engine::*;

// ------------------------------------------------------------------ storage

/// Protocol: client sends 1 byte command: 'W' write 4 KiB pattern at 0, 'R' read 4 KiB at 0
/// and send it back, 'F' fdatasync, 'S' fsync, 'P' read from a pipe (blocks until the test
/// writes to it). Each storage completion replies with 4-byte LE result (then data for R).
struct Store {
    file: RawFdT,
    pipe: RawFdT,
    buf: Box<[u8]>,
    log: Arc<Mutex<Vec<String>>>,
}
type RawFdT = std::os::fd::RawFd;

impl Handler for Store {
    fn on_recv(&mut self, io: &mut ConnIo<'_>) -> Flow {
        let cmds = io.rx().to_vec();
        io.consume(cmds.len());
        for c in cmds {
            let p = self.buf.as_mut_ptr();
            match c {
                b'W' => {
                    for (i, b) in self.buf.iter_mut().enumerate() {
                        *b = (i % 251) as u8;
                    }
                    unsafe { io.submit_write(self.file, 0, p, 4096, 1) };
                }
                b'R' => {
                    self.buf.fill(0);
                    unsafe { io.submit_read(self.file, 0, p, 4096, 2) };
                }
                b'F' => io.submit_fsync(self.file, true, 3),
                b'S' => io.submit_fsync(self.file, false, 4),
                b'P' => unsafe { io.submit_read(self.pipe, 0, p, 16, 5) },
                _ => return Flow::CloseNow,
            }
        }
        Flow::Continue
    }
    fn on_storage(&mut self, io: &mut ConnIo<'_>, token: u64, result: i32) -> Flow {
        self.log.lock().unwrap().push(format!("storage {token} {result}"));
        io.tx().extend_from_slice(&result.to_le_bytes());
        if token == 2 {
            io.tx().extend_from_slice(&self.buf);
        }
        Flow::Continue
    }
    fn on_tick(&mut self, _io: &mut ConnIo<'_>) -> Flow {
        Flow::Continue
    }
    fn on_closed(&mut self, reason: CloseReason) {
        self.log.lock().unwrap().push(format!("closed {reason:?}"));
    }
}

struct StoreFactory {
    file: RawFdT,
    pipe: RawFdT,
    log: Arc<Mutex<Vec<String>>>,
}
impl HandlerFactory for StoreFactory {
    fn create(&self, _info: &ConnInfo) -> Option<Box<dyn Handler>> {
        Some(Box::new(Store {
            file: self.file,
            pipe: self.pipe,
            buf: vec![0u8; 4096].into_boxed_slice(),
            log: self.log.clone(),
        }))
    }
}

fn temp_file() -> (std::fs::File, std::path::PathBuf) {
    let p =
        std::env::temp_dir().join(format!("nvmf-engine-test-{}-{:?}", std::process::id(), std::thread::current().id()));
    let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&p).unwrap();
    (f, p)
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// An engine in `mode` whose connections run [`Store`] on a fresh temp file
/// and a pipe.
struct StoreServer {
    eng: Engine,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    path: std::path::PathBuf,
    /// The write end of the pipe `P` reads from.
    pipe_w: OwnedFd,
    _file: std::fs::File,
    _pipe_r: OwnedFd,
}

fn store_server(mode: Mode) -> StoreServer {
    let (file, path) = temp_file();
    let (pipe_r, pipe_w) = pipe();
    let log = Arc::new(Mutex::new(Vec::new()));
    let eng = Engine::start(cfg(mode, vec![])).unwrap();
    let factory = StoreFactory { file: file.as_raw_fd(), pipe: pipe_r.as_raw_fd(), log: log.clone() };
    let addr = eng.listen(lo(), Arc::new(factory)).unwrap().local_addr();
    StoreServer { eng, addr, log, path, pipe_w, _file: file, _pipe_r: pipe_r }
}

/// Send a [`Store`] command and read the result of its storage op.
fn command(s: &mut TcpStream, c: u8) -> i32 {
    s.write_all(&[c]).unwrap();
    let mut r4 = [0u8; 4];
    s.read_exact(&mut r4).unwrap();
    i32::from_le_bytes(r4)
}

#[test]
fn storage_read_write_fsync() {
    for mode in [Mode::Poll, Mode::Interrupt] {
        let st = store_server(mode);
        let mut s = connect(st.addr);
        assert_eq!(command(&mut s, b'W'), 4096);
        assert_eq!(command(&mut s, b'F'), 0);
        assert_eq!(command(&mut s, b'S'), 0);
        assert_eq!(command(&mut s, b'R'), 4096);
        let mut data = vec![0u8; 4096];
        s.read_exact(&mut data).unwrap();
        assert!(data.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
        // file content really written
        let on_disk = std::fs::read(&st.path).unwrap();
        assert_eq!(on_disk, data);
        wait_until("storage stats", || st.eng.stats()[0].storage_ops == 4);
        st.eng.shutdown(Duration::from_secs(1));
        let _ = std::fs::remove_file(&st.path);
    }
}

#[test]
fn close_waits_for_inflight_storage() {
    for mode in [Mode::Poll, Mode::Interrupt] {
        let st = store_server(mode);
        let mut s = connect(st.addr);
        s.write_all(b"P").unwrap(); // read from the pipe: stays in flight
        wait_until("storage submitted", || st.eng.stats()[0].bytes_rx == 1);
        drop(s); // peer closes while the op is in flight
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            st.log.lock().unwrap().is_empty(),
            "handler closed with storage in flight: {:?}",
            st.log.lock().unwrap()
        );
        let mut w = std::fs::File::from(st.pipe_w);
        w.write_all(b"0123456789abcdef").unwrap();
        wait_until("closed", || st.log.lock().unwrap().iter().any(|l| l.starts_with("closed")));
        assert_eq!(st.log.lock().unwrap().as_slice(), &["closed PeerClosed".to_string()]);
        st.eng.shutdown(Duration::from_secs(1));
        let _ = std::fs::remove_file(&st.path);
    }
}

// ------------------------------------------------------------------ outbound

struct Client {
    got: mpsc::Sender<Vec<u8>>,
    said_hello: bool,
}
impl Handler for Client {
    fn on_recv(&mut self, io: &mut ConnIo<'_>) -> Flow {
        if io.rx().len() >= 5 {
            let _ = self.got.send(io.rx()[..5].to_vec());
            io.consume(5);
            return Flow::CloseAfterFlush;
        }
        Flow::Continue
    }
    fn on_storage(&mut self, _io: &mut ConnIo<'_>, _t: u64, _r: i32) -> Flow {
        Flow::Continue
    }
    fn on_tick(&mut self, io: &mut ConnIo<'_>) -> Flow {
        if !self.said_hello {
            self.said_hello = true;
            io.tx().extend_from_slice(b"hello");
        }
        Flow::Continue
    }
    fn on_closed(&mut self, _reason: CloseReason) {
        let _ = self.got.send(b"closed".to_vec());
    }
}

#[test]
fn outbound_connect() {
    let cores = cpus(2);
    let eng = Engine::start(cfg(Mode::Poll, cores.clone())).unwrap();
    let server = TcpListener::bind(lo()).unwrap();
    let addr = server.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    let last = eng.core_count() - 1;
    let (itx, irx) = mpsc::channel();
    eng.connect(
        last,
        addr,
        Box::new(move |info: &ConnInfo| {
            itx.send(info.clone()).unwrap();
            Box::new(Client { got: tx, said_hello: false }) as Box<dyn Handler>
        }),
    )
    .unwrap();
    let (mut s, _) = server.accept().unwrap();
    let info = irx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(info.core, last);
    assert_eq!(info.listener_id, None);
    assert_eq!(info.peer, addr);
    let mut b = [0u8; 5];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"hello");
    s.write_all(b"world").unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), b"world");
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), b"closed");
    expect_eof(&mut s);
    // errors are reported synchronously
    let dead = {
        let l = TcpListener::bind(lo()).unwrap();
        l.local_addr().unwrap()
    };
    assert!(eng.connect(0, dead, Box::new(|_: &ConnInfo| -> Box<dyn Handler> { unreachable!() })).is_err());
    assert!(matches!(
        eng.connect(99, addr, Box::new(|_: &ConnInfo| -> Box<dyn Handler> { unreachable!() })),
        Err(EngineError::NoSuchCore(99))
    ));
    eng.shutdown(Duration::from_secs(1));
}

// ------------------------------------------------------------------ config

#[test]
fn config_and_parsing() {
    assert_eq!(parse_core_list("0,2-3").unwrap(), vec![0, 2, 3]);
    assert_eq!(parse_core_list(" 5 ").unwrap(), vec![5]);
    for bad in ["", "a", "1,,2", "3-1", "1,1", "0-5000", "-1", "1-", "2048"] {
        assert!(parse_core_list(bad).is_err(), "{bad:?} should fail");
    }
    assert_eq!("poll".parse::<Mode>().unwrap(), Mode::Poll);
    assert_eq!("interrupt".parse::<Mode>().unwrap(), Mode::Interrupt);
    assert!("spin".parse::<Mode>().is_err());
    assert_eq!(Mode::Interrupt.to_string(), "interrupt");
    assert!(EngineConfig::default().validate().is_ok());
    assert!(Engine::start(EngineConfig { recv_buf_bytes: 10, ..Default::default() }).is_err());
    assert!(Engine::start(EngineConfig { cores: vec![1, 1], ..Default::default() }).is_err());
    assert!(
        Engine::start(EngineConfig { cores: vec![1023], ..Default::default() }).is_err(),
        "pinning to a missing CPU fails"
    );
    let c = cpus(1);
    pin_current_thread(c[0]).unwrap();
}

// ------------------------------------------------------------------ cross-thread wake

struct Wakee {
    give: Option<mpsc::Sender<ConnWaker>>,
    wakes: usize,
}
impl Handler for Wakee {
    fn on_recv(&mut self, _io: &mut ConnIo<'_>) -> Flow {
        Flow::Continue
    }
    fn on_storage(&mut self, _io: &mut ConnIo<'_>, _t: u64, _r: i32) -> Flow {
        Flow::Continue
    }
    fn on_tick(&mut self, io: &mut ConnIo<'_>) -> Flow {
        if let Some(g) = self.give.take() {
            g.send(io.waker()).unwrap();
        }
        Flow::Continue
    }
    fn on_wake(&mut self, io: &mut ConnIo<'_>) -> Flow {
        self.wakes += 1;
        io.tx().extend_from_slice(&[self.wakes as u8]);
        Flow::Continue
    }
    fn on_closed(&mut self, _reason: CloseReason) {}
}

#[test]
fn waker_from_another_thread() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Engine>();
    assert_send_sync::<ConnWaker>();
    for mode in [Mode::Poll, Mode::Interrupt] {
        let eng = Engine::start(cfg(mode, vec![])).unwrap();
        let server = TcpListener::bind(lo()).unwrap();
        let (tx, rx) = mpsc::channel();
        eng.connect(
            0,
            server.local_addr().unwrap(),
            Box::new(move |_: &ConnInfo| Box::new(Wakee { give: Some(tx), wakes: 0 }) as Box<dyn Handler>),
        )
        .unwrap();
        let (mut s, _) = server.accept().unwrap();
        let w = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        for i in 1..=3u8 {
            let w2 = w.clone();
            std::thread::spawn(move || assert!(w2.wake())).join().unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).unwrap();
            assert_eq!(b[0], i);
        }
        drop(s);
        eng.shutdown(Duration::from_secs(1));
        assert!(!w.wake(), "wake after shutdown reports failure");
    }
}

// ------------------------------------------------------------------ panics

/// Echoes, but panics on a receive starting with '!'.
fn echo_or_panic(io: &mut ConnIo<'_>) -> Flow {
    if io.rx()[0] == b'!' {
        panic!("handler bug (expected by the test)");
    }
    let n = io.rx().len();
    let d = io.rx().to_vec();
    io.tx().extend_from_slice(&d);
    io.consume(n);
    Flow::Continue
}

#[test]
fn handler_panic_closes_only_its_connection() {
    let eng = Engine::start(cfg(Mode::Interrupt, vec![])).unwrap();
    let l = eng.listen(lo(), Arc::new(OnRecv::new(echo_or_panic))).unwrap();
    let mut good = connect(l.local_addr());
    let mut bad = connect(l.local_addr());
    bad.write_all(b"!").unwrap();
    expect_eof(&mut bad);
    good.write_all(b"ok").unwrap();
    let mut r = [0u8; 2];
    good.read_exact(&mut r).unwrap();
    assert_eq!(&r, b"ok");
    eng.shutdown(Duration::from_secs(1));
}

// ------------------------------------------------------------------ zero-copy send

/// On 'b': "HEAD" + borrowed 1 MiB + "TAIL". On 's': 3000 x ("<" + borrowed 10 bytes + ">").
struct Borrower {
    big: Box<[u8]>,
    small: Box<[u8]>,
    sent: Arc<Mutex<Vec<u64>>>,
}
impl Handler for Borrower {
    fn on_recv(&mut self, io: &mut ConnIo<'_>) -> Flow {
        let cmds = io.rx().to_vec();
        io.consume(cmds.len());
        for c in cmds {
            match c {
                b'b' => {
                    io.tx().extend_from_slice(b"HEAD");
                    unsafe { io.send_borrowed(self.big.as_ptr(), self.big.len(), 7) };
                    io.tx().extend_from_slice(b"TAIL");
                }
                b's' => {
                    for i in 0..3000u64 {
                        io.tx().push(b'<');
                        unsafe { io.send_borrowed(self.small.as_ptr(), self.small.len(), 1000 + i) };
                        io.tx().push(b'>');
                    }
                }
                _ => return Flow::CloseNow,
            }
        }
        Flow::Continue
    }
    fn on_sent(&mut self, _io: &mut ConnIo<'_>, token: u64) -> Flow {
        self.sent.lock().unwrap().push(token);
        Flow::Continue
    }
    fn on_storage(&mut self, _io: &mut ConnIo<'_>, _t: u64, _r: i32) -> Flow {
        Flow::Continue
    }
    fn on_tick(&mut self, _io: &mut ConnIo<'_>) -> Flow {
        Flow::Continue
    }
    fn on_closed(&mut self, _reason: CloseReason) {}
}
struct BorrowFactory(Arc<Mutex<Vec<u64>>>);
impl HandlerFactory for BorrowFactory {
    fn create(&self, _info: &ConnInfo) -> Option<Box<dyn Handler>> {
        let big: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 253) as u8).collect();
        Some(Box::new(Borrower {
            big: big.into_boxed_slice(),
            small: b"0123456789".to_vec().into_boxed_slice(),
            sent: self.0.clone(),
        }))
    }
}

#[test]
fn send_borrowed_zero_copy_segments() {
    for mode in [Mode::Poll, Mode::Interrupt] {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let eng = Engine::start(cfg(mode, vec![])).unwrap();
        let l = eng.listen(lo(), Arc::new(BorrowFactory(sent.clone()))).unwrap();
        let mut s = connect(l.local_addr());
        s.write_all(b"b").unwrap();
        let mut got = vec![0u8; 8 + (1 << 20)];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got[..4], b"HEAD");
        assert_eq!(&got[got.len() - 4..], b"TAIL");
        assert!(got[4..got.len() - 4].iter().enumerate().all(|(i, b)| *b == (i % 253) as u8));
        wait_until("on_sent(7)", || sent.lock().unwrap().as_slice() == [7]);
        s.write_all(b"s").unwrap();
        let mut got = vec![0u8; 3000 * 12];
        s.read_exact(&mut got).unwrap();
        assert!(got.chunks(12).all(|c| c == b"<0123456789>"));
        wait_until("all small on_sent", || sent.lock().unwrap().len() == 3001);
        let v = sent.lock().unwrap().clone();
        assert!(v[1..].iter().enumerate().all(|(i, t)| *t == 1000 + i as u64), "on_sent in order");
        eng.shutdown(Duration::from_secs(1));
    }
}

// ------------------------------------------------------------------ poll-mode direct receive

#[test]
fn poll_direct_recv_is_used_and_falls_back_when_idle() {
    let (eng, ev, addr) = echo_server(EngineConfig { poll_direct_recv_conns_max: 2, ..cfg(Mode::Poll, vec![]) });
    let mut a = connect(addr);
    let mut b = connect(addr);
    // Both busy, within the bound: received directly after their first (ring) receive.
    for round in 0..200u32 {
        echo_once(&mut a, 1 + (round as usize * 97) % 9000, round as u8);
        echo_once(&mut b, 1 + (round as usize * 61) % 9000, !round as u8);
    }
    // Stats are published every tick.
    wait_until("direct and ring receives in the stats", || {
        let st = &eng.stats()[0];
        st.direct_recv_ops > 0 && st.recv_ops > st.direct_recv_ops
    });
    // Idle long enough to leave the direct set (4096 empty polls), then traffic again.
    std::thread::sleep(Duration::from_millis(300));
    for round in 0..50u32 {
        echo_once(&mut a, 300_000 + round as usize, round as u8);
        echo_once(&mut b, 4120, round as u8);
    }
    drop(a);
    drop(b);
    wait_until("both closed", || ev.closed.lock().unwrap().len() == 2);
    assert!(ev.closed.lock().unwrap().iter().all(|r| *r == CloseReason::PeerClosed));
    wait_until("no connections in the stats", || eng.stats()[0].connections == 0);
    eng.shutdown(Duration::from_secs(2));
}

#[test]
fn poll_without_direct_recv_still_echoes() {
    let (eng, ev, addr) = echo_server(EngineConfig { poll_direct_recv_conns_max: 0, ..cfg(Mode::Poll, vec![]) });
    let mut s = connect(addr);
    for size in [1usize, 4120, 300_000] {
        echo_once(&mut s, size, 7);
    }
    drop(s);
    wait_until("closed", || ev.closed.lock().unwrap().len() == 1);
    wait_until("stats published", || eng.stats()[0].recv_ops > 0);
    assert_eq!(eng.stats()[0].direct_recv_ops, 0);
    eng.shutdown(Duration::from_secs(2));
}

#[test]
fn direct_recv_conns_max_is_bounded() {
    let bad = EngineConfig { poll_direct_recv_conns_max: DIRECT_RECV_CONNS_MAX + 1, ..Default::default() };
    assert!(bad.validate().is_err());
    let ok = EngineConfig { poll_direct_recv_conns_max: DIRECT_RECV_CONNS_MAX, ..Default::default() };
    assert!(ok.validate().is_ok());
}

#[test]
fn poll_direct_recv_stops_with_more_busy_connections_than_the_bound() {
    let (eng, ev, addr) = echo_server(EngineConfig { poll_direct_recv_conns_max: 1, ..cfg(Mode::Poll, vec![]) });
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Four connections echoing continuously: more busy than the bound of 1.
    let workers: Vec<_> = (0..4u8)
        .map(|k| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut s = connect(addr);
                let mut n = 0u32;
                while !stop.load(Ordering::SeqCst) {
                    echo_once(&mut s, 64 + (n as usize % 512), k ^ n as u8);
                    n += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(150));
    let s0 = eng.stats()[0].clone();
    std::thread::sleep(Duration::from_millis(400));
    let s1 = eng.stats()[0].clone();
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }
    let (direct, all) = (s1.direct_recv_ops - s0.direct_recv_ops, s1.recv_ops - s0.recv_ops);
    assert!(all > 0, "traffic was counted: {s0:?} {s1:?}");
    // Without the gate one of the four would stay direct (~1/4 of receives).
    // Workers stalled for a whole tick can let one go direct for a while, so
    // the bound is loose; most receives must go through the ring.
    assert!(direct * 8 < all, "busy core kept direct receives: {direct} of {all}");
    wait_until("all closed", || ev.closed.lock().unwrap().len() == 4);
    eng.shutdown(Duration::from_secs(2));
}

// ------------------------------------------------------------------ poll-mode receive into a sink

#[test]
fn poll_direct_recv_fills_handler_sinks_in_stream_order() {
    let eng = Engine::start(EngineConfig { poll_direct_recv_conns_max: 2, ..cfg(Mode::Poll, vec![]) }).unwrap();
    let addr = eng.listen(lo(), Arc::new(SinkSummerFactory { armed: false })).unwrap().local_addr();
    let mut s = connect(addr);
    send_messages_in_pieces(&mut s, 300);
    wait_until("sink receives in the stats", || eng.stats()[0].sink_recv_ops > 0);
    eng.shutdown(Duration::from_secs(2));
}
