"""Checks on what a training script reports: finite numbers or JSON, bounded in size."""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["MAX_METRICS_BYTES", "check_metric", "check_metrics"]

MAX_METRICS_BYTES = 256 * 1024


def _check_value(key: str, value: Any) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"metric {key!r} is {value}; report finite numbers only")
        return
    if isinstance(value, list):
        for item in value:
            _check_value(key, item)
        return
    if isinstance(value, dict):
        for inner_key, item in value.items():
            _check_value(f"{key}.{inner_key}", item)
        return
    raise ValueError(
        f"metric {key!r} has type {type(value).__name__}; report numbers, "
        "strings, booleans, lists or mappings of those"
    )


def check_metrics(metrics: Any) -> dict[str, Any]:
    if not isinstance(metrics, dict):
        raise TypeError(f"metrics must be a dict, got {type(metrics).__name__}")
    for key, value in metrics.items():
        if not isinstance(key, str):
            raise TypeError(f"metric names must be strings, got {key!r}")
        _check_value(key, value)
    size = len(json.dumps(metrics))
    if size > MAX_METRICS_BYTES:
        raise ValueError(
            f"metrics are {size} bytes as JSON, over the {MAX_METRICS_BYTES} "
            "limit; report fewer or smaller values"
        )
    return metrics


def check_metric(value: Any) -> float:
    """The searcher metric: a finite number (a non-finite one ranks worst)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"the searcher metric must be a number, got {value!r}")
    return float(value)
