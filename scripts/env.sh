# Shared by the scripts: a project virtual environment with Rung installed in it.
# Source it; it leaves $PY pointing at the environment's python.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RUNG_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV"
fi
stamp="$VENV/.rung-installed"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
    "$PY" -m pip install --quiet --disable-pip-version-check --upgrade pip 2>&1 \
        | grep -v "^WARNING: Location" || true
    "$PY" -m pip install --quiet --disable-pip-version-check -e "$ROOT[${RUNG_EXTRAS:-dev,examples}]" 2>&1 \
        | grep -v "^WARNING: Location" || true
    "$PY" -c "import rung.searcher" && touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
