//! Import of nvmetcli's saved JSON (`nvmetcli save`, /etc/nvmet/config.json)
//! into a [`TargetConfig`].
//!
//! Mapping: each subsystem keeps its NQN, serial, model, allowed hosts and
//! `allow_any_host`; each enabled namespace becomes a `block` namespace when
//! its device path is a block device, else a `file` namespace (its NGUID and
//! UUID are kept). TCP ports become listeners exporting their linked
//! subsystems; other transports are skipped with a warning, as are referrals
//! that are not TCP. Every skip is returned as a warning line.

use std::os::unix::fs::FileTypeExt;

use serde::Deserialize;

use crate::config::{
    ListenerConfig, NamespaceConfig, ReferralConfig, SubsystemConfig, TargetConfig, TlsMode, CONFIG_FILE_BYTES_MAX,
};

#[derive(Deserialize)]
struct Root {
    #[serde(default)]
    ports: Vec<PortJ>,
    #[serde(default)]
    subsystems: Vec<SubsysJ>,
}

#[derive(Deserialize)]
struct AddrJ {
    #[serde(default)]
    adrfam: String,
    #[serde(default)]
    traddr: String,
    #[serde(default)]
    trsvcid: String,
    #[serde(default)]
    trtype: String,
    /// nvmet's addr_treq: "not specified", "required", "not required".
    #[serde(default)]
    treq: String,
    /// nvmet's addr_tsas for TCP: "none" or "tls1.3".
    #[serde(default)]
    tsas: String,
}

/// The listener TLS mode of an nvmet port: TLS 1.3 as TSAS, required or not by TREQ.
fn tls_mode(a: &AddrJ) -> TlsMode {
    match (a.tsas.as_str(), a.treq.as_str()) {
        ("tls1.3", "required") => TlsMode::Required,
        ("tls1.3", _) => TlsMode::Allowed,
        _ => TlsMode::None,
    }
}

#[derive(Deserialize)]
struct PortJ {
    addr: AddrJ,
    #[serde(default)]
    portid: Option<u16>,
    #[serde(default)]
    referrals: Vec<ReferralJ>,
    #[serde(default)]
    subsystems: Vec<String>,
}

#[derive(Deserialize)]
struct ReferralJ {
    addr: AddrJ,
    #[serde(default)]
    portid: Option<u16>,
}

#[derive(Deserialize)]
struct SubsysJ {
    nqn: String,
    #[serde(default)]
    allowed_hosts: Vec<String>,
    #[serde(default)]
    attr: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    namespaces: Vec<NsJ>,
}

#[derive(Deserialize)]
struct NsJ {
    nsid: u32,
    #[serde(default = "one")]
    enable: u32,
    device: DeviceJ,
    #[serde(default)]
    ana_grpid: Option<u32>,
}
fn one() -> u32 {
    1
}

#[derive(Deserialize)]
struct DeviceJ {
    path: String,
    #[serde(default)]
    nguid: Option<String>,
    #[serde(default)]
    uuid: Option<String>,
}

fn sock_addr(a: &AddrJ) -> String {
    if a.adrfam == "ipv6" && !a.traddr.starts_with('[') {
        format!("[{}]:{}", a.traddr, a.trsvcid)
    } else {
        format!("{}:{}", a.traddr, a.trsvcid)
    }
}

fn id_or_none(s: Option<String>) -> Option<String> {
    // nvmetcli writes all-zero IDs for "unset".
    s.map(|v| v.to_ascii_lowercase()).filter(|v| v.chars().any(|c| c.is_ascii_hexdigit() && c != '0'))
}

