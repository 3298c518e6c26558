//! `nvmf target`: serve namespaces over NVMe/TCP.
//!
//! Configuration is built in three steps (documented in docs/configuration.md):
//! 1. the base: `--config FILE`, or the embedded default (one 1 GiB RAM
//!    namespace in `nqn.2026-11.io.nvmf:default`, 127.0.0.1:4420, discovery
//!    on 127.0.0.1:8009);
//! 2. ad-hoc flags replace whole parts of it (see [`TargetArgs`]);
//! 3. the result is validated and completed by `TargetConfig::normalized`.
//!
//! Then the server starts, a summary goes to stdout, and the main thread waits
//! for SIGINT/SIGTERM, on which it stops management, shuts the server down
//! gracefully (the whole bounded by `--shutdown-timeout-ms`) and exits 0. A
//! second signal exits at once, and so does a shutdown still running
//! [`SHUTDOWN_GRACE_MS`] after the timeout (exit 1 both).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nvmf_target::config::{
    format_size, parse_size, NamespaceConfig, SubsystemConfig, TargetConfig, DEFAULT_RAM_SIZE, DEFAULT_SUBSYSTEM_NQN,
};

/// Longest graceful shutdown the flag accepts (1 hour).
const SHUTDOWN_TIMEOUT_MS_MAX: u64 = 3_600_000;
/// A shutdown still running this long after `--shutdown-timeout-ms` ends the process (exit 1).
const SHUTDOWN_GRACE_MS: u64 = 1_000;

/// `nvmf target` arguments. With none, serves the embedded default.
#[derive(clap::Args, Debug, Default)]
#[command(after_help = "Ad-hoc flags replace parts of the configuration (the file, or the embedded default):\n  \
    --listen: replaces all I/O listeners; --discovery-listen: replaces the dedicated discovery listeners\n  \
    (\"none\": no dedicated discovery listener; every I/O listener also answers discovery);\n  \
    --subsystem/--namespace/--allow-host/--host: replace all subsystems with the single one they describe.\n\
    Every key and limit: docs/configuration.md")]
pub struct TargetArgs {
    /// TOML configuration file (default: the embedded default configuration).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// I/O listener address (repeatable); replaces the configured listeners.
    #[arg(long = "listen", value_name = "ADDR:PORT")]
    pub listen: Vec<String>,
    /// Dedicated discovery listener (repeatable, or "none"); replaces discovery.listen.
    #[arg(long = "discovery-listen", value_name = "ADDR:PORT")]
    pub discovery_listen: Vec<String>,
    /// NQN of the single subsystem to serve (default nqn.2026-11.io.nvmf:default).
    #[arg(long, value_name = "NQN")]
    pub subsystem: Option<String>,
    /// Namespace of that subsystem (repeatable), NSIDs 1, 2, ... in order:
    /// ram:SIZE, null:SIZE, file:PATH[:SIZE], block:DEVICE (default ram:1GiB).
    #[arg(long = "namespace", value_name = "KIND:ARG")]
    pub namespaces: Vec<String>,
    /// Host NQN allowed to connect to that subsystem (repeatable; default: any host).
    #[arg(long = "allow-host", value_name = "NQN")]
    pub allow_hosts: Vec<String>,
    /// A host of that subsystem with its DH-HMAC-CHAP secret (it must
    /// authenticate) and optionally the controller's secret (bidirectional):
    /// NQN:dhchap=KEY[:ctrl=KEY] (repeatable; keys as nvme gen-dhchap-key
    /// prints them). Keys on the command line are visible to other local
    /// users: prefer [[subsystem.host]] with dhchap_key_file in a config.
    /// With :tls=KEY (interchange format, as nvme gen-tls-key prints it) the
    /// host connects over TLS 1.3 with that PSK (RFC 8446 derivation; use
    /// tls_key_compat in a config for hosts with libnvme before 1.16).
    #[arg(long = "host", value_name = "NQN:dhchap=KEY[:ctrl=KEY][:tls=KEY]")]
    pub hosts: Vec<String>,
    /// TLS 1.3 on the I/O listeners: none, allowed (TLS or plain) or
    /// required; overrides tls in the configuration's [[listener]] tables.
    #[arg(long, value_name = "MODE", value_parser = ["none", "allowed", "required"])]
    pub tls: Option<String>,
    /// Cores to run on, one pinned thread each, e.g. 0,2-3 (default: one unpinned thread).
    #[arg(long, value_name = "LIST")]
    pub cores: Option<String>,
    /// How core threads wait for work.
    #[arg(long, value_name = "MODE", value_parser = ["poll", "interrupt"])]
    pub mode: Option<String>,
    /// Log filter for stderr, e.g. info, debug, nvmf_target=trace (default: RUST_LOG, else info).
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Print the complete (normalized) configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Longest wait for in-flight commands at shutdown before connections are closed.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub shutdown_timeout_ms: u64,
    /// Start from nvmetcli's saved JSON (`nvmetcli save`) instead of --config.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    pub import_nvmetcli: Option<PathBuf>,
    /// Management (JSON-RPC) Unix socket, or "none" (default: /run/nvmf/nvmf.sock
    /// for root, else $XDG_RUNTIME_DIR/nvmf/nvmf.sock, else /tmp/nvmf-$UID/nvmf.sock).
    #[arg(long, value_name = "PATH")]
    pub rpc_socket: Option<PathBuf>,
    /// Also serve management as HTTP JSON-RPC on this TCP address (needs --rpc-token-file).
    #[arg(long, value_name = "ADDR:PORT", requires = "rpc_token_file")]
    pub rpc_listen: Option<SocketAddr>,
    /// File holding the bearer token for --rpc-listen.
    #[arg(long, value_name = "FILE")]
    pub rpc_token_file: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,
}

