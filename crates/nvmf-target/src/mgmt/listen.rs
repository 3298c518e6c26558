//! Transports for the management API, on control-plane threads:
//! - a Unix stream socket (mode 0600): newline-delimited JSON-RPC, one
//!   request per line, one response per line; HTTP `POST` also accepted
//!   (e.g. `curl --unix-socket`);
//! - optionally TCP: HTTP `POST` of a JSON-RPC body with
//!   `Authorization: Bearer TOKEN` (required);
//! - optionally the Prometheus endpoint: HTTP `GET` (or `HEAD`) `/metrics`.
//!
//! Each listener is one thread running a `poll(2)` loop over its listening
//! socket, its connections (non-blocking) and a wake-up socket. A complete
//! request runs on a short-lived thread of its own (at most one per
//! connection), so a slow method delays only its own client while the loop
//! goes on reading, writing and timing out the others.
//!
//! Bounds, per listener: [`CONNECTIONS_MAX`] connections (so at most as many
//! request threads), [`super::rpc::REQUEST_BYTES_MAX`] per request (plus
//! [`super::http::HEAD_BYTES_MAX`] of HTTP head); a request must arrive
//! complete within [`REQUEST_TIMEOUT_MS`] of the connection's start or of the
//! end of the previous response, and a response write that makes no progress
//! for [`WRITE_STALL_TIMEOUT_MS`] ends the connection. When the cap is
//! reached, a new connection evicts the oldest one that is waiting for (the
//! rest of) a request, else the one whose response has been being written
//! the longest, if that is over [`WRITE_STALL_TIMEOUT_MS`] (a client that
//! reads a trickle); one whose request is executing is never evicted. If all are executing, new
//! connections wait in the listen backlog until one is done (nobody is
//! refused). So idle or slow clients cannot keep the operator out.
//!
//! Stopping does not depend on peers or on the socket file: the loops are
//! woken through their wake-up sockets, requests still executing get
//! [`STOP_TIMEOUT_MS`], and the socket file is removed only if it is still
//! the one this target bound (same device and inode).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nvmf_proto::log_limit::LogLimiter;

use super::http::{self, ReadError};
use super::rpc::{self, REQUEST_BYTES_MAX};
use super::Mgmt;

/// Connections per management listener. At the cap a new connection evicts
/// the oldest one not executing a request; while every one is executing, new
/// connections wait in the listen backlog.
pub const CONNECTIONS_MAX: usize = 16;
/// A request must arrive complete within this of the connection's start or
/// of the end of the previous response; else the connection is closed (so an
/// idle connection is closed after it as well).
pub const REQUEST_TIMEOUT_MS: u64 = 5_000;
/// A response write that makes no progress for this long ends the connection.
pub const WRITE_STALL_TIMEOUT_MS: u64 = 5_000;
/// [`MgmtListeners::stop`]: longest wait for the listener threads and for
/// requests still executing; a request that takes longer is abandoned (its
/// thread ends when the method returns, its answer is dropped).
pub const STOP_TIMEOUT_MS: u64 = 1_000;
/// Most connections accepted per loop turn (new connections cannot evict
/// each other before the loop has read what they sent).
const ACCEPT_BATCH_MAX: usize = 8;
/// Bytes asked for per read.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Most unconsumed bytes buffered per connection (one request of either framing).
const BUFFER_BYTES_MAX: usize = REQUEST_BYTES_MAX + http::HEAD_BYTES_MAX + 4;
/// After an accept error (e.g. EMFILE), the listener is left alone this long.
const ACCEPT_PAUSE_MS: u64 = 100;
/// Connections the kernel queues for a listener until the loop takes them
/// (std's default, 128, drops SYNs during a burst of clients, and a dropped
/// SYN costs a scraper a 1 s retransmission). Linux caps it at somaxconn.
const LISTEN_BACKLOG: libc::c_int = 1024;
/// Longest poll(2) wait (a backstop: stop and completions wake the loop).
const POLL_TIMEOUT_MS_MAX: u64 = 1_000;

const JSON: &str = "application/json";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Where and how to serve management.
#[derive(Clone, Default)]
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

