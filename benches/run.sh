#!/usr/bin/env bash
# The end-to-end benchmark: tiergate (FUSE mount and WebDAV share) against the raw disk, rclone
# (mount and serve webdav) over the same local Garage S3 server, restic and borg, in one run.
#
#   bash benches/run.sh                  # 4 GiB, every workload (~45-55 min on 2 cores, estimated)
#   bash benches/run.sh --quick          # 256 MiB, 2,000 small files, short fio runs (~5 min)
#   bash benches/run.sh --size 1G        # 18 min here
#   bash benches/run.sh --size 1G --only a,c,study
#   bash benches/run.sh --only soak       # the 10-minute soak alone
#
# Options:
#   --size S          data size of workloads a-d and f (256M, 1G, 4G; default 4G)
#   --quick           --size 256M (unless given), 2,000 small files, 10 s random-write runs,
#                     a 60 s soak
#   --only LIST       workloads to run, comma-separated: a b c d e f study soak (default all; d
#                     runs on the file a wrote, so it implies a)
#   --chunk-sizes L   average chunk sizes of the study (default 256K,512K,1M,2M,4M; min and
#                     max are avg/4 and avg*4, as in the default 128K/512K/2M)
#   --study-size S    size of the study's backup chain (default the smaller of --size and 1G)
#   --soak-secs N     length of the soak (default 600)
#   --no-publish      do not copy the results into docs/BENCHMARKS.md and benches/results/latest.*
#   --work DIR        scratch directory (default /var/tmp/tiergate-bench.PID; removed at the end)
#
# Workloads (docs/BENCHMARKS.md says what each figure means):
#   a  sequential write of S of incompressible data ending with fsync, a duplicate write of it
#      (tiergate), time to off-site, read back warm (page cache dropped, local cache kept) and
#      cold (after `tiergate evict`; rclone: after its VFS cache was removed)
#   b  the same with text-like compressible data
#   c  a backup chain: full, five incrementals (~3% of 1 MiB blocks changed a day), a synthetic
#      full built on the target from them, retention deleting the original full; time until each
#      step is off-site, bytes and requests to S3, stored bytes, peak RSS; restic and borg back
#      up the same tree after each step
#   d  random 4-64 KiB overwrites inside the file of (a) (fio, time-based, ending with fsync)
#   e  small files: create, stat, read, delete (benches/smallfiles.py)
#   f  WebDAV PUT and GET of a large file: tiergate's share against `rclone serve webdav`
#   study  workload c on tiergate for each average chunk size
#   soak   the fault suite's soak test (tests/integration/faults.rs) against the same Garage:
#          writes, overwrites, PUTs, deletes, reads, syncs and evictions in a loop, the daemon's
#          memory and descriptors sampled twice a second; it runs the tiergate of this checkout
#          (cargo's test build), whatever TIERGATE_BIN says
#
# S3 traffic of every contender goes through benches/s3count.py, a counting proxy in front of
# Garage: bytes each way and HTTP requests by method, the same method for all. Results: JSON
# lines (kept as target/bench-results/bench-<size>[-quick].jsonl), then benches/report.py writes
# target/bench-results/bench-<size>[-quick].{md,json} and (unless --no-publish) the latest
# table into docs/BENCHMARKS.md. Run as root. Environment: TIERGATE_BIN (skips the build),
# RETIRE_TIMEOUT (seconds GC passes may take to finish retention, default 600).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
user_bin="${TIERGATE_BIN:-}"
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
# shellcheck source=scripts/garage.sh
. scripts/garage.sh
# shellcheck source=benches/lib.sh
. benches/lib.sh

size="" quick=0 only="a,b,c,d,e,f,study,soak" chunk_sizes="256K,512K,1M,2M,4M" study_size=""
soak_secs="" publish=1 work=""
while [ $# -gt 0 ]; do
    case "$1" in
        --size) size="$2"; shift 2 ;;
        --quick) quick=1; shift ;;
        --only) only="$2"; shift 2 ;;
        --chunk-sizes) chunk_sizes="$2"; shift 2 ;;
        --study-size) study_size="$2"; shift 2 ;;
        --soak-secs) soak_secs="$2"; shift 2 ;;
        --no-publish) publish=0; shift ;;
        --work) work="$2"; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
[ -n "$size" ] || { [ "$quick" = 1 ] && size=256M || size=4G; }
N="$(parse_size "$size")"
if [ $((N % (1 << 20))) -ne 0 ] || [ "$N" -lt $((64 << 20)) ]; then
    die "--size must be whole MiB, at least 64M"
fi
if [ -n "$study_size" ]; then
    SN="$(parse_size "$study_size")"
else
    SN=$((N < (1 << 30) ? N : (1 << 30)))
fi
if [ "$quick" = 1 ]; then
    smallfiles=2000 fio_runtime=10 soak_secs="${soak_secs:-60}"
else
    smallfiles=20000 fio_runtime=30 soak_secs="${soak_secs:-600}"
fi
[[ "$soak_secs" =~ ^[1-9][0-9]*$ ]] || die "--soak-secs must be a whole number of seconds"
want() { [[ ",$only," == *",$1,"* ]]; }
want d && ! want a && only="$only,a"
CHAIN_BLOCK=$((1 << 20)) CHAIN_PCT=3 CHAIN_DAYS=5 CHAIN_SEED=20261202

