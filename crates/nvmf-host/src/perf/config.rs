//! `nvmf perf` configuration: what to run, validated against the limits below.

use std::fmt;
use std::str::FromStr;

/// Largest `--iodepth` per queue (the queue size we ask for is iodepth + 1).
pub const IODEPTH_MAX: u32 = 1024;
/// Largest `--nr-io-queues`.
pub const IO_QUEUES_MAX: u32 = 1024;
/// Largest `--bs` (one command; the host splits nothing).
pub const BLOCK_SIZE_MAX_BYTES: u64 = 8 << 20;
/// Longest `--runtime`.
pub const RUNTIME_MAX_S: u64 = 7 * 24 * 3600;
/// Data buffers of a run: `--iodepth` x `--bs` per queue, all queues together.
pub const BUFFER_BYTES_MAX: u64 = 2 << 30;
/// Verify mode keeps 4 bytes + 1 bit per `--bs` unit in range: cap the range so
/// the map stays under ~256 MiB (use `--size` to narrow a big namespace).
pub const VERIFY_UNITS_MAX: u64 = 64 << 20;

/// The I/O pattern (`--rw`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RwPattern {
    Read,
    Write,
    RandRead,
    RandWrite,
    RandRw,
}

impl RwPattern {
    pub fn is_random(self) -> bool {
        matches!(self, RwPattern::RandRead | RwPattern::RandWrite | RwPattern::RandRw)
    }
    /// Percentage of reads this pattern issues, given `--rwmixread`.
    pub fn read_percent(self, rwmixread: u8) -> u8 {
        match self {
            RwPattern::Read | RwPattern::RandRead => 100,
            RwPattern::Write | RwPattern::RandWrite => 0,
            RwPattern::RandRw => rwmixread,
        }
    }
}

impl FromStr for RwPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "read" => RwPattern::Read,
            "write" => RwPattern::Write,
            "randread" => RwPattern::RandRead,
            "randwrite" => RwPattern::RandWrite,
            "randrw" => RwPattern::RandRw,
            _ => return Err(format!("unknown --rw {s:?} (read, write, randread, randwrite, randrw)")),
        })
    }
}

impl fmt::Display for RwPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RwPattern::Read => "read",
            RwPattern::Write => "write",
            RwPattern::RandRead => "randread",
            RwPattern::RandWrite => "randwrite",
            RwPattern::RandRw => "randrw",
        })
    }
}

/// Parse a byte count ([`nvmf_proto::size`]: `4k`, `128KiB`, `1g` are
/// powers of 1024; `1GB` is 10^9 bytes).
pub use nvmf_proto::size::parse_size;

/// Everything a perf run needs besides the target's address and identity.
#[derive(Debug, Clone)]
pub struct PerfConfig {
    pub namespace_id: u32,
    pub rw: RwPattern,
    /// Reads in percent for `randrw` (0..=100).
    pub rwmixread: u8,
    pub block_size_bytes: u64,
    /// Commands kept in flight per queue.
    pub iodepth: u32,
    pub runtime_s: u64,
    pub io_queues: u32,
    /// CPUs to pin one engine thread each to; queues are spread round-robin.
    pub cores: Vec<usize>,
    pub poll: bool,
    pub verify: bool,
    /// Bytes of the namespace to use from `offset_bytes`; 0 = to the end.
    pub size_bytes: u64,
    pub offset_bytes: u64,
    pub header_digest: bool,
    pub data_digest: bool,
    /// Keep SQ flow control on the I/O queues. Off by default: perf sets
    /// CATTR "SQ flow control disable" in Connect (as `nvme connect
    /// --disable-sqflow` does), so a read ends with a C2HData PDU carrying
    /// SUCCESS and no response capsule follows (one PDU less per read).
    pub sq_flow_control: bool,
    /// Seed of the random offsets and of the verify pattern (0 = from the clock).
    pub seed: u64,
    /// DH-HMAC-CHAP host secret, for the admin queue and every I/O queue
    /// ([`crate::auth`]; `ConnectOptions::dhchap_secret`).
    pub dhchap_secret: Option<nvmf_proto::auth::DhchapKey>,
    /// DH-HMAC-CHAP controller secret (bidirectional); needs `dhchap_secret`.
    pub dhchap_ctrl_secret: Option<nvmf_proto::auth::DhchapKey>,
    /// NVMe/TCP TLS 1.3 with a PSK on the admin queue and every I/O queue
    /// (`ConnectOptions::tls`; identity and PSK from
    /// [`TlsOptions::psk`](crate::TlsOptions::psk)). None: plain TCP.
    pub tls: Option<crate::TlsOptions>,
    /// Secure channel concatenation: the admin queue's DH-HMAC-CHAP
    /// generates the TLS PSK of every queue (needs `dhchap_secret` and a DH
    /// group; refuses `tls`).
    pub concat: bool,
    /// With TLS: every I/O queue starts a KeyUpdate (asking the controller
    /// to update its keys too) every this many ms while it runs; 0 = never.
    /// For tests and benchmarks (`--tls-key-update-ms`).
    pub tls_key_update_ms: u64,
}

