# shellcheck shell=bash
# A real S3 server on 127.0.0.1 for the tiering tests: Garage, pinned, single node.
#
#   bash scripts/garage.sh install      install garage $GARAGE_VERSION unless it is already there
#   source scripts/garage.sh            define the functions below (nothing else happens)
#   source scripts/garage.sh start      ... and start a server, exporting TIERGATE_TEST_S3_*
#                                       (then `cargo test --release`; `garage_stop` when done)
#
#   garage_install   `cargo install garage --locked --version $GARAGE_VERSION` only when
#                    `garage --version` does not report that version (a clean build takes 15-20
#                    minutes on 2 cores; the binary is kept in ~/.cargo/bin)
#   garage_start     config under a temp dir, `garage server` in the background, layout, bucket,
#                    a key with fixed test credentials; waits until the S3 API answers; exports
#                      TIERGATE_TEST_S3_ENDPOINT  http://127.0.0.1:PORT
#                      TIERGATE_TEST_S3_REGION    garage
#                      TIERGATE_TEST_S3_BUCKET    tiergate-test
#                      TIERGATE_TEST_S3_ACCESS_KEY_ID, TIERGATE_TEST_S3_SECRET_ACCESS_KEY
#                    and GARAGE_PID, GARAGE_DIR (config, data, garage.log)
#   garage_stop      stops that server (by its pid) and removes its directory
#
# Garage's CLI panics when its output pipe closes early: never pipe it into `head`; its output is
# captured into variables here. Environment: GARAGE_START_TIMEOUT (seconds, default 60),
# GARAGE_KEEP_DIR=1 keeps the directory after garage_stop.

GARAGE_VERSION=2.5.0
GARAGE_REGION=garage
GARAGE_BUCKET=tiergate-test
# Fixed test credentials (the format garage expects: GK + 24 hex, 64 hex). Test-only.
GARAGE_KEY_ID=GK746965726761746574657374
GARAGE_SECRET_KEY=7469657267617465207465737420736563726574206b657920666f7220676172
GARAGE_PID="${GARAGE_PID:-}"
GARAGE_DIR="${GARAGE_DIR:-}"

_garage_log() {
    printf '[%s] garage.sh: %s\n' "$(date +%H:%M:%S)" "$*" >&2
}

_garage_bin() {
    local cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
    if command -v garage >/dev/null 2>&1; then
        command -v garage
    elif [ -x "$cargo_bin/garage" ]; then
        echo "$cargo_bin/garage"
    else
        return 1
    fi
}

