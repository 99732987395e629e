#!/usr/bin/env bash
# End-to-end throughput of the tiergate FUSE mount against the raw disk, measured in one run.
#
#   bash benches/e2e-mount.sh                      # 4 GiB write + read, raw disk and mount
#   SIZE_GIB=16 MODE=ingest bash benches/e2e-mount.sh   # 16 GiB into the mount only: peak RSS
#                                                       # and metadata (sled) size after ingest
#
# Per target (a directory on the disk that holds the volume, then the mount): a sequential write
# of SIZE_GIB GiB of incompressible random data in 1 MiB blocks ending with fsync, then the page
# cache is dropped and the file is read back sequentially. MiB/s = bytes / wall time of the
# command (the final fsync included). Uses fio (installed from apt if missing; random buffer
# contents refilled on every write, so nothing dedups or compresses), or dd from /dev/urandom
# when fio cannot be had (then urandom caps the write rate: the raw figure shows by how much).
#
# Also reports the daemon's peak RSS (VmHWM) and the on-disk size of the volume's meta/ and
# packs/ after the ingest. Results: target/bench-results/e2e-mount-<SIZE>gib[-ingest].{md,json}.
# Must run as root (drop_caches, mount).
#
# Environment: SIZE_GIB (default 4), MODE (full | ingest; default full), BENCH_DIR (work
# directory, default target/bench-work; raw disk and volume both live there), TIERGATE_BIN.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
user_bin="${TIERGATE_BIN:-}"
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

size_gib="${SIZE_GIB:-4}"
mode="${MODE:-full}"
case "$mode" in
    full | ingest) ;;
    *) die "MODE must be full or ingest, not $mode" ;;
esac
if ! [[ "$size_gib" =~ ^[1-9][0-9]*$ ]]; then
    die "SIZE_GIB must be a positive integer"
fi
[ "$(id -u)" -eq 0 ] || die "run as root (drop_caches, FUSE mount)"
size_bytes=$((size_gib * 1024 * 1024 * 1024))
size_mib=$((size_gib * 1024))

resdir="$PWD/target/bench-results"
work="${BENCH_DIR:-$PWD/target/bench-work}"
mkdir -p "$resdir"
rm -rf "$work"
mkdir -p "$work"
work="$(realpath "$work")"
name="e2e-mount-${size_gib}gib"
[ "$mode" = full ] || name="$name-$mode"

# Room for the raw file and the volume's packs (random data: stored size ~ logical size).
need=$((size_bytes + size_bytes / 10 + (1 << 30)))
[ "$mode" = ingest ] || need=$((need + size_bytes))
avail=$(($(df --output=avail -B1 "$work" | tail -n 1)))
[ "$avail" -ge "$need" ] || die "not enough space in $work: need $((need >> 30)) GiB, have $((avail >> 30)) GiB"

if [ -z "$user_bin" ]; then
    log "cargo build --release"
    cargo build --release --quiet
fi

tool=fio
if ! command -v fio >/dev/null 2>&1; then
    log "fio not found: apt-get install fio"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q fio >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q fio >/dev/null 2>&1; } ||
        tool="dd"
fi
[ "$tool" = fio ] || log "WARNING: no fio; using dd from /dev/urandom (write rates capped by urandom)"

drop_caches() {
    sync
    if ! echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; then
        log "WARNING: cannot drop caches; reads may come from the page cache"
        caches_dropped=false
    fi
}
caches_dropped=true

now() { date +%s.%N; }
# mibps SECONDS: MiB/s for size_mib over SECONDS.
mibps() { awk -v m="$size_mib" -v s="$1" 'BEGIN { printf "%.1f", (s > 0 ? m / s : 0) }'; }

# seq_write FILE OUT: writes size_gib GiB and fsyncs; prints the seconds taken.
seq_write() {
    local file="$1" out="$2" t0 t1
    t0="$(now)"
    if [ "$tool" = fio ]; then
        fio --name=seqwrite --filename="$file" --rw=write --bs=1M --size="${size_gib}G" \
            --ioengine=psync --end_fsync=1 --refill_buffers --randrepeat=0 \
            --output-format=json --output="$out" >/dev/null
    else
        dd if=/dev/urandom of="$file" bs=1M count="$size_mib" iflag=fullblock conv=fsync \
            status=none 2>"$out"
    fi
    t1="$(now)"
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
}

# seq_read FILE OUT: reads the file back after dropping caches; prints the seconds taken.
seq_read() {
    local file="$1" out="$2" t0 t1
    drop_caches
    t0="$(now)"
    if [ "$tool" = fio ]; then
        fio --name=seqread --filename="$file" --rw=read --bs=1M --size="${size_gib}G" \
            --ioengine=psync --output-format=json --output="$out" >/dev/null
    else
        dd if="$file" of=/dev/null bs=1M status=none 2>"$out"
    fi
    t1="$(now)"
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
}

