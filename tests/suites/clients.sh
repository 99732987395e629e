#!/usr/bin/env bash
# Real backup clients against a running tiergate: each backs up one generated tree into the
# mount or the WebDAV share, restores it to a local directory, and the restore is compared with
# the source entry by entry (type, size, SHA-256 of the bytes, symlink target; for the clients
# that keep them, also permission bits and mtimes).
#
#   tests/suites/clients.sh DIR URL LOGDIR
#
# DIR is the tiergate mount, URL the WebDAV share of the same daemon (its root is the root of
# the mount). DIR must be a live tiergate mount before each client and after the last (a client
# that ran while the mount was gone tested another file system and fails; TG_SUITE_ANY_DIR=1
# accepts any directory). The suite works in DIR/clients.XXXXXX (the same collection over WebDAV) and a
# local scratch directory, and removes both at the end.
#
#   restic     repository on the mount; backup, restore, check --read-data
#   borg       repository on the mount (--encryption=none); create, extract, check --verify-data
#   duplicity  webdav:// target, --no-encryption; full backup, restore, verify --compare-data
#   rclone     `:webdav:` remote (--links, --create-empty-src-dirs); copy up, check --download, copy back
#   tar        archive created on the mount, extracted back (-p)
#   rsync      rsync -a into the mount and back; a checksum dry run must find no difference
#
# The tree (generated, seeded): ~300 files of mixed sizes (empty, small, a few hundred KiB, two
# multi-MiB random files), a 24-level deep directory, an empty directory, names with spaces and
# unicode, symlinks to a file and to a directory, assorted modes and fixed mtimes.
#
# LOGDIR receives one log per client (<client>.log: every command and its output) and the
# manifests compared (<client>.manifest beside source.manifest). Prints one line per client,
#   restic: backup 312 files, restore identical, check ok, 3.2 s
# and a closing line
#   clients: N passed, N failed, N skipped
# and exits non-zero if any client failed. A missing client program is a failure, never a skip.
#
# Environment:
#   CLIENTS         clients to run (default "restic borg duplicity rclone tar rsync")
#   CLIENTS_SEED    seed of the generated tree (default 7)
#   CLIENTS_TIMEOUT seconds each client command may take before it is killed (default 300)
#   CLIENTS_KEEP=1  keep the work directories (their paths are printed)
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"

