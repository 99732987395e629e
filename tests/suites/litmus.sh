#!/usr/bin/env bash
# The litmus WebDAV conformance suite (Debian package `litmus`) against a running share.
#
#   tests/suites/litmus.sh URL LOGDIR [USER PASS]
#
# Runs the five suites litmus ships (basic, copymove, props, locks, http) against URL; litmus
# works in a collection `litmus/` under it and removes it at the end. LOGDIR receives
# litmus.log (the full output, with litmus's own warnings) and, from litmus, debug.log (every
# request and response of the run).
#
# Prints one summary line per suite and a closing line
#   litmus: N passed, N failed, N skipped
# (skipped: the tests litmus did not run because one they depend on failed) and exits non-zero
# if a test failed, a suite did not run to its summary, or a suite skipped every test.
#
# Environment:
#   LITMUS          the binary (default: litmus on PATH)
#   LITMUS_TESTS    suites to run (default "basic copymove props locks http")
#   LITMUS_TIMEOUT  seconds before the run is killed (default 600)
set -euo pipefail

if [ $# -ne 2 ] && [ $# -ne 4 ]; then
    echo "usage: $0 URL LOGDIR [USER PASS]" >&2
    exit 2
fi
url="$1"
mkdir -p "$2"
logdir="$(realpath -e "$2")"
shift 2
litmus="${LITMUS:-$(command -v litmus || true)}"
if [ -z "$litmus" ]; then
    echo "litmus: not installed (Debian package litmus; scripts/install-test-deps.sh installs it)" >&2
    echo "litmus: 0 passed, 1 failed, 0 skipped"
    exit 1
fi
suites="${LITMUS_TESTS:-basic copymove props locks http}"

rc=0
# litmus writes debug.log into its working directory.
(
    cd "$logdir"
    TESTS="$suites" timeout --kill-after=10 "${LITMUS_TIMEOUT:-600}" \
        "$litmus" --keep-going "$url" "$@"
) >"$logdir/litmus.log" 2>&1 || rc=$?
cat "$logdir/litmus.log"

passed=0
failed=0
skipped=0
ran=0
# litmus's output for one suite (the tests themselves aside):
#   -> running `locks':
#   ...
#   24. notowner_modify....... SKIPPED
#   -> 7 tests were skipped.                    ("-> 1 test was skipped." for one)
#   <- summary for `locks': of 34 tests run: 30 passed, 4 failed. 88.2%
#   -> 1 warning was issued.
# The skip count precedes the summary and the summary counts only the tests run; a suite whose
# every test was skipped prints "<- all tests skipped for `locks'." instead of a summary.
for s in $suites; do
    # This suite's lines: from its "-> running" line to the next suite's.
    section="$(awk -v s="$s" '
        /^-> running `/ { on = (index($0, "-> running `" s "\x27:") == 1) }
        on' "$logdir/litmus.log")"
    line="$(grep -E "^<- summary for \`$s':" <<<"$section" | tail -n 1 || true)"
    k="$(sed -n 's/^-> \([0-9]*\) tests\{0,1\} w[ae][sr]e\{0,1\} skipped\.$/\1/p' <<<"$section" | tail -n 1)"
    # Without the line (an older or newer litmus), the tests marked SKIPPED.
    [ -n "$k" ] || k="$(grep -cE '[[:space:]]SKIPPED$' <<<"$section" || true)"
    if grep -qE "^<- all tests skipped for \`$s'" <<<"$section"; then
        # Nothing of the suite was checked: a failure, with its skips counted.
        echo "litmus: $s: every test skipped ($k) (see $logdir/litmus.log)"
        failed=$((failed + 1))
        skipped=$((skipped + k))
        continue
    fi
    if [ -z "$line" ]; then
        echo "litmus: suite $s did not finish (see $logdir/litmus.log)"
        failed=$((failed + 1))
        skipped=$((skipped + k))
        continue
    fi
    ran=$((ran + 1))
    p="$(sed -n 's/.* \([0-9]*\) passed.*/\1/p' <<<"$line")"
    f="$(sed -n 's/.* \([0-9]*\) failed.*/\1/p' <<<"$line")"
    passed=$((passed + ${p:-0}))
    failed=$((failed + ${f:-0}))
    skipped=$((skipped + k))
    echo "litmus: $s: ${line#*: }$([ "$k" -eq 0 ] || echo "; $k skipped")"
done
echo "litmus: $passed passed, $failed failed, $skipped skipped"
if [ "$failed" -ne 0 ] || [ "$ran" -eq 0 ]; then
    exit 1
fi
# litmus exits non-zero when a test fails; with every suite counted and none failed, a non-zero
# status means something else went wrong (timeout, crash).
if [ "$rc" -ne 0 ]; then
    echo "litmus: exited with status $rc"
    exit "$rc"
fi
