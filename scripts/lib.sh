# shellcheck shell=bash
# Helpers shared by the test and benchmark scripts. Source it; do not run it.
#
#   start_tiergate CONFIG LOG   start `tiergate serve` in the background, wait for the mount
#   stop_tiergate               SIGTERM, wait, fall back to kill -9 and `umount -l`
#   make_volume DIR             passphrase + config under DIR, `tiergate init`; prints the config path
#   require_live_mount DIR WHO  fails unless DIR lies in a tiergate mount whose daemon answers
#   apt_install PKG...          apt-get install that never removes a package (--no-remove)
#   install_qemu                qemu-system-x86 and qemu-utils: one origin, one version
#   debian_mirror SUITE [FB]    the Debian mirror apt uses on this host for SUITE (else FB)
#
# start_tiergate and stop_tiergate must run in the calling shell (not in `$(...)`), because they
# keep the daemon's pid in TIERGATE_PID and use `wait` on it.
#
# Environment:
#   TIERGATE_BIN            the binary (default: target/release/tiergate of this repo)
#   TIERGATE_START_TIMEOUT  seconds to wait for the mount (default 30)
#   TIERGATE_STOP_TIMEOUT   seconds to wait for a clean exit after SIGTERM (default 60)
#   TG_VOLUME_EXTRA, TG_FUSE_EXTRA
#                           extra TOML lines that make_volume appends to [volume] / [fuse]

TG_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TIERGATE_BIN="${TIERGATE_BIN:-$TG_REPO_ROOT/target/release/tiergate}"
TIERGATE_PID=""
TIERGATE_MNT=""
TIERGATE_LOG=""

# log MSG...: a timestamped line on stderr.
log() {
    printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2
}

die() {
    log "ERROR: $*"
    exit 1
}

