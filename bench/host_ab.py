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
import random
import socket
import statistics
import subprocess
import sys
import time

NQN = "nqn.2026-11.io.nvmf:default"


def main():
    if len(sys.argv) < 5:
        print(__doc__, file=sys.stderr)
        return 2
    bins = {"A": sys.argv[1], "B": sys.argv[2]}
    pairs, args = int(sys.argv[3]), sys.argv[4].split()
    secs = sys.argv[5] if len(sys.argv) > 5 else "2"
    port = random.randint(20000, 30000)
    tgt = subprocess.Popen(["taskset", "-c", "0", bins["A"], "target", "--cores", "0", "--mode", "poll",
                            "--namespace", "null:1TiB", "--listen", "127.0.0.1:%d" % port, "--discovery-listen", "none"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        res = {"A": [], "B": []}
        for p in range(pairs):
            for n in ("A", "B") if p % 2 == 0 else ("B", "A"):
                out = subprocess.run([bins[n], "perf", "-a", "127.0.0.1", "-s", str(port), "-n", NQN, "--cores", "1",
                                      "--mode", "poll", "--runtime", secs, "--output-format", "json"] + args,
                                     capture_output=True, text=True, timeout=int(secs) + 90).stdout
                res[n].append(json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])["iops"])
    finally:
        tgt.terminate()
        tgt.wait()
    ratios = [b / a for a, b in zip(res["A"], res["B"])]
    for n in ("A", "B"):
        print("%s %s: median %.0f IOPS %s" % (n, bins[n], statistics.median(res[n]), [round(v) for v in res[n]]))
    print("B/A per pair %s, median %.3f" % ([round(r, 2) for r in ratios], statistics.median(ratios)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
