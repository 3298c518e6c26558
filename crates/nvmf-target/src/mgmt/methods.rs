//! The JSON-RPC methods (documented in docs/rpc-schema.json).
//!
//! Parameters are by name; every unknown or badly typed parameter is an
//! "invalid params" error naming it. See the module docs of [`crate::mgmt`]
//! for how a failed change leaves everything as it was.

use std::net::SocketAddr;

use serde_json::{json, Map, Value};

use super::rpc::{code, Dispatch, RpcError};
use super::Mgmt;
use crate::config::{format_size, parse_size, ConfigError, HostConfig, NamespaceConfig, SubsystemConfig, TargetConfig};
use crate::server::ServeError;
use crate::subsys::{HostEntry, RegistryError, Subsystem};

/// Every method, in documentation order.
pub const METHODS: &[&str] = &[
    "rpc_methods",
    "subsystem_list",
    "subsystem_get",
    "subsystem_create",
    "subsystem_delete",
    "subsystem_allow_any_host",
    "namespace_add",
    "namespace_remove",
    "namespace_resize",
    "ns_add_host",
    "ns_remove_host",
    "host_add",
    "host_remove",
    "host_set_key",
    "listener_list",
    "listener_add",
    "listener_remove",
    "referral_list",
    "referral_add",
    "referral_remove",
    "ana_set",
    "ana_get",
    "controller_list",
    "controller_disconnect",
    "stats",
    "save_config",
];

pub(super) type R = Result<Value, RpcError>;

// ------------------------------------------------------------------ params

pub(super) struct Params<'a> {
    m: &'a Map<String, Value>,
}

impl<'a> Params<'a> {
    /// Refuse parameters the method does not take.
    pub(super) fn only(&self, known: &[&str]) -> Result<(), RpcError> {
        match self.m.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(RpcError::param(k, format!("unknown parameter (this method takes: {})", known.join(", ")))),
            None => Ok(()),
        }
    }
    pub(super) fn str_opt(&self, name: &str) -> Result<Option<&'a str>, RpcError> {
        match self.m.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(RpcError::param(name, "must be a string")),
        }
    }
    pub(super) fn str(&self, name: &str) -> Result<&'a str, RpcError> {
        self.str_opt(name)?.ok_or_else(|| RpcError::param(name, "missing"))
    }
    pub(super) fn u64_opt(&self, name: &str) -> Result<Option<u64>, RpcError> {
        match self.m.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| RpcError::param(name, "must be a non-negative integer")),
        }
    }
    pub(super) fn u32(&self, name: &str) -> Result<u32, RpcError> {
        let v = self.u64_opt(name)?.ok_or_else(|| RpcError::param(name, "missing"))?;
        u32::try_from(v).map_err(|_| RpcError::param(name, format!("{v} is too large")))
    }
    pub(super) fn u16_opt(&self, name: &str) -> Result<Option<u16>, RpcError> {
        match self.u64_opt(name)? {
            None => Ok(None),
            Some(v) => u16::try_from(v).map(Some).map_err(|_| RpcError::param(name, format!("{v} is above 65535"))),
        }
    }
    pub(super) fn bool(&self, name: &str) -> Result<bool, RpcError> {
        match self.m.get(name) {
            Some(Value::Bool(b)) => Ok(*b),
            None => Err(RpcError::param(name, "missing")),
            Some(_) => Err(RpcError::param(name, "must be true or false")),
        }
    }
    pub(super) fn addr(&self, name: &str) -> Result<SocketAddr, RpcError> {
        let s = self.str(name)?;
        s.parse()
            .map_err(|_| RpcError::param(name, format!("{s:?} is not ADDR:PORT (e.g. 127.0.0.1:4420, [::1]:4420)")))
    }
}

/// Turn a config validation error about the candidate into an RPC error
/// naming the parameter: `subsystem[3].namespace[0].size` -> `size`.
pub(super) fn config_error(e: ConfigError, strip_namespace: bool) -> RpcError {
    match e {
        ConfigError::Invalid { key, message } => {
            let mut k = key.as_str();
            if let Some(rest) = k.strip_prefix("subsystem[").and_then(|r| r.split_once("].")) {
                k = rest.1;
            }
            if strip_namespace {
                if let Some(rest) = k.strip_prefix("namespace[").and_then(|r| r.split_once("].")) {
                    k = rest.1;
                }
            }
            RpcError::param(k, message)
        }
        other => RpcError::new(code::INVALID_PARAMS, format!("invalid params: {other}")),
    }
}

