//! Thin glue between the sans-IO [`Queue`] and the io_uring engine: builds the
//! [`Target`], starts [`nvmf_engine::Engine`], listens on every I/O and
//! discovery listener, and adapts engine callbacks to queue calls.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nvmf_engine::{
    parse_core_list, CloseReason, ConnInfo, ConnIo, CoreStats, Engine, EngineConfig, EngineError, Flow, Handler,
    HandlerFactory, ListenerId, Mode, Wakeup,
};

use crate::action::{Action, StorageKind};
use crate::config::TargetConfig;
use crate::ctrl::QueueWaker;
use crate::driver::apply_control;
use crate::subsys::{BackendOpener, Port, RegistryError, Target};
use crate::tcp::{Queue, QueueFlow};

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
    #[error("TLS: {0}")]
    Tls(#[from] nvmf_engine::nvmf_tls::TlsError),
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
    housekeeping: Option<Housekeeping>,
    target: Arc<Target>,
    /// Changed at runtime by management (add/remove listener).
    listeners: Mutex<Vec<(ListenerId, Port)>>,
    /// The TLS server side shared by the listeners that allow TLS.
    tls: Arc<nvmf_engine::nvmf_tls::ServerConfig>,
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
        let factory = Arc::new(QueueFactory { target: self.target.clone(), port: port.clone() });
        let id = engine
            .listen_tls(port.addr, factory, crate::tls::listener_tls(port.tls, &self.tls))
            .map_err(|err| ServeError::Listen { addr: port.addr.to_string(), err })?;
        port.addr = id.local_addr();
        tracing::info!(
            "listening on {} (added at runtime, port id {}, tls {})",
            port.addr,
            port.port_id,
            port.tls.name()
        );
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
            connections: self.engine.as_ref().map(|e| e.connection_counts().open).unwrap_or(0),
            controllers: self.target.controller_count(),
            cores: self.engine.as_ref().map(|e| e.stats()).unwrap_or_default(),
        }
    }
    /// Stop accepting, let queues finish in-flight work, close everything.
    pub fn shutdown(mut self, timeout: Duration) {
        self.housekeeping.take();
        if let Some(e) = self.engine.take() {
            tracing::info!("target shutting down ({} connections)", e.connection_counts().open);
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
    let cores = if cfg.engine.cores.trim().is_empty() { Vec::new() } else { parse_core_list(&cfg.engine.cores)? };
    let mode: Mode = cfg.engine.mode.parse()?;
    let ecfg = EngineConfig {
        cores,
        mode,
        // Every connection starts small; larger PDUs borrow from the core's
        // pool while they need it (rx_reserve).
        // Every connection starts small; a PDU that needs more borrows a
        // large buffer from the core's pool for as long as it is arriving.
        recv_buf_bytes: crate::limits::RECV_BUF_SMALL_BYTES,
        recv_buf_large_bytes: (crate::tcp::QueueLimits::from_target(&target).pdu_len_max() as usize + 4096)
            .max(EngineConfig::default().recv_buf_large_bytes),
        connections_max: cfg.limits.connections_max as usize,
        unestablished_max: cfg.limits.connections_unestablished_max as usize,
        poll_direct_recv_conns_max: cfg.engine.poll_direct_recv_conns_max,
        ..EngineConfig::default()
    };
    let engine = Engine::start(ecfg)?;
    let mut server = Server {
        engine: None,
        housekeeping: Some(Housekeeping::start(target.clone())),
        target: target.clone(),
        listeners: Mutex::new(Vec::new()),
        tls: crate::tls::server_config(&target)?,
    };
    let mut specs: Vec<(String, Port)> = Vec::new();
    for (i, l) in cfg.listeners.iter().enumerate() {
        let addr = l.addr.parse().map_err(|_| ServeError::BadAddress(l.addr.clone()))?;
        let port_id = l.port_id.unwrap_or(i as u16 + 1);
        specs.push((
            l.addr.clone(),
            Port { port_id, addr, subsystems: l.subsystems.clone(), discovery_only: false, tls: l.tls },
        ));
    }
    let disc_ids = cfg.discovery_port_ids();
    for (i, a) in cfg.discovery.listen.iter().enumerate() {
        let addr = a.parse().map_err(|_| ServeError::BadAddress(a.clone()))?;
        let port_id = disc_ids.get(i).copied().unwrap_or(i as u16 + 1);
        specs.push((
            a.clone(),
            Port { port_id, addr, subsystems: Vec::new(), discovery_only: true, tls: Default::default() },
        ));
    }
    for (text, mut port) in specs {
        let factory = Arc::new(QueueFactory { target: target.clone(), port: port.clone() });
        let id = engine
            .listen_tls(port.addr, factory, crate::tls::listener_tls(port.tls, &server.tls))
            .map_err(|err| ServeError::Listen { addr: text, err })?;
        port.addr = id.local_addr();
        tracing::info!(
            "listening on {} ({}, port id {}, tls {})",
            port.addr,
            if port.discovery_only { "discovery" } else { "I/O and discovery" },
            port.port_id,
            port.tls.name()
        );
        target.add_port(port.clone());
        server.listeners.get_mut().unwrap().push((id, port));
    }
    server.engine = Some(engine);
    Ok(server)
}

/// A control-plane thread that gives freed heap memory back to the system
/// after a wave of connections has closed (glibc keeps freed small blocks in
/// its arenas otherwise). It runs `malloc_trim` only when the number of open
/// queues fell well below its peak, at most every [`TRIM_INTERVAL_MS`]: off
/// the data cores, and never while connections are steady.
struct Housekeeping {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Shortest time between two trims.
const TRIM_INTERVAL_MS: u64 = 2000;
/// A trim needs the open queues to have fallen by at least this many.
const TRIM_AFTER_CLOSED_MIN: usize = 256;

impl Housekeeping {
    fn start(target: Arc<Target>) -> Housekeeping {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let target = Arc::downgrade(&target);
        let thread = std::thread::Builder::new()
            .name("nvmf-housekeeping".into())
            .spawn(move || {
                let mut peak = 0usize;
                let mut last = std::time::Instant::now();
                while !s2.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(200));
                    let Some(t) = target.upgrade() else { return };
                    let open = t.queues_open.load(Ordering::Relaxed);
                    peak = peak.max(open);
                    if peak >= open + TRIM_AFTER_CLOSED_MIN
                        && open <= peak / 2
                        && last.elapsed() >= Duration::from_millis(TRIM_INTERVAL_MS)
                    {
                        // SAFETY: malloc_trim has no preconditions.
                        unsafe { libc::malloc_trim(0) };
                        tracing::debug!("heap trimmed after {} queues closed", peak - open);
                        peak = open;
                        last = std::time::Instant::now();
                    }
                }
            })
            .ok();
        Housekeeping { stop, thread }
    }
}

