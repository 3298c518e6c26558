//! Receive buffers over loopback: small by default, large while reserved
//! (`ConnIo::rx_reserve`) or bursting, parking at the pool cap, receives into
//! armed sinks (behaviour only, no timing assertions).

mod common;

use std::io::{Read, Write};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use nvmf_engine::*;

const SMALL: usize = 16 * 1024;
const LARGE: usize = 256 * 1024 + 4096;

/// Length-prefixed messages (see `common::message`), answered with their
/// length and payload sum. With `reserve`, a message larger than the receive
/// buffer asks for room for all of it.
struct Summer {
    reserve: bool,
    closed: mpsc::Sender<CloseReason>,
}

impl Handler for Summer {
    fn on_recv(&mut self, io: &mut ConnIo<'_>) -> Flow {
        loop {
            let rx = io.rx();
            if rx.len() < 4 {
                return Flow::Continue;
            }
            let total = 4 + u32::from_le_bytes(rx[..4].try_into().unwrap()) as usize;
            if rx.len() < total {
                if self.reserve && total > io.rx_capacity() {
                    io.rx_reserve(total);
                }
                return Flow::Continue;
            }
            let a = answer(&rx[..total]);
            io.consume(total);
            io.tx().extend_from_slice(&a);
        }
    }
    fn on_storage(&mut self, _io: &mut ConnIo<'_>, _t: u64, _r: i32) -> Flow {
        Flow::Continue
    }
    fn on_tick(&mut self, _io: &mut ConnIo<'_>) -> Flow {
        Flow::Continue
    }
    fn next_wakeup(&self) -> Wakeup {
        Wakeup::Never
    }
    fn on_closed(&mut self, reason: CloseReason) {
        let _ = self.closed.send(reason);
    }
}

struct SummerFactory {
    reserve: bool,
    closed: Mutex<mpsc::Sender<CloseReason>>,
}

fn summer(reserve: bool) -> (Arc<SummerFactory>, mpsc::Receiver<CloseReason>) {
    let (tx, rx) = mpsc::channel();
    (Arc::new(SummerFactory { reserve, closed: Mutex::new(tx) }), rx)
}

impl HandlerFactory for SummerFactory {
    fn create(&self, _info: &ConnInfo) -> Option<Box<dyn Handler>> {
        Some(Box::new(Summer { reserve: self.reserve, closed: self.closed.lock().unwrap().clone() }))
    }
}

fn send_and_check(s: &mut std::net::TcpStream, msg: &[u8]) {
    let writer = write_in_background(s, msg.to_vec());
    let mut got = [0u8; 8];
    s.read_exact(&mut got).unwrap();
    writer.join().unwrap();
    assert_eq!(got, answer(msg), "answer to a message of {} bytes", msg.len());
}

#[test]
fn rx_reserve_receives_large_messages_whole_and_returns_the_buffer() {
    for mode in [Mode::Poll, Mode::Interrupt] {
        let (factory, _closed) = summer(true);
        let eng = Engine::start(EngineConfig { mode, ..Default::default() }).unwrap();
        assert_eq!(EngineConfig::default().recv_buf_bytes, SMALL);
        assert_eq!(EngineConfig::default().recv_buf_large_bytes, LARGE);
        let addr = eng.listen(lo(), factory).unwrap().local_addr();
        let mut s = connect(addr);
        for (i, len) in [100, 200 * 1024, 10, 200 * 1024 + 3, 5000, LARGE - 4].into_iter().enumerate() {
            send_and_check(&mut s, &message(len, i as u8));
        }
        wait_until_or(
            "large buffers granted and returned",
            || {
                let st = &eng.stats()[0];
                st.rx_reserve_granted >= 3 && st.rx_large_in_use == 0 && st.rx_large_free >= 1
            },
            || format!("{:?}", eng.stats()[0]),
        );
        assert_eq!(eng.stats()[0].rx_reserve_denied, 0);
        drop(s);
        wait_until("freed", || eng.stats()[0].connections == 0);
        eng.shutdown(Duration::from_secs(2));
    }
}

#[test]
fn a_reservation_beyond_the_large_buffer_overflows() {
    let (factory, closed) = summer(true);
    let eng =
        Engine::start(EngineConfig { mode: Mode::Interrupt, recv_buf_large_bytes: 64 * 1024, ..Default::default() })
            .unwrap();
    let addr = eng.listen(lo(), factory).unwrap().local_addr();
    let mut s = connect(addr);
    // Fits a large buffer: fine.
    send_and_check(&mut s, &message(60 * 1024, 1));
    // Does not: the reservation cannot be granted and the buffer fills.
    let _writer = write_in_background(&s, message(100 * 1024, 2));
    assert_eq!(closed.recv_timeout(Duration::from_secs(10)).unwrap(), CloseReason::RxOverflow);
    expect_eof(&mut s);
    eng.shutdown(Duration::from_secs(2));
}

