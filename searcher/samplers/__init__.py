"""Samplers: what to try next, apart from the scheduler that decides when to stop.

``build_sampler`` turns ``searcher.sampler`` into its sampler. Every search method that
creates trials through ``ctx.create()`` (random, ASHA, adaptive ASHA, custom methods)
gets its hyperparameters from the experiment's sampler.
"""

from __future__ import annotations

from rung.searcher.config import (
    ExperimentConfig,
    GPSamplerConfig,
    GridSearcher,
    PBTSearcher,
    SingleSearcher,
    TPESamplerConfig,
)
from rung.searcher.samplers.base import (
    Pending,
    Result,
    Sampler,
    SamplerData,
    SamplerState,
    Suggested,
    Suggestion,
    sampler_rng,
)
from rung.searcher.samplers.encoding import Encoder
from rung.searcher.samplers.gp import GPSampler
from rung.searcher.samplers.random_sampler import RandomSampler
from rung.searcher.samplers.tpe import TPESampler

__all__ = [
    "Encoder",
    "GPSampler",
    "Pending",
    "RandomSampler",
    "Result",
    "Sampler",
    "SamplerData",
    "SamplerState",
    "Suggested",
    "Suggestion",
    "TPESampler",
    "build_sampler",
    "sampler_rng",
]


def build_sampler(config: ExperimentConfig) -> Sampler:
    """The sampler ``config.searcher.sampler`` names (random for single, grid and pbt,
    whose population starts at random and then explores from its best members)."""
    searcher = config.searcher
    if isinstance(searcher, SingleSearcher | GridSearcher | PBTSearcher):
        return RandomSampler()
    match searcher.sampler:
        case GPSamplerConfig() as options:
            return GPSampler(options, config.hyperparameters)
        case TPESamplerConfig() as options:
            return TPESampler(options, config.hyperparameters)
        case _:
            return RandomSampler()