impl Default for PerfConfig {
    fn default() -> Self {
        PerfConfig {
            namespace_id: 1,
            rw: RwPattern::RandRead,
            rwmixread: 50,
            block_size_bytes: 4096,
            iodepth: 32,
            runtime_s: 10,
            io_queues: 1,
            cores: Vec::new(),
            poll: true,
            verify: false,
            size_bytes: 0,
            offset_bytes: 0,
            header_digest: false,
            data_digest: false,
            sq_flow_control: false,
            seed: 0,
            dhchap_secret: None,
            dhchap_ctrl_secret: None,
            tls: None,
            concat: false,
            tls_key_update_ms: 0,
        }
    }
}

/// The LBA range of the namespace the run uses, split into `--bs` units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub lba_bytes: u64,
    /// LBAs per unit (one I/O).
    pub unit_lbas: u64,
    /// First LBA of unit 0.
    pub first_lba: u64,
    pub units: u64,
}

impl Geometry {
    pub fn unit_bytes(&self) -> u64 {
        self.lba_bytes * self.unit_lbas
    }
    /// Unit range `[first, first + count)` queue `q` of `queues` owns: disjoint, covering all units.
    pub fn queue_partition(&self, q: u32, queues: u32) -> (u64, u64) {
        debug_assert!(q < queues);
        let base = self.units / queues as u64;
        let extra = self.units % queues as u64;
        let q = q as u64;
        let first = q * base + q.min(extra);
        let count = base + u64::from(q < extra);
        (first, count)
    }
}

impl PerfConfig {
    /// Check the limits that do not depend on the namespace.
    pub fn validate(&self) -> Result<(), String> {
        if self.rwmixread > 100 {
            return Err("--rwmixread must be 0..=100".into());
        }
        if self.block_size_bytes == 0 || self.block_size_bytes > BLOCK_SIZE_MAX_BYTES {
            return Err(format!("--bs must be 1..={BLOCK_SIZE_MAX_BYTES} bytes"));
        }
        if self.iodepth == 0 || self.iodepth > IODEPTH_MAX {
            return Err(format!("--iodepth must be 1..={IODEPTH_MAX}"));
        }
        if self.io_queues == 0 || self.io_queues > IO_QUEUES_MAX {
            return Err(format!("--nr-io-queues must be 1..={IO_QUEUES_MAX}"));
        }
        if self.runtime_s == 0 || self.runtime_s > RUNTIME_MAX_S {
            return Err(format!("--runtime must be 1..={RUNTIME_MAX_S} seconds"));
        }
        let buffers = self.iodepth as u64 * self.block_size_bytes * self.io_queues as u64;
        if buffers > BUFFER_BYTES_MAX {
            return Err(format!(
                "--iodepth x --bs x --nr-io-queues needs {buffers} bytes of buffers, over the {BUFFER_BYTES_MAX} limit"
            ));
        }
        if self.namespace_id == 0 || self.namespace_id == u32::MAX {
            return Err("--namespace-id must be a single namespace (1..0xfffffffe)".into());
        }
        if self.dhchap_ctrl_secret.is_some() && self.dhchap_secret.is_none() {
            return Err("--dhchap-ctrl-secret needs --dhchap-secret too".into());
        }
        if self.concat && self.dhchap_secret.is_none() {
            return Err("--concat (secure channel concatenation) needs --dhchap-secret".into());
        }
        if self.concat && self.tls.is_some() {
            return Err("--concat generates the TLS PSK: drop the TLS flags".into());
        }
        if self.tls_key_update_ms != 0 && self.tls.is_none() && !self.concat {
            return Err("--tls-key-update-ms needs TLS (--tls-key or --concat)".into());
        }
        Ok(())
    }

