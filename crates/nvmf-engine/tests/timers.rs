//! Handler timers over loopback: `Handler::next_wakeup` deadlines, no timer,
//! the periodic default, and the engine clock in µs (behaviour only: "not
//! before the deadline" and "not every tick", never how soon).

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use nvmf_engine::*;

#[derive(Default)]
struct Log {
    /// `now_ms` of every on_tick.
    ticks: Mutex<Vec<u64>>,
    /// Deadline asked for when each on_tick came (None: not a deadline).
    deadlines: Mutex<Vec<Option<u64>>>,
    /// `(now_us, now_ms)` seen in callbacks.
    clocks: Mutex<Vec<(u64, u64)>>,
}

/// Asks for a deadline `delay_ms` after registration; a received byte `l`
/// moves it `delay_ms` later, `e` switches to every tick, `n` to no timer.
struct Sleeper {
    log: Arc<Log>,
    delay_ms: u64,
    wakeup: Wakeup,
}

impl Handler for Sleeper {
    fn on_recv(&mut self, io: &mut ConnIo<'_>) -> Flow {
        self.log.clocks.lock().unwrap().push((io.now_us(), io.now_ms()));
        for b in io.rx().to_vec() {
            self.wakeup = match (b, self.wakeup) {
                (b'l', Wakeup::At(ms)) => Wakeup::At(ms + self.delay_ms),
                (b'e', _) => Wakeup::EveryTick,
                (b'n', _) => Wakeup::Never,
                (_, w) => w,
            };
        }
        let n = io.rx().len();
        io.consume(n);
        io.tx().push(b'k');
        Flow::Continue
    }
    fn on_storage(&mut self, _io: &mut ConnIo<'_>, _t: u64, _r: i32) -> Flow {
        Flow::Continue
    }
    fn on_tick(&mut self, io: &mut ConnIo<'_>) -> Flow {
        let now = io.now_ms();
        self.log.clocks.lock().unwrap().push((io.now_us(), now));
        self.log.ticks.lock().unwrap().push(now);
        let first = self.log.ticks.lock().unwrap().len() == 1;
        self.log.deadlines.lock().unwrap().push(match self.wakeup {
            Wakeup::At(ms) => Some(ms),
            _ => None,
        });
        match self.wakeup {
            // Registration: ask for the first deadline.
            Wakeup::Never if first && self.delay_ms > 0 => self.wakeup = Wakeup::At(now + self.delay_ms),
            // A delivered deadline: nothing more.
            Wakeup::At(ms) if now >= ms => self.wakeup = Wakeup::Never,
            _ => {}
        }
        Flow::Continue
    }
    fn next_wakeup(&self) -> Wakeup {
        self.wakeup
    }
    fn on_closed(&mut self, _r: CloseReason) {}
}

struct SleeperFactory {
    log: Arc<Log>,
    delay_ms: u64,
}

impl HandlerFactory for SleeperFactory {
    fn create(&self, _info: &ConnInfo) -> Option<Box<dyn Handler>> {
        Some(Box::new(Sleeper { log: self.log.clone(), delay_ms: self.delay_ms, wakeup: Wakeup::Never }))
    }
}

fn start(mode: Mode, delay_ms: u64) -> (Engine, Arc<Log>, std::net::SocketAddr) {
    let log = Arc::new(Log::default());
    let eng = Engine::start(EngineConfig { mode, tick_ms: 5, ..Default::default() }).unwrap();
    let addr = eng.listen(lo(), Arc::new(SleeperFactory { log: log.clone(), delay_ms })).unwrap().local_addr();
    (eng, log, addr)
}

fn poke(s: &mut std::net::TcpStream, b: u8) {
    use std::io::Read;
    s.write_all(&[b]).unwrap();
    let mut k = [0u8; 1];
    s.read_exact(&mut k).unwrap();
}

