#!/usr/bin/env bash
# run.sh - nvmf's kernel interop suite: the nvmf target against the Linux 6.12
# NVMe/TCP host (nvme-cli, fio in a qemu guest) and the nvmf host CLI against the
# Linux kernel target (nvmet-tcp in a qemu guest).
#
#   tests/interop/run.sh [FILTER...]     run the cases whose name contains a FILTER
#   tests/interop/run.sh --list          list the cases
#
# One line per case: "PASS name (Ns)", "FAIL name (Ns)" + the tail of its log, or
# "SKIP name (reason)"; last line "N passed, M failed". Exit 1 if anything failed.
#
# Env: NVMF_BIN            nvmf binary (default <repo>/target/release/nvmf; built with
#                          `cargo build --release` if that default is missing)
#      NVMF_INTEROP_CACHE  image/cache dir (default ~/.cache/nvmf-interop; setup.sh)
#      NVMF_INTEROP_LOGDIR logs (default tests/interop/.run/<timestamp>, .run/latest)
#      NVMF_INTEROP_SETUP  1 (default): run setup.sh first (idempotent, ~5 s when cached)
#      NVMF_INTEROP_REF=1  also run the target-side guest checks against the kernel
#                          target inside the guest (validates the checks themselves)
#      NVMF_INTEROP_FIO_RUNTIME (20), NVMF_INTEROP_PERF_RUNTIME (20) seconds
# Every host-side address is 127.0.0.1; the guest only reaches forwarded ports.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source=lib.sh
source "$HERE/lib.sh"
export PATH=$PATH:/usr/sbin:/sbin

FIO_RUNTIME=${NVMF_INTEROP_FIO_RUNTIME:-20}
PERF_RUNTIME=${NVMF_INTEROP_PERF_RUNTIME:-20}
SUBNQN_A=nqn.2026-11.io.nvmf:a
SUBNQN_B=nqn.2026-11.io.nvmf:b
SUBNQN_FILE=nqn.2026-11.io.nvmf:file
SUBNQN_RESTRICTED=nqn.2026-11.io.nvmf:restricted
SUBNQN_AUTH=nqn.2026-12.io.nvmf:auth
ALLOWED_HOSTNQN=nqn.2026-11.io.nvmf:host:allowed
KT_NQN1=nqn.2026-11.io.nvmf:kernel-target:one
KT_NQN2=nqn.2026-11.io.nvmf:kernel-target:two
KT_NQN3=nqn.2026-11.io.nvmf:kernel-target:restricted
KT_SERIAL=NVMFINTEROPSN
KT_MODEL=nvmf-interop-kernel-target

# ------------------------------------------------------------------ case table
# name | group | nvmf subcommands needed | timeout (s) | function
CASES=(
    "kernel-loopback|target||240|c_kernel_loopback"
    "guestfwd|target||60|c_guestfwd"
    "target-discover|target|target:--config|90|c_target_discover"
    "target-connect-queues|target|target:--config|120|c_target_connect_queues"
    "target-connect-digests|target|target:--config|150|c_target_connect_digests"
    "target-identify|target|target:--config|90|c_target_identify"
    "target-fio-verify|target|target:--config|240|c_target_fio"
    "target-pattern-ram|target|target:--config|90|c_target_pattern_ram"
    "target-file-backend|target|target:--listen,--discovery-listen,--subsystem,--namespace|150|c_target_file_backend"
    "target-fs|target|target:--config|180|c_target_fs"
    "target-disconnect-clean|target|target:--config|90|c_target_disconnect_clean"
    "target-unknown-nqn|target|target:--config|90|c_target_unknown_nqn"
    "target-allow-host|target|target:--listen,--discovery-listen,--subsystem,--namespace,--allow-host|90|c_target_allow_host"
    "target-auth|target|target:--config|180|c_target_auth"
    "target-tls|target|target:--config,--tls|300|c_target_tls"
    "target-kill-mid-io|target|target:--config|180|c_target_kill_mid_io"
    "target-ublk|target|target:--config,--tls connect:--namespace,--nqn,--tls-key disconnect:--nqn list:--output-format|480|c_target_ublk"
    "target-ublk-kill|target|target:--config connect:--namespace disconnect:--nqn|240|c_target_ublk_kill"
    "mgmt-live-namespace|target|target:--rpc-socket ctl:--rpc-socket|240|c_mgmt_live_namespace"
    "mgmt-live-subsystem|target|target:--rpc-socket ctl:--rpc-socket|150|c_mgmt_live_subsystem"
    "mgmt-resize|target|target:--rpc-socket ctl:--rpc-socket|150|c_mgmt_resize"
    "target-ns-mask|target|target:--rpc-socket ctl:--rpc-socket|240|c_target_ns_mask"
    "mp-kernel-multipath|target|target:--rpc-socket ctl:--rpc-socket|300|c_mp_kernel_multipath"
    "kernel-hostfwd-icreq|host||60|c_kernel_hostfwd"
    "host-discover|host|discover:--output-format|60|c_host_discover"
    "host-identify|host|identify:--namespace,--output-format|90|c_host_identify"
    "host-hostnqn|host|identify:--hostnqn discover:--hostnqn,--output-format|90|c_host_hostnqn"
    "host-rw-64m|host|write:--namespace-id,--start-block,--block-count,--data read:--namespace-id,--start-block,--block-count,--data|240|c_host_rw"
    "host-perf-verify|host|perf:--rw,--bs,--iodepth,--nr-io-queues,--runtime,--verify,--size,--output-format|240|c_host_perf_plain"
    "host-perf-verify-digest|host|perf:--rw,--bs,--iodepth,--nr-io-queues,--runtime,--verify,--size,--output-format,--hdr-digest,--data-digest|240|c_host_perf_digest"
    "mp-host-ktarget|host|perf:--paths,--iopolicy,--verify,--output-format|200|c_mp_host_ktarget"
    "host-auth|host|identify:--dhchap-secret,--dhchap-ctrl-secret gen-dhchap-key check-dhchap-key perf:--dhchap-secret|200|c_host_auth"
    "host-tls|host|identify:--tls,--tls-key,--tls-key-compat,--tls-identity-version,--tls-sha256-suite discover:--tls-key gen-tls-key check-tls-key perf:--tls-key|400|c_host_tls"
    "host-reconnect|host|perf:--rw,--bs,--iodepth,--nr-io-queues,--runtime,--verify,--size,--output-format|260|c_host_reconnect"
)
REF_CASES=(target-discover target-connect-queues target-connect-digests target-identify
    target-fio-verify target-pattern-ram target-fs target-disconnect-clean
    target-unknown-nqn target-kill-mid-io target-ublk)

# ------------------------------------------------------------------ helpers
say() { printf '%s\n' "$*"; }
ts() { date +%H:%M:%S; }
# Log lines for a case log go to stdout of the case (captured in its log file).
step() { printf '\n[%s] === %s\n' "$(ts)" "$*"; }
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# listening PORT: true once something listens on 127.0.0.1:PORT (or 0.0.0.0:PORT).
# Reads /proc/net/tcp instead of connecting: a probe connection would show up in
# the target's log as a broken connection.
listening() {
    local hex; hex=$(printf '%04X' "$1")
    awk -v p=":$hex" 'NR > 1 && $4 == "0A" && ($2 == "0100007F" p || $2 == "00000000" p) { f = 1 } END { exit !f }' /proc/net/tcp
}

