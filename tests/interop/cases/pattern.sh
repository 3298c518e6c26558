# pattern: dd a host-made random pattern to the namespace at SEEK_MB, read back,
# compare (MODE=write); MODE=read only reads back and compares (after a restart).
# env: TADDR PORT NQN PAT (guest path) SEEK_MB MODE
. /usr/share/lab/case.sh
cleanup_all
nconnect "$TADDR" "$PORT" "$NQN" >/dev/null || fail "connect"
dev=$(ns_dev "$NQN") || fail "ns"
mb=$(($(wc -c <"$PAT") / 1048576))
if [ "$MODE" = write ]; then
    pattern_ok "$dev" "$PAT" "$SEEK_MB" || fail "pattern mismatch"
    # a second, unaligned-size region: 4 KiB records at an odd 4 KiB offset
    dd if="$PAT" of=/tmp/small bs=4k count=33 2>/dev/null
    dd if=/tmp/small of="$dev" bs=4k seek=$((SEEK_MB * 256 - 7)) oflag=direct conv=fsync 2>/dev/null || fail "small write"
    dd if="$dev" of=/tmp/small.rb bs=4k skip=$((SEEK_MB * 256 - 7)) count=33 iflag=direct 2>/dev/null || fail "small read"
    cmp /tmp/small /tmp/small.rb || fail "small pattern mismatch"
    echo "33 x 4 KiB at LBA offset $((SEEK_MB * 256 - 7)) x 4 KiB: verified"
    # restore the big pattern's first 4 KiB blocks that the small one did not touch
    dd if="$PAT" of="$dev" bs=1M seek="$SEEK_MB" oflag=direct conv=fsync 2>/dev/null || fail "rewrite"
else
    dd if="$dev" of=/tmp/readback bs=1M skip="$SEEK_MB" count="$mb" iflag=direct 2>/dev/null || fail "read"
    cmp "$PAT" /tmp/readback || fail "pattern mismatch after restart"
    echo "pattern ${mb} MiB at ${SEEK_MB} MiB on $dev: still there"
fi
echo "sha256 $(sha256sum <"$PAT" | cut -c1-64)"
ndisconnect "$NQN" || fail "disconnect"
echo "pattern-$MODE: OK"
