//! Namespaces: [`Namespace`] and the [`NsTable`] snapshots queues run on,
//! per-namespace host masking, and the live namespace changes of
//! [`Target`] (add, remove, resize, host add/remove).
//!
//! Masking has one rule, [`Namespace::visible_to`], applied in one place:
//! [`NsTable::visible_to`] builds a controller's view
//! ([`crate::ctrl::Controller::namespaces`]), and everything a controller
//! serves (Identify lists, Identify Namespace, log pages, I/O, flushes) looks
//! namespaces up in that view only. A masked NSID is thus exactly an
//! inactive one for that host. Changes reach the queues as every namespace
//! change does: a new table and a bumped namespace generation, which the
//! queues compare per command (no lock on the data path).

use std::sync::Arc;

use crate::backend::Backend;
use crate::config::NamespaceConfig;
use crate::limits::{ANA_GROUP_ID_MAX, NAMESPACE_HOSTS_MAX, NSID_MAX};
use crate::subsys::{fnv1a, BackendOpener, RegistryError, Subsystem, Target};

/// One namespace: a backend plus its identity.
#[derive(Clone)]
pub struct Namespace {
    pub nsid: u32,
    pub backend: Arc<dyn Backend>,
    /// 512 or 4096.
    pub block_size: u32,
    /// log2(block_size).
    pub block_shift: u32,
    pub nguid: [u8; 16],
    pub uuid: [u8; 16],
    pub eui64: [u8; 8],
    pub ana_group: u32,
    /// Host NQNs that see the namespace; empty: every host the subsystem
    /// admits. Replaced with the whole entry (see [`Target::ns_add_host`]).
    pub hosts: Vec<String>,
}

impl Namespace {
    /// Whether host `hostnqn` sees this namespace (the only visibility rule:
    /// [`Subsystem::namespaces_for`] applies it to build a controller's view).
    pub fn visible_to(&self, hostnqn: &str) -> bool {
        self.hosts.is_empty() || self.hosts.iter().any(|h| h == hostnqn)
    }
    /// Capacity in logical blocks (read from the backend: it may be resized).
    pub fn size_blocks(&self) -> u64 {
        self.backend.size_bytes() >> self.block_shift
    }
}

/// Namespaces of one subsystem, sorted by NSID; replaced as a whole on change.
#[derive(Default)]
pub struct NsTable {
    pub list: Vec<Arc<Namespace>>,
}

impl NsTable {
    pub fn get(&self, nsid: u32) -> Option<&Arc<Namespace>> {
        self.list.binary_search_by_key(&nsid, |n| n.nsid).ok().map(|i| &self.list[i])
    }
    pub fn nsids(&self) -> Vec<u32> {
        self.list.iter().map(|n| n.nsid).collect()
    }
    /// The namespaces host `hostnqn` sees: `self` itself when none is hidden
    /// from it (the common case shares one table between all controllers).
    pub fn visible_to(self: &Arc<Self>, hostnqn: &str) -> Arc<NsTable> {
        if self.list.iter().all(|n| n.visible_to(hostnqn)) {
            return self.clone();
        }
        let list: Vec<Arc<Namespace>> = self.list.iter().filter(|n| n.visible_to(hostnqn)).cloned().collect();
        debug_assert!(list.len() < self.list.len() && list.is_sorted_by_key(|n| n.nsid));
        Arc::new(NsTable { list })
    }
}

impl Target {
    pub(crate) fn insert_namespace(
        sub: &Subsystem,
        nsid: u32,
        n: &NamespaceConfig,
        open: BackendOpener<'_>,
    ) -> Result<(), RegistryError> {
        if nsid == 0 || nsid > NSID_MAX {
            return Err(RegistryError::Invalid(format!("nsid {nsid} out of range 1..={NSID_MAX}")));
        }
        if sub.namespaces().get(nsid).is_some() {
            return Err(RegistryError::NamespaceExists { nqn: sub.nqn.clone(), nsid });
        }
        let block_size = n.block_size.unwrap_or(512);
        if block_size != 512 && block_size != 4096 {
            return Err(RegistryError::Invalid(format!("block_size {block_size} (must be 512 or 4096)")));
        }
        let ana_group = n.ana_group.unwrap_or(1);
        if ana_group == 0 || ana_group > ANA_GROUP_ID_MAX {
            return Err(RegistryError::Invalid(format!("ana_group {ana_group} out of range 1..={ANA_GROUP_ID_MAX}")));
        }
        check_ns_hosts(&n.hosts)?;
        let backend = open(n)?;
        let (nguid, uuid, eui64) = namespace_ids(&sub.nqn, nsid, n)?;
        let ns = Arc::new(Namespace {
            nsid,
            backend,
            block_size,
            block_shift: block_size.trailing_zeros(),
            nguid,
            uuid,
            eui64,
            ana_group,
            hosts: n.hosts.clone(),
        });
        sub.replace_ns(|l| l.push(ns));
        Ok(())
    }