pub(super) fn registry_error(e: RegistryError) -> RpcError {
    match e {
        RegistryError::NoSuchSubsystem(_) | RegistryError::NoSuchNamespace { .. } => RpcError::not_found(e.to_string()),
        RegistryError::SubsystemExists(_) | RegistryError::NamespaceExists { .. } => RpcError::exists(e.to_string()),
        RegistryError::Invalid(_) => RpcError::new(code::INVALID_PARAMS, format!("invalid params: {e}")),
        RegistryError::Conflict(_) => RpcError::conflict(e.to_string()),
        RegistryError::Backend(_) => RpcError::failed(e.to_string()),
    }
}

pub(super) fn serve_error(e: ServeError) -> RpcError {
    match e {
        ServeError::NoSuchListener(_) => RpcError::not_found(e.to_string()),
        ServeError::ListenerExists(_) => RpcError::exists(e.to_string()),
        other => RpcError::failed(other.to_string()),
    }
}

pub(super) fn no_subsystem(nqn: &str) -> RpcError {
    RpcError::not_found(format!("no subsystem {nqn}"))
}

pub(super) fn sub_index(cfg: &TargetConfig, nqn: &str) -> Result<usize, RpcError> {
    cfg.subsystems.iter().position(|s| s.nqn == nqn).ok_or_else(|| no_subsystem(nqn))
}

pub(super) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(super) fn ana_state_name(s: u8) -> &'static str {
    use nvmf_proto::log::ana_state;
    match s {
        ana_state::OPTIMIZED => "optimized",
        ana_state::NON_OPTIMIZED => "non-optimized",
        ana_state::INACCESSIBLE => "inaccessible",
        ana_state::PERSISTENT_LOSS => "persistent-loss",
        _ => "change",
    }
}

pub(super) fn parse_ana_state(s: &str) -> Option<u8> {
    use nvmf_proto::log::ana_state;
    match s {
        "optimized" => Some(ana_state::OPTIMIZED),
        "non-optimized" | "non_optimized" => Some(ana_state::NON_OPTIMIZED),
        "inaccessible" => Some(ana_state::INACCESSIBLE),
        _ => None,
    }
}

// ------------------------------------------------------------------ views

pub(super) fn namespace_json(cfg: Option<&NamespaceConfig>, ns: &crate::subsys::Namespace) -> Value {
    json!({
        "nsid": ns.nsid,
        "kind": ns.backend.kind(),
        "path": cfg.and_then(|c| c.path.clone()),
        "size_bytes": ns.backend.size_bytes(),
        "size": format_size(ns.backend.size_bytes()),
        "block_size": ns.block_size,
        "nguid": hex(&ns.nguid),
        "uuid": cfg.and_then(|c| c.uuid.clone()),
        "eui64": hex(&ns.eui64),
        "ana_group": ns.ana_group,
        "hosts": ns.hosts,
    })
}

/// A host table as management shows it: which secrets it has and where
/// they come from, never their values.
pub(super) fn host_json(h: &HostConfig) -> Value {
    let source = |inline: &Option<String>, file: &Option<String>| match (inline, file) {
        (Some(_), _) => json!("inline"),
        (None, Some(f)) => json!({ "file": f }),
        (None, None) => Value::Null,
    };
    json!({
        "nqn": h.nqn,
        "dhchap_key": source(&h.dhchap_key, &h.dhchap_key_file),
        "dhchap_ctrl_key": source(&h.dhchap_ctrl_key, &h.dhchap_ctrl_key_file),
        "dhchap_hash": h.dhchap_hash,
        "dhchap_dhgroup": h.dhchap_dhgroup,
        "tls_key": source(&h.tls_key, &h.tls_key_file),
        "tls_key_compat": h.tls_key_compat.unwrap_or(false),
    })
}