#[test]
fn without_a_reservation_a_large_message_overflows() {
    let (factory, closed) = summer(false);
    let eng = Engine::start(EngineConfig { mode: Mode::Interrupt, ..Default::default() }).unwrap();
    let addr = eng.listen(lo(), factory).unwrap().local_addr();
    let mut s = connect(addr);
    send_and_check(&mut s, &message(SMALL - 4, 1));
    let _writer = write_in_background(&s, message(LARGE + 1, 2));
    assert_eq!(closed.recv_timeout(Duration::from_secs(10)).unwrap(), CloseReason::RxOverflow);
    expect_eof(&mut s);
    eng.shutdown(Duration::from_secs(2));
}

#[test]
fn at_the_pool_cap_a_reservation_parks_and_resumes_when_a_buffer_returns() {
    for mode in [Mode::Poll, Mode::Interrupt] {
        let (factory, closed) = summer(true);
        // One large buffer per core.
        let eng = Engine::start(EngineConfig { mode, recv_pool_bytes_max: LARGE, ..Default::default() }).unwrap();
        let addr = eng.listen(lo(), factory).unwrap().local_addr();
        let stats = || eng.stats()[0].clone();
        // A holds the only large buffer: half of a 200 KiB message.
        let mut a = connect(addr);
        let msg_a = message(200 * 1024, 1);
        a.write_all(&msg_a[..100 * 1024]).unwrap();
        wait_until_or("A holds the large buffer", || stats().rx_large_in_use == 1, || format!("{:?}", stats()));
        // B's reservation is not granted; its small buffer fills and it parks
        // (no RxOverflow).
        let mut b = connect(addr);
        let msg_b = message(200 * 1024, 2);
        let writer_b = write_in_background(&b, msg_b.clone());
        wait_until_or(
            "B parked",
            || {
                let st = stats();
                st.rx_parked == 1 && st.rx_reserve_denied >= 1
            },
            || format!("{:?}", stats()),
        );
        std::thread::sleep(Duration::from_millis(50));
        assert!(closed.try_recv().is_err(), "nothing closed while parked");
        assert!(!is_closed(&b));
        // A completes; its buffer goes back and B gets it.
        a.write_all(&msg_a[100 * 1024..]).unwrap();
        let mut got = [0u8; 8];
        a.read_exact(&mut got).unwrap();
        assert_eq!(got, answer(&msg_a));
        b.read_exact(&mut got).unwrap();
        assert_eq!(got, answer(&msg_b));
        writer_b.join().unwrap();
        wait_until_or(
            "all returned",
            || {
                let st = stats();
                st.rx_parked == 0 && st.rx_large_in_use == 0 && st.rx_reserve_granted == 2
            },
            || format!("{:?}", stats()),
        );
        // Both keep working.
        send_and_check(&mut a, &message(1000, 3));
        send_and_check(&mut b, &message(150 * 1024, 4));
        eng.shutdown(Duration::from_secs(2));
    }
}

/// Write 4 MiB of 1 KiB messages at once (receives fill the small buffer)
/// and check the answers.
fn burst(s: &mut std::net::TcpStream) {
    let mut stream = Vec::new();
    let mut answers = Vec::new();
    for i in 0..4096 {
        let m = message(1020, i as u8);
        answers.extend_from_slice(&answer(&m));
        stream.extend_from_slice(&m);
    }
    let writer = write_in_background(s, stream);
    let mut got = vec![0u8; answers.len()];
    s.read_exact(&mut got).unwrap();
    writer.join().unwrap();
    assert!(got == answers);
}

#[test]
fn receive_bursts_borrow_a_large_buffer_and_give_it_back_when_calm_or_idle() {
    for mode in [Mode::Poll, Mode::Interrupt] {
        let (factory, closed) = summer(false);
        let eng = Engine::start(EngineConfig { mode, ..Default::default() }).unwrap();
        let addr = eng.listen(lo(), factory).unwrap().local_addr();
        let stats = || eng.stats()[0].clone();
        let mut s = connect(addr);
        burst(&mut s);
        wait_until_or("a burst buffer was lent", || stats().rx_burst_granted >= 1, || format!("{:?}", stats()));
        // Calm traffic: the buffer goes back after a few small receives.
        for i in 0..2 * RX_CALM_RECVS_MAX {
            send_and_check(&mut s, &message(100, i as u8));
        }
        wait_until_or("returned when calm", || stats().rx_large_in_use == 0, || format!("{:?}", stats()));
        // Idle right after a burst: the buffer goes back too (in interrupt
        // mode the receive armed into it is cancelled and re-armed).
        let granted = stats().rx_burst_granted;
        burst(&mut s);
        wait_until_or("another burst buffer", || stats().rx_burst_granted > granted, || format!("{:?}", stats()));
        wait_until_or(
            "returned when idle",
            || {
                let st = stats();
                st.rx_large_in_use == 0 && st.rx_idle_reclaims >= 1
            },
            || format!("{:?}", stats()),
        );
        // Still the same connection, receiving as before.
        send_and_check(&mut s, &message(100, 1));
        burst(&mut s);
        assert!(closed.try_recv().is_err(), "the connection stayed open");
        eng.shutdown(Duration::from_secs(2));
    }
}

