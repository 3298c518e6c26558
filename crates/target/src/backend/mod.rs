//! Namespace backends.
//!
//! A backend is shared by every queue (core) that reaches its namespace, so it
//! is `Send + Sync`. Two I/O paths exist:
//! - memory backends (`null`, `ram`) complete synchronously on the calling
//!   core: [`Backend::read_sync`] / [`Backend::write_sync`] return `Some`.
//! - descriptor backends (`file`, `block`) expose [`Backend::fd`]; the queue
//!   submits reads, writes and fsyncs for them through the core's io_uring
//!   (`nvmf_engine::ConnIo::submit_*`), so a core never blocks on storage.
//!
//! Every offset and length handed to a backend has already been checked
//! against [`Backend::size_bytes`] by the I/O command code.

use std::io;
use std::os::fd::RawFd;

/// Storage behind one namespace.
pub trait Backend: Send + Sync {
    /// "null", "ram", "file" or "block".
    fn kind(&self) -> &'static str;
    /// Capacity in bytes (a multiple of the namespace block size).
    fn size_bytes(&self) -> u64;
    /// Copy `dst.len()` bytes at `offset` into `dst`. `None`: use the fd path.
    fn read_sync(&self, offset: u64, dst: &mut [u8]) -> Option<io::Result<()>>;
    /// Store `src` at `offset`. `None`: use the fd path.
    fn write_sync(&self, offset: u64, src: &[u8]) -> Option<io::Result<()>>;
    /// Descriptor for io_uring reads/writes/fsyncs, for file and block backends.
    fn fd(&self) -> Option<RawFd>;
    /// Whether buffers for the fd path must be aligned to this many bytes
    /// (O_DIRECT); 0 or 1 when any alignment works.
    fn dma_alignment(&self) -> usize {
        1
    }
    /// Zero a range (Write Zeroes). May block briefly (fallocate on files).
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Deallocate a range (Dataset Management). Reads of it return zeros afterwards.
    fn deallocate(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Make written data durable (synchronous variant, for memory backends a no-op).
    fn flush_sync(&self) -> io::Result<()>;
    /// Change the capacity, where the backend allows it.
    fn resize(&self, _new_size_bytes: u64) -> io::Result<()> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "this backend cannot be resized"))
    }
}