/// Parse `--namespace KIND:ARG`.
pub fn parse_namespace_spec(spec: &str) -> anyhow::Result<NamespaceConfig> {
    let usage = "use ram:SIZE, null:SIZE, file:PATH[:SIZE] or block:DEVICE";
    let Some((kind, arg)) = spec.split_once(':') else {
        bail!("--namespace {spec:?}: missing ':' ({usage})");
    };
    if arg.is_empty() {
        bail!("--namespace {spec:?}: nothing after ':' ({usage})");
    }
    let mut ns = NamespaceConfig::new(kind);
    match kind {
        "ram" | "null" => {
            parse_size(arg).map_err(|e| anyhow::anyhow!("--namespace {spec:?}: {e}"))?;
            ns.size = Some(arg.to_string());
        }
        "file" => {
            // A path may contain ':'; a trailing ":SIZE" counts only if it is a size.
            match arg.rsplit_once(':') {
                Some((path, size)) if !path.is_empty() && parse_size(size).is_ok() => {
                    ns.path = Some(path.to_string());
                    ns.size = Some(size.to_string());
                }
                _ => ns.path = Some(arg.to_string()),
            }
        }
        "block" => ns.path = Some(arg.to_string()),
        _ => bail!("--namespace {spec:?}: unknown kind {kind:?} ({usage})"),
    }
    Ok(ns)
}

/// Base configuration plus flag overrides, normalized.
pub fn build_config(a: &TargetArgs) -> anyhow::Result<TargetConfig> {
    let mut cfg = match (&a.config, &a.import_nvmetcli) {
        (Some(path), _) => TargetConfig::from_file(path)?,
        (None, Some(path)) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("--import-nvmetcli {}", path.display()))?;
            let (cfg, warnings) = nvmf_target::mgmt::nvmetcli::import(&text)
                .map_err(|e| anyhow::anyhow!("--import-nvmetcli {}: {e}", path.display()))?;
            for w in warnings {
                eprintln!("nvmf target: warning: {}: {w}", path.display());
            }
            cfg
        }
        (None, None) => TargetConfig::embedded_default(),
    };
    if !a.listen.is_empty() {
        cfg.listeners = a
            .listen
            .iter()
            .map(|addr| nvmf_target::config::ListenerConfig {
                addr: addr.clone(),
                port_id: None,
                subsystems: vec![],
                tls: Default::default(),
            })
            .collect();
    }
    if !a.discovery_listen.is_empty() {
        cfg.discovery.listen = if a.discovery_listen.iter().any(|s| s == "none") {
            if a.discovery_listen.len() > 1 {
                bail!("--discovery-listen none cannot be combined with addresses");
            }
            Vec::new()
        } else {
            a.discovery_listen.clone()
        };
    }
    if a.subsystem.is_some() || !a.namespaces.is_empty() || !a.allow_hosts.is_empty() || !a.hosts.is_empty() {
        let namespaces = if a.namespaces.is_empty() {
            vec![NamespaceConfig::ram(DEFAULT_RAM_SIZE)]
        } else {
            a.namespaces.iter().map(|s| parse_namespace_spec(s)).collect::<anyhow::Result<_>>()?
        };
        let mut sub =
            SubsystemConfig::with_namespaces(a.subsystem.as_deref().unwrap_or(DEFAULT_SUBSYSTEM_NQN), namespaces);
        sub.allowed_hosts = a.allow_hosts.clone();
        sub.hosts = a.hosts.iter().map(|s| parse_host_spec(s)).collect::<anyhow::Result<_>>()?;
        cfg.subsystems = vec![sub];
        // Listener filters named the replaced subsystems.
        for l in &mut cfg.listeners {
            l.subsystems.clear();
        }
    }
    if let Some(mode) = &a.tls {
        let mode: nvmf_target::config::TlsMode = mode.parse().map_err(anyhow::Error::msg)?;
        for l in &mut cfg.listeners {
            l.tls = mode;
        }
    }
    if let Some(cores) = &a.cores {
        cfg.engine.cores = cores.clone();
    }
    if let Some(mode) = &a.mode {
        cfg.engine.mode = mode.clone();
    }
    if a.shutdown_timeout_ms > SHUTDOWN_TIMEOUT_MS_MAX {
        bail!("--shutdown-timeout-ms {} is above {SHUTDOWN_TIMEOUT_MS_MAX}", a.shutdown_timeout_ms);
    }
    Ok(cfg.normalized()?)
}

