"""An experiment's metrics written into a directory, one file per trial.

Layout of ``DIR``::

    experiment.json                              every format: the experiment and its trials
    trial-<id>.csv                               --format csv
    trial-<id>.jsonl                             --format jsonl
    trial-<id>/events.out.tfevents.<time>.rung   --format tensorboard (a run per trial)

Only the integer trial id goes into a file name; metric names, experiment names and
every other string the user chose go inside files only. ``DIR`` is created if missing.
If any of these files is already there, nothing is written unless ``force``; then they
are replaced (for TensorBoard: every ``events.out.tfevents.*`` file in the trial's
directory is removed, since TensorBoard would read an old one beside the new one).
Other files in ``DIR`` are left alone. Each file is written beside its place and then
renamed onto it, so a reader never sees half a file, and a symbolic link in the way is
replaced, never followed. ``experiment.json`` is written last: an export cut short has
none.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, get_args

from rung.export.tables import csv_text, json_safe, jsonl_text
from rung.export.tensorboard import event_file, event_file_name

if TYPE_CHECKING:
    from rung.client import ExperimentSummary, MetricReport, TrialSummary

__all__ = [
    "FORMATS",
    "SUMMARY_FILE",
    "ExportError",
    "ExportResult",
    "Format",
    "export_experiment",
    "summary_json",
    "trial_path",
]

Format = Literal["csv", "jsonl", "tensorboard"]
FORMATS: Final[tuple[Format, ...]] = get_args(Format)
SUMMARY_FILE: Final = "experiment.json"
EVENTS_PREFIX: Final = "events.out.tfevents."
_SHOWN: Final = 5  # conflicting paths named in an error


class ExportError(ValueError):
    """The export cannot be written as asked: a file in the way, a path that is not a
    directory, a directory that cannot be written. The message says which and the fix."""


@dataclass(frozen=True, slots=True)
class ExportResult:
    """What an export wrote. ``files`` and ``replaced`` are relative to ``directory``."""

    directory: Path
    format: Format
    files: tuple[str, ...]
    trials: int
    reports: int
    scalars: int = 0  # tensorboard: values written as scalars
    skipped: Mapping[str, int] = field(default_factory=dict)  # tensorboard: left out, by reason
    replaced: tuple[str, ...] = ()  # files that were there before (force)


def trial_path(trial_id: int, fmt: Format) -> str:
    """Where a trial's metrics go, relative to the export directory: the trial id is the
    only part of any file name that comes from the experiment, and it is an int."""
    name = f"trial-{trial_id:d}"
    if fmt == "tensorboard":
        return name  # a directory: TensorBoard's run
    return f"{name}.{fmt}"


def export_experiment(
    summary: ExperimentSummary,
    reports: Iterable[MetricReport],
    directory: str | os.PathLike[str],
    fmt: str,
    *,
    force: bool = False,
    created: float | None = None,
) -> ExportResult:
    """Write ``reports`` (``Experiment.metrics()``) and ``summary``
    (``Experiment.describe()``) into ``directory`` as ``fmt`` (module docstring).

    ``created`` (default: now) dates TensorBoard's file names. Raises
    :class:`ExportError` for a file in the way (unless ``force``), a path that is not a
    directory, or a directory that cannot be written.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    root = Path(directory)
    by_trial: defaultdict[int, list[MetricReport]] = defaultdict(list)
    for report in reports:
        by_trial[report.trial_id].append(report)
    trial_ids = sorted({t.trial_id for t in summary.trials} | set(by_trial))
    if root.exists() and not root.is_dir():
        raise ExportError(
            f"{root} is not a directory: an export writes a directory of files; "
            "give a new or existing directory"
        )
    in_the_way = _in_the_way(root, fmt, trial_ids)
    if in_the_way and not force:
        shown = ", ".join(str(p.relative_to(root)) for p in in_the_way[:_SHOWN])
        more = f" and {len(in_the_way) - _SHOWN} more" if len(in_the_way) > _SHOWN else ""
        raise ExportError(
            f"{root} already holds {len(in_the_way)} file(s) this export would overwrite "
            f"({shown}{more}); pass --force to replace them, or export into a new or "
            "empty directory"
        )
    stamp = time.time() if created is None else created
    try:
        return _write(
            summary, by_trial, root, fmt, trial_ids=trial_ids, created=stamp, replaced=in_the_way
        )
    except OSError as exc:
        where = exc.filename or root
        raise ExportError(
            f"cannot write the export at {where} ({exc.strerror or exc}); choose a "
            "directory this user may write, on a disk with room"
        ) from exc


