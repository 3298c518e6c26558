//! Transports for the management API, on control-plane threads:
//! - a Unix stream socket (mode 0600): newline-delimited JSON-RPC, one
//!   request per line, one response per line; HTTP `POST` also accepted
//!   (e.g. `curl --unix-socket`);
//! - optionally TCP: HTTP `POST` of a JSON-RPC body with
//!   `Authorization: Bearer TOKEN` (required);
//! - optionally the Prometheus endpoint: HTTP `GET /metrics`.
//!
//! Bounds: [`super::rpc::REQUEST_BYTES_MAX`] per request, [`CONNECTIONS_MAX`]
//! concurrent connections per listener, [`IDLE_TIMEOUT_MS`] idle time,
//! [`IO_TIMEOUT_MS`] per HTTP request and per response write.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::http::{self, ReadError};
use super::rpc::{self, REQUEST_BYTES_MAX};
use super::Mgmt;

/// Concurrent connections per management listener; more are answered with an error and closed.
pub const CONNECTIONS_MAX: usize = 16;
/// A Unix-socket client that sends nothing for this long is disconnected.
pub const IDLE_TIMEOUT_MS: u64 = 60_000;
/// Time to receive one HTTP request, and to write any response.
pub const IO_TIMEOUT_MS: u64 = 10_000;
/// Granularity of the stop check in blocking reads.
const POLL_MS: u64 = 200;

/// Where and how to serve management.
#[derive(Clone, Debug, Default)]
pub struct RpcOptions {
    /// Unix socket path (`None`: no Unix socket).
    pub socket_path: Option<PathBuf>,
    /// Refuse to start when the socket path is served by a live process
    /// (`false`: warn and go on without the socket).
    pub socket_required: bool,
    /// TCP address for HTTP JSON-RPC (requires `token`).
    pub tcp_addr: Option<SocketAddr>,
    pub token: Option<String>,
    /// Address of the Prometheus `/metrics` listener.
    pub metrics_addr: Option<SocketAddr>,
}

/// The default Unix socket: `/run/nvmf/nvmf.sock` for root,
/// `$XDG_RUNTIME_DIR/nvmf/nvmf.sock` otherwise, else `/tmp/nvmf-$UID/nvmf.sock`.
pub fn default_socket_path() -> PathBuf {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    if uid == 0 {
        return PathBuf::from("/run/nvmf/nvmf.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("nvmf/nvmf.sock"),
        None => PathBuf::from(format!("/tmp/nvmf-{uid}/nvmf.sock")),
    }
}

/// Running management listeners; [`MgmtListeners::stop`] (or drop) ends them.
pub struct MgmtListeners {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub socket_path: Option<PathBuf>,
    pub tcp_addr: Option<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
}

impl MgmtListeners {
    pub fn start(mgmt: Arc<Mgmt>, opts: &RpcOptions) -> io::Result<MgmtListeners> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut out = MgmtListeners {
            stop: stop.clone(),
            threads: Vec::new(),
            socket_path: None,
            tcp_addr: None,
            metrics_addr: None,
        };
        if let Some(path) = &opts.socket_path {
            match bind_unix(path) {
                Ok(l) => {
                    tracing::info!("management socket {}", path.display());
                    out.socket_path = Some(path.clone());
                    let (m, s) = (mgmt.clone(), stop.clone());
                    out.threads.push(spawn("nvmf-rpc-unix", move || accept_unix(l, m, s))?);
                }
                Err(e) if !opts.socket_required => {
                    tracing::warn!("no management socket: {e}");
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(addr) = opts.tcp_addr {
            let token = opts.token.clone().filter(|t| !t.is_empty()).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "an RPC TCP listener needs a token (--rpc-token-file)")
            })?;
            let l = TcpListener::bind(addr).map_err(|e| io::Error::new(e.kind(), format!("rpc listen {addr}: {e}")))?;
            let bound = l.local_addr()?;
            tracing::info!("management (HTTP JSON-RPC, bearer token) on {bound}");
            out.tcp_addr = Some(bound);
            let (m, s) = (mgmt.clone(), stop.clone());
            out.threads.push(spawn("nvmf-rpc-tcp", move || accept_tcp(l, s, move |c| serve_http_rpc(c, &m, &token)))?);
        }
        if let Some(addr) = opts.metrics_addr {
            // Queues connected from now on keep latency histograms.
            mgmt.server().target().latency_histograms.store(true, Ordering::Relaxed);
            let l =
                TcpListener::bind(addr).map_err(|e| io::Error::new(e.kind(), format!("metrics listen {addr}: {e}")))?;
            let bound = l.local_addr()?;
            tracing::info!("metrics on http://{bound}/metrics");
            out.metrics_addr = Some(bound);
            let (m, s) = (mgmt.clone(), stop.clone());
            out.threads.push(spawn("nvmf-metrics", move || accept_tcp(l, s, move |c| serve_metrics(c, &m)))?);
        }
        Ok(out)
    }

    /// Stop accepting, end the connection threads, remove the socket file.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if self.stop.swap(true, Ordering::AcqRel) {
            return;
        }
        // The accept loops block in accept(): wake each with a connection.
        if let Some(p) = &self.socket_path {
            let _ = UnixStream::connect(p);
        }
        for a in [self.tcp_addr, self.metrics_addr].into_iter().flatten() {
            let _ = TcpStream::connect_timeout(&a, Duration::from_secs(1));
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(p) = &self.socket_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for MgmtListeners {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name.into()).spawn(f)
}

fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    let ctx = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        std::fs::create_dir_all(dir).map_err(ctx)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(ctx)?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by another running target", path.display()),
            ));
        }
        // A stale socket from a target that died.
        std::fs::remove_file(path).map_err(ctx)?;
    }
    let l = UnixListener::bind(path).map_err(ctx)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(ctx)?;
    Ok(l)
}

/// Counts a connection against [`CONNECTIONS_MAX`] while alive.
struct Slot(Arc<AtomicUsize>);
impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
fn take_slot(active: &Arc<AtomicUsize>) -> Option<Slot> {
    if active.fetch_add(1, Ordering::AcqRel) >= CONNECTIONS_MAX {
        active.fetch_sub(1, Ordering::AcqRel);
        return None;
    }
    Some(Slot(active.clone()))
}

fn busy_body() -> Vec<u8> {
    let mut v = serde_json::to_vec(&serde_json::json!({"jsonrpc": "2.0", "id": null, "error": {
        "code": super::rpc::code::FAILED,
        "message": format!("too many management connections (at most {CONNECTIONS_MAX})")}}))
    .unwrap_or_default();
    v.push(b'\n');
    v
}

fn accept_unix(l: UnixListener, mgmt: Arc<Mgmt>, stop: Arc<AtomicBool>) {
    let active = Arc::new(AtomicUsize::new(0));
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Acquire) {
        match l.accept() {
            Ok(_) if stop.load(Ordering::Acquire) => break,
            Ok((mut c, _)) => {
                let _ = c.set_write_timeout(Some(Duration::from_millis(IO_TIMEOUT_MS)));
                let Some(slot) = take_slot(&active) else {
                    let _ = c.write_all(&busy_body());
                    continue;
                };
                let (m, s) = (mgmt.clone(), stop.clone());
                if let Ok(t) = spawn("nvmf-rpc-conn", move || {
                    let _slot = slot;
                    serve_unix(c, &m, &s)
                }) {
                    conns.push(t);
                }
                conns.retain(|t| !t.is_finished());
            }
            Err(e) => {
                tracing::warn!("management socket accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    for t in conns {
        let _ = t.join();
    }
}

/// Read into `buf` until `pred(buf)` or EOF, bounded by `stop` and `deadline`.
fn read_more(c: &mut impl Read, buf: &mut Vec<u8>, stop: &AtomicBool) -> io::Result<usize> {
    let mut chunk = [0u8; 8192];
    loop {
        if stop.load(Ordering::Acquire) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "stopping"));
        }
        match c.read(&mut chunk) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(n);
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return Ok(usize::MAX),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn serve_unix(mut c: UnixStream, mgmt: &Mgmt, stop: &AtomicBool) {
    let _ = c.set_read_timeout(Some(Duration::from_millis(POLL_MS)));
    let mut buf: Vec<u8> = Vec::new();
    let mut last = Instant::now();
    let mut served = false;
    loop {
        if !served && (buf.starts_with(b"POST ") || buf.starts_with(b"GET ")) {
            // HTTP on the Unix socket (curl --unix-socket): no token needed, the
            // socket's permissions are the access control.
            let prefix = std::mem::take(&mut buf);
            let _ = c.set_read_timeout(Some(Duration::from_millis(IO_TIMEOUT_MS)));
            serve_http_rpc_inner(&mut c, &prefix, mgmt, None);
            return;
        }
        // Serve every complete line.
        while let Some(i) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let body = &line[..line.len() - 1];
            if body.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            if let Some(resp) = rpc::handle_body(body, mgmt) {
                let mut out = serde_json::to_vec(&resp).unwrap_or_default();
                out.push(b'\n');
                if c.write_all(&out).is_err() {
                    return;
                }
            }
            last = Instant::now();
            served = true;
        }
        if buf.len() > REQUEST_BYTES_MAX {
            let mut out = serde_json::to_vec(&rpc::oversized_response()).unwrap_or_default();
            out.push(b'\n');
            let _ = c.write_all(&out);
            return;
        }
        match read_more(&mut c, &mut buf, stop) {
            Ok(0) => {
                // EOF: a last request without a newline still gets its answer.
                if !buf.iter().all(|b| b.is_ascii_whitespace()) {
                    if let Some(resp) = rpc::handle_body(&buf, mgmt) {
                        let mut out = serde_json::to_vec(&resp).unwrap_or_default();
                        out.push(b'\n');
                        let _ = c.write_all(&out);
                    }
                }
                return;
            }
            Ok(usize::MAX) => {
                if last.elapsed() > Duration::from_millis(IDLE_TIMEOUT_MS) {
                    return;
                }
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

fn accept_tcp(l: TcpListener, stop: Arc<AtomicBool>, serve: impl Fn(TcpStream) + Send + Sync + 'static) {
    let serve = Arc::new(serve);
    let active = Arc::new(AtomicUsize::new(0));
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Acquire) {
        match l.accept() {
            Ok(_) if stop.load(Ordering::Acquire) => break,
            Ok((mut c, _)) => {
                let _ = c.set_read_timeout(Some(Duration::from_millis(IO_TIMEOUT_MS)));
                let _ = c.set_write_timeout(Some(Duration::from_millis(IO_TIMEOUT_MS)));
                let Some(slot) = take_slot(&active) else {
                    let _ = http::respond(&mut c, 503, "application/json", &busy_body());
                    continue;
                };
                let s = serve.clone();
                if let Ok(t) = spawn("nvmf-http-conn", move || {
                    let _slot = slot;
                    s(c)
                }) {
                    conns.push(t);
                }
                conns.retain(|t| !t.is_finished());
            }
            // e.g. EMFILE: back off instead of spinning.
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    for t in conns {
        let _ = t.join();
    }
}

fn serve_http_rpc(mut c: TcpStream, mgmt: &Mgmt, token: &str) {
    serve_http_rpc_inner(&mut c, &[], mgmt, Some(token));
}

fn serve_http_rpc_inner<S: Read + Write>(c: &mut S, prefix: &[u8], mgmt: &Mgmt, token: Option<&str>) {
    let req = match http::read_request(c, prefix, REQUEST_BYTES_MAX) {
        Ok(r) => r,
        Err(ReadError::TooLarge) => {
            let body = serde_json::to_vec(&rpc::oversized_response()).unwrap_or_default();
            let _ = http::respond(c, 413, "application/json", &body);
            return;
        }
        Err(ReadError::Bad(why)) => {
            let _ = http::respond(c, 400, "text/plain", why.as_bytes());
            return;
        }
        Err(ReadError::Io(_)) => return,
    };
    if let Some(t) = token {
        if !req.bearer.as_deref().is_some_and(|b| http::token_eq(b, t)) {
            let body = serde_json::to_vec(&rpc::unauthorized_response()).unwrap_or_default();
            let _ = http::respond(c, 401, "application/json", &body);
            return;
        }
    }
    if req.method != "POST" {
        let _ = http::respond(c, 405, "text/plain", b"POST a JSON-RPC 2.0 request\n");
        return;
    }
    match rpc::handle_body(&req.body, mgmt) {
        Some(resp) => {
            let _ = http::respond(c, 200, "application/json", &serde_json::to_vec(&resp).unwrap_or_default());
        }
        None => {
            let _ = http::respond(c, 200, "application/json", b"");
        }
    }
}

fn serve_metrics(mut c: TcpStream, mgmt: &Mgmt) {
    match http::read_request(&mut c, &[], 0) {
        Ok(r) if r.method == "GET" && (r.path == "/metrics" || r.path.starts_with("/metrics?")) => {
            let text = super::metrics::render(mgmt);
            let _ = http::respond(&mut c, 200, "text/plain; version=0.0.4; charset=utf-8", text.as_bytes());
        }
        Ok(_) => {
            let _ = http::respond(&mut c, 404, "text/plain", b"try GET /metrics\n");
        }
        Err(ReadError::Io(_)) => {}
        Err(_) => {
            let _ = http::respond(&mut c, 400, "text/plain", b"bad request\n");
        }
    }
}
