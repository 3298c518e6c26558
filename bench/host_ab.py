#!/usr/bin/env python3
"""A/B two `nvmf` builds, as the host or as the target, alternated.

The machine flips between speed states within seconds, so two builds are
compared pairwise and the per-pair ratio B/A of IOPS and its median are
printed.
- host side (default): one `nvmf target` (from the first binary) stays up,
  and `nvmf perf` of each build runs in turn against it;
- target side (`--target`): for each run a fresh `nvmf target` of one build
  serves, and the same `nvmf perf` (the second binary's) drives it.
The order alternates per pair.

usage: bench/host_ab.py [--target] A_NVMF B_NVMF PAIRS "PERF ARGS" [SECONDS]
e.g.   bench/host_ab.py /tmp/old/nvmf target/release/nvmf 12 "--rw read --bs 128k --iodepth 8"
       bench/host_ab.py --target /tmp/old/nvmf target/release/nvmf 12 "--rw write --bs 128k --iodepth 8"
Target on CPU 0 (poll mode, null namespace), perf on CPU 1 (poll mode).
"""
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import HOST_CPU, NQN, TARGET_CPU, free_port, stop, wait_port  # noqa: E402


def start_target(nvmf, port):
    tgt = subprocess.Popen(["taskset", "-c", TARGET_CPU, nvmf, "target", "--cores", TARGET_CPU, "--mode", "poll",
                            "--namespace", "null:1TiB", "--listen", "127.0.0.1:%d" % port, "--discovery-listen", "none"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, tgt)
    return tgt


def perf_iops(nvmf, port, secs, args):
    out = subprocess.run([nvmf, "perf", "-a", "127.0.0.1", "-s", str(port), "-n", NQN, "--cores", HOST_CPU,
                          "--mode", "poll", "--runtime", secs, "--output-format", "json"] + args,
                         capture_output=True, text=True, timeout=int(secs) + 90).stdout
    return json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])["iops"]


def main():
    argv = sys.argv[1:]
    target_side = bool(argv) and argv[0] == "--target"
    if target_side:
        argv = argv[1:]
    if len(argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    bins = {"A": argv[0], "B": argv[1]}
    pairs, args = int(argv[2]), argv[3].split()
    secs = argv[4] if len(argv) > 4 else "2"
    res = {"A": [], "B": []}
    if target_side:
        for p in range(pairs):
            for n in ("A", "B") if p % 2 == 0 else ("B", "A"):
                port = free_port()
                tgt = start_target(bins[n], port)
                try:
                    res[n].append(perf_iops(bins["B"], port, secs, args))
                finally:
                    stop(tgt)
    else:
        port = free_port()
        tgt = start_target(bins["A"], port)
        try:
            for p in range(pairs):
                for n in ("A", "B") if p % 2 == 0 else ("B", "A"):
                    res[n].append(perf_iops(bins[n], port, secs, args))
        finally:
            stop(tgt)
    ratios = [b / a for a, b in zip(res["A"], res["B"])]
    for n in ("A", "B"):
        print("%s %s: median %.0f IOPS %s" % (n, bins[n], statistics.median(res[n]), [round(v) for v in res[n]]))
    print("B/A per pair %s, median %.3f" % ([round(r, 2) for r in ratios], statistics.median(ratios)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
