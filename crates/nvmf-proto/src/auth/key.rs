//! DH-HMAC-CHAP secrets in the NVMe "secret representation"
//! `DHHC-1:hh:<base64(secret ‖ CRC-32(secret))>:`.
//!
//! - `hh` is two decimal digits: 00 = use the secret as the key, 01 / 02 / 03 =
//!   transform it with HMAC-SHA-256 / -384 / -512 ([`DhchapKey::transform`]).
//! - The secret is 32, 48 or 64 bytes. The Linux kernel
//!   (`drivers/nvme/common/auth.c` `nvme_auth_extract_key`) and SPDK accept any
//!   of the three lengths with any `hh`; nvme-cli's `gen-dhchap-key` and
//!   `check-dhchap-key` tie 01 to 32, 02 to 48 and 03 to 64 bytes (00 takes
//!   any; `gen-dhchap-key` makes 32 bytes for 00 unless `-l` says otherwise).
//!   We parse like the kernel and generate like nvme-cli.
//! - The CRC is zlib's CRC-32 (polynomial 0xEDB88320, initial and final
//!   inversion) of the secret, appended little-endian before encoding.
//! - Base64 is the standard alphabet with `=` padding (a 64-byte secret ends in
//!   `=`). The trailing `:` is optional on input, as in Linux.
//!
//! nvme-cli 2.x `gen-dhchap-key -m hh -n NQN` prints
//! `DHHC-1:hh:<base64(T ‖ CRC-32(T))>:` followed by a newline, where
//! T = HMAC_hh(secret, NQN ‖ "NVMe-over-Fabrics") for hh ≠ 00 and T = secret for
//! hh = 00: the *transformed* value, which the kernel then transforms once more
//! when it uses the key. Both ends do the same, so such keys interoperate;
//! [`DhchapKey::nvme_cli_representation`] reproduces it. `check-dhchap-key`
//! prints `Key is valid (HMAC <hh>, length <len>, CRC <crc hex>)`
//! ([`DhchapKey::check_summary`]).

use std::fmt;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use zeroize::Zeroizing;

use super::{chap, AuthError, HashId, Secret};

/// The version prefix of the representation.
const DHHC_PREFIX: &str = "DHHC-1:";
/// The NQN suffix of the key transform.
const TRANSFORM_SUFFIX: &[u8] = b"NVMe-over-Fabrics";
/// Longest base64 text we decode: a 64-byte secret with its CRC is 92 characters.
const BASE64_LEN_MAX: usize = 128;

/// Standard base64 that takes padded or unpadded input.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_encode_padding(true).with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// `base64(bytes ‖ CRC-32(bytes) as 4 bytes little-endian)`, shared with the TLS
/// PSK interchange format.
pub(crate) fn encode_with_crc(bytes: &[u8]) -> Zeroizing<String> {
    let mut raw = Zeroizing::new(Vec::with_capacity(bytes.len() + 4));
    raw.extend_from_slice(bytes);
    raw.extend_from_slice(&crc32fast::hash(bytes).to_le_bytes());
    Zeroizing::new(BASE64.encode(&raw[..]))
}

/// Decode base64 text and check and strip its trailing CRC-32.
pub(crate) fn decode_with_crc(text: &str) -> Result<Secret, AuthError> {
    if text.len() > BASE64_LEN_MAX {
        return Err(AuthError::InvalidKey("base64 part too long"));
    }
    let raw = Zeroizing::new(BASE64.decode(text).map_err(|_| AuthError::InvalidKey("bad base64"))?);
    let Some(body_len) = raw.len().checked_sub(4) else {
        return Err(AuthError::InvalidKey("too short for a CRC"));
    };
    let (body, crc) = raw.split_at(body_len);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err(AuthError::InvalidKey("CRC mismatch"));
    }
    Ok(Secret::from_slice(body))
}

/// A DH-HMAC-CHAP secret and the hash that transforms it.
#[derive(Clone)]
pub struct DhchapKey {
    hash: Option<HashId>,
    secret: Secret,
}

impl fmt::Debug for DhchapKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DhchapKey").field("hash", &self.hash).field("secret", &self.secret).finish()
    }
}

