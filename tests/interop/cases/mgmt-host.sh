# mgmt-host.sh - HOST side of the live-management cases (sourced by run.sh;
# the guest sides are cases/mgmt-*.sh like every other case script).
#
# t4 is a dedicated target with a management socket ($STATE/t4.sock), so that
# live changes never disturb the other cases:
#   I/O 127.0.0.1:PM, discovery 127.0.0.1:PMD, subsystem nqn.2026-11.io.nvmf:mgmt
#   (nsid 1: ram 128 MiB). PML is a forwarded port nothing listens on until
#   mgmt-live-subsystem adds a listener there.

SUBNQN_MGMT=nqn.2026-11.io.nvmf:mgmt
SUBNQN_MGMT2=nqn.2026-11.io.nvmf:mgmt-live

# mgmt_config: called at the end of target_config: t4's ports and guest forwards.
mgmt_config() {
    local pm pmd pml
    pm=$(free_port) pmd=$(free_port) pml=$(free_port)
    echo "PM=$pm PMD=$pmd PML=$pml" >>"$STATE/target.env"
    printf ' %s:%s %s:%s %s:%s' "$pm" "$pm" "$pmd" "$pmd" "$pml" "$pml" >>"$STATE/target.guestfwd"
    # (target.guestfwd is one line; run.sh wrote it with a trailing newline)
    tr '\n' ' ' <"$STATE/target.guestfwd" | sed 's/  */ /g; s/ $//' >"$STATE/target.guestfwd.tmp"
    mv "$STATE/target.guestfwd.tmp" "$STATE/target.guestfwd"
    echo "$pm $pmd" >"$STATE/t4.ports"
}

# mgmt_t4: make sure t4 runs (started on first use).
mgmt_t4() {
    tenv
    talive t4 && return 0
    tstart t4 --listen "127.0.0.1:$PM" --discovery-listen "127.0.0.1:$PMD" \
        --subsystem "$SUBNQN_MGMT" --namespace ram:128MiB --rpc-socket "$STATE/t4.sock"
}

# ctl ARGS...: nvmf ctl against t4, echoed, bounded
ctl() {
    echo "+ nvmf ctl $*"
    timeout 30 "$NVMF" ctl --rpc-socket "$STATE/t4.sock" "$@"
}

c_mgmt_live_namespace() {
    mgmt_t4 || return 1
    step "fio verify on nsid 1 in the background"
    gexec target 60 mgmt-live-ns.sh TADDR=$G PORT="$PM" NQN=$SUBNQN_MGMT PHASE=start
    step "add nsid 2 live"
    ctl namespace add --subsystem "$SUBNQN_MGMT" --namespace ram:64MiB --nsid 2
    gexec target 60 mgmt-live-ns.sh TADDR=$G PORT="$PM" NQN=$SUBNQN_MGMT PHASE=added
    step "remove nsid 2 live"
    ctl namespace remove --subsystem "$SUBNQN_MGMT" --nsid 2
    gexec target 120 mgmt-live-ns.sh TADDR=$G PORT="$PM" NQN=$SUBNQN_MGMT PHASE=removed
    ctl controllers
    talive t4
}

c_mgmt_live_subsystem() {
    mgmt_t4 || return 1
    step "add a subsystem and a listener for it live"
    ctl subsystem add "$SUBNQN_MGMT2" --namespace ram:32MiB
    ctl listener add "127.0.0.1:$PML" --subsystem "$SUBNQN_MGMT2"
    ctl listener list
    gexec target 90 mgmt-discover.sh TADDR=$G DPORT="$PMD" NQN=$SUBNQN_MGMT2 PORT="$PML"
    step "remove them again"
    ctl listener remove "127.0.0.1:$PML"
    ctl subsystem remove "$SUBNQN_MGMT2"
    talive t4
}

c_mgmt_resize() {
    mgmt_t4 || return 1
    local img=$STATE/mgmt-resize.img
    rm -f "$img"
    step "file-backed nsid 3 (32 MiB), guest connected"
    ctl namespace add --subsystem "$SUBNQN_MGMT" --namespace "file:$img:32MiB" --nsid 3
    gexec target 60 mgmt-resize.sh TADDR=$G PORT="$PM" NQN=$SUBNQN_MGMT NSID=3 SECTORS=65536 PHASE=connect
    step "resize to 64 MiB live"
    ctl namespace resize --subsystem "$SUBNQN_MGMT" --nsid 3 --size 64MiB
    echo "backing file: $(stat -c %s "$img") bytes"
    gexec target 60 mgmt-resize.sh TADDR=$G PORT="$PM" NQN=$SUBNQN_MGMT NSID=3 SECTORS=131072 PHASE=check
    ctl namespace remove --subsystem "$SUBNQN_MGMT" --nsid 3
    talive t4
}

# target-ns-mask: namespace NSID_MASK of t4 masked to host A; the guest connects
# as A and as B (cases/ns-mask.sh); ns add-host B, ns remove-host A live.
NSID_MASK=5
HOST_MASK_A=nqn.2026-12.io.nvmf:interop-host-a
HOST_MASK_B=nqn.2026-12.io.nvmf:interop-host-b
c_target_ns_mask() {
    mgmt_t4 || return 1
    local args=(TADDR=$G PORT="$PM" NQN=$SUBNQN_MGMT HA=$HOST_MASK_A HB=$HOST_MASK_B NSID=$NSID_MASK)
    # (a leftover of an earlier failed run goes first)
    ctl namespace remove --subsystem "$SUBNQN_MGMT" --nsid $NSID_MASK >/dev/null 2>&1 || true
    step "nsid $NSID_MASK (ram 32 MiB) for host A only; the guest connects as A and as B"
    ctl namespace add --subsystem "$SUBNQN_MGMT" --namespace ram:32MiB --nsid $NSID_MASK --host "$HOST_MASK_A" || return 1
    ctl subsystem get "$SUBNQN_MGMT"
    gexec target 90 ns-mask.sh "${args[@]}" PHASE=start || return 1
    step "ns add-host B: B's controller gets the AEN and rescans"
    ctl ns add-host --subsystem "$SUBNQN_MGMT" --nsid $NSID_MASK --host "$HOST_MASK_B" || return 1
    gexec target 90 ns-mask.sh "${args[@]}" PHASE=added || return 1
    step "ns remove-host A: A's controller drops it"
    ctl ns remove-host --subsystem "$SUBNQN_MGMT" --nsid $NSID_MASK --host "$HOST_MASK_A" || return 1
    gexec target 90 ns-mask.sh "${args[@]}" PHASE=removed || return 1
    ctl namespace remove --subsystem "$SUBNQN_MGMT" --nsid $NSID_MASK
    talive t4
}
