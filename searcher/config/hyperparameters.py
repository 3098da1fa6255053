"""Hyperparameter definitions, with Determined's types and shorthand.

* ``const`` (``{type: const, val: V}``, or any value that is not a mapping),
* ``int``, ``double`` and ``log`` (with ``base``), each with ``minval < maxval`` and an
  optional ``count`` used by the grid searcher,
* ``categorical`` with a non-empty ``vals`` list,
* nested maps: a mapping without a ``type`` key. Flattened names join levels with dots.
"""

from __future__ import annotations

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

from rung.searcher.config._model import ConfigModel, rule_error

__all__ = [
    "HP_TYPES",
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

_Finite = Annotated[float, Field(allow_inf_nan=False)]
_Count = Annotated[StrictInt, Field(ge=1)]


class ConstHP(ConfigModel):
    type: Literal["const"] = "const"
    val: JsonValue


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


class DoubleHP(_RangeHP):
    type: Literal["double"]
    minval: _Finite
    maxval: _Finite


class LogHP(_RangeHP):
    """``base ** u`` with the exponent ``u`` uniform in ``[minval, maxval]``."""

    type: Literal["log"]
    minval: _Finite
    maxval: _Finite
    base: Annotated[float, Field(gt=0, allow_inf_nan=False)]


class CategoricalHP(ConfigModel):
    type: Literal["categorical"]
    vals: Annotated[list[JsonValue], Field(min_length=1)]


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
