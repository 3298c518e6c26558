//! End-to-end tests of `nvmf target`: the real binary, real sockets on
//! 127.0.0.1 with free ports, real signals.

use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_nvmf");
/// Upper bound on startup and shutdown; generous because CI machines are shared.
const WAIT: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Kills the child if a test fails half way.
struct Guard(Option<Child>);
impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < deadline, "nvmf target did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

#[test]
fn serves_prints_how_to_connect_and_stops_on_sigterm() {
    let (io_port, disc_port) = (free_port(), free_port());
    let child = Command::new(BIN)
        .args(["target", "--listen", &format!("127.0.0.1:{io_port}")])
        .args(["--discovery-listen", &format!("127.0.0.1:{disc_port}")])
        .args(["--namespace", "ram:64MiB", "--rpc-socket", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = Guard(Some(child));
    let child = guard.0.as_mut().unwrap();

    // Read stdout on a thread so a silent child cannot hang the test.
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + WAIT;
    while lines.len() < 4 {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(l) => lines.push(l),
            Err(_) => {
                let status = child.try_wait().unwrap();
                let err = stderr_of(child);
                panic!("no startup text (status {status:?}); got {lines:?}; stderr:\n{err}");
            }
        }
    }
    let text = lines.join("\n");
    assert_eq!(
        lines[0],
        format!(
            "nvmf target: serving 1 subsystem on 127.0.0.1:{io_port} (discovery 127.0.0.1:{disc_port}), \
             1 core(s), interrupt mode"
        ),
        "{text}"
    );
    assert!(lines[1].contains("nqn.2026-11.io.nvmf:default  ns 1: ram 64.00 MiB (512 B blocks)  hosts: any"), "{text}");
    assert_eq!(
        lines[2],
        format!("connect from Linux:  nvme connect -t tcp -a 127.0.0.1 -s {io_port} -n nqn.2026-11.io.nvmf:default")
    );
    assert_eq!(lines[3], format!("discover:            nvme discover -t tcp -a 127.0.0.1 -s {disc_port}"));

    // Both ports accept connections once the text is out.
    TcpStream::connect(("127.0.0.1", io_port)).expect("I/O listener accepts");
    TcpStream::connect(("127.0.0.1", disc_port)).expect("discovery listener accepts");

    // SAFETY: plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) }, 0);
    let status = wait_exit(child);
    let err = stderr_of(child);
    assert_eq!(status.code(), Some(0), "stderr:\n{err}");
    guard.0 = None;
}

#[test]
fn config_errors_exit_nonzero_naming_the_key() {
    let out = Command::new(BIN).args(["target", "--listen", "nowhere:x"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listener[0].addr") && err.contains("nowhere:x"), "{err}");

    let out = Command::new(BIN).args(["target", "--namespace", "ram:1XB"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"1XB\" is not a size"), "{err}");

    // A missing file is named once, not once per error in the chain.
    let out = Command::new(BIN).args(["target", "--config", "/nonexistent/nvmf.toml"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("/nonexistent/nvmf.toml").count(), 1, "{err}");
    assert_eq!(err.matches("No such file").count(), 1, "{err}");

    // A file namespace on a missing path says how to create one.
    let args = ["target", "--namespace", "file:/nonexistent/disk.img", "--rpc-socket", "none"];
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("file:PATH:SIZE"), "{err}");
    assert_eq!(err.matches("/nonexistent/disk.img").count(), 1, "{err}");
}

/// A second target on a management socket that a running target serves
/// does not start (before, it went on without one and `nvmf ctl` reached
/// the first target).
#[test]
fn second_target_on_a_taken_rpc_socket_fails_with_a_message() {
    let dir = std::env::temp_dir().join(format!("nvmf-rpc-taken-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("nvmf.sock");
    let sock = sock.to_str().unwrap();
    let first = Command::new(BIN)
        .args(["target", "--listen", "127.0.0.1:0", "--discovery-listen", "none", "--rpc-socket", sock])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Guard(Some(first));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(sock).is_err() {
        assert!(std::time::Instant::now() < deadline, "first target's socket never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = Command::new(BIN)
        .args(["target", "--listen", "127.0.0.1:0", "--discovery-listen", "none", "--rpc-socket", sock])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another nvmf target serves it") && err.contains("--rpc-socket none"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bind_failure_exits_nonzero() {
    // Hold the port so the target cannot bind it.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let mut child = Command::new(BIN)
        .args([
            "target",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--discovery-listen",
            "none",
            "--rpc-socket",
            "none",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child);
    let err = stderr_of(&mut child);
    assert!(!status.success(), "target started on a port in use; stderr:\n{err}");
    assert!(err.contains(&port.to_string()) || err.to_lowercase().contains("in use"), "{err}");
}

#[test]
fn print_config_round_trips() {
    let out = Command::new(BIN).args(["target", "--namespace", "null:1TiB", "--print-config"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let cfg = nvmf_target::config::TargetConfig::from_toml_str(&text).unwrap();
    assert_eq!(cfg.normalized().unwrap(), cfg);
    assert_eq!(cfg.subsystems[0].namespaces[0].kind, "null");
}

#[test]
fn port_zero_prints_bound_ports_and_stops_on_sigint() {
    let mut child = Command::new(BIN)
        .args(["target", "--listen", "127.0.0.1:0", "--discovery-listen", "none", "--namespace", "null:1TiB"])
        .args(["--rpc-socket", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    // Kept open until the end so the target never writes to a closed pipe.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut first).unwrap();
    let mut guard = Guard(Some(child));
    let child = guard.0.as_mut().unwrap();
    // "... serving 1 subsystem on 127.0.0.1:PORT (discovery on the same port), ..."
    let port: u16 = first
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no bound port in {first:?}"));
    assert_ne!(port, 0, "{first}");
    assert!(first.contains("(discovery on the same port)"), "{first}");
    TcpStream::connect(("127.0.0.1", port)).expect("listener accepts");
    // SAFETY: plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) }, 0);
    let status = wait_exit(child);
    assert_eq!(status.code(), Some(0), "stderr:\n{}", stderr_of(child));
    guard.0 = None;
    drop(stdout);
}
