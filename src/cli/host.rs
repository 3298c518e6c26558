//! `nvmf discover|identify|read|write`: host commands on top of nvmf-host,
//! with nvme-cli's flag names and output shapes.

use std::io::{Read, Write};

use anyhow::{bail, Context, Result};
use nvmf_host::{ConnectOptions, Controller, DiscoveryEntry};
use nvmf_proto::identify::{IdentifyController, IdentifyNamespace};
use nvmf_proto::log::{adrfam, eflags, subtype, treq, trtype};
use serde_json::Value;

use super::keys::{parse_dhchap_secret, SecretText};
use nvmf_proto::auth::tls_psk::{HkdfLabelLayout, IdentityVersion};

/// Most bytes `read`/`write` hold in memory at once (the range is processed in windows).
const WINDOW_BYTES_MAX: usize = 16 << 20;
/// Most namespaces `identify` shows without --namespace.
const IDENTIFY_NAMESPACES_MAX: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Normal,
    Json,
}

/// Connection flags shared by every host command (nvme-cli names).
#[derive(clap::Args, Debug)]
pub struct ConnArgs {
    /// Transport address of the controller (IPv4/IPv6 address or host name).
    #[arg(short = 'a', long)]
    pub traddr: String,
    /// Transport type (only "tcp"; accepted for nvme-cli compatibility).
    #[arg(short = 't', long, default_value = "tcp")]
    pub trtype: String,
    /// Host NQN (default: /etc/nvme/hostnqn, else a UUID NQN from the host ID).
    #[arg(short = 'q', long)]
    pub hostnqn: Option<String>,
    /// Host ID as a UUID (default: /etc/nvme/hostid, else from the host NQN, else random).
    #[arg(short = 'I', long)]
    pub hostid: Option<String>,
    /// Enable header digests (CRC32C).
    #[arg(short = 'g', long)]
    pub hdr_digest: bool,
    /// Enable data digests (CRC32C).
    #[arg(short = 'G', long)]
    pub data_digest: bool,
    /// I/O queues to open (default 1; `connect`: one per CPU).
    #[arg(short = 'i', long)]
    pub nr_io_queues: Option<u16>,
    /// Entries per I/O queue (16..=1024).
    #[arg(short = 'Q', long, default_value_t = nvmf_host::options::QUEUE_SIZE_DEFAULT)]
    pub queue_size: u16,
    /// Keep Alive Timeout in seconds (0 disables keep alive).
    #[arg(short = 'k', long)]
    pub keep_alive_tmo: Option<u32>,
    /// Seconds between reconnect attempts after a connection loss.
    #[arg(short = 'c', long, default_value_t = nvmf_host::options::RECONNECT_DELAY_DEFAULT_S)]
    pub reconnect_delay: u32,
    /// Seconds after which a lost controller is given up (0: no reconnect).
    #[arg(short = 'l', long, default_value_t = nvmf_host::options::CTRL_LOSS_TMO_DEFAULT_S)]
    pub ctrl_loss_tmo: u32,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "normal")]
    pub output_format: OutputFormat,
    #[command(flatten)]
    pub auth: AuthArgs,
}

