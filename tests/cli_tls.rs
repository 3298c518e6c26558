//! NVMe/TCP TLS between the nvmf host commands and `nvmf target` (both the
//! real binary, nvmf to nvmf): `--tls required` with a host's `tls=KEY`;
//! identify, write + read, discover (v1 and v0 identities, SHA-256 and
//! SHA-384 keys), `perf --verify` with KeyUpdates in the middle of the run,
//! TLS together with DH-HMAC-CHAP, and the refusals (wrong key, plain host)
//! ending with a clean error, never a hang. No key text reaches the output.

mod cli_util;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NQN: &str = "nqn.2026-11.io.nvmf:cli-tls";

use cli_util::{body, Target, NVMF};

/// `nvmf target --tls required` serving NQN (16 MiB RAM) with `extra` flags.
fn start_target(extra: &[&str]) -> Target {
    let base = ["--rpc-socket", "none", "--tls", "required", "--subsystem", NQN, "--namespace", "ram:16MiB"];
    cli_util::start_target(&[&base[..], extra].concat())
}
const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-0000000000dd";
/// libnvme's test key (SHA-256) and its SHA-384 sibling.
const KEY_01: &str = "NVMeTLSkey-1:01:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwNf9LrZ:";
const KEY_02: &str = "NVMeTLSkey-1:02:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwP/w0S89ELi3W2LxIcLXVsDn8kXZQ==:";
/// The nvme-tls-key(1) manual page's key: a valid key the target does not have.
const OTHER_KEY: &str = "NVMeTLSkey-1:01:/b9tVz2OXJVISnoFgrPAygyS86XYJWkAapQeULns6PMpM8wv:";
const CHAP_KEY: &str = "DHHC-1:01:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:";
/// Longest any host command here may take (perf: 3 s run + verify phases).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Run `nvmf CMD -a 127.0.0.1 -s PORT [-n NQN] -q HOSTNQN ARGS`, killed after
/// [`COMMAND_TIMEOUT`] (a hang fails the test); no key text in its output.
fn host(t: &Target, cmd: &str, args: &[&str]) -> Run {
    let port = t.port.to_string();
    let mut c = Command::new(NVMF);
    c.args([cmd, "-a", "127.0.0.1", "-s", &port, "-q", HOSTNQN]);
    if cmd != "discover" {
        c.args(["-n", NQN]);
    }
    let mut child = c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run nvmf");
    let (mut so, mut se) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("nvmf {cmd} {args:?} hung (over {COMMAND_TIMEOUT:?})");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let r = Run { ok: status.success(), stdout: out.join().unwrap(), stderr: err.join().unwrap() };
    for key in [KEY_01, KEY_02, OTHER_KEY, CHAP_KEY] {
        assert!(!r.stdout.contains(body(key)) && !r.stderr.contains(body(key)), "{cmd} {args:?} printed a secret");
    }
    r
}

fn json(r: &Run) -> serde_json::Value {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", r.stdout, r.stderr))
}

fn tls_host(key: &str) -> String {
    format!("{HOSTNQN}:tls={key}")
}

