//! Fuzz support for the TLS-to-PDU boundary ([`fuzz_tls_pdu_input`], the
//! `tls_pdu` cargo-fuzz target): a host byte stream goes through a real TLS
//! 1.3 session in memory, cut into records, KeyUpdates and chunks the input
//! chooses, maybe with damaged ciphertext, and the decrypted bytes reach a
//! target [`Queue`](crate::tcp::Queue) as the engine hands them over
//! (`nvmf_engine`'s `tls_deliver`: whatever a read of the receive buffer's
//! free space gives, the unconsumed tail kept).
//!
//! # Input
//! `flags ‖ n ‖ n × op ‖ queue input`, where the queue input is in the
//! format of [`fuzz_queue_input`](crate::testing::fuzz_queue_input) (a
//! selector byte for the preface, then the body): the host stream is that
//! preface followed by the body. `flags` bit 0: the host ends with
//! close_notify. At most [`OPS_MAX`] ops of 4 bytes `[kind, a, b, c]`, with
//! `v = b << 8 | c` and `w = a << 16 | v`; `kind % 8`:
//! - 0, 7: a record length `v % 16384 + 1` (the host cycles through them;
//!   none: records of 16 KiB);
//! - 1: a KeyUpdate before stream byte `w % (len + 1)`, asking the target
//!   for one too if `kind & 8` (at most [`KEY_UPDATES_MAX`]);
//! - 2: damage record `a` (of the application records, KeyUpdates and
//!   close_notify included) at byte `b` from its start (from its end if
//!   `kind & 8`): XOR with `c`, or cut the ciphertext there if `c == 0`;
//! - 3, 6: a ciphertext arrival size `v + 1` (cycled; none: all at once);
//! - 4, 5: a decryption size `v + 1`, the receive buffer's free space for
//!   one read (cycled; none: 64 KiB).
//!
//! # Checked
//! No panic; the plaintext the queue gets is a prefix of the host stream,
//! never bytes of or after a damaged record; undamaged records all arrive
//! (unless the queue closed first), and damage other than to a record's
//! length is reported by the session; the queue answers exactly as it does
//! to the same bytes in clear in one piece (a second, fresh target); and
//! the host decrypts exactly the queue's output from the target's session.

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use nvmf_engine::nvmf_tls::{ClientOptions, ServerConfig, TlsHash, TlsSession, MAX_PLAINTEXT};
use nvmf_proto::auth::tls_psk::{self, ConfiguredPsk, HkdfLabelLayout, IdentityVersion};
use nvmf_proto::auth::HashId;
use zeroize::Zeroizing;

use crate::config::{HostConfig, NamespaceConfig, SubsystemConfig, TargetConfig};
use crate::subsys::Target;
use crate::testing::{
    fuzz_preface, fuzz_release, test_config_base, test_opener, Driven, StorageMode, FUZZ_HOST, TEST_NQN,
};

/// Ops read from an input, at most.
pub const OPS_MAX: usize = 32;
/// KeyUpdates the host sends, at most (OpenSSL refuses more than 32 in a
/// row without application data in between).
pub const KEY_UPDATES_MAX: usize = 16;
/// Default decryption size (the engine's small receive buffer is of this order).
const READ_DEFAULT: usize = 64 * 1024;
/// Virtual time at the end of a run (deadlines fire in both runs alike).
const END_US: u64 = 3_600_000_000;

/// What every run shares: the host's key, its identity and TLS PSK, the
/// server configuration (PSK lookup through a target with that key, as
/// `crate::tls::server_config` does in production).
struct Fixture {
    key_text: String,
    identity: String,
    psk: Zeroizing<Vec<u8>>,
    server: Arc<ServerConfig>,
    _keys: Arc<Target>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let configured =
            ConfiguredPsk::generate(HashId::Sha256, &mut |b| b.iter_mut().enumerate().for_each(|(i, x)| *x = i as u8))
                .expect("key");
        let key_text = configured.format().to_string();
        let d = tls_psk::derive(&configured, FUZZ_HOST, TEST_NQN, IdentityVersion::V1, HkdfLabelLayout::Rfc8446)
            .expect("derive");
        let keys = tls_target(&key_text);
        let server = crate::tls::server_config(&keys).expect("server config");
        Fixture {
            key_text,
            identity: d.identity,
            psk: Zeroizing::new(d.tls_psk.as_bytes().to_vec()),
            server,
            _keys: keys,
        }
    })
}

