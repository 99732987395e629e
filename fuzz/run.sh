#!/usr/bin/env bash
# The bounded fuzz run of the test command (scripts/test.sh, step `fuzz`): builds every
# cargo-fuzz target with the nightly toolchain and runs each for FUZZ_SECS seconds (default 25)
# on the committed seeds (fuzz/corpus/TARGET, when there are any) plus a working corpus in
# target/fuzz-corpus/TARGET that grows from run to run. See docs/FUZZING.md.
#
#   bash fuzz/run.sh [TARGET...]
#
# Prints one line per target and a summary line "fuzz: N passed, N failed"; exits non-zero if a
# target fails to build or finds a crash (the input is in fuzz/artifacts/TARGET/, the log in
# target/fuzz-logs/TARGET.log). Environment: FUZZ_SECS, FUZZ_SANITIZER (default none: the code
# is safe Rust and the C libraries are not instrumented either way; `address` for long runs).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")" || exit 1
secs="${FUZZ_SECS:-25}"
sanitizer="${FUZZ_SANITIZER:-none}"
all=(blob pack config webdav_codec webdav_request)
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    targets=("${all[@]}")
fi
logs="../target/fuzz-logs"
work="../target/fuzz-corpus"
mkdir -p "$logs"

start=$SECONDS
if ! cargo +nightly fuzz build --sanitizer "$sanitizer"; then
    echo "fuzz: building the targets failed"
    echo "fuzz: 0 passed, ${#targets[@]} failed"
    exit 1
fi
echo "fuzz: built in $((SECONDS - start)) s"

passed=0
failed=0
for t in "${targets[@]}"; do
    mkdir -p "$work/$t"
    dirs=("$work/$t")
    [ -d "corpus/$t" ] && dirs+=("corpus/$t")
    t0=$SECONDS
    rc=0
    cargo +nightly fuzz run --sanitizer "$sanitizer" "$t" "${dirs[@]}" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=30 -print_final_stats=1 \
        >"$logs/$t.log" 2>&1 || rc=$?
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t.log" | tail -n 1)"
    cov="$(grep -oE 'cov: [0-9]+' "$logs/$t.log" | tail -n 1)"
    if [ "$rc" -eq 0 ]; then
        passed=$((passed + 1))
        echo "fuzz: $t ok: ${runs:-?} runs in $((SECONDS - t0)) s, ${cov:-cov: ?}, corpus $(find "$work/$t" -type f | wc -l) inputs"
    else
        failed=$((failed + 1))
        echo "fuzz: $t FAILED (exit $rc) after $((SECONDS - t0)) s; log $logs/$t.log:"
        tail -n 40 "$logs/$t.log"
    fi
done
echo "fuzz: $passed passed, $failed failed ($((SECONDS - start)) s in all, ${secs} s per target)"
[ "$failed" -eq 0 ]
