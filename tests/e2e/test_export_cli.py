"""``rung experiment export``: a real experiment's metrics, written by the command and read
back with ``csv``, ``json`` and TensorBoard's own reader.

The experiment runs on ``Client.local()`` (real trial processes, the in-memory broker);
the command's handler then runs as ``rung`` would, its client a local searcher reopened
on the same state directory: nothing else to start. The last test runs the command as
a process against a searcher on the local RabbitMQ.
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing import (  # type: ignore[import-untyped]
    event_accumulator,
    event_file_loader,
)

import rung
from rung.cli import experiments
from rung.cli.main import build_parser
from tests.e2e.conftest import Cluster

# A training script that reports what users do report: odd metric names, NaN, infinity,
# numbers too big for TensorBoard's float32, strings, booleans, nested values.
SCRIPT = """
import math

import rung as det

NAMES = ("../x", "a,b", 'say "hi"', "two\\nlines", "ünïcødé ✓", "=1+1")

info = det.get_cluster_info()
scale = info.trial.hparams["scale"]
with det.core.init() as core:
    for op in core.searcher.operations():
        for step in range(1, op.length + 1):
            metrics = {name: scale * step + i for i, name in enumerate(NAMES)}
            metrics |= {"loss": scale / step, "nan": math.nan, "inf": math.inf}
            core.train.report_training_metrics(step, metrics)
        core.train.report_validation_metrics(
            op.length,
            {"loss": scale / op.length, "note": "done", "ok": True, "big": 1e300, "h": [1]},
        )
        op.report_completed(scale / op.length)
"""

CONFIG: dict[str, Any] = {
    "name": "export-e2e",
    "entrypoint": "python3 report.py",
    "hyperparameters": {"scale": {"type": "categorical", "vals": [1, 3]}},
    "searcher": {"name": "grid", "metric": "loss", "max_length": 4},
    "max_restarts": 0,
}
TRAINING = ("../x", "a,b", 'say "hi"', "two\nlines", "ünïcødé ✓", "=1+1")
FIXED = ["trial_id", "attempt", "group", "steps_completed", "reported_at"]


def _f32(value: float) -> float:
    unpacked: float = struct.unpack("<f", struct.pack("<f", value))[0]
    return unpacked


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, list[rung.MetricReport]]:
    """A completed experiment in a state directory, and the metrics the client reads."""
    root = tmp_path_factory.mktemp("export")
    context = root / "context"
    context.mkdir()
    (context / "report.py").write_text(SCRIPT)

    async def run() -> tuple[str, list[rung.MetricReport]]:
        async with rung.Client.local(root / "state") as client:
            experiment = await client.create_experiment(CONFIG, context)
            assert await experiment.wait(timeout=120) == "COMPLETED"
            return experiment.id, await experiment.metrics()

    experiment_id, reports = asyncio.run(run())
    return root / "state", experiment_id, reports


@pytest.fixture
def rung_export(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    finished: tuple[Path, str, list[rung.MetricReport]],
) -> Callable[..., tuple[int, str, str]]:
    """``rung experiment export EXP ...`` through the real parser and handler; the client
    is a local searcher reopened on the experiment's state directory."""
    state, experiment_id, _ = finished

    def local_client(_args: Any, main: Callable[[rung.Client], Awaitable[int]]) -> int:
        async def go() -> int:
            async with rung.Client.local(state) as client:
                return await main(client)

        return asyncio.run(go())

    monkeypatch.setattr(experiments, "run_client", local_client)

    def command(*argv: str) -> tuple[int, str, str]:
        args = build_parser().parse_args(["experiment", "export", experiment_id, *argv])
        code: int = args.handler(args)
        out, err = capsys.readouterr()
        return code, out, err

    return command


def _by_trial(reports: list[rung.MetricReport]) -> dict[int, list[rung.MetricReport]]:
    out: dict[int, list[rung.MetricReport]] = {}
    for report in reports:
        out.setdefault(report.trial_id, []).append(report)
    return out


def _scale(out: Path, trial_id: int) -> int:
    described = json.loads((out / "experiment.json").read_text())
    (trial,) = (t for t in described["trials"] if t["trial_id"] == trial_id)
    scale: int = trial["hparams"]["scale"]
    return scale


