#!/usr/bin/env bash
# Install Rung and run an example hyperparameter search end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNG_EXTRAS=dev source scripts/env.sh
echo "== the plan: rung preview-search examples/core_api/3_hpsearch.yaml"
rung preview-search examples/core_api/3_hpsearch.yaml
echo
echo "== the search: adaptive ASHA on mfh6_bad, 300 trials, 8 simulated workers"
rung simulate examples/simulate/mfh6_adaptive.yaml --benchmark mfh6_bad --workers 8 --seed 1
