//! The host's sans-IO queue against the target's, in memory, on a virtual
//! clock (as quinn-proto's test `Pair`): `HostQueue` ↔ target `Queue` ↔ a RAM
//! namespace. Bytes cross in segments of a chosen size; time only moves when
//! the test moves it, so keep-alive, timeouts and R2T flows are tested without
//! sleeping and every run is the same.

use std::sync::Arc;

use nvmf_host::queue::{Completion, Fate, HostQueue, QueueConfig, Request};
use nvmf_proto::fabrics::{cc, csts, prop, ConnectCmd, ConnectData, PropertyCmd, CATTR_DISABLE_SQ_FLOW_CONTROL};
use nvmf_proto::opcodes::{admin as adm, io as iop};
use nvmf_proto::Sqe;
use nvmf_target::testing::{test_target, Driven, TEST_NQN};
use nvmf_target::Target;

const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:0000000a-0000-0000-0000-00000000000b";

/// One queue pair and the virtual clock they share.
struct Pair {
    host: HostQueue,
    target: Driven,
    now_ms: u64,
    /// Bytes per "segment" carried in each direction per step.
    segment_bytes: usize,
    /// Host bytes the target has not taken yet, and the reverse.
    to_host: Vec<u8>,
}

impl Pair {
    fn new(target: Arc<Target>, cfg: QueueConfig, segment_bytes: usize) -> Pair {
        Pair { host: HostQueue::new(cfg), target: Driven::new(target), now_ms: 0, segment_bytes, to_host: Vec::new() }
    }

    /// Move bytes both ways until nothing moves.
    fn settle(&mut self) {
        for _ in 0..1_000_000 {
            let mut moved = false;
            let out = self.host.output().to_vec();
            if !out.is_empty() {
                self.host.clear_output();
                for seg in out.chunks(self.segment_bytes) {
                    self.target.recv(seg);
                }
                moved = true;
            }
            let t = self.target.take_out();
            if !t.is_empty() {
                self.to_host.extend_from_slice(&t);
                moved = true;
            }
            while !self.to_host.is_empty() && self.host.error().is_none() {
                let n = self.to_host.len().min(self.segment_bytes);
                // The host parses whole PDUs from what it has buffered.
                let used = self.host.receive(&self.to_host[..]).unwrap_or(0);
                if used == 0 && n == self.to_host.len() {
                    break;
                }
                self.to_host.drain(..used);
                if used == 0 {
                    break;
                }
            }
            if self.target.closed.is_some() && self.host.error().is_none() {
                let _ = self.host.fail("connection closed by the target");
            }
            if !moved {
                return;
            }
        }
        panic!("the pair does not settle");
    }

    fn submit(&mut self, req: Request) -> u16 {
        let cid = self.host.submit(req, self.now_ms).expect("submit");
        self.settle();
        cid
    }

    fn complete(&mut self, req: Request) -> Completion {
        let cid = self.submit(req);
        let c = self.host.pop_completion().unwrap_or_else(|| panic!("command {cid} did not complete"));
        assert_eq!(c.cid, cid);
        c
    }

    /// Move both clocks to `now_ms`, delivering the target's deadlines and
    /// the host's command timeouts on the way.
    fn advance_to(&mut self, now_ms: u64) {
        self.target.advance_to(now_ms * 1000);
        self.now_ms = now_ms;
        let mut expired = Vec::new();
        self.host.on_tick(now_ms, &mut expired);
        self.settle();
    }
}

fn connect_req(qid: u16, cntlid: u16, kato_ms: u32, sqsize: u16) -> Request {
    let c = ConnectCmd { recfmt: 0, qid, sqsize, cattr: CATTR_DISABLE_SQ_FLOW_CONTROL, kato_ms };
    let d = ConnectData { hostid: [7; 16], cntlid, subnqn: TEST_NQN.into(), hostnqn: HOST.into() };
    Request::write(c.to_sqe(0), d.encode().to_vec())
}

/// ICReq/ICResp, admin Connect, CC.EN = 1: returns the pair and the CNTLID.
fn admin_pair(target: &Arc<Target>, kato_ms: u32, segment_bytes: usize) -> (Pair, u16) {
    let mut p = Pair::new(target.clone(), QueueConfig::admin(), segment_bytes);
    p.settle();
    assert!(p.host.is_ready(), "ICResp received");
    let c = p.complete(connect_req(0, 0xffff, kato_ms, 31));
    assert!(c.is_success(), "connect: {}", c.status());
    let cntlid = c.cqe.dw0 as u16;
    let en = p.complete(Request::new(PropertyCmd::set_sqe(0, prop::CC, false, cc::LINUX_ENABLE as u64)));
    assert!(en.is_success());
    (p, cntlid)
}

fn io_pair(target: &Arc<Target>, cntlid: u16, cfg: QueueConfig, segment_bytes: usize) -> Pair {
    let mut p = Pair::new(target.clone(), cfg, segment_bytes);
    p.settle();
    let c = p.complete(connect_req(1, cntlid, 0, 63));
    assert!(c.is_success(), "I/O connect: {}", c.status());
    p
}

