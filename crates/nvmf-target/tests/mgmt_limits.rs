//! Management plane under hostile clients: idle and slow RPC and metrics
//! clients neither lock the operator out nor hold a connection for long, and
//! stopping the listeners is bounded whatever happened to the socket file.
//!
//! Bounds asserted here are generous upper bounds (the target's own are 5 s
//! per request and per stalled write); nothing measures speed.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nvmf_target::config::{DiscoveryConfig, ListenerConfig, NamespaceConfig, SubsystemConfig, TargetConfig};
use nvmf_target::mgmt::{Mgmt, MgmtListeners, RpcOptions};
use serde_json::Value;

const NQN: &str = "nqn.2026-11.io.nvmf:mgmt-limits";
/// A call or scrape made while hostile clients are connected answers within this.
const ANSWER_WITHIN: Duration = Duration::from_secs(3);
/// A client that sent an incomplete request (or nothing) is closed within this
/// (the target's bound is 5 s; the rest is slack for a loaded machine).
const CLOSED_WITHIN: Duration = Duration::from_secs(8);
const TOKEN: &str = "limits-t0ken";

struct Running {
    server: Option<Arc<nvmf_target::Server>>,
    listeners: Option<MgmtListeners>,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl Running {
    fn metrics(&self) -> SocketAddr {
        self.listeners.as_ref().unwrap().metrics_addr.unwrap()
    }
    fn rpc_tcp(&self) -> SocketAddr {
        self.listeners.as_ref().unwrap().tcp_addr.unwrap()
    }
    /// Stop the listeners in another thread; `true` if that returned within `within`.
    fn stop_within(&mut self, within: Duration) -> bool {
        let l = self.listeners.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            l.stop();
            let _ = tx.send(());
        });
        rx.recv_timeout(within).is_ok()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.listeners.is_some() && !self.stop_within(Duration::from_secs(10)) {
            // A failing test already says why; leave the rest to process exit.
            return;
        }
        if let Some(Ok(s)) = self.server.take().map(Arc::try_unwrap) {
            s.shutdown(Duration::from_secs(2));
        }
    }
}

fn config() -> TargetConfig {
    let mut cfg = TargetConfig::embedded_default();
    cfg.listeners =
        vec![ListenerConfig { addr: "127.0.0.1:0".into(), port_id: None, subsystems: vec![], tls: Default::default() }];
    cfg.discovery = DiscoveryConfig::default();
    cfg.subsystems = vec![SubsystemConfig::with_namespaces(NQN, vec![NamespaceConfig::ram("1MiB")])];
    cfg
}

fn start() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config();
    let server = Arc::new(nvmf_target::serve(&cfg).unwrap());
    let mgmt = Mgmt::new(server.clone(), &cfg).unwrap();
    let sock = dir.path().join("rpc.sock");
    let opts = RpcOptions {
        socket_path: Some(sock.clone()),
        socket_required: true,
        tcp_addr: Some("127.0.0.1:0".parse().unwrap()),
        token: Some(TOKEN.into()),
        metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
    };
    let listeners = MgmtListeners::start(mgmt, &opts).unwrap();
    Running { server: Some(server), listeners: Some(listeners), sock, _dir: dir }
}

/// One JSON-RPC call on the Unix socket; panics unless it is answered with a
/// result within [`ANSWER_WITHIN`].
fn call_within(sock: &Path, method: &str) -> Value {
    let t0 = Instant::now();
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(ANSWER_WITHIN)).unwrap();
    s.set_write_timeout(Some(ANSWER_WITHIN)).unwrap();
    writeln!(s, r#"{{"jsonrpc":"2.0","id":7,"method":"{method}","params":{{}}}}"#).unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\n") {
        match s.read(&mut b) {
            Ok(0) => panic!("{method}: closed after {:?}: {}", t0.elapsed(), String::from_utf8_lossy(&line)),
            Ok(_) => line.push(b[0]),
            Err(e) => panic!("{method}: no answer after {:?}: {e}", t0.elapsed()),
        }
    }
    assert!(t0.elapsed() < ANSWER_WITHIN, "{method} took {:?}", t0.elapsed());
    let v: Value = serde_json::from_slice(&line).unwrap();
    assert!(v.get("error").is_none(), "{method}: {v}");
    v["result"].clone()
}

