//! Runtime registry: the [`Target`] built from a [`TargetConfig`], its NVM
//! subsystems, namespaces, listeners (ports), referrals and the controllers
//! currently connected.
//!
//! Everything here is control plane: guarded by `Mutex`es and touched on
//! Connect, on management calls and on admin commands. The I/O hot path only
//! reads [`Subsystem::ns_generation`] with a relaxed load per command and
//! refreshes its `Arc<NsTable>` snapshot when it moved, so namespaces can be
//! added, removed or resized live.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nvmf_proto::opcodes::aen;
use nvmf_proto::DISCOVERY_NQN;

use crate::backend::Backend;
use nvmf_proto::auth::{DhGroup, DhchapKey, HashId};

use crate::config::{HostConfig, Limits, NamespaceConfig, SubsystemConfig, TargetConfig};
use crate::ctrl::{Controller, CtrlKind};
pub use crate::namespace::{Namespace, NsTable};

use crate::limits::ANA_GROUP_ID_MAX;

/// Errors of registry changes.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("no subsystem {0}")]
    NoSuchSubsystem(String),
    #[error("subsystem {0} already exists")]
    SubsystemExists(String),
    #[error("namespace {nsid} already exists in {nqn}")]
    NamespaceExists { nqn: String, nsid: u32 },
    #[error("no namespace {nsid} in {nqn}")]
    NoSuchNamespace { nqn: String, nsid: u32 },
    /// A host-list change that conflicts with the namespace's state (the
    /// host is listed already, is not listed, or is the last one).
    #[error("{0}")]
    Conflict(String),
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("backend: {0}")]
    Backend(#[from] io::Error),
}

/// Controllers of one subsystem (or of the discovery service) by CNTLID.
#[derive(Default)]
pub struct CtrlTable {
    pub by_id: BTreeMap<u16, Arc<Controller>>,
    next_cntlid: u16,
}

/// Lowest and highest dynamic controller IDs (0xFFF0.. are reserved).
const CNTLID_MIN: u16 = 1;
const CNTLID_MAX: u16 = 0xffef;

impl CtrlTable {
    /// Pick a free CNTLID (round robin, so a fresh controller rarely reuses the
    /// ID of one that just went away). `None` when `max` are in use.
    fn alloc_cntlid(&mut self, max: usize) -> Option<u16> {
        if self.by_id.len() >= max.min((CNTLID_MAX - CNTLID_MIN + 1) as usize) {
            return None;
        }
        let mut id = self.next_cntlid.clamp(CNTLID_MIN, CNTLID_MAX);
        loop {
            if !self.by_id.contains_key(&id) {
                self.next_cntlid = if id == CNTLID_MAX { CNTLID_MIN } else { id + 1 };
                return Some(id);
            }
            id = if id == CNTLID_MAX { CNTLID_MIN } else { id + 1 };
        }
    }
}

/// One NVM subsystem.
pub struct Subsystem {
    pub nqn: String,
    pub serial: String,
    pub model: String,
    /// Changed by management (host add/remove); read on Connect only.
    allow_any_host: AtomicBool,
    allowed_hosts: Mutex<Vec<String>>,
    /// Hosts with settings of their own (`[[subsystem.host]]`), keys loaded.
    host_entries: Mutex<Vec<HostEntry>>,
    /// I/O queues a controller may create.
    pub io_queues_max: u32,
    /// I/O queue entries (CAP.MQES + 1).
    pub queue_depth_max: u32,
    ns: Mutex<Arc<NsTable>>,
    /// Bumped on every namespace change; I/O queues compare it per command.
    pub ns_generation: AtomicU64,
    /// ANA change count (bumped on namespace or group changes).
    pub ana_chgcnt: AtomicU64,
    pub ctrls: Mutex<CtrlTable>,
    /// Stable FGUID for Identify Controller.
    pub fguid: [u8; 16],
    /// ANA state per (port ID, ANA group) set by management; absent = optimized.
    ana_states: Mutex<BTreeMap<(u16, u32), u8>>,
    /// I/O totals of queues that have closed, so counters never go backwards.
    pub retired_io: Mutex<IoTotals>,
}

