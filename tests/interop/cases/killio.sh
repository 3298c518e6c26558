# killio: an abruptly ended connection must not take the target down.
# PHASE=start: connect NQN, start fio in the background, return once I/O flows.
# PHASE=disconnect: `nvme disconnect` while that fio runs (host-initiated teardown
#   with commands in flight).
# PHASE=finish: wait for fio (it may fail: its connection was killed), drop
#   everything, then a fresh connect to NQN and NQN2 + I/O must work.
# env: TADDR PORT NQN NQN2 PHASE
. /usr/share/lab/case.sh
# alive PID: a zombie (not yet reaped by the guest's init) counts as gone
alive() { [ -e "/proc/$1" ] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }
io_count() { awk '{ print $1 + $5 }' "/sys/block/${1#/dev/}/stat"; }
case $PHASE in
start)
    cleanup_all
    nconnect "$TADDR" "$PORT" "$NQN" >/dev/null || fail "connect"
    dev=$(ns_dev "$NQN") || fail "ns"
    echo "$dev" >/tmp/killio.dev
    # fio in its own session so this exec returns; the output goes to a file.
    setsid fio --name=kill --filename="$dev" --ioengine=libaio --direct=1 --rw=randrw \
        --bs=64k --iodepth=32 --size=64M --runtime=60 --time_based --eta=never \
        >/tmp/killio.fio 2>&1 </dev/null &
    echo $! >/tmp/killio.pid
    a=$(io_count "$dev"); i=0
    while [ $i -lt 100 ]; do
        sleep 0.1; i=$((i + 1))
        [ $(($(io_count "$dev") - a)) -ge 64 ] && break
    done
    [ $(($(io_count "$dev") - a)) -ge 64 ] || fail "fio does not get I/O through"
    echo "fio (pid $(cat /tmp/killio.pid)) running on $dev: $(($(io_count "$dev") - a)) I/Os after $((i * 100)) ms"
    ;;
disconnect)
    echo "+ nvme disconnect -n $NQN (fio still running)"
    timeout 30 nvme disconnect -n "$NQN"
    echo "rc=$?"
    ;;
finish)
    pid=$(cat /tmp/killio.pid)
    # fio may still run (the kernel host reconnects after a killed connection):
    # stop it (SIGINT lets it print its summary), bounded, then SIGKILL.
    kill -INT "$pid" 2>/dev/null
    i=0
    while alive "$pid" && [ $i -lt 200 ]; do sleep 0.1; i=$((i + 1)); done
    alive "$pid" && kill -9 "$pid" && echo "fio ignored SIGINT for 20 s: SIGKILL"
    echo "fio's end (expected to show errors):"
    grep -E 'err=|error|Run status' /tmp/killio.fio | head -n 5
    dmesg | grep -E 'nvme nvme[0-9]+:' | tail -n 8
    cleanup_all
    for n in "$NQN2" "$NQN"; do
        nconnect "$TADDR" "$PORT" "$n" >/dev/null || fail "connect $n after the kill"
        io_ok "$(ns_dev "$n")" || fail "I/O on $n after the kill"
    done
    cleanup_all
    echo "killio: OK"
    ;;
esac
