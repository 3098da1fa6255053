"""Hyperparameter definitions, with Determined's types and shorthand.

* ``const`` (``{type: const, val: V}``, or any value that is not a mapping),
* ``int``, ``double`` and ``log`` (with ``base``), each with ``minval < maxval`` and an
  optional ``count`` used by the grid searcher,
* ``categorical`` with a non-empty ``vals`` list,
* nested maps: a mapping without a ``type`` key. Flattened names join levels with dots.

A definition that validates can be drawn from and gridded without an exception, and
every value it gives is a finite number (or the JSON value it names): ``int`` bounds stay
within ``±2**53``, a ``double`` range is narrower than the largest float, ``base ** u``
neither overflows nor underflows to 0 for any exponent a draw or the grid can reach, and
``const`` and ``categorical`` values hold no NaN or infinity.

Each model also knows its grid axis (``grid_length`` and ``grid_value``), computed as
Determined's ``grid.go`` does, one value at a time so that no grid is ever built whole.
"""

from __future__ import annotations

import math
import sys
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    JsonValue,
    RootModel,
    StrictInt,
    Tag,
    model_validator,
)
from pydantic_core import PydanticCustomError

from rung.searcher.config._model import ConfigModel, rule_error
from rung.searcher.config.searchers import MAX_GRID_POINTS

__all__ = [
    "HP_TYPES",
    "INT_LIMIT",
    "CategoricalHP",
    "ConstHP",
    "DoubleHP",
    "Hyperparameter",
    "Hyperparameters",
    "IntHP",
    "LogHP",
    "NestedHP",
    "NumericHP",
]

HP_TYPES = ("const", "int", "double", "log", "categorical")

# ``int`` bounds: the whole numbers a JSON number (a float64 in most parsers) and the
# grid's float arithmetic hold exactly.
INT_LIMIT = 2**53

# The largest value ``random.Random.random()`` returns. ``Random.uniform(a, b)`` is
# ``a + (b - a) * random()``, which grows with ``random()``: its extremes are its values
# at 0 and at this.
_RANDOM_MAX = 1.0 - 2.0**-53

_Finite = Annotated[float, Field(allow_inf_nan=False)]
_Count = Annotated[StrictInt, Field(ge=1)]


def _round_half_away(value: float) -> int:
    return math.floor(value + 0.5) if value >= 0 else -math.floor(-value + 0.5)


def _non_finite(value: Any, path: str) -> tuple[str, float] | None:
    """The first NaN or infinity inside a JSON value, with its path."""
    if isinstance(value, float) and not math.isfinite(value):
        return path, value
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _non_finite(item, f"{path}[{index}]")
            if found:
                return found
    if isinstance(value, dict):
        for key, item in value.items():
            found = _non_finite(item, f"{path}.{key}")
            if found:
                return found
    return None


def _non_finite_error(path: str, value: float) -> PydanticCustomError:
    return rule_error(
        f"must be a finite number, got {value!r}; JSON has no NaN or infinity, so no trial "
        "could receive it: use a finite number, or a string such as 'inf' that your script "
        "reads",
        path,
    )


class ConstHP(ConfigModel):
    type: Literal["const"] = "const"
    val: JsonValue

    def rule_problems(self) -> list[PydanticCustomError]:
        found = _non_finite(self.val, "val")
        return [_non_finite_error(*found)] if found else []

    def grid_length(self) -> int:
        return 1

    def grid_value(self, index: int) -> JsonValue:
        return self.val


class _RangeHP(ConfigModel):
    count: _Count | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        low, high = self.minval, self.maxval  # type: ignore[attr-defined]
        if not low < high:
            raise rule_error(
                f"must be less than maxval, got minval={low!r} and maxval={high!r}; "
                "swap them, or use type: const for a single value",
                "minval",
            )
        return self


