//! The JSON-RPC methods (documented in docs/rpc-schema.json).
//!
//! Parameters are by name; every unknown or badly typed parameter is an
//! "invalid params" error naming it. See the module docs of [`crate::mgmt`]
//! for how a failed change leaves everything as it was.

use std::net::SocketAddr;

use serde_json::{json, Map, Value};

use super::rpc::{code, Dispatch, RpcError};
use super::Mgmt;
use crate::config::{
    format_size, parse_size, ConfigError, ListenerConfig, NamespaceConfig, ReferralConfig, SubsystemConfig,
    TargetConfig,
};
use crate::server::ServeError;
use crate::subsys::{Port, Referral, RegistryError, Subsystem};

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
    "host_add",
    "host_remove",
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

type R = Result<Value, RpcError>;

// ------------------------------------------------------------------ params

struct Params<'a> {
    m: &'a Map<String, Value>,
}

impl<'a> Params<'a> {
    /// Refuse parameters the method does not take.
    fn only(&self, known: &[&str]) -> Result<(), RpcError> {
        match self.m.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(RpcError::param(k, format!("unknown parameter (this method takes: {})", known.join(", ")))),
            None => Ok(()),
        }
    }
    fn str_opt(&self, name: &str) -> Result<Option<&'a str>, RpcError> {
        match self.m.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(RpcError::param(name, "must be a string")),
        }
    }
    fn str(&self, name: &str) -> Result<&'a str, RpcError> {
        self.str_opt(name)?.ok_or_else(|| RpcError::param(name, "missing"))
    }
    fn u64_opt(&self, name: &str) -> Result<Option<u64>, RpcError> {
        match self.m.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| RpcError::param(name, "must be a non-negative integer")),
        }
    }
    fn u32(&self, name: &str) -> Result<u32, RpcError> {
        let v = self.u64_opt(name)?.ok_or_else(|| RpcError::param(name, "missing"))?;
        u32::try_from(v).map_err(|_| RpcError::param(name, format!("{v} is too large")))
    }
    fn u16_opt(&self, name: &str) -> Result<Option<u16>, RpcError> {
        match self.u64_opt(name)? {
            None => Ok(None),
            Some(v) => u16::try_from(v).map(Some).map_err(|_| RpcError::param(name, format!("{v} is above 65535"))),
        }
    }
    fn bool(&self, name: &str) -> Result<bool, RpcError> {
        match self.m.get(name) {
            Some(Value::Bool(b)) => Ok(*b),
            None => Err(RpcError::param(name, "missing")),
            Some(_) => Err(RpcError::param(name, "must be true or false")),
        }
    }
    fn addr(&self, name: &str) -> Result<SocketAddr, RpcError> {
        let s = self.str(name)?;
        s.parse()
            .map_err(|_| RpcError::param(name, format!("{s:?} is not ADDR:PORT (e.g. 127.0.0.1:4420, [::1]:4420)")))
    }
}

