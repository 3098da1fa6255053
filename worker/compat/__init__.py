"""Names other systems use, put on a trial's ``PYTHONPATH`` by the worker (never
installed as top-level packages): see :mod:`rung.worker.compat.determined`."""

from pathlib import Path
from typing import Final

__all__ = ["COMPAT_PATH"]

# The directory a trial's PYTHONPATH gets: ``determined`` is importable from it.
COMPAT_PATH: Final = str(Path(__file__).resolve().parent)
