//! TLS between the socket and the handler over loopback: a blocking test
//! client (nvmf-tls over a `TcpStream`) against TLS listeners, and engine to
//! engine with `connect_tls`. Behaviour only, no timing assertions.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use common::*;
use nvmf_engine::nvmf_tls::{ClientOptions, PskLookup, ServerConfig, TlsHash, TlsSession};
use nvmf_engine::*;
use zeroize::Zeroizing;

const IDENTITY: &str = "NVMe1R01 nqn.2014-08.org.nvmexpress:uuid:host nqn.2026-12.io.nvmf:sub AAAA";
const PSK: [u8; 32] = [0x5a; 32];

fn lookup() -> Arc<PskLookup> {
    Arc::new(|identity: &[u8]| {
        (identity == IDENTITY.as_bytes()).then(|| (Zeroizing::new(PSK.to_vec()), TlsHash::Sha256))
    })
}

fn server_config() -> Arc<ServerConfig> {
    Arc::new(ServerConfig::new(lookup()).unwrap())
}

/// A blocking TLS client: PDU-free byte stream over TLS.
struct Client {
    sock: TcpStream,
    s: TlsSession,
    /// Ciphertext received but not yet taken by the session.
    pending: Vec<u8>,
    out: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr, psk: &[u8]) -> Result<Client, String> {
        let sock = connect(addr);
        let s =
            TlsSession::client(IDENTITY, psk, TlsHash::Sha256, ClientOptions::default()).map_err(|e| e.to_string())?;
        let mut c = Client { sock, s, pending: Vec::new(), out: Vec::new() };
        while !c.s.handshake_done() {
            c.flush().map_err(|e| e.to_string())?;
            c.pump()?;
        }
        c.flush().map_err(|e| e.to_string())?;
        Ok(c)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.s.take_ciphertext(&mut self.out);
        self.sock.write_all(&self.out)?;
        self.out.clear();
        Ok(())
    }

    /// One receive fed to the session (Err on EOF or a TLS error).
    fn pump(&mut self) -> Result<(), String> {
        if self.pending.is_empty() {
            let mut b = vec![0u8; 64 * 1024];
            let n = match self.sock.read(&mut b) {
                Ok(0) => return Err("EOF".into()),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Err("reset".into()),
                Err(e) => return Err(e.to_string()),
            };
            self.pending.extend_from_slice(&b[..n]);
        }
        let n = self.s.feed(&self.pending).map_err(|e| e.to_string())?;
        self.pending.drain(..n);
        // KeyUpdate answers and alerts go out at once.
        self.flush().map_err(|e| e.to_string())
    }

    fn write_all(&mut self, data: &[u8]) {
        let mut off = 0;
        while off < data.len() {
            off += self.s.write_plaintext(&data[off..]).unwrap();
            self.flush().unwrap();
        }
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), String> {
        let mut got = 0;
        while got < buf.len() {
            let n = self.s.read_plaintext_into(&mut buf[got..]).map_err(|e| e.to_string())?;
            if n == 0 {
                if self.s.peer_closed() {
                    return Err("close_notify".into());
                }
                self.pump()?;
            }
            got += n;
        }
        Ok(())
    }
}

/// Answers [`message`]s with their [`answer`], reserving room for large ones.
fn sum_messages(io: &mut ConnIo<'_>) -> Flow {
    loop {
        let rx = io.rx();
        let Some(len) = message_len(rx) else {
            return Flow::Continue;
        };
        let total = 4 + len;
        if rx.len() < total {
            if total > io.rx_capacity() {
                io.rx_reserve(total);
            }
            return Flow::Continue;
        }
        let a = answer(&rx[..total]);
        io.consume(total);
        io.tx().extend_from_slice(&a);
    }
}

