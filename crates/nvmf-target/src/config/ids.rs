//! Identifiers derived stably from the subsystem NQN and NSID, and their
//! text forms.

// ---------------------------------------------------------------------------
// Stable derived identifiers
// ---------------------------------------------------------------------------

/// FNV-1a over `parts` followed by a splitmix64 finalizer. Stable across Rust
/// versions and platforms (unlike `DefaultHasher`), so derived serials and
/// namespace IDs never change between runs or releases.
pub(super) fn stable_hash64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separator, so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

pub(super) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

pub(super) fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

pub(super) fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
        return None;
    }
    let compact: String = s.chars().filter(|&c| c != '-').collect();
    parse_hex::<16>(&compact)
}

pub(super) fn format_uuid(u: &[u8; 16]) -> String {
    format!("{}-{}-{}-{}-{}", hex(&u[0..4]), hex(&u[4..6]), hex(&u[6..8]), hex(&u[8..10]), hex(&u[10..16]))
}

pub(super) fn derived_nguid(nqn: &str, nsid: u32) -> [u8; 16] {
    let id = nsid.to_le_bytes();
    let hi = stable_hash64(&[b"nguid-hi", nqn.as_bytes(), &id]);
    let lo = stable_hash64(&[b"nguid-lo", nqn.as_bytes(), &id]);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&hi.to_be_bytes());
    out[8..].copy_from_slice(&lo.to_be_bytes());
    if out == [0; 16] {
        out[15] = 1; // all-zero means "not reported"
    }
    out
}

pub(super) fn derived_uuid(nqn: &str, nsid: u32) -> [u8; 16] {
    let id = nsid.to_le_bytes();
    let hi = stable_hash64(&[b"uuid-hi", nqn.as_bytes(), &id]);
    let lo = stable_hash64(&[b"uuid-lo", nqn.as_bytes(), &id]);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&hi.to_be_bytes());
    out[8..].copy_from_slice(&lo.to_be_bytes());
    // RFC 9562 version 8 (custom, here: name-derived) and the RFC variant bits.
    out[6] = (out[6] & 0x0f) | 0x80;
    out[8] = (out[8] & 0x3f) | 0x80;
    out
}

pub(super) fn derived_eui64(nqn: &str, nsid: u32) -> [u8; 8] {
    let mut out = stable_hash64(&[b"eui64", nqn.as_bytes(), &nsid.to_le_bytes()]).to_be_bytes();
    // Locally administered (U/L bit set), unicast: never collides with a vendor OUI.
    out[0] = (out[0] | 0x02) & !0x01;
    out
}

/// Serial number derived from the subsystem NQN: 16 lowercase hex digits.
pub(super) fn derived_serial(nqn: &str) -> String {
    hex(&stable_hash64(&[b"serial", nqn.as_bytes()]).to_be_bytes())
}
