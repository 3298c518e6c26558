# fio: randrw, mixed 4k-128k blocks (bssplit), iodepth 32, crc32c verify
# (verify_backlog makes fio re-read and check what it wrote while running).
# env: TADDR PORT NQN RUNTIME (s) SIZE (fio region, e.g. 128M) [CONNECT_ARGS]
. /usr/share/lab/case.sh
cleanup_all
# shellcheck disable=SC2086
nconnect "$TADDR" "$PORT" "$NQN" ${CONNECT_ARGS:-} >/dev/null || fail "connect"
dev=$(ns_dev "$NQN") || fail "ns"
echo "+ fio on $dev (${RUNTIME}s, region ${SIZE})"
timeout $((RUNTIME + 90)) fio --name=nvmf-randrw --filename="$dev" --ioengine=libaio --direct=1 \
    --rw=randrw --rwmixread=50 --bssplit=4k/30:8k/15:16k/15:32k/15:64k/15:128k/10 \
    --iodepth=32 --size="$SIZE" --verify=crc32c --verify_fatal=1 --verify_backlog=512 \
    --runtime="$RUNTIME" --time_based --eta=never --group_reporting >/tmp/fio.out 2>&1
rc=$?
grep -vE '^ +(\||lat|clat|slat|bw|iops)' /tmp/fio.out
ndisconnect "$NQN" || fail "disconnect"
[ $rc = 0 ] || fail "fio rc=$rc"
grep -qiE "verify: bad|verify failed|bad magic|type mismatch|crc32c: " /tmp/fio.out && fail "verify errors"
grep -q 'err= 0' /tmp/fio.out || fail "fio reports errors"
echo "fio: OK"
