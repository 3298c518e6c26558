//! NVMe/TCP TLS pre-shared keys: the PSK interchange format, PSK identities and
//! the derivations from a configured PSK (or a DH-HMAC-CHAP generated PSK) to
//! the key TLS 1.3 uses.
//!
//! Facts (libnvme `src/nvme/linux.c` ≥ 1.16, nvme-cli `gen-tls-key` /
//! `check-tls-key`, SPDK `include/spdk_internal/nvme_tcp.h`, Linux
//! `drivers/nvme/common/auth.c` and `keyring.c`):
//!
//! - Interchange format `NVMeTLSkey-1:hh:<base64(PSK ‖ CRC-32(PSK))>:` (CRC as
//!   in DHHC-1, little-endian). `hh`: 00 = use the configured PSK as the
//!   retained PSK (32 or 48 bytes), 01 = derive with SHA-256 (32 bytes), 02 =
//!   with SHA-384 (48 bytes). nvme-cli `gen-tls-key` prints 01 or 02 with a
//!   random key of that length ([`ConfiguredPsk::generate`], `format`), and
//!   `check-tls-key -n NQNh -c NQNc [-I 1] [--compat]` prints the identity
//!   [`derive()`] returns for that version and layout.
//! - Retained PSK = HKDF-Expand-Label(HKDF-Extract(0, configured), "HostNQN",
//!   NQNh, length of the configured PSK), hash `hh`; `hh` = 00 keeps the PSK.
//! - The TLS hash ("cipher") is `hh`, or for 00 the one of the PSK's length
//!   (32 → SHA-256 / TLS_AES_128_GCM_SHA256, 48 → SHA-384 / TLS_AES_256_GCM_SHA384).
//! - Identity v0 `NVMe0R<hh> <NQNh> <NQNc>`, v1 `NVMe1R<hh> <NQNh> <NQNc> <digest>`
//!   with `<hh>` the TLS hash as two digits and the digest
//!   Base64(HMAC(retained PSK, NQNh ‖ " " ‖ NQNc ‖ " " ‖ "NVMe-over-Fabrics"))
//!   (44 characters for SHA-256, 64 for SHA-384). `R` is a retained PSK, `G`
//!   a generated one.
//! - TLS PSK = HKDF-Expand-Label(HKDF-Extract(0, retained), "nvme-tls-psk",
//!   context, L = hash length), context = the whole identity for v0 and
//!   `"<hh> <digest>"` for v1.
//! - HKDF-Expand-Label lays out its info as RFC 8446 section 7.1 says
//!   ([`HkdfLabelLayout::Rfc8446`]): length u16 big-endian, label "tls13 " +
//!   label with a length byte, context with a length byte. libnvme ≥ 1.16
//!   (linux-nvme/libnvme PR 1040, 2025), SPDK and the Linux kernel do so. libnvme
//!   before 1.16 (and nvme-cli `--compat`) wrote the length little-endian and
//!   left the length bytes out ([`HkdfLabelLayout::LibnvmeLegacy`]); linked
//!   with OpenSSL before 3.3.1, whose `EVP_PKEY_CTX_add1_hkdf_info` replaced
//!   instead of appending, only its last piece remained
//!   ([`HkdfLabelLayout::LibnvmeLegacyLastPieceOnly`]). A host whose keyring
//!   was filled by such a libnvme needs the matching layout on our side.
//! - The Linux kernel (6.12) derives nothing for configured PSKs: libnvme
//!   inserts the TLS PSK into the `.nvme` keyring under its identity and the
//!   kernel looks up `NVMe0R02 …` then `NVMe0R01 …` (v0 only). With secure
//!   channel concatenation (a 2024 series, after 6.12) the kernel derives from the
//!   generated PSK with the RFC 8446 layout, context `"<hh> <digest>"`, identity
//!   `NVMe1G<hh> <NQNh> <NQNc> <digest>` ([`derive_generated`]).

use hkdf::Hkdf;
use sha2::{Sha256, Sha384};
use zeroize::Zeroizing;