need_root
need_pkgs fio:fio rclone:rclone restic:restic borg:borgbackup curl:curl cc:gcc \
    python3:python3 /usr/bin/time:time
work="${work:-/var/tmp/tiergate-bench.$$}"
mkdir -p "$work"
work="$(realpath "$work")"
# Sources (a, b, chain), the raw copy, one volume or rclone cache at a time, the chain tree of
# restic and borg (hardlinks) and their repositories, and Garage's data for every contender.
# Garage frees the blocks of purged objects only later, so its share is counted whole. Without
# the chain, ~6 S are enough.
need_factor=6
if want c || want study; then need_factor=16; fi
need_space "$work" $((need_factor * N + 2 * SN + (4 << 30)))
resdir="$PWD/target/bench-results"
mkdir -p "$resdir"
name="bench-$(human "$N")"
[ "$quick" = 0 ] || name="$name-quick"
BENCH_RESULTS="$work/results.jsonl"
: >"$BENCH_RESULTS"
run_id="run-$(date -u +%Y%m%dT%H%M%S)-$$"
# The commit measured (src/ changes not committed show as +dirty).
BENCH_GIT="$(git rev-parse --short HEAD)"
git diff --quiet HEAD -- src Cargo.toml Cargo.lock || BENCH_GIT="$BENCH_GIT+dirty"
export BENCH_GIT
started="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

if [ -z "$user_bin" ]; then
    log "cargo build --release"
    cargo build --release --quiet
fi
SOAK_BIN=""
if want soak; then
    # Built now and run as it is later: sources edited during a long run do not change it.
    log "cargo test --release --no-run --test integration (the soak)"
    SOAK_BIN="$(cargo test --release --quiet --no-run --test integration --message-format=json |
        python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "integration" \
            and m.get("executable"):
        print(m["executable"])')"
    [ -x "$SOAK_BIN" ] || die "cargo test --no-run named no integration test binary"
fi
GEN="$work/gen"
cc -O2 -o "$GEN" benches/gen.c

S3C_PID="" RC_PID="" RC_MNT="" RC_RC=""
cleanup() {
    local rc=$?
    [ -z "$TIERGATE_PID" ] || stop_tiergate || true
    [ -z "$RC_PID" ] || rc_stop || true
    [ -z "$S3C_PID" ] || { kill "$S3C_PID" 2>/dev/null; wait "$S3C_PID" 2>/dev/null; } || true
    garage_stop || true
    if [ "$rc" -ne 0 ]; then
        log "failed; logs kept in $work/logs"
        find "$work" -mindepth 1 -maxdepth 1 ! -name logs ! -name results.jsonl -exec rm -rf {} +
    else
        rm -rf "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT
mkdir -p "$work/logs"

garage_install
garage_start
S3_PORT="$(free_port)" S3C_STATS="$(free_port)"
python3 benches/s3count.py "$S3_PORT" "${TIERGATE_TEST_S3_ENDPOINT##*:}" "$S3C_STATS" \
    >"$work/logs/s3count.log" 2>&1 &
S3C_PID=$!
S3_EP="http://127.0.0.1:$S3_PORT"
until (exec 3<>"/dev/tcp/127.0.0.1/$S3C_STATS") 2>/dev/null; do
    kill -0 "$S3C_PID" || die "s3count.py did not start: $(cat "$work/logs/s3count.log")"
    sleep 0.1
done
BUCKET="$GARAGE_BUCKET"

# s3stats: the proxy's counters, one JSON line.
s3stats() {
    local line
    exec 4<>"/dev/tcp/127.0.0.1/$S3C_STATS"
    IFS= read -r line <&4
    exec 4<&- 4>&-
    printf '%s\n' "$line"
}
# s3diff BEFORE AFTER FIELD: up_bytes, down_bytes, requests (all), or one method (PUT, GET...).
s3diff() {
    python3 -c '
import json, sys
a, b, f = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
if f in ("up_bytes", "down_bytes"):
    print(b[f] - a[f])
elif f == "requests":
    print(sum(b["requests"].values()) - sum(a["requests"].values()))
else:
    print(b["requests"].get(f, 0) - a["requests"].get(f, 0))' "$1" "$2" "$3"
}

# rcl ARGS...: rclone against Garage. Debian's rclone fails on AWS_CA_BUNDLE (set on these
# machines). RCL_DIRECT=1 bypasses the counting proxy (listings done for the report).
# RCL_EXEC=1 execs rclone (in a background subshell: $! is then rclone's pid).
rcl() {
    local ep="$S3_EP" ex=()
    [ "${RCL_DIRECT:-0}" = 0 ] || ep="$TIERGATE_TEST_S3_ENDPOINT"
    [ "${RCL_EXEC:-0}" = 0 ] || ex=(exec)
    "${ex[@]}" env -u AWS_CA_BUNDLE rclone --s3-provider Other --s3-endpoint "$ep" \
        --s3-access-key-id "$TIERGATE_TEST_S3_ACCESS_KEY_ID" \
        --s3-secret-access-key "$TIERGATE_TEST_S3_SECRET_ACCESS_KEY" --s3-region garage \
        --s3-force-path-style=true "$@"
}
# bucket_bytes PREFIX: total size of the objects under PREFIX (listed past the proxy).
bucket_bytes() {
    RCL_DIRECT=1 rcl size --json ":s3:$BUCKET/$1" 2>>"$work/logs/rclone-size.log" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["bytes"])'
}
# purge PREFIX: delete a contender's objects once measured (Garage's disk is shared by all).
purge() { RCL_DIRECT=1 rcl purge ":s3:$BUCKET/$1" >>"$work/logs/rclone-purge.log" 2>&1 || true; }

