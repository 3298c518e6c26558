//! Sans-IO NVMe over TCP protocol core.
//!
//! Everything in this crate is pure code: bytes in, typed values out, and typed
//! values in, bytes out. There are no sockets, clocks or threads here, so every
//! decoder can be fuzzed and every encoder checked against byte-exact vectors.
//!
//! Map to the specifications:
//! - [`pdu`]: NVMe/TCP transport PDUs (ICReq/ICResp, CapsuleCmd/Resp, H2C/C2H
//!   data, R2T, TermReq) and the stream framer ([`pdu::decode`]).
//! - [`sqe`], [`cqe`], [`status`]: the 64-byte submission and 16-byte completion
//!   queue entries and status codes (NVMe Base).
//! - [`fabrics`]: Fabrics commands (Connect, Property Get/Set, Disconnect) and
//!   controller properties (CAP, VS, CC, CSTS).
//! - [`identify`], [`log`], [`features`]: admin data structures.
//! - [`opcodes`]: opcode, CNS, log page and feature identifiers.
//! - [`digest`]: CRC32C header/data digests.
//! - [`copy`]: payload copies that avoid a slow `rep movsb` case.

pub mod auth;
pub mod copy;
pub mod cqe;
pub mod digest;
pub mod fabrics;
pub mod features;
pub mod fuzz;
pub mod identify;
pub mod log;
pub mod log_limit;
pub mod opcodes;
pub mod pdu;
pub mod size;
pub mod sqe;
pub mod status;
mod wire;

pub use cqe::Cqe;
pub use pdu::{decode, Decoded, FrameConfig, Pdu, PduError, PduType, Role};
pub use sqe::{Sgl, Sqe};
pub use status::Status;

/// The well-known NQN of a discovery controller.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
/// IANA port for NVMe/TCP I/O controllers.
pub const NVME_TCP_PORT: u16 = 4420;
/// IANA port for NVMe/TCP discovery controllers.
pub const NVME_TCP_DISCOVERY_PORT: u16 = 8009;
/// Longest NQN in bytes (the field is 256 bytes, NUL terminated).
pub const NQN_LEN_MAX: usize = 223;
/// Shortest NQN the specification allows ("nqn.yyyy-mm.").
pub const NQN_LEN_MIN: usize = 11;

/// Check that `nqn` has the shape the NVMe Base specification requires.
///
/// We accept the two defined forms (`nqn.yyyy-mm.reverse-domain[:anything]` and
/// the UUID form) and reject anything with control characters or an out of
/// range length, because an NQN ends up in logs and in fixed-size fields.
pub fn validate_nqn(nqn: &str) -> Result<(), &'static str> {
    if nqn.len() < NQN_LEN_MIN || nqn.len() > NQN_LEN_MAX {
        return Err("NQN length must be 11..=223 bytes");
    }
    if !nqn.starts_with("nqn.") {
        return Err("NQN must start with \"nqn.\"");
    }
    if nqn.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
        return Err("NQN must be printable ASCII without spaces");
    }
    let date = &nqn.as_bytes()[4..];
    if date.len() < 8 || date[4] != b'-' || date[7] != b'.' {
        return Err("NQN must be nqn.yyyy-mm.<domain>");
    }
    if !date[..4].iter().chain(&date[5..7]).all(u8::is_ascii_digit) {
        return Err("NQN date must be digits (nqn.yyyy-mm.)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nqn_validation() {
        assert!(validate_nqn("nqn.2026-11.io.nvmf:default").is_ok());
        assert!(validate_nqn(DISCOVERY_NQN).is_ok());
        assert!(validate_nqn("nqn.2014-08.org.nvmexpress:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6").is_ok());
        assert!(validate_nqn("iqn.2026-11.x").is_err());
        assert!(validate_nqn("nqn.20x6-11.io.x").is_err());
        assert!(validate_nqn("nqn.2026-11.io with space").is_err());
        assert!(validate_nqn(&format!("nqn.2026-11.{}", "a".repeat(300))).is_err());
    }
}