/// Summed I/O counters (read commands, write commands, read bytes, written bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoTotals {
    pub read_cmds: u64,
    pub write_cmds: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    /// Latency histograms, errors by status, digest errors.
    pub stats: crate::stats::IoStatsSnapshot,
}

impl Subsystem {
    /// Every namespace (management, metrics). Controllers use
    /// [`Subsystem::namespaces_for`] instead.
    pub fn namespaces(&self) -> Arc<NsTable> {
        self.ns.lock().unwrap().clone()
    }
    /// The namespaces host `hostnqn` sees (per-namespace host masking): what
    /// its controllers list, identify and run I/O on.
    pub fn namespaces_for(&self, hostnqn: &str) -> Arc<NsTable> {
        self.namespaces().visible_to(hostnqn)
    }
    /// Whether `hostnqn` may connect: any host, the allowed list, or a host
    /// with a `[[subsystem.host]]` table.
    pub fn host_allowed(&self, hostnqn: &str) -> bool {
        self.allow_any_host()
            || self.allowed_hosts.lock().unwrap().iter().any(|h| h == hostnqn)
            || self.host_entries.lock().unwrap().iter().any(|h| h.config.nqn == hostnqn)
    }
    pub fn allow_any_host(&self) -> bool {
        self.allow_any_host.load(Ordering::Acquire)
    }
    /// Replace the access list (management). New Connects see it at once;
    /// connected controllers are not affected.
    pub fn set_hosts(&self, allow_any_host: bool, hosts: Vec<String>) {
        let mut l = self.allowed_hosts.lock().unwrap();
        *l = hosts;
        self.allow_any_host.store(allow_any_host, Ordering::Release);
    }
    /// The DH-HMAC-CHAP policy for `hostnqn`, when the host has a key.
    pub fn dhchap_policy(&self, hostnqn: &str) -> Option<Arc<DhchapPolicy>> {
        self.host_entries.lock().unwrap().iter().find(|h| h.config.nqn == hostnqn).and_then(|h| h.dhchap.clone())
    }
    /// The TLS key of `hostnqn`, when its host table has one.
    pub fn tls_key(&self, hostnqn: &str) -> Option<Arc<crate::tls::TlsHostKey>> {
        self.host_entries.lock().unwrap().iter().find(|h| h.config.nqn == hostnqn).and_then(|h| h.tls.clone())
    }
    /// The host tables as configured (secrets as given, never loaded values).
    pub fn host_configs(&self) -> Vec<HostConfig> {
        self.host_entries.lock().unwrap().iter().map(|h| h.config.clone()).collect()
    }
    /// Replace the host tables (management); new connections use them at
    /// once, connected controllers keep what they authenticated with.
    pub fn set_host_entries(&self, entries: Vec<HostEntry>) {
        *self.host_entries.lock().unwrap() = entries;
    }
    pub fn allowed_hosts(&self) -> Vec<String> {
        self.allowed_hosts.lock().unwrap().clone()
    }
    pub fn add_allowed_host(&self, hostnqn: &str) {
        let mut l = self.allowed_hosts.lock().unwrap();
        if !l.iter().any(|h| h == hostnqn) {
            l.push(hostnqn.to_string());
        }
    }
    pub fn controllers(&self) -> Vec<Arc<Controller>> {
        self.ctrls.lock().unwrap().by_id.values().cloned().collect()
    }
    /// ANA state of `group` as seen through port `port_id` (default optimized).
    pub fn ana_state(&self, port_id: u16, group: u32) -> u8 {
        let m = self.ana_states.lock().unwrap();
        m.get(&(port_id, group)).copied().unwrap_or(nvmf_proto::log::ana_state::OPTIMIZED)
    }
    /// Forget the ANA states set for port `port_id` (the port went away).
    pub fn clear_ana_port(&self, port_id: u16) {
        self.ana_states.lock().unwrap().retain(|(p, _), _| *p != port_id);
    }
    /// I/O totals over live queues plus the queues that already closed.
    pub fn io_totals(&self) -> IoTotals {
        // Held throughout so a queue retiring meanwhile is counted exactly once.
        let retired = self.retired_io.lock().unwrap();
        let mut t = *retired;
        for c in self.controllers() {
            let (rc, wc, rb, wb) = c.io_totals();
            t.read_cmds += rc;
            t.write_cmds += wc;
            t.read_bytes += rb;
            t.write_bytes += wb;
            t.stats.merge(&c.io_stats());
        }
        t
    }
    pub(crate) fn replace_ns(&self, f: impl FnOnce(&mut Vec<Arc<Namespace>>)) {
        self.try_replace_ns(|l| {
            f(l);
            Ok::<(), std::convert::Infallible>(())
        })
        .unwrap_or_else(|e| match e {});
    }
    /// Publish a new table made by `f` from a copy of the current one, under
    /// the table's lock (changes never interleave); nothing changes when `f`
    /// fails.
    pub(crate) fn try_replace_ns<T, E>(
        &self,
        f: impl FnOnce(&mut Vec<Arc<Namespace>>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut g = self.ns.lock().unwrap();
        let mut list = g.list.clone();
        let out = f(&mut list)?;
        list.sort_by_key(|n| n.nsid);
        *g = Arc::new(NsTable { list });
        self.ns_generation.fetch_add(1, Ordering::Release);
        self.ana_chgcnt.fetch_add(1, Ordering::Relaxed);
        Ok(out)
    }
    /// Tell the controllers for whose host `concerns` holds that `nsid`
    /// changed (a controller never hears of a namespace it cannot see).
    pub(crate) fn ns_changed(&self, nsid: u32, concerns: impl Fn(&str) -> bool) {
        for c in self.controllers().iter().filter(|c| concerns(&c.hostnqn)) {
            c.namespace_changed(nsid);
        }
    }
}

/// DH-HMAC-CHAP settings of one host: its key, the controller's key when the
/// controller authenticates too, and the hashes and DH groups the controller
/// may pick (most preferred first).
pub struct DhchapPolicy {
    pub host_key: DhchapKey,
    pub ctrl_key: Option<DhchapKey>,
    pub hashes: Vec<HashId>,
    pub dh_groups: Vec<DhGroup>,
    /// DH-HMAC-CHAP transactions of this host that succeeded (any queue).
    pub authenticated: AtomicU64,
}

impl std::fmt::Debug for DhchapPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DhchapPolicy")
            .field("ctrl_key", &self.ctrl_key.is_some())
            .field("hashes", &self.hashes)
            .field("dh_groups", &self.dh_groups)
            .finish_non_exhaustive()
    }
}

