#!/usr/bin/env bash
# Install Rung and run the Core API tutorial's hyperparameter search end to end:
# a searcher and two workers on the in-process broker, trials as real subprocesses.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNG_EXTRAS=dev source scripts/env.sh
echo "== the plan: rung preview-search examples/core_api/3_hpsearch.yaml"
rung preview-search examples/core_api/3_hpsearch.yaml
echo
echo "== the search: rung run examples/core_api/3_hpsearch.yaml examples/core_api --workers 2"
rung run examples/core_api/3_hpsearch.yaml examples/core_api --workers 2