/// Convert nvmetcli JSON text. Returns the configuration (not yet
/// normalized: the caller validates it) and warnings about what was skipped.
pub fn import(json: &str) -> Result<(TargetConfig, Vec<String>), String> {
    if json.len() as u64 > CONFIG_FILE_BYTES_MAX {
        return Err(format!("larger than {CONFIG_FILE_BYTES_MAX} bytes"));
    }
    let root: Root = serde_json::from_str(json).map_err(|e| format!("not nvmetcli JSON: {e}"))?;
    let mut warnings = Vec::new();
    let mut cfg = TargetConfig::embedded_default();
    cfg.listeners.clear();
    cfg.discovery.listen.clear();
    cfg.subsystems.clear();
    for s in root.subsystems {
        let mut sc = SubsystemConfig::with_namespaces(&s.nqn, Vec::new());
        sc.serial = s.attr.get("serial").cloned().filter(|v| !v.is_empty());
        sc.model = s.attr.get("model").cloned().filter(|v| !v.is_empty());
        let any = s.attr.get("allow_any_host").map(|v| v == "1");
        sc.allowed_hosts = s.allowed_hosts;
        sc.allow_any_host = match any {
            Some(true) if !sc.allowed_hosts.is_empty() => {
                warnings.push(format!("{}: allow_any_host=1 with allowed_hosts: keeping the host list only", s.nqn));
                Some(false)
            }
            other => other,
        };
        for n in s.namespaces {
            if n.enable == 0 {
                warnings.push(format!("{} nsid {}: disabled in nvmetcli, skipped", s.nqn, n.nsid));
                continue;
            }
            let is_block = std::fs::metadata(&n.device.path).map(|m| m.file_type().is_block_device()).unwrap_or(false);
            let kind = if is_block || n.device.path.starts_with("/dev/") { "block" } else { "file" };
            let mut ns = NamespaceConfig::new(kind);
            ns.nsid = Some(n.nsid);
            ns.path = Some(n.device.path);
            ns.nguid = id_or_none(n.device.nguid).map(|v| v.replace('-', ""));
            ns.uuid = id_or_none(n.device.uuid);
            ns.ana_group = n.ana_grpid;
            sc.namespaces.push(ns);
        }
        cfg.subsystems.push(sc);
    }
    for p in root.ports {
        if p.addr.trtype != "tcp" {
            warnings.push(format!(
                "port {}: transport {:?} is not supported (only tcp), skipped",
                p.portid.unwrap_or(0),
                p.addr.trtype
            ));
            continue;
        }
        if p.subsystems.is_empty() {
            // nvmet serves only linked subsystems; an unlinked port is discovery only.
            cfg.discovery.listen.push(sock_addr(&p.addr));
        } else {
            cfg.listeners.push(ListenerConfig {
                addr: sock_addr(&p.addr),
                port_id: p.portid,
                tls: tls_mode(&p.addr),
                subsystems: p.subsystems,
            });
        }
        for r in p.referrals {
            if r.addr.trtype != "tcp" {
                warnings.push(format!("referral {}: transport {:?} skipped", sock_addr(&r.addr), r.addr.trtype));
                continue;
            }
            cfg.discovery.referrals.push(ReferralConfig { addr: sock_addr(&r.addr), port_id: r.portid });
        }
    }
    // Discovery listeners take port IDs after the listeners'; nvmetcli's IDs are kept for listeners.
    Ok((cfg, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file as `nvmetcli save` writes it (two ports, one RDMA).
    pub const SAMPLE: &str = r#"{
  "hosts": [{"nqn": "nqn.2014-08.org.nvmexpress:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427"}],
  "ports": [
    {"addr": {"adrfam": "ipv4", "traddr": "127.0.0.1", "treq": "not specified", "trsvcid": "4420", "trtype": "tcp"},
     "ana_groups": [{"ana": {"state": "optimized"}, "grpid": 1}],
     "param": {"inline_data_size": "16384"},
     "portid": 1, "referrals": [], "subsystems": ["nqn.2014-08.org.example:disk1"]},
    {"addr": {"adrfam": "ipv4", "traddr": "10.0.0.1", "treq": "not specified", "trsvcid": "4420", "trtype": "rdma"},
     "portid": 2, "referrals": [], "subsystems": ["nqn.2014-08.org.example:disk1"]}
  ],
  "subsystems": [
    {"allowed_hosts": ["nqn.2014-08.org.nvmexpress:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427"],
     "attr": {"allow_any_host": "0", "cntlid_max": "65519", "cntlid_min": "1", "model": "Linux", "pi_enable": "0",
              "serial": "7d4a0d4bdbd5f3e1", "version": "1.3"},
     "namespaces": [
       {"ana_grpid": 1, "device": {"nguid": "ef90689c-6c46-d44c-89c1-4067801309a8", "path": "/srv/disk1.img",
        "uuid": "7e4a2d3c-1f2b-4c5d-8e9f-0a1b2c3d4e5f"}, "enable": 1, "nsid": 1},
       {"ana_grpid": 1, "device": {"nguid": "00000000-0000-0000-0000-000000000000", "path": "/srv/disk2.img",
        "uuid": "00000000-0000-0000-0000-000000000000"}, "enable": 0, "nsid": 2}
     ],
     "nqn": "nqn.2014-08.org.example:disk1"}
  ]
}"#;

    #[test]
    fn imports_a_sample() {
        let (cfg, warnings) = import(SAMPLE).unwrap();
        assert_eq!(cfg.listeners.len(), 1);
        assert_eq!(cfg.listeners[0].addr, "127.0.0.1:4420");
        assert_eq!(cfg.listeners[0].port_id, Some(1));
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        let s = &cfg.subsystems[0];
        assert_eq!(
            (s.serial.as_deref(), s.model.as_deref(), s.allow_any_host),
            (Some("7d4a0d4bdbd5f3e1"), Some("Linux"), Some(false))
        );
        assert_eq!(s.namespaces.len(), 1);
        let n = &s.namespaces[0];
        assert_eq!((n.kind.as_str(), n.path.as_deref()), ("file", Some("/srv/disk1.img")));
        assert_eq!(n.nguid.as_deref(), Some("ef90689c6c46d44c89c14067801309a8"));
        let c = cfg.normalized().unwrap();
        assert_eq!(c.subsystems[0].namespaces[0].uuid.as_deref(), Some("7e4a2d3c-1f2b-4c5d-8e9f-0a1b2c3d4e5f"));
        assert!(import("{").is_err());
    }

    #[test]
    fn imports_tls_ports() {
        for (treq, tsas, want) in [
            ("required", "tls1.3", TlsMode::Required),
            ("not required", "tls1.3", TlsMode::Allowed),
            ("not specified", "none", TlsMode::None),
        ] {
            let text = SAMPLE.replacen(
                r#""treq": "not specified", "trsvcid": "4420", "trtype": "tcp""#,
                &format!(r#""treq": "{treq}", "tsas": "{tsas}", "trsvcid": "4420", "trtype": "tcp""#),
                1,
            );
            assert_eq!(import(&text).unwrap().0.listeners[0].tls, want, "{treq} {tsas}");
        }
    }
}