#[test]
fn bring_up_and_identify() {
    let t = test_target();
    let (mut a, _) = admin_pair(&t, 0, 1500);
    let mut id = Sqe::new(adm::IDENTIFY, 0, 0);
    id.cdw10 = 1;
    let c = a.complete(Request::read(id, vec![0; 4096]));
    assert!(c.is_success());
    let subnqn = String::from_utf8_lossy(&c.buf[768..768 + TEST_NQN.len()]).to_string();
    assert_eq!(subnqn, TEST_NQN);
    let st = a.complete(Request::new(PropertyCmd::get_sqe(0, prop::CSTS, false)));
    assert_eq!(st.cqe.dw0 & csts::RDY, csts::RDY);
}

#[test]
fn keep_alive_holds_the_controller_and_its_absence_ends_it() {
    let t = test_target();
    let (mut a, _) = admin_pair(&t, 2000, 4096);
    // Keep Alive every KATO/2 for a virtual minute: the controller lives.
    let mut now = 0;
    while now < 60_000 {
        now += 1000;
        a.advance_to(now);
        let c = a.complete(Request::new(Sqe::new(adm::KEEP_ALIVE, 0, 0)));
        assert!(c.is_success(), "keep alive at {now} ms");
    }
    // Silence: the target tears the controller down after KATO × 1.5.
    a.advance_to(now + 2999);
    assert!(a.host.error().is_none(), "still within the grace");
    a.advance_to(now + 3001);
    assert!(a.target.closed.is_some(), "keep-alive expired");
    assert!(a.host.error().is_some(), "the host sees the connection end");
    assert_eq!(t.keep_alive_expiries.load(std::sync::atomic::Ordering::Relaxed), 1);
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2654435761).wrapping_add(seed as u32).to_le_bytes()[1]).collect()
}

#[test]
fn r2t_writes_and_reads_round_trip_over_small_segments_with_digests() {
    let t = test_target();
    let (_a, cntlid) = admin_pair(&t, 0, 1500);
    for (hd, dd, seg) in [(false, false, 1500), (true, true, 1500), (true, true, 9000), (false, true, 1)] {
        let mut cfg = QueueConfig::io(1, 64);
        cfg.hdr_digest = hd;
        cfg.data_digest = dd;
        let mut q = io_pair(&t, cntlid, cfg, seg);
        let len = if seg == 1 { 16 * 1024 } else { 256 * 1024 };
        let data = pattern(len, seg as u8);
        let w = q.complete(Request::write(Sqe::rw(iop::WRITE, 0, 1, 64, (len / 512) as u32), data.clone()));
        assert!(w.is_success(), "write: {}", w.status());
        let r = q.complete(Request::read(Sqe::rw(iop::READ, 0, 1, 64, (len / 512) as u32), vec![0; len]));
        assert!(r.is_success(), "read: {}", r.status());
        assert!(r.buf == data, "data round trip (hd {hd}, dd {dd}, segment {seg})");
        q.target.close();
    }
}

#[test]
fn a_lost_connection_completes_outstanding_commands_once_with_unknown_fate() {
    let t = test_target();
    let (_a, cntlid) = admin_pair(&t, 0, 4096);
    let mut q = io_pair(&t, cntlid, QueueConfig::io(1, 64), 4096);
    // A write handed to the transport; the connection dies before an answer.
    let cid = q.host.submit(Request::write(Sqe::rw(iop::WRITE, 0, 1, 0, 256), vec![1; 128 * 1024]), 0).unwrap();
    q.host.clear_output();
    let _ = q.host.fail("connection lost");
    let c = q.host.pop_completion().expect("completed once");
    assert_eq!((c.cid, c.fate), (cid, Fate::Unknown));
    assert!(q.host.pop_completion().is_none(), "exactly once");
}

#[test]
fn r2t_data_that_stops_coming_closes_the_queue_on_time() {
    let t = test_target();
    let (_a, cntlid) = admin_pair(&t, 0, 4096);
    let mut q = io_pair(&t, cntlid, QueueConfig::io(1, 64), 4096);
    let start = q.now_ms;
    // The command reaches the target; the host's H2CData is lost on the way.
    q.host.submit(Request::write(Sqe::rw(iop::WRITE, 0, 1, 0, 256), vec![1; 128 * 1024]), start).unwrap();
    let cmd = q.host.output().to_vec();
    q.host.clear_output();
    q.target.recv(&cmd);
    let r2t = q.target.take_out();
    assert!(!r2t.is_empty(), "the target asked for the data");
    let _ = q.host.receive(&r2t);
    q.host.clear_output(); // the data never leaves the host
    q.advance_to(start + 29_999);
    assert!(q.target.closed.is_none());
    q.advance_to(start + 30_000);
    assert!(q.target.closed.is_some(), "data_timeout_ms bounds the wait");
}
