//! Test and fuzz support: a minimal RAM backend, a [`Driven`] queue (the
//! driver's job done in memory, with a virtual clock), a synchronous storage
//! executor, and the [`fuzz_queue_input`] entry point.
//!
//! The production backends live in [`crate::backend`]; this one exists so the
//! protocol core can be exercised without them.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::action::{Action, StorageKind, StorageOp};
use crate::backend::Backend;
use crate::config::{NamespaceConfig, SubsystemConfig, TargetConfig};
use crate::ctrl::QueueWaker;
use crate::driver::apply_control;
use crate::subsys::{Port, Target};
use crate::tcp::{Queue, QueueFlow};

/// A RAM namespace behind a mutex (tests only: simple, not fast).
pub struct TestRam {
    data: Mutex<Vec<u8>>,
}

impl TestRam {
    pub fn new(size_bytes: usize) -> Arc<TestRam> {
        Arc::new(TestRam { data: Mutex::new(vec![0; size_bytes]) })
    }
}

impl Backend for TestRam {
    fn kind(&self) -> &'static str {
        "ram"
    }
    fn size_bytes(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }
    fn read_sync(&self, offset: u64, dst: &mut [u8]) -> Option<io::Result<()>> {
        let d = self.data.lock().unwrap();
        let o = offset as usize;
        dst.copy_from_slice(&d[o..o + dst.len()]);
        Some(Ok(()))
    }
    fn write_sync(&self, offset: u64, src: &[u8]) -> Option<io::Result<()>> {
        let mut d = self.data.lock().unwrap();
        let o = offset as usize;
        d[o..o + src.len()].copy_from_slice(src);
        Some(Ok(()))
    }
    fn fd(&self) -> Option<RawFd> {
        None
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut d = self.data.lock().unwrap();
        d[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }
    fn deallocate(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len)
    }
    fn flush_sync(&self) -> io::Result<()> {
        Ok(())
    }
    fn resize(&self, new_size_bytes: u64) -> io::Result<()> {
        self.data.lock().unwrap().resize(new_size_bytes as usize, 0);
        Ok(())
    }
}

/// Opener for tests: every namespace is a [`TestRam`] of its `size` (MiB
/// suffixes "MiB"/"KiB" understood; default 1 MiB).
pub fn test_opener(n: &NamespaceConfig) -> io::Result<Arc<dyn Backend>> {
    let size = n.size.as_deref().map(parse_size).unwrap_or(Some(1 << 20)).unwrap_or(1 << 20);
    Ok(TestRam::new(size as usize))
}

fn parse_size(s: &str) -> Option<u64> {
    nvmf_proto::size::parse_size(s).ok()
}

/// NQN of the subsystem [`test_target`] creates.
pub const TEST_NQN: &str = "nqn.2026-11.io.nvmf:test";

/// A target with one subsystem (any host) and one 1 MiB RAM namespace.
pub fn test_target() -> Arc<Target> {
    let cfg = TargetConfig {
        subsystems: vec![SubsystemConfig {
            nqn: TEST_NQN.into(),
            serial: None,
            model: None,
            allow_any_host: Some(true),
            allowed_hosts: Vec::new(),
            hosts: Vec::new(),
            io_queues_max: None,
            queue_depth_max: None,
            namespaces: vec![NamespaceConfig {
                nsid: Some(1),
                kind: "ram".into(),
                size: Some("1MiB".into()),
                path: None,
                block_size: Some(512),
                nguid: None,
                uuid: None,
                eui64: None,
                ana_group: None,
                hosts: Vec::new(),
            }],
        }],
        ..test_config_base()
    };
    Target::new(&cfg, &test_opener).expect("test target")
}

/// An empty configuration with default limits.
pub fn test_config_base() -> TargetConfig {
    TargetConfig {
        engine: Default::default(),
        limits: Default::default(),
        listeners: vec![crate::config::ListenerConfig {
            addr: "127.0.0.1:4420".into(),
            port_id: None,
            subsystems: Vec::new(),
            tls: Default::default(),
        }],
        discovery: Default::default(),
        subsystems: Vec::new(),
    }
}

