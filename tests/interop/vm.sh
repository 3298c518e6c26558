#!/usr/bin/env bash
# vm.sh - boot the lab VM (built by setup.sh) under qemu, headless.
#
#   vm.sh run   [opts] GUEST_SCRIPT   boot, run the script, power off; prints the
#                                     script's output, exits with its exit code
#   vm.sh start [opts] [SETUP_SCRIPT] boot in the background, run the setup script,
#                                     return once the guest printed @@LAB-READY@@
#   vm.sh exec  [-t SEC] SCRIPT|-     run a script in the background VM (output + rc)
#   vm.sh stop                        power the background VM off (SIGTERM/KILL fallback)
#   vm.sh status | logs [console|out] | help
#
# opts (run/start):  -t SEC        timeout (run: whole run; start: until ready)
#                    -f SRC[:DST]  copy a host file into the guest (default /lab/files/NAME)
#                    -e VAR=VALUE  environment for the guest script
#                    -H            run: also set up the host->guest forwards
#                    -k            run: keep the run directory (logs) even on success
# Networking (qemu user net, restrict=on; every host side address is 127.0.0.1):
#   NVMF_INTEROP_GUESTFWD="4420:4420 8009:8009"  guest 10.0.2.100:GPORT -> host 127.0.0.1:HPORT
#   NVMF_INTEROP_HOSTFWD="14420:4420 18009:8009" host 127.0.0.1:HPORT -> guest :GPORT (start, run -H)
#   Entries are separated by spaces or commas; a bare PORT means PORT:PORT; a set
#   variable replaces the whole default list (e.g. "4420:24420 8009:28009 10809:20809").
# Other env: NVMF_INTEROP_ACCEL=auto|tcg|kvm  NVMF_INTEROP_MEM=1024  NVMF_INTEROP_SMP=2
#   NVMF_INTEROP_NAME=default (background instance)  NVMF_INTEROP_APPEND (extra kernel args)
#   NVMF_INTEROP_TIMEOUT=600 (run)  NVMF_INTEROP_BOOT_TIMEOUT=300 (start)
# Exit codes: guest script rc; 124 timeout; 125 VM failed / no result.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MEM=${NVMF_INTEROP_MEM:-1024}
SMP=${NVMF_INTEROP_SMP:-2}
NAME=${NVMF_INTEROP_NAME:-default}
# ${VAR-default}: a set but empty variable means "no forwards" (the harness sets
# exactly the ports it uses, never the default 4420/8009 that others may hold).
GUESTFWD=${NVMF_INTEROP_GUESTFWD-4420:4420 8009:8009}
HOSTFWD=${NVMF_INTEROP_HOSTFWD-14420:4420 18009:8009}
GUESTFWD=${GUESTFWD//,/ } HOSTFWD=${HOSTFWD//,/ }   # commas work as separators too
HOST_ADDR=10.0.2.100   # where the guest sees host services (guestfwd)
GUEST_ADDR=10.0.2.15   # guest eth0 (hostfwd target)
STATE=$LAB_CACHE/vm/$NAME
LABCTL=(python3 "$LAB_DIR/tools/labctl.py")

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-2}"; }

need_image() {
    [ -f "$LAB_IMAGE/vmlinuz" ] && [ -f "$LAB_IMAGE/initramfs.cpio" ] ||
        die "no image in $LAB_IMAGE; run setup.sh first"
    command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing; run setup.sh"
}

FILES=() ENVS=() TIMEOUT='' HOSTFWD_ON=0 KEEP=0
parse_opts() {
    local OPTIND=1 o
    while getopts "t:f:e:Hk" o; do
        case $o in
        t) TIMEOUT=$OPTARG ;;
        f) FILES+=("$OPTARG") ;;
        e) [[ $OPTARG == [A-Za-z_]*=* ]] || die "-e wants VAR=VALUE"; ENVS+=("$OPTARG") ;;
        H) HOSTFWD_ON=1 ;;
        k) KEEP=1 ;;
        *) usage ;;
        esac
    done
    NARGS=$((OPTIND - 1))
}

