//! What `nvmf connect` serves, for `nvmf list` and `nvmf disconnect`: one
//! small JSON file per device under [`STATE_DIR`], written once the device
//! exists and removed when it is gone. The pid tells a live server from a
//! file left behind by a killed one.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// Where the device files live (tmpfs: gone after a reboot, like the devices).
pub const STATE_DIR: &str = "/run/nvmf/ublk";

/// One served device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRecord {
    /// ublk device ID N (`/dev/ublkbN`).
    pub dev_id: u32,
    pub pid: u32,
    pub subnqn: String,
    /// "host:port" as connected.
    pub addr: String,
    pub nsid: u32,
    pub size_bytes: u64,
    pub block_size_bytes: u32,
    pub nr_queues: u16,
    pub queue_depth: u16,
}

impl DeviceRecord {
    pub fn device(&self) -> String {
        format!("/dev/ublkb{}", self.dev_id)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "device": self.device(),
            "dev_id": self.dev_id,
            "pid": self.pid,
            "subnqn": self.subnqn,
            "address": self.addr,
            "nsid": self.nsid,
            "size_bytes": self.size_bytes,
            "block_size_bytes": self.block_size_bytes,
            "nr_queues": self.nr_queues,
            "queue_depth": self.queue_depth,
        })
    }

    pub fn from_json(v: &Value) -> Option<DeviceRecord> {
        let u = |k: &str| v.get(k).and_then(Value::as_u64);
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        Some(DeviceRecord {
            dev_id: u("dev_id")?.try_into().ok()?,
            pid: u("pid")?.try_into().ok()?,
            subnqn: s("subnqn")?,
            addr: s("address")?,
            nsid: u("nsid")?.try_into().ok()?,
            size_bytes: u("size_bytes")?,
            block_size_bytes: u("block_size_bytes")?.try_into().ok()?,
            nr_queues: u("nr_queues")?.try_into().ok()?,
            queue_depth: u("queue_depth")?.try_into().ok()?,
        })
    }

    /// Whether the process that serves it still runs.
    pub fn is_live(&self) -> bool {
        // SAFETY: signal 0 only checks that the pid exists.
        self.pid != 0 && unsafe { libc::kill(self.pid as libc::pid_t, 0) } == 0
    }
}

pub fn record_path(dir: &Path, dev_id: u32) -> PathBuf {
    dir.join(format!("ublkb{dev_id}.json"))
}

/// Write the record (through a temporary file, so a reader never sees half of it).
pub fn write_record(dir: &Path, r: &DeviceRecord) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = record_path(dir, r.dev_id);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, format!("{}\n", r.to_json()))?;
    std::fs::rename(tmp, path)
}

pub fn remove_record(dir: &Path, dev_id: u32) {
    let _ = std::fs::remove_file(record_path(dir, dev_id));
}

/// Every record in `dir`, by device ID (unreadable files are skipped).
pub fn read_records(dir: &Path) -> Vec<DeviceRecord> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<DeviceRecord> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| serde_json::from_str::<Value>(&t).ok())
        .filter_map(|v| DeviceRecord::from_json(&v))
        .collect();
    out.sort_by_key(|r| r.dev_id);
    out
}

/// Device ID from "/dev/ublkbN", "ublkbN" or "N".
pub fn parse_device(s: &str) -> Option<u32> {
    let s = s.strip_prefix("/dev/").unwrap_or(s);
    s.strip_prefix("ublkb").unwrap_or(s).parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(dev_id: u32) -> DeviceRecord {
        DeviceRecord {
            dev_id,
            pid: std::process::id(),
            subnqn: "nqn.2026-11.io.nvmf:a".into(),
            addr: "10.0.2.100:4420".into(),
            nsid: 1,
            size_bytes: 256 << 20,
            block_size_bytes: 512,
            nr_queues: 2,
            queue_depth: 128,
        }
    }

    #[test]
    fn records_round_trip_through_the_directory() {
        let dir = std::env::temp_dir().join(format!("nvmf-ublk-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write_record(&dir, &rec(3)).unwrap();
        write_record(&dir, &rec(0)).unwrap();
        std::fs::write(dir.join("junk.json"), "{").unwrap();
        let all = read_records(&dir);
        assert_eq!(all, vec![rec(0), rec(3)]);
        assert!(all[0].is_live());
        assert_eq!(all[1].device(), "/dev/ublkb3");
        remove_record(&dir, 3);
        assert_eq!(read_records(&dir), vec![rec(0)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn device_names() {
        assert_eq!(parse_device("/dev/ublkb12"), Some(12));
        assert_eq!(parse_device("ublkb0"), Some(0));
        assert_eq!(parse_device("7"), Some(7));
        assert_eq!(parse_device("/dev/sda"), None);
    }
}
