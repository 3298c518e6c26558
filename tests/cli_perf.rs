//! `nvmf perf` against `nvmf target` (both the real binary): JSON report
//! keys, verify with zero errors, exit codes.

mod cli_util;

use std::process::Command;

const NQN: &str = "nqn.2026-11.io.nvmf:default";

use cli_util::{Target, NVMF};

/// `nvmf target` serving `namespace` in its default subsystem.
fn start_target(namespace: &str) -> Target {
    cli_util::start_target(&["--namespace", namespace])
}

fn perf(t: &Target, args: &[&str]) -> (i32, serde_json::Value, String) {
    let port = t.port.to_string();
    let out = Command::new(NVMF)
        .args(["perf", "-a", "127.0.0.1", "-s", &port, "-n", NQN, "--output-format", "json"])
        .args(args)
        .output()
        .expect("run nvmf perf");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let json = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("valid JSON"))
        .unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), json, stderr)
}

fn assert_report_keys(j: &serde_json::Value) {
    for k in ["iops", "mib_per_s", "errors", "verify_errors", "reads", "writes", "runtime_s", "config", "latency_us"] {
        assert!(j.get(k).is_some(), "report lacks {k}: {j}");
    }
    for k in ["avg", "min", "max", "p50", "p90", "p99", "p99_9", "p99_99"] {
        assert!(j["latency_us"].get(k).is_some(), "latency_us lacks {k}: {j}");
    }
}

#[test]
fn randrw_verify_against_nvmf_target() {
    let t = start_target("ram:32MiB");
    let (rc, j, err) = perf(
        &t,
        &["--rw", "randrw", "--verify", "--runtime", "2", "--iodepth", "8", "--nr-io-queues", "2", "--size", "8MiB"],
    );
    assert_eq!(rc, 0, "perf failed: {err}\n{j}");
    assert_report_keys(&j);
    assert_eq!(j["errors"], 0, "{j}");
    assert_eq!(j["verify_errors"], 0, "{j}");
    assert!(j["reads"].as_u64().unwrap() > 0 && j["writes"].as_u64().unwrap() > 0, "{j}");
    assert!(j["verified_reads"].as_u64().unwrap() > 0, "{j}");
}

/// 512-byte random I/O, the classic IOPS test: the I/O queues' transfer
/// limit still lets their Connect (1024 bytes of data) through.
#[test]
fn bs_512_randrw_verify() {
    let t = start_target("ram:16MiB");
    let args: Vec<&str> = "--rw randrw --bs 512 --verify --runtime 1 --iodepth 16 --size 2MiB".split(' ').collect();
    let (rc, j, err) = perf(&t, &args);
    assert_eq!(rc, 0, "perf --bs 512 failed: {err}\n{j}");
    assert_eq!((j["errors"].as_u64(), j["verify_errors"].as_u64()), (Some(0), Some(0)), "{j}");
    assert!(j["verified_reads"].as_u64().unwrap() > 0, "{j}");
}

/// Sizes mean one thing (GB = 10^9, GiB = 2^30) and the JSON reports the
/// size the run used: --size clamped to the namespace.
#[test]
fn json_reports_the_size_used() {
    let t = start_target("ram:16MiB");
    let (rc, j, err) = perf(&t, &["--runtime", "1", "--size", "1GiB", "--offset", "1MiB"]);
    assert_eq!(rc, 0, "{err}");
    assert_eq!((j["config"]["size"].as_u64(), j["config"]["offset"].as_u64()), (Some(15 << 20), Some(1 << 20)), "{j}");
    let (rc, _, err) = perf(&t, &["--runtime", "1", "--size", "10MB"]);
    assert_ne!(rc, 0);
    assert!(err.contains("10000000 bytes") && err.contains("powers of 1000"), "{err}");
}

/// Read and write latency apart, and the histogram on request.
#[test]
fn read_write_latency_and_histogram() {
    let t = start_target("ram:16MiB");
    let (rc, j, err) = perf(&t, &["--rw", "randrw", "--runtime", "1", "--latency-histogram"]);
    assert_eq!(rc, 0, "{err}");
    for k in ["read_latency_us", "write_latency_us"] {
        assert!(j[k]["p99"].as_f64().unwrap() > 0.0, "{k}: {j}");
    }
    for (op, n) in [("read", "reads"), ("write", "writes")] {
        let buckets = j["latency_histogram"][op].as_array().unwrap_or_else(|| panic!("{j}"));
        let total: u64 = buckets.iter().map(|b| b["count"].as_u64().unwrap()).sum();
        assert_eq!(total, j[n].as_u64().unwrap(), "{op}: {j}");
        assert!(buckets.windows(2).all(|w| w[0]["le_us"].as_f64() < w[1]["le_us"].as_f64()), "{op}: {j}");
    }
    let (_, j, _) = perf(&t, &["--rw", "randread", "--runtime", "1"]);
    assert!(j.get("latency_histogram").is_none() && j.get("write_latency_us").is_none(), "{j}");
}