/// Hash preference when the host's table names none: SHA-256 first (what
/// Linux nvmet uses by default), then the stronger ones.
const DHCHAP_HASHES_DEFAULT: [HashId; 3] = [HashId::Sha256, HashId::Sha384, HashId::Sha512];
/// DH group preference when none is named: ffdhe2048 first (a DH exchange
/// costs little there), the larger groups, then none.
const DHCHAP_GROUPS_DEFAULT: [DhGroup; 6] =
    [DhGroup::Ffdhe2048, DhGroup::Ffdhe3072, DhGroup::Ffdhe4096, DhGroup::Ffdhe6144, DhGroup::Ffdhe8192, DhGroup::Null];

/// A `[[subsystem.host]]` table with its secrets loaded.
#[derive(Debug, Clone)]
pub struct HostEntry {
    /// As configured (secrets as given: inline text or a file name).
    pub config: HostConfig,
    pub dhchap: Option<Arc<DhchapPolicy>>,
    /// The configured TLS PSK (`tls_key`), loaded.
    pub tls: Option<Arc<crate::tls::TlsHostKey>>,
}

impl HostEntry {
    /// Load and check the secrets of `h` (host of subsystem `nqn`). Errors
    /// name the host and the key, never the key's value.
    pub fn load(h: &HostConfig, nqn: &str) -> Result<HostEntry, RegistryError> {
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            RegistryError::Invalid(format!("subsystem {nqn}, host {}: {what}: {e}", h.nqn))
        };
        let key =
            |inline: &Option<String>, file: &Option<String>, what: &str| -> Result<Option<DhchapKey>, RegistryError> {
                let text = crate::secret::load(inline.as_deref(), file.as_deref()).map_err(|e| bad(what, &e))?;
                text.map(|t| DhchapKey::parse(&t).map_err(|e| bad(what, &e))).transpose()
            };
        let host_key = key(&h.dhchap_key, &h.dhchap_key_file, "dhchap_key")?;
        let ctrl_key = key(&h.dhchap_ctrl_key, &h.dhchap_ctrl_key_file, "dhchap_ctrl_key")?;
        let hashes = match &h.dhchap_hash {
            Some(n) => vec![n.parse::<HashId>().map_err(|e| bad("dhchap_hash", &e))?],
            None => DHCHAP_HASHES_DEFAULT.to_vec(),
        };
        let dh_groups = match &h.dhchap_dhgroup {
            Some(n) => vec![n.parse::<DhGroup>().map_err(|e| bad("dhchap_dhgroup", &e))?],
            None => DHCHAP_GROUPS_DEFAULT.to_vec(),
        };
        let dhchap = match (host_key, ctrl_key) {
            (Some(host_key), ctrl_key) => {
                Some(Arc::new(DhchapPolicy { host_key, ctrl_key, hashes, dh_groups, authenticated: AtomicU64::new(0) }))
            }
            (None, Some(_)) => return Err(bad("dhchap_ctrl_key", &"needs a dhchap_key")),
            (None, None) => None,
        };
        let tls = crate::secret::load(h.tls_key.as_deref(), h.tls_key_file.as_deref())
            .map_err(|e| bad("tls_key", &e))?
            .map(|t| {
                crate::tls::TlsHostKey::parse(&t, h.tls_key_compat.unwrap_or(false)).map_err(|e| bad("tls_key", &e))
            })
            .transpose()?
            .map(Arc::new);
        Ok(HostEntry { config: h.clone(), dhchap, tls })
    }
}