def test_the_reports_are_what_the_script_sent(
    finished: tuple[Path, str, list[rung.MetricReport]],
) -> None:
    _, _, reports = finished
    trials = _by_trial(reports)
    assert sorted(trials) == [1, 2]
    for mine in trials.values():
        assert [(r.group, r.steps_completed) for r in mine] == [
            *(("training", s) for s in (1, 2, 3, 4)),
            ("validation", 4),
        ]
        assert mine[0].metrics["nan"] == "NaN"  # the Core API's spelling
        assert mine[0].metrics["inf"] == "Infinity"


def test_export_csv(
    rung_export: Callable[..., tuple[int, str, str]],
    finished: tuple[Path, str, list[rung.MetricReport]],
    tmp_path: Path,
) -> None:
    _, experiment_id, reports = finished
    out = tmp_path / "new" / "csv"
    code, stdout, _ = rung_export("--format", "csv", str(out), "--json")
    assert code == 0
    printed = json.loads(stdout)
    assert printed == {
        "experiment_id": experiment_id,
        "format": "csv",
        "directory": str(out),
        "files": ["trial-1.csv", "trial-2.csv", "experiment.json"],
        "trials": 2,
        "reports": 10,
        "scalars": 0,
        "skipped": {},
        "replaced": [],
    }
    assert sorted(p.name for p in out.iterdir()) == sorted(printed["files"])
    for trial_id, mine in _by_trial(reports).items():
        scale = _scale(out, trial_id)
        with (out / f"trial-{trial_id}.csv").open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        names = sorted({*TRAINING, "loss", "nan", "inf", "note", "ok", "big", "h"})
        assert list(rows[0]) == [*FIXED, *names]
        assert len(rows) == 5
        for step, row in enumerate(rows[:4], start=1):
            assert row["group"] == "training"
            assert int(row["steps_completed"]) == step
            assert int(row["trial_id"]) == trial_id
            assert int(row["attempt"]) == 1
            assert float(row["reported_at"]) == mine[step - 1].reported_at
            for i, name in enumerate(TRAINING):
                assert int(row[name]) == scale * step + i
            assert float(row["loss"]) == scale / step
            assert (row["nan"], row["inf"]) == ("NaN", "Infinity")
            assert row["note"] == row["ok"] == row["big"] == row["h"] == ""
        validation = rows[4]
        assert validation["group"] == "validation"
        assert float(validation["loss"]) == scale / 4
        assert json.loads(validation["note"]) == "done"
        assert json.loads(validation["ok"]) is True
        assert float(validation["big"]) == 1e300
        assert json.loads(validation["h"]) == [1]
        assert validation["nan"] == validation["../x"] == ""
    described = json.loads((out / "experiment.json").read_text())
    assert described["experiment_id"] == experiment_id
    assert described["name"] == "export-e2e"
    assert described["state"] == "COMPLETED"
    assert sorted(t["hparams"]["scale"] for t in described["trials"]) == [1, 3]
    assert {t["trial_id"]: t["metric"] for t in described["trials"]} == {
        t: _scale(out, t) / 4 for t in (1, 2)
    }


def test_export_jsonl(
    rung_export: Callable[..., tuple[int, str, str]],
    finished: tuple[Path, str, list[rung.MetricReport]],
    tmp_path: Path,
) -> None:
    _, experiment_id, reports = finished
    code, stdout, _ = rung_export("--format", "jsonl", str(tmp_path))
    assert code == 0
    assert stdout == (
        f"{experiment_id}: 10 metric reports of 2 trials written to {tmp_path} as jsonl\n"
    )
    for trial_id, mine in _by_trial(reports).items():
        lines = (tmp_path / f"trial-{trial_id}.jsonl").read_text().splitlines()
        assert [json.loads(line) for line in lines] == [r.model_dump(mode="json") for r in mine]
        first = json.loads(lines[0])["metrics"]
        scale = _scale(tmp_path, trial_id)
        assert first == {
            **{name: scale + i for i, name in enumerate(TRAINING)},
            "loss": scale,
            "nan": "NaN",
            "inf": "Infinity",
        }


