//! Fixed limits of the target: the one place each of them is defined.
//!
//! Limits an operator may change live in [`crate::config::Limits`] (the
//! `[limits]` section); the ones here are protocol or implementation bounds
//! that configuration, registry, Identify data and the queue all read from
//! this module, so they cannot drift apart. docs/configuration.md states them.

/// Largest namespace ID a subsystem may use. Identify Controller reports it
/// as NN and MNAN, so every valid NSID is at most NN as the spec requires
/// (Linux nvmet uses the same 1024, NVMET_MAX_NAMESPACES).
pub const NSID_MAX: u32 = 1024;
/// Namespaces per subsystem (every NSID in 1..=[`NSID_MAX`] may be used).
pub const NAMESPACES_PER_SUBSYSTEM_MAX: usize = NSID_MAX as usize;
/// Largest ANA group ID; also ANAGRPMAX and NANAGRPID in Identify Controller.
pub const ANA_GROUP_ID_MAX: u32 = 128;
/// Host NQNs one namespace may be limited to (`hosts` of
/// `[[subsystem.namespace]]`, `ns_add_host`). A controller's view of
/// its namespaces is rebuilt by scanning these lists whenever namespaces
/// change, so the bound keeps that (and the registry's memory: up to
/// [`NSID_MAX`] lists of 223-byte NQNs per subsystem) small.
pub const NAMESPACE_HOSTS_MAX: usize = 256;

/// Largest data transfer of one admin command (Identify, Get Log Page, Get
/// Features). Identify structures are 4 KiB; the largest log pages we build
/// are far smaller except the discovery log (1 KiB an entry), which hosts read
/// in pieces with the log page offset (nvme-cli reads 4 KiB at a time), so a
/// transfer larger than this is refused with Invalid Field.
pub const ADMIN_XFER_BYTES_MAX: u32 = 64 * 1024;

/// Receive buffer every connection starts with (the engine's small buffer):
/// it holds any PDU before Connect (ICReq, an admin capsule of at most
/// [`nvmf_proto::fabrics::ADMIN_CAPSULE_BYTES`] plus digests). Larger PDUs
/// after Connect are either taken piece by piece (H2CData payloads) or get a
/// larger buffer from the engine's per-core pool for as long as they need it.
pub const RECV_BUF_SMALL_BYTES: usize = 16 * 1024;

/// Peer-provoked warnings logged per second per core (the rest are counted and
/// reported with the next line that gets through).
pub const PEER_LOG_LINES_PER_S: u32 = 5;

const _: () = {
    assert!(NSID_MAX >= 1 && NSID_MAX < 0xffff_fffe);
    assert!(ANA_GROUP_ID_MAX >= 1);
    assert!(NAMESPACE_HOSTS_MAX >= 1);
    assert!(ADMIN_XFER_BYTES_MAX as usize >= nvmf_proto::identify::IDENTIFY_LEN);
    // The largest admin capsule (with header digest, PDO padding and data
    // digest) fits the small buffer with room for the next PDU's header.
    assert!(
        RECV_BUF_SMALL_BYTES
            >= nvmf_proto::pdu::CAPSULE_CMD_HLEN
                + 2 * nvmf_proto::pdu::DIGEST_LEN
                + nvmf_proto::fabrics::ADMIN_IN_CAPSULE_DATA_BYTES_MAX as usize
                + nvmf_proto::pdu::COMMON_HDR_LEN
    );
};
