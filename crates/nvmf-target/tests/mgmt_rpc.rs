//! Management API acceptance: `serve()` plus the JSON-RPC socket in a temp
//! dir; every method, the bad-request list (each leaves the running
//! configuration unchanged), save_config -> restart -> same state and data,
//! and metrics counting a known number of I/Os exactly.

mod common;
#[path = "mgmt_common.rs"]
mod mgmt_common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Host;
use mgmt_common::*;
use nvmf_proto::fabrics::{cc, prop, PropertyCmd};
use nvmf_proto::opcodes::io as iop;
use nvmf_proto::{Sgl, Sqe};
use nvmf_target::config::{DiscoveryConfig, ListenerConfig, NamespaceConfig, SubsystemConfig, TargetConfig};
use nvmf_target::mgmt::methods::METHODS;
use nvmf_target::mgmt::{code, Mgmt, MgmtListeners, RpcOptions};
use serde_json::{json, Value};

const A: &str = "nqn.2026-11.io.nvmf:mgmt-a";
const B: &str = "nqn.2026-11.io.nvmf:mgmt-b";
const HOST: &str = "nqn.2026-11.io.nvmf:mgmt-host";

struct Running {
    server: Arc<nvmf_target::Server>,
    listeners: MgmtListeners,
    sock: PathBuf,
}

impl Running {
    fn stop(self) {
        self.listeners.stop();
        let s = Arc::try_unwrap(self.server).ok().expect("management released the server");
        s.shutdown(Duration::from_secs(2));
    }
    fn io_addr(&self) -> SocketAddr {
        self.server.io_addrs()[0]
    }
    fn metrics_addr(&self) -> SocketAddr {
        self.listeners.metrics_addr.unwrap()
    }
}

fn start(cfg: &TargetConfig, dir: &Path) -> Running {
    let server = Arc::new(nvmf_target::serve(cfg).unwrap());
    let mgmt = Mgmt::new(server.clone(), cfg).unwrap();
    let sock = dir.join("rpc.sock");
    let opts = RpcOptions {
        socket_path: Some(sock.clone()),
        socket_required: true,
        metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
        ..RpcOptions::default()
    };
    let listeners = MgmtListeners::start(mgmt, &opts).unwrap();
    Running { server, listeners, sock }
}

fn base_config(dir: &Path) -> TargetConfig {
    let mut file_ns = NamespaceConfig::new("file");
    file_ns.path = Some(dir.join("a2.img").display().to_string());
    file_ns.size = Some("4MiB".into());
    let mut cfg = TargetConfig::embedded_default();
    cfg.listeners =
        vec![ListenerConfig { addr: "127.0.0.1:0".into(), port_id: None, subsystems: vec![], tls: Default::default() }];
    cfg.discovery = DiscoveryConfig::default();
    cfg.subsystems = vec![SubsystemConfig::with_namespaces(A, vec![NamespaceConfig::ram("8MiB"), file_ns])];
    cfg
}

/// Admin queue + one I/O queue to `nqn`; returns (admin, io, cntlid).
fn connect(addr: SocketAddr, nqn: &str) -> (Host, Host, u16) {
    let mut a = Host::ic(addr, false, false, 0);
    let c = a.connect(0, 31, 0, nqn, HOST, 0xffff);
    assert!(c.status.is_success(), "admin connect: {}", c.status);
    let sqe = PropertyCmd::set_sqe(a.cid(), prop::CC, false, cc::LINUX_ENABLE as u64);
    assert!(a.exec(sqe, &[], true).0.status.is_success());
    let cntlid = c.dw0 as u16;
    let mut q = Host::ic(addr, false, false, 0);
    let c = q.connect(1, 31, 0, nqn, HOST, cntlid);
    assert!(c.status.is_success(), "io connect: {}", c.status);
    (a, q, cntlid)
}

