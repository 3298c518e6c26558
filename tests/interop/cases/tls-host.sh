# tls-host.sh - HOST side of host-tls (sourced by run.sh): the nvmf host talks
# NVMe/TCP over TLS 1.3 (PSK) to the Linux 6.12 kernel target (nvmet + tlshd).
#
# In the host VM the case adds port 3 (tcp 0.0.0.0:4421, addr_tsas tls1.3,
# addr_treq required; reached as 127.0.0.1:H3) with one subsystem that two
# hosts may use: KT_HOST_TLS (TLS only) and KT_HOST_TLS_AUTH (TLS and a
# DH-HMAC-CHAP key). tlshd (ktls-utils, /etc/tlshd.conf: keyrings .nvme) is
# started if it does not run. The PSKs come from `nvmf gen-tls-key` (hh 01,
# SHA-256, and hh 02, SHA-384) and go into the guest's .nvme keyring with
# `nvme check-tls-key --insert` (nvme-cli 2.13 / libnvme 1.13: the HKDF layout
# of libnvme before 1.16, so the nvmf host needs --tls-key-compat), for v0 and
# v1 identities and for the subsystem and the discovery NQN. tlshd finds a PSK
# by the identity the host offers.
#
# Matrix: SHA-256 key with v1 and v0 identities: identify and a 1 MiB
# write/read compare; SHA-384 key: the kernel host's own handshake (reference,
# its suite from tlshd's log), TLS_AES_256_GCM_SHA384 refused by this tlshd
# (GnuTLS 3.8.9 computes external PSK binders with SHA-256 only), v1 and v0 with
# --tls-sha256-suite; discovery over TLS (v1, SHA-256) showing treq and sectype;
# TLS + DH-HMAC-CHAP; refusals that must be clean: a wrong PSK under a known
# identity (v0), a v1 identity the keyring lacks (other key), the RFC 8446
# derivation (no --tls-key-compat), a plain connection to the TLS port.
# Everything is removed at the end (port 3, subsystem, hosts, keys, tlshd).

KT_NQN_TLS=nqn.2026-12.io.nvmf:kernel-target:tls
KT_HOST_TLS=nqn.2026-12.io.nvmf:host:kt-tls
KT_HOST_TLS_AUTH=nqn.2026-12.io.nvmf:host:kt-tls-auth
KT_TLS_PORT=4421

# kt_tls_setup DHCHAP_KEY: port 3, subsystem, hosts, tlshd
kt_tls_setup() {
    gsh host 60 <<EOF
. /usr/share/lab/nvmet.sh
set -e
command -v tlshd >/dev/null || { echo "no tlshd in the guest"; exit 1; }
cat /etc/tlshd.conf | grep -E 'keyrings' || true
if ! pidof tlshd >/dev/null; then
    # GnuTLS debug level 4: the log names each handshake's identity and suite
    printf '[debug]\nloglevel=1\ntls=4\nnl=0\n\n[authenticate]\nkeyrings=.nvme\n\n[authenticate.client]\n\n[authenticate.server]\n' >/tmp/tlshd-debug.conf
    setsid tlshd -s -c /tmp/tlshd-debug.conf </dev/null >>/tmp/tlshd.log 2>&1 &
    sleep 1
fi
pidof tlshd >/dev/null || { echo "tlshd did not start:"; cat /tmp/tlshd.log; exit 1; }
echo "tlshd running (pid \$(pidof tlshd)), \$(tlshd -v 2>&1 | head -n 1)"
grep -E '\.nvme' /proc/keys | head -n 1
dev=\$(nvmet_ramdisk 32)
nvmet_subsys $KT_NQN_TLS 0
nvmet_ns $KT_NQN_TLS 1 "\$dev"
for h in $KT_HOST_TLS $KT_HOST_TLS_AUTH; do
    mkdir -p \$NVMET/hosts/\$h
    ln -s \$NVMET/hosts/\$h \$NVMET/subsystems/$KT_NQN_TLS/allowed_hosts/\$h
done
h=\$NVMET/hosts/$KT_HOST_TLS_AUTH
echo "$1" >"\$h/dhchap_key"; echo "hmac(sha256)" >"\$h/dhchap_hash"; echo ffdhe2048 >"\$h/dhchap_dhgroup"
nvmet_port 3 $KT_TLS_PORT
echo tls1.3 >\$NVMET/ports/3/addr_tsas
echo required >\$NVMET/ports/3/addr_treq
nvmet_link 3 $KT_NQN_TLS
echo "port 3: tcp 0.0.0.0:$KT_TLS_PORT tsas=\$(cat \$NVMET/ports/3/addr_tsas) treq=\$(cat \$NVMET/ports/3/addr_treq)"
echo "subsystem $KT_NQN_TLS on \$dev: hosts \$(ls \$NVMET/subsystems/$KT_NQN_TLS/allowed_hosts | tr '\n' ' ')"
EOF
}