# ------------------------------------------------------------------ nvmf binary
NVMF=${NVMF_BIN:-}
NVMF_HELP=
nvmf_prepare() {
    if [ -z "$NVMF" ]; then
        NVMF=$REPO/target/release/nvmf
        if [ ! -x "$NVMF" ]; then
            say "[interop] $NVMF missing: cargo build --release (log: $LOGROOT/cargo-build.log)"
            (cd "$REPO" && timeout 3000 cargo build --release) >"$LOGROOT/cargo-build.log" 2>&1 ||
                { say "[interop] cargo build --release failed:"; tail -n 20 "$LOGROOT/cargo-build.log"; }
        fi
    fi
    case $NVMF in /*) ;; *) NVMF=$REPO/$NVMF ;; esac
    if [ -x "$NVMF" ]; then
        # a private copy: a concurrent `cargo build` must not swap it mid-run
        cp "$NVMF" "$STATE/nvmf" && NVMF=$STATE/nvmf
        NVMF_HELP=$(timeout 10 "$NVMF" help 2>&1 || true)
        say "[interop] nvmf: $NVMF ($(nvmf_cmds | tr '\n' ' '))"
    else
        say "[interop] nvmf: $NVMF not available"
    fi
}
# subcommands listed by `nvmf help` (clap: "  name   description" lines)
nvmf_cmds() {
    printf '%s\n' "$NVMF_HELP" | awk '/^[A-Za-z]+:/ { sec = $1 } sec == "Commands:" && /^  [a-z]/ { print $1 }'
}
has_cmd() { nvmf_cmds | grep -qx "$1"; }
# has_flags CMD FLAG,FLAG..: `nvmf CMD --help` mentions every FLAG (cached per CMD)
has_flags() {
    local f h=$STATE/help.$1
    [ -e "$h" ] || timeout 10 "$NVMF" "$1" --help >"$h" 2>&1 || true
    for f in ${2//,/ }; do grep -qE -- "(^|[^a-z-])$f([^a-z-]|$)" "$h" || { echo "$f"; return 1; }; done
}

# ------------------------------------------------------------------ VM handling
VM=("$HERE/vm.sh")
# vm_env GROUP: environment of the group's VM instance
vm_env() {
    local g=$1
    case $g in
    target)
        export NVMF_INTEROP_NAME=nvmf-target-$RUNID NVMF_INTEROP_SMP=4 NVMF_INTEROP_HOSTFWD=
        NVMF_INTEROP_GUESTFWD=$(cat "$STATE/target.guestfwd" 2>/dev/null || true)
        export NVMF_INTEROP_GUESTFWD
        ;;
    host)
        export NVMF_INTEROP_NAME=nvmf-host-$RUNID NVMF_INTEROP_SMP=2 NVMF_INTEROP_GUESTFWD=
        NVMF_INTEROP_HOSTFWD=$(cat "$STATE/host.hostfwd" 2>/dev/null || true)
        export NVMF_INTEROP_HOSTFWD
        ;;
    esac
}
# vm_boot GROUP: (re)start the group's VM; guest setup script from $STATE/GROUP.boot.sh
vm_boot() {
    local g=$1 args=()
    vm_env "$g"
    "${VM[@]}" stop >/dev/null 2>&1 || true
    local f
    if [ "$g" = target ]; then for f in "$STATE"/files/*; do args+=(-f "$f"); done; fi
    timeout 200 "${VM[@]}" start -t 150 "${args[@]}" "$STATE/$g.boot.sh"
}
vm_down() {
    vm_env "$1"
    timeout 60 "${VM[@]}" stop >/dev/null 2>&1 || true
    # keep the kernel console and socat's errors with the run's logs
    local d=$LAB_CACHE/vm/$NVMF_INTEROP_NAME
    [ -f "$d/console.log" ] && tr -d '\r' <"$d/console.log" >"$LOGROOT/$1-console.log"
    [ -s "$d/guestfwd.log" ] && cp "$d/guestfwd.log" "$LOGROOT/$1-guestfwd.log"
    # qemu's own messages (why it exited, when it did)
    [ -s "$d/qemu.log" ] && cp "$d/qemu.log" "$LOGROOT/$1-qemu.log"
    "${VM[@]}" status >/dev/null 2>&1 || rm -rf "${LAB_CACHE:?}/vm/$NVMF_INTEROP_NAME"
}
# VM instances are per run (name suffix = this run's pid), so that two runs on one
# machine never stop each other's VMs. Drop state dirs of dead runs (no qemu left).
vm_gc() {
    local d pid
    for d in "$LAB_CACHE"/vm/nvmf-target-* "$LAB_CACHE"/vm/nvmf-host-*; do
        [ -d "$d" ] || continue
        pid=${d##*-}
        kill -0 "$pid" 2>/dev/null && continue
        NVMF_INTEROP_NAME=${d##*/} "${VM[@]}" status >/dev/null 2>&1 || rm -rf "$d"
    done
}

# gexec GROUP TIMEOUT CASE_SCRIPT [VAR=VALUE...]: run cases/CASE_SCRIPT in the
# group's VM with the variables exported. On a timeout or lost agent the VM is
# marked dirty and rebooted before the next case (a hung guest command would
# otherwise block every later exec).
gexec() {
    local g=$1 t=$2 script=$3 kv rc=0
    shift 3
    vm_env "$g"
    {
        for kv in "$@"; do
            printf "export %s='%s'\n" "${kv%%=*}" "$(printf '%s' "${kv#*=}" | sed "s/'/'\\\\''/g")"
        done
        cat "$HERE/cases/$script"
    } >"$STATE/exec.sh"
    "${VM[@]}" exec -t "$t" "$STATE/exec.sh" || rc=$?
    if [ "$rc" = 124 ] || [ "$rc" = 125 ]; then
        echo "[interop] guest exec rc=$rc: VM marked for reboot"
        touch "$STATE/$g.dirty"
    fi
    return "$rc"
}
# gsh GROUP TIMEOUT: run stdin as a guest script (small inline commands)
gsh() {
    local rc=0
    vm_env "$1"
    "${VM[@]}" exec -t "$2" - || rc=$?
    if [ "$rc" = 124 ] || [ "$rc" = 125 ]; then touch "$STATE/$1.dirty"; fi
    return "$rc"
}

# ------------------------------------------------------------------ nvmf target processes
# tstart NAME ARGS...: start `nvmf target ARGS` in the background, stderr+stdout to
# $LOGROOT/NAME.log (appended across restarts), pid in $STATE/NAME.pid, exit status
# in $STATE/NAME.rc when it ends. Waits until every --listen/--discovery-listen/config
# port listens (30 s), else fails.
tstart() {
    local name=$1 p
    shift
    rm -f "$STATE/$name.rc" "$STATE/$name.pid"
    printf '\n===== %s: nvmf target %s\n' "$(ts)" "$*" >>"$LOGROOT/$name.log"
    # The supervisor is a fresh bash (exec'd, not a forked subshell) that first closes
    # every inherited fd above 2: a forked subshell would keep copies of the caller's
    # pipes (e.g. a CI `| tee`) open for the target's whole life.
    # shellcheck disable=SC2016  # expanded by the inner bash
    # Each target its own management socket unless the case gives one: the
    # default path is taken by the first target (and a second one fails).
    case " $* " in *" --rpc-socket "*) ;; *) set -- "$@" --rpc-socket "$STATE/$name.sock" ;; esac
    bash -c 'for fd in /proc/$$/fd/*; do n=${fd##*/}; [ "$n" -gt 2 ] && eval "exec $n>&-"; done
        NO_COLOR=1 "$1" target "${@:4}" </dev/null >>"$2" 2>&1 &
        echo $! >"$3.pid"
        rc=0; wait $! || rc=$?
        echo "$rc" >"$3.rc"' nvmf-target-supervisor "$NVMF" "$LOGROOT/$name.log" "$STATE/$name" "$@" \
        </dev/null >/dev/null 2>&1 &
    for _ in $(seq 100); do [ -s "$STATE/$name.pid" ] && break; sleep 0.05; done
    for _ in $(seq 300); do
        local all=1
        for p in $(cat "$STATE/$name.ports"); do listening "$p" || all=0; done
        [ $all = 1 ] && { echo "[interop] $name (pid $(cat "$STATE/$name.pid")) listening on $(cat "$STATE/$name.ports")"; return 0; }
        [ -e "$STATE/$name.rc" ] && break
        sleep 0.1
    done
    echo "[interop] $name did not come up (rc=$(cat "$STATE/$name.rc" 2>/dev/null || echo running)); log tail:"
    tail -n 20 "$LOGROOT/$name.log"
    tstop "$name" >/dev/null 2>&1 || true
    return 1
}
talive() { [ ! -e "$STATE/$1.rc" ] && [ -s "$STATE/$1.pid" ] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }
# tneed NAME: fail the case unless target NAME runs
tneed() {
    talive "$1" && return 0
    echo "nvmf target '$1' is not running (rc=$(cat "$STATE/$1.rc" 2>/dev/null || echo '?')); log tail:"
    tail -n 30 "$LOGROOT/$1.log" 2>/dev/null
    return 1
}
# tstop NAME [SIG]: signal the target, wait (15 s) for its exit status, print it
tstop() {
    local name=$1 sig=${2:-TERM} pid
    pid=$(cat "$STATE/$name.pid" 2>/dev/null) || return 0
    if [ ! -e "$STATE/$name.rc" ]; then
        kill "-$sig" "$pid" 2>/dev/null || true
        for _ in $(seq 150); do [ -e "$STATE/$name.rc" ] && break; sleep 0.1; done
        if [ ! -e "$STATE/$name.rc" ]; then
            echo "[interop] $name (pid $pid) ignored SIG$sig for 15 s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            for _ in $(seq 50); do [ -e "$STATE/$name.rc" ] && break; sleep 0.1; done
        fi
    fi
    cat "$STATE/$name.rc" 2>/dev/null || echo 137
}
# log_errors NAME: print ERROR / panic lines of a target log
# (tracing colours its level names even into a file: strip ANSI escapes first)
log_errors() {
    sed 's/\x1b\[[0-9;]*m//g' "$LOGROOT/$1.log" | grep -nE '(^|[^A-Za-z])ERROR([^A-Za-z]|$)|panicked|RUST_BACKTRACE' || true
}

