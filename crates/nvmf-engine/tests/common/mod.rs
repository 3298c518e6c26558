//! Helpers shared by the engine's integration tests (loopback sockets, no
//! timing assertions).
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nvmf_engine::*;

pub fn lo() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Up to `n` CPUs this process may run on.
pub fn cpus(n: usize) -> Vec<usize> {
    let mut out = Vec::new();
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            for c in 0..1024 {
                if libc::CPU_ISSET(c, &set) && out.len() < n {
                    out.push(c);
                }
            }
        }
    }
    out
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

pub fn wait_until(what: &str, f: impl FnMut() -> bool) {
    wait_until_or(what, f, String::new)
}

/// [`wait_until`], saying what `state` returns if it times out.
pub fn wait_until_or(what: &str, mut f: impl FnMut() -> bool, state: impl Fn() -> String) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(10), "timed out waiting for {what}: {}", state());
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// [`wait_until`] core 0's stats satisfy `f`, saying what they are if it times out.
pub fn wait_for_stats(eng: &Engine, what: &str, f: impl Fn(&CoreStats) -> bool) {
    wait_until_or(what, || f(&eng.stats()[0]), || format!("{:?}", eng.stats()[0]))
}

/// Expect EOF (or reset) from the peer within 10 s.
pub fn expect_eof(s: &mut TcpStream) {
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
            Err(e) => panic!("expected EOF, got {e}"),
        }
    }
}

/// Whether the peer has closed `s` (EOF or reset) without blocking.
pub fn is_closed(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 64];
    let r = match (&*s).read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(_) => true,
    };
    s.set_nonblocking(false).unwrap();
    r
}

/// A length-prefixed message: 4-byte LE length, then the payload.
pub fn message(len: usize, seed: u8) -> Vec<u8> {
    let mut m = (len as u32).to_le_bytes().to_vec();
    m.extend((0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed));
    m
}

/// The payload length in the header of a [`message`], once `rx` holds the header.
pub fn message_len(rx: &[u8]) -> Option<usize> {
    Some(u32::from_le_bytes(rx.get(..4)?.try_into().unwrap()) as usize)
}

/// The answer to a [`message`]: its length and the wrapping sum of its payload.
pub fn answer(msg: &[u8]) -> [u8; 8] {
    let sum = msg[4..].iter().fold(0u32, |a, b| a.wrapping_add(*b as u32));
    let mut a = [0u8; 8];
    a[..4].copy_from_slice(&msg[..4]);
    a[4..].copy_from_slice(&sum.to_le_bytes());
    a
}

/// Write `bytes` on a clone of `s` from another thread.
pub fn write_in_background(s: &TcpStream, bytes: Vec<u8>) -> std::thread::JoinHandle<()> {
    let mut w = s.try_clone().unwrap();
    std::thread::spawn(move || {
        let _ = w.write_all(&bytes);
    })
}

/// Send `count` [`message`]s of sizes from empty to 256 KiB, in uneven pieces so
/// messages straddle receives, and check the [`answer`]s come back in order.
pub fn send_messages_in_pieces(s: &mut TcpStream, count: usize) {
    let mut wire = Vec::new();
    let mut want = Vec::new();
    for i in 0..count {
        let m = message([0, 1, 3, 1023, 1024, 4096, 70_000, 262_144][i % 8] + i, i as u8);
        want.extend_from_slice(&answer(&m));
        wire.extend_from_slice(&m);
    }
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        for piece in wire.chunks(77_777) {
            w.write_all(piece).unwrap();
        }
    });
    let mut got = vec![0u8; want.len()];
    s.read_exact(&mut got).unwrap();
    writer.join().unwrap();
    assert!(got == want, "answers differ");
}

/// Resident set size of this process in KiB (`VmRSS`).
pub fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// A config with the given mode and cores, defaults otherwise.
pub fn cfg(mode: Mode, cores: Vec<usize>) -> EngineConfig {
    EngineConfig { cores, mode, ..Default::default() }
}

/// An engine started with `config`, listening with an [`EchoFactory`].
pub fn echo_server(config: EngineConfig) -> (Engine, Arc<Events>, SocketAddr) {
    let ev = Arc::new(Events::default());
    let eng = Engine::start(config).unwrap();
    let addr = eng.listen(lo(), Arc::new(EchoFactory(ev.clone()))).unwrap().local_addr();
    (eng, ev, addr)
}

