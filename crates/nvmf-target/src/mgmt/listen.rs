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

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nvmf_proto::log_limit::LogLimiter;

use super::http::{self};
use super::rpc::REQUEST_BYTES_MAX;
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
pub(super) const ACCEPT_BATCH_MAX: usize = 8;
/// Bytes asked for per read.
pub(super) const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Most unconsumed bytes buffered per connection (one request of either framing).
pub(super) const BUFFER_BYTES_MAX: usize = REQUEST_BYTES_MAX + http::HEAD_BYTES_MAX + 4;
/// After an accept error (e.g. EMFILE), the listener is left alone this long.
pub(super) const ACCEPT_PAUSE_MS: u64 = 100;
/// Connections the kernel queues for a listener until the loop takes them
/// (std's default, 128, drops SYNs during a burst of clients, and a dropped
/// SYN costs a scraper a 1 s retransmission). Linux caps it at somaxconn.
pub(super) const LISTEN_BACKLOG: libc::c_int = 1024;
/// Longest poll(2) wait (a backstop: stop and completions wake the loop).
pub(super) const POLL_TIMEOUT_MS_MAX: u64 = 1_000;

pub(super) const JSON: &str = "application/json";
pub(super) const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

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
pub(super) struct LoopHandle {
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
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!(
                            "management socket {}: another nvmf target serves it; give this one its own \
                             (--rpc-socket PATH, and `nvmf ctl --rpc-socket PATH`) or none (--rpc-socket none)",
                            path.display()
                        ),
                    ))
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

    pub(super) fn spawn_loop(
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

    pub(super) fn stop_inner(&mut self, wait: Duration) {
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
pub(super) fn bind_unix(path: &Path) -> io::Result<(UnixListener, (u64, u64))> {
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

pub(super) fn wake(w: &UnixStream) {
    // A full wake-up socket already has a wake-up pending.
    let _ = (&*w).write(&[1]);
}

pub(super) enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    /// Non-blocking, with a [`LISTEN_BACKLOG`] queue.
    pub(super) fn prepare(&self) -> io::Result<()> {
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
    pub(super) fn accept(&self) -> io::Result<Sock> {
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
    pub(super) fn fd(&self) -> RawFd {
        match self {
            Listener::Unix(l) => l.as_raw_fd(),
            Listener::Tcp(l) => l.as_raw_fd(),
        }
    }
}

/// A non-blocking connection.
use super::event_loop::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn eviction_takes_the_oldest_reader_then_a_slow_writer_never_an_executor() {
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
    pub(super) fn options_debug_hides_the_token() {
        let o = RpcOptions { token: Some("sekrit".into()), ..RpcOptions::default() };
        let s = format!("{o:?}");
        assert!(!s.contains("sekrit") && s.contains("redacted"), "{s}");
    }
}
