//! In-memory peers for the session tests.
#![allow(dead_code)]

use std::sync::Arc;

use nvmf_tls::{ClientOptions, PskLookup, TlsError, TlsHash, TlsSession};
use zeroize::Zeroizing;

pub const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:0b8f2d4e-8d4a-4d5e-9b1a-3c2f1e0d9c8b";
pub const SUBNQN: &str = "nqn.2024-01.io.nvmf:tls-test";

pub fn key(hash: TlsHash, seed: u8) -> Vec<u8> {
    (0..hash.psk_len()).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

pub fn identity(hash: TlsHash) -> String {
    let hh = match hash {
        TlsHash::Sha256 => 1,
        TlsHash::Sha384 => 2,
    };
    format!("NVMe0R{hh:02} {HOSTNQN} {SUBNQN}")
}

/// A lookup that knows exactly these identities.
pub fn lookup(entries: Vec<(String, Vec<u8>, TlsHash)>) -> Arc<PskLookup> {
    Arc::new(move |id: &[u8]| {
        entries.iter().find(|(i, _, _)| i.as_bytes() == id).map(|(_, k, h)| (Zeroizing::new(k.clone()), *h))
    })
}

pub struct Peer {
    pub s: TlsSession,
    /// Plaintext received.
    pub received: Vec<u8>,
    /// Ciphertext from the other side not yet fed.
    pub carry: Vec<u8>,
    /// Feed granularity.
    pub chunk: usize,
    pub err: Option<TlsError>,
}

impl Peer {
    pub fn new(s: TlsSession) -> Peer {
        Peer { s, received: Vec::new(), carry: Vec::new(), chunk: usize::MAX, err: None }
    }

    /// Feed what we carry (in `chunk`-sized pieces), reading plaintext as we
    /// go. Returns whether anything moved.
    pub fn ingest(&mut self) -> bool {
        let mut moved = false;
        let mut off = 0;
        while off < self.carry.len() && self.err.is_none() {
            let end = self.carry.len().min(off.saturating_add(self.chunk));
            match self.s.feed(&self.carry[off..end]) {
                Ok(n) => {
                    off += n;
                    moved |= n > 0;
                }
                Err(e) => {
                    self.err = Some(e);
                    break;
                }
            }
            match self.s.read_plaintext(&mut self.received, usize::MAX) {
                Ok(n) => moved |= n > 0,
                Err(e) => self.err = Some(e),
            }
        }
        self.carry.drain(..off);
        if self.err.is_none() {
            match self.s.read_plaintext(&mut self.received, usize::MAX) {
                Ok(n) => moved |= n > 0,
                Err(e) => self.err = Some(e),
            }
        }
        moved
    }
}

/// Move ciphertext a→b and b→a until neither side has anything to say.
pub fn settle(a: &mut Peer, b: &mut Peer) {
    for _ in 0..10_000 {
        let mut moved = false;
        let mut buf = Vec::new();
        a.s.take_ciphertext(&mut buf);
        moved |= !buf.is_empty();
        b.carry.extend_from_slice(&buf);
        moved |= b.ingest();
        let mut buf = Vec::new();
        b.s.take_ciphertext(&mut buf);
        moved |= !buf.is_empty();
        a.carry.extend_from_slice(&buf);
        moved |= a.ingest();
        if !moved && a.carry.is_empty() && b.carry.is_empty() {
            return;
        }
        if a.err.is_some() && b.err.is_some() {
            return;
        }
    }
    panic!("no progress after 10000 rounds");
}

pub fn pair_with(hash: TlsHash, opts: ClientOptions) -> (Peer, Peer) {
    let id = identity(hash);
    let k = key(hash, 7);
    let server = TlsSession::server(lookup(vec![(id.clone(), k.clone(), hash)])).expect("server");
    let client = TlsSession::client(&id, &k, hash, opts).expect("client");
    let (mut c, mut s) = (Peer::new(client), Peer::new(server));
    settle(&mut c, &mut s);
    assert!(c.err.is_none() && s.err.is_none(), "{:?} {:?}", c.err, s.err);
    assert!(c.s.handshake_done() && s.s.handshake_done());
    (c, s)
}

pub fn pair(hash: TlsHash) -> (Peer, Peer) {
    pair_with(hash, ClientOptions::default())
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Write all of `data` from `from` to `to`, honouring backpressure.
pub fn transfer(from: &mut Peer, to: &mut Peer, data: &[u8], write_size: usize) {
    let mut off = 0;
    while off < data.len() {
        let end = data.len().min(off + write_size);
        let n = from.s.write_plaintext(&data[off..end]).expect("write");
        off += n;
        let mut buf = Vec::new();
        from.s.take_ciphertext(&mut buf);
        to.carry.extend_from_slice(&buf);
        to.ingest();
        assert!(to.err.is_none(), "{:?}", to.err);
    }
    settle(from, to);
}