#[test]
fn large_buffer_size_is_validated() {
    let base = EngineConfig::default();
    assert!(EngineConfig { recv_buf_large_bytes: 1024, ..base.clone() }.validate().is_err());
    assert!(EngineConfig { recv_buf_large_bytes: RECV_BUF_BYTES_MAX + 1, ..base.clone() }.validate().is_err());
    assert!(EngineConfig { recv_pool_free_max: RECV_POOL_FREE_MAX + 1, ..base.clone() }.validate().is_err());
    assert!(EngineConfig { recv_pool_bytes_max: RECV_POOL_BYTES_MAX + 1, ..base.clone() }.validate().is_err());
    // A large size below the small one just disables large buffers.
    let c = EngineConfig { recv_buf_bytes: 1 << 20, ..base };
    assert!(c.validate().is_ok());
    assert_eq!(c.recv_buf_large_effective_bytes(), 1 << 20);
}

// ------------------------------------------------------------------ armed sinks

/// Messages as above; after a header, the payload is received into a buffer
/// of the handler's own through an armed sink (any mode).
#[derive(Default)]
struct ArmedSummer {
    payload: Vec<u8>,
    filled: usize,
    in_message: bool,
}

impl ArmedSummer {
    fn finish_if_done(&mut self, io: &mut ConnIo<'_>) {
        if self.in_message && self.filled == self.payload.len() {
            let sum = self.payload.iter().fold(0u32, |a, b| a.wrapping_add(*b as u32));
            io.tx().extend_from_slice(&(self.payload.len() as u32).to_le_bytes());
            io.tx().extend_from_slice(&sum.to_le_bytes());
            self.in_message = false;
        }
    }
}

impl Handler for ArmedSummer {
    fn on_recv(&mut self, io: &mut ConnIo<'_>) -> Flow {
        loop {
            if self.in_message {
                let n = (self.payload.len() - self.filled).min(io.rx().len());
                self.payload[self.filled..self.filled + n].copy_from_slice(&io.rx()[..n]);
                self.filled += n;
                io.consume(n);
                self.finish_if_done(io);
                if self.in_message {
                    return Flow::Continue;
                }
            } else {
                if io.rx().len() < 4 {
                    return Flow::Continue;
                }
                let len = u32::from_le_bytes(io.rx()[..4].try_into().unwrap()) as usize;
                io.consume(4);
                assert!(len <= 1 << 20);
                self.payload = vec![0; len];
                self.filled = 0;
                self.in_message = true;
                self.finish_if_done(io);
            }
        }
    }
    fn on_storage(&mut self, _io: &mut ConnIo<'_>, _t: u64, _r: i32) -> Flow {
        Flow::Continue
    }
    fn on_tick(&mut self, _io: &mut ConnIo<'_>) -> Flow {
        Flow::Continue
    }
    fn on_closed(&mut self, _r: CloseReason) {}
    fn recv_sink_armed(&mut self) -> Option<ArmedSink> {
        if self.in_message && self.payload.len() - self.filled >= 1024 {
            let rest = &mut self.payload[self.filled..];
            // SAFETY: `payload` is neither touched nor replaced until
            // on_sink_recv (on_recv does not run while the receive is armed
            // into the sink, and on_tick does nothing).
            Some(unsafe { ArmedSink::new(rest.as_mut_ptr(), rest.len()) })
        } else {
            None
        }
    }
    fn on_sink_recv(&mut self, io: &mut ConnIo<'_>, n: usize) -> Flow {
        assert!(self.in_message && n > 0 && self.filled + n <= self.payload.len());
        self.filled += n;
        self.finish_if_done(io);
        Flow::Continue
    }
}

struct ArmedSummerFactory;
impl HandlerFactory for ArmedSummerFactory {
    fn create(&self, _info: &ConnInfo) -> Option<Box<dyn Handler>> {
        Some(Box::new(ArmedSummer::default()))
    }
}

#[test]
fn armed_receives_fill_handler_sinks_in_stream_order() {
    // Interrupt mode, and poll mode without direct receives: every receive is
    // armed on the ring.
    for (mode, direct) in [(Mode::Interrupt, 2), (Mode::Poll, 0)] {
        let eng =
            Engine::start(EngineConfig { mode, poll_direct_recv_conns_max: direct, ..Default::default() }).unwrap();
        let addr = eng.listen(lo(), Arc::new(ArmedSummerFactory)).unwrap().local_addr();
        let mut s = connect(addr);
        let mut wire = Vec::new();
        let mut want = Vec::new();
        for i in 0..200usize {
            let m = message([0, 1, 3, 1023, 1024, 4096, 70_000, 262_144][i % 8] + i, i as u8);
            want.extend_from_slice(&answer(&m));
            wire.extend_from_slice(&m);
        }
        let mut w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            for piece in wire.chunks(77_777) {
                w.write_all(piece).unwrap();
            }
        });
        let mut got = vec![0u8; want.len()];
        s.read_exact(&mut got).unwrap();
        writer.join().unwrap();
        assert!(got == want, "answers differ");
        wait_until("sink receives in the stats", || eng.stats()[0].sink_recv_ops > 0);
        assert_eq!(eng.stats()[0].direct_recv_ops, 0);
        eng.shutdown(Duration::from_secs(2));
    }
}