# toml_get SECTION KEY FILE: the string value of KEY in [SECTION] (simple `key = "value"` lines
# only, which is all the configs written here use). Relative paths are not resolved.
toml_get() {
    awk -v want="[$1]" -v key="$2" '
        /^[[:space:]]*\[/ { gsub(/[[:space:]]/, ""); section = $0; next }
        section == want {
            line = $0
            sub(/[[:space:]]*#.*$/, "", line)
            if (match(line, "^[[:space:]]*" key "[[:space:]]*=")) {
                val = substr(line, RLENGTH + 1)
                gsub(/^[[:space:]]*"?|"?[[:space:]]*$/, "", val)
                print val
                exit
            }
        }' "$3"
}

# is_tiergate_mounted DIR: true if DIR is a tiergate FUSE mount: fstype fuse.tiergate, or plain
# fuse with the source "tiergate:<volume id>" (fuser's own mount(2) path as root leaves the
# subtype out of the fstype).
is_tiergate_mounted() {
    local dir
    dir="$(realpath -m "$1")"
    awk -v d="$dir" '
        $2 == d && ($3 == "fuse.tiergate" || ($3 == "fuse" && $1 ~ /^tiergate/)) { found = 1 }
        END { exit !found }' /proc/self/mounts
}

# is_mounted DIR: true if anything is mounted at DIR.
is_mounted() {
    local dir
    dir="$(realpath -m "$1")"
    awk -v d="$dir" '$2 == d { found = 1 } END { exit !found }' /proc/self/mounts
}

# tiergate_mount_of DIR: prints the mount point DIR lies in (the longest mount point that is DIR
# or one of its parents) if that mount is a tiergate one (is_tiergate_mounted's test); fails if
# DIR lies in any other file system (a mount that went away leaves DIR on the one below).
tiergate_mount_of() {
    local dir
    dir="$(realpath -m "$1")"
    awk -v d="$dir" '
        {
            mp = $2
            gsub(/\\040/, " ", mp)
            if (d == mp || mp == "/" || index(d, mp "/") == 1) {
                if (length(mp) >= best_len) {
                    best_len = length(mp)
                    best = mp
                    ok = ($3 == "fuse.tiergate" || ($3 == "fuse" && $1 ~ /^tiergate/))
                }
            }
        }
        END { if (ok) print best; exit !ok }' /proc/self/mounts
}

# require_live_mount DIR WHO: succeeds if DIR lies in a tiergate mount (tiergate_mount_of) that
# answers: its root is inode 1 and a stat of DIR returns within 10 s (a mount whose daemon died
# stays in the mount table but answers ENOTCONN). Otherwise prints why, prefixed with "WHO: ", on
# stderr and fails. The third-party suites call it before and after they run, so they never
# report a pass for the file system underneath. TG_SUITE_ANY_DIR=1 accepts any directory (a
# baseline run on ext4 or tmpfs).
require_live_mount() {
    local dir="$1" who="$2" mp ino
    [ "${TG_SUITE_ANY_DIR:-0}" != 1 ] || return 0
    if ! mp="$(tiergate_mount_of "$dir")"; then
        echo "$who: $dir is not in a tiergate mount ($(findmnt -n -o FSTYPE,SOURCE -T "$dir" 2>/dev/null | tr -s ' ' || echo '?'));" \
            "TG_SUITE_ANY_DIR=1 runs against any directory" >&2
        return 1
    fi
    if ! ino="$(timeout 10 stat -c %i "$mp" 2>&1)" || [ "$ino" != 1 ] ||
        ! timeout 10 stat "$dir" >/dev/null 2>&1; then
        echo "$who: the tiergate mount at $mp does not answer (stat: $ino)" >&2
        return 1
    fi
}

# log_tail LOG [N]: the last N (default 40) lines of LOG on stderr, framed.
log_tail() {
    local n="${2:-40}"
    {
        echo "----- last $n lines of $1 -----"
        tail -n "$n" "$1" 2>/dev/null || true
        echo "----- end of $1 -----"
    } >&2
}

# make_volume DIR: writes DIR/passphrase (0600) and DIR/tiergate.toml (volume in DIR/vol, mount at
# DIR/mnt, allow_other), runs `tiergate init`, and prints the config path on stdout.
make_volume() {
    local dir cfg pass
    [ $# -eq 1 ] || die "usage: make_volume DIR"
    dir="$(realpath -m "$1")"
    case "$dir" in
        *\"* | *\\*) die "make_volume: unsupported characters in path: $dir" ;;
    esac
    [ -x "$TIERGATE_BIN" ] || die "no tiergate binary at $TIERGATE_BIN (run cargo build --release)"
    mkdir -p "$dir/mnt"
    pass="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    (umask 077 && printf '%s\n' "$pass" >"$dir/passphrase")
    chmod 600 "$dir/passphrase"
    cfg="$dir/tiergate.toml"
    {
        echo "# Written by scripts/lib.sh make_volume for a test run."
        echo "[volume]"
        echo "path = \"$dir/vol\""
        echo "passphrase_file = \"$dir/passphrase\""
        [ -z "${TG_VOLUME_EXTRA:-}" ] || printf '%s\n' "$TG_VOLUME_EXTRA"
        echo
        echo "[fuse]"
        echo "mountpoint = \"$dir/mnt\""
        echo "allow_other = true"
        [ -z "${TG_FUSE_EXTRA:-}" ] || printf '%s\n' "$TG_FUSE_EXTRA"
    } >"$cfg"
    if ! "$TIERGATE_BIN" init --config "$cfg" >"$dir/init.log" 2>&1; then
        log_tail "$dir/init.log"
        die "tiergate init --config $cfg failed"
    fi
    cat "$dir/init.log" >&2
    printf '%s\n' "$cfg"
}

# start_tiergate CONFIG LOG: runs `tiergate serve --config CONFIG` in the background with its
# output in LOG, and waits until its mountpoint shows up in /proc/self/mounts (is_tiergate_mounted).
# Fails (with the log tail) if the daemon exits first or TIERGATE_START_TIMEOUT seconds pass.
start_tiergate() {
    local cfg="$1" logf="$2" mp timeout deadline rc
    if [ -n "$TIERGATE_PID" ]; then
        log "ERROR: start_tiergate: tiergate already running (pid $TIERGATE_PID)"
        return 1
    fi
    if [ ! -x "$TIERGATE_BIN" ]; then
        log "ERROR: no tiergate binary at $TIERGATE_BIN (run cargo build --release)"
        return 1
    fi
    mp="$(toml_get fuse mountpoint "$cfg")"
    if [ -z "$mp" ]; then
        log "ERROR: start_tiergate: no [fuse] mountpoint in $cfg"
        return 1
    fi
    case "$mp" in
        /*) ;;
        *) mp="$(dirname "$cfg")/$mp" ;;
    esac
    mp="$(realpath -m "$mp")"
    if is_mounted "$mp"; then
        log "ERROR: start_tiergate: something is already mounted at $mp"
        return 1
    fi
    mkdir -p "$mp" "$(dirname "$logf")"
    timeout="${TIERGATE_START_TIMEOUT:-30}"
    log "starting tiergate serve --config $cfg (log: $logf)"
    NO_COLOR=1 "$TIERGATE_BIN" serve --config "$cfg" >>"$logf" 2>&1 </dev/null &
    TIERGATE_PID=$!
    TIERGATE_MNT="$mp"
    TIERGATE_LOG="$logf"
    deadline=$((SECONDS + timeout))
    while ! is_tiergate_mounted "$mp"; do
        if ! kill -0 "$TIERGATE_PID" 2>/dev/null; then
            rc=0
            wait "$TIERGATE_PID" || rc=$?
            TIERGATE_PID=""
            log_tail "$logf"
            log "ERROR: tiergate exited with status $rc before mounting $mp"
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            log_tail "$logf"
            log "ERROR: $mp not mounted after ${timeout}s; stopping tiergate"
            stop_tiergate || true
            return 1
        fi
        sleep 0.1
    done
    log "tiergate (pid $TIERGATE_PID) mounted at $mp"
}

# stop_tiergate: SIGTERM, then wait up to TIERGATE_STOP_TIMEOUT seconds for a clean exit. Falls
# back to SIGKILL and `umount -l`. Returns non-zero unless the daemon exited 0 on its own and
# left nothing mounted.
stop_tiergate() {
    local pid="$TIERGATE_PID" mp="$TIERGATE_MNT" timeout deadline rc=0 ok=0
    [ -n "$pid" ] || return 0
    timeout="${TIERGATE_STOP_TIMEOUT:-60}"
    log "stopping tiergate (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + timeout))
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "ERROR: tiergate still running ${timeout}s after SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        ok=1
    fi
    wait "$pid" || rc=$?
    TIERGATE_PID=""
    if [ "$rc" -ne 0 ]; then
        log "ERROR: tiergate exited with status $rc"
        [ -z "$TIERGATE_LOG" ] || log_tail "$TIERGATE_LOG" 20
        ok=1
    fi
    if [ -n "$mp" ] && is_mounted "$mp"; then
        log "ERROR: $mp still mounted after tiergate exited; umount -l"
        umount -l "$mp" 2>/dev/null || fusermount3 -uz "$mp" 2>/dev/null || true
        ok=1
    fi
    [ "$ok" -ne 0 ] || log "tiergate stopped cleanly"
    return "$ok"
}

# --- Debian packages: shared by scripts/install-test-deps.sh and image/*.sh ------------------

# apt_install [APT-OPTION...] PKG...: `apt-get install --no-install-recommends` that never
# removes a package to satisfy another (--no-remove: apt fails and says which instead) and waits
# for a dpkg lock another install holds. On failure runs `apt-get update` once and retries (the
# package lists may be old or missing on a fresh machine).
apt_install() {
    local cmd=(apt-get -y -q -o DPkg::Lock::Timeout=600 install --no-install-recommends --no-remove "$@")
    log "apt-get install $*"
    if ! DEBIAN_FRONTEND=noninteractive "${cmd[@]}"; then
        log "apt-get install failed; apt-get update and retry"
        apt-get -q -o DPkg::Lock::Timeout=600 update
        DEBIAN_FRONTEND=noninteractive "${cmd[@]}"
    fi
}

# pkg_version PKG: the installed version of a Debian package, empty if not installed.
pkg_version() {
    { dpkg-query -W -f '${db:Status-Abbrev} ${Version}\n' "$1" 2>/dev/null || true; } |
        awk '$1 == "ii" { print $2 }'
}

# host_suite: the host's Debian release (bookworm), from /etc/os-release.
host_suite() {
    (. /etc/os-release && echo "${VERSION_CODENAME:-}")
}

# debian_mirror SUITE [FALLBACK-SUITE]: the mirror (a URL) that apt on this host uses for SUITE's
# main component, else FALLBACK-SUITE's; fails if apt has neither. Read through
# `apt-get indextargets`, apt's own reading of sources.list and the deb822 .sources files: a
# machine whose only way out is a mirror or proxy of its own has it there.
debian_mirror() {
    # shellcheck disable=SC2016 # apt's own $(...) fields
    apt-get indextargets --format '$(SITE) $(RELEASE) $(COMPONENT)' 'Identifier: Packages' |
        awk -v s="$1" -v f="${2:-}" '
            $3 == "main" && $2 == s && want == "" { want = $1 }
            $3 == "main" && $2 == f && fb == "" { fb = $1 }
            END { if (want == "") want = fb; if (want == "") exit 1; print want }'
}

# enable_backports: adds HOST-SUITE-backports, from the mirror apt uses for the host's release,
# as /etc/apt/sources.list.d/tiergate-backports.sources unless apt has it already, then
# `apt-get update`. Backports have a low priority: nothing comes from there unless asked for
# (-t bookworm-backports).
enable_backports() {
    local suite mirror f=/etc/apt/sources.list.d/tiergate-backports.sources
    suite="$(host_suite)"
    # shellcheck disable=SC2016
    if apt-get indextargets --format '$(RELEASE)' 'Identifier: Packages' |
        grep -qx "$suite-backports"; then
        return 0
    fi
    if ! mirror="$(debian_mirror "$suite")"; then
        log "ERROR: apt has no Debian source for $suite"
        return 1
    fi
    log "adding $suite-backports from $mirror ($f)"
    {
        echo "# Added by tiergate's scripts/lib.sh (enable_backports): qemu-system-x86 at the"
        echo "# version of the backported qemu-utils. Nothing comes from here unless asked for."
        echo "Types: deb"
        echo "URIs: $mirror"
        echo "Suites: $suite-backports"
        echo "Components: main"
        echo "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
    } >"$f"
    apt-get -q -o DPkg::Lock::Timeout=600 update
}

# install_qemu: qemu-system-x86 (the boot test) and qemu-utils (qemu-img: the image build, the
# boot test's overlay) from one origin at one version. qemu-system-x86 pins qemu-system-common
# to its own version, and apt would rather remove a newer qemu-utils than mix them; so both are
# installed in one apt-get call that may not remove anything, from backports when either
# installed one is a backport (version ~bpoNN: the machines this project runs on come with
# qemu-utils 10 from bookworm-backports), else from the release. Fails, naming both versions,
# if they differ afterwards.
install_qemu() {
    local utils sys target=()
    utils="$(pkg_version qemu-utils)"
    sys="$(pkg_version qemu-system-x86)"
    if [ -n "$utils" ] && [ "$utils" = "$sys" ]; then
        return 0
    fi
    case "$utils $sys" in
        *~bpo*)
            enable_backports || return 1
            target=(-t "$(host_suite)-backports")
            ;;
    esac
    apt_install "${target[@]}" qemu-system-x86 qemu-utils || return 1
    utils="$(pkg_version qemu-utils)"
    sys="$(pkg_version qemu-system-x86)"
    if [ -z "$utils" ] || [ "$utils" != "$sys" ]; then
        log "ERROR: qemu-utils ${utils:-not installed}, qemu-system-x86 ${sys:-not installed}: not one version"
        return 1
    fi
    log "qemu-system-x86 and qemu-utils $utils"
}
