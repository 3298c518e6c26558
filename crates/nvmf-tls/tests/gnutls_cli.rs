//! psk_ke (no (EC)DHE) against GnuTLS, the library Linux's tlshd uses: OpenSSL
//! can neither offer psk_ke alone nor prefer it as a server, so only another
//! implementation exercises that mode. Needs gnutls-cli and gnutls-serv
//! (Debian package gnutls-bin), hence ignored by default:
//! `cargo test -p nvmf-tls --test gnutls_cli -- --ignored`.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{identity, key, lookup};
use nvmf_tls::{ClientOptions, KeyExchange, TlsHash, TlsSession};

struct Reaper(Child);
impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn hex(k: &[u8]) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

/// Drive `s` over `tcp` until `done` or 10 s.
fn drive(tcp: &mut TcpStream, s: &mut TlsSession, plain: &mut Vec<u8>, done: impl Fn(&TlsSession, &[u8]) -> bool) {
    tcp.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let t = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    while !done(s, plain) {
        assert!(t.elapsed() < Duration::from_secs(10), "timed out: {s:?}");
        s.take_ciphertext(&mut out);
        tcp.write_all(&out).unwrap();
        out.clear();
        match tcp.read(&mut buf) {
            Ok(0) => panic!("EOF: {s:?}"),
            Ok(n) => {
                let mut off = 0;
                while off < n {
                    off += s.feed(&buf[off..n]).expect("feed");
                    s.read_plaintext(plain, usize::MAX).unwrap();
                }
            }
            Err(_) => {}
        }
        s.read_plaintext(plain, usize::MAX).unwrap();
    }
    s.take_ciphertext(&mut out);
    tcp.write_all(&out).unwrap();
}

#[test]
#[ignore = "needs gnutls-cli (apt-get install gnutls-bin)"]
fn gnutls_cli_psk_ke_only_against_our_server() {
    let hash = TlsHash::Sha256;
    let (id, k) = (identity(hash), key(hash, 5));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut child = Reaper(
        Command::new("gnutls-cli")
            .args(["--priority", "NORMAL:-VERS-ALL:+VERS-TLS1.3:-KX-ALL:+PSK:-CIPHER-ALL:+AES-128-GCM"])
            .args(["--pskusername", &id, "--pskkey", &hex(&k), "-p", &port.to_string(), "127.0.0.1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (mut tcp, _) = listener.accept().unwrap();
    let mut s = TlsSession::server(lookup(vec![(id.clone(), k, hash)])).unwrap();
    let mut plain = Vec::new();
    drive(&mut tcp, &mut s, &mut plain, |s, _| s.handshake_done());
    assert_eq!(s.key_exchange(), Some(KeyExchange::Psk));
    assert_eq!(s.peer_identity(), Some(id.as_str()));
    let mut stdin = child.0.stdin.take().unwrap();
    stdin.write_all(b"hello over psk_ke\n").unwrap();
    stdin.flush().unwrap();
    drive(&mut tcp, &mut s, &mut plain, |_, p| p.ends_with(b"\n"));
    assert_eq!(plain, b"hello over psk_ke\n");
    s.write_plaintext(b"answer\n").unwrap();
    s.key_update(true).unwrap();
    s.write_plaintext(b"after update\n").unwrap();
    let mut out = Vec::new();
    s.take_ciphertext(&mut out);
    tcp.write_all(&out).unwrap();
    let mut stdout = child.0.stdout.take().unwrap();
    let mut got = Vec::new();
    let t = Instant::now();
    let mut b = [0u8; 256];
    while !got.ends_with(b"after update\n") && t.elapsed() < Duration::from_secs(10) {
        // gnutls-cli prints what it receives (and its own status lines).
        match stdout.read(&mut b) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("answer") && text.contains("after update"), "{text}");
}

#[test]
#[ignore = "needs gnutls-serv (apt-get install gnutls-bin)"]
fn our_client_psk_ke_against_gnutls_serv() {
    let hash = TlsHash::Sha256;
    // gnutls-serv's password file splits at the first ':', which NQNs contain.
    let (id, k) = ("NVMe0R01 nqn.2024-01.io.nvmf.host nqn.2024-01.io.nvmf.sub".to_string(), key(hash, 6));
    let dir = std::env::temp_dir().join(format!("nvmf-tls-gnutls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let passwd = dir.join("psk.passwd");
    std::fs::write(&passwd, format!("{id}:{}\n", hex(&k))).unwrap();
    for allow_psk_ke in [true, false] {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        // A server that knows only psk_ke.
        let _server = Reaper(
            Command::new("gnutls-serv")
                .args(["--priority", "NORMAL:-VERS-ALL:+VERS-TLS1.3:-KX-ALL:+PSK"])
                .arg("--pskpasswd")
                .arg(&passwd)
                .args(["--echo", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let t = Instant::now();
        let mut tcp = loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(t.elapsed() < Duration::from_secs(10), "{e}");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        let mut c = TlsSession::client(&id, &k, hash, ClientOptions { allow_psk_ke, ..Default::default() }).unwrap();
        let mut plain = Vec::new();
        if !allow_psk_ke {
            // psk_dhe_ke only: the psk_ke-only server must refuse.
            tcp.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let mut out = Vec::new();
            let mut buf = [0u8; 4096];
            let t = Instant::now();
            let err = loop {
                assert!(t.elapsed() < Duration::from_secs(10), "no failure: {c:?}");
                c.take_ciphertext(&mut out);
                let _ = tcp.write_all(&out);
                out.clear();
                match tcp.read(&mut buf) {
                    Ok(0) => break None,
                    Ok(n) => {
                        if let Err(e) = c.feed(&buf[..n]) {
                            break Some(e);
                        }
                    }
                    Err(_) => {}
                }
            };
            assert!(!c.handshake_done(), "{err:?}");
            continue;
        }
        drive(&mut tcp, &mut c, &mut plain, |s, _| s.handshake_done());
        assert_eq!(c.key_exchange(), Some(KeyExchange::Psk));
        c.write_plaintext(b"echo me\n").unwrap();
        c.key_update(true).unwrap();
        c.write_plaintext(b"and me\n").unwrap();
        drive(&mut tcp, &mut c, &mut plain, |_, p| p.ends_with(b"and me\n"));
        assert_eq!(plain, b"echo me\nand me\n");
    }
}
