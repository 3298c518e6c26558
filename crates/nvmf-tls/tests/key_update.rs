//! KeyUpdate from either side, many times, with data flowing one way or both:
//! nothing stalls, data arrives intact, and an update_requested is answered
//! as soon as it is fed (even by a side that never writes).

mod common;

use common::*;
use nvmf_tls::TlsHash;

/// Deliver `from`'s ciphertext to `to` (feeding and reading plaintext).
fn deliver(from: &mut Peer, to: &mut Peer) {
    let mut buf = Vec::new();
    from.s.take_ciphertext(&mut buf);
    to.carry.extend_from_slice(&buf);
    to.ingest();
    assert!(to.err.is_none(), "{:?}", to.err);
}

#[test]
fn writer_initiates_reader_only_reads() {
    for hash in [TlsHash::Sha256, TlsHash::Sha384] {
        let (mut c, mut s) = pair(hash);
        let data = pattern(3 * 1024 * 1024, 11);
        let mut off = 0;
        let mut i = 0u32;
        while off < data.len() {
            let end = data.len().min(off + 10_000);
            off += c.s.write_plaintext(&data[off..end]).unwrap();
            if i.is_multiple_of(3) {
                c.s.key_update(true).unwrap();
                deliver(&mut c, &mut s);
                // The reader answers right away, without writing anything.
                assert!(s.s.wants_write(), "no KeyUpdate answer queued (round {i})");
                deliver(&mut s, &mut c);
            } else {
                deliver(&mut c, &mut s);
            }
            i += 1;
        }
        settle(&mut c, &mut s);
        assert!(s.received == data);
        assert!(c.received.is_empty());
    }
}

#[test]
fn reader_initiates_writer_only_writes() {
    for hash in [TlsHash::Sha256, TlsHash::Sha384] {
        let (mut c, mut s) = pair(hash);
        let data = pattern(3 * 1024 * 1024, 12);
        let mut off = 0;
        let mut i = 0u32;
        while off < data.len() {
            let end = data.len().min(off + 7_000);
            off += c.s.write_plaintext(&data[off..end]).unwrap();
            deliver(&mut c, &mut s);
            if i % 4 == 1 {
                // The server, which only reads, rotates and asks the writer to.
                s.s.key_update(true).unwrap();
                deliver(&mut s, &mut c);
                // The writer processed it on feed and queued its answer.
                assert!(c.s.wants_write(), "writer did not answer (round {i})");
            }
            i += 1;
        }
        settle(&mut c, &mut s);
        assert!(s.received == data);
    }
}

#[test]
fn both_ways_both_sides_many_updates() {
    for hash in [TlsHash::Sha256, TlsHash::Sha384] {
        let (mut c, mut s) = pair(hash);
        let up = pattern(2 * 1024 * 1024, 13);
        let down = pattern(2 * 1024 * 1024 + 17, 14);
        let (mut uo, mut dn) = (0, 0);
        let mut round = 0u64;
        let mut updates = 0;
        while uo < up.len() || dn < down.len() {
            let step = 1 + (round * 7919 % 40_000) as usize;
            if uo < up.len() {
                uo += c.s.write_plaintext(&up[uo..up.len().min(uo + step)]).unwrap();
            }
            if dn < down.len() {
                dn += s.s.write_plaintext(&down[dn..down.len().min(dn + step / 2 + 1)]).unwrap();
            }
            match round % 5 {
                0 => {
                    c.s.key_update(round.is_multiple_of(2)).unwrap();
                    updates += 1;
                }
                1 => {
                    s.s.key_update(true).unwrap();
                    updates += 1;
                }
                2 => {
                    c.s.key_update(true).unwrap();
                    s.s.key_update(true).unwrap();
                    updates += 2;
                }
                _ => {}
            }
            // Sometimes trickle one byte at a time.
            let chunk = if round.is_multiple_of(11) { 1 } else { usize::MAX };
            c.chunk = chunk;
            s.chunk = chunk;
            deliver(&mut c, &mut s);
            deliver(&mut s, &mut c);
            round += 1;
        }
        settle(&mut c, &mut s);
        assert!(updates >= 100, "{updates}");
        assert!(s.received == up, "client→server differs");
        assert!(c.received == down, "server→client differs");
    }
}

#[test]
fn update_then_idle_then_data() {
    // An update with nothing after it, delivered alone, then data later.
    let (mut c, mut s) = pair(TlsHash::Sha256);
    for _ in 0..50 {
        c.s.key_update(false).unwrap();
        s.s.key_update(false).unwrap();
        deliver(&mut c, &mut s);
        deliver(&mut s, &mut c);
        assert!(!c.s.wants_write() && !s.s.wants_write());
    }
    transfer(&mut c, &mut s, b"after fifty updates", 5);
    transfer(&mut s, &mut c, b"and back", 5);
    assert_eq!(s.received, b"after fifty updates");
    assert_eq!(c.received, b"and back");
}