cleanup() {
    local rc=$?
    if [ -n "$TIERGATE_PID" ]; then
        stop_tiergate || true
    fi
    if [ -n "$TIERGATE_MNT" ] && is_mounted "$TIERGATE_MNT"; then
        log "not removing $work: $TIERGATE_MNT still mounted"
    else
        rm -rf "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT

raw_w_s="" raw_r_s="" tg_r_s=""
# --- raw disk ----------------------------------------------------------------------------------
if [ "$mode" = full ]; then
    mkdir -p "$work/raw"
    log "raw disk: sequential write of $size_gib GiB ($tool) in $work/raw"
    drop_caches
    raw_w_s="$(seq_write "$work/raw/data" "$work/raw-write.out")"
    log "raw disk: write $(mibps "$raw_w_s") MiB/s; read back"
    raw_r_s="$(seq_read "$work/raw/data" "$work/raw-read.out")"
    log "raw disk: read $(mibps "$raw_r_s") MiB/s"
    rm -f "$work/raw/data"
fi

# --- tiergate mount ----------------------------------------------------------------------------
chmod 755 "$work"
cfg="$(make_volume "$work/tg")"
vol="$work/tg/vol"
start_tiergate "$cfg" "$resdir/$name-serve.log"
drop_caches
log "tiergate: sequential write of $size_gib GiB ($tool) into $TIERGATE_MNT"
tg_w_s="$(seq_write "$TIERGATE_MNT/data" "$work/tg-write.out")"
log "tiergate: write $(mibps "$tg_w_s") MiB/s"
hwm_ingest_kib="$(awk '/^VmHWM:/ { print $2 }' "/proc/$TIERGATE_PID/status")"
meta_bytes="$(du -sb "$vol/meta" | cut -f1)"
packs_bytes="$(du -sb "$vol/packs" | cut -f1)"
log "tiergate: after ingest: VmHWM $((hwm_ingest_kib / 1024)) MiB, meta $meta_bytes B, packs $packs_bytes B"
if [ "$mode" = full ]; then
    tg_r_s="$(seq_read "$TIERGATE_MNT/data" "$work/tg-read.out")"
    log "tiergate: read $(mibps "$tg_r_s") MiB/s"
fi
hwm_end_kib="$(awk '/^VmHWM:/ { print $2 }' "/proc/$TIERGATE_PID/status")"
stop_tiergate
meta_after_stop="$(du -sb "$vol/meta" | cut -f1)"

# --- results -----------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0) printf "%.3f", b / a; else print "null" }'; }
raw_w="" raw_r="" tg_r=""
tg_w="$(mibps "$tg_w_s")"
if [ "$mode" = full ]; then
    raw_w="$(mibps "$raw_w_s")"
    raw_r="$(mibps "$raw_r_s")"
    tg_r="$(mibps "$tg_r_s")"
fi
# ratio = tiergate / raw, from the rates (raw time / tiergate time)
w_ratio="null" r_ratio="null"
if [ "$mode" = full ]; then
    w_ratio="$(ratio "$raw_w" "$tg_w")"
    r_ratio="$(ratio "$raw_r" "$tg_r")"
fi
rev="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
dirty=""
git diff --quiet HEAD 2>/dev/null || dirty="+dirty"
fs_type="$(df --output=fstype "$work" | tail -n 1)"
when="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
tool_version="$([ "$tool" = fio ] && fio --version || echo "dd (coreutils)")"
nul() { if [ -n "$1" ]; then echo "$1"; else echo null; fi; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

cat >"$resdir/$name.json" <<EOF
{
  "bench": "e2e-mount",
  "mode": "$mode",
  "date": "$when",
  "git": "$rev$dirty",
  "size_gib": $size_gib,
  "tool": "$tool_version",
  "block_size": 1048576,
  "caches_dropped_before_reads": $caches_dropped,
  "machine": { "nproc": $(nproc), "kernel": "$(uname -r)", "raw_fs": "$fs_type" },
  "raw": { "write_mib_s": $(nul "$raw_w"), "read_mib_s": $(nul "$raw_r"), "write_s": $(nul "$raw_w_s"), "read_s": $(nul "$raw_r_s") },
  "tiergate": { "write_mib_s": $tg_w, "read_mib_s": $(nul "$tg_r"), "write_s": $tg_w_s, "read_s": $(nul "$tg_r_s") },
  "ratio_tiergate_over_raw": { "write": $w_ratio, "read": $r_ratio },
  "daemon_vmhwm_kib": { "after_ingest": $hwm_ingest_kib, "at_end": $hwm_end_kib },
  "volume_bytes_after_ingest": { "meta": $meta_bytes, "packs": $packs_bytes },
  "meta_bytes_after_stop": $meta_after_stop
}
EOF

{
    echo "# e2e-mount: tiergate FUSE mount vs raw disk"
    echo
    echo "$when, git $rev$dirty, $(nproc) cores, kernel $(uname -r), raw disk: $fs_type."
    echo "Sequential, 1 MiB blocks, $size_gib GiB of incompressible random data, $tool_version;"
    echo "writes end with fsync, page cache dropped before reads (dropped: $caches_dropped)."
    echo
    if [ "$mode" = full ]; then
        echo "| | raw disk | tiergate | tiergate / raw |"
        echo "|---|---:|---:|---:|"
        echo "| write MiB/s | $raw_w | $tg_w | $w_ratio |"
        echo "| read MiB/s | $raw_r | $tg_r | $r_ratio |"
    else
        echo "Ingest only (MODE=ingest): write $tg_w MiB/s into the mount."
    fi
    echo
    echo "| after ingest | |"
    echo "|---|---:|"
    echo "| daemon peak RSS (VmHWM) | $(mib $((hwm_ingest_kib * 1024))) |"
    echo "| daemon peak RSS (VmHWM) at end of run | $(mib $((hwm_end_kib * 1024))) |"
    echo "| volume meta/ (du -sb) | $(mib "$meta_bytes") |"
    echo "| volume meta/ after clean stop | $(mib "$meta_after_stop") |"
    echo "| volume packs/ (du -sb) | $(mib "$packs_bytes") |"
} >"$resdir/$name.md"

cat "$resdir/$name.md"
log "results: $resdir/$name.md, $resdir/$name.json"