if [ $# -ne 3 ]; then
    echo "usage: $0 DIR URL LOGDIR" >&2
    exit 2
fi
mnt="$(realpath -e "$1")"
url="${2%/}/"
mkdir -p "$3"
logdir="$(realpath -e "$3")"
clients="${CLIENTS:-restic borg duplicity rclone tar rsync}"
seed="${CLIENTS_SEED:-7}"
cmd_timeout="${CLIENTS_TIMEOUT:-300}"
if ! require_live_mount "$mnt" clients; then
    echo "clients: 0 passed, $(wc -w <<<"$clients") failed, 0 skipped"
    exit 1
fi

remote_dir="$(mktemp -d "$mnt/clients.XXXXXX")"
remote_url="$url$(basename "$remote_dir")"
scratch="$(mktemp -d "${TMPDIR:-/tmp}/tiergate-clients.XXXXXX")"
cleanup() {
    if [ "${CLIENTS_KEEP:-0}" = 1 ]; then
        echo "clients: kept $remote_dir and $scratch"
    else
        rm -rf "$remote_dir" "$scratch"
    fi
}
trap cleanup EXIT

src="$scratch/src"

# gen_tree DIR SEED: the deterministic test tree.
gen_tree() {
    python3 - "$1" "$2" <<'EOF'
import os, random, sys

root, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
os.makedirs(root)
files = []

def put(rel, data, mode=0o644):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    files.append(rel)

# Text-like data compresses and deduplicates; random data does not. Both matter to the clients.
def text(n):
    words = [b"tiergate", b"backup", b"chunk", b"pack", b"tier", b"s3", b"fuse", b"dav"]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + b" "
    return bytes(out[:n])

dirs = ["", "docs", "docs/old", "photos 2024", "src/lib", "caf\u00e9", "\u65e5\u672c\u8a9e/\u30c7\u30fc\u30bf",
        "with space/and more spaces"]
for i in range(280):
    d = rng.choice(dirs)
    kind = rng.random()
    if kind < 0.05:
        data = b""
    elif kind < 0.80:
        data = text(rng.randrange(1, 16384)) if rng.random() < 0.5 else rng.randbytes(rng.randrange(1, 16384))
    else:
        data = rng.randbytes(rng.randrange(65536, 512 * 1024))
    mode = rng.choice([0o644, 0o644, 0o600, 0o755, 0o640])
    put(os.path.join(d, "file %03d.bin" % i if i % 7 == 0 else "f%03d.dat" % i), data, mode)
# Two multi-MiB random files, not multiples of any block size.
put("big/random-a.bin", rng.randbytes(3 * 1024 * 1024 + 4097))
put("big/random b \u00fcml.bin", rng.randbytes(5 * 1024 * 1024 - 333))
# A file written twice over (same content at two names: dedup in the clients).
same = rng.randbytes(200 * 1024)
put("dup/one.bin", same)
put("dup/two.bin", same)
# Names with spaces and unicode, and empty files.
for name in ["a b c.txt", "  leading spaces", "trailing space ", "\u00e9t\u00e9 \u2603.txt",
             "emoji \U0001F389.txt", "\u0391\u03b8\u03ae\u03bd\u03b1.md", "quote'single.txt", "hash#and%percent"]:
    put(os.path.join("names", name), text(rng.randrange(0, 2000)))
for i in range(5):
    put("empty/e%d" % i, b"")
# A deep directory.
deep = os.path.join(*["level%02d" % i for i in range(24)])
put(os.path.join("deep", deep, "bottom.txt"), b"the bottom\n")
os.makedirs(os.path.join(root, "empty-dir"))
# Symlinks (relative): to a file and to a directory.
os.symlink("../docs/old", os.path.join(root, "names", "link to dir"))
os.symlink("../big/random-a.bin", os.path.join(root, "names", "link-to-file"))
# Fixed mtimes, deepest first so that setting a file's time does not disturb its directory's.
t0 = 1_600_000_000
for rel in files:
    t = t0 + rng.randrange(0, 10**8)
    os.utime(os.path.join(root, rel), (t, t))
for dirpath, _, _ in sorted(os.walk(root), key=lambda e: -e[0].count(os.sep)):
    t = t0 + rng.randrange(0, 10**8)
    os.utime(dirpath, (t, t))
print(len(files))
EOF
}

# manifest DIR LEVEL: one line per entry under DIR, sorted: path, type, size, SHA-256, symlink
# target; at LEVEL full also permission bits and mtime (whole seconds; not for symlinks).
manifest() {
    python3 - "$1" "$2" <<'EOF'
import hashlib, os, stat, sys

root, level = sys.argv[1], sys.argv[2]
lines = []
for dirpath, dirnames, filenames in os.walk(root):
    for name in dirnames + filenames:
        path = os.path.join(dirpath, name)
        rel = os.path.relpath(path, root)
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            fields = ["link", os.readlink(path)]
        elif stat.S_ISDIR(st.st_mode):
            fields = ["dir"]
        elif stat.S_ISREG(st.st_mode):
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            fields = ["file", str(st.st_size), h.hexdigest()]
        else:
            fields = ["other"]
        if level == "full" and not stat.S_ISLNK(st.st_mode):
            fields += ["%04o" % stat.S_IMODE(st.st_mode), str(int(st.st_mtime))]
        lines.append(ascii(rel) + " " + " ".join(fields))
for line in sorted(lines):
    print(line)
EOF
}

# run CMD...: runs CMD with a timeout, appending the command line and its output to the
# current client's log.
run() {
    printf '+ %s\n' "$*" >>"$clog"
    timeout --kill-after=10 "$cmd_timeout" "$@" >>"$clog" 2>&1
}

# need PROG...: fails (with the hint) unless every PROG is on PATH.
need() {
    local p
    for p in "$@"; do
        if ! command -v "$p" >/dev/null 2>&1; then
            fail_msg="$p not installed; run scripts/install-test-deps.sh"
            return 1
        fi
    done
}

# compare NAME DIR LEVEL: manifest of DIR against the source's at LEVEL.
compare() {
    manifest "$2" "$3" >"$logdir/$1.manifest"
    manifest "$src" "$3" >"$logdir/source-$3.manifest"
    if ! diff -u "$logdir/source-$3.manifest" "$logdir/$1.manifest" >"$logdir/$1.diff"; then
        fail_msg="$1 differs from the source ($(grep -c '^[-+][^-+]' "$logdir/$1.diff") lines, see $logdir/$1.diff)"
        return 1
    fi
    rm -f "$logdir/$1.diff"
}

# --- the clients: each returns non-zero with fail_msg set, or sets ok_msg ---------------------

client_restic() {
    need restic || return 1
    export RESTIC_PASSWORD=tiergate-test RESTIC_CACHE_DIR="$scratch/restic-cache"
    local repo="$remote_dir/restic" out="$scratch/restic-out"
    fail_msg="restic init failed"
    run restic --repo "$repo" init || return 1
    fail_msg="restic backup failed"
    (cd "$src" && run restic --repo "$repo" backup --host tiergate-test .) || return 1
    fail_msg="restic restore failed"
    run restic --repo "$repo" restore latest --target "$out" || return 1
    compare restic "$out" full || return 1
    fail_msg="restic check --read-data failed"
    run restic --repo "$repo" check --read-data || return 1
    ok_msg="backup $nfiles files, restore identical, check ok"
}

client_borg() {
    need borg || return 1
    export BORG_BASE_DIR="$scratch/borg-base" BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes \
        BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
    local repo="$remote_dir/borg" out="$scratch/borg-out"
    fail_msg="borg init failed"
    run borg init --encryption=none "$repo" || return 1
    fail_msg="borg create failed"
    (cd "$src" && run borg create --stats "$repo::tree" .) || return 1
    fail_msg="borg extract failed"
    mkdir -p "$out"
    (cd "$out" && run borg extract "$repo::tree") || return 1
    compare borg "$out" full || return 1
    fail_msg="borg check --verify-data failed"
    run borg check --verify-data "$repo" || return 1
    ok_msg="backup $nfiles files, extract identical, check --verify-data ok"
}

client_duplicity() {
    need duplicity || return 1
    local target="${remote_url/#http/webdav}/duplicity" out="$scratch/duplicity-out"
    local common=(--no-encryption --archive-dir "$scratch/duplicity-archive" --name tree
        --tempdir "$scratch" --verbosity info)
    # The share has no authentication, but duplicity's WebDAV backend asks for a password on the
    # terminal unless FTP_PASSWORD is set.
    export FTP_PASSWORD=unused
    fail_msg="duplicity full backup failed"
    run duplicity full "${common[@]}" "$src" "$target" || return 1
    fail_msg="duplicity restore failed"
    run duplicity restore "${common[@]}" "$target" "$out" || return 1
    compare duplicity "$out" full || return 1
    fail_msg="duplicity verify --compare-data failed"
    run duplicity verify "${common[@]}" --compare-data "$target" "$src" || return 1
    ok_msg="backup $nfiles files, restore identical, verify ok"
}

client_rclone() {
    need rclone || return 1
    local remote out="$scratch/rclone-out"
    remote=":webdav:$(basename "$remote_dir")/rclone"
    # Debian's rclone 1.60 fails to start when AWS_CA_BUNDLE is set, even for a WebDAV remote.
    local rcl=(env -u AWS_CA_BUNDLE rclone --config /dev/null --webdav-url "$url" --links)
    fail_msg="rclone copy up failed"
    run "${rcl[@]}" copy --create-empty-src-dirs "$src" "$remote" || return 1
    # The share offers no hash rclone knows, so plain check would compare sizes only.
    fail_msg="rclone check --download failed"
    run "${rcl[@]}" check --download "$src" "$remote" || return 1
    fail_msg="rclone copy back failed"
    run "${rcl[@]}" copy --create-empty-src-dirs "$remote" "$out" || return 1
    # rclone keeps neither modes nor (over WebDAV without a vendor) mtimes: content only.
    compare rclone "$out" content || return 1
    ok_msg="copy $nfiles files up, check --download ok, copy back identical (content)"
}

client_tar() {
    need tar || return 1
    local archive="$remote_dir/tree.tar" out="$scratch/tar-out"
    fail_msg="tar create on the mount failed"
    run tar -C "$src" -cf "$archive" . || return 1
    fail_msg="tar extract from the mount failed"
    mkdir -p "$out"
    run tar -C "$out" -xpf "$archive" || return 1
    compare tar "$out" full || return 1
    ok_msg="archive $nfiles files ($(du -h --apparent-size "$archive" | cut -f1)), extract identical"
}

client_rsync() {
    need rsync || return 1
    local dst="$remote_dir/rsync" out="$scratch/rsync-out"
    fail_msg="rsync into the mount failed"
    run rsync -a "$src/" "$dst/" || return 1
    compare rsync-mount "$dst" full || return 1
    fail_msg="rsync checksum dry run failed"
    local dry=(rsync -a --checksum --dry-run --itemize-changes "$src/" "$dst/")
    printf '+ %s\n' "${dry[*]}" >>"$clog"
    timeout --kill-after=10 "$cmd_timeout" "${dry[@]}" >"$scratch/rsync-changes" 2>>"$clog" ||
        return 1
    cat "$scratch/rsync-changes" >>"$clog"
    if [ -s "$scratch/rsync-changes" ]; then
        fail_msg="rsync --checksum finds differences after the copy (see $clog)"
        return 1
    fi
    fail_msg="rsync back from the mount failed"
    run rsync -a "$dst/" "$out/" || return 1
    compare rsync "$out" full || return 1
    ok_msg="copy $nfiles files, mount and copy back identical (modes, mtimes), checksum run clean"
}

# --- run -----------------------------------------------------------------------------------------
nfiles="$(gen_tree "$src" "$seed")"
echo "clients: tree of $nfiles files (seed $seed, $(du -sh --apparent-size "$src" | cut -f1)) in $src"
echo "clients: work directory $remote_dir ($remote_url)"

passed=0
failed=0
for c in $clients; do
    clog="$logdir/$c.log"
    : >"$clog"
    fail_msg="failed"
    ok_msg="ok"
    t0="$(date +%s.%N)"
    rc=0
    # A subshell per client: its environment variables stay its own.
    (
        set +e
        if ! require_live_mount "$mnt" clients; then
            echo "FAIL not run: the mount is gone" >"$scratch/$c.result"
        elif ! declare -F "client_$c" >/dev/null; then
            echo "FAIL no such client (known: restic borg duplicity rclone tar rsync)" \
                >"$scratch/$c.result"
        elif "client_$c"; then
            echo "OK $ok_msg" >"$scratch/$c.result"
        else
            echo "FAIL $fail_msg" >"$scratch/$c.result"
        fi
    ) || rc=$?
    secs="$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')"
    result="$(cat "$scratch/$c.result" 2>/dev/null || echo "FAIL exited with status $rc")"
    if [ "${result%% *}" = OK ]; then
        passed=$((passed + 1))
        echo "$c: ${result#OK }, $secs s"
    else
        failed=$((failed + 1))
        echo "$c: FAILED: ${result#FAIL }, $secs s (log: $clog)"
        tail -n 15 "$clog" | sed "s/^/  $c| /"
    fi
done
# A mount that went away during the last client leaves its result meaningless.
if ! require_live_mount "$mnt" clients; then
    echo "clients: the mount is gone after the run: the last client ($c) does not count"
    if [ "$passed" -gt 0 ] && [ "${result%% *}" = OK ]; then
        passed=$((passed - 1))
        failed=$((failed + 1))
    fi
fi
echo "clients: $passed passed, $failed failed, 0 skipped"
[ "$failed" -eq 0 ]
