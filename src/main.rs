//! `nvmf`: NVMe over TCP in user space. One binary for the target
//! (`nvmf target`), the host tools (`discover`, `identify`, `read`, `write`,
//! `perf`), remote namespaces as block devices (`connect`, `disconnect`, `list`), live management (`ctl`) and nvme-cli's key tools
//! (`gen-dhchap-key`, `check-dhchap-key`, `gen-tls-key`, `check-tls-key`).

use clap::{Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(name = "nvmf", version, about = "NVMe over TCP in user space: target, host tools and benchmarks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve namespaces over NVMe/TCP (no arguments: a 1 GiB RAM namespace on 127.0.0.1:4420).
    Target(cli::target::TargetArgs),
    /// Print a discovery controller's log page.
    Discover(cli::host::DiscoverArgs),
    /// Show Identify Controller / Namespace data of a subsystem.
    Identify(cli::host::IdentifyArgs),
    /// Read logical blocks to a file (or stdout).
    Read(cli::host::ReadArgs),
    /// Write logical blocks from a file (or stdin).
    Write(cli::host::WriteArgs),
    /// Connect to a subsystem and serve each namespace as a local block device (/dev/ublkbN, Linux ublk).
    Connect(cli::connect::ConnectArgs),
    /// Remove block devices made by `connect` (one device, or all of a subsystem with --nqn).
    Disconnect(cli::connect::DisconnectArgs),
    /// List the block devices `connect` serves.
    List(cli::connect::ListArgs),
    /// Load generator (spdk_nvme_perf / fio style) with latency histograms.
    Perf(cli::perf::PerfArgs),
    /// Manage a running target (subsystems, namespaces, hosts, listeners, ANA, stats) over its RPC socket.
    Ctl(cli::ctl::CtlArgs),
    /// Generate a DH-HMAC-CHAP secret (DHHC-1:hh:...:) for --dhchap-secret / --dhchap-ctrl-secret, as nvme gen-dhchap-key.
    GenDhchapKey(cli::keys::GenDhchapKeyArgs),
    /// Check a DH-HMAC-CHAP secret (format, length, CRC), as nvme check-dhchap-key.
    CheckDhchapKey(cli::keys::CheckDhchapKeyArgs),
    /// Generate a TLS PSK in the NVMe interchange format (NVMeTLSkey-1:hh:...:), as nvme gen-tls-key.
    GenTlsKey(cli::keys::GenTlsKeyArgs),
    /// Check a TLS PSK in the interchange format and print its TLS PSK identity, as nvme check-tls-key.
    CheckTlsKey(cli::keys::CheckTlsKeyArgs),
}

/// Process set-up every command shares.
fn prepare_process() {
    // Thousands of connections need thousands of descriptors; the soft limit
    // is often 1024 while the hard limit allows far more.
    if let Err(e) = nvmf_engine::raise_fd_limit() {
        eprintln!("nvmf: warning: cannot raise the open-file limit: {e}");
    }
    // glibc moves its mmap threshold up to every freed large block, after
    // which large buffers come from heap arenas that are never given back:
    // a fixed threshold keeps them mapped, so memory returns when freed.
    // SAFETY: plain libc call at start, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

fn main() {
    prepare_process();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Target(a) => cli::target::run(a),
        Cmd::Discover(a) => cli::host::discover(a),
        Cmd::Identify(a) => cli::host::identify(a),
        Cmd::Read(a) => cli::host::read(a),
        Cmd::Write(a) => cli::host::write(a),
        Cmd::Connect(a) => cli::connect::connect(a),
        Cmd::Disconnect(a) => cli::connect::disconnect(a),
        Cmd::List(a) => cli::connect::list(a),
        Cmd::Perf(a) => cli::perf::run(a),
        Cmd::Ctl(a) => cli::ctl::run(a),
        Cmd::GenDhchapKey(a) => cli::keys::gen_dhchap_key(a),
        Cmd::CheckDhchapKey(a) => cli::keys::check_dhchap_key(a),
        Cmd::GenTlsKey(a) => cli::keys::gen_tls_key(a),
        Cmd::CheckTlsKey(a) => cli::keys::check_tls_key(a),
    };
    if let Err(e) = result {
        eprintln!("nvmf: error: {}", cli::report::error_line(&e));
        std::process::exit(1);
    }
}
