# The tools that check deploy/ (never dependencies of Rung): Debian's docker-compose 1.29
# for `docker-compose config`, and kubernetes-validate and checkov from PyPI in a virtual
# environment of their own, .deploy-tools/. Source it or run it; cached after the first run.
# `kubectl kustomize` (kubectl 1.27+) builds the Kustomize overlays; our machines carry it,
# and no registry they reach has it, so where it is missing that test skips and says so.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.deploy-tools"
if ! command -v docker-compose >/dev/null 2>&1; then
    echo "deploy tools: installing Debian's docker-compose with apt" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq docker-compose >/dev/null
fi
wanted="kubernetes-validate>=1.30 checkov>=3"
if [ ! -f "$TOOLS/.installed" ] || [ "$(cat "$TOOLS/.installed")" != "$wanted" ]; then
    echo "deploy tools: installing $wanted into $TOOLS (once)" >&2
    python3 -m venv "$TOOLS"
    # shellcheck disable=SC2086
    "$TOOLS/bin/pip" install --quiet --disable-pip-version-check $wanted 2>&1 \
        | grep -v "^WARNING: Location" || true
    echo "$wanted" > "$TOOLS/.installed"
fi
export RUNG_DEPLOY_TOOLS="$TOOLS/bin"