# initrd = base image + small cpio with /lab/{env,script,files/...}
mk_initrd() { # DIR MODE [SCRIPT]
    local d=$1 mode=$2 script=${3:-} x=$1/extra spec src dst kv
    rm -rf "$x"; mkdir -p "$x/lab/files" "$x/usr/share/lab"
    # current guest-side files override the image's copies (no rebuild needed)
    install -m 0755 "$LAB_DIR/guest/init" "$x/init"
    local h; for h in "$LAB_DIR"/guest/*.sh; do install -m 0644 "$h" "$x/usr/share/lab/"; done
    if [ -n "$script" ]; then
        [ -f "$script" ] || die "no such script: $script"
        install -m 0755 "$script" "$x/lab/script"
    fi
    {
        echo "export LAB_MODE=$mode LAB_HOST_ADDR=$HOST_ADDR LAB_GUEST_ADDR=$GUEST_ADDR"
        for kv in "${ENVS[@]}"; do
            printf "export %s='%s'\n" "${kv%%=*}" "$(printf '%s' "${kv#*=}" | sed "s/'/'\\\\''/g")"
        done
    } >"$x/lab/env"
    for spec in "${FILES[@]}"; do
        src=${spec%%:*}; dst=${spec#*:}
        [ "$dst" = "$spec" ] && dst=/lab/files/$(basename "$src")
        [ -e "$src" ] || die "no such file: $src"
        mkdir -p "$(dirname "$x$dst")"; cp -a "$src" "$x$dst"
    done
    (cd "$x" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) >"$d/extra.cpio"
    cat "$LAB_IMAGE/initramfs.cpio" "$d/extra.cpio" >"$d/initrd"
    rm -rf "$x" "$d/extra.cpio"
}

port_ok() { [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le 65535 ]; }
# check_fwd VAR LIST: every entry A:B (or PORT) with valid ports, each A only once
check_fwd() {
    local p seen=' '
    for p in $2; do
        { port_ok "${p%%:*}" && port_ok "${p#*:}"; } || die "bad $1 entry: $p"
        [[ $seen == *" ${p%%:*} "* ]] && die "$1: port ${p%%:*} listed twice"
        seen+="${p%%:*} "
    done
}

# Fill Q[] with the qemu command line.  DIR MODE ACCEL HOSTFWD(0|1)
qemu_cmd() {
    local d=$1 mode=$2 accel=$3 hf=$4 net p gp hp flog=/dev/null
    [[ $d =~ ^[A-Za-z0-9_./-]+$ ]] && flog=$d/guestfwd.log
    net="user,id=net0,restrict=on,ipv6=off,net=10.0.2.0/24,host=10.0.2.2"
    for p in $GUESTFWD; do
        gp=${p%%:*} hp=${p#*:}
        # cmd: spawns one socat per guest connection (NVMe/TCP opens one per queue)
        net+=",guestfwd=tcp:$HOST_ADDR:$gp-cmd:socat -lf $flog - TCP4:127.0.0.1:$hp"
    done
    if [ "$hf" = 1 ]; then
        for p in $HOSTFWD; do
            hp=${p%%:*} gp=${p#*:}
            net+=",hostfwd=tcp:127.0.0.1:$hp-$GUEST_ADDR:$gp"
        done
    fi
    # shellcheck disable=SC2054  # commas are qemu option syntax
    Q=(qemu-system-x86_64 -name "nvmf-interop-$NAME" -nodefaults -no-user-config -display none
        -m "$MEM" -smp "$SMP" -no-reboot
        -kernel "$LAB_IMAGE/vmlinuz" -initrd "$d/initrd"
        -append "console=ttyS0,115200 panic=-1 mitigations=off random.trust_cpu=on ${NVMF_INTEROP_APPEND:-}"
        -serial "file:$d/console.log" -serial "file:$d/out.log"
        -netdev "$net" -device virtio-net-pci,netdev=net0)
    case $accel in
    kvm) Q+=(-accel kvm -cpu host) ;;
    *) Q+=(-accel tcg -cpu max) ;;
    esac
    if [ "$mode" = daemon ]; then
        # shellcheck disable=SC2054
        Q+=(-device virtio-serial-pci,id=vser0
            -chardev "socket,id=ctl,path=$d/ctl.sock,server=on,wait=off"
            -device virtserialport,bus=vser0.0,chardev=ctl,name=lab.ctl)
    fi
}

# KVM or TCG. auto: probe KVM once per kernel and cache the answer.
pick_accel() {
    local want=${NVMF_INTEROP_ACCEL:-auto} kver f d pid ok=0
    case $want in kvm | tcg) echo "$want"; return ;; esac
    kver=$(awk -F= '$1 == "KVER" { print $2 }' "$LAB_IMAGE/info")
    f=$LAB_CACHE/accel.$kver
    [ -s "$f" ] && { cat "$f"; return; }
    if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
        log "probing KVM (once per kernel; result cached in $f)"
        d=$(mktemp -d "${TMPDIR:-/tmp}/nvmf-interop-probe.XXXXXX")
        printf 'echo kvm-ok\n' >"$d/probe.sh"
        mk_initrd "$d" run "$d/probe.sh"
        qemu_cmd "$d" run kvm 0
        "${Q[@]}" >"$d/qemu.log" 2>&1 &
        pid=$!
        for _ in $(seq 150); do   # 30 s
            kill -0 "$pid" 2>/dev/null || break
            if grep -qE 'KVM internal error|failed to set MSR|Assertion|emulation failure' "$d/qemu.log"; then
                kill "$pid" 2>/dev/null || true; break
            fi
            sleep 0.2
        done
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        grep -q 'kvm-ok' "$d/out.log" 2>/dev/null && ok=1
        { echo "KVM probe: $([ $ok = 1 ] && echo works || echo FAILED)"; head -n 20 "$d/qemu.log"; } >"$LAB_CACHE/accel-probe.log"
        rm -rf "$d"
    fi
    if [ $ok = 1 ]; then echo kvm >"$f"; else echo tcg >"$f"; log "KVM unusable here, using TCG (see $LAB_CACHE/accel-probe.log)"; fi
    cat "$f"
}

show_tail() { # FILE LINES
    [ -f "$1" ] || return 0
    echo "----- last $2 lines of $1" >&2
    tail -n "$2" "$1" | tr -d '\r' >&2
}

cmd_run() {
    parse_opts "$@"; shift "$NARGS"
    [ $# -eq 1 ] || usage
    need_image
    check_fwd NVMF_INTEROP_GUESTFWD "$GUESTFWD"
    [ "$HOSTFWD_ON" = 0 ] || check_fwd NVMF_INTEROP_HOSTFWD "$HOSTFWD"
    local d accel rc qrc t0
    mkdir -p "$LAB_CACHE"
    accel=$(pick_accel)
    d=$(mktemp -d "${TMPDIR:-/tmp}/nvmf-interop-run.XXXXXX")
    mk_initrd "$d" run "$1"
    qemu_cmd "$d" run "$accel" "$HOSTFWD_ON"
    t0=$(date +%s%N)
    set +e
    timeout -k 10 "${TIMEOUT:-${NVMF_INTEROP_TIMEOUT:-600}}" "${Q[@]}" >"$d/qemu.log" 2>&1
    qrc=$?
    "${LABCTL[@]}" result "$d/out.log"
    rc=$?
    set -e
    log "run: accel=$accel rc=$rc wall=$((($(date +%s%N) - t0) / 1000000))ms qemu_rc=$qrc"
    if [ $qrc -eq 124 ] || [ $qrc -eq 137 ]; then
        log "timeout after ${TIMEOUT:-${NVMF_INTEROP_TIMEOUT:-600}}s"; rc=124
    fi
    if [ $rc -eq 124 ] || [ $rc -eq 125 ]; then
        show_tail "$d/qemu.log" 20; show_tail "$d/console.log" 40; KEEP=1
    fi
    if [ $KEEP = 1 ]; then log "logs kept in $d"; else rm -rf "$d"; fi
    return $rc
}

qemu_pid() { # prints the pid of this instance's qemu if it is running
    local pid
    pid=$(cat "$STATE/qemu.pid" 2>/dev/null) || return 1
    [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$STATE/ctl.sock" &&
        echo "$pid"
}

cmd_start() {
    parse_opts "$@"; shift "$NARGS"
    [ $# -le 1 ] || usage
    need_image
    check_fwd NVMF_INTEROP_GUESTFWD "$GUESTFWD"
    check_fwd NVMF_INTEROP_HOSTFWD "$HOSTFWD"
    local accel pid rc t0
    if pid=$(qemu_pid); then die "instance '$NAME' already running (pid $pid); vm.sh stop first"; fi
    rm -rf "$STATE"; mkdir -p "$STATE"
    accel=$(pick_accel)
    mk_initrd "$STATE" daemon "${1:-}"
    qemu_cmd "$STATE" daemon "$accel" 1
    t0=$(date +%s%N)
    "${Q[@]}" -daemonize -pidfile "$STATE/qemu.pid" >"$STATE/qemu.log" 2>&1 ||
        { cat "$STATE/qemu.log" >&2; die "qemu failed to start"; }
    pid=$(cat "$STATE/qemu.pid")
    set +e
    "${LABCTL[@]}" wait-ready "$STATE/out.log" "$pid" "${TIMEOUT:-${NVMF_INTEROP_BOOT_TIMEOUT:-300}}"
    rc=$?
    set -e
    if [ $rc -ne 0 ]; then
        show_tail "$STATE/console.log" 40
        log "start failed (rc=$rc); stopping"
        cmd_stop >/dev/null 2>&1 || true
        return $rc
    fi
    log "ready: accel=$accel pid=$pid after $((($(date +%s%N) - t0) / 1000000))ms"
    [ -z "$HOSTFWD" ] || log "host->guest: $(for p in $HOSTFWD; do printf '127.0.0.1:%s->guest:%s ' "${p%%:*}" "${p#*:}"; done)"
    [ -z "$GUESTFWD" ] || log "guest->host: $(for p in $GUESTFWD; do printf '%s:%s->127.0.0.1:%s ' "$HOST_ADDR" "${p%%:*}" "${p#*:}"; done)"
    log "logs: $STATE/console.log (kernel) $STATE/out.log (script)"
}

cmd_exec() {
    parse_opts "$@"; shift "$NARGS"
    [ $# -eq 1 ] || usage
    qemu_pid >/dev/null || die "instance '$NAME' is not running"
    "${LABCTL[@]}" exec "$STATE/ctl.sock" "$1" "${TIMEOUT:-300}"
}

cmd_stop() {
    local pid
    if ! pid=$(qemu_pid); then log "instance '$NAME' not running"; rm -f "$STATE/qemu.pid"; return 0; fi
    "${LABCTL[@]}" poweroff "$STATE/ctl.sock" >/dev/null 2>&1 || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
        log "guest did not power off; SIGTERM to qemu $pid"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$STATE/qemu.pid"
    log "stopped '$NAME' (pid $pid)"
}

cmd_status() {
    local pid
    if pid=$(qemu_pid); then
        echo "running pid=$pid state=$STATE"
        "${LABCTL[@]}" ping "$STATE/ctl.sock" && echo "agent: ok"
    else
        echo "stopped"; return 1
    fi
}

cmd_logs() {
    case ${1:-console} in
    console) cat "$STATE/console.log" ;;
    out) cat "$STATE/out.log" ;;
    *) usage ;;
    esac
}

case ${1:-help} in
run | start | exec | stop | status | logs) c=$1; shift; "cmd_$c" "$@" ;;
help | -h | --help) usage 0 ;;
*) usage ;;
esac
