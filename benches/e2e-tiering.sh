#!/usr/bin/env bash
# Tiering end to end against a local Garage S3 server, with rclone on the same server as the
# baseline, measured in one run.
#
#   bash benches/e2e-tiering.sh                 # 1 GiB
#   SIZE_GIB=4 bash benches/e2e-tiering.sh
#
# Steps: start Garage on 127.0.0.1 (scripts/garage.sh; installs garage when missing: 15-20
# min); baseline: `rclone copy` of a SIZE_GIB file of random data up to the bucket and back down
# (4 transfers, its defaults otherwise); tiergate: write the same file into the mount (cp, then
# fsync via sync), `tiergate sync` until it is off-site, `tiergate evict`, drop caches, read it
# back cold through the mount (restore, dd to /dev/null), then compare with cmp. Reports MiB/s, ratios to rclone, PUT and GET
# requests per GiB, and the time from the first byte written to "everything off-site".
# Results: target/bench-results/e2e-tiering-<SIZE>gib.{md,json}. Run as root.
#
# Environment: SIZE_GIB (default 1), BENCH_DIR (default target/bench-work-tiering),
# TIERGATE_BIN, READAHEAD (tiering.readahead, default the config default).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
user_bin="${TIERGATE_BIN:-}"
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
# shellcheck source=scripts/garage.sh
. scripts/garage.sh

size_gib="${SIZE_GIB:-1}"
[[ "$size_gib" =~ ^[1-9][0-9]*$ ]] || die "SIZE_GIB must be a positive integer"
[ "$(id -u)" -eq 0 ] || die "run as root (drop_caches, FUSE mount)"
size_mib=$((size_gib * 1024))
resdir="$PWD/target/bench-results"
work="${BENCH_DIR:-$PWD/target/bench-work-tiering}"
mkdir -p "$resdir"
rm -rf "$work"
mkdir -p "$work"
work="$(realpath "$work")"
name="e2e-tiering-${size_gib}gib"

if [ -z "$user_bin" ]; then
    log "cargo build --release"
    cargo build --release --quiet
fi
command -v rclone >/dev/null 2>&1 || {
    log "apt-get install rclone"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q rclone >/dev/null
}
garage_install
garage_start

