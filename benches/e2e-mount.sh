#!/usr/bin/env bash
# The FUSE mount against the raw disk: workloads a (sequential write with fsync, duplicate write,
# warm and cold read) and d (random overwrites) of benches/run.sh, which this calls.
#
#   bash benches/e2e-mount.sh                 # 4 GiB
#   SIZE_GIB=16 bash benches/e2e-mount.sh     # also reports the daemon's peak RSS at 16 GiB
#
# Results: target/bench-results/bench-<size>.{md,json}; docs/BENCHMARKS.md is left alone.
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/run.sh" --size "${SIZE_GIB:-4}G" --only a,d --no-publish "$@"
