//! End-to-end tests of `nvmf ctl` against a real `nvmf target` process:
//! the Unix socket, the token-protected TCP listener, text and JSON output,
//! exit codes, save-config, and `nvmf target --import-nvmetcli`.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_nvmf");
const WAIT: Duration = Duration::from_secs(30);
const NQN: &str = "nqn.2026-11.io.nvmf:ctl-test";

/// A private temporary directory, removed on drop (no tempfile dependency here).
struct TempDir(std::path::PathBuf);
impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
fn tempdir() -> TempDir {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let p =
        std::env::temp_dir().join(format!("nvmf-cli-ctl-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&p).unwrap();
    TempDir(p)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Stops the target (SIGTERM, then kill) when the test ends, however it ends.
struct Target(Child);
impl Drop for Target {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(args: &[&str], sock: &Path) -> Target {
    let child = Command::new(BIN)
        .arg("target")
        .args(args)
        .args(["--rpc-socket", sock.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut t = Target(child);
    let deadline = Instant::now() + WAIT;
    while !sock.exists() {
        assert!(t.0.try_wait().unwrap().is_none(), "nvmf target exited early");
        assert!(Instant::now() < deadline, "no management socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    t
}

fn ctl(sock: &Path, args: &[&str]) -> Output {
    Command::new(BIN).arg("ctl").args(["--rpc-socket", sock.to_str().unwrap()]).args(args).output().unwrap()
}

fn ctl_ok(sock: &Path, args: &[&str]) -> String {
    let o = ctl(sock, args);
    assert!(o.status.success(), "nvmf ctl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn ctl_json(sock: &Path, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["--output-format", "json"]);
    serde_json::from_str(&ctl_ok(sock, &a)).unwrap()
}

#[test]
fn ctl_manages_a_running_target() {
    let dir = tempdir();
    let sock = dir.path().join("nvmf.sock");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let rpc_port = free_port();
    let _t = start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--discovery-listen",
            "none",
            "--namespace",
            "ram:16MiB",
            "--rpc-listen",
            &format!("127.0.0.1:{rpc_port}"),
            "--rpc-token-file",
            token_file.to_str().unwrap(),
        ],
        &sock,
    );

    ctl_ok(&sock, &["subsystem", "add", NQN, "--namespace", "ram:8MiB", "--serial", "CTLTEST1"]);
    let text = ctl_ok(&sock, &["subsystem", "list"]);
    assert!(text.contains(NQN) && text.contains("serial CTLTEST1"), "{text}");
    let img = dir.path().join("ns2.img");
    let out = ctl_ok(
        &sock,
        &["namespace", "add", "--subsystem", NQN, "--namespace", &format!("file:{}:4MiB", img.display())],
    );
    assert_eq!(out.trim(), format!("added namespace 2 to {NQN}"));
    ctl_ok(&sock, &["namespace", "resize", "--subsystem", NQN, "--nsid", "2", "--size", "8MiB"]);
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 8 << 20);
    let sub = ctl_json(&sock, &["subsystem", "get", NQN]);
    assert_eq!(sub["namespaces"][1]["size_bytes"], 8 << 20);
    ctl_ok(&sock, &["host", "add", "--subsystem", NQN, "--host", "nqn.2026-11.io.nvmf:h1"]);
    let l = ctl_json(&sock, &["listener", "add", "127.0.0.1:0", "--subsystem", NQN]);
    let laddr = l["addr"].as_str().unwrap().to_string();
    ctl_ok(&sock, &["ana", "set", "--subsystem", NQN, "--listener", &laddr, "--group", "1", "--state", "inaccessible"]);
    assert!(ctl_ok(&sock, &["ana", "get", "--subsystem", NQN]).contains("inaccessible"));
    assert!(ctl_ok(&sock, &["controllers"]).contains("no controllers"));
    assert!(ctl_json(&sock, &["stats"])["subsystems"].as_array().unwrap().len() == 2);
    ctl_ok(&sock, &["referral", "add", "192.0.2.7:8009"]);

    // Errors: non-zero exit and a message that says what was wrong.
    for (args, needle) in [
        (vec!["subsystem", "add", NQN], "already exists"),
        (vec!["namespace", "remove", "--subsystem", NQN, "--nsid", "9"], "no namespace 9"),
        (vec!["subsystem", "get", "nqn.2026-11.io.nvmf:nope"], "no subsystem"),
        (vec!["namespace", "resize", "--subsystem", NQN, "--nsid", "1", "--size", "1GiB"], "cannot be resized"),
        (vec!["call", "bogus_method"], "method not found"),
    ] {
        let o = ctl(&sock, &args);
        assert!(!o.status.success(), "{args:?} succeeded");
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains(needle), "{args:?}: {e}");
    }

    // save-config writes a config the target starts from.
    let saved = dir.path().join("saved.toml");
    ctl_ok(&sock, &["save-config", saved.to_str().unwrap()]);
    let cfg = nvmf_target::config::TargetConfig::from_file(&saved).unwrap();
    assert_eq!(cfg.normalized().unwrap(), cfg);
    assert!(cfg.subsystems.iter().any(|s| s.nqn == NQN && s.allowed_hosts == ["nqn.2026-11.io.nvmf:h1"]));
    assert_eq!(cfg.discovery.referrals.len(), 1);

    // The TCP listener: the right token works, a wrong one is refused.
    let tcp = |token: &str| {
        let tf = dir.path().join("t2");
        std::fs::write(&tf, token).unwrap();
        Command::new(BIN)
            .args(["ctl", "--rpc-addr", &format!("127.0.0.1:{rpc_port}"), "--rpc-token-file", tf.to_str().unwrap()])
            .args(["subsystem", "list", "--output-format", "json"])
            .output()
            .unwrap()
    };
    let o = tcp("s3cret-token");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(serde_json::from_slice::<Value>(&o.stdout).unwrap().as_array().unwrap().len(), 2);
    let o = tcp("wrong");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unauthorized"));

    ctl_ok(&sock, &["listener", "remove", &laddr]);
    ctl_ok(&sock, &["subsystem", "remove", NQN]);
    assert!(!ctl_ok(&sock, &["subsystem", "list"]).contains(NQN));
}

#[test]
fn target_imports_nvmetcli_json() {
    let dir = tempdir();
    let img = dir.path().join("disk1.img");
    std::fs::write(&img, vec![0u8; 2 << 20]).unwrap();
    let port = free_port();
    // As `nvmetcli save` writes it: a TCP port and an RDMA port (skipped).
    let json = format!(
        r#"{{
  "hosts": [{{"nqn": "nqn.2014-08.org.nvmexpress:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427"}}],
  "ports": [
    {{"addr": {{"adrfam": "ipv4", "traddr": "127.0.0.1", "treq": "not specified", "trsvcid": "{port}", "trtype": "tcp"}},
      "ana_groups": [{{"ana": {{"state": "optimized"}}, "grpid": 1}}], "param": {{"inline_data_size": "16384"}},
      "portid": 1, "referrals": [], "subsystems": ["nqn.2014-08.org.example:disk1"]}},
    {{"addr": {{"adrfam": "ipv4", "traddr": "10.0.0.1", "treq": "not specified", "trsvcid": "4420", "trtype": "rdma"}},
      "portid": 2, "referrals": [], "subsystems": ["nqn.2014-08.org.example:disk1"]}}
  ],
  "subsystems": [
    {{"allowed_hosts": ["nqn.2014-08.org.nvmexpress:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427"],
      "attr": {{"allow_any_host": "0", "cntlid_max": "65519", "cntlid_min": "1", "model": "Linux", "pi_enable": "0",
               "serial": "7d4a0d4bdbd5f3e1", "version": "1.3"}},
      "namespaces": [{{"ana_grpid": 1, "device": {{"nguid": "ef90689c-6c46-d44c-89c1-4067801309a8", "path": "{}",
                      "uuid": "7e4a2d3c-1f2b-4c5d-8e9f-0a1b2c3d4e5f"}}, "enable": 1, "nsid": 1}}],
      "nqn": "nqn.2014-08.org.example:disk1"}}
  ]
}}"#,
        img.display()
    );
    let file = dir.path().join("config.json");
    std::fs::write(&file, json).unwrap();
    let sock = dir.path().join("nvmf.sock");
    let _t = start(&["--import-nvmetcli", file.to_str().unwrap()], &sock);
    let subs = ctl_json(&sock, &["subsystem", "list"]);
    let s = &subs[0];
    assert_eq!(s["nqn"], "nqn.2014-08.org.example:disk1");
    assert_eq!((s["serial"].as_str(), s["model"].as_str()), (Some("7d4a0d4bdbd5f3e1"), Some("Linux")));
    assert_eq!(s["allow_any_host"], false);
    let ns = &s["namespaces"][0];
    assert_eq!((ns["kind"].as_str(), ns["size_bytes"].as_u64()), (Some("file"), Some(2 << 20)));
    assert_eq!(ns["nguid"], "ef90689c6c46d44c89c14067801309a8");
    assert_eq!(ns["uuid"], "7e4a2d3c-1f2b-4c5d-8e9f-0a1b2c3d4e5f");
    let ls = ctl_json(&sock, &["listener", "list"]);
    assert_eq!(ls.as_array().unwrap().len(), 1, "{ls}");
    assert_eq!(ls[0]["addr"], format!("127.0.0.1:{port}"));
}

/// `nvmf ctl stats` with `idle` Unix clients connected (and sending nothing):
/// it is answered within 3 s.
fn ctl_gets_in_past(idle: usize) {
    let dir = tempdir();
    let sock = dir.path().join("nvmf.sock");
    let _t = start(&["--listen", "127.0.0.1:0", "--discovery-listen", "none", "--namespace", "ram:1MiB"], &sock);
    let clients: Vec<std::os::unix::net::UnixStream> =
        (0..idle).map(|_| std::os::unix::net::UnixStream::connect(&sock).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    let stats = ctl_json(&sock, &["stats"]);
    assert!(t0.elapsed() < Duration::from_secs(3), "nvmf ctl stats took {:?}", t0.elapsed());
    assert_eq!(stats["subsystems"].as_array().unwrap().len(), 1, "{stats}");
    drop(clients);
}

#[test]
fn ctl_gets_in_past_sixteen_idle_clients() {
    ctl_gets_in_past(16);
}

#[test]
fn ctl_gets_in_past_a_hundred_idle_clients() {
    ctl_gets_in_past(100);
}

/// SIGTERM to a target; its exit status, if it exits within `within`.
fn sigterm_exit(t: &mut Target, within: Duration) -> Option<std::process::ExitStatus> {
    // SAFETY: plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(t.0.id() as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(st) = t.0.try_wait().unwrap() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn sigterm_exits_in_time_when_the_socket_file_is_gone() {
    let dir = tempdir();
    let sock = dir.path().join("rpc.sock");
    let timeout_ms = 2000u64;
    let mut t = start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--discovery-listen",
            "none",
            "--namespace",
            "ram:1MiB",
            "--shutdown-timeout-ms",
            &timeout_ms.to_string(),
        ],
        &sock,
    );
    // A client in the middle of a request and an idle one do not hold shutdown up either.
    let mut half = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    std::io::Write::write_all(&mut half, b"{\"jsonrpc\":\"2.0\",").unwrap();
    let _idle = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    ctl_ok(&sock, &["stats"]);
    std::fs::remove_file(&sock).unwrap();
    let st = sigterm_exit(&mut t, Duration::from_millis(timeout_ms + 1000));
    assert!(st.is_some(), "nvmf target still running {} ms after SIGTERM", timeout_ms + 1000);
    assert!(st.unwrap().success(), "{st:?}");
}

#[test]
fn a_socket_path_taken_over_is_left_at_exit() {
    let dir = tempdir();
    let sock = dir.path().join("rpc.sock");
    let mut t = start(&["--listen", "127.0.0.1:0", "--discovery-listen", "none", "--namespace", "ram:1MiB"], &sock);
    std::fs::remove_file(&sock).unwrap();
    std::fs::write(&sock, b"someone else's").unwrap();
    let st = sigterm_exit(&mut t, Duration::from_secs(6));
    assert!(st.is_some_and(|s| s.success()), "{st:?}");
    assert_eq!(std::fs::read(&sock).unwrap(), b"someone else's");
}

#[test]
fn ctl_masks_namespaces_to_hosts() {
    const HA: &str = "nqn.2026-12.io.nvmf:ctl-host-a";
    const HB: &str = "nqn.2026-12.io.nvmf:ctl-host-b";
    let dir = tempdir();
    let sock = dir.path().join("nvmf.sock");
    let cfg = dir.path().join("target.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[listener]]\naddr = \"127.0.0.1:0\"\n\n[[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n\
             [[subsystem.namespace]]\nkind = \"ram\"\nsize = \"4MiB\"\n\
             [[subsystem.namespace]]\nkind = \"ram\"\nsize = \"4MiB\"\nhosts = [\"{HA}\"]\n"
        ),
    )
    .unwrap();
    let _t = start(&["--config", cfg.to_str().unwrap()], &sock);
    let text = ctl_ok(&sock, &["subsystem", "get", NQN]);
    assert!(text.contains(&format!("hosts: {HA}")), "{text}");

    // `ns` is `namespace`; add --host masks a new namespace from the start.
    let out = ctl_ok(&sock, &["ns", "add", "--subsystem", NQN, "--namespace", "ram:1MiB", "--host", HB]);
    assert_eq!(out.trim(), format!("added namespace 3 to {NQN}"));
    let out = ctl_ok(&sock, &["ns", "add-host", "--subsystem", NQN, "--nsid", "2", "--host", HB]);
    assert_eq!(out.trim(), format!("namespace 2 of {NQN}  hosts: {HA},{HB}"));
    let r = ctl_json(&sock, &["namespace", "remove-host", "--subsystem", NQN, "--nsid", "2", "--host", HA]);
    assert_eq!(r["hosts"], serde_json::json!([HB]));
    let sub = ctl_json(&sock, &["subsystem", "get", NQN]);
    let hosts: Vec<Value> = sub["namespaces"].as_array().unwrap().iter().map(|n| n["hosts"].clone()).collect();
    assert_eq!(hosts, [serde_json::json!([]), serde_json::json!([HB]), serde_json::json!([HB])]);

    for (args, needle) in [
        (vec!["ns", "remove-host", "--subsystem", NQN, "--nsid", "2", "--host", HB], "last host"),
        (vec!["ns", "add-host", "--subsystem", NQN, "--nsid", "2", "--host", HB], "already"),
        (vec!["ns", "add-host", "--subsystem", NQN, "--nsid", "9", "--host", HB], "no namespace 9"),
        (vec!["ns", "add-host", "--subsystem", NQN, "--nsid", "2", "--host", "bad host"], "host"),
    ] {
        let o = ctl(&sock, &args);
        assert!(!o.status.success(), "{args:?} succeeded");
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains(needle), "{args:?}: {e}");
    }

    // save-config keeps the lists (and writes none for the unmasked namespace).
    let saved = dir.path().join("saved.toml");
    ctl_ok(&sock, &["save-config", saved.to_str().unwrap()]);
    let text = std::fs::read_to_string(&saved).unwrap();
    assert_eq!(text.matches("\nhosts = ").count(), 2, "{text}");
    let cfg = nvmf_target::config::TargetConfig::from_file(&saved).unwrap();
    assert_eq!(cfg.normalized().unwrap(), cfg);
    let ns = &cfg.subsystems.iter().find(|s| s.nqn == NQN).unwrap().namespaces;
    assert!(ns[0].hosts.is_empty() && ns[1].hosts == [HB] && ns[2].hosts == [HB]);
}
