"""``rung experiment export``: an experiment's metrics as files, one per trial.

Records in, files out, no searcher needed::

    from rung.export import export_experiment

    summary = await experiment.describe()
    reports = await experiment.metrics()
    result = export_experiment(summary, reports, "out/", "tensorboard")

Formats: ``csv`` and ``jsonl`` (:mod:`rung.export.tables`), and ``tensorboard``: event
files that TensorBoard's own reader takes, written without TensorFlow
(:mod:`rung.export.tensorboard`, with a pure-Python CRC-32C in
:mod:`rung.export.crc32c`). The layout of the directory and the rule about files already
there are in :mod:`rung.export.directory`; docs/cli.md describes the command.
"""

from rung.export.crc32c import crc32c, masked_crc32c
from rung.export.directory import (
    FORMATS,
    SUMMARY_FILE,
    ExportError,
    ExportResult,
    Format,
    export_experiment,
    trial_path,
)
from rung.export.tables import csv_text, jsonl_text
from rung.export.tensorboard import EventFile, event_file

__all__ = [
    "FORMATS",
    "SUMMARY_FILE",
    "EventFile",
    "ExportError",
    "ExportResult",
    "Format",
    "crc32c",
    "csv_text",
    "event_file",
    "export_experiment",
    "jsonl_text",
    "masked_crc32c",
    "trial_path",
]
