//! Target configuration: the TOML file model, the embedded default and
//! validation. Every limit the target enforces is a field here, with its
//! default and bound documented (docs/configuration.md).
//!
//! ```toml
//! [limits]                  # all optional
//! queue_depth_max = 128
//! [[listener]]
//! addr = "127.0.0.1:4420"
//! [discovery]
//! listen = ["127.0.0.1:8009"]
//! [[subsystem]]
//! nqn = "nqn.2026-11.io.nvmf:default"
//! allow_any_host = true
//! [[subsystem.namespace]]
//! kind = "ram"
//! size = "1GiB"
//! ```
//!
//! Use: [`TargetConfig::from_file`] / [`TargetConfig::from_toml_str`] parse
//! only (unknown keys are rejected there); [`TargetConfig::normalized`]
//! validates every value and fills every defaultable `Option`, so code that
//! consumes a normalized config may `unwrap()` those options.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The NQN of the embedded default subsystem.
pub const DEFAULT_SUBSYSTEM_NQN: &str = "nqn.2026-11.io.nvmf:default";

/// Whole target configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    #[serde(default)]
    pub engine: EngineSection,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub discovery: DiscoveryConfig,
    #[serde(default, rename = "subsystem")]
    pub subsystems: Vec<SubsystemConfig>,
}

/// Per-core engine placement and mode.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    /// Core list such as "0" or "0,2-3"; empty = one unpinned thread.
    pub cores: String,
    /// "poll" or "interrupt".
    pub mode: String,
    /// Poll mode: connections per core received with direct `recv` calls
    /// while busy (0 = always an armed io_uring receive). 0..=1024.
    pub poll_direct_recv_conns_max: usize,
}
impl Default for EngineSection {
    fn default() -> Self {
        EngineSection {
            cores: String::new(),
            mode: "interrupt".into(),
            poll_direct_recv_conns_max: nvmf_engine::EngineConfig::default().poll_direct_recv_conns_max,
        }
    }
}

/// Bounds on everything a host can make the target hold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest I/O queue size (entries) a host may ask for in Connect (CAP.MQES + 1). 2..=1024.
    pub queue_depth_max: u32,
    /// Admin queue entries max. 2..=4096 (Linux asks for 32).
    pub admin_queue_depth_max: u32,
    /// I/O queues per controller. 1..=128.
    pub io_queues_max: u32,
    /// In-capsule data bytes per I/O command (IOCCSZ*16 - 64). 0..=131072, multiple of 16.
    pub in_capsule_data_bytes: u32,
    /// MAXH2CDATA advertised in ICResp. 4096..=1 MiB.
    pub max_h2c_data_bytes: u32,
    /// Largest C2HData PDU payload we send (reads are split at it). 4096..=1 MiB.
    pub max_c2h_data_bytes: u32,
    /// Maximum data transfer per command in bytes (MDTS, power of two >= 4096). <= 8 MiB.
    pub mdts_bytes: u32,
    /// Controllers per subsystem. 1..=65519.
    pub controllers_per_subsystem_max: u32,
    /// TCP connections across the target. 1..=1_000_000.
    pub connections_max: u32,
    /// Connections that have not completed Connect yet; when reached, the
    /// oldest such connection is evicted for a new one. 1..=connections_max.
    pub connections_unestablished_max: u32,
    /// Asynchronous Event Requests held per controller (AERL + 1). 1..=16.
    pub aer_max: u32,
    /// Keep-alive applied when a host sends KATO 0 (discovery or I/O
    /// controller): the controller is torn down after this long without a
    /// command on any of its queues, so nothing is held forever (Linux nvmet
    /// uses 120 s for discovery controllers). 1_000..=kato_max_ms.
    pub kato_default_ms: u32,
    /// Upper bound on the KATO a host may ask for. <= 3_600_000.
    pub kato_max_ms: u32,
    /// Time a connection may take to send ICReq and Connect. 100..=600_000.
    pub connect_timeout_ms: u32,
    /// Time a started PDU may take to arrive whole, whatever KATO says. 100..=600_000.
    pub pdu_timeout_ms: u32,
    /// Time the data of an R2T may take to arrive. 100..=600_000.
    pub data_timeout_ms: u32,
}
impl Default for Limits {
    fn default() -> Self {
        Limits {
            queue_depth_max: 128,
            admin_queue_depth_max: 32,
            io_queues_max: 8,
            in_capsule_data_bytes: 8192,
            max_h2c_data_bytes: 128 * 1024,
            max_c2h_data_bytes: 128 * 1024,
            mdts_bytes: 1024 * 1024,
            controllers_per_subsystem_max: 1024,
            connections_max: 16384,
            connections_unestablished_max: 1024,
            aer_max: 4,
            kato_default_ms: 120_000,
            kato_max_ms: 3_600_000,
            connect_timeout_ms: 10_000,
            pdu_timeout_ms: 10_000,
            data_timeout_ms: 30_000,
        }
    }
}

