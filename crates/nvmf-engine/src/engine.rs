//! The engine handle: core threads, listeners and their acceptor threads,
//! outbound connections, cross-thread wake-ups.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nvmf_proto::limited;
use nvmf_proto::log_limit::LogLimiter;

use crate::core::{self, Command, NewConn};
use crate::limits::{evictions_pending, Admission, Admit};
use crate::stats::CoreShared;
use crate::tls::{ListenerTls, TlsConn};
use crate::{CoreStats, EngineConfig, EngineError, HandlerFactory, MakeHandler};

/// Sockets handed to one core and not yet registered there, beyond which
/// its acceptor waits (at most 100 ms) before handing it
/// more.
pub const HANDOFFS_PENDING_MAX: u64 = 1024;
const HANDOFFS_PENDING_WAIT: Duration = Duration::from_millis(100);

/// Longest wait of an admission for sockets in flight to become evictable.
const ADMIT_WAIT: Duration = Duration::from_millis(100);

/// Listen backlog when `/proc/sys/net/core/somaxconn` cannot be read.
pub const LISTEN_BACKLOG_DEFAULT: i32 = 4096;

/// Channel into a core plus its eventfd (the core keeps a read armed on it).
#[derive(Clone)]
pub(crate) struct CoreSender {
    tx: mpsc::Sender<Command>,
    wake: Arc<OwnedFd>,
}

impl CoreSender {
    pub(crate) fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }
    pub(crate) fn send(&self, cmd: Command) -> Result<(), EngineError> {
        self.tx.send(cmd).map_err(|_| EngineError::ShuttingDown)?;
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a valid u64 to an eventfd we own.
        unsafe { libc::write(self.wake.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8) };
        Ok(())
    }
}

/// Wakes one connection's handler from any thread: the owning core calls
/// [`Handler::on_wake`](crate::Handler::on_wake) soon after (one channel send + one eventfd write per call;
/// meant for cross-thread submission, e.g. a host application thread handing
/// work to the core that owns the queue). Waking a closed connection is a no-op.
#[derive(Clone)]
pub struct ConnWaker {
    core: CoreSender,
    slot: u32,
    id: u64,
}

impl ConnWaker {
    pub(crate) fn new(core: CoreSender, slot: u32, id: u64) -> ConnWaker {
        ConnWaker { core, slot, id }
    }
    /// Returns false if the engine has shut down.
    pub fn wake(&self) -> bool {
        self.core.send(Command::Wake { slot: self.slot, id: self.id }).is_ok()
    }
}

impl fmt::Debug for ConnWaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnWaker").field("slot", &self.slot).field("id", &self.id).finish()
    }
}

/// Identifies a listener registered with [`Engine::listen`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenerId {
    id: u64,
    local: SocketAddr,
}

impl ListenerId {
    /// The bound address (with the actual port if 0 was requested).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
    /// Numeric id, as found in [`ConnInfo::listener_id`](crate::ConnInfo::listener_id).
    pub fn id(&self) -> u64 {
        self.id
    }
}

/// Engine-wide connection counts (see [`Engine::connection_counts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionCounts {
    /// Open connections plus sockets on their way to a core, minus those
    /// being evicted: at most `connections_max`, but for eviction misses
    /// (`CoreStats::evict_missed`, a race; the next admission repairs it).
    pub open: usize,
    /// The unestablished part of `open`, at most `unestablished_max` likewise.
    pub unestablished: usize,
    /// Connections cores were asked to evict and have not yet handled (their
    /// sockets are still open): at most
    /// [`EVICTIONS_PENDING_MAX`](crate::EVICTIONS_PENDING_MAX).
    pub evicting: usize,
}