impl Drop for Housekeeping {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct QueueFactory {
    target: Arc<Target>,
    port: Port,
}

impl HandlerFactory for QueueFactory {
    fn create(&self, info: &ConnInfo) -> Option<Box<dyn Handler>> {
        // The current export list: management may have changed it since.
        let mut port = self.port.clone();
        if let Some(p) = self.target.ports().into_iter().find(|p| p.port_id == port.port_id) {
            port.subsystems = p.subsystems;
        }
        if port.addr.port() == 0 {
            port.addr.set_port(info.local.port());
        }
        tracing::debug!(peer = %info.peer, local = %info.local, core = info.core, "connection accepted");
        // The clock starts at the first callback (`on_tick` at registration).
        self.target.queues_open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let q = Queue::new(self.target.clone(), Arc::new(port), info.local, info.peer, 0);
        Some(Box::new(QueueHandler {
            q,
            target: self.target.clone(),
            peer: info.peer,
            waker: None,
            started: false,
            tls_checked: false,
        }))
    }
}

/// The engine's connection waker, as the controller sees it.
struct EngineWaker(nvmf_engine::ConnWaker);

impl QueueWaker for EngineWaker {
    fn wake(&self) {
        self.0.wake();
    }
}

struct QueueHandler {
    q: Queue,
    target: Arc<Target>,
    peer: SocketAddr,
    waker: Option<Arc<dyn QueueWaker>>,
    /// The queue's clock was set (first callback).
    started: bool,
    /// The connection's TLS identity was passed to the queue (first bytes).
    tls_checked: bool,
}

fn flow(f: QueueFlow) -> Flow {
    match f {
        QueueFlow::Continue => Flow::Continue,
        QueueFlow::CloseAfterFlush => Flow::CloseAfterFlush,
        QueueFlow::CloseNow => Flow::CloseNow,
    }
}

/// The more urgent of two flows.
fn worse(a: QueueFlow, b: QueueFlow) -> QueueFlow {
    match (a, b) {
        (QueueFlow::CloseNow, _) | (_, QueueFlow::CloseNow) => QueueFlow::CloseNow,
        (QueueFlow::CloseAfterFlush, _) | (_, QueueFlow::CloseAfterFlush) => QueueFlow::CloseAfterFlush,
        _ => QueueFlow::Continue,
    }
}

impl QueueHandler {
    fn start(&mut self, io: &ConnIo<'_>) {
        if !self.started {
            self.started = true;
            self.q.on_start(io.now_us());
        }
    }

