# mgmt-resize: a live resize of a file-backed namespace reaches the block layer.
# PHASE=connect: connect, /sys/block/<dev>/size == SECTORS.
# PHASE=check: within 10 s /sys/block/<dev>/size == SECTORS (the new size), I/O at its end.
# env: TADDR PORT NQN NSID SECTORS PHASE
. /usr/share/lab/case.sh
case $PHASE in
connect)
    cleanup_all
    nconnect "$TADDR" "$PORT" "$NQN" >/dev/null || fail "connect"
    dev=$(ns_dev "$NQN" "$NSID") || fail "ns $NSID"
    s=$(cat "/sys/block/${dev#/dev/}/size")
    echo "$dev: $s sectors"
    [ "$s" = "$SECTORS" ] || fail "size $s, want $SECTORS"
    ;;
check)
    dev=$(ns_dev "$NQN" "$NSID") || fail "ns $NSID"
    i=0
    while [ "$(cat "/sys/block/${dev#/dev/}/size")" != "$SECTORS" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    s=$(cat "/sys/block/${dev#/dev/}/size")
    [ "$s" = "$SECTORS" ] || { dmesg | tail -n 10; fail "size $s after 10 s, want $SECTORS"; }
    echo "$dev: $s sectors after $((i * 100)) ms"
    dd if=/dev/urandom of=/tmp/tail.pat bs=1M count=1 2>/dev/null
    dd if=/tmp/tail.pat of="$dev" bs=1M seek=$((SECTORS / 2048 - 1)) oflag=direct conv=fsync 2>/dev/null || fail "write at the new end"
    dd if="$dev" of=/tmp/tail.rb bs=1M skip=$((SECTORS / 2048 - 1)) count=1 iflag=direct 2>/dev/null || fail "read at the new end"
    cmp /tmp/tail.pat /tmp/tail.rb || fail "data at the new end"
    echo "last MiB written and read back"
    ndisconnect "$NQN" || fail "disconnect"
    echo "mgmt-resize: OK"
    ;;
esac