cleanup() {
    local rc=$?
    [ -z "$TIERGATE_PID" ] || stop_tiergate || true
    garage_stop || true
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
mibps() { awk -v m="$size_mib" -v s="$1" 'BEGIN { printf "%.1f", (s > 0 ? m / s : 0) }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0) printf "%.2f", b / a; else print "null" }'; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# Debian's rclone fails on AWS_CA_BUNDLE (set on these machines); the store is plain http.
rcl() {
    env -u AWS_CA_BUNDLE rclone --s3-provider Other --s3-endpoint "$TIERGATE_TEST_S3_ENDPOINT" \
        --s3-access-key-id "$TIERGATE_TEST_S3_ACCESS_KEY_ID" \
        --s3-secret-access-key "$TIERGATE_TEST_S3_SECRET_ACCESS_KEY" --s3-region garage \
        --s3-force-path-style=true --transfers 4 "$@" 2>>"$work/rclone.log"
}
status_field() {
    python3 -c "
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.send(b'status\n')
buf = b''
while not buf.endswith(b'\n'):
    chunk = s.recv(65536)
    if not chunk: break
    buf += chunk
print(json.loads(buf)[sys.argv[2]])" "$vol/control.sock" "$1"
}

log "test data: $size_gib GiB of random bytes"
head -c "$((size_mib << 20))" /dev/urandom >"$work/data"

# --- baseline: rclone straight to the bucket ---------------------------------------------------
drop_caches
t0="$(now)"
rcl copyto "$work/data" ":s3:$GARAGE_BUCKET/bench-rclone/data"
rc_up_s="$(secs "$t0" "$(now)")"
log "rclone upload: $(mibps "$rc_up_s") MiB/s"
mkdir -p "$work/rclone-down"
drop_caches
t0="$(now)"
rcl copyto ":s3:$GARAGE_BUCKET/bench-rclone/data" "$work/rclone-down/data"
rc_down_s="$(secs "$t0" "$(now)")"
log "rclone download: $(mibps "$rc_down_s") MiB/s"
rm -rf "$work/rclone-down"

# --- tiergate ----------------------------------------------------------------------------------
ra_line=""
[ -z "${READAHEAD:-}" ] || ra_line="readahead = \"$READAHEAD\""
TG_VOLUME_EXTRA="[cache]
max_size = \"$((size_gib * 2 + 1))GiB\"
[tiering]
$ra_line
[s3]
endpoint = \"$TIERGATE_TEST_S3_ENDPOINT\"
region = \"garage\"
bucket = \"$GARAGE_BUCKET\"
prefix = \"bench-tiergate\"
path_style = true
access_key_id = \"$TIERGATE_TEST_S3_ACCESS_KEY_ID\"
secret_access_key = \"$TIERGATE_TEST_S3_SECRET_ACCESS_KEY\"" \
    cfg="$(make_volume "$work/tg")"
vol="$work/tg/vol"
start_tiergate "$cfg" "$resdir/$name-serve.log"
drop_caches
t0="$(now)"
cp "$work/data" "$TIERGATE_MNT/data"
sync "$TIERGATE_MNT/data"
t_written="$(now)"
"$TIERGATE_BIN" sync --config "$cfg" >"$work/sync.out"
t_offsite="$(now)"
tg_write_s="$(secs "$t0" "$t_written")"
tg_offsite_s="$(secs "$t0" "$t_offsite")"
log "tiergate: written in ${tg_write_s}s, off-site after ${tg_offsite_s}s: $(cat "$work/sync.out")"
puts="$(status_field put_requests)"
uploaded="$(status_field uploaded_bytes)"
"$TIERGATE_BIN" evict --config "$cfg" >&2
drop_caches
t0="$(now)"
dd if="$TIERGATE_MNT/data" of=/dev/null bs=1M status=none
tg_restore_s="$(secs "$t0" "$(now)")"
# Checked after the timing (hashing would be the bottleneck); reads the fetch cache, not S3.
cmp "$work/data" "$TIERGATE_MNT/data" || die "restored data differs"
gets="$(status_field get_requests)"
fetched="$(status_field fetched_bytes)"
hwm_kib="$(awk '/^VmHWM:/ { print $2 }' "/proc/$TIERGATE_PID/status")"
stop_tiergate
log "tiergate: restore $(mibps "$tg_restore_s") MiB/s, $gets GETs"

# --- results -----------------------------------------------------------------------------------
rc_up="$(mibps "$rc_up_s")" rc_down="$(mibps "$rc_down_s")"
tg_off="$(mibps "$tg_offsite_s")" tg_restore="$(mibps "$tg_restore_s")"
per_gib() { awk -v n="$1" -v g="$size_gib" 'BEGIN { printf "%.1f", n / g }'; }
rev="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
when="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
cat >"$resdir/$name.json" <<EOF
{
  "bench": "e2e-tiering", "date": "$when", "git": "$rev", "size_gib": $size_gib,
  "machine": { "nproc": $(nproc), "kernel": "$(uname -r)" },
  "store": "garage $GARAGE_VERSION on 127.0.0.1",
  "rclone": { "upload_mib_s": $rc_up, "download_mib_s": $rc_down },
  "tiergate": { "write_s": $tg_write_s, "write_to_offsite_s": $tg_offsite_s,
    "offsite_mib_s": $tg_off, "restore_mib_s": $tg_restore,
    "put_requests": $puts, "uploaded_bytes": $uploaded, "get_requests": $gets,
    "fetched_bytes": $fetched, "daemon_vmhwm_kib": $hwm_kib },
  "ratio_tiergate_over_rclone": { "to_offsite": $(ratio "$rc_up" "$tg_off"), "restore": $(ratio "$rc_down" "$tg_restore") }
}
EOF
{
    echo "# e2e-tiering: write → off-site → evict → cold restore, vs rclone on the same store"
    echo
    echo "$when, git $rev, $(nproc) cores, Garage $GARAGE_VERSION on 127.0.0.1, $size_gib GiB of random data."
    echo
    echo "| | rclone | tiergate | tiergate / rclone |"
    echo "|---|---:|---:|---:|"
    echo "| to off-site MiB/s (tiergate: first byte written → \`tiergate sync\` returned) | $rc_up | $tg_off | $(ratio "$rc_up" "$tg_off") |"
    echo "| cold restore MiB/s (tiergate: through the mount after \`tiergate evict\`) | $rc_down | $tg_restore | $(ratio "$rc_down" "$tg_restore") |"
    echo
    echo "tiergate: write into the mount took ${tg_write_s} s; PUT requests $puts ($(per_gib "$puts") per GiB),"
    echo "GET requests $gets ($(per_gib "$gets") per GiB), fetched $((fetched >> 20)) MiB, daemon peak RSS $((hwm_kib / 1024)) MiB."
} >"$resdir/$name.md"
cat "$resdir/$name.md"
