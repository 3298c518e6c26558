//! Cross-checks against OpenSSL's own tool on loopback: our client against
//! `openssl s_server -psk … -nocert -rev`, and `openssl s_client -psk …`
//! against our server, each side a plain std TcpStream driving the session.
//! SHA-384 PSKs go to the tool as a `-psk_session` file (its `-psk` is fixed to
//! TLS_AES_128_GCM_SHA256).

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{identity, key, lookup, pattern};
use nvmf_tls::{ClientOptions, KeyExchange, ServerConfig, TlsHash, TlsSession};

fn have_openssl() -> bool {
    Command::new("openssl").arg("version").output().is_ok_and(|o| o.status.success())
}

fn hex(k: &[u8]) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

/// Kills the child when dropped (a failing test leaves no process behind).
struct Reaper(Child);
impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A PEM `-psk_session` file for `key` under `hash`, in a temp dir.
fn psk_session_file(dir: &std::path::Path, k: &[u8], hash: TlsHash) -> std::path::PathBuf {
    let der = dir.join("psk.der");
    let pem = dir.join("psk.pem");
    std::fs::write(&der, nvmf_tls::psk_session_der(k, hash).unwrap()).unwrap();
    let st = Command::new("openssl")
        .args(["sess_id", "-inform", "DER", "-outform", "PEM", "-in"])
        .arg(&der)
        .arg("-out")
        .arg(&pem)
        .status()
        .unwrap();
    assert!(st.success());
    pem
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("nvmf-tls-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Our session over a TCP stream.
struct Conn {
    tcp: TcpStream,
    s: TlsSession,
    out: Vec<u8>,
    plain: Vec<u8>,
}

impl Conn {
    fn new(tcp: TcpStream, s: TlsSession) -> Conn {
        tcp.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        tcp.set_nodelay(true).unwrap();
        Conn { tcp, s, out: Vec::new(), plain: Vec::new() }
    }

    fn flush(&mut self) {
        self.s.take_ciphertext(&mut self.out);
        if !self.out.is_empty() {
            self.tcp.write_all(&self.out).unwrap();
            self.out.clear();
        }
    }

    /// One read from the socket, fed whole; false on EOF.
    fn pump(&mut self) -> bool {
        self.flush();
        let mut buf = [0u8; 65536];
        match self.tcp.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => {
                let mut off = 0;
                while off < n {
                    off += self.s.feed(&buf[off..n]).expect("feed");
                    self.s.read_plaintext(&mut self.plain, usize::MAX).expect("read");
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("{e}"),
        }
        self.s.read_plaintext(&mut self.plain, usize::MAX).expect("read");
        self.flush();
        true
    }

    fn until(&mut self, what: &str, mut done: impl FnMut(&mut Conn) -> bool) {
        let t = Instant::now();
        while !done(self) {
            assert!(t.elapsed() < Duration::from_secs(20), "timed out waiting for {what}; {:?}", self.s);
            if !self.pump() {
                assert!(done(self), "EOF while waiting for {what}; {:?}", self.s);
                return;
            }
        }
    }

    fn send(&mut self, data: &[u8]) {
        let mut off = 0;
        while off < data.len() {
            off += self.s.write_plaintext(&data[off..]).unwrap();
            self.flush();
        }
    }
}

fn reversed_line(line: &[u8]) -> Vec<u8> {
    let mut r: Vec<u8> = line.iter().rev().copied().collect();
    r.push(b'\n');
    r
}

fn s_server(hash: TlsHash, k: &[u8], id: &str, port: u16, extra: &[&str]) -> Reaper {
    let dir = tempdir(&format!("srv{port}"));
    let mut cmd = Command::new("openssl");
    cmd.args(["s_server", "-tls1_3", "-nocert", "-rev", "-naccept", "1", "-quiet"])
        .args(["-accept", &format!("127.0.0.1:{port}"), "-psk_identity", id])
        .args(["-ciphersuites", hash.suite_name()])
        .args(extra);
    match hash {
        TlsHash::Sha256 => cmd.args(["-psk", &hex(k)]),
        TlsHash::Sha384 => cmd.arg("-psk_session").arg(psk_session_file(&dir, k, hash)),
    };
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    Reaper(child)
}

fn connect(port: u16) -> TcpStream {
    let t = Instant::now();
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => return s,
            Err(_) if t.elapsed() < Duration::from_secs(10) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("connect: {e}"),
        }
    }
}

#[test]
fn our_client_against_openssl_s_server() {
    assert!(have_openssl(), "the openssl binary is needed (apt-get install openssl)");
    for hash in [TlsHash::Sha256, TlsHash::Sha384] {
        for allow_psk_ke in [false, true] {
            let id = identity(hash);
            let k = key(hash, 21);
            let port = free_port();
            let _server = s_server(hash, &k, &id, port, if allow_psk_ke { &["-allow_no_dhe_kex"] } else { &[] });
            let tcp = connect(port);
            let s = TlsSession::client(&id, &k, hash, ClientOptions { allow_psk_ke, ..Default::default() }).unwrap();
            let mut c = Conn::new(tcp, s);
            c.until("handshake", |c| c.s.handshake_done());
            assert_eq!(c.s.hash(), Some(hash));
            assert_eq!(c.s.key_exchange(), Some(KeyExchange::PskDhe));
            // Lines echoed reversed; KeyUpdates from our side in between.
            // (Few lines: s_server answers each in two writes and, with
            // Nagle and delayed ACKs, takes up to 200 ms per line.)
            let mut expect = Vec::new();
            for i in 0..8u64 {
                let line: Vec<u8> = pattern(10 + (i as usize * 997) % 12000, i)
                    .iter()
                    .map(|b| b'a' + b % 26) // printable, no newline
                    .collect();
                c.send(&line);
                c.send(b"\n");
                expect.extend_from_slice(&reversed_line(&line));
                if i % 3 == 1 {
                    c.s.key_update(i % 2 == 0).unwrap();
                    c.flush();
                }
            }
            c.until("the echoed lines", |c| c.plain.len() >= expect.len());
            assert!(c.plain == expect, "echo differs ({hash:?})");
            c.s.close();
            c.flush();
        }
    }
}

#[test]
fn a_48_byte_psk_as_a_sha256_psk_with_any_psk_len() {
    // What tlshd on GnuTLS before 3.8.10 does with every external PSK: SHA-256
    // binder and suite. `openssl s_server -psk` is the same SHA-256-only kind.
    assert!(have_openssl(), "the openssl binary is needed (apt-get install openssl)");
    let k = key(TlsHash::Sha384, 7);
    let id = identity(TlsHash::Sha384);
    assert!(TlsSession::client(&id, &k, TlsHash::Sha256, ClientOptions::default()).is_err(), "length checked");
    let port = free_port();
    let _server = s_server(TlsHash::Sha256, &k, &id, port, &[]);
    let opts = ClientOptions { any_psk_len: true, ..Default::default() };
    let mut c = Conn::new(connect(port), TlsSession::client(&id, &k, TlsHash::Sha256, opts).unwrap());
    c.until("handshake", |c| c.s.handshake_done());
    assert_eq!(c.s.hash(), Some(TlsHash::Sha256));
    c.send(b"abc\n");
    c.until("the echo", |c| c.plain.len() >= 4);
    assert_eq!(c.plain, b"cba\n");
    c.s.close();
    c.flush();
}

#[test]
fn openssl_s_client_against_our_server() {
    assert!(have_openssl(), "the openssl binary is needed (apt-get install openssl)");
    let cases: &[(TlsHash, &[&str])] = &[
        (TlsHash::Sha256, &[]),
        // Both suites offered, the wrong one first: the server narrows to the PSK's.
        (TlsHash::Sha256, &["-ciphersuites", "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256"]),
        (TlsHash::Sha256, &["-allow_no_dhe_kex"]),
        (TlsHash::Sha384, &["-ciphersuites", "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384"]),
    ];
    for (hash, extra) in cases {
        let hash = *hash;
        let id = identity(hash);
        let k = key(hash, 33);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let dir = tempdir(&format!("cli{port}"));
        let mut cmd = Command::new("openssl");
        // -quiet with -no_ign_eof keeps s_client's one-letter commands: a
        // line "K" sends a KeyUpdate with update_requested, "k" without.
        cmd.args(["s_client", "-tls1_3", "-quiet", "-no_ign_eof", "-connect", &format!("127.0.0.1:{port}")])
            .args(["-psk_identity", &id])
            .args(*extra);
        match hash {
            TlsHash::Sha256 => cmd.args(["-psk", &hex(&k)]),
            TlsHash::Sha384 => cmd.arg("-psk_session").arg(psk_session_file(&dir, &k, hash)),
        };
        let mut child =
            Reaper(cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap());
        let (tcp, _) = listener.accept().unwrap();
        let config = ServerConfig::new(lookup(vec![(id.clone(), k.clone(), hash)])).unwrap();
        let mut c = Conn::new(tcp, config.session().unwrap());
        c.until("handshake", |c| c.s.handshake_done());
        assert_eq!(c.s.hash(), Some(hash), "{extra:?}");
        assert_eq!(c.s.peer_identity(), Some(id.as_str()));
        assert_eq!(c.s.key_exchange(), Some(KeyExchange::PskDhe));

        // s_client's stdin → TLS → us; we answer each line reversed → its stdout.
        let mut stdin = child.0.stdin.take().unwrap();
        let mut stdout = child.0.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            stdout.read_to_end(&mut all).unwrap();
            all
        });
        let mut sent = Vec::new();
        let mut expect_back = Vec::new();
        let lines = 30;
        for i in 0..lines {
            let line: Vec<u8> =
                pattern(5 + (i * 131) % 2000, i as u64).iter().map(|b| b'a' + b % 20).collect::<Vec<u8>>();
            // Never starting with a command letter.
            let mut line = line;
            line[0] = b'x';
            stdin.write_all(&line).unwrap();
            stdin.write_all(b"\n").unwrap();
            sent.extend_from_slice(&line);
            sent.push(b'\n');
            expect_back.extend_from_slice(&reversed_line(&line));
            stdin.flush().unwrap();
            c.until("a line from s_client", |c| c.plain.len() >= sent.len());
            assert!(c.plain == sent, "line {i} differs");
            c.send(&reversed_line(&line));
            c.flush();
            if i % 4 == 1 {
                // s_client takes a command only as the whole of one stdin
                // read: send it alone and give it time to be read alone.
                stdin.write_all(if i % 8 == 1 { b"K\n" } else { b"k\n" }).unwrap();
                stdin.flush().unwrap();
                let t = Instant::now();
                while t.elapsed() < Duration::from_millis(200) {
                    c.pump();
                }
            }
        }
        drop(stdin); // EOF: s_client sends close_notify and exits
        c.until("close_notify", |c| c.s.peer_closed());
        c.s.close();
        c.flush();
        drop(c);
        let back = reader.join().unwrap();
        assert!(back == expect_back, "s_client printed something else ({extra:?})");
        let status = child.0.wait().unwrap();
        assert!(status.success(), "s_client: {status}");
    }
}

#[test]
fn openssl_s_client_with_wrong_psk_is_refused() {
    assert!(have_openssl(), "the openssl binary is needed (apt-get install openssl)");
    let hash = TlsHash::Sha256;
    let id = identity(hash);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let _child = Reaper(
        Command::new("openssl")
            .args(["s_client", "-tls1_3", "-quiet", "-connect", &format!("127.0.0.1:{port}")])
            .args(["-psk_identity", &id, "-psk", &hex(&key(hash, 1))])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (tcp, _) = listener.accept().unwrap();
    let lk = lookup(vec![(id.clone(), key(hash, 2), hash)]);
    let server: Arc<_> = lk;
    let mut c = Conn::new(tcp, TlsSession::server(server).unwrap());
    let t = Instant::now();
    let mut buf = [0u8; 4096];
    let err = loop {
        assert!(t.elapsed() < Duration::from_secs(10));
        c.flush();
        match c.tcp.read(&mut buf) {
            Ok(0) => panic!("EOF before the error"),
            Ok(n) => {
                if let Err(e) = c.s.feed(&buf[..n]) {
                    break e;
                }
            }
            Err(_) => {}
        }
    };
    c.flush(); // the alert
    assert!(err.to_string().contains("binder does not verify"), "{err}");
}