def _in_the_way(root: Path, fmt: Format, trial_ids: Sequence[int]) -> list[Path]:
    """The files the export would replace; an ExportError for a path that no ``force``
    can write over (a directory where a file goes, or the other way round)."""
    if not root.is_dir():
        return []
    found: list[Path] = []
    for name in (*(trial_path(t, fmt) for t in trial_ids), SUMMARY_FILE):
        path = root / name
        if not os.path.lexists(path):
            continue
        if fmt == "tensorboard" and name != SUMMARY_FILE:
            if path.is_symlink() or not path.is_dir():
                raise ExportError(
                    f"{path} is in the way: a TensorBoard export makes a directory there "
                    "for the trial's event file; move it away or export into another "
                    "directory"
                )
            found.extend(sorted(_event_files(path)))
        elif path.is_dir() and not path.is_symlink():
            raise ExportError(
                f"{path} is a directory where the export writes a file; move it away or "
                "export into another directory"
            )
        else:
            found.append(path)
    return found


def _event_files(run: Path) -> Iterable[Path]:
    with os.scandir(run) as entries:
        return [run / e.name for e in entries if e.name.startswith(EVENTS_PREFIX)]


def _write(
    summary: ExperimentSummary,
    by_trial: Mapping[int, list[MetricReport]],
    root: Path,
    fmt: Format,
    *,
    trial_ids: Sequence[int],
    created: float,
    replaced: Sequence[Path],
) -> ExportResult:
    root.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    scalars = 0
    skipped: Counter[str] = Counter()
    for trial_id in trial_ids:
        trial = by_trial.get(trial_id, [])
        name = trial_path(trial_id, fmt)
        if fmt == "csv":
            _write_file(root / name, csv_text(trial).encode("utf-8", "backslashreplace"))
        elif fmt == "jsonl":
            _write_file(root / name, jsonl_text(trial).encode("ascii"))
        else:
            run = root / name
            run.mkdir(exist_ok=True)
            events = event_file(trial, created=created)
            name = f"{name}/{event_file_name(created)}"
            _write_file(root / name, events.data)
            for old in _event_files(run):
                if old.name != Path(name).name:
                    old.unlink()
            scalars += events.scalars
            skipped.update(events.skipped)
        files.append(name)
    count = {trial_id: len(by_trial.get(trial_id, [])) for trial_id in trial_ids}
    document = summary_json(summary, fmt, count)
    _write_file(root / SUMMARY_FILE, document.encode("ascii"))
    files.append(SUMMARY_FILE)
    return ExportResult(
        directory=root,
        format=fmt,
        files=tuple(files),
        trials=len(trial_ids),
        reports=sum(count.values()),
        scalars=scalars,
        skipped=dict(sorted(skipped.items())),
        replaced=tuple(str(p.relative_to(root)) for p in replaced),
    )


def _write_file(path: Path, data: bytes) -> None:
    """``data`` into a new file beside ``path`` (mode 0666 less the umask), renamed onto
    ``path``: a reader sees the old file or the new one, and a link at ``path`` is
    replaced rather than followed."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    descriptor = os.open(temporary, flags, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def summary_json(summary: ExperimentSummary, fmt: Format, reports: Mapping[int, int]) -> str:
    """``experiment.json``: the experiment, each trial's hyperparameters, state and final
    metric, where its metrics went and how many reports they hold. A trial that reported
    metrics but was not in ``summary`` (created between the two reads) has nulls."""
    described = {t.trial_id: t for t in summary.trials}
    document = {
        "experiment_id": summary.experiment_id,
        "name": summary.name,
        "description": summary.description,
        "labels": summary.labels,
        "owner": summary.owner,
        "state": summary.state,
        "message": summary.message,
        "progress": summary.progress,
        "best_trial": summary.best_trial.trial_id if summary.best_trial else None,
        "format": fmt,
        "trials": [
            _trial_json(trial_id, described.get(trial_id), fmt, count)
            for trial_id, count in sorted(reports.items())
        ],
    }
    return json.dumps(json_safe(document), indent=2, allow_nan=False, ensure_ascii=True) + "\n"


def _trial_json(
    trial_id: int, trial: TrialSummary | None, fmt: Format, reports: int
) -> dict[str, Any]:
    return {
        "trial_id": trial_id,
        "state": trial.state if trial else None,
        "hparams": trial.hparams if trial else None,
        "length": trial.length if trial else None,
        "metric": trial.metric if trial else None,
        "restarts": trial.restarts if trial else None,
        "reports": reports,
        "path": trial_path(trial_id, fmt),
    }
