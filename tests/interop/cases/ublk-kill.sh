# ublk-kill: the connections of a `nvmf connect` device are cut (the host kills the
# guestfwd socat processes) under fio: I/O fails with EIO instead of hanging,
# `nvmf disconnect` still removes the device, and a new connect works.
# env: TADDR PORT NQN PHASE=start|finish
. /usr/share/lab/case.sh
set -u
B=/lab/files
LOG=/tmp/ukill-connect.log
nvmf() { LD_LIBRARY_PATH=$B/nvmf-lib timeout 60 "$B/nvmf" "$@"; }
ufail() {
    echo "--- nvmf connect output:"; tail -n 30 "$LOG" 2>/dev/null
    echo "--- dmesg:"; dmesg | tail -n 10
    fail "$@"
}
# udev_wait: the ublk block device with a non-zero size (60 s) -> UDEV
udev_wait() {
    _i=0
    while [ $_i -lt 600 ]; do
        for _d in /sys/block/ublkb*; do
            [ -e "$_d/size" ] && [ "$(cat "$_d/size")" -gt 0 ] && [ -b "/dev/${_d##*/}" ] &&
                { UDEV=/dev/${_d##*/}; return 0; }
        done
        sleep 0.1; _i=$((_i + 1))
    done
    return 1
}
# pid_gone PID SECS: the process ended within SECS
pid_gone() {
    _i=0
    while kill -0 "$1" 2>/dev/null; do
        [ $_i -ge $(($2 * 10)) ] && return 1
        sleep 0.1; _i=$((_i + 1))
    done
    return 0
}

case $PHASE in
start)
    cleanup_all
    modprobe ublk_drv || fail "modprobe ublk_drv"
    LD_LIBRARY_PATH=$B/nvmf-lib "$B/nvmf" connect -a "$TADDR" -s "$PORT" -n "$NQN" --namespace 1 -i 2 >"$LOG" 2>&1 &
    echo $! >/tmp/ukill-connect.pid
    udev_wait || ufail "no device"
    echo "$UDEV" >/tmp/ukill-dev
    fio --name=ukill --filename="$UDEV" --ioengine=libaio --direct=1 --rw=randrw --bs=64k \
        --iodepth=32 --size=64M --runtime=60 --time_based --eta=never >/tmp/ukill-fio.out 2>&1 &
    echo $! >/tmp/ukill-fio.pid
    sleep 4
    kill -0 "$(cat /tmp/ukill-fio.pid)" 2>/dev/null || { cat /tmp/ukill-fio.out; ufail "fio ended early"; }
    echo "fio running on $UDEV (2 queues): cut the connections now"
    ;;
finish)
    UDEV=$(cat /tmp/ukill-dev) cpid=$(cat /tmp/ukill-connect.pid) fpid=$(cat /tmp/ukill-fio.pid)
    # fio gets EIO once the queues fail: it ends on its first error, long before its 60 s
    pid_gone "$fpid" 45 || { kill -KILL "$fpid"; ufail "fio still blocked 45 s after the connections were cut"; }
    grep -E 'err=|error' /tmp/ukill-fio.out | head -n 3
    grep -q 'err= 0' /tmp/ukill-fio.out && ufail "fio saw no error although the connections were cut"
    sed 's/\x1b\[[0-9;]*m//g' "$LOG" | grep -E 'WARN' | head -n 4
    kill -0 "$cpid" 2>/dev/null || ufail "nvmf connect died"
    nvmf disconnect "$UDEV" || ufail "nvmf disconnect after the connection loss"
    pid_gone "$cpid" 30 || ufail "nvmf connect still running after disconnect"
    for _d in /sys/block/ublkb*; do [ -e "$_d" ] && ufail "$_d still there"; done
    grep -qE 'panicked' "$LOG" && ufail "panic in nvmf connect"
    echo "after the cut: fio failed with EIO, nvmf disconnect removed $UDEV"
    # a fresh connect works
    LD_LIBRARY_PATH=$B/nvmf-lib "$B/nvmf" connect -a "$TADDR" -s "$PORT" -n "$NQN" --namespace 1 >"$LOG" 2>&1 &
    cpid=$!
    udev_wait || ufail "no device after reconnect"
    dd if=/dev/urandom of=/tmp/ukill.pat bs=1M count=1 2>/dev/null
    dd if=/tmp/ukill.pat of="$UDEV" bs=1M seek=7 count=1 conv=fsync 2>/dev/null || ufail "write after reconnect"
    echo 3 >/proc/sys/vm/drop_caches
    dd if="$UDEV" bs=1M skip=7 count=1 2>/dev/null | cmp - /tmp/ukill.pat || ufail "read back after reconnect"
    kill -TERM "$cpid"
    pid_gone "$cpid" 30 || ufail "SIGTERM"
    echo "ublk-kill: OK"
    ;;
esac
