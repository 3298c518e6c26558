# mp-host.sh - HOST side of the multipath cases (sourced by run.sh; the guest
# side of mp-kernel-multipath is cases/mp-kernel.sh).
#
# mp-kernel-multipath (acceptance 1): the Linux 6.12 host with native NVMe
#   multipath connects to t5, a dedicated nvmf target with two listeners
#   (127.0.0.1:PMA port ID 1, 127.0.0.1:PMB port ID 2) and a management socket.
#   fio randrw verify runs on the multipath device while `nvmf ctl` makes path A
#   inaccessible, restores it, then removes listener A: fio must end with 0 errors.
# mp-host-ktarget (acceptance 4): `nvmf perf --paths` against the kernel target
#   in the host VM, reached through its two nvmet ports (H1 -> 4420 = port 1,
#   H2 -> 8009 = port 2; every subsystem is linked to both); port 1's ANA group 1
#   is made inaccessible, restored (failback), then port 1 is unlinked and linked again.
#   0 verify errors, 0 double completions, both paths carry I/O.

SUBNQN_MP=nqn.2026-11.io.nvmf:multipath

# mp_config: called at the end of target_config: t5's ports and guest forwards.
mp_config() {
    local pma pmb
    pma=$(free_port) pmb=$(free_port)
    echo "PMA=$pma PMB=$pmb" >>"$STATE/target.env"
    printf ' %s:%s %s:%s' "$pma" "$pma" "$pmb" "$pmb" >>"$STATE/target.guestfwd"
    tr '\n' ' ' <"$STATE/target.guestfwd" | sed 's/  */ /g; s/ $//' >"$STATE/target.guestfwd.tmp"
    mv "$STATE/target.guestfwd.tmp" "$STATE/target.guestfwd"
    echo "$pma $pmb" >"$STATE/t5.ports"
    cat >"$STATE/t5.toml" <<EOF
# nvmf target t5 (tests/interop multipath cases): one subsystem, two ports
[[listener]]
addr = "127.0.0.1:$pma"
port_id = 1
[[listener]]
addr = "127.0.0.1:$pmb"
port_id = 2
[discovery]
listen = []
[[subsystem]]
nqn = "$SUBNQN_MP"
allow_any_host = true
[[subsystem.namespace]]
kind = "ram"
size = "128MiB"
block_size = 512
ana_group = 1
EOF
}

# mp_t5: make sure t5 runs (started on first use).
mp_t5() {
    tenv
    talive t5 && return 0
    tstart t5 --config "$STATE/t5.toml" --rpc-socket "$STATE/t5.sock"
}

mpctl() {
    echo "+ nvmf ctl $*"
    timeout 30 "$NVMF" ctl --rpc-socket "$STATE/t5.sock" "$@"
}

c_mp_kernel_multipath() {
    mp_t5 || return 1
    local env=(TADDR=$G PORTA="$PMA" PORTB="$PMB" NQN=$SUBNQN_MP)
    step "kernel host: connect both paths, fio randrw verify on the multipath device"
    gexec target 90 mp-kernel.sh "${env[@]}" PHASE=start || return 1
    step "path A (port ID 1) inaccessible"
    mpctl ana set --subsystem "$SUBNQN_MP" --listener "127.0.0.1:$PMA" --group 1 --state inaccessible || return 1
    gexec target 60 mp-kernel.sh "${env[@]}" PHASE=a-inaccessible || return 1
    step "path A optimized again"
    mpctl ana set --subsystem "$SUBNQN_MP" --listener "127.0.0.1:$PMA" --group 1 --state optimized || return 1
    gexec target 60 mp-kernel.sh "${env[@]}" PHASE=a-restored || return 1
    step "listener A removed while fio runs"
    mpctl listener remove "127.0.0.1:$PMA" || return 1
    mpctl controllers
    gexec target 60 mp-kernel.sh "${env[@]}" PHASE=a-killed || return 1
    gexec target 150 mp-kernel.sh "${env[@]}" PHASE=finish || return 1
    mpctl listener add "127.0.0.1:$PMA" --port-id 1 || true
    talive t5
}

c_mp_host_ktarget() {
    henv
    local out=$STATE/perf-mp.json err=$STATE/perf-mp.err pid rc=0 runtime=40
    nv $((runtime + 120)) perf --paths "127.0.0.1:$H1,127.0.0.1:$H2" -n "$KT_NQN1" --iopolicy failover-failback \
        --rw randrw --bs 4k --iodepth 16 --size 32MiB --runtime "$runtime" --verify \
        --output-format json >"$out" 2>"$err" &
    pid=$!
    sleep 8
    step "guest: port 1 ANA group 1 inaccessible"
    kt_set_ana inaccessible
    sleep 8
    step "guest: port 1 ANA group 1 optimized"
    kt_set_ana optimized
    sleep 6
    step "guest: unlink every subsystem from port 1 (4420): path A dies"
    kt_port1_unlink
    sleep 6
    step "guest: link them again"
    kt_port1_link_all
    wait "$pid" || rc=$?
    echo "perf rc=$rc"; cat "$out"; tail -n 30 "$err"
    if grep -qE 'panicked|RUST_BACKTRACE' "$err"; then echo "perf panicked"; return 1; fi
    [ "$rc" = 0 ] || return 1
    python3 - "$out" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
m = d["multipath"]
print("per path:", [(p["addr"], p["ios"], p["ana"], p["downs"]) for p in m["paths"]])
print("failovers:", m["failovers"], "failover_ms:", m["failover_ms"], "io_pause_ms:", m["io_pause_ms"])
bad = []
if d["errors"] or d["verify_errors"]: bad.append("I/O or verify errors")
if m["double_completions"]: bad.append("double completions")
if not all(p["ios"] > 0 for p in m["paths"]): bad.append("a path carried no I/O")
if m["paths"][0]["path_errors"] == 0: bad.append("no ANA refusal seen on path A")
if m["paths"][0]["downs"] == 0: bad.append("path A never went down")
if m["path_switches"] < 3: bad.append("I/O did not move A -> B -> A -> B")
if bad: print("FAILED:", ", ".join(bad)); sys.exit(1)
PY
}
