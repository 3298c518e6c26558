//! End-to-end tests of the perf engine against a tiny in-test NVMe/TCP
//! controller (RAM namespace, blocking thread per connection). It lets the
//! perf driver, admin bring-up and verify logic be tested without the real
//! target, and can misbehave on purpose (corrupt a read, drop a write) to
//! prove that `--verify` catches it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nvmf_host::perf::admin::AdminSession;
use nvmf_host::perf::{run, PerfConfig, RwPattern};
use nvmf_proto::fabrics::{self, Cap, PropertyCmd};
use nvmf_proto::features::num_queues_value;
use nvmf_proto::identify::{IdentifyController, IdentifyNamespace, LbaFormat};
use nvmf_proto::opcodes::{admin, cns, fctype, fid, io};
use nvmf_proto::pdu::{self, flags, DataHdr, IcResp, TxConfig};
use nvmf_proto::{Cqe, Decoded, FrameConfig, Pdu, Role, Status};

const NQN: &str = "nqn.2026-11.io.nvmf:perf-fake";
const LBA_BYTES: usize = 512;
const NS_BYTES: usize = 8 << 20;
const MAXH2CDATA: u32 = 16 << 10;

#[derive(Default)]
struct Faults {
    /// Flip a byte in the data of the read with this ordinal (1-based; 0 = never).
    corrupt_read_no: AtomicU64,
    /// Acknowledge but do not store any write to byte offset 0 after the first one.
    drop_rewrites_of_offset0: AtomicBool,
    offset0_written: AtomicBool,
    reads: AtomicU64,
    writes: AtomicU64,
}

