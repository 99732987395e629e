#!/usr/bin/env python3
"""Checks the results of a tiny benches/run.sh run (the test command's bench-smoke step).

    python3 benches/smoke-check.py target/bench-results/bench-64M-quick.json

The figures of such a run mean nothing (64 MiB on a busy CI machine); what is checked is that
the harness still works end to end: every workload, the chunk-size study and the soak produced
rows, every contender each workload is meant to measure has a positive figure, every ratio was
computed, and the soak's test passed. Prints one line per failed check and a summary line "bench-smoke: N passed, N failed".
"""

import json
import math
import sys

# Workload -> contenders that must have at least one figure in it.
EXPECTED = {
    "a": {"raw", "tiergate", "rclone"},
    "b": {"raw", "tiergate", "rclone"},
    "c": {"tiergate", "rclone", "restic", "borg"},
    "d": {"raw", "tiergate", "rclone"},
    "e": {"raw", "tiergate", "rclone"},
    "f": {"tiergate-webdav", "rclone-webdav"},
    # One contender per average chunk size asked for (the step asks for 512K and 1M).
    "study": {"avg 512K", "avg 1M"},
    "soak": {"tiergate", "soak-first", "soak-later"},
}


def main():
    doc = json.load(open(sys.argv[1]))
    rows = doc.get("rows", [])
    passed, failed = 0, 0

    def check(ok, what):
        nonlocal passed, failed
        if ok:
            passed += 1
        else:
            failed += 1
            print(f"bench-smoke: FAILED: {what}")

    for w, contenders in EXPECTED.items():
        mine = [r for r in rows if r["workload"] == w]
        check(mine, f"workload {w}: no rows")
        seen = {c for r in mine for c, v in r["values"].items() if v is not None}
        for c in sorted(contenders - seen):
            check(False, f"workload {w}: no figure for {c}")
    for r in rows:
        name = f'{r["workload"]} / {r["metric"]}'
        for c, v in r["values"].items():
            ok = v is None or (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0)
            check(ok, f"{name}: {c} = {v!r}")
        for c, v in (r.get("ratios") or {}).items():
            check(v is None or (math.isfinite(v) and v >= 0), f"{name}: ratio of {c} = {v!r}")
        # Throughputs and times of the workloads must be there and positive for tiergate.
        for c in ("tiergate", "tiergate-webdav"):
            if r["unit"] in ("MiB/s", "s") and c in r["values"]:
                v = r["values"][c]
                check(v is not None and v > 0, f"{name}: {c} = {v!r}")
    # The soak's own test must have passed (memory and descriptors flat, files intact).
    soak = [r for r in rows if r["workload"] == "soak" and r["metric"].startswith("test passed")]
    check(soak and soak[0]["values"].get("tiergate") == 1, "soak: the test did not pass")
    print(f"bench-smoke: {passed} passed, {failed} failed ({len(rows)} rows)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
