"""The ``searcher`` section: one model per search method, chosen by ``name``."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    BeforeValidator,
    Discriminator,
    Field,
    JsonValue,
    StrictBool,
    StrictInt,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError

from rung.broker.limits import is_uuid
from rung.searcher.config._model import ConfigModel, record_warning, rule_error
from rung.searcher.config.length import Length
from rung.searcher.config.samplers import RandomSamplerConfig, SamplerConfig

__all__ = [
    "MAX_GRID_POINTS",
    "SEARCHER_NAMES",
    "AdaptiveASHASearcher",
    "AdaptiveMode",
    "AsyncHalvingSearcher",
    "CustomSearcher",
    "ExploreFunction",
    "GridSearcher",
    "PBTMode",
    "PBTSearcher",
    "RandomSearcher",
    "ReplaceFunction",
    "SearcherConfig",
    "SingleSearcher",
]

SEARCHER_NAMES = ("single", "random", "grid", "async_halving", "adaptive_asha", "pbt", "custom")
_ALIASES = {"asha": "async_halving"}

# The most points a ``grid`` searcher may have: each point is a trial trained to
# ``max_length``. Points are computed one at a time, so the cap is about the search's
# cost and its log, not the searcher's memory.
MAX_GRID_POINTS = 100_000

_PositiveInt = Annotated[StrictInt, Field(ge=1)]
_Concurrency = Annotated[StrictInt, Field(ge=0)]
_Divisor = Annotated[float, Field(gt=1, allow_inf_nan=False)]


class AdaptiveMode(StrEnum):
    AGGRESSIVE = "aggressive"
    STANDARD = "standard"
    CONSERVATIVE = "conservative"


class PBTMode(StrEnum):
    SYNCHRONOUS = "synchronous"
    ASYNCHRONOUS = "asynchronous"


class _Searcher(ConfigModel):
    yaml_path: ClassVar[str] = "searcher"
    determined_only: ClassVar[dict[str, str]] = {
        "time_metric": "Rung drives training by absolute lengths (op.length), as Determined 0.37",
        "max_time": "set max_length instead",
    }

    metric: str
    smaller_is_better: StrictBool = True
    source_trial_id: _PositiveInt | None = None
    source_checkpoint_uuid: str | None = None

    @classmethod
    def prepare(cls, data: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """Determined 0.38 configs give ``max_time`` where 0.37 ones give ``max_length``."""
        if "max_length" not in data and "max_time" in data:
            data = dict(data)
            data["max_length"] = data.pop("max_time")
            record_warning(
                info,
                "searcher.max_time: read as searcher.max_length; Rung trains to the "
                "absolute lengths of its operations, as Determined 0.37 did",
            )
        return data

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        uuid = self.source_checkpoint_uuid
        if uuid is not None and not is_uuid(uuid):
            raise rule_error(
                f"must be a checkpoint uuid in lowercase canonical form (as uuid.uuid4() "
                f"prints it), got {uuid!r}; copy latest_checkpoint from "
                "rung experiment describe --json",
                "source_checkpoint_uuid",
            )
        if self.source_trial_id is not None and self.source_checkpoint_uuid is not None:
            raise rule_error(
                "set at most one of source_trial_id and source_checkpoint_uuid, got both; "
                "keep the one every trial should warm-start from",
                "source_checkpoint_uuid",
            )
        return self


class SingleSearcher(_Searcher):
    """One trial; non-constant hyperparameters are sampled once."""

    name: Literal["single"]
    max_length: Length


def _random_sampler() -> SamplerConfig:
    return RandomSamplerConfig(name="random")


class _Sampled(_Searcher):
    """A searcher that creates trials: ``sampler`` chooses their hyperparameters."""

    sampler: SamplerConfig = Field(default_factory=_random_sampler)


class RandomSearcher(_Sampled):
    name: Literal["random"]
    max_length: Length
    max_trials: _PositiveInt
    max_concurrent_trials: _Concurrency = 16


class GridSearcher(_Searcher):
    """Every point of the grid, once; at most :data:`MAX_GRID_POINTS` points.

    Determined's grid takes no ``max_trials``. Rung reads one only to refuse it with the
    size of the grid (the experiment's checks), since it would not limit the search.
    """

    name: Literal["grid"]
    max_length: Length
    max_concurrent_trials: _Concurrency = 16
    max_trials: StrictInt | None = Field(default=None, exclude=True)

    @classmethod
    def _unknown_keys_error(cls, unknown: list[str], known: list[str]) -> PydanticCustomError:
        return super()._unknown_keys_error(unknown, [k for k in known if k != "max_trials"])


class AsyncHalvingSearcher(_Sampled):
    """ASHA; promotion-based unless ``stop_once`` (Determined 0.37's default)."""

    name: Literal["async_halving"]
    max_length: Length
    max_trials: _PositiveInt
    num_rungs: _PositiveInt
    divisor: _Divisor = 4.0
    max_concurrent_trials: _Concurrency = 16
    stop_once: StrictBool = False


class AdaptiveASHASearcher(_Sampled):
    name: Literal["adaptive_asha"]
    max_length: Length
    max_trials: _PositiveInt
    bracket_rungs: list[_PositiveInt] = Field(default_factory=list)
    mode: AdaptiveMode = AdaptiveMode.STANDARD
    divisor: _Divisor = 4.0
    max_rungs: _PositiveInt = 5
    max_concurrent_trials: _Concurrency = 16
    stop_once: StrictBool = False


class ReplaceFunction(ConfigModel):
    """``searcher.replace_function``: which trials copy others at the end of a round."""

    yaml_path: ClassVar[str] = "searcher.replace_function"

    # The share of the population replaced each round: the worst this share of trials
    # are closed, and as many copies of the best ones take their places.
    truncate_fraction: Annotated[float, Field(gt=0, le=0.5, allow_inf_nan=False)]


class ExploreFunction(ConfigModel):
    """``searcher.explore_function``: how a copy's hyperparameters differ from its source's."""

    yaml_path: ClassVar[str] = "searcher.explore_function"

    # The chance that a value is drawn again from its space rather than perturbed.
    resample_probability: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
    # Numbers are multiplied by 1 + perturb_factor or 1 - perturb_factor.
    perturb_factor: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]


# The largest population: every member is a trial that trains every round.
MAX_POPULATION = 10_000


class PBTSearcher(_Searcher):
    """Population-based training, with Determined's fields (its ``pbt`` searcher until
    0.18) and an asynchronous mode as in Ray Tune; see docs/config.md."""

    name: Literal["pbt"]
    population_size: Annotated[StrictInt, Field(ge=2, le=MAX_POPULATION)]
    num_rounds: Annotated[StrictInt, Field(ge=1, le=100_000)]
    length_per_round: Length
    # Synchronous mode: required. Asynchronous mode: its truncate_fraction may give the
    # cut instead of quantile_fraction (not both).
    replace_function: ReplaceFunction | None = None
    explore_function: ExploreFunction
    mode: PBTMode = PBTMode.SYNCHRONOUS
    # Asynchronous mode: a trial in the bottom quantile_fraction of the latest results
    # copies one of the top quantile_fraction (Ray Tune's default, 0.25).
    quantile_fraction: Annotated[float, Field(gt=0, le=0.5, allow_inf_nan=False)] | None = None
    # Synchronous mode: seconds a round may stay open; then its stragglers are closed and
    # count as the worst of the round. None: no limit.
    round_timeout: Annotated[float, Field(gt=0, le=7 * 86_400, allow_inf_nan=False)] | None = None
    max_concurrent_trials: _Concurrency = 16

    @property
    def max_length(self) -> Length:
        """The length every member reaches in the last round (``num_rounds`` rounds)."""
        per_round = self.length_per_round
        return Length(unit=per_round.unit, units=per_round.units * self.num_rounds)

    @property
    def quantile(self) -> float:
        """The asynchronous mode's cut: ``quantile_fraction``, or
        ``replace_function.truncate_fraction``, or 0.25 (Ray Tune's default)."""
        if self.quantile_fraction is not None:
            return self.quantile_fraction
        if self.replace_function is not None:
            return self.replace_function.truncate_fraction
        return 0.25

    @property
    def truncate_fraction(self) -> float:
        """The synchronous mode's cut (validated present in that mode)."""
        assert self.replace_function is not None  # noqa: S101 (checked by _pbt_rules)
        return self.replace_function.truncate_fraction

    @model_validator(mode="after")
    def _pbt_rules(self) -> Self:
        population = self.population_size
        synchronous = self.mode is PBTMode.SYNCHRONOUS
        if synchronous and self.replace_function is None:
            raise rule_error(
                "required in mode: synchronous (the share of the population replaced each "
                "round), but missing; add replace_function: {truncate_fraction: 0.25}",
                "replace_function",
            )
        both = self.replace_function is not None and self.quantile_fraction is not None
        if not synchronous and both:
            truncate = self.replace_function.truncate_fraction  # type: ignore[union-attr]
            if truncate != self.quantile_fraction:
                raise rule_error(
                    "set at most one of quantile_fraction and "
                    "replace_function.truncate_fraction in mode: asynchronous (both give the "
                    f"cut), got {self.quantile_fraction:g} and {truncate:g}; keep one",
                    "quantile_fraction",
                )
        fraction = self.quantile
        if synchronous and int(population * fraction) < 1:
            raise rule_error(
                f"must replace at least one trial a round: int(population_size * "
                f"truncate_fraction) is int({population} * {fraction:g}) = 0; raise "
                f"truncate_fraction to at least {1 / population:.3g} or the population",
                "replace_function.truncate_fraction",
            )
        if synchronous and self.quantile_fraction is not None:
            raise rule_error(
                "is read in mode: asynchronous only; synchronous rounds replace the "
                f"replace_function.truncate_fraction ({fraction:g}) worst, got "
                f"quantile_fraction: {self.quantile_fraction:g}; remove it, or set "
                "mode: asynchronous",
                "quantile_fraction",
            )
        if not synchronous and self.round_timeout is not None:
            raise rule_error(
                "applies to mode: synchronous only (asynchronous trials never wait for a "
                f"round), got round_timeout: {self.round_timeout:g}; remove it, or set "
                "mode: synchronous",
                "round_timeout",
            )
        total = self.length_per_round.units * self.num_rounds
        if total > 2**53:
            raise rule_error(
                f"length_per_round * num_rounds must be at most 2**53, got "
                f"{self.length_per_round.units} * {self.num_rounds} = {total}; lower one of them",
                "num_rounds",
            )
        return self


class CustomSearcher(_Sampled):
    """A user's search method, loaded from the experiment's context directory.

    Keys other than the ones below are handed to the class as ``options``.
    """

    name: Literal["custom"]
    class_: str = Field(alias="class", pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    metric: str = ""
    max_length: Length | None = None
    max_trials: _PositiveInt | None = None
    max_concurrent_trials: _Concurrency = 16
    unit: Literal["batches", "records", "epochs"] | None = None
    options: dict[str, JsonValue] = Field(default_factory=dict)

    @classmethod
    def prepare(cls, data: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        data = super().prepare(data, info)
        known = set(cls.known_keys()) | set(cls.determined_only)
        extra = {k: v for k, v in data.items() if k not in known}
        if not extra:
            return data
        kept = {k: v for k, v in data.items() if k in known}
        kept["options"] = {**kept.get("options", {}), **extra}
        return kept


def _canonical_name(data: Any) -> Any:
    if isinstance(data, dict) and data.get("name") in _ALIASES:
        return {**data, "name": _ALIASES[data["name"]]}
    return data


SearcherConfig = Annotated[
    SingleSearcher
    | RandomSearcher
    | GridSearcher
    | AsyncHalvingSearcher
    | AdaptiveASHASearcher
    | PBTSearcher
    | CustomSearcher,
    Discriminator("name"),
    BeforeValidator(_canonical_name),
]