/// A refused Connect is explained: which subsystem, which host.
#[test]
fn connect_refusals_say_what_was_refused() {
    let t = start_target("ram:16MiB");
    let port = t.port.to_string();
    let base = ["-a", "127.0.0.1", "-s", &port];
    for cmd in ["identify", "perf"] {
        let out = Command::new(NVMF).arg(cmd).args(base).args(["-n", "nqn.2026-12.io.nvmf:absent"]).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("subsystem nqn.2026-12.io.nvmf:absent is not served on this port"), "{cmd}: {err}");
    }
}

/// Ctrl-C ends the run with the summary so far (JSON says so) and exit 130.
#[test]
fn sigint_prints_the_summary_so_far() {
    let t = start_target("ram:16MiB");
    let port = t.port.to_string();
    let child = Command::new(NVMF)
        .args(["perf", "-a", "127.0.0.1", "-s", &port, "-n", NQN, "--output-format", "json", "--runtime", "60"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run nvmf perf");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let killed = Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill");
    assert!(killed.success());
    let out = child.wait_with_output().expect("perf ends");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value =
        serde_json::from_str(stdout.lines().find(|l| l.starts_with('{')).expect("JSON")).expect("valid JSON");
    assert_eq!(j["interrupted"], true, "{j}");
    assert!(j["runtime_s"].as_f64().unwrap() < 30.0, "{j}");
    assert!(j["reads"].as_u64().unwrap() > 0, "{j}");
}

#[test]
fn large_seq_write_verify_with_digests() {
    // 128 KiB writes go through R2T/H2CData; the readback checks every unit written.
    let t = start_target("ram:32MiB");
    let args: Vec<&str> =
        "--rw write --bs 128k --verify --runtime 1 --iodepth 4 --size 4MiB -g -G".split(' ').collect();
    let (rc, j, err) = perf(&t, &args);
    assert_eq!(rc, 0, "perf failed: {err}\n{j}");
    assert_eq!((j["errors"].as_u64(), j["verify_errors"].as_u64()), (Some(0), Some(0)), "{j}");
    assert!(j["verified_reads"].as_u64().unwrap() > 0, "{j}");
}

#[test]
fn bad_arguments_and_missing_namespace_fail() {
    let t = start_target("null:1GiB");
    let (rc, _, err) = perf(&t, &["--runtime", "1", "--namespace-id", "9"]);
    assert_ne!(rc, 0, "a missing namespace must fail: {err}");
    let (rc, _, _) = perf(&t, &["--rw", "sideways"]);
    assert_ne!(rc, 0);
}

#[test]
fn sq_flow_control_kept_on_request_in_poll_mode() {
    // Default perf asks the controller to disable SQ flow control (reads end
    // with a SUCCESS C2HData); --sq-flow-control keeps the response capsules.
    let t = start_target("ram:16MiB");
    for extra in [&[][..], &["--sq-flow-control"][..]] {
        let mut args = vec!["--rw", "randrw", "--verify", "--runtime", "1", "--iodepth", "4", "--size", "4MiB"];
        args.extend_from_slice(&["--mode", "poll", "--bs", "8k"]);
        args.extend_from_slice(extra);
        let (rc, j, err) = perf(&t, &args);
        assert_eq!(rc, 0, "perf {extra:?} failed: {err}\n{j}");
        assert_eq!((j["errors"].as_u64(), j["verify_errors"].as_u64()), (Some(0), Some(0)), "{j}");
        assert_eq!(j["config"]["sq_flow_control"], !extra.is_empty(), "{j}");
        assert!(j["verified_reads"].as_u64().unwrap() > 0, "{j}");
    }
}

#[test]
fn large_reads_received_straight_into_buffers_in_poll_mode_verify() {
    // Poll mode receives the rest of each large C2HData payload straight into
    // the command's buffer (HostQueue::recv_sink, engine direct receive), and
    // caps receives at PDU boundaries meanwhile; mixed with 128 KiB writes
    // (R2T/H2CData, lent payloads) every read must still find what was written.
    let t = start_target("ram:32MiB");
    for digests in [&[][..], &["-g", "-G"][..]] {
        let mut args = vec!["--rw", "randrw", "--bs", "128k", "--verify", "--runtime", "1", "--iodepth", "8"];
        args.extend_from_slice(&["--size", "8MiB", "--mode", "poll"]);
        args.extend_from_slice(digests);
        let (rc, j, err) = perf(&t, &args);
        assert_eq!(rc, 0, "perf {digests:?} failed: {err}\n{j}");
        assert_eq!((j["errors"].as_u64(), j["verify_errors"].as_u64()), (Some(0), Some(0)), "{j}");
        assert!(j["verified_reads"].as_u64().unwrap() > 0, "{j}");
    }
}
