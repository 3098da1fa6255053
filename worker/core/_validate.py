"""Checks on what a training script reports: numbers or JSON, bounded in size and depth.

A diverged model reports NaN or infinity, and Determined takes such metrics. JSON has no
such numbers, so they travel as the strings ``"NaN"``, ``"Infinity"`` and
``"-Infinity"``. The searcher metric is separate: a non-finite one ranks worst.

The limits (:data:`MAX_METRICS_BYTES`, :data:`MAX_CHECKPOINT_METADATA_BYTES`,
:data:`MAX_JSON_DEPTH`) are Rung's own, from ``rung.broker.limits``; the worker checks them
again (:func:`check_json`), for a script that writes to its channel without the Core API.
"""

from __future__ import annotations

import json
import math
from typing import Any

from rung.broker.limits import MAX_JSON_DEPTH, MAX_METRICS_BYTES

__all__ = [
    "MAX_METRICS_BYTES",
    "MAX_VALUE_DEPTH",
    "check_depth",
    "check_finite",
    "check_json",
    "check_metric",
    "check_metrics",
    "json_depth",
]


def json_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """How deeply lists and mappings nest in ``value`` (a number or a string: 0, ``[]``:
    1), counted without recursion; past ``limit`` it stops and answers ``limit + 1``."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list | tuple):
            depth += 1
            if depth > limit:
                return limit + 1
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth) for child in children)
    return deepest


# Metrics and checkpoint metadata travel two levels down in their event (the envelope,
# its body), and the whole event is held to MAX_JSON_DEPTH: so they may nest this deep.
EVENT_LEVELS = 2
MAX_VALUE_DEPTH = MAX_JSON_DEPTH - EVENT_LEVELS


def check_depth(what: str, value: Any) -> None:
    if json_depth(value, MAX_VALUE_DEPTH) > MAX_VALUE_DEPTH:
        raise ValueError(
            f"{what} nest deeper than {MAX_VALUE_DEPTH} levels (MAX_JSON_DEPTH, "
            f"{MAX_JSON_DEPTH}, less the {EVENT_LEVELS} of the event that carries them); "
            "report flatter values"
        )


def check_json(what: str, value: Any, max_bytes: int, limit_name: str) -> int:
    """``value``'s size as JSON, if it is within ``max_bytes`` and :data:`MAX_VALUE_DEPTH`;
    else a ValueError naming the limit."""
    check_depth(what, value)
    size = len(json.dumps(value))
    if size > max_bytes:
        raise ValueError(
            f"{what} are {size} bytes as JSON, over the {max_bytes}-byte limit "
            f"({limit_name}); report fewer or smaller values"
        )
    return size


def check_finite(what: str, value: Any) -> None:
    """A ValueError when ``value`` holds NaN or an infinity: checkpoint metadata goes to
    the searcher as JSON, which has no number for them."""
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        raise ValueError(
            f"{what} hold NaN or an infinity, which JSON has no number for; store such a "
            "value as a string (str(x)) or leave it out"
        ) from None


def _json_safe(key: str, value: Any) -> Any:
    """``value`` with every non-finite number spelled as a string; an error names a key
    whose value cannot be a metric."""
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, list):
        return [_json_safe(key, item) for item in value]
    if isinstance(value, dict):
        return {inner: _json_safe(f"{key}.{inner}", item) for inner, item in value.items()}
    raise ValueError(
        f"metric {key!r} has type {type(value).__name__}; report numbers, "
        "strings, booleans, lists or mappings of those"
    )


def check_metrics(metrics: Any) -> dict[str, Any]:
    if not isinstance(metrics, dict):
        raise TypeError(f"metrics must be a dict, got {type(metrics).__name__}")
    check_depth("metrics", metrics)  # before anything recurses into them
    safe: dict[str, Any] = {}
    for key, value in metrics.items():
        if not isinstance(key, str):
            raise TypeError(f"metric names must be strings, got {key!r}")
        safe[key] = _json_safe(key, value)
    check_json("metrics", safe, MAX_METRICS_BYTES, "MAX_METRICS_BYTES")
    return safe


def check_metric(value: Any) -> float:
    """The searcher metric: a finite number (a non-finite one ranks worst)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"the searcher metric must be a number, got {value!r}")
    return float(value)
