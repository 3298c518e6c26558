//! `ram` backend: an anonymous private mapping with MAP_NORESERVE, so a
//! namespace costs memory only for the pages hosts have written; unwritten
//! pages read as zeros through the kernel's shared zero page.
//!
//! Concurrency: every core that serves the namespace copies into and out of
//! the mapping with plain `ptr::copy_nonoverlapping`, without locks. As on a
//! real NVMe device, concurrent commands that overlap the same LBAs have no
//! ordering guarantee relative to each other (a read racing a write may see
//! old data, new data or a mix of the two per byte); non-overlapping commands
//! never interfere. The mapping itself lives as long as the backend, so no
//! access can outlive it.

use std::io;
use std::os::fd::RawFd;
use std::ptr::NonNull;

use super::sys::page_size;
use super::{check_range, Backend};

/// Memory-backed namespace.
pub struct RamBackend {
    base: NonNull<u8>,
    size_bytes: u64,
    map_len: usize,
    page_bytes: usize,
}

// SAFETY: the mapping is owned by the backend for its whole life; all access
// goes through bounds-checked raw copies (see the module docs for the data
// race semantics, which match a real device's).
unsafe impl Send for RamBackend {}
// SAFETY: as above.
unsafe impl Sync for RamBackend {}

impl RamBackend {
    /// Reserve `size_bytes` (> 0) of lazily allocated, zeroed memory.
    pub fn new(size_bytes: u64) -> io::Result<RamBackend> {
        let page_bytes = page_size();
        let too_big = || io::Error::new(io::ErrorKind::InvalidInput, "ram namespace larger than the address space");
        if size_bytes == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "ram namespace size must not be 0"));
        }
        let size = usize::try_from(size_bytes).map_err(|_| too_big())?;
        let map_len = size.checked_next_multiple_of(page_bytes).ok_or_else(too_big)?;
        // SAFETY: anonymous mapping, no address hint; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("cannot map {size_bytes} bytes for a ram namespace: {e}")));
        }
        let base = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned NULL"))?;
        Ok(RamBackend { base, size_bytes, map_len, page_bytes })
    }

    /// Pointer to byte `offset` after checking `offset..offset+len`.
    fn at(&self, offset: u64, len: u64) -> io::Result<*mut u8> {
        check_range(offset, len, self.size_bytes)?;
        // SAFETY: offset + len <= size_bytes <= map_len, so the pointer is in the mapping.
        Ok(unsafe { self.base.as_ptr().add(offset as usize) })
    }

    /// Zero a range: whole pages are handed back to the kernel (they read as
    /// zeros and stop costing memory), partial pages at the edges are memset.
    fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        let start = self.at(offset, len)?;
        let (offset, len) = (offset as usize, len as usize);
        let end = offset + len;
        let first_page = offset.next_multiple_of(self.page_bytes);
        let last_page = end - end % self.page_bytes;
        if first_page >= last_page {
            // SAFETY: range checked by `at`.
            unsafe { std::ptr::write_bytes(start, 0, len) };
            return Ok(());
        }
        // SAFETY: all three pieces lie within offset..end, checked by `at`.
        unsafe {
            std::ptr::write_bytes(start, 0, first_page - offset);
            std::ptr::write_bytes(self.base.as_ptr().add(last_page), 0, end - last_page);
            let r =
                libc::madvise(self.base.as_ptr().add(first_page).cast(), last_page - first_page, libc::MADV_DONTNEED);
            if r != 0 {
                // Should not happen on a private anonymous mapping; zero by hand.
                std::ptr::write_bytes(self.base.as_ptr().add(first_page), 0, last_page - first_page);
            }
        }
        Ok(())
    }
}

impl Drop for RamBackend {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped; no reference into it survives `self`.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.map_len) };
    }
}

