//! Receive buffers over loopback: small by default, large while reserved
//! (`ConnIo::rx_reserve`) or bursting, parking at the pool cap, receives into
//! armed sinks (behaviour only, no timing assertions).

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use nvmf_engine::*;

const SMALL: usize = 16 * 1024;
const LARGE: usize = 256 * 1024 + 4096;

/// Answers length-prefixed messages (see `common::message`) with their
/// length and payload sum. With `reserve`, a message larger than the receive
/// buffer asks for room for all of it.
fn sum_messages(io: &mut ConnIo<'_>, reserve: bool) -> Flow {
    loop {
        let rx = io.rx();
        let Some(len) = message_len(rx) else {
            return Flow::Continue;
        };
        let total = 4 + len;
        if rx.len() < total {
            if reserve && total > io.rx_capacity() {
                io.rx_reserve(total);
            }
            return Flow::Continue;
        }
        let a = answer(&rx[..total]);
        io.consume(total);
        io.tx().extend_from_slice(&a);
    }
}

/// Connections answered by [`sum_messages`]; never ticking.
fn summer(reserve: bool) -> OnRecv {
    let recv: fn(&mut ConnIo<'_>) -> Flow =
        if reserve { |io| sum_messages(io, true) } else { |io| sum_messages(io, false) };
    OnRecv::new(recv).never_ticking()
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
        let factory = Arc::new(summer(true));
        let eng = Engine::start(EngineConfig { mode, ..Default::default() }).unwrap();
        assert_eq!(EngineConfig::default().recv_buf_bytes, SMALL);
        assert_eq!(EngineConfig::default().recv_buf_large_bytes, LARGE);
        let addr = eng.listen(lo(), factory.clone()).unwrap().local_addr();
        let mut s = connect(addr);
        for (i, len) in [100, 200 * 1024, 10, 200 * 1024 + 3, 5000, LARGE - 4].into_iter().enumerate() {
            send_and_check(&mut s, &message(len, i as u8));
        }
        wait_for_stats(&eng, "large buffers granted and returned", |st| {
            st.rx_reserve_granted >= 3 && st.rx_large_in_use == 0 && st.rx_large_free >= 1
        });
        assert_eq!(eng.stats()[0].rx_reserve_denied, 0);
        drop(s);
        wait_until("freed", || eng.stats()[0].connections == 0);
        eng.shutdown(Duration::from_secs(2));
    }
}

#[test]
fn a_reservation_beyond_the_large_buffer_overflows() {
    let factory = Arc::new(summer(true));
    let eng =
        Engine::start(EngineConfig { mode: Mode::Interrupt, recv_buf_large_bytes: 64 * 1024, ..Default::default() })
            .unwrap();
    let addr = eng.listen(lo(), factory.clone()).unwrap().local_addr();
    let mut s = connect(addr);
    // Fits a large buffer: fine.
    send_and_check(&mut s, &message(60 * 1024, 1));
    // Does not: the reservation cannot be granted and the buffer fills.
    let _writer = write_in_background(&s, message(100 * 1024, 2));
    assert_eq!(factory.wait_closed(), CloseReason::RxOverflow);
    expect_eof(&mut s);
    eng.shutdown(Duration::from_secs(2));
}

#[test]
fn without_a_reservation_a_large_message_overflows() {
    let factory = Arc::new(summer(false));
    let eng = Engine::start(EngineConfig { mode: Mode::Interrupt, ..Default::default() }).unwrap();
    let addr = eng.listen(lo(), factory.clone()).unwrap().local_addr();
    let mut s = connect(addr);
    send_and_check(&mut s, &message(SMALL - 4, 1));
    let _writer = write_in_background(&s, message(LARGE + 1, 2));
    assert_eq!(factory.wait_closed(), CloseReason::RxOverflow);
    expect_eof(&mut s);
    eng.shutdown(Duration::from_secs(2));
}

