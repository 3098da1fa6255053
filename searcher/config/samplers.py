"""``searcher.sampler``: what to try next, apart from when to stop or promote.

A string names a sampler with its default options (``sampler: gp``); an object gives
options (``sampler: {name: gp, random_fraction: 0.2}``). ``random``, the default, is
what Determined does: every trial's hyperparameters drawn independently from the space.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Discriminator, Field, StrictInt
from pydantic_core import PydanticCustomError

from rung.searcher.config._model import ConfigModel, rule_error

__all__ = [
    "SAMPLER_NAMES",
    "GPSamplerConfig",
    "RandomSamplerConfig",
    "SamplerConfig",
    "TPESamplerConfig",
]

SAMPLER_NAMES = ("random", "tpe", "gp")

# The largest candidates x max_data^2 of a gp sampler: scoring a candidate costs a
# triangular solve against the data (512 x 512^2 takes about 0.1 s on one core).
GP_MAX_COST = 512 * 512**2

_Fraction = Annotated[float, Field(ge=0, le=0.9, allow_inf_nan=False)]


class _Sampler(ConfigModel):
    yaml_path: ClassVar[str] = "searcher.sampler"


class RandomSamplerConfig(_Sampler):
    """Independent draws from the space (Determined's behaviour)."""

    name: Literal["random"]


class _ModelSampler(_Sampler):
    # The share of suggestions drawn at random once the model is in use, so the search
    # keeps exploring whatever the model believes.
    random_fraction: _Fraction = 0.1
    # Quasi-random (Sobol) points before the model is used; None: the larger of the
    # concurrency cap and the number of dimensions plus one.
    initial_points: Annotated[StrictInt, Field(ge=1, le=10_000)] | None = None
    # Results a rung needs before a model is fitted on it; None: dimensions plus two.
    min_results: Annotated[StrictInt, Field(ge=2, le=10_000)] | None = None
    # Candidate points scored per suggestion.
    candidates: Annotated[StrictInt, Field(ge=8, le=10_000)] = 512


class GPSamplerConfig(_ModelSampler):
    """A multi-fidelity Gaussian process with expected improvement (MOBSTER-style)."""

    name: Literal["gp"]
    # The most results the model is fitted on; the cost of a suggestion grows with the
    # cube of it.
    max_data: Annotated[StrictInt, Field(ge=16, le=1_000)] = 256

    def rule_problems(self) -> list[PydanticCustomError]:
        cost = self.candidates * self.max_data**2
        if cost <= GP_MAX_COST:
            return []
        return [
            rule_error(
                f"candidates x max_data^2 is what a suggestion costs the searcher, at most "
                f"{GP_MAX_COST:,} (4 times the default's); got {self.candidates} x "
                f"{self.max_data}^2 = {cost:,}; lower candidates or max_data",
                "candidates",
            )
        ]


class TPESamplerConfig(_ModelSampler):
    """A multivariate tree-structured Parzen estimator, per rung (BOHB-style)."""

    name: Literal["tpe"]
    candidates: Annotated[StrictInt, Field(ge=8, le=10_000)] = 64
    # The share of a rung's results that form the "good" density.
    gamma: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)] = 0.15
    # Candidates are drawn from the good density with its bandwidth times this.
    bandwidth_factor: Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)] = 3.0


def _from_name(data: Any) -> Any:
    return {"name": data} if isinstance(data, str) else data


SamplerConfig = Annotated[
    RandomSamplerConfig | GPSamplerConfig | TPESamplerConfig,
    Discriminator("name"),
    BeforeValidator(_from_name),
]
