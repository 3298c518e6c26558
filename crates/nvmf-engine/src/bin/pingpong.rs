//! Loopback TCP request/response benchmark, the Rust twin of bench/pingpong.c,
//! plus an engine-based server to measure the engine's overhead over raw syscalls.
//!
//! ```text
//! nvmf-pingpong s PORT REQ RESP MODE                     raw server (MODE b = blocking, p = busy-poll)
//! nvmf-pingpong c PORT REQ RESP MODE SECONDS [QD]        raw client
//! nvmf-pingpong e PORT REQ RESP poll|interrupt [--core N] engine server
//! nvmf-pingpong x CPU_A CPU_B [ROUND_TRIPS]              cross-core cache-line round trip (ns)
//! nvmf-pingpong f PORT REQ RESP COUNT                    flood: COUNT idle sockets as fast as
//!                                                        possible; a real client meanwhile
//! options: --json (client output as one JSON object), --host IP (default 127.0.0.1),
//!          --stats (engine server: per-second syscalls/loops per op on stderr),
//!          --zc (engine server: answer with ConnIo::send_borrowed instead of copying into tx),
//!          --limits CONNS,UNESTABLISHED (engine server: connections_max, unestablished_max)
//! ```
//! The engine server's connections are established (`ConnIo::set_established`)
//! by their first complete request, so a flood of idle sockets is evicted
//! before them. The flood client reports how long a real client took to get
//! its first answer at each quarter of the flood, and how many idle sockets
//! the server closed.
//! The server answers every complete REQ-byte request with RESP bytes. The client at
//! QD 1 measures per-op latency (avg, min, p50, p99, p99.9, max); at QD > 1 it keeps QD
//! requests in flight and reports ops/s.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nvmf_engine::{CloseReason, ConnInfo, ConnIo, Engine, EngineConfig, Flow, Handler, HandlerFactory, Mode, Wakeup};

const BUFSZ: usize = 1 << 22;

fn usage() -> ! {
    eprintln!(
        "usage:\n  nvmf-pingpong s PORT REQ RESP b|p\n  nvmf-pingpong c PORT REQ RESP b|p SECONDS [QD] [--json]\n  \
         nvmf-pingpong e PORT REQ RESP poll|interrupt [--core N] [--limits CONNS,UNESTABLISHED]\n  \
         nvmf-pingpong x CPU_A CPU_B [ROUND_TRIPS]\n  nvmf-pingpong f PORT REQ RESP COUNT\n\
         options: --host IP"
    );
    std::process::exit(2)
}

struct Io {
    fd: i32,
    poll: bool,
}

impl Io {
    /// recv; 0 on EOF/reset.
    #[inline]
    fn recv(&self, b: &mut [u8]) -> usize {
        loop {
            let flags = if self.poll { libc::MSG_DONTWAIT } else { 0 };
            // SAFETY: valid buffer.
            let r = unsafe { libc::recv(self.fd, b.as_mut_ptr() as *mut libc::c_void, b.len(), flags) };
            if r >= 0 {
                return r as usize;
            }
            let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            if e == libc::EAGAIN || e == libc::EINTR {
                continue;
            }
            if e == libc::ECONNRESET {
                return 0;
            }
            eprintln!("recv: {}", std::io::Error::from_raw_os_error(e));
            std::process::exit(1);
        }
    }
    #[inline]
    fn send_all(&self, mut b: &[u8]) {
        while !b.is_empty() {
            let flags = libc::MSG_NOSIGNAL | if self.poll { libc::MSG_DONTWAIT } else { 0 };
            // SAFETY: valid buffer.
            let r = unsafe { libc::send(self.fd, b.as_ptr() as *const libc::c_void, b.len(), flags) };
            if r > 0 {
                b = &b[r as usize..];
                continue;
            }
            let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            if r < 0 && (e == libc::EAGAIN || e == libc::EINTR) {
                continue;
            }
            eprintln!("send: {}", std::io::Error::from_raw_os_error(e));
            std::process::exit(1);
        }
    }
    fn send_n(&self, sb: &[u8], mut tot: usize) {
        while tot > 0 {
            let c = tot.min(sb.len());
            self.send_all(&sb[..c]);
            tot -= c;
        }
    }
}