    /// Add a namespace live; controllers of the hosts that see it get a
    /// Namespace Attribute Changed AEN.
    pub fn add_namespace(&self, nqn: &str, n: &NamespaceConfig, open: BackendOpener<'_>) -> Result<u32, RegistryError> {
        let sub = self.subsystem(nqn).ok_or(RegistryError::NoSuchSubsystem(nqn.into()))?;
        let nsid = match n.nsid {
            Some(id) => id,
            None => (1..=NSID_MAX)
                .find(|id| sub.namespaces().get(*id).is_none())
                .ok_or(RegistryError::Invalid("no free nsid".into()))?,
        };
        Self::insert_namespace(&sub, nsid, n, open)?;
        let ns = sub.namespaces().get(nsid).cloned().expect("just inserted");
        sub.ns_changed(nsid, |h| ns.visible_to(h));
        Ok(nsid)
    }

    /// Remove a namespace live (commands already holding it finish on it).
    pub fn remove_namespace(&self, nqn: &str, nsid: u32) -> Result<(), RegistryError> {
        let sub = self.subsystem(nqn).ok_or(RegistryError::NoSuchSubsystem(nqn.into()))?;
        let ns = sub.namespaces().get(nsid).cloned().ok_or(RegistryError::NoSuchNamespace { nqn: nqn.into(), nsid })?;
        sub.replace_ns(|l| l.retain(|n| n.nsid != nsid));
        sub.ns_changed(nsid, |h| ns.visible_to(h));
        Ok(())
    }

    /// Resize a namespace live (where its backend allows it).
    pub fn resize_namespace(&self, nqn: &str, nsid: u32, new_size_bytes: u64) -> Result<(), RegistryError> {
        let sub = self.subsystem(nqn).ok_or(RegistryError::NoSuchSubsystem(nqn.into()))?;
        let ns = sub.namespaces().get(nsid).cloned().ok_or(RegistryError::NoSuchNamespace { nqn: nqn.into(), nsid })?;
        if !new_size_bytes.is_multiple_of(ns.block_size as u64) {
            return Err(RegistryError::Invalid("size must be a multiple of the block size".into()));
        }
        ns.backend.resize(new_size_bytes)?;
        sub.replace_ns(|_| {});
        sub.ns_changed(nsid, |h| ns.visible_to(h));
        Ok(())
    }

    /// Let host `hostnqn` see namespace `nsid` (SPDK's `nvmf_ns_add_host`).
    /// On a namespace every host sees, this limits it to `hostnqn`, as adding
    /// a host to a subsystem limits the subsystem to its hosts. Controllers
    /// whose view changes get a Namespace Attribute Changed event.
    pub fn ns_add_host(&self, nqn: &str, nsid: u32, hostnqn: &str) -> Result<Vec<String>, RegistryError> {
        self.change_ns_hosts(nqn, nsid, |hosts| {
            if hosts.iter().any(|h| h == hostnqn) {
                return Err(RegistryError::Conflict(format!("host {hostnqn} already sees namespace {nsid} of {nqn}")));
            }
            hosts.push(hostnqn.to_string());
            Ok(())
        })
    }

    /// Hide namespace `nsid` from host `hostnqn` (SPDK's
    /// `nvmf_ns_remove_host`). The last host cannot be removed: an empty
    /// list means every host, so that would show the namespace to all.
    pub fn ns_remove_host(&self, nqn: &str, nsid: u32, hostnqn: &str) -> Result<Vec<String>, RegistryError> {
        self.change_ns_hosts(nqn, nsid, |hosts| {
            if !hosts.iter().any(|h| h == hostnqn) {
                let why = if hosts.is_empty() { "every host sees it" } else { "the host is not in its list" };
                return Err(RegistryError::Conflict(format!(
                    "host {hostnqn} cannot be removed from namespace {nsid} of {nqn}: {why}"
                )));
            }
            if hosts.len() == 1 {
                return Err(RegistryError::Conflict(format!(
                    "host {hostnqn} is the last host of namespace {nsid} of {nqn} (an empty list would show it \
                     to every host): add another host first, or remove the namespace"
                )));
            }
            hosts.retain(|h| h != hostnqn);
            Ok(())
        })
    }

