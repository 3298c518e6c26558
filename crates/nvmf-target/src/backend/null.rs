//! `null` backend: reads return zeros, writes are discarded. It has a size
//! (so hosts see a normal namespace) but no storage: for protocol benchmarks.

use std::io;
use std::os::fd::RawFd;

use super::{check_range, Backend};

/// A sized namespace without storage.
#[derive(Debug)]
pub struct NullBackend {
    size_bytes: u64,
}

impl NullBackend {
    pub fn new(size_bytes: u64) -> NullBackend {
        NullBackend { size_bytes }
    }
}

/// Largest read served from [`zeros`] (the largest C2HData PDU a target sends).
pub const ZEROS_BYTES: usize = 1 << 20;

/// One process-wide buffer of zeros that reads send from without copying.
/// Its pages are written once so they are real memory, like any read buffer
/// (not the kernel's shared zero page, which would flatter the benchmark).
fn zeros() -> &'static [u8] {
    static ZEROS: std::sync::OnceLock<&'static [u8]> = std::sync::OnceLock::new();
    ZEROS.get_or_init(|| {
        let mut v = vec![0xffu8; ZEROS_BYTES];
        v.fill(0);
        Box::leak(v.into_boxed_slice())
    })
}

impl Backend for NullBackend {
    fn kind(&self) -> &'static str {
        "null"
    }
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }
    fn read_sync(&self, offset: u64, dst: &mut [u8]) -> Option<io::Result<()>> {
        Some(check_range(offset, dst.len() as u64, self.size_bytes).map(|()| dst.fill(0)))
    }
    fn read_append(&self, offset: u64, len: usize, out: &mut Vec<u8>) -> Option<io::Result<()>> {
        // One zero fill, no second pass over the same bytes.
        Some(check_range(offset, len as u64, self.size_bytes).map(|()| out.resize(out.len() + len, 0)))
    }
    fn read_static(&self, offset: u64, len: usize) -> Option<io::Result<&'static [u8]>> {
        let zeros = zeros();
        if len > zeros.len() {
            return None;
        }
        Some(check_range(offset, len as u64, self.size_bytes).map(|()| &zeros[..len]))
    }
    fn write_sync(&self, offset: u64, src: &[u8]) -> Option<io::Result<()>> {
        Some(check_range(offset, src.len() as u64, self.size_bytes))
    }
    fn fd(&self) -> Option<RawFd> {
        None
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        check_range(offset, len, self.size_bytes)
    }
    fn deallocate(&self, offset: u64, len: u64) -> io::Result<()> {
        check_range(offset, len, self.size_bytes)
    }
    fn flush_sync(&self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_static_is_zeros_in_range_and_none_when_too_large() {
        let b = NullBackend::new(1 << 20);
        let z = b.read_static(4096, 131_072).unwrap().unwrap();
        assert!(z.len() == 131_072 && z.iter().all(|&x| x == 0));
        assert!(b.read_static((1 << 20) - 512, 1024).unwrap().is_err());
        assert!(b.read_static(0, ZEROS_BYTES + 1).is_none(), "falls back to the copying path");
    }

    #[test]
    fn read_append_zero_fills_once() {
        let b = NullBackend::new(1 << 20);
        let mut out = vec![1u8; 2];
        b.read_append(0, 4096, &mut out).unwrap().unwrap();
        assert_eq!(out.len(), 4098);
        assert!(out[2..].iter().all(|&x| x == 0));
        assert!(b.read_append(1 << 20, 512, &mut out).unwrap().is_err());
        assert_eq!(out.len(), 4098);
    }

    #[test]
    fn reads_zeros_discards_writes() {
        let b = NullBackend::new(1 << 40);
        assert_eq!(b.size_bytes(), 1 << 40);
        b.write_sync(4096, &[0xab; 512]).unwrap().unwrap();
        let mut buf = [0xffu8; 512];
        b.read_sync(4096, &mut buf).unwrap().unwrap();
        assert_eq!(buf, [0u8; 512]);
        assert!(b.read_sync((1 << 40) - 256, &mut buf).unwrap().is_err());
        assert!(b.write_sync(u64::MAX, &buf).unwrap().is_err());
        b.write_zeroes(0, 1 << 40).unwrap();
        b.deallocate(0, 4096).unwrap();
        b.flush_sync().unwrap();
        assert!(b.fd().is_none());
        assert!(b.resize(1 << 20).is_err());
    }
}
