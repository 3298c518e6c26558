# identify: nvme list / id-ctrl / id-ns give sane values.
# env: TADDR PORT NQNS ("nqn:nsid:bytes:lbasize ...": expected namespaces)
. /usr/share/lab/case.sh
cleanup_all
done_nqn=' '
for spec in $NQNS; do
    nqn=${spec%:*:*:*}; rest=${spec#"$nqn":}
    nsid=${rest%%:*}; rest=${rest#*:}; bytes=${rest%%:*}; lbasz=${rest#*:}
    case $done_nqn in *" $nqn "*) ;; *)
        nconnect "$TADDR" "$PORT" "$nqn" >/dev/null || fail "connect $nqn"
        done_nqn="$done_nqn$nqn "
        c=$(ctrl_of "$nqn") || fail "no controller for $nqn"
        nvme id-ctrl "/dev/$c" >/tmp/ic || fail "id-ctrl $c"
        sn=$(field /tmp/ic sn); mn=$(field /tmp/ic mn); fr=$(field /tmp/ic fr)
        echo "id-ctrl $c ($nqn): sn='$sn' mn='$mn' fr='$fr' subnqn='$(field /tmp/ic subnqn)' ver=$(field /tmp/ic ver) mdts=$(field /tmp/ic mdts) nn=$(field /tmp/ic nn) ioccsz=$(field /tmp/ic ioccsz) cntlid=$(field /tmp/ic cntlid)"
        [ -n "$sn" ] || fail "empty serial"
        [ -n "$mn" ] || fail "empty model"
        [ -n "$fr" ] || fail "empty firmware revision"
        [ "$(field /tmp/ic subnqn)" = "$nqn" ] || fail "id-ctrl subnqn != $nqn"
        [ "$(sed 's/ *$//' /sys/class/nvme/$c/serial)" = "$sn" ] || fail "sysfs serial differs"
        ;;
    esac
    dev=$(ns_dev "$nqn" "$nsid") || fail "no namespace $nsid of $nqn"
    nvme id-ns "$dev" >/tmp/in || fail "id-ns $dev"
    nsze=$(($(field /tmp/in nsze))); ncap=$(($(field /tmp/in ncap)))
    flbas=$(($(field /tmp/in flbas) & 15))
    lbads=$(awk -v i="$flbas" '$1 == "lbaf" && $2 == i { for (f = 1; f <= NF; f++) if ($f ~ /^lbads:/) { sub(/lbads:/, "", $f); print $f } }' /tmp/in)
    nguid=$(field /tmp/in nguid); eui=$(field /tmp/in eui64)
    got_lba=$((1 << lbads))
    echo "id-ns $dev: nsze=$nsze ncap=$ncap flbas=$flbas lbads=$lbads ($got_lba B) nguid=$nguid eui64=$eui"
    echo "  size: $((nsze * got_lba)) bytes, want $bytes; LBA $got_lba, want $lbasz"
    [ "$got_lba" = "$lbasz" ] || fail "LBA size $got_lba != $lbasz"
    [ "$((nsze * got_lba))" = "$bytes" ] || fail "namespace size $((nsze * got_lba)) != $bytes"
    [ "$ncap" -le "$nsze" ] && [ "$ncap" -gt 0 ] || fail "ncap $ncap"
    case $nguid in "" | *[!0]*) ;; *) fail "NGUID is all zero" ;; esac
    [ -n "$nguid" ] || fail "no NGUID"
    # the block layer agrees
    blk=$(cat /sys/block/${dev#/dev/}/queue/logical_block_size)
    sz=$(($(cat /sys/block/${dev#/dev/}/size) * 512))
    echo "  block layer: logical_block_size=$blk size=$sz"
    [ "$blk" = "$lbasz" ] && [ "$sz" = "$bytes" ] || fail "block layer disagrees"
done
echo "+ nvme list"
nvme list
for nqn in $done_nqn; do
    dev=$(ns_dev "$nqn") || fail "ns"
    nvme list | grep -q "^$dev " || fail "nvme list misses $dev"
done
nvme list-subsys 2>&1 | head -n 20
cleanup_all
echo "identify: OK"
