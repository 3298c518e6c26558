//! Fuzz entry point ([`records`], the `tls_records` cargo-fuzz target) and its
//! seeds. `cargo test` replays `fuzz/corpus/tls_records/` on stable.
//!
//! Input: `sel ‖ rest`. `sel % 4` picks the mode, `sel / 4 % 4` the feed
//! granularity (whole, 1 byte, 7 bytes, 1000 bytes):
//! - 0: `rest` is raw ciphertext fed to a fresh server;
//! - 1: `rest` is raw ciphertext fed to a fresh client (after its ClientHello);
//! - 2: a real handshake whose flights are mutated in flight by the ops in `rest`;
//! - 3: a real handshake, then client→server records (data, KeyUpdates,
//!   close_notify) mutated by the ops, and server→client the same.
//!
//! Ops (modes 2 and 3): `n ‖ n × (flight, pos_hi, pos_lo, xor)`; an op whose
//! `xor` is 0 truncates the flight at `pos`; bytes after the ops are appended
//! to the last flight. Checked: no panic, buffers within their bounds, and a
//! session that reports success in mode 3 without mutations got the data.

use std::sync::Arc;

use zeroize::Zeroizing;

use crate::{ClientOptions, Limits, TlsHash, TlsSession, MAX_RECORD_LEN};

const IDENTITY: &str = "NVMe0R01 nqn.2014-08.org.nvmexpress:uuid:fuzz-host nqn.2024-01.io.nvmf:fuzz";
const KEY: [u8; 32] = [0x42; 32];

fn server() -> TlsSession {
    let lookup =
        Arc::new(|id: &[u8]| (id == IDENTITY.as_bytes()).then(|| (Zeroizing::new(KEY.to_vec()), TlsHash::Sha256)));
    TlsSession::server(lookup).expect("server session")
}

fn client() -> TlsSession {
    TlsSession::client(IDENTITY, &KEY, TlsHash::Sha256, ClientOptions::default()).expect("client session")
}

fn chunk_size(sel: u8) -> usize {
    match (sel / 4) % 4 {
        0 => usize::MAX,
        1 => 1,
        2 => 7,
        _ => 1000,
    }
}

/// Feed `bytes` (in `chunk` pieces), reading plaintext as we go, and check the
/// bounds. Returns false once the session failed or stopped taking input.
fn feed_all(s: &mut TlsSession, bytes: &[u8], chunk: usize, plain: &mut Vec<u8>) -> bool {
    let limits = Limits::default();
    let mut off = 0;
    while off < bytes.len() {
        let end = bytes.len().min(off.saturating_add(chunk));
        let n = match s.feed(&bytes[off..end]) {
            Ok(n) => n,
            Err(_) => return false,
        };
        assert!(s.inbound_pending() <= limits.inbound_max);
        off += n;
        let before = plain.len();
        if s.read_plaintext(plain, 1 << 20).is_err() {
            return false;
        }
        assert!(plain.len() - before <= 1 << 20);
        if n == 0 && plain.len() == before {
            return false; // stuck: full inbound that yields nothing
        }
        plain.clear();
        assert!(s.pending_ciphertext().len() <= limits.outbound_max + 2 * MAX_RECORD_LEN);
    }
    true
}

struct Ops<'a> {
    ops: Vec<(u8, usize, u8)>,
    tail: &'a [u8],
}

fn parse_ops(rest: &[u8]) -> Ops<'_> {
    let Some((&n, body)) = rest.split_first() else { return Ops { ops: Vec::new(), tail: &[] } };
    let n = usize::from(n).min(body.len() / 4);
    let ops =
        body[..n * 4].chunks_exact(4).map(|o| (o[0], usize::from(u16::from_be_bytes([o[1], o[2]])), o[3])).collect();
    Ops { ops, tail: &body[n * 4..] }
}

fn mutate(flight: &mut Vec<u8>, index: u8, ops: &Ops<'_>, last: bool) {
    for &(f, pos, x) in &ops.ops {
        if f % 8 != index || flight.is_empty() {
            continue;
        }
        if x == 0 {
            flight.truncate(pos);
        } else {
            let p = pos % flight.len();
            flight[p] ^= x;
        }
    }
    if last {
        flight.extend_from_slice(ops.tail);
    }
}

/// The entry point: never panics on any input, bounded memory and time.
pub fn records(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else { return };
    let chunk = chunk_size(sel);
    let mut plain = Vec::new();
    match sel % 4 {
        0 => {
            let mut s = server();
            if feed_all(&mut s, rest, chunk, &mut plain) && s.handshake_done() {
                let _ = s.write_plaintext(b"reply");
            }
            let mut out = Vec::new();
            s.take_ciphertext(&mut out);
        }
        1 => {
            let mut c = client();
            let mut hello = Vec::new();
            c.take_ciphertext(&mut hello);
            feed_all(&mut c, rest, chunk, &mut plain);
            let _ = c.key_update(true);
            c.close();
        }
        2 => handshake_mutated(rest, chunk),
        _ => established_mutated(rest, chunk),
    }
}

