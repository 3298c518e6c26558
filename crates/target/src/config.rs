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
}
impl Default for EngineSection {
    fn default() -> Self {
        EngineSection { cores: String::new(), mode: "interrupt".into() }
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
    /// Asynchronous Event Requests held per controller (AERL + 1). 1..=16.
    pub aer_max: u32,
    /// Keep-alive timeout when the host sends KATO 0 on an I/O controller:
    /// 0 = none, as the spec allows. Hosts normally send their own.
    pub kato_default_ms: u32,
    /// Upper bound on the KATO a host may ask for. <= 3_600_000.
    pub kato_max_ms: u32,
    /// Time a connection may take to send ICReq and Connect. 100..=600_000.
    pub connect_timeout_ms: u32,
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
            aer_max: 4,
            kato_default_ms: 0,
            kato_max_ms: 3_600_000,
            connect_timeout_ms: 10_000,
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
    /// I/O queues per controller (overrides limits.io_queues_max when lower).
    #[serde(default)]
    pub io_queues_max: Option<u32>,
    /// I/O queue entries (overrides limits.queue_depth_max when lower).
    #[serde(default)]
    pub queue_depth_max: Option<u32>,
    #[serde(default, rename = "namespace")]
    pub namespaces: Vec<NamespaceConfig>,
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
}
