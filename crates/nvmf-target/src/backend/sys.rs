//! Thin, checked wrappers over the system calls the backends use.

use std::alloc::{self, Layout};
use std::io;
use std::os::fd::RawFd;
use std::ptr::NonNull;

/// Alignment of buffers used with O_DIRECT (a page covers every device's
/// logical block size we accept: 512 and 4096).
pub(crate) const DIRECT_IO_ALIGNMENT: usize = 4096;

/// The system page size.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v > 0 {
        v as usize
    } else {
        4096
    }
}

/// A zero-initialised heap buffer with a fixed alignment (for O_DIRECT).
pub(crate) struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl AlignedBuf {
    /// `len` zero bytes aligned to `align` (a power of two); `len` > 0.
    pub(crate) fn zeroed(len: usize, align: usize) -> io::Result<AlignedBuf> {
        let layout = Layout::from_size_align(len.max(1), align)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        // SAFETY: layout has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        Ok(AlignedBuf { ptr, layout })
    }
    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for layout.size() initialised bytes for our lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

fn to_off(offset: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(offset).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))
}

/// `pread` until `buf` is full; a short file is an `UnexpectedEof` error.
pub(crate) fn pread_exact(fd: RawFd, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: buf is valid for buf.len() writable bytes.
        let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), to_off(offset)?) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf = &mut buf[n as usize..];
        offset += n as u64;
    }
    Ok(())
}

/// `pwrite` all of `buf`.
pub(crate) fn pwrite_all(fd: RawFd, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: buf is valid for buf.len() readable bytes.
        let n = unsafe { libc::pwrite(fd, buf.as_ptr().cast(), buf.len(), to_off(offset)?) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n as usize..];
        offset += n as u64;
    }
    Ok(())
}

/// Write zeros over `offset..offset+len` with `pwrite`, in chunks of at most
/// 1 MiB from an aligned buffer (valid under O_DIRECT when offset and len are
/// multiples of the logical block size).
pub(crate) fn write_zeros_by_pwrite(fd: RawFd, offset: u64, len: u64) -> io::Result<()> {
    const CHUNK_BYTES: u64 = 1 << 20;
    let buf = AlignedBuf::zeroed(len.clamp(1, CHUNK_BYTES) as usize, DIRECT_IO_ALIGNMENT)?;
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(CHUNK_BYTES) as usize;
        pwrite_all(fd, &buf.as_slice()[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// `fallocate(fd, mode, offset, len)`.
pub(crate) fn fallocate(fd: RawFd, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    loop {
        // SAFETY: plain syscall on a descriptor we own.
        let r = unsafe { libc::fallocate(fd, mode, to_off(offset)?, to_off(len)?) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Whether `e` means "this file system / device does not do that operation".
pub(crate) fn is_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::ENOTTY))
}

/// `fdatasync`.
pub(crate) fn fdatasync(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we own.
    if unsafe { libc::fdatasync(fd) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
