# fs: ext4 on the namespace survives umount, disconnect, reconnect (sha256 of files).
# env: TADDR PORT NQN NFILES
. /usr/share/lab/case.sh
set -u
cleanup_all
MNT=/mnt/nvmf SUMS=/tmp/fs.sha256
modprobe ext4 || fail "modprobe ext4"
nconnect "$TADDR" "$PORT" "$NQN" >/dev/null || fail "connect"
ns=$(ns_dev "$NQN") || fail "ns"
mkfs.ext4 -F -q -L nvmffs "$ns" || fail "mkfs.ext4 $ns"
mkdir -p "$MNT"
mount -t ext4 "$ns" "$MNT" || fail "mount"
i=1
while [ $i -le "$NFILES" ]; do
    dd if=/dev/urandom of="$MNT/file$i" bs=64k count=$((i % 4 * 4 + 4)) 2>/dev/null || fail "write file$i"
    i=$((i + 1))
done
mkdir -p "$MNT/dir/sub" && echo hello >"$MNT/dir/sub/small" && ln -s ../file1 "$MNT/dir/link"
(cd "$MNT" && sha256sum file* dir/sub/small) >"$SUMS"
echo "$(wc -l <"$SUMS") files written on $ns; $(df -k "$MNT" | tail -n1)"
umount "$MNT" || fail "umount"
ndisconnect "$NQN" || fail "disconnect"
echo 3 >/proc/sys/vm/drop_caches
nconnect "$TADDR" "$PORT" "$NQN" >/dev/null || fail "reconnect"
ns=$(ns_dev "$NQN") || fail "ns after reconnect"
e2fsck -fn "$ns" || fail "e2fsck"
mount -t ext4 "$ns" "$MNT" || fail "mount after reconnect"
(cd "$MNT" && sha256sum -c "$SUMS") >/tmp/fs.check 2>&1 || { grep -v ': OK$' /tmp/fs.check; fail "checksum mismatch"; }
[ "$(readlink "$MNT/dir/link")" = ../file1 ] || fail "symlink lost"
echo "verified: $(grep -c ': OK$' /tmp/fs.check)/$(wc -l <"$SUMS") files match on $ns"
umount "$MNT" || fail "umount"
ndisconnect "$NQN" || fail "disconnect"
echo "fs: OK"
