# tls-target.sh - HOST side of target-tls (sourced by run.sh): the Linux 6.12
# kernel host connects to nvmf target over TLS 1.3 (tlshd in the guest does the
# handshake, the kernel's kTLS carries the records).
#
# t1 gets a listener on PT with tls = "required" exporting SUBNQN_TLS, and host
# tables with TLS keys made here in the interchange format (as nvme gen-tls-key
# prints them). The guest's nvme-cli 2.13 / libnvme 1.13 derives TLS PSKs with
# the HkdfLabel layout of libnvme before 1.16, so those hosts have
# tls_key_compat = true; TH_RFC has the RFC 8446 layout, to confirm that the
# guest does use the old one (the case prints which).
SUBNQN_TLS=nqn.2026-12.io.nvmf:tls

# tls_key HH: a fresh configured PSK in the interchange format (NVMeTLSkey-1, hash HH)
tls_key() {
    python3 -c 'import base64, os, sys, zlib
h = int(sys.argv[1]); s = os.urandom({1: 32, 2: 48}[h])
print("NVMeTLSkey-1:%02d:%s:" % (h, base64.b64encode(s + zlib.crc32(s).to_bytes(4, "little")).decode()))' "$1"
}

# tls_config PORT: the TLS listener, subsystem and host tables (appended to
# t1.toml) and the keys the guest uses (tls.env)
tls_config() {
    local pt=$1 h k
    local -A keys
    for h in TH1 TH2 TH3 TH_RFC TH_V1 TH_WRONG; do keys[$h]=$(tls_key 1); done
    keys[TH2]=$(tls_key 2)
    local dh3; dh3=$(dhchap_key 1)
    cat >>"$STATE/t1.toml" <<EOF2

[[listener]]
addr = "127.0.0.1:$pt"
tls = "required"
subsystems = ["$SUBNQN_TLS"]

[[subsystem]]
nqn = "$SUBNQN_TLS"
[[subsystem.host]]
nqn = "nqn.2026-12.io.nvmf:host:tls1"
tls_key = "${keys[TH1]}"
tls_key_compat = true
[[subsystem.host]]
nqn = "nqn.2026-12.io.nvmf:host:tls2"
tls_key = "${keys[TH2]}"
tls_key_compat = true
[[subsystem.host]]
nqn = "nqn.2026-12.io.nvmf:host:tls3"
tls_key = "${keys[TH3]}"
tls_key_compat = true
dhchap_key = "$dh3"
[[subsystem.host]]
nqn = "nqn.2026-12.io.nvmf:host:tls-rfc"
tls_key = "${keys[TH_RFC]}"
[[subsystem.host]]
nqn = "nqn.2026-12.io.nvmf:host:tls-wrong"
tls_key = "${keys[TH_WRONG]}"
tls_key_compat = true
[[subsystem.host]]
nqn = "nqn.2026-12.io.nvmf:host:tls-v1"
tls_key = "${keys[TH_V1]}"
tls_key_compat = true
[[subsystem.namespace]]
kind = "ram"
size = "256MiB"
EOF2
    printf '%s\n' "TH1=nqn.2026-12.io.nvmf:host:tls1" "TH2=nqn.2026-12.io.nvmf:host:tls2" \
        "TH3=nqn.2026-12.io.nvmf:host:tls3" "TH_RFC=nqn.2026-12.io.nvmf:host:tls-rfc" \
        "TH_V1=nqn.2026-12.io.nvmf:host:tls-v1" "TH_WRONG=nqn.2026-12.io.nvmf:host:tls-wrong" \
        "TK1=${keys[TH1]}" "TK2=${keys[TH2]}" "TK3=${keys[TH3]}" "TK_RFC=${keys[TH_RFC]}" \
        "TK_V1=${keys[TH_V1]}" "TKX=$(tls_key 1)" "TD3=$dh3" >"$STATE/tls.env"
}

c_target_tls() {
    tenv; tneed t1 || return 1
    local kv=()
    # shellcheck disable=SC2207  # one KEY=VALUE per line
    kv=($(cat "$STATE/tls.env"))
    gexec target $((FIO_RUNTIME + 200)) tls.sh TADDR=$G PT="$PT" PA="$PA" NQN=$SUBNQN_TLS \
        RUNTIME="$FIO_RUNTIME" "${kv[@]}"
    local rc=$?
    echo "t1 TLS counters: $(sed 's/\x1b\[[0-9;]*m//g' "$LOGROOT/t1.log" | grep -ciE 'TLS with') TLS failure lines in t1.log"
    talive t1 && return $rc
}