/// Security flags (nvme-cli names): in-band authentication (DH-HMAC-CHAP) and
/// TLS, shared by every command that connects. The secrets are parsed here and
/// never printed back.
#[derive(clap::Args, Debug, Clone)]
pub struct AuthArgs {
    /// DH-HMAC-CHAP host secret (DHHC-1:hh:<base64>:, see gen-dhchap-key); every queue the
    /// controller asks to authenticate proves it.
    #[arg(short = 'S', long, value_name = "KEY")]
    pub dhchap_secret: Option<SecretText>,
    /// DH-HMAC-CHAP controller secret (DHHC-1:hh:<base64>:); the controller must prove it too
    /// (bidirectional authentication, on every queue). Needs --dhchap-secret.
    #[arg(short = 'C', long, value_name = "KEY")]
    pub dhchap_ctrl_secret: Option<SecretText>,
    /// Connect over TLS 1.3 with a pre-shared key (NVMe/TCP TLS); needs --tls-key (no kernel
    /// keyring is looked up). Every queue does its own handshake.
    #[arg(long)]
    pub tls: bool,
    /// TLS PSK in the interchange format (NVMeTLSkey-1:hh:<base64>:, see gen-tls-key); implies
    /// --tls. The identity and the TLS PSK are derived from it and the host and subsystem NQNs,
    /// as nvme-cli/libnvme do.
    #[arg(long, value_name = "KEY")]
    pub tls_key: Option<SecretText>,
    /// Offer this TLS PSK identity; --tls-key (hh 01 or 02) is then the TLS PSK itself, as
    /// `nvme tls-key --export` prints it (nvme-cli semantics).
    #[arg(long, value_name = "IDENTITY")]
    pub tls_key_identity: Option<String>,
    /// Derive with the HKDF layout of libnvme before 1.16 (nvme-cli `--compat`): for a
    /// controller whose keyring was filled by such a libnvme (e.g. nvme-cli 2.13).
    #[arg(long)]
    pub tls_key_compat: bool,
    /// TLS PSK identity version of the derived identity: 1 (NVMe1Rhh ... <digest>, what
    /// libnvme's connect offers) or 0 (NVMe0Rhh <hostnqn> <subnqn>).
    #[arg(long, value_name = "0|1", default_value_t = 1)]
    pub tls_identity_version: u8,
    /// Offer a SHA-384 PSK (hh 02) with the SHA-256 suite TLS_AES_128_GCM_SHA256: for Linux
    /// targets whose tlshd runs on GnuTLS before 3.8.10 (SHA-256 binders only), e.g. Debian 13.
    #[arg(long)]
    pub tls_sha256_suite: bool,
    /// Secure channel concatenation (NVMe/TCP TLS keyed by DH-HMAC-CHAP): authenticate the admin
    /// queue in clear, then reconnect every queue over TLS with the generated PSK. Needs
    /// --dhchap-secret and a DH group; no --tls flags.
    #[arg(long)]
    pub concat: bool,
    // nvme-cli flags accepted so such command lines get a clear answer.
    #[arg(long, hide = true)]
    pub keyring: Option<String>,
}

/// Host secret, controller secret, --concat.
pub type DhchapSecrets = (Option<nvmf_host::DhchapKey>, Option<nvmf_host::DhchapKey>, bool);

impl AuthArgs {
    /// The DH-HMAC-CHAP secrets and whether to concatenate (--concat needs
    /// --dhchap-secret and refuses the TLS flags). --keyring is refused.
    pub fn dhchap_secrets_concat(&self) -> Result<DhchapSecrets> {
        if self.keyring.is_some() {
            bail!("--keyring: kernel keyrings are not used; give the TLS PSK with --tls-key");
        }
        if self.concat {
            if self.dhchap_secret.is_none() {
                bail!("--concat (secure channel concatenation) needs --dhchap-secret");
            }
            if let Some(flag) = self.tls_flag() {
                bail!("--concat generates the TLS PSK: drop {flag}");
            }
        }
        let host = self.dhchap_secret.as_ref().map(|t| parse_dhchap_secret("--dhchap-secret", t)).transpose()?;
        let ctrl =
            self.dhchap_ctrl_secret.as_ref().map(|t| parse_dhchap_secret("--dhchap-ctrl-secret", t)).transpose()?;
        if ctrl.is_some() && host.is_none() {
            bail!("--dhchap-ctrl-secret needs --dhchap-secret too");
        }
        Ok((host, ctrl, self.concat))
    }

