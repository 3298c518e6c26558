//! `nvmf connect|disconnect|list`: a remote namespace as a local block device
//! (`/dev/ublkbN`, through Linux ublk), see docs/block-device.md.
//!
//! `connect` stays in the foreground serving the devices; SIGINT/SIGTERM, or
//! `nvmf disconnect` (STOP_DEV on the device), removes them and disconnects.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nvmf_host::Controller;
use nvmf_ublk::state::{self, DeviceRecord, STATE_DIR};
use nvmf_ublk::{device_limits, DeviceConfig, Geometry};

use super::host::{ConnArgs, OutputFormat};

/// The ublk control node: present once `ublk_drv` is loaded.
const UBLK_CONTROL: &str = "/dev/ublk-control";
/// How long `disconnect` waits for a server to remove its device.
const DISCONNECT_WAIT_MS: u64 = 30_000;
/// How long one device may take to appear (ADD_DEV, SET_PARAMS, START_DEV).
const DEVICE_START_WAIT_MS: u64 = 30_000;
/// How often the foreground `connect` looks for signals and ended devices.
const SIGNAL_POLL_MS: i64 = 200;

#[derive(clap::Args, Debug)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Transport service ID (TCP port).
    #[arg(short = 's', long, default_value = "4420")]
    pub trsvcid: String,
    /// Subsystem NQN.
    #[arg(short = 'n', long)]
    pub nqn: String,
    /// Only this namespace (default: every active namespace, one device each).
    #[arg(long)]
    pub namespace: Option<u32>,
}

#[derive(clap::Args, Debug)]
pub struct DisconnectArgs {
    /// The device to remove (/dev/ublkbN).
    #[arg(required_unless_present = "nqn", conflicts_with = "nqn")]
    pub device: Option<String>,
    /// Remove every device of this subsystem.
    #[arg(short = 'n', long)]
    pub nqn: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "normal")]
    pub output_format: OutputFormat,
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(ansi).with_env_filter(filter).try_init();
}

fn cpus() -> u16 {
    std::thread::available_parallelism().map(|n| n.get().min(u16::MAX as usize) as u16).unwrap_or(1)
}

/// One namespace being served: its thread and, once started, its ublk ID.
struct Served {
    nsid: u32,
    dev_id: Arc<Mutex<Option<u32>>>,
    thread: JoinHandle<Result<()>>,
}

pub fn connect(a: ConnectArgs) -> Result<()> {
    if !Path::new(UBLK_CONTROL).exists() {
        bail!("{UBLK_CONTROL} is missing: load the ublk driver (modprobe ublk_drv; Linux >= 6.0) and run as root");
    }
    init_tracing();
    // Before the first controller's keep-alive thread exists.
    let signals = super::signals::StopSignals::block()?;
    let mut opts = a.conn.options(&a.nqn, nvmf_host::options::KATO_DEFAULT_S)?;
    opts.nr_io_queues = a.conn.nr_io_queues.unwrap_or_else(cpus);
    let addr = a.conn.addr(&a.trsvcid)?;
    let mut first =
        Controller::connect(addr.as_str(), opts.clone()).with_context(|| format!("connect to {} at {addr}", a.nqn))?;
    check_io_controller(&first)?;
    let nsids = match a.namespace {
        Some(n) => vec![n],
        None => first.active_namespaces().context("active namespace list")?,
    };
    if nsids.is_empty() {
        bail!("{} has no active namespace", a.nqn);
    }
    // One controller per namespace: a ublk device owns its NVMe I/O queues
    // (one per ublk queue), and a controller's queues serve one device.
    let mut spare = Some(first);
    // One device at a time, each up before the next: a failure then stops
    // only devices that exist.
    let mut served = Vec::new();
    for nsid in nsids {
        let started = match spare.take() {
            Some(c) => Ok(c),
            None => Controller::connect(addr.as_str(), opts.clone())
                .with_context(|| format!("connect to {} at {addr} for namespace {nsid}", a.nqn)),
        }
        .and_then(|ctrl| start_namespace(ctrl, nsid, &a.nqn, &addr))
        .and_then(wait_started);
        match started {
            Ok(s) => served.push(s),
            Err(e) => {
                stop_all(&served);
                let _ = run_until_stopped(&signals, served);
                return Err(e);
            }
        }
    }
    run_until_stopped(&signals, served)
}