/// `--host NQN:dhchap=KEY[:ctrl=KEY][:tls=KEY]`. NQNs and keys contain
/// colons, so the value is cut at the `:name=` markers, not at every colon.
fn parse_host_spec(spec: &str) -> anyhow::Result<nvmf_target::config::HostConfig> {
    const MARKERS: [&str; 3] = [":dhchap=", ":ctrl=", ":tls="];
    let mut cuts: Vec<(usize, &str)> =
        MARKERS.iter().flat_map(|m| spec.match_indices(m).map(|(i, _)| (i, *m)).collect::<Vec<_>>()).collect();
    cuts.sort();
    let Some(&(first, _)) = cuts.first() else {
        bail!("--host takes NQN:dhchap=KEY[:ctrl=KEY][:tls=KEY] (no \"dhchap=\" or \"tls=\" in the value)");
    };
    let mut h = nvmf_target::config::HostConfig { nqn: spec[..first].to_string(), ..Default::default() };
    for (k, &(at, marker)) in cuts.iter().enumerate() {
        let end = cuts.get(k + 1).map(|c| c.0).unwrap_or(spec.len());
        let value = spec[at + marker.len()..end].to_string();
        let slot = match marker {
            ":dhchap=" => &mut h.dhchap_key,
            ":ctrl=" => &mut h.dhchap_ctrl_key,
            _ => &mut h.tls_key,
        };
        if slot.replace(value).is_some() {
            bail!("--host for {}: {} given twice", h.nqn, marker.trim_matches(|c| c == ':' || c == '='));
        }
    }
    Ok(h)
}