    /// After every queue call: splice lent read data into the output, run
    /// the queue's actions, and return the flow.
    fn after(&mut self, io: &mut ConnIo<'_>, f: QueueFlow) -> Flow {
        let mut f = f;
        loop {
            for (at, data) in self.q.take_lent() {
                // SAFETY: the data is 'static and never written (Backend::read_static).
                unsafe { io.send_borrowed_at(at, data.as_ptr(), data.len(), 0) };
            }
            let actions: Vec<Action> = self.q.take_actions().collect();
            if actions.is_empty() {
                break;
            }
            for a in actions {
                match a {
                    Action::Storage(op) => submit_storage(io, op),
                    other => {
                        let target = self.target.clone();
                        let waker = self.waker.get_or_insert_with(|| Arc::new(EngineWaker(io.waker()))).clone();
                        let mut out = std::mem::take(io.tx());
                        let r = apply_control(&target, &mut self.q, other, &|| waker.clone(), io.now_us(), &mut out);
                        *io.tx() = out;
                        if r.established {
                            io.set_established();
                        }
                        // A Connect answered: read what the host sent after it.
                        if !self.q.input_paused() && !io.rx().is_empty() {
                            io.request_recv_callback();
                        }
                        f = worse(f, self.q.flow());
                    }
                }
            }
        }
        flow(f)
    }
}

/// Submit one storage operation to the core's ring.
fn submit_storage(io: &mut ConnIo<'_>, op: crate::action::StorageOp) {
    // SAFETY: buffers belong to queue slots (or are static zeros) that stay
    // untouched until on_storage for the token (the queue never frees a
    // slot with an operation in flight, and the engine keeps the handler
    // alive while storage operations run).
    unsafe {
        match op.kind {
            StorageKind::Read { offset, buf, len } => io.submit_read(op.fd, offset, buf, len, op.token),
            StorageKind::Write { offset, buf, len } => io.submit_write(op.fd, offset, buf, len, op.token),
            StorageKind::Fsync { datasync } => io.submit_fsync(op.fd, datasync, op.token),
            StorageKind::Fallocate { mode, offset, len } => io.submit_fallocate(op.fd, mode, offset, len, op.token),
            StorageKind::Discard { offset, len } => io.submit_discard(op.fd, offset, len, op.token),
        }
    }
}

impl Handler for QueueHandler {
    fn on_recv(&mut self, io: &mut ConnIo<'_>) -> Flow {
        self.start(io);
        if !self.tls_checked {
            // The engine finished any TLS handshake before the first byte.
            self.tls_checked = true;
            if let Some(t) = io.tls() {
                self.q.set_tls_identity(&t.identity);
            }
        }
        let now = io.now_us();
        // Borrow juggling: the output Vec is moved out of the engine for the
        // call (no copy) because `rx` borrows `io`.
        let mut out = std::mem::take(io.tx());
        let (n, f) = self.q.on_recv(io.rx(), now, &mut out);
        *io.tx() = out;
        io.consume(n);
        let want = self.q.rx_wanted();
        if want > io.rx_capacity() {
            io.rx_reserve(want);
        }
        self.after(io, f)
    }

