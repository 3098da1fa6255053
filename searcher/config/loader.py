"""Load an experiment config from YAML, and word every validation error for people.

Each problem names its YAML path, the rule, the bad value and the fix, e.g.
``searcher.divisor: must be greater than 1, got 1``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from rung.searcher.config._model import suggest
from rung.searcher.config.experiment import ExperimentConfig
from rung.searcher.config.hyperparameters import HP_TYPES
from rung.searcher.config.samplers import SAMPLER_NAMES
from rung.searcher.config.searchers import SEARCHER_NAMES
from rung.searcher.errors import ConfigError, ConfigProblem

__all__ = ["LoadedConfig", "load_config_file", "load_config_text", "parse_config"]


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A valid config and the warnings its loading raised (Determined keys ignored, ...)."""

    config: ExperimentConfig
    warnings: tuple[str, ...] = ()


def load_config_file(path: str | Path) -> LoadedConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        problem = ConfigProblem("", f"cannot read the config file: {exc.strerror or exc}")
        raise ConfigError([problem], source=str(path)) from exc
    return load_config_text(text, source=str(path))


def load_config_text(text: str, source: str | None = None) -> LoadedConfig:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            [ConfigProblem("", f"{where}not valid YAML ({problem}); fix the syntax there")],
            source=source,
        ) from exc
    return parse_config(raw, source=source)


def parse_config(raw: Any, source: str | None = None) -> LoadedConfig:
    if not isinstance(raw, Mapping):
        kind = "empty" if raw is None else f"a {type(raw).__name__}"
        raise ConfigError(
            [
                ConfigProblem(
                    "",
                    f"the config must be a mapping of keys to values, got {kind}; "
                    "start from examples/core_api/3_hpsearch.yaml",
                )
            ],
            source=source,
        )
    warnings: list[str] = []
    try:
        config = ExperimentConfig.model_validate(dict(raw), context={"warnings": warnings})
    except ValidationError as exc:
        problems = [_problem(error, raw) for error in exc.errors()]
        raise ConfigError(_dedupe(problems), source=source) from None
    return LoadedConfig(config, tuple(dict.fromkeys(warnings)))


def _dedupe(problems: list[ConfigProblem]) -> list[ConfigProblem]:
    return list(dict.fromkeys(problems))


_TAGS = (
    frozenset(SEARCHER_NAMES)
    | frozenset(SAMPLER_NAMES)
    | frozenset(HP_TYPES)
    | {"nested", "str", "list[str]"}
)


def _clean_path(loc: tuple[int | str, ...], raw: Any) -> tuple[str, Any]:
    """Drop the union tags pydantic puts in ``loc``; return the dotted path and the value."""
    parts: list[str] = []
    node: Any = raw
    for item in loc:
        if isinstance(node, Mapping) and item in node:
            node = node[item]
            parts.append(str(item))
        elif isinstance(node, list) and isinstance(item, int) and item < len(node):
            node = node[item]
            parts[-1 if parts else 0 :] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        elif isinstance(item, str) and (item in _TAGS or item.startswith("function-")):
            continue
        elif node is not None and not isinstance(node, Mapping | list):
            continue  # a field inside a scalar (Length's "units"): the scalar is the problem
        else:
            parts.append(str(item))
            node = None
    return ".".join(parts), node


def _join(path: str, tail: str) -> str:
    return f"{path}.{tail}" if path and tail else path or tail


def _problem(error: ErrorDetails, raw: Any) -> ConfigProblem:
    path, _ = _clean_path(error["loc"], raw)
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    kind = error["type"]
    value = error.get("input")
    if kind == "rung_rule":
        return ConfigProblem(_join(path, str(ctx.get("path", ""))), str(ctx["message"]))
    return ConfigProblem(path, _wording(kind, ctx, value, path))


def _wording(kind: str, ctx: dict[str, Any], value: Any, path: str) -> str:  # noqa: C901, PLR0911, PLR0912
    field = path.rsplit(".", 1)[-1]
    match kind:
        case "missing":
            return f"required, but missing; add {field}: <value>"
        case "greater_than":
            return f"must be greater than {_num(ctx['gt'])}, got {value!r}"
        case "greater_than_equal":
            return f"must be at least {_num(ctx['ge'])}, got {value!r}"
        case "less_than":
            return f"must be less than {_num(ctx['lt'])}, got {value!r}"
        case "less_than_equal":
            return f"must be at most {_num(ctx['le'])}, got {value!r}"
        case "int_type" | "int_parsing" | "int_from_float":
            return f"must be a whole number, got {value!r}"
        case "float_type" | "float_parsing" | "finite_number":
            return f"must be a finite number, got {value!r}"
        case "bool_type" | "bool_parsing":
            return f"must be true or false, got {value!r}"
        case "string_type":
            return f"must be a string, got {value!r}"
        case "list_type":
            return f"must be a list, got {value!r}"
        case "dict_type" | "model_type" | "model_attributes_type" if path == "searcher.sampler":
            return (
                f"must be a sampler name ({', '.join(SAMPLER_NAMES)}) or a mapping with name: "
                f"and options, got {value!r}; for example sampler: gp"
            )
        case "dict_type" | "model_type" | "model_attributes_type":
            return f"must be a mapping of keys to values, got {value!r}"
        case "too_short":
            return f"must not be empty, got {value!r}; list at least one value"
        case "literal_error" | "enum":
            return f"must be one of {ctx.get('expected')}, got {value!r}"
        case "string_pattern_mismatch":
            return f"must look like 'module:ClassName', got {value!r}"
        case "union_tag_invalid":
            return _bad_tag(str(ctx.get("tag")), path)
        case "union_tag_not_found":
            names = SAMPLER_NAMES if path.startswith("searcher.sampler") else SEARCHER_NAMES
            return f"required, but missing; add name: one of {', '.join(names)}"
    return f"{kind.replace('_', ' ')}, got {value!r}"


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _bad_tag(tag: str, path: str) -> str:
    if path.startswith("searcher.sampler"):
        valid: tuple[str, ...] = SAMPLER_NAMES
        what = "sampler"
    elif path.startswith("searcher") or path == "":
        valid = (*SEARCHER_NAMES, "asha")
        what = "searcher name"
    else:
        valid = HP_TYPES
        what = "hyperparameter type"
    near = tag.lower() if tag.lower() in valid else suggest(tag, valid)
    hint = f" (did you mean {near!r}?)" if near else ""
    return f"unknown {what} {tag!r}{hint}; use one of {', '.join(valid)}"