struct Fake {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    faults: Arc<Faults>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn start_fake() -> Fake {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let faults = Arc::new(Faults::default());
    let storage = Arc::new(Mutex::new(vec![0u8; NS_BYTES]));
    let (s2, f2) = (stop.clone(), faults.clone());
    std::thread::spawn(move || {
        for c in l.incoming() {
            if s2.load(Ordering::Relaxed) {
                return;
            }
            let Ok(c) = c else { continue };
            let (st, f) = (storage.clone(), f2.clone());
            std::thread::spawn(move || {
                let _ = serve_conn(c, st, f);
            });
        }
    });
    Fake { addr, stop, faults }
}

struct PendingWrite {
    cid: u16,
    offset: usize,
    data: Vec<u8>,
}

fn serve_conn(mut s: TcpStream, storage: Arc<Mutex<Vec<u8>>>, faults: Arc<Faults>) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut frame = FrameConfig::before_ic(Role::Controller);
    let mut tx = TxConfig::default();
    let mut rx = vec![0u8; 1 << 20];
    let mut have = 0usize;
    let mut out = Vec::new();
    let mut enabled = false;
    let mut pending: Vec<PendingWrite> = Vec::new();
    loop {
        let n = s.read(&mut rx[have..])?;
        if n == 0 {
            return Ok(());
        }
        have += n;
        let mut used = 0;
        loop {
            let (p, len) = match pdu::decode(&rx[used..have], &frame) {
                Ok(Decoded::Pdu(p, len)) => (p, len),
                Ok(Decoded::NeedMore(_)) => break,
                Err(_) => return Ok(()),
            };
            match p {
                Pdu::IcReq(ic) => {
                    let dg = ic.dgst;
                    pdu::encode_ic_resp(&mut out, &IcResp { pfv: 0, cpda: 0, dgst: dg, maxh2cdata: MAXH2CDATA });
                    let (h, d) = (dg & pdu::dgst::HEADER != 0, dg & pdu::dgst::DATA != 0);
                    frame = FrameConfig {
                        role: Role::Controller,
                        hdgst: h,
                        ddgst: d,
                        pdu_len_max: 1 << 19,
                        rx_data_align: 4,
                    };
                    tx = TxConfig { hdgst: h, ddgst: d, data_align: (ic.hpda as u32 + 1) * 4 };
                }
                Pdu::CapsuleCmd { sqe, data, .. } => {
                    let mut cqe = Cqe::new(sqe.cid, Status::SUCCESS);
                    let mut reply_data: Option<Vec<u8>> = None;
                    let mut answer_later = false;
                    match sqe.opcode {
                        admin::FABRICS if sqe.fctype() == fctype::CONNECT => cqe.dw0 = 1,
                        admin::FABRICS if sqe.fctype() == fctype::PROPERTY_GET => {
                            let p = PropertyCmd::parse(&sqe);
                            let v = match p.offset {
                                fabrics::prop::CAP => Cap {
                                    mqes: 255,
                                    to_500ms: 1,
                                    css_nvm: true,
                                    css_io_sets: false,
                                    css_admin_only: false,
                                }
                                .to_u64(),
                                fabrics::prop::CSTS => enabled as u64,
                                _ => 0,
                            };
                            cqe.dw0 = v as u32;
                            cqe.dw1 = (v >> 32) as u32;
                        }
                        admin::FABRICS if sqe.fctype() == fctype::PROPERTY_SET => {
                            let p = PropertyCmd::parse(&sqe);
                            if p.offset == fabrics::prop::CC {
                                enabled = p.value & 1 == 1;
                            }
                        }
                        admin::IDENTIFY if sqe.cdw10 & 0xff == cns::CONTROLLER as u32 => {
                            let c = IdentifyController { ioccsz: (8192 + 64) / 16, ..Default::default() };
                            reply_data = Some(c.encode().to_vec());
                        }
                        admin::IDENTIFY if sqe.cdw10 & 0xff == cns::NAMESPACE as u32 => {
                            let nsze = (NS_BYTES / LBA_BYTES) as u64;
                            let n = IdentifyNamespace {
                                nsze,
                                ncap: nsze,
                                nuse: nsze,
                                lbaf: vec![LbaFormat { ms: 0, lbads: 9, rp: 0 }],
                                ..Default::default()
                            };
                            reply_data = Some(n.encode().to_vec());
                        }
                        admin::SET_FEATURES if sqe.cdw10 & 0xff == fid::NUM_QUEUES as u32 => {
                            cqe.dw0 = num_queues_value(8, 8);
                        }
                        admin::KEEP_ALIVE => {}
                        io::READ if sqe.nsid == 1 => {
                            let off = sqe.slba() as usize * LBA_BYTES;
                            let len = sqe.nlb() as usize * LBA_BYTES;
                            let mut d = storage.lock().unwrap()[off..off + len].to_vec();
                            let no = faults.reads.fetch_add(1, Ordering::Relaxed) + 1;
                            if no == faults.corrupt_read_no.load(Ordering::Relaxed) {
                                d[len / 2 + 100] ^= 0x10;
                            }
                            reply_data = Some(d);
                        }
                        io::WRITE if sqe.nsid == 1 => {
                            let off = sqe.slba() as usize * LBA_BYTES;
                            let len = sqe.nlb() as usize * LBA_BYTES;
                            if data.is_empty() {
                                let r2t = DataHdr { cccid: sqe.cid, ttag: sqe.cid, offset: 0, length: len as u32 };
                                pdu::encode_r2t(&mut out, &r2t, &tx);
                                pending.push(PendingWrite { cid: sqe.cid, offset: off, data: Vec::new() });
                                answer_later = true;
                            } else {
                                store(&storage, &faults, off, data);
                            }
                        }
                        _ => cqe.status = Status::new(0, 0x01),
                    }
                    if let Some(d) = reply_data {
                        let h = DataHdr { cccid: sqe.cid, ttag: 0, offset: 0, length: d.len() as u32 };
                        pdu::encode_data_pdu(&mut out, true, flags::LAST_PDU, &h, &d, &tx);
                    }
                    if !answer_later {
                        pdu::encode_capsule_resp(&mut out, &cqe, &tx);
                    }
                }
                Pdu::H2CData { hdr, flags: f, data, .. } => {
                    let i = pending.iter().position(|p| p.cid == hdr.cccid).expect("H2CData for a pending write");
                    pending[i].data.extend_from_slice(data);
                    if f & flags::LAST_PDU != 0 {
                        let p = pending.swap_remove(i);
                        store(&storage, &faults, p.offset, &p.data);
                        pdu::encode_capsule_resp(&mut out, &Cqe::new(p.cid, Status::SUCCESS), &tx);
                    }
                }
                _ => return Ok(()),
            }
            used += len;
        }
        rx.copy_within(used..have, 0);
        have -= used;
        if !out.is_empty() {
            s.write_all(&out)?;
            out.clear();
        }
    }
}

fn store(storage: &Mutex<Vec<u8>>, faults: &Faults, off: usize, data: &[u8]) {
    faults.writes.fetch_add(1, Ordering::Relaxed);
    if off == 0
        && faults.offset0_written.swap(true, Ordering::Relaxed)
        && faults.drop_rewrites_of_offset0.load(Ordering::Relaxed)
    {
        return;
    }
    storage.lock().unwrap()[off..off + data.len()].copy_from_slice(data);
}

