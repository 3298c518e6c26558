//! Thin glue between the sans-IO [`Queue`] and the io_uring engine: builds the
//! [`Target`], starts [`nvmf_engine::Engine`], listens on every I/O and
//! discovery listener, and adapts engine callbacks to queue calls.

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nvmf_engine::{
    parse_core_list, CloseReason, ConnInfo, ConnIo, CoreStats, Engine, EngineConfig, EngineError, Flow, Handler,
    HandlerFactory, ListenerId, Mode,
};

use crate::config::TargetConfig;
use crate::subsys::{BackendOpener, Port, RegistryError, Target};
use crate::transport::{Queue, QueueFlow, QueueLimits, StorageIo};

/// Errors starting the target.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Registry(#[from] RegistryError),
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
    #[error("invalid listener address {0:?}")]
    BadAddress(String),
    #[error("cannot listen on {addr}: {err}")]
    Listen { addr: String, err: EngineError },
    #[error("no listener on {0}")]
    NoSuchListener(SocketAddr),
    #[error("listener {0} exists already")]
    ListenerExists(SocketAddr),
    #[error("the target is shutting down")]
    ShuttingDown,
}

/// Counters for logging.
#[derive(Debug, Clone, Default)]
pub struct ServerStats {
    pub connections: usize,
    pub controllers: usize,
    pub cores: Vec<CoreStats>,
}

/// A running target.
pub struct Server {
    engine: Option<Engine>,
    target: Arc<Target>,
    /// Changed at runtime by management (add/remove listener).
    listeners: Mutex<Vec<(ListenerId, Port)>>,
    connections: Arc<AtomicUsize>,
    connections_max: usize,
}

impl Server {
    pub fn target(&self) -> &Arc<Target> {
        &self.target
    }
    /// Bound addresses of the I/O listeners (actual ports when 0 was asked).
    pub fn io_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.lock().unwrap().iter().filter(|(_, p)| !p.discovery_only).map(|(_, p)| p.addr).collect()
    }
    /// Bound addresses of the dedicated discovery listeners.
    pub fn discovery_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.lock().unwrap().iter().filter(|(_, p)| p.discovery_only).map(|(_, p)| p.addr).collect()
    }

    /// Start listening on `port.addr` at runtime (port 0: any free port).
    /// Returns the port as registered, with the bound address.
    pub fn add_listener(&self, mut port: Port) -> Result<Port, ServeError> {
        let engine = self.engine.as_ref().ok_or(ServeError::ShuttingDown)?;
        let mut l = self.listeners.lock().unwrap();
        if port.addr.port() != 0 && l.iter().any(|(_, p)| p.addr == port.addr) {
            return Err(ServeError::ListenerExists(port.addr));
        }
        let factory = Arc::new(QueueFactory {
            target: self.target.clone(),
            port: port.clone(),
            connections: self.connections.clone(),
            connections_max: self.connections_max,
        });
        let id =
            engine.listen(port.addr, factory).map_err(|err| ServeError::Listen { addr: port.addr.to_string(), err })?;
        port.addr = id.local_addr();
        tracing::info!("listening on {} (added at runtime, port id {})", port.addr, port.port_id);
        self.target.add_port(port.clone());
        l.push((id, port.clone()));
        Ok(port)
    }

    /// Stop listening on `addr` and close the connections accepted through it.
    pub fn remove_listener(&self, addr: SocketAddr) -> Result<Port, ServeError> {
        let engine = self.engine.as_ref().ok_or(ServeError::ShuttingDown)?;
        let (id, port) = {
            let mut l = self.listeners.lock().unwrap();
            let pos = l.iter().position(|(_, p)| p.addr == addr).ok_or(ServeError::NoSuchListener(addr))?;
            l.remove(pos)
        };
        self.target.remove_port(port.port_id, port.addr);
        engine.remove_listener(id, true)?;
        tracing::info!("stopped listening on {} (port id {})", port.addr, port.port_id);
        Ok(port)
    }
    pub fn stats(&self) -> ServerStats {
        ServerStats {
            connections: self.connections.load(Ordering::Relaxed),
            controllers: self.target.controller_count(),
            cores: self.engine.as_ref().map(|e| e.stats()).unwrap_or_default(),
        }
    }
    /// Stop accepting, let queues finish in-flight work, close everything.
    pub fn shutdown(mut self, timeout: Duration) {
        if let Some(e) = self.engine.take() {
            tracing::info!("target shutting down ({} connections)", self.connections.load(Ordering::Relaxed));
            e.shutdown(timeout);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(e) = self.engine.take() {
            e.shutdown(Duration::from_secs(1));
        }
    }
}

