//! The target over TLS 1.3 (NVMe/TCP 3.6): a loopback target with TLS
//! listeners and `[[subsystem.host]]` TLS keys, driven by the test host of
//! `common` through a TLS proxy (a plain socket on one side, nvmf-tls client
//! sessions on the other), so every NVMe exchange is the same as in clear.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use nvmf_engine::nvmf_tls::{ClientOptions, TlsHash, TlsSession};
use nvmf_proto::auth::tls_psk::{self, ConfiguredPsk, HkdfLabelLayout, IdentityVersion};
use nvmf_proto::auth::HashId;
use nvmf_proto::log::{parse_discovery_entries, parse_discovery_header, sectype, subtype, treq, GetLogPageCmd};
use nvmf_proto::opcodes::io as iop;
use nvmf_proto::status::{cmd, sct};
use nvmf_proto::{Sgl, Sqe, DISCOVERY_NQN};
use nvmf_target::config::{DiscoveryConfig, HostConfig, ListenerConfig, SubsystemConfig, TargetConfig, TlsMode};
use nvmf_target::Server;

const TLS_HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:aaaaaaaa-2222-3333-4444-555555555555";
const PLAIN_HOST: &str = "nqn.2026-12.io.nvmf:host:plain";
/// Keys as `nvme gen-tls-key` prints them (fixed bytes: tests only).
fn key(hash: HashId, seed: u8) -> String {
    ConfiguredPsk::generate(hash, &mut |b| b.iter_mut().enumerate().for_each(|(i, x)| *x = seed ^ i as u8))
        .unwrap()
        .format()
        .to_string()
}

/// A target with one subsystem (NQN): TLS_HOST has a TLS key (SHA-256,
/// `compat` as given), PLAIN_HOST is only allowed; one I/O listener with
/// `tls`.
fn start(tls: TlsMode, key_text: &str, compat: bool) -> Server {
    let mut sub = SubsystemConfig::with_namespaces(NQN, vec![ns(1, "4MiB", 512)]);
    sub.allow_any_host = Some(false);
    sub.allowed_hosts = vec![PLAIN_HOST.into()];
    sub.hosts = vec![HostConfig {
        nqn: TLS_HOST.into(),
        tls_key: Some(key_text.into()),
        tls_key_compat: compat.then_some(true),
        ..Default::default()
    }];
    let cfg = TargetConfig {
        engine: nvmf_target::config::EngineSection { mode: "interrupt".into(), ..Default::default() },
        limits: small_limits(),
        listeners: vec![ListenerConfig { addr: "127.0.0.1:0".into(), port_id: None, subsystems: Vec::new(), tls }],
        discovery: DiscoveryConfig { listen: Vec::new(), referrals: Vec::new() },
        subsystems: vec![sub],
    };
    nvmf_target::serve(&cfg).expect("serve")
}

/// What a host derives from `key_text` for (TLS_HOST, `subnqn`).
fn client_session(key_text: &str, subnqn: &str, version: IdentityVersion, layout: HkdfLabelLayout) -> TlsSession {
    let configured = ConfiguredPsk::parse(key_text).unwrap();
    let d = tls_psk::derive(&configured, TLS_HOST, subnqn, version, layout).unwrap();
    let hash = if configured.tls_hash() == HashId::Sha384 { TlsHash::Sha384 } else { TlsHash::Sha256 };
    TlsSession::client(&d.identity, d.tls_psk.as_bytes(), hash, ClientOptions::default()).unwrap()
}

/// Handshake `s` with the target at `addr`; the TLS socket on success.
fn handshake(addr: SocketAddr, s: &mut TlsSession) -> Result<TcpStream, String> {
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    sock.set_nodelay(true).unwrap();
    let mut out = Vec::new();
    let mut b = vec![0u8; 64 * 1024];
    while !s.handshake_done() {
        s.take_ciphertext(&mut out);
        sock.write_all(&out).map_err(|e| e.to_string())?;
        out.clear();
        let n = match sock.read(&mut b) {
            Ok(0) => return Err("EOF during the handshake".into()),
            Ok(n) => n,
            Err(e) => return Err(e.to_string()),
        };
        let mut off = 0;
        while off < n {
            off += s.feed(&b[off..n]).map_err(|e| e.to_string())?;
        }
    }
    s.take_ciphertext(&mut out);
    sock.write_all(&out).map_err(|e| e.to_string())?;
    Ok(sock)
}