mibps() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.1f", (s > 0 ? b / 1048576 / s : 0) }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

# timed_copy SRC DST: copies with dd (1 MiB blocks, fsync at the end); prints seconds.
timed_copy() {
    local t0
    # Every write starts from the same memory: nothing dirty of an earlier step (S3 server,
    # previous contender) for the kernel to throttle it against, nothing cached but the source
    # (which comes from the page cache, not the disk under test). Without the drop, a later
    # step's write ran while the kernel reclaimed the gigabytes earlier steps had left cached,
    # and a 4 GiB duplicate write through the mount took 2.4x as long.
    drop_caches
    cat "$1" >/dev/null
    t0="$(now)"
    dd if="$1" of="$2" bs=1M conv=fsync status=none
    secs "$t0" "$(now)"
}
# timed_read FILE: drops caches, reads FILE to /dev/null; prints seconds.
timed_read() {
    local t0
    drop_caches
    t0="$(now)"
    dd if="$1" of=/dev/null bs=1M status=none
    secs "$t0" "$(now)"
}

# ---- contenders: tiergate ----------------------------------------------------------------------
TG_URL="" TG_CFG="" TG_PREFIX=""
# tg_start NAME [AVG_CHUNK_BYTES]: a fresh volume tiering to the bucket through the proxy,
# mounted, with its WebDAV share on a free port (TG_URL).
tg_start() {
    local dir="$work/tg-$1" port chunking=""
    port="$(free_port)"
    TG_PREFIX="$run_id/tg-$1"
    if [ -n "${2:-}" ]; then
        chunking="[chunking]
min_size = $(($2 / 4))
avg_size = $2
max_size = $(($2 * 4))"
    fi
    TG_CFG="$(TG_VOLUME_EXTRA="$chunking
[cache]
max_size = \"$(((3 * N + (2 << 30)) >> 20))MiB\"
[s3]
endpoint = \"$S3_EP\"
region = \"garage\"
bucket = \"$BUCKET\"
prefix = \"$TG_PREFIX\"
path_style = true
access_key_id = \"$TIERGATE_TEST_S3_ACCESS_KEY_ID\"
secret_access_key = \"$TIERGATE_TEST_S3_SECRET_ACCESS_KEY\"
[recycle]
days = 0
[gc]
interval_minutes = 0
grace_minutes = 0
max_rate = \"4GiB\"
[webdav]
enabled = true
listen = \"127.0.0.1:$port\"
[web]
enabled = false" make_volume "$dir" 2>>"$work/logs/tg-init.log")"
    start_tiergate "$TG_CFG" "$work/logs/tg-$1.log"
    TG_URL="http://127.0.0.1:$port"
}
tg_sync() { "$TIERGATE_BIN" sync --config "$TG_CFG" >>"$work/logs/tg-sync.log"; }
# tg_retire FILE: retention on tiergate, the counterpart of restic's `forget --prune`: delete
# FILE, then collect garbage (no recycle bin, no grace period, tg_start's [recycle] and [gc]; the
# default min_live_percent and max_unused_percent, so packs are rewritten when under half live,
# and then the emptiest until at most a tenth of the pack bytes are dead) until no dropped
# pack waits to leave the bucket: a pass drops and rewrites packs, and deletes their objects
# once metadata and a checkpoint that no longer name them are off-site (docs/RETENTION.md).
# Passes repeat until GC reports nothing waiting, for at most RETIRE_TIMEOUT seconds (default
# 600); if it never does, RETIRED is set to 0 and chain_run records no "stored bytes after
# retention" (a figure taken then would count packs retention had not removed yet).
RETIRED=1
tg_retire() {
    local pass=0 report deadline=$((SECONDS + ${RETIRE_TIMEOUT:-600}))
    rm -- "$1"
    while :; do
        pass=$((pass + 1))
        tg_sync
        report="$("$TIERGATE_BIN" gc --json --config "$TG_CFG")"
        printf '%s\n' "$report" >>"$work/logs/tg-gc.log"
        python3 -c 'import json, sys
r = json.loads(sys.argv[1])
sys.exit(0 if r["waiting_grace"] + r["waiting_metadata"] + r["waiting_checkpoint"] == 0 else 1)' \
            "$report" && return 0
        [ "$SECONDS" -lt "$deadline" ] || break
        sleep 1
    done
    RETIRED=0
    log "WARN: dropped packs still wait to leave the bucket after $pass GC passes in" \
        "${RETIRE_TIMEOUT:-600} s (logs/tg-gc.log): no stored bytes after retention recorded"
}
tg_stop() {
    local dir
    dir="$(dirname "$TG_CFG")"
    stop_tiergate
    purge "$TG_PREFIX"
    rm -rf "$dir"
}