use super::key::{decode_with_crc, encode_with_crc};
use super::{chap, AuthError, HashId, Secret};

const INTERCHANGE_PREFIX: &str = "NVMeTLSkey-1:";
/// Suffix of the PSK digest's HMAC input.
const DIGEST_SUFFIX: &[u8] = b"NVMe-over-Fabrics";
const LABEL_RETAINED: &str = "HostNQN";
const LABEL_TLS_PSK: &str = "nvme-tls-psk";
const LABEL_PREFIX: &str = "tls13 ";

/// How HKDF-Expand-Label's info is laid out (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HkdfLabelLayout {
    /// RFC 8446: `be16(L) ‖ u8 ‖ "tls13 " label ‖ u8 ‖ context`.
    Rfc8446,
    /// libnvme before 1.16: `le16(L) ‖ "tls13 " label ‖ context`.
    LibnvmeLegacy,
    /// libnvme before 1.16 on OpenSSL before 3.3.1: the context alone.
    LibnvmeLegacyLastPieceOnly,
}

/// Identity format version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdentityVersion {
    /// NVMe/TCP 1.0: `NVMe0R<hh> <NQNh> <NQNc>`.
    V0,
    /// NVMe/TCP 2.0: `NVMe1R<hh> <NQNh> <NQNc> <digest>`.
    V1,
}

/// Where the PSK came from: the identity's `R` or `G`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PskOrigin {
    Retained,
    Generated,
}

/// Only SHA-256 and SHA-384 go with a TLS 1.3 cipher suite.
fn tls_hash(hash: HashId) -> Result<HashId, AuthError> {
    match hash {
        HashId::Sha256 | HashId::Sha384 => Ok(hash),
        HashId::Sha512 => Err(AuthError::Unsupported("SHA-512 has no NVMe/TCP TLS cipher suite")),
    }
}

/// A configured PSK, as in the interchange format.
#[derive(Clone)]
pub struct ConfiguredPsk {
    transform: Option<HashId>,
    key: Secret,
}

impl std::fmt::Debug for ConfiguredPsk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfiguredPsk").field("transform", &self.transform).field("key", &self.key).finish()
    }
}

impl ConfiguredPsk {
    /// `transform` None is `hh` = 00 (32 or 48 bytes); otherwise the key is the
    /// hash's length.
    pub fn from_bytes(transform: Option<HashId>, key: &[u8]) -> Result<ConfiguredPsk, AuthError> {
        let len_ok = match transform {
            None => key.len() == 32 || key.len() == 48,
            Some(h) => tls_hash(h)?.digest_len() == key.len(),
        };
        if !len_ok {
            return Err(AuthError::InvalidKey("PSK length does not match its hash"));
        }
        Ok(ConfiguredPsk { transform, key: Secret::from_slice(key) })
    }

    /// A random PSK as nvme-cli `gen-tls-key --hmac` makes: 32 bytes for
    /// SHA-256, 48 for SHA-384.
    pub fn generate(hash: HashId, fill: &mut dyn FnMut(&mut [u8])) -> Result<ConfiguredPsk, AuthError> {
        let mut key = Zeroizing::new(vec![0u8; tls_hash(hash)?.digest_len()]);
        fill(&mut key);
        ConfiguredPsk::from_bytes(Some(hash), &key)
    }

    /// Parse `NVMeTLSkey-1:hh:<base64>:` (surrounding whitespace accepted).
    pub fn parse(text: &str) -> Result<ConfiguredPsk, AuthError> {
        let rest = text.trim().strip_prefix(INTERCHANGE_PREFIX).ok_or(AuthError::InvalidKey("not NVMeTLSkey-1:"))?;
        let (hh, rest) = rest.split_once(':').ok_or(AuthError::InvalidKey("no ':' after the hash"))?;
        let transform = match hh {
            "00" => None,
            "01" => Some(HashId::Sha256),
            "02" => Some(HashId::Sha384),
            _ => return Err(AuthError::InvalidKey("hash must be 00, 01 or 02")),
        };
        let encoded = rest.strip_suffix(':').ok_or(AuthError::InvalidKey("no final ':'"))?;
        let key = decode_with_crc(encoded)?;
        ConfiguredPsk::from_bytes(transform, key.as_bytes())
    }

