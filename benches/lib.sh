# shellcheck shell=bash
# Helpers of the benchmark scripts (benches/run.sh; e2e-mount.sh and e2e-tiering.sh call it).
# Source it after scripts/lib.sh; do not run it.
#
#   parse_size 4G | 256M | 1073741824   bytes (K, M, G, T are powers of 1024)
#   need_root                           dies unless root (drop_caches, FUSE mounts)
#   need_space DIR BYTES                dies unless DIR's filesystem has BYTES free
#   need_pkgs CMD:PKG...                apt-get installs PKG for each CMD missing, nothing else
#   drop_caches                         sync, then drop the page cache, dentries and inodes
#   now / secs T0 T1 / free_port        timestamps, a difference in seconds, a free TCP port
#   rec WORKLOAD METRIC UNIT CONTENDER VALUE [BASELINE]
#                                       appends one measurement to $BENCH_RESULTS (JSON lines);
#                                       benches/report.py builds the tables from them
#   peak_rss_kib PID / reset_peak_rss PID
#                                       VmHWM of a running process; resets it (clear_refs 5)
#   cpu_secs PID                        CPU seconds (user + system) a process has used

parse_size() {
    local s="$1" n unit
    if [[ "$s" =~ ^([0-9]+)([KkMmGgTt]?)(i?[Bb])?$ ]]; then
        n="${BASH_REMATCH[1]}"
        unit="${BASH_REMATCH[2]^^}"
    else
        die "not a size: $s (e.g. 256M, 4G)"
    fi
    case "$unit" in
        "") echo "$n" ;;
        K) echo $((n << 10)) ;;
        M) echo $((n << 20)) ;;
        G) echo $((n << 30)) ;;
        T) echo $((n << 40)) ;;
    esac
}

# human BYTES: 256M, 4G, 1536M (the largest unit that divides it).
human() {
    local b="$1"
    if [ $((b % (1 << 30))) -eq 0 ]; then
        echo "$((b >> 30))G"
    elif [ $((b % (1 << 20))) -eq 0 ]; then
        echo "$((b >> 20))M"
    else
        echo "$b"
    fi
}

need_root() {
    [ "$(id -u)" -eq 0 ] || die "run as root (drop_caches, FUSE mounts)"
}

need_space() {
    local avail
    avail=$(($(df --output=avail -B1 "$1" | tail -n 1)))
    [ "$avail" -ge "$2" ] ||
        die "not enough space in $1: need $(($2 >> 30)) GiB, have $((avail >> 30)) GiB"
}

need_pkgs() {
    local spec missing=()
    for spec in "$@"; do
        command -v "${spec%%:*}" >/dev/null 2>&1 || missing+=("${spec#*:}")
    done
    [ "${#missing[@]}" -gt 0 ] || return 0
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null 2>&1 &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null; } ||
        die "could not install ${missing[*]}"
}

drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
}

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# free_port: a TCP port on 127.0.0.1 that nothing listens on (scripts/garage.sh's probe).
free_port() { _garage_free_port; }

rec() {
    local base="${6:-}"
    printf '{"workload":"%s","metric":"%s","unit":"%s","contender":"%s","value":%s,"baseline":"%s"}\n' \
        "$1" "$2" "$3" "$4" "$5" "$base" >>"$BENCH_RESULTS"
}

peak_rss_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }
# cpu_secs PID: user + system CPU seconds the process has used so far (all its threads).
cpu_secs() {
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / hz }' "/proc/$1/stat"
}
reset_peak_rss() { echo 5 >"/proc/$1/clear_refs"; }
