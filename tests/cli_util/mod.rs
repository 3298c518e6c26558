//! Shared by the CLI tests: the `nvmf` binary, and an `nvmf target` of it on a
//! kernel-chosen loopback port (killed when dropped).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const NVMF: &str = env!("CARGO_BIN_EXE_nvmf");

pub struct Target {
    child: Child,
    pub port: u16,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `nvmf target --mode interrupt --listen 127.0.0.1:0
/// --discovery-listen none ARGS` and read the port from its summary line.
pub fn start_target(args: &[&str]) -> Target {
    let mut child = Command::new(NVMF)
        .args(["target", "--mode", "interrupt", "--listen", "127.0.0.1:0", "--discovery-listen", "none"])
        .args(if args.contains(&"--rpc-socket") { &[][..] } else { &["--rpc-socket", "none"][..] })
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn nvmf target");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut line = String::new();
    while Instant::now() < deadline {
        line.clear();
        if out.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        // "nvmf target: serving 1 subsystem on 127.0.0.1:PORT (...)"
        if let Some(rest) = line.split(" on 127.0.0.1:").nth(1) {
            let port: u16 = rest.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap();
            // Keep draining stdout so the target never blocks on a full pipe.
            std::thread::spawn(move || for _ in out.lines() {});
            return Target { child, port };
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("nvmf target did not report its address (last line {line:?})");
}

/// The base64 body of a key (`NAME:hh:BODY:`): the secret part.
pub fn body(key: &str) -> &str {
    key.splitn(3, ':').nth(2).unwrap().trim_end_matches(':')
}
