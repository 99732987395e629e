#!/usr/bin/env python3
"""Checks the results of a tiny benches/run.sh run (the test command's bench-smoke step).

    python3 benches/smoke-check.py target/bench-results/bench-64M-quick.json

The figures of such a run mean nothing (64 MiB on a busy CI machine); what is checked is that
the harness still works end to end: every workload, the chunk-size study and the soak produced
every figure they are meant to (each metric for each contender that measures it, REQUIRED
below), every figure is positive (a throughput, a byte or request count, a size or a time of 0
means a broken counter or a step that did nothing; only the few metrics in MAY_BE_ZERO can be 0),
every ratio was computed, and the soak's test passed. Prints one line per failed check and a
summary line "bench-smoke: N passed, N failed".
"""

import json
import math
import sys

SEQ = {"raw", "tiergate", "rclone"}
DAEMONS = {"tiergate", "rclone"}
CHAIN_ALL = {"tiergate", "rclone", "restic", "borg"}
# (workload, metric without its unit) -> contenders that must have a figure in that row.
REQUIRED = {}
for w in ("a", "b"):
    REQUIRED.update({
        (w, "sequential write, fsync at end"): SEQ,
        (w, "read, page cache dropped (warm: local cache kept)"): SEQ,
        (w, "read, page cache dropped (cold: local cache emptied)"): SEQ,
        (w, "daemon CPU during the write (cores busy)"): DAEMONS,
        (w, "write until off-site"): DAEMONS,
        (w, "bytes sent to S3 / bytes written"): DAEMONS,
        (w, "daemon peak RSS"): DAEMONS,
    })
REQUIRED[("a", "duplicate write (same data again), fsync at end")] = {"raw", "tiergate"}
CHAIN = {
    "stored bytes before retention": CHAIN_ALL,
    "dedup ratio before retention (bytes written / stored)": CHAIN_ALL,
    "ingest (bytes written / time writing)": DAEMONS,
    "time until every step is off-site": DAEMONS,
    "bytes sent to S3": DAEMONS,
    "bytes received from S3": DAEMONS,
    "S3 requests": DAEMONS,
    "S3 PUT requests": DAEMONS,
    # Recorded only once retention has finished (benches/run.sh, tg_retire).
    "stored bytes after retention": CHAIN_ALL,
    "daemon peak RSS": CHAIN_ALL,
    "time (backups, local repository)": {"restic", "borg"},
}
REQUIRED.update({("c", m): cs for m, cs in CHAIN.items()})
# The study: tiergate only, one contender per average chunk size asked for (the step asks for
# 512K and 1M); every tiergate metric of workload c.
STUDY = {"avg 512K", "avg 1M"}
REQUIRED.update({("study", m): STUDY for m, cs in CHAIN.items() if "tiergate" in cs})
REQUIRED.update({
    ("d", "random 4-64 KiB overwrite, fsync at end"): SEQ,
    ("d", "daemon peak RSS"): DAEMONS,
    ("e", "daemon peak RSS"): DAEMONS,
    ("f", "PUT of one"): {"tiergate-webdav", "rclone-webdav"},
    ("f", "GET of it (warm)"): {"tiergate-webdav", "rclone-webdav"},
    ("f", "daemon peak RSS"): {"tiergate-webdav", "rclone-webdav"},
    ("soak", "operations (write, overwrite, PUT, delete, read, sync, evict)"): {"tiergate"},
    ("soak", "syncs until off-site, evictions"): {"tiergate"},
    ("soak", "daemon RSS"): {"soak-first", "soak-later"},
    ("soak", "open file descriptors"): {"soak-first", "soak-later"},
    ("soak", "daemon peak RSS"): {"tiergate"},
    ("soak", "test passed"): {"tiergate"},
})
for phase in ("create", "stat", "read", "delete"):
    REQUIRED[("e", phase)] = SEQ
# Metrics where 0 is a real figure (the rest must be positive): what a chain that only writes
# reads back from S3 rounds to 0.0 MiB.
MAY_BE_ZERO = {"bytes received from S3"}


def base_metric(m):
    """The metric of a row without its unit suffix: "bytes sent to S3 (MiB)" -> "bytes sent to S3"."""
    return m.rsplit(" (", 1)[0] if m.endswith(")") else m


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

    for (w, m), contenders in REQUIRED.items():
        # A row matches on its metric up to the unit; "PUT of one" and the phases of (e) also
        # name the size or the file count, so a prefix matches them.
        mine = [r for r in rows if r["workload"] == w and r["metric"].startswith(m)]
        check(mine, f"workload {w}: no row '{m}'")
        seen = {c for r in mine for c, v in r["values"].items() if v is not None}
        for c in sorted(contenders - seen):
            check(False, f"{w} / {m}: no figure for {c}")
    for r in rows:
        name = f'{r["workload"]} / {r["metric"]}'
        zero_ok = base_metric(r["metric"]) in MAY_BE_ZERO
        for c, v in r["values"].items():
            if v is None:
                continue
            ok = isinstance(v, (int, float)) and math.isfinite(v) and (v > 0 or (zero_ok and v == 0))
            check(ok, f"{name}: {c} = {v!r}" + ("" if zero_ok else " (must be positive)"))
        for c, v in (r.get("ratios") or {}).items():
            ok = v is not None and math.isfinite(v) and (v > 0 or zero_ok)
            check(ok or (zero_ok and v is None), f"{name}: ratio of {c} = {v!r}")
    # The soak's own test must have passed (memory and descriptors flat, files intact).
    soak = [r for r in rows if r["workload"] == "soak" and r["metric"].startswith("test passed")]
    check(soak and soak[0]["values"].get("tiergate") == 1, "soak: the test did not pass")
    print(f"bench-smoke: {passed} passed, {failed} failed ({len(rows)} rows)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
