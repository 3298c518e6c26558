//! `nvmf perf`: load generator in the spirit of spdk_nvme_perf and fio.
//!
//! The admin queue is brought up with the host library's blocking controller
//! (connect, identify, number of queues); every I/O queue is then one TCP
//! connection owned by one engine core (see `nvmf_host::perf`).

use std::net::{SocketAddr, ToSocketAddrs};

use anyhow::{bail, Context};
use nvmf_host::perf::{parse_size, PerfConfig, RwPattern};
use serde_json::json;

#[derive(clap::Args, Debug)]
pub struct PerfArgs {
    /// Target address (IP or host name).
    #[arg(short = 'a', long, default_value = "127.0.0.1")]
    pub traddr: String,
    /// Target TCP port.
    #[arg(short = 's', long, default_value_t = nvmf_proto::NVME_TCP_PORT)]
    pub trsvcid: u16,
    /// Subsystem NQN.
    #[arg(short = 'n', long)]
    pub nqn: String,
    /// Host NQN (default: /etc/nvme/hostnqn, else one derived from the host ID).
    #[arg(short = 'q', long)]
    pub hostnqn: Option<String>,
    /// Header digest (CRC32C on every PDU header).
    #[arg(short = 'g', long = "hdr-digest")]
    pub hdr_digest: bool,
    /// Data digest (CRC32C on every PDU's data).
    #[arg(short = 'G', long = "data-digest")]
    pub data_digest: bool,
    /// Keep SQ flow control on the I/O queues (by default perf asks the
    /// controller to disable it, as `nvme connect --disable-sqflow` does:
    /// reads then need no response capsule).
    #[arg(long)]
    pub sq_flow_control: bool,
    /// Namespace to load (NSID).
    #[arg(long, default_value_t = 1)]
    pub namespace_id: u32,
    /// read | write | randread | randwrite | randrw
    #[arg(long, default_value = "randread")]
    pub rw: String,
    /// Percentage of reads for randrw.
    #[arg(long, default_value_t = 50)]
    pub rwmixread: u8,
    /// I/O size (4k, 128k, ...); a multiple of the namespace's block size.
    #[arg(long, default_value = "4k")]
    pub bs: String,
    /// Commands in flight per queue.
    #[arg(long, default_value_t = 32)]
    pub iodepth: u32,
    /// Length of the timed run, seconds.
    #[arg(long, default_value_t = 10)]
    pub runtime: u64,
    /// Number of I/O queues (TCP connections), spread over --cores.
    #[arg(long, default_value_t = 1)]
    pub nr_io_queues: u32,
    /// CPUs to run the I/O threads on, one pinned thread each (e.g. 1 or 0,2-3).
    /// Default: one unpinned thread.
    #[arg(long)]
    pub cores: Option<String>,
    /// poll (busy-poll, lowest latency, 100% CPU) or interrupt (sleep when idle).
    #[arg(long, default_value = "poll")]
    pub mode: String,
    /// Write a self-checking pattern (LBA, generation, CRC per block), check every read, read back
    /// everything written at the end (BENCHMARKS.md, "nvmf perf").
    #[arg(long)]
    pub verify: bool,
    /// Bytes of the namespace to use (default: all from --offset).
    #[arg(long)]
    pub size: Option<String>,
    /// First byte of the namespace to use.
    #[arg(long, default_value = "0")]
    pub offset: String,
    /// normal | json
    #[arg(long, default_value = "normal")]
    pub output_format: String,
    /// Also report the latency histograms of reads and writes (log-scale
    /// buckets from 1 us: upper edge, I/Os, cumulative percent), not only
    /// percentiles; in JSON as latency_histogram.read/write [{le_us, count}].
    #[arg(long)]
    pub latency_histogram: bool,
    /// Seed of random offsets and of the verify pattern (default: from the clock).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Multipath: comma-separated ADDR:PORT paths to the same subsystem and
    /// namespace, used instead of -a/-s (see docs/multipath.md).
    #[arg(long)]
    pub paths: Option<String>,
    /// Multipath I/O policy with --paths: failover, failover-failback, round-robin, queue-depth.
    #[arg(long, default_value = "failover")]
    pub iopolicy: String,
    #[command(flatten)]
    pub auth: super::host::AuthArgs,
    /// With TLS: every I/O queue starts a TLS KeyUpdate (asking the target to
    /// update its keys too) every MS ms while it runs; the count is reported
    /// as `tls_key_updates`. For tests and benchmarks.
    #[arg(long, value_name = "MS", default_value_t = 0, hide = true)]
    pub tls_key_update_ms: u64,
}

