//! `file` backend: a regular file, read and written by the queues through
//! io_uring on [`Backend::fd`].
//!
//! Opening: the file is created when a size is configured and it is missing,
//! and extended (sparsely) when it is smaller than that size; it is never
//! shrunk at open (a larger file exposes only its first `size` bytes). With no
//! configured size the namespace is the file's length rounded down to whole
//! blocks.
//!
//! O_DIRECT is used when the file system supports it for the namespace block
//! size: the file is opened with O_DIRECT and one block is read with an
//! aligned buffer as a probe; if either fails with EINVAL (tmpfs, some FUSE
//! file systems, a 512 B namespace on a 4 KiB-sector device) the file is
//! reopened buffered. Buffered files are still made durable by Flush (fsync).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::sys::{self, AlignedBuf, DIRECT_IO_ALIGNMENT};
use super::{check_range, Backend};

/// File-backed namespace.
#[derive(Debug)]
pub struct FileBackend {
    file: File,
    path: PathBuf,
    /// Changed only by [`Backend::resize`] (control plane); read on the I/O path.
    size_bytes: AtomicU64,
    block_size: u32,
    direct: bool,
}

fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn open_file(path: &Path, create: bool, direct: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).write(true).create(create).mode(0o600);
    o.custom_flags(libc::O_CLOEXEC | if direct { libc::O_DIRECT } else { 0 });
    o.open(path)
}

impl FileBackend {
    /// Open (or create, when `size_bytes` is given) the file at `path`.
    /// `block_size` is the namespace block size (512 or 4096).
    pub fn open(path: impl AsRef<Path>, size_bytes: Option<u64>, block_size: u32) -> io::Result<FileBackend> {
        let path = path.as_ref();
        debug_assert!(block_size.is_power_of_two() && block_size >= 512);
        match std::fs::metadata(path) {
            Ok(m) if m.file_type().is_block_device() => {
                return Err(with_path(
                    path,
                    io::Error::new(io::ErrorKind::InvalidInput, "is a block device (use kind = \"block\")"),
                ));
            }
            Ok(m) if !m.is_file() => {
                return Err(with_path(path, io::Error::new(io::ErrorKind::InvalidInput, "is not a regular file")));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound && size_bytes.is_some() => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let hint = "no such file (give a size to create it: --namespace file:PATH:SIZE, or size = \"...\" \
                            in the namespace's configuration)";
                return Err(with_path(path, io::Error::new(io::ErrorKind::NotFound, hint)));
            }
            Err(e) => return Err(with_path(path, e)),
        }
        let create = size_bytes.is_some();
        let (mut file, mut direct) = match open_file(path, create, true) {
            Ok(f) => (f, true),
            // The file system refuses O_DIRECT (tmpfs): buffered.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                (open_file(path, create, false).map_err(|e| with_path(path, e))?, false)
            }
            Err(e) => return Err(with_path(path, e)),
        };
        let len = file.metadata().map_err(|e| with_path(path, e))?.len();
        let size = match size_bytes {
            Some(size) => {
                if len < size {
                    file.set_len(size).map_err(|e| with_path(path, e))?;
                }
                size
            }
            None => len - len % u64::from(block_size),
        };
        if size == 0 || !size.is_multiple_of(u64::from(block_size)) {
            return Err(with_path(
                path,
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("file holds {len} bytes: not even one {block_size}-byte block (give a size to extend it)"),
                ),
            ));
        }
        if direct && !direct_read_works(&file, block_size) {
            file = open_file(path, false, false).map_err(|e| with_path(path, e))?;
            direct = false;
        }
        tracing::debug!(path = %path.display(), size, direct, "file namespace opened");
        Ok(FileBackend { file, path: path.to_path_buf(), size_bytes: AtomicU64::new(size), block_size, direct })
    }

    /// Whether the file is open with O_DIRECT.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn size(&self) -> u64 {
        self.size_bytes.load(Ordering::Relaxed)
    }
}