    /// The LBA range for a namespace of `nsze` blocks of `lba_bytes`.
    pub fn geometry(&self, lba_bytes: u64, nsze: u64) -> Result<Geometry, String> {
        if lba_bytes == 0 || !lba_bytes.is_power_of_two() {
            return Err(format!("namespace has an invalid LBA size {lba_bytes}"));
        }
        if !self.block_size_bytes.is_multiple_of(lba_bytes) {
            return Err(format!("--bs {} is not a multiple of the LBA size {lba_bytes}", self.block_size_bytes));
        }
        if !self.offset_bytes.is_multiple_of(lba_bytes) || !self.size_bytes.is_multiple_of(lba_bytes) {
            return Err(format!(
                "--offset ({} bytes) and --size ({} bytes) must be multiples of the LBA size {lba_bytes} (KB, MB, GB \
                 are powers of 1000; KiB, MiB, GiB of 1024)",
                self.offset_bytes, self.size_bytes
            ));
        }
        if self.verify && (lba_bytes as usize) < super::verify::BLOCK_BYTES_MIN {
            return Err("--verify needs LBAs of at least 512 bytes".into());
        }
        let ns_bytes = nsze.checked_mul(lba_bytes).ok_or("namespace size overflows")?;
        if self.offset_bytes >= ns_bytes {
            return Err(format!("--offset {} is beyond the namespace ({ns_bytes} bytes)", self.offset_bytes));
        }
        let avail = ns_bytes - self.offset_bytes;
        let size = if self.size_bytes == 0 { avail } else { self.size_bytes.min(avail) };
        let unit_lbas = self.block_size_bytes / lba_bytes;
        let units = size / self.block_size_bytes;
        if units < self.io_queues as u64 {
            return Err(format!(
                "range of {size} bytes holds {units} I/Os of --bs, fewer than --nr-io-queues {}",
                self.io_queues
            ));
        }
        if self.verify {
            if units > VERIFY_UNITS_MAX {
                return Err(format!(
                    "--verify tracks at most {VERIFY_UNITS_MAX} I/O units; the range has {units}: narrow it with --size"
                ));
            }
            if units / (self.io_queues as u64) < self.iodepth as u64 * 2 {
                return Err("--verify needs at least 2 x --iodepth units of --bs per queue (so in-flight I/Os never \
                     share a block): enlarge --size or lower --iodepth/--nr-io-queues"
                    .into());
            }
        }
        Ok(Geometry { lba_bytes, unit_lbas, first_lba: self.offset_bytes / lba_bytes, units })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("128KiB"), Ok(128 << 10));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        // One meaning everywhere (nvmf_proto::size): TB is 10^12, TiB 2^40.
        assert_eq!(parse_size("2TB"), Ok(2_000_000_000_000));
        assert_eq!(parse_size("2TiB"), Ok(2 << 40));
        assert!(parse_size("").is_err());
        assert!(parse_size("k").is_err());
        assert!(parse_size("-4k").is_err());
        assert!(parse_size("4x").is_err());
        assert!(parse_size("99999999999999999999t").is_err());
        assert!(parse_size("9999999999t").is_err());
    }

    #[test]
    fn patterns() {
        for p in ["read", "write", "randread", "randwrite", "randrw"] {
            assert_eq!(p.parse::<RwPattern>().unwrap().to_string(), p);
        }
        assert!("rw".parse::<RwPattern>().is_err());
        assert_eq!(RwPattern::RandRw.read_percent(70), 70);
        assert_eq!(RwPattern::Read.read_percent(70), 100);
    }

    #[test]
    fn partitions_cover_range_disjointly() {
        let g = Geometry { lba_bytes: 512, unit_lbas: 8, first_lba: 0, units: 10 };
        let parts: Vec<_> = (0..3).map(|q| g.queue_partition(q, 3)).collect();
        assert_eq!(parts, vec![(0, 4), (4, 3), (7, 3)]);
    }

    #[test]
    fn geometry_limits() {
        let c = PerfConfig { block_size_bytes: 4096, size_bytes: 1 << 20, offset_bytes: 4096, ..Default::default() };
        let g = c.geometry(512, 1 << 20).unwrap();
        assert_eq!(g, Geometry { lba_bytes: 512, unit_lbas: 8, first_lba: 8, units: 256 });
        assert!(c.geometry(8192, 1 << 20).is_err());
        let bad = PerfConfig { offset_bytes: 1 << 40, ..c.clone() };
        assert!(bad.geometry(512, 1024).is_err());
        let v = PerfConfig { verify: true, size_bytes: 0, ..c.clone() };
        assert!(v.geometry(4096, 1 << 40).is_err(), "verify over a huge range must be refused");
        let v2 = PerfConfig { verify: true, iodepth: 200, ..c };
        assert!(v2.geometry(512, 1 << 20).is_err(), "too few units per queue for iodepth");
        assert!(PerfConfig { iodepth: 0, ..Default::default() }.validate().is_err());
        assert!(PerfConfig { rwmixread: 101, ..Default::default() }.validate().is_err());
        assert!(PerfConfig::default().validate().is_ok());
        let huge = PerfConfig { iodepth: 1024, block_size_bytes: 8 << 20, ..Default::default() };
        assert!(huge.validate().is_err(), "8 GiB of buffers must be refused");
    }
}