# nvmf_guest_files: nvmf itself for cases that run it in the guest (target-ublk),
# stripped, with the host's libssl/libcrypto/libgcc_s beside it (the guest's glibc is
# at least the host's; the guest runs it with LD_LIBRARY_PATH=/lab/files/nvmf-lib)
nvmf_guest_files() {
    [ -x "$NVMF" ] || return 0
    mkdir -p "$STATE/files/nvmf-lib"
    strip -o "$STATE/files/nvmf" "$NVMF" 2>/dev/null || cp "$NVMF" "$STATE/files/nvmf"
    local l
    for l in $(ldd "$NVMF" | awk '$3 ~ /^\// { print $3 }' | grep -E 'lib(ssl|crypto|gcc_s)\.'); do
        cp -L "$l" "$STATE/files/nvmf-lib/"
    done
}

# ------------------------------------------------------------------ group: target
target_setup() {
    local try failed t
    for try in 1 2 3; do
        target_config
        [ -n "${NEED_TARGETS:-}" ] || break
        # (no $(...) here: anything started inside would hold its pipe open)
        target_start_all
        failed=$(cat "$STATE/targets.failed")
        [ -z "$failed" ] && break
        # A free port can be taken between free_port and the target's bind: then new
        # ports, again. Any other start failure fails only the cases using it (tneed).
        for t in $failed; do tail -n 5 "$LOGROOT/$t.log" | grep -qi 'in use' && continue 2; done
        break
    done
    vm_boot target
}
# target_start_all: start t1..t3; the names of those that did not come up go to
# $STATE/targets.failed
target_start_all() {
    local t f=$STATE/targets.failed
    . "$STATE/target.env"
    : >"$f"
    for t in t1 t2 t3; do [ -e "$STATE/$t.pid" ] && tstop "$t" >/dev/null; done
    tstart t1 --config "$STATE/t1.toml" || echo t1 >>"$f"
    tstart t2 --listen "127.0.0.1:$PF" --discovery-listen "127.0.0.1:$PFD" \
        --subsystem "$SUBNQN_FILE" --namespace "file:$STATE/file-ns.img" || echo t2 >>"$f"
    tstart t3 --listen "127.0.0.1:$PH" --discovery-listen "127.0.0.1:$PHD" \
        --subsystem "$SUBNQN_RESTRICTED" --namespace ram:64MiB \
        --allow-host "$ALLOWED_HOSTNQN" || echo t3 >>"$f"
}
# target_config: pick ports, write t1.toml, guest forwards, patterns, backing file
target_config() {
    local pa pd pf pfd ph phd pg pt
    pa=$(free_port) pd=$(free_port) pf=$(free_port) pfd=$(free_port)
    ph=$(free_port) phd=$(free_port) pg=$(free_port) pt=$(free_port)
    echo "PA=$pa PD=$pd PF=$pf PFD=$pfd PH=$ph PHD=$phd PG=$pg PT=$pt" >"$STATE/target.env"
    # Guest port == host port: the guest dials 10.0.2.100:P for host 127.0.0.1:P, so
    # the trsvcid a discovery log reports for 127.0.0.1:P is usable as is in the guest.
    echo "$pa:$pa $pd:$pd $pf:$pf $ph:$ph $pg:$pg $pt:$pt" >"$STATE/target.guestfwd"
    # host-made patterns, copied into the guest at boot (the host compares files with them)
    mkdir -p "$STATE/files"
    [ -s "$STATE/files/pat8" ] || head -c $((8 << 20)) /dev/urandom >"$STATE/files/pat8"
    [ -s "$STATE/files/pat8b" ] || head -c $((8 << 20)) /dev/urandom >"$STATE/files/pat8b"
    printf '#!/bin/sh\necho "guest up: $(uname -r), $(nproc) vCPUs"\n' >"$STATE/target.boot.sh"
    nvmf_guest_files

    # TOML for the main target (schema agreed with the target engineers; see README):
    # two subsystems, three namespaces: RAM 512 B, RAM 4 KiB blocks, null 1 TiB.
    echo "$pa $pd $pt" >"$STATE/t1.ports"
    cat >"$STATE/t1.toml" <<EOF
# nvmf target config used by tests/interop/run.sh (target-* cases)
[[listener]]
addr = "127.0.0.1:$pa"

[discovery]
listen = ["127.0.0.1:$pd"]

[[subsystem]]
nqn = "$SUBNQN_A"
allow_any_host = true
[[subsystem.namespace]]
kind = "ram"
size = "256MiB"
block_size = 512

[[subsystem]]
nqn = "$SUBNQN_B"
allow_any_host = true
[[subsystem.namespace]]
kind = "ram"
size = "64MiB"
block_size = 4096
[[subsystem.namespace]]
kind = "null"
size = "1TiB"
block_size = 512
EOF
    auth_config
    tls_config "$pt"
    echo "$pf $pfd" >"$STATE/t2.ports"
    echo "$ph $phd" >"$STATE/t3.ports"
    rm -f "$STATE/file-ns.img"
    truncate -s 64M "$STATE/file-ns.img"
    mgmt_config
    mp_config
}
target_teardown() {
    vm_down target
    local t; for t in t1 t2 t3 t4 t5; do [ -e "$STATE/$t.pid" ] && tstop "$t" >/dev/null; done
    return 0
}
tenv() { # load the port variables
    # shellcheck disable=SC1091
    . "$STATE/target.env"
}
G=10.0.2.100   # host services as seen from the guest
# live-management cases (mgmt-*): host side, target t4
. "$HERE/cases/mgmt-host.sh"
# multipath cases (mp-*): host side, target t5
. "$HERE/cases/mp-host.sh"
# DH-HMAC-CHAP against the kernel target (host-auth): host side
. "$HERE/cases/auth-host.sh"
# TLS from the kernel host (target-tls): host side
. "$HERE/cases/tls-target.sh"
# NVMe/TCP TLS against the kernel target (host-tls): host side
. "$HERE/cases/tls-host.sh"