fn handshake_mutated(rest: &[u8], chunk: usize) {
    let ops = parse_ops(rest);
    let (mut c, mut s) = (client(), server());
    let mut plain = Vec::new();
    // Flights 0..=3: ClientHello, server flight, client Finished (+ data), server data.
    let _ = c.write_plaintext(b"early?"); // NotReady: must not break anything
    for index in 0..4u8 {
        let (from, to) = if index % 2 == 0 { (&mut c, &mut s) } else { (&mut s, &mut c) };
        if index == 2 && from.handshake_done() {
            let _ = from.write_plaintext(b"first data");
        }
        if index == 3 && from.handshake_done() {
            let _ = from.write_plaintext(b"answer");
            let _ = from.key_update(true);
        }
        let mut flight = Vec::new();
        from.take_ciphertext(&mut flight);
        mutate(&mut flight, index, &ops, index == 3);
        if !feed_all(to, &flight, chunk, &mut plain) {
            break;
        }
    }
}

fn established_mutated(rest: &[u8], chunk: usize) {
    let ops = parse_ops(rest);
    let (mut c, mut s) = (client(), server());
    let mut plain = Vec::new();
    for _ in 0..4 {
        let mut f = Vec::new();
        c.take_ciphertext(&mut f);
        feed_all(&mut s, &f, usize::MAX, &mut plain);
        let mut f = Vec::new();
        s.take_ciphertext(&mut f);
        feed_all(&mut c, &f, usize::MAX, &mut plain);
    }
    if !c.handshake_done() || !s.handshake_done() {
        return; // OpenSSL failed without mutation: nothing to fuzz
    }
    let payload: Vec<u8> = (0..40_000u32).map(|i| (i * 7 + 3) as u8).collect();
    for index in 0..4u8 {
        let (from, to) = if index % 2 == 0 { (&mut c, &mut s) } else { (&mut s, &mut c) };
        let _ = from.write_plaintext(&payload[..usize::from(index) * 9000 + 100]);
        match index {
            0 => drop(from.key_update(true)),
            1 => drop(from.key_update(false)),
            3 => from.close(),
            _ => {}
        }
        let _ = from.write_plaintext(b"after the update");
        let mut flight = Vec::new();
        from.take_ciphertext(&mut flight);
        let clean = ops.ops.iter().all(|o| o.0 % 8 < 4) && ops.tail.is_empty();
        mutate(&mut flight, index + 4, &ops, index == 3);
        let mut got = Vec::new();
        let mut off = 0;
        let mut ok = true;
        while off < flight.len() && ok {
            let end = flight.len().min(off.saturating_add(chunk));
            match to.feed(&flight[off..end]) {
                Ok(n) => off += n,
                Err(_) => ok = false,
            }
            if to.read_plaintext(&mut got, 1 << 20).is_err() {
                ok = false;
            }
        }
        if clean && ok {
            let mut expect = payload[..usize::from(index) * 9000 + 100].to_vec();
            if index != 3 {
                expect.extend_from_slice(b"after the update");
            }
            assert_eq!(got, expect, "unmutated records lost data");
        }
    }
}

/// Seed inputs: recorded real flights and small op lists.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    // A real ClientHello for the server, whole and in 1/7/1000-byte feeds.
    let mut c = client();
    let mut hello = Vec::new();
    c.take_ciphertext(&mut hello);
    for g in 0..4u8 {
        let mut v = vec![g * 4];
        v.extend_from_slice(&hello);
        out.push((format!("seed-server-clienthello-{g}"), v));
    }
    // A real server flight for a (fresh) client: its randoms differ, so the
    // client fails at the binder/Finished, after parsing it all.
    let mut s = server();
    let _ = s.feed(&hello);
    let mut flight = Vec::new();
    s.take_ciphertext(&mut flight);
    for g in [0u8, 1] {
        let mut v = vec![1 + g * 4];
        v.extend_from_slice(&flight);
        out.push((format!("seed-client-serverflight-{g}"), v));
    }
    // Op lists.
    let op_lists: [(&str, u8, &[u8]); 6] = [
        ("hs-clean", 2, &[0]),
        ("hs-flip-hello", 2, &[1, 0, 0, 40, 0x01]),
        ("hs-truncate-server", 2 | 4, &[1, 1, 0, 60, 0]),
        ("est-clean", 3, &[0]),
        ("est-flip-data", 3, &[1, 4, 0, 20, 0x80]),
        ("est-flip-keyupdate-tail", 3 | 8, &[2, 5, 0, 3, 0x10, 7, 0, 2, 0, 0x17, 0x03, 0x03, 0x00, 0x01, 0x00]),
    ];
    for (name, sel, ops) in op_lists {
        let mut v = vec![sel];
        v.extend_from_slice(ops);
        out.push((format!("seed-{name}"), v));
    }
    out
}
