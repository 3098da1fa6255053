"""Hyperparameter spaces: seeded sampling, Determined's grid (computed lazily), and
dotted names.

Trial ``k`` of an experiment with seed ``s`` draws everything from its own generator,
seeded from ``(s, k)`` alone, so its request id, trial seed and hyperparameters never
depend on what other trials did or on the order events arrived in.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from random import Random
from typing import Any, overload

from pydantic import JsonValue

from rung.searcher.config import (
    CategoricalHP,
    ConstHP,
    DoubleHP,
    Hyperparameters,
    IntHP,
    LogHP,
    iter_leaves,
)

__all__ = [
    "Grid",
    "TrialDraw",
    "draw_trial",
    "draw_value",
    "flatten",
    "grid_points",
    "grid_size",
    "sample",
    "trial_rng",
    "unflatten",
]

_SEED_BOUND = 2**31


def trial_rng(experiment_seed: int, index: int) -> Random:
    """The generator of trial ``index``; a function of the seed and the index only."""
    digest = hashlib.sha256(f"rung/trial/{experiment_seed}/{index}".encode()).digest()
    return Random(int.from_bytes(digest, "big"))


@dataclass(frozen=True, slots=True)
class TrialDraw:
    request_id: str
    seed: int
    hparams: dict[str, JsonValue]


def draw_trial(
    experiment_seed: int, index: int, hps: Hyperparameters, hparams: Mapping[str, Any] | None
) -> TrialDraw:
    """Request id, trial seed and (unless given, as grid does) sampled hyperparameters."""
    rng = trial_rng(experiment_seed, index)
    request_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    seed = rng.randrange(_SEED_BOUND)
    values = dict(hparams) if hparams is not None else sample(hps, rng)
    return TrialDraw(request_id, seed, values)


def draw_value(hp: ConstHP | IntHP | DoubleHP | LogHP | CategoricalHP, rng: Random) -> JsonValue:
    """One value of a leaf hyperparameter, drawn with ``rng``."""
    match hp:
        case ConstHP():
            return hp.val
        case IntHP():
            return hp.minval + rng.randrange(hp.maxval - hp.minval + 1)
        case DoubleHP():
            return rng.uniform(hp.minval, hp.maxval)
        case LogHP():
            return float(hp.base ** rng.uniform(hp.minval, hp.maxval))
        case CategoricalHP():
            return hp.vals[rng.randrange(len(hp.vals))]


def sample(hps: Hyperparameters, rng: Random) -> dict[str, JsonValue]:
    """One point, drawn leaf by leaf in sorted dotted-name order, returned nested."""
    return unflatten({name: draw_value(hp, rng) for name, hp in iter_leaves(hps)}, hps)


class Grid(Sequence[dict[str, JsonValue]]):
    """The grid of a space, point by point, without building it.

    Point ``i`` is the ``i``-th element of the Cartesian product over the leaves' axes in
    sorted dotted-name order, first name slowest (``itertools.product``'s order): its
    digits in the mixed radix of the axis lengths pick one value per axis. Each axis
    value is computed on demand as Determined's ``grid.go`` computes it, so a grid costs
    memory for its leaves only, whatever its size.

    An empty space is one point, ``{}`` (Determined produced no trial at all).
    """

    def __init__(self, hps: Hyperparameters) -> None:
        self.hps = hps
        self.leaves = list(iter_leaves(hps))
        self.lengths = [hp.grid_length() for _, hp in self.leaves]
        self.size = math.prod(self.lengths)

    def __len__(self) -> int:
        return self.size  # len() itself refuses sizes of 2**63 or more: use ``size``

    def __iter__(self) -> Iterator[dict[str, JsonValue]]:
        return (self.point(i) for i in range(self.size))

    @overload
    def __getitem__(self, index: int) -> dict[str, JsonValue]: ...
    @overload
    def __getitem__(self, index: slice) -> list[dict[str, JsonValue]]: ...

    def __getitem__(self, index: int | slice) -> dict[str, JsonValue] | list[dict[str, JsonValue]]:
        if isinstance(index, slice):
            return [self.point(i) for i in range(*index.indices(self.size))]
        return self.point(index)

    def point(self, index: int) -> dict[str, JsonValue]:
        """Point ``index`` (negative counts from the end), nested like the space."""
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(f"grid point {index} of a grid of {self.size} points")
        digits: list[int] = []
        for length in reversed(self.lengths):
            index, digit = divmod(index, length)
            digits.append(digit)
        flat = {
            name: hp.grid_value(digit)
            for (name, hp), digit in zip(self.leaves, reversed(digits), strict=True)
        }
        return unflatten(flat, self.hps)


def grid_size(hps: Hyperparameters) -> int:
    """The number of grid points, from the axis lengths alone."""
    return Grid(hps).size


def grid_points(hps: Hyperparameters) -> list[dict[str, JsonValue]]:
    """Every grid point, in :class:`Grid`'s order, as a list: for small grids only."""
    return list(Grid(hps))


def flatten(hparams: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"opt": {"lr": 0.1}}`` becomes ``{"opt.lr": 0.1}``."""
    out: dict[str, Any] = {}
    for key in sorted(hparams):
        value = hparams[key]
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def unflatten(flat: Mapping[str, JsonValue], hps: Hyperparameters) -> dict[str, JsonValue]:
    """Nest dotted names back along the space's structure (names may contain dots)."""
    out: dict[str, JsonValue] = {}
    for name, hp_value in hps.items():
        nested = getattr(hp_value, "root", None)
        if isinstance(nested, dict):
            prefix = f"{name}."
            inner = {k[len(prefix) :]: v for k, v in flat.items() if k.startswith(prefix)}
            out[name] = unflatten(inner, nested)
        elif name in flat:
            out[name] = flat[name]
    return out