fn write(q: &mut Host, nsid: u32, slba: u64, data: &[u8]) {
    let s = Sqe::rw(iop::WRITE, 0, nsid, slba, (data.len() / 512) as u32);
    let (c, _) = q.exec(s, data, false);
    assert!(c.status.is_success(), "write: {}", c.status);
}

fn read(q: &mut Host, nsid: u32, slba: u64, blocks: u32) -> Vec<u8> {
    let mut s = Sqe::rw(iop::READ, 0, nsid, slba, blocks);
    s.sgl1 = Sgl::transport(blocks * 512);
    let (c, d) = q.exec(s, &[], false);
    assert!(c.status.is_success(), "read: {}", c.status);
    d
}

fn scrape(addr: SocketAddr) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

fn metric(text: &str, name_and_labels: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {name_and_labels} in\n{text}"))
        .parse()
        .unwrap()
}

fn running_toml(sock: &Path) -> String {
    ok(sock, "save_config", json!({}))["toml"].as_str().unwrap().to_string()
}

#[test]
fn schema_lists_exactly_the_methods_and_its_examples_validate() {
    let root = schema();
    let documented: Vec<&String> = root["methods"].as_object().unwrap().keys().collect();
    for m in METHODS {
        assert!(documented.iter().any(|d| d == m), "{m} is not in docs/rpc-schema.json");
    }
    for d in &documented {
        assert!(METHODS.contains(&d.as_str()), "docs/rpc-schema.json documents {d}, which is not implemented");
    }
    for (name, m) in root["methods"].as_object().unwrap() {
        assert!(m["description"].is_string(), "{name}: description");
        let examples = m["examples"].as_array().unwrap_or_else(|| panic!("{name}: examples"));
        assert!(!examples.is_empty(), "{name}: no example");
        for e in examples {
            validate(&m["params"], &e["params"], &root, name).unwrap();
        }
    }
}

