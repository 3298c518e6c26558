//! Command data buffers from a per-core pool.
//!
//! A command that needs a buffer of its own (host data fetched with R2T for a
//! file or block namespace, a read from one, a Compare, a bounce buffer when
//! data digests must be checked before memory is written) takes a
//! [`DataBuf`] for as long as it runs and gives it back when it completes, so
//! an idle queue holds no data memory. Buffers are page-aligned anonymous
//! mappings (O_DIRECT needs the alignment) in power-of-two size classes from
//! 4 KiB up; each core keeps freed buffers in its own free lists (a
//! thread-local pool: a queue lives on one core, so taking and giving back
//! need no lock) up to [`POOL_CACHED_BYTES_MAX`] and unmaps the rest, so
//! memory goes back to the system once a burst is over.
//!
//! Bounds: a buffer is at most `2 × mdts_bytes` (Compare holds the host's
//! data and the media's); one per command slot, so a queue holds at most
//! `queue entries × 2 × mdts_bytes`; cached free buffers per core at most
//! [`POOL_CACHED_BYTES_MAX`].

use std::cell::RefCell;
use std::ptr::NonNull;

/// Alignment of every data buffer (O_DIRECT needs the logical block size).
pub const DATA_BUF_ALIGN: usize = 4096;
/// Smallest size class.
const CLASS_MIN_BYTES: usize = 4096;
/// Size classes: 4 KiB << 0 ..= 4 KiB << 12 (16 MiB, twice the largest MDTS).
const CLASSES: usize = 13;
/// Largest buffer the pool hands out.
pub const DATA_BUF_BYTES_MAX: usize = CLASS_MIN_BYTES << (CLASSES - 1);
/// Freed bytes a core keeps for reuse; more are unmapped.
pub const POOL_CACHED_BYTES_MAX: usize = 64 << 20;

/// A page-aligned buffer of a power-of-two size from the calling core's pool.
/// Dropping it gives it back.
pub struct DataBuf {
    ptr: NonNull<u8>,
    class: u8,
}

// SAFETY: the buffer is plain memory owned by this value; a queue that is
// dropped on another thread (engine shutdown) gives it to that thread's pool.
unsafe impl Send for DataBuf {}

impl std::fmt::Debug for DataBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataBuf({} bytes)", self.capacity())
    }
}

fn class_bytes(class: u8) -> usize {
    CLASS_MIN_BYTES << class
}

fn class_for(len: usize) -> Option<u8> {
    if len > DATA_BUF_BYTES_MAX {
        return None;
    }
    let pages = len.max(1).div_ceil(CLASS_MIN_BYTES);
    Some(pages.next_power_of_two().trailing_zeros() as u8)
}

#[derive(Default)]
struct Pool {
    free: [Vec<NonNull<u8>>; CLASSES],
    cached_bytes: usize,
    in_use_bytes: usize,
    mapped_bytes: usize,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

fn map(bytes: usize) -> Option<NonNull<u8>> {
    // SAFETY: anonymous private mapping; no file, no fixed address.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    debug_assert_eq!(p as usize % DATA_BUF_ALIGN, 0);
    NonNull::new(p as *mut u8)
}

fn unmap(p: NonNull<u8>, bytes: usize) {
    // SAFETY: `p` was returned by `map(bytes)` and is no longer referenced.
    let r = unsafe { libc::munmap(p.as_ptr() as *mut libc::c_void, bytes) };
    debug_assert_eq!(r, 0);
}

impl DataBuf {
    /// A buffer of at least `len` bytes (contents unspecified), or `None` when
    /// `len` is above [`DATA_BUF_BYTES_MAX`] or the system has no memory.
    pub fn take(len: usize) -> Option<DataBuf> {
        let class = class_for(len)?;
        let bytes = class_bytes(class);
        POOL.with(|p| {
            let mut p = p.borrow_mut();
            let ptr = match p.free[class as usize].pop() {
                Some(ptr) => {
                    p.cached_bytes -= bytes;
                    ptr
                }
                None => {
                    let ptr = map(bytes)?;
                    p.mapped_bytes += bytes;
                    ptr
                }
            };
            p.in_use_bytes += bytes;
            Some(DataBuf { ptr, class })
        })
    }