/// A fresh target like [`crate::testing::test_target`] whose subsystem has a
/// TLS key for the fuzz host.
fn tls_target(key_text: &str) -> Arc<Target> {
    let mut ns = NamespaceConfig::ram("1MiB");
    ns.nsid = Some(1);
    ns.block_size = Some(512);
    let mut sub = SubsystemConfig::with_namespaces(TEST_NQN, vec![ns]);
    sub.allow_any_host = Some(true);
    sub.hosts = vec![HostConfig { nqn: FUZZ_HOST.into(), tls_key: Some(key_text.into()), ..Default::default() }];
    let cfg = TargetConfig { subsystems: vec![sub], ..test_config_base() };
    Target::new(&cfg, &test_opener).expect("TLS test target")
}

/// The input, parsed.
#[derive(Default)]
struct Plan {
    close_notify: bool,
    rec_lens: Vec<usize>,
    /// (stream position, request the peer's update)
    key_updates: Vec<(usize, bool)>,
    /// (record, offset, from the end, xor or 0 = cut)
    damage: Vec<(usize, usize, bool, u8)>,
    feeds: Vec<usize>,
    reads: Vec<usize>,
}

fn parse(data: &[u8]) -> Option<(Plan, u8, &[u8])> {
    let (&flags, rest) = data.split_first()?;
    let (&n, rest) = rest.split_first()?;
    let n = usize::from(n).min(OPS_MAX).min(rest.len() / 4);
    let (ops, queue_input) = rest.split_at(n * 4);
    let (&sel, body) = queue_input.split_first().unwrap_or((&0, &[]));
    let mut p = Plan { close_notify: flags & 1 != 0, ..Plan::default() };
    for op in ops.chunks_exact(4) {
        let (kind, a, b, c) = (op[0], op[1], op[2], op[3]);
        let v = usize::from(u16::from_be_bytes([b, c]));
        let w = usize::from(a) << 16 | v;
        match kind % 8 {
            0 | 7 => p.rec_lens.push(v % MAX_PLAINTEXT + 1),
            1 if p.key_updates.len() < KEY_UPDATES_MAX => p.key_updates.push((w, kind & 8 != 0)),
            1 => {}
            2 => p.damage.push((usize::from(a), usize::from(b), kind & 8 != 0, c)),
            3 | 6 => p.feeds.push(v + 1),
            _ => p.reads.push(v + 1),
        }
    }
    Some((p, sel, body))
}

/// Cycles through a list of sizes, or gives `default` when it is empty.
struct Sizes<'a> {
    list: &'a [usize],
    i: usize,
    default: usize,
}

impl Sizes<'_> {
    fn next(&mut self) -> usize {
        if self.list.is_empty() {
            return self.default;
        }
        let s = self.list[self.i % self.list.len()];
        self.i += 1;
        s
    }
}

/// One record of the host's ciphertext after the handshake: its bytes and
/// the stream bytes it carries (empty for KeyUpdate and close_notify).
#[derive(Clone, Debug)]
struct Rec {
    ct: Range<usize>,
    pt: Range<usize>,
}

/// FNV-1a over a byte stream, however it is split, and its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Digest(u64, usize);

