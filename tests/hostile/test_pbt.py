"""Hostile input to population-based training, on a real cluster (a searcher and a worker
on the local RabbitMQ, scripts in real processes): members that never checkpoint, report
NaN and infinity, crash, or checkpoint only after reporting; a population at the edge of
its ranges. No round hangs, the search ends, and the log says why each copy was, or was
not, made."""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rung.searcher.config import PBTSearcher
from rung.searcher.events import Start, TrialCheckpointed, ValidationCompleted
from rung.searcher.experiment import Experiment
from rung.searcher.ops import Create
from tests.e2e.conftest import Cluster, read_log, running_cluster
from tests.hostile.conftest import HostileTally
from tests.unit.searcher.helpers import make_config, pbt_searcher

pytestmark = pytest.mark.rabbitmq

CLASS = "pbt member"
SCRIPTS = Path(__file__).resolve().parent / "scripts"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path) as instance:
        yield instance


def _config(tmp_path: Path, misbehave: str, mode: str) -> tuple[Path, Path]:
    context = tmp_path / "context"
    context.mkdir()
    shutil.copy(SCRIPTS / "pbt_member.py", context / "train.py")
    config = tmp_path / "pbt.yaml"
    config.write_text(
        "name: pbt-hostile\nentrypoint: python3 train.py\n"
        "hyperparameters:\n"
        "  lr: {type: log, minval: -3, maxval: 0, base: 10}\n"
        f"  misbehave: {misbehave}\n"
        f"searcher: {{name: pbt, metric: loss, population_size: 4, num_rounds: 3, "
        f"length_per_round: 3, mode: {mode}, "
        "replace_function: {truncate_fraction: 0.5}, "
        "explore_function: {resample_probability: 0.2, perturb_factor: 0.2}}\n"
        "max_restarts: 0\n"
    )
    return config, context


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _notes(records: list[dict[str, Any]]) -> list[str]:
    return [n for r in records for n in r.get("notes") or []]


def _copies(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        op for r in records for op in r.get("ops", []) if op["type"] == "create" and op.get("clone")
    ]


@pytest.mark.parametrize(
    ("misbehave", "mode"),
    [
        ("no_checkpoint", "synchronous"),
        ("no_checkpoint", "asynchronous"),
        ("nan", "synchronous"),
        ("crash", "synchronous"),
        ("crash", "asynchronous"),
        ("late_checkpoint", "synchronous"),
    ],
)
def test_a_misbehaving_population_never_hangs_the_search(
    cluster: Cluster, tmp_path: Path, hostile: HostileTally, misbehave: str, mode: str
) -> None:
    cluster.start_worker("w1", 4)
    config, context = _config(tmp_path, misbehave, mode)
    started = time.monotonic()
    result = cluster.create(config, context)
    seconds = time.monotonic() - started
    assert result.returncode in (0, 1), result.stderr  # 1: the experiment failed
    summary = json.loads(result.stdout)
    records = read_log(summary["event_log"])
    notes = _notes(records)
    copies = _copies(records)
    match misbehave:
        case "no_checkpoint":
            # Nothing to copy: no copy is ever made, every member trains to the end.
            assert summary["state"] == "COMPLETED"
            assert copies == []
            assert len(summary["trials"]) == 4
            assert all(t["length"] == 9 for t in summary["trials"])
            if mode == "synchronous":
                assert any("no checkpoint at length 3" in n for n in notes), notes
            else:
                assert any("continues unchanged" in n for n in notes), notes
        case "nan":
            # NaN and infinity rank worst: a member with a number is never replaced by
            # a copy of one without.
            assert summary["state"] == "COMPLETED"
            metric = {}
            for r in records:
                body = r.get("input") or {}
                if body.get("type") == "op_completed" and r.get("ignored") is None:
                    metric[(body["trial_id"], body["length"])] = body["metric"]
            for copy in copies:
                clone = copy["clone"]
                source = metric[(clone["source_trial"], clone["length"])]
                replaced = metric.get((clone["replaces_trial"], clone["length"]))
                if not _finite(source):
                    assert not _finite(replaced), (clone, source, replaced)
        case "crash":
            # Every member fails at once: the population dies, and the search ends.
            assert summary["state"] == "ERROR"
            assert all(t["state"] == "ERRORED" for t in summary["trials"])
            assert len(summary["trials"]) <= 4 * (3 + 1)
        case "late_checkpoint":
            # A source that saves after reporting is waited for, then copied.
            assert summary["state"] == "COMPLETED"
            assert len(copies) == 4  # 2 replaced at each of 2 round ends
            assert any("waiting for trial" in n for n in notes), notes
    hostile.record(CLASS, f"{misbehave} ({mode})", "contained", seconds)


@pytest.mark.parametrize(
    ("case", "searcher"),
    [
        ("the largest population", {"population_size": 10_000, "num_rounds": 2}),
        (
            "the largest population, asynchronous",
            {"population_size": 10_000, "num_rounds": 3, "mode": "asynchronous"},
        ),
        ("the most rounds", {"population_size": 2, "num_rounds": 100_000}),
        (
            "every value resampled",
            {"explore_function": {"resample_probability": 1, "perturb_factor": 0.99}},
        ),
        (
            "the largest perturbation",
            {"explore_function": {"resample_probability": 0, "perturb_factor": 0.999}},
        ),
    ],
)
def test_a_population_at_the_edge_of_its_ranges_stays_in_its_space(
    hostile: HostileTally, case: str, searcher: dict[str, Any]
) -> None:
    base = pbt_searcher(8, 3, 1, 0.5, max_concurrent_trials=0)
    space = {
        "lr": {"type": "log", "minval": -300, "maxval": 300, "base": 10},
        "n": {"type": "int", "minval": -(2**53), "maxval": 2**53},
        "c": {"type": "categorical", "vals": list(range(200))},
    }
    started = time.monotonic()
    experiment = Experiment(make_config({**base, **searcher}, space, seed=3))
    population = [op for op in experiment.apply(Start()).ops if isinstance(op, Create)]
    config = experiment.config.searcher
    assert isinstance(config, PBTSearcher)
    assert len(population) == config.population_size
    # Every member reports (a checkpoint, then its metric), twice: the copies' values
    # stay in their ranges however far they are perturbed.
    for _ in range(2):
        holding = [r for r, t in experiment.trials.items() if t.holds_op]
        for index, rid in enumerate(holding):
            op = experiment.trials[rid].op
            assert op is not None
            saved = TrialCheckpointed(request_id=rid, uuid=f"u-{rid}-{op.length}", steps=op.length)
            experiment.apply(saved)
            experiment.apply(
                ValidationCompleted(request_id=rid, length=op.length, metric=float(index))
            )
    copies = [t for t in experiment.trials.values() if t.create.clone is not None]
    assert copies or config.num_rounds == 1
    for record in experiment.trials.values():
        values = record.hparams
        assert isinstance(values["lr"], float)
        assert 1e-300 <= values["lr"] <= 1e300
        assert isinstance(values["n"], int)
        assert -(2**53) <= values["n"] <= 2**53
        assert values["c"] in range(200)
    hostile.record("pbt config", case, "contained", time.monotonic() - started)
