#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine with the Rust toolchain:
# formatting and lints, unit/property/fuzz-corpus tests, then the kernel
# interop harness (installs qemu and a Debian 6.12 guest image on first run).
# Prints one closing line "N passed, M failed" and exits non-zero on failure.
#
# Env: NVMF_SKIP_INTEROP=1 skips the qemu harness (for quick local runs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TERM_COLOR=never

step() { printf '\n==== %s\n' "$*"; }
passed=0 failed=0

# TLS links OpenSSL 3 (crates/nvmf-tls): its headers and pkg-config file.
if ! pkg-config --exists openssl 2>/dev/null; then
    step "installing pkg-config and libssl-dev (needed to build nvmf-tls)"
    if [ "$(id -u)" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q pkg-config libssl-dev ||
            { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q pkg-config libssl-dev; }
    else
        echo "pkg-config/libssl-dev missing and not root: apt-get install pkg-config libssl-dev" >&2
        exit 1
    fi
fi

# The ublk block device (crates/nvmf-ublk) uses libublk, whose -sys crate runs
# bindgen on the kernel's ublk header at build time: bindgen needs libclang.
if ! compgen -G "/usr/lib/llvm-*/lib/libclang.so*" >/dev/null && ! compgen -G "/usr/lib/*/libclang-[0-9]*.so*" >/dev/null; then
    step "installing libclang-dev (bindgen, needed to build libublk for nvmf-ublk)"
    if [ "$(id -u)" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q libclang-dev ||
            { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q libclang-dev; }
    else
        echo "libclang missing and not root: apt-get install libclang-dev" >&2
        exit 1
    fi
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo build --release"
cargo build --release --workspace --bins

step "cargo test (unit, property, fuzz corpus, loopback end-to-end)"
log=$(mktemp)
set +e
cargo test --workspace --no-fail-fast 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
p=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($(i) ~ /^passed;?$/) s += $(i-1) } END { print s + 0 }' "$log")
f=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($(i) ~ /^failed;?$/) s += $(i-1) } END { print s + 0 }' "$log")
rm -f "$log"
passed=$((passed + p)) failed=$((failed + f))
[ "$rc" -eq 0 ] || [ "$f" -gt 0 ] || failed=$((failed + 1)) # a build failure counts

step "tests marked #[ignore] for their prerequisites, run where these hold"
# Loop devices need root (CI runs as root); the bench smoke needs the release
# binaries built above, 2 CPUs, python3 and taskset.
log=$(mktemp)
set +e
{
    if [ "$(id -u)" = 0 ] && [ -e /dev/loop-control ] && command -v losetup >/dev/null; then
        cargo test -p nvmf-target --lib backend::block -- --ignored
        cargo test -p nvmf-target --test loopback block_backend -- --ignored
        cargo test -p nvmf-engine --test storage_ops -- --ignored
    else
        echo "not root or no loop devices: the block device tests are not run"
    fi
    NVMF_BENCH_SMOKE=1 cargo test --test bench_smoke -- --ignored
} 2>&1 | tee "$log"
set -e
p=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($(i) ~ /^passed;?$/) s += $(i-1) } END { print s + 0 }' "$log")
f=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($(i) ~ /^failed;?$/) s += $(i-1) } END { print s + 0 }' "$log")
rm -f "$log"
passed=$((passed + p)) failed=$((failed + f))

if [ "${NVMF_SKIP_INTEROP:-0}" != 1 ]; then
    step "kernel interop harness (qemu, Linux 6.12 host and target)"
    bash tests/interop/setup.sh
    log=$(mktemp)
    set +e
    NVMF_BIN=$PWD/target/release/nvmf bash tests/interop/run.sh 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -n1 || true)
    rm -f "$log"
    if [ -n "$line" ]; then
        passed=$((passed + $(echo "$line" | awk '{print $1}')))
        failed=$((failed + $(echo "$line" | awk '{print $3}')))
    fi
    [ "$rc" -eq 0 ] || [ -n "$line" ] || failed=$((failed + 1))
fi

echo
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