/// One listening port as the discovery log reports it.
#[derive(Clone, Debug)]
pub struct Port {
    pub port_id: u16,
    pub addr: SocketAddr,
    /// Subsystem NQNs exported here; empty = all.
    pub subsystems: Vec<String>,
    /// A dedicated discovery listener (no I/O subsystems reachable through it).
    pub discovery_only: bool,
    pub tls: crate::config::TlsMode,
}

impl Port {
    pub fn exports(&self, nqn: &str) -> bool {
        !self.discovery_only && (self.subsystems.is_empty() || self.subsystems.iter().any(|s| s == nqn))
    }
}

/// A referral to another discovery service.
#[derive(Clone, Debug)]
pub struct Referral {
    pub addr: SocketAddr,
    pub port_id: u16,
}

/// The whole target: configuration limits plus the live registry.
pub struct Target {
    pub limits: Limits,
    subsystems: Mutex<Vec<Arc<Subsystem>>>,
    ports: Mutex<Vec<Port>>,
    referrals: Mutex<Vec<Referral>>,
    /// Discovery log generation counter.
    disc_genctr: AtomicU64,
    discovery_ctrls: Mutex<CtrlTable>,
    /// Controllers torn down by keep-alive timeout (control path, metrics).
    pub keep_alive_expiries: AtomicU64,
    /// Queues created from now on keep latency histograms (metrics enabled).
    pub latency_histograms: AtomicBool,
    /// Connections (queues) open now: counted once per accept and close.
    pub queues_open: std::sync::atomic::AtomicUsize,
    /// TLS PSKs generated by secure channel concatenation.
    pub generated_psks: Arc<crate::generated_psk::GeneratedPsks>,
}