#[test]
fn at_the_pool_cap_a_reservation_parks_and_resumes_when_a_buffer_returns() {
    for mode in [Mode::Poll, Mode::Interrupt] {
        let factory = Arc::new(summer(true));
        // One large buffer per core.
        let eng = Engine::start(EngineConfig { mode, recv_pool_bytes_max: LARGE, ..Default::default() }).unwrap();
        let addr = eng.listen(lo(), factory.clone()).unwrap().local_addr();
        // A holds the only large buffer: half of a 200 KiB message.
        let mut a = connect(addr);
        let msg_a = message(200 * 1024, 1);
        a.write_all(&msg_a[..100 * 1024]).unwrap();
        wait_for_stats(&eng, "A holds the large buffer", |st| st.rx_large_in_use == 1);
        // B's reservation is not granted; its small buffer fills and it parks
        // (no RxOverflow).
        let mut b = connect(addr);
        let msg_b = message(200 * 1024, 2);
        let writer_b = write_in_background(&b, msg_b.clone());
        wait_for_stats(&eng, "B parked", |st| st.rx_parked == 1 && st.rx_reserve_denied >= 1);
        std::thread::sleep(Duration::from_millis(50));
        assert!(factory.closed.lock().unwrap().is_empty(), "nothing closed while parked");
        assert!(!is_closed(&b));
        // A completes; its buffer goes back and B gets it.
        a.write_all(&msg_a[100 * 1024..]).unwrap();
        let mut got = [0u8; 8];
        a.read_exact(&mut got).unwrap();
        assert_eq!(got, answer(&msg_a));
        b.read_exact(&mut got).unwrap();
        assert_eq!(got, answer(&msg_b));
        writer_b.join().unwrap();
        wait_for_stats(&eng, "all returned", |st| {
            st.rx_parked == 0 && st.rx_large_in_use == 0 && st.rx_reserve_granted == 2
        });
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
        let factory = Arc::new(summer(false));
        let eng = Engine::start(EngineConfig { mode, ..Default::default() }).unwrap();
        let addr = eng.listen(lo(), factory.clone()).unwrap().local_addr();
        let mut s = connect(addr);
        burst(&mut s);
        wait_for_stats(&eng, "a burst buffer was lent", |st| st.rx_burst_granted >= 1);
        // Calm traffic: the buffer goes back after a few small receives.
        for i in 0..2 * RX_CALM_RECVS_MAX {
            send_and_check(&mut s, &message(100, i as u8));
        }
        wait_for_stats(&eng, "returned when calm", |st| st.rx_large_in_use == 0);
        // Idle right after a burst: the buffer goes back too (in interrupt
        // mode the receive armed into it is cancelled and re-armed).
        let granted = eng.stats()[0].rx_burst_granted;
        burst(&mut s);
        wait_for_stats(&eng, "another burst buffer", |st| st.rx_burst_granted > granted);
        wait_for_stats(&eng, "returned when idle", |st| st.rx_large_in_use == 0 && st.rx_idle_reclaims >= 1);
        // Still the same connection, receiving as before.
        send_and_check(&mut s, &message(100, 1));
        burst(&mut s);
        assert!(factory.closed.lock().unwrap().is_empty(), "the connection stayed open");
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

#[test]
fn armed_receives_fill_handler_sinks_in_stream_order() {
    // Interrupt mode, and poll mode without direct receives: every receive is
    // armed on the ring.
    for (mode, direct) in [(Mode::Interrupt, 2), (Mode::Poll, 0)] {
        let eng =
            Engine::start(EngineConfig { mode, poll_direct_recv_conns_max: direct, ..Default::default() }).unwrap();
        let addr = eng.listen(lo(), Arc::new(SinkSummerFactory { armed: true })).unwrap().local_addr();
        let mut s = connect(addr);
        send_messages_in_pieces(&mut s, 200);
        wait_until("sink receives in the stats", || eng.stats()[0].sink_recv_ops > 0);
        assert_eq!(eng.stats()[0].direct_recv_ops, 0);
        eng.shutdown(Duration::from_secs(2));
    }
}
