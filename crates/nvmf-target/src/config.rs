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

// ---------------------------------------------------------------------------
// Bounds that are not per-field limits.
// ---------------------------------------------------------------------------

/// Most subsystems one target serves.
pub const SUBSYSTEMS_MAX: usize = 1024;
pub use crate::limits::{ANA_GROUP_ID_MAX, NAMESPACES_PER_SUBSYSTEM_MAX, NSID_MAX};
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

// ---------------------------------------------------------------------------
// Sizes
// ---------------------------------------------------------------------------

/// Parse a size: a decimal integer followed by an optional unit.
///
/// Units (case-insensitive, optional space before them): none or `B` = bytes;
/// `K`, `M`, `G`, `T`, `KiB`, `MiB`, `GiB`, `TiB` = powers of 1024;
/// `KB`, `MB`, `GB`, `TB` = powers of 1000. Overflow is an error.
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let bad = || SizeError(format!("{s:?} is not a size (use e.g. 512MiB, 1GiB)"));
    let t = s.trim();
    let digits_end = t.bytes().position(|b| !b.is_ascii_digit()).unwrap_or(t.len());
    if digits_end == 0 || digits_end > 20 {
        return Err(bad());
    }
    let n: u64 = t[..digits_end].parse().map_err(|_| bad())?;
    let unit = t[digits_end..].trim_start().to_ascii_lowercase();
    let mult: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(|| SizeError(format!("{s:?} is too large")))
}

/// Human-readable binary size, e.g. `1.00 GiB`, `512 B`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}

// ---------------------------------------------------------------------------
// Stable derived identifiers
// ---------------------------------------------------------------------------

/// FNV-1a over `parts` followed by a splitmix64 finalizer. Stable across Rust
/// versions and platforms (unlike `DefaultHasher`), so derived serials and
/// namespace IDs never change between runs or releases.
fn stable_hash64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separator, so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
        return None;
    }
    let compact: String = s.chars().filter(|&c| c != '-').collect();
    parse_hex::<16>(&compact)
}

fn format_uuid(u: &[u8; 16]) -> String {
    format!("{}-{}-{}-{}-{}", hex(&u[0..4]), hex(&u[4..6]), hex(&u[6..8]), hex(&u[8..10]), hex(&u[10..16]))
}

fn derived_nguid(nqn: &str, nsid: u32) -> [u8; 16] {
    let id = nsid.to_le_bytes();
    let hi = stable_hash64(&[b"nguid-hi", nqn.as_bytes(), &id]);
    let lo = stable_hash64(&[b"nguid-lo", nqn.as_bytes(), &id]);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&hi.to_be_bytes());
    out[8..].copy_from_slice(&lo.to_be_bytes());
    if out == [0; 16] {
        out[15] = 1; // all-zero means "not reported"
    }
    out
}

fn derived_uuid(nqn: &str, nsid: u32) -> [u8; 16] {
    let id = nsid.to_le_bytes();
    let hi = stable_hash64(&[b"uuid-hi", nqn.as_bytes(), &id]);
    let lo = stable_hash64(&[b"uuid-lo", nqn.as_bytes(), &id]);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&hi.to_be_bytes());
    out[8..].copy_from_slice(&lo.to_be_bytes());
    // RFC 9562 version 8 (custom, here: name-derived) and the RFC variant bits.
    out[6] = (out[6] & 0x0f) | 0x80;
    out[8] = (out[8] & 0x3f) | 0x80;
    out
}

fn derived_eui64(nqn: &str, nsid: u32) -> [u8; 8] {
    let mut out = stable_hash64(&[b"eui64", nqn.as_bytes(), &nsid.to_le_bytes()]).to_be_bytes();
    // Locally administered (U/L bit set), unicast: never collides with a vendor OUI.
    out[0] = (out[0] | 0x02) & !0x01;
    out
}

/// Serial number derived from the subsystem NQN: 16 lowercase hex digits.
fn derived_serial(nqn: &str) -> String {
    hex(&stable_hash64(&[b"serial", nqn.as_bytes()]).to_be_bytes())
}

// ---------------------------------------------------------------------------
// Parsing, defaults, serialization
// ---------------------------------------------------------------------------

impl TargetConfig {
    /// What `nvmf target` serves with no arguments: one subsystem
    /// ([`DEFAULT_SUBSYSTEM_NQN`]) with one 1 GiB RAM namespace, any host,
    /// I/O on 127.0.0.1:4420 and discovery on 127.0.0.1:8009.
    /// Not normalized: optional fields are `None`.
    pub fn embedded_default() -> TargetConfig {
        TargetConfig {
            engine: EngineSection::default(),
            limits: Limits::default(),
            listeners: vec![ListenerConfig { addr: DEFAULT_LISTEN_ADDR.into(), port_id: None, subsystems: Vec::new() }],
            discovery: DiscoveryConfig { listen: vec![DEFAULT_DISCOVERY_ADDR.into()], referrals: Vec::new() },
            subsystems: vec![SubsystemConfig::with_namespaces(
                DEFAULT_SUBSYSTEM_NQN,
                vec![NamespaceConfig::ram(DEFAULT_RAM_SIZE)],
            )],
        }
    }

    /// Parse TOML. Rejects syntax errors, wrong types and unknown keys (the
    /// message names the key and its line). Does not validate values: call
    /// [`TargetConfig::normalized`].
    pub fn from_toml_str(s: &str) -> Result<TargetConfig, ConfigError> {
        toml::from_str(s).map_err(|e| ConfigError::Parse(e.to_string().trim_end().to_string()))
    }

