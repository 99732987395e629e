#!/usr/bin/env bash
# Tiering against rclone on the same local Garage: workload a of benches/run.sh (write until
# off-site, cold read after `tiergate evict` against rclone mount after its cache was removed,
# bytes sent to S3), which this calls.
#
#   bash benches/e2e-tiering.sh               # 1 GiB
#   SIZE_GIB=4 bash benches/e2e-tiering.sh
#
# Results: target/bench-results/bench-<size>.{md,json}; docs/BENCHMARKS.md is left alone.
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/run.sh" --size "${SIZE_GIB:-1}G" --only a --no-publish "$@"