#[test]
fn every_method_and_bad_requests_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(&base_config(dir.path()), dir.path());
    let sock = r.sock.as_path();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(sock).unwrap().permissions().mode() & 0o777, 0o600);

    let methods = ok(sock, "rpc_methods", json!({}));
    assert_eq!(methods.as_array().unwrap().len(), METHODS.len());

    // Subsystems.
    let list = ok(sock, "subsystem_list", json!({}));
    assert_eq!(list.as_array().unwrap().len(), 1);
    let created = ok(sock, "subsystem_create", json!({"nqn": B, "namespace": [{"kind": "ram", "size": "1MiB"}]}));
    assert_eq!(created["nsids"], json!([1]));
    let b = ok(sock, "subsystem_get", json!({"nqn": B}));
    assert_eq!(b["namespaces"][0]["size_bytes"], 1 << 20);
    assert_eq!(b["allow_any_host"], true);

    // Namespaces of every kind but block (a missing device is refused cleanly).
    let n = ok(sock, "namespace_add", json!({"nqn": B, "kind": "null", "size": "1GiB"}));
    assert_eq!(n["nsid"], 2);
    let img = dir.path().join("b3.img").display().to_string();
    let n = ok(sock, "namespace_add", json!({"nqn": B, "kind": "file", "path": img, "size": "2MiB", "nsid": 3}));
    assert_eq!(n["nsid"], 3);
    err(
        sock,
        "namespace_add",
        json!({"nqn": B, "kind": "block", "path": "/nonexistent/dev"}),
        code::FAILED,
        "/nonexistent/dev",
    );
    ok(sock, "namespace_resize", json!({"nqn": B, "nsid": 3, "size": "4MiB"}));
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 4 << 20);
    err(sock, "namespace_resize", json!({"nqn": B, "nsid": 1, "size": 2 << 20}), code::CONFLICT, "cannot be resized");
    let b = ok(sock, "subsystem_get", json!({"nqn": B}));
    assert_eq!(b["namespaces"][0]["size_bytes"], 1 << 20);
    assert_eq!(b["namespaces"][2]["size_bytes"], 4 << 20);
    ok(sock, "namespace_remove", json!({"nqn": B, "nsid": 2}));

    // Hosts.
    let h = ok(sock, "host_add", json!({"nqn": B, "host": HOST}));
    assert_eq!((h["allow_any_host"].clone(), h["allowed_hosts"].clone()), (json!(false), json!([HOST])));
    // The last host of a hosts-only subsystem: refused without force.
    err(sock, "host_remove", json!({"nqn": B, "host": HOST}), code::CONFLICT, "last allowed host");
    ok(sock, "host_remove", json!({"nqn": B, "host": HOST, "force": true}));
    ok(sock, "subsystem_allow_any_host", json!({"nqn": B, "allow": true}));

    // Listeners, referrals, ANA.
    let l = ok(sock, "listener_add", json!({"addr": "127.0.0.1:0", "subsystem": B}));
    let laddr = l["addr"].as_str().unwrap().to_string();
    assert!(!laddr.ends_with(":0"));
    assert!(std::net::TcpStream::connect(&laddr).is_ok(), "new listener accepts");
    let ls = ok(sock, "listener_list", json!({}));
    assert_eq!(ls.as_array().unwrap().len(), 2);
    ok(sock, "listener_add", json!({"addr": laddr, "subsystem": A}));
    ok(sock, "ana_set", json!({"nqn": B, "listener": laddr, "group": 1, "state": "non-optimized"}));
    let ana = ok(sock, "ana_get", json!({"nqn": B}));
    assert!(
        ana.as_array().unwrap().iter().any(|g| g["listener"] == laddr.as_str() && g["state"] == "non-optimized"),
        "{ana}"
    );
    ok(sock, "referral_add", json!({"addr": "192.0.2.1:8009"}));
    assert_eq!(ok(sock, "referral_list", json!({})).as_array().unwrap().len(), 1);
    ok(sock, "referral_remove", json!({"addr": "192.0.2.1:8009"}));

    // Controllers: one connected host, listed with its peers, then disconnected.
    let (mut admin, mut q, cntlid) = connect(r.io_addr(), A);
    let cl = ok(sock, "controller_list", json!({"nqn": A}));
    let c = &cl[0];
    assert_eq!(
        (c["cntlid"].as_u64(), c["hostnqn"].as_str(), c["io_queues"].as_u64()),
        (Some(cntlid as u64), Some(HOST), Some(1))
    );
    assert_eq!(c["peers"].as_array().unwrap().len(), 2);
    write(&mut q, 1, 0, &[0x5a; 4096]);
    let st = ok(sock, "stats", json!({}));
    assert_eq!(st["subsystems"][0]["write_cmds"], 1);
    ok(sock, "controller_disconnect", json!({"nqn": A, "cntlid": cntlid}));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ok(sock, "controller_list", json!({})).as_array().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "controller still listed after disconnect");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(admin.closed_by_peer() && q.closed_by_peer());

    // The bad-request list: clear errors, nothing changes.
    let before = running_toml(sock);
    let unknown = raw(sock, br#"{"jsonrpc":"2.0","id":1,"method":"subsystem_explode","params":{}}"#);
    assert_eq!(unknown["error"]["code"], code::METHOD_NOT_FOUND);
    assert!(unknown["error"]["message"].as_str().unwrap().contains("subsystem_explode"));
    err(sock, "subsystem_get", json!({}), code::INVALID_PARAMS, "nqn: missing");
    err(sock, "namespace_remove", json!({"nqn": A, "nsid": "one"}), code::INVALID_PARAMS, "nsid");
    err(sock, "namespace_remove", json!({"nqn": A, "nsid": 1, "force": true}), code::INVALID_PARAMS, "force");
    err(sock, "namespace_add", json!({"nqn": A, "kind": "ram", "size": "3XB"}), code::INVALID_PARAMS, "size");
    err(
        sock,
        "namespace_add",
        json!({"nqn": A, "kind": "ram", "size": "1MiB", "nsid": 1}),
        code::EXISTS,
        "namespace 1",
    );
    err(sock, "namespace_add", json!({"nqn": A, "kind": "tape", "size": "1MiB"}), code::INVALID_PARAMS, "kind");
    err(sock, "subsystem_create", json!({"nqn": A}), code::EXISTS, A);
    err(sock, "subsystem_create", json!({"nqn": "not an nqn"}), code::INVALID_PARAMS, "nqn");
    err(sock, "subsystem_get", json!({"nqn": "nqn.2026-11.io.nvmf:none"}), code::NOT_FOUND, "no subsystem");
    ok(sock, "namespace_remove", json!({"nqn": B, "nsid": 3}));
    let after_remove = running_toml(sock);
    err(sock, "namespace_remove", json!({"nqn": B, "nsid": 3}), code::NOT_FOUND, "no namespace 3");
    err(sock, "namespace_resize", json!({"nqn": A, "nsid": 1, "size": "1000"}), code::INVALID_PARAMS, "size");
    err(sock, "host_remove", json!({"nqn": A, "host": HOST}), code::NOT_FOUND, HOST);
    err(sock, "listener_add", json!({"addr": "nowhere"}), code::INVALID_PARAMS, "addr");
    err(sock, "listener_add", json!({"addr": laddr}), code::EXISTS, "exists");
    err(
        sock,
        "ana_set",
        json!({"nqn": A, "listener": laddr, "group": 1, "state": "sleepy"}),
        code::INVALID_PARAMS,
        "state",
    );
    err(sock, "subsystem_delete", json!({"nqn": B}), code::CONFLICT, "listener");
    let parse = raw(sock, b"{\"jsonrpc\": \"2.0\", \"method\": ");
    assert_eq!(parse["error"]["code"], code::PARSE_ERROR);
    let notreq = raw(sock, br#"{"jsonrpc":"2.0","id":1}"#);
    assert_eq!(notreq["error"]["code"], code::INVALID_REQUEST);
    let mut big = br#"{"jsonrpc":"2.0","id":1,"method":"subsystem_create","params":{"nqn":""#.to_vec();
    big.resize(big.len() + (1 << 20) + 10, b'a');
    big.extend_from_slice(br#""}}"#);
    let over = raw(sock, &big);
    assert_eq!(over["error"]["code"], code::INVALID_REQUEST);
    assert!(over["error"]["message"].as_str().unwrap().contains("larger than"));
    assert_eq!(running_toml(sock), after_remove, "a failed request changed the configuration");
    assert_ne!(before, after_remove);

    // Tear down what the listener named, then the subsystem goes.
    ok(sock, "listener_remove", json!({"addr": laddr, "subsystem": B}));
    ok(sock, "listener_remove", json!({"addr": laddr}));
    assert!(std::net::TcpStream::connect(&laddr).is_err(), "removed listener still accepts");
    // Same address and port ID again: the ANA state set before does not come back.
    ok(sock, "listener_add", json!({"addr": laddr, "subsystem": B, "port_id": l["port_id"]}));
    let ana = ok(sock, "ana_get", json!({"nqn": B}));
    assert!(ana.as_array().unwrap().iter().all(|g| g["state"] == "optimized"), "{ana}");
    ok(sock, "listener_remove", json!({"addr": laddr}));
    ok(sock, "subsystem_delete", json!({"nqn": B}));
    err(sock, "listener_remove", json!({"addr": r.io_addr().to_string()}), code::CONFLICT, "last");
    r.stop();
}

#[test]
fn save_config_restart_keeps_subsystems_ids_and_data() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(&base_config(dir.path()), dir.path());
    let sock = r.sock.clone();
    ok(&sock, "subsystem_create", json!({"nqn": B, "allowed_hosts": [HOST]}));
    let img = dir.path().join("b1.img").display().to_string();
    ok(&sock, "namespace_add", json!({"nqn": B, "kind": "file", "path": img, "size": "1MiB"}));
    ok(
        &sock,
        "namespace_add",
        json!({"nqn": B, "kind": "ram", "size": "1MiB", "nguid": "00112233445566778899aabbccddeeff"}),
    );
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 7 + i / 511) as u8).collect();
    {
        let (_a, mut q, _) = connect(r.io_addr(), B);
        write(&mut q, 1, 8, &data);
        // Flush (the file backend is durable after it).
        let (c, _) = q.exec(Sqe::rw(iop::FLUSH, 0, 1, 0, 1), &[], false);
        assert!(c.status.is_success());
    }
    let saved = dir.path().join("saved.toml");
    ok(&sock, "save_config", json!({"path": saved.display().to_string()}));
    let before: Vec<Value> = ok(&sock, "subsystem_list", json!({})).as_array().unwrap().clone();
    let running = TargetConfig::from_file(&saved).unwrap();
    // Round trip exact.
    assert_eq!(running.normalized().unwrap(), running);
    r.stop();

    // Restart on the same addresses from the saved file.
    let dir2 = tempfile::tempdir().unwrap();
    let r = start(&running, dir2.path());
    let after: Vec<Value> = ok(&r.sock, "subsystem_list", json!({})).as_array().unwrap().clone();
    let strip = |v: &[Value]| -> Vec<Value> {
        v.iter()
            .map(|s| {
                let mut s = s.clone();
                s["controllers"] = json!(0);
                s
            })
            .collect()
    };
    assert_eq!(strip(&after), strip(&before));
    assert_eq!(after[1]["namespaces"][1]["nguid"], "00112233445566778899aabbccddeeff");
    let (_a, mut q, _) = connect(r.io_addr(), B);
    assert_eq!(read(&mut q, 1, 8, 16), data, "file namespace data survived the restart");
    drop(q);
    r.stop();
}