    /// The interchange format (no newline); as secret as the key.
    pub fn format(&self) -> Zeroizing<String> {
        let hh = self.transform.map_or(0, HashId::id);
        let encoded = encode_with_crc(self.key.as_bytes());
        Zeroizing::new(format!("{INTERCHANGE_PREFIX}{hh:02}:{}:", encoded.as_str()))
    }

    /// The retained-PSK hash (`hh`; None for 00).
    pub fn transform(&self) -> Option<HashId> {
        self.transform
    }

    pub fn key(&self) -> &Secret {
        &self.key
    }

    /// The TLS hash: `hh`, or the one of the key's length for `hh` = 00.
    pub fn tls_hash(&self) -> HashId {
        match self.transform {
            Some(h) => h,
            None if self.key.len() == 48 => HashId::Sha384,
            None => HashId::Sha256,
        }
    }

    /// The retained PSK for `host_nqn`.
    pub fn retained(&self, host_nqn: &str, layout: HkdfLabelLayout) -> Result<Secret, AuthError> {
        match self.transform {
            None => Ok(self.key.clone()),
            Some(h) => extract_expand_label(h, &self.key, LABEL_RETAINED, host_nqn.as_bytes(), self.key.len(), layout),
        }
    }
}

/// `HKDF-Expand-Label(HKDF-Extract(0, input), label, context, len)` with the
/// info laid out as `layout` says. The context takes at most 255 bytes (a
/// longer one is an error, as in Linux and libnvme).
pub fn extract_expand_label(
    hash: HashId,
    input: &Secret,
    label: &str,
    context: &[u8],
    len: usize,
    layout: HkdfLabelLayout,
) -> Result<Secret, AuthError> {
    let full_label_len = LABEL_PREFIX.len() + label.len();
    if context.len() > 255 || full_label_len > 255 || len > usize::from(u16::MAX) {
        return Err(AuthError::Unsupported("HKDF label, context or length too long"));
    }
    let mut info = Vec::with_capacity(4 + full_label_len + context.len());
    match layout {
        HkdfLabelLayout::Rfc8446 => {
            info.extend_from_slice(&(len as u16).to_be_bytes());
            info.push(full_label_len as u8);
            info.extend_from_slice(LABEL_PREFIX.as_bytes());
            info.extend_from_slice(label.as_bytes());
            info.push(context.len() as u8);
            info.extend_from_slice(context);
        }
        HkdfLabelLayout::LibnvmeLegacy => {
            info.extend_from_slice(&(len as u16).to_le_bytes());
            info.extend_from_slice(LABEL_PREFIX.as_bytes());
            info.extend_from_slice(label.as_bytes());
            info.extend_from_slice(context);
        }
        HkdfLabelLayout::LibnvmeLegacyLastPieceOnly => info.extend_from_slice(context),
    }
    let mut okm = Zeroizing::new(vec![0u8; len]);
    let expanded = match tls_hash(hash)? {
        HashId::Sha256 => Hkdf::<Sha256>::new(None, input.as_bytes()).expand(&info, &mut okm),
        _ => Hkdf::<Sha384>::new(None, input.as_bytes()).expand(&info, &mut okm),
    };
    expanded.map_err(|_| AuthError::Unsupported("HKDF output longer than 255 hash blocks"))?;
    Ok(Secret::from_slice(&okm))
}

/// The v1 identity digest: Base64(HMAC(psk, NQNh ‖ " " ‖ NQNc ‖ " " ‖
/// "NVMe-over-Fabrics")).
pub fn psk_digest(hash: HashId, psk: &Secret, host_nqn: &str, subsys_nqn: &str) -> Result<String, AuthError> {
    use base64::Engine;
    let mac = chap::hmac(
        tls_hash(hash)?,
        psk.as_bytes(),
        &[host_nqn.as_bytes(), b" ", subsys_nqn.as_bytes(), b" ", DIGEST_SUFFIX],
    );
    Ok(base64::engine::general_purpose::STANDARD.encode(mac))
}

