//! NVMe in-band authentication (DH-HMAC-CHAP) and the NVMe/TCP TLS pre-shared
//! key formats, as pure code: bytes in, bytes out, randomness injected.
//!
//! The target and the host plug the two state machines ([`ctrl::CtrlAuth`],
//! [`host::HostAuth`]) into the Fabrics Authentication Send / Receive commands
//! (opcode 0x7F, FCTYPE 0x05 / 0x06) of one queue, one transaction at a time.
//!
//! # Where the facts come from
//!
//! Every layout and computation below was read from the implementations this
//! crate must interoperate with (paths are inside those repositories):
//! - Linux: `include/linux/nvme.h` (`struct nvmf_auth_dhchap_*`),
//!   `drivers/nvme/common/auth.c`, `drivers/nvme/host/auth.c`,
//!   `drivers/nvme/target/fabrics-cmd-auth.c`, `drivers/nvme/target/auth.c`,
//!   `crypto/dh.c` (ffdhe private keys and public value checks).
//! - SPDK: `include/spdk/nvmf_spec.h`, `lib/nvme/nvme_auth.c` (host),
//!   `lib/nvmf/auth.c` (target).
//!
//! Where they differ, the module that implements the point says which one we
//! follow and why.
//!
//! # Commands
//!
//! AUTH_Send and AUTH_Receive carry SECP = 0xE9 ([`SECP_DHCHAP`]), SPSP0 = 0x01,
//! SPSP1 = 0x01. AUTH_Send's TL and AUTH_Receive's AL are the payload lengths.
//! Linux hosts receive with AL = 4096 and Linux targets return all AL bytes,
//! zero padded, so every decoder here ignores bytes after the message.
//! Failures do not fail the command: the target completes AUTH_Send with
//! success and answers the next AUTH_Receive with an AUTH_Failure1 message.
//!
//! # Messages (all multi-byte fields little-endian)
//!
//! Common header, 6 bytes: `auth_type` (0x00 common, 0x01 DH-HMAC-CHAP),
//! `auth_id`, 2 reserved bytes, `t_id` (u16, the transaction id the host chose).
//!
//! | message | type/id | bytes after the header |
//! |---|---|---|
//! | Negotiate (H→C) | 0x00/0x00 | 6 `sc_c`, 7 `napd`, then `napd` 64-byte descriptors |
//! | Challenge (C→H) | 0x01/0x01 | 6 `hl`, 7 rsvd, 8 `hashid`, 9 `dhgid`, 10 `dhvlen` u16, 12 `seqnum` u32 (S1), 16 C1 (`hl` bytes), DH value (`dhvlen` bytes) |
//! | Reply (H→C) | 0x01/0x02 | 6 `hl`, 7 rsvd, 8 `cvalid`, 9 rsvd, 10 `dhvlen` u16, 12 `seqnum` u32 (S2), 16 R1, C2 (`hl` bytes each, C2 zero when `cvalid` = 0), DH value |
//! | Success1 (C→H) | 0x01/0x03 | 6 `hl`, 7 rsvd, 8 `rvalid`, 9..16 rsvd, 16 R2 (`hl` bytes, zero when `rvalid` = 0) |
//! | Success2 (H→C) | 0x01/0x04 | 6..16 reserved (16 bytes in all) |
//! | Failure2 (H→C) | 0x00/0xF0 | 6 reason code (0x01), 7 explanation (8 bytes in all) |
//! | Failure1 (C→H) | 0x00/0xF1 | as Failure2 |
//!
//! Protocol descriptor (64 bytes): 0 `authid` (0x01 = DH-HMAC-CHAP), 1 rsvd,
//! 2 `halen`, 3 `dhlen`, 4..34 hash ids (30 slots), 34..64 DH group ids
//! (30 slots). The Linux host offers one descriptor: hashes 1, 2, 3 and groups
//! 0..=5, so its Negotiate is 72 bytes.
//!
//! SC_C (secure channel concatenation): 0 none (NOSC), 1 secure channel (SC),
//! 2 new TLS PSK (NEWTLSPSK), 3 replace TLS PSK (REPLACETLSPSK); the value is
//! part of both responses' hash input.
//!
//! Hash ids: [`HashId`] (SHA-256 = 1, SHA-384 = 2, SHA-512 = 3; `hl` = 32, 48,
//! 64). DH group ids: [`DhGroup`] (null = 0, ffdhe2048 = 1 … ffdhe8192 = 5; a
//! DH value is the group size in bytes, big-endian, left padded).
//!
//! Failure reason code 0x01 ("authentication failed") with the explanations of
//! [`FailureReason`]: 0x01 failed, 0x02 DH-HMAC-CHAP not usable, 0x03 secure
//! channel concatenation mismatch, 0x04 hash not usable, 0x05 DH group not
//! usable, 0x06 incorrect payload, 0x07 incorrect protocol message.
//!
//! # Computations ([`chap`])
//!
//! - Key transform, from the DHHC-1 secret's own hash (`hh`), not the negotiated
//!   one: `Kh = HMAC_hh(secret, NQN ‖ "NVMe-over-Fabrics")`, `hh` = 00 leaves the
//!   secret as it is. The host key is transformed with NQNh, the controller key
//!   with NQNc.
//! - DH: `Ks = H(g^xy mod p)`, the shared value as the group-size big-endian
//!   string. The augmented challenge is `Ca = HMAC(Ks, C)`; with the null group
//!   `Ca = C`.
//! - Host response `R1 = HMAC(Kh, Ca1 ‖ S1 ‖ T_ID ‖ SC_C ‖ "HostHost" ‖ NQNh ‖ 00h ‖ NQNc)`,
//!   controller response `R2 = HMAC(Kc, Ca2 ‖ S2 ‖ T_ID ‖ SC_C ‖ "Controller" ‖ NQNc ‖ 00h ‖ NQNh)`,
//!   with S as 4 bytes LE, T_ID 2 bytes LE, SC_C one byte, NQNs without NUL.
//!   H and HMAC use the negotiated hash.
//! - Generated PSK (secure channel concatenation) `HMAC(Ks, C1 ‖ C2)`.
//!
//! # Key formats
//!
//! [`key`] (DHHC-1 secrets) and [`tls_psk`] (NVMeTLSkey-1, PSK identities and
//! the retained / TLS PSK derivations) document their own facts.