pub(super) fn subsystem_json(cfg: &SubsystemConfig, sub: &Subsystem) -> Value {
    let table = sub.namespaces();
    let namespaces: Vec<Value> = table
        .list
        .iter()
        .map(|ns| namespace_json(cfg.namespaces.iter().find(|c| c.nsid == Some(ns.nsid)), ns))
        .collect();
    json!({
        "nqn": sub.nqn,
        "serial": sub.serial,
        "model": sub.model,
        "allow_any_host": sub.allow_any_host(),
        "allowed_hosts": sub.allowed_hosts(),
        "hosts": cfg.hosts.iter().map(host_json).collect::<Vec<_>>(),
        "io_queues_max": sub.io_queues_max,
        "queue_depth_max": sub.queue_depth_max,
        "namespaces": namespaces,
        "controllers": sub.controllers().len(),
    })
}

/// Parameters of `host_add` and `host_set_key` that set a host's secrets.
pub(super) const HOST_KEY_PARAMS: [&str; 9] = [
    "dhchap_key",
    "dhchap_key_file",
    "dhchap_ctrl_key",
    "dhchap_ctrl_key_file",
    "dhchap_hash",
    "dhchap_dhgroup",
    "tls_key",
    "tls_key_file",
    "tls_key_compat",
];

/// Set the secrets named in `p` on `h` (an inline key replaces a file and the
/// other way round; `""` removes one).
pub(super) fn set_host_keys(h: &mut HostConfig, p: &Params) -> Result<(), RpcError> {
    for (inline, file, slot_i, slot_f) in [
        ("dhchap_key", "dhchap_key_file", &mut h.dhchap_key, &mut h.dhchap_key_file),
        ("dhchap_ctrl_key", "dhchap_ctrl_key_file", &mut h.dhchap_ctrl_key, &mut h.dhchap_ctrl_key_file),
        ("tls_key", "tls_key_file", &mut h.tls_key, &mut h.tls_key_file),
    ] {
        let (i, f) = (p.str_opt(inline)?, p.str_opt(file)?);
        if i.is_some() && f.is_some() {
            return Err(RpcError::param(inline, format!("give {inline} or {file}, not both")));
        }
        if let Some(v) = i {
            *slot_i = (!v.is_empty()).then(|| v.to_string());
            *slot_f = None;
        }
        if let Some(v) = f {
            *slot_f = (!v.is_empty()).then(|| v.to_string());
            *slot_i = None;
        }
    }
    if let Some(v) = p.str_opt("dhchap_hash")? {
        h.dhchap_hash = (!v.is_empty()).then(|| v.to_string());
    }
    if let Some(v) = p.str_opt("dhchap_dhgroup")? {
        h.dhchap_dhgroup = (!v.is_empty()).then(|| v.to_string());
    }
    if let Some(Value::Bool(b)) = p.m.get("tls_key_compat") {
        h.tls_key_compat = b.then_some(true);
    } else if p.m.contains_key("tls_key_compat") {
        return Err(RpcError::param("tls_key_compat", "must be true or false"));
    }
    Ok(())
}

// ------------------------------------------------------------------ dispatch

impl Dispatch for Mgmt {
    fn call(&self, method: &str, params: &Map<String, Value>) -> R {
        let p = Params { m: params };
        let r = match method {
            "rpc_methods" => p.only(&[]).map(|()| json!(METHODS)),
            "subsystem_list" => self.subsystem_list(&p),
            "subsystem_get" => self.subsystem_get(&p),
            "subsystem_create" => self.subsystem_create(&p),
            "subsystem_delete" => self.subsystem_delete(&p),
            "subsystem_allow_any_host" => self.subsystem_allow_any_host(&p),
            "namespace_add" => self.namespace_add(&p),
            "namespace_remove" => self.namespace_remove(&p),
            "namespace_resize" => self.namespace_resize(&p),
            "ns_add_host" => self.ns_host_change(&p, true),
            "ns_remove_host" => self.ns_host_change(&p, false),
            "host_add" => self.host_change(&p, true),
            "host_remove" => self.host_change(&p, false),
            "host_set_key" => self.host_set_key(&p),
            "listener_list" => self.listener_list(&p),
            "listener_add" => self.listener_add(&p),
            "listener_remove" => self.listener_remove(&p),
            "referral_list" => self.referral_list(&p),
            "referral_add" => self.referral_add(&p),
            "referral_remove" => self.referral_remove(&p),
            "ana_set" => self.ana_set(&p),
            "ana_get" => self.ana_get(&p),
            "controller_list" => self.controller_list(&p),
            "controller_disconnect" => self.controller_disconnect(&p),
            "stats" => p.only(&[]).map(|()| self.stats_json()),
            "save_config" => self.save_config(&p),
            _ => Err(RpcError::new(
                code::METHOD_NOT_FOUND,
                format!("method not found: {method:?} (rpc_methods lists them)"),
            )),
        };
        let mut args = Value::Object(params.clone()).to_string();
        if args.len() > 200 {
            let mut cut = 200;
            while !args.is_char_boundary(cut) {
                cut -= 1;
            }
            args.truncate(cut);
            args.push('…');
        }
        let read_only =
            method.ends_with("_list") || method.ends_with("_get") || matches!(method, "stats" | "rpc_methods");
        match &r {
            Ok(_) if !read_only => tracing::info!("rpc {method} {args}: ok"),
            Ok(_) => tracing::debug!("rpc {method} {args}: ok"),
            Err(e) => tracing::info!("rpc {method} {args}: {e}"),
        }
        r
    }
}

