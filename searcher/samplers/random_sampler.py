"""``random``: every trial drawn independently from the space, as Determined does.

It keeps nothing and answers None, so the experiment draws the trial's hyperparameters
from the trial's own generator (:func:`rung.searcher.space.draw_trial`): an experiment
with this sampler decides and logs exactly what it did before samplers existed.
"""

from __future__ import annotations

from typing import ClassVar

from rung.searcher.samplers.base import Sampler, SamplerData, Suggested

__all__ = ["RandomSampler"]


class RandomSampler(Sampler):
    name: ClassVar[str] = "random"
    keeps_results: ClassVar[bool] = False

    def suggest(self, index: int, data: SamplerData) -> Suggested | None:
        return None
