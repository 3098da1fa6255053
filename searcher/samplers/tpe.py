"""``tpe``: a multivariate tree-structured Parzen estimator, per rung (BOHB-style).

At the target length (the longest with ``min_results`` results, as in BOHB), the
results are split into the best ``gamma`` share ("good", at least ``min(n // 2, dims +
1)`` of them) and the rest ("bad"). Each side is a product-kernel density over the
encoded space: a Gaussian per number (Scott's bandwidth, at least 1/50 of the range, and
for an ``int`` at least half a step) and an Aitchison-Aitken kernel per categorical,
plus a uniform prior component, so no point has zero density. Candidates are drawn from
the good density with its bandwidths times ``bandwidth_factor``, and the one with the
largest ratio of good to bad density is chosen. Densities model categorical and mixed
spaces well, where a GP's distances do not.

Results of other lengths never enter the densities: BOHB's rule, which keeps
low-fidelity noise out of the model once a longer length has enough results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from rung.searcher.config import Hyperparameters, IntHP, TPESamplerConfig
from rung.searcher.samplers.base import SamplerData, Suggested, Suggestion, sampler_rng
from rung.searcher.samplers.encoding import FloatArray, IntArray
from rung.searcher.samplers.model_based import ModelSampler, RungData

__all__ = ["TPESampler"]

# The newest results of the target rung a density is built from: bounded cost.
_MAX_DATA = 1_000
# Kernel evaluations held at once (candidates x results x dimensions).
_CELLS = 4_000_000


@dataclass(frozen=True, slots=True)
class _Density:
    units: FloatArray  # (n, numbers)
    picks: IntArray  # (n, choices)
    bandwidths: FloatArray  # (numbers,)
    mix: FloatArray  # (choices,): the chance a categorical kernel moves off its value
    sizes: tuple[int, ...]

    def log_pdf(self, units: FloatArray, picks: IntArray) -> FloatArray:
        """Log density of each row: a mixture over the kernels and the uniform prior."""
        n = self.units.shape[0]
        rows = max(1, _CELLS // max(n * max(units.shape[1], 1), 1))
        if units.shape[0] > rows:  # in chunks: memory stays bounded
            return np.concatenate(
                [
                    self.log_pdf(units[i : i + rows], picks[i : i + rows])
                    for i in range(0, units.shape[0], rows)
                ]
            )
        log_k = np.zeros((units.shape[0], n))
        if units.shape[1]:
            diff = (units[:, None, :] - self.units[None, :, :]) / self.bandwidths
            log_k += (-0.5 * diff * diff - np.log(self.bandwidths * math.sqrt(2 * math.pi))).sum(2)
        for column, size in enumerate(self.sizes):
            same = picks[:, column][:, None] == self.picks[:, column][None, :]
            stay, move = 1.0 - self.mix[column], self.mix[column] / (size - 1)
            log_k += np.where(same, math.log(stay), math.log(move))
        # The uniform prior's density is 1 over the unit cube times 1/size per choice.
        prior = -sum(math.log(size) for size in self.sizes)
        stacked = np.concatenate(
            [log_k - math.log(n + 1), np.full((units.shape[0], 1), prior - math.log(n + 1))],
            axis=1,
        )
        top = stacked.max(1, keepdims=True)
        total: FloatArray = (top + np.log(np.exp(stacked - top).sum(1, keepdims=True)))[:, 0]
        return total


class TPESampler(ModelSampler):
    name: ClassVar[str] = "tpe"
    config: TPESamplerConfig

    def __init__(self, config: TPESamplerConfig, hps: Hyperparameters) -> None:
        super().__init__(config, hps)

    def _density(self, units: FloatArray, picks: IntArray) -> _Density:
        n, dims = units.shape[0], self.encoder.dims
        factor = n ** (-1.0 / (dims + 4))
        spread = units.std(0) if n > 1 else np.full(units.shape[1], 0.5)
        floors = np.array(
            [
                max(0.02, 0.5 / (num.hp.maxval - num.hp.minval))
                if isinstance(num.hp, IntHP)
                else 0.02
                for num in self.encoder.numbers
            ]
        )
        bandwidths = np.maximum(spread * factor, floors)
        sizes = tuple(self.encoder.sizes)
        mix = np.array([min(factor, 1.0) * (size - 1) / size for size in sizes])
        return _Density(units, picks, bandwidths, mix, sizes)

    def model_suggestion(
        self, index: int, data: SamplerData, rungs: RungData, target: int
    ) -> Suggested:
        results = sorted(
            rungs.by_length[target][-_MAX_DATA:],
            key=lambda r: (r.value is None, r.value if r.value is not None else 0.0, r.index),
        )
        n = len(results)
        good_count = max(math.ceil(self.config.gamma * n), min(n // 2, self.encoder.dims + 1), 1)
        good_count = min(good_count, n - 1)
        units, picks = self.encoded(data, [r.index for r in results])
        good = self._density(units[:good_count], picks[:good_count])
        bad = self._density(units[good_count:], picks[good_count:])
        rng = sampler_rng(data.seed, index, "candidates")
        c_units, c_picks = self._draw(rng, good)
        ratio = good.log_pdf(c_units, c_picks) - bad.log_pdf(c_units, c_picks)
        best = int(np.argmax(ratio))
        return Suggested(
            self.encoder.decode(c_units[best], c_picks[best]),
            Suggestion(
                sampler=self.name,
                version=self.version,
                kind="model",
                length=target,
                results=n,
                pending=0,
                score=round(float(ratio[best]), 6),
                note=f"log density ratio (best {good_count} of {n})",
            ),
        )

    def _draw(self, rng: np.random.Generator, good: _Density) -> tuple[FloatArray, IntArray]:
        """Candidates from the good density, its bandwidths widened."""
        count = self.config.candidates
        origin = rng.integers(0, good.units.shape[0], size=count)
        widths = good.bandwidths * self.config.bandwidth_factor
        units = (
            good.units[origin] + rng.normal(0.0, 1.0, size=(count, good.units.shape[1])) * widths
        )
        picks = good.picks[origin].copy()
        for column, size in enumerate(good.sizes):
            move = rng.random(count) < min(
                good.mix[column] * self.config.bandwidth_factor, (size - 1) / size
            )
            picks[:, column] = np.where(move, rng.integers(0, size, size=count), picks[:, column])
        return self.encoder.snap(np.clip(units, 0.0, 1.0), picks)
