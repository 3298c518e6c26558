//! `nvmf gen-dhchap-key | check-dhchap-key | gen-tls-key | check-tls-key`
//! (the real binary): nvme-cli 2.x output for fixed inputs, gen/check round
//! trips, and errors that never repeat a key; the `-S/-C` and TLS flags of
//! the connecting commands, refused before any connection.
//!
//! Fixed expectations and where they come from:
//! - `DHHC-1:00:ia6z…:` is the example key of nvme-cli's gen-dhchap-key and
//!   check-dhchap-key manual pages; its secret and CRC were decoded with
//!   Python's base64 and zlib.
//! - The hh 01/02/03 keys were computed with Python's hmac, hashlib, zlib and
//!   base64: base64(T ‖ CRC-32(T)), T = HMAC(secret, NQN ‖ "NVMe-over-Fabrics").
//! - The TLS keys and identities are libnvme's `test/psk.c` vectors and the
//!   nvme-tls-key(1) manual page example.

use std::process::{Command, Output};

use nvmf_proto::auth::DhchapKey;

const NVMF: &str = env!("CARGO_BIN_EXE_nvmf");
const HOST_NQN: &str = "nqn.2014-08.org.nvmexpress:uuid:8ae2b12c-3d28-4458-83e3-658e571ed4b8";
const HOST_NQN_1: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-000000000001";
const DOC_KEY: &str = "DHHC-1:00:ia6zGodOr4SEG0Zzaw398rpY0wqipUWj4jWjUh4HWUz6aQ2n:";
const DOC_KEY_SECRET_HEX: &str = "89aeb31a874eaf84841b46736b0dfdf2ba58d30aa2a545a3e235a3521e07594c";
const LIBNVME_PSK: &str = "5512DBB6737D0106F65975B773DFB011FFC344BCF442E2DD6D8BC4870B5D5B03";
const LIBNVME_PSK48_TAIL: &str = "FFC344BCF442E2DD6D8BC4870B5D5B03";
const LIBNVME_KEY_01: &str = "NVMeTLSkey-1:01:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwNf9LrZ:";
const LIBNVME_KEY_02: &str =
    "NVMeTLSkey-1:02:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwP/w0S89ELi3W2LxIcLXVsDn8kXZQ==:";

fn nvmf(args: &[&str]) -> Output {
    Command::new(NVMF).args(args).output().expect("run nvmf")
}

/// Stdout of a successful run, trimmed.
fn ok(args: &[&str]) -> String {
    let o = nvmf(args);
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim_end().to_string()
}

/// Stderr of a failed run; checks that nothing went to stdout and that the
/// message does not contain `secret` (the key text, or a part of it).
fn fails(args: &[&str], secret: &str) -> String {
    let o = nvmf(args);
    assert!(!o.status.success(), "{args:?} succeeded");
    assert!(o.stdout.is_empty(), "{args:?} printed {:?}", String::from_utf8_lossy(&o.stdout));
    let err = String::from_utf8(o.stderr).unwrap();
    if !secret.is_empty() {
        assert!(!err.contains(secret), "{args:?}: the error repeats the secret: {err}");
    }
    err
}

/// The base64 body of a `XXX-1:hh:<base64>:` key, the part that is secret.
fn body(key: &str) -> &str {
    key.splitn(3, ':').nth(2).unwrap().trim_end_matches(':')
}

#[test]
fn gen_dhchap_key_fixed_inputs() {
    let secret32: String = (0..32u8).map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        ok(&["gen-dhchap-key", "-m", "1", "-s", &secret32, "-n", HOST_NQN]),
        "DHHC-1:01:Zpc0wzZzkNn7IQsOQee8W0kJs7gd38VTAOh80m9a6BKyfJkt:"
    );
    assert_eq!(
        ok(&["gen-dhchap-key", "--hmac", "2", "--secret", &"11".repeat(48), "--nqn", HOST_NQN_1]),
        "DHHC-1:02:vyVyZ/h5d7tplLclsNk060HsCAsh371YmrD1FH0mEw8AW0go4knvFGfp8Sn0wYlPUEQCZg==:"
    );
    assert_eq!(
        ok(&["gen-dhchap-key", "-m", "3", "-l", "64", "-s", &"11".repeat(64), "-n", HOST_NQN_1]),
        "DHHC-1:03:3Ja+JbNiq0aHm9M8A2B0/Zv3LxVgQZAgseGdxsenNJORK//uqrzQwI859PlnzEQNBgMNccTABa4CLerAHqWALyZR/FQ=:"
    );
    // hh 00 is not transformed: the manual page's key comes back from its secret.
    assert_eq!(ok(&["gen-dhchap-key", "-s", DOC_KEY_SECRET_HEX, "-n", HOST_NQN]), DOC_KEY);
    assert_eq!(ok(&["gen-dhchap-key", "-s", &DOC_KEY_SECRET_HEX.to_uppercase()]), DOC_KEY);
}