c_kernel_loopback() {
    # Guest checks of the target-* cases (discover, identify, pattern) against the in-guest kernel target
    # (127.0.0.1:4420 inside the guest): proves the checks and the guest tooling.
    local kt="$SUBNQN_A:256:512 $SUBNQN_B:64:4096"
    step "kernel target in the guest"
    gexec target 60 ktarget.sh "KT_SUBSYS=$kt" "KT_PORTS=4420"
    step "discover"
    gexec target 60 discover.sh TADDR=127.0.0.1 DPORT=4420 "EXP_NQNS=$SUBNQN_A $SUBNQN_B" \
        EXP_TRSVCID=4420 EXP_TRADDR=127.0.0.1
    step "identify"
    gexec target 60 identify.sh TADDR=127.0.0.1 PORT=4420 \
        "NQNS=$SUBNQN_A:1:268435456:512 $SUBNQN_B:1:67108864:4096"
    step "pattern"
    gexec target 60 pattern.sh TADDR=127.0.0.1 PORT=4420 NQN=$SUBNQN_A PAT=/lab/files/pat8 SEEK_MB=3 MODE=write
    # (fio is left to NVMF_INTEROP_REF=1: it costs 15-30 s under TCG in every run)
    step "clear the kernel target"
    gexec target 30 ktarget.sh KT_SUBSYS= KT_PORTS=
}

c_guestfwd() {
    # The port plumbing of the target cases: a host listener on 127.0.0.1:PG is
    # reached from the guest as 10.0.2.100:PG (guest port == host port).
    tenv
    local tok; tok=guestfwd-$RANDOM$RANDOM
    timeout 40 python3 -c '
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(1); s.settimeout(35)
c, _ = s.accept(); c.sendall((sys.argv[2] + "\n").encode()); c.close()' "$PG" "$tok" &
    local lp=$!
    for _ in $(seq 50); do listening "$PG" && break; sleep 0.1; done
    local out
    out=$(printf 'nc -w 5 %s %s </dev/null\n' "$G" "$PG" | gsh target 30) || true
    wait "$lp" || true
    echo "guest read: '$out' (want '$tok')"
    [ "$out" = "$tok" ]
}

