#!/usr/bin/env bash
# POSIX conformance: runs pjdfstest (the Rust rewrite, crate `pjdfstest` 0.2.2) in DIR.
#
#   tests/suites/pjdfstest.sh DIR LOGDIR
#
# DIR is a directory in a live tiergate mount (checked before and after the run: a mount that
# died during it fails the suite, whatever the cases said; TG_SUITE_ANY_DIR=1 accepts any
# directory, for a baseline on another file system); pjdfstest works in a temporary directory
# inside it. Must run as root: about half of
# the cases chown, mknod or switch to the dummy users `nobody` and `tests`
# (scripts/install-test-deps.sh creates `tests`).
#
# LOGDIR receives pjdfstest.toml (the features enabled), pjdfstest.log (full output),
# pjdfstest-results.txt ("NAME STATUS" per case) and pjdfstest-failures.txt (each failed case
# with its message). Failed case names are compared with tests/suites/pjdfstest-known-failures.txt:
# the script fails on any failure not listed there, and prints listed cases that now pass.
#
# Environment:
#   PJDFSTEST              the binary (default: pjdfstest on PATH, else ~/.cargo/bin/pjdfstest)
#   PJD_NAPTIME            seconds slept between changes whose timestamps are compared (0.1)
#   PJD_SECONDARY_FS       a directory on another file system, for the EXDEV cases (default: a
#                          temporary directory under /tmp or /dev/shm, whichever is not on DIR's
#                          file system)
#   PJD_KNOWN_FAILURES     the allowlist file (default: beside this script)
#   PJD_TIMEOUT            seconds before the run is killed (default 1200)
#   PJD_PATTERNS           space-separated name filters passed to pjdfstest (default: all cases)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/lib.sh
. "$here/../../scripts/lib.sh"