/// Send messages of many sizes (up to 256 KiB) and check every answer.
fn send_messages(c: &mut Client, count: usize) {
    for i in 0..count {
        let m = message([0, 1, 3, 1023, 16_380, 16_384, 70_000, 262_144][i % 8] + i, i as u8);
        c.write_all(&m);
        let mut got = [0u8; 8];
        c.read_exact(&mut got).unwrap();
        assert_eq!(got, answer(&m), "answer to message {i}");
    }
}

fn start(mode: Mode, tls: ListenerTls, factory: Arc<dyn HandlerFactory>) -> (Engine, SocketAddr) {
    let eng = Engine::start(cfg(mode, vec![])).unwrap();
    let addr = eng.listen_tls(lo(), factory, tls).unwrap().local_addr();
    (eng, addr)
}

#[test]
fn required_listener_carries_large_messages_both_modes() {
    for mode in [Mode::Poll, Mode::Interrupt] {
        let h = OnRecv::new(sum_messages).never_ticking();
        let (eng, addr) = start(mode, ListenerTls::Required(server_config()), Arc::new(h.clone()));
        let mut c = Client::connect(addr, &PSK).unwrap();
        send_messages(&mut c, 24);
        // The client asks for a KeyUpdate both ways mid-stream: the engine
        // answers it and goes on.
        c.s.key_update(true).unwrap();
        c.flush().unwrap();
        send_messages(&mut c, 16);
        wait_for_stats(&eng, "handshake and bytes counted", |st| {
            st.tls_handshakes == 1 && st.tls_bytes_decrypted > 1_000_000 && st.tls_bytes_encrypted == 40 * 8
        });
        drop(c);
        assert_eq!(h.wait_closed(), CloseReason::PeerClosed);
        assert_eq!(eng.stats()[0].tls_failures, 0);
        eng.shutdown(Duration::from_secs(2));
    }
}

#[test]
fn required_listener_refuses_plain() {
    let h = OnRecv::new(sum_messages).never_ticking();
    let (eng, addr) = start(Mode::Interrupt, ListenerTls::Required(server_config()), Arc::new(h.clone()));
    let mut s = connect(addr);
    // An ICReq starts with PDU type 0.
    s.write_all(&[0u8; 128]).unwrap();
    expect_eof(&mut s);
    assert_eq!(h.wait_closed(), CloseReason::TlsRequired);
    wait_for_stats(&eng, "refusal counted", |st| st.tls_refused_plain == 1 && st.tls_handshakes == 0);
    eng.shutdown(Duration::from_secs(2));
}

#[test]
fn allowed_listener_takes_plain_and_tls() {
    for mode in [Mode::Poll, Mode::Interrupt] {
        let h = OnRecv::new(sum_messages).never_ticking();
        let (eng, addr) = start(mode, ListenerTls::Allowed(server_config()), Arc::new(h.clone()));
        let mut plain = connect(addr);
        send_messages_in_pieces(&mut plain, 16);
        let mut c = Client::connect(addr, &PSK).unwrap();
        send_messages(&mut c, 16);
        wait_for_stats(&eng, "one handshake", |st| st.tls_handshakes == 1 && st.tls_refused_plain == 0);
        eng.shutdown(Duration::from_secs(2));
    }
}

#[test]
fn wrong_psk_fails_the_handshake_and_closes() {
    let h = OnRecv::new(sum_messages).never_ticking();
    let (eng, addr) = start(Mode::Interrupt, ListenerTls::Required(server_config()), Arc::new(h.clone()));
    let err = Client::connect(addr, &[0x11; 32]).err().expect("a wrong PSK must fail");
    assert!(!err.contains("5a5a"), "no key material in errors: {err}");
    assert_eq!(h.wait_closed(), CloseReason::Tls);
    wait_for_stats(&eng, "failure counted", |st| st.tls_failures == 1 && st.tls_handshakes == 0);
    eng.shutdown(Duration::from_secs(2));
}