c_target_discover() {
    tenv; tneed t1 || return 1
    # The discovery log reports the target's own listener, 127.0.0.1:PA; the guest
    # reaches the same port as 10.0.2.100:PA. Asserted per subsystem: an
    # "nvme subsystem" entry, trtype tcp, traddr 127.0.0.1, trsvcid PA.
    gexec target 60 discover.sh TADDR=$G DPORT="$PD" "EXP_NQNS=$SUBNQN_A $SUBNQN_B" \
        EXP_TRSVCID="$PA" EXP_TRADDR=127.0.0.1
}
c_target_connect_queues() {
    tenv; tneed t1 || return 1
    gexec target 100 connect.sh TADDR=$G PORT="$PA" NQN=$SUBNQN_A MODE=queues
}
c_target_connect_digests() {
    tenv; tneed t1 || return 1
    gexec target 130 connect.sh TADDR=$G PORT="$PA" NQN=$SUBNQN_A MODE=digests
}
c_target_identify() {
    tenv; tneed t1 || return 1
    gexec target 80 identify.sh TADDR=$G PORT="$PA" \
        "NQNS=$SUBNQN_A:1:268435456:512 $SUBNQN_B:1:67108864:4096 $SUBNQN_B:2:1099511627776:512"
}
c_target_fio() {
    tenv; tneed t1 || return 1
    gexec target $((FIO_RUNTIME + 150)) fio.sh TADDR=$G PORT="$PA" NQN=$SUBNQN_A \
        RUNTIME="$FIO_RUNTIME" SIZE=128M
}
c_target_pattern_ram() {
    tenv; tneed t1 || return 1
    gexec target 80 pattern.sh TADDR=$G PORT="$PA" NQN=$SUBNQN_A PAT=/lab/files/pat8 SEEK_MB=5 MODE=write
}
c_target_file_backend() {
    tenv; tneed t2 || return 1
    local img=$STATE/file-ns.img rc
    step "guest writes pat8b at 4 MiB of the file-backed namespace"
    gexec target 80 pattern.sh TADDR=$G PORT="$PF" NQN=$SUBNQN_FILE PAT=/lab/files/pat8b SEEK_MB=4 MODE=write
    step "host side: the same bytes are in $img"
    cmp <(dd if="$img" bs=1M skip=4 count=8 status=none) "$STATE/files/pat8b"
    echo "cmp: bytes 4..12 MiB of the backing file == pattern ($(sha256sum <"$STATE/files/pat8b" | cut -c1-16))"
    step "restart the target (SIGTERM must exit 0)"
    rc=$(tstop t2 TERM)
    echo "exit status after SIGTERM: $rc"
    [ "$rc" = 0 ] || { tail -n 20 "$LOGROOT/t2.log"; return 1; }
    cmp <(dd if="$img" bs=1M skip=4 count=8 status=none) "$STATE/files/pat8b"
    tstart t2 --listen "127.0.0.1:$PF" --discovery-listen "127.0.0.1:$PFD" \
        --subsystem "$SUBNQN_FILE" --namespace "file:$img"
    step "reconnect: the pattern is still there"
    gexec target 80 pattern.sh TADDR=$G PORT="$PF" NQN=$SUBNQN_FILE PAT=/lab/files/pat8b SEEK_MB=4 MODE=read
}
c_target_fs() {
    tenv; tneed t1 || return 1
    gexec target 160 fs.sh TADDR=$G PORT="$PA" NQN=$SUBNQN_A NFILES=24
}
c_target_ublk() {
    tenv; tneed t1 || return 1
    [ -x "$STATE/files/nvmf" ] || { echo "no nvmf binary for the guest"; return 1; }
    # t1's TLS listener and keys (tls_config): the TLS step uses host TH1
    local kv=()
    kv=($(grep -oE '^(TH1|TK1)=[^ ]*' "$STATE/tls.env"))
    gexec target $((FIO_RUNTIME + 420)) ublk.sh TADDR=$G PORT="$PA" NQN=$SUBNQN_A NQN4K=$SUBNQN_B \
        RUNTIME="$FIO_RUNTIME" NFILES=12 PT="$PT" NQN_TLS=$SUBNQN_TLS "${kv[@]}"
}
c_target_ublk_kill() {
    tenv; tneed t1 || return 1
    [ -x "$STATE/files/nvmf" ] || { echo "no nvmf binary for the guest"; return 1; }
    local pids
    gexec target 90 ublk-kill.sh TADDR=$G PORT="$PA" NQN=$SUBNQN_A PHASE=start || return 1
    pids=$(socat_pids "$PA" | tr '\n' ' ')
    echo "socat processes carrying 10.0.2.100:$PA: ${pids:-none}"
    [ -n "$pids" ] || return 1
    # shellcheck disable=SC2086  # (one may have ended on its own meanwhile)
    kill -KILL $pids 2>/dev/null || true
    gexec target 150 ublk-kill.sh TADDR=$G PORT="$PA" NQN=$SUBNQN_A PHASE=finish || return 1
    talive t1 || { echo "target died"; return 1; }
}
c_target_disconnect_clean() {
    tenv; tneed t1 || return 1
    gexec target 80 disconnect.sh TADDR=$G PORT="$PA" "NQNS=$SUBNQN_A $SUBNQN_B"
    talive t1 || { echo "t1 died"; return 1; }
    # Everything so far was legal host behaviour: no ERROR (or panic) in the logs.
    local t bad=0
    for t in t1 t2; do
        [ -e "$LOGROOT/$t.log" ] || continue
        if [ -n "$(log_errors "$t")" ]; then echo "ERROR lines in $t.log:"; log_errors "$t" | head -n 20; bad=1; fi
        echo "$t.log: $(wc -l <"$LOGROOT/$t.log") lines, $(log_errors "$t" | wc -l) ERROR/panic lines"
    done
    return $bad
}
c_target_unknown_nqn() {
    tenv; tneed t1 || return 1
    gexec target 80 negative.sh TADDR=$G PORT="$PA" NQN=$SUBNQN_A MODE=unknown-nqn
    talive t1
}
# DH-HMAC-CHAP: host tables of $SUBNQN_AUTH in t1.toml (auth_config), keys in auth.env
c_target_auth() {
    tenv; tneed t1 || return 1
    local kv=()
    # shellcheck disable=SC2207  # one KEY=VALUE per line
    kv=($(cat "$STATE/auth.env"))
    gexec target 150 auth.sh TADDR=$G PORT="$PA" NQN=$SUBNQN_AUTH "${kv[@]}"
    talive t1
}
# dhchap_key HH: a fresh DH-HMAC-CHAP secret in nvme-cli's format (DHHC-1, hash HH)
dhchap_key() {
    python3 -c 'import base64, os, sys, zlib
h = int(sys.argv[1]); s = os.urandom({0: 32, 1: 32, 2: 48, 3: 64}[h])
print("DHHC-1:%02d:%s:" % (h, base64.b64encode(s + zlib.crc32(s).to_bytes(4, "little")).decode()))' "$1"
}
# auth_config: the host tables of the auth subsystem (appended to t1.toml) and the
# keys the guest uses (auth.env)
auth_config() {
    local h1=nqn.2026-12.io.nvmf:host:auth1 h2=nqn.2026-12.io.nvmf:host:auth2
    local h3=nqn.2026-12.io.nvmf:host:auth3 h4=nqn.2026-12.io.nvmf:host:auth4
    local k1 k2 k3 k4 ck4 kx ckx
    k1=$(dhchap_key 1) k2=$(dhchap_key 3) k3=$(dhchap_key 0) k4=$(dhchap_key 2) ck4=$(dhchap_key 1)
    kx=$(dhchap_key 1) ckx=$(dhchap_key 1)
    cat >>"$STATE/t1.toml" <<EOF2

[[subsystem]]
nqn = "$SUBNQN_AUTH"
[[subsystem.host]]
nqn = "$h1"
dhchap_key = "$k1"
dhchap_hash = "sha256"
dhchap_dhgroup = "ffdhe2048"
[[subsystem.host]]
nqn = "$h2"
dhchap_key = "$k2"
dhchap_hash = "sha512"
dhchap_dhgroup = "ffdhe4096"
[[subsystem.host]]
nqn = "$h3"
dhchap_key = "$k3"
dhchap_dhgroup = "null"
[[subsystem.host]]
nqn = "$h4"
dhchap_key = "$k4"
dhchap_ctrl_key = "$ck4"
[[subsystem.namespace]]
kind = "ram"
size = "64MiB"
EOF2
    printf '%s\n' "H1=$h1" "H2=$h2" "H3=$h3" "H4=$h4" "K1=$k1" "K2=$k2" "K3=$k3" "K4=$k4" \
        "CK4=$ck4" "KX=$kx" "CKX=$ckx" >"$STATE/auth.env"
}
c_target_allow_host() {
    tenv; tneed t3 || return 1
    gexec target 80 negative.sh TADDR=$G PORT="$PH" NQN=$SUBNQN_RESTRICTED MODE=allow-host \
        ALLOWED=$ALLOWED_HOSTNQN
    talive t3
}
# socat_pids PORT: the guestfwd socat processes of our target VM for host PORT.
# slirp double-forks them (parent: init), so they are found by their exact command
# line, which names this VM instance's own log file (see vm.sh qemu_cmd).
socat_pids() {
    local want p
    want="socat -lf $LAB_CACHE/vm/nvmf-target-$RUNID/guestfwd.log - TCP4:127.0.0.1:$1 "
    for p in /proc/[0-9]*; do
        [ "$(tr '\0' ' ' 2>/dev/null <"$p/cmdline")" = "$want" ] && echo "${p#/proc/}"
    done
    return 0
}
c_target_kill_mid_io() {
    tenv; tneed t1 || return 1
    local pids
    step "1: kill the TCP connections (guestfwd socat) under a running fio"
    gexec target 60 killio.sh TADDR=$G PORT="$PA" NQN=$SUBNQN_A NQN2=$SUBNQN_B PHASE=start
    pids=$(socat_pids "$PA" | tr '\n' ' ')
    echo "socat processes carrying 10.0.2.100:$PA: ${pids:-none}"
    [ -n "$pids" ] || return 1
    # shellcheck disable=SC2086  # (one may have ended on its own meanwhile)
    kill -KILL $pids 2>/dev/null || true
    talive t1 || { echo "target died"; return 1; }
    gexec target 120 killio.sh TADDR=$G PORT="$PA" NQN=$SUBNQN_A NQN2=$SUBNQN_B PHASE=finish
    talive t1 || { echo "target died"; return 1; }
    step "2: nvme disconnect while fio runs"
    gexec target 60 killio.sh TADDR=$G PORT="$PA" NQN=$SUBNQN_A NQN2=$SUBNQN_B PHASE=start
    gexec target 60 killio.sh TADDR=$G PORT="$PA" NQN=$SUBNQN_A NQN2=$SUBNQN_B PHASE=disconnect
    gexec target 120 killio.sh TADDR=$G PORT="$PA" NQN=$SUBNQN_A NQN2=$SUBNQN_B PHASE=finish
    talive t1 || { echo "target died"; return 1; }
    echo "target t1 (pid $(cat "$STATE/t1.pid")) still alive and serving"
}

# ------------------------------------------------------------------ group: host
# The kernel target in the host guest: port 1 (4420) links and its ANA state.
kt_port1_unlink() {
    gsh host 30 <<EOF || true
N=/sys/kernel/config/nvmet
rm -f \$N/ports/1/subsystems/*; echo "port 1 links: \$(ls \$N/ports/1/subsystems | wc -l)"
EOF
}
kt_port1_link_all() {
    gsh host 30 <<EOF || true
N=/sys/kernel/config/nvmet
for s in \$N/subsystems/*; do ln -s \$s \$N/ports/1/subsystems/\${s##*/}; done
echo "port 1 links: \$(ls \$N/ports/1/subsystems | wc -l)"; dmesg | grep nvmet | tail -n 5
EOF
}
# kt_set_ana STATE: ANA group 1 of port 1
kt_set_ana() {
    gsh host 30 <<EOF || true
N=/sys/kernel/config/nvmet
echo $1 >\$N/ports/1/ana_groups/1/ana_state; cat \$N/ports/1/ana_groups/1/ana_state
EOF
}

host_setup() {
    local h1 h2 try
    {
        printf 'export KT_SUBSYS="%s" KT_PORTS="4420 8009" KT_SERIAL=%s KT_MODEL=%s KT_RESTRICT="%s"\n' \
            "$KT_NQN1:128:512 $KT_NQN2:64:512 $KT_NQN3:32:512" "$KT_SERIAL" "$KT_MODEL" \
            "$KT_NQN3|$ALLOWED_HOSTNQN"
        cat "$HERE/cases/ktarget.sh"
    } >"$STATE/host.boot.sh"
    for try in 1 2 3; do
        h1=$(free_port) h2=$(free_port) h3=$(free_port)
        echo "H1=$h1 H2=$h2 H3=$h3" >"$STATE/host.env"
        # H3: the TLS port the host-tls case adds (guest 4421)
        echo "$h1:4420 $h2:8009 $h3:4421" >"$STATE/host.hostfwd"
        vm_boot host >"$STATE/host-boot.out" 2>&1 && { cat "$STATE/host-boot.out"; return 0; }
        cat "$STATE/host-boot.out"
        # qemu binds the hostfwd ports: one may have been taken since free_port
        grep -qiE 'host forwarding|in use' "$STATE/host-boot.out" || return 1
        echo "[interop] hostfwd port clash, new ports (try $try)"
    done
    return 1
}
host_teardown() { vm_down host; }
henv() {
    # shellcheck disable=SC1091
    . "$STATE/host.env"
}
# nv ARGS...: run the nvmf CLI bounded, show the command
nv() {
    local t=$1; shift
    echo "+ nvmf $*" >&2
    timeout -k 5 "$t" "$NVMF" "$@"
}