/// Probe: can one aligned block be read at offset 0 under O_DIRECT?
fn direct_read_works(file: &File, block_size: u32) -> bool {
    let Ok(mut buf) = AlignedBuf::zeroed(block_size as usize, DIRECT_IO_ALIGNMENT) else {
        return false;
    };
    match sys::pread_exact(file.as_raw_fd(), buf.as_mut_slice(), 0) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, "O_DIRECT probe read failed; using buffered I/O");
            false
        }
    }
}

impl Backend for FileBackend {
    fn kind(&self) -> &'static str {
        "file"
    }
    fn size_bytes(&self) -> u64 {
        self.size()
    }
    fn read_sync(&self, _offset: u64, _dst: &mut [u8]) -> Option<io::Result<()>> {
        None
    }
    fn write_sync(&self, _offset: u64, _src: &[u8]) -> Option<io::Result<()>> {
        None
    }
    fn fd(&self) -> Option<RawFd> {
        Some(self.file.as_raw_fd())
    }
    fn dma_alignment(&self) -> usize {
        if self.direct {
            DIRECT_IO_ALIGNMENT
        } else {
            1
        }
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        check_range(offset, len, self.size())?;
        if len == 0 {
            return Ok(());
        }
        let fd = self.file.as_raw_fd();
        match sys::fallocate(fd, libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE, offset, len) {
            Ok(()) => Ok(()),
            // tmpfs, NFS, ...: no ZERO_RANGE; write zeros instead.
            Err(e) if sys::is_unsupported(&e) || e.raw_os_error() == Some(libc::EINVAL) => {
                sys::write_zeros_by_pwrite(fd, offset, len)
            }
            Err(e) => Err(e),
        }
    }
    fn deallocate(&self, offset: u64, len: u64) -> io::Result<()> {
        check_range(offset, len, self.size())?;
        if len == 0 {
            return Ok(());
        }
        match sys::fallocate(self.file.as_raw_fd(), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, offset, len)
        {
            Ok(()) => Ok(()),
            // No hole punching: keep the "reads as zeros" promise by zeroing.
            Err(e) if sys::is_unsupported(&e) || e.raw_os_error() == Some(libc::EINVAL) => {
                self.write_zeroes(offset, len)
            }
            Err(e) => Err(e),
        }
    }
    fn flush_sync(&self) -> io::Result<()> {
        sys::fdatasync(self.file.as_raw_fd())
    }
    fn persistent(&self) -> bool {
        true
    }
    fn resize(&self, new_size_bytes: u64) -> io::Result<()> {
        if new_size_bytes == 0 || !new_size_bytes.is_multiple_of(u64::from(self.block_size)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("new size {new_size_bytes} is not a non-zero multiple of {}", self.block_size),
            ));
        }
        self.file.set_len(new_size_bytes).map_err(|e| with_path(&self.path, e))?;
        self.size_bytes.store(new_size_bytes, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(b: &FileBackend, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = AlignedBuf::zeroed(len, DIRECT_IO_ALIGNMENT).unwrap();
        sys::pread_exact(b.fd().unwrap(), buf.as_mut_slice(), offset).unwrap();
        buf.as_slice().to_vec()
    }

    fn write(b: &FileBackend, offset: u64, data: &[u8]) {
        let mut buf = AlignedBuf::zeroed(data.len(), DIRECT_IO_ALIGNMENT).unwrap();
        nvmf_proto::copy::copy_bytes(buf.as_mut_slice(), data);
        sys::pwrite_all(b.fd().unwrap(), buf.as_slice(), offset).unwrap();
    }

    /// Directories to test in: the temp dir, /var/tmp (usually a disk file
    /// system: O_DIRECT) and /dev/shm (tmpfs: no O_DIRECT before Linux 6.6,
    /// and no FALLOC_FL_ZERO_RANGE), so both paths run where they exist.
    fn test_dirs() -> Vec<tempfile::TempDir> {
        let mut v = vec![tempfile::tempdir().unwrap()];
        for d in ["/var/tmp", "/dev/shm"] {
            if let Ok(d) = tempfile::tempdir_in(d) {
                v.push(d);
            }
        }
        v
    }

    #[test]
    fn creates_extends_and_serves_io() {
        for dir in test_dirs() {
            let p = dir.path().join("ns.img");
            let b = FileBackend::open(&p, Some(1 << 20), 512).unwrap();
            assert_eq!(b.size_bytes(), 1 << 20);
            assert_eq!(std::fs::metadata(&p).unwrap().len(), 1 << 20);
            assert!(b.read_sync(0, &mut [0; 512]).is_none());
            assert!(b.write_sync(0, &[0; 512]).is_none());
            assert_eq!(b.dma_alignment(), if b.is_direct() { 4096 } else { 1 });
            assert!(b.persistent());
            let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
            write(&b, 4096, &data);
            b.flush_sync().unwrap();
            assert_eq!(read(&b, 4096, 8192), data);
            drop(b);

            // Reopen larger: extended, data kept.
            let b = FileBackend::open(&p, Some(2 << 20), 512).unwrap();
            assert_eq!(std::fs::metadata(&p).unwrap().len(), 2 << 20);
            assert_eq!(read(&b, 4096, 8192), data);
            drop(b);
            // Reopen smaller: never shrunk, only the prefix is exposed.
            let b = FileBackend::open(&p, Some(1 << 20), 512).unwrap();
            assert_eq!(b.size_bytes(), 1 << 20);
            assert_eq!(std::fs::metadata(&p).unwrap().len(), 2 << 20);
            drop(b);
            // No size: the file's length.
            let b = FileBackend::open(&p, None, 4096).unwrap();
            assert_eq!(b.size_bytes(), 2 << 20);
        }
    }

    #[test]
    fn zeroes_and_deallocate_read_back_zero() {
        for dir in test_dirs() {
            let p = dir.path().join("z.img");
            let b = FileBackend::open(&p, Some(256 << 10), 512).unwrap();
            write(&b, 0, &vec![0x5a; 256 << 10]);
            b.write_zeroes(512, 4096 + 512).unwrap();
            b.deallocate(64 << 10, 64 << 10).unwrap();
            let all = read(&b, 0, 256 << 10);
            assert!(all[..512].iter().all(|&x| x == 0x5a));
            assert!(all[512..5120].iter().all(|&x| x == 0));
            assert!(all[5120..64 << 10].iter().all(|&x| x == 0x5a));
            assert!(all[64 << 10..128 << 10].iter().all(|&x| x == 0));
            assert!(all[128 << 10..].iter().all(|&x| x == 0x5a));
            assert!(b.write_zeroes(255 << 10, 2 << 10).is_err());
            assert!(b.deallocate(u64::MAX, 1).is_err());
        }
    }

    #[test]
    fn zero_fallback_by_pwrite() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.img");
        let b = FileBackend::open(&p, Some(3 << 20), 512).unwrap();
        write(&b, 0, &vec![1; 3 << 20]);
        sys::write_zeros_by_pwrite(b.fd().unwrap(), 512, (2 << 20) + 1024).unwrap();
        let all = read(&b, 0, 3 << 20);
        assert_eq!(all[511], 1);
        assert!(all[512..(2 << 20) + 1536].iter().all(|&x| x == 0));
        assert_eq!(all[(2 << 20) + 1536], 1);
    }

    #[test]
    fn resize_grows_and_shrinks() {
        let dir = tempfile::tempdir().unwrap();
        let b = FileBackend::open(dir.path().join("r.img"), Some(1 << 20), 4096).unwrap();
        b.resize(4 << 20).unwrap();
        assert_eq!(b.size_bytes(), 4 << 20);
        b.resize(512 << 10).unwrap();
        assert_eq!(b.size_bytes(), 512 << 10);
        assert!(b.resize(1000).is_err());
        assert!(b.resize(0).is_err());
    }

    #[test]
    fn open_errors() {
        let dir = tempfile::tempdir().unwrap();
        // Missing and no size: not created.
        let e = FileBackend::open(dir.path().join("none.img"), None, 512).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("none.img"), "{e}");
        // Too small to hold a block.
        let small = dir.path().join("small.img");
        std::fs::write(&small, [0u8; 100]).unwrap();
        let e = FileBackend::open(&small, None, 512).unwrap_err().to_string();
        assert!(e.contains("small.img") && e.contains("block"), "{e}");
        // A directory.
        let e = FileBackend::open(dir.path(), None, 512).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }
}