/// A fresh queue on `target` as if accepted on 127.0.0.1:4420 at time 0.
pub fn test_queue(target: Arc<Target>) -> Queue {
    let local: SocketAddr = "127.0.0.1:4420".parse().unwrap();
    let peer: SocketAddr = "127.0.0.1:50000".parse().unwrap();
    let port = Port { port_id: 1, addr: local, subsystems: Vec::new(), discovery_only: false, tls: Default::default() };
    Queue::new(target, Arc::new(port), local, peer, 0)
}

/// Sets a flag; the harness calls `on_wake` when it finds it set.
#[derive(Default)]
pub struct FlagWaker(pub AtomicBool);

impl QueueWaker for FlagWaker {
    fn wake(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// How a [`Driven`] queue completes its storage operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageMode {
    /// Keep them in [`Driven::storage`] until the test completes them.
    Hold,
    /// Perform them at once with plain system calls ([`exec_storage_sync`]).
    Sync,
    /// Complete them at once as if they succeeded (fuzzing: no real I/O).
    Pretend,
}

/// A queue with the driver's work done in memory: bytes in, output collected,
/// actions executed (control actions through [`apply_control`], as in
/// production), wake-ups and deadlines delivered on a virtual clock.
pub struct Driven {
    pub q: Queue,
    pub target: Arc<Target>,
    /// Received bytes not yet consumed.
    pub rx: Vec<u8>,
    /// Output not yet taken by the test.
    pub out: Vec<u8>,
    pub now_us: u64,
    pub waker: Arc<FlagWaker>,
    pub storage_mode: StorageMode,
    /// Storage operations held ([`StorageMode::Hold`]).
    pub storage: Vec<StorageOp>,
    pub established: bool,
    /// The last flow other than Continue.
    pub closed: Option<QueueFlow>,
}

impl Driven {
    pub fn new(target: Arc<Target>) -> Driven {
        let q = test_queue(target.clone());
        Driven {
            q,
            target,
            rx: Vec::new(),
            out: Vec::new(),
            now_us: 0,
            waker: Arc::new(FlagWaker::default()),
            storage_mode: StorageMode::Sync,
            storage: Vec::new(),
            established: false,
            closed: None,
        }
    }

    fn note(&mut self, f: QueueFlow) {
        if f != QueueFlow::Continue && self.closed.is_none() {
            self.closed = Some(f);
        }
    }

    /// Deliver `bytes` (appended to what is buffered) and run everything that
    /// follows: actions, storage (as the mode says), wake-ups.
    pub fn recv(&mut self, bytes: &[u8]) -> QueueFlow {
        self.rx.extend_from_slice(bytes);
        self.pump();
        self.closed.unwrap_or(QueueFlow::Continue)
    }

    /// Parse what is buffered once, as the engine does when bytes arrive,
    /// and run what follows. Like the engine glue, parse again only when a
    /// Connect was answered while bytes after it wait.
    pub fn pump(&mut self) {
        loop {
            if self.closed.is_some() {
                self.take_lent_into_out();
                return;
            }
            let (n, f) = self.q.on_recv(&self.rx, self.now_us, &mut self.out);
            assert!(n <= self.rx.len());
            self.rx.drain(..n);
            self.note(f);
            let paused = self.q.input_paused();
            self.run_actions();
            self.deliver_wake();
            if !(paused && !self.q.input_paused() && !self.rx.is_empty()) {
                return;
            }
        }
    }