/// Echo `size` bytes over `s` and check them.
pub fn echo_once(s: &mut TcpStream, size: usize, seed: u8) {
    let msg: Vec<u8> = (0..size).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
    let mut w = s.try_clone().unwrap();
    let m2 = msg.clone();
    let t = std::thread::spawn(move || w.write_all(&m2).unwrap());
    let mut got = vec![0u8; size];
    s.read_exact(&mut got).unwrap();
    t.join().unwrap();
    assert_eq!(got, msg, "echo of {size} bytes");
}

// ------------------------------------------------------------------ echo handlers

#[derive(Default)]
pub struct Events {
    pub closed: Mutex<Vec<CloseReason>>,
    pub created: AtomicUsize,
    pub shutdowns: AtomicUsize,
    pub cores: Mutex<Vec<usize>>,
}

pub struct Echo {
    pub ev: Arc<Events>,
    /// Leave probation at once (ConnIo::set_established in the first on_tick).
    pub establish: bool,
}
impl Handler for Echo {
    fn on_recv(&mut self, io: &mut ConnIo<'_>) -> Flow {
        let (rx, tx) = io.rx_tx();
        let n = rx.len();
        tx.extend_from_slice(rx);
        io.consume(n);
        Flow::Continue
    }
    fn on_storage(&mut self, _io: &mut ConnIo<'_>, _t: u64, _r: i32) -> Flow {
        Flow::Continue
    }
    fn on_tick(&mut self, io: &mut ConnIo<'_>) -> Flow {
        if self.establish {
            io.set_established();
        }
        Flow::Continue
    }
    fn on_closed(&mut self, reason: CloseReason) {
        self.ev.closed.lock().unwrap().push(reason);
    }
    fn on_shutdown(&mut self, _io: &mut ConnIo<'_>) -> Flow {
        self.ev.shutdowns.fetch_add(1, Ordering::SeqCst);
        Flow::CloseAfterFlush
    }
}

impl Echo {
    /// A handler for the connection `info`, counted in `ev`.
    fn create(ev: &Arc<Events>, info: &ConnInfo, establish: bool) -> Option<Box<dyn Handler>> {
        ev.created.fetch_add(1, Ordering::SeqCst);
        ev.cores.lock().unwrap().push(info.core);
        Some(Box::new(Echo { ev: ev.clone(), establish }))
    }
}

pub struct EchoFactory(pub Arc<Events>);
impl HandlerFactory for EchoFactory {
    fn create(&self, info: &ConnInfo) -> Option<Box<dyn Handler>> {
        Echo::create(&self.0, info, false)
    }
}

/// Echo connections that are established as soon as they are registered.
pub struct EstablishedEchoFactory(pub Arc<Events>);
impl HandlerFactory for EstablishedEchoFactory {
    fn create(&self, info: &ConnInfo) -> Option<Box<dyn Handler>> {
        Echo::create(&self.0, info, true)
    }
}

// ------------------------------------------------------------------ receive-only handlers