    /// The first TLS flag given, if any.
    pub fn tls_flag(&self) -> Option<&'static str> {
        [
            (self.tls, "--tls"),
            (self.tls_key.is_some(), "--tls-key"),
            (self.tls_key_identity.is_some(), "--tls-key-identity"),
            (self.tls_key_compat, "--tls-key-compat"),
            (self.tls_identity_version != 1, "--tls-identity-version"),
            (self.tls_sha256_suite, "--tls-sha256-suite"),
        ]
        .into_iter()
        .find_map(|(given, flag)| given.then_some(flag))
    }

    /// The TLS settings: none without TLS flags. Errors name the flag, never the key.
    pub fn tls_options(&self) -> Result<Option<nvmf_host::TlsOptions>> {
        let Some(text) = &self.tls_key else {
            return match self.tls_flag() {
                None => Ok(None),
                Some("--tls") => bail!(
                    "--tls needs --tls-key NVMeTLSkey-1:hh:<base64>: (nvmf does not look keys up in the kernel \
                     keyring, as nvme-cli does without --tls-key)"
                ),
                Some(flag) => bail!("{flag} needs --tls-key"),
            };
        };
        let mut o =
            nvmf_host::TlsOptions::from_interchange(text.as_str()).map_err(|e| anyhow::anyhow!("--tls-key: {e}"))?;
        o.identity_version = match self.tls_identity_version {
            0 => IdentityVersion::V0,
            1 => IdentityVersion::V1,
            v => bail!("--tls-identity-version {v}: must be 0 or 1"),
        };
        if self.tls_key_compat {
            o.layout = HkdfLabelLayout::LibnvmeLegacy;
        }
        o.identity = self.tls_key_identity.clone();
        o.sha256_suite = self.tls_sha256_suite;
        Ok(Some(o))
    }
}

impl ConnArgs {
    pub(crate) fn options(&self, subnqn: &str, default_kato_s: u32) -> Result<ConnectOptions> {
        if !self.trtype.eq_ignore_ascii_case("tcp") {
            bail!("transport {:?} not supported (only tcp)", self.trtype);
        }
        let mut o = ConnectOptions::new(subnqn);
        if let Some(id) = &self.hostid {
            o.hostid = nvmf_host::options::parse_uuid(id).with_context(|| format!("host ID {id:?} is not a UUID"))?;
            if self.hostnqn.is_none() && !std::path::Path::new(nvmf_host::options::HOSTNQN_PATH).exists() {
                o.hostnqn = nvmf_host::options::default_hostnqn(&o.hostid);
            }
        }
        if let Some(n) = &self.hostnqn {
            o.hostnqn = n.clone();
        }
        o.hdr_digest = self.hdr_digest;
        o.data_digest = self.data_digest;
        o.nr_io_queues = self.nr_io_queues.unwrap_or(1);
        o.queue_size = self.queue_size;
        o.kato_s = self.keep_alive_tmo.unwrap_or(default_kato_s);
        o.reconnect_delay_s = self.reconnect_delay;
        o.ctrl_loss_tmo_s = self.ctrl_loss_tmo;
        (o.dhchap_secret, o.dhchap_ctrl_secret, o.concat) = self.auth.dhchap_secrets_concat()?;
        o.tls = self.auth.tls_options()?;
        o.validate().map_err(anyhow::Error::msg)?;
        Ok(o)
    }

    pub(crate) fn addr(&self, port: &str) -> Result<String> {
        let port: u16 = port.parse().with_context(|| format!("trsvcid {port:?} is not a port number"))?;
        // Bare IPv6 literals need brackets to carry a port.
        Ok(if self.traddr.contains(':') && !self.traddr.starts_with('[') {
            format!("[{}]:{port}", self.traddr)
        } else {
            format!("{}:{port}", self.traddr)
        })
    }
}

#[derive(clap::Args, Debug)]
pub struct DiscoverArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Transport service ID (TCP port) of the discovery controller.
    #[arg(short = 's', long, default_value = "8009")]
    pub trsvcid: String,
    /// Discovery subsystem NQN.
    #[arg(short = 'n', long, default_value = nvmf_proto::DISCOVERY_NQN)]
    pub nqn: String,
}

#[derive(clap::Args, Debug)]
pub struct IdentifyArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Transport service ID (TCP port).
    #[arg(short = 's', long, default_value = "4420")]
    pub trsvcid: String,
    /// Subsystem NQN.
    #[arg(short = 'n', long)]
    pub nqn: String,
    /// Only this namespace (default: the controller and every active namespace).
    #[arg(long)]
    pub namespace: Option<u32>,
}

