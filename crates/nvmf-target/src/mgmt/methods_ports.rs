//! JSON-RPC methods of the network side: listeners, referrals, ANA states
//! and connected controllers (documented in docs/rpc-schema.json).

use std::net::SocketAddr;

use serde_json::{json, Value};

use super::methods::*;
use super::rpc::RpcError;
use super::Mgmt;
use crate::config::{ListenerConfig, ReferralConfig, TlsMode};
use crate::subsys::{Port, Referral};

impl Mgmt {
    pub(super) fn listener_list(&self, p: &Params) -> R {
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
                    "tls": port.tls.name(),
                })
            })
            .collect();
        Ok(Value::Array(v))
    }

    pub(super) fn listener_add(&self, p: &Params) -> R {
        p.only(&["addr", "subsystem", "port_id", "tls"])?;
        let addr = p.addr("addr")?;
        let subsystem = p.str_opt("subsystem")?;
        let port_id = p.u16_opt("port_id")?;
        let tls: Option<TlsMode> =
            p.str_opt("tls")?.map(|t| t.parse()).transpose().map_err(|e| RpcError::param("tls", e))?;
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
            if tls.is_some_and(|t| t != port.tls) {
                return Err(RpcError::conflict(format!("listener {addr} exists with tls = {:?}", port.tls.name())));
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
            tls: tls.unwrap_or_default(),
        });
        let mut cand = cand.normalized().map_err(|e| RpcError::param("addr", e))?;
        let port = self
            .server
            .add_listener(Port { port_id, addr, subsystems, discovery_only: false, tls: tls.unwrap_or_default() })
            .map_err(serve_error)?;
        cand.listeners.last_mut().expect("just pushed").addr = port.addr.to_string();
        *cfg = cand;
        Ok(json!({"addr": port.addr.to_string(), "port_id": port_id}))
    }

    pub(super) fn listener_remove(&self, p: &Params) -> R {
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

    pub(super) fn referral_list(&self, p: &Params) -> R {
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

    pub(super) fn referral_add(&self, p: &Params) -> R {
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

    pub(super) fn referral_remove(&self, p: &Params) -> R {
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

    pub(super) fn port_of(&self, p: &Params) -> Result<Port, RpcError> {
        let addr = p.addr("listener")?;
        self.server
            .target()
            .ports()
            .into_iter()
            .find(|x| x.addr == addr && !x.discovery_only)
            .ok_or_else(|| RpcError::not_found(format!("no I/O listener on {addr}")))
    }

    pub(super) fn ana_set(&self, p: &Params) -> R {
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

    pub(super) fn ana_get(&self, p: &Params) -> R {
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

    pub(super) fn controller_list(&self, p: &Params) -> R {
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

    pub(super) fn controller_disconnect(&self, p: &Params) -> R {
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
}