/// Turn a config validation error about the candidate into an RPC error
/// naming the parameter: `subsystem[3].namespace[0].size` -> `size`.
fn config_error(e: ConfigError, strip_namespace: bool) -> RpcError {
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

fn registry_error(e: RegistryError) -> RpcError {
    match e {
        RegistryError::NoSuchSubsystem(_) | RegistryError::NoSuchNamespace { .. } => RpcError::not_found(e.to_string()),
        RegistryError::SubsystemExists(_) | RegistryError::NamespaceExists { .. } => RpcError::exists(e.to_string()),
        RegistryError::Invalid(_) => RpcError::new(code::INVALID_PARAMS, format!("invalid params: {e}")),
        RegistryError::Backend(_) => RpcError::failed(e.to_string()),
    }
}

fn serve_error(e: ServeError) -> RpcError {
    match e {
        ServeError::NoSuchListener(_) => RpcError::not_found(e.to_string()),
        ServeError::ListenerExists(_) => RpcError::exists(e.to_string()),
        other => RpcError::failed(other.to_string()),
    }
}

fn no_subsystem(nqn: &str) -> RpcError {
    RpcError::not_found(format!("no subsystem {nqn}"))
}

fn sub_index(cfg: &TargetConfig, nqn: &str) -> Result<usize, RpcError> {
    cfg.subsystems.iter().position(|s| s.nqn == nqn).ok_or_else(|| no_subsystem(nqn))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn ana_state_name(s: u8) -> &'static str {
    use nvmf_proto::log::ana_state;
    match s {
        ana_state::OPTIMIZED => "optimized",
        ana_state::NON_OPTIMIZED => "non-optimized",
        ana_state::INACCESSIBLE => "inaccessible",
        ana_state::PERSISTENT_LOSS => "persistent-loss",
        _ => "change",
    }
}

fn parse_ana_state(s: &str) -> Option<u8> {
    use nvmf_proto::log::ana_state;
    match s {
        "optimized" => Some(ana_state::OPTIMIZED),
        "non-optimized" | "non_optimized" => Some(ana_state::NON_OPTIMIZED),
        "inaccessible" => Some(ana_state::INACCESSIBLE),
        _ => None,
    }
}

// ------------------------------------------------------------------ views

fn namespace_json(cfg: Option<&NamespaceConfig>, ns: &crate::subsys::Namespace) -> Value {
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
    })
}