/// One listening port for I/O controllers (and discovery on it as well).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// "ADDR:PORT", IPv4 or [IPv6].
    pub addr: String,
    /// Port ID reported in discovery entries (NVMe-oF PORTID); default: 1-based position.
    #[serde(default)]
    pub port_id: Option<u16>,
    /// Subsystems reachable through this listener; empty = all.
    #[serde(default)]
    pub subsystems: Vec<String>,
    /// TLS 1.3 (NVMe/TCP secure channel) on this listener.
    #[serde(default, skip_serializing_if = "TlsMode::is_none")]
    pub tls: TlsMode,
}

/// TLS on a listener: `"none"` (plain NVMe/TCP only), `"allowed"` (TLS or
/// plain, told apart by the first bytes) or `"required"` (TLS only). The
/// discovery log's TREQ and TSAS follow it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    #[default]
    None,
    Allowed,
    Required,
}

impl TlsMode {
    pub fn is_none(&self) -> bool {
        *self == TlsMode::None
    }
    pub fn name(self) -> &'static str {
        match self {
            TlsMode::None => "none",
            TlsMode::Allowed => "allowed",
            TlsMode::Required => "required",
        }
    }
}

impl std::str::FromStr for TlsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<TlsMode, String> {
        match s {
            "none" => Ok(TlsMode::None),
            "allowed" => Ok(TlsMode::Allowed),
            "required" => Ok(TlsMode::Required),
            _ => Err(format!("{s:?} is not one of none, allowed, required")),
        }
    }
}

/// Dedicated discovery listeners and referrals.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    pub listen: Vec<String>,
    pub referrals: Vec<ReferralConfig>,
}

/// A referral to another discovery service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferralConfig {
    /// "ADDR:PORT" of the other discovery controller.
    pub addr: String,
    #[serde(default)]
    pub port_id: Option<u16>,
}

/// One NVM subsystem.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubsystemConfig {
    pub nqn: String,
    /// Serial number (20 ASCII chars max); default derived from the NQN.
    #[serde(default)]
    pub serial: Option<String>,
    /// Model number (40 ASCII chars max); default "nvmf".
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub allow_any_host: Option<bool>,
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Hosts with their own settings (keys): a host listed here is allowed.
    #[serde(default, rename = "host", skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostConfig>,
    /// I/O queues per controller (overrides limits.io_queues_max when lower).
    #[serde(default)]
    pub io_queues_max: Option<u32>,
    /// I/O queue entries (overrides limits.queue_depth_max when lower).
    #[serde(default)]
    pub queue_depth_max: Option<u32>,
    #[serde(default, rename = "namespace")]
    pub namespaces: Vec<NamespaceConfig>,
}

/// A host of a subsystem with its own settings (`[[subsystem.host]]`).
///
/// Each secret is given inline or as a file (`*_file`, which must not be
/// readable by group or others); configuration files written back
/// (`save-config`, `--print-config`) keep each the way it was given. `Debug`
/// never prints an inline secret.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    pub nqn: String,
    /// DH-HMAC-CHAP host secret (`DHHC-1:hh:...:`): the host must authenticate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhchap_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhchap_key_file: Option<String>,
    /// Controller secret: the controller authenticates to the host too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhchap_ctrl_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhchap_ctrl_key_file: Option<String>,
    /// Hash the controller picks: "sha256" (default), "sha384" or "sha512".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhchap_hash: Option<String>,
    /// DH group the controller picks: "null", "ffdhe2048" (default) … "ffdhe8192".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhchap_dhgroup: Option<String>,
    /// Configured TLS PSK in the NVMe interchange format (`NVMeTLSkey-1:hh:...:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<String>,
    /// Derive the TLS PSK as libnvme before 1.16 did (its HkdfLabel layout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key_compat: Option<bool>,
}

