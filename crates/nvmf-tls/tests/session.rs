//! Client ↔ server in memory: handshakes, data, failures.

mod common;

use common::*;
use nvmf_tls::{ClientOptions, KeyExchange, TlsError, TlsHash, TlsSession};

#[test]
fn handshake_sha256_and_sha384() {
    for hash in [TlsHash::Sha256, TlsHash::Sha384] {
        let (c, s) = pair(hash);
        assert_eq!(c.s.hash(), Some(hash));
        assert_eq!(s.s.hash(), Some(hash));
        assert_eq!(s.s.peer_identity(), Some(identity(hash).as_str()));
        assert_eq!(c.s.key_exchange(), Some(KeyExchange::PskDhe));
        assert_eq!(s.s.key_exchange(), Some(KeyExchange::PskDhe));
        assert!(s.s.is_server() && !c.s.is_server());
    }
}
