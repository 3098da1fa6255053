"""Population-based training's explore step: a copy's hyperparameters from its source's.

Each leaf of the space, in sorted dotted-name order, with one generator:

* a ``const`` is kept;
* with ``resample_probability``, any other value is drawn again from its space, and a
  ``categorical`` always is (its values have no order to perturb along);
* otherwise a number is multiplied by ``1 + perturb_factor`` or ``1 - perturb_factor``
  (even odds) and clamped to its range: an ``int`` is rounded away from its old value, so
  that it moves by at least one, and a ``log`` is clamped to ``base ** minval`` and
  ``base ** maxval``, so it moves by the same ratio at any magnitude.

A value that is not a number where the space says it is one (a hand-written source
trial's) is drawn again. Pure: the caller's generator is the only randomness.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from random import Random
from typing import assert_never

from pydantic import JsonValue

from rung.searcher.config import (
    CategoricalHP,
    ConstHP,
    DoubleHP,
    Hyperparameters,
    IntHP,
    LogHP,
    NestedHP,
)
from rung.searcher.ops import Change
from rung.searcher.space import draw_value

__all__ = ["explore"]

_Leaf = ConstHP | IntHP | DoubleHP | LogHP | CategoricalHP
_EMPTY = ConstHP(val={})  # an empty nested map: the trial receives {}


def _leaves(
    hps: Hyperparameters, values: Mapping[str, JsonValue], prefix: str = ""
) -> Iterator[tuple[str, str, _Leaf, JsonValue, list[str]]]:
    """(dotted name, key, leaf, its value in ``values``, path of keys) in sorted order."""
    for key in sorted(hps):
        hp = hps[key]
        value = values.get(key)
        if isinstance(hp, NestedHP) and not hp.root:
            yield f"{prefix}{key}", key, _EMPTY, value, []
        elif isinstance(hp, NestedHP):
            inner = value if isinstance(value, dict) else {}
            for dotted, leaf_key, leaf, leaf_value, path in _leaves(
                hp.root, inner, f"{prefix}{key}."
            ):
                yield dotted, leaf_key, leaf, leaf_value, [key, *path]
        else:
            yield f"{prefix}{key}", key, hp, value, []


def _set(target: dict[str, JsonValue], path: list[str], key: str, value: JsonValue) -> None:
    for step in path:
        inner = target.setdefault(step, {})
        assert isinstance(inner, dict)  # noqa: S101 (built here, nested as the space)
        target = inner
    target[key] = value


def _is_number(value: JsonValue) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _perturb(hp: IntHP | DoubleHP | LogHP, value: float, factor: float) -> tuple[float, bool]:
    """``value * factor`` within the range; and whether it was clamped."""
    moved = value * factor
    match hp:
        case IntHP():
            rounded = math.ceil(moved) if moved > value else math.floor(moved)
            if rounded == value:  # (0 * factor): step by one in the factor's direction
                rounded = int(value) + (1 if factor > 1 else -1)
            low, high = float(hp.minval), float(hp.maxval)
            moved = float(rounded)
        case DoubleHP():
            low, high = hp.minval, hp.maxval
        case LogHP():
            ends = sorted((hp.base**hp.minval, hp.base**hp.maxval))
            low, high = float(ends[0]), float(ends[1])
        case _:
            assert_never(hp)
    clamped = min(max(moved, low), high)
    return clamped, clamped != moved


def explore(
    source: Mapping[str, JsonValue],
    hps: Hyperparameters,
    *,
    resample_probability: float,
    perturb_factor: float,
    rng: Random,
) -> tuple[dict[str, JsonValue], list[Change]]:
    """The copy's hyperparameters, and how each leaf changed."""
    out: dict[str, JsonValue] = {}
    changes: list[Change] = []
    for dotted, key, hp, old, path in _leaves(hps, source):
        if isinstance(hp, ConstHP):
            _set(out, path, key, hp.val)
            changes.append(Change(name=dotted, old=old, new=hp.val, how="kept"))
            continue
        resample = rng.random() < resample_probability
        if resample or isinstance(hp, CategoricalHP) or old is None or not _is_number(old):
            new = draw_value(hp, rng)
            _set(out, path, key, new)
            changes.append(Change(name=dotted, old=old, new=new, how="resampled"))
            continue
        assert isinstance(old, int | float)  # noqa: S101 (_is_number)
        factor = 1 + perturb_factor if rng.random() < 0.5 else 1 - perturb_factor
        moved, clamped = _perturb(hp, float(old), factor)
        new_value: JsonValue = int(moved) if isinstance(hp, IntHP) else moved
        _set(out, path, key, new_value)
        changes.append(
            Change(
                name=dotted, old=old, new=new_value, how="perturbed", factor=factor, clamped=clamped
            )
        )
    return out, changes