/// A PSK identity. `digest` is required for v1 and ignored for v0.
pub fn identity(
    version: IdentityVersion,
    origin: PskOrigin,
    hash: HashId,
    host_nqn: &str,
    subsys_nqn: &str,
    digest: Option<&str>,
) -> Result<String, AuthError> {
    let kind = match origin {
        PskOrigin::Retained => 'R',
        PskOrigin::Generated => 'G',
    };
    let hh = tls_hash(hash)?.id();
    match (version, digest) {
        (IdentityVersion::V0, _) => Ok(format!("NVMe0{kind}{hh:02} {host_nqn} {subsys_nqn}")),
        (IdentityVersion::V1, Some(d)) => Ok(format!("NVMe1{kind}{hh:02} {host_nqn} {subsys_nqn} {d}")),
        (IdentityVersion::V1, None) => Err(AuthError::InvalidKey("a v1 identity needs the PSK digest")),
    }
}

/// `TLS PSK = HKDF-Expand-Label(HKDF-Extract(0, input), "nvme-tls-psk", context, L)`,
/// L the hash length; the input PSK must be that long too (as Linux checks).
pub fn tls_psk(hash: HashId, input: &Secret, context: &str, layout: HkdfLabelLayout) -> Result<Secret, AuthError> {
    let len = tls_hash(hash)?.digest_len();
    if input.len() != len {
        return Err(AuthError::InvalidKey("input PSK length is not the hash length"));
    }
    extract_expand_label(hash, input, LABEL_TLS_PSK, context.as_bytes(), len, layout)
}

/// A TLS PSK and the identity it is offered under.
#[derive(Debug, Clone)]
pub struct DerivedPsk {
    pub identity: String,
    pub tls_psk: Secret,
}

/// What libnvme (`nvme_generate_tls_key_identity`, `nvme_insert_tls_key_versioned`)
/// computes from a configured PSK: the identity and the TLS PSK that goes into
/// the keyring under it.
pub fn derive(
    configured: &ConfiguredPsk,
    host_nqn: &str,
    subsys_nqn: &str,
    version: IdentityVersion,
    layout: HkdfLabelLayout,
) -> Result<DerivedPsk, AuthError> {
    let retained = configured.retained(host_nqn, layout)?;
    let hash = configured.tls_hash();
    let (identity, context) = match version {
        IdentityVersion::V0 => {
            let id = identity(version, PskOrigin::Retained, hash, host_nqn, subsys_nqn, None)?;
            (id.clone(), id)
        }
        IdentityVersion::V1 => {
            let digest = psk_digest(hash, &retained, host_nqn, subsys_nqn)?;
            let id = identity(version, PskOrigin::Retained, hash, host_nqn, subsys_nqn, Some(&digest))?;
            // The old code passed "<hh> " and the digest as two pieces, so
            // with OpenSSL's replacing add1 only the digest remained.
            let context = match layout {
                HkdfLabelLayout::LibnvmeLegacyLastPieceOnly => digest,
                _ => format!("{:02} {digest}", hash.id()),
            };
            (id, context)
        }
    };
    let tls_psk = tls_psk(hash, &retained, &context, layout)?;
    Ok(DerivedPsk { identity, tls_psk })
}

/// What Linux with secure channel concatenation (`nvme_auth_secure_concat` /
/// `nvmet_auth_insert_psk`) derives after DH-HMAC-CHAP with secure channel
/// concatenation: identity `NVMe1G<hh> <NQNh> <NQNc> <digest>` and the TLS PSK
/// from the generated PSK (RFC 8446 layout). `hash` is the DH-HMAC-CHAP hash;
/// SHA-512 is refused, as Linux does.
pub fn derive_generated(
    hash: HashId,
    generated_psk: &Secret,
    host_nqn: &str,
    subsys_nqn: &str,
) -> Result<DerivedPsk, AuthError> {
    let digest = psk_digest(hash, generated_psk, host_nqn, subsys_nqn)?;
    let identity = identity(IdentityVersion::V1, PskOrigin::Generated, hash, host_nqn, subsys_nqn, Some(&digest))?;
    let context = format!("{:02} {digest}", hash.id());
    let tls_psk = tls_psk(hash, generated_psk, &context, HkdfLabelLayout::Rfc8446)?;
    Ok(DerivedPsk { identity, tls_psk })
}

