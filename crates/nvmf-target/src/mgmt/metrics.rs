//! Prometheus text exposition (format 0.0.4) of the target's counters.
//!
//! Data-path counters are per queue, written only by the queue's own core
//! (relaxed load + store, no read-modify-write), and summed here at scrape
//! time together with the totals of queues that already closed, so they
//! never go backwards.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::stats::{ERROR_KINDS, LATENCY_BUCKETS};
use crate::subsys::IoTotals;

use super::Mgmt;

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn val(&mut self, name: &str, labels: &[(&str, &str)], v: u64) {
        let l: Vec<String> = labels.iter().map(|(k, x)| format!("{k}=\"{}\"", esc(x))).collect();
        if l.is_empty() {
            let _ = writeln!(self.0, "{name} {v}");
        } else {
            let _ = writeln!(self.0, "{name}{{{}}} {v}", l.join(","));
        }
    }
}

/// Connections refused and evicted, by reason, summed over the cores; the
/// connections still on probation; receive buffer memory.
fn admission(o: &mut Out, cores: &[nvmf_engine::CoreStats]) {
    let sum = |f: fn(&nvmf_engine::CoreStats) -> u64| cores.iter().map(f).sum::<u64>();
    o.head("nvmf_connections_unestablished", "gauge", "Open connections that have not completed Connect.");
    o.val("nvmf_connections_unestablished", &[], sum(|c| c.unestablished));
    o.head(
        "nvmf_connections_refused_total",
        "counter",
        "New connections closed at accept, by reason (limit: connections_max or connections_unestablished_max with nothing to evict).",
    );
    for (reason, v) in [
        ("limit", sum(|c| c.refused_limit)),
        ("shutdown", sum(|c| c.refused_shutdown)),
        ("handler", sum(|c| c.refused_handler)),
        ("no_memory", sum(|c| c.refused_nomem)),
    ] {
        o.val("nvmf_connections_refused_total", &[("reason", reason)], v);
    }
    o.head(
        "nvmf_connections_evicted_total",
        "counter",
        "Connections closed to make room for a new one, by reason (silent: never sent a byte; unestablished: no Connect yet).",
    );
    o.val("nvmf_connections_evicted_total", &[("reason", "silent")], sum(|c| c.evicted_silent));
    o.val("nvmf_connections_evicted_total", &[("reason", "unestablished")], sum(|c| c.evicted_unestablished));
    o.head("nvmf_rx_buffer_bytes", "gauge", "Receive buffer memory mapped by the engine (small and large buffers).");
    o.val("nvmf_rx_buffer_bytes", &[], sum(|c| c.rx_mapped_bytes));
    o.head("nvmf_rx_large_buffers_in_use", "gauge", "Large receive buffers lent to connections for a PDU in progress.");
    o.val("nvmf_rx_large_buffers_in_use", &[], sum(|c| c.rx_large_in_use));
}

