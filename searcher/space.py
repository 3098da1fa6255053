"""Hyperparameter spaces: seeded sampling, Determined's grid, and dotted names.

Trial ``k`` of an experiment with seed ``s`` draws everything from its own generator,
seeded from ``(s, k)`` alone, so its request id, trial seed and hyperparameters never
depend on what other trials did or on the order events arrived in.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from random import Random
from typing import Any

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
    "TrialDraw",
    "draw_trial",
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


def _draw(hp: ConstHP | IntHP | DoubleHP | LogHP | CategoricalHP, rng: Random) -> JsonValue:
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
    return unflatten({name: _draw(hp, rng) for name, hp in iter_leaves(hps)}, hps)


def _round_half_away(value: float) -> int:
    return math.floor(value + 0.5) if value >= 0 else -math.floor(-value + 0.5)


def _axis(hp: ConstHP | IntHP | DoubleHP | LogHP | CategoricalHP) -> list[JsonValue]:
    """Grid values of one leaf, as Determined's ``grid.go`` computes them."""
    match hp:
        case ConstHP():
            return [hp.val]
        case CategoricalHP():
            return list(hp.vals)
        case IntHP():
            count = min(hp.count or 1, hp.maxval - hp.minval + 1)
            if count == 1:
                return [_round_half_away((hp.minval + hp.maxval) / 2)]
            step = (hp.maxval - hp.minval) / (count - 1)
            return [_round_half_away(hp.minval + i * step) for i in range(count)]
        case DoubleHP() | LogHP():
            count = hp.count or 1
            points: list[float]
            if count == 1:
                points = [(hp.minval + hp.maxval) / 2]
            else:
                step = (hp.maxval - hp.minval) / (count - 1)
                points = [hp.minval + i * step for i in range(count)]
            if isinstance(hp, LogHP):
                return [float(hp.base**p) for p in points]
            return list[JsonValue](points)


def grid_size(hps: Hyperparameters) -> int:
    return math.prod(len(_axis(hp)) for _, hp in iter_leaves(hps))


def grid_points(hps: Hyperparameters) -> list[dict[str, JsonValue]]:
    """The Cartesian product over leaves in sorted dotted-name order, first name slowest.

    An empty space is one point, ``{}`` (Determined produced no trial at all).
    """
    leaves = list(iter_leaves(hps))
    names = [name for name, _ in leaves]
    axes = [_axis(hp) for _, hp in leaves]
    return [
        unflatten(dict(zip(names, combo, strict=True)), hps) for combo in itertools.product(*axes)
    ]


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
