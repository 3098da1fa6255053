"""``rung.export``: metric reports in, files out, read back with the readers people use
(``csv``, ``json``, and TensorBoard's own event file reader), no searcher needed."""

from __future__ import annotations

import csv
import json
import math
import os
import random
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing import (  # type: ignore[import-untyped]
    event_accumulator,
    event_file_loader,
)
from tensorboard.compat.proto import event_pb2  # type: ignore[import-untyped]
from tensorboard.compat.tensorflow_stub import (  # type: ignore[import-untyped]
    pywrap_tensorflow as tb_records,
)

from rung.broker.schemas import ExperimentSummary, TrialSummary
from rung.client import MetricReport
from rung.export import FORMATS, ExportError, crc32c, export_experiment, masked_crc32c
from rung.export.crc32c import mask
from rung.export.tables import csv_cell, csv_text, metric_columns
from rung.export.tensorboard import (
    event_file,
    file_version_event,
    read_records,
    scalar,
    scalars_event,
    tfrecord,
)

T0 = 1_700_000_000.125  # reported_at of the first report
CREATED = 1_700_000_999.0  # the export's own time: TensorBoard's file names
HOSTILE = ("../x", "a,b", 'say "hi"', "two\nlines", "cr\rlf", "ünïcødé ✓", "", "=1+1", "\x00nul")


# ---------------------------------------------------------------------- records
def _report(
    trial_id: int,
    steps: int,
    metrics: dict[str, Any],
    *,
    group: str = "training",
    attempt: int = 1,
    at: float | None = None,
) -> MetricReport:
    return MetricReport(
        experiment_id="exp-7",
        trial_id=trial_id,
        attempt=attempt,
        group=group,
        steps_completed=steps,
        metrics=metrics,
        reported_at=T0 + steps if at is None else at,
    )


def _trial(trial_id: int, hparams: dict[str, Any], metric: float | None) -> TrialSummary:
    return TrialSummary(
        trial_id=trial_id,
        request_id=f"r{trial_id}",
        hparams=hparams,
        state="COMPLETED",
        length=3,
        metric=metric,
        restarts=0,
        attempt=1,
        latest_checkpoint=None,
        worker_id=None,
    )


def _summary(*trials: TrialSummary, name: str = "../../etc/passwd") -> ExperimentSummary:
    best = min((t for t in trials if t.metric is not None), key=lambda t: t.metric or 0.0)
    return ExperimentSummary(
        experiment_id="exp-7",
        name=name,  # user input: never part of a file name
        state="COMPLETED",
        progress=1.0,
        trials=list(trials),
        best_trial=best,
        event_log="/state/exp-7/events.log",
        labels=["l,1"],
    )


def _hostile_reports() -> list[MetricReport]:
    """Trial 1: hostile names, odd values, a restart that reports steps 1-2 again."""
    reports = [
        _report(1, step, {name: step * (i + 1) + 0.5 for i, name in enumerate(HOSTILE)})
        for step in (1, 2, 3)
    ]
    reports.append(
        _report(
            1,
            3,
            {
                "loss": 0.25,
                "nan": "NaN",  # as the Core API sends a NaN
                "inf": "Infinity",
                "ninf": "-Infinity",
                "text": "Infinity and beyond",
                "flag": True,
                "none": None,
                "nested": {"a": [1, 2]},
                "big": 1e300,
                "huge_int": 10**400,
                "int": 7,
            },
            group="validation",
            at=T0 + 3.5,
        )
    )
    # A restart (attempt 2) goes back to step 1: TensorBoard must keep both.
    reports += [
        _report(1, step, {"../x": -float(step)}, attempt=2, at=T0 + 10 + step) for step in (1, 2)
    ]
    return reports


def _experiment() -> tuple[ExperimentSummary, list[MetricReport]]:
    reports = _hostile_reports() + [_report(2, s, {"loss": 1.0 / s}) for s in (1, 2)]
    summary = _summary(
        _trial(1, {"lr": 0.1, "name": "a,b"}, 0.25),
        _trial(2, {"lr": 0.01, "name": "c"}, 0.5),
        _trial(3, {"lr": 0.5, "name": "never reported"}, None),
    )
    return summary, reports


