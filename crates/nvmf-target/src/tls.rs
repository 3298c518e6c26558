//! TLS 1.3 on the target (NVMe/TCP transport specification 3.6): the PSK
//! a host's identity selects, and the checks a Connect over TLS (or without
//! it) must pass.
//!
//! The record layer runs on the engine (`nvmf_engine::ListenerTls`); this
//! module decides which key a ClientHello gets:
//! * the identity names the host NQN and the subsystem NQN (`NVMe0R<hh>
//!   <NQNh> <NQNc>` or `NVMe1R<hh> <NQNh> <NQNc> <digest>`);
//! * the host's `[[subsystem.host]]` table of that subsystem holds the
//!   configured PSK (`tls_key`, interchange format). For the discovery NQN
//!   the first subsystem with a TLS key for that host is used;
//! * the TLS PSK is derived from it as the host derived it (RFC 8446 layout,
//!   or libnvme before 1.16 with `tls_key_compat`), and the identity the
//!   host offered must be the one that derivation gives (its hash and, for
//!   v1, its digest), so a host cannot pick another hash for the same key.
//!
//! At Connect ([`check_connect`]) the host and subsystem NQNs must be the
//! identity's, and a host with a TLS key must use TLS.
//!
//! Generated PSKs (`NVMe1G…`, secure channel concatenation) come from the
//! target's [`GeneratedPsks`](crate::generated_psk::GeneratedPsks) table,
//! filled by DH-HMAC-CHAP on admin queues: an identity not in it is refused.

use std::sync::{Arc, Weak};

use nvmf_engine::nvmf_tls::{ServerConfig, TlsError, TlsHash};
use nvmf_engine::ListenerTls;
use nvmf_proto::auth::tls_psk::{self, ConfiguredPsk, HkdfLabelLayout, ParsedIdentity, PskOrigin};
use nvmf_proto::auth::AuthError;
use nvmf_proto::DISCOVERY_NQN;
use zeroize::Zeroizing;

use crate::config::TlsMode;
use crate::subsys::Target;

/// A host's configured TLS PSK and how to derive from it.
pub struct TlsHostKey {
    configured: ConfiguredPsk,
    layout: HkdfLabelLayout,
}

impl std::fmt::Debug for TlsHostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsHostKey").field("layout", &self.layout).finish_non_exhaustive()
    }
}

impl TlsHostKey {
    /// Parse an interchange-format key (`NVMeTLSkey-1:hh:…:`). `compat`:
    /// derive as libnvme before 1.16 did.
    pub fn parse(text: &str, compat: bool) -> Result<TlsHostKey, AuthError> {
        let configured = ConfiguredPsk::parse(text)?;
        let layout = if compat { HkdfLabelLayout::LibnvmeLegacy } else { HkdfLabelLayout::Rfc8446 };
        Ok(TlsHostKey { configured, layout })
    }

    /// The TLS PSK for `identity` (offered as `text`), or `None` when the
    /// identity is not the one this key gives for its NQNs.
    fn psk_for(&self, identity: &ParsedIdentity<'_>, text: &str) -> Option<(Zeroizing<Vec<u8>>, TlsHash)> {
        if identity.origin != PskOrigin::Retained {
            return None;
        }
        let derived =
            tls_psk::derive(&self.configured, identity.host_nqn, identity.subsys_nqn, identity.version, self.layout)
                .ok()?;
        // Not secret: the identity travels in clear in the ClientHello.
        if derived.identity != text {
            return None;
        }
        // tls_hash() is SHA-256 or SHA-384, the TLS hash of that PSK length.
        let hash = TlsHash::from_psk_len(self.configured.tls_hash().digest_len()).unwrap_or(TlsHash::Sha256);
        Some((Zeroizing::new(derived.tls_psk.as_bytes().to_vec()), hash))
    }
}

/// The engine's view of a listener's TLS mode.
pub fn listener_tls(mode: TlsMode, cfg: &Arc<ServerConfig>) -> ListenerTls {
    match mode {
        TlsMode::None => ListenerTls::Off,
        TlsMode::Allowed => ListenerTls::Allowed(cfg.clone()),
        TlsMode::Required => ListenerTls::Required(cfg.clone()),
    }
}

/// The TLS server configuration of a target: one per target, shared by its
/// listeners. Holds the target weakly (the engine outlives nothing of it).
pub fn server_config(target: &Arc<Target>) -> Result<Arc<ServerConfig>, TlsError> {
    let weak: Weak<Target> = Arc::downgrade(target);
    let lookup = move |identity: &[u8]| match psk_lookup(&weak, identity) {
        Ok(found) => Some(found),
        Err(why) => {
            // The identity travels in clear; it is what an operator needs to
            // see to fix a mismatch (the most common TLS set-up problem).
            let now_us =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
            crate::peer_warn!(now_us, "TLS PSK identity {:?}: {why}", String::from_utf8_lossy(identity));
            None
        }
    };
    Ok(Arc::new(ServerConfig::new(Arc::new(lookup))?))
}

