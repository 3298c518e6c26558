//! `nvmf connect | disconnect | list` (the real binary) on a machine where no
//! device is served: clear refusals before any connection, an empty list.
//! The devices themselves need a kernel with ublk: tests/interop's
//! `target-ublk` case runs them inside the lab's guest.

use std::path::Path;
use std::process::{Command, Output};

const NVMF: &str = env!("CARGO_BIN_EXE_nvmf");

fn nvmf(args: &[&str]) -> Output {
    Command::new(NVMF).args(args).output().expect("run nvmf")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn connect_without_ublk_says_what_is_missing() {
    if Path::new("/dev/ublk-control").exists() {
        return; // a ublk kernel: connect would really try
    }
    // Port 1 on loopback: nothing is dialled before the ublk check.
    let o = nvmf(&["connect", "-a", "127.0.0.1", "-s", "1", "-n", "nqn.2026-11.io.nvmf:none"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("/dev/ublk-control") && e.contains("modprobe ublk_drv"), "{e}");
}

#[test]
fn disconnect_refuses_what_it_does_not_serve() {
    let o = nvmf(&["disconnect", "/dev/sda"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not a ublk device"), "{}", stderr(&o));
    let o = nvmf(&["disconnect", "/dev/ublkb4095"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not served by nvmf connect"), "{}", stderr(&o));
    let o = nvmf(&["disconnect"]);
    assert!(!o.status.success(), "a device or --nqn is required");
    let o = nvmf(&["disconnect", "--nqn", "nqn.2026-11.io.nvmf:nothing-here"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no device of nqn.2026-11.io.nvmf:nothing-here"), "{}", stderr(&o));
}

#[test]
fn list_shows_a_header_and_valid_json() {
    let o = nvmf(&["list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.starts_with("Device") && text.contains("Subsystem NQN") && text.contains("Block size"), "{text}");
    let o = nvmf(&["list", "--output-format", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["devices"].is_array(), "{v}");
}