#[test]
fn a_deadline_ticks_once_at_not_before_it_and_not_every_tick() {
    for mode in [Mode::Poll, Mode::Interrupt] {
        let (eng, log, addr) = start(mode, 60);
        let _s = connect(addr);
        wait_until("the deadline", || log.ticks.lock().unwrap().len() == 2);
        // Many ticks of 5 ms pass without on_tick.
        std::thread::sleep(Duration::from_millis(100));
        let ticks = log.ticks.lock().unwrap().clone();
        let deadlines = log.deadlines.lock().unwrap().clone();
        assert_eq!(ticks.len(), 2, "registration tick and one deadline, not every tick: {ticks:?}");
        let deadline = deadlines[1].expect("the second tick is the deadline");
        assert_eq!(deadline, ticks[0] + 60);
        assert!(ticks[1] >= deadline, "on_tick before its deadline: {ticks:?} {deadline}");
        let st = &eng.stats()[0];
        assert_eq!(st.tick_conns, 0);
        assert_eq!(st.periodic_ticks, 0);
        assert_eq!(st.deadline_ticks, 1);
        eng.shutdown(Duration::from_secs(1));
    }
}

#[test]
fn a_deadline_moved_later_is_not_delivered_at_the_old_time() {
    for mode in [Mode::Poll, Mode::Interrupt] {
        let (eng, log, addr) = start(mode, 80);
        let mut s = connect(addr);
        wait_until("registered", || log.ticks.lock().unwrap().len() == 1);
        // Move it by 80 ms right away: the old entry fires and re-schedules.
        poke(&mut s, b'l');
        wait_until("the deadline", || log.ticks.lock().unwrap().len() == 2);
        let ticks = log.ticks.lock().unwrap().clone();
        assert!(ticks[1] >= ticks[0] + 160, "delivered at the old deadline: {ticks:?}");
        assert_eq!(log.deadlines.lock().unwrap()[1], Some(ticks[0] + 160));
        eng.shutdown(Duration::from_secs(1));
    }
}

#[test]
fn never_gets_no_ticks_and_every_tick_is_periodic() {
    for mode in [Mode::Poll, Mode::Interrupt] {
        let (eng, log, addr) = start(mode, 0);
        let mut conns: Vec<_> = (0..50).map(|_| connect(addr)).collect();
        wait_until("registered", || log.ticks.lock().unwrap().len() == 50);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(log.ticks.lock().unwrap().len(), 50, "only the registration ticks");
        wait_until("stats", || eng.stats()[0].connections == 50);
        let st = eng.stats()[0].clone();
        assert_eq!((st.tick_conns, st.periodic_ticks, st.deadline_ticks), (0, 0, 0));
        // One switches to every tick: it alone ticks, repeatedly.
        poke(&mut conns[7], b'e');
        wait_until("periodic ticks", || log.ticks.lock().unwrap().len() >= 60);
        assert!(log.deadlines.lock().unwrap()[50..].iter().all(|d| d.is_none()));
        wait_until("stats", || eng.stats()[0].tick_conns == 1);
        // And back to no timer: the ticks stop.
        poke(&mut conns[7], b'n');
        std::thread::sleep(Duration::from_millis(20));
        let n = log.ticks.lock().unwrap().len();
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(log.ticks.lock().unwrap().len(), n);
        wait_until("left the tick list", || eng.stats()[0].tick_conns == 0);
        eng.shutdown(Duration::from_secs(1));
    }
}

#[test]
fn now_us_and_now_ms_are_one_monotonic_clock() {
    let (eng, log, addr) = start(Mode::Interrupt, 20);
    let mut s = connect(addr);
    for _ in 0..20 {
        poke(&mut s, b'x');
    }
    wait_until("the deadline", || log.ticks.lock().unwrap().len() == 2);
    let clocks = log.clocks.lock().unwrap().clone();
    assert!(clocks.len() >= 22);
    assert!(clocks.iter().all(|(us, ms)| us / 1000 == *ms), "{clocks:?}");
    assert!(clocks.windows(2).all(|w| w[0].0 <= w[1].0), "{clocks:?}");
    eng.shutdown(Duration::from_secs(1));
}
