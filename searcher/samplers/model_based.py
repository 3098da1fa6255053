"""What the ``gp`` and ``tpe`` samplers share: the start, the random share, the rungs.

A suggestion for trial ``index`` is, in this order:

1. **initial**: while fewer than ``initial_points`` trials were suggested, or no length
   has ``min_results`` results yet, point ``index`` of a scrambled Sobol sequence seeded
   from the experiment seed. Concurrent trials get distinct, space-filling points, one
   per worker, not independent draws that may fall together.
2. **random**: with probability ``random_fraction`` (decided by the index's own
   generator), a uniform draw from the space, so the search keeps exploring.
3. **model**: the model's pick, fitted on the results kept per length ("rung").

Results are pooled from every trial and every bracket, but always per length: values of
different lengths are never put in one dataset as they are. Within a length, values are
standardised (a failed trial takes the worst value, absurd outliers are clipped), which
makes lengths comparable and keeps how much better the best results are.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from rung.searcher.config import GPSamplerConfig, Hyperparameters, TPESamplerConfig
from rung.searcher.samplers.base import (
    Result,
    Sampler,
    SamplerData,
    Suggested,
    Suggestion,
    sampler_rng,
)
from rung.searcher.samplers.encoding import Encoder, FloatArray, IntArray

__all__ = ["ModelSampler", "RungData", "rung_data", "standard_scores"]


def standard_scores(values: Sequence[float | None]) -> FloatArray:
    """The values of one length standardised: mean 0, deviation 1, magnitudes kept.

    A failed trial (None) takes the worst value of the length. Values more than three
    interquartile ranges above the upper quartile, or twenty below the lower one, are
    clipped there first, so one absurd result (1e300) does not flatten all the others,
    and nothing overflows however large the values are.
    """
    n = len(values)
    finite = [v for v in values if v is not None]
    if n < 2 or not finite:
        return np.zeros(n, dtype=np.float64)
    worst = max(finite)
    raw = np.array([worst if v is None else v for v in values], dtype=np.float64)
    middle = float(np.median(raw))
    scale = float(np.abs(raw - middle).max())
    if scale == 0 or not math.isfinite(scale):
        return np.zeros(n, dtype=np.float64)
    unit = (raw - middle) / scale  # in [-1, 1]: safe to square
    q1, q3 = np.percentile(unit, [25, 75])
    spread = q3 - q1
    if spread > 0:
        unit = np.clip(unit, q1 - 20 * spread, q3 + 3 * spread)
    deviation = float(unit.std())
    if deviation == 0:
        return np.zeros(n, dtype=np.float64)
    scores: FloatArray = (unit - unit.mean()) / deviation
    return scores


@dataclass(frozen=True, slots=True)
class RungData:
    """The latest result of each trial at each length, grouped by length."""

    by_length: dict[int, list[Result]]

    def counts(self) -> dict[int, int]:
        return {length: len(results) for length, results in self.by_length.items()}


def rung_data(results: Sequence[Result]) -> RungData:
    by_key: dict[tuple[int, int], Result] = {}
    for result in results:
        by_key.pop((result.length, result.index), None)
        by_key[(result.length, result.index)] = result  # the latest, in log order
    by_length: dict[int, list[Result]] = {}
    for (length, _), result in by_key.items():
        by_length.setdefault(length, []).append(result)
    return RungData(dict(sorted(by_length.items())))


class ModelSampler(Sampler):
    """The initial design, the random share and the choice of rung; models go below."""

    config: GPSamplerConfig | TPESamplerConfig
    kind_name: ClassVar[str]

    def __init__(self, config: GPSamplerConfig | TPESamplerConfig, hps: Hyperparameters) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(hps)

    def min_results(self) -> int:
        return self.config.min_results or self.encoder.dims + 2

    def initial_points(self, data: SamplerData) -> int:
        return self.config.initial_points or max(data.concurrency, self.encoder.dims + 1)

    def target_length(self, rungs: RungData) -> int | None:
        """The longest length with enough results to fit a model on."""
        enough = [length for length, n in rungs.counts().items() if n >= self.min_results()]
        return max(enough) if enough else None

    def suggest(self, index: int, data: SamplerData) -> Suggested | None:
        if self.encoder.dims == 0:
            return None  # nothing varies: the random draw is the only point
        rungs = rung_data(self.state.results)
        target = self.target_length(rungs)
        start = self.initial_points(data)
        if index < start or target is None:
            why = (
                f"Sobol point {index + 1} of the {start}-point start"
                if index < start
                else f"Sobol point {index + 1}: no length has {self.min_results()} results yet"
            )
            return self._initial(index, data, why)
        if sampler_rng(data.seed, index, "share").random() < self.config.random_fraction:
            units, picks = self.encoder.uniform(sampler_rng(data.seed, index, "random"), 1)
            share = self.config.random_fraction
            note = f"1 in {round(1 / share)} suggestions" if share > 0 else ""
            return Suggested(
                self.encoder.decode(units[0], picks[0]),
                Suggestion(sampler=self.name, version=self.version, kind="random", note=note),
            )
        try:
            with np.errstate(over="raise", divide="raise", invalid="raise", under="ignore"):
                return self.model_suggestion(index, data, rungs, target)
        except (ArithmeticError, ValueError, np.linalg.LinAlgError) as exc:
            # A model that cannot be fitted (degenerate data) must not fail the search:
            # this trial is drawn at random, and the reason is logged with it.
            units, picks = self.encoder.uniform(sampler_rng(data.seed, index, "random"), 1)
            return Suggested(
                self.encoder.decode(units[0], picks[0]),
                Suggestion(
                    sampler=self.name,
                    version=self.version,
                    kind="random",
                    length=target,
                    note=f"the model failed at length {target} ({type(exc).__name__}: {exc})"[:300],
                ),
            )

    def _initial(self, index: int, data: SamplerData, why: str) -> Suggested:
        from scipy.stats import qmc  # noqa: PLC0415 (1 s to import: only when sampling)

        sobol = qmc.Sobol(
            d=self.encoder.dims, scramble=True, seed=sampler_rng(data.seed, 0, "sobol")
        )
        if index:
            sobol.fast_forward(index)
        units, picks = self.encoder.from_cube(sobol.random(1))
        return Suggested(
            self.encoder.decode(units[0], picks[0]),
            Suggestion(sampler=self.name, version=self.version, kind="initial", note=why),
        )

    def encoded(self, data: SamplerData, indices: Sequence[int]) -> tuple[FloatArray, IntArray]:
        """The encoded points of trials ``indices``."""
        rows = [self.encoder.encode(data.hparams_of(i)) for i in indices]
        units = np.array([r[0] for r in rows], dtype=np.float64).reshape(len(rows), -1)
        picks = np.array([r[1] for r in rows], dtype=np.int64).reshape(len(rows), -1)
        return units, picks

    @abstractmethod
    def model_suggestion(
        self, index: int, data: SamplerData, rungs: RungData, target: int
    ) -> Suggested: ...


def log_length(length: int, max_length: float) -> float:
    """A length as a fidelity in ``[0, 1]``: its log over the log of the longest."""
    if max_length <= 1:
        return 1.0
    return min(math.log(max(length, 1)) / math.log(max_length), 1.0)


def describe_state(sampler: Sampler) -> dict[str, Any]:
    """For tests and the CLI: how many results the sampler holds, per length."""
    return {"results": rung_data(sampler.state.results).counts()}