fn raw_server(addr: SocketAddr, req: usize, resp: usize, poll: bool) {
    let l = TcpListener::bind(addr).unwrap_or_else(|e| {
        eprintln!("bind: {e}");
        std::process::exit(1)
    });
    let mut rb = vec![0xa5u8; BUFSZ];
    let sb = vec![0x5au8; BUFSZ];
    for s in l.incoming() {
        let Ok(s) = s else { continue };
        s.set_nodelay(true).unwrap();
        let io = Io { fd: s.as_raw_fd(), poll };
        let mut have = 0usize;
        loop {
            let r = io.recv(&mut rb);
            if r == 0 {
                break;
            }
            have += r;
            let n = have / req;
            have %= req;
            if n > 0 {
                io.send_n(&sb, n * resp);
            }
        }
    }
}

struct Report {
    req: usize,
    resp: usize,
    mode: &'static str,
    qd: usize,
    ops: u64,
    secs: f64,
    lat: Option<[f64; 6]>, // avg min p50 p99 p99.9 max (us)
}

impl Report {
    fn print(&self, json: bool) {
        let ops_s = self.ops as f64 / self.secs;
        if json {
            let mut s = format!(
                "{{\"req\":{},\"resp\":{},\"mode\":\"{}\",\"qd\":{},\"ops\":{},\"seconds\":{:.3},\"ops_per_s\":{:.0},\"mib_s_resp\":{:.1},\"mib_s_req\":{:.1}",
                self.req,
                self.resp,
                self.mode,
                self.qd,
                self.ops,
                self.secs,
                ops_s,
                ops_s * self.resp as f64 / 1048576.0,
                ops_s * self.req as f64 / 1048576.0
            );
            if let Some(l) = self.lat {
                s += &format!(
                    ",\"avg_us\":{:.2},\"min_us\":{:.2},\"p50_us\":{:.2},\"p99_us\":{:.2},\"p99_9_us\":{:.2},\"max_us\":{:.2}",
                    l[0], l[1], l[2], l[3], l[4], l[5]
                );
            }
            s += "}";
            println!("{s}");
        } else if let Some(l) = self.lat {
            println!(
                "req={} resp={} mode={} qd=1 ops={} ops/s={:.0} avg_us={:.2} min_us={:.2} p50_us={:.2} p99_us={:.2} p99.9_us={:.2} max_us={:.2}",
                self.req, self.resp, self.mode, self.ops, ops_s, l[0], l[1], l[2], l[3], l[4], l[5]
            );
        } else {
            println!(
                "req={} resp={} mode={} qd={} ops={} ops/s={:.0} MiB/s(resp)={:.1} MiB/s(req)={:.1}",
                self.req,
                self.resp,
                self.mode,
                self.qd,
                self.ops,
                ops_s,
                ops_s * self.resp as f64 / 1048576.0,
                ops_s * self.req as f64 / 1048576.0
            );
        }
    }
}

fn client(addr: SocketAddr, req: usize, resp: usize, poll: bool, secs: f64, qd: usize, json: bool) {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| {
        eprintln!("connect: {e}");
        std::process::exit(1)
    });
    s.set_nodelay(true).unwrap();
    let io = Io { fd: s.as_raw_fd(), poll };
    let mut rb = vec![0xa5u8; BUFSZ];
    let sb = vec![0x5au8; BUFSZ];
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(secs);
    let mut ops = 0u64;
    let mode = if poll { "poll" } else { "block" };
    if qd <= 1 {
        let cap = 20_000_000usize;
        let mut lat: Vec<u64> = Vec::with_capacity(1 << 20);
        loop {
            let st = Instant::now();
            if st >= end {
                break;
            }
            io.send_n(&sb, req);
            let mut got = 0;
            while got < resp {
                let want = (resp - got).min(rb.len());
                let r = io.recv(&mut rb[..want]);
                if r == 0 {
                    eprintln!("eof");
                    std::process::exit(1);
                }
                got += r;
            }
            let e = st.elapsed().as_nanos() as u64;
            if lat.len() < cap {
                lat.push(e);
            }
            ops += 1;
        }
        let el = t0.elapsed().as_secs_f64();
        lat.sort_unstable();
        let n = lat.len();
        if n == 0 {
            eprintln!("no ops");
            std::process::exit(1);
        }
        let sum: f64 = lat.iter().map(|x| *x as f64).sum();
        let at = |q: f64| lat[((n as f64 * q) as usize).min(n - 1)] as f64 / 1e3;
        let l = [sum / n as f64 / 1e3, lat[0] as f64 / 1e3, at(0.5), at(0.99), at(0.999), lat[n - 1] as f64 / 1e3];
        Report { req, resp, mode, qd: 1, ops, secs: el, lat: Some(l) }.print(json);
    } else {
        io.send_n(&sb, qd * req);
        let mut have = 0usize;
        loop {
            let r = io.recv(&mut rb);
            if r == 0 {
                break;
            }
            have += r;
            let n = have / resp;
            have %= resp;
            ops += n as u64;
            if Instant::now() >= end {
                break;
            }
            if n > 0 {
                io.send_n(&sb, n * req);
            }
        }
        let el = t0.elapsed().as_secs_f64();
        Report { req, resp, mode, qd, ops, secs: el, lat: None }.print(json);
    }
}

