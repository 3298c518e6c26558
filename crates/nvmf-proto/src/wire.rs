//! Little-endian field access on byte slices.
//!
//! Callers check lengths once per structure; these helpers index directly and
//! would panic on a short slice, which is a bug in the caller, not a wire error.

#[inline]
pub(crate) fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
#[inline]
pub(crate) fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}
#[inline]
pub(crate) fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(x)
}
#[inline]
pub(crate) fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
#[inline]
pub(crate) fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
#[inline]
pub(crate) fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Copy `s` into a fixed ASCII field padded with `pad` (spaces for SN/MN/FR,
/// NULs for NQNs); longer strings are truncated to the field.
pub(crate) fn put_str(b: &mut [u8], off: usize, len: usize, s: &str, pad: u8) {
    let field = &mut b[off..off + len];
    field.fill(pad);
    let n = s.len().min(len);
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// Read a fixed ASCII field: stops at the first NUL, trims trailing spaces, and
/// replaces anything non-printable so that wire garbage cannot reach a terminal.
pub(crate) fn get_str(b: &[u8], off: usize, len: usize) -> String {
    let field = &b[off..off + len];
    let end = field.iter().position(|&c| c == 0).unwrap_or(len);
    field[..end]
        .iter()
        .map(|&c| if (0x20..0x7f).contains(&c) { c as char } else { '?' })
        .collect::<String>()
        .trim_end()
        .to_string()
}