# ---- contenders: rclone mount / serve webdav ---------------------------------------------------
RC_MODE="" RC_NAME="" RC_URL=""
# rc_start mount|webdav NAME: rclone over the bucket prefix run_id/rc-NAME with a full VFS
# cache in $work/rc-NAME/cache and its remote control on a free port (for vfs/stats).
rc_start() {
    local dir="$work/rc-$2" port deadline
    RC_MODE="$1" RC_NAME="$2"
    RC_RC="$(free_port)"
    mkdir -p "$dir/cache"
    local common=(--vfs-cache-mode full --cache-dir "$dir/cache" --vfs-write-back 1s
        --rc --rc-addr "127.0.0.1:$RC_RC" --rc-no-auth)
    if [ "$1" = mount ]; then
        RC_MNT="$dir/mnt"
        mkdir -p "$RC_MNT"
        RCL_EXEC=1 rcl mount ":s3:$BUCKET/$run_id/rc-$2" "$RC_MNT" "${common[@]}" \
            >>"$work/logs/rc-$2.log" 2>&1 </dev/null &
    else
        port="$(free_port)"
        RC_URL="http://127.0.0.1:$port"
        RCL_EXEC=1 rcl serve webdav ":s3:$BUCKET/$run_id/rc-$2" --addr "127.0.0.1:$port" "${common[@]}" \
            >>"$work/logs/rc-$2.log" 2>&1 </dev/null &
    fi
    RC_PID=$!
    deadline=$((SECONDS + 30))
    until { [ "$1" = mount ] && is_mounted "$RC_MNT"; } ||
        { [ "$1" = webdav ] && curl -fs -o /dev/null -X PROPFIND -H 'Depth: 0' "$RC_URL/"; }; do
        kill -0 "$RC_PID" 2>/dev/null || die "rclone $1 exited: $(tail -n 5 "$work/logs/rc-$2.log")"
        [ "$SECONDS" -lt "$deadline" ] || die "rclone $1 did not come up"
        sleep 0.2
    done
    log "rclone $1 (pid $RC_PID) on $work/rc-$2"
}
# rc_wait_uploads: until rclone's VFS has nothing queued or uploading: its "off-site". FUSE's
# release, which queues a closed file's upload, comes after close returns: the first look is
# half a second later.
rc_wait_uploads() {
    local out deadline=$((SECONDS + 3600))
    sleep 0.5
    while :; do
        out="$(env -u AWS_CA_BUNDLE rclone rc --url "http://127.0.0.1:$RC_RC/" vfs/stats)"
        python3 -c 'import json, sys
d = json.loads(sys.argv[1])["diskCache"]
sys.exit(0 if d["uploadsInProgress"] + d["uploadsQueued"] == 0 else 1)' "$out" && return 0
        [ "$SECONDS" -lt "$deadline" ] || die "rclone still uploading after an hour: $out"
        sleep 0.2
    done
}
rc_stop() {
    [ -n "$RC_PID" ] || return 0
    if [ "$RC_MODE" = mount ] && is_mounted "$RC_MNT"; then
        umount "$RC_MNT" 2>/dev/null || umount -l "$RC_MNT" || true
    fi
    kill "$RC_PID" 2>/dev/null || true
    wait "$RC_PID" 2>/dev/null || true
    RC_PID=""
}
# rc_restart_cold: after the uploads, stops rclone, deletes its VFS cache, starts it again.
rc_restart_cold() {
    rc_wait_uploads
    rc_stop
    rm -rf "$work/rc-$RC_NAME/cache"
    rc_start "$RC_MODE" "$RC_NAME"
}
rc_done() {
    rc_stop
    purge "$run_id/rc-$RC_NAME"
    rm -rf "$work/rc-$RC_NAME"
}