#[test]
fn identify_write_read_discover_over_tls() {
    let t = start_target(&["--host", &tls_host(KEY_01)]);
    // v1 identity (the default, as libnvme's connect) and v0.
    for v in [&[][..], &["--tls-identity-version", "0"][..]] {
        let r = host(&t, "identify", &[&["-o", "json", "--tls-key", KEY_01][..], v].concat());
        assert!(r.ok, "identify {v:?}: {}", r.stderr);
        assert!(r.stdout.contains(NQN), "{}", r.stdout);
        let r = host(&t, "discover", &[&["-o", "json", "--tls-key", KEY_01][..], v].concat());
        assert!(r.ok, "discover {v:?}: {}", r.stderr);
        let records = json(&r)["records"].as_array().unwrap().clone();
        let sub = records.iter().find(|e| e["subnqn"] == NQN).unwrap_or_else(|| panic!("{records:?}"));
        assert_eq!(sub["sectype"], "tls1.3", "{sub}");
        assert!(sub["treq"].as_str().unwrap().starts_with("required"), "{sub}");
    }
    // write + read back, two I/O queues.
    let dir = std::env::temp_dir().join(format!("nvmf-cli-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (src, dst) = (dir.join("in"), dir.join("out"));
    let data: Vec<u8> = (0..256 * 512u32).map(|i| (i * 29 % 251) as u8).collect();
    std::fs::write(&src, &data).unwrap();
    let io = ["--start-block", "32", "--block-count", "256", "-i", "2", "--tls-key", KEY_01];
    let r = host(&t, "write", &[&io[..], &["-d", src.to_str().unwrap()]].concat());
    assert!(r.ok, "write: {}", r.stderr);
    let r = host(&t, "read", &[&io[..], &["-d", dst.to_str().unwrap()]].concat());
    assert!(r.ok, "read: {}", r.stderr);
    assert!(std::fs::read(&dst).unwrap() == data, "read back differs");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sha384_key() {
    let t = start_target(&["--host", &tls_host(KEY_02)]);
    let r = host(&t, "discover", &["--tls-key", KEY_02]);
    assert!(r.ok, "discover: {}", r.stderr);
    let r = host(&t, "identify", &["--tls-key", KEY_02, "--tls-identity-version", "0"]);
    assert!(r.ok, "identify: {}", r.stderr);
    let r = host(&t, "perf", &["--runtime", "1", "--iodepth", "8", "--output-format", "json", "--tls-key", KEY_02]);
    assert!(r.ok, "perf: {}", r.stderr);
    let j = json(&r);
    assert_eq!(j["errors"], 0);
    assert_eq!(j["config"]["tls"], true);
    assert_eq!(j["tls_key_updates"], 0, "no --tls-key-update-ms: none");
}

/// KeyUpdates in the middle of a verifying run, on two queues: nothing lost,
/// nothing corrupted.
#[test]
fn perf_verify_over_tls_with_key_updates() {
    let t = start_target(&["--host", &tls_host(KEY_01)]);
    let r = host(
        &t,
        "perf",
        &[
            "--verify",
            "--rw",
            "randrw",
            "--runtime",
            "3",
            "--iodepth",
            "16",
            "--nr-io-queues",
            "2",
            "--size",
            "8m",
            "--output-format",
            "json",
            "--tls-key",
            KEY_01,
            "--tls-key-update-ms",
            "50",
        ],
    );
    assert!(r.ok, "perf: {}\n{}", r.stdout, r.stderr);
    let j = json(&r);
    assert_eq!(j["errors"], 0, "{j}");
    assert_eq!(j["verify_errors"], 0, "{j}");
    assert!(j["verified_reads"].as_u64().unwrap() > 0, "{j}");
    assert!(j["reads"].as_u64().unwrap() > 0 && j["writes"].as_u64().unwrap() > 0, "{j}");
    // 2 queues x 3 s / 50 ms is about 120; ticks may come late on a loaded machine.
    let updates = j["tls_key_updates"].as_u64().unwrap();
    assert!(updates >= 10, "tls_key_updates {updates}: {j}");
}

/// Secure channel concatenation under `perf --verify`, with KeyUpdates in
/// the middle of the run: the admin queue authenticates in clear, comes back
/// over TLS with the generated PSK, and both I/O queues use it.
#[test]
fn perf_verify_with_concatenation_and_key_updates() {
    let chap_host = format!("{HOSTNQN}:dhchap={CHAP_KEY}");
    let base = ["--rpc-socket", "none", "--tls", "allowed", "--subsystem", NQN, "--namespace", "ram:16MiB"];
    let t = cli_util::start_target(&[&base[..], &["--host", &chap_host]].concat());
    let args = [
        "--verify",
        "--rw",
        "randrw",
        "--runtime",
        "2",
        "--iodepth",
        "8",
        "--nr-io-queues",
        "2",
        "--size",
        "4m",
        "--output-format",
        "json",
        "-S",
        CHAP_KEY,
        "--concat",
        "--tls-key-update-ms",
        "50",
    ];
    let r = host(&t, "perf", &args);
    assert!(r.ok, "perf: {}\n{}", r.stdout, r.stderr);
    let j = json(&r);
    assert_eq!((j["config"]["concat"].as_bool(), j["config"]["tls"].as_bool()), (Some(true), Some(true)), "{j}");
    assert_eq!((j["errors"].as_u64(), j["verify_errors"].as_u64()), (Some(0), Some(0)), "{j}");
    assert!(j["verified_reads"].as_u64().unwrap() > 0, "{j}");
    assert!(j["tls_key_updates"].as_u64().unwrap() >= 5, "{j}");
    // Concatenation generates the PSK: a TLS key besides it is refused, and
    // so is --concat without a DH-HMAC-CHAP secret.
    let r = host(&t, "perf", &["--runtime", "1", "-S", CHAP_KEY, "--concat", "--tls-key", KEY_01]);
    assert!(!r.ok && r.stderr.contains("--concat"), "{}", r.stderr);
    let r = host(&t, "perf", &["--runtime", "1", "--concat"]);
    assert!(!r.ok && r.stderr.contains("--dhchap-secret"), "{}", r.stderr);
}

#[test]
fn refusals_end_cleanly() {
    let t = start_target(&["--host", &tls_host(KEY_01)]);
    // A key the target does not have: the handshake fails, named as TLS.
    for (cmd, args) in [("perf", &["--runtime", "1"][..]), ("identify", &[]), ("discover", &[])] {
        let r = host(&t, cmd, &[args, &["--tls-key", OTHER_KEY]].concat());
        assert!(!r.ok, "{cmd} with another key succeeded");
        assert!(r.stderr.contains("TLS"), "{cmd}: {}", r.stderr);
    }
    // The right key with another host NQN's identity.
    let r = host(&t, "perf", &["--runtime", "1", "--tls-key", KEY_01, "--tls-key-identity", "NVMe0R01 x y"]);
    assert!(!r.ok);
    assert!(r.stderr.contains("TLS"), "{}", r.stderr);
    // Plain NVMe/TCP to a listener that requires TLS.
    let r = host(&t, "perf", &["--runtime", "1"]);
    assert!(!r.ok, "plain perf succeeded");
    assert!(r.stderr.contains("requires TLS"), "{}", r.stderr);
    // The target still serves the right key afterwards.
    let r = host(&t, "perf", &["--runtime", "1", "--iodepth", "4", "--tls-key", KEY_01]);
    assert!(r.ok, "{}", r.stderr);
}

#[test]
fn tls_and_dhchap_together() {
    let spec = format!("{HOSTNQN}:dhchap={CHAP_KEY}:tls={KEY_01}");
    let t = start_target(&["--host", &spec]);
    let r = host(&t, "identify", &["-i", "2", "-S", CHAP_KEY, "--tls-key", KEY_01]);
    assert!(r.ok, "identify: {}", r.stderr);
    let args = ["--rw", "randrw", "--verify", "--size", "4m", "--runtime", "1", "--nr-io-queues", "2"];
    let r = host(&t, "perf", &[&args[..], &["--output-format", "json", "-S", CHAP_KEY, "--tls-key", KEY_01]].concat());
    assert!(r.ok, "perf: {}", r.stderr);
    let j = json(&r);
    assert_eq!((j["errors"].as_u64(), j["verify_errors"].as_u64()), (Some(0), Some(0)), "{j}");
    // TLS without the CHAP secret: the target asks to authenticate.
    let r = host(&t, "perf", &["--runtime", "1", "--tls-key", KEY_01]);
    assert!(!r.ok);
    assert!(r.stderr.contains("authentication"), "{}", r.stderr);
    // The CHAP secret without TLS: refused at the listener.
    let r = host(&t, "identify", &["-S", CHAP_KEY]);
    assert!(!r.ok);
}