/// Wait until the device exists; its thread's error if it ended first.
fn wait_started(s: Served) -> Result<Served> {
    let deadline = Instant::now() + Duration::from_millis(DEVICE_START_WAIT_MS);
    loop {
        if s.dev_id.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            return Ok(s);
        }
        if s.thread.is_finished() {
            return match s.thread.join() {
                Ok(Err(e)) => Err(e),
                Ok(Ok(())) => Err(anyhow::anyhow!("namespace {}: the device stopped before it started", s.nsid)),
                Err(_) => Err(anyhow::anyhow!("namespace {}: the device thread panicked", s.nsid)),
            };
        }
        if Instant::now() >= deadline {
            bail!("namespace {}: no ublk device within {} s", s.nsid, DEVICE_START_WAIT_MS / 1000);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// STOP_DEV to every device that exists.
fn stop_all(served: &[Served]) {
    for s in served {
        if let Some(id) = *s.dev_id.lock().unwrap_or_else(|p| p.into_inner()) {
            if let Err(e) = nvmf_ublk::stop_device(id) {
                tracing::warn!("/dev/ublkb{id}: stop: {e}");
            }
        }
    }
}

/// The first controller must be an I/O controller with I/O queues.
fn check_io_controller(c: &Controller) -> Result<()> {
    if c.is_discovery() {
        bail!("{} is a discovery subsystem: give an I/O subsystem NQN with -n", c.options().subnqn);
    }
    if c.nr_io_queues() == 0 {
        bail!("the controller granted no I/O queue");
    }
    Ok(())
}

fn start_namespace(mut ctrl: Controller, nsid: u32, subnqn: &str, addr: &str) -> Result<Served> {
    let ns = ctrl.identify_namespace(nsid).with_context(|| format!("Identify Namespace {nsid}"))?;
    let geometry = Geometry::new(ns.block_size(), ns.nsze, ctrl.transfer_len_max_bytes()).with_context(|| {
        format!("namespace {nsid}: {} blocks of {} bytes cannot be a block device", ns.nsze, ns.block_size())
    })?;
    let id = ctrl.identify();
    let limits = device_limits(&geometry, id.oncs, id.vwc);
    let queues = ctrl.take_io_queues();
    if queues.is_empty() {
        bail!("namespace {nsid}: the controller granted no I/O queue");
    }
    let record = DeviceRecord {
        dev_id: 0,
        pid: std::process::id(),
        subnqn: subnqn.to_owned(),
        addr: addr.to_owned(),
        nsid,
        size_bytes: geometry.capacity_bytes(),
        block_size_bytes: geometry.block_size_bytes,
        nr_queues: queues.len() as u16,
        queue_depth: queues.iter().map(|q| q.queue().config().queue_depth).min().unwrap_or(0),
    };
    let dev_id = Arc::new(Mutex::new(None));
    let dev_id2 = dev_id.clone();
    let cfg = DeviceConfig { nsid, geometry, limits };
    let thread = std::thread::Builder::new().name(format!("nvmf-ublk-ns{nsid}")).spawn(move || {
        let started = move |id: u32| {
            let r = DeviceRecord { dev_id: id, ..record };
            if let Err(e) = state::write_record(Path::new(STATE_DIR), &r) {
                tracing::warn!("{}: cannot write {STATE_DIR}: {e}", r.device());
            }
            println!(
                "{}: {} namespace {} at {}, {} bytes, {}-byte blocks, {} queue(s) x {}",
                r.device(),
                r.subnqn,
                r.nsid,
                r.addr,
                r.size_bytes,
                r.block_size_bytes,
                r.nr_queues,
                r.queue_depth
            );
            let _ = std::io::stdout().flush();
            *dev_id2.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
        };
        let served = nvmf_ublk::serve(cfg, queues, started);
        let r = ctrl.disconnect();
        served.map_err(|e| anyhow::anyhow!("namespace {nsid}: ublk device: {e}"))?;
        if let Err(e) = r {
            tracing::warn!("namespace {nsid}: disconnect: {e}");
        }
        Ok(())
    })?;
    Ok(Served { nsid, dev_id, thread })
}

/// Wait until every device has ended; a signal stops them all first.
fn run_until_stopped(signals: &super::signals::StopSignals, mut served: Vec<Served>) -> Result<()> {
    let mut failed = 0;
    let mut stopping = false;
    while !served.is_empty() {
        if let Some(sig) = signals.wait_ms(SIGNAL_POLL_MS) {
            if !stopping {
                tracing::info!("signal {sig}: removing the devices");
            }
            stopping = true;
            stop_all(&served);
        }
        let mut i = 0;
        while i < served.len() {
            if !served[i].thread.is_finished() {
                i += 1;
                continue;
            }
            let s = served.swap_remove(i);
            let id = *s.dev_id.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(id) = id {
                state::remove_record(Path::new(STATE_DIR), id);
            }
            match s.thread.join() {
                Ok(Ok(())) => match id {
                    Some(id) => println!("/dev/ublkb{id}: removed"),
                    None => println!("namespace {}: stopped", s.nsid),
                },
                Ok(Err(e)) => {
                    eprintln!("nvmf: error: {e:#}");
                    failed += 1;
                }
                Err(_) => {
                    eprintln!("nvmf: error: namespace {}: the device thread panicked", s.nsid);
                    failed += 1;
                }
            }
        }
    }
    if failed > 0 {
        bail!("{failed} device(s) failed");
    }
    Ok(())
}

pub fn disconnect(a: DisconnectArgs) -> Result<()> {
    let dir = Path::new(STATE_DIR);
    let records = state::read_records(dir);
    let chosen: Vec<DeviceRecord> = match (&a.device, &a.nqn) {
        (Some(d), _) => {
            let id = state::parse_device(d).with_context(|| format!("{d:?} is not a ublk device (/dev/ublkbN)"))?;
            let Some(r) = records.into_iter().find(|r| r.dev_id == id) else {
                bail!("/dev/ublkb{id} is not served by nvmf connect");
            };
            vec![r]
        }
        (None, Some(nqn)) => records.into_iter().filter(|r| &r.subnqn == nqn).collect(),
        (None, None) => bail!("give a device or --nqn"),
    };
    if chosen.is_empty() {
        bail!("no device of {} is served by nvmf connect", a.nqn.as_deref().unwrap_or("?"));
    }
    for r in &chosen {
        if r.is_live() {
            nvmf_ublk::stop_device(r.dev_id).map_err(|e| anyhow::anyhow!("{}: stop: {e}", r.device()))?;
        } else {
            // Its server is gone (killed): remove what it left behind.
            let _ = nvmf_ublk::delete_device(r.dev_id);
            state::remove_record(dir, r.dev_id);
        }
    }
    // The serving process removes each record once its device is deleted.
    let deadline = Instant::now() + Duration::from_millis(DISCONNECT_WAIT_MS);
    for r in &chosen {
        while state::record_path(dir, r.dev_id).exists() && r.is_live() {
            if Instant::now() >= deadline {
                bail!("{}: still there after {} s", r.device(), DISCONNECT_WAIT_MS / 1000);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        println!("disconnected {} ({} namespace {})", r.device(), r.subnqn, r.nsid);
    }
    Ok(())
}

pub fn list(a: ListArgs) -> Result<()> {
    let records: Vec<DeviceRecord> =
        state::read_records(Path::new(STATE_DIR)).into_iter().filter(|r| r.is_live()).collect();
    let mut out = std::io::stdout().lock();
    if a.output_format == OutputFormat::Json {
        let v = serde_json::json!({ "devices": records.iter().map(DeviceRecord::to_json).collect::<Vec<_>>() });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<14} {:<40} {:<22} {:>5} {:>16} {:>10}",
        "Device", "Subsystem NQN", "Address", "NSID", "Size", "Block size"
    )?;
    for r in &records {
        writeln!(
            out,
            "{:<14} {:<40} {:<22} {:>5} {:>16} {:>10}",
            r.device(),
            r.subnqn,
            r.addr,
            r.nsid,
            r.size_bytes,
            r.block_size_bytes
        )?;
    }
    Ok(())
}
