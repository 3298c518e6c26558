//! `block` backend: a block device opened O_RDWR | O_DIRECT | O_EXCL, read
//! and written by the queues through io_uring on [`Backend::fd`].
//!
//! O_EXCL makes the open fail (EBUSY) while the device is mounted or held by
//! another exclusive user, so the target never writes under a file system.
//! Size comes from BLKGETSIZE64 (rounded down to whole namespace blocks) and
//! the device's logical block size from BLKSSZGET: a namespace block size
//! smaller than it is refused, because O_DIRECT I/O could not be issued.
//! Write Zeroes uses BLKZEROOUT (reads back zeros; the kernel offloads it
//! when the device can), Deallocate uses BLKDISCARD (advisory: what a
//! discarded block reads as is up to the device, so
//! [`Backend::deallocated_reads_zero`] is false).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::sys::{self, DIRECT_IO_ALIGNMENT};
use super::{check_range, Backend};

// Block-layer ioctls from <linux/fs.h>, with the generic _IOC encoding used by
// x86, arm, arm64 and riscv (libc only exports BLKSSZGET).
const BLKGETSIZE64: libc::Ioctl = 0x8008_1272; // _IOR(0x12, 114, size_t)
const BLKDISCARD: libc::Ioctl = 0x1277; // _IO(0x12, 119), arg: u64[2] {start, len}
const BLKZEROOUT: libc::Ioctl = 0x127f; // _IO(0x12, 127), arg: u64[2] {start, len}

/// Block-device namespace.
#[derive(Debug)]
pub struct BlockBackend {
    file: File,
    path: PathBuf,
    size_bytes: u64,
    logical_block_bytes: u32,
}

fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn ioctl_range(fd: RawFd, request: libc::Ioctl, offset: u64, len: u64) -> io::Result<()> {
    let range: [u64; 2] = [offset, len];
    // SAFETY: both requests read a u64[2] from the pointer, which is valid for the call.
    if unsafe { libc::ioctl(fd, request, range.as_ptr()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl BlockBackend {
    /// Open the block device at `path` for a namespace of `block_size` bytes per block.
    pub fn open(path: impl AsRef<Path>, block_size: u32) -> io::Result<BlockBackend> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| with_path(path, e))?;
        if !meta.file_type().is_block_device() {
            return Err(with_path(
                path,
                io::Error::new(io::ErrorKind::InvalidInput, "is not a block device (use kind = \"file\")"),
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_EXCL | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::EBUSY) {
                    with_path(path, io::Error::new(e.kind(), format!("{e} (mounted or in use by another program?)")))
                } else {
                    with_path(path, e)
                }
            })?;
        let fd = file.as_raw_fd();
        let mut device_bytes: u64 = 0;
        // SAFETY: BLKGETSIZE64 writes one u64 to the pointer.
        if unsafe { libc::ioctl(fd, BLKGETSIZE64, &mut device_bytes as *mut u64) } != 0 {
            return Err(with_path(path, io::Error::last_os_error()));
        }
        let mut logical: libc::c_int = 0;
        // SAFETY: BLKSSZGET writes one int to the pointer.
        if unsafe { libc::ioctl(fd, libc::BLKSSZGET, &mut logical as *mut libc::c_int) } != 0 {
            return Err(with_path(path, io::Error::last_os_error()));
        }
        let logical_block_bytes = u32::try_from(logical).unwrap_or(0);
        if logical_block_bytes == 0 || block_size < logical_block_bytes {
            return Err(with_path(
                path,
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "block_size {block_size} is smaller than the device's logical block size {logical_block_bytes}"
                    ),
                ),
            ));
        }
        let size_bytes = device_bytes - device_bytes % u64::from(block_size);
        if size_bytes == 0 {
            return Err(with_path(path, io::Error::new(io::ErrorKind::InvalidInput, "device is empty")));
        }
        Ok(BlockBackend { file, path: path.to_path_buf(), size_bytes, logical_block_bytes })
    }

    /// The device's logical block size.
    pub fn logical_block_bytes(&self) -> u32 {
        self.logical_block_bytes
    }

    /// The device path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Backend for BlockBackend {
    fn kind(&self) -> &'static str {
        "block"
    }
    fn size_bytes(&self) -> u64 {
        self.size_bytes
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
        DIRECT_IO_ALIGNMENT
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        check_range(offset, len, self.size_bytes)?;
        if len == 0 {
            return Ok(());
        }
        ioctl_range(self.file.as_raw_fd(), BLKZEROOUT, offset, len)
    }
    fn deallocate(&self, offset: u64, len: u64) -> io::Result<()> {
        check_range(offset, len, self.size_bytes)?;
        if len == 0 {
            return Ok(());
        }
        match ioctl_range(self.file.as_raw_fd(), BLKDISCARD, offset, len) {
            // Deallocate is a hint: a device without discard simply keeps the data.
            Err(e) if sys::is_unsupported(&e) => Ok(()),
            r => r,
        }
    }
    fn deallocated_reads_zero(&self) -> bool {
        false
    }
    fn flush_sync(&self) -> io::Result<()> {
        sys::fdatasync(self.file.as_raw_fd())
    }
    fn persistent(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn regular_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("not-a-device.img");
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        let e = BlockBackend::open(&p, 512).unwrap_err().to_string();
        assert!(e.contains("not a block device") && e.contains("not-a-device.img"), "{e}");
        assert!(BlockBackend::open(dir.path().join("missing"), 512).is_err());
    }

    /// A loop device over a sparse file, detached on drop.
    struct Loop {
        dev: String,
        _dir: tempfile::TempDir,
    }
    impl Drop for Loop {
        fn drop(&mut self) {
            let _ = Command::new("losetup").args(["-d", &self.dev]).status();
        }
    }
    fn loop_device(bytes: u64) -> Option<Loop> {
        let dir = tempfile::tempdir_in("/var/tmp").ok()?;
        let img = dir.path().join("loop.img");
        std::fs::File::create(&img).ok()?.set_len(bytes).ok()?;
        let out = Command::new("losetup").args(["-f", "--show"]).arg(&img).output().ok()?;
        if !out.status.success() {
            return None;
        }
        let dev = String::from_utf8(out.stdout).ok()?.trim().to_string();
        Some(Loop { dev, _dir: dir })
    }

    #[test]
    #[ignore = "needs root, losetup and a free loop device (scripts/test.sh runs it as root)"]
    fn loop_device_io() {
        let lo = loop_device(4 << 20).expect("a loop device (needs root and /dev/loop-control)");
        let b = BlockBackend::open(&lo.dev, 512).unwrap();
        assert_eq!(b.size_bytes(), 4 << 20);
        assert_eq!(b.dma_alignment(), 4096);
        let fd = b.fd().unwrap();
        let mut buf = sys::AlignedBuf::zeroed(8192, 4096).unwrap();
        buf.as_mut_slice().fill(0x77);
        sys::pwrite_all(fd, buf.as_slice(), 4096).unwrap();
        b.flush_sync().unwrap();
        b.write_zeroes(4096, 4096).unwrap();
        let mut back = sys::AlignedBuf::zeroed(8192, 4096).unwrap();
        sys::pread_exact(fd, back.as_mut_slice(), 4096).unwrap();
        assert!(back.as_slice()[..4096].iter().all(|&x| x == 0));
        assert!(back.as_slice()[4096..].iter().all(|&x| x == 0x77));
        b.deallocate(0, 1 << 20).unwrap();
        assert!(b.write_zeroes(4 << 20, 512).is_err());
        // Exclusive: a second open is refused while the first is held.
        assert!(BlockBackend::open(&lo.dev, 512).is_err());
    }
}