#[test]
fn gen_then_check_for_every_hmac_and_length() {
    for (hmac, len) in [(0, 32), (0, 48), (0, 64), (1, 32), (2, 48), (3, 64)] {
        let (m, l) = (hmac.to_string(), len.to_string());
        let key = ok(&["gen-dhchap-key", "-m", &m, "-l", &l, "-n", HOST_NQN]);
        assert!(key.starts_with(&format!("DHHC-1:0{hmac}:")), "{key}");
        let parsed = DhchapKey::parse(&key).unwrap();
        assert_eq!(parsed.secret().len(), len);
        let crc = parsed.crc32();
        assert_eq!(
            ok(&["check-dhchap-key", "-k", &key]),
            format!("Key is valid (HMAC {hmac}, length {len}, CRC {crc:08x})")
        );
        // The default length is the HMAC's (32 for none).
        let default_len = ok(&["gen-dhchap-key", "-m", &m, "-n", HOST_NQN]);
        let expected = if hmac == 0 { 32 } else { len };
        assert_eq!(DhchapKey::parse(&default_len).unwrap().secret().len(), expected);
        assert_ne!(default_len, key, "random secrets");
    }
}

#[test]
fn check_dhchap_key_fixed_and_errors() {
    assert_eq!(ok(&["check-dhchap-key", "--key", DOC_KEY]), "Key is valid (HMAC 0, length 32, CRC a70d69fa)");
    let bad_crc = DOC_KEY.replace("ia6z", "ia6y");
    assert!(fails(&["check-dhchap-key", "-k", &bad_crc], body(&bad_crc)).contains("CRC mismatch"));
    let bad_header = DOC_KEY.replace("DHHC-1", "DHHC-2");
    assert!(fails(&["check-dhchap-key", "-k", &bad_header], body(DOC_KEY)).contains("Invalid key header"));
    let bad_hmac = DOC_KEY.replace(":00:", ":05:");
    assert!(fails(&["check-dhchap-key", "-k", &bad_hmac], body(DOC_KEY)).contains("Invalid HMAC identifier 5"));
    // hh 01 with a 48-byte secret: nvme-cli ties SHA-256 to 32 bytes.
    let long = ok(&["gen-dhchap-key", "-m", "0", "-l", "48"]).replace(":00:", ":01:");
    assert!(fails(&["check-dhchap-key", "-k", &long], body(&long)).contains("Invalid key length for SHA(256)"));
    let bad_base64 = "DHHC-1:00:ia6z!!!!r4SEG0Zzaw398rpY0wqipUWj4jWjUh4HWUz6aQ2n:";
    assert!(fails(&["check-dhchap-key", "-k", bad_base64], body(bad_base64)).contains("Invalid key"));
}

#[test]
fn gen_dhchap_key_errors() {
    assert!(fails(&["gen-dhchap-key", "-m", "4"], "").contains("Invalid HMAC identifier 4"));
    assert!(fails(&["gen-dhchap-key", "-m", "1", "-l", "48", "-n", HOST_NQN], "")
        .contains("Invalid key length 48 for SHA(256)"));
    assert!(fails(&["gen-dhchap-key", "-l", "40"], "").contains("Invalid key length 40"));
    let short = "ab".repeat(16);
    assert!(fails(&["gen-dhchap-key", "-s", &short], &short).contains("Invalid key length (16 bytes)"));
    let not_hex = format!("{}zz", "ab".repeat(31));
    assert!(fails(&["gen-dhchap-key", "-s", &not_hex], &not_hex).contains("not hexadecimal"));
}

