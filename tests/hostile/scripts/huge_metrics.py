"""Metrics and checkpoint metadata at and over Rung's limits, through the Core API: what is
within is reported, what is over is refused with an error naming the limit."""

import json

from _train import finish, say  # type: ignore[import-not-found]  # (its own folder)

import rung as det
from rung.broker.limits import MAX_CHECKPOINT_METADATA_BYTES, MAX_METRICS_BYTES


def blob(total: int) -> dict[str, object]:
    """Metrics of exactly ``total`` bytes as JSON."""
    overhead = len(json.dumps({"blob": ""}))
    return {"blob": "m" * (total - overhead)}


with det.core.init() as core_context:
    core_context.train.report_training_metrics(1, blob(MAX_METRICS_BYTES))
    say("reported metrics at the limit")
    try:
        core_context.train.report_training_metrics(2, blob(MAX_METRICS_BYTES + 1))
    except ValueError as exc:
        say(f"refused: {exc}")
    meta = {"steps_completed": 1, "notes": "n" * MAX_CHECKPOINT_METADATA_BYTES}
    try:
        with core_context.checkpoint.store_path(meta) as (path, _):
            (path / "weights").write_text("w")
    except ValueError as exc:
        say(f"refused: {exc}")
    finish(core_context)
