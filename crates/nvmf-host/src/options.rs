//! Connection options, named like Linux / nvme-cli `connect` options.
//!
//! | option | default | bound | CLI flag |
//! | --- | --- | --- | --- |
//! | `hostnqn` | `/etc/nvme/hostnqn`, else `nqn.2014-08.org.nvmexpress:uuid:<hostid>` | valid NQN, 11..=223 bytes | `-q/--hostnqn` |
//! | `hostid` | `/etc/nvme/hostid`, else the hostnqn's UUID, else derived from `/etc/machine-id`, else random | 16 bytes | `-I/--hostid` |
//! | `kato_s` | 5 (Linux NVME_DEFAULT_KATO); 0 for discovery | 0..=65535, Keep Alive every KATO/2 | `-k/--keep-alive-tmo` |
//! | `nr_io_queues` | 1 | 1..=256, and what Set Features grants | `-i/--nr-io-queues` |
//! | `queue_size` | 128 | 16..=1024, and CAP.MQES + 1 | `-Q/--queue-size` |
//! | `hdr_digest` / `data_digest` | off | | `-g` / `-G` |
//! | `reconnect_delay_s` | 10 | | `-c/--reconnect-delay` |
//! | `ctrl_loss_tmo_s` | 600 (0: never reconnect) | | `-l/--ctrl-loss-tmo` |
//! | `fast_io_fail_tmo_s` | off | | |
//! | `retry_writes_of_unknown_fate` | false | | |
//! | `io_timeout_ms` / `admin_timeout_ms` | 30 000 / 60 000 | | |
//! | `connect_timeout_ms` | 3000 (TCP connect and ICResp) | | |
//! | `transfer_len_max_bytes` | 1 MiB, further capped by MDTS | 4 KiB..=64 MiB | |
//! | `dhchap_secret` | none | `DHHC-1:hh:...:` | `-S/--dhchap-secret` |
//! | `dhchap_ctrl_secret` | none (needs `dhchap_secret`) | `DHHC-1:hh:...:` | `-C/--dhchap-ctrl-secret` |
//! | `concat` | false | needs `dhchap_secret`, excludes `tls` | `--concat` |
//! | `tls` | none (plain TCP) | [`TlsOptions`]: `NVMeTLSkey-1:hh:...:`, identity v0/v1, layout, identity | `--tls --tls-key`, `--tls-key-identity`, `--tls-key-compat`, `--tls-identity-version` |
//!
//! The secrets are [`DhchapKey`]s and [`TlsOptions`]: their `Debug` output is
//! redacted, and no error of this crate shows them.

use std::time::Duration;

use nvmf_proto::auth::{DhchapKey, HostConfig};

use crate::tls::{TlsOptions, TlsPsk};

/// Keep Alive Timeout of I/O controllers in seconds: Linux NVME_DEFAULT_KATO,
/// what `nvme connect` asks for without `-k`. The crate's one KATO default:
/// the uses that ask for another say why next to their constant
/// ([`MP_KATO_DEFAULT_S`](crate::multipath::device::MP_KATO_DEFAULT_S),
/// [`perf::admin::KATO_MS`](crate::perf::admin::KATO_MS)).
pub const KATO_DEFAULT_S: u32 = 5;
/// Linux NVMF_DEF_RECONNECT_DELAY, seconds.
pub const RECONNECT_DELAY_DEFAULT_S: u32 = 10;
/// Linux NVMF_DEF_CTRL_LOSS_TMO, seconds.
pub const CTRL_LOSS_TMO_DEFAULT_S: u32 = 600;
/// Default I/O queue size (Linux NVMF_DEF_QUEUE_SIZE).
pub const QUEUE_SIZE_DEFAULT: u16 = 128;
/// Largest I/O queue size (Linux NVMF_MAX_QUEUE_SIZE).
pub const QUEUE_SIZE_MAX: u16 = 1024;
// Every queue size the options accept must be one the queue state machine takes.
const _: () = assert!(QUEUE_SIZE_MAX <= crate::queue::QUEUE_DEPTH_MAX);
/// Smallest I/O queue size (Linux NVMF_MIN_QUEUE_SIZE).
pub const QUEUE_SIZE_MIN: u16 = 16;
/// Most I/O queues one controller connection opens.
pub const NR_IO_QUEUES_MAX: u16 = 256;
pub use crate::queue::TRANSFER_LEN_MAX_DEFAULT_BYTES;
/// Smallest per-command transfer limit: one 4 KiB memory page.
pub(crate) const TRANSFER_LEN_MIN_BYTES: u32 = 4096;
/// Largest `kato_s` accepted.
const KATO_MAX_S: u32 = 65_535;
/// Where nvme-cli keeps the host NQN and host ID.
pub const HOSTNQN_PATH: &str = "/etc/nvme/hostnqn";
pub const HOSTID_PATH: &str = "/etc/nvme/hostid";
/// systemd's machine ID, the fallback source of a stable host ID.
pub const MACHINE_ID_PATH: &str = "/etc/machine-id";