#[test]
fn gen_tls_key_fixed_random_and_errors() {
    assert_eq!(ok(&["gen-tls-key", "-s", LIBNVME_PSK]), LIBNVME_KEY_01);
    let psk48 = format!("{LIBNVME_PSK}{LIBNVME_PSK48_TAIL}");
    assert_eq!(ok(&["gen-tls-key", "--hmac", "2", "--secret", &psk48]), LIBNVME_KEY_02);
    // nvme-cli skips secret bytes beyond the key length, with a warning.
    let o = nvmf(&["gen-tls-key", "-s", &format!("{LIBNVME_PSK}00")]);
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim_end(), LIBNVME_KEY_01);
    assert!(String::from_utf8_lossy(&o.stderr).contains("Skipping excess secret bytes"));
    for hmac in ["1", "2"] {
        let key = ok(&["gen-tls-key", "-m", hmac]);
        assert!(key.starts_with(&format!("NVMeTLSkey-1:0{hmac}:")), "{key}");
        let id = ok(&["check-tls-key", "-d", &key, "-n", "hostnqn0", "-c", "subsys0"]);
        assert_eq!(id, format!("NVMe0R0{hmac} hostnqn0 subsys0"));
    }
    assert!(fails(&["gen-tls-key", "-m", "3"], "").contains("Invalid HMAC identifier 3"));
    assert!(fails(&["gen-tls-key", "-I", "2"], "").contains("Invalid TLS identity version 2"));
    assert!(fails(&["gen-tls-key", "-s", &LIBNVME_PSK[..40]], LIBNVME_PSK).contains("Invalid key length (20 bytes)"));
    let e = fails(&["gen-tls-key", "-i", "-n", "hostnqn0", "-c", "subsys0"], "");
    assert!(e.contains("--insert") && e.contains("not supported"), "{e}");
}

#[test]
fn check_tls_key_identities() {
    let (h, s) = ("nqn.psk-test-host", "nqn.psk-test-subsys");
    assert_eq!(ok(&["check-tls-key", "-d", LIBNVME_KEY_01, "-n", h, "-c", s]), format!("NVMe0R01 {h} {s}"));
    assert_eq!(
        ok(&["check-tls-key", "--keydata", LIBNVME_KEY_01, "--hostnqn", h, "--subsysnqn", s, "--identity", "1"]),
        format!("NVMe1R01 {h} {s} iSbjiStwJ/1TrTvDlt2fjFmzvsytOJelidNnA+X5lEU=")
    );
    assert_eq!(
        ok(&["check-tls-key", "-d", LIBNVME_KEY_01, "-n", h, "-c", s, "-I", "1", "--compat"]),
        format!("NVMe1R01 {h} {s} 66GuqV08TsAGII39teWUfwQwizjv06Jy8jOcX3NAAzM=")
    );
    // nvme-tls-key(1) manual page example.
    let doc = "NVMeTLSkey-1:01:/b9tVz2OXJVISnoFgrPAygyS86XYJWkAapQeULns6PMpM8wv:";
    assert_eq!(ok(&["check-tls-key", "-d", doc, "-n", "hostnqn0", "-c", "subsys0"]), "NVMe0R01 hostnqn0 subsys0");
    let bad_crc = doc.replace("PMpM8wv", "PMpM8wx");
    assert!(fails(&["check-tls-key", "-d", &bad_crc, "-n", h, "-c", s], body(&bad_crc)).contains("Key decoding failed"));
    assert!(fails(&["check-tls-key", "-d", doc, "-n", h], body(doc)).contains("Need to specify a subsystem NQN"));
    assert!(fails(&["check-tls-key", "-n", h, "-c", s], "").contains("No key data"));
    assert!(fails(&["check-tls-key", "-d", doc, "-n", h, "-c", s, "-I", "3"], body(doc))
        .contains("Invalid TLS identity version 3"));
}

#[test]
fn help_says_what_each_tool_does() {
    let top = ok(&["--help"]);
    for (cmd, words) in [
        ("gen-dhchap-key", "Generate a DH-HMAC-CHAP secret"),
        ("check-dhchap-key", "Check a DH-HMAC-CHAP secret"),
        ("gen-tls-key", "Generate a TLS PSK"),
        ("check-tls-key", "print its TLS PSK identity"),
    ] {
        assert!(top.contains(cmd), "{top}");
        assert!(ok(&[cmd, "--help"]).contains(words), "{cmd}");
    }
    for cmd in ["discover", "identify", "read", "write", "perf"] {
        let help = ok(&[cmd, "--help"]);
        assert!(help.contains("-S, --dhchap-secret <KEY>"), "{cmd}: {help}");
        assert!(help.contains("-C, --dhchap-ctrl-secret <KEY>"), "{cmd}: {help}");
    }
}

