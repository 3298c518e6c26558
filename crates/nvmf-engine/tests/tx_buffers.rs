//! Send buffers give capacity beyond `TX_RETAIN_BYTES` back once a
//! connection has not needed it for `TX_TRIM_IDLE_MS`, and not while busy.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use nvmf_engine::*;

/// Each received byte `n` is answered with `n` x 64 KiB of it.
fn blast(io: &mut ConnIo<'_>) -> Flow {
    let rx = io.rx().to_vec();
    io.consume(rx.len());
    for n in rx {
        let l = io.tx().len();
        io.tx().resize(l + n as usize * 64 * 1024, n);
    }
    Flow::Continue
}

fn ask(s: &mut std::net::TcpStream, n: u8) {
    s.write_all(&[n]).unwrap();
    let mut got = vec![0u8; n as usize * 64 * 1024];
    s.read_exact(&mut got).unwrap();
    assert!(got.iter().all(|b| *b == n));
}

#[test]
fn send_buffers_are_trimmed_when_idle_not_while_busy() {
    let eng = Engine::start(EngineConfig { mode: Mode::Interrupt, ..Default::default() }).unwrap();
    let addr = eng.listen(lo(), Arc::new(OnRecv::new(blast))).unwrap().local_addr();
    let mut busy = connect(addr);
    let mut once = connect(addr);
    // Small batches never list a connection.
    ask(&mut busy, 1);
    // A 1 MiB batch each: `busy` keeps sending them for longer than the idle
    // time, `once` goes quiet.
    ask(&mut once, 16);
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(TX_TRIM_IDLE_MS * 3 / 2) {
        ask(&mut busy, 16);
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_until("the idle one trimmed", || eng.stats()[0].tx_trims >= 1);
    assert_eq!(eng.stats()[0].tx_trims, 1, "the busy connection was not trimmed");
    // Once `busy` goes quiet too, it is trimmed as well.
    wait_until("both trimmed", || eng.stats()[0].tx_trims == 2);
    // And both still work, growing again as needed.
    ask(&mut busy, 20);
    ask(&mut once, 1);
    eng.shutdown(Duration::from_secs(1));
}
