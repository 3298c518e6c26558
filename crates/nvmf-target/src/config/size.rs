//! Sizes in configuration files and flags.

use super::SizeError;

// ---------------------------------------------------------------------------
// Sizes
// ---------------------------------------------------------------------------

/// Parse a size: a decimal integer followed by an optional unit.
///
/// Units (case-insensitive, optional space before them): none or `B` = bytes;
/// `K`, `M`, `G`, `T`, `KiB`, `MiB`, `GiB`, `TiB` = powers of 1024;
/// `KB`, `MB`, `GB`, `TB` = powers of 1000. Overflow is an error.
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let bad = || SizeError(format!("{s:?} is not a size (use e.g. 512MiB, 1GiB)"));
    let t = s.trim();
    let digits_end = t.bytes().position(|b| !b.is_ascii_digit()).unwrap_or(t.len());
    if digits_end == 0 || digits_end > 20 {
        return Err(bad());
    }
    let n: u64 = t[..digits_end].parse().map_err(|_| bad())?;
    let unit = t[digits_end..].trim_start().to_ascii_lowercase();
    let mult: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(|| SizeError(format!("{s:?} is too large")))
}

/// Human-readable binary size, e.g. `1.00 GiB`, `512 B`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}
