# auth: the Linux host authenticates to nvmf target with DH-HMAC-CHAP.
# env: TADDR PORT NQN, and per host table of the target (see run.sh auth_config):
#   H1 K1 (sha256/ffdhe2048), H2 K2 (sha512/ffdhe4096), H3 K3 (null group),
#   H4 K4 CK4 (bidirectional), KX (a key nobody has), CKX (a wrong controller key)
. /usr/share/lab/case.sh
cleanup_all
mark=$(dmesg | wc -l)
newdmesg() { dmesg | tail -n +$((mark + 1)) | grep -iE 'nvme|auth' | tail -n 6; mark=$(dmesg | wc -l); }
ok() { # NAME HOSTNQN ARGS...: connect as HOSTNQN with ARGS, check every queue authenticated, I/O
    _name=$1 _h=$2
    shift 2
    nconnect "$TADDR" "$PORT" "$NQN" --hostnqn="$_h" --nr-io-queues=2 "$@" >/dev/null || { newdmesg; fail "$_name: connect"; }
    c=$(ctrl_of "$NQN") || fail "$_name: no controller"
    dev=$(ns_dev "$NQN") || fail "$_name: no namespace"
    io_ok "$dev" || fail "$_name: I/O"
    echo "  $_name: $c queue_count=$(cat /sys/class/nvme/$c/queue_count)"
    newdmesg
    ndisconnect "$NQN" || fail "$_name: disconnect"
}
refused() { # NAME HOSTNQN ARGS...
    _name=$1 _h=$2
    shift 2
    if nconnect "$TADDR" "$PORT" "$NQN" --hostnqn="$_h" "$@" >/dev/null; then
        ndisconnect "$NQN"
        fail "$_name: connected"
    fi
    [ -z "$(ctrl_of "$NQN")" ] || fail "$_name: controller left behind"
    echo "  $_name: refused (as wanted)"
    newdmesg
}
ok "sha256/ffdhe2048" "$H1" --dhchap-secret="$K1"
ok "sha512/ffdhe4096" "$H2" --dhchap-secret="$K2"
ok "null group" "$H3" --dhchap-secret="$K3"
ok "bidirectional" "$H4" --dhchap-secret="$K4" --dhchap-ctrl-secret="$CK4"
refused "wrong host key" "$H1" --dhchap-secret="$KX"
refused "no key" "$H1"
refused "wrong controller key" "$H4" --dhchap-secret="$K4" --dhchap-ctrl-secret="$CKX"
echo "auth: OK"
