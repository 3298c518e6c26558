//! The host library against nvmf's own target (in process, random ports).

use std::time::Duration;

use nvmf_host::{discover, ConnectOptions, Controller};
use nvmf_target::config::TargetConfig;

const NQN: &str = "nqn.2026-11.io.nvmf:hosttest";

fn start() -> nvmf_target::server::Server {
    serve_one("ram", "64MiB", r#"["127.0.0.1:0"]"#)
}

/// A target with one subsystem (`NQN`) and one namespace, on random ports.
fn serve_one(kind: &str, size: &str, discovery_listen: &str) -> nvmf_target::server::Server {
    let toml = format!(
        r#"
[engine]
mode = "interrupt"
[[listener]]
addr = "127.0.0.1:0"
[discovery]
listen = {discovery_listen}
[[subsystem]]
nqn = "{NQN}"
[[subsystem.namespace]]
kind = "{kind}"
size = "{size}"
block_size = 512
"#
    );
    let cfg = TargetConfig::from_toml_str(&toml).unwrap();
    nvmf_target::server::serve(&cfg).unwrap()
}

fn opts(nqn: &str) -> ConnectOptions {
    let mut o = ConnectOptions::new(nqn);
    o.hostnqn = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-0000000000aa".into();
    o.ctrl_loss_tmo_s = 0;
    o
}

#[test]
fn discover_identify_write_read_against_nvmf_target() {
    let srv = start();
    let io = srv.io_addrs()[0];
    let disc = srv.discovery_addrs()[0];
    let log = discover(disc, opts("")).unwrap();
    assert!(log.entries.iter().any(|e| e.subnqn == NQN && e.trsvcid == io.port().to_string()), "{log:?}");

    for (hd, dd) in [(false, false), (true, true)] {
        let mut o = opts(NQN);
        o.nr_io_queues = 2;
        o.hdr_digest = hd;
        o.data_digest = dd;
        let mut c = Controller::connect(io, o).unwrap();
        assert_eq!(c.nr_io_queues(), 2);
        assert_eq!(c.identify().subnqn, NQN);
        assert_eq!(c.active_namespaces().unwrap(), vec![1]);
        let ns = c.identify_namespace(1).unwrap();
        assert_eq!((ns.nsze, ns.block_size()), (131_072, 512));
        let descs = c.ns_id_descriptors(1).unwrap();
        assert!(!descs.is_empty());

        // 3 MiB: split at MDTS (1 MiB) and the target's 128 KiB C2H/H2C PDUs.
        let data: Vec<u8> = (0..3u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        c.write_range(1, 2048, 512, &data).unwrap();
        let mut back = vec![0u8; data.len()];
        c.read_range(1, 2048, 512, &mut back).unwrap();
        assert!(back == data, "read back differs");
        // In-capsule (8 KiB) and R2T writes on the single-command path.
        let mut small = vec![0x5au8; 4096];
        c.write(1, 0, 8, &mut small).unwrap();
        let mut big = vec![0xa5u8; 64 * 1024];
        c.write(1, 8, 128, &mut big).unwrap();
        let mut rd = vec![0u8; 4096 + 64 * 1024];
        c.read(1, 0, 136, &mut rd).unwrap();
        assert!(rd[..4096].iter().all(|&b| b == 0x5a) && rd[4096..].iter().all(|&b| b == 0xa5));
        c.flush(1).unwrap();
        c.write_zeroes(1, 0, 8).unwrap();
        let mut z = vec![1u8; 4096];
        c.read(1, 0, 8, &mut z).unwrap();
        assert!(z.iter().all(|&b| b == 0));
        let e = c.read(1, 131_071, 2, &mut vec![0; 1024]).unwrap_err();
        assert_eq!(e.status().unwrap().name(), "LBA Out of Range", "{e}");
        c.disconnect().unwrap();
    }
    srv.shutdown(Duration::from_secs(2));
}

#[test]
fn keep_alive_keeps_an_idle_controller() {
    let srv = start();
    let mut o = opts(NQN);
    o.kato_s = 1; // Keep Alive every 500 ms; the target drops us after 1 s without one
    let mut c = Controller::connect(srv.io_addrs()[0], o).unwrap();
    std::thread::sleep(Duration::from_millis(3500));
    let mut b = vec![0u8; 512];
    c.read(1, 0, 1, &mut b).unwrap();
    c.disconnect().unwrap();
    srv.shutdown(Duration::from_secs(2));
}

/// Reads of a null namespace are sent from one shared buffer of zeros without
/// copying (`Backend::read_static`); check the bytes, the PDU splitting and
/// the data digest computed over that buffer.
#[test]
fn null_namespace_reads_zeros_with_and_without_digests() {
    let srv = serve_one("null", "1GiB", "[]");
    let io = srv.io_addrs()[0];
    for (hd, dd) in [(false, false), (true, true), (false, true)] {
        let mut o = opts(NQN);
        o.hdr_digest = hd;
        o.data_digest = dd;
        let mut c = Controller::connect(io, o).unwrap();
        for blocks in [1u32, 8, 256, 2048] {
            let mut buf = vec![0x77u8; blocks as usize * 512];
            c.read_range(1, 4096, 512, &mut buf).unwrap();
            assert!(buf.iter().all(|&b| b == 0), "{blocks} blocks, digests {hd}/{dd}");
        }
        // Writes are discarded; a read after one still returns zeros.
        let mut w = vec![0x5au8; 128 * 1024];
        c.write(1, 0, 256, &mut w).unwrap();
        let mut r = vec![1u8; 128 * 1024];
        c.read(1, 0, 256, &mut r).unwrap();
        assert!(r.iter().all(|&b| b == 0));
        let e = c.read(1, (1 << 21) - 1, 2, &mut vec![0; 1024]).unwrap_err();
        assert_eq!(e.status().unwrap().name(), "LBA Out of Range", "{e}");
        c.disconnect().unwrap();
    }
    srv.shutdown(Duration::from_secs(2));
}

/// Host secrets (the proto test vectors' shapes): hh 01 with 32 bytes 0..=31,
/// hh 02 with 48 bytes 64..=111, and one nobody configured.
const DHCHAP_HOST_KEY: &str = "DHHC-1:01:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:";
const DHCHAP_CTRL_KEY: &str = "DHHC-1:02:QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl9gYWJjZGVmZ2hpamtsbW5voBXMjQ==:";
const DHCHAP_OTHER_KEY: &str = "DHHC-1:00:ia6zGodOr4SEG0Zzaw398rpY0wqipUWj4jWjUh4HWUz6aQ2n:";

/// A target whose host table (`[[subsystem.host]]`) gives our host NQN a
/// DH-HMAC-CHAP secret (and a controller secret when `ctrl_key`).
fn serve_dhchap(hash: &str, dhgroup: &str, ctrl_key: bool) -> nvmf_target::server::Server {
    let host = opts(NQN).hostnqn;
    let ctrl = if ctrl_key { format!("dhchap_ctrl_key = \"{DHCHAP_CTRL_KEY}\"") } else { String::new() };
    let toml = format!(
        r#"
[engine]
mode = "interrupt"
[[listener]]
addr = "127.0.0.1:0"
[discovery]
listen = []
[[subsystem]]
nqn = "{NQN}"
[[subsystem.host]]
nqn = "{host}"
dhchap_key = "{DHCHAP_HOST_KEY}"
{ctrl}
dhchap_hash = "{hash}"
dhchap_dhgroup = "{dhgroup}"
[[subsystem.namespace]]
kind = "ram"
size = "16MiB"
block_size = 512
"#
    );
    let cfg = TargetConfig::from_toml_str(&toml).unwrap();
    nvmf_target::server::serve(&cfg).unwrap()
}

fn dhchap_opts(host_key: Option<&str>, ctrl_key: Option<&str>) -> ConnectOptions {
    let mut o = opts(NQN);
    o.nr_io_queues = 2;
    o.dhchap_secret = host_key.map(|k| nvmf_host::DhchapKey::parse(k).unwrap());
    o.dhchap_ctrl_secret = ctrl_key.map(|k| nvmf_host::DhchapKey::parse(k).unwrap());
    o
}

#[test]
fn dhchap_against_nvmf_target() {
    use nvmf_host::{AuthFailure, Error};
    for (hash, dhgroup, bidirectional) in [("sha256", "ffdhe2048", false), ("sha512", "null", true)] {
        let srv = serve_dhchap(hash, dhgroup, bidirectional);
        let io = srv.io_addrs()[0];
        let ctrl_key = bidirectional.then_some(DHCHAP_CTRL_KEY);
        let mut c = Controller::connect(io, dhchap_opts(Some(DHCHAP_HOST_KEY), ctrl_key)).unwrap();
        assert_eq!(c.nr_io_queues(), 2, "{hash}/{dhgroup}");
        assert_eq!(c.identify().subnqn, NQN);
        let data: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8).collect();
        c.write_range(1, 64, 512, &data).unwrap();
        let mut back = vec![0u8; data.len()];
        c.read_range(1, 64, 512, &mut back).unwrap();
        assert!(back == data, "{hash}/{dhgroup}: read back differs");
        c.disconnect().unwrap();

        let e = Controller::connect(io, dhchap_opts(Some(DHCHAP_OTHER_KEY), None)).unwrap_err();
        assert!(matches!(e, Error::Auth(AuthFailure::RejectedByController { qid: 0, .. })), "{e}");
        let e = Controller::connect(io, dhchap_opts(None, None)).unwrap_err();
        assert!(matches!(e, Error::Auth(AuthFailure::KeyRequired { qid: 0 })), "{e}");
        if bidirectional {
            let e = Controller::connect(io, dhchap_opts(Some(DHCHAP_HOST_KEY), Some(DHCHAP_OTHER_KEY))).unwrap_err();
            assert!(matches!(e, Error::Auth(AuthFailure::RejectedByHost { qid: 0, .. })), "{e}");
        }
        srv.shutdown(Duration::from_secs(2));
    }
}