/// Address to give `nvme connect -a`: a wildcard bind says nothing useful.
fn connect_host(addr: &str) -> (String, u16) {
    match addr.parse::<SocketAddr>() {
        Ok(sa) if sa.ip().is_unspecified() => ("<target-ip>".into(), sa.port()),
        Ok(sa) => (sa.ip().to_string(), sa.port()),
        Err(_) => (addr.to_string(), 0),
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The startup text: what is served and how to reach it. `cfg` is normalized.
pub fn summary(cfg: &TargetConfig) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let listeners: Vec<&str> = cfg.listeners.iter().map(|l| l.addr.as_str()).collect();
    let discovery = if cfg.discovery.listen.is_empty() {
        "discovery on the same port".to_string()
    } else {
        format!("discovery {}", cfg.discovery.listen.join(", "))
    };
    let cores = cfg.engine.core_list().map(|c| c.len().max(1)).unwrap_or(1);
    let _ = writeln!(
        s,
        "nvmf target: serving {} on {} ({discovery}), {} core(s), {} mode",
        plural(cfg.subsystems.len(), "subsystem", "subsystems"),
        listeners.join(", "),
        cores,
        cfg.engine.mode,
    );
    for sub in &cfg.subsystems {
        let namespaces: Vec<String> = sub
            .namespaces
            .iter()
            .map(|ns| {
                let what = match (ns.kind.as_str(), ns.size_bytes(), ns.path.as_deref()) {
                    (kind, Some(size), None) => format!("{kind} {}", format_size(size)),
                    (kind, Some(size), Some(path)) => format!("{kind} {path} {}", format_size(size)),
                    (kind, None, Some(path)) => format!("{kind} {path}"),
                    (kind, None, None) => kind.to_string(),
                };
                format!("ns {}: {what} ({} B blocks)", ns.nsid.unwrap_or(0), ns.block_size_bytes())
            })
            .collect();
        let namespaces = if namespaces.is_empty() { "no namespaces".to_string() } else { namespaces.join(", ") };
        let listed: Vec<String> = sub
            .allowed_hosts
            .iter()
            .cloned()
            .chain(sub.hosts.iter().map(|h| {
                let auth = h.dhchap_key.is_some() || h.dhchap_key_file.is_some();
                if auth {
                    format!("{} (DH-HMAC-CHAP)", h.nqn)
                } else {
                    h.nqn.clone()
                }
            }))
            .collect();
        let hosts = match (sub.allow_any_host.unwrap_or(false), listed.is_empty()) {
            (true, true) => "any".to_string(),
            (true, false) => format!("any; {}", listed.join(", ")),
            (false, true) => "none".to_string(),
            (false, false) => listed.join(", "),
        };
        let _ = writeln!(s, "  {}  {namespaces}  hosts: {hosts}", sub.nqn);
    }
    if let (Some(l), Some(sub)) = (cfg.listeners.first(), cfg.subsystems.first()) {
        let (host, port) = connect_host(&l.addr);
        let _ = writeln!(s, "connect from Linux:  nvme connect -t tcp -a {host} -s {port} -n {}", sub.nqn);
    }
    let disc_addr = cfg.discovery.listen.first().or(cfg.listeners.first().map(|l| &l.addr));
    if let Some(addr) = disc_addr {
        let (host, port) = connect_host(addr);
        let _ = writeln!(s, "discover:            nvme discover -t tcp -a {host} -s {port}");
    }
    s
}

fn init_tracing(level: Option<&str>) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::try_new(l).with_context(|| format!("--log-level {l:?}"))?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    // Another subcommand path may have installed one already: keep it.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(ansi).with_env_filter(filter).try_init();
    Ok(())
}

use super::signals::{signal_name, StopSignals};

