# ublk: the nvmf host in the guest serves t1's namespaces as Linux block devices
# (`nvmf connect` -> /dev/ublkbN): ext4 survives disconnect + connect (sha256),
# fio randrw crc32c verify at iodepth 32, blkdiscard reaches the target as Dataset
# Management (t1's RAM namespaces read deallocated blocks as zeros), a 4 KiB-block
# namespace, `nvmf list` (text, json), `nvmf disconnect DEV|--nqn`, SIGTERM, two
# namespaces served by one `nvmf connect`.
# env: TADDR PORT NQN NQN4K RUNTIME NFILES [PT NQN_TLS TH1 TK1: t1's TLS listener, a
#      subsystem on it, a host NQN and its PSK (interchange format, compat layout)]
#      [DISCARD=zeros|none: whether the remote
#      namespace deallocates to zeros (t1's RAM) or has no discard (the ref run's
#      kernel target on null_blk): then step 5 and the DSM count are skipped]
. /usr/share/lab/case.sh
set -u
B=/lab/files
MNT=/mnt/ublk SUMS=/tmp/ublk.sha256 SEQ=0
# the host's binary with the host's libssl/libcrypto/libgcc_s (guest glibc is newer)
nvmf() { LD_LIBRARY_PATH=$B/nvmf-lib timeout 60 "$B/nvmf" "$@"; }
# ufail MSG: the failure, with the tail of the current `nvmf connect` output
ufail() {
    echo "--- nvmf connect output ($LOG):"; tail -n 30 "$LOG" 2>/dev/null
    echo "--- dd:"; cat /tmp/dd.err 2>/dev/null; echo "--- dmesg:"; dmesg | tail -n 15
    fail "$@"
}
LOG=/dev/null
cleanup_all
modprobe ublk_drv || fail "modprobe ublk_drv"
modprobe ext4 || fail "modprobe ext4"
[ -e /dev/ublk-control ] || fail "no /dev/ublk-control after modprobe ublk_drv"