#[test]
fn metrics_count_ios_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(&base_config(dir.path()), dir.path());
    let (writes, reads) = (37u64, 23u64);
    {
        let (_a, mut q, _) = connect(r.io_addr(), A);
        for i in 0..writes {
            write(&mut q, 1, i * 8, &[i as u8; 4096]);
        }
        for i in 0..reads {
            assert_eq!(read(&mut q, 1, i * 8, 8), vec![i as u8; 4096]);
        }
        // The file namespace (nsid 2) goes through io_uring: backend time is measured.
        write(&mut q, 2, 0, &[7; 8192]);
        assert_eq!(read(&mut q, 2, 0, 16), vec![7; 8192]);
        // Two refused commands: past the end, and a namespace that does not exist.
        let (c, _) = q.exec(Sqe::rw(iop::READ, 0, 1, 1 << 40, 1), &[], false);
        assert!(!c.status.is_success());
        let (c, _) = q.exec(Sqe::rw(iop::READ, 0, 77, 0, 1), &[], false);
        assert!(!c.status.is_success());
        let (writes, reads) = (writes + 1, reads + 1);
        let m = scrape(r.metrics_addr());
        let l = format!("{{subsystem=\"{A}\"}}");
        assert_eq!(metric(&m, &format!("nvmf_write_commands_total{l}")), writes);
        assert_eq!(metric(&m, &format!("nvmf_read_commands_total{l}")), reads);
        assert_eq!(metric(&m, &format!("nvmf_write_bytes_total{l}")), writes * 4096 + 4096);
        assert_eq!(metric(&m, &format!("nvmf_read_bytes_total{l}")), reads * 4096 + 4096);
        let hl = |op: &str| format!("{{subsystem=\"{A}\",op=\"{op}\"}}");
        assert_eq!(metric(&m, &format!("nvmf_io_total_latency_seconds_count{}", hl("write"))), writes);
        assert_eq!(metric(&m, &format!("nvmf_io_backend_latency_seconds_count{}", hl("read"))), reads);
        let inf = |op: &str| format!("{{subsystem=\"{A}\",op=\"{op}\",le=\"+Inf\"}}");
        assert_eq!(metric(&m, &format!("nvmf_io_total_latency_seconds_bucket{}", inf("read"))), reads);
        let el = |st: &str| format!("{{subsystem=\"{A}\",status=\"{st}\"}}");
        assert_eq!(metric(&m, &format!("nvmf_io_errors_total{}", el("lba_out_of_range"))), 1);
        assert_eq!(metric(&m, &format!("nvmf_io_errors_total{}", el("invalid_namespace"))), 1);
        assert_eq!(metric(&m, &format!("nvmf_digest_errors_total{l}")), 0);
        let nl = |nsid: u32| format!("{{subsystem=\"{A}\",nsid=\"{nsid}\"}}");
        assert_eq!(metric(&m, &format!("nvmf_ns_write_commands_total{}", nl(1))), writes - 1);
        assert_eq!(metric(&m, &format!("nvmf_ns_write_commands_total{}", nl(2))), 1);
        assert_eq!(metric(&m, &format!("nvmf_ns_read_commands_total{}", nl(1))), reads - 1);
        assert_eq!(metric(&m, &format!("nvmf_ns_read_bytes_total{}", nl(2))), 8192);
        assert_eq!(metric(&m, "nvmf_keep_alive_expiries_total"), 0);
        assert_eq!(metric(&m, &format!("nvmf_controllers{l}")), 1);
        assert_eq!(metric(&m, &format!("nvmf_io_queues{l}")), 1);
    }
    // After the host left the counts stay (counters never go backwards).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = scrape(r.metrics_addr());
        let l = format!("{{subsystem=\"{A}\"}}");
        if metric(&m, &format!("nvmf_controllers{l}")) == 0 {
            assert_eq!(metric(&m, &format!("nvmf_write_commands_total{l}")), writes + 1);
            assert_eq!(metric(&m, &format!("nvmf_read_commands_total{l}")), reads + 1);
            let el = format!("{{subsystem=\"{A}\",status=\"lba_out_of_range\"}}");
            assert_eq!(metric(&m, &format!("nvmf_io_errors_total{el}")), 1, "errors survive the queue");
            let hl = format!("{{subsystem=\"{A}\",op=\"write\"}}");
            assert_eq!(metric(&m, &format!("nvmf_io_total_latency_seconds_count{hl}")), writes + 1);
            let nl = format!("{{subsystem=\"{A}\",nsid=\"1\"}}");
            assert_eq!(
                metric(&m, &format!("nvmf_ns_write_commands_total{nl}")),
                writes,
                "per-namespace counts survive"
            );
            assert!(m.contains("nvmf_core_busy_loops_total{core=\"0\"}"));
            break;
        }
        assert!(Instant::now() < deadline, "controller never went away");
        std::thread::sleep(Duration::from_millis(50));
    }
    r.stop();
}

