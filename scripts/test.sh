#!/usr/bin/env bash
# The test command: installs what the tests need, builds, runs every test. Run as root on Debian.
#
#   bash scripts/test.sh
#
# Steps, each logged to target/test-logs/<step>.log:
#   deps         scripts/install-test-deps.sh (apt packages, dummy user, pinned pjdfstest, fsx
#                and garage)
#   fmt          cargo fmt --check: the tree is formatted
#   build        cargo build --release
#   clippy       cargo clippy --release --all-targets -- -D warnings: lints (and every unsafe
#                block's SAFETY comment, Cargo.toml [lints]) hold for the code and its tests
#   garage       scripts/garage.sh: a single-node Garage S3 server on 127.0.0.1 for the backend
#                tests (TIERGATE_TEST_S3_* in the environment of cargo test); stopped at exit
#   cargo-test   cargo test --release --no-fail-fast: unit tests, and integration tests that mount FUSE themselves
#   fuzz         fuzz/run.sh: builds the cargo-fuzz targets (nightly) and runs each for
#                FUZZ_SECS (default 25) seconds; a crash fails the step (docs/FUZZING.md)
#   bench-smoke  benches/run.sh --quick on 64 MiB, every workload, the chunk-size study and a
#                20 s soak, then benches/smoke-check.py: the harness still runs end to end
#                and every figure is there (the figures themselves mean nothing on CI)
#   mount        a fresh volume in a temporary directory, `tiergate serve`, wait for the mount
#   litmus       tests/suites/litmus.sh against the WebDAV share of that daemon (address from its log)
#   clients      tests/suites/clients.sh: restic, borg, duplicity, rclone, tar and rsync back up a
#                generated tree into the mount or the share; each restore compared with it
#   pjdfstest    tests/suites/pjdfstest.sh against the mount (allowlist: pjdfstest-known-failures.txt)
#   fsx          tests/suites/fsx.sh against the mount
#   unmount      SIGTERM; tiergate must unmount and exit 0
#   remount      serve the same volume again (it must open and mount), then stop it again
#   image-build  image/build.sh with the release binary of the build step: the appliance's qcow2
#                in target/image/ (debootstrap from the mirror apt uses here; ~2-3 min)
#   image-boot   image/boot-test.sh: boots that image under QEMU (KVM if it works, else TCG,
#                ~5 min) with a seed disk and checks it from outside: WebDAV, SMB, NFS, the
#                status page, the firewall, first boot from the seed (logs and the VM's console
#                in target/test-logs/image-boot/)
# A failed step does not stop the later ones unless they depend on it. Ends with a summary line
#   Summary: N passed, N failed, N skipped (skipped steps: fuzz, bench-smoke; not run: fsx)
# counting test cases, and steps as one case each where they have no cases of their own: a
# failed step, a step skipped on request (TG_SKIP_*: one skip each, named), and a step that
# should have run but did not (its prerequisite failed, the mount went away: one failure each,
# named "not run"). A step whose command succeeded but that counted no passing case, or counted
# failed cases, fails. The exit status follows the counts: non-zero if anything failed or did
# not run.
#
# Environment: TG_SKIP_DEPS=1, TG_SKIP_CARGO_TEST=1, TG_SKIP_FUZZ=1, TG_SKIP_BENCH=1,
# TG_SKIP_IMAGE=1 (image-build and image-boot), TG_SKIP_SUITES=1 (mount, litmus, clients,
# pjdfstest, fsx, unmount, remount) skip those steps (for quick iterations);
# CARGO_TEST_TIMEOUT (seconds, default 1800); TG_KEEP_WORKDIR=1 keeps the temporary volume; the
# suites' own variables (FSX_OPS, PJD_NAPTIME, ...) pass through.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
# shellcheck source=scripts/garage.sh
. scripts/garage.sh --

cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
case ":$PATH:" in
    *":$cargo_bin:"*) ;;
    *) export PATH="$PATH:$cargo_bin" ;;
esac

LOGDIR="$PWD/target/test-logs"
rm -rf "$LOGDIR"
mkdir -p "$LOGDIR"
run_start=$SECONDS