// ------------------------------------------------------------------ engine server

struct Answer {
    req: usize,
    resp: usize,
    have: usize,
    zc: bool,
    pattern: Arc<Vec<u8>>,
}

impl Handler for Answer {
    fn on_recv(&mut self, io: &mut ConnIo<'_>) -> Flow {
        let r = io.rx().len();
        io.consume(r);
        self.have += r;
        let n = self.have / self.req;
        self.have %= self.req;
        if n > 0 {
            // A complete request proves a real client: out of probation.
            io.set_established();
        }
        if self.zc && self.resp <= self.pattern.len() {
            for _ in 0..n {
                // SAFETY: the pattern is kept alive by this handler (Arc) and never modified.
                unsafe { io.send_borrowed(self.pattern.as_ptr(), self.resp, 0) };
            }
            return Flow::Continue;
        }
        let mut tot = n * self.resp;
        while tot > 0 {
            let c = tot.min(self.pattern.len());
            io.tx().extend_from_slice(&self.pattern[..c]);
            tot -= c;
        }
        Flow::Continue
    }
    fn on_storage(&mut self, _io: &mut ConnIo<'_>, _token: u64, _result: i32) -> Flow {
        Flow::Continue
    }
    fn on_tick(&mut self, _io: &mut ConnIo<'_>) -> Flow {
        Flow::Continue
    }
    fn next_wakeup(&self) -> Wakeup {
        Wakeup::Never
    }
    fn on_closed(&mut self, _reason: CloseReason) {}
}

struct AnswerFactory {
    req: usize,
    resp: usize,
    zc: bool,
    pattern: Arc<Vec<u8>>,
}

impl HandlerFactory for AnswerFactory {
    fn create(&self, _info: &ConnInfo) -> Option<Box<dyn Handler>> {
        Some(Box::new(Answer { req: self.req, resp: self.resp, have: 0, zc: self.zc, pattern: self.pattern.clone() }))
    }
}

#[allow(clippy::too_many_arguments)]
fn engine_server(
    addr: SocketAddr,
    req: usize,
    resp: usize,
    mode: Mode,
    core: Option<usize>,
    stats: bool,
    zc: bool,
    limits: Option<(usize, usize)>,
) {
    if let Err(e) = nvmf_engine::raise_fd_limit() {
        eprintln!("cannot raise the fd limit: {e}");
    }
    let mut cfg = EngineConfig { cores: core.into_iter().collect(), mode, ..Default::default() };
    if let Some((conns, unestablished)) = limits {
        cfg.connections_max = conns;
        cfg.unestablished_max = unestablished;
    }
    let eng = Engine::start(cfg).unwrap_or_else(|e| {
        eprintln!("engine: {e}");
        std::process::exit(1)
    });
    let f = Arc::new(AnswerFactory { req, resp, zc, pattern: Arc::new(vec![0x5au8; 1 << 20]) });
    let l = eng.listen(addr, f).unwrap_or_else(|e| {
        eprintln!("listen: {e}");
        std::process::exit(1)
    });
    eprintln!("engine server on {} mode={mode} core={core:?}", l.local_addr());
    let mut prev = eng.stats();
    loop {
        std::thread::sleep(Duration::from_secs(if stats { 1 } else { 3600 }));
        if !stats {
            continue;
        }
        let cur = eng.stats();
        for (a, b) in cur.iter().zip(&prev) {
            if a.evicted_silent + a.evicted_unestablished + a.refused_limit
                != b.evicted_silent + b.evicted_unestablished + b.refused_limit
            {
                eprintln!(
                    "core{} connections={} unestablished={} evicted_silent={} evicted_unestablished={} \
                     refused_limit={} rx_mapped_bytes={}",
                    a.core_index,
                    a.connections,
                    a.unestablished,
                    a.evicted_silent,
                    a.evicted_unestablished,
                    a.refused_limit,
                    a.rx_mapped_bytes
                );
            }
            let ops = (a.bytes_rx - b.bytes_rx) / req as u64;
            if ops == 0 {
                continue;
            }
            let per = |x: u64, y: u64| (x - y) as f64 / ops as f64;
            eprintln!(
                "core{} ops={ops} enters/op={:.3} loops/op={:.3} busy_loops/op={:.3} recv/op={:.3} send/op={:.3}",
                a.core_index,
                per(a.enters, b.enters),
                per(a.busy_loops + a.idle_loops, b.busy_loops + b.idle_loops),
                per(a.busy_loops, b.busy_loops),
                per(a.recv_ops, b.recv_ops),
                per(a.send_ops, b.send_ops)
            );
        }
        prev = cur;
    }
}

