# mp-kernel: the Linux host's native NVMe multipath against nvmf (two listeners
# of one subsystem, ANA reporting). Phases (host side: cases/mp-host.sh):
# PHASE=start: connect through PORTA and PORTB; one multipath disk with two
#   paths, both ANA optimized (nvme list-subsys); fio randrw verify in the background.
# PHASE=a-inaccessible: within 15 s path A shows inaccessible and I/O runs on B only.
# PHASE=a-restored: within 15 s both paths optimized again; fio still running.
# PHASE=a-killed: (listener A removed) fio keeps running and B carries the I/O.
# PHASE=finish: fio ends by itself with 0 errors and verify clean.
# env: TADDR PORTA PORTB NQN PHASE
. /usr/share/lab/case.sh
alive() { [ -e "/proc/$1" ] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }
# path_dir TRSVCID: sysfs dir of the hidden per-path disk of the controller on that port
path_dir() {
    for _c in /sys/class/nvme/nvme*; do
        [ "$(cat "$_c/subsysnqn" 2>/dev/null)" = "$NQN" ] || continue
        grep -q "trsvcid=$1" "$_c/address" 2>/dev/null || continue
        for _p in "$_c"/nvme*c*n1; do [ -e "$_p/ana_state" ] && { echo "$_p"; return 0; }; done
    done
    return 1
}
ana_of() { _d=$(path_dir "$1") && cat "$_d/ana_state"; }
ios_of() { _d=$(path_dir "$1") && awk '{ print $1 + $5 }' "$_d/stat"; }
# show: nvme list-subsys of the multipath disk (per path: state and ANA state)
show() {
    if [ -s /tmp/mp.dev ]; then nvme list-subsys "$(cat /tmp/mp.dev)" 2>&1 | sed -n 1,12p
    else nvme list-subsys 2>&1 | sed -n 1,12p; fi
}
# wait_ana PORT STATE: up to 15 s
wait_ana() {
    _i=0
    while [ "$(ana_of "$1")" != "$2" ] && [ $_i -lt 150 ]; do sleep 0.1; _i=$((_i + 1)); done
    [ "$(ana_of "$1")" = "$2" ] || { show; dmesg | tail -n 10; fail "path on port $1: ana '$(ana_of "$1")', want $2"; }
    echo "path on port $1: $2 after $((_i * 100)) ms"
}
fio_alive() { alive "$(cat /tmp/mp.pid)" || { cat /tmp/mp.fio; fail "fio ended early"; }; }
# moving PORT: the per-path I/O counter of PORT grows by 64+ within 10 s
moving() {
    _a=$(ios_of "$1") || fail "no path on port $1"; _i=0
    while [ $(($(ios_of "$1") - _a)) -lt 64 ] && [ $_i -lt 100 ]; do sleep 0.1; _i=$((_i + 1)); done
    [ $(($(ios_of "$1") - _a)) -ge 64 ] || fail "no I/O on the path through port $1"
}
case $PHASE in
start)
    cleanup_all
    rm -f /tmp/mp.dev
    [ "$(cat /sys/module/nvme_core/parameters/multipath 2>/dev/null)" = Y ] || fail "native multipath is off"
    nconnect "$TADDR" "$PORTA" "$NQN" >/dev/null || fail "connect A"
    nconnect "$TADDR" "$PORTB" "$NQN" >/dev/null || fail "connect B"
    dev=$(ns_dev "$NQN") || fail "no multipath disk"
    show
    [ "$(nvme list-subsys 2>/dev/null | grep -c 'tcp traddr')" -ge 2 ] || fail "list-subsys does not show two paths"
    wait_ana "$PORTA" optimized
    wait_ana "$PORTB" optimized
    echo "$dev" >/tmp/mp.dev
    show
    n=$(show | grep -c 'live optimized')
    [ "$n" -ge 2 ] || fail "nvme list-subsys does not show two live optimized paths"
    echo "list-subsys: $n paths live optimized"
    setsid fio --name=mp --filename="$dev" --ioengine=libaio --direct=1 --rw=randrw --rwmixread=50 \
        --bs=4k --iodepth=16 --size=64M --verify=crc32c --verify_fatal=1 --verify_backlog=256 \
        --runtime=75 --time_based --eta=never >/tmp/mp.fio 2>&1 </dev/null &
    echo $! >/tmp/mp.pid
    sleep 2
    fio_alive
    echo "fio (pid $(cat /tmp/mp.pid)) running on $dev"
    ;;
a-inaccessible)
    wait_ana "$PORTA" inaccessible
    show
    show | grep -q "trsvcid=$PORTA.* inaccessible" || fail "list-subsys does not show path A inaccessible"
    moving "$PORTB"
    a=$(ios_of "$PORTA"); sleep 2; b=$(ios_of "$PORTA")
    [ $((b - a)) -le 2 ] || fail "I/O still sent through the inaccessible path ($((b - a)) in 2 s)"
    fio_alive
    ;;
a-restored)
    wait_ana "$PORTA" optimized
    show
    fio_alive
    ;;
a-killed)
    sleep 3
    show
    dmesg | grep -E 'nvme nvme[0-9]+:' | tail -n 6
    moving "$PORTB"
    fio_alive
    ;;
finish)
    pid=$(cat /tmp/mp.pid); i=0
    while alive "$pid" && [ $i -lt 1200 ]; do sleep 0.1; i=$((i + 1)); done
    alive "$pid" && { kill -9 "$pid"; fail "fio did not finish"; }
    grep -E 'err=|verify|Run status|IOPS' /tmp/mp.fio | head -n 8
    grep -qE 'err= *[1-9]|verify.*(bad|fail)' /tmp/mp.fio && fail "fio reported errors"
    grep -q 'err= *0' /tmp/mp.fio || { cat /tmp/mp.fio; fail "no fio summary"; }
    cleanup_all
    echo "mp-kernel: OK"
    ;;
esac
