//! Live management of a running target: JSON-RPC 2.0 methods ([`methods`]),
//! their transport on a Unix socket and an optional token-protected TCP
//! listener ([`listen`]), Prometheus metrics ([`metrics`]), nvmetcli JSON
//! import ([`nvmetcli`]) and saving the running state as TOML.
//!
//! Everything here is control plane: it runs on its own threads, never on the
//! engine cores, and changes the registry through [`crate::subsys::Target`]
//! and [`crate::server::Server`].
//!
//! The running state is mirrored by a normalized [`TargetConfig`]. A
//! mutating method builds a candidate copy with its change, validates it with
//! [`TargetConfig::normalized`] (so bad values are refused with the same
//! messages as in a config file), applies it to the registry, and only then
//! replaces the mirror: a failed request changes nothing, and `save_config`
//! writes exactly what runs.

pub mod event_loop;
pub mod http;
pub mod listen;
pub mod methods;
pub mod methods_ports;
pub mod metrics;
pub mod nvmetcli;
pub mod rpc;

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::backend::Backend;
use crate::config::{NamespaceConfig, TargetConfig};
use crate::server::Server;

pub use listen::{default_socket_path, MgmtListeners, RpcOptions};
pub use rpc::{code, RpcError};

/// Opens namespace backends for namespaces added at runtime.
pub type SharedOpener = Arc<dyn Fn(&NamespaceConfig) -> io::Result<Arc<dyn Backend>> + Send + Sync>;

/// The management state of one running target.
pub struct Mgmt {
    server: Arc<Server>,
    /// Normalized mirror of the running configuration; its lock also
    /// serializes management changes.
    state: Mutex<TargetConfig>,
    open: SharedOpener,
    started: Instant,
}

impl Mgmt {
    /// `cfg` is the configuration the server was started from.
    pub fn new(server: Arc<Server>, cfg: &TargetConfig) -> Result<Arc<Mgmt>, crate::config::ConfigError> {
        Self::with_opener(server, cfg, Arc::new(|n: &NamespaceConfig| crate::backend::open(n)))
    }

    pub fn with_opener(
        server: Arc<Server>,
        cfg: &TargetConfig,
        open: SharedOpener,
    ) -> Result<Arc<Mgmt>, crate::config::ConfigError> {
        let mut cfg = cfg.normalized()?;
        // Record bound addresses (port 0 in the file means "any": save the real one).
        let ports = server.target().ports();
        for l in &mut cfg.listeners {
            if let Some(p) = ports.iter().find(|p| Some(p.port_id) == l.port_id && !p.discovery_only) {
                l.addr = p.addr.to_string();
            }
        }
        let disc_ids = cfg.discovery_port_ids();
        for (i, a) in cfg.discovery.listen.iter_mut().enumerate() {
            if let Some(p) = ports.iter().find(|p| Some(&p.port_id) == disc_ids.get(i) && p.discovery_only) {
                *a = p.addr.to_string();
            }
        }
        Ok(Arc::new(Mgmt { server, state: Mutex::new(cfg), open, started: Instant::now() }))
    }

    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }

    /// The running configuration (normalized; what `save_config` writes).
    pub fn running_config(&self) -> TargetConfig {
        self.state.lock().unwrap().clone()
    }
}
