#!/usr/bin/env bash
# nvmf benchmark: builds release binaries, then runs the whole matrix on this
# machine (target pinned to CPU 0, `nvmf perf` pinned to CPU 1, null namespace,
# loopback) next to the raw-TCP ping-pong limit of the same message sizes.
#
# usage: bench/run.sh [--quick] [--repeat N] [--runtime S] [--json] [--rows k1,k2] [--no-digests] [--no-rss] [--nice N]
#   --quick      1 s per run, one repeat, no RSS section (smoke test)
#   --repeat N   N rounds; limit and rows alternate order each round; medians reported
#   --limits-only only the ping-pong part
#   --nice N     run limits and rows at nice N (e.g. -20 when the machine is shared)
#   --json       also print all results as one JSON object on stdout (table goes to stderr)
# Results are also written to target/bench/results-<time>.json.
# Environment: NVMF_BENCH_NQN (subsystem NQN of `nvmf target`'s default
# subsystem), PINGPONG_C (C ping-pong source used only if nvmf-pingpong is missing).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(nproc)" -lt 2 ]; then echo "bench/run.sh needs at least 2 CPUs (target on 0, host on 1)" >&2; exit 2; fi
command -v taskset >/dev/null || { echo "taskset (util-linux) is required" >&2; exit 2; }
cargo build --release -q -p nvmf --bin nvmf
cargo build --release -q -p nvmf-engine --bin nvmf-pingpong || echo "nvmf-pingpong did not build; falling back to pingpong.c" >&2
exec python3 bench/bench.py "$@"