impl Mgmt {
    fn subsystem_list(&self, p: &Params) -> R {
        p.only(&[])?;
        let cfg = self.state.lock().unwrap();
        let t = self.server.target();
        let v: Vec<Value> =
            cfg.subsystems.iter().filter_map(|c| t.subsystem(&c.nqn).map(|s| subsystem_json(c, &s))).collect();
        Ok(Value::Array(v))
    }

    fn subsystem_get(&self, p: &Params) -> R {
        p.only(&["nqn"])?;
        let nqn = p.str("nqn")?;
        let cfg = self.state.lock().unwrap();
        let i = sub_index(&cfg, nqn)?;
        let s = self.server.target().subsystem(nqn).ok_or_else(|| no_subsystem(nqn))?;
        Ok(subsystem_json(&cfg.subsystems[i], &s))
    }

    fn subsystem_create(&self, p: &Params) -> R {
        let sc: SubsystemConfig = serde_json::from_value(Value::Object(p.m.clone()))
            .map_err(|e| RpcError::new(code::INVALID_PARAMS, format!("invalid params: {e}")))?;
        let mut cfg = self.state.lock().unwrap();
        if cfg.subsystems.iter().any(|s| s.nqn == sc.nqn) {
            return Err(RpcError::exists(format!("subsystem {} already exists", sc.nqn)));
        }
        let mut cand = cfg.clone();
        cand.subsystems.push(sc);
        let cand = cand.normalized().map_err(|e| config_error(e, false))?;
        let sc = cand.subsystems.last().expect("just pushed");
        self.server.target().add_subsystem(sc, &*self.open).map_err(registry_error)?;
        let out = json!({"nqn": sc.nqn, "nsids": sc.namespaces.iter().map(|n| n.nsid).collect::<Vec<_>>()});
        *cfg = cand;
        Ok(out)
    }

    fn subsystem_delete(&self, p: &Params) -> R {
        p.only(&["nqn"])?;
        let nqn = p.str("nqn")?;
        let mut cfg = self.state.lock().unwrap();
        let i = sub_index(&cfg, nqn)?;
        if let Some(l) = cfg.listeners.iter().find(|l| l.subsystems.iter().any(|s| s == nqn)) {
            return Err(RpcError::conflict(format!(
                "listener {} exports {nqn} by name: remove it from the listener first (listener_remove with subsystem)",
                l.addr
            )));
        }
        self.server.target().remove_subsystem(nqn).map_err(registry_error)?;
        cfg.subsystems.remove(i);
        Ok(json!({"nqn": nqn}))
    }

    fn subsystem_allow_any_host(&self, p: &Params) -> R {
        p.only(&["nqn", "allow"])?;
        let nqn = p.str("nqn")?;
        let allow = p.bool("allow")?;
        let mut cfg = self.state.lock().unwrap();
        let i = sub_index(&cfg, nqn)?;
        let sub = self.server.target().subsystem(nqn).ok_or_else(|| no_subsystem(nqn))?;
        let mut cand = cfg.clone();
        let sc = &mut cand.subsystems[i];
        sc.allow_any_host = Some(allow);
        if allow {
            // The config model has no "any host" plus a list: the list goes.
            sc.allowed_hosts.clear();
        }
        let cand = cand.normalized().map_err(|e| config_error(e, false))?;
        sub.set_hosts(allow, cand.subsystems[i].allowed_hosts.clone());
        *cfg = cand;
        Ok(json!({"nqn": nqn, "allow_any_host": allow}))
    }