/// Options of [`Controller::connect`](crate::Controller::connect) and
/// [`discover`](crate::discover). `Default` gives Linux's defaults.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Subsystem NQN to connect to.
    pub subnqn: String,
    /// Host NQN. Default: the contents of `/etc/nvme/hostnqn` if present,
    /// else `nqn.2014-08.org.nvmexpress:uuid:<hostid as UUID>`.
    pub hostnqn: String,
    /// Host identifier (16 bytes). Default: `/etc/nvme/hostid` if present, else
    /// the UUID in a UUID-form hostnqn, else derived from `/etc/machine-id`,
    /// else random.
    pub hostid: [u8; 16],
    /// Keep Alive Timeout in seconds; 0 disables keep alive. Default 5
    /// (Linux NVME_DEFAULT_KATO). Keep Alive is sent every KATO/2.
    pub kato_s: u32,
    /// I/O queues to open (capped by what the controller grants and by
    /// [`NR_IO_QUEUES_MAX`]). Default 1. Ignored for discovery controllers.
    pub nr_io_queues: u16,
    /// Entries per I/O queue, `16..=1024` (capped by CAP.MQES + 1). Default 128.
    pub queue_size: u16,
    /// Request header digests. Default off.
    pub hdr_digest: bool,
    /// Request data digests. Default off.
    pub data_digest: bool,
    /// Seconds between reconnect attempts after a transport failure. Default 10.
    pub reconnect_delay_s: u32,
    /// Give up reconnecting (the controller is gone) after this many seconds.
    /// Default 600. 0 means no reconnect at all.
    pub ctrl_loss_tmo_s: u32,
    /// Fail I/O waiting for a reconnect after this many seconds; `None` (the
    /// default, "off") makes I/O wait up to `ctrl_loss_tmo_s`.
    pub fast_io_fail_tmo_s: Option<u32>,
    /// Retry a write whose fate is unknown after a reconnect. Default false:
    /// the caller gets [`Error::FateUnknown`](crate::Error::FateUnknown). Reads
    /// are always retried.
    pub retry_writes_of_unknown_fate: bool,
    /// I/O command timeout in milliseconds (Linux `io_timeout`, 30 s). A
    /// command not answered in time fails its queue, which is then reconnected.
    pub io_timeout_ms: u64,
    /// Admin command timeout in milliseconds (Linux `admin_timeout`, 60 s).
    pub admin_timeout_ms: u64,
    /// TCP connect timeout in milliseconds. Default 3000.
    pub connect_timeout_ms: u64,
    /// Largest data transfer per command, further capped by MDTS. Default 1 MiB.
    pub transfer_len_max_bytes: u32,
    /// DH-HMAC-CHAP host secret (Linux / nvme-cli `dhchap_secret`): every
    /// queue whose Connect response asks for authentication (ATR) proves it
    /// (see [`crate::auth`]). Default none: a controller that asks fails the
    /// connect.
    pub dhchap_secret: Option<DhchapKey>,
    /// DH-HMAC-CHAP controller secret (`dhchap_ctrl_secret`): the controller
    /// must prove it too (bidirectional authentication), on every queue,
    /// whether or not it asked for authentication. Needs `dhchap_secret`.
    pub dhchap_ctrl_secret: Option<DhchapKey>,
    /// NVMe/TCP TLS 1.3 with a pre-shared key (Linux / nvme-cli `tls`,
    /// `tls_key`): every queue (admin and I/O, discovery too) does a TLS
    /// handshake after the TCP connect and before the ICReq, offering the
    /// identity derived from the key, `hostnqn` and `subnqn` (see
    /// [`crate::tls`]). Default none: plain TCP.
    pub tls: Option<TlsOptions>,
    /// Secure channel concatenation (Linux / nvme-cli `concat`): the admin
    /// queue authenticates in clear (SC_C NEWTLSPSK), is reconnected over TLS
    /// with the generated PSK and authenticates again (REPLACETLSPSK); the
    /// I/O queues use the latest generated PSK and do not authenticate. Needs
    /// `dhchap_secret` and a DH group; excludes `tls`. Default false.
    pub concat: bool,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        let hostid = default_hostid();
        ConnectOptions {
            subnqn: String::new(),
            hostnqn: default_hostnqn(&hostid),
            hostid,
            kato_s: KATO_DEFAULT_S,
            nr_io_queues: 1,
            queue_size: QUEUE_SIZE_DEFAULT,
            hdr_digest: false,
            data_digest: false,
            reconnect_delay_s: RECONNECT_DELAY_DEFAULT_S,
            ctrl_loss_tmo_s: CTRL_LOSS_TMO_DEFAULT_S,
            fast_io_fail_tmo_s: None,
            retry_writes_of_unknown_fate: false,
            io_timeout_ms: crate::queue::IO_COMMAND_TIMEOUT_MS,
            admin_timeout_ms: crate::queue::ADMIN_COMMAND_TIMEOUT_MS,
            connect_timeout_ms: 3000,
            transfer_len_max_bytes: TRANSFER_LEN_MAX_DEFAULT_BYTES,
            dhchap_secret: None,
            dhchap_ctrl_secret: None,
            tls: None,
            concat: false,
        }
    }
}