    /// Replace namespace `nsid`'s entry with one whose host list `change`
    /// edited; returns the new list. Queues pick the new table up through
    /// the namespace generation, as for any namespace change.
    fn change_ns_hosts(
        &self,
        nqn: &str,
        nsid: u32,
        change: impl FnOnce(&mut Vec<String>) -> Result<(), RegistryError>,
    ) -> Result<Vec<String>, RegistryError> {
        let sub = self.subsystem(nqn).ok_or(RegistryError::NoSuchSubsystem(nqn.into()))?;
        let (before, after) = sub.try_replace_ns(|l| {
            let slot = l
                .iter_mut()
                .find(|n| n.nsid == nsid)
                .ok_or_else(|| RegistryError::NoSuchNamespace { nqn: nqn.into(), nsid })?;
            let mut hosts = slot.hosts.clone();
            change(&mut hosts)?;
            check_ns_hosts(&hosts)?;
            let new = Arc::new(Namespace { hosts, ..Namespace::clone(slot) });
            Ok::<_, RegistryError>((std::mem::replace(slot, new.clone()), new))
        })?;
        let hosts = after.hosts.clone();
        assert!(!hosts.is_empty(), "a host list change never leaves a namespace visible to every host");
        sub.ns_changed(nsid, |h| before.visible_to(h) != after.visible_to(h));
        Ok(hosts)
    }
}

/// A namespace's host list as the registry keeps it: NQNs, each once, at
/// most [`NAMESPACE_HOSTS_MAX`] (the configuration checks the same, with
/// key names; this guards the registry's own entry points).
fn check_ns_hosts(hosts: &[String]) -> Result<(), RegistryError> {
    if hosts.len() > NAMESPACE_HOSTS_MAX {
        return Err(RegistryError::Invalid(format!("more than {NAMESPACE_HOSTS_MAX} hosts for one namespace")));
    }
    for (i, h) in hosts.iter().enumerate() {
        nvmf_proto::validate_nqn(h).map_err(|e| RegistryError::Invalid(format!("host {h:?}: {e}")))?;
        if hosts[..i].contains(h) {
            return Err(RegistryError::Invalid(format!("host {h} is listed twice")));
        }
    }
    Ok(())
}

fn parse_hex<const N: usize>(s: &str, what: &str) -> Result<[u8; N], RegistryError> {
    let digits: Vec<u8> = s.bytes().filter(|b| *b != b'-').collect();
    if digits.len() != 2 * N {
        return Err(RegistryError::Invalid(format!("{what} {s:?}: expected {} hex digits", 2 * N)));
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        let hex = std::str::from_utf8(&digits[2 * i..2 * i + 2]).unwrap_or("zz");
        *o = u8::from_str_radix(hex, 16).map_err(|_| RegistryError::Invalid(format!("{what} {s:?}: not hex")))?;
    }
    Ok(out)
}

/// (NGUID, UUID, EUI-64).
type NsIds = ([u8; 16], [u8; 16], [u8; 8]);

/// NGUID, UUID and EUI-64 of a namespace: configured, or derived stably from
/// the subsystem NQN and NSID (so they survive restarts).
fn namespace_ids(nqn: &str, nsid: u32, n: &NamespaceConfig) -> Result<NsIds, RegistryError> {
    if n.nguid.is_some() && n.uuid.is_some() && n.eui64.is_some() {
        // Normalized configuration: the config module owns the formats.
        return n.ids().map_err(|e| RegistryError::Invalid(e.to_string()));
    }
    let mut seed = nqn.as_bytes().to_vec();
    seed.extend_from_slice(&nsid.to_le_bytes());
    let a = fnv1a(&seed);
    let b = fnv1a(&a.to_le_bytes());
    let mut derived = [0u8; 16];
    derived[..8].copy_from_slice(&a.to_be_bytes());
    derived[8..].copy_from_slice(&b.to_be_bytes());
    let nguid = match &n.nguid {
        Some(s) => parse_hex::<16>(s, "nguid")?,
        None => derived,
    };
    let uuid = match &n.uuid {
        Some(s) => parse_hex::<16>(s, "uuid")?,
        None => {
            // RFC 4122 version 4 / variant 1 bits on the derived bytes.
            let mut u = derived;
            u.reverse();
            u[6] = (u[6] & 0x0f) | 0x40;
            u[8] = (u[8] & 0x3f) | 0x80;
            u
        }
    };
    let eui64 = match &n.eui64 {
        Some(s) => parse_hex::<8>(s, "eui64")?,
        None => {
            let mut e = [0u8; 8];
            e.copy_from_slice(&derived[8..]);
            e
        }
    };
    Ok((nguid, uuid, eui64))
}

#[cfg(test)]
#[path = "namespace_tests.rs"]
mod tests;