#[test]
fn connecting_commands_refuse_bad_secrets_and_tls_before_connecting() {
    // Port 1 on loopback: these must fail on their flags, not on the connection.
    let bad_crc = DOC_KEY.replace("ia6z", "ia6y");
    let nqn = "nqn.2026-11.io.nvmf:x";
    let conn = ["-a", "127.0.0.1", "-s", "1", "-n", nqn];
    let with = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["identify"].iter().chain(conn.iter()).map(|s| s.to_string()).collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |args: Vec<String>, secret: &str| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        fails(&refs, secret)
    };
    let e = run(with(&["-S", &bad_crc]), body(&bad_crc));
    assert!(e.contains("--dhchap-secret") && e.contains("CRC mismatch"), "{e}");
    let e = run(with(&["-S", DOC_KEY, "--dhchap-ctrl-secret", "DHHC-1:01:short:"]), body(DOC_KEY));
    assert!(e.contains("--dhchap-ctrl-secret"), "{e}");
    let e = run(with(&["-C", DOC_KEY]), body(DOC_KEY));
    assert!(e.contains("--dhchap-ctrl-secret needs --dhchap-secret"), "{e}");
    // TLS flags: refused with a reason before any connection (a usable key
    // reaches the connection, which port 1 refuses).
    let bad_tls = LIBNVME_KEY_01.replace("VRLb", "VRLc");
    for (args, want) in [
        (&["--tls"][..], "--tls needs --tls-key"),
        (&["--tls-key-identity", "x"], "--tls-key-identity needs --tls-key"),
        (&["--tls-key-compat"], "--tls-key-compat needs --tls-key"),
        (&["--tls-identity-version", "0"], "--tls-identity-version needs --tls-key"),
        (&["--tls-sha256-suite"], "--tls-sha256-suite needs --tls-key"),
        (&["--tls-key", &bad_tls], "--tls-key: not a usable TLS PSK"),
        (&["--tls-key", LIBNVME_KEY_01, "--tls-identity-version", "2"], "must be 0 or 1"),
        (&["--tls-key", LIBNVME_KEY_01, "--keyring", ".nvme"], "--keyring: kernel keyrings are not used"),
        (&["--concat"], "--concat (secure channel concatenation) needs --dhchap-secret"),
        (&["--concat", "-S", DOC_KEY, "--tls-key", LIBNVME_KEY_01], "--concat generates the TLS PSK: drop --tls-key"),
    ] {
        let e = run(with(args), body(LIBNVME_KEY_01));
        assert!(e.contains(want), "{args:?}: {e}");
        assert!(!e.contains(body(&bad_tls)), "{e}");
    }
    let e = run(with(&["--tls-key", LIBNVME_KEY_01]), body(LIBNVME_KEY_01));
    assert!(e.contains("connect to"), "a good key gets as far as the connection: {e}");
    let e = fails(&["perf", "-n", nqn, "-s", "1", "--runtime", "1", "-S", &bad_crc], body(&bad_crc));
    assert!(e.contains("--dhchap-secret"), "{e}");
    // perf concatenates too: a good secret gets as far as the connection.
    let e = fails(&["perf", "-n", nqn, "-s", "1", "--runtime", "1", "-S", DOC_KEY, "--concat"], body(DOC_KEY));
    assert!(e.contains("admin queue bring-up") && e.contains("connect:"), "{e}");
    let e = fails(&["discover", "-a", "127.0.0.1", "-s", "1", "--tls"], "");
    assert!(e.contains("--tls needs --tls-key"), "{e}");
    let e = fails(&["perf", "-n", nqn, "-s", "1", "--runtime", "1", "--tls-key", LIBNVME_KEY_01], body(LIBNVME_KEY_01));
    assert!(
        e.contains("admin queue bring-up") && e.contains("connect:"),
        "a good key gets as far as the connection: {e}"
    );
    let e = fails(&["perf", "-n", nqn, "-s", "1", "--runtime", "1", "--tls-key-update-ms", "50"], "");
    assert!(e.contains("--tls-key-update-ms needs TLS"), "{e}");
}
