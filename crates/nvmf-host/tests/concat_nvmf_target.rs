//! Secure channel concatenation (DH-HMAC-CHAP generating the TLS PSK) between
//! the host library and nvmf's own target (in process, random ports): the
//! admin queue authenticates in clear, comes back over TLS with the generated
//! PSK and authenticates again; the I/O queues use TLS and do not
//! authenticate.

use std::sync::atomic::Ordering;

use nvmf_host::{ConnectOptions, Controller, DhchapKey, TlsOptions};
use nvmf_proto::auth::tls_psk::{self, ConfiguredPsk, PskOrigin};
use nvmf_proto::auth::HashId;
use nvmf_target::config::TargetConfig;
use nvmf_target::server::Server;

const NQN: &str = "nqn.2026-12.io.nvmf:concat";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-0000000000cc";

fn host_key(seed: u8) -> DhchapKey {
    DhchapKey::from_secret(Some(HashId::Sha256), &[seed; 32]).unwrap()
}

/// One subsystem whose host HOST has a DH-HMAC-CHAP key (and `group`, if
/// given); one listener that allows TLS.
fn start(group: Option<&str>) -> Server {
    let group = group.map(|g| format!("dhchap_dhgroup = \"{g}\"\n")).unwrap_or_default();
    let toml = format!(
        r#"
[engine]
mode = "interrupt"
[[listener]]
addr = "127.0.0.1:0"
tls = "allowed"
[discovery]
listen = []
[[subsystem]]
nqn = "{NQN}"
allow_any_host = false
[[subsystem.host]]
nqn = "{HOST}"
dhchap_key = "{}"
{group}
[[subsystem.namespace]]
kind = "ram"
size = "8MiB"
block_size = 512
"#,
        host_key(0x41).format().as_str()
    );
    let cfg = TargetConfig::from_toml_str(&toml).unwrap();
    nvmf_target::server::serve(&cfg).unwrap()
}

fn opts(key: DhchapKey) -> ConnectOptions {
    let mut o = ConnectOptions::new(NQN);
    o.hostnqn = HOST.into();
    o.ctrl_loss_tmo_s = 0;
    o.connect_timeout_ms = 5000;
    o.dhchap_secret = Some(key);
    o.concat = true;
    o
}

fn tls_handshakes(srv: &Server) -> u64 {
    srv.stats().cores.iter().map(|c| c.tls_handshakes).sum()
}

fn authentications(srv: &Server) -> u64 {
    let sub = srv.target().subsystem(NQN).unwrap();
    sub.dhchap_policy(HOST).unwrap().authenticated.load(Ordering::Relaxed)
}