# ---------------------------------------------------------------------- crc32c
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", 0x00000000),
        (b"123456789", 0xE3069283),
        (bytes(32), 0x8A9136AA),  # RFC 3720, B.4
        (b"\xff" * 32, 0x62A8AB43),
        (bytes(range(32)), 0x46DD794E),
        (bytes(range(31, -1, -1)), 0x113FDB5C),
        (b"a", 0xC1D04330),
    ],
)
def test_crc32c_matches_the_known_vectors(data: bytes, expected: int) -> None:
    assert crc32c(data) == expected


def test_crc32c_continues_and_agrees_with_tensorboards_own() -> None:
    rng = random.Random(19)
    for size in (0, 1, 7, 8, 255, 1000, 4097):
        data = rng.randbytes(size)
        cut = size // 3
        assert crc32c(data[cut:], crc32c(data[:cut])) == crc32c(data)
        assert crc32c(data) == tb_records.crc32c(data)
        assert masked_crc32c(data) == tb_records.masked_crc32c(data)


def test_the_mask_is_tfrecords() -> None:
    for crc in (0, 1, 0xE3069283, 0xFFFFFFFF, 0x80000000):
        rotated = ((crc >> 15) | (crc << 17)) & 0xFFFFFFFF
        assert mask(crc) == (rotated + 0xA282EAD8) % 2**32
    assert masked_crc32c(b"123456789") == mask(0xE3069283)


# ---------------------------------------------------------------------- protobuf, TFRecord
def test_events_decode_with_tensorboards_protobuf() -> None:
    first = event_pb2.Event.FromString(file_version_event(T0))
    assert first.wall_time == T0
    assert first.step == 0
    assert first.file_version == "brain.Event:2"
    assert first.WhichOneof("what") == "file_version"
    packed = [("training/../x", scalar(1.5)), ("validation/ü\n,", scalar(-2))]
    values = [(tag, value) for tag, value in packed if isinstance(value, bytes)]
    for step in (1, 127, 128, 300, 2**40, 2**63 - 1):
        event = event_pb2.Event.FromString(scalars_event(T0 + 0.5, step, values))
        assert (event.wall_time, event.step) == (T0 + 0.5, step)
        assert event.WhichOneof("what") == "summary"
        assert [(v.tag, v.simple_value) for v in event.summary.value] == [
            ("training/../x", 1.5),
            ("validation/ü\n,", -2.0),
        ]


def test_tfrecord_framing_round_trips_and_checks_every_checksum() -> None:
    bodies = [b"", b"x", bytes(range(256)) * 3]
    data = b"".join(tfrecord(body) for body in bodies)
    assert read_records(data) == bodies
    length = struct.pack("<Q", 1)
    assert tfrecord(b"x") == (
        length
        + struct.pack("<I", masked_crc32c(length))
        + b"x"
        + struct.pack("<I", masked_crc32c(b"x"))
    )
    for at, what in ((0, "length checksum"), (12 + 0 + 4 + 12, "data checksum")):
        broken = bytearray(data)
        broken[at] ^= 0x01
        with pytest.raises(ValueError, match=what):
            read_records(bytes(broken))
    with pytest.raises(ValueError, match="cut short"):
        read_records(data[:-1])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, struct.pack("<f", 1.0)),
        (-2.5, struct.pack("<f", -2.5)),
        (0.1, struct.pack("<f", 0.1)),
        (3.4e38, struct.pack("<f", 3.4e38)),
        (True, "not_a_number"),
        (None, "not_a_number"),
        ("3", "not_a_number"),
        ([1.0], "not_a_number"),
        ({"a": 1}, "not_a_number"),
        ("NaN", "not_finite"),
        ("Infinity", "not_finite"),
        ("-Infinity", "not_finite"),
        (math.nan, "not_finite"),
        (-math.inf, "not_finite"),
        (1e300, "beyond_float32"),
        (-(10**39), "beyond_float32"),
        (10**400, "beyond_float32"),
    ],
)
def test_which_values_become_scalars(value: Any, expected: bytes | str) -> None:
    assert scalar(value) == expected