class IntHP(_RangeHP):
    type: Literal["int"]
    minval: StrictInt
    maxval: StrictInt

    def rule_problems(self) -> list[PydanticCustomError]:
        return [
            rule_error(
                f"must be between -2**53 and 2**53 ({-INT_LIMIT} to {INT_LIMIT}), the whole "
                f"numbers a JSON number holds exactly, got {value}; narrow the range, or use "
                "type: double or log for larger values",
                field,
            )
            for field, value in (("minval", self.minval), ("maxval", self.maxval))
            if abs(value) > INT_LIMIT
        ]

    def grid_length(self) -> int:
        """``min(count, maxval - minval + 1)`` values (one when ``count`` is unset)."""
        return min(self.count or 1, self.maxval - self.minval + 1)

    def grid_value(self, index: int) -> int:
        """Evenly spaced, rounded half away from zero; the rounded midpoint for one."""
        count = self.grid_length()
        if count == 1:
            return _round_half_away((self.minval + self.maxval) / 2)
        step = (self.maxval - self.minval) / (count - 1)
        value = _round_half_away(self.minval + index * step)
        # Float rounding can step past an end near 2**53; an end is the value it meant.
        return min(max(value, self.minval), self.maxval)


def _linspace(low: float, high: float, count: int, index: int) -> float:
    """Point ``index`` of ``count`` evenly spaced in ``[low, high]``; the midpoint for one."""
    if count == 1:
        return (low + high) / 2
    step = (high - low) / (count - 1)
    return low + index * step


def _reachable(low: float, high: float, count: int | None) -> list[tuple[str, float]]:
    """The extremes of every value a draw or the grid can give, each with the field that
    bounds it. Draws grow with ``random()`` and grid points with their index, so their
    extremes are at the ends."""
    points = [("minval", low), ("maxval", high), ("maxval", low + (high - low) * _RANDOM_MAX)]
    # A larger count makes a grid the grid searcher refuses (and is a float's overflow).
    if count is not None and count <= MAX_GRID_POINTS:
        points += [("count", _linspace(low, high, count, 0))]
        points += [("count", _linspace(low, high, count, count - 1))]
    return points


class DoubleHP(_RangeHP):
    type: Literal["double"]
    minval: _Finite
    maxval: _Finite

    def rule_problems(self) -> list[PydanticCustomError]:
        low, high = self.minval, self.maxval
        if not math.isfinite(high - low):
            return [
                rule_error(
                    f"maxval - minval must be a finite number, got {high!r} - ({low!r}), "
                    "which overflows a float; narrow the range, or use type: log for values "
                    "that span many orders of magnitude",
                    "maxval",
                )
            ]
        for field, value in _reachable(low, high, self.count):
            if not math.isfinite(value):
                return [
                    rule_error(
                        f"every draw and grid point must be a finite number, got {value!r} "
                        f"from minval={low!r}, maxval={high!r} and count={self.count!r}; "
                        "move the bounds away from the largest float (about 1.8e308)",
                        field,
                    )
                ]
        return []

    def grid_length(self) -> int:
        return self.count or 1

    def grid_value(self, index: int) -> float:
        """Evenly spaced in ``[minval, maxval]``, both ends included; the midpoint for one."""
        return _linspace(self.minval, self.maxval, self.grid_length(), index)