/// Start the target with the namespace backends from [`crate::backend::open`].
pub fn serve(cfg: &TargetConfig) -> Result<Server, ServeError> {
    serve_with(cfg, &crate::backend::open)
}

/// Start the target, opening namespace backends with `open`.
pub fn serve_with(cfg: &TargetConfig, open: BackendOpener<'_>) -> Result<Server, ServeError> {
    let cfg = &cfg.normalized().map_err(|e| RegistryError::Invalid(e.to_string()))?;
    let target = Target::new(cfg, open)?;
    let limits = QueueLimits::from_target(&target);
    let cores = if cfg.engine.cores.trim().is_empty() { Vec::new() } else { parse_core_list(&cfg.engine.cores)? };
    let mode: Mode = cfg.engine.mode.parse()?;
    let ecfg = EngineConfig {
        cores,
        mode,
        // Two of the largest PDUs so that one can straddle a buffer compaction.
        recv_buf_bytes: (2 * limits.pdu_len_max() as usize + 4096).max(EngineConfig::default().recv_buf_bytes),
        poll_direct_recv_conns_max: cfg.engine.poll_direct_recv_conns_max,
        ..EngineConfig::default()
    };
    let engine = Engine::start(ecfg)?;
    let connections = Arc::new(AtomicUsize::new(0));
    let mut server = Server {
        engine: None,
        target: target.clone(),
        listeners: Mutex::new(Vec::new()),
        connections: connections.clone(),
        connections_max: cfg.limits.connections_max as usize,
    };
    let mut specs: Vec<(String, Port)> = Vec::new();
    for (i, l) in cfg.listeners.iter().enumerate() {
        let addr = l.addr.parse().map_err(|_| ServeError::BadAddress(l.addr.clone()))?;
        let port_id = l.port_id.unwrap_or(i as u16 + 1);
        specs.push((l.addr.clone(), Port { port_id, addr, subsystems: l.subsystems.clone(), discovery_only: false }));
    }
    let disc_ids = cfg.discovery_port_ids();
    for (i, a) in cfg.discovery.listen.iter().enumerate() {
        let addr = a.parse().map_err(|_| ServeError::BadAddress(a.clone()))?;
        let port_id = disc_ids.get(i).copied().unwrap_or(i as u16 + 1);
        specs.push((a.clone(), Port { port_id, addr, subsystems: Vec::new(), discovery_only: true }));
    }
    for (text, mut port) in specs {
        let factory = Arc::new(QueueFactory {
            target: target.clone(),
            port: port.clone(),
            connections: connections.clone(),
            connections_max: cfg.limits.connections_max as usize,
        });
        let id = engine.listen(port.addr, factory).map_err(|err| ServeError::Listen { addr: text, err })?;
        port.addr = id.local_addr();
        tracing::info!(
            "listening on {} ({}, port id {})",
            port.addr,
            if port.discovery_only { "discovery" } else { "I/O and discovery" },
            port.port_id
        );
        target.add_port(port.clone());
        server.listeners.get_mut().unwrap().push((id, port));
    }
    server.engine = Some(engine);
    Ok(server)
}

struct QueueFactory {
    target: Arc<Target>,
    port: Port,
    connections: Arc<AtomicUsize>,
    connections_max: usize,
}

impl HandlerFactory for QueueFactory {
    fn create(&self, info: &ConnInfo) -> Option<Box<dyn Handler>> {
        if self.connections.fetch_add(1, Ordering::AcqRel) >= self.connections_max {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(peer = %info.peer, "connection limit ({}) reached; refusing", self.connections_max);
            return None;
        }
        // The current export list: management may have changed it since.
        let mut port = self.port.clone();
        if let Some(p) = self.target.ports().into_iter().find(|p| p.port_id == port.port_id) {
            port.subsystems = p.subsystems;
        }
        if port.addr.port() == 0 {
            port.addr.set_port(info.local.port());
        }
        tracing::info!(peer = %info.peer, local = %info.local, core = info.core, "connection accepted");
        let q = Queue::new(self.target.clone(), Arc::new(port), info.local, info.peer);
        Some(Box::new(QueueHandler { q, pending: Vec::new(), connections: self.connections.clone(), peer: info.peer }))
    }
}

/// A storage request recorded while the receive buffer is borrowed.
#[derive(Clone, Copy)]
enum StorageReq {
    Read { fd: RawFd, offset: u64, buf: *mut u8, len: u32, token: u64 },
    Write { fd: RawFd, offset: u64, buf: *const u8, len: u32, token: u64 },
    Fsync { fd: RawFd, datasync: bool, token: u64 },
}