/// Never prints the token.
impl std::fmt::Debug for RpcOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcOptions")
            .field("socket_path", &self.socket_path)
            .field("socket_required", &self.socket_required)
            .field("tcp_addr", &self.tcp_addr)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("metrics_addr", &self.metrics_addr)
            .finish()
    }
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

/// One listener's thread and the socket that wakes it.
struct LoopHandle {
    thread: JoinHandle<()>,
    wake: Arc<UnixStream>,
}

/// Running management listeners; [`MgmtListeners::stop`] (or drop) ends them.
pub struct MgmtListeners {
    stop: Arc<AtomicBool>,
    loops: Vec<LoopHandle>,
    /// Request threads still running, over all listeners.
    requests_running: Arc<AtomicUsize>,
    /// (device, inode) of the socket file this target bound.
    socket_id: Option<(u64, u64)>,
    pub socket_path: Option<PathBuf>,
    pub tcp_addr: Option<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
}

impl MgmtListeners {
    pub fn start(mgmt: Arc<Mgmt>, opts: &RpcOptions) -> io::Result<MgmtListeners> {
        let mut out = MgmtListeners {
            stop: Arc::new(AtomicBool::new(false)),
            loops: Vec::new(),
            requests_running: Arc::new(AtomicUsize::new(0)),
            socket_id: None,
            socket_path: None,
            tcp_addr: None,
            metrics_addr: None,
        };
        if let Some(path) = &opts.socket_path {
            match bind_unix(path) {
                Ok((l, id)) => {
                    tracing::info!("management socket {}", path.display());
                    out.socket_path = Some(path.clone());
                    out.socket_id = Some(id);
                    out.spawn_loop("nvmf-rpc-unix", "nvmf-rpc-exec", Listener::Unix(l), Proto::Unix, &mgmt)?;
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
            out.spawn_loop("nvmf-rpc-tcp", "nvmf-rpc-exec", Listener::Tcp(l), Proto::HttpRpc { token }, &mgmt)?;
        }
        if let Some(addr) = opts.metrics_addr {
            // Queues connected from now on keep latency histograms.
            mgmt.server().target().latency_histograms.store(true, Ordering::Relaxed);
            let l =
                TcpListener::bind(addr).map_err(|e| io::Error::new(e.kind(), format!("metrics listen {addr}: {e}")))?;
            let bound = l.local_addr()?;
            tracing::info!("metrics on http://{bound}/metrics");
            out.metrics_addr = Some(bound);
            out.spawn_loop("nvmf-metrics", "nvmf-scrape", Listener::Tcp(l), Proto::Metrics, &mgmt)?;
        }
        Ok(out)
    }

    fn spawn_loop(
        &mut self,
        name: &str,
        exec_name: &'static str,
        listener: Listener,
        proto: Proto,
        mgmt: &Arc<Mgmt>,
    ) -> io::Result<()> {
        listener.prepare()?;
        let (wake_rx, wake_tx) = UnixStream::pair()?;
        wake_rx.set_nonblocking(true)?;
        wake_tx.set_nonblocking(true)?;
        let wake = Arc::new(wake_tx);
        let (done_tx, done_rx) = mpsc::channel();
        let ev = EventLoop {
            listener,
            proto,
            stop: self.stop.clone(),
            wake_rx,
            done_rx,
            exec: Exec {
                mgmt: mgmt.clone(),
                done_tx,
                wake: wake.clone(),
                running: self.requests_running.clone(),
                thread_name: exec_name,
            },
            conns: Vec::with_capacity(CONNECTIONS_MAX),
            next_id: 0,
            accept_paused_until: None,
            log: LogLimiter::default(),
            t0: Instant::now(),
        };
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || ev.run())?;
        self.loops.push(LoopHandle { thread, wake });
        Ok(())
    }

    /// Stop accepting, close every connection, wait up to [`STOP_TIMEOUT_MS`]
    /// for requests still executing, remove the socket file if it is still ours.
    pub fn stop(self) {
        self.stop_within(Duration::from_millis(STOP_TIMEOUT_MS));
    }

    /// [`MgmtListeners::stop`] with another bound on the waits.
    pub fn stop_within(mut self, wait: Duration) {
        self.stop_inner(wait);
    }

    fn stop_inner(&mut self, wait: Duration) {
        if self.stop.swap(true, Ordering::AcqRel) {
            return;
        }
        let deadline = Instant::now() + wait;
        for l in &self.loops {
            wake(&l.wake);
        }
        for l in self.loops.drain(..) {
            // The loops never block but in poll(2), which the wake-up ends:
            // this wait is short, and bounded all the same.
            while !l.thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if l.thread.is_finished() {
                let _ = l.thread.join();
            } else {
                tracing::warn!("a management listener thread did not stop in time; leaving it");
            }
        }
        while self.requests_running.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let n = self.requests_running.load(Ordering::Acquire);
        if n > 0 {
            tracing::warn!("{n} management request(s) still running at stop; their answers are dropped");
        }
        if let (Some(p), Some(id)) = (&self.socket_path, self.socket_id) {
            match std::fs::symlink_metadata(p) {
                Ok(m) if (m.dev(), m.ino()) == id => {
                    let _ = std::fs::remove_file(p);
                }
                Ok(_) => tracing::info!("{} is no longer this target's socket: left in place", p.display()),
                Err(_) => {}
            }
        }
    }
}

impl Drop for MgmtListeners {
    fn drop(&mut self) {
        self.stop_inner(Duration::from_millis(STOP_TIMEOUT_MS));
    }
}

/// Bind the Unix socket (mode 0600); returns it with the file's (device, inode).
fn bind_unix(path: &Path) -> io::Result<(UnixListener, (u64, u64))> {
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
    let m = std::fs::symlink_metadata(path).map_err(ctx)?;
    Ok((l, (m.dev(), m.ino())))
}

fn wake(w: &UnixStream) {
    // A full wake-up socket already has a wake-up pending.
    let _ = (&*w).write(&[1]);
}

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    /// Non-blocking, with a [`LISTEN_BACKLOG`] queue.
    fn prepare(&self) -> io::Result<()> {
        match self {
            Listener::Unix(l) => l.set_nonblocking(true)?,
            Listener::Tcp(l) => l.set_nonblocking(true)?,
        }
        // Calling listen(2) again on a listening socket sets its backlog.
        // SAFETY: plain syscall on a listening socket this value owns.
        if unsafe { libc::listen(self.fd(), LISTEN_BACKLOG) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
    fn accept(&self) -> io::Result<Sock> {
        let s = match self {
            Listener::Unix(l) => Sock::Unix(l.accept()?.0),
            Listener::Tcp(l) => Sock::Tcp(l.accept()?.0),
        };
        match &s {
            Sock::Unix(c) => c.set_nonblocking(true)?,
            Sock::Tcp(c) => c.set_nonblocking(true)?,
        }
        Ok(s)
    }
    fn fd(&self) -> RawFd {
        match self {
            Listener::Unix(l) => l.as_raw_fd(),
            Listener::Tcp(l) => l.as_raw_fd(),
        }
    }
}

/// A non-blocking connection.
enum Sock {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Sock {
    fn fd(&self) -> RawFd {
        match self {
            Sock::Unix(s) => s.as_raw_fd(),
            Sock::Tcp(s) => s.as_raw_fd(),
        }
    }
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Unix(s) => s.read(buf),
            Sock::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Unix(s) => s.write(buf),
            Sock::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What a listener speaks.
enum Proto {
    /// JSON-RPC lines, or one HTTP `POST` (no token: the socket's mode is the access control).
    Unix,
    /// One HTTP `POST` per connection, with the bearer token.
    HttpRpc { token: String },
    /// One `GET`/`HEAD /metrics` per connection.
    Metrics,
}

/// Where a connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for (the rest of) a request: evictable.
    Reading,
    /// Its request runs on a request thread: never evicted, no deadline.
    Executing,
    /// Writing the response: evictable after every reading connection, once
    /// it has taken [`WRITE_STALL_TIMEOUT_MS`].
    Writing,
}

enum State {
    Reading,
    Executing,
    Writing { out: Vec<u8>, pos: usize, close_after: bool },
}

struct Conn {
    id: u64,
    sock: Sock,
    /// Received bytes; `buf[start..]` is not consumed yet.
    buf: Vec<u8>,
    start: usize,
    state: State,
    /// Reading: when the wait for this request began (connection start or end
    /// of the previous response); Writing: the last progress.
    since: Instant,
    /// Writing: when the response began.
    response_start: Instant,
    /// HTTP framing on the Unix socket (decided by the first bytes).
    http: bool,
    /// A response was written (HTTP is only recognised before the first).
    served: bool,
    /// The peer finished sending.
    eof: bool,
    closed: bool,
}

impl Conn {
    fn phase(&self) -> Phase {
        match self.state {
            State::Reading => Phase::Reading,
            State::Executing => Phase::Executing,
            State::Writing { .. } => Phase::Writing,
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match self.state {
            State::Reading => Some(self.since + Duration::from_millis(REQUEST_TIMEOUT_MS)),
            State::Writing { .. } => Some(self.since + Duration::from_millis(WRITE_STALL_TIMEOUT_MS)),
            State::Executing => None,
        }
    }

    /// What to poll for; `None`: nothing (a negative fd is ignored by poll(2)).
    fn poll_events(&self) -> Option<libc::c_short> {
        match self.state {
            State::Reading if !self.eof => Some(libc::POLLIN),
            State::Writing { .. } => Some(libc::POLLOUT),
            _ => None,
        }
    }

    /// Read what is there (up to [`BUFFER_BYTES_MAX`] unconsumed); `false`: connection failed.
    fn read_some(&mut self) -> bool {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        while self.buf.len() <= BUFFER_BYTES_MAX {
            let len = self.buf.len();
            self.buf.resize(len + READ_CHUNK_BYTES, 0);
            let r = self.sock.read(&mut self.buf[len..]);
            self.buf.truncate(len + r.as_ref().map_or(0, |n| *n));
            match r {
                Ok(0) => {
                    self.eof = true;
                    return true;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }
}

/// The connection to evict for a new one, from (phase, since) where since is
/// the start of the wait for a request (Reading) or of the response
/// (Writing): the oldest reading one, else the oldest writing one that has
/// been at it for [`WRITE_STALL_TIMEOUT_MS`]; never an executing one.
fn victim(conns: impl Iterator<Item = (Phase, Instant)> + Clone, now: Instant) -> Option<usize> {
    let slow = Duration::from_millis(WRITE_STALL_TIMEOUT_MS);
    let oldest = |want: Phase| {
        conns
            .clone()
            .enumerate()
            .filter(|(_, (p, since))| *p == want && (want == Phase::Reading || now.duration_since(*since) >= slow))
            .min_by_key(|(_, (_, since))| *since)
            .map(|(i, _)| i)
    };
    oldest(Phase::Reading).or_else(|| oldest(Phase::Writing))
}

/// A complete request, to run on a request thread.
enum Job {
    /// A JSON-RPC body from a line of the Unix socket.
    Line(Vec<u8>),
    /// A JSON-RPC body from an HTTP `POST`.
    Http(Vec<u8>),
    Metrics {
        head_only: bool,
    },
}

/// What the connection does next with its buffer.
enum Next {
    /// Needs more bytes.
    More,
    Run(Job),
    /// Answer and close.
    Reply(Vec<u8>),
    Close,
}

fn json_bytes(v: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn line_bytes(v: &serde_json::Value) -> Vec<u8> {
    let mut out = json_bytes(v);
    out.push(b'\n');
    out
}

fn error_value(code: i64, message: String) -> serde_json::Value {
    serde_json::json!({"jsonrpc": "2.0", "id": null, "error": {"code": code, "message": message}})
}

/// The answer when a request thread failed (panicked or could not start).
fn failure_reply(proto: &Proto, http_framing: bool) -> Vec<u8> {
    let v = error_value(rpc::code::INTERNAL_ERROR, "internal error: the request failed".into());
    match proto {
        Proto::Unix if !http_framing => line_bytes(&v),
        Proto::Unix | Proto::HttpRpc { .. } => http::response(500, JSON, &json_bytes(&v), false),
        Proto::Metrics => http::response(500, "text/plain", b"internal error\n", false),
    }
}

/// Run a request; returns the bytes to write and whether to close after them.
fn run_job(job: Job, mgmt: &Mgmt) -> (Vec<u8>, bool) {
    match job {
        Job::Line(body) => (rpc::handle_body(&body, mgmt).map(|v| line_bytes(&v)).unwrap_or_default(), false),
        Job::Http(body) => {
            let resp = rpc::handle_body(&body, mgmt).map(|v| json_bytes(&v)).unwrap_or_default();
            (http::response(200, JSON, &resp, false), true)
        }
        Job::Metrics { head_only } => {
            let text = super::metrics::render(mgmt);
            (http::response(200, PROMETHEUS_TEXT, text.as_bytes(), head_only), true)
        }
    }
}

/// The next request in `c.buf`, if complete.
fn next_request(c: &mut Conn, proto: &Proto) -> Next {
    match proto {
        Proto::Unix => {
            let pending = &c.buf[c.start..];
            if !c.http && !c.served && (pending.starts_with(b"POST ") || pending.starts_with(b"GET ")) {
                c.http = true;
            }
            if c.http {
                next_http_rpc(c, None)
            } else {
                next_line(c)
            }
        }
        Proto::HttpRpc { token } => next_http_rpc(c, Some(token)),
        Proto::Metrics => next_metrics(c),
    }
}

fn next_line(c: &mut Conn) -> Next {
    while let Some(i) = c.buf[c.start..].iter().position(|&b| b == b'\n') {
        let line = &c.buf[c.start..c.start + i];
        let blank = line.iter().all(u8::is_ascii_whitespace);
        let line = line.to_vec();
        c.start += i + 1;
        if !blank {
            return Next::Run(Job::Line(line));
        }
    }
    let rest = &c.buf[c.start..];
    if rest.len() > REQUEST_BYTES_MAX {
        return Next::Reply(line_bytes(&rpc::oversized_response()));
    }
    if c.eof {
        // A last request without a newline still gets its answer.
        if rest.iter().all(u8::is_ascii_whitespace) {
            return Next::Close;
        }
        let line = rest.to_vec();
        c.start = c.buf.len();
        return Next::Run(Job::Line(line));
    }
    Next::More
}

fn next_http_rpc(c: &mut Conn, token: Option<&str>) -> Next {
    let req = match http::parse_request(&c.buf[c.start..], REQUEST_BYTES_MAX) {
        Ok(Some(r)) => r,
        Ok(None) if c.eof => return Next::Close,
        Ok(None) => return Next::More,
        Err(ReadError::TooLarge) => {
            return Next::Reply(http::response(413, JSON, &json_bytes(&rpc::oversized_response()), false))
        }
        Err(ReadError::Bad(why)) => return Next::Reply(http::response(400, "text/plain", why.as_bytes(), false)),
    };
    // One request per connection.
    c.start = c.buf.len();
    if let Some(t) = token {
        if !req.bearer.as_deref().is_some_and(|b| http::token_eq(b, t)) {
            return Next::Reply(http::response(401, JSON, &json_bytes(&rpc::unauthorized_response()), false));
        }
    }
    if req.method != "POST" {
        return Next::Reply(http::response(405, "text/plain", b"POST a JSON-RPC 2.0 request\n", false));
    }
    Next::Run(Job::Http(req.body))
}

fn next_metrics(c: &mut Conn) -> Next {
    match http::parse_request(&c.buf[c.start..], 0) {
        Ok(Some(r)) => {
            c.start = c.buf.len();
            let metrics = r.path == "/metrics" || r.path.starts_with("/metrics?");
            match r.method.as_str() {
                "GET" if metrics => Next::Run(Job::Metrics { head_only: false }),
                "HEAD" if metrics => Next::Run(Job::Metrics { head_only: true }),
                _ => Next::Reply(http::response(404, "text/plain", b"try GET /metrics\n", false)),
            }
        }
        Ok(None) if c.eof => Next::Close,
        Ok(None) => Next::More,
        Err(_) => Next::Reply(http::response(400, "text/plain", b"bad request\n", false)),
    }
}

/// A request thread's answer.
struct Done {
    id: u64,
    /// `None`: the method panicked.
    result: Option<(Vec<u8>, bool)>,
}

/// Counts a request thread while it holds the management state.
struct RunningGuard(Arc<AtomicUsize>);
impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Starts request threads.
struct Exec {
    mgmt: Arc<Mgmt>,
    done_tx: mpsc::Sender<Done>,
    wake: Arc<UnixStream>,
    running: Arc<AtomicUsize>,
    thread_name: &'static str,
}

impl Exec {
    fn start(&self, id: u64, job: Job) -> io::Result<()> {
        self.running.fetch_add(1, Ordering::AcqRel);
        let guard = RunningGuard(self.running.clone());
        let (mgmt, tx, wake_tx) = (self.mgmt.clone(), self.done_tx.clone(), self.wake.clone());
        // On a spawn error the closure, and so the guard, is dropped.
        std::thread::Builder::new().name(self.thread_name.into()).spawn(move || {
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| run_job(job, &mgmt))).ok();
            // Let go of the target before the answer goes out: whoever gets
            // it may stop management and take the server back.
            drop(mgmt);
            drop(guard);
            let _ = tx.send(Done { id, result });
            wake(&wake_tx);
        })?;
        Ok(())
    }
}

/// One listener's poll(2) loop.
struct EventLoop {
    listener: Listener,
    proto: Proto,
    stop: Arc<AtomicBool>,
    wake_rx: UnixStream,
    done_rx: mpsc::Receiver<Done>,
    exec: Exec,
    conns: Vec<Conn>,
    next_id: u64,
    accept_paused_until: Option<Instant>,
    /// For log lines a client can provoke.
    log: LogLimiter,
    t0: Instant,
}

fn pollfd(fd: RawFd, events: Option<libc::c_short>) -> libc::pollfd {
    match events {
        Some(events) => libc::pollfd { fd, events, revents: 0 },
        None => libc::pollfd { fd: -1, events: 0, revents: 0 },
    }
}

/// Advance `c` as far as it goes without waiting; `false`: close it.
fn progress(c: &mut Conn, proto: &Proto, exec: &Exec) -> bool {
    loop {
        match &mut c.state {
            State::Executing => return true,
            State::Writing { out, pos, close_after } => {
                while *pos < out.len() {
                    match c.sock.write(&out[*pos..]) {
                        Ok(0) => return false,
                        Ok(n) => {
                            *pos += n;
                            c.since = Instant::now();
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return false,
                    }
                }
                if *close_after {
                    return false;
                }
                c.served = true;
                c.state = State::Reading;
                c.since = Instant::now();
            }
            State::Reading => match next_request(c, proto) {
                Next::More => return c.buf.len() - c.start <= BUFFER_BYTES_MAX,
                Next::Close => return false,
                Next::Reply(out) => {
                    c.state = State::Writing { out, pos: 0, close_after: true };
                    c.response_start = Instant::now();
                    c.since = c.response_start;
                }
                Next::Run(job) => match exec.start(c.id, job) {
                    Ok(()) => c.state = State::Executing,
                    Err(e) => {
                        tracing::warn!("management: cannot start a request thread: {e}");
                        c.state = State::Writing { out: failure_reply(proto, c.http), pos: 0, close_after: true };
                        c.response_start = Instant::now();
                        c.since = c.response_start;
                    }
                },
            },
        }
    }
}

impl EventLoop {
    fn run(mut self) {
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(CONNECTIONS_MAX + 2);
        while !self.stop.load(Ordering::Acquire) {
            let now = Instant::now();
            // Full of executing connections: leave new ones in the backlog.
            let room = self.conns.len() < CONNECTIONS_MAX || self.victim(now).is_some();
            let accepting = room && !matches!(self.accept_paused_until, Some(t) if now < t);
            fds.clear();
            fds.push(pollfd(self.wake_rx.as_raw_fd(), Some(libc::POLLIN)));
            fds.push(pollfd(self.listener.fd(), accepting.then_some(libc::POLLIN)));
            fds.extend(self.conns.iter().map(|c| pollfd(c.sock.fd(), c.poll_events())));
            let mut next = now + Duration::from_millis(POLL_TIMEOUT_MS_MAX);
            for d in self.conns.iter().filter_map(Conn::deadline).chain(self.accept_paused_until) {
                next = next.min(d);
            }
            // Round up: waking a little late is fine, spinning before a deadline is not.
            let timeout_ms = next.saturating_duration_since(now).as_micros().div_ceil(1000) as libc::c_int;
            // SAFETY: `fds` is a valid, exclusively borrowed array of pollfd for the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::warn!("management poll: {e}");
                    std::thread::sleep(Duration::from_millis(ACCEPT_PAUSE_MS));
                }
                continue;
            }
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            if fds[0].revents != 0 {
                let mut b = [0u8; 64];
                while matches!((&self.wake_rx).read(&mut b), Ok(n) if n > 0) {}
            }
            self.finish_requests();
            for (c, fd) in self.conns.iter_mut().zip(&fds[2..]) {
                if fd.revents == 0 || c.closed {
                    continue;
                }
                let ok = match c.state {
                    State::Reading => c.read_some(),
                    _ => true,
                };
                if !ok || !progress(c, &self.proto, &self.exec) {
                    c.closed = true;
                }
            }
            let now = Instant::now();
            for c in &mut self.conns {
                if c.deadline().is_some_and(|d| now >= d) {
                    c.closed = true;
                }
            }
            self.conns.retain(|c| !c.closed);
            if self.accept_paused_until.is_some_and(|t| now >= t) {
                self.accept_paused_until = None;
            }
            if accepting && fds[1].revents != 0 {
                self.accept_some(now);
            }
        }
    }

    fn victim(&self, now: Instant) -> Option<usize> {
        victim(
            self.conns.iter().map(|c| match c.state {
                State::Writing { .. } => (Phase::Writing, c.response_start),
                _ => (c.phase(), c.since),
            }),
            now,
        )
    }

    /// Hand finished requests' answers to their connections.
    fn finish_requests(&mut self) {
        while let Ok(d) = self.done_rx.try_recv() {
            let Some(c) = self.conns.iter_mut().find(|c| c.id == d.id) else { continue };
            debug_assert!(matches!(c.state, State::Executing));
            let (out, close_after) = d.result.unwrap_or_else(|| (failure_reply(&self.proto, c.http), true));
            c.state = State::Writing { out, pos: 0, close_after };
            c.response_start = Instant::now();
            c.since = c.response_start;
            if !progress(c, &self.proto, &self.exec) {
                c.closed = true;
            }
        }
    }

    fn accept_some(&mut self, now: Instant) {
        let now_ms = now.duration_since(self.t0).as_millis() as u64;
        for _ in 0..ACCEPT_BATCH_MAX {
            let evict = if self.conns.len() < CONNECTIONS_MAX {
                None
            } else if let Some(i) = self.victim(now) {
                Some(i)
            } else {
                return;
            };
            let sock = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // E.g. EMFILE: the listener stays readable, so pause instead of spinning.
                    nvmf_proto::limited!(self.log, now_ms, warn, "management accept: {e}");
                    self.accept_paused_until = Some(now + Duration::from_millis(ACCEPT_PAUSE_MS));
                    return;
                }
            };
            if let Some(i) = evict {
                let v = self.conns.swap_remove(i);
                nvmf_proto::limited!(
                    self.log,
                    now_ms,
                    debug,
                    "management: {CONNECTIONS_MAX} connections, closed the oldest {:?} one for a new one",
                    v.phase()
                );
            }
            self.next_id += 1;
            self.conns.push(Conn {
                id: self.next_id,
                sock,
                buf: Vec::new(),
                start: 0,
                state: State::Reading,
                since: now,
                response_start: now,
                http: false,
                served: false,
                eof: false,
                closed: false,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_takes_the_oldest_reader_then_a_slow_writer_never_an_executor() {
        let t = Instant::now();
        let at = |ms: u64| t + Duration::from_millis(ms);
        let now = at(WRITE_STALL_TIMEOUT_MS + 5);
        let v = |c: &[(Phase, Instant)]| victim(c.iter().copied(), now);
        use Phase::*;
        assert_eq!(v(&[(Writing, at(0)), (Reading, at(5)), (Executing, at(1)), (Reading, at(3))]), Some(3));
        assert_eq!(v(&[(Executing, at(0)), (Writing, at(4)), (Writing, at(2))]), Some(2));
        // A response under way for less than the stall bound is left alone.
        assert_eq!(v(&[(Executing, at(0)), (Writing, at(9))]), None);
        assert_eq!(v(&[(Executing, at(0)), (Executing, at(1))]), None);
        assert_eq!(v(&[]), None);
    }

    #[test]
    fn options_debug_hides_the_token() {
        let o = RpcOptions { token: Some("sekrit".into()), ..RpcOptions::default() };
        let s = format!("{o:?}");
        assert!(!s.contains("sekrit") && s.contains("redacted"), "{s}");
    }
}