struct CoreHandle {
    sender: CoreSender,
    shared: Arc<CoreShared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl CoreHandle {
    fn send(&self, cmd: Command) -> Result<(), EngineError> {
        self.sender.send(cmd)
    }
}

struct ListenerEntry {
    id: u64,
    stop: Arc<AtomicBool>,
    /// Shared with the acceptor thread so the fd stays valid until both are done.
    listener: Arc<TcpListener>,
    thread: Option<JoinHandle<()>>,
}

struct Inner {
    cores: Vec<CoreHandle>,
    listeners: Mutex<Vec<ListenerEntry>>,
    next_listener: AtomicU64,
    rr: AtomicUsize,
    stopped: AtomicBool,
    admission: Arc<Admission>,
}

impl Inner {
    /// Reserve a place for a new connection, evicting where a limit is
    /// reached. While nothing is evictable but sockets are on their way to
    /// cores (not yet registered, so not yet evictable), waits for them, at
    /// most [`ADMIT_WAIT`]: under a flood the acceptor then keeps pace with
    /// the cores instead of refusing.
    fn admit(&self, established: bool) -> Admit {
        let started = Instant::now();
        loop {
            let admitted = self.admission.admit(
                established,
                self.cores.len(),
                |i| &self.cores[i].shared.eviction,
                |i| self.cores[i].send(Command::Evict).is_ok(),
            );
            if admitted != Admit::Refused || started.elapsed() >= ADMIT_WAIT || self.handoffs_pending() == 0 {
                return admitted;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    fn handoffs_pending(&self) -> u64 {
        self.cores.iter().map(|c| c.shared.pending_handoffs.load(Ordering::Acquire)).sum()
    }
    /// Least-loaded core (live connections + sockets still in flight to it),
    /// ties broken round-robin.
    fn least_loaded_core(&self) -> usize {
        let n = self.cores.len();
        let start = self.rr.fetch_add(1, Ordering::Relaxed);
        (0..n).map(|k| (start + k) % n).min_by_key(|&i| self.cores[i].shared.load()).unwrap_or(0)
    }
}

/// The running engine: core threads plus acceptor threads.
pub struct Engine {
    inner: Arc<Inner>,
    done: bool,
}

impl Engine {
    /// Spawn the core threads (pinned), each creating its own io_uring.
    pub fn start(cfg: EngineConfig) -> Result<Engine, EngineError> {
        cfg.validate()?;
        let cpus: Vec<Option<usize>> =
            if cfg.cores.is_empty() { vec![None] } else { cfg.cores.iter().map(|c| Some(*c)).collect() };
        let epoch = Instant::now();
        let admission = Arc::new(Admission::new(cfg.connections_max, cfg.unestablished_max));
        let mut cores = Vec::with_capacity(cpus.len());
        let mut ready_rx = Vec::new();
        for (idx, cpu) in cpus.iter().enumerate() {
            // SAFETY: plain syscall.
            let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
            if efd < 0 {
                return Err(EngineError::Io(io::Error::last_os_error()));
            }
            // SAFETY: fresh fd we own.
            let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(efd) });
            let (tx, rx) = mpsc::channel::<Command>();
            let sender = CoreSender { tx, wake };
            let s2 = sender.clone();
            let shared = Arc::new(CoreShared::new(idx, *cpu));
            let (rtx, rrx) = mpsc::sync_channel::<Result<(), EngineError>>(1);
            let c2 = cfg.clone();
            let sh2 = shared.clone();
            let adm = admission.clone();
            let cpu = *cpu;
            let th = std::thread::Builder::new()
                .name(format!("nvmf-core{idx}"))
                .spawn(move || core::run_core(idx, cpu, c2, rx, s2, sh2, adm, epoch, rtx))
                .map_err(EngineError::Io)?;
            cores.push(CoreHandle { sender, shared, thread: Mutex::new(Some(th)) });
            ready_rx.push(rrx);
        }
        let mut err = None;
        for r in ready_rx {
            match r.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    err.get_or_insert(e);
                }
                Err(_) => {
                    err.get_or_insert(EngineError::InvalidConfig("core thread died during start".into()));
                }
            }
        }
        let engine = Engine {
            inner: Arc::new(Inner {
                cores,
                listeners: Mutex::new(Vec::new()),
                next_listener: AtomicU64::new(1),
                rr: AtomicUsize::new(0),
                stopped: AtomicBool::new(false),
                admission,
            }),
            done: false,
        };
        if let Some(e) = err {
            engine.stop_all(Duration::from_millis(100));
            return Err(e);
        }
        Ok(engine)
    }

