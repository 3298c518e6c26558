//! Loading, validation and normalization: every default filled in, every
//! bound checked, errors naming the key.

use super::*;

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
            listeners: vec![ListenerConfig {
                addr: DEFAULT_LISTEN_ADDR.into(),
                port_id: None,
                subsystems: Vec::new(),
                tls: Default::default(),
            }],
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

/// Names the controller may pick for DH-HMAC-CHAP (as Linux nvmet's
/// `dhchap_hash` and `dhchap_dhgroup` attributes take them).
pub const DHCHAP_HASH_NAMES: [&str; 3] = ["sha256", "sha384", "sha512"];
pub const DHCHAP_DHGROUP_NAMES: [&str; 6] = ["null", "ffdhe2048", "ffdhe3072", "ffdhe4096", "ffdhe6144", "ffdhe8192"];

/// Check one `[[subsystem.host]]` table (secrets are checked when they are
/// loaded: a file may not exist yet when a configuration is written).
fn normalize_host(p: &str, h: &HostConfig) -> Result<(), ConfigError> {
    check_nqn(&format!("{p}.nqn"), &h.nqn)?;
    for (name, inline, file) in [
        ("dhchap_key", &h.dhchap_key, &h.dhchap_key_file),
        ("dhchap_ctrl_key", &h.dhchap_ctrl_key, &h.dhchap_ctrl_key_file),
        ("tls_key", &h.tls_key, &h.tls_key_file),
    ] {
        if inline.is_some() && file.is_some() {
            return Err(ConfigError::invalid(format!("{p}.{name}"), format!("give {name} or {name}_file, not both")));
        }
    }
    let has = |inline: &Option<String>, file: &Option<String>| inline.is_some() || file.is_some();
    if has(&h.dhchap_ctrl_key, &h.dhchap_ctrl_key_file) && !has(&h.dhchap_key, &h.dhchap_key_file) {
        return Err(ConfigError::invalid(
            format!("{p}.dhchap_ctrl_key"),
            "a controller key needs a host key (the controller authenticates after the host)",
        ));
    }
    if let Some(v) = &h.dhchap_hash {
        if !DHCHAP_HASH_NAMES.contains(&v.as_str()) {
            return Err(ConfigError::invalid(
                format!("{p}.dhchap_hash"),
                format!("{v:?} is not one of {DHCHAP_HASH_NAMES:?}"),
            ));
        }
    }
    if let Some(v) = &h.dhchap_dhgroup {
        if !DHCHAP_DHGROUP_NAMES.contains(&v.as_str()) {
            return Err(ConfigError::invalid(
                format!("{p}.dhchap_dhgroup"),
                format!("{v:?} is not one of {DHCHAP_DHGROUP_NAMES:?}"),
            ));
        }
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
        if s.hosts.len() > ALLOWED_HOSTS_MAX {
            return Err(ConfigError::invalid(format!("{p}.host"), format!("more than {ALLOWED_HOSTS_MAX}")));
        }
        let mut table_hosts = HashSet::new();
        for (hi, h) in s.hosts.iter().enumerate() {
            normalize_host(&format!("{p}.host[{hi}]"), h)?;
            if !table_hosts.insert(h.nqn.clone()) {
                return Err(ConfigError::invalid(
                    format!("{p}.host[{hi}].nqn"),
                    format!("{:?} is listed twice", h.nqn),
                ));
            }
        }
        match s.allow_any_host {
            None => s.allow_any_host = Some(s.allowed_hosts.is_empty() && s.hosts.is_empty()),
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
    if ns.hosts.len() > NAMESPACE_HOSTS_MAX {
        return Err(ConfigError::invalid(format!("{p}.hosts"), format!("more than {NAMESPACE_HOSTS_MAX} hosts")));
    }
    let mut hosts = HashSet::new();
    for (hi, h) in ns.hosts.iter().enumerate() {
        let key = format!("{p}.hosts[{hi}]");
        check_nqn(&key, h)?;
        if !hosts.insert(h) {
            return Err(ConfigError::invalid(key, format!("{h:?} is listed twice")));
        }
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
