//! Fuzz entry points (placeholder).
pub fn records(_data: &[u8]) {}