/// Opens a namespace backend (normally [`crate::backend::open`]).
pub type BackendOpener<'a> = &'a dyn Fn(&NamespaceConfig) -> io::Result<Arc<dyn Backend>>;

impl Target {
    /// Build the registry from a configuration (normalized or not: absent
    /// optional fields get the documented defaults here as well).
    pub fn new(cfg: &TargetConfig, open: BackendOpener<'_>) -> Result<Arc<Target>, RegistryError> {
        let cfg = &cfg.normalized().map_err(|e| RegistryError::Invalid(e.to_string()))?;
        let t = Arc::new(Target {
            limits: cfg.limits.clone(),
            subsystems: Mutex::new(Vec::new()),
            ports: Mutex::new(Vec::new()),
            referrals: Mutex::new(Vec::new()),
            disc_genctr: AtomicU64::new(1),
            discovery_ctrls: Mutex::new(CtrlTable::default()),
            keep_alive_expiries: AtomicU64::new(0),
            latency_histograms: AtomicBool::new(false),
            queues_open: std::sync::atomic::AtomicUsize::new(0),
            generated_psks: Arc::default(),
        });
        for s in &cfg.subsystems {
            t.add_subsystem(s, open)?;
        }
        for r in &cfg.discovery.referrals {
            let addr: SocketAddr =
                r.addr.parse().map_err(|_| RegistryError::Invalid(format!("bad referral address {:?}", r.addr)))?;
            let n = t.referrals.lock().unwrap().len() as u16;
            t.referrals.lock().unwrap().push(Referral { addr, port_id: r.port_id.unwrap_or(n + 1) });
        }
        Ok(t)
    }

    pub fn subsystems(&self) -> Vec<Arc<Subsystem>> {
        self.subsystems.lock().unwrap().clone()
    }
    pub fn subsystem(&self, nqn: &str) -> Option<Arc<Subsystem>> {
        self.subsystems.lock().unwrap().iter().find(|s| s.nqn == nqn).cloned()
    }
    pub fn ports(&self) -> Vec<Port> {
        self.ports.lock().unwrap().clone()
    }
    pub fn referrals(&self) -> Vec<Referral> {
        self.referrals.lock().unwrap().clone()
    }
    pub fn discovery_genctr(&self) -> u64 {
        self.disc_genctr.load(Ordering::Acquire)
    }