    fn on_storage(&mut self, io: &mut ConnIo<'_>, token: u64, result: i32) -> Flow {
        let mut out = std::mem::take(io.tx());
        let f = self.q.on_storage(token, result, io.now_us(), &mut out);
        *io.tx() = out;
        self.after(io, f)
    }

    fn on_tick(&mut self, io: &mut ConnIo<'_>) -> Flow {
        self.start(io);
        let now = io.now_us();
        if self.q.next_deadline_us().is_some_and(|d| d <= now) {
            let mut out = std::mem::take(io.tx());
            let f = self.q.on_timeout(now, &mut out);
            *io.tx() = out;
            return self.after(io, f);
        }
        Flow::Continue
    }

    fn next_wakeup(&self) -> Wakeup {
        if !self.started {
            return Wakeup::EveryTick;
        }
        // The engine's clock is in ms; round up so the deadline has passed.
        match self.q.next_deadline_us() {
            Some(us) => Wakeup::At(us.div_ceil(1000)),
            None => Wakeup::Never,
        }
    }

    fn on_wake(&mut self, io: &mut ConnIo<'_>) -> Flow {
        let mut out = std::mem::take(io.tx());
        let f = self.q.on_wake(io.now_us(), &mut out);
        *io.tx() = out;
        self.after(io, f)
    }

    fn recv_sink(&mut self) -> Option<&mut [u8]> {
        self.q.recv_sink()
    }

    fn on_sink_recv(&mut self, io: &mut ConnIo<'_>, n: usize) -> Flow {
        let mut out = std::mem::take(io.tx());
        self.q.on_sink_recv(n, io.now_us(), &mut out);
        *io.tx() = out;
        let f = self.q.flow();
        self.after(io, f)
    }

    fn on_closed(&mut self, reason: CloseReason) {
        match self.q.ids() {
            Some((cntlid, qid)) => {
                tracing::info!(peer = %self.peer, "ctrl {cntlid} queue {qid}: connection closed ({reason:?})")
            }
            None => tracing::debug!(peer = %self.peer, "connection closed before Connect ({reason:?})"),
        }
        self.q.on_closed();
        self.target.queues_open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let actions: Vec<Action> = self.q.take_actions().collect();
        let waker: Arc<dyn QueueWaker> = self.waker.clone().unwrap_or_else(|| Arc::new(NoWaker));
        for a in actions {
            if matches!(a, Action::Storage(_)) {
                continue;
            }
            let target = self.target.clone();
            let mut out = Vec::new();
            apply_control(&target, &mut self.q, a, &|| waker.clone(), 0, &mut out);
        }
    }

    fn on_shutdown(&mut self, io: &mut ConnIo<'_>) -> Flow {
        let mut out = std::mem::take(io.tx());
        let f = self.q.on_shutdown(&mut out);
        *io.tx() = out;
        self.after(io, f)
    }
}

/// For a queue that never registered one (closed before Connect).
struct NoWaker;
impl QueueWaker for NoWaker {
    fn wake(&self) {}
}