fn perf(fake: &Fake, cfg: &PerfConfig) -> nvmf_host::perf::Summary {
    let admin = AdminSession::connect(
        fake.addr,
        NQN,
        Some("nqn.2026-11.io.nvmf:perf-test-host"),
        cfg.namespace_id,
        cfg.io_queues,
        cfg.header_digest,
        cfg.data_digest,
    )
    .expect("admin bring-up");
    let facts = admin.facts().clone();
    assert_eq!(facts.lba_bytes, LBA_BYTES as u64);
    let mut admin = admin;
    let mut ka = || admin.keep_alive();
    let s = run::run(cfg, fake.addr, &facts, Some(Duration::from_millis(200)), &mut ka, false).expect("run");
    admin.disconnect();
    s
}

fn base() -> PerfConfig {
    PerfConfig { runtime_s: 1, iodepth: 8, seed: 42, ..PerfConfig::default() }
}

#[test]
fn randrw_verify_clean_with_digests_and_r2t() {
    let fake = start_fake();
    // 16 KiB writes exceed the 8 KiB in-capsule limit: R2T + H2CData path; 4 KiB ones go in-capsule.
    for (bs, hd, dd) in [(16 << 10, true, true), (4 << 10, false, false)] {
        let cfg = PerfConfig {
            rw: RwPattern::RandRw,
            verify: true,
            block_size_bytes: bs,
            size_bytes: 2 << 20,
            io_queues: 2,
            header_digest: hd,
            data_digest: dd,
            ..base()
        };
        let s = perf(&fake, &cfg);
        assert_eq!(s.errors, 0, "{:?}", s.error_samples);
        assert_eq!(s.verify_errors, 0, "{:?}", s.error_samples);
        assert!(s.reads > 0 && s.writes > 0);
        assert!(s.verified_reads > 0);
        let j = s.to_json(serde_json::json!({}));
        for k in ["iops", "mib_per_s", "errors", "latency_us", "verify_errors", "reads", "writes", "runtime_s"] {
            assert!(j.get(k).is_some(), "json lacks {k}");
        }
    }
}

#[test]
fn read_verify_prefills_then_checks() {
    let fake = start_fake();
    let cfg = PerfConfig { rw: RwPattern::RandRead, verify: true, size_bytes: 1 << 20, ..base() };
    let s = perf(&fake, &cfg);
    assert_eq!((s.errors, s.verify_errors), (0, 0), "{:?}", s.error_samples);
    assert_eq!(s.writes, 0, "prefill writes are not timed I/O");
    assert!(s.verified_reads >= s.reads);
}

#[test]
fn verify_catches_a_corrupted_read() {
    let fake = start_fake();
    fake.faults.corrupt_read_no.store(50, Ordering::Relaxed);
    let cfg = PerfConfig { rw: RwPattern::RandRead, verify: true, size_bytes: 1 << 20, ..base() };
    let s = perf(&fake, &cfg);
    assert_eq!(s.errors, 0);
    assert_eq!(s.verify_errors, 1, "{:?}", s.error_samples);
    assert!(s.error_samples.iter().any(|e| e.contains("corrupted")), "{:?}", s.error_samples);
}

#[test]
fn verify_catches_a_lost_write() {
    let fake = start_fake();
    // Writes to the first block are acknowledged but not stored after the
    // first one: a sequential writer wrapping a 2-unit range rewrites it, and
    // the readback must find the old generation there. The range is tiny so
    // that even a heavily loaded machine wraps it within the run (the check
    // must not depend on how fast the machine is).
    fake.faults.drop_rewrites_of_offset0.store(true, Ordering::Relaxed);
    let cfg = PerfConfig { rw: RwPattern::Write, verify: true, size_bytes: 8 << 10, iodepth: 1, ..base() };
    let s = perf(&fake, &cfg);
    assert!(s.writes > 4, "range must wrap at least twice ({} writes)", s.writes);
    assert_eq!(s.errors, 0);
    assert_eq!(s.verify_errors, 1, "{:?}", s.error_samples);
    assert!(s.error_samples[0].contains("lba 0: stale or lost write"), "{:?}", s.error_samples);
}

#[test]
fn plain_randread_counts_and_latency() {
    let fake = start_fake();
    let cfg = PerfConfig { rw: RwPattern::RandRead, io_queues: 2, ..base() };
    let s = perf(&fake, &cfg);
    assert_eq!(s.errors, 0);
    assert!(s.reads > 0);
    let l = s.latency_us;
    assert!(l.min <= l.p50 && l.p50 <= l.p99 && l.p99 <= l.max);
    assert!(s.runtime_s > 0.5);
}
