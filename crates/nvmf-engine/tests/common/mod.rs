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

pub struct EchoFactory(pub Arc<Events>);
impl HandlerFactory for EchoFactory {
    fn create(&self, info: &ConnInfo) -> Option<Box<dyn Handler>> {
        self.0.created.fetch_add(1, Ordering::SeqCst);
        self.0.cores.lock().unwrap().push(info.core);
        Some(Box::new(Echo { ev: self.0.clone(), establish: false }))
    }
}

/// Echo connections that are established as soon as they are registered.
pub struct EstablishedEchoFactory(pub Arc<Events>);
impl HandlerFactory for EstablishedEchoFactory {
    fn create(&self, info: &ConnInfo) -> Option<Box<dyn Handler>> {
        self.0.created.fetch_add(1, Ordering::SeqCst);
        self.0.cores.lock().unwrap().push(info.core);
        Some(Box::new(Echo { ev: self.0.clone(), establish: true }))
    }
}
