//! Sizes as users write them, one meaning everywhere (target configuration
//! and flags, perf's `--bs`, `--size`, `--offset`):
//!
//! - no unit or `B`: bytes;
//! - `K`, `M`, `G`, `T` and `KiB`, `MiB`, `GiB`, `TiB`: powers of 1024
//!   (as fio's and nvme-cli's `4k`);
//! - `KB`, `MB`, `GB`, `TB`: powers of 1000 (as disk vendors and SI).
//!
//! Case-insensitive, an optional space before the unit; overflow is an error.

/// Parse a size (see the module docs). The error text names the input.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a size (e.g. 4096, 4k, 512MiB, 1GiB; KB/MB/GB are powers of 1000)");
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
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_meaning() {
        for (text, bytes) in [
            ("4096", 4096),
            ("512B", 512),
            ("4k", 4096),
            ("4K", 4096),
            ("128KiB", 128 << 10),
            ("1 MiB", 1 << 20),
            ("1g", 1 << 30),
            ("2TiB", 2 << 40),
            ("1KB", 1000),
            ("5MB", 5_000_000),
            ("1GB", 1_000_000_000),
            ("1tb", 1_000_000_000_000),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for bad in ["", "k", "1.5G", "-1", "1XB", "1 G B", "99999999999999999999999"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert!(parse_size("20000000000T").unwrap_err().contains("too large"));
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(1 << 30), "1.00 GiB");
    }
}