    pub fn capacity(&self) -> usize {
        class_bytes(self.class)
    }
    pub fn as_slice(&self, len: usize) -> &[u8] {
        assert!(len <= self.capacity());
        // SAFETY: the mapping is valid for capacity() bytes while we own it.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), len) }
    }
    pub fn as_mut_slice(&mut self, len: usize) -> &mut [u8] {
        assert!(len <= self.capacity());
        // SAFETY: as above, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), len) }
    }
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for DataBuf {
    fn drop(&mut self) {
        let bytes = self.capacity();
        let ptr = self.ptr;
        let class = self.class as usize;
        let kept = POOL
            .try_with(|p| {
                let mut p = p.borrow_mut();
                // Buffers taken on another thread are simply adopted here.
                p.in_use_bytes = p.in_use_bytes.saturating_sub(bytes);
                if p.cached_bytes + bytes <= POOL_CACHED_BYTES_MAX {
                    p.free[class].push(ptr);
                    p.cached_bytes += bytes;
                    true
                } else {
                    p.mapped_bytes = p.mapped_bytes.saturating_sub(bytes);
                    false
                }
            })
            .unwrap_or(false);
        if !kept {
            unmap(ptr, bytes);
        }
    }
}

/// This core's pool: (bytes in use, bytes cached free, bytes mapped).
pub fn pool_bytes() -> (usize, usize, usize) {
    POOL.with(|p| {
        let p = p.borrow();
        (p.in_use_bytes, p.cached_bytes, p.mapped_bytes)
    })
}

/// Unmap every cached buffer of this core's pool (tests, and a core going idle).
pub fn pool_trim() {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        for class in 0..CLASSES {
            let bytes = class_bytes(class as u8);
            for ptr in std::mem::take(&mut p.free[class]) {
                unmap(ptr, bytes);
                p.mapped_bytes = p.mapped_bytes.saturating_sub(bytes);
            }
        }
        p.cached_bytes = 0;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_round_up_to_powers_of_two_pages() {
        assert_eq!(class_for(0), Some(0));
        assert_eq!(class_for(1), Some(0));
        assert_eq!(class_for(4096), Some(0));
        assert_eq!(class_for(4097), Some(1));
        assert_eq!(class_for(128 * 1024), Some(5));
        assert_eq!(class_for(DATA_BUF_BYTES_MAX), Some(12));
        assert_eq!(class_for(DATA_BUF_BYTES_MAX + 1), None);
    }

    #[test]
    fn take_give_back_reuse_and_trim() {
        pool_trim();
        let (u0, c0, _) = pool_bytes();
        assert_eq!((u0, c0), (0, 0));
        let mut a = DataBuf::take(5000).unwrap();
        assert_eq!(a.capacity(), 8192);
        assert_eq!(a.as_mut_ptr() as usize % DATA_BUF_ALIGN, 0);
        a.as_mut_slice(5000).fill(7);
        let p = a.as_ptr();
        assert_eq!(pool_bytes().0, 8192);
        drop(a);
        assert_eq!(pool_bytes(), (0, 8192, 8192));
        let b = DataBuf::take(8000).unwrap();
        assert_eq!(b.as_ptr(), p, "the cached buffer is reused");
        drop(b);
        pool_trim();
        assert_eq!(pool_bytes(), (0, 0, 0));
        assert!(DataBuf::take(DATA_BUF_BYTES_MAX + 1).is_none());
    }

    #[test]
    fn cache_is_bounded() {
        pool_trim();
        let bufs: Vec<DataBuf> =
            (0..(POOL_CACHED_BYTES_MAX / (1 << 20)) + 8).map(|_| DataBuf::take(1 << 20).unwrap()).collect();
        drop(bufs);
        let (used, cached, mapped) = pool_bytes();
        assert_eq!(used, 0);
        assert!(cached <= POOL_CACHED_BYTES_MAX && mapped == cached, "{cached} {mapped}");
        pool_trim();
    }
}
