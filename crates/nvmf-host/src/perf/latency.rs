//! Latency figures of a perf run: percentiles of an HDR histogram, and the
//! histogram itself (`--latency-histogram`) as log-scale buckets.

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Latency summary in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Latency {
    pub avg: f64,
    pub min: f64,
    pub max: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub p99_99: f64,
}

impl Latency {
    /// From a histogram of nanoseconds (all zero when it is empty).
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let us = |ns: f64| ns / 1000.0;
        let q = |quantile: f64| us(h.value_at_quantile(quantile) as f64);
        Latency {
            avg: us(h.mean()),
            min: us(h.min() as f64),
            max: us(h.max() as f64),
            p50: q(0.50),
            p90: q(0.90),
            p99: q(0.99),
            p99_9: q(0.999),
            p99_99: q(0.9999),
        }
    }

    pub fn to_json(&self) -> Value {
        let r2 = |v: f64| (v * 100.0).round() / 100.0;
        json!({
            "avg": r2(self.avg), "min": r2(self.min), "max": r2(self.max),
            "p50": r2(self.p50), "p90": r2(self.p90), "p99": r2(self.p99),
            "p99_9": r2(self.p99_9), "p99_99": r2(self.p99_99),
        })
    }

    /// Two text lines, `label` leading (e.g. "read latency us").
    pub fn to_text(&self, label: &str) -> String {
        format!(
            "{label}: avg {:.2}  min {:.2}  max {:.2}\n{:width$}  p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  p99.99 {:.2}",
            self.avg,
            self.min,
            self.max,
            "",
            self.p50,
            self.p90,
            self.p99,
            self.p99_9,
            self.p99_99,
            width = label.len()
        )
    }
}

/// Smallest bucket edge, nanoseconds: buckets double from 1 µs.
const BUCKET_FIRST_NS: u64 = 1_000;

/// The histogram as buckets: (upper edge in µs, I/Os in the bucket); edges
/// double from 1 µs, empty buckets left out.
pub fn buckets(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    h.iter_log(BUCKET_FIRST_NS, 2.0)
        .filter(|v| v.count_since_last_iteration() > 0)
        // value_iterated_to is the last value inside the bucket (edge - 1).
        .map(|v| ((v.value_iterated_to() + 1) as f64 / 1000.0, v.count_since_last_iteration()))
        .collect()
}

pub fn buckets_json(h: &Histogram<u64>) -> Value {
    json!(buckets(h).iter().map(|(le_us, count)| json!({"le_us": le_us, "count": count})).collect::<Vec<_>>())
}

/// A text table: bucket edge, count, cumulative percent, and a bar.
pub fn buckets_text(label: &str, h: &Histogram<u64>) -> String {
    let total = h.len().max(1);
    let b = buckets(h);
    let peak = b.iter().map(|(_, c)| *c).max().unwrap_or(1).max(1);
    let mut s = format!("  {label} latency histogram ({} I/Os):", h.len());
    let mut cumulative = 0u64;
    for (le_us, count) in b {
        cumulative += count;
        let bar = "#".repeat(((count * 40).div_ceil(peak)) as usize);
        s.push_str(&format!(
            "\n    <= {le_us:>12.1} us {count:>12} {:>7.3}% {bar}",
            100.0 * cumulative as f64 / total as f64
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_buckets() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        assert_eq!(Latency::of(&h), Latency::default());
        assert!(buckets(&h).is_empty());
        for ns in [1_500u64, 1_500, 3_000, 100_000] {
            h.record(ns).unwrap();
        }
        let l = Latency::of(&h);
        assert!((l.min - 1.5).abs() < 0.01 && (l.max - 100.0).abs() < 0.1, "{l:?}");
        let b = buckets(&h);
        assert_eq!(b.iter().map(|(_, c)| c).sum::<u64>(), 4);
        assert_eq!(b[0], (2.0, 2), "{b:?}");
        let text = buckets_text("read", &h);
        assert!(text.contains("4 I/Os") && text.contains("100.000%"), "{text}");
        assert_eq!(buckets_json(&h)[0]["count"], 2);
    }
}