step_names=()
step_status=()
step_secs=()
step_notes=()
n_passed=0
n_failed=0
n_skipped=0
skipped_steps=()
missing_steps=()
# Steps that run test cases of their own: they must count at least one passed case.
case_steps=" cargo-test fuzz bench-smoke litmus clients pjdfstest fsx image-boot "

# record NAME STATUS SECS NOTE
record() {
    step_names+=("$1")
    step_status+=("$2")
    step_secs+=("$3")
    step_notes+=("$4")
}

# step NAME CMD...: runs CMD with its output on the console and in $LOGDIR/NAME.log.
# Returns CMD's status.
step() {
    local name="$1" start rc=0
    shift
    echo
    echo "===== $name: $* ====="
    start=$SECONDS
    "$@" 2>&1 | tee "$LOGDIR/$name.log" || rc=$?
    # With pipefail, rc is the command's status (tee does not fail).
    LAST_SECS=$((SECONDS - start))
    return "$rc"
}

# count_step NAME RC PASSED FAILED SKIPPED NOTE: adds a step's case counts to the totals; a failed
# step that counted no failed case counts as one failure itself. A step with cases of its own
# (case_steps) whose command succeeded fails all the same if it counted a failed case or no
# passed case: its log did not say what the step claims.
count_step() {
    local name="$1" rc="$2" p="$3" f="$4" s="$5" note="$6"
    if [ "$rc" -eq 0 ] && [[ "$case_steps" == *" $name "* ]]; then
        if [ "$f" -gt 0 ]; then
            rc=1
            note="$note; exit status 0 with $f failed"
        elif [ "$p" -eq 0 ]; then
            rc=1
            note="$note; exit status 0 but no passed case in $name.log"
        fi
    fi
    [ "$f" -ge 0 ] || f=0
    n_passed=$((n_passed + p))
    n_skipped=$((n_skipped + s))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        f=1
    fi
    n_failed=$((n_failed + f))
    if [ "$rc" -eq 0 ]; then
        record "$name" ok "$LAST_SECS" "$note"
    else
        record "$name" FAILED "$LAST_SECS" "$note"
    fi
}

# A step with no cases of its own: one pass or one failure.
plain_step() {
    local name="$1" rc=0
    step "$@" || rc=$?
    if [ "$rc" -eq 0 ]; then
        count_step "$name" 0 0 0 0 ""
    else
        count_step "$name" "$rc" 0 0 0 "exit status $rc"
    fi
    return "$rc"
}

# skip_step NAME WHY: a step left out on request (TG_SKIP_*): one skip, named in the summary.
skip_step() {
    echo
    echo "===== $1: skipped ($2) ====="
    record "$1" skipped 0 "$2"
    n_skipped=$((n_skipped + 1))
    skipped_steps+=("$1")
}

# missing_step NAME WHY: a step that should have run and did not (an earlier step it needs
# failed): one failure, named in the summary.
missing_step() {
    echo
    echo "===== $1: NOT RUN ($2) ====="
    record "$1" "NOT RUN" 0 "$2"
    n_failed=$((n_failed + 1))
    missing_steps+=("$1")
}

# sum_field LOG REGEX WORD: sums the number before WORD on lines of LOG that match REGEX.
sum_field() {
    awk -v re="$2" -v word="$3" '
        $0 ~ re {
            for (i = 2; i <= NF; i++) {
                w = $i
                gsub(/[;,.]/, "", w)
                if (w == word && $(i - 1) ~ /^[0-9]+$/) n += $(i - 1)
            }
        }
        END { print n + 0 }' "$1"
}