#[test]
fn garbage_params_get_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(&base_config(dir.path()), dir.path());
    let sock = r.sock.as_path();
    let before = running_toml(sock);
    let keys = ["nqn", "nsid", "kind", "size", "path", "host", "addr", "listener", "group", "state", "cntlid", "allow"];
    let bad = [
        json!(null),
        json!(-1),
        json!(1.5),
        json!(u64::MAX),
        json!(""),
        json!("x".repeat(5000)),
        json!("\u{0}\u{ffff}"),
        json!([1, 2]),
        json!({"a": {"b": []}}),
        json!(true),
    ];
    let mutating = |m: &str| !(m.ends_with("_list") || m.ends_with("_get") || matches!(m, "stats" | "rpc_methods"));
    for m in METHODS.iter().filter(|m| **m != "save_config") {
        for k in keys {
            for v in &bad {
                let req = json!({"jsonrpc": "2.0", "id": 1, "method": m, "params": {k: v}});
                let resp = raw(sock, &serde_json::to_vec(&req).unwrap());
                assert_eq!(resp["id"], 1, "{m} {k}={v}: {resp}");
                if mutating(m) {
                    assert!(resp.get("error").is_some(), "{m} {k}={v} succeeded: {resp}");
                }
            }
        }
    }
    assert_eq!(running_toml(sock), before);
    r.stop();
}