# ---------------------------------------------------------------------- csv
def _read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def test_csv_round_trips_hostile_names_and_values(tmp_path: Path) -> None:
    summary, reports = _experiment()
    export_experiment(summary, reports, tmp_path / "out", "csv", created=CREATED)
    header, *rows = _read_csv(tmp_path / "out" / "trial-1.csv")
    names = sorted({name for r in reports if r.trial_id == 1 for name in r.metrics})
    assert header == ["trial_id", "attempt", "group", "steps_completed", "reported_at", *names]
    mine = [r for r in reports if r.trial_id == 1]
    assert len(rows) == len(mine)
    for row, report in zip(rows, mine, strict=True):
        assert len(row) == len(header)
        cells = dict(zip(header, row, strict=True))
        assert int(cells["trial_id"]) == 1
        assert int(cells["attempt"]) == report.attempt
        assert cells["group"] == report.group
        assert int(cells["steps_completed"]) == report.steps_completed
        assert float(cells["reported_at"]) == report.reported_at
        for name in names:
            if name not in report.metrics:
                assert cells[name] == ""
            else:
                assert _parse_cell(cells[name]) == report.metrics[name], name
    validation = dict(zip(header, rows[3], strict=True))
    assert validation["nan"] == "NaN"
    assert validation["inf"] == "Infinity"
    assert validation["ninf"] == "-Infinity"
    assert math.isnan(float(validation["nan"]))
    assert float(validation["ninf"]) == -math.inf
    assert validation["text"] == '"Infinity and beyond"'  # a string: JSON text
    assert validation["flag"] == "true"
    assert validation["none"] == "null"
    assert validation["int"] == "7"
    assert validation["big"] == "1e+300"
    assert validation["huge_int"] == str(10**400)
    # Trial 3 reported nothing: a header only. Trial 2: its own metric names.
    assert _read_csv(tmp_path / "out" / "trial-3.csv") == [
        ["trial_id", "attempt", "group", "steps_completed", "reported_at"]
    ]
    assert _read_csv(tmp_path / "out" / "trial-2.csv")[0][5:] == ["loss"]


def _parse_cell(cell: str) -> Any:
    if cell in ("NaN", "Infinity", "-Infinity"):
        return cell
    try:
        return json.loads(cell)
    except json.JSONDecodeError:
        return cell


def test_csv_cells_and_columns() -> None:
    assert csv_cell(0.1) == "0.1"
    assert float(csv_cell(1 / 3)) == 1 / 3
    assert csv_cell(math.nan) == "NaN"
    assert csv_cell(math.inf) == "Infinity"
    assert csv_cell("x") == '"x"'
    assert csv_cell("3") == '"3"'  # apart from the number 3
    assert csv_cell([1, math.nan]) == '[1, "NaN"]'
    # A metric named like a fixed column gets a column of its own.
    reports = [_report(1, 1, {"attempt": 5, "metrics.attempt": 6, "group": "g"})]
    assert metric_columns(reports) == [
        ("attempt", "metrics.metrics.attempt"),
        ("group", "metrics.group"),
        ("metrics.attempt", "metrics.attempt"),
    ]
    header, row = list(csv.reader(csv_text(reports).splitlines()))
    assert len(set(header)) == len(header)
    assert dict(zip(header, row, strict=True))["metrics.metrics.attempt"] == "5"
    assert dict(zip(header, row, strict=True))["attempt"] == "1"


def test_a_lone_surrogate_is_escaped_not_fatal(tmp_path: Path) -> None:
    reports = [_report(1, 1, {"bad\udc80name": 1.0})]
    summary = _summary(_trial(1, {}, 1.0))
    export_experiment(summary, reports, tmp_path / "csv", "csv")
    assert _read_csv(tmp_path / "csv" / "trial-1.csv")[0][5] == "bad\\udc80name"
    export_experiment(summary, reports, tmp_path / "jsonl", "jsonl")
    line = json.loads((tmp_path / "jsonl" / "trial-1.jsonl").read_text())
    assert list(line["metrics"]) == ["bad\udc80name"]  # JSON escapes it: no loss
    export_experiment(summary, reports, tmp_path / "tb", "tensorboard")
    assert _scalars(tmp_path / "tb" / "trial-1") == {"training/bad\\udc80name": [(T0 + 1, 1, 1.0)]}