# uconnect NQN [ARGS]: `nvmf connect` in the background (UPID, output in LOG); waits
# (60 s, sysfs) for its block device (UDEV) with a non-zero size
uconnect() {
    _nqn=$1; shift
    SEQ=$((SEQ + 1))
    LOG=/tmp/ublk-connect-$SEQ.log
    echo "+ nvmf connect -a $TADDR -s ${UPORT:-$PORT} -n $_nqn $(echo "$*" | sed 's/NVMeTLSkey-1:[^ ]*/<key>/g')"
    LD_LIBRARY_PATH=$B/nvmf-lib "$B/nvmf" connect -a "$TADDR" -s "${UPORT:-$PORT}" -n "$_nqn" "$@" >>"$LOG" 2>&1 &
    UPID=$!
    _i=0
    while [ $_i -lt 600 ]; do
        for _d in /sys/block/ublkb*; do
            [ -e "$_d/size" ] && [ "$(cat "$_d/size")" -gt 0 ] && [ -b "/dev/${_d##*/}" ] &&
                { UDEV=/dev/${_d##*/}; echo "  $UDEV up after $((_i / 10)).$((_i % 10)) s"; return 0; }
        done
        kill -0 $UPID 2>/dev/null || { tail -n 20 "$LOG"; return 1; }
        sleep 0.1; _i=$((_i + 1))
    done
    tail -n 20 "$LOG"; return 1
}
# ugone: the connect process ended with status 0 (30 s) and no ublk block device is left
ugone() {
    _i=0
    while kill -0 $UPID 2>/dev/null; do
        [ $_i -ge 300 ] && { tail -n 20 "$LOG"; return 1; }
        sleep 0.1; _i=$((_i + 1))
    done
    wait $UPID; _rc=$?
    [ $_rc = 0 ] || { echo "nvmf connect exit status $_rc"; tail -n 20 "$LOG"; return 1; }
    for _d in /sys/block/ublkb*; do [ -e "$_d" ] && { echo "$_d still there"; return 1; }; done
    return 0
}

echo "=== 1: connect, geometry"
uconnect "$NQN" --namespace 1 || ufail "connect"
b=${UDEV##*/}
echo "  size $(cat /sys/block/$b/size) sectors, lbs $(cat /sys/block/$b/queue/logical_block_size)," \
    "max_hw_sectors_kb $(cat /sys/block/$b/queue/max_hw_sectors_kb), nr_requests $(cat /sys/block/$b/queue/nr_requests)," \
    "discard_max_bytes $(cat /sys/block/$b/queue/discard_max_bytes), write_cache $(cat /sys/block/$b/queue/write_cache)," \
    "hw queues $(ls /sys/block/$b/mq | wc -l)"
[ "$(cat /sys/block/$b/size)" = 524288 ] || ufail "size: want 524288 sectors (256 MiB)"
[ "$(cat /sys/block/$b/queue/logical_block_size)" = 512 ] || ufail "logical block size"
[ "$(cat /sys/block/$b/queue/discard_max_bytes)" -gt 0 ] || ufail "no discard"

echo "=== 2: nvmf list"
nvmf list | tee /tmp/list.txt
grep -q "^$UDEV .*$NQN" /tmp/list.txt || ufail "nvmf list: no $UDEV"
nvmf list --output-format json >/tmp/list.json || ufail "list json"
grep -q "\"device\": \"$UDEV\"" /tmp/list.json && grep -q '"size_bytes": 268435456' /tmp/list.json &&
    grep -q '"block_size_bytes": 512' /tmp/list.json && grep -q '"nsid": 1' /tmp/list.json ||
    { cat /tmp/list.json; ufail "nvmf list json"; }

echo "=== 3: ext4, $NFILES files, disconnect, connect, checksums"
mkfs.ext4 -F -q -L ublkfs "$UDEV" || ufail "mkfs.ext4"
mkdir -p "$MNT"
mount -t ext4 "$UDEV" "$MNT" || ufail "mount"
i=1
while [ $i -le "$NFILES" ]; do
    dd if=/dev/urandom of="$MNT/file$i" bs=64k count=$((i % 4 * 4 + 4)) 2>/dev/null || ufail "write file$i"
    i=$((i + 1))
done
(cd "$MNT" && sha256sum file*) >"$SUMS"
echo "  $(wc -l <"$SUMS") files; $(df -k "$MNT" | tail -n1)"
umount "$MNT" || ufail "umount"
nvmf disconnect "$UDEV" || ufail "nvmf disconnect $UDEV"
ugone || ufail "device not removed by nvmf disconnect"
echo 3 >/proc/sys/vm/drop_caches
uconnect "$NQN" --namespace 1 || ufail "reconnect"
e2fsck -fn "$UDEV" >/tmp/e2fsck.out 2>&1 || { cat /tmp/e2fsck.out; ufail "e2fsck"; }
mount -t ext4 "$UDEV" "$MNT" || ufail "mount after reconnect"
(cd "$MNT" && sha256sum -c "$SUMS") >/tmp/ublk.check 2>&1 || { grep -v ': OK$' /tmp/ublk.check; ufail "checksum mismatch"; }
echo "  verified: $(grep -c ': OK$' /tmp/ublk.check)/$(wc -l <"$SUMS") files match"
umount "$MNT" || ufail "umount 2"

echo "=== 4: fio randrw verify, bsrange 4k-128k, iodepth 32, ${RUNTIME}s"
timeout $((RUNTIME + 120)) fio --name=ublk-randrw --filename="$UDEV" --ioengine=libaio --direct=1 \
    --rw=randrw --rwmixread=50 --bsrange=4k-128k --iodepth=32 --size=128M \
    --verify=crc32c --verify_fatal=1 --verify_backlog=512 \
    --runtime="$RUNTIME" --time_based --eta=never --group_reporting >/tmp/fio.out 2>&1
rc=$?
grep -vE '^ +(\||lat|clat|slat|bw)' /tmp/fio.out
[ $rc = 0 ] || ufail "fio rc=$rc"
grep -qiE "verify: bad|verify failed|bad magic|type mismatch|crc32c: " /tmp/fio.out && ufail "verify errors"
grep -q 'err= 0' /tmp/fio.out || ufail "fio reports errors"
# requests the block layer had in flight on the device while fio ran (inflight: reads writes)
echo "  device inflight now: $(cat /sys/block/$b/inflight)"

DISCARD=${DISCARD:-zeros}
dd if=/dev/urandom of=/tmp/rand1m bs=1M count=1 2>/dev/null
dd if=/dev/zero of=/tmp/zero1m bs=1M count=1 2>/dev/null
if [ "$DISCARD" = zeros ]; then
echo "=== 5: blkdiscard -> Dataset Management (deallocated blocks read as zeros)"
dd if=/tmp/rand1m of="$UDEV" bs=1M seek=200 count=1 conv=fsync 2>/dev/null || ufail "write at 200 MiB"
echo 3 >/proc/sys/vm/drop_caches
dd if="$UDEV" bs=1M skip=200 count=1 2>/dev/null | cmp - /tmp/rand1m || ufail "pattern not written"
blkdiscard -o $((200 << 20)) -l $((1 << 20)) "$UDEV" || ufail "blkdiscard"
echo 3 >/proc/sys/vm/drop_caches
dd if="$UDEV" bs=1M skip=200 count=1 2>/dev/null | cmp - /tmp/zero1m || ufail "discarded range does not read as zeros"
echo "  1 MiB at 200 MiB: pattern written, discarded, reads as zeros"
else
echo "=== 5: skipped (DISCARD=$DISCARD)"
fi

echo "=== 6: nvmf disconnect --nqn"
nvmf disconnect --nqn "$NQN" || ufail "nvmf disconnect --nqn"
ugone || ufail "device not removed by nvmf disconnect --nqn"
# what this session's queues sent (one line per ublk queue, logged when it stopped)
sed 's/\x1b\[[0-9;]*m//g' "$LOG" | grep 'most commands in flight' | sed 's/.*INFO [^ ]* //; s/^/  /'
dsm=$(sed -n 's/.* \([0-9][0-9]*\) dataset management.*/\1/p' "$LOG" | awk '{ s += $1 } END { print s + 0 }')
qd=$(sed -n 's/.*most commands in flight at once: \([0-9][0-9]*\).*/\1/p' "$LOG" | sort -n | tail -n 1)
echo "  Dataset Management commands completed: $dsm; most NVMe commands in flight on one queue: ${qd:-?}"
[ "$DISCARD" != zeros ] || [ "$dsm" -ge 1 ] || ufail "no Dataset Management command was sent"
[ "${qd:-0}" -gt 1 ] || ufail "the NVMe queue never had more than one command in flight"
grep -qiE 'panicked|ERROR' "$LOG" && { cat "$LOG"; ufail "errors in the nvmf connect log"; }
[ -z "$(nvmf list --output-format json | grep '"device"')" ] || ufail "nvmf list not empty"

echo "=== 7: 4 KiB blocks ($NQN4K namespace 1) with header and data digests, SIGTERM"
uconnect "$NQN4K" --namespace 1 -g -G || ufail "connect 4k"
b=${UDEV##*/}
[ "$(cat /sys/block/$b/queue/logical_block_size)" = 4096 ] || ufail "4k: logical block size $(cat /sys/block/$b/queue/logical_block_size)"
[ "$(cat /sys/block/$b/size)" = 131072 ] || ufail "4k: size $(cat /sys/block/$b/size)"
dd if=/tmp/rand1m of="$UDEV" bs=1M seek=3 count=1 conv=fsync 2>/tmp/dd.err || ufail "4k: write"
echo 3 >/proc/sys/vm/drop_caches
dd if="$UDEV" bs=1M skip=3 count=1 2>/dev/null | cmp - /tmp/rand1m || ufail "4k: read back differs"
kill -TERM $UPID
ugone || ufail "SIGTERM did not remove the device"
echo "  4 KiB-block device with digests: 1 MiB round trip; SIGTERM removed it"

echo "=== 8: every namespace of $NQN4K (a controller each): two devices"
uconnect "$NQN4K" || ufail "connect all namespaces"
_i=0
while [ "$(ls -d /sys/block/ublkb* 2>/dev/null | wc -l)" -lt 2 ]; do
    [ $_i -ge 300 ] && ufail "no second device"
    sleep 0.1; _i=$((_i + 1))
done
nvmf list | tee /tmp/list2.txt
nvmf list --output-format json >/tmp/list2.json || ufail "list json"
grep -q '"size_bytes": 67108864' /tmp/list2.json && grep -q '"size_bytes": 1099511627776' /tmp/list2.json &&
    grep -q '"nsid": 2' /tmp/list2.json || { cat /tmp/list2.json; ufail "nvmf list: both namespaces"; }
nvmf disconnect --nqn "$NQN4K" || ufail "nvmf disconnect --nqn (2 devices)"
ugone || ufail "devices not removed"
if [ -n "${PT:-}" ]; then
    echo "=== 9: over TLS 1.3 (PSK, t1's TLS listener): fio randrw verify, iodepth 32, 10s"
    UPORT=$PT uconnect "$NQN_TLS" -q "$TH1" --tls-key "$TK1" --tls-key-compat || ufail "connect over TLS"
    timeout 130 fio --name=ublk-tls --filename="$UDEV" --ioengine=libaio --direct=1 \
        --rw=randrw --rwmixread=50 --bsrange=4k-128k --iodepth=32 --size=64M \
        --verify=crc32c --verify_fatal=1 --verify_backlog=512 \
        --runtime=10 --time_based --eta=never --group_reporting >/tmp/fio-tls.out 2>&1
    rc=$?
    grep -E 'err=|IOPS' /tmp/fio-tls.out
    [ $rc = 0 ] || { cat /tmp/fio-tls.out; ufail "fio over TLS rc=$rc"; }
    grep -qiE "verify: bad|verify failed|bad magic|type mismatch|crc32c: " /tmp/fio-tls.out && ufail "verify errors over TLS"
    grep -q 'err= 0' /tmp/fio-tls.out || ufail "fio reports errors over TLS"
    nvmf disconnect --nqn "$NQN_TLS" || ufail "disconnect TLS"
    ugone || ufail "TLS device not removed"
    sed 's/\x1b\[[0-9;]*m//g' "$LOG" | grep 'most commands in flight' | sed 's/.*INFO [^ ]* //; s/^/  /'
fi
echo "ublk: OK"