/// The PSK for a ClientHello's identity, or why there is none (no secret in it).
fn psk_lookup(target: &Weak<Target>, identity: &[u8]) -> Result<(Zeroizing<Vec<u8>>, TlsHash), &'static str> {
    let text = std::str::from_utf8(identity).map_err(|_| "not UTF-8")?;
    let parsed = tls_psk::parse_identity(text).ok_or("not an NVMe PSK identity")?;
    let target = target.upgrade().ok_or("the target is shutting down")?;
    if parsed.origin == PskOrigin::Generated {
        return target.generated_psks.lookup(text).ok_or(
            "no generated PSK for this identity (secure channel concatenation: the host authenticates on a plain \
             admin queue first)",
        );
    }
    let key = target
        .tls_key(parsed.host_nqn, parsed.subsys_nqn)
        .ok_or("no TLS key for this host and subsystem (tls_key in its [[subsystem.host]] table)")?;
    key.psk_for(&parsed, text).ok_or(
        "the host's key gives another identity (hash, digest or a generated PSK); check tls_key and tls_key_compat",
    )
}

impl Target {
    /// The TLS key of `host_nqn` for `subsys_nqn` (for the discovery NQN: the
    /// first subsystem with one for that host).
    pub fn tls_key(&self, host_nqn: &str, subsys_nqn: &str) -> Option<Arc<TlsHostKey>> {
        if subsys_nqn == DISCOVERY_NQN {
            return self.subsystems().iter().find_map(|s| s.tls_key(host_nqn));
        }
        self.subsystem(subsys_nqn)?.tls_key(host_nqn)
    }
}

/// Why a Connect is refused on TLS grounds (the caller answers Connect
/// Invalid Host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsRefusal {
    /// Over TLS, with NQNs other than the identity's.
    IdentityMismatch,
    /// Without TLS, by a host that has a TLS key.
    TlsNeeded,
}

/// Check a Connect for `host_nqn` to `subsys_nqn` that came over TLS with
/// `identity`, or in clear (`None`). `has_key`: the host has a TLS key for
/// that subsystem.
pub fn check_connect(
    identity: Option<&str>,
    host_nqn: &str,
    subsys_nqn: &str,
    has_key: bool,
) -> Result<(), TlsRefusal> {
    match identity {
        Some(text) => {
            let ok =
                tls_psk::parse_identity(text).is_some_and(|p| p.host_nqn == host_nqn && p.subsys_nqn == subsys_nqn);
            if ok {
                Ok(())
            } else {
                Err(TlsRefusal::IdentityMismatch)
            }
        }
        // Discovery in clear is allowed where the listener allows clear.
        None if has_key && subsys_nqn != DISCOVERY_NQN => Err(TlsRefusal::TlsNeeded),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvmf_proto::auth::tls_psk::IdentityVersion;
    use nvmf_proto::auth::HashId;

    const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555";
    const SUB: &str = "nqn.2026-12.io.nvmf:tls";

    fn key(hash: HashId) -> String {
        let mut n = 0u8;
        ConfiguredPsk::generate(hash, &mut |b| {
            for x in b {
                n = n.wrapping_add(7);
                *x = n;
            }
        })
        .unwrap()
        .format()
        .to_string()
    }

    #[test]
    fn the_identity_a_host_derives_gets_the_psk_it_derives() {
        for hash in [HashId::Sha256, HashId::Sha384] {
            for compat in [false, true] {
                for version in [IdentityVersion::V0, IdentityVersion::V1] {
                    let text = key(hash);
                    let k = TlsHostKey::parse(&text, compat).unwrap();
                    let layout = if compat { HkdfLabelLayout::LibnvmeLegacy } else { HkdfLabelLayout::Rfc8446 };
                    let host =
                        tls_psk::derive(&ConfiguredPsk::parse(&text).unwrap(), HOST, SUB, version, layout).unwrap();
                    let parsed = tls_psk::parse_identity(&host.identity).unwrap();
                    let (psk, h) = k.psk_for(&parsed, &host.identity).expect("served");
                    assert_eq!(&psk[..], host.tls_psk.as_bytes());
                    assert_eq!(h, if hash == HashId::Sha384 { TlsHash::Sha384 } else { TlsHash::Sha256 });
                }
            }
        }
    }

    #[test]
    fn other_identities_get_nothing() {
        let k = TlsHostKey::parse(&key(HashId::Sha256), false).unwrap();
        let good = tls_psk::derive(&k.configured, HOST, SUB, IdentityVersion::V1, HkdfLabelLayout::Rfc8446).unwrap();
        // Another hash for the same NQNs, a wrong digest, a generated PSK.
        let other_hash = good.identity.replacen("NVMe1R01", "NVMe1R02", 1);
        let mut bad_digest = good.identity.clone();
        bad_digest.pop();
        bad_digest.push('x');
        let generated = good.identity.replacen("NVMe1R", "NVMe1G", 1);
        for text in [other_hash, bad_digest, generated] {
            let parsed = tls_psk::parse_identity(&text).unwrap();
            assert!(k.psk_for(&parsed, &text).is_none(), "{text}");
        }
    }

    #[test]
    fn connect_checks() {
        let id = format!("NVMe0R01 {HOST} {SUB}");
        assert_eq!(check_connect(Some(&id), HOST, SUB, true), Ok(()));
        assert_eq!(check_connect(Some(&id), HOST, SUB, false), Ok(()));
        assert_eq!(check_connect(Some(&id), "nqn.2026-12.io.nvmf:other", SUB, true), Err(TlsRefusal::IdentityMismatch));
        assert_eq!(check_connect(Some(&id), HOST, "nqn.2026-12.io.nvmf:x", true), Err(TlsRefusal::IdentityMismatch));
        assert_eq!(check_connect(None, HOST, SUB, true), Err(TlsRefusal::TlsNeeded));
        assert_eq!(check_connect(None, HOST, SUB, false), Ok(()));
        assert_eq!(check_connect(None, HOST, DISCOVERY_NQN, true), Ok(()));
    }
}
