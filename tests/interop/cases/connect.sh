# connect: queue counts and digests.
# env: TADDR PORT NQN MODE=queues|digests
. /usr/share/lab/case.sh
cleanup_all
ncpu=$(nproc)
one() { # ARGS... ; expected queue_count in $want
    nconnect "$TADDR" "$PORT" "$NQN" "$@" || fail "connect $*"
    c=$(ctrl_of "$NQN") || fail "no controller"
    dev=$(ns_dev "$NQN") || fail "no namespace"
    qc=$(cat /sys/class/nvme/$c/queue_count)
    echo "  $c state=$(cat /sys/class/nvme/$c/state) queue_count=$qc (admin + I/O) want=$want address=$(cat /sys/class/nvme/$c/address)"
    [ "$qc" = "$want" ] || fail "queue_count $qc, want $want"
    io_ok "$dev" || fail "I/O on $dev"
    ndisconnect "$NQN" || fail "disconnect"
}
case $MODE in
queues)
    echo "guest vCPUs: $ncpu (the kernel caps I/O queues at the number of CPUs)"
    want=2; one --nr-io-queues=1
    n=4; [ "$ncpu" -lt 4 ] && n=$ncpu
    want=$((n + 1)); one --nr-io-queues=4
    ;;
digests)
    # The kernel host checks the DGST bits echoed in the ICResp and refuses a queue
    # whose digests were not granted, so a working connect proves both digests.
    want=3; one --nr-io-queues=2 --hdr-digest --data-digest
    want=3; one --nr-io-queues=2 -g
    want=3; one --nr-io-queues=2 -G
    want=3; one --nr-io-queues=2
    ;;
*) fail "MODE=$MODE" ;;
esac
dmesg | grep -E 'nvme nvme[0-9]+:' | tail -n 6
echo "connect-$MODE: OK"