    /// Number of core threads.
    pub fn core_count(&self) -> usize {
        self.inner.cores.len()
    }

    /// Bind `addr` (listen backlog from `/proc/sys/net/core/somaxconn`,
    /// default [`LISTEN_BACKLOG_DEFAULT`]) and start an acceptor thread;
    /// accepted sockets (TCP_NODELAY) pass admission (limits, eviction) and
    /// are handed to the least-loaded core (live connections + handoffs in
    /// flight; ties round-robin), where `factory.create` makes the handler.
    pub fn listen(&self, addr: SocketAddr, factory: Arc<dyn HandlerFactory>) -> Result<ListenerId, EngineError> {
        self.listen_tls(addr, factory, ListenerTls::Off)
    }

    /// [`listen`](Self::listen) with TLS allowed or required on the
    /// listener (see [`ListenerTls`]). The session limits of the engine
    /// ([`crate::tls_session_limits`]) replace those of the configuration.
    pub fn listen_tls(
        &self,
        addr: SocketAddr,
        factory: Arc<dyn HandlerFactory>,
        tls: ListenerTls,
    ) -> Result<ListenerId, EngineError> {
        let tls = match tls {
            ListenerTls::Off => ListenerTls::Off,
            ListenerTls::Allowed(c) => ListenerTls::Allowed(Arc::new(with_engine_limits(&c))),
            ListenerTls::Required(c) => ListenerTls::Required(Arc::new(with_engine_limits(&c))),
        };
        if self.inner.stopped.load(Ordering::Acquire) {
            return Err(EngineError::ShuttingDown);
        }
        let listener = Arc::new(TcpListener::bind(addr)?);
        // std listens with a backlog of 128: a burst of connects (a flood,
        // or many hosts reconnecting at once) would stall in SYN retries.
        // Calling listen again on a listening socket updates its backlog.
        // SAFETY: plain syscall on a socket we own.
        if unsafe { libc::listen(listener.as_raw_fd(), listen_backlog()) } != 0 {
            return Err(EngineError::Io(io::Error::last_os_error()));
        }
        let local = listener.local_addr()?;
        let id = self.inner.next_listener.fetch_add(1, Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        let l2 = listener.clone();
        let inner = Arc::downgrade(&self.inner);
        let stop2 = stop.clone();
        let th = std::thread::Builder::new()
            .name(format!("nvmf-accept{id}"))
            .spawn(move || acceptor(l2, id, stop2, inner, factory, tls))
            .map_err(EngineError::Io)?;
        self.inner.listeners.lock().unwrap().push(ListenerEntry { id, stop, listener, thread: Some(th) });
        Ok(ListenerId { id, local })
    }

    /// Stop accepting on that listener and (optionally) close every connection
    /// accepted through it. Returns once the listener socket is closed and every
    /// core has started closing the connections (peers see EOF promptly; the
    /// handlers' `on_closed` runs once in-flight ops drain).
    pub fn remove_listener(&self, id: ListenerId, close_connections: bool) -> Result<(), EngineError> {
        let entry = {
            let mut l = self.inner.listeners.lock().unwrap();
            let pos = l.iter().position(|e| e.id == id.id).ok_or(EngineError::NoSuchListener(id.id))?;
            l.remove(pos)
        };
        stop_listener(entry);
        if close_connections {
            let mut acks = Vec::new();
            for c in &self.inner.cores {
                let (atx, arx) = mpsc::channel();
                if c.send(Command::RemoveListener { id: id.id, ack: atx }).is_ok() {
                    acks.push(arx);
                }
            }
            for a in acks {
                let _ = a.recv_timeout(Duration::from_secs(5));
            }
        }
        Ok(())
    }

    /// Outbound connection (host side), owned by core `core_index`. The TCP
    /// connect happens synchronously on the calling thread (errors are returned
    /// here); the handler is then created on the owning core by `make`. It
    /// counts toward `connections_max` (an unestablished connection may be
    /// evicted for it; [`EngineError::ConnectionLimit`] if none can) and
    /// starts established.
    pub fn connect(&self, core_index: usize, addr: SocketAddr, make: MakeHandler) -> Result<(), EngineError> {
        self.connect_timeout(core_index, addr, Duration::from_secs(10), make)
    }

    /// [`connect_timeout`](Self::connect_timeout) over TLS: `session` (a
    /// client [`nvmf_tls::TlsSession`], made with
    /// [`crate::tls_session_limits`]) starts its handshake at once; the
    /// handler's output waits until the handshake finished, and its input
    /// comes decrypted. A failed handshake closes the connection with
    /// [`CloseReason::Tls`](crate::CloseReason::Tls).
    pub fn connect_tls(
        &self,
        core_index: usize,
        addr: SocketAddr,
        timeout: Duration,
        session: nvmf_tls::TlsSession,
        make: MakeHandler,
    ) -> Result<(), EngineError> {
        self.connect_inner(core_index, addr, timeout, Some(Box::new(TlsConn::client(session))), make)
    }

    /// [`connect`](Self::connect) with an explicit TCP connect timeout.
    pub fn connect_timeout(
        &self,
        core_index: usize,
        addr: SocketAddr,
        timeout: Duration,
        make: MakeHandler,
    ) -> Result<(), EngineError> {
        self.connect_inner(core_index, addr, timeout, None, make)
    }

    fn connect_inner(
        &self,
        core_index: usize,
        addr: SocketAddr,
        timeout: Duration,
        tls: Option<Box<TlsConn>>,
        make: MakeHandler,
    ) -> Result<(), EngineError> {
        if self.inner.stopped.load(Ordering::Acquire) {
            return Err(EngineError::ShuttingDown);
        }
        let core = self.inner.cores.get(core_index).ok_or(EngineError::NoSuchCore(core_index))?;
        if self.inner.admit(true) == Admit::Refused {
            return Err(EngineError::ConnectionLimit);
        }
        let connected = (|| -> Result<NewConn, EngineError> {
            let s = TcpStream::connect_timeout(&addr, timeout)?;
            s.set_nodelay(true)?;
            let local = s.local_addr()?;
            let peer = s.peer_addr()?;
            // SAFETY: into_raw_fd transfers ownership.
            let fd = unsafe { OwnedFd::from_raw_fd(s.into_raw_fd()) };
            Ok(NewConn { fd, peer, local, listener_id: None, tls })
        })();
        let sent = connected.and_then(|conn| core.send(Command::Connect { conn, make }));
        if sent.is_err() {
            self.inner.admission.release(true);
        }
        sent
    }

    /// Graceful shutdown: stop accepting, call `on_shutdown` on each connection,
    /// flush tx, wait at most `timeout`, then force-close and join the threads.
    pub fn shutdown(mut self, timeout: Duration) {
        self.done = true;
        self.stop_all(timeout);
    }

    /// Per-core counters.
    pub fn stats(&self) -> Vec<CoreStats> {
        self.inner.cores.iter().map(|c| c.shared.snapshot()).collect()
    }

    /// Engine-wide open and unestablished connection counts right now (the
    /// ones `connections_max` and `unestablished_max` bound).
    pub fn connection_counts(&self) -> ConnectionCounts {
        let (open, unestablished) = self.inner.admission.counts();
        let evicting = evictions_pending(self.inner.cores.len(), |i| &self.inner.cores[i].shared.eviction);
        ConnectionCounts { open, unestablished, evicting }
    }

    fn stop_all(&self, timeout: Duration) {
        if self.inner.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        let entries: Vec<ListenerEntry> = std::mem::take(&mut *self.inner.listeners.lock().unwrap());
        for e in entries {
            stop_listener(e);
        }
        let deadline = Instant::now() + timeout;
        for c in &self.inner.cores {
            let _ = c.send(Command::Shutdown { deadline });
        }
        for c in &self.inner.cores {
            if let Some(t) = c.thread.lock().unwrap().take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if !self.done {
            self.stop_all(Duration::from_secs(1));
        }
    }
}

/// `/proc/sys/net/core/somaxconn` (the kernel caps any backlog at it).
fn listen_backlog() -> i32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|v| *v > 0)
        .unwrap_or(LISTEN_BACKLOG_DEFAULT)
}

