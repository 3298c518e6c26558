//! Send side: borrowed segments, iovecs, and trimming send buffers that
//! grew for a large batch once the connection no longer needs them.

/// Max bytes in one send SQE.
pub(crate) const MAX_SEND_CHUNK: usize = 1 << 30;
/// Max iovecs per sendmsg (UIO_MAXIOV).
pub(crate) const MAX_IOV: usize = 1024;

/// Send buffer capacity a connection keeps for good (each of the two byte
/// buffers); more is given back once unused for [`TX_TRIM_IDLE_MS`].
pub const TX_RETAIN_BYTES: usize = 64 * 1024;
/// Borrowed-segment list capacity kept for good (each of the two lists).
pub(crate) const TX_RETAIN_SEGS: usize = TX_RETAIN_BYTES / std::mem::size_of::<ExtSeg>();
/// A connection whose output is empty and that has not queued a batch above
/// the retained size for this long gives the excess capacity back (checked
/// every tick: within twice this time). Long enough that a busy connection
/// does not reallocate per I/O.
pub const TX_TRIM_IDLE_MS: u64 = 1000;

/// A handler-owned buffer spliced into the tx stream at byte position `at` of the
/// accumulated tx bytes.
pub(crate) struct ExtSeg {
    pub(crate) at: usize,
    pub(crate) ptr: *const u8,
    pub(crate) len: usize,
    pub(crate) token: u64,
}

/// Fill `iov` with the part of the logical stream (own bytes of `fly` with `ext`
/// segments spliced in) from logical offset `off`, at most MAX_IOV entries.
pub(crate) fn build_iov(fly: &[u8], ext: &[ExtSeg], off: usize, iov: &mut Vec<libc::iovec>) {
    iov.clear();
    let mut logical = 0usize;
    let push = |ptr: *const u8, len: usize, logical: &mut usize, iov: &mut Vec<libc::iovec>| {
        let start = *logical;
        *logical += len;
        if len == 0 || start + len <= off || iov.len() >= MAX_IOV {
            return;
        }
        let skip = off.saturating_sub(start);
        // SAFETY: skip < len; pointer arithmetic within the segment.
        let p = unsafe { ptr.add(skip) };
        iov.push(libc::iovec { iov_base: p as *mut libc::c_void, iov_len: len - skip });
    };
    let mut own = 0usize;
    for e in ext {
        // `at` is append-only by contract; clamp so a misbehaving handler cannot
        // make us index out of bounds.
        let at = e.at.clamp(own, fly.len());
        push(fly[own..at].as_ptr(), at - own, &mut logical, iov);
        own = at;
        push(e.ptr, e.len, &mut logical, iov);
    }
    push(fly[own..].as_ptr(), fly.len() - own, &mut logical, iov);
}

/// Whether a batch about to be sent needs more than the retained capacity.
#[inline]
pub(crate) fn batch_is_big(bytes: &[u8], segs: &[ExtSeg]) -> bool {
    bytes.len() > TX_RETAIN_BYTES || segs.len() > TX_RETAIN_SEGS
}

/// Give capacity beyond the retained bound back (the buffers must be empty).
pub(crate) fn trim(bytes: &mut Vec<u8>, segs: &mut Vec<ExtSeg>) {
    debug_assert!(bytes.is_empty() && segs.is_empty());
    if bytes.capacity() > TX_RETAIN_BYTES {
        bytes.shrink_to(TX_RETAIN_BYTES);
    }
    if segs.capacity() > TX_RETAIN_SEGS {
        segs.shrink_to(TX_RETAIN_SEGS);
    }
}
