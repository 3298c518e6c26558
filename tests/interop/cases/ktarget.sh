# ktarget: the Linux kernel target (nvmet-tcp), as reference target and as the
# target of the host cases. Idempotent: clears what is there first.
# env: KT_SUBSYS="nqn:size_mb:block_size ..." (nsid 1 each, memory-backed null_blk)
#      KT_PORTS="4420 8009" (0.0.0.0, every subsystem linked to every port)
#      KT_SERIAL / KT_MODEL (optional, set on every subsystem: serial gets -<index>)
#      KT_RESTRICT="nqn|hostnqn" (optional: only that host may use that subsystem;
#      nvmet then also leaves it out of other hosts' discovery logs)
. /usr/share/lab/case.sh
. /usr/share/lab/nvmet.sh
set -u
cleanup_all
nvmet_clear
modprobe null_blk nr_devices=0 || exit 1
for d in /sys/kernel/config/nullb/kt*; do
    [ -d "$d" ] || continue
    echo 0 >"$d/power"; rmdir "$d"
done
i=0
for spec in $KT_SUBSYS; do
    bs=${spec##*:}; rest=${spec%:*}; mb=${rest##*:}; nqn=${rest%:*}
    d=/sys/kernel/config/nullb/kt$i
    mkdir "$d" && echo "$mb" >"$d/size" && echo 1 >"$d/memory_backed" &&
        echo "$bs" >"$d/blocksize" && echo 1 >"$d/power" || exit 1
    dev=/dev/kt$i
    [ -b "$dev" ] || dev=/dev/nullb$(cat "$d/index")
    nvmet_subsys "$nqn" || exit 1
    s=$NVMET/subsystems/$nqn
    [ -n "${KT_SERIAL:-}" ] && echo "$KT_SERIAL-$i" >"$s/attr_serial"
    [ -n "${KT_MODEL:-}" ] && echo "$KT_MODEL" >"$s/attr_model"
    mkdir -p "$s/namespaces/1"
    echo "$dev" >"$s/namespaces/1/device_path"
    # nvmet leaves the NGUID zero unless told; make it unique like a real target
    printf '%08x-0000-4000-8000-%012x\n' $((0x4e564d46 + i)) $((i + 1)) >"$s/namespaces/1/device_nguid"
    echo 1 >"$s/namespaces/1/enable" || exit 1
    echo "subsystem $nqn: nsid 1 -> $dev (${mb} MiB, ${bs} B blocks)"
    i=$((i + 1))
done
if [ -n "${KT_RESTRICT:-}" ]; then
    nvmet_allow_host "${KT_RESTRICT%%|*}" "${KT_RESTRICT#*|}" || exit 1
    echo "subsystem ${KT_RESTRICT%%|*}: only host ${KT_RESTRICT#*|}"
fi
p=1
for port in $KT_PORTS; do
    nvmet_port "$p" "$port" || exit 1
    for spec in $KT_SUBSYS; do rest=${spec%:*}; nvmet_link "$p" "${rest%:*}" || exit 1; done
    echo "port $p: tcp 0.0.0.0:$port"
    p=$((p + 1))
done