pub mod chap;
pub mod ctrl;
pub mod dh;
pub mod fuzz;
pub mod host;
pub mod key;
pub mod messages;
pub mod tls_psk;

use std::fmt;
use std::str::FromStr;

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

pub use ctrl::{CtrlAuth, CtrlConfig, CtrlStatus};
pub use host::{HostAuth, HostConfig, HostStep};
pub use key::DhchapKey;
pub use messages::AuthMessage;

/// Security protocol (SECP) of NVMe in-band authentication.
pub const SECP_DHCHAP: u8 = 0xE9;
/// SPSP0 of every DH-HMAC-CHAP AUTH_Send / AUTH_Receive.
pub const SPSP0_DHCHAP: u8 = 0x01;
/// SPSP1 of every DH-HMAC-CHAP AUTH_Send / AUTH_Receive.
pub const SPSP1_DHCHAP: u8 = 0x01;
/// Largest authentication message either side builds or accepts (the Linux
/// host's buffer; an ffdhe8192 Reply with SHA-512 is 16 + 128 + 1024 bytes).
pub const AUTH_MESSAGE_LEN_MAX: usize = 4096;
/// Longest hash output (SHA-512), the largest `hl`.
pub const HASH_LEN_MAX: usize = 64;
/// Longest DH value (ffdhe8192).
pub const DH_VALUE_LEN_MAX: usize = 1024;

