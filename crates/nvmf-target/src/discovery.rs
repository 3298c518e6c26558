//! Discovery controller data: the discovery log page (LID 0x70) and the
//! discovery flavour of Identify Controller.
//!
//! Entries, in order: one "current discovery subsystem" entry for the port the
//! host came through (as TP 8013 hosts expect), one NVM subsystem entry per
//! (I/O port, subsystem exported there that the host may connect to), then
//! the configured referrals.

use std::net::{IpAddr, SocketAddr};

use nvmf_proto::fabrics::CNTLID_DYNAMIC;
use nvmf_proto::log::{adrfam, encode_discovery_log, sectype, subtype, treq, trtype, DiscoveryEntry};
use nvmf_proto::DISCOVERY_NQN;

use crate::config::TlsMode;
use crate::subsys::{Port, Target};

/// Most entries a discovery log carries (bounds the page size to ~4 MiB).
pub const DISCOVERY_ENTRIES_MAX: usize = 4096;

fn addr_fields(addr: SocketAddr, local: SocketAddr) -> (u8, String, String) {
    // A wildcard listener is reported with the address the host reached us on.
    let ip = if addr.ip().is_unspecified() { local.ip() } else { addr.ip() };
    let fam = match ip {
        IpAddr::V4(_) => adrfam::IPV4,
        IpAddr::V6(_) => adrfam::IPV6,
    };
    (fam, ip.to_string(), addr.port().to_string())
}

/// TREQ (secure channel bits) and TSAS SECTYPE for a listener's TLS mode,
/// as Linux nvmet reports a port with `addr_tsas` = tls1.3.
fn secure_channel(tls: TlsMode) -> (u8, u8) {
    match tls {
        TlsMode::None => (treq::NOT_SPECIFIED, sectype::NONE),
        TlsMode::Allowed => (treq::NOT_REQUIRED, sectype::TLS13),
        TlsMode::Required => (treq::REQUIRED, sectype::TLS13),
    }
}

/// An entry for the port `port_id` on `addr` with `tls`.
struct At {
    port_id: u16,
    addr: SocketAddr,
    tls: TlsMode,
}

impl At {
    fn port(p: &Port) -> At {
        At { port_id: p.port_id, addr: p.addr, tls: p.tls }
    }
}

fn entry(t: &Target, sub_type: u8, at: At, local: SocketAddr, nqn: &str) -> DiscoveryEntry {
    let (fam, traddr, trsvcid) = addr_fields(at.addr, local);
    let (secure, sectype) = secure_channel(at.tls);
    DiscoveryEntry {
        trtype: trtype::TCP,
        adrfam: fam,
        subtype: sub_type,
        // Like Linux nvmet: the secure channel as configured, SQ flow
        // control disable supported.
        treq: secure | treq::DISABLE_SQFLOW,
        portid: at.port_id,
        cntlid: CNTLID_DYNAMIC,
        asqsz: t.limits.admin_queue_depth_max.min(u16::MAX as u32) as u16,
        eflags: 0,
        trsvcid,
        subnqn: nqn.to_string(),
        traddr,
        sectype,
    }
}

/// Build the whole discovery log page for `hostnqn`, connected through `via`
/// on local address `local`.
pub fn discovery_log(t: &Target, hostnqn: &str, via: &Port, local: SocketAddr) -> Vec<u8> {
    let mut entries = Vec::new();
    entries.push(entry(t, subtype::CURRENT_DISCOVERY, At::port(via), local, DISCOVERY_NQN));
    let subsystems = t.subsystems();
    for p in t.ports().iter().filter(|p| !p.discovery_only) {
        for s in &subsystems {
            if p.exports(&s.nqn) && s.host_allowed(hostnqn) && entries.len() < DISCOVERY_ENTRIES_MAX {
                entries.push(entry(t, subtype::NVME, At::port(p), local, &s.nqn));
            }
        }
    }
    for r in t.referrals() {
        if entries.len() < DISCOVERY_ENTRIES_MAX {
            entries.push(entry(
                t,
                subtype::REFERRAL,
                At { port_id: r.port_id, addr: r.addr, tls: TlsMode::None },
                local,
                DISCOVERY_NQN,
            ));
        }
    }
    encode_discovery_log(t.discovery_genctr(), &entries)
}
