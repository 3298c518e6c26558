# case.sh - guest-side helpers for run.sh's case scripts (busybox ash).
# In a guest script:  . /usr/share/lab/case.sh
# Every wait is a bounded poll; every nvme connect uses short reconnect/loss
# timeouts so a dead target can never wedge the guest for the default 600 s.

HOSTNQN=$(cat /etc/nvme/hostnqn 2>/dev/null)
# Connect options shared by every case (overridable per call by repeating them).
CONN_OPTS=${CONN_OPTS:---ctrl-loss-tmo=10 --reconnect-delay=1 --keep-alive-tmo=10}

say() { echo "# $*"; }
fail() { echo "FAILED: $*"; exit 1; }

# ctrl_of NQN [ADDR_MATCH] -> nvmeX of a live controller of subsystem NQN
ctrl_of() {
    for _c in /sys/class/nvme/nvme*; do
        [ -e "$_c/subsysnqn" ] || continue
        [ "$(cat "$_c/subsysnqn" 2>/dev/null)" = "$1" ] || continue
        [ -z "${2:-}" ] || grep -q "$2" "$_c/address" 2>/dev/null || continue
        echo "${_c##*/}"
        return 0
    done
    return 1
}

# ns_dev NQN [NSID=1] -> /dev/nvmeXnY (polls up to 15 s: the block device shows up
# asynchronously after nvme connect returns; its name can change across reconnects).
ns_dev() {
    _i=0
    while [ $_i -lt 150 ]; do
        for _b in /sys/block/nvme*n*; do
            [ -b "/dev/${_b##*/}" ] || continue   # hidden per-path disks have no node
            [ "$(cat "$_b/device/subsysnqn" 2>/dev/null)" = "$1" ] || continue
            [ "$(cat "$_b/nsid" 2>/dev/null)" = "${2:-1}" ] || continue
            echo "/dev/${_b##*/}"
            return 0
        done
        sleep 0.1
        _i=$((_i + 1))
    done
    echo "no block device for $1 nsid ${2:-1}" >&2
    return 1
}

# nconnect ADDR PORT NQN [nvme connect options...]: connect, print the command
nconnect() {
    _a=$1 _p=$2 _n=$3
    shift 3
    echo "+ nvme connect -t tcp -a $_a -s $_p -n $_n $*"
    # shellcheck disable=SC2086  # CONN_OPTS is a word list
    timeout 60 nvme connect -t tcp -a "$_a" -s "$_p" -n "$_n" $CONN_OPTS "$@"
}

# ndisconnect NQN: nvme disconnect and wait (10 s) until no controller is left
ndisconnect() {
    timeout 30 nvme disconnect -n "$1" || return 1
    _i=0
    while ctrl_of "$1" >/dev/null && [ $_i -lt 100 ]; do sleep 0.1; _i=$((_i + 1)); done
    ! ctrl_of "$1" >/dev/null
}

# cleanup_all: drop every controller (start of each case: no leftovers from a failed one)
cleanup_all() {
    if ls /sys/class/nvme/ 2>/dev/null | grep -q nvme; then
        timeout 30 nvme disconnect-all >/dev/null 2>&1
        _i=0
        while ls /sys/class/nvme/ 2>/dev/null | grep -q nvme && [ $_i -lt 100 ]; do
            sleep 0.1; _i=$((_i + 1))
        done
    fi
    return 0
}

# pattern_ok DEV PATTERN_FILE SEEK_MB: write PATTERN at SEEK_MB MiB with O_DIRECT +
# fsync, read it back with O_DIRECT, compare byte for byte.
pattern_ok() {
    _mb=$(($(wc -c <"$2") / 1048576))
    dd if="$2" of="$1" bs=1M seek="$3" oflag=direct conv=fsync 2>/dev/null || { echo "write to $1 failed"; return 1; }
    dd if="$1" of=/tmp/readback bs=1M skip="$3" count="$_mb" iflag=direct 2>/dev/null || { echo "read from $1 failed"; return 1; }
    cmp "$2" /tmp/readback || return 1
    echo "pattern ${_mb} MiB at ${3} MiB on $1: $(sha256sum <"$2" | cut -c1-16) verified"
}

# io_ok DEV: 4 MiB of fresh random data (128 KiB direct writes) round trip
io_ok() {
    dd if=/dev/urandom of=/tmp/io.pat bs=1M count=4 2>/dev/null
    dd if=/tmp/io.pat of="$1" bs=128k oflag=direct conv=fsync 2>/dev/null &&
        dd if="$1" of=/tmp/io.rb bs=128k count=32 iflag=direct 2>/dev/null &&
        cmp /tmp/io.pat /tmp/io.rb && echo "io ok on $1 (4 MiB written, read back, equal)"
}

# field FILE KEY: value of "KEY : value" lines of nvme-cli's normal output
field() { awk -F: -v k="$2" '{ g = $1; gsub(/ /, "", g) } g == k { sub(/^[^:]*:[ ]*/, ""); sub(/[ ]+$/, ""); print; exit }' "$1"; }