# ---------------------------------------------------------------------- jsonl
def test_jsonl_round_trips(tmp_path: Path) -> None:
    summary, reports = _experiment()
    export_experiment(summary, reports, tmp_path, "jsonl")
    for trial_id in (1, 2, 3):
        raw = (tmp_path / f"trial-{trial_id}.jsonl").read_bytes()
        assert raw.isascii()
        lines = [json.loads(line) for line in raw.decode().splitlines()]
        mine = [r for r in reports if r.trial_id == trial_id]
        assert lines == [{**r.model_dump(mode="json")} for r in mine]
        assert [list(line) for line in lines] == [
            [
                "experiment_id",
                "trial_id",
                "attempt",
                "group",
                "steps_completed",
                "reported_at",
                "metrics",
            ]
        ] * len(mine)
    assert (tmp_path / "trial-3.jsonl").read_bytes() == b""
    # A float NaN (from code that builds reports itself) is spelled as the Core API does.
    export_experiment(
        _summary(_trial(1, {}, 1.0)),
        [_report(1, 1, {"x": math.nan, "y": [math.inf]})],
        tmp_path / "nan",
        "jsonl",
    )
    line = json.loads((tmp_path / "nan" / "trial-1.jsonl").read_text())
    assert line["metrics"] == {"x": "NaN", "y": ["Infinity"]}


# ---------------------------------------------------------------------- tensorboard
def _event_path(run: Path) -> Path:
    (path,) = run.iterdir()
    return path