    fn host_change(&self, p: &Params, add: bool) -> R {
        let keys = if add { &HOST_KEY_PARAMS[..] } else { &["force"][..] };
        p.only(&[&["nqn", "host"][..], keys].concat())?;
        let force = !add && p.m.contains_key("force") && p.bool("force")?;
        let nqn = p.str("nqn")?;
        let host = p.str("host")?;
        nvmf_proto::validate_nqn(host).map_err(|e| RpcError::param("host", format!("{host:?}: {e}")))?;
        let with_keys = keys.iter().any(|k| p.m.contains_key(*k));
        self.change_hosts(nqn, |sc| {
            let listed = sc.allowed_hosts.iter().any(|h| h == host);
            let tabled = sc.hosts.iter().any(|h| h.nqn == host);
            if add {
                if listed || tabled {
                    return Err(RpcError::exists(format!("host {host} is already allowed in {nqn}")));
                }
                // Naming a host restricts the subsystem to its hosts.
                sc.allow_any_host = Some(false);
                if with_keys {
                    let mut h = HostConfig { nqn: host.to_string(), ..Default::default() };
                    set_host_keys(&mut h, p)?;
                    sc.hosts.push(h);
                } else {
                    sc.allowed_hosts.push(host.to_string());
                }
            } else {
                if !listed && !tabled {
                    return Err(RpcError::not_found(format!("host {host} is not in the allowed hosts of {nqn}")));
                }
                sc.allowed_hosts.retain(|h| h != host);
                sc.hosts.retain(|h| h.nqn != host);
                // The last host of a subsystem that allows only its hosts:
                // nobody could connect any more. Only on purpose.
                let locked_out = sc.allowed_hosts.is_empty() && sc.hosts.is_empty() && sc.allow_any_host != Some(true);
                if locked_out && !force {
                    return Err(RpcError::conflict(format!(
                        "host {host} is the last allowed host of {nqn}: without it no host may connect (pass \
                         force to remove it anyway, or allow any host first)"
                    )));
                }
            }
            Ok(())
        })
    }

    /// Change the secrets (and hash, DH group) of a host; a host of the plain
    /// list becomes a host table. New connections use them.
    fn host_set_key(&self, p: &Params) -> R {
        p.only(&[&["nqn", "host"][..], &HOST_KEY_PARAMS[..]].concat())?;
        let nqn = p.str("nqn")?;
        let host = p.str("host")?;
        self.change_hosts(nqn, |sc| {
            let at = match sc.hosts.iter().position(|h| h.nqn == host) {
                Some(i) => i,
                None if sc.allowed_hosts.iter().any(|h| h == host) => {
                    sc.allowed_hosts.retain(|h| h != host);
                    sc.hosts.push(HostConfig { nqn: host.to_string(), ..Default::default() });
                    sc.hosts.len() - 1
                }
                None => return Err(RpcError::not_found(format!("host {host} is not a host of {nqn}"))),
            };
            set_host_keys(&mut sc.hosts[at], p)
        })
    }

    /// Apply `change` to a candidate copy of subsystem `nqn`'s configuration,
    /// check it, load its keys, then make it live (nothing changes on error).
    fn change_hosts(&self, nqn: &str, change: impl FnOnce(&mut SubsystemConfig) -> Result<(), RpcError>) -> R {
        let mut cfg = self.state.lock().unwrap();
        let i = sub_index(&cfg, nqn)?;
        let sub = self.server.target().subsystem(nqn).ok_or_else(|| no_subsystem(nqn))?;
        let mut cand = cfg.clone();
        change(&mut cand.subsystems[i])?;
        let cand = cand.normalized().map_err(|e| config_error(e, false))?;
        let sc = &cand.subsystems[i];
        let entries =
            sc.hosts.iter().map(|h| HostEntry::load(h, nqn)).collect::<Result<Vec<_>, _>>().map_err(registry_error)?;
        sub.set_host_entries(entries);
        sub.set_hosts(sc.allow_any_host.unwrap_or(false), sc.allowed_hosts.clone());
        let out = json!({
            "nqn": nqn,
            "allow_any_host": sc.allow_any_host,
            "allowed_hosts": sc.allowed_hosts,
            "hosts": sc.hosts.iter().map(host_json).collect::<Vec<_>>(),
        });
        *cfg = cand;
        Ok(out)
    }