/// Whether an AUTH_Send / AUTH_Receive's SECP, SPSP0 and SPSP1 select
/// DH-HMAC-CHAP. Anything else is an Invalid Field in Command.
pub fn is_dhchap_command(secp: u8, spsp0: u8, spsp1: u8) -> bool {
    secp == SECP_DHCHAP && spsp0 == SPSP0_DHCHAP && spsp1 == SPSP1_DHCHAP
}

/// Fills a buffer with random bytes. The state machines take one so tests are
/// deterministic; production uses [`os_random`].
pub type RandomFill = Box<dyn FnMut(&mut [u8]) + Send>;

/// Random bytes from the operating system.
///
/// # Panics
///
/// If the operating system has no random source (`getrandom(2)` failing on
/// Linux). Authentication cannot go on safely without one.
pub fn os_random() -> RandomFill {
    Box::new(|buf: &mut [u8]| getrandom::fill(buf).expect("the OS random number generator failed"))
}

/// Hash functions of DH-HMAC-CHAP (and, ids 1 and 2, of the TLS PSKs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HashId {
    Sha256 = 1,
    Sha384 = 2,
    Sha512 = 3,
}

impl HashId {
    /// All hashes, weakest first (the order the Linux host offers them).
    pub const ALL: [HashId; 3] = [HashId::Sha256, HashId::Sha384, HashId::Sha512];

    /// The identifier on the wire and in `DHHC-1:hh:` / `NVMeTLSkey-1:hh:`.
    pub fn id(self) -> u8 {
        self as u8
    }

    pub fn from_id(id: u8) -> Option<HashId> {
        match id {
            1 => Some(HashId::Sha256),
            2 => Some(HashId::Sha384),
            3 => Some(HashId::Sha512),
            _ => None,
        }
    }

    /// Output length in bytes (the `hl` of the messages).
    pub fn digest_len(self) -> usize {
        match self {
            HashId::Sha256 => 32,
            HashId::Sha384 => 48,
            HashId::Sha512 => 64,
        }
    }

    /// The digest name Linux and SPDK use ("sha256").
    pub fn name(self) -> &'static str {
        match self {
            HashId::Sha256 => "sha256",
            HashId::Sha384 => "sha384",
            HashId::Sha512 => "sha512",
        }
    }

    /// The name nvmet's configfs `dhchap_hash` shows ("hmac(sha256)").
    pub fn hmac_name(self) -> &'static str {
        match self {
            HashId::Sha256 => "hmac(sha256)",
            HashId::Sha384 => "hmac(sha384)",
            HashId::Sha512 => "hmac(sha512)",
        }
    }
}

impl fmt::Display for HashId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HashId {
    type Err = AuthError;

    /// Accepts "sha256" and "hmac(sha256)" (any case), as nvmet and SPDK name them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        let bare = lower.strip_prefix("hmac(").and_then(|r| r.strip_suffix(')')).unwrap_or(&lower);
        HashId::ALL.into_iter().find(|h| h.name() == bare).ok_or(AuthError::UnknownName("hash"))
    }
}

/// Diffie-Hellman groups of DH-HMAC-CHAP: none, or an RFC 7919 ffdhe group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DhGroup {
    Null = 0,
    Ffdhe2048 = 1,
    Ffdhe3072 = 2,
    Ffdhe4096 = 3,
    Ffdhe6144 = 4,
    Ffdhe8192 = 5,
}

impl DhGroup {
    /// All groups, weakest first (the order the Linux host offers them).
    pub const ALL: [DhGroup; 6] = [
        DhGroup::Null,
        DhGroup::Ffdhe2048,
        DhGroup::Ffdhe3072,
        DhGroup::Ffdhe4096,
        DhGroup::Ffdhe6144,
        DhGroup::Ffdhe8192,
    ];

    pub fn id(self) -> u8 {
        self as u8
    }

    pub fn from_id(id: u8) -> Option<DhGroup> {
        DhGroup::ALL.get(usize::from(id)).copied()
    }

