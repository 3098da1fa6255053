"""Metrics nested as deep as an event may carry them, then one level more, and deeper
still in checkpoint metadata."""

from collections.abc import Callable
from typing import Any

from _train import finish, say  # type: ignore[import-not-found]  # (its own folder)

import rung as det
from rung.worker.core._validate import MAX_VALUE_DEPTH


def nested(depth: int) -> dict[str, Any]:
    value: Any = 1
    for _ in range(depth - 1):
        value = [value]
    return {"deep": value}


with det.core.init() as core_context:
    report = core_context.train.report_training_metrics
    report(1, nested(MAX_VALUE_DEPTH))
    say("reported metrics at the depth limit")

    def deep_metadata() -> None:
        with core_context.checkpoint.store_path(nested(5000) | {"steps_completed": 1}):
            pass

    calls: list[tuple[str, Callable[[], None]]] = [
        ("metrics", lambda: report(2, nested(MAX_VALUE_DEPTH + 1))),
        ("metrics", lambda: report(3, nested(100_000))),
        ("metadata", deep_metadata),
    ]
    for what, call in calls:
        try:
            call()
        except ValueError as exc:
            say(f"refused {what}: {exc}")
    finish(core_context)