class LogHP(_RangeHP):
    """``base ** u`` with the exponent ``u`` uniform in ``[minval, maxval]``."""

    type: Literal["log"]
    minval: _Finite
    maxval: _Finite
    base: Annotated[float, Field(gt=0, allow_inf_nan=False)]

    def rule_problems(self) -> list[PydanticCustomError]:
        base, low, high = self.base, self.minval, self.maxval
        if base == 1:
            return [
                rule_error(
                    "must not be 1, got 1: 1 ** u is 1 for every exponent u; use "
                    "type: const with val: 1 for a single value, or a base such as 10 or 2",
                    "base",
                )
            ]
        if not math.isfinite(high - low):
            return [
                rule_error(
                    f"maxval - minval must be a finite number, got {high!r} - ({low!r}), "
                    "which overflows a float; minval and maxval are exponents: use the "
                    "powers of base, e.g. minval: -5, maxval: -1 for 1e-5 to 1e-1",
                    "maxval",
                )
            ]
        # With base > 1 the values grow with the exponent; with base < 1 they shrink.
        large_end, small_end = ("maxval", "minval") if base > 1 else ("minval", "maxval")
        problems: dict[str, PydanticCustomError] = {}
        for field, exponent in _reachable(low, high, self.count):
            if field == "count" and problems:
                break  # the grid's points lie between the ends, already refused
            value = _power(base, exponent)
            if not math.isfinite(value):
                where = large_end if field != "count" else field
                problems.setdefault(where, self._overflow(where, exponent))
            elif value == 0:
                where = small_end if field != "count" else field
                problems.setdefault(where, self._underflow(where, exponent))
        return list(problems.values())

    def _overflow(self, field: str, exponent: float) -> PydanticCustomError:
        bound, side, limit = self._limit(sys.float_info.max, large=True)
        example = " (for 1e-4, write -4)" if self.base == 10 else ""
        return rule_error(
            f"base ** {bound} must be a finite number, got {self.base:g} ** {exponent:g}, "
            f"which overflows a float; minval and maxval are exponents: keep {bound} "
            f"{side} {limit:g} for base {self.base:g}{example}",
            field,
        )

    def _underflow(self, field: str, exponent: float) -> PydanticCustomError:
        bound, side, limit = self._limit(sys.float_info.min, large=False)
        return rule_error(
            f"base ** {bound} must be greater than 0, got {self.base:g} ** {exponent:g}, "
            f"which underflows to 0.0; minval and maxval are exponents: keep {bound} "
            f"{side} {limit:g} for base {self.base:g}, or use type: double if 0 is a value "
            "you want",
            field,
        )

    def _limit(self, value: float, *, large: bool) -> tuple[str, str, float]:
        """The bound that reaches ``value``, and the exponent, to one decimal, that it
        must stay on the safe side of."""
        exact = math.log(value) / math.log(self.base)
        upper = large == (self.base > 1)  # the exponent must stay below the limit
        inward = -1.0 if upper else 1.0
        limit = (math.floor if upper else math.ceil)(exact * 10) / 10
        for _ in range(64):  # a hint in a message: a few steps inwards at most
            if 0 < _power(self.base, limit) < math.inf:
                break
            limit = round(limit + inward * max(0.1, abs(limit) * 2**-40), 1)
        return ("maxval", "at most", limit) if upper else ("minval", "at least", limit)

    def grid_length(self) -> int:
        return self.count or 1

    def grid_value(self, index: int) -> float:
        """``base ** p`` for exponents ``p`` evenly spaced in ``[minval, maxval]``."""
        exponent = _linspace(self.minval, self.maxval, self.grid_length(), index)
        return float(self.base**exponent)


def _power(base: float, exponent: float) -> float:
    try:
        return float(base**exponent)
    except OverflowError:
        return math.inf


class CategoricalHP(ConfigModel):
    type: Literal["categorical"]
    vals: Annotated[list[JsonValue], Field(min_length=1)]

    def rule_problems(self) -> list[PydanticCustomError]:
        found = _non_finite(self.vals, "vals")
        return [_non_finite_error(*found)] if found else []

    def grid_length(self) -> int:
        return len(self.vals)

    def grid_value(self, index: int) -> JsonValue:
        return self.vals[index]


NumericHP = IntHP | DoubleHP | LogHP


class NestedHP(RootModel[dict[str, "Hyperparameter"]]):
    """A map of hyperparameters under one name (a mapping without ``type``)."""

    model_config = ConfigDict(frozen=True)


def _tag(value: Any) -> str:
    if isinstance(value, dict):
        # An unknown tag fails as ``union_tag_invalid``; the loader words that error.
        return str(value.get("type", "nested"))
    if isinstance(value, NestedHP):
        return "nested"
    return str(getattr(value, "type", "const"))


def _shorthand(value: Any) -> Any:
    """Any value that is not a mapping is a constant."""
    if isinstance(value, dict | ConfigModel | NestedHP):
        return value
    return {"type": "const", "val": value}


Hyperparameter = Annotated[
    Annotated[ConstHP, Tag("const")]
    | Annotated[IntHP, Tag("int")]
    | Annotated[DoubleHP, Tag("double")]
    | Annotated[LogHP, Tag("log")]
    | Annotated[CategoricalHP, Tag("categorical")]
    | Annotated[NestedHP, Tag("nested")],
    Discriminator(_tag),
    BeforeValidator(_shorthand),
]

Hyperparameters = dict[str, Hyperparameter]

NestedHP.model_rebuild()