    /// Size of the prime in bits (0 for the null group).
    pub fn bits(self) -> u32 {
        match self {
            DhGroup::Null => 0,
            DhGroup::Ffdhe2048 => 2048,
            DhGroup::Ffdhe3072 => 3072,
            DhGroup::Ffdhe4096 => 4096,
            DhGroup::Ffdhe6144 => 6144,
            DhGroup::Ffdhe8192 => 8192,
        }
    }

    /// Length of a DH value on the wire (`dhvlen`), 0 for the null group.
    pub fn value_len(self) -> usize {
        self.bits() as usize / 8
    }

    /// The name nvmet's configfs `dhchap_dhgroup` and SPDK use.
    pub fn name(self) -> &'static str {
        match self {
            DhGroup::Null => "null",
            DhGroup::Ffdhe2048 => "ffdhe2048",
            DhGroup::Ffdhe3072 => "ffdhe3072",
            DhGroup::Ffdhe4096 => "ffdhe4096",
            DhGroup::Ffdhe6144 => "ffdhe6144",
            DhGroup::Ffdhe8192 => "ffdhe8192",
        }
    }
}

impl fmt::Display for DhGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DhGroup {
    type Err = AuthError;

    /// Accepts "null", "ffdhe2048" … "ffdhe8192" (any case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        DhGroup::ALL.into_iter().find(|g| g.name() == lower).ok_or(AuthError::UnknownName("DH group"))
    }
}

/// Reason code explanation of AUTH_Failure1 / AUTH_Failure2 (the reason code
/// itself is always 0x01, "authentication failed").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// 0x01: authentication failed (wrong response, missing key).
    Failed,
    /// 0x02: DH-HMAC-CHAP not usable (no descriptor for it).
    NotUsable,
    /// 0x03: secure channel concatenation mismatch.
    ConcatMismatch,
    /// 0x04: hash function not usable.
    HashUnusable,
    /// 0x05: DH group not usable.
    DhGroupUnusable,
    /// 0x06: incorrect payload.
    IncorrectPayload,
    /// 0x07: incorrect protocol message.
    IncorrectMessage,
    /// Any other explanation a peer sent.
    Other(u8),
}

impl FailureReason {
    /// The one reason code DH-HMAC-CHAP defines.
    pub const REASON_CODE_FAILED: u8 = 0x01;

    pub fn code(self) -> u8 {
        match self {
            FailureReason::Failed => 0x01,
            FailureReason::NotUsable => 0x02,
            FailureReason::ConcatMismatch => 0x03,
            FailureReason::HashUnusable => 0x04,
            FailureReason::DhGroupUnusable => 0x05,
            FailureReason::IncorrectPayload => 0x06,
            FailureReason::IncorrectMessage => 0x07,
            FailureReason::Other(code) => code,
        }
    }

    pub fn from_code(code: u8) -> FailureReason {
        match code {
            0x01 => FailureReason::Failed,
            0x02 => FailureReason::NotUsable,
            0x03 => FailureReason::ConcatMismatch,
            0x04 => FailureReason::HashUnusable,
            0x05 => FailureReason::DhGroupUnusable,
            0x06 => FailureReason::IncorrectPayload,
            0x07 => FailureReason::IncorrectMessage,
            other => FailureReason::Other(other),
        }
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureReason::Failed => f.write_str("authentication failed"),
            FailureReason::NotUsable => f.write_str("DH-HMAC-CHAP not usable"),
            FailureReason::ConcatMismatch => f.write_str("secure channel concatenation mismatch"),
            FailureReason::HashUnusable => f.write_str("hash function not usable"),
            FailureReason::DhGroupUnusable => f.write_str("DH group not usable"),
            FailureReason::IncorrectPayload => f.write_str("incorrect payload"),
            FailureReason::IncorrectMessage => f.write_str("incorrect protocol message"),
            FailureReason::Other(code) => write!(f, "reason code explanation {code:#04x}"),
        }
    }
}