/// The parts of a PSK identity ([`identity`]'s output, as a peer offers it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedIdentity<'a> {
    pub version: IdentityVersion,
    pub origin: PskOrigin,
    /// The TLS hash named by `<hh>` (SHA-256 or SHA-384).
    pub hash: HashId,
    pub host_nqn: &'a str,
    pub subsys_nqn: &'a str,
    /// v1 only.
    pub digest: Option<&'a str>,
}

/// Split an identity `NVMe<v><R|G><hh> <NQNh> <NQNc>[ <digest>]`; `None`
/// when it is not one (unknown version or kind, a hash without a TLS suite,
/// a missing or extra field). NQNs have no spaces, so the fields split on them.
pub fn parse_identity(text: &str) -> Option<ParsedIdentity<'_>> {
    let mut fields = text.split(' ');
    let head = fields.next()?.strip_prefix("NVMe")?.as_bytes();
    if head.len() != 4 || !head[2..].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let version = match head[0] {
        b'0' => IdentityVersion::V0,
        b'1' => IdentityVersion::V1,
        _ => return None,
    };
    let origin = match head[1] {
        b'R' => PskOrigin::Retained,
        b'G' => PskOrigin::Generated,
        _ => return None,
    };
    let hash = tls_hash(HashId::from_id((head[2] - b'0') * 10 + (head[3] - b'0'))?).ok()?;
    let host_nqn = fields.next().filter(|s| !s.is_empty())?;
    let subsys_nqn = fields.next().filter(|s| !s.is_empty())?;
    let digest = match version {
        IdentityVersion::V0 => None,
        IdentityVersion::V1 => Some(fields.next().filter(|s| !s.is_empty())?),
    };
    if fields.next().is_some() {
        return None;
    }
    Some(ParsedIdentity { version, origin, hash, host_nqn, subsys_nqn, digest })
}

#[cfg(test)]
mod identity_tests {
    use super::*;

    #[test]
    fn parse_identity_takes_what_identity_makes() {
        for (version, digest) in [(IdentityVersion::V0, None), (IdentityVersion::V1, Some("ZGln"))] {
            for hash in [HashId::Sha256, HashId::Sha384] {
                let text = identity(version, PskOrigin::Retained, hash, "nqn.h", "nqn.s", digest).unwrap();
                let p = parse_identity(&text).unwrap();
                assert_eq!((p.version, p.origin, p.hash), (version, PskOrigin::Retained, hash));
                assert_eq!((p.host_nqn, p.subsys_nqn, p.digest), ("nqn.h", "nqn.s", digest));
            }
        }
        let g = parse_identity("NVMe1G02 nqn.h nqn.s abc").unwrap();
        assert_eq!((g.origin, g.hash), (PskOrigin::Generated, HashId::Sha384));
    }

    #[test]
    fn parse_identity_refuses_what_is_not_one() {
        for bad in [
            "",
            "NVMe0R01",
            "NVMe0R01 nqn.h",
            "NVMe0R01 nqn.h nqn.s extra",
            "NVMe1R01 nqn.h nqn.s",
            "NVMe1R01 nqn.h nqn.s d extra",
            "NVMe2R01 nqn.h nqn.s",
            "NVMe0X01 nqn.h nqn.s",
            "NVMe0R03 nqn.h nqn.s",
            "NVMe0R00 nqn.h nqn.s",
            "NVMe0R1 nqn.h nqn.s",
            "NVMe0Rx1 nqn.h nqn.s",
            "NVMe0R01  nqn.s",
            "nvme0R01 nqn.h nqn.s",
        ] {
            assert!(parse_identity(bad).is_none(), "{bad:?}");
        }
    }
}
