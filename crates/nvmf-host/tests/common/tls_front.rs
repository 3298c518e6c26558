//! A TLS 1.3 PSK front for the fake controller: accepts TLS connections
//! (an `nvmf_tls` server session per connection), forwards the plaintext to
//! a plain [`FakeTarget`](super::FakeTarget) and back. Records the identities
//! and suites of the handshakes, the handshake failures, and can start
//! KeyUpdates (asking the host to update too) while data flows to the host.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use nvmf_tls::{ServerConfig, TlsHash, TlsSession};
use zeroize::Zeroizing;

/// Identity → (TLS PSK, hash).
pub type PskTable = HashMap<String, (Vec<u8>, TlsHash)>;

/// One finished handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handshake {
    pub identity: String,
    pub hash: TlsHash,
}

#[derive(Default)]
pub struct FrontState {
    pub handshakes: Mutex<Vec<Handshake>>,
    pub failures: Mutex<Vec<String>>,
    /// Every this many plaintext bytes to the host, a KeyUpdate with
    /// update_requested (0: never).
    pub key_update_every: AtomicUsize,
    pub key_updates_sent: AtomicU32,
    /// Connections accepted.
    pub accepted: AtomicU32,
}

pub struct TlsFront {
    pub addr: SocketAddr,
    pub state: Arc<FrontState>,
}

impl TlsFront {
    pub fn start(backend: SocketAddr, table: PskTable) -> TlsFront {
        let table = Arc::new(table);
        let cfg = ServerConfig::new(Arc::new(move |id: &[u8]| {
            let id = std::str::from_utf8(id).ok()?;
            table.get(id).map(|(k, h)| (Zeroizing::new(k.clone()), *h))
        }))
        .unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let front = TlsFront { addr: l.local_addr().unwrap(), state: Arc::new(FrontState::default()) };
        let state = front.state.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(c) = c else { return };
                state.accepted.fetch_add(1, Ordering::Relaxed);
                let (cfg, state) = (cfg.clone(), state.clone());
                std::thread::spawn(move || serve(c, backend, cfg.session().unwrap(), state));
            }
        });
        front
    }
}

struct Shared {
    s: TlsSession,
    c: TcpStream,
    out: Vec<u8>,
}

impl Shared {
    fn send(&mut self) -> std::io::Result<()> {
        self.s.take_ciphertext(&mut self.out);
        let r = self.c.write_all(&self.out);
        self.out.clear();
        r
    }
}

fn serve(c: TcpStream, backend: SocketAddr, s: TlsSession, state: Arc<FrontState>) {
    let mut c_read = c.try_clone().unwrap();
    let shared = Arc::new(Mutex::new(Shared { s, c, out: Vec::new() }));
    let mut b_write: Option<TcpStream> = None;
    let mut buf = vec![0u8; 128 * 1024];
    let mut plain = Vec::new();
    loop {
        let n = match c_read.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut sh = shared.lock().unwrap();
        let mut at = 0;
        let mut failed = None;
        while at < n {
            match sh.s.feed(&buf[at..n]) {
                Ok(k) => at += k,
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
            if let Err(e) = sh.s.read_plaintext(&mut plain, usize::MAX) {
                failed = Some(e.to_string());
                break;
            }
        }
        if failed.is_none() {
            if let Err(e) = sh.s.read_plaintext(&mut plain, usize::MAX) {
                failed = Some(e.to_string());
            }
        }
        let _ = sh.send();
        if let Some(why) = failed {
            state.failures.lock().unwrap().push(why);
            let _ = sh.c.shutdown(Shutdown::Both);
            break;
        }
        if b_write.is_none() && sh.s.handshake_done() {
            state.handshakes.lock().unwrap().push(Handshake {
                identity: sh.s.peer_identity().unwrap_or_default().to_string(),
                hash: sh.s.hash().unwrap(),
            });
            let b = TcpStream::connect(backend).unwrap();
            b.set_nodelay(true).unwrap();
            let b_read = b.try_clone().unwrap();
            b_write = Some(b);
            let (shared, state) = (shared.clone(), state.clone());
            std::thread::spawn(move || to_host(b_read, shared, state));
        }
        let peer_closed = sh.s.peer_closed();
        drop(sh);
        if let Some(b) = &mut b_write {
            if !plain.is_empty() && b.write_all(&plain).is_err() {
                break;
            }
            plain.clear();
        }
        if peer_closed {
            break;
        }
    }
    if let Some(b) = b_write {
        let _ = b.shutdown(Shutdown::Both);
    }
}

/// Backend → host: encrypt, with KeyUpdates as configured; close_notify at the end.
fn to_host(mut b: TcpStream, shared: Arc<Mutex<Shared>>, state: Arc<FrontState>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut since_update = 0usize;
    loop {
        let n = match b.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut sh = shared.lock().unwrap();
        let every = state.key_update_every.load(Ordering::Relaxed);
        let mut at = 0;
        while at < n {
            // Split at the KeyUpdate points, so records before and after use different keys.
            let step = if every > 0 { (every - since_update).min(n - at) } else { n - at };
            let mut done = 0;
            while done < step {
                match sh.s.write_plaintext(&buf[at + done..at + step]) {
                    Ok(k) => done += k,
                    Err(_) => return,
                }
                if sh.send().is_err() {
                    return;
                }
            }
            at += step;
            since_update += step;
            if every > 0 && since_update >= every {
                since_update = 0;
                if sh.s.key_update(true).is_ok() {
                    state.key_updates_sent.fetch_add(1, Ordering::Relaxed);
                }
                if sh.send().is_err() {
                    return;
                }
            }
        }
    }
    let mut sh = shared.lock().unwrap();
    sh.s.close();
    let _ = sh.send();
    let _ = sh.c.shutdown(Shutdown::Write);
}
