"""The peers' environments: Optuna and Ray Tune, each in a virtual environment of its
own under ``bench/.envs/`` (never dependencies of Rung), made on first use and cached.

A peer's workload runs as a script in its environment (``bench/peer_scripts/``) and
prints one JSON object on its last line of output.
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any, Final

__all__ = ["PEERS", "PeerError", "peer_python", "run_peer"]

HERE = Path(__file__).resolve().parent
ENVS = HERE / ".envs"
SCRIPTS = HERE / "peer_scripts"

# What each peer's environment holds; a change here rebuilds it. scikit-learn is for the
# digits objective of the search-quality workload (bench/objectives.py), numpy for both.
PEERS: Final = {
    "optuna": ["optuna>=5,<6", "numpy", "scikit-learn>=1.4"],
    "ray": ["ray[tune]>=2,<3", "numpy", "scikit-learn>=1.4"],
}


class PeerError(RuntimeError):
    """A peer's environment could not be made, or its workload failed."""


def peer_python(name: str) -> Path:
    """The interpreter of the peer's environment, made (and cached) when missing."""
    requirements = PEERS[name]
    home = ENVS / name
    stamp = home / "rung-bench.json"
    python = home / "bin" / "python"
    if stamp.exists() and json.loads(stamp.read_text()) == requirements and python.exists():
        return python
    print(f"bench: making the {name} environment in {home} (once)", file=sys.stderr)
    venv.create(home, clear=True, with_pip=True)
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", *requirements],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise PeerError(f"pip install {' '.join(requirements)} failed: {done.stderr[-2000:]}")
    stamp.write_text(json.dumps(requirements))
    return python


def run_peer(name: str, script: str, *args: str, timeout: float = 900) -> dict[str, Any]:
    """Run ``peer_scripts/<script>`` in the peer's environment; return what it printed."""
    python = peer_python(name)
    done = subprocess.run(
        [str(python), str(SCRIPTS / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise PeerError(f"{name} {script} {' '.join(args)} failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result