#[test]
fn tcp_listener_needs_the_bearer_token_and_bounds_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = base_config(dir.path());
    let server = Arc::new(nvmf_target::serve(&cfg).unwrap());
    let mgmt = Mgmt::new(server.clone(), &cfg).unwrap();
    let opts = RpcOptions {
        tcp_addr: Some("127.0.0.1:0".parse().unwrap()),
        token: Some("t0ken".into()),
        ..RpcOptions::default()
    };
    let l = MgmtListeners::start(mgmt, &opts).unwrap();
    let addr = l.tcp_addr.unwrap();
    let post = |auth: Option<&str>, body: &[u8], claimed_len: usize| -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let mut head = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {claimed_len}\r\n");
        if let Some(a) = auth {
            head.push_str(&format!("Authorization: Bearer {a}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).unwrap();
        let _ = s.write_all(body);
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let body = br#"{"jsonrpc":"2.0","id":1,"method":"rpc_methods"}"#;
    let r = post(Some("t0ken"), body, body.len());
    assert!(r.starts_with("HTTP/1.1 200") && r.contains("subsystem_list"), "{r}");
    let r = post(None, body, body.len());
    assert!(r.starts_with("HTTP/1.1 401") && r.contains("-32004"), "{r}");
    let r = post(Some("t0kem"), body, body.len());
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    let r = post(Some("t0ken"), b"", (1 << 20) + 1);
    assert!(r.starts_with("HTTP/1.1 413") && r.contains("-32600"), "{r}");
    // Without a token there is no TCP listener at all.
    let m2 = Mgmt::new(server.clone(), &cfg).unwrap();
    let no_token = RpcOptions { tcp_addr: Some("127.0.0.1:0".parse().unwrap()), ..RpcOptions::default() };
    assert!(MgmtListeners::start(m2, &no_token).is_err());
    l.stop();
    Arc::try_unwrap(server).ok().expect("released").shutdown(Duration::from_secs(2));
}

#[test]
fn host_tables_with_keys_live_and_saved_without_showing_secrets() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let r = start(&base_config(dir.path()), dir.path());
    let key = nvmf_proto::auth::DhchapKey::from_secret(Some(nvmf_proto::auth::HashId::Sha256), &[0x42; 32])
        .unwrap()
        .format()
        .to_string();
    let secret_part = key.split(':').nth(2).unwrap().to_string();
    // A host with an inline key: it gets a table and must authenticate.
    let out = ok(&r.sock, "host_add", json!({"nqn": A, "host": HOST, "dhchap_key": key, "dhchap_dhgroup": "null"}));
    assert_eq!(out["hosts"][0]["dhchap_key"], json!("inline"));
    assert!(!out.to_string().contains(&secret_part), "answers never carry the secret: {out}");
    let mut a = Host::ic(r.io_addr(), false, false, 0);
    let c = a.connect(0, 31, 0, A, HOST, 0xffff);
    assert!(c.status.is_success());
    assert_ne!(c.dw0 & nvmf_proto::fabrics::CONNECT_DW0_AUTH_REQUIRED, 0, "authentication required");
    // A key file others can read is refused; a private one is taken.
    let kf = dir.path().join("ctrl.key");
    std::fs::write(&kf, &key).unwrap();
    std::fs::set_permissions(&kf, std::fs::Permissions::from_mode(0o644)).unwrap();
    let params = json!({"nqn": A, "host": HOST, "dhchap_ctrl_key_file": kf.display().to_string()});
    err(&r.sock, "host_set_key", params.clone(), code::INVALID_PARAMS, "readable by others");
    std::fs::set_permissions(&kf, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = ok(&r.sock, "host_set_key", params);
    assert_eq!(out["hosts"][0]["dhchap_ctrl_key"], json!({"file": kf.display().to_string()}));
    // A malformed key is refused without being echoed.
    let (_, msg) =
        call(&r.sock, "host_set_key", json!({"nqn": A, "host": HOST, "dhchap_key": "DHHC-1:01:bm90YWtleQ==:"}))
            .unwrap_err();
    assert!(!msg.contains("bm90YWtleQ"), "{msg}");
    // save_config: the file keeps the inline key and the file name; the answer shows neither secret.
    let saved = dir.path().join("saved.toml");
    let out = ok(&r.sock, "save_config", json!({"path": saved.display().to_string()}));
    assert!(!out["toml"].as_str().unwrap().contains(&secret_part));
    let text = std::fs::read_to_string(&saved).unwrap();
    assert!(text.contains(&key) && text.contains("dhchap_ctrl_key_file"), "{text}");
    let back = TargetConfig::from_toml_str(&text).unwrap();
    assert_eq!(back.subsystems[0].hosts[0].dhchap_key.as_deref(), Some(key.as_str()));
    ok(&r.sock, "host_remove", json!({"nqn": A, "host": HOST, "force": true}));
    r.stop();
}

#[test]
fn host_tls_keys_live_file_and_saved_without_showing_secrets() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let r = start(&base_config(dir.path()), dir.path());
    let key = nvmf_proto::auth::tls_psk::ConfiguredPsk::from_bytes(Some(nvmf_proto::auth::HashId::Sha256), &[0x24; 32])
        .unwrap()
        .format()
        .to_string();
    let secret_part = key.split(':').nth(2).unwrap().to_string();
    let out = ok(&r.sock, "host_add", json!({"nqn": A, "host": HOST, "tls_key": key, "tls_key_compat": true}));
    assert_eq!(out["hosts"][0]["tls_key"], json!("inline"));
    assert_eq!(out["hosts"][0]["tls_key_compat"], json!(true));
    assert!(!out.to_string().contains(&secret_part), "answers never carry the secret: {out}");
    // The host now must use TLS: in clear its Connect is refused.
    let mut h = Host::ic(r.io_addr(), false, false, 0);
    let c = h.connect(0, 31, 0, A, HOST, 0xffff);
    assert_eq!(c.status.sc, nvmf_proto::status::cmd::CONNECT_INVALID_HOST, "{}", c.status);
    // From a file that only its owner reads; a malformed key is not echoed.
    let kf = dir.path().join("host.psk");
    std::fs::write(&kf, &key).unwrap();
    std::fs::set_permissions(&kf, std::fs::Permissions::from_mode(0o644)).unwrap();
    let params = json!({"nqn": A, "host": HOST, "tls_key_file": kf.display().to_string()});
    err(&r.sock, "host_set_key", params.clone(), code::INVALID_PARAMS, "readable by others");
    std::fs::set_permissions(&kf, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = ok(&r.sock, "host_set_key", params);
    assert_eq!(out["hosts"][0]["tls_key"], json!({"file": kf.display().to_string()}));
    let (_, msg) =
        call(&r.sock, "host_set_key", json!({"nqn": A, "host": HOST, "tls_key": "NVMeTLSkey-1:01:bm90YWtleQ==:"}))
            .unwrap_err();
    assert!(!msg.contains("bm90YWtleQ"), "{msg}");
    let saved = dir.path().join("saved.toml");
    ok(&r.sock, "save_config", json!({"path": saved.display().to_string()}));
    let text = std::fs::read_to_string(&saved).unwrap();
    assert!(text.contains("tls_key_file") && text.contains("tls_key_compat = true"), "{text}");
    // "" removes the key: the host may connect in clear again.
    ok(&r.sock, "host_set_key", json!({"nqn": A, "host": HOST, "tls_key_file": ""}));
    let mut h = Host::ic(r.io_addr(), false, false, 0);
    assert!(h.connect(0, 31, 0, A, HOST, 0xffff).status.is_success());
    r.stop();
}