def _scalars(run: Path) -> dict[str, list[tuple[float, int, float]]]:
    """Every scalar in a run, as TensorBoard's EventAccumulator reads it."""
    accumulator = event_accumulator.EventAccumulator(
        str(run), size_guidance={event_accumulator.SCALARS: 0}
    )
    accumulator.Reload()
    return {
        tag: [(e.wall_time, e.step, e.value) for e in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()[event_accumulator.SCALARS]
    }


def _f32(value: float) -> float:
    unpacked: float = struct.unpack("<f", struct.pack("<f", value))[0]
    return unpacked


def _expected_scalars(reports: Sequence[MetricReport]) -> dict[str, list[tuple[float, int, float]]]:
    expected: dict[str, list[tuple[float, int, float]]] = {}
    for report in reports:
        for name, value in report.metrics.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if abs(value) < 3.4e38:
                tag = f"{report.group}/{name}"
                point = (report.reported_at, report.steps_completed, _f32(float(value)))
                expected.setdefault(tag, []).append(point)
    return expected


def test_tensorboard_reads_back_every_scalar(tmp_path: Path) -> None:
    summary, reports = _experiment()
    result = export_experiment(summary, reports, tmp_path, "tensorboard", created=CREATED)
    name = "events.out.tfevents.1700000999.rung"
    assert result.files == (
        f"trial-1/{name}",
        f"trial-2/{name}",
        f"trial-3/{name}",
        "experiment.json",
    )
    for trial_id in (1, 2):
        mine = [r for r in reports if r.trial_id == trial_id]
        read = _scalars(tmp_path / f"trial-{trial_id}")
        assert read == _expected_scalars(mine)
    read = _scalars(tmp_path / "trial-1")
    assert set(read) == {f"training/{n}" for n in HOSTILE} | {"validation/loss", "validation/int"}
    # The restart's steps 1 and 2 came after step 3, and TensorBoard kept them all.
    assert [(step, value) for _, step, value in read["training/../x"]] == [
        (1, 1.5),
        (2, 2.5),
        (3, 3.5),
        (1, -1.0),
        (2, -2.0),
    ]
    assert read["validation/loss"] == [(T0 + 3.5, 3, 0.25)]
    assert _scalars(tmp_path / "trial-3") == {}
    assert result.scalars == sum(
        len(points) for t in (1, 2) for points in _scalars(tmp_path / f"trial-{t}").values()
    )
    assert result.skipped == {"beyond_float32": 2, "not_a_number": 4, "not_finite": 3}


def test_tensorboards_file_loader_sees_the_version_and_exact_times(tmp_path: Path) -> None:
    _, reports = _experiment()
    mine = [r for r in reports if r.trial_id == 2]
    export_experiment(_summary(_trial(2, {}, 0.5)), mine, tmp_path, "tensorboard", created=CREATED)
    path = _event_path(tmp_path / "trial-2")
    loader = event_file_loader.LegacyEventFileLoader(str(path))
    first, *events = list(loader.Load())
    assert (first.file_version, first.wall_time, first.step) == ("brain.Event:2", T0 + 1, 0)
    assert [(e.wall_time, e.step) for e in events] == [
        (r.reported_at, r.steps_completed) for r in mine
    ]
    assert [[(v.tag, v.simple_value) for v in e.summary.value] for e in events] == [
        [("training/loss", 1.0)],
        [("training/loss", 0.5)],
    ]
    # The same bytes as TensorBoard's reader took them, and as read_records takes them.
    raw = list(event_file_loader.RawEventFileLoader(str(path)).Load())
    assert raw == read_records(path.read_bytes())
    # TensorBoard checks the checksums: with one bit flipped it reads only the events
    # before the damage.
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    assert len(list(event_file_loader.LegacyEventFileLoader(str(path)).Load())) == len(raw) - 1


def test_an_event_file_without_reports_holds_the_version_only() -> None:
    empty = event_file([], created=CREATED)
    (only,) = read_records(empty.data)
    event = event_pb2.Event.FromString(only)
    assert (event.file_version, event.wall_time) == ("brain.Event:2", CREATED)
    assert (empty.scalars, dict(empty.skipped)) == (0, {})


def test_a_step_an_int64_cannot_hold_is_skipped_not_wrapped() -> None:
    huge = 2**63 + 5
    file = event_file(
        [
            _report(1, 3, {"loss": 0.5}),
            _report(1, 0, {"loss": 0.4, "acc": 0.9}, at=T0),
            _report(1, huge, {"loss": 0.1, "acc": 0.2}, at=T0 + 9),
        ],
        created=CREATED,
    )
    events = [event_pb2.Event.FromString(raw) for raw in read_records(file.data)][1:]
    assert sorted(e.step for e in events) == [0, 3]
    assert file.scalars == 3
    assert dict(file.skipped) == {"step_beyond_int64": 2}


# ---------------------------------------------------------------------- the directory
def test_experiment_json_describes_the_experiment(tmp_path: Path) -> None:
    summary, reports = _experiment()
    for fmt in FORMATS:
        result = export_experiment(summary, reports, tmp_path / fmt, fmt, created=CREATED)
        assert (result.trials, result.reports) == (3, len(reports))
        described = json.loads((tmp_path / fmt / "experiment.json").read_text())
        assert described["experiment_id"] == "exp-7"
        assert described["name"] == "../../etc/passwd"
        assert described["state"] == "COMPLETED"
        assert described["best_trial"] == 1
        assert described["format"] == fmt
        assert described["trials"] == [
            {
                "trial_id": t.trial_id,
                "state": "COMPLETED",
                "hparams": t.hparams,
                "length": 3,
                "metric": t.metric,
                "restarts": 0,
                "reports": sum(r.trial_id == t.trial_id for r in reports),
                "path": f"trial-{t.trial_id}" + ("" if fmt == "tensorboard" else f".{fmt}"),
            }
            for t in summary.trials
        ]


def test_only_trial_ids_name_files(tmp_path: Path) -> None:
    summary, reports = _experiment()
    for fmt in FORMATS:
        export_experiment(summary, reports, tmp_path / fmt, fmt, created=CREATED)
    found = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    name = "events.out.tfevents.1700000999.rung"
    assert found == sorted(
        [
            *(f"csv/{n}" for n in ("experiment.json", "trial-1.csv", "trial-2.csv", "trial-3.csv")),
            *(
                f"jsonl/{n}"
                for n in ("experiment.json", "trial-1.jsonl", "trial-2.jsonl", "trial-3.jsonl")
            ),
            "tensorboard",
            "tensorboard/experiment.json",
            *(f"tensorboard/trial-{t}" for t in (1, 2, 3)),
            *(f"tensorboard/trial-{t}/{name}" for t in (1, 2, 3)),
            "csv",
            "jsonl",
        ]
    )
    assert not (tmp_path.parent / "x").exists()


def test_a_trial_that_reported_but_was_not_described_gets_a_file(tmp_path: Path) -> None:
    result = export_experiment(
        _summary(_trial(1, {}, 1.0)), [_report(4, 1, {"loss": 1.0})], tmp_path, "csv"
    )
    assert result.files == ("trial-1.csv", "trial-4.csv", "experiment.json")
    trials = json.loads((tmp_path / "experiment.json").read_text())["trials"]
    assert trials[1] == {
        "trial_id": 4,
        "state": None,
        "hparams": None,
        "length": None,
        "metric": None,
        "restarts": None,
        "reports": 1,
        "path": "trial-4.csv",
    }


def test_a_missing_directory_is_made(tmp_path: Path) -> None:
    summary, reports = _experiment()
    export_experiment(summary, reports, tmp_path / "a" / "b", "jsonl")
    assert (tmp_path / "a" / "b" / "experiment.json").is_file()


@pytest.mark.parametrize("fmt", FORMATS)
def test_files_in_the_way_are_refused_unless_forced(tmp_path: Path, fmt: str) -> None:
    summary, reports = _experiment()
    export_experiment(summary, reports, tmp_path, fmt, created=CREATED)
    (tmp_path / "notes.txt").write_text("mine")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(ExportError) as refused:
        export_experiment(summary, reports, tmp_path, fmt, created=CREATED + 60)
    message = str(refused.value)
    assert str(tmp_path) in message
    assert "4 file(s) this export would overwrite" in message
    assert "pass --force" in message
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before

    forced = export_experiment(summary, reports, tmp_path, fmt, force=True, created=CREATED + 60)
    assert len(forced.replaced) == 4
    assert (tmp_path / "notes.txt").read_text() == "mine"
    if fmt == "tensorboard":
        # The old event files are gone: TensorBoard would read them beside the new.
        (new,) = (tmp_path / "trial-1").iterdir()
        assert new.name == "events.out.tfevents.1700001059.rung"
        assert _scalars(tmp_path / "trial-1") == _expected_scalars(
            [r for r in reports if r.trial_id == 1]
        )
    assert not list(tmp_path.rglob(".*.tmp"))


def test_an_experiment_json_alone_is_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "experiment.json").write_text("{}")
    with pytest.raises(ExportError, match=r"1 file\(s\) .* \(experiment\.json\)"):
        export_experiment(*_experiment(), tmp_path, "csv")