struct Deferred<'a>(&'a mut Vec<StorageReq>);

impl StorageIo for Deferred<'_> {
    unsafe fn read(&mut self, fd: RawFd, offset: u64, buf: *mut u8, len: u32, token: u64) {
        self.0.push(StorageReq::Read { fd, offset, buf, len, token });
    }
    unsafe fn write(&mut self, fd: RawFd, offset: u64, buf: *const u8, len: u32, token: u64) {
        self.0.push(StorageReq::Write { fd, offset, buf, len, token });
    }
    fn fsync(&mut self, fd: RawFd, datasync: bool, token: u64) {
        self.0.push(StorageReq::Fsync { fd, datasync, token });
    }
}

struct QueueHandler {
    q: Queue,
    /// Storage requests made during a callback, submitted right after it.
    pending: Vec<StorageReq>,
    connections: Arc<AtomicUsize>,
    peer: SocketAddr,
}

/// Monotonic µs since the first call (latency histograms; only read when
/// metrics are on: one vDSO clock read per callback).
fn clock_us() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(std::time::Instant::now).elapsed().as_micros() as u64
}

fn flow(f: QueueFlow) -> Flow {
    match f {
        QueueFlow::Continue => Flow::Continue,
        QueueFlow::CloseAfterFlush => Flow::CloseAfterFlush,
        QueueFlow::CloseNow => Flow::CloseNow,
    }
}

impl QueueHandler {
    /// Splice the read data the queue lent (static, unchanging) into the output.
    fn send_lent(&mut self, io: &mut ConnIo<'_>) {
        for (at, data) in self.q.take_lent() {
            // SAFETY: the data is 'static and never written (Backend::read_static).
            unsafe { io.send_borrowed_at(at, data.as_ptr(), data.len(), 0) };
        }
    }

    fn submit_pending(&mut self, io: &mut ConnIo<'_>) {
        for r in self.pending.drain(..) {
            // SAFETY: the buffers belong to queue slots that stay in the
            // storage stage (untouched) until on_storage for the token.
            unsafe {
                match r {
                    StorageReq::Read { fd, offset, buf, len, token } => io.submit_read(fd, offset, buf, len, token),
                    StorageReq::Write { fd, offset, buf, len, token } => io.submit_write(fd, offset, buf, len, token),
                    StorageReq::Fsync { fd, datasync, token } => io.submit_fsync(fd, datasync, token),
                }
            }
        }
    }
}

impl Handler for QueueHandler {
    fn on_recv(&mut self, io: &mut ConnIo<'_>) -> Flow {
        let now = io.now_ms();
        if self.q.wants_time_us() {
            self.q.set_now_us(clock_us());
        }
        // Borrow juggling: the output Vec is moved out of the engine for the
        // call (no copy) because `rx` borrows `io`.
        let mut out = std::mem::take(io.tx());
        let (n, f) = self.q.on_recv(io.rx(), now, &mut out, &mut Deferred(&mut self.pending));
        *io.tx() = out;
        io.consume(n);
        self.send_lent(io);
        self.submit_pending(io);
        flow(f)
    }

    fn on_storage(&mut self, io: &mut ConnIo<'_>, token: u64, result: i32) -> Flow {
        let now = io.now_ms();
        if self.q.wants_time_us() {
            self.q.set_now_us(clock_us());
        }
        let mut out = std::mem::take(io.tx());
        let f = self.q.on_storage(token, result, now, &mut out, &mut Deferred(&mut self.pending));
        *io.tx() = out;
        self.send_lent(io);
        self.submit_pending(io);
        flow(f)
    }

    fn on_tick(&mut self, io: &mut ConnIo<'_>) -> Flow {
        let now = io.now_ms();
        let f = self.q.on_tick(now, io.tx());
        self.send_lent(io);
        flow(f)
    }

    fn on_closed(&mut self, reason: CloseReason) {
        match self.q.ids() {
            Some((cntlid, qid)) => {
                tracing::info!(peer = %self.peer, "ctrl {cntlid} queue {qid}: connection closed ({reason:?})")
            }
            None => tracing::info!(peer = %self.peer, "connection closed before Connect ({reason:?})"),
        }
        self.q.on_closed();
        self.connections.fetch_sub(1, Ordering::AcqRel);
    }

    fn on_shutdown(&mut self, io: &mut ConnIo<'_>) -> Flow {
        let f = self.q.on_shutdown(io.tx());
        self.send_lent(io);
        flow(f)
    }
}