#[test]
fn concat_identify_write_read_over_tls() {
    let srv = start(None);
    let psks = srv.target().generated_psks.clone();
    let mut o = opts(host_key(0x41));
    o.nr_io_queues = 2;
    let mut c = Controller::connect(srv.io_addrs()[0], o).expect("connect with concatenation");
    assert_eq!(c.nr_io_queues(), 2);
    assert_eq!(c.identify().subnqn, NQN);
    let data: Vec<u8> = (0..256 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    c.write_range(1, 64, 512, &data).unwrap();
    let mut back = vec![0u8; data.len()];
    c.read_range(1, 64, 512, &mut back).unwrap();
    assert!(back == data, "read back differs");

    // NEWTLSPSK then REPLACETLSPSK: two generated PSKs, the second kept.
    assert_eq!(psks.inserted.load(Ordering::Relaxed), 2);
    assert_eq!(psks.len(), 1);
    let identity = psks.identity(HOST, NQN).expect("a generated identity");
    let parsed = tls_psk::parse_identity(&identity).unwrap();
    assert_eq!((parsed.origin, parsed.host_nqn, parsed.subsys_nqn), (PskOrigin::Generated, HOST, NQN));
    // Admin queue and the two I/O queues did TLS with a generated PSK.
    assert_eq!(psks.served.load(Ordering::Relaxed), 3);
    assert!(tls_handshakes(&srv) >= 3, "{}", tls_handshakes(&srv));
    // Two transactions (plain and TLS admin queue): the I/O queues did not
    // authenticate.
    assert_eq!(authentications(&srv), 2);
    c.disconnect().unwrap();

    // Again: a new concatenation replaces the entry.
    let c = Controller::connect(srv.io_addrs()[0], opts(host_key(0x41))).expect("second connect");
    assert_eq!(psks.len(), 1);
    assert_ne!(psks.identity(HOST, NQN).unwrap(), identity, "replaced by a new generated PSK");
    drop(c);
    srv.shutdown(std::time::Duration::from_secs(5));
}

#[test]
fn concat_with_the_null_group_is_refused_cleanly() {
    let srv = start(Some("null"));
    let Err(e) = Controller::connect(srv.io_addrs()[0], opts(host_key(0x41))) else { panic!("refused") };
    let text = e.to_string();
    assert!(text.contains("secure channel concatenation needs a DH group"), "{text}");
    assert!(srv.target().generated_psks.is_empty());
    assert_eq!(tls_handshakes(&srv), 0);
}

#[test]
fn concat_with_a_wrong_host_key_is_refused() {
    let srv = start(None);
    let Err(e) = Controller::connect(srv.io_addrs()[0], opts(host_key(0x42))) else { panic!("refused") };
    assert!(matches!(e, nvmf_host::Error::Auth(_)), "{e}");
    assert!(srv.target().generated_psks.is_empty());
    assert_eq!(authentications(&srv), 0);
}

/// TLS options offering `identity` with a PSK the offerer made up.
fn made_up(identity: &str, seed: u8) -> TlsOptions {
    let key = ConfiguredPsk::generate(HashId::Sha256, &mut |b| b.iter_mut().for_each(|x| *x = seed)).unwrap();
    // hh 01: the key is the TLS PSK itself under an explicit identity.
    let text = key.format().replacen("NVMeTLSkey-1:00:", "NVMeTLSkey-1:01:", 1);
    let mut o = TlsOptions::from_interchange(&text).unwrap();
    o.identity = Some(identity.to_string());
    o
}

#[test]
fn a_generated_identity_is_useless_without_the_dh_exchange() {
    let srv = start(None);
    let plain_tls = |identity: &str| {
        let mut o = opts(host_key(0x41));
        o.concat = false;
        o.tls = Some(made_up(identity, 0x77));
        // Refused in the TLS handshake (not by an option check).
        match Controller::connect(srv.io_addrs()[0], o) {
            Err(nvmf_host::Error::Tls { qid: 0, .. }) => true,
            Err(e) => panic!("{e}"),
            Ok(_) => false,
        }
    };
    // A made-up generated identity: no such PSK.
    let digest = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    assert!(plain_tls(&format!("NVMe1G01 {HOST} {NQN} {digest}")));
    assert_eq!(srv.target().generated_psks.served.load(Ordering::Relaxed), 0);
    // The real identity of a live concatenation, with a guessed PSK.
    let c = Controller::connect(srv.io_addrs()[0], opts(host_key(0x41))).unwrap();
    let identity = srv.target().generated_psks.identity(HOST, NQN).unwrap();
    let served = srv.target().generated_psks.served.load(Ordering::Relaxed);
    assert!(plain_tls(&identity), "a guessed PSK under the real identity");
    // The lookup found the identity, the binder did not verify.
    assert_eq!(srv.target().generated_psks.served.load(Ordering::Relaxed), served + 1);
    drop(c);
}

#[test]
fn concat_options_are_checked() {
    let mut o = opts(host_key(0x41));
    o.dhchap_secret = None;
    assert!(o.validate().unwrap_err().contains("needs dhchap_secret"));
    let mut o = opts(host_key(0x41));
    o.tls = Some(made_up("NVMe1G01 a b c", 1));
    assert!(o.validate().unwrap_err().contains("drop tls"));
}
