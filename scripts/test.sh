#!/usr/bin/env bash
# Install Rung with its test tools, make sure RabbitMQ runs, and run the whole test suite.
#   bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/rabbitmq.sh
bash scripts/chromium.sh
source scripts/deploy-tools.sh
# Each run gets its own vhost and queue names, so runs never see each other's messages.
export RUNG_TEST_RUN_ID="${RUNG_TEST_RUN_ID:-$(date +%s)-$$}"
exec "$PY" -m pytest "$@"
