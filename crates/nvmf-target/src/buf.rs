//! Aligned, grow-only data buffers for command data.
//!
//! Each queue slot owns one; it grows to the largest transfer that slot has
//! seen (bounded by MDTS, times two for Compare) and is then reused, so the
//! steady state allocates nothing per I/O. Alignment is 4096 bytes, which
//! satisfies O_DIRECT on every device we serve.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

/// Alignment of every data buffer (O_DIRECT needs the logical block size).
pub const DATA_BUF_ALIGN: usize = 4096;

pub struct AlignedBuf {
    ptr: NonNull<u8>,
    cap: usize,
}

impl Default for AlignedBuf {
    fn default() -> Self {
        AlignedBuf { ptr: NonNull::dangling(), cap: 0 }
    }
}

impl AlignedBuf {
    /// Make room for `len` bytes (contents are not preserved when it grows).
    pub fn ensure(&mut self, len: usize) {
        if len <= self.cap {
            return;
        }
        let cap = len.div_ceil(DATA_BUF_ALIGN) * DATA_BUF_ALIGN;
        let layout = Layout::from_size_align(cap, DATA_BUF_ALIGN).expect("buffer layout");
        // SAFETY: cap > 0 (len > self.cap >= 0 and rounded up to 4096).
        let p = unsafe { alloc_zeroed(layout) };
        let Some(p) = NonNull::new(p) else { std::alloc::handle_alloc_error(layout) };
        self.release();
        self.ptr = p;
        self.cap = cap;
    }
    pub fn capacity(&self) -> usize {
        self.cap
    }
    pub fn as_slice(&self, len: usize) -> &[u8] {
        assert!(len <= self.cap);
        if len == 0 {
            return &[];
        }
        // SAFETY: ptr is valid for cap bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), len) }
    }
    pub fn as_mut_slice(&mut self, len: usize) -> &mut [u8] {
        assert!(len <= self.cap);
        if len == 0 {
            return &mut [];
        }
        // SAFETY: ptr is valid for cap bytes and we hold &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), len) }
    }
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    fn release(&mut self) {
        if self.cap > 0 {
            // SAFETY: allocated in ensure() with exactly this layout.
            unsafe { dealloc(self.ptr.as_ptr(), Layout::from_size_align_unchecked(self.cap, DATA_BUF_ALIGN)) };
            self.cap = 0;
            self.ptr = NonNull::dangling();
        }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_aligned() {
        let mut b = AlignedBuf::default();
        assert_eq!(b.capacity(), 0);
        b.ensure(100);
        assert_eq!(b.capacity(), 4096);
        assert_eq!(b.as_mut_ptr() as usize % DATA_BUF_ALIGN, 0);
        b.as_mut_slice(100).fill(7);
        b.ensure(50);
        assert_eq!(b.as_slice(100)[99], 7, "no regrow for smaller sizes");
        b.ensure(8192 + 1);
        assert_eq!(b.capacity(), 12288);
    }
}
