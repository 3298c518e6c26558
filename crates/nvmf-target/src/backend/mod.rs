//! Namespace backends.
//!
//! A backend is shared by every queue (core) that reaches its namespace, so it
//! is `Send + Sync`. Two I/O paths exist:
//! - memory backends (`null`, `ram`) complete synchronously on the calling
//!   core: [`Backend::read_sync`] / [`Backend::write_sync`] return `Some`.
//! - descriptor backends (`file`, `block`) expose [`Backend::fd`]; the queue
//!   submits reads, writes and fsyncs for them through the core's io_uring
//!   (`nvmf_engine::ConnIo::submit_*`), so a core never blocks on storage.
//!   Under O_DIRECT ([`Backend::dma_alignment`] > 1) the buffers handed to
//!   io_uring must be aligned to it; offsets and lengths are whole blocks.
//!
//! Every offset and length handed to a backend has already been checked
//! against [`Backend::size_bytes`] by the I/O command code; backends check
//! again (cheaply) and answer out-of-range requests with an error, never UB.
//!
//! Modules: [`null`], [`ram`], [`file`], [`block`]; [`open`] picks one from a
//! normalized [`NamespaceConfig`].

pub mod block;
pub mod file;
pub mod null;
pub mod ram;
mod sys;

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use crate::config::NamespaceConfig;

pub use block::BlockBackend;
pub use file::FileBackend;
pub use null::NullBackend;
pub use ram::RamBackend;

/// Storage behind one namespace.
pub trait Backend: Send + Sync {
    /// "null", "ram", "file" or "block".
    fn kind(&self) -> &'static str;
    /// Capacity in bytes (a multiple of the namespace block size).
    fn size_bytes(&self) -> u64;
    /// Copy `dst.len()` bytes at `offset` into `dst`. `None`: use the fd path.
    fn read_sync(&self, offset: u64, dst: &mut [u8]) -> Option<io::Result<()>>;
    /// Append `len` bytes read at `offset` to `out` (the read path builds C2HData
    /// PDUs in place this way). `None`: use the fd path. On error `out` is
    /// left as it was. The default zero-fills then reads; memory backends
    /// override it to write each byte once, which matters at millions of reads
    /// a second.
    fn read_append(&self, offset: u64, len: usize, out: &mut Vec<u8>) -> Option<io::Result<()>> {
        let start = out.len();
        out.resize(start + len, 0);
        let r = self.read_sync(offset, &mut out[start..]);
        if !matches!(r, Some(Ok(()))) {
            out.truncate(start);
        }
        r
    }
    /// `len` bytes at `offset` as memory that never changes and lives for the
    /// whole process, so the read path can send them without copying (the
    /// engine's `send_borrowed`). `None`: not available (copy them instead).
    fn read_static(&self, offset: u64, len: usize) -> Option<io::Result<&'static [u8]>> {
        let _ = (offset, len);
        None
    }
    /// Store `src` at `offset`. `None`: use the fd path.
    fn write_sync(&self, offset: u64, src: &[u8]) -> Option<io::Result<()>>;
    /// Descriptor for io_uring reads/writes/fsyncs, for file and block backends.
    fn fd(&self) -> Option<RawFd>;
    /// Whether buffers for the fd path must be aligned to this many bytes
    /// (O_DIRECT); 0 or 1 when any alignment works.
    fn dma_alignment(&self) -> usize {
        1
    }
    /// Zero a range (Write Zeroes). May block briefly (fallocate on files,
    /// BLKZEROOUT on devices); afterwards the range reads as zeros.
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Deallocate a range (Dataset Management). Afterwards the range reads as
    /// zeros when [`Backend::deallocated_reads_zero`] is true; otherwise its
    /// content is unspecified (the device decides).
    fn deallocate(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Whether deallocated blocks read as zeros (Identify Namespace DLFEAT).
    fn deallocated_reads_zero(&self) -> bool {
        true
    }
    /// Make written data durable (synchronous variant, for memory backends a no-op).
    fn flush_sync(&self) -> io::Result<()>;
    /// Whether data survives a restart of the target (a volatile write cache
    /// is still flushed by [`Backend::flush_sync`] / fsync).
    fn persistent(&self) -> bool {
        false
    }
    /// Change the capacity, where the backend allows it.
    fn resize(&self, _new_size_bytes: u64) -> io::Result<()> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "this backend cannot be resized"))
    }
}

/// Open the backend of a namespace. `ns` must be normalized
/// ([`crate::config::TargetConfig::normalized`]): kind, size, path and block
/// size are taken as valid; errors name the path or the problem.
pub fn open(ns: &NamespaceConfig) -> io::Result<Arc<dyn Backend>> {
    let block_size = ns.block_size_bytes();
    let need_size = || {
        ns.size_bytes().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("a {} namespace needs a valid size", ns.kind))
        })
    };
    let need_path = || {
        ns.path
            .as_deref()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("a {} namespace needs a path", ns.kind)))
    };
    Ok(match ns.kind.as_str() {
        "null" => Arc::new(NullBackend::new(need_size()?)),
        "ram" => Arc::new(RamBackend::new(need_size()?)?),
        "file" => Arc::new(FileBackend::open(need_path()?, ns.size_bytes(), block_size)?),
        "block" => Arc::new(BlockBackend::open(need_path()?, block_size)?),
        other => {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("unknown namespace kind {other:?}")));
        }
    })
}

/// Check `offset..offset+len` against `size`; the error says what was asked.
pub(crate) fn check_range(offset: u64, len: u64, size: u64) -> io::Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("range {offset}+{len} is beyond the namespace end ({size} bytes)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_dispatches_on_kind() {
        let mut ns = NamespaceConfig::ram("1MiB");
        let b = open(&ns).unwrap();
        assert_eq!((b.kind(), b.size_bytes()), ("ram", 1 << 20));
        ns.kind = "null".into();
        let b = open(&ns).unwrap();
        assert_eq!((b.kind(), b.size_bytes()), ("null", 1 << 20));
        ns.kind = "disk".into();
        assert!(open(&ns).is_err());
        let dir = tempfile::tempdir().unwrap();
        let mut f = NamespaceConfig::new("file");
        f.path = Some(dir.path().join("d.img").to_str().unwrap().to_string());
        f.size = Some("64KiB".into());
        let b = open(&f).unwrap();
        assert_eq!((b.kind(), b.size_bytes()), ("file", 64 << 10));
        assert!(b.fd().is_some());
        let mut blk = NamespaceConfig::new("block");
        blk.path = f.path.clone();
        let e = open(&blk).err().unwrap().to_string();
        assert!(e.contains("not a block device"), "{e}");
    }

    #[test]
    fn range_check() {
        assert!(check_range(0, 10, 10).is_ok());
        assert!(check_range(1, 10, 10).is_err());
        assert!(check_range(u64::MAX, 2, u64::MAX).is_err());
    }
}
