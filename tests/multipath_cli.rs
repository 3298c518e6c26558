//! `nvmf perf --paths` against `nvmf target` with two listeners (both the
//! real binary), ANA changed live with `nvmf ctl ana set` during the run:
//! JSON per-path report, I/O moved off the inaccessible path, 0 errors.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NVMF: &str = env!("CARGO_BIN_EXE_nvmf");
const NQN: &str = "nqn.2026-11.io.nvmf:default";

struct Target(Child);

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

#[test]
fn perf_paths_json_and_ana_set_during_the_run() {
    let dir = std::env::temp_dir().join(format!("nvmf-mp-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("rpc.sock");
    let (pa, pb) = (free_port(), free_port());
    let (a, b) = (format!("127.0.0.1:{pa}"), format!("127.0.0.1:{pb}"));
    let _t = Target(
        Command::new(NVMF)
            .args(["target", "--mode", "interrupt", "--listen", &a, "--listen", &b, "--discovery-listen", "none"])
            .args(["--namespace", "ram:64MiB", "--rpc-socket", sock.to_str().unwrap(), "--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nvmf target"),
    );
    let t = Instant::now();
    while !(listening(pa) && listening(pb) && sock.exists()) {
        assert!(t.elapsed() < Duration::from_secs(20), "target did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let paths = format!("{a},{b}");
    let perf = Command::new(NVMF)
        .args(["perf", "--paths", &paths, "-n", NQN, "--iopolicy", "round-robin", "--rw", "randrw"])
        .args(["--verify", "--size", "8MiB", "--iodepth", "8", "--runtime", "6", "--output-format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run nvmf perf");
    std::thread::sleep(Duration::from_secs(3));
    let ctl = Command::new(NVMF)
        .args(["ctl", "--rpc-socket", sock.to_str().unwrap(), "ana", "set", "--subsystem", NQN])
        .args(["--listener", &a, "--group", "1", "--state", "inaccessible"])
        .output()
        .expect("run nvmf ctl");
    assert!(ctl.status.success(), "ctl: {}", String::from_utf8_lossy(&ctl.stderr));
    let out = perf.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "perf failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report");
    let m = &v["multipath"];
    eprintln!("{m}");
    assert_eq!(v["errors"], 0);
    assert_eq!(v["verify_errors"], 0);
    assert_eq!(m["double_completions"], 0);
    let p = m["paths"].as_array().unwrap();
    assert_eq!(p.len(), 2);
    assert_eq!(p[0]["addr"], a.as_str());
    assert_eq!(p[0]["ana"], "inaccessible", "{m}");
    assert_eq!(p[1]["ana"], "optimized");
    assert!(p[0]["ios"].as_u64().unwrap() > 0 && p[1]["ios"].as_u64().unwrap() > p[0]["ios"].as_u64().unwrap());
    assert_eq!(v["config"]["iopolicy"], "round-robin");
    let _ = std::fs::remove_dir_all(&dir);
}