/// Connections handled by one function of what they receive: no storage,
/// nothing to do on ticks; why each closed is recorded in `closed`. It is its
/// own factory: every connection gets a copy (sharing `closed`).
#[derive(Clone)]
pub struct OnRecv {
    recv: fn(&mut ConnIo<'_>) -> Flow,
    wakeup: Wakeup,
    /// Why each connection closed, in order.
    pub closed: Arc<Mutex<Vec<CloseReason>>>,
}

impl OnRecv {
    /// Ticking every tick (the engine's default).
    pub fn new(recv: fn(&mut ConnIo<'_>) -> Flow) -> OnRecv {
        OnRecv { recv, wakeup: Wakeup::EveryTick, closed: Arc::default() }
    }

    /// No ticks after the one at registration.
    pub fn never_ticking(self) -> OnRecv {
        OnRecv { wakeup: Wakeup::Never, ..self }
    }

    /// Wait for the first connection to close and say why.
    pub fn wait_closed(&self) -> CloseReason {
        wait_until("a connection closed", || !self.closed.lock().unwrap().is_empty());
        self.closed.lock().unwrap()[0]
    }
}

impl Handler for OnRecv {
    fn on_recv(&mut self, io: &mut ConnIo<'_>) -> Flow {
        (self.recv)(io)
    }
    fn on_storage(&mut self, _io: &mut ConnIo<'_>, _t: u64, _r: i32) -> Flow {
        Flow::Continue
    }
    fn on_tick(&mut self, _io: &mut ConnIo<'_>) -> Flow {
        Flow::Continue
    }
    fn next_wakeup(&self) -> Wakeup {
        self.wakeup
    }
    fn on_closed(&mut self, reason: CloseReason) {
        self.closed.lock().unwrap().push(reason);
    }
}

impl HandlerFactory for OnRecv {
    fn create(&self, _info: &ConnInfo) -> Option<Box<dyn Handler>> {
        Some(Box::new(self.clone()))
    }
}

// ------------------------------------------------------------------ receive into a sink

/// [`message`]s answered with their [`answer`]; after a header, the payload
/// goes into a buffer of the handler's own: through `recv_sink` (poll mode,
/// direct receives; at message boundaries receives are capped at the header
/// with `recv_len_hint`) or, when `armed`, through `recv_sink_armed` (any
/// mode). Bytes the engine received into its own buffer are copied over.
#[derive(Default)]
pub struct SinkSummer {
    armed: bool,
    /// Payload buffer of the message in progress, and how much of it is filled.
    payload: Vec<u8>,
    filled: usize,
    in_message: bool,
}

impl SinkSummer {
    fn finish_if_done(&mut self, io: &mut ConnIo<'_>) {
        if self.in_message && self.filled == self.payload.len() {
            let sum = self.payload.iter().fold(0u32, |a, b| a.wrapping_add(*b as u32));
            io.tx().extend_from_slice(&(self.payload.len() as u32).to_le_bytes());
            io.tx().extend_from_slice(&sum.to_le_bytes());
            self.in_message = false;
        }
    }

    /// Room enough left in the payload for a receive into it.
    fn sink(&mut self) -> Option<&mut [u8]> {
        if self.in_message && self.payload.len() - self.filled >= 1024 {
            Some(&mut self.payload[self.filled..])
        } else {
            None
        }
    }
}

impl Handler for SinkSummer {
    fn on_recv(&mut self, io: &mut ConnIo<'_>) -> Flow {
        loop {
            if self.in_message {
                let n = (self.payload.len() - self.filled).min(io.rx().len());
                self.payload[self.filled..self.filled + n].copy_from_slice(&io.rx()[..n]);
                self.filled += n;
                io.consume(n);
                self.finish_if_done(io);
                if self.in_message {
                    return Flow::Continue;
                }
            } else {
                let Some(len) = message_len(io.rx()) else {
                    return Flow::Continue;
                };
                io.consume(4);
                assert!(len <= 1 << 20);
                self.payload = vec![0; len];
                self.filled = 0;
                self.in_message = true;
                self.finish_if_done(io);
            }
        }
    }
    fn on_storage(&mut self, _io: &mut ConnIo<'_>, _t: u64, _r: i32) -> Flow {
        Flow::Continue
    }
    fn on_tick(&mut self, _io: &mut ConnIo<'_>) -> Flow {
        Flow::Continue
    }
    fn on_closed(&mut self, _r: CloseReason) {}
    fn recv_sink(&mut self) -> Option<&mut [u8]> {
        if self.armed {
            return None;
        }
        self.sink()
    }
    fn recv_len_hint(&self) -> usize {
        match (self.armed, self.in_message) {
            (true, _) => usize::MAX,
            (false, true) => self.payload.len() - self.filled + 4,
            (false, false) => 4,
        }
    }
    fn recv_sink_armed(&mut self) -> Option<ArmedSink> {
        if !self.armed {
            return None;
        }
        let rest = self.sink()?;
        // SAFETY: `payload` is neither touched nor replaced until
        // on_sink_recv (on_recv does not run while the receive is armed
        // into the sink, and on_tick does nothing).
        Some(unsafe { ArmedSink::new(rest.as_mut_ptr(), rest.len()) })
    }
    fn on_sink_recv(&mut self, io: &mut ConnIo<'_>, n: usize) -> Flow {
        assert!(self.in_message && n > 0 && self.filled + n <= self.payload.len());
        self.filled += n;
        self.finish_if_done(io);
        Flow::Continue
    }
}

/// Makes [`SinkSummer`]s, `armed` or not.
pub struct SinkSummerFactory {
    pub armed: bool,
}

impl HandlerFactory for SinkSummerFactory {
    fn create(&self, _info: &ConnInfo) -> Option<Box<dyn Handler>> {
        Some(Box::new(SinkSummer { armed: self.armed, ..Default::default() }))
    }
}
