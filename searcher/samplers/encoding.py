"""The space as a unit cube: what model-based samplers fit and search in.

Every leaf of the space that can vary becomes one dimension: a number is mapped to
``[0, 1]`` (a ``log`` one through its exponent, an ``int`` one over its range), and a
categorical with ``k`` values becomes a choice among ``k``. Constants and one-value
categoricals take no dimension. Nested spaces are flattened by dotted name, in sorted
order, so a point's columns never depend on the order of keys in a config.

Decoding rounds to what the space allows (an ``int`` to a whole number, a categorical
to one of its values), and a point is always scored after it is decoded and encoded
again: a model never sees a point a trial could not get.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
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
from rung.searcher.space import flatten, unflatten

__all__ = ["Encoder", "FloatArray", "IntArray"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class _Number:
    name: str
    hp: IntHP | DoubleHP | LogHP

    def to_unit(self, value: Any) -> float:
        hp = self.hp
        try:
            number = float(value)
        except (TypeError, ValueError):
            return 0.5  # a value the space cannot hold (given by a custom method)
        if isinstance(hp, LogHP):
            if number <= 0 or not math.isfinite(number):
                return 0.5
            number = math.log(number) / math.log(hp.base)
        unit = (number - hp.minval) / (hp.maxval - hp.minval)
        return min(max(unit, 0.0), 1.0) if math.isfinite(unit) else 0.5

    def from_unit(self, unit: float) -> JsonValue:
        hp = self.hp
        unit = min(max(unit, 0.0), 1.0)
        match hp:
            case IntHP():
                return min(hp.maxval, hp.minval + round(unit * (hp.maxval - hp.minval)))
            case DoubleHP():
                return min(hp.maxval, hp.minval + unit * (hp.maxval - hp.minval))
            case LogHP():
                exponent = min(hp.maxval, hp.minval + unit * (hp.maxval - hp.minval))
                return float(hp.base**exponent)


@dataclass(frozen=True, slots=True)
class _Choice:
    name: str
    hp: CategoricalHP

    @property
    def size(self) -> int:
        return len(self.hp.vals)

    def to_index(self, value: Any) -> int:
        for index, candidate in enumerate(self.hp.vals):
            if candidate == value and type(candidate) is type(value):
                return index
        for index, candidate in enumerate(self.hp.vals):
            if candidate == value:
                return index
        return 0


class Encoder:
    """Numbers as ``[0, 1]`` columns, categoricals as indices, constants as nothing."""

    def __init__(self, hps: Hyperparameters) -> None:
        self.hps = hps
        self.numbers: list[_Number] = []
        self.choices: list[_Choice] = []
        self.fixed: dict[str, JsonValue] = {}
        for name, hp in iter_leaves(hps):
            match hp:
                case ConstHP():
                    self.fixed[name] = hp.val
                case CategoricalHP() if len(hp.vals) == 1:
                    self.fixed[name] = hp.vals[0]
                case CategoricalHP():
                    self.choices.append(_Choice(name, hp))
                case IntHP() | DoubleHP() | LogHP():
                    self.numbers.append(_Number(name, hp))

    @property
    def dims(self) -> int:
        """Dimensions that vary: numbers plus categoricals."""
        return len(self.numbers) + len(self.choices)

    @property
    def sizes(self) -> list[int]:
        return [choice.size for choice in self.choices]

    # ------------------------------------------------------------ points
    def encode(self, hparams: Mapping[str, Any]) -> tuple[FloatArray, IntArray]:
        flat = flatten(hparams)
        units = np.array([n.to_unit(flat.get(n.name)) for n in self.numbers], dtype=np.float64)
        picks = np.array([c.to_index(flat.get(c.name)) for c in self.choices], dtype=np.int64)
        return units, picks

    def decode(
        self, units: Sequence[float] | FloatArray, picks: Sequence[int] | IntArray
    ) -> dict[str, JsonValue]:
        flat: dict[str, JsonValue] = dict(self.fixed)
        for number, unit in zip(self.numbers, units, strict=True):
            flat[number.name] = number.from_unit(float(unit))
        for choice, pick in zip(self.choices, picks, strict=True):
            flat[choice.name] = choice.hp.vals[int(pick)]
        return unflatten(flat, self.hps)

    def snap(self, units: FloatArray, picks: IntArray) -> tuple[FloatArray, IntArray]:
        """Rows moved to the points the space allows (ints rounded), as encoded again."""
        out = units.copy()
        for column, number in enumerate(self.numbers):
            if isinstance(number.hp, IntHP):
                span = number.hp.maxval - number.hp.minval
                out[:, column] = np.round(out[:, column] * span) / span
        return np.clip(out, 0.0, 1.0), picks

    def uniform(self, rng: np.random.Generator, count: int) -> tuple[FloatArray, IntArray]:
        """``count`` points drawn independently from the space (ints uniform too)."""
        units = np.empty((count, len(self.numbers)), dtype=np.float64)
        for column, number in enumerate(self.numbers):
            hp = number.hp
            if isinstance(hp, IntHP):
                values = rng.integers(hp.minval, hp.maxval + 1, size=count)
                units[:, column] = (values - hp.minval) / (hp.maxval - hp.minval)
            else:
                units[:, column] = rng.random(count)
        picks = np.empty((count, len(self.choices)), dtype=np.int64)
        for column, choice in enumerate(self.choices):
            picks[:, column] = rng.integers(0, choice.size, size=count)
        return units, picks

    def from_cube(self, cube: FloatArray) -> tuple[FloatArray, IntArray]:
        """Points of ``[0, 1)^dims`` (a Sobol sequence's) as encoded points of the space."""
        units = cube[:, : len(self.numbers)].copy()
        picks = np.empty((cube.shape[0], len(self.choices)), dtype=np.int64)
        for column, choice in enumerate(self.choices):
            u = cube[:, len(self.numbers) + column]
            picks[:, column] = np.minimum((u * choice.size).astype(np.int64), choice.size - 1)
        for column, number in enumerate(self.numbers):
            if isinstance(number.hp, IntHP):
                span = number.hp.maxval - number.hp.minval
                index = np.minimum(np.floor(units[:, column] * (span + 1)), span)
                units[:, column] = index / span
        return units, picks

    def one_hot_groups(self) -> IntArray:
        """The dimension each column of :meth:`one_hot` belongs to."""
        groups = list(range(len(self.numbers)))
        for offset, choice in enumerate(self.choices):
            groups += [len(self.numbers) + offset] * choice.size
        return np.array(groups, dtype=np.int64)

    def one_hot(self, units: FloatArray, picks: IntArray) -> FloatArray:
        """Numbers then one column per categorical value: the GP's inputs."""
        columns = [units]
        for column, choice in enumerate(self.choices):
            hot = np.zeros((picks.shape[0], choice.size), dtype=np.float64)
            hot[np.arange(picks.shape[0]), picks[:, column]] = 1.0
            columns.append(hot)
        return np.concatenate(columns, axis=1) if columns else units
