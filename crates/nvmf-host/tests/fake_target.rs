//! The blocking host driver against a scripted fake controller: bring-up,
//! admin commands, I/O split at MDTS, digests, discovery, and malformed or
//! missing answers (never a panic or a hang).

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{FakeTarget, BLOCK_SIZE, SUBNQN};
use nvmf_host::{discover, ConnectOptions, Controller, Error, QueueError};
use nvmf_proto::status::generic;
use nvmf_proto::PduError;

fn opts() -> ConnectOptions {
    let mut o = ConnectOptions::new(SUBNQN);
    o.hostnqn = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-000000000001".into();
    o.ctrl_loss_tmo_s = 0; // tests that break the connection want the error, not a retry
    o.connect_timeout_ms = 2000;
    o
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn roundtrip(o: ConnectOptions) {
    let t = FakeTarget::start();
    let mut c = Controller::connect(t.addr, o).unwrap();
    assert_eq!(c.cntlid(), 1);
    assert_eq!(c.nr_io_queues(), 2);
    assert_eq!(c.identify().serial, "fake0001");
    assert_eq!(c.transfer_len_max_bytes(), 32 * 1024, "MDTS 3 = 32 KiB caps transfers");
    let ns = c.identify_namespace(1).unwrap();
    assert_eq!((ns.nsze, ns.block_size()), (4096, 512));
    assert_eq!(c.active_namespaces().unwrap(), vec![1]);

    // 100 KiB: four commands, written through R2T/H2CData, read back through C2HData.
    let data = pattern(200 * BLOCK_SIZE, 7);
    c.write_range(1, 10, 512, &data).unwrap();
    assert_eq!(&t.disk.lock().unwrap()[10 * 512..210 * 512], &data[..]);
    let mut back = vec![0u8; data.len()];
    c.read_range(1, 10, 512, &mut back).unwrap();
    assert_eq!(back, data);

    // Small write: in-capsule. Single read into a caller buffer.
    let mut small = pattern(2 * BLOCK_SIZE, 99);
    c.write(1, 0, 2, &mut small).unwrap();
    assert_eq!(small.len(), 1024, "buffer handed back");
    let mut rd = vec![0u8; 1024];
    c.read(1, 0, 2, &mut rd).unwrap();
    assert_eq!(rd, small);

    c.flush(1).unwrap();
    c.write_zeroes(1, 0, 8).unwrap();
    c.dsm_deallocate(1, &[(0, 8), (100, 8)]).unwrap();
    let e = c.read(1, 4095, 2, &mut vec![0; 1024]).unwrap_err();
    assert_eq!(e.status().unwrap().sc, generic::LBA_OUT_OF_RANGE, "{e}");
    assert_eq!(c.get_log_page(0x02, 0, 0xffff_ffff, 0, 512, false).unwrap().len(), 512);
    c.disconnect().unwrap();
}

#[test]
fn connect_identify_write_read_disconnect() {
    let mut o = opts();
    o.nr_io_queues = 2;
    roundtrip(o);
}

#[test]
fn same_with_header_and_data_digests_and_success_flag() {
    let mut o = opts();
    o.nr_io_queues = 2;
    o.hdr_digest = true;
    o.data_digest = true;
    roundtrip(o);
    let t = FakeTarget::start();
    t.faults.c2h_success.store(true, Ordering::Relaxed);
    let mut c = Controller::connect(t.addr, opts()).unwrap();
    let data = pattern(100 * BLOCK_SIZE, 3);
    c.write_range(1, 0, 512, &data).unwrap();
    let mut back = vec![0u8; data.len()];
    c.read_range(1, 0, 512, &mut back).unwrap();
    assert_eq!(back, data);
}

#[test]
fn discovery_log() {
    let t = FakeTarget::start();
    let log = discover(t.addr, opts()).unwrap();
    assert_eq!(log.genctr, 7);
    assert_eq!(log.entries.len(), 1);
    assert_eq!(log.entries[0].subnqn, SUBNQN);
    assert_eq!(log.entries[0].trsvcid, t.addr.port().to_string());
}

#[test]
fn wrong_subsystem_is_a_connect_status() {
    let t = FakeTarget::start();
    let mut o = opts();
    o.subnqn = "nqn.2026-11.io.nvmf:nope".into();
    let e = Controller::connect(t.addr, o).unwrap_err();
    assert_eq!(e.status().map(|s| s.name()), Some("Connect Invalid Parameters"), "{e}");
}

#[test]
fn bad_icresp_fails_connect() {
    let t = FakeTarget::start();
    t.faults.bad_icresp.store(true, Ordering::Relaxed);
    let e = Controller::connect(t.addr, opts()).unwrap_err();
    assert!(matches!(e, Error::Queue(QueueError::Protocol(PduError { fes: 1, fei: 8, .. }))), "{e}");
}

#[test]
fn c2h_data_out_of_range_fails_the_read() {
    let t = FakeTarget::start();
    let mut c = Controller::connect(t.addr, opts()).unwrap();
    t.faults.c2h_out_of_range.store(true, Ordering::Relaxed);
    let e = c.read(1, 0, 1, &mut vec![0; 512]).unwrap_err();
    assert!(matches!(e, Error::Queue(QueueError::Protocol(PduError { fes: 4, .. }))), "{e}");
}

#[test]
fn c2h_term_req_fails_the_read() {
    let t = FakeTarget::start();
    let mut c = Controller::connect(t.addr, opts()).unwrap();
    t.faults.term_req_on_read.store(true, Ordering::Relaxed);
    let e = c.read(1, 0, 1, &mut vec![0; 512]).unwrap_err();
    assert!(matches!(e, Error::Queue(QueueError::TerminatedByController { fes: 2, .. })), "{e}");
}

#[test]
fn silent_target_times_out() {
    let t = FakeTarget::start();
    let mut o = opts();
    o.io_timeout_ms = 300;
    let mut c = Controller::connect(t.addr, o).unwrap();
    t.faults.ignore_reads.store(true, Ordering::Relaxed);
    let start = Instant::now();
    let e = c.read(1, 0, 1, &mut vec![0; 512]).unwrap_err();
    assert!(matches!(e, Error::Queue(QueueError::Failed("command timeout"))), "{e}");
    assert!(start.elapsed() < Duration::from_secs(20), "bounded wait");
}

#[test]
fn data_digest_error_is_transient_transport_error_and_queue_survives() {
    let t = FakeTarget::start();
    let mut o = opts();
    o.data_digest = true;
    let mut c = Controller::connect(t.addr, o).unwrap();
    t.faults.corrupt_read_digests.store(1, Ordering::Relaxed);
    let e = c.read(1, 0, 1, &mut vec![0; 512]).unwrap_err();
    assert_eq!(e.status().unwrap().name(), "Transient Transport Error");
    c.read(1, 0, 1, &mut vec![0; 512]).unwrap();
}

#[test]
fn write_of_unknown_fate_is_reported_then_reconnects() {
    let t = FakeTarget::start();
    let mut o = opts();
    o.ctrl_loss_tmo_s = 30;
    o.reconnect_delay_s = 1;
    let mut c = Controller::connect(t.addr, o).unwrap();
    assert_eq!(t.connects.load(Ordering::Relaxed), 1);
    t.faults.drop_on_write.store(1, Ordering::Relaxed);
    let mut buf = pattern(8 * BLOCK_SIZE, 1);
    let e = c.write(1, 0, 8, &mut buf).unwrap_err();
    assert!(matches!(e, Error::FateUnknown { what: "Write" }), "{e}");
    assert_eq!(buf.len(), 4096, "the buffer comes back with the error");
    // The next command reconnects first, then succeeds.
    c.write(1, 0, 8, &mut buf).unwrap();
    assert_eq!(t.connects.load(Ordering::Relaxed), 2);
    let mut back = vec![0; 4096];
    c.read(1, 0, 8, &mut back).unwrap();
    assert_eq!(back, buf);
}
