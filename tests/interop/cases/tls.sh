# tls: the Linux 6.12 host connects to nvmf target over TLS 1.3 (tlshd does the
# handshake in the guest, kTLS carries the records).
# env: TADDR PT (tls = "required" listener) PA (plain listener, every subsystem)
#   NQN RUNTIME, hosts/keys TH1 TK1 (SHA-256) TH2 TK2 (SHA-384) TH3 TK3 TD3 (TLS +
#   DH-HMAC-CHAP) TH_V1 TK_V1 (v1 identity) TH_RFC TK_RFC (target derives with the
#   RFC 8446 layout) TH_WRONG (the target has another key than TKX, the guest's);
#   see tls-target.sh.
. /usr/share/lab/case.sh
cleanup_all
DISC=nqn.2014-08.org.nvmexpress.discovery
modprobe nvme-tcp 2>/dev/null
modprobe tls 2>/dev/null
tlshd_running() {
    for _p in /proc/[0-9]*/comm; do [ "$(cat "$_p" 2>/dev/null)" = tlshd ] && return 0; done
    return 1
}
if ! tlshd_running; then
    tlshd >/tmp/tlshd.log 2>&1 &
    sleep 1
fi
tlshd_running || { cat /tmp/tlshd.log; fail "tlshd does not run"; }
echo "# $(nvme version | head -n 1), $(nvme version | grep -i libnvme), tlshd $(tlshd -v 2>&1 | head -n 1)"
mark=$(dmesg | wc -l)
newdmesg() { dmesg | tail -n +$((mark + 1)) | grep -iE 'nvme|tls' | tail -n 6; mark=$(dmesg | wc -l); }
# insert HOST KEY [SUBNQN] [IDENTITY_VERSION]: the key into .nvme, as libnvme derives it; prints the serial
insert() {
    _out=$(nvme check-tls-key --insert --hostnqn="$1" --subsysnqn="${3:-$NQN}" --keydata="$2" \
        --identity="${4:-0}" 2>&1) || { echo "$_out" >&2; return 1; }
    _s=${_out##* }
    case $_s in 0x*) ;; *) _s=0x$_s ;; esac
    echo "$_s"
}
ok_tls() { # NAME HOSTNQN ARGS...: TLS connect, every queue up, I/O, disconnect
    _name=$1 _h=$2
    shift 2
    nconnect "$TADDR" "$PT" "$NQN" --hostnqn="$_h" --nr-io-queues=2 --tls "$@" >/dev/null ||
        { newdmesg; tail -n 5 /tmp/tlshd.log; fail "$_name: connect"; }
    c=$(ctrl_of "$NQN") || fail "$_name: no controller"
    dev=$(ns_dev "$NQN") || fail "$_name: no namespace"
    io_ok "$dev" || fail "$_name: I/O"
    echo "  $_name: $c queue_count=$(cat /sys/class/nvme/$c/queue_count) tls_key=$(cat /sys/class/nvme/$c/tls_key 2>/dev/null || echo -)"
    newdmesg
    ndisconnect "$NQN" || fail "$_name: disconnect"
}
refused() { # NAME PORT HOSTNQN ARGS...
    _name=$1 _p=$2 _h=$3
    shift 3
    if nconnect "$TADDR" "$_p" "$NQN" --hostnqn="$_h" "$@" >/dev/null 2>&1; then
        ndisconnect "$NQN"
        fail "$_name: connected"
    fi
    [ -z "$(ctrl_of "$NQN")" ] || fail "$_name: controller left behind"
    echo "  $_name: refused (as wanted)"
    newdmesg
}