def test_export_tensorboard(
    rung_export: Callable[..., tuple[int, str, str]],
    finished: tuple[Path, str, list[rung.MetricReport]],
    tmp_path: Path,
) -> None:
    _, experiment_id, reports = finished
    code, stdout, _ = rung_export("--format", "tensorboard", str(tmp_path), "--json")
    assert code == 0
    printed = json.loads(stdout)
    # Per trial: 4 training reports of 6 + 1 numbers, 1 validation loss; left out: the
    # NaN and infinity of each training report, and 4 validation values.
    assert printed["scalars"] == 2 * (4 * 7 + 1)
    assert printed["skipped"] == {"beyond_float32": 2, "not_a_number": 6, "not_finite": 16}
    text_code, text, _ = rung_export("--format", "tensorboard", str(tmp_path), "--force")
    assert text_code == 0
    assert "58 scalars; 24 values left out (2 beyond float32, 6 not a number, 16 not finite)" in (
        text
    )
    assert "replacing 3 file(s)\n" in text
    assert f"view them with: tensorboard --logdir {tmp_path}" in text
    for trial_id, mine in _by_trial(reports).items():
        run = tmp_path / f"trial-{trial_id}"
        (event_path,) = run.iterdir()  # the forced export replaced the first one
        assert event_path.name.startswith("events.out.tfevents.")
        accumulator = event_accumulator.EventAccumulator(
            str(run), size_guidance={event_accumulator.SCALARS: 0}
        )
        accumulator.Reload()
        tags = accumulator.Tags()[event_accumulator.SCALARS]
        assert sorted(tags) == sorted(
            [*(f"training/{name}" for name in (*TRAINING, "loss")), "validation/loss"]
        )
        scale = _scale(tmp_path, trial_id)
        training = [r for r in mine if r.group == "training"]
        for i, name in enumerate(TRAINING):
            assert [
                (e.wall_time, e.step, e.value) for e in accumulator.Scalars(f"training/{name}")
            ] == [
                (r.reported_at, r.steps_completed, float(scale * r.steps_completed + i))
                for r in training
            ]
        assert [(e.step, e.value) for e in accumulator.Scalars("training/loss")] == [
            (s, _f32(scale / s)) for s in (1, 2, 3, 4)
        ]
        (validation,) = accumulator.Scalars("validation/loss")
        assert (validation.wall_time, validation.step) == (mine[-1].reported_at, 4)
        assert math.isclose(validation.value, scale / 4, rel_tol=1e-7)
        first = next(iter(event_file_loader.LegacyEventFileLoader(str(event_path)).Load()))
        assert first.file_version == "brain.Event:2"
    assert json.loads((tmp_path / "experiment.json").read_text())["experiment_id"] == experiment_id


def test_files_in_the_way_exit_2_until_forced(
    rung_export: Callable[..., tuple[int, str, str]], tmp_path: Path
) -> None:
    assert rung_export("--format", "csv", str(tmp_path))[0] == 0
    before = (tmp_path / "trial-1.csv").read_bytes()
    code, stdout, stderr = rung_export("--format", "csv", str(tmp_path))
    assert (code, stdout) == (2, "")
    assert stderr == (
        f"error: {tmp_path} already holds 3 file(s) this export would overwrite "
        "(trial-1.csv, trial-2.csv, experiment.json); pass --force to replace them, or "
        "export into a new or empty directory\n"
    )
    assert (tmp_path / "trial-1.csv").read_bytes() == before
    code, _, _ = rung_export("--format", "csv", str(tmp_path), "--force")
    assert code == 0
    assert (tmp_path / "trial-1.csv").read_bytes() == before  # the same experiment, again
    other = tmp_path / "file"
    other.write_text("x")
    code, _, stderr = rung_export("--format", "jsonl", str(other))
    assert code == 2
    assert f"error: {other} is not a directory" in stderr


def test_the_format_is_checked_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["e", "export", "exp-1", "out", "--format", "parquet"])
    assert exited.value.code == 2
    assert "invalid choice: 'parquet'" in capsys.readouterr().err


@pytest.mark.rabbitmq
def test_the_command_against_a_searcher_on_rabbitmq(cluster: Cluster, tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    (context / "report.py").write_text(SCRIPT)
    config = tmp_path / "export.yaml"
    config.write_text(json.dumps(CONFIG))  # JSON is YAML
    cluster.start_worker("w1", 2)
    created = cluster.create(config, context)
    assert created.returncode == 0, created.stderr
    experiment_id = json.loads(created.stdout)["experiment_id"]
    out = tmp_path / "tb"
    done = cluster.rung("e", "export", experiment_id, "--format", "tensorboard", str(out), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["scalars"] == 58
    for trial_id in (1, 2):
        accumulator = event_accumulator.EventAccumulator(
            str(out / f"trial-{trial_id}"), size_guidance={event_accumulator.SCALARS: 0}
        )
        accumulator.Reload()
        assert [e.step for e in accumulator.Scalars("training/../x")] == [1, 2, 3, 4]
    again = cluster.rung("e", "export", experiment_id, "--format", "tensorboard", str(out))
    assert again.returncode == 2
    assert "pass --force" in again.stderr
    assert "Traceback" not in again.stderr