/// Render every metric.
pub fn render(m: &Mgmt) -> String {
    let mut o = Out(String::with_capacity(4096));
    let server = m.server();
    let st = server.stats();
    let subs = server.target().subsystems();

    o.head("nvmf_uptime_seconds", "gauge", "Seconds since management started.");
    o.val("nvmf_uptime_seconds", &[], m.started.elapsed().as_secs());
    o.head("nvmf_connections", "gauge", "Open TCP connections (queues, incl. discovery).");
    o.val("nvmf_connections", &[], st.connections as u64);
    o.head("nvmf_controllers", "gauge", "Live controllers per subsystem.");
    for s in &subs {
        o.val("nvmf_controllers", &[("subsystem", &s.nqn)], s.controllers().len() as u64);
    }
    o.head("nvmf_io_queues", "gauge", "Connected I/O queues per subsystem.");
    for s in &subs {
        let n: usize = s.controllers().iter().map(|c| c.connected_io_queues()).sum();
        o.val("nvmf_io_queues", &[("subsystem", &s.nqn)], n as u64);
    }
    o.head("nvmf_namespaces", "gauge", "Namespaces per subsystem.");
    for s in &subs {
        o.val("nvmf_namespaces", &[("subsystem", &s.nqn)], s.namespaces().list.len() as u64);
    }
    o.head("nvmf_namespace_size_bytes", "gauge", "Namespace capacity.");
    for s in &subs {
        for ns in &s.namespaces().list {
            let nsid = ns.nsid.to_string();
            o.val("nvmf_namespace_size_bytes", &[("subsystem", &s.nqn), ("nsid", &nsid)], ns.backend.size_bytes());
        }
    }
    let totals: Vec<_> = subs.iter().map(|s| (s.nqn.clone(), s.io_totals())).collect();
    for (name, help, f) in [
        (
            "nvmf_read_commands_total",
            "Read commands completed.",
            (|t: &crate::subsys::IoTotals| t.read_cmds) as fn(&_) -> u64,
        ),
        ("nvmf_write_commands_total", "Write commands completed.", |t| t.write_cmds),
        ("nvmf_read_bytes_total", "Bytes read by hosts.", |t| t.read_bytes),
        ("nvmf_write_bytes_total", "Bytes written by hosts.", |t| t.write_bytes),
    ] {
        o.head(name, "counter", help);
        for (nqn, t) in &totals {
            o.val(name, &[("subsystem", nqn)], f(t));
        }
    }
    for (i, (name, help)) in [
        ("nvmf_ns_read_commands_total", "Read commands completed per namespace."),
        ("nvmf_ns_write_commands_total", "Write commands completed per namespace."),
        ("nvmf_ns_read_bytes_total", "Bytes read per namespace."),
        ("nvmf_ns_write_bytes_total", "Bytes written per namespace."),
    ]
    .into_iter()
    .enumerate()
    {
        o.head(name, "counter", help);
        for (nqn, t) in &totals {
            for (nsid, v) in t.stats.per_ns.iter().filter(|(n, _)| *n != 0) {
                o.val(name, &[("subsystem", nqn), ("nsid", &nsid.to_string())], v[i]);
            }
            if t.stats.per_ns_other[0] + t.stats.per_ns_other[1] != 0 {
                o.val(name, &[("subsystem", nqn), ("nsid", "other")], t.stats.per_ns_other[i]);
            }
        }
    }
    latency_and_errors(&mut o, &totals);
    admission(&mut o, &st.cores);
    o.head("nvmf_keep_alive_expiries_total", "counter", "Controllers torn down by keep-alive timeout.");
    o.val("nvmf_keep_alive_expiries_total", &[], server.target().keep_alive_expiries.load(Ordering::Relaxed));
    for (name, help, f) in [
        (
            "nvmf_core_busy_loops_total",
            "Engine loop iterations that handled work.",
            (|c: &nvmf_engine::CoreStats| c.busy_loops) as fn(&_) -> u64,
        ),
        (
            "nvmf_core_idle_loops_total",
            "Engine loop iterations that found nothing to do (poll mode: idle spinning).",
            |c| c.idle_loops,
        ),
        ("nvmf_core_enters_total", "io_uring_enter calls.", |c| c.enters),
        ("nvmf_core_connections", "Connections owned by the core.", |c| c.connections),
        ("nvmf_core_connections_accepted_total", "Connections handed to the core.", |c| c.connections_total),
        ("nvmf_core_rx_bytes_total", "TCP bytes received.", |c| c.bytes_rx),
        ("nvmf_core_tx_bytes_total", "TCP bytes sent.", |c| c.bytes_tx),
        ("nvmf_core_storage_ops_total", "Storage operations submitted to io_uring.", |c| c.storage_ops),
        ("nvmf_core_tls_handshakes_total", "TLS handshakes completed.", |c| c.tls_handshakes),
        ("nvmf_core_tls_failures_total", "TLS connections that failed (handshake or record).", |c| c.tls_failures),
        (
            "nvmf_core_tls_refused_plain_total",
            "Plain NVMe/TCP connections refused by listeners that require TLS.",
            |c| c.tls_refused_plain,
        ),
        ("nvmf_core_tls_rx_plaintext_bytes_total", "Bytes decrypted from TLS records.", |c| c.tls_bytes_decrypted),
        ("nvmf_core_tls_tx_plaintext_bytes_total", "Bytes encrypted into TLS records.", |c| c.tls_bytes_encrypted),
    ] {
        o.head(name, if name.ends_with("_total") { "counter" } else { "gauge" }, help);
        for c in &st.cores {
            let core = c.core_index.to_string();
            o.val(name, &[("core", &core)], f(c));
        }
    }
    o.0
}

/// Upper bound (seconds) of histogram bucket `k` (see [`crate::stats::LatencyHistogram`]).
fn le(k: usize) -> String {
    if k + 1 == LATENCY_BUCKETS {
        "+Inf".into()
    } else {
        format!("{}", (1u64 << k) as f64 / 1e6)
    }
}

fn latency_and_errors(o: &mut Out, totals: &[(String, IoTotals)]) {
    for (name, help, pick) in [
        (
            "nvmf_io_total_latency_seconds",
            "Command received to response queued, at engine-callback resolution (needs --metrics when queues connect).",
            (|t: &IoTotals, k: usize| t.stats.total[k]) as fn(&IoTotals, usize) -> ([u64; LATENCY_BUCKETS], u64),
        ),
        ("nvmf_io_backend_latency_seconds", "Storage op submitted to completed (0 for memory backends).", |t, k| {
            t.stats.backend[k]
        }),
    ] {
        o.head(name, "histogram", help);
        for (nqn, t) in totals {
            for (k, op) in ["read", "write"].iter().enumerate() {
                let (buckets, sum_us) = pick(t, k);
                let mut cum = 0u64;
                for (b, n) in buckets.iter().enumerate() {
                    cum += n;
                    let bucket = format!("{name}_bucket");
                    o.val(&bucket, &[("subsystem", nqn), ("op", op), ("le", &le(b))], cum);
                }
                let _ = writeln!(o.0, "{name}_sum{{subsystem=\"{}\",op=\"{op}\"}} {}", esc(nqn), sum_us as f64 / 1e6);
                o.val(&format!("{name}_count"), &[("subsystem", nqn), ("op", op)], cum);
            }
        }
    }
    o.head("nvmf_io_errors_total", "counter", "I/O queue completions with an error status, by status.");
    for (nqn, t) in totals {
        for (k, n) in t.stats.errors.iter().enumerate() {
            let status = ERROR_KINDS.get(k).map(|e| e.0).unwrap_or("other");
            o.val("nvmf_io_errors_total", &[("subsystem", nqn), ("status", status)], *n);
        }
    }
    o.head("nvmf_digest_errors_total", "counter", "Header and data digest (CRC32C) errors on I/O queues.");
    for (nqn, t) in totals {
        o.val("nvmf_digest_errors_total", &[("subsystem", nqn)], t.stats.digest_errors);
    }
}