fn subsystem_json(cfg: &SubsystemConfig, sub: &Subsystem) -> Value {
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
        "io_queues_max": sub.io_queues_max,
        "queue_depth_max": sub.queue_depth_max,
        "namespaces": namespaces,
        "controllers": sub.controllers().len(),
    })
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
            "host_add" => self.host_change(&p, true),
            "host_remove" => self.host_change(&p, false),
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
        p.only(&["nqn", "host"])?;
        let nqn = p.str("nqn")?;
        let host = p.str("host")?;
        nvmf_proto::validate_nqn(host).map_err(|e| RpcError::param("host", format!("{host:?}: {e}")))?;
        let mut cfg = self.state.lock().unwrap();
        let i = sub_index(&cfg, nqn)?;
        let sub = self.server.target().subsystem(nqn).ok_or_else(|| no_subsystem(nqn))?;
        let mut cand = cfg.clone();
        let sc = &mut cand.subsystems[i];
        let present = sc.allowed_hosts.iter().any(|h| h == host);
        if add {
            if present {
                return Err(RpcError::exists(format!("host {host} is already allowed in {nqn}")));
            }
            // Naming a host restricts the subsystem to its list.
            sc.allow_any_host = Some(false);
            sc.allowed_hosts.push(host.to_string());
        } else {
            if !present {
                return Err(RpcError::not_found(format!("host {host} is not in the allowed hosts of {nqn}")));
            }
            sc.allowed_hosts.retain(|h| h != host);
        }
        let cand = cand.normalized().map_err(|e| config_error(e, false))?;
        let sc = &cand.subsystems[i];
        sub.set_hosts(sc.allow_any_host.unwrap_or(false), sc.allowed_hosts.clone());
        let out = json!({"nqn": nqn, "allow_any_host": sc.allow_any_host, "allowed_hosts": sc.allowed_hosts});
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

    fn listener_list(&self, p: &Params) -> R {
        p.only(&[])?;
        let _cfg = self.state.lock().unwrap();
        let v: Vec<Value> = self
            .server
            .target()
            .ports()
            .iter()
            .map(|port| {
                json!({
                    "addr": port.addr.to_string(),
                    "port_id": port.port_id,
                    "discovery_only": port.discovery_only,
                    "subsystems": port.subsystems,
                })
            })
            .collect();
        Ok(Value::Array(v))
    }

    fn listener_add(&self, p: &Params) -> R {
        p.only(&["addr", "subsystem", "port_id"])?;
        let addr = p.addr("addr")?;
        let subsystem = p.str_opt("subsystem")?;
        let port_id = p.u16_opt("port_id")?;
        let mut cfg = self.state.lock().unwrap();
        if let Some(nqn) = subsystem {
            sub_index(&cfg, nqn)?;
        }
        let t = self.server.target();
        if let Some(port) = t.ports().into_iter().find(|x| x.addr == addr) {
            // Existing listener: export one more subsystem through it.
            let Some(nqn) = subsystem else {
                return Err(RpcError::exists(format!("listener {addr} exists already")));
            };
            if port.discovery_only {
                return Err(RpcError::conflict(format!("{addr} is a discovery-only listener")));
            }
            if port.exports(nqn) {
                return Err(RpcError::exists(format!("listener {addr} already exports {nqn}")));
            }
            let mut cand = cfg.clone();
            let l = cand
                .listeners
                .iter_mut()
                .find(|l| l.port_id == Some(port.port_id))
                .ok_or_else(|| RpcError::failed(format!("listener {addr} is not in the running configuration")))?;
            l.subsystems.push(nqn.to_string());
            let cand = cand.normalized().map_err(|e| config_error(e, false))?;
            let mut subs = port.subsystems.clone();
            subs.push(nqn.to_string());
            t.update_port_subsystems(port.port_id, subs);
            *cfg = cand;
            return Ok(json!({"addr": addr.to_string(), "port_id": port.port_id}));
        }
        let used: std::collections::BTreeSet<u16> = t.ports().iter().map(|x| x.port_id).collect();
        let port_id = match port_id {
            Some(id) if used.contains(&id) => {
                return Err(RpcError::param("port_id", format!("{id} is used by another listener")))
            }
            Some(id) => id,
            None => {
                (1..=u16::MAX).find(|id| !used.contains(id)).ok_or_else(|| RpcError::conflict("no free port id"))?
            }
        };
        let subsystems: Vec<String> = subsystem.into_iter().map(str::to_string).collect();
        let mut cand = cfg.clone();
        cand.listeners.push(ListenerConfig {
            addr: addr.to_string(),
            port_id: Some(port_id),
            subsystems: subsystems.clone(),
        });
        let mut cand = cand.normalized().map_err(|e| RpcError::param("addr", e))?;
        let port =
            self.server.add_listener(Port { port_id, addr, subsystems, discovery_only: false }).map_err(serve_error)?;
        cand.listeners.last_mut().expect("just pushed").addr = port.addr.to_string();
        *cfg = cand;
        Ok(json!({"addr": port.addr.to_string(), "port_id": port_id}))
    }

    fn listener_remove(&self, p: &Params) -> R {
        p.only(&["addr", "subsystem"])?;
        let addr = p.addr("addr")?;
        let subsystem = p.str_opt("subsystem")?;
        let mut cfg = self.state.lock().unwrap();
        let t = self.server.target();
        let port = t
            .ports()
            .into_iter()
            .find(|x| x.addr == addr)
            .ok_or_else(|| RpcError::not_found(format!("no listener on {addr}")))?;
        if port.discovery_only {
            return Err(RpcError::conflict(format!("{addr} is a discovery-only listener (configured in the file)")));
        }
        let mut cand = cfg.clone();
        let li = cand
            .listeners
            .iter()
            .position(|l| l.port_id == Some(port.port_id))
            .ok_or_else(|| RpcError::failed(format!("listener {addr} is not in the running configuration")))?;
        if let Some(nqn) = subsystem {
            let l = &mut cand.listeners[li];
            if !l.subsystems.iter().any(|s| s == nqn) {
                return Err(RpcError::not_found(format!("listener {addr} does not name {nqn}")));
            }
            l.subsystems.retain(|s| s != nqn);
            if !l.subsystems.is_empty() {
                // Others remain: only the export list changes (an empty list would mean "all").
                let subs = l.subsystems.clone();
                let cand = cand.normalized().map_err(|e| config_error(e, false))?;
                t.update_port_subsystems(port.port_id, subs);
                *cfg = cand;
                return Ok(json!({"addr": addr.to_string(), "removed": false}));
            }
        }
        cand.listeners.remove(li);
        if cand.listeners.is_empty() {
            return Err(RpcError::conflict("cannot remove the last I/O listener"));
        }
        let cand = cand.normalized().map_err(|e| config_error(e, false))?;
        self.server.remove_listener(addr).map_err(serve_error)?;
        // A later listener with the same port ID starts from "optimized" again.
        for sub in t.subsystems() {
            sub.clear_ana_port(port.port_id);
        }
        *cfg = cand;
        Ok(json!({"addr": addr.to_string(), "removed": true}))
    }

    fn referral_list(&self, p: &Params) -> R {
        p.only(&[])?;
        let v: Vec<Value> = self
            .server
            .target()
            .referrals()
            .iter()
            .map(|r| json!({"addr": r.addr.to_string(), "port_id": r.port_id}))
            .collect();
        Ok(Value::Array(v))
    }

    fn referral_add(&self, p: &Params) -> R {
        p.only(&["addr", "port_id"])?;
        let addr = p.addr("addr")?;
        let mut cfg = self.state.lock().unwrap();
        if cfg.discovery.referrals.iter().any(|r| r.addr.parse::<SocketAddr>().ok() == Some(addr)) {
            return Err(RpcError::exists(format!("referral to {addr} exists already")));
        }
        let port_id = match p.u16_opt("port_id")? {
            Some(id) => id,
            None => cfg.discovery.referrals.iter().filter_map(|r| r.port_id).max().unwrap_or(0).saturating_add(1),
        };
        let mut cand = cfg.clone();
        cand.discovery.referrals.push(ReferralConfig { addr: addr.to_string(), port_id: Some(port_id) });
        let cand = cand.normalized().map_err(|e| RpcError::param("addr", e))?;
        if !self.server.target().add_referral(Referral { addr, port_id }) {
            return Err(RpcError::exists(format!("referral to {addr} exists already")));
        }
        *cfg = cand;
        Ok(json!({"addr": addr.to_string(), "port_id": port_id}))
    }

    fn referral_remove(&self, p: &Params) -> R {
        p.only(&["addr"])?;
        let addr = p.addr("addr")?;
        let mut cfg = self.state.lock().unwrap();
        let i = cfg
            .discovery
            .referrals
            .iter()
            .position(|r| r.addr.parse::<SocketAddr>().ok() == Some(addr))
            .ok_or_else(|| RpcError::not_found(format!("no referral to {addr}")))?;
        self.server.target().remove_referral(addr);
        cfg.discovery.referrals.remove(i);
        Ok(json!({"addr": addr.to_string()}))
    }

    fn port_of(&self, p: &Params) -> Result<Port, RpcError> {
        let addr = p.addr("listener")?;
        self.server
            .target()
            .ports()
            .into_iter()
            .find(|x| x.addr == addr && !x.discovery_only)
            .ok_or_else(|| RpcError::not_found(format!("no I/O listener on {addr}")))
    }

    fn ana_set(&self, p: &Params) -> R {
        p.only(&["nqn", "listener", "group", "state"])?;
        let nqn = p.str("nqn")?;
        let group = p.u32("group")?;
        let state_text = p.str("state")?;
        let state = parse_ana_state(state_text).ok_or_else(|| {
            RpcError::param("state", format!("{state_text:?} is not optimized, non-optimized or inaccessible"))
        })?;
        if group == 0 || group > crate::limits::ANA_GROUP_ID_MAX {
            return Err(RpcError::param(
                "group",
                format!("{group} is outside 1..={}", crate::limits::ANA_GROUP_ID_MAX),
            ));
        }
        let _cfg = self.state.lock().unwrap();
        let port = self.port_of(p)?;
        if !port.exports(nqn) {
            return Err(RpcError::conflict(format!("listener {} does not export {nqn}", port.addr)));
        }
        self.server.target().set_ana_state(nqn, port.port_id, group, state).map_err(registry_error)?;
        Ok(json!({"nqn": nqn, "listener": port.addr.to_string(), "group": group, "state": ana_state_name(state)}))
    }

    fn ana_get(&self, p: &Params) -> R {
        p.only(&["nqn"])?;
        let nqn = p.str("nqn")?;
        let t = self.server.target();
        let sub = t.subsystem(nqn).ok_or_else(|| no_subsystem(nqn))?;
        let mut groups: Vec<u32> = sub.namespaces().list.iter().map(|n| n.ana_group).collect();
        groups.sort_unstable();
        groups.dedup();
        let mut out = Vec::new();
        for port in t.ports().iter().filter(|x| x.exports(nqn)) {
            for g in &groups {
                out.push(json!({
                    "listener": port.addr.to_string(),
                    "group": g,
                    "state": ana_state_name(sub.ana_state(port.port_id, *g)),
                }));
            }
        }
        Ok(Value::Array(out))
    }

    fn controller_list(&self, p: &Params) -> R {
        p.only(&["nqn"])?;
        let filter = p.str_opt("nqn")?;
        let t = self.server.target();
        let ports = t.ports();
        let mut out = Vec::new();
        for sub in t.subsystems() {
            if filter.is_some_and(|f| f != sub.nqn) {
                continue;
            }
            for c in sub.controllers() {
                let (rc, wc, rb, wb) = c.io_totals();
                out.push(json!({
                    "cntlid": c.cntlid,
                    "subsystem": sub.nqn,
                    "hostnqn": c.hostnqn,
                    "hostid": hex(&c.hostid),
                    "port_id": c.port_id,
                    "listener": ports.iter().find(|x| x.port_id == c.port_id).map(|x| x.addr.to_string()),
                    "io_queues": c.connected_io_queues(),
                    "kato_ms": c.kato_ms.load(std::sync::atomic::Ordering::Relaxed),
                    "peers": c.peers().iter().map(|(qid, a)| json!({"qid": qid, "addr": a.to_string()})).collect::<Vec<_>>(),
                    "read_cmds": rc, "write_cmds": wc, "read_bytes": rb, "write_bytes": wb,
                }));
            }
        }
        if let Some(f) = filter {
            if t.subsystem(f).is_none() {
                return Err(no_subsystem(f));
            }
        }
        Ok(Value::Array(out))
    }

    fn controller_disconnect(&self, p: &Params) -> R {
        p.only(&["nqn", "cntlid"])?;
        let nqn = p.str("nqn")?;
        let cntlid = p.u16_opt("cntlid")?.ok_or_else(|| RpcError::param("cntlid", "missing"))?;
        let sub = self.server.target().subsystem(nqn).ok_or_else(|| no_subsystem(nqn))?;
        let c = sub
            .controllers()
            .into_iter()
            .find(|c| c.cntlid == cntlid)
            .ok_or_else(|| RpcError::not_found(format!("no controller {cntlid} in {nqn}")))?;
        c.kill("disconnected by management");
        Ok(json!({"nqn": nqn, "cntlid": cntlid}))
    }

    /// Counters for `stats` (the metrics endpoint has the same and more).
    pub fn stats_json(&self) -> Value {
        let st = self.server.stats();
        let subs: Vec<Value> = self
            .server
            .target()
            .subsystems()
            .iter()
            .map(|s| {
                let t = s.io_totals();
                json!({
                    "nqn": s.nqn,
                    "controllers": s.controllers().len(),
                    "namespaces": s.namespaces().list.len(),
                    "read_cmds": t.read_cmds,
                    "write_cmds": t.write_cmds,
                    "read_bytes": t.read_bytes,
                    "write_bytes": t.write_bytes,
                })
            })
            .collect();
        let cores: Vec<Value> = st
            .cores
            .iter()
            .map(|c| {
                json!({
                    "core_index": c.core_index, "cpu": c.cpu, "busy_loops": c.busy_loops, "idle_loops": c.idle_loops,
                    "connections": c.connections, "connections_total": c.connections_total,
                    "bytes_rx": c.bytes_rx, "bytes_tx": c.bytes_tx, "storage_ops": c.storage_ops,
                })
            })
            .collect();
        json!({
            "uptime_s": self.started.elapsed().as_secs(),
            "connections": st.connections,
            "controllers": st.controllers,
            "subsystems": subs,
            "cores": cores,
        })
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