impl DhchapKey {
    /// Secret lengths the representation allows.
    pub const SECRET_LENS: [usize; 3] = [32, 48, 64];

    /// A key from raw secret bytes; `hash` None is `hh` = 00.
    pub fn from_secret(hash: Option<HashId>, secret: &[u8]) -> Result<DhchapKey, AuthError> {
        if !Self::SECRET_LENS.contains(&secret.len()) {
            return Err(AuthError::InvalidKey("secret must be 32, 48 or 64 bytes"));
        }
        Ok(DhchapKey { hash, secret: Secret::from_slice(secret) })
    }

    /// A random secret of `secret_len` bytes. As nvme-cli, a transforming hash
    /// takes a secret of its own length.
    pub fn generate(
        hash: Option<HashId>,
        secret_len: usize,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Result<DhchapKey, AuthError> {
        if hash.is_some_and(|h| h.digest_len() != secret_len) {
            return Err(AuthError::InvalidKey("secret length must be the hash length"));
        }
        let mut secret = Zeroizing::new(vec![0u8; secret_len]);
        fill(&mut secret);
        DhchapKey::from_secret(hash, &secret)
    }

    /// Parse `DHHC-1:hh:<base64>:` (surrounding whitespace and a missing final
    /// `:` are accepted).
    pub fn parse(text: &str) -> Result<DhchapKey, AuthError> {
        let rest = text.trim().strip_prefix(DHHC_PREFIX).ok_or(AuthError::InvalidKey("not DHHC-1:"))?;
        let (hh, rest) = rest.split_once(':').ok_or(AuthError::InvalidKey("no ':' after the hash"))?;
        let hash = match hh {
            "00" => None,
            "01" => Some(HashId::Sha256),
            "02" => Some(HashId::Sha384),
            "03" => Some(HashId::Sha512),
            _ => return Err(AuthError::InvalidKey("hash must be 00, 01, 02 or 03")),
        };
        let encoded = rest.strip_suffix(':').unwrap_or(rest);
        let secret = decode_with_crc(encoded)?;
        DhchapKey::from_secret(hash, secret.as_bytes())
    }

    /// The representation `DHHC-1:hh:<base64>:` (no newline). It is the secret
    /// itself in another form: keep it as carefully as the key.
    pub fn format(&self) -> Zeroizing<String> {
        let hh = self.hash.map_or(0, HashId::id);
        let encoded = encode_with_crc(self.secret.as_bytes());
        Zeroizing::new(format!("{DHHC_PREFIX}{hh:02}:{}:", encoded.as_str()))
    }

    /// The transforming hash (None for `hh` = 00).
    pub fn hash(&self) -> Option<HashId> {
        self.hash
    }

    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// The key the responses are keyed with:
    /// `HMAC_hh(secret, nqn ‖ "NVMe-over-Fabrics")`, or the secret for `hh` = 00.
    /// The host key is transformed with the host NQN, the controller key with
    /// the subsystem NQN.
    pub fn transform(&self, nqn: &str) -> Secret {
        match self.hash {
            None => self.secret.clone(),
            Some(h) => Secret::new(chap::hmac(h, self.secret.as_bytes(), &[nqn.as_bytes(), TRANSFORM_SUFFIX])),
        }
    }

    /// What nvme-cli 2.x `gen-dhchap-key` prints for this secret and NQN: the
    /// transformed value under the same `hh` (see the module docs).
    pub fn nvme_cli_representation(&self, nqn: &str) -> DhchapKey {
        DhchapKey { hash: self.hash, secret: self.transform(nqn) }
    }

    /// The zlib CRC-32 of the secret, as stored in the representation.
    pub fn crc32(&self) -> u32 {
        crc32fast::hash(self.secret.as_bytes())
    }

    /// nvme-cli `check-dhchap-key`'s line for a valid key.
    pub fn check_summary(&self) -> String {
        format!(
            "Key is valid (HMAC {}, length {}, CRC {:08x})",
            self.hash.map_or(0, HashId::id),
            self.secret.len(),
            self.crc32()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example key of nvme-cli's gen-dhchap-key / check-dhchap-key manual pages.
    const NVME_CLI_DOC_KEY: &str = "DHHC-1:00:ia6zGodOr4SEG0Zzaw398rpY0wqipUWj4jWjUh4HWUz6aQ2n:";

    #[test]
    fn parses_nvme_cli_doc_example() {
        let key = DhchapKey::parse(NVME_CLI_DOC_KEY).unwrap();
        assert_eq!(key.hash(), None);
        assert_eq!(key.secret().len(), 32);
        assert_eq!(key.format().as_str(), NVME_CLI_DOC_KEY);
        // Without the final ':' and with a newline, as Linux accepts.
        let trimmed = format!("{}\n", NVME_CLI_DOC_KEY.strip_suffix(':').unwrap());
        assert_eq!(DhchapKey::parse(&trimmed).unwrap().format().as_str(), NVME_CLI_DOC_KEY);
        assert!(key.check_summary().starts_with("Key is valid (HMAC 0, length 32, CRC "));
        assert!(!format!("{key:?}").contains("ia6z"));
    }

    #[test]
    fn rejects_bad_representations() {
        let bad_crc = NVME_CLI_DOC_KEY.replace("ia6z", "ia6y");
        assert_eq!(DhchapKey::parse(&bad_crc).unwrap_err(), AuthError::InvalidKey("CRC mismatch"));
        assert!(DhchapKey::parse("DHHC-1:04:ia6zGodOr4SEG0Zzaw398rpY0wqipUWj4jWjUh4HWUz6aQ2n:").is_err());
        assert!(DhchapKey::parse("DHHC-2:00:ia6zGodOr4SEG0Zzaw398rpY0wqipUWj4jWjUh4HWUz6aQ2n:").is_err());
        assert!(DhchapKey::parse("DHHC-1:00:").is_err());
        assert!(DhchapKey::parse("DHHC-1:00:!!!!:").is_err());
        assert!(DhchapKey::parse("DHHC-1:1:ia6z:").is_err());
        // 16-byte secret with a good CRC: wrong length.
        let short = format!("DHHC-1:00:{}:", encode_with_crc(&[7; 16]).as_str());
        assert!(DhchapKey::parse(&short).is_err());
        assert!(DhchapKey::parse(&"A".repeat(4000)).is_err());
    }

    #[test]
    fn lengths_and_padding() {
        for (hh, len, text_len) in [(1, 32, 59), (2, 48, 83), (3, 64, 103)] {
            let hash = HashId::from_id(hh);
            let key = DhchapKey::generate(hash, len, &mut |b: &mut [u8]| b.fill(0x5a)).unwrap();
            let text = key.format();
            // nvme-cli check-dhchap-key's expected string lengths per hh.
            assert_eq!(text.len(), text_len, "{}", text.as_str());
            let back = DhchapKey::parse(&text).unwrap();
            assert_eq!(back.hash(), hash);
            assert_eq!(back.secret().as_bytes(), key.secret().as_bytes());
        }
        assert!(DhchapKey::generate(Some(HashId::Sha256), 48, &mut |b: &mut [u8]| b.fill(1)).is_err());
        // Parsing is as lenient as Linux: hh 01 with a 64-byte secret.
        let odd = DhchapKey::from_secret(Some(HashId::Sha256), &[9; 64]).unwrap();
        assert_eq!(DhchapKey::parse(&odd.format()).unwrap().secret().len(), 64);
        assert_eq!(odd.transform("nqn.2014-08.org.nvmexpress:uuid:x").len(), 32);
    }

    #[test]
    fn transform_is_hmac_of_nqn_and_suffix() {
        let key = DhchapKey::from_secret(Some(HashId::Sha256), &[1; 32]).unwrap();
        let t = key.transform("nqn.host");
        assert_eq!(t.as_bytes(), chap::hmac(HashId::Sha256, &[1; 32], &[b"nqn.hostNVMe-over-Fabrics"]));
        let plain = DhchapKey::from_secret(None, &[2; 48]).unwrap();
        assert_eq!(plain.transform("nqn.host").as_bytes(), &[2; 48]);
        assert_eq!(key.nvme_cli_representation("nqn.host").secret().as_bytes(), t.as_bytes());
    }
}
