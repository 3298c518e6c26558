//! Generated TLS PSKs of secure channel concatenation (NVMe Base 2.x
//! "Generated PSK for TLS"; Linux 6.15 `nvmet_auth_insert_psk`).
//!
//! After a DH-HMAC-CHAP transaction with SC_C NEWTLSPSK or REPLACETLSPSK
//! succeeded on an admin queue, the generated PSK `HMAC(Ks, C1 ‖ C2)` gives
//! a TLS PSK and its identity `NVMe1G<hh> <NQNh> <NQNc> <digest>`
//! ([`nvmf_proto::auth::tls_psk::derive_generated`]). The table keeps it so the
//! host's next TLS handshakes (the admin queue reconnected, then the I/O
//! queues) find it:
//! - one entry per (host NQN, subsystem NQN): each new concatenation replaces
//!   the pair's entry (REPLACETLSPSK, or a host starting over);
//! - at most [`GENERATED_PSKS_MAX`] entries; inserting beyond evicts the
//!   oldest entry (its host concatenates again on its next connect);
//! - a ClientHello gets a PSK only for the exact identity of an entry, so an
//!   `NVMe1G…` identity someone made up, or an old one, is refused;
//! - entries live in memory only (a restarted target forgets them: the host
//!   authenticates again) and are never logged: `Debug` shows the count.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use nvmf_engine::nvmf_tls::TlsHash;
use nvmf_proto::auth::tls_psk::DerivedPsk;
use nvmf_proto::auth::{HashId, Secret};
use zeroize::Zeroizing;

/// Entries the table keeps at most (see the module docs).
pub const GENERATED_PSKS_MAX: usize = 1024;

struct Entry {
    host_nqn: String,
    subsys_nqn: String,
    identity: String,
    tls_psk: Secret,
    hash: TlsHash,
}

/// The generated TLS PSKs of a target. See the module docs.
#[derive(Default)]
pub struct GeneratedPsks {
    entries: Mutex<VecDeque<Entry>>,
    /// TLS handshakes a generated PSK was served to.
    pub served: AtomicU64,
    /// Generated PSKs inserted (new or replacing).
    pub inserted: AtomicU64,
}

impl std::fmt::Debug for GeneratedPsks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedPsks").field("entries", &self.len()).finish_non_exhaustive()
    }
}

impl GeneratedPsks {
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keep `derived` (from DH-HMAC-CHAP hash `hash`) for `host_nqn` and
    /// `subsys_nqn`, replacing the pair's previous entry. `false` when the
    /// hash has no TLS suite (SHA-512: nothing is kept).
    pub fn insert(&self, host_nqn: &str, subsys_nqn: &str, hash: HashId, derived: DerivedPsk) -> bool {
        let Some(hash) = TlsHash::from_psk_len(hash.digest_len()) else { return false };
        let mut entries = self.entries.lock().unwrap();
        entries.retain(|e| e.host_nqn != host_nqn || e.subsys_nqn != subsys_nqn);
        while entries.len() >= GENERATED_PSKS_MAX {
            entries.pop_front();
        }
        entries.push_back(Entry {
            host_nqn: host_nqn.to_string(),
            subsys_nqn: subsys_nqn.to_string(),
            identity: derived.identity,
            tls_psk: derived.tls_psk,
            hash,
        });
        self.inserted.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// The TLS PSK for exactly this identity, if an entry has it.
    pub fn lookup(&self, identity: &str) -> Option<(Zeroizing<Vec<u8>>, TlsHash)> {
        let entries = self.entries.lock().unwrap();
        // Not secret: the identity travels in clear in the ClientHello.
        let e = entries.iter().find(|e| e.identity == identity)?;
        self.served.fetch_add(1, Ordering::Relaxed);
        Some((Zeroizing::new(e.tls_psk.as_bytes().to_vec()), e.hash))
    }

    /// The identity of the pair's entry (tests, diagnostics; not secret).
    pub fn identity(&self, host_nqn: &str, subsys_nqn: &str) -> Option<String> {
        let entries = self.entries.lock().unwrap();
        entries.iter().find(|e| e.host_nqn == host_nqn && e.subsys_nqn == subsys_nqn).map(|e| e.identity.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvmf_proto::auth::tls_psk;

    fn derived(host: &str, fill: u8) -> DerivedPsk {
        tls_psk::derive_generated(HashId::Sha256, &Secret::new(vec![fill; 32]), host, "nqn.2026-12.io.nvmf:s").unwrap()
    }

    #[test]
    fn replaces_per_pair_bounds_and_serves_exact_identities_only() {
        let t = GeneratedPsks::default();
        let first = derived("nqn.h:a", 1);
        let first_id = first.identity.clone();
        assert!(t.insert("nqn.h:a", "nqn.2026-12.io.nvmf:s", HashId::Sha256, first));
        let second = derived("nqn.h:a", 2);
        let second_id = second.identity.clone();
        assert!(t.insert("nqn.h:a", "nqn.2026-12.io.nvmf:s", HashId::Sha256, second));
        assert_eq!(t.len(), 1);
        assert!(t.lookup(&first_id).is_none(), "replaced");
        assert!(t.lookup(&second_id).is_some());
        assert!(t.lookup(&second_id.replace("NVMe1G01", "NVMe1R01")).is_none());
        assert!(!t.insert("nqn.h:a", "nqn.2026-12.io.nvmf:s", HashId::Sha512, derived("nqn.h:a", 3)));
        for i in 0..GENERATED_PSKS_MAX + 5 {
            let host = format!("nqn.h:{i}");
            t.insert(&host, "nqn.2026-12.io.nvmf:s", HashId::Sha256, derived(&host, 4));
        }
        assert_eq!(t.len(), GENERATED_PSKS_MAX);
        assert!(t.lookup(&second_id).is_none(), "oldest evicted");
        assert!(!format!("{t:?}").contains("NVMe1G"));
    }
}
