# disconnect: connect two subsystems, I/O, `nvme disconnect` each; clean rc/output,
# the controllers and block devices are gone.
# env: TADDR PORT NQNS
. /usr/share/lab/case.sh
cleanup_all
for n in $NQNS; do
    nconnect "$TADDR" "$PORT" "$n" >/dev/null || fail "connect $n"
    io_ok "$(ns_dev "$n")" || fail "io $n"
done
for n in $NQNS; do
    c=$(ctrl_of "$n")
    out=$(timeout 30 nvme disconnect -n "$n" 2>&1); rc=$?
    echo "+ nvme disconnect -n $n: rc=$rc: $out"
    [ $rc = 0 ] || fail "rc $rc"
    case $out in *"disconnected 1 controller"*) ;; *) fail "unexpected output" ;; esac
    i=0; while [ -e "/sys/class/nvme/$c" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    [ ! -e "/sys/class/nvme/$c" ] || fail "$c still exists"
done
ls /dev/nvme[0-9]* 2>/dev/null && fail "nvme device nodes left"
dmesg | grep -E 'nvme nvme[0-9]+:' | tail -n 4
echo "disconnect: OK"
