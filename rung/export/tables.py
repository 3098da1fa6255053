"""One trial's metric reports as CSV or as JSON lines: text in, text out, no files.

CSV: one row per report, in the order given (the event log's), with the columns
``trial_id, attempt, group, steps_completed, reported_at`` and then one column per metric
name the trial ever reported, sorted. A cell is

- empty where that report has no such metric;
- a number as Python writes it (``float(cell)`` reads it back exactly);
- ``NaN``, ``Infinity`` or ``-Infinity`` for a number that is not finite: the Core API
  sends those as exactly these strings (JSON has no such numbers), and ``float(cell)``
  reads them back too;
- anything else (a string, a boolean, null, a list, a mapping) as JSON text, so that a
  string ``"3"`` stays apart from the number ``3`` (``json.loads(cell)`` reads it back).

A metric whose name is one of the five fixed columns gets the column ``metrics.<name>``
(more ``metrics.`` until it is unique), so that no two columns share a name. Names and
values are user input: the ``csv`` module quotes any cell with a comma, quote or line
break, and a string that is not valid UTF-8 on its own (a lone surrogate) is written with
backslash escapes.

JSON lines: one object per report, ``{"experiment_id", "trial_id", "attempt", "group",
"steps_completed", "reported_at", "metrics"}``, with the metrics as reported: non-finite
numbers as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (as the Core API sends
them), and strict JSON (ASCII, every other character escaped), so any reader takes it.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from rung.client import MetricReport

__all__ = [
    "FIXED_COLUMNS",
    "NON_FINITE_SPELLINGS",
    "csv_cell",
    "csv_text",
    "json_safe",
    "jsonl_text",
    "metric_columns",
    "report_json",
]

FIXED_COLUMNS: Final = ("trial_id", "attempt", "group", "steps_completed", "reported_at")
# How the Core API spells the numbers JSON lacks (rung/worker/core/_validate.py).
NON_FINITE_SPELLINGS: Final = frozenset({"NaN", "Infinity", "-Infinity"})


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float spelled as the Core API does (``"NaN"``,
    ``"Infinity"``, ``"-Infinity"``), in lists and mappings too: valid strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return _spell(value)
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    return value


def _spell(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _dumps(value: Any) -> str:
    return json.dumps(json_safe(value), allow_nan=False, ensure_ascii=True)


def csv_cell(value: Any) -> str:
    """A metric value as a CSV cell (see the module's docstring)."""
    if isinstance(value, bool):
        return _dumps(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else _spell(value)
    if isinstance(value, str) and value in NON_FINITE_SPELLINGS:
        return value
    return _dumps(value)


def metric_columns(reports: Iterable[MetricReport]) -> list[tuple[str, str]]:
    """``(metric name, column name)`` for each metric name in ``reports``, sorted by name;
    the column is the name, or ``metrics.<name>`` where the name is a fixed column's."""
    names = sorted({name for report in reports for name in report.metrics})
    taken = set(FIXED_COLUMNS) | set(names)
    columns: list[tuple[str, str]] = []
    for name in names:
        column = name
        if name in FIXED_COLUMNS:
            while column in taken:
                column = f"metrics.{column}"
            taken.add(column)
        columns.append((name, column))
    return columns


def csv_text(reports: Sequence[MetricReport]) -> str:
    """One trial's reports as CSV (RFC 4180: CRLF line ends, minimal quoting), with a
    header row also when there are no reports."""
    columns = metric_columns(reports)
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow([*FIXED_COLUMNS, *(column for _, column in columns)])
    for report in reports:
        fixed = [
            str(report.trial_id),
            str(report.attempt),
            report.group,
            str(report.steps_completed),
            repr(report.reported_at),
        ]
        metrics = report.metrics
        cells = [csv_cell(metrics[name]) if name in metrics else "" for name, _ in columns]
        writer.writerow([*fixed, *cells])
    return out.getvalue()


def report_json(report: MetricReport) -> dict[str, Any]:
    """One report as a JSON object's fields, in the order of the JSON lines export."""
    return {
        "experiment_id": report.experiment_id,
        "trial_id": report.trial_id,
        "attempt": report.attempt,
        "group": report.group,
        "steps_completed": report.steps_completed,
        "reported_at": report.reported_at,
        "metrics": json_safe(report.metrics),
    }


def jsonl_text(reports: Iterable[MetricReport]) -> str:
    """One JSON object a line per report; empty for no reports."""
    return "".join(_dumps(report_json(report)) + "\n" for report in reports)