pub fn run(a: TargetArgs) -> anyhow::Result<()> {
    let cfg = build_config(&a)?;
    if a.print_config {
        print!("{}", cfg.to_toml_string()?);
        return Ok(());
    }
    init_tracing(a.log_level.as_deref())?;
    // Before any thread exists, so every engine thread inherits the mask.
    let signals = StopSignals::block()?;
    let server = std::sync::Arc::new(nvmf_target::serve(&cfg)?);
    let mgmt = nvmf_target::mgmt::Mgmt::new(server.clone(), &cfg)?;
    let token = match &a.rpc_token_file {
        Some(f) => Some(std::fs::read_to_string(f).with_context(|| format!("--rpc-token-file {}", f.display()))?),
        None => None,
    };
    let rpc = nvmf_target::mgmt::RpcOptions {
        socket_path: match &a.rpc_socket {
            Some(p) if p.as_os_str() == "none" => None,
            Some(p) => Some(p.clone()),
            None => Some(nvmf_target::mgmt::default_socket_path()),
        },
        // The default path too: a second target that silently went without
        // its socket would leave `nvmf ctl` managing the first one.
        socket_required: true,
        tcp_addr: a.rpc_listen,
        token: token.map(|t| t.trim().to_string()),
        metrics_addr: a.metrics,
    };
    let listeners = nvmf_target::mgmt::MgmtListeners::start(mgmt.clone(), &rpc)?;
    // Show the bound addresses: they differ from the configured ones for port 0.
    let mut shown = cfg.clone();
    for (l, addr) in shown.listeners.iter_mut().zip(server.io_addrs()) {
        l.addr = addr.to_string();
    }
    for (l, addr) in shown.discovery.listen.iter_mut().zip(server.discovery_addrs()) {
        *l = addr.to_string();
    }
    // Best effort: a closed stdout (detached service) must not stop the target.
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(summary(&shown).as_bytes()).and_then(|()| out.flush()) {
        tracing::warn!("cannot print the startup summary: {e}");
    }
    if let Some(p) = &listeners.socket_path {
        let _ = writeln!(out, "manage:              nvmf ctl --rpc-socket {} subsystem list", p.display());
    }
    if let Some(m) = listeners.metrics_addr {
        let _ = writeln!(out, "metrics:             http://{m}/metrics");
    }
    let _ = out.flush();
    drop(out);

    let sig = signals.wait();
    let timeout = Duration::from_millis(a.shutdown_timeout_ms);
    let deadline = Instant::now() + timeout;
    tracing::info!("{}: shutting down (at most {} ms)", signal_name(sig), a.shutdown_timeout_ms);
    // A second signal while draining: give up at once.
    std::thread::spawn(move || {
        let sig = signals.wait();
        eprintln!("nvmf target: {} again, exiting without waiting", signal_name(sig));
        std::process::exit(1);
    });
    // The last resort: whatever peers, files or backends do, the process ends.
    std::thread::spawn(move || {
        std::thread::sleep(timeout + Duration::from_millis(SHUTDOWN_GRACE_MS));
        eprintln!(
            "nvmf target: shutdown did not finish within {} + {SHUTDOWN_GRACE_MS} ms, exiting",
            timeout.as_millis()
        );
        std::process::exit(1);
    });
    // Management first (no new changes while draining); it never waits for
    // the socket file or for peers, and gives requests still executing a short bound.
    listeners.stop_within(timeout.min(Duration::from_millis(nvmf_target::mgmt::listen::STOP_TIMEOUT_MS)));
    drop(mgmt);
    // A request abandoned at stop may hold the server a little longer.
    let mut server = server;
    let server = loop {
        match std::sync::Arc::try_unwrap(server) {
            Ok(s) => break Some(s),
            Err(s) if Instant::now() < deadline => {
                server = s;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => break None,
        }
    };
    match server {
        Some(server) => server.shutdown(deadline.saturating_duration_since(Instant::now())),
        None => tracing::warn!("a management request still holds the target: exiting without draining"),
    }
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: TargetArgs,
    }

    fn args(v: &[&str]) -> TargetArgs {
        Cli::try_parse_from(std::iter::once("target").chain(v.iter().copied())).unwrap().args
    }

    #[test]
    fn no_args_is_the_embedded_default() {
        let c = build_config(&args(&[])).unwrap();
        assert_eq!(c, TargetConfig::embedded_default().normalized().unwrap());
        let text = summary(&c);
        assert_eq!(
            text,
            "nvmf target: serving 1 subsystem on 127.0.0.1:4420 (discovery 127.0.0.1:8009), 1 core(s), interrupt mode\n\
             \x20 nqn.2026-11.io.nvmf:default  ns 1: ram 1.00 GiB (512 B blocks)  hosts: any\n\
             connect from Linux:  nvme connect -t tcp -a 127.0.0.1 -s 4420 -n nqn.2026-11.io.nvmf:default\n\
             discover:            nvme discover -t tcp -a 127.0.0.1 -s 8009\n"
        );
    }

    #[test]
    fn namespace_specs() {
        let ns = parse_namespace_spec("ram:2GiB").unwrap();
        assert_eq!((ns.kind.as_str(), ns.size.as_deref()), ("ram", Some("2GiB")));
        let ns = parse_namespace_spec("null:1TiB").unwrap();
        assert_eq!(ns.size_bytes(), Some(1 << 40));
        let ns = parse_namespace_spec("file:/tmp/disk.img").unwrap();
        assert_eq!((ns.path.as_deref(), ns.size.as_deref()), (Some("/tmp/disk.img"), None));
        let ns = parse_namespace_spec("file:/tmp/disk.img:8GiB").unwrap();
        assert_eq!((ns.path.as_deref(), ns.size.as_deref()), (Some("/tmp/disk.img"), Some("8GiB")));
        let ns = parse_namespace_spec("file:/mnt/a:b/disk.img").unwrap();
        assert_eq!(ns.path.as_deref(), Some("/mnt/a:b/disk.img"));
        let ns = parse_namespace_spec("block:/dev/nvme0n1").unwrap();
        assert_eq!((ns.kind.as_str(), ns.path.as_deref()), ("block", Some("/dev/nvme0n1")));
        for bad in ["ram", "ram:", "ram:1XB", "disk:/x", "null:lots"] {
            assert!(parse_namespace_spec(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_replace_parts() {
        let c = build_config(&args(&[
            "--listen",
            "127.0.0.1:5000",
            "--listen",
            "0.0.0.0:5001",
            "--discovery-listen",
            "none",
            "--subsystem",
            "nqn.2026-11.io.test:s",
            "--namespace",
            "null:1TiB",
            "--namespace",
            "ram:64MiB",
            "--allow-host",
            "nqn.2026-11.io.test:h",
            "--cores",
            "0",
            "--mode",
            "poll",
        ]))
        .unwrap();
        assert_eq!(c.listeners.iter().map(|l| l.addr.as_str()).collect::<Vec<_>>(), ["127.0.0.1:5000", "0.0.0.0:5001"]);
        assert!(c.discovery.listen.is_empty());
        assert_eq!(c.subsystems.len(), 1);
        let s = &c.subsystems[0];
        assert_eq!(s.nqn, "nqn.2026-11.io.test:s");
        assert_eq!(s.namespaces.iter().map(|n| n.nsid.unwrap()).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(s.allow_any_host, Some(false));
        assert_eq!((c.engine.cores.as_str(), c.engine.mode.as_str()), ("0", "poll"));
        let text = summary(&c);
        assert!(text.contains("serving 1 subsystem on 127.0.0.1:5000, 0.0.0.0:5001 (discovery on the same port)"));
        assert!(text.contains("ns 1: null 1.00 TiB (512 B blocks), ns 2: ram 64.00 MiB (512 B blocks)"));
        assert!(text.contains("hosts: nqn.2026-11.io.test:h"));
        assert!(text.contains("poll mode"));
        assert!(text.contains("discover:            nvme discover -t tcp -a 127.0.0.1 -s 5000"));

        // Only --allow-host: default subsystem and namespace, restricted.
        let c = build_config(&args(&["--allow-host", "nqn.2026-11.io.test:h"])).unwrap();
        assert_eq!(c.subsystems[0].nqn, DEFAULT_SUBSYSTEM_NQN);
        assert_eq!(c.subsystems[0].namespaces[0].size.as_deref(), Some("1GiB"));
        assert_eq!(c.subsystems[0].allowed_hosts, ["nqn.2026-11.io.test:h"]);
    }

    #[test]
    fn flags_override_a_file() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/target-multi.toml");
        let c = build_config(&args(&["--config", path])).unwrap();
        assert_eq!(c.subsystems.len(), 2);
        // --listen replaces listeners (and keeps subsystems); a wildcard address prints a placeholder.
        let c = build_config(&args(&["--config", path, "--listen", "0.0.0.0:4420"])).unwrap();
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.subsystems.len(), 2);
        assert!(summary(&c).contains("nvme connect -t tcp -a <target-ip> -s 4420"));
        assert!(summary(&c).contains("serving 2 subsystems"));
        // --namespace replaces the subsystems and clears listener filters naming them.
        let c = build_config(&args(&["--config", path, "--namespace", "ram:1MiB"])).unwrap();
        assert_eq!(c.subsystems.len(), 1);
        assert!(c.listeners.iter().all(|l| l.subsystems.is_empty()));
    }

    #[test]
    fn bad_flags_are_reported() {
        for (v, needle) in [
            (vec!["--listen", "nowhere"], "listener[0].addr"),
            (vec!["--subsystem", "bad"], "subsystem[0].nqn"),
            (vec!["--namespace", "ram:3XB"], "\"3XB\" is not a size"),
            (vec!["--namespace", "file:"], "nothing after"),
            (vec!["--cores", "2-1"], "engine.cores"),
            (vec!["--discovery-listen", "none", "--discovery-listen", "127.0.0.1:1"], "none"),
            (vec!["--config", "/nonexistent/x.toml"], "/nonexistent/x.toml"),
        ] {
            let e = format!("{:#}", build_config(&args(&v)).unwrap_err());
            assert!(e.contains(needle), "{v:?}: {e}");
        }
    }

    #[test]
    fn host_flags_cut_at_their_markers() {
        let nqn = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555";
        let key = "DHHC-1:01:c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTIzNA==:";
        let h = parse_host_spec(&format!("{nqn}:dhchap={key}:ctrl={key}")).unwrap();
        assert_eq!(h.nqn, nqn);
        assert_eq!(h.dhchap_key.as_deref(), Some(key));
        assert_eq!(h.dhchap_ctrl_key.as_deref(), Some(key));
        assert!(parse_host_spec(nqn).is_err());
        assert!(parse_host_spec(&format!("{nqn}:dhchap={key}:dhchap={key}")).is_err());
        let c = build_config(&args(&["--host", &format!("{nqn}:dhchap={key}")])).unwrap();
        assert_eq!(c.subsystems[0].hosts[0].nqn, nqn);
        assert_eq!(c.subsystems[0].allow_any_host, Some(false));
    }
}
