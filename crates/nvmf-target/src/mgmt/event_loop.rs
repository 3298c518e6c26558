//! The management listeners' event loop: one `poll(2)` loop per listener
//! over its listening socket, its non-blocking connections and a wake-up
//! socket; connections with their deadlines and eviction order; requests
//! handed to short-lived threads. See [`super::listen`] for the bounds.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use nvmf_proto::log_limit::LogLimiter;

use super::http::{self, ReadError};
use super::rpc::{self, REQUEST_BYTES_MAX};
use super::Mgmt;

use super::listen::*;

pub(super) enum Sock {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Sock {
    pub(super) fn fd(&self) -> RawFd {
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
pub(super) enum Proto {
    /// JSON-RPC lines, or one HTTP `POST` (no token: the socket's mode is the access control).
    Unix,
    /// One HTTP `POST` per connection, with the bearer token.
    HttpRpc { token: String },
    /// One `GET`/`HEAD /metrics` per connection.
    Metrics,
}

/// Where a connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Waiting for (the rest of) a request: evictable.
    Reading,
    /// Its request runs on a request thread: never evicted, no deadline.
    Executing,
    /// Writing the response: evictable after every reading connection, once
    /// it has taken [`WRITE_STALL_TIMEOUT_MS`].
    Writing,
}

pub(super) enum State {
    Reading,
    Executing,
    Writing { out: Vec<u8>, pos: usize, close_after: bool },
}

pub(super) struct Conn {
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
    pub(super) fn phase(&self) -> Phase {
        match self.state {
            State::Reading => Phase::Reading,
            State::Executing => Phase::Executing,
            State::Writing { .. } => Phase::Writing,
        }
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        match self.state {
            State::Reading => Some(self.since + Duration::from_millis(REQUEST_TIMEOUT_MS)),
            State::Writing { .. } => Some(self.since + Duration::from_millis(WRITE_STALL_TIMEOUT_MS)),
            State::Executing => None,
        }
    }

    /// What to poll for; `None`: nothing (a negative fd is ignored by poll(2)).
    pub(super) fn poll_events(&self) -> Option<libc::c_short> {
        match self.state {
            State::Reading if !self.eof => Some(libc::POLLIN),
            State::Writing { .. } => Some(libc::POLLOUT),
            _ => None,
        }
    }

    /// Read what is there (up to [`BUFFER_BYTES_MAX`] unconsumed); `false`: connection failed.
    pub(super) fn read_some(&mut self) -> bool {
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
pub(super) fn victim(conns: impl Iterator<Item = (Phase, Instant)> + Clone, now: Instant) -> Option<usize> {
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
pub(super) enum Job {
    /// A JSON-RPC body from a line of the Unix socket.
    Line(Vec<u8>),
    /// A JSON-RPC body from an HTTP `POST`.
    Http(Vec<u8>),
    Metrics {
        head_only: bool,
    },
}

/// What the connection does next with its buffer.
pub(super) enum Next {
    /// Needs more bytes.
    More,
    Run(Job),
    /// Answer and close.
    Reply(Vec<u8>),
    Close,
}

pub(super) fn json_bytes(v: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

pub(super) fn line_bytes(v: &serde_json::Value) -> Vec<u8> {
    let mut out = json_bytes(v);
    out.push(b'\n');
    out
}

pub(super) fn error_value(code: i64, message: String) -> serde_json::Value {
    serde_json::json!({"jsonrpc": "2.0", "id": null, "error": {"code": code, "message": message}})
}

/// The answer when a request thread failed (panicked or could not start).
pub(super) fn failure_reply(proto: &Proto, http_framing: bool) -> Vec<u8> {
    let v = error_value(rpc::code::INTERNAL_ERROR, "internal error: the request failed".into());
    match proto {
        Proto::Unix if !http_framing => line_bytes(&v),
        Proto::Unix | Proto::HttpRpc { .. } => http::response(500, JSON, &json_bytes(&v), false),
        Proto::Metrics => http::response(500, "text/plain", b"internal error\n", false),
    }
}

/// Run a request; returns the bytes to write and whether to close after them.
pub(super) fn run_job(job: Job, mgmt: &Mgmt) -> (Vec<u8>, bool) {
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
pub(super) fn next_request(c: &mut Conn, proto: &Proto) -> Next {
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

pub(super) fn next_line(c: &mut Conn) -> Next {
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

pub(super) fn next_http_rpc(c: &mut Conn, token: Option<&str>) -> Next {
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

pub(super) fn next_metrics(c: &mut Conn) -> Next {
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
pub(super) struct Done {
    id: u64,
    /// `None`: the method panicked.
    result: Option<(Vec<u8>, bool)>,
}

/// Counts a request thread while it holds the management state.
pub(super) struct RunningGuard(Arc<AtomicUsize>);
impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Starts request threads.
pub(super) struct Exec {
    pub(super) mgmt: Arc<Mgmt>,
    pub(super) done_tx: mpsc::Sender<Done>,
    pub(super) wake: Arc<UnixStream>,
    pub(super) running: Arc<AtomicUsize>,
    pub(super) thread_name: &'static str,
}

impl Exec {
    pub(super) fn start(&self, id: u64, job: Job) -> io::Result<()> {
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
pub(super) struct EventLoop {
    pub(super) listener: Listener,
    pub(super) proto: Proto,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) wake_rx: UnixStream,
    pub(super) done_rx: mpsc::Receiver<Done>,
    pub(super) exec: Exec,
    pub(super) conns: Vec<Conn>,
    pub(super) next_id: u64,
    pub(super) accept_paused_until: Option<Instant>,
    /// For log lines a client can provoke.
    pub(super) log: LogLimiter,
    pub(super) t0: Instant,
}

pub(super) fn pollfd(fd: RawFd, events: Option<libc::c_short>) -> libc::pollfd {
    match events {
        Some(events) => libc::pollfd { fd, events, revents: 0 },
        None => libc::pollfd { fd: -1, events: 0, revents: 0 },
    }
}

/// Advance `c` as far as it goes without waiting; `false`: close it.
pub(super) fn progress(c: &mut Conn, proto: &Proto, exec: &Exec) -> bool {
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
    pub(super) fn run(mut self) {
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

    pub(super) fn victim(&self, now: Instant) -> Option<usize> {
        victim(
            self.conns.iter().map(|c| match c.state {
                State::Writing { .. } => (Phase::Writing, c.response_start),
                _ => (c.phase(), c.since),
            }),
            now,
        )
    }

    /// Hand finished requests' answers to their connections.
    pub(super) fn finish_requests(&mut self) {
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

    pub(super) fn accept_some(&mut self, now: Instant) {
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
