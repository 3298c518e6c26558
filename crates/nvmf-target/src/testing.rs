//! Test and fuzz support: a minimal RAM backend, a recording [`StorageIo`],
//! and the [`fuzz_queue_input`] entry point.
//!
//! The production backends live in [`crate::backend`]; this one exists so the
//! protocol core can be exercised without them.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use crate::backend::Backend;
use crate::config::{NamespaceConfig, SubsystemConfig, TargetConfig};
use crate::subsys::{Port, Target};
use crate::transport::{Queue, StorageIo};

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
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("MiB") {
        (n, 1 << 20)
    } else if let Some(n) = s.strip_suffix("KiB") {
        (n, 1 << 10)
    } else {
        (s, 1)
    };
    num.trim().parse::<u64>().ok().map(|v| v * mult)
}

/// Records storage requests instead of performing them.
#[derive(Default)]
pub struct RecordingStorage {
    pub requests: Vec<(u8, RawFd, u64, u32, u64)>,
}

impl StorageIo for RecordingStorage {
    unsafe fn read(&mut self, fd: RawFd, offset: u64, _buf: *mut u8, len: u32, token: u64) {
        self.requests.push((b'r', fd, offset, len, token));
    }
    unsafe fn write(&mut self, fd: RawFd, offset: u64, _buf: *const u8, len: u32, token: u64) {
        self.requests.push((b'w', fd, offset, len, token));
    }
    fn fsync(&mut self, fd: RawFd, _datasync: bool, token: u64) {
        self.requests.push((b'f', fd, 0, 0, token));
    }
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
        }],
        discovery: Default::default(),
        subsystems: Vec::new(),
    }
}

/// A fresh queue on `target` as if accepted on 127.0.0.1:4420.
pub fn test_queue(target: Arc<Target>) -> Queue {
    let local: SocketAddr = "127.0.0.1:4420".parse().unwrap();
    let peer: SocketAddr = "127.0.0.1:50000".parse().unwrap();
    let port = Port { port_id: 1, addr: local, subsystems: Vec::new(), discovery_only: false };
    Queue::new(target, Arc::new(port), local, peer)
}

/// Lent read data must point inside the output, in order (what the engine
/// asserts in `send_borrowed_at`).
fn check_lent(q: &mut Queue, out: &[u8]) {
    let mut last = 0;
    for (at, data) in q.take_lent() {
        assert!(at >= last && at <= out.len(), "lent data out of order or past the output");
        assert!(!data.is_empty());
        last = at;
    }
}

/// Host NQN the fuzz prefaces connect with.
const FUZZ_HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-00000000f022";

/// Fuzz entry point: feed arbitrary bytes to a fresh queue state machine, in
/// a few chunkings, and tick it. Must never panic, hang or allocate without bound.
///
/// The first byte picks a preface so that fuzzing reaches deep states:
/// `b % 3 == 0` raw bytes from the first one; `1` an admin queue already
/// connected and enabled; `2` an I/O queue (qid 1) already connected.
/// Bits 2..3 pick header/data digests for the prefaces.
pub fn fuzz_queue_input(bytes: &[u8]) {
    use nvmf_proto::fabrics::{cc, prop, ConnectCmd, ConnectData, PropertyCmd, CATTR_DISABLE_SQ_FLOW_CONTROL};
    use nvmf_proto::pdu::{encode_capsule_cmd, encode_ic_req, IcReq, TxConfig};

    static TARGET: std::sync::OnceLock<Arc<Target>> = std::sync::OnceLock::new();
    let target = TARGET.get_or_init(test_target).clone();
    let (mode, dg, body) = match bytes.split_first() {
        Some((b, rest)) => (b % 3, (b >> 2) & 3, rest),
        None => (0, 0, bytes),
    };
    for chunk in [usize::MAX, 1, 7, 64] {
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
        let mut q = test_queue(target.clone());
        let mut storage = RecordingStorage::default();
        let mut out = Vec::new();
        let mut rx: Vec<u8> = preface;
        let (n, _) = q.on_recv(&rx, 0, &mut out, &mut storage);
        check_lent(&mut q, &out);
        rx.drain(..n);
        let mut fed = 0;
        let mut now = 1;
        while fed < body.len() {
            let n = chunk.min(body.len() - fed);
            rx.extend_from_slice(&body[fed..fed + n]);
            fed += n;
            let (consumed, flow) = q.on_recv(&rx, now, &mut out, &mut storage);
            assert!(consumed <= rx.len());
            check_lent(&mut q, &out);
            rx.drain(..consumed);
            now += 1;
            let _ = q.on_tick(now, &mut out);
            check_lent(&mut q, &out);
            out.clear();
            if flow != crate::transport::QueueFlow::Continue {
                break;
            }
        }
        q.on_closed();
        if let Some(c) = ctrl {
            c.kill("fuzz run over");
            target.release_controller(&c);
        }
    }
}
