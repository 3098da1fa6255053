"""Training lengths: a plain integer, or ``{batches|records|epochs: N}`` as in Determined."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator
from pydantic_core import PydanticCustomError

from rung.searcher.config._model import rule_error

__all__ = ["Length", "LengthUnit"]

LengthUnit = Literal["batches", "records", "epochs"]
_UNITS: tuple[LengthUnit, ...] = ("batches", "records", "epochs")


class Length(BaseModel):
    """An absolute training length. ``unit`` is None for a plain integer."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    unit: LengthUnit | None = None
    units: int = Field(ge=1, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, data: Any) -> Any:
        if isinstance(data, bool):
            raise _shape_error(data)
        if isinstance(data, int):
            return {"units": data}
        if isinstance(data, dict):
            if set(data) <= {"unit", "units"} and "units" in data:
                return data
            if len(data) == 1:
                ((unit, units),) = data.items()
                if unit in _UNITS:
                    return {"unit": unit, "units": units}
        raise _shape_error(data)

    @model_serializer
    def _dump(self) -> int | dict[str, int]:
        return self.units if self.unit is None else {self.unit: self.units}

    def describe(self) -> str:
        return f"{self.units} {self.unit}" if self.unit else str(self.units)


def _shape_error(value: Any) -> PydanticCustomError:
    return rule_error(
        "must be a positive integer or a mapping with exactly one of batches, records or "
        f"epochs (e.g. {{epochs: 10}}), got {value!r}"
    )
