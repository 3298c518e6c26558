#!/usr/bin/env bash
# Ping-pong comparison: C (bench/pingpong.c), Rust raw-syscall twin, and the engine-based server.
# usage: bench/pingpong/run.sh [SECONDS] [ROUNDS] [SERVERS...]
#   SERVERS: any of c rust engine-poll engine-interrupt engine-poll-zc engine-interrupt-zc
#            (default: c rust engine-poll engine-interrupt; -zc = answer with send_borrowed)
#   SCEN env: override scenarios, e.g. SCEN="72 4120 p 1;72 4120 p 32"
# Server pinned to CPU 0, client pinned to CPU 1. The client is always the same
# kind as the server for c/rust; the engine servers are driven by the Rust client.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-2}; ROUNDS=${2:-1}; shift $(( $# > 2 ? 2 : $# )) || true
SERVERS=${*:-"c rust engine-poll engine-interrupt"}
C_SRC=${PINGPONG_C:-/work/shared/bench/pingpong.c}
OUT=${OUT:-target/pingpong}
mkdir -p "$OUT"
if [ -f "$C_SRC" ]; then gcc -O2 -o "$OUT/pingpong_c" "$C_SRC"; fi
cargo build --release -q -p nvmf-engine --bin nvmf-pingpong
RS=target/release/nvmf-pingpong
PORT=$((20000 + RANDOM % 20000))

# scenario: REQ RESP CLIENT_MODE QD
if [ -n "${SCEN:-}" ]; then IFS=';' read -r -a SCEN <<< "$SCEN"; else
SCEN=("72 4120 p 1" "72 4120 b 1" "72 4120 p 32" "72 4120 b 32" "4168 24 p 32" "4168 24 b 32" "72 131072 p 8" "72 131072 b 8"); fi

SPID=
trap '[ -n "$SPID" ] && kill $SPID 2>/dev/null' EXIT INT TERM PIPE
run_one() { # server-kind req resp cmode qd
  local kind=$1 req=$2 resp=$3 cm=$4 qd=$5 spid
  PORT=$((PORT + 1))
  case $kind in
    c) taskset -c 0 "$OUT/pingpong_c" s $PORT $req $resp $cm & spid=$!; cli=("$OUT/pingpong_c" c) ;;
    rust) taskset -c 0 $RS s $PORT $req $resp $cm & spid=$!; cli=($RS c) ;;
    engine-poll) $RS e $PORT $req $resp poll --core 0 2>/dev/null & spid=$!; cli=($RS c) ;;
    engine-interrupt) $RS e $PORT $req $resp interrupt --core 0 2>/dev/null & spid=$!; cli=($RS c) ;;
    engine-poll-zc) $RS e $PORT $req $resp poll --core 0 --zc 2>/dev/null & spid=$!; cli=($RS c) ;;
    engine-interrupt-zc) $RS e $PORT $req $resp interrupt --core 0 --zc 2>/dev/null & spid=$!; cli=($RS c) ;;
  esac
  SPID=$spid
  sleep 0.3
  printf '%-17s ' "$kind"
  taskset -c 1 "${cli[@]}" $PORT $req $resp $cm $SECS $qd || true
  kill $spid 2>/dev/null || true; wait $spid 2>/dev/null || true
  SPID=
}

for r in $(seq "$ROUNDS"); do
  for sc in "${SCEN[@]}"; do
    for k in $SERVERS; do run_one $k $sc; done
  done
done