#[test]
fn off_listener_hands_a_client_hello_to_the_handler() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let h = OnRecv::new(|io| {
        // Any bytes: refuse them as a bad PDU would be.
        if io.rx().is_empty() {
            Flow::Continue
        } else {
            Flow::CloseNow
        }
    });
    let (eng, addr) = start(Mode::Interrupt, ListenerTls::Off, Arc::new(h.clone()));
    let err = Client::connect(addr, &PSK).err().expect("no TLS on this listener");
    s2.lock().unwrap().push(err);
    assert_eq!(h.wait_closed(), CloseReason::Handler);
    assert_eq!(eng.stats()[0].tls_handshakes, 0);
    assert_eq!(seen.lock().unwrap().len(), 1);
    eng.shutdown(Duration::from_secs(2));
}

// ------------------------------------------------------------------ borrowed segments

/// On 'b': "HEAD" + borrowed 1 MiB + "TAIL", the segment reported through
/// `on_sent` once encrypted. Also records the TLS identity it sees.
struct Borrower {
    big: Box<[u8]>,
    sent: Arc<Mutex<Vec<u64>>>,
    identity: Arc<Mutex<Option<String>>>,
}
impl Handler for Borrower {
    fn on_recv(&mut self, io: &mut ConnIo<'_>) -> Flow {
        *self.identity.lock().unwrap() = io.tls().map(|t| t.identity.clone());
        let cmds = io.rx().to_vec();
        io.consume(cmds.len());
        for (i, c) in cmds.into_iter().enumerate() {
            assert_eq!(c, b'b');
            io.tx().extend_from_slice(b"HEAD");
            unsafe { io.send_borrowed(self.big.as_ptr(), self.big.len(), i as u64) };
            io.tx().extend_from_slice(b"TAIL");
        }
        Flow::Continue
    }
    fn on_sent(&mut self, _io: &mut ConnIo<'_>, token: u64) -> Flow {
        self.sent.lock().unwrap().push(token);
        Flow::Continue
    }
    fn on_storage(&mut self, _io: &mut ConnIo<'_>, _t: u64, _r: i32) -> Flow {
        Flow::Continue
    }
    fn on_tick(&mut self, _io: &mut ConnIo<'_>) -> Flow {
        Flow::Continue
    }
    fn on_closed(&mut self, _reason: CloseReason) {}
}
struct BorrowFactory(Arc<Mutex<Vec<u64>>>, Arc<Mutex<Option<String>>>);
impl HandlerFactory for BorrowFactory {
    fn create(&self, _info: &ConnInfo) -> Option<Box<dyn Handler>> {
        let big: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 253) as u8).collect();
        Some(Box::new(Borrower { big: big.into_boxed_slice(), sent: self.0.clone(), identity: self.1.clone() }))
    }
}

#[test]
fn borrowed_segments_are_encrypted_and_returned() {
    for mode in [Mode::Poll, Mode::Interrupt] {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let identity = Arc::new(Mutex::new(None));
        let f = Arc::new(BorrowFactory(sent.clone(), identity.clone()));
        let (eng, addr) = start(mode, ListenerTls::Required(server_config()), f);
        let mut c = Client::connect(addr, &PSK).unwrap();
        c.write_all(b"bb");
        let want: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8).collect();
        for _ in 0..2 {
            let mut got = vec![0u8; 4 + (1 << 20) + 4];
            c.read_exact(&mut got).unwrap();
            assert_eq!(&got[..4], b"HEAD");
            assert!(got[4..4 + (1 << 20)] == want[..], "borrowed bytes intact");
            assert_eq!(&got[4 + (1 << 20)..], b"TAIL");
        }
        wait_until("both on_sent", || sent.lock().unwrap().as_slice() == [0, 1]);
        assert_eq!(identity.lock().unwrap().as_deref(), Some(IDENTITY));
        eng.shutdown(Duration::from_secs(2));
    }
}

// ------------------------------------------------------------------ engine to engine

