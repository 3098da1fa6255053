"""``lrsched``: an objective where the schedule matters, for population-based training.

A model trained by noisy gradient descent: each unit of length with learning rate ``lr``
takes the loss ``L`` to ``L * (1 - A * lr) + B * lr**2``. A large rate learns fast but
settles at a high floor (``B * lr / A``); a small one settles low but slowly. So the best
constant rate for a short run is larger than for a long one, and a rate that starts high
and decays beats every constant: what PBT can find and a search over constants cannot.
``x`` in [0, 1] scales the loss by ``1 + (x - 0.3)**2`` (a constant with one best value).

:meth:`LRSchedule.evaluate_path` gives the loss after a sequence of segments, each trained
with its own hyperparameters (a trial and the sources it was copied from);
:meth:`LRSchedule.evaluate` is one segment from the start.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rung.searcher.errors import SimulationError
from rung.searcher.space import flatten

__all__ = ["LRSchedule", "Segment"]

# (hyperparameters, start length, end length)
Segment = tuple[Mapping[str, Any], int, int]

_A = 0.5
_B = 0.05
_X_BEST = 0.3


@dataclass(frozen=True)
class LRSchedule:
    name: str = "lrsched"
    max_length: int | None = 1000
    # Unknown in closed form; regret is not reported for this benchmark.
    optimum: float | None = None

    def _params(self, hparams: Mapping[str, Any]) -> tuple[float, float]:
        flat = flatten(hparams)
        try:
            lr = float(flat["lr"])
            x = float(flat.get("x", _X_BEST))
        except (KeyError, TypeError, ValueError) as exc:
            raise SimulationError(
                f"benchmark {self.name} needs a numeric hyperparameter lr in (0, 1] (and "
                f"optionally x in [0, 1]), got {sorted(flat)}; see "
                "examples/simulate/lrsched_pbt.yaml"
            ) from exc
        if not 0 < lr <= 1 or not math.isfinite(x):
            raise SimulationError(f"benchmark {self.name} needs lr in (0, 1], got lr={lr!r}")
        return lr, x

    def evaluate_path(self, segments: Sequence[Segment]) -> float:
        loss = 1.0
        scale = 1.0
        for hparams, start, end in segments:
            if end < start:
                raise SimulationError(f"a segment ends before it starts: {start} to {end}")
            lr, x = self._params(hparams)
            floor = _B * lr / _A
            loss = floor + (loss - floor) * (1 - _A * lr) ** (end - start)
            scale = 1 + (x - _X_BEST) ** 2
        return loss * scale

    def evaluate(self, hparams: Mapping[str, Any], length: int) -> float:
        return self.evaluate_path([(hparams, 0, length)])