c_kernel_hostfwd() {
    henv
    python3 "$HERE/tools/icreq_probe.py" 127.0.0.1 "$H1" &&
        python3 "$HERE/tools/icreq_probe.py" 127.0.0.1 "$H2" --hdgst --ddgst
}
c_host_discover() {
    henv
    local out
    out=$(nv 30 discover -a 127.0.0.1 -s "$H2") || { echo "$out"; return 1; }
    echo "$out"
    grep -qF "$KT_NQN1" <<<"$out" && grep -qF "$KT_NQN2" <<<"$out" || { echo "missing a subsystem"; return 1; }
    # nvmet lists only the subsystems this host may use: not the restricted one
    if grep -qF "$KT_NQN3" <<<"$out"; then echo "$KT_NQN3 listed for a host not allowed"; return 1; fi
    nv 30 discover -a 127.0.0.1 -s "$H2" --output-format json >"$STATE/disc.json" ||
        { cat "$STATE/disc.json"; return 1; }
    cat "$STATE/disc.json"
    python3 "$HERE/tools/jcheck.py" nqns "$STATE/disc.json" "$KT_NQN1" "$KT_NQN2"
}
c_host_identify() {
    henv
    local g sn mn fr out
    # the reference: nvme id-ctrl in the guest (kernel host over the guest loopback)
    g=$(gsh host 60 <<EOF
. /usr/share/lab/case.sh
cleanup_all
nconnect 127.0.0.1 4420 $KT_NQN1 >/dev/null || exit 1
c=\$(ctrl_of $KT_NQN1) || exit 1
nvme id-ctrl /dev/\$c >/tmp/ic || exit 1
echo "sn=\$(field /tmp/ic sn)"; echo "mn=\$(field /tmp/ic mn)"; echo "fr=\$(field /tmp/ic fr)"
cleanup_all
EOF
    ) || { echo "$g"; return 1; }
    echo "guest nvme id-ctrl: $(tr '\n' ' ' <<<"$g")"
    sn=$(sed -n 's/^sn=//p' <<<"$g") mn=$(sed -n 's/^mn=//p' <<<"$g") fr=$(sed -n 's/^fr=//p' <<<"$g")
    [ -n "$sn" ] && [ -n "$mn" ] || return 1
    out=$(nv 30 identify -a 127.0.0.1 -s "$H1" -n "$KT_NQN1") || { echo "$out"; return 1; }
    echo "$out"
    for v in "$sn" "$mn" "$fr"; do
        grep -qF "$v" <<<"$out" || { echo "nvmf identify does not show '$v'"; return 1; }
    done
    nv 30 identify -a 127.0.0.1 -s "$H1" -n "$KT_NQN1" --output-format json >"$STATE/id.json" ||
        { cat "$STATE/id.json"; return 1; }
    cat "$STATE/id.json"
    python3 "$HERE/tools/jcheck.py" values "$STATE/id.json" "$sn" "$mn" "$fr"
    out=$(nv 30 identify -a 127.0.0.1 -s "$H1" -n "$KT_NQN1" --namespace 1) || { echo "$out"; return 1; }
    echo "$out"
    # 128 MiB of 512 B blocks: nsze 262144 (0x40000) somewhere in the output
    grep -qE '262144|0x40000' <<<"$out" || { echo "namespace size 262144 blocks not shown"; return 1; }
}
c_host_hostnqn() {
    henv
    local out rc=0
    step "restricted subsystem, default host NQN: refused, cleanly"
    out=$(nv 30 identify -a 127.0.0.1 -s "$H1" -n "$KT_NQN3" 2>&1) || rc=$?
    echo "$out" | tail -n 5; echo "rc=$rc"
    host_clean_failure "$rc" "$out" || return 1
    step "the same with -q $ALLOWED_HOSTNQN: served"
    out=$(nv 30 identify -a 127.0.0.1 -s "$H1" -n "$KT_NQN3" -q "$ALLOWED_HOSTNQN") || { echo "$out"; return 1; }
    grep -E '^(sn|mn|subnqn) ' <<<"$out" || true
    grep -qF "$KT_SERIAL-2" <<<"$out" || { echo "serial $KT_SERIAL-2 not shown"; return 1; }
    step "discovery with --hostnqn lists the restricted subsystem"
    nv 30 discover -a 127.0.0.1 -s "$H2" --hostnqn "$ALLOWED_HOSTNQN" --output-format json >"$STATE/disc-q.json" ||
        { cat "$STATE/disc-q.json"; return 1; }
    python3 "$HERE/tools/jcheck.py" nqns "$STATE/disc-q.json" "$KT_NQN3"
    step "unknown subsystem NQN: refused, cleanly"
    rc=0; out=$(nv 30 identify -a 127.0.0.1 -s "$H1" -n nqn.2026-11.io.nvmf:does-not-exist 2>&1) || rc=$?
    echo "$out" | tail -n 5; echo "rc=$rc"
    host_clean_failure "$rc" "$out"
}
# host_clean_failure RC OUTPUT: an nvmf host command failed the way it should: a
# non-zero exit of its own (not a timeout or signal), no panic
host_clean_failure() {
    [ "$1" != 0 ] || { echo "succeeded, but must fail"; return 1; }
    [ "$1" -lt 124 ] || { echo "timeout or signal (rc=$1)"; return 1; }
    if grep -qE 'panicked|RUST_BACKTRACE' <<<"$2"; then echo "panic"; return 1; fi
    echo "failed cleanly (rc=$1)"
}
c_host_rw() {
    henv
    local d=$STATE/rw blocks=$((64 << 20 >> 9)) help cnt sum g
    mkdir -p "$d"
    head -c $((64 << 20)) /dev/urandom >"$d/pat"
    help=$(timeout 10 "$NVMF" write --help 2>&1 || true)
    cnt=$blocks
    # nvme-cli's --block-count is 0's based; follow the CLI's own help text
    if grep -qiE "zero(e)?s?[ -]based|0's based|0-based" <<<"$help"; then cnt=$((blocks - 1)); fi
    echo "64 MiB = $blocks blocks of 512 B; --block-count $cnt"
    nv 120 write -a 127.0.0.1 -s "$H1" -n "$KT_NQN1" --namespace-id 1 --start-block 0 \
        --block-count "$cnt" --data "$d/pat" || return 1
    nv 120 read -a 127.0.0.1 -s "$H1" -n "$KT_NQN1" --namespace-id 1 --start-block 0 \
        --block-count "$cnt" --data "$d/rb" || return 1
    cmp "$d/pat" "$d/rb" || return 1
    echo "read back 64 MiB: equal"
    nv 60 read -a 127.0.0.1 -s "$H1" -n "$KT_NQN1" --namespace-id 1 --start-block 8 \
        --block-count "$(( cnt == blocks ? 16 : 15 ))" --data - >"$d/stdout" || return 1
    cmp "$d/stdout" <(dd if="$d/pat" bs=512 skip=8 count=16 status=none) || return 1
    echo "--data - (stdout), 16 blocks at LBA 8: equal"
    nv 60 read -a 127.0.0.1 -s "$H1" -n "$KT_NQN1" --namespace-id 1 --start-block 1000 \
        --block-count "$(( cnt == blocks ? 2048 : 2047 ))" -g -G --data "$d/dg" || return 1
    cmp "$d/dg" <(dd if="$d/pat" bs=512 skip=1000 count=2048 status=none) || return 1
    echo "read with -g -G, 1 MiB at LBA 1000: equal"
    sum=$(sha256sum <"$d/pat" | cut -d' ' -f1)
    g=$(printf 'dd if=/dev/kt0 bs=1M count=64 iflag=direct 2>/dev/null | sha256sum\n' | gsh host 60) || return 1
    echo "host sha256 $sum; guest backing device /dev/kt0: $g"
    [ "${g%% *}" = "$sum" ]
}
perf_check() { python3 "$HERE/tools/jcheck.py" perf "$1"; }
host_perf() {
    henv
    local out=$STATE/perf-$RANDOM.json
    # --size: with --verify, perf reads back every block written after the timed run;
    # 64 MiB bounds that phase (and the run's length) under TCG. The timeout allows
    # connect + runtime + readback on a loaded machine.
    nv $((PERF_RUNTIME + 150)) perf -a 127.0.0.1 -s "$H1" -n "$KT_NQN1" --rw randrw --bs 4k \
        --iodepth 32 --nr-io-queues 2 --runtime "$PERF_RUNTIME" --verify --size 64MiB "$@" \
        --output-format json >"$out" || { cat "$out"; return 1; }
    cat "$out"
    perf_check "$out"
}
c_host_perf_plain() { host_perf; }
c_host_perf_digest() { host_perf -g -G; }
c_host_reconnect() {
    henv
    local out=$STATE/perf-reconnect.json err=$STATE/perf-reconnect.err pid rc=0 runtime=30 rec=()
    # Reconnect policy flags when perf has them; without, perf must fail cleanly.
    if has_flags perf --reconnect-delay,--ctrl-loss-tmo >/dev/null; then
        rec=(--reconnect-delay 1 --ctrl-loss-tmo 30)
    else
        echo "(nvmf perf has no --reconnect-delay/--ctrl-loss-tmo: expecting success or a clean failure)"
    fi
    nv $((runtime + 150)) perf -a 127.0.0.1 -s "$H1" -n "$KT_NQN1" --rw randrw --bs 4k \
        --iodepth 32 --nr-io-queues 2 --runtime "$runtime" --verify --size 64MiB \
        "${rec[@]}" --output-format json >"$out" 2>"$err" &
    pid=$!
    sleep 6   # mid-run on purpose: perf is 30 s long
    step "guest: unlink every subsystem from port 1 (4420): the port stops listening"
    kt_port1_unlink
    sleep 4
    step "guest: link them again"
    kt_port1_link_all
    wait "$pid" || rc=$?
    echo "perf rc=$rc"; cat "$out"; tail -n 20 "$err"
    if grep -qE 'panicked|RUST_BACKTRACE' "$err"; then echo "perf panicked"; return 1; fi
    case $rc in
    0) perf_check "$out" ;;                      # reconnected: verify must be clean
    124 | 137) echo "perf hung (timeout)"; return 1 ;;
    *)
        [ "$rc" -lt 128 ] || { echo "perf killed by a signal (rc=$rc)"; false; } &&
            echo "perf failed cleanly (rc=$rc)" &&
            { [ ! -s "$out" ] || python3 "$HERE/tools/jcheck.py" no-corruption "$out"; }
        ;;
    esac || return 1
    # and the kernel target serves new connections again
    nv 30 discover -a 127.0.0.1 -s "$H1" >/dev/null
}