fn main() {
    let mut pos: Vec<String> = Vec::new();
    let mut json = false;
    let mut host: IpAddr = "127.0.0.1".parse().unwrap();
    let mut core = None;
    let mut stats = false;
    let mut zc = false;
    let mut limits = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--json" => json = true,
            "--stats" => stats = true,
            "--zc" => zc = true,
            "--host" => host = args.next().and_then(|h| h.parse().ok()).unwrap_or_else(|| usage()),
            "--core" => core = Some(args.next().and_then(|h| h.parse().ok()).unwrap_or_else(|| usage())),
            "--limits" => {
                let v = args.next().unwrap_or_else(|| usage());
                let (c, u) = v.split_once(',').unwrap_or_else(|| usage());
                limits = Some((c.parse().unwrap_or_else(|_| usage()), u.parse().unwrap_or_else(|_| usage())));
            }
            "-h" | "--help" => usage(),
            _ => pos.push(a),
        }
    }
    if pos.first().map(String::as_str) == Some("x") {
        let cpu = |i: usize| -> usize { pos.get(i).and_then(|v| v.parse().ok()).unwrap_or_else(|| usage()) };
        let trips = pos.get(3).map_or(20_000, |v| v.parse().unwrap_or_else(|_| usage()));
        cache_line_round_trip(cpu(1), cpu(2), trips, json);
        return;
    }
    if pos.len() < 5 {
        usage();
    }
    let num = |i: usize| -> usize { pos[i].parse().unwrap_or_else(|_| usage()) };
    let port = num(1) as u16;
    let (req, resp) = (num(2), num(3));
    if req == 0 || resp == 0 {
        usage();
    }
    let addr = SocketAddr::new(host, port);
    let poll = pos[4].starts_with('p');
    match pos[0].as_str() {
        "s" | "server" => raw_server(addr, req, resp, poll),
        "c" | "client" => {
            if pos.len() < 6 {
                usage();
            }
            let secs: f64 = pos[5].parse().unwrap_or_else(|_| usage());
            let qd = if pos.len() > 6 { num(6) } else { 1 };
            client(addr, req, resp, poll, secs, qd.max(1), json);
        }
        "e" | "engine" => {
            let mode: Mode = pos[4].parse().unwrap_or_else(|_| usage());
            engine_server(addr, req, resp, mode, core, stats, zc, limits);
        }
        "f" | "flood" => flood(addr, req, resp, pos[4].parse().unwrap_or_else(|_| usage()), json),
        _ => usage(),
    }
}

/// One real client: connect, send a request, wait for the answer; the time
/// it took and the socket (kept open to check later that it survived).
fn real_client(addr: SocketAddr, req: usize, resp: usize) -> std::io::Result<(Duration, TcpStream)> {
    use std::io::{Read, Write};
    let t = Instant::now();
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(&vec![1u8; req])?;
    let mut b = vec![0u8; resp];
    s.read_exact(&mut b)?;
    Ok((t.elapsed(), s))
}