# ---- workloads a, b, d: sequential write/read, random overwrite --------------------------------
# fio_randwrite FILE WORKLOAD CONTENDER: time-based random overwrites of 4-64 KiB.
fio_randwrite() {
    local out="$work/fio-$3.json" t0 wall bytes ios
    drop_caches
    t0="$(now)"
    fio --name=randoverwrite --filename="$1" --rw=randwrite --bsrange=4k-64k --size="$N" \
        --ioengine=psync --time_based --runtime="$fio_runtime" --end_fsync=1 \
        --refill_buffers --randseed=42 --output-format=json --output="$out" >/dev/null
    wall="$(secs "$t0" "$(now)")"
    read -r bytes ios < <(python3 -c 'import json, sys
w = json.load(open(sys.argv[1]))["jobs"][0]["write"]
print(w["io_bytes"], w["total_ios"])' "$out")
    rec d "random 4-64 KiB overwrite, fsync at end" "MiB/s" "$3" "$(mibps "$bytes" "$wall")"
    rec d "random 4-64 KiB overwrite, fsync at end" "IOPS" "$3" \
        "$(awk -v n="$ios" -v s="$wall" 'BEGIN { printf "%.0f", n / s }')"
}

# seq_workload a|b SRC: the raw disk, tiergate and rclone in turn (d inside a's sessions).
seq_workload() {
    local w="$1" src="$2" s f t0 s3a c0
    local wr="sequential write, fsync at end" rd="read, page cache dropped"
    log "workload $w: raw disk"
    mkdir -p "$work/raw"
    s="$(timed_copy "$src" "$work/raw/$w.bin")"
    rec "$w" "$wr" MiB/s raw "$(mibps "$N" "$s")"
    # The bar of a duplicate write is the raw disk's (first) write of the same data.
    [ "$w" != a ] || rec "$w" "duplicate write (same data again), fsync at end" MiB/s raw "$(mibps "$N" "$s")"
    # The raw disk has no local cache to keep or empty: its two bars are two reads of the same
    # file, each from a dropped page cache, measured one after the other.
    s="$(timed_read "$work/raw/$w.bin")"
    rec "$w" "$rd (warm: local cache kept)" MiB/s raw "$(mibps "$N" "$s")"
    s="$(timed_read "$work/raw/$w.bin")"
    rec "$w" "$rd (cold: local cache emptied)" MiB/s raw "$(mibps "$N" "$s")"
    [ "$w" = a ] && want d && fio_randwrite "$work/raw/$w.bin" d raw
    rm -rf "$work/raw"

    log "workload $w: tiergate"
    tg_start "$w"
    f="$TIERGATE_MNT/$w.bin"
    s3a="$(s3stats)"
    cat "$src" >/dev/null
    t0="$(now)"
    c0="$(cpu_secs "$TIERGATE_PID")"
    s="$(timed_copy "$src" "$f")"
    rec "$w" "$wr" MiB/s tiergate "$(mibps "$N" "$s")"
    rec "$w" "daemon CPU during the write (cores busy)" cores tiergate \
        "$(awk -v a="$c0" -v b="$(cpu_secs "$TIERGATE_PID")" -v s="$s" 'BEGIN { printf "%.2f", (b - a) / s }')" rclone
    tg_sync
    s="$(secs "$t0" "$(now)")"
    rec "$w" "write until off-site" MiB/s tiergate "$(mibps "$N" "$s")" rclone
    rec "$w" "bytes sent to S3 / bytes written" ratio tiergate \
        "$(awk -v a="$(s3diff "$s3a" "$(s3stats)" up_bytes)" -v n="$N" 'BEGIN { printf "%.3f", a / n }')" rclone
    if [ "$w" = a ]; then
        s="$(timed_copy "$src" "$TIERGATE_MNT/$w-dup.bin")"
        rec "$w" "duplicate write (same data again), fsync at end" MiB/s tiergate "$(mibps "$N" "$s")" raw
        rm -f "$TIERGATE_MNT/$w-dup.bin"
    fi
    s="$(timed_read "$f")"
    rec "$w" "$rd (warm: local cache kept)" MiB/s tiergate "$(mibps "$N" "$s")"
    "$TIERGATE_BIN" evict --config "$TG_CFG" >>"$work/logs/tg-evict.log"
    s="$(timed_read "$f")"
    rec "$w" "$rd (cold: local cache emptied)" MiB/s tiergate "$(mibps "$N" "$s")"
    cmp "$src" "$f" || die "workload $w: tiergate read back different data"
    rec "$w" "daemon peak RSS" MiB tiergate "$(($(peak_rss_kib "$TIERGATE_PID") >> 10))" rclone
    if [ "$w" = a ] && want d; then
        reset_peak_rss "$TIERGATE_PID"
        fio_randwrite "$f" d tiergate
        rec d "daemon peak RSS" MiB tiergate "$(($(peak_rss_kib "$TIERGATE_PID") >> 10))" rclone
    fi
    tg_stop

    log "workload $w: rclone mount"
    rc_start mount "$w"
    f="$RC_MNT/$w.bin"
    s3a="$(s3stats)"
    cat "$src" >/dev/null
    t0="$(now)"
    c0="$(cpu_secs "$RC_PID")"
    s="$(timed_copy "$src" "$f")"
    rec "$w" "$wr" MiB/s rclone "$(mibps "$N" "$s")"
    rec "$w" "daemon CPU during the write (cores busy)" cores rclone \
        "$(awk -v a="$c0" -v b="$(cpu_secs "$RC_PID")" -v s="$s" 'BEGIN { printf "%.2f", (b - a) / s }')" rclone
    rc_wait_uploads
    s="$(secs "$t0" "$(now)")"
    rec "$w" "write until off-site" MiB/s rclone "$(mibps "$N" "$s")" rclone
    rec "$w" "bytes sent to S3 / bytes written" ratio rclone \
        "$(awk -v a="$(s3diff "$s3a" "$(s3stats)" up_bytes)" -v n="$N" 'BEGIN { printf "%.3f", a / n }')" rclone
    s="$(timed_read "$f")"
    rec "$w" "$rd (warm: local cache kept)" MiB/s rclone "$(mibps "$N" "$s")"
    local hwm
    hwm="$(peak_rss_kib "$RC_PID")"
    rc_restart_cold
    s="$(timed_read "$f")"
    rec "$w" "$rd (cold: local cache emptied)" MiB/s rclone "$(mibps "$N" "$s")"
    hwm=$(( hwm > $(peak_rss_kib "$RC_PID") ? hwm : $(peak_rss_kib "$RC_PID") ))
    rec "$w" "daemon peak RSS" MiB rclone "$((hwm >> 10))" rclone
    if [ "$w" = a ] && want d; then
        reset_peak_rss "$RC_PID"
        fio_randwrite "$f" d rclone
        rec d "daemon peak RSS" MiB rclone "$(($(peak_rss_kib "$RC_PID") >> 10))" rclone
        rc_wait_uploads
    fi
    rc_done
}

# ---- workload c: the backup chain --------------------------------------------------------------
# chain_stage DIR BYTES: the chain's files in DIR (full.vbk, inc1-5.vib, full2.vbk built from them).
chain_stage() {
    mkdir -p "$1"
    "$GEN" chain "$1" "$2" "$CHAIN_BLOCK" "$CHAIN_PCT" "$CHAIN_DAYS" "$CHAIN_SEED" 2>>"$work/logs/gen.log"
    "$GEN" synth "$1" "$1/full2.vbk" "$2" "$CHAIN_BLOCK" "$CHAIN_PCT" "$CHAIN_DAYS" "$CHAIN_SEED"
}

# chain_run WORKLOAD CONTENDER TARGET_DIR STAGE BYTES OFFSITE_CMD PREFIX [RETIRE_CMD]: the chain
# into a mounted target, each step followed by OFFSITE_CMD (tiergate sync / rclone's queue empty);
# retention deletes the original full with RETIRE_CMD FILE (default rm).
# Records ingest MiB/s, time to off-site, S3 traffic, stored bytes before and after retention.
chain_run() {
    local w="$1" c="$2" t="$3" stage="$4" bytes="$5" offsite="$6" prefix="$7" retire="${8:-rm}"
    local s3a s3b t0 t1 write_s=0 total_s=0 logical=0 d f step_w stored
    s3a="$(s3stats)"
    step() { # step CMD...: one day's backup, then wait until it is off-site
        t0="$(now)"
        "$@" # dd conv=fsync and gen synth fsync what they write
        t1="$(now)"
        $offsite
        step_w="$(secs "$t0" "$t1")"
        write_s="$(awk -v a="$write_s" -v b="$step_w" 'BEGIN { print a + b }')"
        total_s="$(awk -v a="$total_s" -v b="$(secs "$t0" "$(now)")" 'BEGIN { print a + b }')"
    }
    for f in full.vbk $(for ((d = 1; d <= CHAIN_DAYS; d++)); do echo "inc$d.vib"; done); do
        cat "$stage/$f" >/dev/null
        step dd if="$stage/$f" of="$t/$f" bs=1M conv=fsync status=none
        logical=$((logical + $(stat -c %s "$stage/$f")))
    done
    # The synthetic full is built on the target, reading the full and the increments there.
    step "$GEN" synth "$t" "$t/full2.vbk" "$bytes" "$CHAIN_BLOCK" "$CHAIN_PCT" "$CHAIN_DAYS" "$CHAIN_SEED"
    logical=$((logical + bytes))
    stored="$(bucket_bytes "$prefix")"
    rec "$w" "stored bytes before retention" MiB "$c" "$(mib "$stored")" restic
    rec "$w" "dedup ratio before retention (bytes written / stored)" ratio "$c" \
        "$(awk -v a="$logical" -v b="$stored" 'BEGIN { printf "%.3f", a / b }')" restic
    RETIRED=1
    step "$retire" "$t/full.vbk"
    s3b="$(s3stats)"
    rec "$w" "ingest (bytes written / time writing)" MiB/s "$c" "$(mibps "$logical" "$write_s")" rclone
    rec "$w" "time until every step is off-site" s "$c" "$total_s" rclone
    rec "$w" "bytes sent to S3" MiB "$c" "$(mib "$(s3diff "$s3a" "$s3b" up_bytes)")" rclone
    rec "$w" "bytes received from S3" MiB "$c" "$(mib "$(s3diff "$s3a" "$s3b" down_bytes)")" rclone
    rec "$w" "S3 requests" count "$c" "$(s3diff "$s3a" "$s3b" requests)" rclone
    rec "$w" "S3 PUT requests" count "$c" "$(s3diff "$s3a" "$s3b" PUT)" rclone
    if [ "$RETIRED" = 1 ]; then
        rec "$w" "stored bytes after retention" MiB "$c" "$(mib "$(bucket_bytes "$prefix")")" restic
    fi
}

# chain_local WORKLOAD restic|borg STAGE: the same steps as a tree backed up after each step.
chain_local() {
    local w="$1" c="$2" stage="$3" tree="$work/chain-tree" repo="$work/repo-$2" f d hwm=0 t0
    local total=0 one stored
    rm -rf "$tree" "$repo"
    mkdir -p "$tree"
    export RESTIC_PASSWORD=bench BORG_PASSPHRASE=bench BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
    if [ "$c" = restic ]; then
        restic init --repo "$repo" -q >>"$work/logs/restic.log" 2>&1
    else
        borg init --encryption=repokey-blake2 "$repo" >>"$work/logs/borg.log" 2>&1
    fi
    backup() { # backup N: one snapshot/archive of the tree, timed, peak RSS kept
        t0="$(now)"
        if [ "$c" = restic ]; then
            /usr/bin/time -f %M -o "$work/rss" restic backup --repo "$repo" --host bench -q "$tree" \
                >>"$work/logs/restic.log" 2>&1
        else
            /usr/bin/time -f %M -o "$work/rss" borg create "$repo::step$1" "$tree" \
                >>"$work/logs/borg.log" 2>&1
        fi
        total="$(awk -v a="$total" -v b="$(secs "$t0" "$(now)")" 'BEGIN { print a + b }')"
        one="$(tail -n 1 "$work/rss")"
        [ "$one" -le "$hwm" ] || hwm="$one"
    }
    d=0
    for f in full.vbk $(for ((i = 1; i <= CHAIN_DAYS; i++)); do echo "inc$i.vib"; done) full2.vbk; do
        ln "$stage/$f" "$tree/$f"
        backup "$d"
        d=$((d + 1))
    done
    stored="$(du -sb "$repo" | cut -f1)"
    rec "$w" "stored bytes before retention" MiB "$c" "$(mib "$stored")" restic
    rec "$w" "dedup ratio before retention (bytes written / stored)" ratio "$c" \
        "$(awk -v a="$(du -sb "$tree" | cut -f1)" -v b="$stored" 'BEGIN { printf "%.3f", a / b }')" restic
    rm "$tree/full.vbk"
    backup "$d"
    # Retention: the tree without the original full is what must be kept; older points go.
    if [ "$c" = restic ]; then
        restic forget --repo "$repo" --keep-last 1 --prune -q >>"$work/logs/restic.log" 2>&1
    else
        borg prune --keep-last 1 "$repo" >>"$work/logs/borg.log" 2>&1
        borg compact "$repo" >>"$work/logs/borg.log" 2>&1
    fi
    rec "$w" "stored bytes after retention" MiB "$c" "$(mib "$(du -sb "$repo" | cut -f1)")" restic
    rec "$w" "time (backups, local repository)" s "$c" "$total" rclone
    rec "$w" "daemon peak RSS" MiB "$c" "$((hwm >> 10))" rclone
    rm -rf "$repo" "$tree"
}

chain_workload() {
    local stage="$work/chain-$N"
    log "workload c: staging the chain ($(human "$N") full)"
    chain_stage "$stage" "$N"
    log "workload c: tiergate"
    tg_start c
    chain_run c tiergate "$TIERGATE_MNT" "$stage" "$N" tg_sync "$TG_PREFIX" tg_retire
    rec c "daemon peak RSS" MiB tiergate "$(($(peak_rss_kib "$TIERGATE_PID") >> 10))" rclone
    tg_stop
    log "workload c: rclone mount"
    rc_start mount c
    chain_run c rclone "$RC_MNT" "$stage" "$N" rc_wait_uploads "$run_id/rc-c"
    rec c "daemon peak RSS" MiB rclone "$(($(peak_rss_kib "$RC_PID") >> 10))" rclone
    rc_done
    log "workload c: restic"
    chain_local c restic "$stage"
    log "workload c: borg"
    chain_local c borg "$stage"
    [ "$SN" -eq "$N" ] || rm -rf "$stage"
}

study_workload() {
    local stage="$work/chain-$SN" avg b
    [ -d "$stage" ] || chain_stage "$stage" "$SN"
    for avg in ${chunk_sizes//,/ }; do
        b="$(parse_size "$avg")"
        log "chunk-size study: average $avg"
        tg_start "study-$avg" "$b"
        chain_run "study" "avg $avg" "$TIERGATE_MNT" "$stage" "$SN" tg_sync "$TG_PREFIX" tg_retire
        rec study "daemon peak RSS" MiB "avg $avg" "$(($(peak_rss_kib "$TIERGATE_PID") >> 10))"
        tg_stop
    done
    rm -rf "$stage"
}

# ---- workload e: small files --------------------------------------------------------------------
small_one() { # small_one DIR CONTENDER
    local out
    out="$(python3 benches/smallfiles.py "$1" "$smallfiles" 5)"
    for phase in create stat read delete; do
        rec e "$phase $smallfiles files" files/s "$2" "$(python3 -c 'import json, sys
d = json.loads(sys.argv[1]); print("%.0f" % (d["files"] / d[sys.argv[2] + "_s"]))' "$out" "$phase")"
    done
}
small_workload() {
    log "workload e: raw disk"
    mkdir -p "$work/raw-e"
    small_one "$work/raw-e" raw
    rm -rf "$work/raw-e"
    log "workload e: tiergate"
    tg_start e
    small_one "$TIERGATE_MNT" tiergate
    rec e "daemon peak RSS" MiB tiergate "$(($(peak_rss_kib "$TIERGATE_PID") >> 10))" rclone
    tg_stop
    log "workload e: rclone mount"
    rc_start mount e
    small_one "$RC_MNT" rclone
    rc_wait_uploads
    rec e "daemon peak RSS" MiB rclone "$(($(peak_rss_kib "$RC_PID") >> 10))" rclone
    rc_done
}

# ---- workload f: WebDAV ------------------------------------------------------------------------
dav_one() { # dav_one URL CONTENDER SRC
    local t0 s code
    cat "$3" >/dev/null
    t0="$(now)"
    code="$(curl -sS -o /dev/null -w '%{http_code}' -T "$3" "$1/f.bin")"
    s="$(secs "$t0" "$(now)")"
    case "$code" in 200 | 201 | 204) ;; *) die "WebDAV PUT to $1 answered $code" ;; esac
    rec f "PUT of one $(human "$N") file" MiB/s "$2" "$(mibps "$N" "$s")" rclone-webdav
    drop_caches
    t0="$(now)"
    curl -fsS -o "$work/f.get" "$1/f.bin"
    s="$(secs "$t0" "$(now)")"
    rec f "GET of it (warm)" MiB/s "$2" "$(mibps "$N" "$s")" rclone-webdav
    cmp "$3" "$work/f.get" || die "WebDAV GET from $1 returned different data"
    rm -f "$work/f.get"
}
dav_workload() {
    local src="$1"
    log "workload f: tiergate WebDAV"
    tg_start f
    dav_one "$TG_URL" tiergate-webdav "$src"
    rec f "daemon peak RSS" MiB tiergate-webdav "$(($(peak_rss_kib "$TIERGATE_PID") >> 10))" rclone-webdav
    tg_stop
    log "workload f: rclone serve webdav"
    rc_start webdav f
    dav_one "$RC_URL" rclone-webdav "$src"
    rc_wait_uploads
    rec f "daemon peak RSS" MiB rclone-webdav "$(($(peak_rss_kib "$RC_PID") >> 10))" rclone-webdav
    rc_done
}