    /// Read and parse a TOML file (at most [`CONFIG_FILE_BYTES_MAX`] bytes).
    pub fn from_file(path: impl AsRef<Path>) -> Result<TargetConfig, ConfigError> {
        let path = path.as_ref();
        let read_err = |source| ConfigError::Read { path: path.to_path_buf(), source };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let mut text = String::new();
        file.take(CONFIG_FILE_BYTES_MAX + 1).read_to_string(&mut text).map_err(read_err)?;
        if text.len() as u64 > CONFIG_FILE_BYTES_MAX {
            return Err(read_err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("larger than {CONFIG_FILE_BYTES_MAX} bytes"),
            )));
        }
        TargetConfig::from_toml_str(&text).map_err(|e| match e {
            ConfigError::Parse(m) => ConfigError::Parse(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Serialize as TOML. For a normalized config the round trip is exact:
    /// `from_toml_str(&c.to_toml_string()?)?.normalized()? == c`.
    pub fn to_toml_string(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| ConfigError::Parse(format!("cannot serialize: {e}")))
    }

    /// Port IDs of the dedicated discovery listeners (`discovery.listen`, same
    /// order): they follow the I/O listeners, starting after the largest I/O
    /// listener port ID. Meaningful on a normalized config (which checked that
    /// they fit in 16 bits and collide with nothing).
    pub fn discovery_port_ids(&self) -> Vec<u16> {
        let first = self.listeners.iter().filter_map(|l| l.port_id).max().map_or(1, |m| u32::from(m) + 1);
        (0..self.discovery.listen.len()).map(|i| (first + i as u32).min(u32::from(u16::MAX)) as u16).collect()
    }

    /// Validate everything and return a copy with every defaultable `Option`
    /// filled (see docs/configuration.md for each default). Idempotent.
    pub fn normalized(&self) -> Result<TargetConfig, ConfigError> {
        let mut c = self.clone();
        c.engine.validate()?;
        c.limits.validate()?;
        normalize_listeners(&mut c)?;
        normalize_subsystems(&mut c)?;
        // Listener subsystem filters must name configured subsystems.
        let nqns: HashSet<&str> = c.subsystems.iter().map(|s| s.nqn.as_str()).collect();
        for (i, l) in c.listeners.iter().enumerate() {
            let mut seen = HashSet::new();
            for (j, n) in l.subsystems.iter().enumerate() {
                let key = format!("listener[{i}].subsystems[{j}]");
                if !nqns.contains(n.as_str()) {
                    return Err(ConfigError::invalid(key, format!("{n:?} is not a configured subsystem")));
                }
                if !seen.insert(n) {
                    return Err(ConfigError::invalid(key, format!("{n:?} is listed twice")));
                }
            }
        }
        Ok(c)
    }
}

impl EngineSection {
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.cores.trim().is_empty() {
            nvmf_engine::parse_core_list(&self.cores)
                .map_err(|e| ConfigError::invalid("engine.cores", format!("{:?}: {e}", self.cores)))?;
        }
        self.mode.parse::<nvmf_engine::Mode>().map_err(|_| {
            ConfigError::invalid("engine.mode", format!("{:?} is not \"poll\" or \"interrupt\"", self.mode))
        })?;
        if self.poll_direct_recv_conns_max > nvmf_engine::DIRECT_RECV_CONNS_MAX {
            return Err(ConfigError::invalid(
                "engine.poll_direct_recv_conns_max",
                format!("{} is over {}", self.poll_direct_recv_conns_max, nvmf_engine::DIRECT_RECV_CONNS_MAX),
            ));
        }
        Ok(())
    }

    /// The parsed core list (empty: one unpinned thread).
    pub fn core_list(&self) -> Result<Vec<usize>, ConfigError> {
        if self.cores.trim().is_empty() {
            return Ok(Vec::new());
        }
        nvmf_engine::parse_core_list(&self.cores).map_err(|e| ConfigError::invalid("engine.cores", e.to_string()))
    }

    /// The parsed mode.
    pub fn engine_mode(&self) -> Result<nvmf_engine::Mode, ConfigError> {
        self.mode.parse().map_err(|e: nvmf_engine::EngineError| ConfigError::invalid("engine.mode", e.to_string()))
    }
}

impl Limits {
    /// `(key, value, min, max)` for every plain range-bounded limit.
    fn ranges(&self) -> [(&'static str, u32, u32, u32); 16] {
        [
            ("queue_depth_max", self.queue_depth_max, 2, 1024),
            ("admin_queue_depth_max", self.admin_queue_depth_max, 2, 4096),
            ("io_queues_max", self.io_queues_max, 1, 128),
            ("in_capsule_data_bytes", self.in_capsule_data_bytes, 0, 128 * 1024),
            ("max_h2c_data_bytes", self.max_h2c_data_bytes, 4096, 1 << 20),
            ("max_c2h_data_bytes", self.max_c2h_data_bytes, 4096, 1 << 20),
            ("mdts_bytes", self.mdts_bytes, 4096, 8 << 20),
            ("controllers_per_subsystem_max", self.controllers_per_subsystem_max, 1, 65519),
            ("connections_max", self.connections_max, 1, 1_000_000),
            ("connections_unestablished_max", self.connections_unestablished_max, 1, 1_000_000),
            ("aer_max", self.aer_max, 1, 16),
            ("kato_default_ms", self.kato_default_ms, 1_000, 3_600_000),
            ("kato_max_ms", self.kato_max_ms, 1_000, 3_600_000),
            ("connect_timeout_ms", self.connect_timeout_ms, 100, 600_000),
            ("pdu_timeout_ms", self.pdu_timeout_ms, 100, 600_000),
            ("data_timeout_ms", self.data_timeout_ms, 100, 600_000),
        ]
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (key, value, min, max) in self.ranges() {
            if !(min..=max).contains(&value) {
                return Err(ConfigError::invalid(format!("limits.{key}"), format!("{value} is outside {min}..={max}")));
            }
        }
        if !self.in_capsule_data_bytes.is_multiple_of(16) {
            return Err(ConfigError::invalid(
                "limits.in_capsule_data_bytes",
                format!("{} is not a multiple of 16", self.in_capsule_data_bytes),
            ));
        }
        if !self.mdts_bytes.is_power_of_two() {
            return Err(ConfigError::invalid(
                "limits.mdts_bytes",
                format!("{} is not a power of two", self.mdts_bytes),
            ));
        }
        if self.connections_unestablished_max > self.connections_max {
            return Err(ConfigError::invalid(
                "limits.connections_unestablished_max",
                format!(
                    "{} is above limits.connections_max ({})",
                    self.connections_unestablished_max, self.connections_max
                ),
            ));
        }
        if self.kato_default_ms > self.kato_max_ms {
            return Err(ConfigError::invalid(
                "limits.kato_default_ms",
                format!("{} is above limits.kato_max_ms ({})", self.kato_default_ms, self.kato_max_ms),
            ));
        }
        Ok(())
    }
}

fn parse_addr(key: &str, addr: &str) -> Result<SocketAddr, ConfigError> {
    addr.parse::<SocketAddr>()
        .map_err(|_| ConfigError::invalid(key, format!("{addr:?} is not ADDR:PORT (e.g. 127.0.0.1:4420, [::1]:4420)")))
}

fn normalize_listeners(c: &mut TargetConfig) -> Result<(), ConfigError> {
    if c.listeners.is_empty() {
        return Err(ConfigError::invalid("listener", "at least one [[listener]] is required"));
    }
    if c.listeners.len() > LISTENERS_MAX {
        return Err(ConfigError::invalid("listener", format!("more than {LISTENERS_MAX} listeners")));
    }
    if c.discovery.listen.len() > LISTENERS_MAX {
        return Err(ConfigError::invalid("discovery.listen", format!("more than {LISTENERS_MAX} listeners")));
    }
    if c.discovery.referrals.len() > REFERRALS_MAX {
        return Err(ConfigError::invalid("discovery.referrals", format!("more than {REFERRALS_MAX} referrals")));
    }
    // Bound addresses must be distinct (port 0 = "any free port" never collides).
    let mut bound: Vec<(SocketAddr, String)> = Vec::new();
    let mut check_bind = |key: String, addr: &str| -> Result<(), ConfigError> {
        let a = parse_addr(&key, addr)?;
        if a.port() != 0 {
            if let Some((_, other)) = bound.iter().find(|(b, _)| *b == a) {
                return Err(ConfigError::invalid(key, format!("{addr} is already used by {other}")));
            }
        }
        bound.push((a, key));
        Ok(())
    };
    for (i, l) in c.listeners.iter().enumerate() {
        check_bind(format!("listener[{i}].addr"), &l.addr)?;
    }
    for (i, addr) in c.discovery.listen.iter().enumerate() {
        check_bind(format!("discovery.listen[{i}]"), addr)?;
    }
    // Port IDs: explicit ones first, then the 1-based position (or the next free id).
    let mut used = BTreeSet::new();
    for (i, l) in c.listeners.iter().enumerate() {
        if let Some(id) = l.port_id {
            if !used.insert(id) {
                return Err(ConfigError::invalid(format!("listener[{i}].port_id"), format!("{id} is used twice")));
            }
        }
    }
    for (i, l) in c.listeners.iter_mut().enumerate() {
        if l.port_id.is_none() {
            let mut id = (i + 1) as u16; // i < LISTENERS_MAX
            while used.contains(&id) {
                id = id.wrapping_add(1);
            }
            used.insert(id);
            l.port_id = Some(id);
        }
    }
    let max_io = c.listeners.iter().filter_map(|l| l.port_id).max().unwrap_or(0);
    if u32::from(max_io) + c.discovery.listen.len() as u32 > u32::from(u16::MAX) {
        return Err(ConfigError::invalid(
            "discovery.listen",
            "discovery listeners take the port IDs after the largest listener port_id, which must leave room for them",
        ));
    }
    let mut referral_addrs = HashSet::new();
    for (i, r) in c.discovery.referrals.iter_mut().enumerate() {
        let key = format!("discovery.referrals[{i}].addr");
        let a = parse_addr(&key, &r.addr)?;
        if a.port() == 0 {
            return Err(ConfigError::invalid(key, "a referral needs a real port"));
        }
        if !referral_addrs.insert(a) {
            return Err(ConfigError::invalid(key, format!("{} is listed twice", r.addr)));
        }
        r.port_id.get_or_insert((i + 1) as u16);
    }
    Ok(())
}

fn check_nqn(key: &str, nqn: &str) -> Result<(), ConfigError> {
    nvmf_proto::validate_nqn(nqn).map_err(|m| ConfigError::invalid(key, format!("{nqn:?}: {m}")))
}

fn check_ascii_field(key: &str, value: &str, len_max: usize) -> Result<(), ConfigError> {
    if value.is_empty() || value.len() > len_max {
        return Err(ConfigError::invalid(key, format!("{value:?} must be 1..={len_max} characters")));
    }
    if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(ConfigError::invalid(key, format!("{value:?} must be printable ASCII")));
    }
    if value.starts_with(' ') || value.ends_with(' ') {
        // Identify pads these fields with spaces: edge spaces would not survive.
        return Err(ConfigError::invalid(key, format!("{value:?} must not start or end with a space")));
    }
    Ok(())
}