def test_a_link_in_the_way_is_replaced_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    (out / "trial-1.csv").symlink_to(target)
    summary, reports = _experiment()
    with pytest.raises(ExportError, match=r"trial-1\.csv"):
        export_experiment(summary, reports, out, "csv")
    export_experiment(summary, reports, out, "csv", force=True)
    assert target.read_text() == "keep me"
    assert not (out / "trial-1.csv").is_symlink()
    assert _read_csv(out / "trial-1.csv")[0][0] == "trial_id"


def test_paths_that_no_force_can_write_over(tmp_path: Path) -> None:
    summary, reports = _experiment()
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("x")
    with pytest.raises(ExportError, match=f"{not_a_directory} is not a directory"):
        export_experiment(summary, reports, not_a_directory, "csv", force=True)
    (tmp_path / "d" / "trial-2.csv").mkdir(parents=True)
    with pytest.raises(
        ExportError, match=r"trial-2\.csv is a directory where the export writes a file"
    ):
        export_experiment(summary, reports, tmp_path / "d", "csv", force=True)
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "trial-3").write_text("x")
    with pytest.raises(
        ExportError, match="trial-3 is in the way: a TensorBoard export makes a directory"
    ):
        export_experiment(summary, reports, tmp_path / "t", "tensorboard", force=True)
    with pytest.raises(ExportError, match=r"cannot write the export at .*file.*Not a directory"):
        export_experiment(summary, reports, not_a_directory / "sub", "csv")
    with pytest.raises(
        ExportError, match="unknown export format 'parquet'; use one of csv, jsonl, tensorboard"
    ):
        export_experiment(summary, reports, tmp_path / "p", "parquet")


def test_files_get_the_umask_not_a_private_mode(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        export_experiment(*_experiment(), tmp_path, "csv")
    finally:
        os.umask(old)
    assert (tmp_path / "trial-1.csv").stat().st_mode & 0o777 == 0o644