    fn namespace_add(&self, p: &Params) -> R {
        let nqn = p.str("nqn")?;
        let mut m = p.m.clone();
        m.remove("nqn");
        let mut ns: NamespaceConfig = serde_json::from_value(Value::Object(m))
            .map_err(|e| RpcError::new(code::INVALID_PARAMS, format!("invalid params: {e}")))?;
        let mut cfg = self.state.lock().unwrap();
        let i = sub_index(&cfg, nqn)?;
        if let Some(id) = ns.nsid {
            if cfg.subsystems[i].namespaces.iter().any(|n| n.nsid == Some(id)) {
                return Err(RpcError::exists(format!("namespace {id} already exists in {nqn}")));
            }
        } else {
            let used: std::collections::BTreeSet<u32> =
                cfg.subsystems[i].namespaces.iter().filter_map(|n| n.nsid).collect();
            ns.nsid = (1..=crate::limits::NSID_MAX).find(|id| !used.contains(id));
            if ns.nsid.is_none() {
                return Err(RpcError::conflict(format!("{nqn} has no free NSID")));
            }
        }
        let mut cand = cfg.clone();
        cand.subsystems[i].namespaces.push(ns);
        let cand = cand.normalized().map_err(|e| config_error(e, true))?;
        let filled = cand.subsystems[i].namespaces.last().expect("just pushed").clone();
        let nsid = self.server.target().add_namespace(nqn, &filled, &*self.open).map_err(registry_error)?;
        debug_assert_eq!(Some(nsid), filled.nsid);
        *cfg = cand;
        Ok(json!({"nqn": nqn, "nsid": nsid, "nguid": filled.nguid, "uuid": filled.uuid}))
    }

    fn namespace_remove(&self, p: &Params) -> R {
        p.only(&["nqn", "nsid"])?;
        let nqn = p.str("nqn")?;
        let nsid = p.u32("nsid")?;
        let mut cfg = self.state.lock().unwrap();
        let i = sub_index(&cfg, nqn)?;
        let j = cfg.subsystems[i]
            .namespaces
            .iter()
            .position(|n| n.nsid == Some(nsid))
            .ok_or_else(|| RpcError::not_found(format!("no namespace {nsid} in {nqn}")))?;
        self.server.target().remove_namespace(nqn, nsid).map_err(registry_error)?;
        cfg.subsystems[i].namespaces.remove(j);
        Ok(json!({"nqn": nqn, "nsid": nsid}))
    }

