//! Smoke test of the benchmark driver (`bench/bench.py`), so it does not rot
//! when the CLIs it drives change: one QD1 row and its ping-pong limit, 1 s
//! each, against the release binaries.
//!
//! Runs in CI (`CI=true`, where the release build precedes the tests) or with
//! `NVMF_BENCH_SMOKE=1`; skipped otherwise, since a developer's release
//! binaries may be older than the sources. Needs 2 CPUs, python3 and taskset.

use std::path::Path;
use std::process::Command;

fn wanted() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true") || std::env::var("NVMF_BENCH_SMOKE").is_ok_and(|v| v == "1")
}

fn have(cmd: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {cmd}")).output().is_ok_and(|o| o.status.success())
}

#[test]
#[ignore = "needs fresh release binaries, 2 CPUs, python3 and taskset: NVMF_BENCH_SMOKE=1 cargo test --test bench_smoke -- --ignored"]
fn bench_quick_row_runs_and_reports() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bins = [root.join("target/release/nvmf"), root.join("target/release/nvmf-pingpong")];
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    assert!(
        wanted() && bins.iter().all(|b| b.exists()) && cpus >= 2 && have("python3") && have("taskset"),
        "set NVMF_BENCH_SMOKE=1 with fresh release binaries, 2 CPUs, python3 and taskset"
    );
    let out = Command::new("python3")
        .arg(root.join("bench/bench.py"))
        .args(["--quick", "--rows", "rr4k_qd1_poll", "--no-digests", "--json"])
        .output()
        .expect("run bench.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench.py failed:\n{stderr}\n{stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("bench.py --json prints one JSON object");
    let rows = report["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{report}");
    assert_eq!(rows[0]["errors"], 0, "{report}");
    assert!(rows[0]["iops"].as_f64().unwrap() > 0.0, "{report}");
    assert!(rows[0]["ratio"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["limits"]["pp_qd1_poll"]["avg_us"].as_f64().unwrap() > 0.0, "{report}");
}
