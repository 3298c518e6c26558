//! `nvmf ctl`: manage a running `nvmf target` through its JSON-RPC socket.
//!
//! Every subcommand is one JSON-RPC call (methods: docs/rpc-schema.json);
//! `--output-format json` prints the result as JSON, otherwise a short text
//! form. An RPC error is printed with its code and the exit status is 1.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Map, Value};

/// Largest response accepted from the target.
const RESPONSE_BYTES_MAX: u64 = 64 << 20;
/// Time to wait for the target's answer (and for a send to progress). The
/// target takes a new connection at once, or, while every one of its
/// management connections is executing a request, as soon as one is done.
const RESPONSE_TIMEOUT_MS: u64 = 60_000;
/// Time to establish a TCP connection (--rpc-addr).
const CONNECT_TIMEOUT_MS: u64 = 5_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CtlFormat {
    #[value(alias = "normal")]
    Text,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct CtlArgs {
    /// The target's management socket (default: /run/nvmf/nvmf.sock for root,
    /// else $XDG_RUNTIME_DIR/nvmf/nvmf.sock, else /tmp/nvmf-$UID/nvmf.sock).
    #[arg(long, value_name = "PATH", global = true)]
    pub rpc_socket: Option<PathBuf>,
    /// Use the target's TCP management listener instead (HTTP, bearer token).
    #[arg(long, value_name = "ADDR:PORT", global = true)]
    pub rpc_addr: Option<String>,
    /// File holding the bearer token for --rpc-addr.
    #[arg(long, value_name = "FILE", global = true)]
    pub rpc_token_file: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text", global = true)]
    pub output_format: CtlFormat,
    #[command(subcommand)]
    pub cmd: CtlCmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum CtlCmd {
    /// Subsystems: list, get, add, remove, allow-any-host.
    #[command(subcommand)]
    Subsystem(SubsystemCmd),
    /// Namespaces: add, remove, resize, add-host, remove-host.
    #[command(subcommand, visible_alias = "ns")]
    Namespace(NamespaceCmd),
    /// Hosts of a subsystem: add, remove, set-key (DH-HMAC-CHAP secrets).
    #[command(subcommand)]
    Host(HostCmd),
    /// I/O listeners (ports): list, add, remove.
    #[command(subcommand)]
    Listener(ListenerCmd),
    /// Discovery referrals: list, add, remove.
    #[command(subcommand)]
    Referral(ReferralCmd),
    /// ANA group states per listener: set, get.
    #[command(subcommand)]
    Ana(AnaCmd),
    /// Connected controllers.
    Controllers {
        /// Subsystem NQN.
        #[arg(long, value_name = "NQN")]
        subsystem: Option<String>,
    },
    /// Disconnect a controller (all its queues).
    Disconnect {
        /// Subsystem NQN.
        #[arg(long, value_name = "NQN")]
        subsystem: String,
        /// Controller ID (see `controllers`).
        #[arg(long)]
        cntlid: u16,
    },
    /// Counters: connections, controllers, I/O per subsystem, engine cores.
    Stats,
    /// Write the running configuration as TOML (`nvmf target --config FILE` starts from it).
    SaveConfig {
        /// Output file ("-": stdout).
        file: PathBuf,
    },
    /// Raw call: METHOD with a JSON object of params.
    Call { method: String, params: Option<String> },
}

#[derive(clap::Subcommand, Debug)]
pub enum SubsystemCmd {
    List,
    Get {
        nqn: String,
    },
    /// Create a subsystem (any host may connect unless --host is given).
    Add {
        nqn: String,
        /// Serial number (default: derived from the NQN).
        #[arg(long)]
        serial: Option<String>,
        /// Model number (default "nvmf").
        #[arg(long)]
        model: Option<String>,
        /// Allowed host NQN (repeatable).
        #[arg(long = "host", value_name = "NQN")]
        hosts: Vec<String>,
        /// Namespace KIND:ARG as for `nvmf target --namespace` (repeatable).
        #[arg(long = "namespace", value_name = "KIND:ARG")]
        namespaces: Vec<String>,
    },
    /// Delete a subsystem (its controllers are disconnected).
    Remove {
        nqn: String,
    },
    /// Let any host connect (true) or only the allowed hosts (false).
    AllowAnyHost {
        nqn: String,
        #[arg(action = clap::ArgAction::Set)]
        allow: bool,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum NamespaceCmd {
    /// Add a namespace: ram:SIZE, null:SIZE, file:PATH[:SIZE], block:DEVICE.
    Add {
        /// Subsystem NQN.
        #[arg(long, value_name = "NQN")]
        subsystem: String,
        /// ram:SIZE, null:SIZE, file:PATH[:SIZE] or block:DEVICE.
        #[arg(long, value_name = "KIND:ARG")]
        namespace: String,
        /// Namespace ID (default: the lowest free one).
        #[arg(long)]
        nsid: Option<u32>,
        /// 512 or 4096 (default 512).
        #[arg(long)]
        block_size: Option<u32>,
        /// 32 hex digits (default: derived from NQN and NSID).
        #[arg(long)]
        nguid: Option<String>,
        /// UUID (default: derived from NQN and NSID).
        #[arg(long)]
        uuid: Option<String>,
        /// ANA group 1..=128 (default 1).
        #[arg(long)]
        ana_group: Option<u32>,
        /// Only this host sees the namespace (repeatable; default: every host).
        #[arg(long = "host", value_name = "NQN")]
        hosts: Vec<String>,
    },
    Remove {
        /// Subsystem NQN.
        #[arg(long, value_name = "NQN")]
        subsystem: String,
        /// Namespace ID.
        #[arg(long)]
        nsid: u32,
    },
    /// Change the size of a file namespace; hosts get a namespace change event.
    Resize {
        /// Subsystem NQN.
        #[arg(long, value_name = "NQN")]
        subsystem: String,
        /// Namespace ID.
        #[arg(long)]
        nsid: u32,
        /// New size, e.g. 2GiB.
        #[arg(long, value_name = "SIZE")]
        size: String,
    },
    /// Let a host see the namespace (on a namespace every host sees, this
    /// limits it to that host); its controllers get a namespace change event.
    AddHost {
        /// Subsystem NQN.
        #[arg(long, value_name = "NQN")]
        subsystem: String,
        /// Namespace ID.
        #[arg(long)]
        nsid: u32,
        /// Host NQN.
        #[arg(long, value_name = "NQN")]
        host: String,
    },
    /// Hide the namespace from a host (not its last one); the host's
    /// controllers get a namespace change event and lose it.
    RemoveHost {
        /// Subsystem NQN.
        #[arg(long, value_name = "NQN")]
        subsystem: String,
        /// Namespace ID.
        #[arg(long)]
        nsid: u32,
        /// Host NQN.
        #[arg(long, value_name = "NQN")]
        host: String,
    },
}

/// A host's DH-HMAC-CHAP settings (each secret inline or as a file of mode 600).
#[derive(clap::Args, Debug, Default)]
pub struct HostKeys {
    /// Host secret (DHHC-1:hh:...:): the host must authenticate. "" removes it.
    #[arg(long, value_name = "KEY")]
    dhchap_key: Option<String>,
    /// File holding the host secret.
    #[arg(long, value_name = "FILE", conflicts_with = "dhchap_key")]
    dhchap_key_file: Option<String>,
    /// Controller secret: the controller authenticates to the host too. "" removes it.
    #[arg(long, value_name = "KEY")]
    dhchap_ctrl_key: Option<String>,
    /// File holding the controller secret.
    #[arg(long, value_name = "FILE", conflicts_with = "dhchap_ctrl_key")]
    dhchap_ctrl_key_file: Option<String>,
    /// Hash the controller picks: sha256, sha384 or sha512 ("" = any, SHA-256 first).
    #[arg(long, value_name = "HASH")]
    dhchap_hash: Option<String>,
    /// DH group: null, ffdhe2048 ... ffdhe8192 ("" = any, ffdhe2048 first).
    #[arg(long, value_name = "GROUP")]
    dhchap_dhgroup: Option<String>,
    /// Configured TLS PSK (NVMeTLSkey-1:hh:...:): the host connects over TLS. "" removes it.
    #[arg(long, value_name = "KEY")]
    tls_key: Option<String>,
    /// File holding the TLS PSK.
    #[arg(long, value_name = "FILE", conflicts_with = "tls_key")]
    tls_key_file: Option<String>,
    /// Derive the TLS PSK as libnvme before 1.16 did (hosts with nvme-cli <= 2.15).
    #[arg(long, value_name = "BOOL")]
    tls_key_compat: Option<bool>,
}

impl HostKeys {
    fn add_to(&self, p: &mut serde_json::Value) {
        for (k, v) in [
            ("dhchap_key", &self.dhchap_key),
            ("dhchap_key_file", &self.dhchap_key_file),
            ("dhchap_ctrl_key", &self.dhchap_ctrl_key),
            ("dhchap_ctrl_key_file", &self.dhchap_ctrl_key_file),
            ("dhchap_hash", &self.dhchap_hash),
            ("dhchap_dhgroup", &self.dhchap_dhgroup),
            ("tls_key", &self.tls_key),
            ("tls_key_file", &self.tls_key_file),
        ] {
            if let Some(v) = v {
                p[k] = json!(v);
            }
        }
        if let Some(c) = self.tls_key_compat {
            p["tls_key_compat"] = json!(c);
        }
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum HostCmd {
    /// Allow a host (the subsystem then admits only its hosts); with a
    /// DH-HMAC-CHAP key the host must authenticate.
    Add {
        /// Subsystem NQN.
        #[arg(long, value_name = "NQN")]
        subsystem: String,
        /// Host NQN.
        #[arg(long, value_name = "NQN")]
        host: String,
        #[command(flatten)]
        keys: HostKeys,
    },
    /// Remove a host (connected controllers stay).
    Remove {
        /// Subsystem NQN.
        #[arg(long, value_name = "NQN")]
        subsystem: String,
        /// Host NQN.
        #[arg(long, value_name = "NQN")]
        host: String,
        /// Remove the subsystem's last allowed host, after which no host may connect.
        #[arg(long)]
        force: bool,
    },
    /// Change a host's DH-HMAC-CHAP secrets, hash or group (for new connections).
    SetKey {
        /// Subsystem NQN.
        #[arg(long, value_name = "NQN")]
        subsystem: String,
        /// Host NQN.
        #[arg(long, value_name = "NQN")]
        host: String,
        #[command(flatten)]
        keys: HostKeys,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum ListenerCmd {
    List,
    /// Listen on ADDR:PORT (all subsystems, or --subsystem only; on an existing
    /// listener --subsystem adds it to the exported ones).
    Add {
        /// ADDR:PORT (port 0: any free port for `listener add`).
        addr: String,
        /// Subsystem NQN.
        #[arg(long, value_name = "NQN")]
        subsystem: Option<String>,
        /// Port ID reported in discovery (default: the lowest free one).
        #[arg(long)]
        port_id: Option<u16>,
        /// TLS 1.3 on a new listener: none (default), allowed or required.
        #[arg(long, value_name = "MODE", value_parser = ["none", "allowed", "required"])]
        tls: Option<String>,
    },
    /// Stop listening (with --subsystem: stop exporting that subsystem there;
    /// the listener goes when it exported only that one).
    Remove {
        /// ADDR:PORT (port 0: any free port for `listener add`).
        addr: String,
        /// Subsystem NQN.
        #[arg(long, value_name = "NQN")]
        subsystem: Option<String>,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum ReferralCmd {
    List,
    Add {
        /// ADDR:PORT (port 0: any free port for `listener add`).
        addr: String,
        /// Port ID reported in discovery (default: the lowest free one).
        #[arg(long)]
        port_id: Option<u16>,
    },
    Remove {
        /// ADDR:PORT (port 0: any free port for `listener add`).
        addr: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum AnaCmd {
    Set {
        /// Subsystem NQN.
        #[arg(long, value_name = "NQN")]
        subsystem: String,
        /// The listener (as in `listener list`).
        #[arg(long, value_name = "ADDR:PORT")]
        listener: String,
        /// ANA group ID.
        #[arg(long)]
        group: u32,
        #[arg(long, value_parser = ["optimized", "non-optimized", "inaccessible"])]
        state: String,
    },
    Get {
        /// Subsystem NQN.
        #[arg(long, value_name = "NQN")]
        subsystem: String,
    },
}

/// The method and params of a subcommand.
fn request(cmd: &CtlCmd) -> Result<(&'static str, Value)> {
    use nvmf_target::config::NamespaceConfig;
    let ns_json = |ns: NamespaceConfig| -> Result<Map<String, Value>> {
        match serde_json::to_value(ns)? {
            Value::Object(m) => Ok(m.into_iter().filter(|(_, v)| !v.is_null()).collect()),
            _ => bail!("namespace did not serialize to an object"),
        }
    };
    Ok(match cmd {
        CtlCmd::Subsystem(s) => match s {
            SubsystemCmd::List => ("subsystem_list", json!({})),
            SubsystemCmd::Get { nqn } => ("subsystem_get", json!({"nqn": nqn})),
            SubsystemCmd::Add { nqn, serial, model, hosts, namespaces } => {
                let mut p = json!({"nqn": nqn});
                if let Some(s) = serial {
                    p["serial"] = json!(s);
                }
                if let Some(m) = model {
                    p["model"] = json!(m);
                }
                if !hosts.is_empty() {
                    p["allowed_hosts"] = json!(hosts);
                }
                let mut nss = Vec::new();
                for spec in namespaces {
                    nss.push(Value::Object(ns_json(super::target::parse_namespace_spec(spec)?)?));
                }
                if !nss.is_empty() {
                    p["namespace"] = Value::Array(nss);
                }
                ("subsystem_create", p)
            }
            SubsystemCmd::Remove { nqn } => ("subsystem_delete", json!({"nqn": nqn})),
            SubsystemCmd::AllowAnyHost { nqn, allow } => {
                ("subsystem_allow_any_host", json!({"nqn": nqn, "allow": allow}))
            }
        },
        CtlCmd::Namespace(n) => match n {
            NamespaceCmd::Add { subsystem, namespace, nsid, block_size, nguid, uuid, ana_group, hosts } => {
                let mut ns = super::target::parse_namespace_spec(namespace)?;
                ns.nsid = *nsid;
                ns.block_size = *block_size;
                ns.nguid = nguid.clone();
                ns.uuid = uuid.clone();
                ns.ana_group = *ana_group;
                ns.hosts = hosts.clone();
                let mut m = ns_json(ns)?;
                m.insert("nqn".into(), json!(subsystem));
                ("namespace_add", Value::Object(m))
            }
            NamespaceCmd::Remove { subsystem, nsid } => ("namespace_remove", json!({"nqn": subsystem, "nsid": nsid})),
            NamespaceCmd::Resize { subsystem, nsid, size } => {
                ("namespace_resize", json!({"nqn": subsystem, "nsid": nsid, "size": size}))
            }
            NamespaceCmd::AddHost { subsystem, nsid, host } => {
                ("ns_add_host", json!({"nqn": subsystem, "nsid": nsid, "host": host}))
            }
            NamespaceCmd::RemoveHost { subsystem, nsid, host } => {
                ("ns_remove_host", json!({"nqn": subsystem, "nsid": nsid, "host": host}))
            }
        },
        CtlCmd::Host(h) => match h {
            HostCmd::Add { subsystem, host, keys } => {
                let mut p = json!({"nqn": subsystem, "host": host});
                keys.add_to(&mut p);
                ("host_add", p)
            }
            HostCmd::Remove { subsystem, host, force } => {
                let mut p = json!({"nqn": subsystem, "host": host});
                if *force {
                    p["force"] = json!(true);
                }
                ("host_remove", p)
            }
            HostCmd::SetKey { subsystem, host, keys } => {
                let mut p = json!({"nqn": subsystem, "host": host});
                keys.add_to(&mut p);
                ("host_set_key", p)
            }
        },
        CtlCmd::Listener(l) => match l {
            ListenerCmd::List => ("listener_list", json!({})),
            ListenerCmd::Add { addr, subsystem, port_id, tls } => {
                let mut p = json!({"addr": addr});
                if let Some(t) = tls {
                    p["tls"] = json!(t);
                }
                if let Some(s) = subsystem {
                    p["subsystem"] = json!(s);
                }
                if let Some(id) = port_id {
                    p["port_id"] = json!(id);
                }
                ("listener_add", p)
            }
            ListenerCmd::Remove { addr, subsystem } => {
                let mut p = json!({"addr": addr});
                if let Some(s) = subsystem {
                    p["subsystem"] = json!(s);
                }
                ("listener_remove", p)
            }
        },
        CtlCmd::Referral(r) => match r {
            ReferralCmd::List => ("referral_list", json!({})),
            ReferralCmd::Add { addr, port_id } => {
                let mut p = json!({"addr": addr});
                if let Some(id) = port_id {
                    p["port_id"] = json!(id);
                }
                ("referral_add", p)
            }
            ReferralCmd::Remove { addr } => ("referral_remove", json!({"addr": addr})),
        },
        CtlCmd::Ana(a) => match a {
            AnaCmd::Set { subsystem, listener, group, state } => {
                ("ana_set", json!({"nqn": subsystem, "listener": listener, "group": group, "state": state}))
            }
            AnaCmd::Get { subsystem } => ("ana_get", json!({"nqn": subsystem})),
        },
        CtlCmd::Controllers { subsystem } => match subsystem {
            Some(s) => ("controller_list", json!({"nqn": s})),
            None => ("controller_list", json!({})),
        },
        CtlCmd::Disconnect { subsystem, cntlid } => {
            ("controller_disconnect", json!({"nqn": subsystem, "cntlid": cntlid}))
        }
        CtlCmd::Stats => ("stats", json!({})),
        CtlCmd::SaveConfig { .. } => ("save_config", json!({})),
        CtlCmd::Call { .. } => unreachable!("handled by the caller"),
    })
}

/// Connect to `addr` (HOST:PORT), trying each address it resolves to, each
/// for at most [`CONNECT_TIMEOUT_MS`].
fn connect_tcp(addr: &str) -> Result<std::net::TcpStream> {
    use std::net::ToSocketAddrs;
    let mut last = None;
    for a in addr.to_socket_addrs().with_context(|| format!("cannot resolve {addr}"))? {
        match std::net::TcpStream::connect_timeout(&a, Duration::from_millis(CONNECT_TIMEOUT_MS)) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => anyhow!(e).context(format!("cannot connect to {addr}")),
        None => anyhow!("cannot connect to {addr}: it resolves to no address"),
    })
}

/// One JSON-RPC exchange. Returns the result, or an error with code and message.
pub fn call(a: &CtlArgs, method: &str, params: Value) -> Result<Value> {
    let req = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let body = serde_json::to_vec(&req)?;
    let timeout = Some(Duration::from_millis(RESPONSE_TIMEOUT_MS));
    let resp: Value = if let Some(addr) = &a.rpc_addr {
        let token = match &a.rpc_token_file {
            Some(f) => std::fs::read_to_string(f).with_context(|| format!("--rpc-token-file {}", f.display()))?,
            None => bail!("--rpc-addr needs --rpc-token-file"),
        };
        let mut s = connect_tcp(addr)?;
        s.set_read_timeout(timeout)?;
        s.set_write_timeout(timeout)?;
        write!(
            s,
            "POST / HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            token.trim(),
            body.len()
        )?;
        s.write_all(&body)?;
        let mut raw = Vec::new();
        s.take(RESPONSE_BYTES_MAX).read_to_end(&mut raw)?;
        let i = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| anyhow!("bad HTTP response"))?;
        serde_json::from_slice(&raw[i + 4..]).with_context(|| format!("bad response from {addr}"))?
    } else {
        let path = a.rpc_socket.clone().unwrap_or_else(nvmf_target::mgmt::default_socket_path);
        let mut s = UnixStream::connect(&path)
            .with_context(|| format!("cannot connect to {} (is `nvmf target` running?)", path.display()))?;
        s.set_read_timeout(timeout)?;
        s.set_write_timeout(timeout)?;
        s.write_all(&body)?;
        s.write_all(b"\n")?;
        let mut line = Vec::new();
        BufReader::new(s.take(RESPONSE_BYTES_MAX)).read_until(b'\n', &mut line)?;
        if line.is_empty() {
            bail!("{} closed the connection without answering", path.display());
        }
        serde_json::from_slice(&line).context("bad response")?
    };
    if let Some(e) = resp.get("error") {
        bail!("{} (JSON-RPC error {})", e["message"].as_str().unwrap_or("?"), e["code"]);
    }
    resp.get("result").cloned().ok_or_else(|| anyhow!("response without result: {resp}"))
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// " hosts: A,B" for a masked namespace, nothing for one every host sees.
fn ns_hosts_text(hosts: &Value) -> String {
    match hosts.as_array() {
        Some(h) if !h.is_empty() => format!("  hosts: {}", h.iter().map(s).collect::<Vec<_>>().join(",")),
        _ => String::new(),
    }
}

/// Short text for a result.
fn text(cmd: &CtlCmd, r: &Value) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    match cmd {
        CtlCmd::Subsystem(SubsystemCmd::List | SubsystemCmd::Get { .. }) => {
            let list = if r.is_array() { r.as_array().cloned().unwrap_or_default() } else { vec![r.clone()] };
            for sub in &list {
                let mut listed: Vec<String> =
                    sub["allowed_hosts"].as_array().map(|h| h.iter().map(s).collect()).unwrap_or_default();
                for h in sub["hosts"].as_array().into_iter().flatten() {
                    let auth = if h["dhchap_key"].is_null() { "" } else { " (DH-HMAC-CHAP)" };
                    listed.push(format!("{}{auth}", s(&h["nqn"])));
                }
                let hosts = match (sub["allow_any_host"] == json!(true), listed.is_empty()) {
                    (true, true) => "any".to_string(),
                    (true, false) => format!("any; {}", listed.join(",")),
                    (false, _) => listed.join(","),
                };
                let _ = writeln!(
                    o,
                    "{}  serial {}  model {}  hosts: {}  controllers: {}",
                    s(&sub["nqn"]),
                    s(&sub["serial"]),
                    s(&sub["model"]),
                    if hosts.is_empty() { "none".into() } else { hosts },
                    s(&sub["controllers"])
                );
                for ns in sub["namespaces"].as_array().into_iter().flatten() {
                    let _ = writeln!(
                        o,
                        "  ns {}: {} {}{} ({} B blocks) nguid {}{}",
                        s(&ns["nsid"]),
                        s(&ns["kind"]),
                        ns["path"].as_str().map(|p| format!("{p} ")).unwrap_or_default(),
                        s(&ns["size"]),
                        s(&ns["block_size"]),
                        s(&ns["nguid"]),
                        ns_hosts_text(&ns["hosts"])
                    );
                }
            }
        }
        CtlCmd::Listener(ListenerCmd::List) => {
            for l in r.as_array().into_iter().flatten() {
                let subs = l["subsystems"].as_array().map(|v| v.iter().map(s).collect::<Vec<_>>()).unwrap_or_default();
                let _ = writeln!(
                    o,
                    "{}  port id {}  {}",
                    s(&l["addr"]),
                    s(&l["port_id"]),
                    if l["discovery_only"] == json!(true) {
                        "discovery only".to_string()
                    } else if subs.is_empty() {
                        "all subsystems".to_string()
                    } else {
                        subs.join(", ")
                    }
                );
            }
        }
        CtlCmd::Referral(ReferralCmd::List) => {
            for l in r.as_array().into_iter().flatten() {
                let _ = writeln!(o, "{}  port id {}", s(&l["addr"]), s(&l["port_id"]));
            }
        }
        CtlCmd::Ana(AnaCmd::Get { .. }) => {
            for l in r.as_array().into_iter().flatten() {
                let _ = writeln!(o, "{}  group {}  {}", s(&l["listener"]), s(&l["group"]), s(&l["state"]));
            }
        }
        CtlCmd::Controllers { .. } => {
            let list = r.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                o.push_str("no controllers\n");
            }
            for c in &list {
                let peers: Vec<String> = c["peers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| format!("q{}={}", s(&p["qid"]), s(&p["addr"])))
                    .collect();
                let _ = writeln!(
                    o,
                    "cntlid {}  {}  host {}  via {}  io queues {}  peers {}",
                    s(&c["cntlid"]),
                    s(&c["subsystem"]),
                    s(&c["hostnqn"]),
                    s(&c["listener"]),
                    s(&c["io_queues"]),
                    peers.join(" ")
                );
            }
        }
        CtlCmd::Stats => {
            let _ = writeln!(
                o,
                "uptime {} s  connections {}  controllers {}",
                s(&r["uptime_s"]),
                s(&r["connections"]),
                s(&r["controllers"])
            );
            for sub in r["subsystems"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    o,
                    "  {}  reads {} ({} B)  writes {} ({} B)  controllers {}",
                    s(&sub["nqn"]),
                    s(&sub["read_cmds"]),
                    s(&sub["read_bytes"]),
                    s(&sub["write_cmds"]),
                    s(&sub["write_bytes"]),
                    s(&sub["controllers"])
                );
            }
            for c in r["cores"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    o,
                    "  core {}  busy loops {}  idle loops {}  connections {}",
                    s(&c["core_index"]),
                    s(&c["busy_loops"]),
                    s(&c["idle_loops"]),
                    s(&c["connections"])
                );
            }
        }
        CtlCmd::Namespace(NamespaceCmd::Add { subsystem, .. }) => {
            let _ = writeln!(o, "added namespace {} to {subsystem}", s(&r["nsid"]));
        }
        CtlCmd::Namespace(NamespaceCmd::AddHost { .. } | NamespaceCmd::RemoveHost { .. }) => {
            let _ = writeln!(o, "namespace {} of {}{}", s(&r["nsid"]), s(&r["nqn"]), ns_hosts_text(&r["hosts"]));
        }
        _ => {
            let _ = writeln!(o, "ok");
        }
    }
    o
}

pub fn run(a: CtlArgs) -> Result<()> {
    let result = match &a.cmd {
        CtlCmd::Call { method, params } => {
            let p: Value = match params {
                Some(t) => serde_json::from_str(t).context("params must be a JSON object")?,
                None => json!({}),
            };
            call(&a, method, p)?
        }
        CtlCmd::SaveConfig { file } => {
            let r = call(&a, "save_config", json!({}))?;
            let toml = r["toml"].as_str().ok_or_else(|| anyhow!("save_config returned no TOML"))?;
            if file.as_os_str() == "-" {
                print!("{toml}");
                return Ok(());
            }
            nvmf_target::mgmt::methods::write_atomically(file, toml.as_bytes())
                .with_context(|| format!("cannot write {}", file.display()))?;
            json!({"path": file.display().to_string()})
        }
        cmd => {
            let (method, params) = request(cmd)?;
            call(&a, method, params)?
        }
    };
    match a.output_format {
        CtlFormat::Json => println!("{}", serde_json::to_string_pretty(&result)?),
        CtlFormat::Text => match &a.cmd {
            CtlCmd::Call { .. } => println!("{}", serde_json::to_string_pretty(&result)?),
            CtlCmd::SaveConfig { file } => println!("saved to {}", file.display()),
            cmd => print!("{}", text(cmd, &result)),
        },
    }
    Ok(())
}