    fn namespace_resize(&self, p: &Params) -> R {
        p.only(&["nqn", "nsid", "size"])?;
        let nqn = p.str("nqn")?;
        let nsid = p.u32("nsid")?;
        let size_text = match p.m.get("size") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) if n.is_u64() => n.to_string(),
            None => return Err(RpcError::param("size", "missing")),
            Some(_) => return Err(RpcError::param("size", "must be a size string (e.g. \"2GiB\") or bytes")),
        };
        let bytes = parse_size(&size_text).map_err(|e| RpcError::param("size", e))?;
        let mut cfg = self.state.lock().unwrap();
        let i = sub_index(&cfg, nqn)?;
        let j = cfg.subsystems[i]
            .namespaces
            .iter()
            .position(|n| n.nsid == Some(nsid))
            .ok_or_else(|| RpcError::not_found(format!("no namespace {nsid} in {nqn}")))?;
        let mut cand = cfg.clone();
        let n = &mut cand.subsystems[i].namespaces[j];
        match n.kind.as_str() {
            "block" => {
                return Err(RpcError::conflict(
                    "a block namespace takes its size from the device; it cannot be resized",
                ))
            }
            // A file namespace without a size follows its file: keep it that way.
            "file" if n.size.is_none() => {}
            _ => n.size = Some(size_text.clone()),
        }
        if bytes == 0 || bytes % u64::from(n.block_size_bytes()) != 0 {
            return Err(RpcError::param(
                "size",
                format!("{size_text:?} is not a non-zero multiple of the block size ({})", n.block_size_bytes()),
            ));
        }
        let cand = cand.normalized().map_err(|e| config_error(e, true))?;
        self.server.target().resize_namespace(nqn, nsid, bytes).map_err(|e| match e {
            RegistryError::Backend(io) if io.kind() == std::io::ErrorKind::Unsupported => {
                RpcError::conflict(format!("namespace {nsid} of {nqn}: {io}"))
            }
            other => registry_error(other),
        })?;
        *cfg = cand;
        Ok(json!({"nqn": nqn, "nsid": nsid, "size_bytes": bytes}))
    }

    /// Show namespace `nsid` to one more host, or hide it from one (the
    /// registry refuses removing the last host and raises the events).
    fn ns_host_change(&self, p: &Params, add: bool) -> R {
        p.only(&["nqn", "nsid", "host"])?;
        let nqn = p.str("nqn")?;
        let nsid = p.u32("nsid")?;
        let host = p.str("host")?;
        nvmf_proto::validate_nqn(host).map_err(|e| RpcError::param("host", format!("{host:?}: {e}")))?;
        let mut cfg = self.state.lock().unwrap();
        let i = sub_index(&cfg, nqn)?;
        let j = cfg.subsystems[i]
            .namespaces
            .iter()
            .position(|n| n.nsid == Some(nsid))
            .ok_or_else(|| RpcError::not_found(format!("no namespace {nsid} in {nqn}")))?;
        let mut cand = cfg.clone();
        let hosts = &mut cand.subsystems[i].namespaces[j].hosts;
        let listed = hosts.iter().any(|h| h == host);
        if add {
            if listed {
                return Err(RpcError::exists(format!("host {host} already sees namespace {nsid} of {nqn}")));
            }
            hosts.push(host.to_string());
        } else {
            if !listed {
                return Err(RpcError::not_found(format!("host {host} is not a host of namespace {nsid} of {nqn}")));
            }
            hosts.retain(|h| h != host);
        }
        let cand = cand.normalized().map_err(|e| config_error(e, true))?;
        let t = self.server.target();
        let live = if add { t.ns_add_host(nqn, nsid, host) } else { t.ns_remove_host(nqn, nsid, host) };
        let live = live.map_err(registry_error)?;
        assert_eq!(live, cand.subsystems[i].namespaces[j].hosts, "registry and running configuration agree");
        *cfg = cand;
        Ok(json!({"nqn": nqn, "nsid": nsid, "hosts": live}))
    }

    fn save_config(&self, p: &Params) -> R {
        p.only(&["path"])?;
        let path = p.str_opt("path")?;
        let cfg = self.state.lock().unwrap();
        let text = cfg.to_toml_string().map_err(|e| RpcError::failed(e.to_string()))?;
        if let Some(path) = path {
            write_atomically(std::path::Path::new(path), text.as_bytes())
                .map_err(|e| RpcError::failed(format!("cannot write {path}: {e}")))?;
            tracing::info!("running configuration saved to {path}");
        }
        // The file keeps inline secrets as given; the answer never shows them.
        let mut shown = cfg.clone();
        for h in shown.subsystems.iter_mut().flat_map(|s| s.hosts.iter_mut()) {
            for secret in [&mut h.dhchap_key, &mut h.dhchap_ctrl_key, &mut h.tls_key] {
                if secret.is_some() {
                    *secret = Some("<redacted>".into());
                }
            }
        }
        let text = shown.to_toml_string().map_err(|e| RpcError::failed(e.to_string()))?;
        Ok(json!({"path": path, "toml": text}))
    }
}

/// Write `bytes` to a temporary file next to `path`, fsync, rename: a crash
/// leaves either the old file or the new one.
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let name = path.file_name().ok_or_else(|| std::io::Error::other("not a file path"))?;
    let tmp = dir.join(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    let r = f.write_all(bytes).and_then(|()| f.sync_all()).and_then(|()| std::fs::rename(&tmp, path));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}
