# shellcheck shell=bash
# Shared settings for setup.sh and vm.sh. Sourced, not executed.
# Every path lives under the lab directory or under $NVMF_INTEROP_CACHE.

# shellcheck disable=SC2034  # used by the sourcing scripts
LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LAB_CACHE=${NVMF_INTEROP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nvmf-interop}
# shellcheck disable=SC2034
LAB_IMAGE=${NVMF_INTEROP_IMAGE:-$LAB_CACHE/current}   # dir with vmlinuz + initramfs.cpio

log() { printf '[lab] %s\n' "$*" >&2; }
die() { printf '[lab] ERROR: %s\n' "$*" >&2; exit 1; }

# Debian release the host runs (bookworm on the reference machine).
host_codename() { . /etc/os-release && printf '%s\n' "${VERSION_CODENAME:?}"; }

# Archive URIs the host's apt already uses (so we never invent a mirror).
# $1 = suite to look for (e.g. bookworm, bookworm-security).
host_repo_uri() {
    # shellcheck disable=SC2016  # apt's own $(FIELD) syntax
    apt-get indextargets --format '$(RELEASE) $(REPO_URI)' 2>/dev/null |
        awk -v s="$1" '$1 == s { print $2; exit }'
}

# A private apt configuration rooted at $1 (lists, cache, status) that never
# touches the host's /etc/apt/sources.list* or /var/lib/apt.
# Usage: apt_opts DIR  -> prints one option per line (read into an array).
apt_opts() {
    local d=$1
    printf '%s\n' \
        -o "Dir::Etc::SourceList=$d/sources.list" \
        -o "Dir::Etc::SourceParts=$d/empty.d" \
        -o "Dir::Etc::Preferences=$d/empty.d/none" \
        -o "Dir::Etc::PreferencesParts=$d/empty.d" \
        -o "Dir::State::Lists=$d/lists" \
        -o "Dir::Cache=$d/cache" \
        -o "Dir::Cache::pkgcache=pkgcache.bin" \
        -o "Dir::Cache::srcpkgcache=srcpkgcache.bin" \
        -o "APT::Sandbox::User=root" \
        -o "Acquire::Languages=none"
}

# Create DIR/sources.list for SUITE (+ -updates, -security) on the host's mirrors.
# $1 = dir, $2 = suite, $3.. = extra suites on the main archive (e.g. backports)
apt_dir_init() {
    local d=$1 suite=$2 main sec kr=/usr/share/keyrings/debian-archive-keyring.gpg
    shift 2
    local hc; hc=$(host_codename)
    main=$(host_repo_uri "$hc"); main=${main:-http://deb.debian.org/debian/}
    sec=$(host_repo_uri "$hc-security"); sec=${sec:-http://deb.debian.org/debian-security/}
    mkdir -p "$d/lists/partial" "$d/cache/archives/partial" "$d/empty.d"
    {
        echo "deb [signed-by=$kr] $main $suite main"
        echo "deb [signed-by=$kr] $main $suite-updates main"
        local x; for x in "$@"; do echo "deb [signed-by=$kr] $main $x main"; done
        echo "deb [signed-by=$kr] $sec $suite-security main"
    } >"$d/sources.list.new"
    if ! cmp -s "$d/sources.list.new" "$d/sources.list" 2>/dev/null; then
        mv "$d/sources.list.new" "$d/sources.list"
        rm -f "$d/lists/"*_Packages* "$d/lists/"*Release* 2>/dev/null || true
    else
        rm -f "$d/sources.list.new"
    fi
}
