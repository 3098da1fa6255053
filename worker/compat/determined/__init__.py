"""``determined``, inside a Rung trial: Rung's Core API under Determined's name.

A Determined script or config names Determined's modules in places other than its
import line: Determined's own stage-4 tutorial starts its ranks with
``python3 -m determined.launch.wrap_rank``, and configs say
``entrypoint: python3 -m determined.launch.torch_distributed -- python3 train.py``. The
worker puts the directory above this package on each trial's ``PYTHONPATH``, so those
run on Rung unchanged, and so does ``import determined as det``. Only Rung's Core API is
here (``core``, ``get_cluster_info``, ``InvalidHP``, ``launch``): a trial that imports
another part of Determined is told that Rung does not have it.

Inside a trial this package comes before an installed Determined (which could not reach
a Determined master from a Rung worker anyway). It is never installed as a top-level
package: Rung installs one top-level name, ``rung``.
"""

import sys

try:
    from rung import core
    from rung.worker.core import LOG_FORMAT, ClusterInfo, InvalidHP, TrialInfo, get_cluster_info
except ModuleNotFoundError as exc:  # an interpreter without Rung
    if exc.name not in ("rung", None) and not str(exc.name).startswith("rung."):
        raise  # Rung is there, and misses something of its own
    raise ModuleNotFoundError(
        f"determined is Rung's inside a Rung trial, and {sys.executable} cannot import "
        f"rung ({exc}); start the trial's processes with the interpreter Rung is installed "
        "in (python3 on the trial's PATH is that one)"
    ) from exc

__all__ = ["LOG_FORMAT", "ClusterInfo", "InvalidHP", "TrialInfo", "core", "get_cluster_info"]
