//! Shared by the multipath tests: an in-process nvmf target with two
//! listeners (two ports, two ANA port IDs) and a loopback TCP proxy in front
//! of each listener that a test can cut, hold and restore.

#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nvmf_target::config::TargetConfig;
use nvmf_target::server::Server;

pub const NQN: &str = "nqn.2026-11.io.nvmf:mptest";
pub const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-00000000a11a";

/// Two listeners (port IDs 1 and 2) on random loopback ports; one namespace
/// (`kind` "ram", or "file" at `path`) of 32 MiB, 512-byte blocks, ANA group 1.
pub fn start_target(file: Option<&std::path::Path>, ports: Option<[u16; 2]>) -> Server {
    let ns = match file {
        Some(p) => format!("kind = \"file\"\npath = \"{}\"\nsize = \"32MiB\"", p.display()),
        None => "kind = \"ram\"\nsize = \"32MiB\"".to_string(),
    };
    let [p1, p2] = ports.unwrap_or([0, 0]);
    let toml = format!(
        r#"
[engine]
mode = "interrupt"
[[listener]]
addr = "127.0.0.1:{p1}"
port_id = 1
[[listener]]
addr = "127.0.0.1:{p2}"
port_id = 2
[[subsystem]]
nqn = "{NQN}"
[[subsystem.namespace]]
{ns}
block_size = 512
"#
    );
    let cfg = TargetConfig::from_toml_str(&toml).unwrap();
    nvmf_target::server::serve(&cfg).unwrap()
}

const PASS: u8 = 0;
const HOLD: u8 = 1;
const DOWN: u8 = 2;

/// After a [`FaultProxy::release`], a close the host made during the hold
/// reaches the target this much later than the bytes held with it: all
/// connections of a path are released at once, and without the delay the
/// close of one connection (e.g. the admin queue, which ends the controller)
/// could overtake the late bytes of another (the stale write the test wants
/// to land while the old controller still lives).
const RELEASED_CLOSE_DELAY_MS: u64 = 200;

struct Shared {
    upstream: Mutex<SocketAddr>,
    mode: AtomicU8,
    /// When the last hold was released.
    released_at: Mutex<Option<std::time::Instant>>,
    stop: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
}

/// A TCP proxy on 127.0.0.1 (random port) to `upstream`.
///
/// * [`cut`](Self::cut): close every proxied connection (both sides) and
///   refuse new ones until [`restore`](Self::restore) — a dead path.
/// * [`hold`](Self::hold): stop moving bytes in both directions (they stay
///   in socket buffers) until [`release`](Self::release) delivers them late —
///   a path that silently stalls.
pub struct FaultProxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl FaultProxy {
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream),
            mode: AtomicU8::new(PASS),
            released_at: Mutex::new(None),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let accept = std::thread::spawn(move || accept_loop(l, s));
        FaultProxy { addr, shared, accept: Some(accept) }
    }
    pub fn set_upstream(&self, a: SocketAddr) {
        *self.shared.upstream.lock().unwrap() = a;
    }
    pub fn cut(&self) {
        self.shared.mode.store(DOWN, Ordering::SeqCst);
        for c in self.shared.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
    pub fn restore(&self) {
        self.shared.mode.store(PASS, Ordering::SeqCst);
    }
    pub fn hold(&self) {
        self.shared.mode.store(HOLD, Ordering::SeqCst);
    }
    pub fn release(&self) {
        *self.shared.released_at.lock().unwrap() = Some(std::time::Instant::now());
        self.shared.mode.store(PASS, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.cut();
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(l: TcpListener, s: Arc<Shared>) {
    while !s.stop.load(Ordering::SeqCst) {
        match l.accept() {
            Ok((client, _)) => {
                if s.mode.load(Ordering::SeqCst) == DOWN {
                    drop(client); // refused while the path is down
                    continue;
                }
                let up = *s.upstream.lock().unwrap();
                let Ok(server) = TcpStream::connect_timeout(&up, Duration::from_secs(1)) else { continue };
                let _ = client.set_nonblocking(false);
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                {
                    let mut c = s.conns.lock().unwrap();
                    c.push(client.try_clone().unwrap());
                    c.push(server.try_clone().unwrap());
                }
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (sa, sb) = (s.clone(), s.clone());
                std::thread::spawn(move || pump(client, server, sa));
                std::thread::spawn(move || pump(s2, c2, sb));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(2)),
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, s: Arc<Shared>) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(5)));
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        if s.stop.load(Ordering::SeqCst) {
            return;
        }
        if s.mode.load(Ordering::SeqCst) == HOLD {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => {
                let released = *s.released_at.lock().unwrap();
                if let Some(left) =
                    released.and_then(|t| Duration::from_millis(RELEASED_CLOSE_DELAY_MS).checked_sub(t.elapsed()))
                {
                    std::thread::sleep(left);
                }
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                // Bytes read just as a hold began are held too.
                while s.mode.load(Ordering::SeqCst) == HOLD && !s.stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                if to.write_all(&buf[..n]).is_err() {
                    let _ = from.shutdown(Shutdown::Both);
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(_) => {
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

/// Multipath options for tests: short KATO (fence 2 x 2 s + 1 s), fast probes.
pub fn mp_options(policy: nvmf_host::multipath::IoPolicy) -> nvmf_host::multipath::MultipathOptions {
    let mut o = nvmf_host::multipath::MultipathOptions::new(NQN, 1);
    o.connect.hostnqn = HOSTNQN.into();
    o.connect.queue_size = 64;
    o.mp.policy = policy;
    o
}
