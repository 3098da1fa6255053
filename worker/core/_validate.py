"""Checks on what a training script reports: numbers or JSON, bounded in size.

A diverged model reports NaN or infinity, and Determined takes such metrics. JSON has no
such numbers, so they travel as the strings ``"NaN"``, ``"Infinity"`` and
``"-Infinity"``. The searcher metric is separate: a non-finite one ranks worst.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["MAX_METRICS_BYTES", "check_metric", "check_metrics"]

MAX_METRICS_BYTES = 256 * 1024


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
    safe: dict[str, Any] = {}
    for key, value in metrics.items():
        if not isinstance(key, str):
            raise TypeError(f"metric names must be strings, got {key!r}")
        safe[key] = _json_safe(key, value)
    size = len(json.dumps(safe))
    if size > MAX_METRICS_BYTES:
        raise ValueError(
            f"metrics are {size} bytes as JSON, over the {MAX_METRICS_BYTES} "
            "limit; report fewer or smaller values"
        )
    return safe


def check_metric(value: Any) -> float:
    """The searcher metric: a finite number (a non-finite one ranks worst)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"the searcher metric must be a number, got {value!r}")
    return float(value)
