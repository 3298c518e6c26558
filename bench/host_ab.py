#!/usr/bin/env python3
"""A/B two `nvmf` builds as the host against one target, alternated.

The machine flips between speed states within seconds, so two builds are
compared pairwise: one `nvmf target` (from the first binary) stays up, and
`nvmf perf` of each build runs in turn against it (order alternating per
pair); the per-pair ratio B/A of IOPS and its median are printed.

usage: bench/host_ab.py A_NVMF B_NVMF PAIRS "PERF ARGS" [SECONDS]
e.g.   bench/host_ab.py /tmp/old/nvmf target/release/nvmf 12 "--rw read --bs 128k --iodepth 8"
Target on CPU 0 (poll mode, null namespace), perf on CPU 1 (poll mode).
"""
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import HOST_CPU, NQN, TARGET_CPU, free_port, stop, wait_port  # noqa: E402


def main():
    if len(sys.argv) < 5:
        print(__doc__, file=sys.stderr)
        return 2
    bins = {"A": sys.argv[1], "B": sys.argv[2]}
    pairs, args = int(sys.argv[3]), sys.argv[4].split()
    secs = sys.argv[5] if len(sys.argv) > 5 else "2"
    port = free_port()
    tgt = subprocess.Popen(["taskset", "-c", TARGET_CPU, bins["A"], "target", "--cores", TARGET_CPU, "--mode", "poll",
                            "--namespace", "null:1TiB", "--listen", "127.0.0.1:%d" % port, "--discovery-listen", "none"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, tgt)
        res = {"A": [], "B": []}
        for p in range(pairs):
            for n in ("A", "B") if p % 2 == 0 else ("B", "A"):
                out = subprocess.run([bins[n], "perf", "-a", "127.0.0.1", "-s", str(port), "-n", NQN, "--cores", HOST_CPU,
                                      "--mode", "poll", "--runtime", secs, "--output-format", "json"] + args,
                                     capture_output=True, text=True, timeout=int(secs) + 90).stdout
                res[n].append(json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])["iops"])
    finally:
        stop(tgt)
    ratios = [b / a for a, b in zip(res["A"], res["B"])]
    for n in ("A", "B"):
        print("%s %s: median %.0f IOPS %s" % (n, bins[n], statistics.median(res[n]), [round(v) for v in res[n]]))
    print("B/A per pair %s, median %.3f" % ([round(r, 2) for r in ratios], statistics.median(ratios)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