fn stop_listener(mut e: ListenerEntry) {
    e.stop.store(true, Ordering::Release);
    // Wake the blocking accept(): shutdown on a listening socket makes accept fail (Linux).
    // SAFETY: plain syscall on a listener we keep alive (Arc) until after the join.
    unsafe { libc::shutdown(e.listener.as_raw_fd(), libc::SHUT_RDWR) };
    if let Some(t) = e.thread.take() {
        let _ = t.join();
    }
}

/// A copy of a server configuration with the engine's session limits.
fn with_engine_limits(cfg: &nvmf_tls::ServerConfig) -> nvmf_tls::ServerConfig {
    let mut c = cfg.clone();
    c.limits = crate::tls::session_limits();
    c
}

fn acceptor(
    listener: Arc<TcpListener>,
    id: u64,
    stop: Arc<AtomicBool>,
    inner: std::sync::Weak<Inner>,
    factory: Arc<dyn HandlerFactory>,
    tls: ListenerTls,
) {
    // Refusals are peer-provoked: rate-limited.
    let mut log = LogLimiter::default();
    let started = Instant::now();
    loop {
        let res = listener.accept();
        if stop.load(Ordering::Acquire) {
            return;
        }
        let now_ms = started.elapsed().as_millis() as u64;
        let (s, peer) = match res {
            Ok(v) => v,
            Err(e) => {
                match e.raw_os_error() {
                    Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM) => {
                        limited!(log, now_ms, warn, "accept: {e}; backing off");
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Some(libc::EINVAL) => return,
                    _ => tracing::debug!("accept: {e}"),
                }
                continue;
            }
        };
        let Some(inner) = inner.upgrade() else { return };
        if inner.stopped.load(Ordering::Acquire) {
            return;
        }
        let idx = inner.least_loaded_core();
        // A core that lags behind a flood gets no more sockets until it
        // catches up (bounds the channel and the reserved places).
        let waited = Instant::now();
        while inner.cores[idx].shared.pending_handoffs.load(Ordering::Relaxed) >= HANDOFFS_PENDING_MAX
            && waited.elapsed() < HANDOFFS_PENDING_WAIT
        {
            std::thread::sleep(Duration::from_micros(50));
        }
        if inner.admit(false) == Admit::Refused {
            inner.cores[idx].shared.refused_limit.fetch_add(1, Ordering::Relaxed);
            let (open, unestablished) = inner.admission.counts();
            limited!(
                log,
                now_ms,
                warn,
                "refusing connection from {peer}: {open}/{} connections, {unestablished}/{} unestablished, \
                 none evictable",
                inner.admission.connections_max,
                inner.admission.unestablished_max
            );
            drop(s);
            continue;
        }
        let _ = s.set_nodelay(true);
        let local = match s.local_addr() {
            Ok(l) => l,
            Err(_) => {
                inner.admission.release(false);
                continue;
            }
        };
        inner.cores[idx].shared.pending_handoffs.fetch_add(1, Ordering::Relaxed);
        // SAFETY: ownership transfer.
        let fd = unsafe { OwnedFd::from_raw_fd(s.into_raw_fd()) };
        let sent = inner.cores[idx].send(Command::Accepted {
            conn: NewConn {
                fd,
                peer,
                local,
                listener_id: Some(id),
                tls: match &tls {
                    ListenerTls::Off => None,
                    ListenerTls::Allowed(c) => Some(Box::new(TlsConn::detect(c.clone(), false))),
                    ListenerTls::Required(c) => Some(Box::new(TlsConn::detect(c.clone(), true))),
                },
            },
            factory: factory.clone(),
        });
        if sent.is_err() {
            inner.cores[idx].shared.pending_handoffs.fetch_sub(1, Ordering::Relaxed);
            inner.admission.release(false);
        }
    }
}