workdir=""
cleanup() {
    local rc=$?
    garage_stop 2>/dev/null || true
    if [ -n "$TIERGATE_PID" ]; then
        stop_tiergate || true
    fi
    if [ -n "$workdir" ] && [ -d "$workdir" ] && [ "${TG_KEEP_WORKDIR:-0}" != 1 ]; then
        if [ -n "$TIERGATE_MNT" ] && is_mounted "$TIERGATE_MNT"; then
            umount -l "$TIERGATE_MNT" 2>/dev/null || true
        fi
        if [ -n "$TIERGATE_MNT" ] && is_mounted "$TIERGATE_MNT"; then
            log "not removing $workdir: $TIERGATE_MNT is still mounted"
        else
            rm -rf "$workdir"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- deps, build, cargo test -----------------------------------------------------------------
if [ "${TG_SKIP_DEPS:-0}" = 1 ]; then
    skip_step deps "TG_SKIP_DEPS=1"
else
    plain_step deps bash scripts/install-test-deps.sh || true
fi

# Formatting is part of the code's contract (STYLE.md); a second of work.
plain_step fmt cargo fmt --all --check || true

build_ok=1
plain_step build cargo build --release || build_ok=0

# Lints are part of the contract too (Cargo.toml [lints], STYLE.md); a check build, ~2-4 min.
plain_step clippy cargo clippy --release --all-targets -- -D warnings || true

# The S3 server for the backend tests. It runs in this shell (garage_start keeps its pid and
# exports its address), so no pipe through tee. If it fails, the S3 tests fail and say why.
if [ "$build_ok" = 1 ] && [ "${TG_SKIP_CARGO_TEST:-0}" != 1 ]; then
    echo
    echo "===== garage: scripts/garage.sh garage_start ====="
    start=$SECONDS
    rc=0
    garage_start >"$LOGDIR/garage.log" 2>&1 || rc=$?
    cat "$LOGDIR/garage.log"
    LAST_SECS=$((SECONDS - start))
    count_step garage "$rc" 0 0 0 "${TIERGATE_TEST_S3_ENDPOINT:-not started}"
fi

if [ "$build_ok" = 0 ]; then
    missing_step cargo-test "the build failed"
elif [ "${TG_SKIP_CARGO_TEST:-0}" = 1 ]; then
    skip_step cargo-test "TG_SKIP_CARGO_TEST=1"
else
    rc=0
    step cargo-test timeout --kill-after=60 "${CARGO_TEST_TIMEOUT:-1800}" \
        cargo test --release --no-fail-fast || rc=$?
    log_file="$LOGDIR/cargo-test.log"
    p="$(sum_field "$log_file" '^test result:' passed)"
    f="$(sum_field "$log_file" '^test result:' failed)"
    s="$(sum_field "$log_file" '^test result:' ignored)"
    note="$p passed, $f failed, $s ignored"
    [ "$rc" -ne 124 ] || note="$note; timed out after ${CARGO_TEST_TIMEOUT:-1800}s"
    count_step cargo-test "$rc" "$p" "$f" "$s" "$note"
fi
garage_stop 2>/dev/null || true

# --- fuzzing: a bounded run of every target ----------------------------------------------------
if [ "${TG_SKIP_FUZZ:-0}" = 1 ]; then
    skip_step fuzz "TG_SKIP_FUZZ=1"
elif ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    # install-test-deps installs both; a run without them is not a passing run.
    echo "fuzz: cargo +nightly fuzz is not available (rustup toolchain install nightly; cargo install cargo-fuzz)" \
        >"$LOGDIR/fuzz.log"
    LAST_SECS=0
    count_step fuzz 1 0 1 0 "no nightly toolchain or cargo-fuzz"
else
    rc=0
    step fuzz bash fuzz/run.sh || rc=$?
    p="$(sum_field "$LOGDIR/fuzz.log" '^fuzz: [0-9]+ passed' passed)"
    f="$(sum_field "$LOGDIR/fuzz.log" '^fuzz: [0-9]+ passed' failed)"
    count_step fuzz "$rc" "$p" "$f" 0 \
        "$(grep -E '^fuzz: [0-9]+ passed' "$LOGDIR/fuzz.log" | tail -n 1 | sed 's/^fuzz: //')"
fi

# --- the benchmark harness, tiny: it must keep working (its figures mean nothing here) ----------
bench_smoke() {
    TIERGATE_BIN="$PWD/target/release/tiergate" bash benches/run.sh --quick --size 64M \
        --study-size 64M --chunk-sizes 512K,1M --soak-secs 20 --no-publish &&
        python3 benches/smoke-check.py target/bench-results/bench-64M-quick.json
}
if [ "${TG_SKIP_BENCH:-0}" = 1 ]; then
    skip_step bench-smoke "TG_SKIP_BENCH=1"
elif [ "$build_ok" != 1 ]; then
    missing_step bench-smoke "the build failed"
else
    rc=0
    step bench-smoke bench_smoke || rc=$?
    p="$(sum_field "$LOGDIR/bench-smoke.log" '^bench-smoke: [0-9]+ passed' passed)"
    f="$(sum_field "$LOGDIR/bench-smoke.log" '^bench-smoke: [0-9]+ passed' failed)"
    count_step bench-smoke "$rc" "$p" "$f" 0 \
        "$(grep -E '^bench-smoke: [0-9]+ passed' "$LOGDIR/bench-smoke.log" | tail -n 1 | sed 's/^bench-smoke: //')"
fi

# --- third-party suites against a live mount ---------------------------------------------------
mounted=0
cfg=""
suites=1
if [ "${TG_SKIP_SUITES:-0}" = 1 ]; then
    suites=0
    for s in mount litmus clients pjdfstest fsx unmount remount; do
        skip_step "$s" "TG_SKIP_SUITES=1"
    done
fi
if [ "$build_ok" = 1 ] && [ "$suites" = 1 ]; then
    workdir="$(mktemp -d "${TMPDIR:-/tmp}/tiergate-test.XXXXXX")"
    # pjdfstest's dummy users must be able to reach the mount.
    chmod 755 "$workdir"
    mount_step() {
        cfg="$(make_volume "$workdir")" || return 1
        echo "config: $cfg"
        cat "$cfg"
        start_tiergate "$cfg" "$LOGDIR/tiergate-serve.log"
    }
    # start_tiergate must run in this shell (it keeps the daemon's pid), so no pipe through tee.
    echo
    echo "===== mount: make_volume + tiergate serve ====="
    start=$SECONDS
    rc=0
    mount_step >"$LOGDIR/mount.log" 2>&1 || rc=$?
    cat "$LOGDIR/mount.log"
    LAST_SECS=$((SECONDS - start))
    if [ "$rc" -eq 0 ]; then
        mounted=1
        count_step mount 0 0 0 0 "$TIERGATE_MNT"
    else
        count_step mount "$rc" 0 0 0 "see mount.log, tiergate-serve.log"
    fi
fi

if [ "$suites" != 1 ]; then
    :
elif [ "$build_ok" != 1 ]; then
    for s in mount litmus clients pjdfstest fsx unmount remount; do
        missing_step "$s" "the build failed"
    done
elif [ "$mounted" != 1 ]; then
    for s in litmus clients pjdfstest fsx; do
        missing_step "$s" "no mount"
    done
fi

if [ "$mounted" = 1 ]; then
    # The share of the same daemon, before pjdfstest fills the volume with its leftovers.
    webdav_url="$(sed -n 's/.*webdav listening on \(https\{0,1\}:\/\/[^ ]*\/\).*/\1/p' \
        "$LOGDIR/tiergate-serve.log" | head -n 1)"
    if [ -z "$webdav_url" ]; then
        echo "litmus: no 'webdav listening on' line in tiergate-serve.log" >"$LOGDIR/litmus.log"
        LAST_SECS=0
        count_step litmus 1 0 1 0 "no WebDAV address in the daemon's log"
    else
        rc=0
        step litmus bash tests/suites/litmus.sh "$webdav_url" "$LOGDIR/litmus" || rc=$?
        p="$(sum_field "$LOGDIR/litmus.log" '^litmus: [0-9]+ passed' passed)"
        f="$(sum_field "$LOGDIR/litmus.log" '^litmus: [0-9]+ passed' failed)"
        s="$(sum_field "$LOGDIR/litmus.log" '^litmus: [0-9]+ passed' skipped)"
        count_step litmus "$rc" "$p" "$f" "$s" \
            "$(grep -E '^litmus: [0-9]+ passed' "$LOGDIR/litmus.log" | tail -n 1 | sed 's/^litmus: //') ($webdav_url)"
    fi
fi

if [ "$mounted" = 1 ]; then
    # Real backup clients, like litmus before pjdfstest fills the volume; the suite removes what
    # it wrote.
    if [ -z "$webdav_url" ]; then
        echo "clients: no 'webdav listening on' line in tiergate-serve.log" >"$LOGDIR/clients.log"
        LAST_SECS=0
        count_step clients 1 0 1 0 "no WebDAV address in the daemon's log"
    else
        rc=0
        step clients bash tests/suites/clients.sh "$TIERGATE_MNT" "$webdav_url" "$LOGDIR/clients" ||
            rc=$?
        p="$(sum_field "$LOGDIR/clients.log" '^clients: [0-9]+ passed' passed)"
        f="$(sum_field "$LOGDIR/clients.log" '^clients: [0-9]+ passed' failed)"
        s="$(sum_field "$LOGDIR/clients.log" '^clients: [0-9]+ passed' skipped)"
        count_step clients "$rc" "$p" "$f" "$s" \
            "$(grep -E '^clients: [0-9]+ passed' "$LOGDIR/clients.log" | tail -n 1 | sed 's/^clients: //')"
    fi
fi

if [ "$mounted" = 1 ]; then
    rc=0
    step pjdfstest bash tests/suites/pjdfstest.sh "$TIERGATE_MNT" "$LOGDIR/pjdfstest" || rc=$?
    line="$(grep -E '^pjdfstest: [0-9]+ passed' "$LOGDIR/pjdfstest.log" | tail -n 1 || true)"
    known="$(sed -n 's/^pjdfstest: \([0-9]*\) known failure.*/\1/p' "$LOGDIR/pjdfstest.log" | tail -n 1)"
    known="${known:-0}"
    known_note=""
    [ "$known" -eq 0 ] || known_note="; $known allowlisted"
    p="$(sum_field "$LOGDIR/pjdfstest.log" '^pjdfstest: [0-9]+ passed' passed)"
    f="$(sum_field "$LOGDIR/pjdfstest.log" '^pjdfstest: [0-9]+ passed' failed)"
    s="$(sum_field "$LOGDIR/pjdfstest.log" '^pjdfstest: [0-9]+ passed' skipped)"
    # Allowlisted failures do not fail the run; they are reported as skipped.
    [ "$known" -le "$f" ] || known="$f"
    count_step pjdfstest "$rc" "$p" "$((f - known))" "$((s + known))" \
        "${line#pjdfstest: }$known_note"

    # The mount must survive pjdfstest before fsx can mean anything.
    if ! kill -0 "$TIERGATE_PID" 2>/dev/null || ! require_live_mount "$TIERGATE_MNT" test.sh; then
        log "tiergate is no longer running or mounted after pjdfstest"
        log_tail "$LOGDIR/tiergate-serve.log"
        mounted=0
        missing_step fsx "tiergate is no longer running or mounted after pjdfstest"
    fi
fi

if [ "$mounted" = 1 ]; then
    rc=0
    export FSX_TIMEOUT="${FSX_TIMEOUT:-900}"
    step fsx bash tests/suites/fsx.sh "$TIERGATE_MNT" "$LOGDIR/fsx" || rc=$?
    p="$(sum_field "$LOGDIR/fsx.log" '^fsx: [0-9]+ passed' passed)"
    f="$(sum_field "$LOGDIR/fsx.log" '^fsx: [0-9]+ passed' failed)"
    count_step fsx "$rc" "$p" "$f" 0 "$(grep -E '^fsx: .* run \(seed' "$LOGDIR/fsx.log" | sed 's/^fsx: //' | paste -sd '|' - | sed 's/|/; /g' || true)"
fi

if [ -n "$TIERGATE_PID" ]; then
    echo
    echo "===== unmount: SIGTERM, clean exit ====="
    start=$SECONDS
    rc=0
    {
        # A daemon that already exited (it exits 0 when its mount disappears) did not unmount on
        # SIGTERM; stop_tiergate still reaps it and cleans up.
        if ! kill -0 "$TIERGATE_PID" 2>/dev/null; then
            echo "tiergate (pid $TIERGATE_PID) had exited before the SIGTERM"
            rc=1
        fi
        stop_tiergate || rc=$?
    } >"$LOGDIR/unmount.log" 2>&1
    cat "$LOGDIR/unmount.log"
    LAST_SECS=$((SECONDS - start))
    count_step unmount "$rc" 0 0 0 ""

    if [ "$rc" -eq 0 ]; then
        echo
        echo "===== remount: serve the same volume again ====="
        start=$SECONDS
        rc=0
        {
            start_tiergate "$cfg" "$LOGDIR/tiergate-serve-2.log" &&
                ls -la "$TIERGATE_MNT" &&
                stop_tiergate
        } >"$LOGDIR/remount.log" 2>&1 || rc=$?
        cat "$LOGDIR/remount.log"
        LAST_SECS=$((SECONDS - start))
        count_step remount "$rc" 0 0 0 ""
    else
        missing_step remount "the unmount failed"
    fi
elif [ "$build_ok" = 1 ] && [ "$suites" = 1 ]; then
    # The daemon exited on its own (or never started): it was not there to stop.
    missing_step unmount "tiergate was not running any more"
    missing_step remount "tiergate was not running any more"
fi

# --- the appliance image: built from the release binary, then booted under QEMU ------------------
# Last: the boot test keeps both cores busy under TCG, and nothing else needs the image.
if [ "${TG_SKIP_IMAGE:-0}" = 1 ]; then
    skip_step image-build "TG_SKIP_IMAGE=1"
    skip_step image-boot "TG_SKIP_IMAGE=1"
elif [ "$build_ok" != 1 ]; then
    missing_step image-build "the build failed"
    missing_step image-boot "the build failed"
else
    rc=0
    # The package cache outlives the clone: the next run on this machine downloads no package
    # it has.
    step image-build env TIERGATE_BIN="$PWD/target/release/tiergate" \
        IMAGE_CACHE=/var/cache/tiergate-image bash image/build.sh || rc=$?
    build_txt=target/image/tiergate-appliance.build.txt
    note=""
    if [ "$rc" -eq 0 ] && [ -f "$build_txt" ]; then
        note="$(awk '$1 == "qcow2-bytes:" { printf "qcow2 %d MiB", $2 / 1048576 }' "$build_txt")"
    fi
    count_step image-build "$rc" 0 0 0 "${note:-exit status $rc}"
    if [ "$rc" -eq 0 ]; then
        rc=0
        step image-boot env BOOT_TEST_DIR="$LOGDIR/image-boot" bash image/boot-test.sh || rc=$?
        p="$(sum_field "$LOGDIR/image-boot.log" '^boot-test: [0-9]+ passed' passed)"
        f="$(sum_field "$LOGDIR/image-boot.log" '^boot-test: [0-9]+ passed' failed)"
        note="$(grep -E '^PASS  status page reachable' "$LOGDIR/image-boot.log" | head -n 1 |
            sed 's/.*: //' || true)"
        count_step image-boot "$rc" "$p" "$f" 0 "$p passed, $f failed${note:+; $note}"
    else
        missing_step image-boot "the image build failed"
    fi