    /// Add a subsystem with its namespaces.
    pub fn add_subsystem(&self, s: &SubsystemConfig, open: BackendOpener<'_>) -> Result<Arc<Subsystem>, RegistryError> {
        nvmf_proto::validate_nqn(&s.nqn).map_err(|e| RegistryError::Invalid(format!("{}: {e}", s.nqn)))?;
        if s.nqn == DISCOVERY_NQN {
            return Err(RegistryError::Invalid("a subsystem cannot use the discovery NQN".into()));
        }
        if self.subsystem(&s.nqn).is_some() {
            return Err(RegistryError::SubsystemExists(s.nqn.clone()));
        }
        let h = fnv1a(s.nqn.as_bytes());
        let mut fguid = [0u8; 16];
        fguid[..8].copy_from_slice(&h.to_be_bytes());
        fguid[8..].copy_from_slice(&fnv1a(&h.to_le_bytes()).to_be_bytes());
        let sub = Arc::new(Subsystem {
            nqn: s.nqn.clone(),
            serial: s.serial.clone().unwrap_or_else(|| format!("{h:016x}")),
            model: s.model.clone().unwrap_or_else(|| "nvmf".to_string()),
            allow_any_host: AtomicBool::new(
                s.allow_any_host.unwrap_or(s.allowed_hosts.is_empty() && s.hosts.is_empty()),
            ),
            allowed_hosts: Mutex::new(s.allowed_hosts.clone()),
            host_entries: Mutex::new(
                s.hosts.iter().map(|h| HostEntry::load(h, &s.nqn)).collect::<Result<Vec<_>, _>>()?,
            ),
            io_queues_max: s.io_queues_max.unwrap_or(u32::MAX).min(self.limits.io_queues_max).max(1),
            queue_depth_max: s.queue_depth_max.unwrap_or(u32::MAX).min(self.limits.queue_depth_max).max(2),
            ns: Mutex::new(Arc::new(NsTable::default())),
            ns_generation: AtomicU64::new(0),
            ana_chgcnt: AtomicU64::new(1),
            ctrls: Mutex::new(CtrlTable::default()),
            fguid,
            ana_states: Mutex::new(BTreeMap::new()),
            retired_io: Mutex::new(IoTotals::default()),
        });
        let mut next_nsid = 1;
        for n in &s.namespaces {
            let nsid = n.nsid.unwrap_or(next_nsid);
            Self::insert_namespace(&sub, nsid, n, open)?;
            next_nsid = next_nsid.max(nsid + 1);
        }
        self.subsystems.lock().unwrap().push(sub.clone());
        self.discovery_changed();
        Ok(sub)
    }

    /// Remove a subsystem: its controllers are torn down.
    pub fn remove_subsystem(&self, nqn: &str) -> Result<(), RegistryError> {
        let sub = {
            let mut l = self.subsystems.lock().unwrap();
            let pos = l.iter().position(|s| s.nqn == nqn).ok_or(RegistryError::NoSuchSubsystem(nqn.into()))?;
            l.remove(pos)
        };
        for c in sub.controllers() {
            c.kill("subsystem removed");
        }
        self.discovery_changed();
        Ok(())
    }

    /// Register a listening port (called by the server once bound).
    pub fn add_port(&self, p: Port) {
        self.ports.lock().unwrap().push(p);
        self.discovery_changed();
    }
    /// Forget a port by its port ID.
    pub fn remove_port(&self, port_id: u16, addr: SocketAddr) {
        self.ports.lock().unwrap().retain(|p| !(p.port_id == port_id && p.addr == addr));
        self.discovery_changed();
    }

    /// Change the subsystems a port exports (new connections see it; `None`
    /// when no such port).
    pub fn update_port_subsystems(&self, port_id: u16, subsystems: Vec<String>) -> Option<Port> {
        let p = {
            let mut l = self.ports.lock().unwrap();
            let p = l.iter_mut().find(|p| p.port_id == port_id)?;
            p.subsystems = subsystems;
            p.clone()
        };
        self.discovery_changed();
        Some(p)
    }

    /// Add a referral (`false` when one to `addr` exists already).
    pub fn add_referral(&self, r: Referral) -> bool {
        let mut l = self.referrals.lock().unwrap();
        if l.iter().any(|x| x.addr == r.addr) {
            return false;
        }
        l.push(r);
        drop(l);
        self.discovery_changed();
        true
    }
    /// Remove the referral to `addr` (`false` when there is none).
    pub fn remove_referral(&self, addr: SocketAddr) -> bool {
        let mut l = self.referrals.lock().unwrap();
        let before = l.len();
        l.retain(|x| x.addr != addr);
        let removed = l.len() != before;
        drop(l);
        if removed {
            self.discovery_changed();
        }
        removed
    }