/// The connecting side: sends `count` messages in two halves, with a
/// KeyUpdate (asking the peer to update too) between them, and reports the
/// answers it got.
struct Sender {
    msgs: Vec<Vec<u8>>,
    next: usize,
    answers: Vec<u8>,
    done: mpsc::Sender<Result<Vec<u8>, CloseReason>>,
    key_updated: bool,
}
impl Sender {
    fn send_half(&mut self, io: &mut ConnIo<'_>) {
        let end = if self.next == 0 { self.msgs.len() / 2 } else { self.msgs.len() };
        while self.next < end {
            io.tx().extend_from_slice(&self.msgs[self.next]);
            self.next += 1;
        }
    }
}
impl Handler for Sender {
    fn on_recv(&mut self, io: &mut ConnIo<'_>) -> Flow {
        let n = io.rx().len();
        self.answers.extend_from_slice(io.rx());
        io.consume(n);
        let half = self.msgs.len() / 2;
        if !self.key_updated && self.answers.len() == half * 8 {
            assert!(io.tls().is_some());
            assert!(io.tls_key_update(true), "KeyUpdate accepted");
            self.key_updated = true;
            self.send_half(io);
        }
        if self.answers.len() == self.msgs.len() * 8 {
            let _ = self.done.send(Ok(std::mem::take(&mut self.answers)));
            return Flow::CloseAfterFlush;
        }
        Flow::Continue
    }
    fn on_storage(&mut self, _io: &mut ConnIo<'_>, _t: u64, _r: i32) -> Flow {
        Flow::Continue
    }
    fn on_tick(&mut self, io: &mut ConnIo<'_>) -> Flow {
        if self.next == 0 {
            // Queued before the handshake finished: it waits for it.
            self.send_half(io);
        }
        Flow::Continue
    }
    fn on_closed(&mut self, reason: CloseReason) {
        let _ = self.done.send(Err(reason));
    }
}

fn engine_to_engine(psk: &'static [u8]) -> (Result<Vec<u8>, CloseReason>, Vec<u8>, Engine) {
    let h = OnRecv::new(sum_messages).never_ticking();
    let (server, addr) = start(Mode::Interrupt, ListenerTls::Required(server_config()), Arc::new(h));
    let client = Engine::start(cfg(Mode::Interrupt, vec![])).unwrap();
    let msgs: Vec<Vec<u8>> = (0..40).map(|i| message([5, 4096, 70_000, 262_144][i % 4], i as u8)).collect();
    let want: Vec<u8> = msgs.iter().flat_map(|m| answer(m)).collect();
    let (tx, rx) = mpsc::channel();
    let opts = ClientOptions { limits: tls_session_limits(), ..Default::default() };
    let session = TlsSession::client(IDENTITY, psk, TlsHash::Sha256, opts).unwrap();
    client
        .connect_tls(
            0,
            addr,
            Duration::from_secs(5),
            session,
            Box::new(move |_| {
                Box::new(Sender { msgs, next: 0, answers: Vec::new(), done: tx, key_updated: false })
                    as Box<dyn Handler>
            }),
        )
        .unwrap();
    let got = rx.recv_timeout(Duration::from_secs(20)).expect("an outcome");
    client.shutdown(Duration::from_secs(2));
    (got, want, server)
}

#[test]
fn engine_to_engine_with_key_update() {
    let (got, want, server) = engine_to_engine(&PSK);
    assert!(got.expect("all answers") == want, "answers match");
    wait_for_stats(&server, "server handshake", |st| st.tls_handshakes == 1 && st.tls_failures == 0);
    server.shutdown(Duration::from_secs(2));
}

#[test]
fn engine_to_engine_wrong_psk() {
    static WRONG: [u8; 32] = [0x22; 32];
    let (got, _, server) = engine_to_engine(&WRONG);
    assert_eq!(got, Err(CloseReason::Tls));
    wait_for_stats(&server, "server failure", |st| st.tls_failures == 1 && st.tls_handshakes == 0);
    server.shutdown(Duration::from_secs(2));
}