    /// Splice lent data into the output, as the engine sends it.
    fn take_lent_into_out(&mut self) {
        let lent: Vec<(usize, &'static [u8])> = self.q.take_lent().collect();
        let mut last = 0;
        for (k, (at, data)) in lent.iter().enumerate().rev() {
            assert!(*at <= self.out.len() && (k == 0 || lent[k - 1].0 <= *at), "lent data out of order");
            last = last.max(*at);
            self.out.splice(*at..*at, data.iter().copied());
        }
    }

    /// Run pending actions; returns whether there were any.
    pub fn run_actions(&mut self) -> bool {
        self.take_lent_into_out();
        let actions: Vec<Action> = self.q.take_actions().collect();
        let any = !actions.is_empty();
        for a in actions {
            match a {
                Action::Storage(op) => match self.storage_mode {
                    StorageMode::Hold => self.storage.push(op),
                    StorageMode::Sync => {
                        let r = exec_storage_sync(&op);
                        self.complete(op.token, r);
                    }
                    StorageMode::Pretend => {
                        let r = match op.kind {
                            StorageKind::Read { len, .. } | StorageKind::Write { len, .. } => len as i32,
                            _ => 0,
                        };
                        self.complete(op.token, r);
                    }
                },
                other => {
                    let w: Arc<dyn QueueWaker> = self.waker.clone();
                    let target = self.target.clone();
                    let r = apply_control(&target, &mut self.q, other, &|| w.clone(), self.now_us, &mut self.out);
                    self.established |= r.established;
                    self.note(self.q.flow());
                }
            }
        }
        if any {
            self.run_actions();
        }
        any
    }

    /// Complete a storage operation with `result`.
    pub fn complete(&mut self, token: u64, result: i32) {
        let f = self.q.on_storage(token, result, self.now_us, &mut self.out);
        self.note(f);
        self.run_actions();
    }

    /// Complete every held storage operation with `exec`.
    pub fn complete_held(&mut self, mut exec: impl FnMut(&StorageOp) -> i32) {
        while !self.storage.is_empty() {
            let ops = std::mem::take(&mut self.storage);
            for op in ops {
                let r = exec(&op);
                self.complete(op.token, r);
            }
        }
    }

    /// Call `on_wake` if the controller woke this queue.
    pub fn deliver_wake(&mut self) -> bool {
        if !self.waker.0.swap(false, Ordering::AcqRel) {
            return false;
        }
        let f = self.q.on_wake(self.now_us, &mut self.out);
        self.note(f);
        self.run_actions();
        true
    }

    /// Move the virtual clock to `now_us`, delivering every deadline on the way.
    pub fn advance_to(&mut self, now_us: u64) -> QueueFlow {
        assert!(now_us >= self.now_us, "the clock never goes back");
        while self.closed.is_none() {
            match self.q.next_deadline_us() {
                Some(d) if d <= now_us => {
                    self.now_us = self.now_us.max(d);
                    let f = self.q.on_timeout(self.now_us, &mut self.out);
                    self.note(f);
                    self.run_actions();
                }
                _ => break,
            }
        }
        self.now_us = now_us;
        self.closed.unwrap_or(QueueFlow::Continue)
    }

    /// Take the output produced so far.
    pub fn take_out(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// The connection is gone (as the engine reports it).
    pub fn close(&mut self) {
        self.q.on_closed();
        self.run_actions();
    }
}

/// Perform a storage operation with plain system calls; returns what
/// io_uring would (bytes or -errno). Discard is not available this way.
pub fn exec_storage_sync(op: &StorageOp) -> i32 {
    let r = match op.kind {
        // SAFETY: the queue keeps the buffer valid until the completion.
        StorageKind::Read { offset, buf, len } => unsafe {
            libc::pread(op.fd, buf as *mut libc::c_void, len as usize, offset as libc::off_t) as i64
        },
        // SAFETY: as above.
        StorageKind::Write { offset, buf, len } => unsafe {
            libc::pwrite(op.fd, buf as *const libc::c_void, len as usize, offset as libc::off_t) as i64
        },
        // SAFETY: plain syscalls on a descriptor the namespace keeps open.
        StorageKind::Fsync { datasync } => unsafe {
            (if datasync { libc::fdatasync(op.fd) } else { libc::fsync(op.fd) }) as i64
        },
        StorageKind::Fallocate { mode, offset, len } => unsafe {
            libc::fallocate(op.fd, mode, offset as libc::off_t, len as libc::off_t) as i64
        },
        StorageKind::Discard { .. } => return -libc::EOPNOTSUPP,
    };
    if r < 0 {
        -std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
    } else {
        r as i32
    }
}

/// Host NQN the fuzz prefaces connect with.
pub(crate) const FUZZ_HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-00000000f022";

/// The bytes [`fuzz_queue_input`] sends before the fuzz body, chosen by its
/// first byte `sel`: `sel % 3 == 0` none; `1` ICReq, admin Connect and CC
/// enable; `2` ICReq and an I/O-queue Connect (qid 1) to a controller made
/// here (returned: kill and release it with [`fuzz_release`] when done).
/// Bits 2..3 pick header/data digests.
pub(crate) fn fuzz_preface(target: &Arc<Target>, sel: u8) -> (Vec<u8>, Option<Arc<crate::ctrl::Controller>>) {
    use nvmf_proto::fabrics::{cc, prop, ConnectCmd, ConnectData, PropertyCmd, CATTR_DISABLE_SQ_FLOW_CONTROL};
    use nvmf_proto::pdu::{encode_capsule_cmd, encode_ic_req, IcReq, TxConfig};

    let (mode, dg) = (sel % 3, (sel >> 2) & 3);
    let mut preface = Vec::new();
    let mut ctrl = None;
    if mode != 0 {
        let tx = TxConfig { hdgst: dg & 1 != 0, ddgst: dg & 2 != 0, data_align: 4 };
        encode_ic_req(&mut preface, &IcReq { pfv: 0, hpda: 0, dgst: dg, maxr2t: 0 });
        let (qid, cntlid) = if mode == 1 {
            (0, nvmf_proto::fabrics::CNTLID_DYNAMIC)
        } else {
            let sub = target.subsystem(TEST_NQN).expect("test subsystem");
            let c = target
                .create_controller(crate::ctrl::CtrlKind::Io, Some(sub), FUZZ_HOST, [0; 16], 1)
                .expect("controller");
            c.set_state(crate::ctrl::CtrlState::Enabled);
            let id = c.cntlid;
            ctrl = Some(c);
            (1, id)
        };
        let c = ConnectCmd { recfmt: 0, qid, sqsize: 31, cattr: CATTR_DISABLE_SQ_FLOW_CONTROL, kato_ms: 0 };
        let d = ConnectData { hostid: [0; 16], cntlid, subnqn: TEST_NQN.into(), hostnqn: FUZZ_HOST.into() };
        encode_capsule_cmd(&mut preface, &c.to_sqe(0xfff0), &d.encode(), &tx);
        if mode == 1 {
            let en = PropertyCmd::set_sqe(0xfff1, prop::CC, false, cc::LINUX_ENABLE as u64);
            encode_capsule_cmd(&mut preface, &en, &[], &tx);
        }
    }
    (preface, ctrl)
}

/// Drop the controller [`fuzz_preface`] made.
pub(crate) fn fuzz_release(target: &Target, ctrl: Option<Arc<crate::ctrl::Controller>>) {
    if let Some(c) = ctrl {
        c.kill("fuzz run over");
        target.release_controller(&c);
    }
}

/// Fuzz entry point: feed arbitrary bytes to a fresh queue state machine, in
/// a few chunkings, and run its deadlines. Must never panic, hang or allocate
/// without bound.
///
/// The first byte picks a preface so that fuzzing reaches deep states (see
/// [`fuzz_preface`]): `b % 3 == 0` raw bytes from the first one; `1` an admin
/// queue already connected and enabled; `2` an I/O queue (qid 1) already
/// connected. Bits 2..3 pick header/data digests for the prefaces.
pub fn fuzz_queue_input(bytes: &[u8]) {
    static TARGET: std::sync::OnceLock<Arc<Target>> = std::sync::OnceLock::new();
    let target = TARGET.get_or_init(test_target).clone();
    let (sel, body) = match bytes.split_first() {
        Some((b, rest)) => (*b, rest),
        None => (0, bytes),
    };
    for chunk in [usize::MAX, 1, 7, 64] {
        let (preface, ctrl) = fuzz_preface(&target, sel);
        let mut d = Driven::new(target.clone());
        d.storage_mode = StorageMode::Pretend;
        d.recv(&preface);
        d.out.clear();
        let mut fed = 0;
        while fed < body.len() && d.closed.is_none() {
            let n = chunk.min(body.len() - fed);
            d.recv(&body[fed..fed + n]);
            fed += n;
            // A virtual second per chunk: deadlines fire without sleeping.
            let t = d.now_us + 1_000_000;
            d.advance_to(t);
            d.out.clear();
        }
        d.close();
        fuzz_release(&target, ctrl);
    }
}
