//! Sizes in configuration files and flags.

use super::SizeError;

// ---------------------------------------------------------------------------
// Sizes
// ---------------------------------------------------------------------------

/// Parse a size ([`nvmf_proto::size`]: `K`/`KiB`... powers of 1024,
/// `KB`/`MB`... powers of 1000, as everywhere in nvmf).
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    nvmf_proto::size::parse_size(s).map_err(SizeError)
}

pub use nvmf_proto::size::format_size;