impl ConnectOptions {
    /// Defaults with this subsystem NQN.
    pub fn new(subnqn: &str) -> ConnectOptions {
        ConnectOptions { subnqn: subnqn.to_string(), ..Default::default() }
    }
    /// [`kato_s`](Self::kato_s) in milliseconds (the unit of Connect and of the write fence).
    pub(crate) fn kato_ms(&self) -> u64 {
        self.kato_s as u64 * 1000
    }
    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms.max(1))
    }
    /// Check every option against its bounds.
    pub fn validate(&self) -> Result<(), String> {
        nvmf_proto::validate_nqn(&self.subnqn).map_err(|e| format!("subsystem NQN {:?}: {e}", self.subnqn))?;
        nvmf_proto::validate_nqn(&self.hostnqn).map_err(|e| format!("host NQN {:?}: {e}", self.hostnqn))?;
        if !(QUEUE_SIZE_MIN..=QUEUE_SIZE_MAX).contains(&self.queue_size) {
            return Err(format!("queue_size {} out of {QUEUE_SIZE_MIN}..={QUEUE_SIZE_MAX}", self.queue_size));
        }
        if self.nr_io_queues == 0 || self.nr_io_queues > NR_IO_QUEUES_MAX {
            return Err(format!("nr_io_queues {} out of 1..={NR_IO_QUEUES_MAX}", self.nr_io_queues));
        }
        if self.kato_s > KATO_MAX_S {
            return Err(format!("kato_s over {KATO_MAX_S}"));
        }
        if self.transfer_len_max_bytes < TRANSFER_LEN_MIN_BYTES
            || self.transfer_len_max_bytes > crate::queue::TRANSFER_LEN_MAX_BYTES
        {
            return Err("transfer_len_max_bytes out of 4 KiB..=64 MiB".into());
        }
        if self.dhchap_ctrl_secret.is_some() && self.dhchap_secret.is_none() {
            return Err("dhchap_ctrl_secret (bidirectional authentication) needs dhchap_secret too".into());
        }
        if self.concat && self.dhchap_secret.is_none() {
            return Err("concat (secure channel concatenation) needs dhchap_secret".into());
        }
        if self.concat && self.tls.is_some() {
            return Err("concat (secure channel concatenation) generates its TLS PSK: drop tls".into());
        }
        self.tls_psk()?;
        Ok(())
    }
    /// The TLS identity and PSK of this host and subsystem, when TLS is on.
    pub fn tls_psk(&self) -> Result<Option<TlsPsk>, String> {
        self.tls.as_ref().map(|t| t.psk(&self.hostnqn, &self.subnqn)).transpose()
    }
    /// The DH-HMAC-CHAP configuration of one queue's transaction, when a host
    /// secret is set.
    pub(crate) fn dhchap_config(&self, transaction_id: u16) -> Option<HostConfig> {
        let host_key = self.dhchap_secret.as_ref()?;
        Some(crate::auth::host_config(
            &self.hostnqn,
            &self.subnqn,
            host_key,
            self.dhchap_ctrl_secret.as_ref(),
            transaction_id,
        ))
    }
}