# kt_tls_insert KEY VERSION HOSTNQN SUBNQN...: derive and insert with the guest's nvme-cli
kt_tls_insert() {
    local key=$1 v=$2 q=$3 s
    shift 3
    for s in "$@"; do
        gsh host 30 <<EOF || return 1
out=\$(nvme check-tls-key -d "$key" -n "$q" -c "$s" -I $v) || { echo "\$out"; exit 1; }
echo "  guest identity v$v: \$out"
nvme check-tls-key -d "$key" -n "$q" -c "$s" -I $v --insert >/dev/null || exit 1
EOF
    done
}

kt_tls_teardown() {
    gsh host 30 <<EOF || true
. /usr/share/lab/nvmet.sh
rm -f \$NVMET/ports/3/subsystems/*
[ -d \$NVMET/ports/3 ] && rmdir \$NVMET/ports/3
rm -f \$NVMET/subsystems/$KT_NQN_TLS/allowed_hosts/*
[ -d \$NVMET/subsystems/$KT_NQN_TLS/namespaces/1 ] && { echo 0 >\$NVMET/subsystems/$KT_NQN_TLS/namespaces/1/enable; rmdir \$NVMET/subsystems/$KT_NQN_TLS/namespaces/1; }
rmdir \$NVMET/subsystems/$KT_NQN_TLS \$NVMET/hosts/$KT_HOST_TLS \$NVMET/hosts/$KT_HOST_TLS_AUTH 2>/dev/null
kr=\$(awk '\$9 == ".nvme:" { print \$1 }' /proc/keys | head -n 1)
[ -n "\$kr" ] && keyctl clear "0x\$kr" 2>/dev/null
echo "tls subsystem removed: \$([ -d \$NVMET/subsystems/$KT_NQN_TLS ] && echo no || echo yes), keys left in .nvme: \$(grep -c ' psk ' /proc/keys)"
echo "tlshd handshakes by suite:"; grep -o 'Session description: .*' /tmp/tlshd.log | sort | uniq -c
echo "tlshd failures:"; grep -E 'unhandled error|failed' /tmp/tlshd.log | grep -v 'name resolution' | tail -n 8
dmesg | grep -iE 'nvmet|tls|handshake' | tail -n 12
kill \$(pidof tlshd) 2>/dev/null
true
EOF
}

# tls_nv TIMEOUT CMD ARGS...: an nvmf command against the TLS port
tls_nv() {
    local t=$1 cmd=$2
    shift 2
    nv "$t" "$cmd" -a 127.0.0.1 -s "$H3" "$@"
}

# tls_ok NAME ARGS...: identify and a 1 MiB write/read compare over TLS
tls_ok() {
    local name=$1 d=$STATE/tls-rw out
    shift
    mkdir -p "$d"
    out=$(tls_nv 60 identify -n "$KT_NQN_TLS" "$@") || { echo "$out"; return 1; }
    grep -qF "$KT_NQN_TLS" <<<"$out" || { echo "$name: identify does not show the subsystem"; return 1; }
    head -c 1048576 /dev/urandom >"$d/in"
    tls_nv 60 write -n "$KT_NQN_TLS" "$@" --namespace-id 1 --start-block 4096 --block-count 2048 \
        --data "$d/in" >/dev/null || return 1
    tls_nv 60 read -n "$KT_NQN_TLS" "$@" --namespace-id 1 --start-block 4096 --block-count 2048 \
        --data "$d/out" >/dev/null || return 1
    cmp "$d/in" "$d/out" || { echo "$name: read back differs"; return 1; }
    echo "  $name: identify, 1 MiB write/read compare over TLS: OK"
}

# tls_refused NAME WORD ARGS...: an identify that must fail cleanly, its message containing WORD
tls_refused() {
    local name=$1 word=$2 out rc=0
    shift 2
    out=$(tls_nv 60 identify -n "$KT_NQN_TLS" "$@" 2>&1) || rc=$?
    echo "  $name: $(tail -n 1 <<<"$out")"
    host_clean_failure "$rc" "$out" || return 1
    grep -qi -- "$word" <<<"$out" || { echo "$name: the error does not say '$word'"; return 1; }
}

c_host_tls() {
    henv
    local k1 k2 kx dk rc=0 idg idn idc
    k1=$(nv 10 gen-tls-key -m 1) && k2=$(nv 10 gen-tls-key -m 2) && kx=$(nv 10 gen-tls-key -m 1) &&
        dk=$(nv 10 gen-dhchap-key -m 1 -n "$KT_HOST_TLS_AUTH") || return 1
    step "kernel target: TLS port 3 ($KT_TLS_PORT), subsystem $KT_NQN_TLS, tlshd"
    kt_tls_setup "$dk" || { kt_tls_teardown; return 1; }
    {
        step "keys into the guest's .nvme keyring (nvme-cli 2.13 check-tls-key --insert)"
        kt_tls_insert "$k1" 1 "$KT_HOST_TLS" "$KT_NQN_TLS" "nqn.2014-08.org.nvmexpress.discovery" &&
            kt_tls_insert "$k1" 0 "$KT_HOST_TLS" "$KT_NQN_TLS" &&
            kt_tls_insert "$k2" 1 "$KT_HOST_TLS" "$KT_NQN_TLS" &&
            kt_tls_insert "$k2" 0 "$KT_HOST_TLS" "$KT_NQN_TLS" &&
            kt_tls_insert "$k1" 1 "$KT_HOST_TLS_AUTH" "$KT_NQN_TLS" &&
            step "libnvme 1.13 derives with the old HKDF layout: nvmf check-tls-key --compat agrees" &&
            idg=$(gsh host 30 <<<"nvme check-tls-key -d '$k1' -n $KT_HOST_TLS -c $KT_NQN_TLS -I 1") &&
            idc=$(nv 10 check-tls-key -d "$k1" -n "$KT_HOST_TLS" -c "$KT_NQN_TLS" -I 1 --compat) &&
            idn=$(nv 10 check-tls-key -d "$k1" -n "$KT_HOST_TLS" -c "$KT_NQN_TLS" -I 1) &&
            echo "  guest:          $idg" && echo "  nvmf --compat:  $idc" && echo "  nvmf (RFC 8446): $idn" &&
            { [ "$idg" = "$idc" ] && [ "$idg" != "$idn" ] || { echo "the guest's identity is not the compat one"; false; }; } &&
            step "SHA-256 key, v1 identity" &&
            tls_ok "sha256 v1" -q "$KT_HOST_TLS" --tls --tls-key "$k1" --tls-key-compat &&
            step "SHA-256 key, v0 identity" &&
            tls_ok "sha256 v0" -q "$KT_HOST_TLS" --tls-key "$k1" --tls-key-compat --tls-identity-version 0 &&
            step "SHA-384 key: tlshd 1.0.0 on GnuTLS 3.8.9 binds every PSK to SHA-256; the kernel host's choice" &&
            kt_tls_kernel_ref "plain --tls: keyring lookup, SHA-384 keys first" --tls &&
            tls_refused "sha384 v1, TLS_AES_256_GCM_SHA384 (as NVMe/TCP says)" "TLS" -q "$KT_HOST_TLS" \
                --tls-key "$k2" --tls-key-compat &&
            step "SHA-384 key, v1 identity, --tls-sha256-suite" &&
            tls_ok "sha384 v1" -q "$KT_HOST_TLS" --tls-key "$k2" --tls-key-compat --tls-sha256-suite &&
            step "SHA-384 key, v0 identity, --tls-sha256-suite" &&
            tls_ok "sha384 v0" -q "$KT_HOST_TLS" --tls-key "$k2" --tls-key-compat --tls-identity-version 0 \
                --tls-sha256-suite &&
            step "discovery over TLS (v1, SHA-256; discovery NQN identity)" &&
            tls_discover "$k1" &&
            step "TLS and DH-HMAC-CHAP" &&
            tls_ok "tls+dhchap" -q "$KT_HOST_TLS_AUTH" --tls-key "$k1" --tls-key-compat -S "$dk" &&
            tls_dhchap_without_key "$k1" &&
            step "perf --verify randrw over TLS with header and data digests (${PERF_RUNTIME}s, 2 I/O queues)" &&
            tls_perf "$k1" &&
            step "refusals" &&
            tls_refused "wrong PSK, known v0 identity" "TLS" -q "$KT_HOST_TLS" --tls-key "$kx" --tls-key-compat \
                --tls-identity-version 0 &&
            tls_refused "v1 identity not in the keyring" "TLS" -q "$KT_HOST_TLS" --tls-key "$kx" --tls-key-compat &&
            tls_refused "RFC 8446 derivation against a libnvme 1.13 keyring" "TLS" -q "$KT_HOST_TLS" --tls-key "$k1" &&
            tls_refused "plain TCP to the TLS port" "closed" -q "$KT_HOST_TLS"
    } || rc=1
    step "remove the TLS port, subsystem, hosts and keys"
    kt_tls_teardown
    return $rc
}

# tls_perf KEY: perf --verify over TLS (every I/O queue its own handshake), digests on
tls_perf() {
    local out=$STATE/perf-tls-$RANDOM.json
    nv $((PERF_RUNTIME + 150)) perf -a 127.0.0.1 -s "$H3" -n "$KT_NQN_TLS" -q "$KT_HOST_TLS" \
        --tls-key "$1" --tls-key-compat -g -G --rw randrw --bs 4k --iodepth 32 --nr-io-queues 2 \
        --runtime "$PERF_RUNTIME" --verify --size 16MiB --output-format json >"$out" || { cat "$out"; return 1; }
    cat "$out"
    perf_check "$out"
}

# tls_discover KEY: discovery log over TLS shows the TLS subsystem, treq and sectype
tls_discover() {
    local out
    out=$(tls_nv 60 discover -q "$KT_HOST_TLS" --tls-key "$1" --tls-key-compat) || { echo "$out"; return 1; }
    echo "$out"
    grep -qF "$KT_NQN_TLS" <<<"$out" || { echo "discovery log lacks $KT_NQN_TLS"; return 1; }
    echo "  discovery entry: $(grep -E '^(treq|sectype):' <<<"$out" | tr -s ' ' | tr '\n' ' ')"
    grep -qE '^treq: +required' <<<"$out" || { echo "treq is not 'required'"; return 1; }
    grep -qE '^sectype: +tls1.3' <<<"$out" || { echo "sectype is not tls1.3"; return 1; }
}

# tls_dhchap_without_key KEY: Linux 6.12 still asks for DH-HMAC-CHAP on a TLS
# queue when the host entry has a key (later kernels skip it on TLS queues): a
# host without -S is refused, cleanly, saying authentication
tls_dhchap_without_key() {
    local out rc=0
    out=$(tls_nv 60 identify -n "$KT_NQN_TLS" -q "$KT_HOST_TLS_AUTH" --tls-key "$1" --tls-key-compat 2>&1) || rc=$?
    echo "  tls, no DH-HMAC-CHAP key: $(tail -n 1 <<<"$out")"
    host_clean_failure "$rc" "$out" || return 1
    grep -q 'authentication' <<<"$out" || { echo "the error does not say authentication"; return 1; }
}

# kt_tls_kernel_ref NAME ARGS...: the reference: the guest's kernel host (nvme-cli
# 2.13, tlshd as client) connects to the TLS port over the guest loopback with
# nvme connect ARGS; prints the outcome; true when it connected
kt_tls_kernel_ref() {
    local name=$1
    shift
    gsh host 90 <<EOF2
. /usr/share/lab/case.sh
cleanup_all
n=\$(wc -l </tmp/tlshd.log)
if nconnect 127.0.0.1 $KT_TLS_PORT $KT_NQN_TLS --hostnqn=$KT_HOST_TLS $* >/tmp/ref.out 2>&1 && ctrl_of $KT_NQN_TLS >/dev/null; then
    echo "  kernel host reference ($name): connected"; rc=0
else
    echo "  kernel host reference ($name): failed: \$(tail -n 1 /tmp/ref.out)"; rc=1
fi
tail -n +\$((n + 1)) /tmp/tlshd.log | grep -oE '(selected PSK identity: [^ ]+ [^ ]+|Session description: .*)' | sort | uniq -c | sed 's/^/    tlshd: /'
cleanup_all
exit \$rc
EOF2
}