# ------------------------------------------------------------------ runner
PASS=0 FAILN=0 SKIPN=0
cleanup() {
    set +e
    local t
    for t in t1 t2 t3 t4 t5; do [ -e "${STATE:-/nonexistent}/$t.pid" ] && tstop "$t" >/dev/null 2>&1; done
    vm_down target; vm_down host
}

case_fields() { IFS='|' read -r C_NAME C_GROUP C_NEEDS C_TIMEOUT C_FUNC <<<"$1"; }
selected() { # NAME -> filter match
    [ ${#FILTERS[@]} -eq 0 ] && return 0
    local f; for f in "${FILTERS[@]}"; do [[ $1 == *$f* ]] && return 0; done
    return 1
}
# skip_reason: empty if the case can run. C_NEEDS: "cmd[:--flag,--flag] ...": the
# subcommand must be in `nvmf help` and each flag in `nvmf cmd --help`, so that
# the suite stays usable (SKIP, not FAIL) while the CLI is still being built.
skip_reason() {
    local c miss
    for c in $C_NEEDS; do
        if [ ! -x "$NVMF" ]; then echo "nvmf binary not available"; return; fi
        has_cmd "${c%%:*}" || { echo "nvmf has no '${c%%:*}' subcommand"; return; }
        [[ $c == *:* ]] || continue
        miss=$(has_flags "${c%%:*}" "${c#*:}") || { echo "nvmf ${c%%:*} has no $miss option"; return; }
    done
}

run_case() { # runs C_* in a subshell with a watchdog; prints the verdict line
    local log=$LOGROOT/$C_NAME.log t0=$SECONDS rc=0 pid wd
    if [ -e "$STATE/$C_GROUP.dirty" ]; then
        rm -f "$STATE/$C_GROUP.dirty"
        echo "[interop] rebooting the $C_GROUP VM (previous case left it unusable)" >>"$log"
        vm_boot "$C_GROUP" >>"$log" 2>&1 || true
    fi
    # The subshell runs in the background + wait so that `set -e` stays in force
    # inside it (it is ignored in a `cmd || ...` context).
    ( set -euo pipefail; "$C_FUNC" ) >>"$log" 2>&1 </dev/null &
    pid=$!
    # (no inherited stdout: a leftover sleep must not hold a CI log pipe open)
    ( sleep "$C_TIMEOUT"; echo "[interop] case timeout (${C_TIMEOUT}s)" >>"$log"; kill -TERM "$pid" 2>/dev/null ) >/dev/null 2>&1 &
    wd=$!
    wait "$pid" || rc=$?
    # killed by the watchdog: a guest command may still be running, reboot before the next case
    [ $rc -ge 128 ] && touch "$STATE/$C_GROUP.dirty"
    kill "$wd" 2>/dev/null || true
    wait "$wd" 2>/dev/null || true
    if [ $rc != 0 ] && [ -z "$C_NEEDS" ] && [ -z "${C_RETRIED:-}" ]; then
        # A lab-only case (no nvmf code runs in it: it checks the VM, the kernel
        # host and target, the port forwarding) failing is the lab, not nvmf:
        # under TCG a guest command has been seen to hang once in ~10 runs.
        # Reboot that VM and run the case once more.
        say "RETRY $C_NAME (rc=$rc, lab-only case; log $log)"
        touch "$STATE/$C_GROUP.dirty"
        C_RETRIED=1 run_case
        return
    fi
    if [ $rc = 0 ]; then
        say "PASS $C_NAME ($((SECONDS - t0))s)"; PASS=$((PASS + 1))
    else
        say "FAIL $C_NAME ($((SECONDS - t0))s, rc=$rc, log $log)"; FAILN=$((FAILN + 1))
        tail -n 25 "$log" | sed 's/^/    | /'
    fi
}

main() {
    FILTERS=()
    local a
    for a in "$@"; do
        case $a in
        --list)
            local e
            for e in "${CASES[@]}"; do case_fields "$e"; printf '%-26s group=%-7s needs=%s\n' "$C_NAME" "$C_GROUP" "${C_NEEDS:--}"; done
            exit 0 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) FILTERS+=("$a") ;;
        esac
    done
    # old run logs (over 12 h) go; a run takes minutes, so no live run loses its logs
    [ -d "$HERE/.run" ] && find "$HERE/.run" -mindepth 1 -maxdepth 1 -type d -name '2*' -mmin +720 -exec rm -rf {} + 2>/dev/null || true
    LOGROOT=${NVMF_INTEROP_LOGDIR:-$HERE/.run/$(date +%Y%m%d-%H%M%S)}
    mkdir -p "$LOGROOT"
    [ -n "${NVMF_INTEROP_LOGDIR:-}" ] || ln -sfn "$(basename "$LOGROOT")" "$HERE/.run/latest"
    LOGROOT=$(cd "$LOGROOT" && pwd)
    STATE=$LOGROOT/state
    mkdir -p "$STATE"
    RUNID=$$
    trap cleanup EXIT
    vm_gc
    trap 'exit 130' INT TERM
    local t0=$SECONDS
    say "[interop] logs: $LOGROOT"

    if [ "${NVMF_INTEROP_SETUP:-1}" = 1 ]; then
        if ! NVMF_INTEROP_SMOKE=0 timeout 1800 "$HERE/setup.sh" >"$LOGROOT/setup.log" 2>&1; then
            say "FAIL setup (log $LOGROOT/setup.log)"; tail -n 30 "$LOGROOT/setup.log" | sed 's/^/    | /'
            say "0 passed, 1 failed"; exit 1
        fi
        say "[interop] setup: ok ($((SECONDS - t0))s)"
    fi
    nvmf_prepare

    if [ "${NVMF_INTEROP_REF:-0}" = 1 ]; then ref_mode; fi
    [ "${NVMF_INTEROP_REF:-0}" = only ] && { ref_mode; say "$PASS passed, $FAILN failed"; [ "$FAILN" = 0 ]; return; }

    local group entry reason runnable
    for group in target host; do
        runnable=() NEED_TARGETS=
        for entry in "${CASES[@]}"; do
            case_fields "$entry"
            [ "$C_GROUP" = "$group" ] && selected "$C_NAME" || continue
            reason=$(skip_reason)
            if [ -n "$reason" ]; then
                say "SKIP $C_NAME ($reason)"; SKIPN=$((SKIPN + 1)); continue
            fi
            runnable+=("$entry")
            [[ $C_NEEDS == target* ]] && NEED_TARGETS=1
        done
        [ ${#runnable[@]} -gt 0 ] || continue
        local g0=$SECONDS
        if ! "${group}_setup" >"$LOGROOT/$group-setup.log" 2>&1; then
            say "[interop] $group setup failed (log $LOGROOT/$group-setup.log)"
            tail -n 25 "$LOGROOT/$group-setup.log" | sed 's/^/    | /'
            for entry in "${runnable[@]}"; do
                case_fields "$entry"; say "FAIL $C_NAME (group setup failed)"; FAILN=$((FAILN + 1))
            done
            "${group}_teardown" >>"$LOGROOT/$group-setup.log" 2>&1 || true
            continue
        fi
        say "[interop] $group group ready ($((SECONDS - g0))s)"
        for entry in "${runnable[@]}"; do case_fields "$entry"; run_case; done
        "${group}_teardown" >>"$LOGROOT/$group-setup.log" 2>&1 || true
        say "[interop] $group group done ($((SECONDS - g0))s)"
    done
    # the big inputs (patterns, backing file, binary copy) only matter for a failure
    [ "$FAILN" = 0 ] && rm -rf "$STATE/rw" "$STATE/files" "$STATE/file-ns.img" "$STATE/nvmf"
    say "[interop] total $((SECONDS - t0))s; $SKIPN skipped; logs in $LOGROOT"
    say "$PASS passed, $FAILN failed"
    [ "$FAILN" = 0 ]
}

# Reference mode: the target-side guest checks against the in-guest kernel target.
# Not part of the default run (the kernel-loopback case covers the essentials).
ref_mode() {
    local name t0
    say "[interop] reference mode: target checks against the kernel target in the guest"
    NEED_TARGETS='' target_setup >"$LOGROOT/ref-setup.log" 2>&1 || { say "FAIL ref-setup"; FAILN=$((FAILN + 1)); return; }
    # the kernel target gets the t1 layout on guest port 4420
    gexec target 60 ktarget.sh "KT_SUBSYS=$SUBNQN_A:256:512 $SUBNQN_B:64:4096" KT_PORTS=4420 >>"$LOGROOT/ref-setup.log" 2>&1
    for name in "${REF_CASES[@]}"; do
        selected "ref-$name" || continue
        t0=$SECONDS
        if ref_case "$name" >"$LOGROOT/ref-$name.log" 2>&1; then
            say "PASS ref-$name ($((SECONDS - t0))s)"; PASS=$((PASS + 1))
        else
            say "FAIL ref-$name ($((SECONDS - t0))s, log $LOGROOT/ref-$name.log)"; FAILN=$((FAILN + 1))
            tail -n 15 "$LOGROOT/ref-$name.log" | sed 's/^/    | /'
        fi
    done
    target_teardown >>"$LOGROOT/ref-setup.log" 2>&1
}
ref_case() {
    local L=127.0.0.1
    case $1 in
    target-discover) gexec target 60 discover.sh TADDR=$L DPORT=4420 "EXP_NQNS=$SUBNQN_A $SUBNQN_B" EXP_TRSVCID=4420 EXP_TRADDR=$L ;;
    target-connect-queues) gexec target 100 connect.sh TADDR=$L PORT=4420 NQN=$SUBNQN_A MODE=queues ;;
    target-connect-digests) gexec target 130 connect.sh TADDR=$L PORT=4420 NQN=$SUBNQN_A MODE=digests ;;
    target-identify) gexec target 80 identify.sh TADDR=$L PORT=4420 "NQNS=$SUBNQN_A:1:268435456:512 $SUBNQN_B:1:67108864:4096" ;;
    target-fio-verify) gexec target $((FIO_RUNTIME + 150)) fio.sh TADDR=$L PORT=4420 NQN=$SUBNQN_A RUNTIME="$FIO_RUNTIME" SIZE=128M ;;
    target-pattern-ram) gexec target 80 pattern.sh TADDR=$L PORT=4420 NQN=$SUBNQN_A PAT=/lab/files/pat8 SEEK_MB=5 MODE=write ;;
    target-fs) gexec target 160 fs.sh TADDR=$L PORT=4420 NQN=$SUBNQN_A NFILES=24 ;;
    target-disconnect-clean) gexec target 80 disconnect.sh TADDR=$L PORT=4420 "NQNS=$SUBNQN_A $SUBNQN_B" ;;
    target-unknown-nqn) gexec target 80 negative.sh TADDR=$L PORT=4420 NQN=$SUBNQN_A MODE=unknown-nqn ;;
    # null_blk without discard behind the kernel target: no blkdiscard check
    target-ublk) gexec target $((FIO_RUNTIME + 380)) ublk.sh TADDR=$L PORT=4420 NQN=$SUBNQN_A NQN4K=$SUBNQN_B \
        RUNTIME="$FIO_RUNTIME" NFILES=12 DISCARD=none ;;
    target-kill-mid-io)
        gexec target 60 killio.sh TADDR=$L PORT=4420 NQN=$SUBNQN_A NQN2=$SUBNQN_B PHASE=start &&
            gexec target 60 killio.sh TADDR=$L PORT=4420 NQN=$SUBNQN_A NQN2=$SUBNQN_B PHASE=disconnect &&
            gexec target 120 killio.sh TADDR=$L PORT=4420 NQN=$SUBNQN_A NQN2=$SUBNQN_B PHASE=finish ;;
    esac
}

# `exit` on the same line: bash reads a script as it runs it, so nothing after this
# line is read even if run.sh is edited while it runs.
main "$@"; exit $?