    /// Set the ANA state of `group` in subsystem `nqn` as seen through port
    /// `port_id`; controllers connected through that port get an ANA change AEN.
    pub fn set_ana_state(&self, nqn: &str, port_id: u16, group: u32, state: u8) -> Result<(), RegistryError> {
        use nvmf_proto::log::ana_state;
        let sub = self.subsystem(nqn).ok_or(RegistryError::NoSuchSubsystem(nqn.into()))?;
        if group == 0 || group > ANA_GROUP_ID_MAX {
            return Err(RegistryError::Invalid(format!("ana group {group} out of range 1..={ANA_GROUP_ID_MAX}")));
        }
        if !matches!(state, ana_state::OPTIMIZED | ana_state::NON_OPTIMIZED | ana_state::INACCESSIBLE) {
            return Err(RegistryError::Invalid(format!("ana state {state:#x} cannot be set")));
        }
        sub.ana_states.lock().unwrap().insert((port_id, group), state);
        sub.ana_chgcnt.fetch_add(1, Ordering::Relaxed);
        for c in sub.controllers().iter().filter(|c| c.port_id == port_id) {
            c.raise_event(aen::CFG_ANA_CHANGE, aen::dw0(aen::TYPE_NOTICE, aen::NOTICE_ANA_CHANGE, 0x0c));
        }
        Ok(())
    }

    /// Bump the discovery generation counter and notify discovery controllers.
    pub fn discovery_changed(&self) {
        self.disc_genctr.fetch_add(1, Ordering::AcqRel);
        let ctrls: Vec<_> = self.discovery_ctrls.lock().unwrap().by_id.values().cloned().collect();
        for c in ctrls {
            c.raise_event(aen::CFG_DISC_CHANGE, aen::dw0(aen::TYPE_NOTICE, aen::NOTICE_DISC_CHANGE, 0x70));
        }
    }

    /// Create a controller (admin Connect with a dynamic CNTLID).
    pub fn create_controller(
        &self,
        kind: CtrlKind,
        subsys: Option<Arc<Subsystem>>,
        hostnqn: &str,
        hostid: [u8; 16],
        port_id: u16,
    ) -> Option<Arc<Controller>> {
        let max = self.limits.controllers_per_subsystem_max as usize;
        let table = match &subsys {
            Some(s) => &s.ctrls,
            None => &self.discovery_ctrls,
        };
        let mut t = table.lock().unwrap();
        let cntlid = t.alloc_cntlid(max)?;
        let io_queues = subsys.as_ref().map(|s| s.io_queues_max).unwrap_or(0);
        let c = Arc::new(Controller::new(cntlid, kind, subsys.clone(), hostnqn, hostid, port_id, io_queues));
        t.by_id.insert(cntlid, c.clone());
        Some(c)
    }

    /// Find a live controller for an I/O queue Connect.
    pub fn find_controller(&self, subsys: &Subsystem, cntlid: u16, hostnqn: &str) -> Option<Arc<Controller>> {
        let t = subsys.ctrls.lock().unwrap();
        t.by_id.get(&cntlid).filter(|c| c.hostnqn == hostnqn && !c.is_dead()).cloned()
    }

    /// Drop a controller from its table (its queues notice `dead` and close).
    pub fn release_controller(&self, c: &Controller) {
        let table = match &c.subsys {
            Some(s) => &s.ctrls,
            None => &self.discovery_ctrls,
        };
        let mut t = table.lock().unwrap();
        if let Some(cur) = t.by_id.get(&c.cntlid) {
            if std::ptr::eq(Arc::as_ptr(cur), c) {
                t.by_id.remove(&c.cntlid);
            }
        }
    }

    /// Number of live controllers (all subsystems plus discovery).
    pub fn controller_count(&self) -> usize {
        let n: usize = self.subsystems().iter().map(|s| s.ctrls.lock().unwrap().by_id.len()).sum();
        n + self.discovery_ctrls.lock().unwrap().by_id.len()
    }
}

/// FNV-1a 64: stable, dependency-free hash for derived identifiers.
pub fn fnv1a(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= x as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