impl Digest {
    fn new() -> Digest {
        Digest(0xcbf2_9ce4_8422_2325, 0)
    }
    fn add(&mut self, b: &[u8]) {
        for &x in b {
            self.0 = (self.0 ^ u64::from(x)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.1 += b.len();
    }
}

/// Handshake a client and a server session in memory; returns them and the
/// client's last flight (its Finished), not yet given to the server.
fn handshake(f: &Fixture) -> (TlsSession, TlsSession, Vec<u8>) {
    let mut c = TlsSession::client(&f.identity, &f.psk, TlsHash::Sha256, ClientOptions::default()).expect("client");
    let mut s = f.server.session().expect("server session");
    let mut hello = Vec::new();
    c.take_ciphertext(&mut hello);
    assert_eq!(s.feed(&hello), Ok(hello.len()), "ClientHello refused");
    let mut flight = Vec::new();
    s.take_ciphertext(&mut flight);
    assert_eq!(c.feed(&flight), Ok(flight.len()), "server flight refused");
    assert!(c.handshake_done(), "the client did not finish the handshake");
    let mut fin = Vec::new();
    c.take_ciphertext(&mut fin);
    (c, s, fin)
}

/// Encrypt `stream` as the plan says; returns the ciphertext and its records.
fn encrypt(c: &mut TlsSession, stream: &[u8], plan: &Plan) -> (Vec<u8>, Vec<Rec>) {
    let mut ct = Vec::new();
    let mut recs = Vec::new();
    let mut kus: Vec<(usize, bool)> = plan.key_updates.iter().map(|&(w, r)| (w % (stream.len() + 1), r)).collect();
    kus.sort_by_key(|k| k.0);
    let mut lens = Sizes { list: &plan.rec_lens, i: 0, default: MAX_PLAINTEXT };
    let (mut pos, mut k) = (0, 0);
    loop {
        while k < kus.len() && kus[k].0 == pos {
            let at = ct.len();
            c.key_update(kus[k].1).expect("KeyUpdate");
            c.take_ciphertext(&mut ct);
            recs.push(Rec { ct: at..ct.len(), pt: pos..pos });
            k += 1;
        }
        if pos == stream.len() {
            break;
        }
        let stop = kus.get(k).map_or(stream.len(), |u| u.0);
        let end = (pos + lens.next()).min(stop);
        let at = ct.len();
        assert_eq!(c.write_plaintext(&stream[pos..end]), Ok(end - pos), "the host's write was cut");
        c.take_ciphertext(&mut ct);
        recs.push(Rec { ct: at..ct.len(), pt: pos..end });
        pos = end;
    }
    if plan.close_notify {
        let at = ct.len();
        c.close();
        c.take_ciphertext(&mut ct);
        recs.push(Rec { ct: at..ct.len(), pt: pos..pos });
    }
    (ct, recs)
}

/// What damage did: the first changed byte and where the stream was cut.
struct Damage {
    first_changed: Option<usize>,
    cut: Option<usize>,
}

fn apply_damage(ct: &mut Vec<u8>, recs: &[Rec], plan: &Plan) -> Damage {
    let clean = ct.clone();
    let mut cut: Option<usize> = None;
    for &(r, off, from_end, x) in &plan.damage {
        let Some(rec) = recs.get(r % recs.len().max(1)) else { break };
        let len = rec.ct.len();
        let off = off % len;
        let at = rec.ct.start + if from_end { len - 1 - off } else { off };
        if x == 0 {
            cut = Some(cut.map_or(at, |c| c.min(at)));
        } else {
            ct[at] ^= x;
        }
    }
    if let Some(c) = cut {
        ct.truncate(c);
    }
    let first_changed = ct.iter().zip(&clean).position(|(a, b)| a != b);
    Damage { first_changed, cut }
}

/// The record holding ciphertext byte `at`.
fn record_at(recs: &[Rec], at: usize) -> &Rec {
    recs.iter().find(|r| r.ct.contains(&at)).expect("damage inside a record")
}

/// How the TLS run ended.
struct TlsRun {
    delivered: usize,
    out: Digest,
    queue_closed: bool,
    all_fed: bool,
    error: bool,
    peer_closed: bool,
}

/// Give `out` (the queue's output) to the target's session and the
/// ciphertext to the host's; checks the host reads exactly `out`.
fn respond(s: &mut TlsSession, c: &mut TlsSession, out: &[u8], ct: &mut Vec<u8>, got: &mut Vec<u8>) {
    if s.error().is_some() || s.peer_closed() {
        return; // the engine sends nothing more
    }
    let mut off = 0;
    while off < out.len() {
        let n = s.write_plaintext(&out[off..]).expect("target's write");
        s.take_ciphertext(ct);
        assert!(n > 0, "the target's session took nothing");
        off += n;
    }
    s.take_ciphertext(ct);
    let mut fed = 0;
    got.clear();
    while fed < ct.len() {
        let n = c.feed(&ct[fed..]).expect("the host reads the target's records");
        fed += n;
        let r = c.read_plaintext(got, 4 << 20).expect("the host decrypts");
        assert!(n > 0 || r > 0, "host session stuck");
    }
    c.read_plaintext(got, usize::MAX).expect("the host decrypts");
    assert!(got[..] == out[..], "the host decrypted other bytes than the target sent");
    ct.clear();
}

fn run_tls(d: &mut Driven, stream: &[u8], ct: &[u8], plan: &Plan, c: &mut TlsSession, s: &mut TlsSession) -> TlsRun {
    let mut feeds = Sizes { list: &plan.feeds, i: 0, default: usize::MAX };
    let mut reads = Sizes { list: &plan.reads, i: 0, default: READ_DEFAULT };
    let mut buf = vec![0u8; plan.reads.iter().copied().max().unwrap_or(READ_DEFAULT)];
    let (mut out, mut resp_ct, mut got) = (Digest::new(), Vec::new(), Vec::new());
    let (mut off, mut delivered, mut error) = (0, 0, false);
    'run: while d.closed.is_none() {
        let mut progress = false;
        if off < ct.len() {
            let end = ct.len().min(off.saturating_add(feeds.next()));
            match s.feed(&ct[off..end]) {
                Ok(n) => {
                    off += n;
                    progress |= n > 0;
                }
                Err(_) => {
                    error = true;
                    break;
                }
            }
        }
        while s.handshake_done() && d.closed.is_none() {
            let want = reads.next();
            let n = match s.read_plaintext_into(&mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(_) => {
                    error = true;
                    break 'run;
                }
            };
            progress = true;
            assert!(
                stream.get(delivered..delivered + n) == Some(&buf[..n]),
                "the queue would get bytes the host did not send at {delivered}"
            );
            delivered += n;
            d.recv(&buf[..n]);
            let o = std::mem::take(&mut d.out);
            out.add(&o);
            respond(s, c, &o, &mut resp_ct, &mut got);
        }
        if off >= ct.len() || s.peer_closed() {
            break;
        }
        assert!(progress, "nothing fed and nothing read: stuck");
    }
    let queue_closed = d.closed.is_some();
    d.advance_to(END_US);
    let o = std::mem::take(&mut d.out);
    out.add(&o);
    respond(s, c, &o, &mut resp_ct, &mut got);
    TlsRun { delivered, out, queue_closed, all_fed: off >= ct.len(), error, peer_closed: s.peer_closed() }
}

/// The fuzz entry point: never panics on any input; memory bounded by a
/// small multiple of the input's length (plus the queues' own bounds).
pub fn fuzz_tls_pdu_input(data: &[u8]) {
    let Some((plan, sel, body)) = parse(data) else { return };
    let f = fixture();
    let (target, plain_target) = (tls_target(&f.key_text), tls_target(&f.key_text));
    let (mut stream, ctrl) = fuzz_preface(&target, sel);
    let (plain_preface, plain_ctrl) = fuzz_preface(&plain_target, sel);
    assert_eq!(stream, plain_preface);
    stream.extend_from_slice(body);

    let (mut c, mut s, fin) = handshake(f);
    let (mut ct, recs) = encrypt(&mut c, &stream, &plan);
    let damage = apply_damage(&mut ct, &recs, &plan);
    // The server gets the client's Finished, then the records.
    let mut wire = fin;
    let base = wire.len();
    wire.extend_from_slice(&ct);

    let mut d = Driven::new(target.clone());
    d.storage_mode = StorageMode::Pretend;
    d.q.set_tls_identity(&f.identity);
    let r = run_tls(&mut d, &stream, &wire, &plan, &mut c, &mut s);
    d.close();
    fuzz_release(&target, ctrl);

    // Records the queue may have seen: those before the first damage.
    let whole =
        |r: &&Rec| r.ct.end <= damage.cut.unwrap_or(usize::MAX) && damage.first_changed.is_none_or(|m| r.ct.end <= m);
    let intact = recs.iter().take_while(whole).last().map_or(0, |r| r.pt.end);
    assert!(r.delivered <= intact, "{} bytes delivered, only {intact} in intact records", r.delivered);
    if !r.queue_closed && r.all_fed {
        match damage.first_changed {
            None => {
                assert!(!r.error, "the session failed on intact records");
                assert_eq!(r.delivered, intact, "intact records not all delivered");
                let closed = plan.close_notify && damage.cut.is_none();
                assert_eq!(r.peer_closed, closed, "close_notify");
            }
            Some(m) => {
                let rec = record_at(&recs, m);
                // A longer length waits for more; a cut record never ends.
                let in_length = (3..5).contains(&(m - rec.ct.start));
                let cut_short = damage.cut.is_some_and(|c| c < rec.ct.end);
                assert!(r.error || in_length || cut_short, "damage at {} (record {:?}) not reported", m + base, rec);
            }
        }
    }

    // The same bytes in clear, in one piece, to a fresh target.
    let mut p = Driven::new(plain_target.clone());
    p.storage_mode = StorageMode::Pretend;
    p.q.set_tls_identity(&f.identity);
    p.recv(&stream[..r.delivered]);
    p.advance_to(END_US);
    let mut plain_out = Digest::new();
    plain_out.add(&p.out);
    p.close();
    fuzz_release(&plain_target, plain_ctrl);
    assert_eq!(r.out, plain_out, "the queue answered TLS-chunked input otherwise than the same bytes in clear");
}

/// Seed ops, encoded as the input format reads them.
pub mod op {
    /// Records of `len` (1..=16384) bytes.
    pub fn rec(len: usize) -> [u8; 4] {
        let [b, c] = ((len - 1) as u16).to_be_bytes();
        [0, 0, b, c]
    }
    /// A KeyUpdate before stream byte `pos` (< 2^24).
    pub fn key_update(pos: usize, request: bool) -> [u8; 4] {
        [1 | (u8::from(request) << 3), (pos >> 16) as u8, (pos >> 8) as u8, pos as u8]
    }
    /// XOR byte `off` of record `rec` (counted from its end if `from_end`)
    /// with `x`; `x == 0` cuts the ciphertext there.
    pub fn damage(rec: u8, off: u8, from_end: bool, x: u8) -> [u8; 4] {
        [2 | (u8::from(from_end) << 3), rec, off, x]
    }
    /// Ciphertext arrives `n` (1..=65536) bytes at a time.
    pub fn feed(n: usize) -> [u8; 4] {
        let [b, c] = ((n - 1) as u16).to_be_bytes();
        [3, 0, b, c]
    }
    /// Plaintext is decrypted `n` (1..=65536) bytes at a time.
    pub fn read(n: usize) -> [u8; 4] {
        let [b, c] = ((n - 1) as u16).to_be_bytes();
        [4, 0, b, c]
    }
}

/// An input: `flags`, ops, then the queue input (`sel ‖ body`).
pub fn input(flags: u8, ops: &[[u8; 4]], sel: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![flags, ops.len() as u8];
    ops.iter().for_each(|o| v.extend_from_slice(o));
    v.push(sel);
    v.extend_from_slice(body);
    v
}

/// Host streams after the prefaces of [`fuzz_preface`] (`sel` 1: admin
/// queue enabled; 2: I/O queue), and a whole admin session for `sel` 0.
fn seed_body(sel: u8) -> Vec<u8> {
    use nvmf_proto::fabrics::{cc, prop, ConnectCmd, ConnectData, PropertyCmd, CATTR_DISABLE_SQ_FLOW_CONTROL};
    use nvmf_proto::identify::IdentifyCmd;
    use nvmf_proto::opcodes::{cns, io};
    use nvmf_proto::pdu::{self, DataHdr, IcReq, TxConfig};
    use nvmf_proto::{Sgl, Sqe};

    let dg = (sel >> 2) & 3;
    let tx = TxConfig { hdgst: dg & 1 != 0, ddgst: dg & 2 != 0, data_align: 4 };
    let mut b = Vec::new();
    match sel % 3 {
        0 => {
            pdu::encode_ic_req(&mut b, &IcReq { pfv: 0, hpda: 0, dgst: dg, maxr2t: 0 });
            let conn = ConnectCmd { recfmt: 0, qid: 0, sqsize: 31, cattr: CATTR_DISABLE_SQ_FLOW_CONTROL, kato_ms: 0 };
            let data =
                ConnectData { hostid: [1; 16], cntlid: 0xffff, subnqn: TEST_NQN.into(), hostnqn: FUZZ_HOST.into() };
            pdu::encode_capsule_cmd(&mut b, &conn.to_sqe(0), &data.encode(), &tx);
            let en = PropertyCmd::set_sqe(1, prop::CC, false, cc::LINUX_ENABLE as u64);
            pdu::encode_capsule_cmd(&mut b, &en, &[], &tx);
            let id = IdentifyCmd { cns: cns::CONTROLLER, cntid: 0, csi: 0, nsid: 0 };
            pdu::encode_capsule_cmd(&mut b, &id.to_sqe(2), &[], &tx);
            pdu::encode_capsule_cmd(&mut b, &nvmf_proto::fabrics::disconnect_sqe(3), &[], &tx);
        }
        1 => {
            let id = IdentifyCmd { cns: cns::CONTROLLER, cntid: 0, csi: 0, nsid: 0 };
            pdu::encode_capsule_cmd(&mut b, &id.to_sqe(1), &[], &tx);
            let id = IdentifyCmd { cns: cns::NAMESPACE, cntid: 0, csi: 0, nsid: 1 };
            pdu::encode_capsule_cmd(&mut b, &id.to_sqe(2), &[], &tx);
            pdu::encode_capsule_cmd(&mut b, &PropertyCmd::get_sqe(3, prop::CSTS, false), &[], &tx);
        }
        _ => {
            // Through an R2T first (slot 0: transfer tag 0), then in capsule.
            let mut w = Sqe::rw(io::WRITE, 1, 1, 8, 16);
            w.sgl1 = Sgl::transport(8192);
            pdu::encode_capsule_cmd(&mut b, &w, &[], &tx);
            let h = DataHdr { cccid: 1, ttag: 0, offset: 0, length: 8192 };
            let data: Vec<u8> = (0..8192u32).map(|i| (i * 13) as u8).collect();
            pdu::encode_data_pdu(&mut b, false, pdu::flags::LAST_PDU, &h, &data, &tx);
            let mut w = Sqe::rw(io::WRITE, 2, 1, 0, 1);
            w.sgl1 = Sgl::in_capsule(0, 512);
            pdu::encode_capsule_cmd(&mut b, &w, &[0xa5; 512], &tx);
            let mut r = Sqe::rw(io::READ, 3, 1, 0, 24);
            r.sgl1 = Sgl::transport(12288);
            pdu::encode_capsule_cmd(&mut b, &r, &[], &tx);
        }
    }
    b
}

/// Seed inputs: clean sessions in various records and chunks, KeyUpdates
/// between and inside PDUs, damaged and cut records, close_notify.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    use op::*;
    let io_dg = 2 | (3 << 2);
    let list: Vec<(&str, u8, Vec<[u8; 4]>, u8)> = vec![
        ("admin-clean", 0, vec![], 1),
        ("session-rec7-read5", 0, vec![rec(7), read(5)], 0),
        ("session-feed1-read1", 0, vec![feed(1), read(1)], 0),
        ("io-clean", 0, vec![], 2),
        ("io-digests-rec1000-feed13-read100", 0, vec![rec(1000), feed(13), read(100)], io_dg),
        (
            "io-keyupdates",
            0,
            vec![
                key_update(0, true),
                key_update(128, false),
                key_update(200, true),
                key_update(9000, false),
                rec(3000),
                read(777),
            ],
            2,
        ),
        ("io-h2c-across-records", 0, vec![rec(4000), read(1500), key_update(5000, true), feed(4096)], io_dg),
        (
            "io-mixed-sizes",
            0,
            vec![rec(1), rec(100), rec(16384), rec(33), read(64), read(9000), feed(17), feed(5000)],
            2,
        ),
        ("admin-damage-payload", 0, vec![rec(100), damage(3, 40, false, 0x80)], 1),
        ("admin-damage-type", 0, vec![rec(100), damage(2, 0, false, 0x01)], 1),
        ("io-damage-length", 0, vec![rec(500), damage(2, 3, false, 0x01)], 2),
        ("io-damage-length-lo", 0, vec![rec(500), damage(5, 4, false, 0x40)], 2),
        ("io-damage-tag", 0, vec![rec(2000), damage(4, 0, true, 0xff), read(300)], io_dg),
        ("io-cut-mid-record", 0, vec![rec(2000), damage(3, 10, false, 0)], 2),
        ("io-damage-keyupdate", 0, vec![key_update(500, true), damage(1, 10, false, 0x20)], 2),
        ("io-close-notify", 1, vec![key_update(300, true), rec(5000)], 2),
        ("session-close-notify-cut", 1, vec![damage(255, 2, true, 0)], 0),
    ];
    list.into_iter()
        .map(|(name, flags, ops, sel)| (format!("seed-{name}"), input(flags, &ops, sel, &seed_body(sel))))
        .collect()
}