/// `GET` (or `HEAD`) `/metrics`; panics unless answered within [`ANSWER_WITHIN`]. Returns the response.
fn scrape_within(addr: SocketAddr, method: &str) -> String {
    let t0 = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, ANSWER_WITHIN).unwrap();
    s.set_read_timeout(Some(ANSWER_WITHIN)).unwrap();
    write!(s, "{method} /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    if let Err(e) = s.read_to_string(&mut out) {
        panic!("scrape: {e} after {:?}: {out}", t0.elapsed());
    }
    assert!(t0.elapsed() < ANSWER_WITHIN, "scrape took {:?}", t0.elapsed());
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

trait Client: Read {
    fn nonblocking(&self);
}
impl Client for UnixStream {
    fn nonblocking(&self) {
        self.set_nonblocking(true).unwrap();
    }
}
impl Client for TcpStream {
    fn nonblocking(&self) {
        self.set_nonblocking(true).unwrap();
    }
}

/// Whether the target closed (or reset) `c` before `deadline`; whatever it
/// sent before closing is discarded.
fn closed_by(c: &mut impl Client, deadline: Instant) -> bool {
    c.nonblocking();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

/// Every client in `cs` is closed by `deadline` (polled together).
fn all_closed_by<C: Client>(cs: &mut Vec<C>, deadline: Instant) {
    let total = cs.len();
    for c in cs.iter() {
        c.nonblocking();
    }
    let mut buf = [0u8; 4096];
    loop {
        cs.retain_mut(|c| loop {
            match c.read(&mut buf) {
                Ok(0) => return false,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        });
        if cs.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{} of {total} slow clients still connected", cs.len());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn idle_unix_clients_then_a_call(n: usize) {
    let r = start();
    let idle: Vec<UnixStream> = (0..n).map(|_| UnixStream::connect(&r.sock).unwrap()).collect();
    // Let the target take them all in.
    std::thread::sleep(Duration::from_millis(300));
    let stats = call_within(&r.sock, "stats");
    assert!(stats["subsystems"].is_array(), "{stats}");
    // And again: the call did not just take the last free place.
    call_within(&r.sock, "rpc_methods");
    drop(idle);
}

#[test]
fn sixteen_idle_unix_clients_do_not_lock_out_a_call() {
    idle_unix_clients_then_a_call(16);
}

#[test]
fn a_hundred_idle_unix_clients_do_not_lock_out_a_call() {
    idle_unix_clients_then_a_call(100);
}

#[test]
fn idle_and_half_requests_are_closed() {
    let r = start();
    let t0 = Instant::now();
    let deadline = t0 + CLOSED_WITHIN;
    // Unix socket: nothing at all; half a JSON-RPC line; half an HTTP head.
    let mut u_idle = UnixStream::connect(&r.sock).unwrap();
    let mut u_half = UnixStream::connect(&r.sock).unwrap();
    u_half.write_all(br#"{"jsonrpc":"2.0","id":1,"meth"#).unwrap();
    let mut u_http = UnixStream::connect(&r.sock).unwrap();
    u_http.write_all(b"POST / HTTP/1.1\r\nContent-Le").unwrap();
    // A served client that then goes quiet is idle again: closed as well.
    let mut u_served = UnixStream::connect(&r.sock).unwrap();
    u_served.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"rpc_methods\"}\n").unwrap();
    // TCP JSON-RPC: a head without its body; metrics: half a head.
    let mut t_body = TcpStream::connect(r.rpc_tcp()).unwrap();
    t_body
        .write_all(
            format!("POST / HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 40\r\n\r\n{{\"js").as_bytes(),
        )
        .unwrap();
    let mut m_half = TcpStream::connect(r.metrics()).unwrap();
    m_half.write_all(b"GET /metr").unwrap();
    let mut m_idle = TcpStream::connect(r.metrics()).unwrap();
    assert!(closed_by(&mut u_idle, deadline), "idle Unix client kept");
    assert!(closed_by(&mut u_half, deadline), "Unix client with half a request kept");
    assert!(closed_by(&mut u_http, deadline), "Unix client with half an HTTP head kept");
    assert!(closed_by(&mut u_served, deadline), "idle Unix client kept after a response");
    assert!(closed_by(&mut t_body, deadline), "HTTP client with half a body kept");
    assert!(closed_by(&mut m_half, deadline), "metrics client with half a head kept");
    assert!(closed_by(&mut m_idle, deadline), "idle metrics client kept");
    // The listeners still serve.
    call_within(&r.sock, "stats");
    scrape_within(r.metrics(), "GET");
}

#[test]
fn slow_metrics_clients_do_not_block_a_scrape() {
    let r = start();
    let t0 = Instant::now();
    // 100 connect and send nothing; 100 send a request one byte per second.
    let mut silent: Vec<TcpStream> = (0..100).map(|_| TcpStream::connect(r.metrics()).unwrap()).collect();
    let dribblers: Vec<TcpStream> = (0..100).map(|_| TcpStream::connect(r.metrics()).unwrap()).collect();
    let mut readers: Vec<TcpStream> = dribblers.iter().map(|c| c.try_clone().unwrap()).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let dribble = std::thread::spawn(move || {
        let req = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        for i in 0..req.len() {
            if stop2.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            for mut c in &dribblers {
                let _ = c.write(&req[i..i + 1]);
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let text = scrape_within(r.metrics(), "GET");
    assert!(text.contains("nvmf_uptime_seconds"), "{text}");
    // A second scrape gets in as well.
    scrape_within(r.metrics(), "GET");
    all_closed_by(&mut silent, t0 + CLOSED_WITHIN);
    all_closed_by(&mut readers, t0 + CLOSED_WITHIN);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    dribble.join().unwrap();
}

#[test]
fn head_metrics_is_headers_only() {
    let r = start();
    let get = scrape_within(r.metrics(), "GET");
    let head = scrape_within(r.metrics(), "HEAD");
    let (head_h, head_body) = head.split_once("\r\n\r\n").unwrap();
    assert_eq!(head_body, "", "HEAD sent a body");
    assert!(head_h.contains("Content-Type: text/plain"), "{head_h}");
    let len = |h: &str| -> usize {
        h.lines().find_map(|l| l.strip_prefix("Content-Length: ")).unwrap().trim().parse().unwrap()
    };
    let (get_h, get_body) = get.split_once("\r\n\r\n").unwrap();
    assert_eq!(len(get_h), get_body.len());
    assert!(len(head_h) > 0);
}

#[test]
fn a_client_that_does_not_read_its_responses_is_closed() {
    let r = start();
    let c = UnixStream::connect(&r.sock).unwrap();
    // Many pipelined requests, no reads: the responses fill the socket
    // buffers and the target's writes stop progressing.
    let mut w = c.try_clone().unwrap();
    w.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let writer = std::thread::spawn(move || {
        let line = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"rpc_methods\"}\n";
        for _ in 0..100_000 {
            if w.write_all(line).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    // Others get in meanwhile.
    call_within(&r.sock, "stats");
    // Still not reading: the target's writes have stalled for longer than
    // its bound (5 s) by the end of this sleep. Reading now would unstall them.
    std::thread::sleep(CLOSED_WITHIN);
    let mut c = c;
    assert!(closed_by(&mut c, Instant::now() + Duration::from_secs(10)), "a client that stopped reading was kept");
    writer.join().unwrap();
}

#[test]
fn stop_is_bounded_when_the_socket_file_is_gone() {
    let mut r = start();
    // A connection in the middle of a request, one idle: neither holds stop up.
    let _idle = UnixStream::connect(&r.sock).unwrap();
    let mut half = UnixStream::connect(&r.sock).unwrap();
    half.write_all(b"{\"jsonrpc\":").unwrap();
    let _m = TcpStream::connect(r.metrics()).unwrap();
    std::fs::remove_file(&r.sock).unwrap();
    assert!(r.stop_within(Duration::from_secs(3)), "stop() hung after the socket file was removed");
}

#[test]
fn a_socket_file_that_is_no_longer_ours_is_left_at_stop() {
    // Replaced by a regular file.
    let mut r = start();
    std::fs::remove_file(&r.sock).unwrap();
    std::fs::write(&r.sock, b"not a socket").unwrap();
    assert!(r.stop_within(Duration::from_secs(3)), "stop() hung");
    assert_eq!(std::fs::read(&r.sock).unwrap(), b"not a socket", "stop() removed a file it did not create");

    // Replaced by another listener's socket (another target took the path over).
    let mut r = start();
    std::fs::remove_file(&r.sock).unwrap();
    let other = std::os::unix::net::UnixListener::bind(&r.sock).unwrap();
    assert!(r.stop_within(Duration::from_secs(3)), "stop() hung");
    assert!(r.sock.exists(), "stop() removed another listener's socket");
    assert!(UnixStream::connect(&r.sock).is_ok());
    drop(other);

    // Untouched: removed at stop as before.
    let mut r = start();
    assert!(r.stop_within(Duration::from_secs(3)), "stop() hung");
    assert!(!r.sock.exists(), "stop() left its own socket file");
}

/// Sixteen requests that take a while (their namespace opener waits on a
/// gate) hold every connection: none of them is evicted or cut short by a
/// newcomer, and the newcomer is served once they are done instead of being
/// refused.
#[test]
fn executing_requests_are_never_evicted_and_a_newcomer_waits_its_turn() {
    use std::sync::{Condvar, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let cfg = config();
    let server = Arc::new(nvmf_target::serve(&cfg).unwrap());
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let g = gate.clone();
    let opener: nvmf_target::mgmt::SharedOpener = Arc::new(move |n: &NamespaceConfig| {
        let (open, cv) = &*g;
        // Bounded, so that a failing test cannot hang.
        let _ = cv.wait_timeout_while(open.lock().unwrap(), Duration::from_secs(30), |o| !*o).unwrap();
        nvmf_target::backend::open(n)
    });
    let mgmt = Mgmt::with_opener(server.clone(), &cfg, opener).unwrap();
    let sock = dir.path().join("rpc.sock");
    let opts = RpcOptions { socket_path: Some(sock.clone()), socket_required: true, ..RpcOptions::default() };
    let listeners = MgmtListeners::start(mgmt, &opts).unwrap();

    let slow: Vec<_> = (0..16)
        .map(|_| {
            let sock = sock.clone();
            std::thread::spawn(move || -> Result<Value, String> {
                let mut s = UnixStream::connect(&sock).map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
                s.write_all(
                    format!(
                        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"namespace_add\",\
                         \"params\":{{\"nqn\":\"{NQN}\",\"kind\":\"null\",\"size\":\"1MiB\"}}}}\n"
                    )
                    .as_bytes(),
                )
                .map_err(|e| e.to_string())?;
                let mut line = String::new();
                std::io::BufRead::read_line(&mut std::io::BufReader::new(s), &mut line)
                    .map_err(|e| format!("{e} after {line:?}"))?;
                serde_json::from_str(&line).map_err(|e| format!("{e}: {line:?}"))
            })
        })
        .collect();
    // Let every one of them reach its method (all but one wait for the lock the first holds).
    std::thread::sleep(Duration::from_secs(1));
    let newcomer = {
        let sock = sock.clone();
        std::thread::spawn(move || -> Value {
            let mut s = UnixStream::connect(&sock).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
            s.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"stats\"}\n").unwrap();
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while !line.ends_with(b"\n") {
                assert_eq!(s.read(&mut b).unwrap(), 1, "closed: {}", String::from_utf8_lossy(&line));
                line.push(b[0]);
            }
            serde_json::from_slice(&line).unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    assert!(!newcomer.is_finished(), "the newcomer got an answer while all connections were executing");
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
    let mut nsids: Vec<u64> = slow
        .into_iter()
        .map(|t| {
            let v = t.join().unwrap().unwrap_or_else(|e| panic!("an executing request lost its answer: {e}"));
            v["result"]["nsid"].as_u64().unwrap_or_else(|| panic!("{v}"))
        })
        .collect();
    nsids.sort();
    assert_eq!(nsids, (2..=17).collect::<Vec<u64>>());
    let v = newcomer.join().unwrap();
    assert!(v["result"]["subsystems"].is_array(), "{v}");
    listeners.stop();
    Arc::try_unwrap(server).ok().expect("management released the server").shutdown(Duration::from_secs(2));
}
