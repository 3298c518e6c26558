# mgmt-live-ns: a namespace added / removed through `nvmf ctl` while fio verify
# runs on another namespace of the same subsystem.
# PHASE=start: connect NQN, fio verify on nsid 1 in the background (45 s).
# PHASE=added: nsid 2 shows up (AEN -> rescan) within 10 s, in `nvme list` too; I/O on it.
# PHASE=removed: nsid 2 disappears within 10 s; fio on nsid 1 ends with 0 errors.
# env: TADDR PORT NQN PHASE
. /usr/share/lab/case.sh
alive() { [ -e "/proc/$1" ] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }
# nsdev_now NQN NSID: the block device right now (no waiting), or nothing
nsdev_now() {
    for _b in /sys/block/nvme*n*; do
        [ -b "/dev/${_b##*/}" ] || continue
        [ "$(cat "$_b/device/subsysnqn" 2>/dev/null)" = "$1" ] || continue
        [ "$(cat "$_b/nsid" 2>/dev/null)" = "$2" ] || continue
        echo "/dev/${_b##*/}"; return 0
    done
    return 1
}
case $PHASE in
start)
    cleanup_all
    nconnect "$TADDR" "$PORT" "$NQN" >/dev/null || fail "connect"
    dev=$(ns_dev "$NQN" 1) || fail "ns 1"
    nsdev_now "$NQN" 2 && fail "nsid 2 exists before it was added"
    setsid fio --name=live --filename="$dev" --ioengine=libaio --direct=1 --rw=randrw --rwmixread=50 \
        --bssplit=4k/40:16k/30:64k/30 --iodepth=16 --size=64M --verify=crc32c --verify_fatal=1 \
        --verify_backlog=256 --runtime=45 --time_based --eta=never >/tmp/live.fio 2>&1 </dev/null &
    echo $! >/tmp/live.pid
    sleep 2
    alive "$(cat /tmp/live.pid)" || { cat /tmp/live.fio; fail "fio did not start"; }
    echo "fio (pid $(cat /tmp/live.pid)) running on $dev"
    ;;
added)
    i=0
    while ! nsdev_now "$NQN" 2 >/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    dev2=$(nsdev_now "$NQN" 2) || { dmesg | tail -n 10; fail "nsid 2 did not appear within 10 s"; }
    echo "nsid 2 appeared as $dev2 after $((i * 100)) ms"
    nvme list | grep -q "${dev2#/dev/}" || fail "nvme list does not show $dev2"
    nvme list | grep -E "^/dev/nvme|^Node" | head -n 5
    io_ok "$dev2" || fail "I/O on the new namespace"
    alive "$(cat /tmp/live.pid)" || { cat /tmp/live.fio; fail "fio on nsid 1 ended early"; }
    ;;
removed)
    i=0
    while nsdev_now "$NQN" 2 >/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    nsdev_now "$NQN" 2 >/dev/null && { dmesg | tail -n 10; fail "nsid 2 still present 10 s after removal"; }
    echo "nsid 2 gone after $((i * 100)) ms"
    pid=$(cat /tmp/live.pid)
    i=0
    while alive "$pid" && [ $i -lt 900 ]; do sleep 0.1; i=$((i + 1)); done
    alive "$pid" && { kill -9 "$pid"; fail "fio did not finish"; }
    grep -vE '^ +(\||lat|clat|slat|bw|iops)' /tmp/live.fio | head -n 30
    grep -qiE "verify: bad|verify failed|bad magic|type mismatch|crc32c: " /tmp/live.fio && fail "verify errors"
    grep -q 'err= 0' /tmp/live.fio || fail "fio reports errors"
    ndisconnect "$NQN" || fail "disconnect"
    echo "mgmt-live-ns: OK"
    ;;
esac