# garage_has_version: true if the garage found reports $GARAGE_VERSION (it prints e.g.
# "garage cargo:2.5.0 [features: ...]").
garage_has_version() {
    local bin out
    bin="$(_garage_bin)" || return 1
    out="$("$bin" --version 2>/dev/null)" || return 1
    [[ "$out" =~ (^|[^0-9.])${GARAGE_VERSION//./\\.}([^0-9.]|$) ]]
}

garage_install() {
    if garage_has_version; then
        _garage_log "garage $GARAGE_VERSION present ($(_garage_bin))"
        return 0
    fi
    command -v cargo >/dev/null 2>&1 || export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
    _garage_log "cargo install garage --locked --version $GARAGE_VERSION (15-20 min on 2 cores)"
    cargo install --quiet --locked --force --version "$GARAGE_VERSION" garage
    garage_has_version || {
        _garage_log "ERROR: garage installed but does not report $GARAGE_VERSION"
        return 1
    }
}

# _garage_free_port: a TCP port on 127.0.0.1 that nothing listens on (random, checked by
# connecting; bash's /dev/tcp, so no extra tools).
_garage_free_port() {
    local p _
    for _ in $(seq 1 50); do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

# _garage_cli ARGS...: the garage CLI against our server; output captured by the caller.
_garage_cli() {
    "$GARAGE_BIN" -c "$GARAGE_DIR/garage.toml" "$@"
}

# _garage_s3_answers PORT: true once an HTTP request to the S3 API gets a status line back.
_garage_s3_answers() {
    local line
    exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
    printf 'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3
    IFS= read -r -t 5 line <&3 || line=""
    exec 3<&- 3>&-
    [[ "$line" == HTTP/1.1\ * ]]
}

garage_start() {
    local s3_port rpc_port admin_port deadline node out status
    if [ -n "$GARAGE_PID" ] && kill -0 "$GARAGE_PID" 2>/dev/null; then
        _garage_log "already running (pid $GARAGE_PID)"
        return 0
    fi
    GARAGE_BIN="$(_garage_bin)" || {
        _garage_log "ERROR: no garage binary; run: bash scripts/garage.sh install"
        return 1
    }
    garage_has_version || _garage_log "WARNING: $GARAGE_BIN is not garage $GARAGE_VERSION"
    GARAGE_DIR="$(mktemp -d "${TMPDIR:-/tmp}/tiergate-garage.XXXXXX")"
    if ! { s3_port="$(_garage_free_port)" && rpc_port="$(_garage_free_port)" &&
        admin_port="$(_garage_free_port)"; } ||
        [ "$s3_port" = "$rpc_port" ] || [ "$s3_port" = "$admin_port" ] ||
        [ "$rpc_port" = "$admin_port" ]; then
        _garage_log "ERROR: no three free ports found"
        rm -rf "$GARAGE_DIR"
        GARAGE_DIR=""
        return 1
    fi
    cat >"$GARAGE_DIR/garage.toml" <<EOF
# Written by scripts/garage.sh for a test run: one node, everything on 127.0.0.1.
metadata_dir = "$GARAGE_DIR/meta"
data_dir = "$GARAGE_DIR/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"

[s3_api]
s3_region = "$GARAGE_REGION"
api_bind_addr = "127.0.0.1:$s3_port"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin_port"
admin_token = "$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
EOF
    chmod 600 "$GARAGE_DIR/garage.toml"
    RUST_LOG="${GARAGE_LOG:-warn}" "$GARAGE_BIN" -c "$GARAGE_DIR/garage.toml" server \
        >"$GARAGE_DIR/garage.log" 2>&1 </dev/null &
    GARAGE_PID=$!
    _garage_log "started garage (pid $GARAGE_PID) in $GARAGE_DIR, S3 API on 127.0.0.1:$s3_port"

    # The node answers RPC first; the layout makes it store data; then bucket and key.
    deadline=$((SECONDS + ${GARAGE_START_TIMEOUT:-60}))
    # `node id` reads the local key file; `status` needs the RPC server to answer.
    until out="$(_garage_cli status 2>&1)" && out="$(_garage_cli node id -q 2>&1)"; do
        if ! kill -0 "$GARAGE_PID" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
            _garage_log "ERROR: garage did not come up: $out"
            tail -n 30 "$GARAGE_DIR/garage.log" >&2
            garage_stop
            return 1
        fi
        sleep 0.5
    done
    node="${out%%@*}"
    status=0
    {
        out="$(_garage_cli layout assign -z dc1 -c 10G "$node" 2>&1)" &&
            out="$(_garage_cli layout apply --version 1 2>&1)" &&
            out="$(_garage_cli bucket create "$GARAGE_BUCKET" 2>&1)" &&
            out="$(_garage_cli key import --yes -n "$GARAGE_BUCKET" "$GARAGE_KEY_ID" "$GARAGE_SECRET_KEY" 2>&1)" &&
            out="$(_garage_cli bucket allow --read --write --owner "$GARAGE_BUCKET" --key "$GARAGE_BUCKET" 2>&1)"
    } || status=$?
    if [ "$status" -ne 0 ]; then
        _garage_log "ERROR: setting up garage failed: $out"
        tail -n 30 "$GARAGE_DIR/garage.log" >&2
        garage_stop
        return 1
    fi
    until _garage_s3_answers "$s3_port" 2>/dev/null; do
        if ! kill -0 "$GARAGE_PID" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
            _garage_log "ERROR: the S3 API on 127.0.0.1:$s3_port does not answer"
            tail -n 30 "$GARAGE_DIR/garage.log" >&2
            garage_stop
            return 1
        fi
        sleep 0.2
    done
    export TIERGATE_TEST_S3_ENDPOINT="http://127.0.0.1:$s3_port"
    export TIERGATE_TEST_S3_REGION="$GARAGE_REGION"
    export TIERGATE_TEST_S3_BUCKET="$GARAGE_BUCKET"
    export TIERGATE_TEST_S3_ACCESS_KEY_ID="$GARAGE_KEY_ID"
    export TIERGATE_TEST_S3_SECRET_ACCESS_KEY="$GARAGE_SECRET_KEY"
    export GARAGE_PID GARAGE_DIR
    _garage_log "ready: $TIERGATE_TEST_S3_ENDPOINT bucket $GARAGE_BUCKET region $GARAGE_REGION"
}

garage_stop() {
    local _
    if [ -n "$GARAGE_PID" ]; then
        kill -TERM "$GARAGE_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$GARAGE_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$GARAGE_PID" 2>/dev/null || true
        wait "$GARAGE_PID" 2>/dev/null || true
        _garage_log "stopped garage (pid $GARAGE_PID)"
    fi
    if [ -n "$GARAGE_DIR" ] && [ -d "$GARAGE_DIR" ] && [ "${GARAGE_KEEP_DIR:-0}" != 1 ]; then
        rm -rf "$GARAGE_DIR"
    fi
    GARAGE_PID=""
    GARAGE_DIR=""
    unset TIERGATE_TEST_S3_ENDPOINT TIERGATE_TEST_S3_REGION TIERGATE_TEST_S3_BUCKET \
        TIERGATE_TEST_S3_ACCESS_KEY_ID TIERGATE_TEST_S3_SECRET_ACCESS_KEY
}

# Run as a script (`bash scripts/garage.sh install`) or sourced with an argument.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    case "${1:-}" in
        install) garage_install ;;
        *)
            echo "usage: bash scripts/garage.sh install | source scripts/garage.sh [start]" >&2
            exit 2
            ;;
    esac
elif [ "${1:-}" = start ]; then
    garage_start
fi
