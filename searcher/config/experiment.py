"""The whole experiment config, as Determined's experiment YAML spells it."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import Field, JsonValue, StrictInt, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

from rung.broker.limits import MAX_SLOTS_PER_TRIAL
from rung.searcher.config._model import ConfigModel, rule_error
from rung.searcher.config.hyperparameters import (
    CategoricalHP,
    ConstHP,
    Hyperparameter,
    Hyperparameters,
    NestedHP,
    NumericHP,
)
from rung.searcher.config.searchers import (
    MAX_GRID_POINTS,
    AdaptiveASHASearcher,
    AsyncHalvingSearcher,
    GridSearcher,
    SearcherConfig,
)
from rung.searcher.rungs import rung_lengths

__all__ = [
    "CheckpointStorage",
    "ExperimentConfig",
    "Reproducibility",
    "Resources",
    "iter_leaves",
]

_NonNegative = Annotated[StrictInt, Field(ge=0)]
_SEED_LIMIT = 2**32
_STORAGE_TYPES = ("shared_fs", "directory")


class CheckpointStorage(ConfigModel):
    """Where checkpoints live, and how many the garbage collector keeps."""

    yaml_path: ClassVar[str] = "checkpoint_storage"
    determined_only: ClassVar[dict[str, str]] = {
        "propagation": "bind mounts are not used",
        "checkpoint_path": "checkpoints go under host_path/storage_path",
        "tensorboard_path": "TensorBoard files are not managed by Rung",
    }

    type: Literal["shared_fs", "directory"]
    host_path: str | None = None
    storage_path: str | None = None
    container_path: str | None = None
    save_experiment_best: _NonNegative = 0
    save_trial_best: _NonNegative = 1
    save_trial_latest: _NonNegative = 1

    @classmethod
    def prepare(cls, data: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """Name an unsupported storage type before complaining about its keys."""
        if data.get("type") not in (None, *_STORAGE_TYPES):
            raise rule_error(
                f"storage type {data['type']!r} is not supported yet; use shared_fs "
                "(a directory that every worker sees) or directory",
                "type",
            )
        return data

    @model_validator(mode="after")
    def _required_paths(self) -> Self:
        if self.type == "shared_fs":
            if not self.host_path:
                raise rule_error(
                    "required by type shared_fs: the directory every worker mounts; "
                    "add host_path: /path/to/shared/checkpoints",
                    "host_path",
                )
        elif not self.container_path:
            raise rule_error(
                "required by type directory; add container_path: /path/to/checkpoints",
                "container_path",
            )
        return self


class Resources(ConfigModel):
    yaml_path: ClassVar[str] = "resources"
    determined_only: ClassVar[dict[str, str]] = dict.fromkeys(
        (
            "max_slots",
            "priority",
            "weight",
            "resource_pool",
            "shm_size",
            "agent_label",
            "devices",
            "is_single_node",
            "native_parallel",
        ),
        "Rung schedules trials on worker slots only",
    )

    slots_per_trial: _NonNegative = 1

    @model_validator(mode="after")
    def _fits_a_bucket(self) -> Self:
        if self.slots_per_trial > MAX_SLOTS_PER_TRIAL:
            raise rule_error(
                f"at most {MAX_SLOTS_PER_TRIAL} (the largest work bucket, "
                f"MAX_SLOTS_PER_TRIAL), got {self.slots_per_trial}; ask for "
                f"{MAX_SLOTS_PER_TRIAL} slots or fewer",
                "slots_per_trial",
            )
        return self


class Reproducibility(ConfigModel):
    yaml_path: ClassVar[str] = "reproducibility"

    experiment_seed: Annotated[StrictInt, Field(ge=0, lt=_SEED_LIMIT)] | None = None


def iter_leaves(
    hps: Hyperparameters, prefix: str = ""
) -> Iterator[tuple[str, ConstHP | NumericHP | CategoricalHP]]:
    """Every leaf hyperparameter with its dotted name, in sorted name order."""
    for name in sorted(hps):
        hp: Hyperparameter = hps[name]
        dotted = f"{prefix}{name}"
        if isinstance(hp, NestedHP):
            yield from iter_leaves(hp.root, f"{dotted}.")
        else:
            yield dotted, hp


_NOT_IMPLEMENTED = "Rung does not implement it yet"


class ExperimentConfig(ConfigModel):
    """A Determined-style experiment config."""

    determined_only: ClassVar[dict[str, str]] = {
        "environment": "workers run the entrypoint in their own Python environment",
        "bind_mounts": "workers see their own file systems",
        "profiling": _NOT_IMPLEMENTED,
        "optimizations": _NOT_IMPLEMENTED,
        "min_validation_period": "validation happens when an operation completes",
        "min_checkpoint_period": "the training script decides when to checkpoint",
        "records_per_epoch": "lengths are in the unit of searcher.max_length",
        "scheduling_unit": "lengths are in the unit of searcher.max_length",
        "perform_initial_validation": _NOT_IMPLEMENTED,
        "checkpoint_policy": "the training script decides when to checkpoint",
        "preemption_timeout": "workers wait for the trial's checkpoint on preemption",
        "log_policies": _NOT_IMPLEMENTED,
        "project": _NOT_IMPLEMENTED,
        "workspace": _NOT_IMPLEMENTED,
        "tensorboard_storage": _NOT_IMPLEMENTED,
        "debug": _NOT_IMPLEMENTED,
        "integrations": _NOT_IMPLEMENTED,
        "pbs": _NOT_IMPLEMENTED,
        "slurm": _NOT_IMPLEMENTED,
    }

    name: str | None = None
    description: str | None = None
    labels: list[str] = Field(default_factory=list)
    data: dict[str, JsonValue] = Field(default_factory=dict)
    entrypoint: str | list[str] | None = None
    hyperparameters: Hyperparameters = Field(default_factory=dict)
    searcher: SearcherConfig
    max_restarts: _NonNegative = 5
    checkpoint_storage: CheckpointStorage | None = None
    resources: Resources = Field(default_factory=Resources)
    reproducibility: Reproducibility = Field(default_factory=Reproducibility)

    @property
    def experiment_seed(self) -> int | None:
        return self.reproducibility.experiment_seed

    def with_seed(self, seed: int) -> ExperimentConfig:
        """This config with ``reproducibility.experiment_seed`` set, so a run can be repeated."""
        return self.model_copy(
            update={"reproducibility": Reproducibility(experiment_seed=seed % _SEED_LIMIT)}
        )

    def rule_problems(self) -> list[PydanticCustomError]:
        problems = _name_clashes(self.hyperparameters)
        searcher = self.searcher
        if isinstance(searcher, GridSearcher):
            problems += _grid_problems(searcher, self.hyperparameters)
        if isinstance(searcher, AsyncHalvingSearcher):
            problems += _rung_problems(
                searcher.num_rungs,
                searcher.divisor,
                searcher.max_length.units,
                "searcher.num_rungs",
            )
        if isinstance(searcher, AdaptiveASHASearcher):
            for index, rungs in enumerate(searcher.bracket_rungs):
                problems += _rung_problems(
                    rungs,
                    searcher.divisor,
                    searcher.max_length.units,
                    f"searcher.bracket_rungs[{index}]",
                )
        return problems


def _dotted_names(hps: Hyperparameters, prefix: str = "") -> Iterator[str]:
    """The dotted name of every value a trial receives: each leaf, and each empty map."""
    for name, hp in hps.items():
        if isinstance(hp, NestedHP) and hp.root:
            yield from _dotted_names(hp.root, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def _name_clashes(hps: Hyperparameters) -> list[PydanticCustomError]:
    """Two values with one dotted name would be one value: ``a.b`` and ``a: {b: ...}``."""
    names = list(_dotted_names(hps))
    clashes = sorted({name for name in names if names.count(name) > 1})
    return [
        rule_error(
            f"two hyperparameters have the dotted name {name!r} (a nested map's leaves are "
            "named parent.child), got both; rename one of them",
            f"hyperparameters.{name}",
        )
        for name in clashes
    ]


def _grid_problems(searcher: GridSearcher, hps: Hyperparameters) -> list[PydanticCustomError]:
    problems = [
        rule_error(
            f"required by the grid searcher for type {hp.type}: the number of "
            f"grid points; add count: N to hyperparameters.{name}",
            f"hyperparameters.{name}.count",
        )
        for name, hp in iter_leaves(hps)
        if isinstance(hp, NumericHP) and hp.count is None
    ]
    axes = [(name, hp.grid_length()) for name, hp in iter_leaves(hps)]
    size = math.prod(length for _, length in axes)
    largest = sorted((a for a in axes if a[1] > 1), key=lambda a: (-a[1], a[0]))
    shown = " x ".join(f"{name}: {length}" for name, length in largest[:4])
    shown += " x ..." if len(largest) > 4 else ""
    if size > MAX_GRID_POINTS:
        problems.append(
            rule_error(
                f"the grid searcher allows at most {MAX_GRID_POINTS} points, got {size} "
                f"({shown}); lower count on the largest axes, or use searcher name: random "
                "with max_trials: N to sample N points instead",
                "hyperparameters",
            )
        )
    if searcher.max_trials is not None:
        problems.append(
            rule_error(
                "the grid searcher trains every point of its grid and takes no max_trials "
                f"(as in Determined), got max_trials: {searcher.max_trials} for a grid of "
                f"{size} points; remove max_trials and lower count to shrink the grid, or use "
                f"name: random with max_trials: {searcher.max_trials} to sample that many "
                "points",
                "searcher.max_trials",
            )
        )
    return problems


def _rung_problems(
    num_rungs: int, divisor: float, max_length: int, path: str
) -> list[PydanticCustomError]:
    """Rung lengths must grow strictly; equal rungs would validate one length twice."""
    lengths = rung_lengths(num_rungs, divisor, max_length)
    if all(low < high for low, high in itertools.pairwise(lengths)):
        return []
    return [
        rule_error(
            f"{num_rungs} rungs with divisor {divisor:g} and max_length {max_length} give "
            f"rung lengths {lengths}, which repeat; use fewer rungs, a larger divisor or "
            "a larger max_length",
            path,
        )
    ]
