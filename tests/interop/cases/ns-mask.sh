# ns-mask: per-namespace host masking against the Linux host. The guest
# connects to one subsystem twice, as host A and as host B (different
# --hostnqn/--hostid: two controllers); namespace NSID is masked to A.
# PHASE=start: A's controller lists NSID (nvme list-ns) and the kernel made a
#   namespace for it; B's does not, and Identify Namespace NSID through B is
#   all zeros (an inactive NSID).
# PHASE=added: (host side: ns add-host B) within 15 s the kernel rescans B's
#   controller on the AEN: B lists NSID and has a path to it; I/O on it works.
# PHASE=removed: (host side: ns remove-host A) within 15 s A's controller
#   drops NSID; B keeps it; disconnect both.
# env: TADDR PORT NQN HA HB NSID PHASE
. /usr/share/lab/case.sh
IDA=6e5a0001-0000-4000-8000-00000000000a
IDB=6e5a0001-0000-4000-8000-00000000000b
# ctrl_for HOSTNQN -> nvmeX: the controller of NQN connected as HOSTNQN
ctrl_for() {
    for _c in /sys/class/nvme/nvme*; do
        [ "$(cat "$_c/subsysnqn" 2>/dev/null)" = "$NQN" ] || continue
        [ "$(cat "$_c/hostnqn" 2>/dev/null)" = "$1" ] || continue
        echo "${_c##*/}"
        return 0
    done
    return 1
}
# listed CTRL: the NSIDs the controller reports (Identify active NS list), decimal
listed() {
    timeout 20 nvme list-ns "/dev/$1" 2>/dev/null | sed -n 's/.*\]:0x\([0-9a-fA-F]*\).*/\1/p' |
        while read -r _h; do printf '%d ' "0x$_h"; done
}
# kernel_has CTRL NSID: the kernel made a namespace (block device or multipath
# path) for NSID on controller CTRL
kernel_has() {
    for _d in /sys/class/nvme/"$1"/nvme*n*; do
        [ "$(cat "$_d/nsid" 2>/dev/null)" = "$2" ] && return 0
    done
    return 1
}
has() { case " $1 " in *" $2 "*) return 0 ;; esac; return 1; }
# wait_kernel CTRL NSID yes|no: up to 15 s
wait_kernel() {
    _i=0
    while [ $_i -lt 150 ]; do
        if kernel_has "$1" "$2"; then [ "$3" = yes ] && break; else [ "$3" = no ] && break; fi
        sleep 0.1; _i=$((_i + 1))
    done
    if kernel_has "$1" "$2"; then _now=yes; else _now=no; fi
    [ "$_now" = "$3" ] || { dmesg | tail -n 15; fail "$1: kernel namespace $2 present=$_now after 15 s, want $3"; }
    echo "$1: kernel namespace $2 present=$3 after $((_i * 100)) ms"
}
show() {
    for _h in "$HA" "$HB"; do
        _c=$(ctrl_for "$_h") || continue
        echo "$_c ($_h): nvme list-ns: $(listed "$_c")  kernel: $(ls -d /sys/class/nvme/"$_c"/nvme*n* 2>/dev/null | sed 's|.*/||' | tr '\n' ' ')"
    done
}
case $PHASE in
start)
    cleanup_all
    nconnect "$TADDR" "$PORT" "$NQN" --hostnqn="$HA" --hostid="$IDA" >/dev/null || fail "connect as A"
    nconnect "$TADDR" "$PORT" "$NQN" --hostnqn="$HB" --hostid="$IDB" >/dev/null || fail "connect as B"
    ca=$(ctrl_for "$HA") || fail "no controller for A"
    cb=$(ctrl_for "$HB") || fail "no controller for B"
    [ "$ca" != "$cb" ] || fail "A and B share controller $ca"
    echo "A: $ca (cntlid $(cat /sys/class/nvme/$ca/cntlid)), B: $cb (cntlid $(cat /sys/class/nvme/$cb/cntlid))"
    wait_kernel "$ca" 1 yes
    wait_kernel "$cb" 1 yes
    wait_kernel "$ca" "$NSID" yes
    la=$(listed "$ca") lb=$(listed "$cb")
    show
    has "$la" 1 && has "$la" "$NSID" || fail "A lists '$la', want 1 and $NSID"
    has "$lb" 1 || fail "B lists '$lb', want 1"
    has "$lb" "$NSID" && fail "B lists masked namespace $NSID: '$lb'"
    kernel_has "$cb" "$NSID" && fail "the kernel made namespace $NSID for B"
    # Identify Namespace of the masked NSID through B: zeros, as for an inactive NSID.
    timeout 20 nvme id-ns "/dev/$cb" -n "$NSID" >/tmp/idns.b 2>&1 || { cat /tmp/idns.b; fail "id-ns through B"; }
    timeout 20 nvme id-ns "/dev/$ca" -n "$NSID" >/tmp/idns.a 2>&1 || { cat /tmp/idns.a; fail "id-ns through A"; }
    za=$(field /tmp/idns.a nsze) zb=$(field /tmp/idns.b nsze)
    echo "id-ns $NSID: nsze '$za' through A, '$zb' through B"
    [ -n "$zb" ] && [ $((zb)) = 0 ] || { head -n 5 /tmp/idns.b; fail "B: id-ns $NSID nsze is not 0"; }
    [ -n "$za" ] && [ $((za)) != 0 ] || { head -n 5 /tmp/idns.a; fail "A: id-ns $NSID nsze is 0"; }
    if timeout 20 nvme ns-descs "/dev/$cb" -n "$NSID" >/tmp/descs.b 2>&1; then
        cat /tmp/descs.b; fail "B: namespace descriptors of masked namespace $NSID succeeded"
    fi
    echo "B: ns-descs $NSID refused: $(head -n 1 /tmp/descs.b)"
    ;;
added)
    ca=$(ctrl_for "$HA") || fail "A's controller is gone"
    cb=$(ctrl_for "$HB") || fail "B's controller is gone"
    wait_kernel "$cb" "$NSID" yes
    lb=$(listed "$cb")
    show
    has "$lb" "$NSID" || fail "B lists '$lb' after add-host, want $NSID"
    kernel_has "$ca" "$NSID" || fail "A lost namespace $NSID"
    dev=$(ns_dev "$NQN" "$NSID") || fail "no block device for namespace $NSID"
    io_ok "$dev" || fail "I/O on $dev"
    ;;
removed)
    ca=$(ctrl_for "$HA") || fail "A's controller is gone"
    cb=$(ctrl_for "$HB") || fail "B's controller is gone"
    wait_kernel "$ca" "$NSID" no
    la=$(listed "$ca")
    show
    has "$la" "$NSID" && fail "A still lists $NSID after remove-host: '$la'"
    kernel_has "$cb" "$NSID" || fail "B lost namespace $NSID"
    dev=$(ns_dev "$NQN" "$NSID") || fail "no block device for namespace $NSID (B's path)"
    io_ok "$dev" || fail "I/O on $dev through B"
    timeout 30 nvme disconnect -d "$ca" >/dev/null || fail "disconnect A"
    timeout 30 nvme disconnect -d "$cb" >/dev/null || fail "disconnect B"
    i=0
    while ctrl_of "$NQN" >/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    ctrl_of "$NQN" >/dev/null && fail "controllers left after disconnect"
    echo "ns-mask: OK"
    ;;
esac