/// Identifier uniqueness across the whole target.
#[derive(Default)]
struct SeenIds {
    nguid: HashSet<[u8; 16]>,
    uuid: HashSet<[u8; 16]>,
    eui64: HashSet<[u8; 8]>,
}

fn normalize_subsystems(c: &mut TargetConfig) -> Result<(), ConfigError> {
    if c.subsystems.len() > SUBSYSTEMS_MAX {
        return Err(ConfigError::invalid("subsystem", format!("more than {SUBSYSTEMS_MAX} subsystems")));
    }
    let mut nqns = HashSet::new();
    let mut ids = SeenIds::default();
    let mut ram_total_bytes: u64 = 0;
    let limits = c.limits.clone();
    for (si, s) in c.subsystems.iter_mut().enumerate() {
        let p = format!("subsystem[{si}]");
        check_nqn(&format!("{p}.nqn"), &s.nqn)?;
        if s.nqn == nvmf_proto::DISCOVERY_NQN {
            return Err(ConfigError::invalid(format!("{p}.nqn"), "the discovery NQN is served by the target itself"));
        }
        if !nqns.insert(s.nqn.clone()) {
            return Err(ConfigError::invalid(format!("{p}.nqn"), format!("{:?} is configured twice", s.nqn)));
        }
        let serial = s.serial.get_or_insert_with(|| derived_serial(&s.nqn));
        check_ascii_field(&format!("{p}.serial"), serial, SERIAL_LEN_MAX)?;
        let model = s.model.get_or_insert_with(|| DEFAULT_MODEL.to_string());
        check_ascii_field(&format!("{p}.model"), model, MODEL_LEN_MAX)?;

        if s.allowed_hosts.len() > ALLOWED_HOSTS_MAX {
            return Err(ConfigError::invalid(format!("{p}.allowed_hosts"), format!("more than {ALLOWED_HOSTS_MAX}")));
        }
        let mut hosts = HashSet::new();
        for (hi, h) in s.allowed_hosts.iter().enumerate() {
            let key = format!("{p}.allowed_hosts[{hi}]");
            check_nqn(&key, h)?;
            if !hosts.insert(h) {
                return Err(ConfigError::invalid(key, format!("{h:?} is listed twice")));
            }
        }
        match s.allow_any_host {
            None => s.allow_any_host = Some(s.allowed_hosts.is_empty()),
            Some(true) if !s.allowed_hosts.is_empty() => {
                return Err(ConfigError::invalid(
                    format!("{p}.allow_any_host"),
                    "true contradicts the non-empty allowed_hosts (remove one of them)",
                ));
            }
            Some(_) => {}
        }

        let io_queues = s.io_queues_max.unwrap_or(limits.io_queues_max);
        if !(1..=limits.io_queues_max).contains(&io_queues) {
            return Err(ConfigError::invalid(
                format!("{p}.io_queues_max"),
                format!("{io_queues} is outside 1..=limits.io_queues_max ({})", limits.io_queues_max),
            ));
        }
        s.io_queues_max = Some(io_queues);
        let depth = s.queue_depth_max.unwrap_or(limits.queue_depth_max);
        if !(2..=limits.queue_depth_max).contains(&depth) {
            return Err(ConfigError::invalid(
                format!("{p}.queue_depth_max"),
                format!("{depth} is outside 2..=limits.queue_depth_max ({})", limits.queue_depth_max),
            ));
        }
        s.queue_depth_max = Some(depth);

        if s.namespaces.len() > NAMESPACES_PER_SUBSYSTEM_MAX {
            return Err(ConfigError::invalid(
                format!("{p}.namespace"),
                format!("more than {NAMESPACES_PER_SUBSYSTEM_MAX} namespaces"),
            ));
        }
        let mut nsids = BTreeSet::new();
        for (ni, ns) in s.namespaces.iter().enumerate() {
            if let Some(id) = ns.nsid {
                let key = format!("{p}.namespace[{ni}].nsid");
                if id == 0 || id > NSID_MAX {
                    return Err(ConfigError::invalid(key, format!("{id} is outside 1..={NSID_MAX}")));
                }
                if !nsids.insert(id) {
                    return Err(ConfigError::invalid(key, format!("{id} is used twice in this subsystem")));
                }
            }
        }
        let mut next_nsid = 1u32;
        for ns in s.namespaces.iter_mut() {
            if ns.nsid.is_none() {
                while nsids.contains(&next_nsid) {
                    next_nsid += 1; // at most NAMESPACES_PER_SUBSYSTEM_MAX steps
                }
                nsids.insert(next_nsid);
                ns.nsid = Some(next_nsid);
            }
        }
        for (ni, ns) in s.namespaces.iter_mut().enumerate() {
            let bytes = normalize_namespace(&format!("{p}.namespace[{ni}]"), &s.nqn, ns, &mut ids)?;
            if ns.kind == "ram" {
                ram_total_bytes = ram_total_bytes.saturating_add(bytes);
                if ram_total_bytes > RAM_TOTAL_BYTES_MAX {
                    return Err(ConfigError::invalid(
                        format!("{p}.namespace[{ni}].size"),
                        format!("ram namespaces add up to more than {}", format_size(RAM_TOTAL_BYTES_MAX)),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Validate one namespace (its nsid is already set) and fill its defaults.
/// Returns its configured size in bytes (0 when it comes from the file/device).
fn normalize_namespace(p: &str, nqn: &str, ns: &mut NamespaceConfig, ids: &mut SeenIds) -> Result<u64, ConfigError> {
    let nsid = ns.nsid.unwrap_or(0);
    debug_assert!(nsid != 0, "nsid is assigned before normalize_namespace");
    let kind = ns.kind.as_str();
    if !matches!(kind, "null" | "ram" | "file" | "block") {
        return Err(ConfigError::invalid(
            format!("{p}.kind"),
            format!("{kind:?} is not one of \"null\", \"ram\", \"file\", \"block\""),
        ));
    }
    let block_size = *ns.block_size.get_or_insert(DEFAULT_BLOCK_SIZE);
    if block_size != 512 && block_size != 4096 {
        return Err(ConfigError::invalid(format!("{p}.block_size"), format!("{block_size} is not 512 or 4096")));
    }
    match (kind, &ns.path) {
        ("file" | "block", None) => {
            return Err(ConfigError::invalid(format!("{p}.path"), format!("a {kind} namespace needs a path")));
        }
        ("file" | "block", Some(path)) if path.is_empty() || path.contains('\0') => {
            return Err(ConfigError::invalid(format!("{p}.path"), format!("{path:?} is not a usable path")));
        }
        ("null" | "ram", Some(_)) => {
            return Err(ConfigError::invalid(format!("{p}.path"), format!("a {kind} namespace has no path")));
        }
        _ => {}
    }
    let mut bytes = 0;
    match (kind, &ns.size) {
        ("null" | "ram", None) => {
            return Err(ConfigError::invalid(format!("{p}.size"), format!("a {kind} namespace needs a size")));
        }
        ("block", Some(_)) => {
            return Err(ConfigError::invalid(
                format!("{p}.size"),
                "a block namespace takes its size from the device (remove size)",
            ));
        }
        (_, Some(size)) => {
            let key = format!("{p}.size");
            bytes = parse_size(size).map_err(|e| ConfigError::invalid(&key, e.to_string()))?;
            if bytes == 0 {
                return Err(ConfigError::invalid(key, "must not be 0"));
            }
            if !bytes.is_multiple_of(u64::from(block_size)) {
                return Err(ConfigError::invalid(
                    key,
                    format!("{size:?} is not a multiple of the block size ({block_size})"),
                ));
            }
            if bytes > NAMESPACE_BYTES_MAX {
                return Err(ConfigError::invalid(
                    key,
                    format!("{size:?} is above {}", format_size(NAMESPACE_BYTES_MAX)),
                ));
            }
            if kind == "ram" && bytes > RAM_TOTAL_BYTES_MAX {
                return Err(ConfigError::invalid(
                    key,
                    format!("{size:?} is above {}", format_size(RAM_TOTAL_BYTES_MAX)),
                ));
            }
        }
        // file: the size of the existing file; block: the size of the device.
        (_, None) => {}
    }
    let ana = *ns.ana_group.get_or_insert(1);
    if !(1..=ANA_GROUP_ID_MAX).contains(&ana) {
        return Err(ConfigError::invalid(format!("{p}.ana_group"), format!("{ana} is outside 1..={ANA_GROUP_ID_MAX}")));
    }

    let nguid = match &ns.nguid {
        None => derived_nguid(nqn, nsid),
        Some(s) => parse_hex::<16>(s).filter(|v| *v != [0; 16]).ok_or_else(|| {
            ConfigError::invalid(format!("{p}.nguid"), format!("{s:?} is not 32 hex digits (and not all zero)"))
        })?,
    };
    let uuid = match &ns.uuid {
        None => derived_uuid(nqn, nsid),
        Some(s) => parse_uuid(s).filter(|v| *v != [0; 16]).ok_or_else(|| {
            ConfigError::invalid(
                format!("{p}.uuid"),
                format!("{s:?} is not a UUID like 01234567-89ab-cdef-0123-456789abcdef (and not all zero)"),
            )
        })?,
    };
    let eui64 = match &ns.eui64 {
        None => derived_eui64(nqn, nsid),
        Some(s) => parse_hex::<8>(s).filter(|v| *v != [0; 8]).ok_or_else(|| {
            ConfigError::invalid(format!("{p}.eui64"), format!("{s:?} is not 16 hex digits (and not all zero)"))
        })?,
    };
    if !ids.nguid.insert(nguid) {
        return Err(ConfigError::invalid(format!("{p}.nguid"), "the same NGUID is used by another namespace"));
    }
    if !ids.uuid.insert(uuid) {
        return Err(ConfigError::invalid(format!("{p}.uuid"), "the same UUID is used by another namespace"));
    }
    if !ids.eui64.insert(eui64) {
        return Err(ConfigError::invalid(format!("{p}.eui64"), "the same EUI-64 is used by another namespace"));
    }
    // Canonical spelling (lowercase) so that normalization is idempotent.
    ns.nguid = Some(hex(&nguid));
    ns.uuid = Some(format_uuid(&uuid));
    ns.eui64 = Some(hex(&eui64));
    Ok(bytes)
}

impl SubsystemConfig {
    /// A subsystem with defaults everywhere (any host unless hosts are added).
    pub fn with_namespaces(nqn: &str, namespaces: Vec<NamespaceConfig>) -> SubsystemConfig {
        SubsystemConfig {
            nqn: nqn.to_string(),
            serial: None,
            model: None,
            allow_any_host: None,
            allowed_hosts: Vec::new(),
            io_queues_max: None,
            queue_depth_max: None,
            namespaces,
        }
    }

    /// Whether `host_nqn` may connect (on a normalized config).
    pub fn host_allowed(&self, host_nqn: &str) -> bool {
        self.allow_any_host.unwrap_or(self.allowed_hosts.is_empty()) || self.allowed_hosts.iter().any(|h| h == host_nqn)
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
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_norm(s: &str) -> Result<TargetConfig, ConfigError> {
        TargetConfig::from_toml_str(s)?.normalized()
    }

    const BASE: &str = r#"
[[listener]]
addr = "127.0.0.1:4420"
[[subsystem]]
nqn = "nqn.2026-11.io.nvmf:a"
[[subsystem.namespace]]
kind = "ram"
size = "1MiB"
"#;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("1k"), Ok(1024));
        assert_eq!(parse_size("2 MiB"), Ok(2 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1gib"), Ok(1 << 30));
        assert_eq!(parse_size("3TiB"), Ok(3 << 40));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("1KB"), Ok(1000));
        assert_eq!(parse_size("5MB"), Ok(5_000_000));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("2TB"), Ok(2_000_000_000_000));
        for bad in ["", "GiB", "1XB", "-1", "1.5GiB", "1 G B", "0x10", "99999999999999999999999"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert!(parse_size("1XB").unwrap_err().to_string().contains("\"1XB\" is not a size (use e.g. 512MiB, 1GiB)"));
        assert!(parse_size("20000000TiB").is_err()); // overflow
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(1 << 30), "1.00 GiB");
        assert_eq!(format_size(1536 << 20), "1.50 GiB");
    }

    #[test]
    fn embedded_default_normalizes() {
        let c = TargetConfig::embedded_default().normalized().unwrap();
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.listeners[0].addr, "127.0.0.1:4420");
        assert_eq!(c.listeners[0].port_id, Some(1));
        assert_eq!(c.discovery.listen, vec!["127.0.0.1:8009".to_string()]);
        assert_eq!(c.discovery_port_ids(), vec![2]);
        assert_eq!(c.engine.mode, "interrupt");
        let s = &c.subsystems[0];
        assert_eq!(s.nqn, DEFAULT_SUBSYSTEM_NQN);
        assert_eq!(s.allow_any_host, Some(true));
        assert!(s.host_allowed("nqn.2014-08.org.nvmexpress:uuid:whatever"));
        assert_eq!(s.model.as_deref(), Some("nvmf"));
        let serial = s.serial.as_deref().unwrap();
        assert!(!serial.is_empty() && serial.len() <= 20 && serial.is_ascii());
        assert_eq!(s.io_queues_max, Some(c.limits.io_queues_max));
        assert_eq!(s.queue_depth_max, Some(c.limits.queue_depth_max));
        let ns = &s.namespaces[0];
        assert_eq!(ns.kind, "ram");
        assert_eq!(ns.nsid, Some(1));
        assert_eq!(ns.size_bytes(), Some(1 << 30));
        assert_eq!(ns.block_size, Some(512));
        assert_eq!(ns.ana_group, Some(1));
        let (nguid, uuid, eui64) = ns.ids().unwrap();
        assert_ne!(nguid, [0; 16]);
        assert_eq!(uuid[6] >> 4, 8, "UUID version 8");
        assert_eq!(uuid[8] >> 6, 0b10, "RFC variant");
        assert_ne!(eui64, [0; 8]);
        assert_eq!(ns.nguid.as_ref().unwrap().len(), 32);
        assert_eq!(ns.eui64.as_ref().unwrap().len(), 16);
    }

    #[test]
    fn defaults_are_stable_and_distinct() {
        let a = TargetConfig::embedded_default().normalized().unwrap();
        let b = TargetConfig::embedded_default().normalized().unwrap();
        assert_eq!(a, b);
        // Known value: changing the derivation would change IDs hosts already recorded.
        assert_eq!(derived_serial(DEFAULT_SUBSYSTEM_NQN), a.subsystems[0].serial.clone().unwrap());
        assert_ne!(derived_nguid("nqn.2026-11.io.nvmf:a", 1), derived_nguid("nqn.2026-11.io.nvmf:a", 2));
        assert_ne!(derived_nguid("nqn.2026-11.io.nvmf:a", 1), derived_nguid("nqn.2026-11.io.nvmf:b", 1));
        assert_ne!(derived_uuid("nqn.2026-11.io.nvmf:a", 1), derived_uuid("nqn.2026-11.io.nvmf:a", 2));
        assert_ne!(derived_eui64("nqn.2026-11.io.nvmf:a", 1), derived_eui64("nqn.2026-11.io.nvmf:a", 2));
        assert_ne!(derived_serial("nqn.2026-11.io.nvmf:a"), derived_serial("nqn.2026-11.io.nvmf:b"));
    }

    #[test]
    fn nsid_and_port_id_filling() {
        let c = parse_norm(
            r#"
[[listener]]
addr = "127.0.0.1:4420"
port_id = 2
[[listener]]
addr = "127.0.0.1:4421"
[[listener]]
addr = "[::1]:4420"
[discovery]
listen = ["127.0.0.1:8009", "127.0.0.1:8010"]
referrals = [{ addr = "10.0.0.1:8009" }]
[[subsystem]]
nqn = "nqn.2026-11.io.nvmf:a"
allowed_hosts = ["nqn.2026-11.io.nvmf:host1"]
[[subsystem.namespace]]
kind = "null"
size = "1TiB"
[[subsystem.namespace]]
nsid = 1
kind = "ram"
size = "4MiB"
block_size = 4096
[[subsystem.namespace]]
kind = "file"
path = "/tmp/x.img"
"#,
        )
        .unwrap();
        let ports: Vec<_> = c.listeners.iter().map(|l| l.port_id.unwrap()).collect();
        // Explicit 2; position 2 is taken so the next free id (3); position 3 is taken so 4.
        assert_eq!(ports, vec![2, 3, 4]);
        assert_eq!(c.discovery_port_ids(), vec![5, 6]);
        assert_eq!(c.discovery.referrals[0].port_id, Some(1));
        let s = &c.subsystems[0];
        let nsids: Vec<_> = s.namespaces.iter().map(|n| n.nsid.unwrap()).collect();
        assert_eq!(nsids, vec![2, 1, 3]);
        assert_eq!(s.allow_any_host, Some(false));
        assert!(s.host_allowed("nqn.2026-11.io.nvmf:host1"));
        assert!(!s.host_allowed("nqn.2026-11.io.nvmf:host2"));
        assert_eq!(s.namespaces[2].size_bytes(), None);
    }

    #[test]
    fn explicit_ids_are_canonicalized() {
        let c = parse_norm(&BASE.replace(
            "size = \"1MiB\"",
            "size = \"1MiB\"\nnguid = \"0123456789ABCDEF0123456789ABCDEF\"\nuuid = \"F81D4FAE-7DEC-11D0-A765-00A0C91E6BF6\"\neui64 = \"0011223344556677\"",
        ))
        .unwrap();
        let ns = &c.subsystems[0].namespaces[0];
        assert_eq!(ns.nguid.as_deref(), Some("0123456789abcdef0123456789abcdef"));
        assert_eq!(ns.uuid.as_deref(), Some("f81d4fae-7dec-11d0-a765-00a0c91e6bf6"));
        let (nguid, uuid, eui64) = ns.ids().unwrap();
        assert_eq!(nguid[0], 0x01);
        assert_eq!(uuid[0], 0xf8);
        assert_eq!(eui64, [0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77]);
        assert_eq!(c.normalized().unwrap(), c);
    }

    /// Each bad input must fail with a message naming the key.
    #[test]
    fn validation_errors_name_the_key() {
        let ns2 = "[[subsystem.namespace]]\nkind = \"ram\"\nsize = \"1MiB\"\n";
        let sub = |nqn: &str, extra: &str| format!("[[subsystem]]\nnqn = \"{nqn}\"\n{extra}\n{ns2}");
        let lst = "[[listener]]\naddr = \"127.0.0.1:4420\"\n";
        let ok_sub = sub("nqn.2026-11.io.nvmf:a", "");
        let with_ns = |ns: &str| format!("{lst}{}[[subsystem.namespace]]\n{ns}\n", ok_sub);
        let cases: Vec<(String, &str)> = vec![
            // parse-level
            (format!("{lst}bogus = 1\n"), "bogus"),
            (format!("{lst}[limits]\nqueue_dept_max = 4\n"), "queue_dept_max"),
            (format!("{lst}{ok_sub}colour = \"red\"\n"), "colour"),
            (format!("{lst}[[subsystem]]\nnqn = 5\n"), "nqn"),
            ("[[listener]]\nadress = \"x\"\n".into(), "adress"),
            // listeners
            (ok_sub.clone(), "listener"),
            ("[[listener]]\naddr = \"localhost:4420\"\n".into(), "listener[0].addr"),
            ("[[listener]]\naddr = \"127.0.0.1\"\n".into(), "listener[0].addr"),
            (format!("{lst}{lst}"), "listener[1].addr"),
            (format!("{lst}[discovery]\nlisten = [\"127.0.0.1:4420\"]\n"), "discovery.listen[0]"),
            (format!("{lst}[discovery]\nlisten = [\"nope\"]\n"), "discovery.listen[0]"),
            (format!("{lst}port_id = 3\n[[listener]]\naddr = \"127.0.0.1:1\"\nport_id = 3\n"), "listener[1].port_id"),
            (
                format!("[[listener]]\naddr = \"127.0.0.1:4420\"\nsubsystems = [\"nqn.2026-11.io.nvmf:zz\"]\n{ok_sub}"),
                "listener[0].subsystems[0]",
            ),
            (format!("{lst}[[discovery.referrals]]\naddr = \"10.0.0.1:0\"\n"), "discovery.referrals[0].addr"),
            // engine / limits
            (format!("{lst}[engine]\nmode = \"busy\"\n"), "engine.mode"),
            (format!("{lst}[engine]\ncores = \"3-1\"\n"), "engine.cores"),
            (format!("{lst}[engine]\npoll_direct_recv_conns_max = 1025\n"), "engine.poll_direct_recv_conns_max"),
            (format!("{lst}[limits]\nqueue_depth_max = 1\n"), "limits.queue_depth_max"),
            (format!("{lst}[limits]\nqueue_depth_max = 5000\n"), "limits.queue_depth_max"),
            (format!("{lst}[limits]\nio_queues_max = 0\n"), "limits.io_queues_max"),
            (format!("{lst}[limits]\nin_capsule_data_bytes = 100\n"), "limits.in_capsule_data_bytes"),
            (format!("{lst}[limits]\nmdts_bytes = 12288\n"), "limits.mdts_bytes"),
            (format!("{lst}[limits]\nmdts_bytes = 16777216\n"), "limits.mdts_bytes"),
            (format!("{lst}[limits]\nmax_h2c_data_bytes = 100\n"), "limits.max_h2c_data_bytes"),
            (format!("{lst}[limits]\naer_max = 17\n"), "limits.aer_max"),
            (format!("{lst}[limits]\nkato_default_ms = 10\nkato_max_ms = 5\n"), "limits.kato_default_ms"),
            (format!("{lst}[limits]\nconnect_timeout_ms = 1\n"), "limits.connect_timeout_ms"),
            // subsystems
            (format!("{lst}{}", sub("iqn.2026-11.io.nvmf:a", "")), "subsystem[0].nqn"),
            (format!("{lst}{}", sub(nvmf_proto::DISCOVERY_NQN, "")), "subsystem[0].nqn"),
            (format!("{lst}{ok_sub}{ok_sub}"), "subsystem[1].nqn"),
            (
                format!("{lst}{}", sub("nqn.2026-11.io.nvmf:a", "serial = \"123456789012345678901\"")),
                "subsystem[0].serial",
            ),
            (format!("{lst}{}", sub("nqn.2026-11.io.nvmf:a", "serial = \"\"")), "subsystem[0].serial"),
            (format!("{lst}{}", sub("nqn.2026-11.io.nvmf:a", "model = \"caf\u{e9}\"")), "subsystem[0].model"),
            (
                format!("{lst}{}", sub("nqn.2026-11.io.nvmf:a", "allowed_hosts = [\"bad host\"]")),
                "subsystem[0].allowed_hosts[0]",
            ),
            (
                format!(
                    "{lst}{}",
                    sub("nqn.2026-11.io.nvmf:a", "allowed_hosts = [\"nqn.2026-11.x:h\", \"nqn.2026-11.x:h\"]")
                ),
                "subsystem[0].allowed_hosts[1]",
            ),
            (
                format!(
                    "{lst}{}",
                    sub("nqn.2026-11.io.nvmf:a", "allow_any_host = true\nallowed_hosts = [\"nqn.2026-11.x:h\"]")
                ),
                "subsystem[0].allow_any_host",
            ),
            (format!("{lst}{}", sub("nqn.2026-11.io.nvmf:a", "io_queues_max = 500")), "subsystem[0].io_queues_max"),
            (format!("{lst}{}", sub("nqn.2026-11.io.nvmf:a", "queue_depth_max = 1")), "subsystem[0].queue_depth_max"),
            // namespaces
            (with_ns("kind = \"ram\"\nsize = \"1XB\""), "subsystem[0].namespace[1].size"),
            (with_ns("kind = \"ram\""), "subsystem[0].namespace[1].size"),
            (with_ns("kind = \"ram\"\nsize = \"1000\""), "subsystem[0].namespace[1].size"),
            (with_ns("kind = \"ram\"\nsize = \"0\""), "subsystem[0].namespace[1].size"),
            (with_ns("kind = \"ram\"\nsize = \"100TiB\""), "subsystem[0].namespace[1].size"),
            (with_ns("kind = \"null\"\nsize = \"4194305T\""), "subsystem[0].namespace[1].size"),
            (with_ns("kind = \"ram\"\nsize = \"6KiB\"\nblock_size = 4096"), "subsystem[0].namespace[1].size"),
            (with_ns("kind = \"ram\"\nsize = \"1MiB\"\nblock_size = 1024"), "subsystem[0].namespace[1].block_size"),
            (with_ns("kind = \"ram\"\nsize = \"1MiB\"\npath = \"/x\""), "subsystem[0].namespace[1].path"),
            (with_ns("kind = \"disk\"\nsize = \"1MiB\""), "subsystem[0].namespace[1].kind"),
            (with_ns("kind = \"file\""), "subsystem[0].namespace[1].path"),
            (with_ns("kind = \"block\""), "subsystem[0].namespace[1].path"),
            (with_ns("kind = \"block\"\npath = \"/dev/x\"\nsize = \"1GiB\""), "subsystem[0].namespace[1].size"),
            (
                with_ns("kind = \"ram\"\nsize = \"1MiB\"\nnsid = 1").replace("\"1MiB\"\n[[", "\"1MiB\"\nnsid = 1\n[["),
                "subsystem[0].namespace[1].nsid",
            ),
            (with_ns("kind = \"ram\"\nsize = \"1MiB\"\nnsid = 0"), "subsystem[0].namespace[1].nsid"),
            (with_ns("kind = \"ram\"\nsize = \"1MiB\"\nnsid = 4294967295"), "subsystem[0].namespace[1].nsid"),
            (with_ns("kind = \"ram\"\nsize = \"1MiB\"\nana_group = 0"), "subsystem[0].namespace[1].ana_group"),
            (with_ns("kind = \"ram\"\nsize = \"1MiB\"\nnguid = \"12\""), "subsystem[0].namespace[1].nguid"),
            (
                with_ns("kind = \"ram\"\nsize = \"1MiB\"\nnguid = \"00000000000000000000000000000000\""),
                "subsystem[0].namespace[1].nguid",
            ),
            (with_ns("kind = \"ram\"\nsize = \"1MiB\"\nuuid = \"not-a-uuid\""), "subsystem[0].namespace[1].uuid"),
            (
                with_ns("kind = \"ram\"\nsize = \"1MiB\"\neui64 = \"001122334455667g\""),
                "subsystem[0].namespace[1].eui64",
            ),
        ];
        for (input, key) in cases {
            match parse_norm(&input) {
                Ok(_) => panic!("accepted bad input for {key}:\n{input}"),
                Err(e) => {
                    let msg = e.to_string();
                    assert!(msg.contains(key), "error for {key} does not name it: {msg}\ninput:\n{input}");
                }
            }
        }
    }

    #[test]
    fn bad_size_message_is_exact() {
        let input = format!(
            "{BASE}[[subsystem]]\nnqn = \"nqn.2026-11.io.nvmf:b\"\n[[subsystem.namespace]]\nkind = \"ram\"\nsize = \"1XB\"\n"
        );
        let e = parse_norm(&input).unwrap_err();
        assert_eq!(e.to_string(), "subsystem[1].namespace[0].size: \"1XB\" is not a size (use e.g. 512MiB, 1GiB)");
        assert_eq!(e.key(), Some("subsystem[1].namespace[0].size"));
    }

    #[test]
    fn duplicate_explicit_ids_rejected() {
        let id = "nguid = \"0123456789abcdef0123456789abcdef\"";
        let input = format!(
            "{}{id}\n[[subsystem]]\nnqn = \"nqn.2026-11.io.nvmf:b\"\n[[subsystem.namespace]]\nkind = \"ram\"\nsize = \"1MiB\"\n{id}\n",
            BASE
        );
        let e = parse_norm(&input).unwrap_err();
        assert_eq!(e.key(), Some("subsystem[1].namespace[0].nguid"), "{e}");
    }

    #[test]
    fn port_zero_listeners_may_repeat() {
        let c = parse_norm(&BASE.replace("4420", "0").replace(
            "[[subsystem]]",
            "[[listener]]\naddr = \"127.0.0.1:0\"\n[discovery]\nlisten = [\"127.0.0.1:0\"]\n[[subsystem]]",
        ))
        .unwrap();
        assert_eq!(c.listeners.len(), 2);
    }

    #[test]
    fn from_file_reads_and_reports() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.toml");
        std::fs::write(&p, BASE).unwrap();
        assert!(TargetConfig::from_file(&p).unwrap().normalized().is_ok());
        let missing = TargetConfig::from_file(dir.path().join("missing.toml")).unwrap_err();
        assert!(matches!(missing, ConfigError::Read { .. }), "{missing}");
        std::fs::write(&p, "bogus = 1\n").unwrap();
        let e = TargetConfig::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("t.toml") && e.contains("bogus"), "{e}");
    }

    #[test]
    fn round_trip_of_defaults_and_full_config() {
        for c in [TargetConfig::embedded_default(), TargetConfig::from_toml_str(BASE).unwrap()] {
            let n = c.normalized().unwrap();
            let text = n.to_toml_string().unwrap();
            let back = TargetConfig::from_toml_str(&text).unwrap();
            assert_eq!(back, n, "text:\n{text}");
            assert_eq!(back.normalized().unwrap(), n);
        }
    }

    #[test]
    fn example_files_are_valid() {
        let examples = [
            ("target-ram.toml", include_str!("../../../examples/target-ram.toml")),
            ("target-file.toml", include_str!("../../../examples/target-file.toml")),
            ("target-multi.toml", include_str!("../../../examples/target-multi.toml")),
        ];
        for (name, text) in examples {
            let c = TargetConfig::from_toml_str(text)
                .and_then(|c| c.normalized())
                .unwrap_or_else(|e| panic!("examples/{name}: {e}"));
            let back = TargetConfig::from_toml_str(&c.to_toml_string().unwrap()).unwrap();
            assert_eq!(back.normalized().unwrap(), c, "examples/{name} round trip");
        }
        let multi = TargetConfig::from_toml_str(examples[2].1).unwrap().normalized().unwrap();
        assert_eq!(multi.subsystems.len(), 2);
        assert_eq!(multi.listeners.len(), 2);
        assert!(multi.subsystems.iter().any(|s| !s.allowed_hosts.is_empty()));
    }

    // ---- property tests ----

    fn nqn_strategy() -> impl Strategy<Value = String> {
        "[a-z0-9]{1,12}(:[a-z0-9.-]{1,12})?".prop_map(|tail| format!("nqn.2026-11.io.test:{tail}"))
    }

    fn namespace_strategy() -> impl Strategy<Value = NamespaceConfig> {
        (
            prop_oneof![Just("ram"), Just("null"), Just("file"), Just("block")],
            1u64..64,
            prop_oneof![Just("KiB"), Just("MiB"), Just("GiB"), Just("K"), Just("M")],
            prop_oneof![Just(None), Just(Some(512u32)), Just(Some(4096u32))],
            proptest::option::of(1u32..=ANA_GROUP_ID_MAX),
            proptest::option::of(any::<[u8; 8]>()),
            any::<bool>(),
        )
            .prop_map(|(kind, n, unit, block_size, ana_group, eui, sized_file)| {
                let mut ns = NamespaceConfig::new(kind);
                ns.block_size = block_size;
                ns.ana_group = ana_group;
                // Multiples of 4 KiB are valid for both block sizes.
                let size = format!("{}{unit}", n * 4);
                match kind {
                    "ram" | "null" => ns.size = Some(size),
                    "file" => {
                        ns.path = Some(format!("/tmp/ns-{n}.img"));
                        if sized_file {
                            ns.size = Some(size);
                        }
                    }
                    _ => ns.path = Some(format!("/dev/test{n}")),
                }
                ns.eui64 = eui.filter(|e| *e != [0; 8]).map(|e| hex(&e));
                ns
            })
    }

    fn config_strategy() -> impl Strategy<Value = TargetConfig> {
        let subsystem = (
            nqn_strategy(),
            proptest::option::of("[A-Za-z0-9]([A-Za-z0-9 _-]{0,18}[A-Za-z0-9])?"),
            proptest::option::of("[A-Za-z0-9][A-Za-z0-9 ]{0,30}[A-Za-z0-9\"\\\\]"),
            proptest::collection::vec(nqn_strategy(), 0..3),
            proptest::option::of(1u32..=8),
            proptest::collection::vec(namespace_strategy(), 0..4),
        )
            .prop_map(|(nqn, serial, model, mut hosts, io_queues, namespaces)| {
                hosts.sort();
                hosts.dedup();
                let mut s = SubsystemConfig::with_namespaces(&nqn, namespaces);
                s.serial = serial;
                s.model = model;
                s.allowed_hosts = hosts;
                s.io_queues_max = io_queues;
                s
            });
        (
            proptest::collection::vec((1024u16..60000, proptest::option::of(1u16..100)), 1..4),
            proptest::collection::vec(1024u16..60000, 0..3),
            proptest::collection::vec(subsystem, 0..4),
            prop_oneof![Just("poll"), Just("interrupt")],
            prop_oneof![Just(""), Just("0"), Just("0,2-3")],
            2u32..=1024,
        )
            .prop_map(|(listen, disc, mut subsystems, mode, cores, depth)| {
                let mut seen = HashSet::new();
                subsystems.retain(|s| seen.insert(s.nqn.clone()));
                let mut c = TargetConfig::embedded_default();
                c.subsystems = subsystems;
                c.engine.mode = mode.into();
                c.engine.cores = cores.into();
                c.limits.queue_depth_max = depth;
                let mut ids = HashSet::new();
                c.listeners = listen
                    .into_iter()
                    .filter(|(p, _)| !disc.contains(p))
                    .map(|(port, id)| ListenerConfig {
                        addr: format!("127.0.0.1:{port}"),
                        port_id: id.filter(|i| ids.insert(*i)),
                        subsystems: Vec::new(),
                    })
                    .collect();
                c.discovery.listen = disc.iter().map(|p| format!("127.0.0.2:{p}")).collect();
                c
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn normalized_round_trips_through_toml(c in config_strategy()) {
            // Some generated configs are invalid (duplicate ports, empty listeners): skip those.
            if let Ok(n) = c.normalized() {
                let text = n.to_toml_string().unwrap();
                let back = TargetConfig::from_toml_str(&text).unwrap();
                prop_assert_eq!(&back, &n, "text:\n{}", text);
                prop_assert_eq!(back.normalized().unwrap(), n);
            }
        }

        #[test]
        fn arbitrary_strings_never_panic(s in "\\PC{0,400}") {
            if let Ok(c) = TargetConfig::from_toml_str(&s) {
                let _ = c.normalized();
            }
        }

        #[test]
        fn tomlish_strings_never_panic(
            parts in proptest::collection::vec(prop_oneof![
                Just("[[listener]]\n"), Just("addr = \"127.0.0.1:4420\"\n"), Just("addr = \"[::1]:0\"\n"),
                Just("[[subsystem]]\n"), Just("nqn = \"nqn.2026-11.io.x:y\"\n"), Just("[[subsystem.namespace]]\n"),
                Just("kind = \"ram\"\n"), Just("kind = \"file\"\n"), Just("size = \"1GiB\"\n"), Just("size = \"18446744073709551615T\"\n"),
                Just("nsid = 4294967295\n"), Just("nsid = -1\n"), Just("block_size = 4096\n"), Just("[limits]\n"),
                Just("queue_depth_max = 0\n"), Just("mdts_bytes = 4294967295\n"), Just("[discovery]\n"),
                Just("listen = [\"127.0.0.1:8009\"]\n"), Just("port_id = 65535\n"), Just("uuid = \"\"\n"),
                Just("serial = \"\u{0}\"\n"), Just("[engine]\n"), Just("cores = \"0-1023\"\n"), Just("=\n"), Just("\"\n"),
            ], 0..24)
        ) {
            let s: String = parts.concat();
            if let Ok(c) = TargetConfig::from_toml_str(&s) {
                if let Ok(n) = c.normalized() {
                    let back = TargetConfig::from_toml_str(&n.to_toml_string().unwrap()).unwrap();
                    prop_assert_eq!(back.normalized().unwrap(), n);
                }
            }
        }
    }
}