impl fmt::Debug for HostConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("HostConfig")
            .field("nqn", &self.nqn)
            .field("dhchap_key", &secret(&self.dhchap_key))
            .field("dhchap_key_file", &self.dhchap_key_file)
            .field("dhchap_ctrl_key", &secret(&self.dhchap_ctrl_key))
            .field("dhchap_ctrl_key_file", &self.dhchap_ctrl_key_file)
            .field("dhchap_hash", &self.dhchap_hash)
            .field("dhchap_dhgroup", &self.dhchap_dhgroup)
            .field("tls_key", &secret(&self.tls_key))
            .field("tls_key_file", &self.tls_key_file)
            .field("tls_key_compat", &self.tls_key_compat)
            .finish()
    }
}

/// One namespace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    /// Namespace ID; default: next free, from 1.
    #[serde(default)]
    pub nsid: Option<u32>,
    /// "null", "ram", "file" or "block".
    pub kind: String,
    /// Size such as "1GiB" (ram, null; file: create/extend to this size).
    #[serde(default)]
    pub size: Option<String>,
    /// File or block device path (file, block).
    #[serde(default)]
    pub path: Option<String>,
    /// 512 or 4096; default 512.
    #[serde(default)]
    pub block_size: Option<u32>,
    /// 32 hex digits; default derived from subsystem NQN and NSID (stable).
    #[serde(default)]
    pub nguid: Option<String>,
    /// RFC 4122 UUID; default derived like the NGUID.
    #[serde(default)]
    pub uuid: Option<String>,
    /// 16 hex digits; default derived like the NGUID.
    #[serde(default)]
    pub eui64: Option<String>,
    /// ANA group (multipath); default 1.
    #[serde(default)]
    pub ana_group: Option<u32>,
    /// Host NQNs that see this namespace (at most [`NAMESPACE_HOSTS_MAX`]);
    /// empty: every host the subsystem admits. Other hosts find the NSID
    /// inactive: absent from their active namespace list, their commands to
    /// it refused with Invalid Namespace or Format.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

// ---------------------------------------------------------------------------
// Bounds that are not per-field limits.
// ---------------------------------------------------------------------------

/// Most subsystems one target serves.
pub const SUBSYSTEMS_MAX: usize = 1024;
pub use crate::limits::{ANA_GROUP_ID_MAX, NAMESPACES_PER_SUBSYSTEM_MAX, NAMESPACE_HOSTS_MAX, NSID_MAX};
/// Most I/O listeners, and separately most dedicated discovery listeners.
pub const LISTENERS_MAX: usize = 64;
/// Most discovery referrals.
pub const REFERRALS_MAX: usize = 64;
/// Most host NQNs in one subsystem's `allowed_hosts`.
pub const ALLOWED_HOSTS_MAX: usize = 4096;
/// Largest namespace of any kind: file offsets are signed 64-bit.
pub const NAMESPACE_BYTES_MAX: u64 = 1 << 62;
/// Sum of all `ram` namespace sizes. RAM namespaces reserve address space up
/// front (untouched pages cost nothing), and user space has 128 TiB of it.
pub const RAM_TOTAL_BYTES_MAX: u64 = 64 << 40;
/// Largest configuration file read by [`TargetConfig::from_file`].
pub const CONFIG_FILE_BYTES_MAX: u64 = 16 << 20;
/// Longest serial number (Identify Controller SN).
pub const SERIAL_LEN_MAX: usize = 20;
/// Longest model number (Identify Controller MN).
pub const MODEL_LEN_MAX: usize = 40;
/// Model number reported when none is configured.
pub const DEFAULT_MODEL: &str = "nvmf";
/// Block size when none is configured.
pub const DEFAULT_BLOCK_SIZE: u32 = 512;
/// Listen address of the embedded default I/O listener.
pub const DEFAULT_LISTEN_ADDR: &str = "127.0.0.1:4420";
/// Listen address of the embedded default discovery listener.
pub const DEFAULT_DISCOVERY_ADDR: &str = "127.0.0.1:8009";
/// Size of the embedded default RAM namespace.
pub const DEFAULT_RAM_SIZE: &str = "1GiB";

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why a configuration was refused. The message always names the offending
/// key (as a path such as `subsystem[1].namespace[0].size`) or the TOML position.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not TOML, wrong types, or unknown keys (the message names the key).
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// A value outside what the target accepts.
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    /// The file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid { key: key.into(), message: message.into() }
    }
    /// The offending key for [`ConfigError::Invalid`].
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// A string that is not a size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeError(String);

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for SizeError {}