# ---- soak: the fault suite's soak test --------------------------------------------------------
soak_workload() {
    local report="$work/soak.json" rc=0
    log "soak: $soak_secs s (faults::soak_memory_and_descriptors_stay_flat, straight to Garage)"
    rm -f "$report"
    TIERGATE_SOAK_SECS="$soak_secs" TIERGATE_SOAK_REPORT="$report" \
        "$SOAK_BIN" faults::soak_memory_and_descriptors_stay_flat --exact --nocapture \
        >"$work/logs/soak.log" 2>&1 || rc=$?
    cp "$work/logs/soak.log" "$resdir/soak.log"
    [ -s "$report" ] || die "soak: no figures (exit $rc); see $resdir/soak.log"
    local ops syncs rss1 rss2 fds1 fds2 peak flat
    read -r ops syncs rss1 rss2 fds1 fds2 peak flat < <(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
print(r["operations"], r["syncs"] + r["evictions"], r["rss_first_half_max_kib"] >> 10,
      r["rss_later_half_median_kib"] >> 10, r["fds_first_half_max"], r["fds_later_half_median"],
      r["peak_rss_kib"] >> 10, int(r["flat"]))' "$report")
    rec soak "operations (write, overwrite, PUT, delete, read, sync, evict)" count tiergate "$ops"
    rec soak "syncs until off-site, evictions" count tiergate "$syncs"
    rec soak "daemon RSS" MiB soak-first "$rss1" soak-first
    rec soak "daemon RSS" MiB soak-later "$rss2" soak-first
    rec soak "open file descriptors" count soak-first "$fds1" soak-first
    rec soak "open file descriptors" count soak-later "$fds2" soak-first
    rec soak "daemon peak RSS" MiB tiergate "$peak"
    # 1 when memory and descriptors stayed flat and every file matched its model (the test passed).
    rec soak "test passed" "1 = yes" tiergate "$([ "$rc" = 0 ] && [ "$flat" = 1 ] && echo 1 || echo 0)"
    [ "$rc" = 0 ] || log "soak: the test FAILED (exit $rc); see $resdir/soak.log"
}

# ---- run ---------------------------------------------------------------------------------------
log "run $run_id: size $(human "$N"), quick=$quick, workloads $only, work dir $work"
if want a || want f; then
    "$GEN" random 1 "$N" >"$work/src-random"
fi
want a && seq_workload a "$work/src-random"
want f && dav_workload "$work/src-random"
rm -f "$work/src-random"
if want b; then
    "$GEN" text 2 "$N" >"$work/src-text"
    seq_workload b "$work/src-text"
    rm -f "$work/src-text"
fi
want c && chain_workload
want study && study_workload
want e && small_workload
want soak && soak_workload
rm -rf "$work/chain-$N"

finished="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
pub=()
[ "$publish" = 0 ] || pub=(--publish docs/BENCHMARKS.md)
cp "$BENCH_RESULTS" "$resdir/$name.jsonl"
BENCH_GARAGE_BIN="$GARAGE_BIN" python3 benches/report.py "$BENCH_RESULTS" "$resdir/$name" \
    --size "$N" --quick "$quick" --started "$started" --finished "$finished" \
    --workdir "$work" --study-size "$SN" --smallfiles "$smallfiles" --fio-runtime "$fio_runtime" \
    --soak-secs "$(want soak && echo "$soak_secs" || echo 0)" \
    --tiergate "$TIERGATE_BIN" "${pub[@]}"
if [ "$publish" = 1 ]; then
    mkdir -p benches/results
    cp "$resdir/$name.md" benches/results/latest.md
    cp "$resdir/$name.json" benches/results/latest.json
fi
log "results: $resdir/$name.md, $resdir/$name.json"