/// Build the run configuration from the command line (no I/O).
pub fn config_from_args(a: &PerfArgs) -> anyhow::Result<PerfConfig> {
    let rw: RwPattern = a.rw.parse().map_err(anyhow::Error::msg)?;
    let cores = match &a.cores {
        Some(s) => nvmf_engine::parse_core_list(s)?,
        None => Vec::new(),
    };
    let poll = match a.mode.parse::<nvmf_engine::Mode>()? {
        nvmf_engine::Mode::Poll => true,
        nvmf_engine::Mode::Interrupt => false,
    };
    let cfg = PerfConfig {
        namespace_id: a.namespace_id,
        rw,
        rwmixread: a.rwmixread,
        block_size_bytes: parse_size(&a.bs).map_err(anyhow::Error::msg).context("--bs")?,
        iodepth: a.iodepth,
        runtime_s: a.runtime,
        io_queues: a.nr_io_queues,
        cores,
        poll,
        verify: a.verify,
        size_bytes: match &a.size {
            Some(s) => parse_size(s).map_err(anyhow::Error::msg).context("--size")?,
            None => 0,
        },
        offset_bytes: parse_size(&a.offset).map_err(anyhow::Error::msg).context("--offset")?,
        header_digest: a.hdr_digest,
        data_digest: a.data_digest,
        sq_flow_control: a.sq_flow_control,
        seed: a.seed,
        dhchap_secret: None,
        dhchap_ctrl_secret: None,
        tls: None,
        concat: false,
        tls_key_update_ms: a.tls_key_update_ms,
    };
    let mut cfg = cfg;
    (cfg.dhchap_secret, cfg.dhchap_ctrl_secret, cfg.concat) = a.auth.dhchap_secrets_concat()?;
    cfg.tls = a.auth.tls_options()?;
    cfg.validate().map_err(anyhow::Error::msg)?;
    if !matches!(a.output_format.as_str(), "normal" | "json") {
        bail!("--output-format must be normal or json");
    }
    Ok(cfg)
}

fn config_json(a: &PerfArgs, cfg: &PerfConfig) -> serde_json::Value {
    json!({
        "traddr": a.traddr, "trsvcid": a.trsvcid, "nqn": a.nqn,
        "namespace_id": cfg.namespace_id, "rw": cfg.rw.to_string(), "rwmixread": cfg.rwmixread,
        "bs": cfg.block_size_bytes, "iodepth": cfg.iodepth, "runtime_s": cfg.runtime_s,
        "nr_io_queues": cfg.io_queues, "cores": cfg.cores, "mode": if cfg.poll { "poll" } else { "interrupt" },
        "verify": cfg.verify, "size": cfg.size_bytes, "offset": cfg.offset_bytes,
        "hdr_digest": cfg.header_digest, "data_digest": cfg.data_digest,
        "sq_flow_control": cfg.sq_flow_control,
        "tls": cfg.tls.is_some() || cfg.concat,
        "concat": cfg.concat,
    })
}

fn resolve(traddr: &str, port: u16) -> anyhow::Result<SocketAddr> {
    (traddr, port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {traddr}"))?
        .next()
        .with_context(|| format!("no address for {traddr}"))
}

pub fn run(a: PerfArgs) -> anyhow::Result<()> {
    let cfg = config_from_args(&a)?;
    nvmf_host::perf::run::stop_on_interrupt();
    if let Some(paths) = &a.paths {
        return run_multipath(&a, &cfg, paths);
    }
    let addr = resolve(&a.traddr, a.trsvcid)?;
    let admin = nvmf_host::perf::admin::AdminSession::open(addr, &a.nqn, a.hostnqn.as_deref(), &cfg)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("admin queue bring-up with {addr}"))?;
    let facts = admin.facts().clone();
    let interval = admin.keep_alive_interval();
    let mut admin = admin;
    let mut keep_alive = || admin.keep_alive();
    let mut summary =
        nvmf_host::perf::run::run(&cfg, addr, &facts, interval, &mut keep_alive, true).map_err(anyhow::Error::msg)?;
    summary.show_histogram = a.latency_histogram;
    admin.disconnect();
    if a.output_format == "json" {
        let mut config = config_json(&a, &cfg);
        // What the run used: --size clamped to the namespace and whole units.
        if let Ok(g) = cfg.geometry(facts.lba_bytes, facts.nsze) {
            config["size"] = json!(g.units * g.unit_bytes());
            config["offset"] = json!(g.first_lba * g.lba_bytes);
        }
        println!("{}", summary.to_json(config));
    } else {
        let title = format!(
            "nvmf perf: {} bs={} iodepth={} queues={} mode={} digests={}/{} verify={} tls={} -> {addr} {}",
            cfg.rw,
            cfg.block_size_bytes,
            cfg.iodepth,
            cfg.io_queues,
            if cfg.poll { "poll" } else { "interrupt" },
            if cfg.header_digest { "hdr" } else { "-" },
            if cfg.data_digest { "data" } else { "-" },
            cfg.verify,
            cfg.tls.is_some(),
            a.nqn
        );
        println!("{}", summary.to_text(&title));
    }
    if summary.errors > 0 || summary.verify_errors > 0 {
        bail!("{} I/O error(s), {} verify error(s)", summary.errors, summary.verify_errors);
    }
    if summary.interrupted {
        // The summary is out; 130 (128 + SIGINT) tells scripts the run was cut.
        std::process::exit(130);
    }
    if summary.reads + summary.writes == 0 {
        bail!("no I/O completed");
    }
    Ok(())
}

