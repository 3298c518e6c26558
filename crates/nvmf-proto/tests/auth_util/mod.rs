//! Shared by the DH-HMAC-CHAP pair tests: deterministic randomness.

use nvmf_proto::auth::RandomFill;

/// Deterministic bytes (xorshift64*), different per seed.
pub fn rng(seed: u64) -> RandomFill {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    Box::new(move |buf: &mut [u8]| {
        for b in buf {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            *b = (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8;
        }
    })
}