if [ $# -ne 2 ]; then
    echo "usage: $0 DIR LOGDIR" >&2
    exit 2
fi
dir="$(realpath -e "$1")"
mkdir -p "$2"
logdir="$(realpath -e "$2")"
require_live_mount "$dir" pjdfstest || { echo "pjdfstest: 0 passed, 1 failed, 0 skipped"; exit 1; }

known="${PJD_KNOWN_FAILURES:-$here/pjdfstest-known-failures.txt}"
naptime="${PJD_NAPTIME:-0.1}"
run_timeout="${PJD_TIMEOUT:-1200}"

pjd="${PJDFSTEST:-}"
if [ -z "$pjd" ]; then
    pjd="$(command -v pjdfstest || true)"
    [ -n "$pjd" ] || pjd="${CARGO_HOME:-$HOME/.cargo}/bin/pjdfstest"
fi
if [ ! -x "$pjd" ]; then
    echo "pjdfstest: binary not found ($pjd); run scripts/install-test-deps.sh" >&2
    exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "pjdfstest: warning: not root, the cases that need root will be skipped" >&2
fi

# The two dummy users pjdfstest switches to, each with its primary group.
dummy_entry() {
    local user="$1" group
    if ! group="$(id -gn "$user" 2>/dev/null)"; then
        echo "pjdfstest: no user '$user'; run scripts/install-test-deps.sh" >&2
        exit 1
    fi
    printf '["%s", "%s"]' "$user" "$group"
}
entry_nobody="$(dummy_entry nobody)"
entry_tests="$(dummy_entry tests)"

# A directory on another file system, for link/rename EXDEV. Removed at exit if we made it.
secondary="${PJD_SECONDARY_FS:-}"
made_secondary=""
scratch="$(mktemp -d)"
# shellcheck disable=SC2317  # invoked by the trap
cleanup() {
    rm -rf "$scratch"
    if [ -n "$made_secondary" ]; then
        rm -rf "$made_secondary"
    fi
}
trap cleanup EXIT
if [ -z "$secondary" ]; then
    dev="$(stat -c %d "$dir")"
    for base in "${TMPDIR:-/tmp}" /tmp /dev/shm /var/tmp; do
        if [ -d "$base" ] && [ -w "$base" ] && [ "$(stat -c %d "$base")" != "$dev" ]; then
            secondary="$(mktemp -d "$base/pjdfstest-secondary.XXXXXX")"
            chmod 755 "$secondary"
            made_secondary="$secondary"
            break
        fi
    done
fi

# Every opt-in feature a Linux file system should have. The others listed by `pjdfstest -l`
# (chflags, chflags_sf_snapshot, nfsv4_acls, stat_st_birthtime) are BSD-only.
# allow_remount stays off, so the 13 EROFS cases are skipped. They run `mount -o remount,ro` on
# the file system's mount point: on a FUSE mount, mount(8) hands that to the mount.fuse3 helper,
# which takes the source ("tiergate:<id>") for a command and fails; and on a loop-mounted ext4
# here, 8 of the 13 fail with "mount point is busy" inside the full run (all pass alone).
conf="$logdir/pjdfstest.toml"
cat >"$conf" <<EOF
# Written by tests/suites/pjdfstest.sh
[features]
posix_fallocate = {}
rename_ctime = {}
utime_now = {}
utimensat = {}

[settings]
naptime = $naptime
allow_remount = false

[dummy_auth]
entries = [$entry_nobody, $entry_tests]
EOF

args=(-c "$conf" -p "$dir")
if [ -n "$secondary" ]; then
    args+=(-s "$secondary")
else
    echo "pjdfstest: no directory on another file system found; EXDEV cases will be skipped" >&2
fi
if [ -n "${PJD_PATTERNS:-}" ]; then
    read -r -a patterns <<<"$PJD_PATTERNS"
    args+=("${patterns[@]}")
fi

full="$logdir/pjdfstest.log"
echo "pjdfstest: $("$pjd" --version) in $dir (secondary fs: ${secondary:-none}; log: $full)"
start=$SECONDS
rc=0
(cd "$dir" && NO_COLOR=1 RUST_BACKTRACE=0 timeout --kill-after=30 "$run_timeout" \
    "$pjd" "${args[@]}") >"$full" 2>&1 || rc=$?
elapsed=$((SECONDS - start))

# One line per case: "NAME STATUS". Case lines start in column 0 and end in a status word; the
# indented lines under a FAILED case are its message.
results="$logdir/pjdfstest-results.txt"
failures="$logdir/pjdfstest-failures.txt"
sed 's/\x1b\[[0-9;]*m//g' "$full" | awk -v failures="$failures" '
    /^[^[:space:]]+[[:space:]]+(ok|FAILED|skipped|failed as expected|PASSED UNEXPECTEDLY)$/ {
        name = $1
        status = $0
        sub(/^[^[:space:]]+[[:space:]]+/, "", status)
        print name, status
        infail = (status == "FAILED")
        if (infail) print name > failures
        next
    }
    infail && /^[[:space:]]/ && !/^[[:space:]]+[0-9]+: / {
        line = $0
        sub(/^[[:space:]]+/, "", line)
        print "    " line > failures
        next
    }
    { infail = 0 }
' >"$results"
touch "$failures"

count() { awk -v s="$1" '{ st = $0; sub(/^[^ ]+ /, "", st) } st == s { n++ } END { print n + 0 }' "$results"; }
passed="$(count ok)"
failed="$(count FAILED)"
skipped="$(count skipped)"

# Allowlist: one case name per line, '#' starts a comment.
allowed="$scratch/allowed"
failed_names="$scratch/failed"
passed_names="$scratch/passed"
: >"$allowed"
if [ -f "$known" ]; then
    sed -e 's/#.*//' -e 's/[[:space:]]//g' "$known" | awk 'NF' | sort -u >"$allowed"
fi
awk '$2 == "FAILED" { print $1 }' "$results" | sort -u >"$failed_names"
awk '$2 == "ok" { print $1 }' "$results" | sort -u >"$passed_names"
unexpected="$(comm -23 "$failed_names" "$allowed")"
now_passing="$(comm -12 "$passed_names" "$allowed")"
n_known="$(comm -12 "$failed_names" "$allowed" | awk 'NF' | wc -l)"

status=0
if ! grep -q '^Summary:' <(sed 's/\x1b\[[0-9;]*m//g' "$full"); then
    echo "pjdfstest: no summary line: pjdfstest exited with status $rc (timeout ${run_timeout}s?)" >&2
    tail -n 30 "$full" >&2
    status=1
elif [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then
    echo "pjdfstest: exited with status $rc although no case failed" >&2
    tail -n 30 "$full" >&2
    status=1
fi
if [ "$((passed + failed + skipped))" -eq 0 ]; then
    echo "pjdfstest: no test case ran" >&2
    status=1
fi
# The cases ran against whatever DIR was: if the mount went away during the run, they tested the
# file system underneath (or failed on a dead mount) and prove nothing about tiergate.
if ! require_live_mount "$dir" pjdfstest; then
    echo "pjdfstest: the mount is gone after the run: its results do not count" >&2
    status=1
fi

if [ -n "$unexpected" ]; then
    status=1
    echo "pjdfstest: FAILED, not in $(basename "$known"):"
    while read -r name; do
        awk -v n="$name" '$0 == n { show = 1; print "  " $0; next } /^[^ ]/ { show = 0 } show && shown[n]++ < 4' "$failures"
    done <<<"$unexpected"
fi
if [ "$n_known" -gt 0 ]; then
    echo "pjdfstest: $n_known known failure(s) (listed in $(basename "$known"))"
fi
if [ -n "$now_passing" ]; then
    echo "pjdfstest: listed in $(basename "$known") but now passing (remove them from the list):"
    while read -r name; do
        echo "  $name"
    done <<<"$now_passing"
fi
echo "pjdfstest: $passed passed, $failed failed, $skipped skipped in ${elapsed}s"
exit "$status"