/// A plain socket whose bytes go to the target through `session`: returns
/// the address the test host connects to. With `key_update_every`, the
/// proxy starts a KeyUpdate (asking the target for one too) each time that
/// many plaintext bytes went out. `updates` counts them.
fn tls_proxy(addr: SocketAddr, mut session: TlsSession, key_update_every: Option<u64>) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let local = listener.local_addr().unwrap();
    let updates = Arc::new(AtomicU64::new(0));
    let counted = updates.clone();
    std::thread::spawn(move || {
        let (mut plain, _) = listener.accept().unwrap();
        let Ok(mut tls) = handshake(addr, &mut session) else { return };
        plain.set_nonblocking(true).unwrap();
        tls.set_nonblocking(true).unwrap();
        let mut b = vec![0u8; 256 * 1024];
        let (mut out, mut clear) = (Vec::new(), Vec::new());
        let mut pending: Vec<u8> = Vec::new();
        let (mut sent, mut next_update) = (0u64, key_update_every.unwrap_or(u64::MAX));
        loop {
            let mut idle = true;
            match plain.read(&mut b) {
                Ok(0) => return,
                Ok(n) => {
                    idle = false;
                    let mut off = 0;
                    while off < n {
                        off += session.write_plaintext(&b[off..n]).unwrap();
                        session.take_ciphertext(&mut out);
                    }
                    sent += n as u64;
                    if sent >= next_update {
                        next_update = sent + key_update_every.unwrap();
                        session.key_update(true).unwrap();
                        counted.fetch_add(1, Ordering::SeqCst);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
            match tls.read(&mut b) {
                Ok(0) => return,
                Ok(n) => {
                    idle = false;
                    pending.extend_from_slice(&b[..n]);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
            while !pending.is_empty() {
                let Ok(n) = session.feed(&pending) else { return };
                pending.drain(..n);
                if session.read_plaintext(&mut clear, usize::MAX).is_err() {
                    return;
                }
                if n == 0 {
                    break;
                }
            }
            if session.read_plaintext(&mut clear, usize::MAX).is_err() {
                return;
            }
            session.take_ciphertext(&mut out);
            if !out.is_empty() && write_blocking(&mut tls, &out).is_err() {
                return;
            }
            out.clear();
            if !clear.is_empty() && write_blocking(&mut plain, &clear).is_err() {
                return;
            }
            clear.clear();
            if session.peer_closed() {
                return;
            }
            if idle {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    });
    (local, updates)
}

/// Wait until the sum of `f` over the engine's cores is `want`.
fn wait_for_sum(srv: &Server, what: &str, f: impl Fn(&nvmf_engine::CoreStats) -> u64, want: u64) {
    let t = std::time::Instant::now();
    loop {
        let got: u64 = srv.stats().cores.iter().map(&f).sum();
        if got == want {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{what}: {got}, not {want}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn write_blocking(s: &mut TcpStream, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        match s.write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_micros(100)),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn rw(op: u8, slba: u64, nlb: u32) -> Sqe {
    let mut s = Sqe::rw(op, 0, 1, slba, nlb);
    s.cid = 0;
    s.sgl1 = Sgl::transport(nlb * 512);
    s
}

/// Admin and one I/O queue over TLS (each its own handshake), then
/// writes and reads of every size up to 256 KiB.
fn admin_and_io(srv: &Server, session: impl Fn() -> TlsSession, key_update_every: Option<u64>) -> u64 {
    let addr = srv.io_addrs()[0];
    let (a, _) = tls_proxy(addr, session(), None);
    let mut admin = Host::ic(a, true, true, 0);
    let c = admin.connect(0, 31, 0, NQN, TLS_HOST, 0xffff);
    assert!(c.status.is_success(), "admin connect over TLS: {}", c.status);
    admin.enable();
    let (i, updates) = tls_proxy(addr, session(), key_update_every);
    let mut io = Host::ic(i, true, true, 0);
    let c = io.connect(1, 31, 0, NQN, TLS_HOST, c.dw0 as u16);
    assert!(c.status.is_success(), "I/O connect over TLS: {}", c.status);
    for (k, nlb) in [1u32, 8, 33, 128, 512].into_iter().cycle().take(40).enumerate() {
        let data = pattern(nlb as usize * 512, k as u8);
        let slba = (k as u64 * 512) % 7000;
        let (c, _) = io.exec(rw(iop::WRITE, slba, nlb), &data, false);
        assert!(c.status.is_success(), "write {k}: {}", c.status);
        let (c, got) = io.exec(rw(iop::READ, slba, nlb), &[], false);
        assert!(c.status.is_success(), "read {k}: {}", c.status);
        assert!(got == data, "read back {k}");
    }
    updates.load(Ordering::SeqCst)
}

#[test]
fn required_listener_serves_tls_hosts_v0_v1_sha256_sha384_rfc_and_compat() {
    for (hash, compat) in [(HashId::Sha256, false), (HashId::Sha384, false), (HashId::Sha256, true)] {
        let text = key(hash, 0x40);
        let srv = start(TlsMode::Required, &text, compat);
        let layout = if compat { HkdfLabelLayout::LibnvmeLegacy } else { HkdfLabelLayout::Rfc8446 };
        for version in [IdentityVersion::V0, IdentityVersion::V1] {
            admin_and_io(&srv, || client_session(&text, NQN, version, layout), None);
        }
        wait_for_sum(&srv, "4 handshakes", |c| c.tls_handshakes, 4);
        srv.shutdown(Duration::from_secs(2));
    }
}

#[test]
fn key_updates_mid_run_do_not_stall() {
    let text = key(HashId::Sha256, 1);
    let srv = start(TlsMode::Required, &text, false);
    let updates =
        admin_and_io(&srv, || client_session(&text, NQN, IdentityVersion::V1, HkdfLabelLayout::Rfc8446), Some(100_000));
    assert!(updates >= 10, "KeyUpdates sent: {updates}");
    srv.shutdown(Duration::from_secs(2));
}

#[test]
fn plain_connection_to_a_required_listener_is_closed() {
    let srv = start(TlsMode::Required, &key(HashId::Sha256, 2), false);
    let mut h = Host::tcp(srv.io_addrs()[0]);
    h.send_raw(&[0u8; 128]);
    assert!(h.closed_by_peer());
    wait_for_sum(&srv, "plain refusal counted", |c| c.tls_refused_plain, 1);
    srv.shutdown(Duration::from_secs(2));
}

#[test]
fn wrong_key_or_unknown_identity_fails_the_handshake() {
    let text = key(HashId::Sha256, 3);
    let srv = start(TlsMode::Required, &text, false);
    let addr = srv.io_addrs()[0];
    // Another key, the compat derivation of the right key, another host.
    let mut wrong = client_session(&key(HashId::Sha256, 4), NQN, IdentityVersion::V1, HkdfLabelLayout::Rfc8446);
    assert!(handshake(addr, &mut wrong).is_err());
    let mut compat = client_session(&text, NQN, IdentityVersion::V0, HkdfLabelLayout::LibnvmeLegacy);
    assert!(handshake(addr, &mut compat).is_err());
    let d = tls_psk::derive(
        &ConfiguredPsk::parse(&text).unwrap(),
        PLAIN_HOST,
        NQN,
        IdentityVersion::V0,
        HkdfLabelLayout::Rfc8446,
    )
    .unwrap();
    let mut other =
        TlsSession::client(&d.identity, d.tls_psk.as_bytes(), TlsHash::Sha256, ClientOptions::default()).unwrap();
    assert!(handshake(addr, &mut other).is_err());
    wait_for_sum(&srv, "handshake failures counted", |c| c.tls_failures, 3);
    srv.shutdown(Duration::from_secs(2));
}

#[test]
fn connect_must_match_the_identity_and_tls_hosts_must_use_tls() {
    let text = key(HashId::Sha256, 5);
    let srv = start(TlsMode::Allowed, &text, false);
    let addr = srv.io_addrs()[0];
    let invalid_host = |c: nvmf_proto::cqe::Cqe| {
        c.status.sct == sct::COMMAND_SPECIFIC && c.status.sc == cmd::CONNECT_INVALID_HOST && c.status.dnr
    };
    // Over TLS as TLS_HOST, but the Connect names another host.
    let (a, _) = tls_proxy(addr, client_session(&text, NQN, IdentityVersion::V0, HkdfLabelLayout::Rfc8446), None);
    let mut h = Host::ic(a, false, false, 0);
    assert!(invalid_host(h.connect(0, 31, 0, NQN, PLAIN_HOST, 0xffff)));
    // In clear, TLS_HOST is refused; PLAIN_HOST gets in on the allowed listener.
    let mut h = Host::ic(addr, false, false, 0);
    assert!(invalid_host(h.connect(0, 31, 0, NQN, TLS_HOST, 0xffff)));
    let mut h = Host::ic(addr, false, false, 0);
    assert!(h.connect(0, 31, 0, NQN, PLAIN_HOST, 0xffff).status.is_success());
    srv.shutdown(Duration::from_secs(2));
}

#[test]
fn discovery_over_tls_reports_treq_and_tsas() {
    let text = key(HashId::Sha256, 6);
    for (mode, want) in [(TlsMode::Required, treq::REQUIRED), (TlsMode::Allowed, treq::NOT_REQUIRED)] {
        let srv = start(mode, &text, false);
        let session = client_session(&text, DISCOVERY_NQN, IdentityVersion::V0, HkdfLabelLayout::Rfc8446);
        let (a, _) = tls_proxy(srv.io_addrs()[0], session, None);
        let mut h = Host::ic(a, false, false, 0);
        let c = h.connect(0, 31, 0, DISCOVERY_NQN, TLS_HOST, 0xffff);
        assert!(c.status.is_success(), "discovery connect over TLS: {}", c.status);
        h.enable();
        let g = GetLogPageCmd { lid: 0x70, lsp: 0, rae: false, len: 4096, offset: 0, lsi: 0, nsid: 0 };
        let (c, d) = h.exec(g.to_sqe(0), &[], true);
        assert!(c.status.is_success());
        let hdr = parse_discovery_header(&d).unwrap();
        let e = parse_discovery_entries(&d, hdr.numrec);
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].subtype, subtype::NVME);
        for entry in &e {
            assert_eq!(entry.treq & 3, want, "{mode:?}");
            assert_eq!(entry.sectype, sectype::TLS13);
        }
        srv.shutdown(Duration::from_secs(2));
    }
}
