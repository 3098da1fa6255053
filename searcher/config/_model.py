"""The base of every config model: frozen, strict about keys, helpful about typos."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

__all__ = ["ConfigModel", "record_warning", "rule_error", "suggest"]


def rule_error(message: str, path: str = "") -> PydanticCustomError:
    """A validation error with a finished message; ``path`` is relative to the section."""
    return PydanticCustomError("rung_rule", "{message}", {"message": message, "path": path})


def suggest(word: str, choices: list[str] | tuple[str, ...] | frozenset[str]) -> str | None:
    """The valid choice nearest to ``word``, if one is close enough to be a typo."""
    found = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def record_warning(info: ValidationInfo, message: str) -> None:
    """Hand a warning to the loader through the validation context."""
    context = info.context
    if isinstance(context, dict):
        sink = context.get("warnings")
        if isinstance(sink, list):
            sink.append(message)


class ConfigModel(BaseModel):
    """A frozen config section.

    Unknown keys are errors that suggest the nearest valid key. Keys that Determined
    accepts but Rung does not implement yet (``determined_only``) are dropped with a
    warning that names them, so a Determined config still loads.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    # Where this section sits in the YAML, for warnings ("" is the top level).
    yaml_path: ClassVar[str] = ""
    # Determined keys accepted and ignored, each with a note on what Rung does instead.
    determined_only: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def known_keys(cls) -> list[str]:
        return [field.alias or name for name, field in cls.model_fields.items()]

    @classmethod
    def prepare(cls, data: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """Rewrite the raw mapping before its keys are checked (aliases, old spellings)."""
        return data

    def rule_problems(self) -> list[PydanticCustomError]:
        """Rules across fields, checked once every field is valid; all are reported.

        Each problem is a :func:`rule_error`, whose path is relative to this section.
        """
        return []

    @model_validator(mode="wrap")
    @classmethod
    def _check_keys(
        cls, data: Any, handler: ModelWrapValidatorHandler[Self], info: ValidationInfo
    ) -> Self:
        """Report unknown keys together with every other problem in the section."""
        if not isinstance(data, dict):
            return handler(data)
        data = cls.prepare(data, info)
        known = cls.known_keys()
        kept: dict[str, Any] = {}
        unknown: list[str] = []
        for key, value in data.items():
            if key in known:
                kept[key] = value
            elif key in cls.determined_only:
                where = f"{cls.yaml_path}.{key}" if cls.yaml_path else str(key)
                record_warning(
                    info,
                    f"{where}: Determined option not implemented by Rung yet, ignored; "
                    f"{cls.determined_only[key]}",
                )
            else:
                unknown.append(str(key))
        errors: list[InitErrorDetails] = []
        if unknown:
            error = cls._unknown_keys_error(unknown, known)
            errors.append(InitErrorDetails(type=error, loc=(), input=data))
        try:
            result = handler(kept)
        except ValidationError as exc:
            errors += [_init_details(e) for e in exc.errors()]
            raise ValidationError.from_exception_data(cls.__name__, errors) from None
        problems = result.rule_problems()
        errors += [InitErrorDetails(type=p, loc=(), input=data) for p in problems]
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return result

    @classmethod
    def _unknown_keys_error(cls, unknown: list[str], known: list[str]) -> PydanticCustomError:
        parts = []
        for key in unknown:
            near = suggest(key, known)
            parts.append(f"{key!r} (did you mean {near!r}?)" if near else repr(key))
        valid = ", ".join(sorted(known))
        noun = "key" if len(unknown) == 1 else "keys"
        path = unknown[0] if len(unknown) == 1 else ""
        return rule_error(f"unknown {noun} {', '.join(parts)}; valid keys here: {valid}", path)


def _init_details(error: ErrorDetails) -> InitErrorDetails:
    """Carry an error of an inner validation into a combined ValidationError."""
    ctx = dict(error.get("ctx") or {})
    kind: str | PydanticCustomError = error["type"]
    if kind == "rung_rule":
        kind = PydanticCustomError("rung_rule", "{message}", ctx)
    return InitErrorDetails(type=kind, loc=error["loc"], input=error["input"], ctx=ctx)
