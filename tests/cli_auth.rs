//! `-S/--dhchap-secret` and `-C/--dhchap-ctrl-secret` of the host commands
//! against `nvmf target` (both the real binary): secrets never reach stdout,
//! stderr or the JSON reports; with the target side of DH-HMAC-CHAP, identify,
//! read, write and perf authenticate, and wrong or missing keys fail.

mod cli_util;

use std::process::{Command, Output};

const NQN: &str = "nqn.2026-11.io.nvmf:cli-auth";

use cli_util::{body, Target, NVMF};

/// `nvmf target` serving NQN (16 MiB RAM) with `extra` flags.
fn start_target(extra: &[&str]) -> Target {
    cli_util::start_target(&[&["--subsystem", NQN, "--namespace", "ram:16MiB"], extra].concat())
}
const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-0000000000cc";
const HOST_KEY: &str = "DHHC-1:01:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:";
const CTRL_KEY: &str = "DHHC-1:02:QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl9gYWJjZGVmZ2hpamtsbW5voBXMjQ==:";
const OTHER_KEY: &str = "DHHC-1:00:ia6zGodOr4SEG0Zzaw398rpY0wqipUWj4jWjUh4HWUz6aQ2n:";

/// Run a host command against `t` as HOSTNQN; check no key text in its output.
fn host(t: &Target, cmd: &str, args: &[&str]) -> Output {
    let port = t.port.to_string();
    let mut c = Command::new(NVMF);
    c.args([cmd, "-a", "127.0.0.1", "-s", &port, "-n", NQN, "-q", HOSTNQN]).args(args);
    let o = c.output().expect("run nvmf");
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    for key in [HOST_KEY, CTRL_KEY, OTHER_KEY] {
        assert!(!text.contains(body(key)), "{cmd} {args:?} printed a secret: {text}");
    }
    o
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn secrets_stay_out_of_output_without_target_auth() {
    let t = start_target(&[]);
    // A host secret and no ATR: nothing to authenticate (as Linux).
    let o = host(&t, "identify", &["-o", "json", "-S", HOST_KEY]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(NQN));
    let o = host(&t, "perf", &["--output-format", "json", "--runtime", "1", "--iodepth", "4", "-S", HOST_KEY]);
    assert!(o.status.success(), "{}", stderr(&o));
    // A controller secret: the controller must prove it, and this one cannot.
    let o = host(&t, "identify", &["-S", HOST_KEY, "-C", CTRL_KEY]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("authentication failed: qid 0"), "{}", stderr(&o));
}

#[test]
fn dhchap_against_nvmf_target_cli() {
    let spec = format!("{HOSTNQN}:dhchap={HOST_KEY}:ctrl={CTRL_KEY}");
    let t = start_target(&["--host", &spec]);
    let o = host(&t, "identify", &["-i", "2", "-S", HOST_KEY, "-o", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = host(&t, "identify", &["-S", HOST_KEY, "-C", CTRL_KEY]);
    assert!(o.status.success(), "{}", stderr(&o));

    let dir = std::env::temp_dir().join(format!("nvmf-cli-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (src, dst) = (dir.join("in"), dir.join("out"));
    let data: Vec<u8> = (0..64 * 512u32).map(|i| (i * 13 % 256) as u8).collect();
    std::fs::write(&src, &data).unwrap();
    let io = ["--start-block", "16", "--block-count", "64", "-S", HOST_KEY, "-C", CTRL_KEY];
    let o = host(&t, "write", &[&io[..], &["-d", src.to_str().unwrap()]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let o = host(&t, "read", &[&io[..], &["-d", dst.to_str().unwrap()]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read(&dst).unwrap() == data, "read back differs");
    let _ = std::fs::remove_dir_all(&dir);

    let o = host(
        &t,
        "perf",
        &["--output-format", "json", "--runtime", "1", "--nr-io-queues", "2", "-S", HOST_KEY, "-C", CTRL_KEY],
    );
    assert!(o.status.success(), "{}", stderr(&o));

    for (args, want) in [
        (&["-S", OTHER_KEY][..], "the controller refused"),
        (&[][..], "no host secret"),
        (&["-S", HOST_KEY, "-C", OTHER_KEY][..], "the host refused the controller"),
    ] {
        let o = host(&t, "identify", args);
        assert!(!o.status.success(), "{args:?} connected");
        let e = stderr(&o);
        assert!(e.contains("authentication failed: qid 0") && e.contains(want), "{args:?}: {e}");
    }
    let o = host(&t, "perf", &["--runtime", "1", "-S", OTHER_KEY]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("authentication failed"), "{}", stderr(&o));
}

#[test]
fn concat_against_nvmf_target_cli() {
    // Secure channel concatenation: a host key, a listener that allows TLS.
    let spec = format!("{HOSTNQN}:dhchap={HOST_KEY}");
    let t = start_target(&["--tls", "allowed", "--host", &spec]);
    let o = host(&t, "identify", &["-S", HOST_KEY, "--concat", "-o", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(NQN));

    let dir = std::env::temp_dir().join(format!("nvmf-cli-concat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (src, dst) = (dir.join("in"), dir.join("out"));
    let data: Vec<u8> = (0..32 * 512u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&src, &data).unwrap();
    let io = ["--start-block", "8", "--block-count", "32", "-S", HOST_KEY, "--concat"];
    let o = host(&t, "write", &[&io[..], &["-d", src.to_str().unwrap()]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let o = host(&t, "read", &[&io[..], &["-d", dst.to_str().unwrap()]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read(&dst).unwrap() == data, "read back differs");
    let _ = std::fs::remove_dir_all(&dir);

    // A wrong key fails cleanly, perf's too; perf with the right one runs
    // (tests/cli_tls.rs checks it with --verify and KeyUpdates).
    let o = host(&t, "identify", &["-S", OTHER_KEY, "--concat"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("authentication failed: qid 0"), "{}", stderr(&o));
    let o = host(&t, "perf", &["--runtime", "1", "-S", OTHER_KEY, "--concat"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("authentication failed"), "{}", stderr(&o));
    let o = host(&t, "perf", &["--runtime", "1", "-S", HOST_KEY, "--concat"]);
    assert!(o.status.success(), "{}", stderr(&o));
}