/// `--paths`: one workload over a multipath device (per-path stats, failovers).
fn run_multipath(a: &PerfArgs, cfg: &PerfConfig, paths: &str) -> anyhow::Result<()> {
    use nvmf_host::multipath::perf as mp;
    let setup = mp::PathsSetup {
        paths: mp::parse_paths(paths).map_err(anyhow::Error::msg)?,
        subnqn: a.nqn.clone(),
        hostnqn: a.hostnqn.clone(),
        policy: a.iopolicy.parse().map_err(anyhow::Error::msg)?,
    };
    let mut r = mp::run_paths(cfg, &setup, &nvmf_host::perf::run::INTERRUPTED).map_err(anyhow::Error::msg)?;
    r.summary.interrupted = nvmf_host::perf::run::INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed);
    r.summary.show_histogram = a.latency_histogram;
    let s = &r.summary;
    if a.output_format == "json" {
        let mut c = config_json(a, cfg);
        c["paths"] = json!(setup.paths.iter().map(|p| p.to_string()).collect::<Vec<_>>());
        c["iopolicy"] = json!(setup.policy.to_string());
        let mut out = s.to_json(c);
        out["multipath"] = r.paths_json();
        println!("{out}");
    } else {
        let title = format!(
            "nvmf perf: {} bs={} iodepth={} verify={} iopolicy={} paths={} {}",
            cfg.rw, cfg.block_size_bytes, cfg.iodepth, cfg.verify, setup.policy, paths, a.nqn
        );
        println!("{}", s.to_text(&title));
        println!("{}", r.paths_text());
    }
    if s.errors > 0 || s.verify_errors > 0 || r.double_completions > 0 {
        bail!(
            "{} I/O error(s), {} verify error(s), {} double completion(s)",
            s.errors,
            s.verify_errors,
            r.double_completions
        );
    }
    if s.interrupted {
        std::process::exit(130);
    }
    if s.reads + s.writes == 0 {
        bail!("no I/O completed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: PerfArgs,
    }

    fn parse(args: &[&str]) -> anyhow::Result<PerfConfig> {
        let mut v = vec!["perf"];
        v.extend_from_slice(args);
        let cli = Cli::try_parse_from(v)?;
        config_from_args(&cli.a)
    }

    #[test]
    fn flags() {
        let c = parse(&[
            "-n",
            "nqn.2026-11.io.nvmf:x",
            "--rw",
            "randrw",
            "--rwmixread",
            "70",
            "--bs",
            "128k",
            "--iodepth",
            "8",
            "--cores",
            "0,2-3",
            "--mode",
            "interrupt",
            "--verify",
            "--size",
            "1g",
            "-g",
            "-G",
        ])
        .unwrap();
        assert_eq!(c.rw, RwPattern::RandRw);
        assert_eq!(c.rwmixread, 70);
        assert_eq!(c.block_size_bytes, 128 << 10);
        assert_eq!(c.cores, vec![0, 2, 3]);
        assert!(!c.poll && c.verify && c.header_digest && c.data_digest);
        assert_eq!(c.size_bytes, 1 << 30);
        assert!(parse(&["-n", "nqn.2026-11.io.nvmf:x", "--rw", "bogus"]).is_err());
        assert!(parse(&["-n", "nqn.2026-11.io.nvmf:x", "--iodepth", "0"]).is_err());
        assert!(parse(&["-n", "nqn.2026-11.io.nvmf:x", "--output-format", "xml"]).is_err());
        assert!(parse(&["-n", "nqn.2026-11.io.nvmf:x", "--mode", "spin"]).is_err());
    }
}