/// Open `count` sockets that never send, as fast as possible; at each
/// quarter a real client connects and is timed to its first answer.
fn flood(addr: SocketAddr, req: usize, resp: usize, count: usize, json: bool) {
    use std::io::{Read, Write};
    match nvmf_engine::raise_fd_limit() {
        Ok(n) if (n as usize) < count + 64 => eprintln!("fd limit {n} is below {count} sockets"),
        Ok(_) => {}
        Err(e) => eprintln!("cannot raise the fd limit: {e}"),
    }
    let started = Instant::now();
    let mut idle = Vec::with_capacity(count);
    let mut probes = Vec::new();
    let mut failed = 0usize;
    for i in 0..count {
        if i > 0 && i % (count / 4).max(1) == 0 {
            let at = i;
            probes.push((at, std::thread::spawn(move || real_client(addr, req, resp))));
        }
        match TcpStream::connect(addr) {
            Ok(s) => idle.push(s),
            Err(_) => failed += 1,
        }
    }
    let flood_secs = started.elapsed().as_secs_f64();
    probes.push((count, std::thread::spawn(move || real_client(addr, req, resp))));
    let mut real = Vec::new();
    for (at, p) in probes {
        match p.join().expect("probe thread") {
            Ok((took, s)) => real.push((at, took.as_secs_f64() * 1e3, Some(s))),
            Err(e) => {
                eprintln!("real client at {at}: {e}");
                real.push((at, f64::NAN, None));
            }
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let closed = idle
        .iter()
        .filter(|s| {
            let _ = s.set_nonblocking(true);
            let mut b = [0u8; 1];
            !matches!((&**s).read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count();
    // Every real client is still served (established: never evicted).
    let survived = real
        .iter_mut()
        .filter(|(_, _, s)| {
            s.as_ref().is_some_and(|mut s| {
                let mut b = vec![0u8; resp];
                s.write_all(&vec![1u8; req]).is_ok() && s.read_exact(&mut b).is_ok()
            })
        })
        .count();
    let ms: Vec<String> = real.iter().map(|(at, ms, _)| format!("{at}:{ms:.1}")).collect();
    if json {
        println!(
            "{{\"sockets\":{count},\"connect_failed\":{failed},\"flood_s\":{flood_secs:.3},\
             \"idle_closed_by_server\":{closed},\"real_ms\":\"{}\",\"real_survived\":{survived}}}",
            ms.join(" ")
        );
    } else {
        println!(
            "{count} idle sockets in {flood_secs:.3} s ({failed} connects failed), {closed} closed by the server; \
             real client first answer (at socket: ms) {}; {survived}/{} real clients still served",
            ms.join(", "),
            real.len()
        );
    }
}

/// The machine's cross-core state, measured directly: one cache line bounced
/// between a thread on `cpu_a` and one on `cpu_b`. Virtual machines here flip
/// between states where this takes ~125 ns or ~550 ns, and every cross-core
/// number (TCP loopback included) moves with it; the benchmark records it next
/// to each run so that runs are only compared within one state.
fn cache_line_round_trip(cpu_a: usize, cpu_b: usize, trips: usize, json: bool) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let trips = trips.clamp(100, 10_000_000);
    let line = Arc::new(AtomicU64::new(0));
    let peer = {
        let line = line.clone();
        std::thread::spawn(move || {
            let _ = nvmf_engine::pin_current_thread(cpu_b);
            // Answer every odd value with the next even one.
            for i in 0..trips as u64 {
                while line.load(Ordering::Acquire) != 2 * i + 1 {
                    std::hint::spin_loop();
                }
                line.store(2 * i + 2, Ordering::Release);
            }
        })
    };
    let _ = nvmf_engine::pin_current_thread(cpu_a);
    let mut ns: Vec<u64> = Vec::with_capacity(trips);
    for i in 0..trips as u64 {
        let t = Instant::now();
        line.store(2 * i + 1, Ordering::Release);
        while line.load(Ordering::Acquire) != 2 * i + 2 {
            std::hint::spin_loop();
        }
        ns.push(t.elapsed().as_nanos() as u64);
    }
    peer.join().expect("peer thread");
    ns.sort_unstable();
    let p50 = ns[ns.len() / 2];
    let p10 = ns[ns.len() / 10];
    if json {
        println!("{{\"cpu_a\":{cpu_a},\"cpu_b\":{cpu_b},\"round_trips\":{trips},\"p10_ns\":{p10},\"p50_ns\":{p50}}}");
    } else {
        println!("cache line CPU {cpu_a} <-> CPU {cpu_b}: p50 {p50} ns, p10 {p10} ns ({trips} round trips)");
    }
}
