# auth-host.sh - HOST side of host-auth (sourced by run.sh): the nvmf host
# authenticates to the Linux 6.12 kernel target (nvmet) with DH-HMAC-CHAP.
#
# The case adds a subsystem to the kernel target in the host VM, linked to port 1
# (4420, reached as 127.0.0.1:H1), that only two hosts may use, each with a
# configfs host entry carrying keys made by `nvmf gen-dhchap-key`:
#   KA1: host key only, SHA-256 / ffdhe2048   (unidirectional)
#   KA2: host and controller key, SHA-512 / ffdhe4096 (bidirectional)
# identify, write/read compare and a short perf --verify over 2 I/O queues run as
# each; a wrong host key, no key and a wrong controller key must fail cleanly.
# The subsystem and host entries are removed at the end, so the other host cases
# see the kernel target as before.

KT_NQN_AUTH=nqn.2026-12.io.nvmf:kernel-target:auth
KT_HOST_AUTH1=nqn.2026-12.io.nvmf:host:kt-auth1
KT_HOST_AUTH2=nqn.2026-12.io.nvmf:host:kt-auth2
KT_HOST_AUTH3=nqn.2026-12.io.nvmf:host:kt-auth3

# kt_auth_setup KEY1 KEY2 CTRLKEY2 KEY3: the subsystem, its namespace and host entries
kt_auth_setup() {
    gsh host 60 <<EOF
. /usr/share/lab/nvmet.sh
set -e
dev=\$(nvmet_ramdisk 32)
nvmet_subsys $KT_NQN_AUTH 0
nvmet_ns $KT_NQN_AUTH 1 "\$dev"
h=\$NVMET/hosts/$KT_HOST_AUTH1
mkdir -p "\$h"
echo "$1" >"\$h/dhchap_key"; echo "hmac(sha256)" >"\$h/dhchap_hash"; echo ffdhe2048 >"\$h/dhchap_dhgroup"
ln -s "\$h" \$NVMET/subsystems/$KT_NQN_AUTH/allowed_hosts/$KT_HOST_AUTH1
h=\$NVMET/hosts/$KT_HOST_AUTH2
mkdir -p "\$h"
echo "$2" >"\$h/dhchap_key"; echo "$3" >"\$h/dhchap_ctrl_key"
echo "hmac(sha512)" >"\$h/dhchap_hash"; echo ffdhe4096 >"\$h/dhchap_dhgroup"
ln -s "\$h" \$NVMET/subsystems/$KT_NQN_AUTH/allowed_hosts/$KT_HOST_AUTH2
h=\$NVMET/hosts/$KT_HOST_AUTH3
mkdir -p "\$h"
echo "$4" >"\$h/dhchap_key"; echo "hmac(sha384)" >"\$h/dhchap_hash"; echo null >"\$h/dhchap_dhgroup"
ln -s "\$h" \$NVMET/subsystems/$KT_NQN_AUTH/allowed_hosts/$KT_HOST_AUTH3
nvmet_link 1 $KT_NQN_AUTH
echo "subsystem $KT_NQN_AUTH on \$dev: hosts \$(ls \$NVMET/subsystems/$KT_NQN_AUTH/allowed_hosts | tr '\n' ' ')"
for x in $KT_HOST_AUTH1 $KT_HOST_AUTH2 $KT_HOST_AUTH3; do
    echo "  \$x: \$(cat \$NVMET/hosts/\$x/dhchap_hash) \$(cat \$NVMET/hosts/\$x/dhchap_dhgroup)"
done
EOF
}
kt_auth_teardown() {
    gsh host 30 <<EOF || true
. /usr/share/lab/nvmet.sh
rm -f \$NVMET/ports/*/subsystems/$KT_NQN_AUTH
rm -f \$NVMET/subsystems/$KT_NQN_AUTH/allowed_hosts/*
[ -d \$NVMET/subsystems/$KT_NQN_AUTH/namespaces/1 ] && { echo 0 >\$NVMET/subsystems/$KT_NQN_AUTH/namespaces/1/enable; rmdir \$NVMET/subsystems/$KT_NQN_AUTH/namespaces/1; }
rmdir \$NVMET/subsystems/$KT_NQN_AUTH \$NVMET/hosts/$KT_HOST_AUTH1 \$NVMET/hosts/$KT_HOST_AUTH2 \$NVMET/hosts/$KT_HOST_AUTH3 2>/dev/null
echo "auth subsystem removed: \$([ -d \$NVMET/subsystems/$KT_NQN_AUTH ] && echo no || echo yes)"
dmesg | grep -iE 'nvmet.*(auth|dhchap|ctrl)' | tail -n 8
EOF
}

# auth_refused NAME ARGS...: an nvmf identify that must fail cleanly, saying why
auth_refused() {
    local name=$1 out rc=0
    shift
    out=$(nv 30 identify -a 127.0.0.1 -s "$H1" -n "$KT_NQN_AUTH" "$@" 2>&1) || rc=$?
    echo "  $name: $(tail -n 1 <<<"$out")"
    host_clean_failure "$rc" "$out" || return 1
    grep -q 'authentication' <<<"$out" || { echo "$name: the error does not say authentication failed"; return 1; }
}

# auth_ok NAME HOSTNQN ARGS...: identify, write/read compare, perf --verify
auth_ok() {
    local name=$1 q=$2 d=$STATE/auth-rw out
    shift 2
    mkdir -p "$d"
    out=$(nv 30 identify -a 127.0.0.1 -s "$H1" -n "$KT_NQN_AUTH" -q "$q" "$@") || { echo "$out"; return 1; }
    grep -qF "$KT_NQN_AUTH" <<<"$out" || { echo "$name: identify does not show the subsystem"; return 1; }
    head -c 1048576 /dev/urandom >"$d/in"
    nv 30 write -a 127.0.0.1 -s "$H1" -n "$KT_NQN_AUTH" -q "$q" "$@" --namespace-id 1 \
        --start-block 2048 --block-count 2048 --data "$d/in" >/dev/null || return 1
    nv 30 read -a 127.0.0.1 -s "$H1" -n "$KT_NQN_AUTH" -q "$q" "$@" --namespace-id 1 \
        --start-block 2048 --block-count 2048 --data "$d/out" >/dev/null || return 1
    cmp "$d/in" "$d/out" || { echo "$name: read back differs"; return 1; }
    nv 120 perf -a 127.0.0.1 -s "$H1" -n "$KT_NQN_AUTH" -q "$q" "$@" --rw randrw --bs 4k \
        --iodepth 16 --nr-io-queues 2 --runtime 3 --verify --size 16MiB \
        --output-format json >"$d/perf.json" || { cat "$d/perf.json"; return 1; }
    perf_check "$d/perf.json" || return 1
    echo "  $name: identify, 1 MiB write/read compare, perf --verify over 2 I/O queues: OK"
}

c_host_auth() {
    henv
    local k1 k2 ck2 k3 kx ckx rc=0
    # keys from our own tool, transformed with the host NQN as nvme-cli does (hh != 00)
    k1=$(nv 10 gen-dhchap-key -m 1 -n "$KT_HOST_AUTH1") &&
        k2=$(nv 10 gen-dhchap-key -m 3 -n "$KT_HOST_AUTH2") &&
        ck2=$(nv 10 gen-dhchap-key -m 2 -n "$KT_HOST_AUTH2") &&
        kx=$(nv 10 gen-dhchap-key -m 1 -n "$KT_HOST_AUTH1") &&
        ckx=$(nv 10 gen-dhchap-key -m 2 -n "$KT_HOST_AUTH2") &&
        k3=$(nv 10 gen-dhchap-key -m 2 -n "$KT_HOST_AUTH3") || return 1
    nv 10 check-dhchap-key -k "$k2" || return 1
    step "kernel target: subsystem $KT_NQN_AUTH with three DH-HMAC-CHAP hosts"
    kt_auth_setup "$k1" "$k2" "$ck2" "$k3" || { kt_auth_teardown; return 1; }
    {
        step "unidirectional, SHA-256 / ffdhe2048"
        auth_ok "unidirectional" "$KT_HOST_AUTH1" -S "$k1" &&
            step "bidirectional, SHA-512 / ffdhe4096" &&
            auth_ok "bidirectional" "$KT_HOST_AUTH2" -S "$k2" -C "$ck2" &&
            step "unidirectional, SHA-384 / null group" &&
            auth_ok "null group" "$KT_HOST_AUTH3" -S "$k3" &&
            step "refusals" &&
            auth_refused "wrong host key" -q "$KT_HOST_AUTH1" -S "$kx" &&
            auth_refused "no key" -q "$KT_HOST_AUTH1" &&
            auth_refused "wrong controller key" -q "$KT_HOST_AUTH2" -S "$k2" -C "$ckx"
    } || rc=1
    step "remove the auth subsystem"
    kt_auth_teardown
    return $rc
}