mod ids;
mod normalize;
mod size;

use ids::*;
pub use size::{format_size, parse_size};

impl SubsystemConfig {
    /// A subsystem with defaults everywhere (any host unless hosts are added).
    pub fn with_namespaces(nqn: &str, namespaces: Vec<NamespaceConfig>) -> SubsystemConfig {
        SubsystemConfig {
            nqn: nqn.to_string(),
            serial: None,
            model: None,
            allow_any_host: None,
            allowed_hosts: Vec::new(),
            hosts: Vec::new(),
            io_queues_max: None,
            queue_depth_max: None,
            namespaces,
        }
    }

    /// Whether `host_nqn` may connect (on a normalized config).
    pub fn host_allowed(&self, host_nqn: &str) -> bool {
        self.allow_any_host.unwrap_or(self.allowed_hosts.is_empty() && self.hosts.is_empty())
            || self.allowed_hosts.iter().any(|h| h == host_nqn)
            || self.hosts.iter().any(|h| h.nqn == host_nqn)
    }
}

/// `(nguid, uuid, eui64)` of a namespace, as reported in Identify data.
pub type NamespaceIds = ([u8; 16], [u8; 16], [u8; 8]);

impl NamespaceConfig {
    /// A namespace of `kind` with every optional field unset.
    pub fn new(kind: &str) -> NamespaceConfig {
        NamespaceConfig {
            nsid: None,
            kind: kind.to_string(),
            size: None,
            path: None,
            block_size: None,
            nguid: None,
            uuid: None,
            eui64: None,
            ana_group: None,
            hosts: Vec::new(),
        }
    }

    /// A RAM namespace of `size` (e.g. "1GiB").
    pub fn ram(size: &str) -> NamespaceConfig {
        NamespaceConfig { size: Some(size.to_string()), ..NamespaceConfig::new("ram") }
    }

    /// The configured size in bytes, if any (`None` for block, and for file
    /// namespaces that take the file's size). On a normalized config a present
    /// size always parses.
    pub fn size_bytes(&self) -> Option<u64> {
        self.size.as_deref().and_then(|s| parse_size(s).ok())
    }

    /// Block size in bytes (default 512).
    pub fn block_size_bytes(&self) -> u32 {
        self.block_size.unwrap_or(DEFAULT_BLOCK_SIZE)
    }

    /// `(nguid, uuid, eui64)` as bytes, for Identify Namespace and the
    /// Namespace Identification Descriptor list. Requires a normalized config.
    pub fn ids(&self) -> Result<NamespaceIds, ConfigError> {
        let missing = |k: &str| ConfigError::invalid(format!("namespace.{k}"), "not set (config not normalized)");
        let nguid = self.nguid.as_deref().ok_or_else(|| missing("nguid"))?;
        let uuid = self.uuid.as_deref().ok_or_else(|| missing("uuid"))?;
        let eui64 = self.eui64.as_deref().ok_or_else(|| missing("eui64"))?;
        Ok((
            parse_hex::<16>(nguid)
                .ok_or_else(|| ConfigError::invalid("namespace.nguid", format!("{nguid:?} is not 32 hex digits")))?,
            parse_uuid(uuid)
                .ok_or_else(|| ConfigError::invalid("namespace.uuid", format!("{uuid:?} is not a UUID")))?,
            parse_hex::<8>(eui64)
                .ok_or_else(|| ConfigError::invalid("namespace.eui64", format!("{eui64:?} is not 16 hex digits")))?,
        ))
    }
}

/// Fuzz entry point (fuzz/fuzz_targets/config_toml.rs and the corpus replay
/// test): any bytes as a config file must give a config or an error, never a
/// panic; a config that normalizes must survive the TOML round trip.
pub fn fuzz_config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(cfg) = TargetConfig::from_toml_str(text) else { return };
    let Ok(norm) = cfg.normalized() else { return };
    let again = norm.to_toml_string().expect("a normalized config serializes");
    let back = TargetConfig::from_toml_str(&again).expect("serialized config parses");
    assert_eq!(back.normalized().expect("round trip normalizes"), norm);
}

#[cfg(test)]
mod tests;