fi

# --- summary -----------------------------------------------------------------------------------
echo
echo "===== summary (logs in target/test-logs/, $((SECONDS - run_start))s in all) ====="
any_failed=0
for i in "${!step_names[@]}"; do
    printf '%-12s %-8s %6ss  %s\n' "${step_names[$i]}" "${step_status[$i]}" "${step_secs[$i]}" \
        "${step_notes[$i]}"
    [ "${step_status[$i]}" != FAILED ] || any_failed=1
done
if [ "$any_failed" = 1 ] && [ "$n_failed" -eq 0 ]; then
    n_failed=1
fi
named=()
[ "${#skipped_steps[@]}" -eq 0 ] || named+=("skipped steps: $(IFS=,; echo "${skipped_steps[*]}" | sed 's/,/, /g')")
[ "${#missing_steps[@]}" -eq 0 ] || named+=("not run: $(IFS=,; echo "${missing_steps[*]}" | sed 's/,/, /g')")
extra=""
[ "${#named[@]}" -eq 0 ] || extra=" ($(IFS=';'; echo "${named[*]}" | sed 's/;/; /g'))"
echo "Summary: $n_passed passed, $n_failed failed, $n_skipped skipped$extra"
# The exit status follows the counts.
[ "$n_failed" -eq 0 ] && [ "$any_failed" = 0 ]