#[derive(clap::Args, Debug)]
pub struct IoArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Transport service ID (TCP port).
    #[arg(short = 's', long, default_value = "4420")]
    pub trsvcid: String,
    /// Subsystem NQN.
    #[arg(short = 'n', long)]
    pub nqn: String,
    /// Namespace ID.
    #[arg(long, default_value_t = 1)]
    pub namespace_id: u32,
    /// First logical block (LBA).
    #[arg(long, default_value_t = 0)]
    pub start_block: u64,
    /// Number of logical blocks, counted from 1 (1 = one block). Large counts
    /// are split into MDTS-sized commands, several in flight.
    #[arg(long)]
    pub block_count: u64,
    /// File to read into / write from; "-" is stdout / stdin.
    #[arg(short = 'd', long)]
    pub data: String,
}

pub type ReadArgs = IoArgs;
pub type WriteArgs = IoArgs;

// ------------------------------------------------------------------ discover

pub fn discover(a: DiscoverArgs) -> Result<()> {
    let opts = a.conn.options(&a.nqn, 0)?;
    let addr = a.conn.addr(&a.trsvcid)?;
    let log = nvmf_host::discover(addr.as_str(), opts).with_context(|| format!("discovery at {addr}"))?;
    let mut out = std::io::stdout().lock();
    match a.conn.output_format {
        OutputFormat::Json => {
            let records = Json::Arr(log.entries.iter().map(entry_json).collect());
            let doc = Json::Obj(vec![("genctr", log.genctr.into()), ("records", records)]);
            writeln!(out, "{}", doc.to_pretty())?;
        }
        OutputFormat::Normal => {
            writeln!(
                out,
                "\nDiscovery Log Number of Records {}, Generation counter {}",
                log.entries.len(),
                log.genctr
            )?;
            for (i, e) in log.entries.iter().enumerate() {
                writeln!(out, "=====Discovery Log Entry {i}======")?;
                writeln!(out, "trtype:  {}", trtype_str(e.trtype))?;
                writeln!(out, "adrfam:  {}", adrfam_str(e.adrfam))?;
                writeln!(out, "subtype: {}", subtype_str(e.subtype))?;
                writeln!(out, "treq:    {}", treq_str(e.treq))?;
                writeln!(out, "portid:  {}", e.portid)?;
                writeln!(out, "trsvcid: {}", e.trsvcid)?;
                writeln!(out, "subnqn:  {}", e.subnqn)?;
                writeln!(out, "traddr:  {}", e.traddr)?;
                writeln!(out, "eflags:  {}", eflags_str(e.eflags))?;
                writeln!(out, "sectype: {}", sectype_str(e.sectype))?;
            }
        }
    }
    Ok(())
}

fn entry_json(e: &DiscoveryEntry) -> Json {
    Json::Obj(vec![
        ("trtype", trtype_str(e.trtype).into()),
        ("adrfam", adrfam_str(e.adrfam).into()),
        ("subtype", subtype_str(e.subtype).into()),
        ("treq", treq_str(e.treq).into()),
        ("portid", e.portid.into()),
        ("trsvcid", e.trsvcid.clone().into()),
        ("subnqn", e.subnqn.clone().into()),
        ("traddr", e.traddr.clone().into()),
        ("eflags", eflags_str(e.eflags).into()),
        ("sectype", sectype_str(e.sectype).into()),
    ])
}