s1=$(insert "$TH1" "$TK1") || fail "insert TK1"
s2=$(insert "$TH2" "$TK2") || fail "insert TK2"
s3=$(insert "$TH3" "$TK3") || fail "insert TK3"
insert "$TH1" "$TK1" "$DISC" >/dev/null || fail "insert TK1 (discovery)"
sr=$(insert "$TH_RFC" "$TK_RFC") || fail "insert TK_RFC"
insert "$TH_WRONG" "$TKX" >/dev/null || fail "insert TKX"
sv=$(insert "$TH_V1" "$TK_V1" "$NQN" 1) || fail "insert TK_V1"
echo "# .nvme keys:"
keyctl show %:.nvme 2>/dev/null | sed -n '2,$p' | sed 's/^/#   /'

ok_tls "v0 identity, SHA-256 (TLS_AES_128_GCM_SHA256)" "$TH1"
ok_tls "v0 identity, SHA-384 (TLS_AES_256_GCM_SHA384)" "$TH2"
ok_tls "TLS + DH-HMAC-CHAP" "$TH3" --dhchap-secret="$TD3"
ok_tls "v1 identity (key $sv given by serial)" "$TH_V1" --tls_key="$sv"

# Same v0 identity, another PSK: the handshake fails (binder).
refused "wrong PSK" "$PT" "$TH_WRONG" --tls
refused "plain connect to the TLS-required listener" "$PT" "$TH1"
refused "TLS host in clear on the plain listener" "$PA" "$TH1"
if nconnect "$TADDR" "$PT" "$NQN" --hostnqn="$TH_RFC" --tls >/dev/null 2>&1; then
    echo "  RFC 8446 layout: accepted, so this libnvme derives with the RFC layout"
    ndisconnect "$NQN"
else
    echo "  RFC 8446 layout: refused, so this libnvme derives with the pre-1.16 layout (tls_key_compat)"
fi
newdmesg

echo "+ nvme discover --tls (port $PT)"
timeout 60 nvme discover -t tcp -a "$TADDR" -s "$PT" --hostnqn="$TH1" --tls >/tmp/disc.out 2>&1 ||
    { cat /tmp/disc.out; newdmesg; fail "discover over TLS"; }
grep -E 'subtype|subnqn|trsvcid|treq|sectype|tsas' /tmp/disc.out | sed 's/^/  /'
awk -v p="$PT" '
    function check() { if (port == p) { seen++; if (!(treq ~ /required/ && treq !~ /not required/ && sec ~ /tls1?\.?3/)) bad++ } }
    /^=====Discovery Log Entry/ { check(); treq = ""; port = ""; sec = "" }
    /^treq/ { treq = $0 } /^trsvcid/ { port = $2 } /^sectype/ { sec = $2 }
    END { check(); exit !(seen > 0 && bad == 0) }' /tmp/disc.out ||
    fail "the TLS port's discovery entries do not say treq required / sectype tls1.3"

echo "+ fio randrw verify over TLS with header and data digests (${RUNTIME}s)"
nconnect "$TADDR" "$PT" "$NQN" --hostnqn="$TH1" --tls --hdr-digest --data-digest --nr-io-queues=2 >/dev/null ||
    fail "connect for fio"
dev=$(ns_dev "$NQN") || fail "ns for fio"
timeout $((RUNTIME + 90)) fio --name=nvmf-tls --filename="$dev" --ioengine=libaio --direct=1 \
    --rw=randrw --rwmixread=50 --bssplit=4k/30:8k/15:16k/15:32k/15:64k/15:128k/10 \
    --iodepth=32 --size=128M --verify=crc32c --verify_fatal=1 --verify_backlog=512 \
    --runtime="$RUNTIME" --time_based --eta=never --group_reporting >/tmp/fio.out 2>&1
rc=$?
grep -E 'err=|read:|write:|Run status' /tmp/fio.out | sed 's/^/  /'
ndisconnect "$NQN" || fail "disconnect after fio"
[ $rc = 0 ] || fail "fio rc=$rc"
grep -qiE "verify: bad|verify failed|bad magic|crc32c: " /tmp/fio.out && fail "verify errors"
grep -q 'err= 0' /tmp/fio.out || fail "fio reports errors"
newdmesg
echo "tls: OK"
