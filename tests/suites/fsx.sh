#!/usr/bin/env bash
# Random I/O against a reference: runs fsx (the Rust port, crate `fsx` 0.3.2) on a file in DIR.
#
#   tests/suites/fsx.sh DIR LOGDIR
#
# Two runs, each FSX_OPS operations on a file that grows up to FSX_FLEN bytes (default 64 MiB, so
# it spans dozens of 1 MiB chunks): one with the fixed seed FSX_SEED, one with a random seed that
# is printed here and in its log, so a failure can be replayed with FSX_SEED=<seed>.
#
# fsx keeps the expected contents in memory and checks every read (pread, mmap, sendfile) against
# it. The operation mix enables everything a Linux file system behind FUSE should support: pwrite,
# pread, mmap read and write (with msync, and MS_INVALIDATE), ftruncate up and down,
# close/reopen, fsync, fdatasync, posix_fallocate, fallocate(PUNCH_HOLE|KEEP_SIZE), sendfile,
# posix_fadvise and copy_file_range within the file.
#
# DIR must be in a live tiergate mount before and after each run (TG_SUITE_ANY_DIR=1 accepts any
# directory, for a baseline): a run whose mount went away tested another file system and fails.
#
# LOGDIR receives fsx.toml and fsx-<run>.log per run; on failure also fsx-<run>/ with fsx's
# artifacts (<file>.fsxgood: the expected contents; the log holds the last 1024 operations).
#
# Environment:
#   FSX                  the binary (default: fsx on PATH, else ~/.cargo/bin/fsx)
#   FSX_OPS              operations per run (default 100000)
#   FSX_FLEN             maximum file size in bytes (default 67108864)
#   FSX_OPSIZE_MAX       maximum size of one read/write/copy in bytes (default 262144)
#   FSX_SEED             seed of the fixed run (default 20261128)
#   FSX_RANDOM_SEED      seed of the "random" run (default: drawn from /dev/urandom)
#   FSX_MMAP             0 to leave out the mmap operations (mapread, mapwrite, invalidate)
#   FSX_TIMEOUT          seconds before one run is killed (default 1500)
#   FSX_INJECT           skip operation N (hidden fsx option), to check that failures are caught
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"

if [ $# -ne 2 ]; then
    echo "usage: $0 DIR LOGDIR" >&2
    exit 2
fi
dir="$(realpath -e "$1")"
mkdir -p "$2"
logdir="$(realpath -e "$2")"
require_live_mount "$dir" fsx || { echo "fsx: 0 passed, 2 failed"; exit 1; }

ops="${FSX_OPS:-100000}"
flen="${FSX_FLEN:-67108864}"
opmax="${FSX_OPSIZE_MAX:-262144}"
fixed_seed="${FSX_SEED:-20261128}"
random_seed="${FSX_RANDOM_SEED:-$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')}"
run_timeout="${FSX_TIMEOUT:-1500}"
map_weight=5
invalidate_weight=1
if [ "${FSX_MMAP:-1}" = 0 ]; then
    map_weight=0
    invalidate_weight=0
fi

fsx="${FSX:-}"
if [ -z "$fsx" ]; then
    fsx="$(command -v fsx || true)"
    [ -n "$fsx" ] || fsx="${CARGO_HOME:-$HOME/.cargo}/bin/fsx"
fi
if [ ! -x "$fsx" ]; then
    echo "fsx: binary not found ($fsx); run scripts/install-test-deps.sh" >&2
    exit 1
fi

conf="$logdir/fsx.toml"
cat >"$conf" <<EOF
# Written by tests/suites/fsx.sh
flen = $flen
nomsyncafterwrite = false
nosizechecks = false

[opsize]
min = 0
max = $opmax
align = 1

[weights]
close_open = 2
read = 10
write = 10
mapread = $map_weight
mapwrite = $map_weight
invalidate = $invalidate_weight
truncate = 2
fsync = 1
fdatasync = 1
posix_fallocate = 2
punch_hole = 2
sendfile = 2
posix_fadvise = 1
copy_file_range = 2
EOF

echo "fsx: $("$fsx" --version) in $dir: $ops ops per run, file up to $flen bytes, ops up to $opmax bytes, mmap ops ${FSX_MMAP:-1}"
passed=0
failed=0

# run_fsx LABEL SEED
run_fsx() {
    local label="$1" seed="$2" out="$logdir/fsx-$1.log" art="$logdir/fsx-$1" file="$dir/fsx-$1.data"
    local start rc=0 elapsed extra=()
    mkdir -p "$art"
    if ! require_live_mount "$dir" fsx; then
        echo "fsx: $label run (seed $seed) FAILED: not run, the mount is gone" >&2
        failed=$((failed + 1))
        return
    fi
    [ -z "${FSX_INJECT:-}" ] || extra=(--inject "$FSX_INJECT")
    {
        echo "# fsx run '$label': seed $seed, $ops ops, file $file"
        echo "# replay: FSX_SEED=$seed FSX_OPS=$ops $0 DIR LOGDIR  (or: $fsx -f $conf -N $ops -S $seed -P DIR FILE)"
    } >"$out"
    start=$SECONDS
    timeout --kill-after=30 "$run_timeout" \
        "$fsx" -f "$conf" -N "$ops" -S "$seed" -P "$art" "${extra[@]}" "$file" >>"$out" 2>&1 || rc=$?
    elapsed=$((SECONDS - start))
    if ! require_live_mount "$dir" fsx; then
        echo "fsx: $label run (seed $seed) FAILED: the mount is gone after the run (status $rc)" >&2
        failed=$((failed + 1))
    elif [ "$rc" -eq 0 ] && grep -q 'All operations completed A-OK' "$out"; then
        echo "fsx: $label run (seed $seed): $ops ops OK in ${elapsed}s"
        passed=$((passed + 1))
        rm -f "$file"
        rm -rf "$art"
    else
        [ "$rc" -ne 124 ] || echo "fsx: $label run timed out after ${run_timeout}s" >&2
        echo "fsx: $label run (seed $seed) FAILED with status $rc after ${elapsed}s; log $out, artifacts $art" >&2
        echo "----- last 40 lines of $out -----" >&2
        tail -n 40 "$out" >&2
        echo "----- end of $out -----" >&2
        failed=$((failed + 1))
        # Keep the file as the file system returned it beside the expected contents (bounded in
        # time, in case the file system under test hangs), and free the space under test.
        timeout 120 cp "$file" "$art/" 2>/dev/null || true
        timeout 60 rm -f "$file" || true
    fi
}

run_fsx fixed "$fixed_seed"
run_fsx random "$random_seed"
echo "fsx: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