/// JSON that keeps keys in the order written (nvme-cli's order), which
/// `serde_json::Value` without its `preserve_order` feature does not.
enum Json {
    Leaf(Value),
    Obj(Vec<(&'static str, Json)>),
    Arr(Vec<Json>),
}

impl<T: Into<Value>> From<T> for Json {
    fn from(v: T) -> Json {
        Json::Leaf(v.into())
    }
}

impl Json {
    fn render(&self, out: &mut String, indent: usize) {
        let pad = |n: usize| "  ".repeat(n);
        match self {
            Json::Leaf(v) => out.push_str(&v.to_string()),
            Json::Obj(fields) if fields.is_empty() => out.push_str("{}"),
            Json::Arr(items) if items.is_empty() => out.push_str("[]"),
            Json::Obj(fields) => {
                out.push_str("{\n");
                for (i, (k, v)) in fields.iter().enumerate() {
                    out.push_str(&format!("{}{}: ", pad(indent + 1), Value::from(*k)));
                    v.render(out, indent + 1);
                    out.push_str(if i + 1 < fields.len() { ",\n" } else { "\n" });
                }
                out.push_str(&format!("{}}}", pad(indent)));
            }
            Json::Arr(items) => {
                out.push_str("[\n");
                for (i, v) in items.iter().enumerate() {
                    out.push_str(&pad(indent + 1));
                    v.render(out, indent + 1);
                    out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
                }
                out.push_str(&format!("{}]", pad(indent)));
            }
        }
    }
    fn to_pretty(&self) -> String {
        let mut s = String::new();
        self.render(&mut s, 0);
        s
    }
}

fn trtype_str(v: u8) -> String {
    match v {
        trtype::RDMA => "rdma".into(),
        trtype::FC => "fc".into(),
        trtype::TCP => "tcp".into(),
        trtype::LOOP => "loop".into(),
        x => format!("unrecognized ({x})"),
    }
}
fn adrfam_str(v: u8) -> String {
    match v {
        adrfam::IPV4 => "ipv4".into(),
        adrfam::IPV6 => "ipv6".into(),
        3 => "infiniband".into(),
        4 => "fibre-channel".into(),
        254 => "loop".into(),
        x => format!("unrecognized ({x})"),
    }
}
fn subtype_str(v: u8) -> String {
    match v {
        subtype::REFERRAL => "discovery subsystem referral".into(),
        subtype::NVME => "nvme subsystem".into(),
        subtype::CURRENT_DISCOVERY => "current discovery subsystem".into(),
        x => format!("unrecognized ({x})"),
    }
}
fn treq_str(v: u8) -> String {
    let base = match v & 0x3 {
        treq::NOT_SPECIFIED => "not specified",
        treq::REQUIRED => "required",
        treq::NOT_REQUIRED => "not required",
        _ => "reserved",
    };
    if v & treq::DISABLE_SQFLOW != 0 {
        format!("{base}, sq flow control disable supported")
    } else {
        base.into()
    }
}
fn eflags_str(v: u16) -> String {
    let mut parts = Vec::new();
    if v & eflags::DUPLICATE_RETURNED_INFO != 0 {
        parts.push("duplicate discovery information");
    }
    if v & eflags::EXPLICIT_PERSISTENT_CONN != 0 {
        parts.push("explicit discovery connections");
    }
    if v & eflags::NO_CDC_CONNECTIVITY != 0 {
        parts.push("no cdc connectivity");
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}
fn sectype_str(v: u8) -> String {
    match v {
        0 => "none".into(),
        1 => "tls1.2".into(),
        2 => "tls1.3".into(),
        x => format!("unrecognized ({x})"),
    }
}

// ------------------------------------------------------------------ identify

fn connect(conn: &ConnArgs, port: &str, nqn: &str) -> Result<Controller> {
    let opts = conn.options(nqn, nvmf_host::options::KATO_DEFAULT_S)?;
    let addr = conn.addr(port)?;
    Controller::connect(addr.as_str(), opts).with_context(|| format!("connect to {nqn} at {addr}"))
}

pub fn identify(a: IdentifyArgs) -> Result<()> {
    let mut c = connect(&a.conn, &a.trsvcid, &a.nqn)?;
    let id = c.identify_controller().context("Identify Controller")?;
    let nsids = match a.namespace {
        Some(n) => vec![n],
        None => {
            let mut v = c.active_namespaces().context("Identify Active Namespace List")?;
            v.truncate(IDENTIFY_NAMESPACES_MAX);
            v
        }
    };
    let mut namespaces = Vec::new();
    for nsid in &nsids {
        let ns = c.identify_namespace(*nsid).with_context(|| format!("Identify Namespace {nsid}"))?;
        namespaces.push((*nsid, ns));
    }
    let _ = c.disconnect();
    let mut out = std::io::stdout().lock();
    match a.conn.output_format {
        OutputFormat::Json => {
            let mut nss: Vec<Json> = namespaces.iter().map(|(n, ns)| ns_json(*n, ns)).collect();
            let doc = if a.namespace.is_some() && nss.len() == 1 {
                nss.remove(0)
            } else {
                Json::Obj(vec![("controller", ctrl_json(&id)), ("namespaces", Json::Arr(nss))])
            };
            writeln!(out, "{}", doc.to_pretty())?;
        }
        OutputFormat::Normal => {
            if a.namespace.is_none() {
                writeln!(out, "NVME Identify Controller:")?;
                print_ctrl(&mut out, &id)?;
            }
            for (nsid, ns) in &namespaces {
                writeln!(out, "NVME Identify Namespace {nsid}:")?;
                print_ns(&mut out, ns)?;
            }
        }
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn ctrl_json(id: &IdentifyController) -> Json {
    let ieee = u32::from_le_bytes([id.ieee_oui[0], id.ieee_oui[1], id.ieee_oui[2], 0]);
    let fields: Vec<(&'static str, Json)> = vec![
        ("vid", id.vid.into()),
        ("ssvid", id.ssvid.into()),
        ("sn", id.serial.clone().into()),
        ("mn", id.model.clone().into()),
        ("fr", id.firmware.clone().into()),
        ("rab", id.rab.into()),
        ("ieee", ieee.into()),
        ("cmic", id.cmic.into()),
        ("mdts", id.mdts.into()),
        ("cntlid", id.cntlid.into()),
        ("ver", id.ver.into()),
        ("oaes", id.oaes.into()),
        ("ctratt", id.ctratt.into()),
        ("cntrltype", id.cntrltype.into()),
        ("fguid", hex(&id.fguid).into()),
        ("oacs", id.oacs.into()),
        ("acl", id.acl.into()),
        ("aerl", id.aerl.into()),
        ("frmw", id.frmw.into()),
        ("lpa", id.lpa.into()),
        ("elpe", id.elpe.into()),
        ("npss", id.npss.into()),
        ("kas", id.kas.into()),
        ("anatt", id.anatt.into()),
        ("anacap", id.anacap.into()),
        ("anagrpmax", id.anagrpmax.into()),
        ("nanagrpid", id.nanagrpid.into()),
        ("sqes", id.sqes.into()),
        ("cqes", id.cqes.into()),
        ("maxcmd", id.maxcmd.into()),
        ("nn", id.nn.into()),
        ("oncs", id.oncs.into()),
        ("fuses", id.fuses.into()),
        ("fna", id.fna.into()),
        ("vwc", id.vwc.into()),
        ("awun", id.awun.into()),
        ("awupf", id.awupf.into()),
        ("acwu", id.acwu.into()),
        ("sgls", id.sgls.into()),
        ("mnan", id.mnan.into()),
        ("subnqn", id.subnqn.clone().into()),
        ("ioccsz", id.ioccsz.into()),
        ("iorcsz", id.iorcsz.into()),
        ("icdoff", id.icdoff.into()),
        ("fcatt", id.fcatt.into()),
        ("msdbd", id.msdbd.into()),
        ("ofcs", id.ofcs.into()),
    ];
    Json::Obj(fields)
}

fn print_ctrl(out: &mut impl Write, id: &IdentifyController) -> std::io::Result<()> {
    let rows: Vec<(&str, String)> = vec![
        ("vid", format!("{:#x}", id.vid)),
        ("ssvid", format!("{:#x}", id.ssvid)),
        ("sn", id.serial.clone()),
        ("mn", id.model.clone()),
        ("fr", id.firmware.clone()),
        ("rab", id.rab.to_string()),
        ("ieee", hex(&[id.ieee_oui[2], id.ieee_oui[1], id.ieee_oui[0]])),
        ("cmic", format!("{:#x}", id.cmic)),
        ("mdts", id.mdts.to_string()),
        ("cntlid", format!("{:#x}", id.cntlid)),
        ("ver", format!("{:#x}", id.ver)),
        ("oaes", format!("{:#x}", id.oaes)),
        ("ctratt", format!("{:#x}", id.ctratt)),
        ("cntrltype", id.cntrltype.to_string()),
        ("fguid", hex(&id.fguid)),
        ("oacs", format!("{:#x}", id.oacs)),
        ("acl", id.acl.to_string()),
        ("aerl", id.aerl.to_string()),
        ("lpa", format!("{:#x}", id.lpa)),
        ("elpe", id.elpe.to_string()),
        ("kas", id.kas.to_string()),
        ("anatt", id.anatt.to_string()),
        ("anacap", id.anacap.to_string()),
        ("anagrpmax", id.anagrpmax.to_string()),
        ("nanagrpid", id.nanagrpid.to_string()),
        ("sqes", format!("{:#x}", id.sqes)),
        ("cqes", format!("{:#x}", id.cqes)),
        ("maxcmd", id.maxcmd.to_string()),
        ("nn", id.nn.to_string()),
        ("oncs", format!("{:#x}", id.oncs)),
        ("fuses", format!("{:#x}", id.fuses)),
        ("vwc", format!("{:#x}", id.vwc)),
        ("awun", id.awun.to_string()),
        ("awupf", id.awupf.to_string()),
        ("sgls", format!("{:#x}", id.sgls)),
        ("mnan", id.mnan.to_string()),
        ("subnqn", id.subnqn.clone()),
        ("ioccsz", id.ioccsz.to_string()),
        ("iorcsz", id.iorcsz.to_string()),
        ("icdoff", id.icdoff.to_string()),
        ("fcatt", format!("{:#x}", id.fcatt)),
        ("msdbd", id.msdbd.to_string()),
        ("ofcs", id.ofcs.to_string()),
    ];
    for (k, v) in rows {
        writeln!(out, "{k:<10}: {v}")?;
    }
    Ok(())
}

fn ns_json(nsid: u32, ns: &IdentifyNamespace) -> Json {
    let lbafs: Vec<Json> = ns
        .lbaf
        .iter()
        .map(|f| Json::Obj(vec![("ms", f.ms.into()), ("ds", f.lbads.into()), ("rp", f.rp.into())]))
        .collect();
    let fields: Vec<(&'static str, Json)> = vec![
        ("nsid", nsid.into()),
        ("nsze", ns.nsze.into()),
        ("ncap", ns.ncap.into()),
        ("nuse", ns.nuse.into()),
        ("nsfeat", ns.nsfeat.into()),
        ("nlbaf", ns.nlbaf.into()),
        ("flbas", ns.flbas.into()),
        ("nmic", ns.nmic.into()),
        ("dlfeat", ns.dlfeat.into()),
        ("noiob", ns.noiob.into()),
        ("npwg", ns.npwg.into()),
        ("npwa", ns.npwa.into()),
        ("npdg", ns.npdg.into()),
        ("npda", ns.npda.into()),
        ("nows", ns.nows.into()),
        ("mssrl", ns.mssrl.into()),
        ("mcl", ns.mcl.into()),
        ("msrc", ns.msrc.into()),
        ("anagrpid", ns.anagrpid.into()),
        ("nsattr", ns.nsattr.into()),
        ("nguid", hex(&ns.nguid).into()),
        ("eui64", hex(&ns.eui64).into()),
        ("block_size", ns.block_size().into()),
        ("lbafs", Json::Arr(lbafs)),
    ];
    Json::Obj(fields)
}

fn print_ns(out: &mut impl Write, ns: &IdentifyNamespace) -> std::io::Result<()> {
    let rows: Vec<(&str, String)> = vec![
        ("nsze", format!("{:#x}", ns.nsze)),
        ("ncap", format!("{:#x}", ns.ncap)),
        ("nuse", format!("{:#x}", ns.nuse)),
        ("nsfeat", format!("{:#x}", ns.nsfeat)),
        ("nlbaf", ns.nlbaf.to_string()),
        ("flbas", format!("{:#x}", ns.flbas)),
        ("nmic", format!("{:#x}", ns.nmic)),
        ("dlfeat", ns.dlfeat.to_string()),
        ("noiob", ns.noiob.to_string()),
        ("anagrpid", ns.anagrpid.to_string()),
        ("nsattr", ns.nsattr.to_string()),
        ("nguid", hex(&ns.nguid)),
        ("eui64", hex(&ns.eui64)),
    ];
    for (k, v) in rows {
        writeln!(out, "{k:<8}: {v}")?;
    }
    let cur = (ns.flbas & 0xf) | ((ns.flbas >> 1) & 0x30);
    for (i, f) in ns.lbaf.iter().enumerate() {
        let inuse = if i == cur as usize { " (in use)" } else { "" };
        writeln!(out, "lbaf {i:>2} : ms:{:<3} lbads:{:<2} rp:{:#x}{inuse}", f.ms, f.lbads, f.rp)?;
    }
    writeln!(
        out,
        "block size: {} bytes, {} blocks ({} bytes)",
        ns.block_size(),
        ns.nsze,
        ns.nsze * ns.block_size() as u64
    )?;
    Ok(())
}

// ------------------------------------------------------------------ read / write

/// Connect, find the namespace's block size, check the range.
fn open_range(a: &IoArgs) -> Result<(Controller, u32)> {
    if a.block_count == 0 {
        bail!("--block-count must be at least 1 (it counts blocks from 1)");
    }
    let mut c = connect(&a.conn, &a.trsvcid, &a.nqn)?;
    let ns = c.identify_namespace(a.namespace_id).with_context(|| format!("Identify Namespace {}", a.namespace_id))?;
    if ns.nsze == 0 {
        bail!("namespace {} is not active on this controller (Identify Namespace returned zeros)", a.namespace_id);
    }
    let bs = ns.block_size();
    if bs == 0 {
        bail!("namespace {} has no usable LBA format (nsze {})", a.namespace_id, ns.nsze);
    }
    let end = a.start_block.checked_add(a.block_count).context("block range overflows")?;
    if end > ns.nsze {
        bail!("blocks {}..{} beyond the namespace ({} blocks)", a.start_block, end, ns.nsze);
    }
    Ok((c, bs))
}

fn window_blocks(bs: u32, remaining: u64) -> u64 {
    ((WINDOW_BYTES_MAX / bs as usize) as u64).clamp(1, remaining)
}

pub fn read(a: ReadArgs) -> Result<()> {
    let (mut c, bs) = open_range(&a)?;
    let mut sink: Box<dyn Write> = if a.data == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::fs::File::create(&a.data).with_context(|| format!("create {}", a.data))?)
    };
    let mut buf = Vec::new();
    let mut lba = a.start_block;
    let end = a.start_block + a.block_count;
    while lba < end {
        let n = window_blocks(bs, end - lba);
        buf.resize(n as usize * bs as usize, 0);
        c.read_range(a.namespace_id, lba, bs, &mut buf).with_context(|| format!("read at LBA {lba}"))?;
        sink.write_all(&buf).with_context(|| format!("write {}", a.data))?;
        lba += n;
    }
    sink.flush()?;
    drop(sink);
    let _ = c.disconnect();
    Ok(())
}

pub fn write(a: WriteArgs) -> Result<()> {
    let (mut c, bs) = open_range(&a)?;
    let total = a.block_count.checked_mul(bs as u64).context("range too large")?;
    let mut src: Box<dyn Read> = if a.data == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(&a.data).with_context(|| format!("open {}", a.data))?;
        let len = f.metadata()?.len();
        if f.metadata()?.is_file() && len != total {
            bail!("{} holds {len} bytes; {} blocks of {bs} bytes need exactly {total}", a.data, a.block_count);
        }
        Box::new(f)
    };
    let mut buf = Vec::new();
    let mut lba = a.start_block;
    let end = a.start_block + a.block_count;
    while lba < end {
        let n = window_blocks(bs, end - lba);
        buf.resize(n as usize * bs as usize, 0);
        src.read_exact(&mut buf).with_context(|| format!("{} ends before {total} bytes", a.data))?;
        c.write_range(a.namespace_id, lba, bs, &buf).with_context(|| format!("write at LBA {lba}"))?;
        lba += n;
    }
    let _ = c.disconnect();
    Ok(())
}