/// What a successful transaction established, on either side.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub hash: HashId,
    pub dh_group: DhGroup,
    /// The controller proved its key to the host too.
    pub bidirectional: bool,
    /// `Ks = H(g^xy mod p)`; None with the null group.
    pub session_key: Option<Secret>,
    /// C1, the controller's challenge.
    pub c1: Vec<u8>,
    /// C2, the host's challenge, when the host sent one.
    pub c2: Option<Vec<u8>>,
    /// The SC_C of the Negotiate (0: no secure channel concatenation).
    pub sc_c: u8,
}

impl Authenticated {
    /// The generated PSK `HMAC(Ks, C1 ‖ C2)` for secure channel concatenation,
    /// when both a DH group and a host challenge were used.
    pub fn generated_psk(&self) -> Option<Secret> {
        let ks = self.session_key.as_ref()?;
        let c2 = self.c2.as_ref()?;
        Some(chap::generated_psk(self.hash, ks, &self.c1, c2))
    }
}

/// A nonzero sequence number (S1, S2) from `fill`: 0 means "none" in the Reply.
pub(crate) fn random_seqnum(fill: &mut dyn FnMut(&mut [u8])) -> u32 {
    let mut bytes = [0u8; 4];
    fill(&mut bytes);
    u32::from_le_bytes(bytes).max(1)
}

/// Secret bytes: zeroed on drop, compared in constant time, never printed.
#[derive(Clone, Default)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(Zeroizing::new(bytes))
    }

    pub fn from_slice(bytes: &[u8]) -> Secret {
        Secret(Zeroizing::new(bytes.to_vec()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Constant-time equality (lengths are not secret).
    pub fn ct_eq(&self, other: &[u8]) -> bool {
        self.0.len() == other.len() && bool::from(self.0.as_slice().ct_eq(other))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<redacted>, {} bytes)", self.0.len())
    }
}

/// Errors of decoding messages and parsing key representations. The text
/// never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authentication message truncated: {len} bytes, {needed} needed")]
    Truncated { len: usize, needed: usize },
    #[error("unknown authentication message type {auth_type:#04x} id {auth_id:#04x}")]
    UnknownMessage { auth_type: u8, auth_id: u8 },
    #[error("malformed authentication message: {0}")]
    Malformed(&'static str),
    #[error("invalid DH value: {0}")]
    InvalidDhValue(&'static str),
    #[error("invalid key representation: {0}")]
    InvalidKey(&'static str),
    #[error("unknown {0} name")]
    UnknownName(&'static str),
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names() {
        for h in HashId::ALL {
            assert_eq!(HashId::from_id(h.id()), Some(h));
            assert_eq!(h.name().parse::<HashId>(), Ok(h));
            assert_eq!(h.hmac_name().parse::<HashId>(), Ok(h));
        }
        assert_eq!(HashId::from_id(0), None);
        assert_eq!(HashId::from_id(4), None);
        assert_eq!("HMAC(SHA384)".parse::<HashId>(), Ok(HashId::Sha384));
        assert!("md5".parse::<HashId>().is_err());
        for g in DhGroup::ALL {
            assert_eq!(DhGroup::from_id(g.id()), Some(g));
            assert_eq!(g.name().parse::<DhGroup>(), Ok(g));
        }
        assert_eq!(DhGroup::from_id(6), None);
        assert_eq!(DhGroup::Ffdhe8192.value_len(), 1024);
        assert_eq!(DhGroup::Null.value_len(), 0);
        for code in 0..=255u8 {
            assert_eq!(FailureReason::from_code(code).code(), code);
        }
        assert!(is_dhchap_command(0xe9, 1, 1));
        assert!(!is_dhchap_command(0xea, 1, 1));
    }

    #[test]
    fn secret_is_redacted() {
        let s = Secret::from_slice(b"top secret key bytes");
        let shown = format!("{s:?}");
        assert!(!shown.contains("top"), "{shown}");
        assert!(shown.contains("redacted"));
        assert!(s.ct_eq(b"top secret key bytes"));
        assert!(!s.ct_eq(b"top secret key byteX"));
        assert!(!s.ct_eq(b"short"));
    }
}