/// Format 16 bytes as a UUID string.
pub fn uuid_string(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// Parse a UUID string (with or without dashes).
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.trim().chars().filter(|&c| c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn random_uuid() -> [u8; 16] {
    let mut u = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut u);
    }
    if u == [0; 16] {
        // No /dev/urandom: time and pid are unique enough for a host identifier.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        u[..8].copy_from_slice(&(t.as_nanos() as u64).to_le_bytes());
        u[8..12].copy_from_slice(&std::process::id().to_le_bytes());
    }
    shape_uuid_v4(&mut u);
    u
}

/// Mark 16 bytes as a random (version 4, RFC 4122 variant) UUID.
fn shape_uuid_v4(u: &mut [u8; 16]) {
    u[6] = (u[6] & 0x0f) | 0x40; // version 4
    u[8] = (u[8] & 0x3f) | 0x80; // RFC 4122 variant
}

fn read_trimmed(path: &str) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?;
    let s = s.trim();
    (!s.is_empty() && s.len() <= 256).then(|| s.to_string())
}

/// The default host ID: `/etc/nvme/hostid`, else the UUID of
/// `/etc/nvme/hostnqn` in UUID form, else one derived from `/etc/machine-id`
/// (stable across runs, so target allow-lists and logs stay meaningful), else random.
pub fn default_hostid() -> [u8; 16] {
    if let Some(id) = read_trimmed(HOSTID_PATH).and_then(|s| parse_uuid(&s)) {
        return id;
    }
    if let Some(id) = read_trimmed(HOSTNQN_PATH).and_then(|n| n.rsplit_once(":uuid:").and_then(|(_, u)| parse_uuid(u)))
    {
        return id;
    }
    if let Some(id) = read_trimmed(MACHINE_ID_PATH).and_then(|s| parse_uuid(&s)) {
        return hostid_from_machine_id(id);
    }
    random_uuid()
}

/// A host ID derived from the machine ID without exposing it on the network
/// (each byte mixed with a constant), shaped as a version 4 UUID.
fn hostid_from_machine_id(mut id: [u8; 16]) -> [u8; 16] {
    for (b, k) in id.iter_mut().zip(b"nvmf-host-id-v1!") {
        *b = b.rotate_left(3) ^ k;
    }
    shape_uuid_v4(&mut id);
    id
}

/// The default host NQN: `/etc/nvme/hostnqn`, else the UUID form built from `hostid`.
pub fn default_hostnqn(hostid: &[u8; 16]) -> String {
    read_trimmed(HOSTNQN_PATH)
        .filter(|n| nvmf_proto::validate_nqn(n).is_ok())
        .unwrap_or_else(|| format!("nqn.2014-08.org.nvmexpress:uuid:{}", uuid_string(hostid)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_roundtrip_and_defaults() {
        let u = [0x12u8, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0x4d, 0xef, 0x80, 1, 2, 3, 4, 5, 6, 7];
        let s = uuid_string(&u);
        assert_eq!(s, "12345678-9abc-4def-8001-020304050607");
        assert_eq!(parse_uuid(&s), Some(u));
        assert_eq!(parse_uuid("xyz"), None);
        let o = ConnectOptions::new("nqn.2026-11.io.nvmf:default");
        assert!(o.validate().is_ok(), "{:?}", o.validate());
        assert_eq!((o.kato_s, o.queue_size, o.reconnect_delay_s, o.ctrl_loss_tmo_s), (5, 128, 10, 600));
        assert!(nvmf_proto::validate_nqn(&o.hostnqn).is_ok());
        let m = [7u8; 16];
        assert_eq!(hostid_from_machine_id(m), hostid_from_machine_id(m), "stable");
        assert_ne!(hostid_from_machine_id(m), m, "machine ID not sent as is");
        assert_eq!(hostid_from_machine_id(m)[6] >> 4, 4);
        let r = random_uuid();
        assert_eq!(r[6] >> 4, 4);
    }
}