impl Backend for RamBackend {
    fn kind(&self) -> &'static str {
        "ram"
    }
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }
    fn read_sync(&self, offset: u64, dst: &mut [u8]) -> Option<io::Result<()>> {
        Some(self.at(offset, dst.len() as u64).map(|src| {
            // SAFETY: src is valid for dst.len() bytes (checked); dst is a distinct Rust buffer.
            unsafe { nvmf_proto::copy::copy_raw(dst.as_mut_ptr(), src, dst.len()) }
        }))
    }
    fn read_append(&self, offset: u64, len: usize, out: &mut Vec<u8>) -> Option<io::Result<()>> {
        Some(self.at(offset, len as u64).map(|src| {
            out.reserve(len);
            let start = out.len();
            // SAFETY: src is valid for len bytes (checked by `at`); the spare
            // capacity holds at least len bytes (reserved above) and is a
            // distinct allocation; every byte up to start + len is written
            // before set_len makes it visible.
            unsafe {
                nvmf_proto::copy::copy_raw(out.as_mut_ptr().add(start), src, len);
                out.set_len(start + len);
            }
        }))
    }
    fn write_sync(&self, offset: u64, src: &[u8]) -> Option<io::Result<()>> {
        Some(self.at(offset, src.len() as u64).map(|dst| {
            // SAFETY: dst is valid for src.len() bytes (checked); src is a distinct Rust buffer.
            unsafe { nvmf_proto::copy::copy_raw(dst, src.as_ptr(), src.len()) }
        }))
    }
    fn fd(&self) -> Option<RawFd> {
        None
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.zero_range(offset, len)
    }
    fn deallocate(&self, offset: u64, len: u64) -> io::Result<()> {
        self.zero_range(offset, len)
    }
    fn flush_sync(&self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn read_append_matches_read_sync_and_leaves_out_alone_on_error() {
        let b = RamBackend::new(1 << 20).unwrap();
        let pattern: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
        b.write_sync(4096, &pattern).unwrap().unwrap();
        let mut out = vec![0xaa; 3];
        b.read_append(4096, 8192, &mut out).unwrap().unwrap();
        assert_eq!(&out[..3], &[0xaa; 3]);
        assert_eq!(&out[3..], &pattern[..]);
        assert_eq!(read(&b, 4096, 8192), pattern);
        let before = out.clone();
        assert!(b.read_append((1 << 20) - 512, 1024, &mut out).unwrap().is_err());
        assert_eq!(out, before, "a failed read appends nothing");
    }

    fn read(b: &RamBackend, offset: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0xee; len];
        b.read_sync(offset, &mut v).unwrap().unwrap();
        v
    }

    #[test]
    fn write_then_read_back() {
        let b = RamBackend::new(1 << 20).unwrap();
        assert_eq!(read(&b, 0, 4096), vec![0; 4096]);
        let data: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
        b.write_sync(512, &data).unwrap().unwrap();
        assert_eq!(read(&b, 512, 8192), data);
        assert_eq!(read(&b, 0, 512), vec![0; 512]);
        // Last byte is reachable, one past is not.
        b.write_sync((1 << 20) - 1, &[9]).unwrap().unwrap();
        assert!(b.write_sync(1 << 20, &[9]).unwrap().is_err());
        assert!(b.read_sync(u64::MAX - 1, &mut [0; 4]).unwrap().is_err());
        b.flush_sync().unwrap();
    }

    #[test]
    fn sparse_terabyte_costs_nothing_until_written() {
        // 1 TiB of address space; only the touched page gets memory.
        let b = RamBackend::new(1 << 40).unwrap();
        b.write_sync((1 << 40) - 4096, &[1; 4096]).unwrap().unwrap();
        assert_eq!(read(&b, (1 << 40) - 4096, 4096), vec![1; 4096]);
        assert_eq!(read(&b, 1 << 39, 4096), vec![0; 4096]);
    }

    #[test]
    fn zeroing_whole_pages_and_edges() {
        let b = RamBackend::new(64 << 10).unwrap();
        b.write_sync(0, &vec![0xaa; 64 << 10]).unwrap().unwrap();
        // Unaligned range covering whole pages plus two partial edges.
        b.write_zeroes(1000, 20_000).unwrap();
        let all = read(&b, 0, 64 << 10);
        assert!(all[..1000].iter().all(|&x| x == 0xaa));
        assert!(all[1000..21_000].iter().all(|&x| x == 0));
        assert!(all[21_000..].iter().all(|&x| x == 0xaa));
        // Inside one page.
        b.deallocate(30_000, 100).unwrap();
        let all = read(&b, 0, 64 << 10);
        assert!(all[30_000..30_100].iter().all(|&x| x == 0));
        assert_eq!(all[29_999], 0xaa);
        assert_eq!(all[30_100], 0xaa);
        // Whole namespace.
        b.deallocate(0, 64 << 10).unwrap();
        assert!(read(&b, 0, 64 << 10).iter().all(|&x| x == 0));
        assert!(b.write_zeroes(60 << 10, 8 << 10).is_err());
    }

    #[test]
    fn concurrent_disjoint_writers() {
        let b = Arc::new(RamBackend::new(4 << 20).unwrap());
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let b = b.clone();
                std::thread::spawn(move || {
                    for i in 0..256u64 {
                        let off = (u64::from(t) << 20) + i * 4096;
                        b.write_sync(off, &[t + 1; 4096]).unwrap().unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        for t in 0..4u8 {
            assert!(read(&b, u64::from(t) << 20, 1 << 20).iter().all(|&x| x == t + 1));
        }
    }

    #[test]
    fn zero_size_rejected() {
        assert!(RamBackend::new(0).is_err());
    }
}
