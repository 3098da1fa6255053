"""The dashboard's view of an experiment, against the golden logs and a large simulated one."""

from __future__ import annotations

import itertools
import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import pytest

from bench.dashboard_log import records as synthetic_records
from rung.broker.schemas import MetricsReported, OpCompleted
from rung.dashboard.model import ExperimentView
from rung.dashboard.pages import (
    ALL_CURVES,
    Options,
    experiment_sections,
    experiment_summary,
    trial_page,
    trial_rows,
)
from rung.searcher.eventlog import CreatedRecord, InputRecord, Record, read_log, replay

GOLDEN = Path(__file__).resolve().parents[2] / "golden"
CONTEXTS = GOLDEN / "contexts"
LOGS = sorted(GOLDEN.glob("*.v1.jsonl"))
ASHA = [p for p in LOGS if "asha" in p.name]
SVG = "{http://www.w3.org/2000/svg}"


def fold(records: Sequence[Record], *, contexts: Path | None = CONTEXTS) -> ExperimentView:
    first = records[0]
    assert isinstance(first, CreatedRecord)
    view = ExperimentView(first, context_root=contexts, allow_custom=True)
    for record in records[1:]:
        view.apply(record)
    return view


@cache
def synthetic(trials: int) -> list[Record]:
    return list(synthetic_records(trials, workers=4))


def taken_results(records: Sequence[Record]) -> list[tuple[int, int, float]]:
    """(trial, length, metric) of every completed operation the searcher took."""
    out: list[tuple[int, int, float]] = []
    for record in records:
        body = getattr(record, "input", None)
        if (
            isinstance(record, InputRecord)
            and record.ignored is None
            and isinstance(body, OpCompleted)
            and body.metric is not None
        ):
            out.append((body.trial_id, body.length, body.metric))
    return out


def svg(text: str) -> ET.Element:
    return ET.fromstring(text)  # noqa: S314 (our own output, parsed to count marks)


def marks(section: str, css: str = "mark") -> list[ET.Element]:
    root = svg(section)
    return [e for e in root.iter() if css in (e.get("class") or "").split()]


@pytest.mark.parametrize("path", LOGS, ids=lambda p: p.name)
def test_the_view_has_every_result_the_searcher_took(path: Path) -> None:
    records = read_log(path)
    view = fold(records)
    taken = taken_results(records)
    assert [(r.trial_id, r.length, r.value) for r in view.results] == taken
    assert sum(len(t.results) for t in view.trials.values()) == len(taken)
    # The best-so-far line only ever improves.
    values = [r.value for r in view.best]
    sign = 1 if view.smaller_is_better else -1
    assert all(sign * b < sign * a for a, b in itertools.pairwise(values))


@pytest.mark.parametrize("path", LOGS, ids=lambda p: p.name)
def test_live_state_equals_replayed_state(path: Path) -> None:
    """The view folds the searcher's own core: its states are the replay's, at every
    record, whether records come one by one or the view is built again from the start."""
    records = read_log(path)
    view = ExperimentView(records[0], context_root=CONTEXTS, allow_custom=True)  # type: ignore[arg-type]
    for index in range(1, len(records)):
        view.apply(records[index])
        replayed = replay(records, context_root=CONTEXTS, until=index + 1).run
        assert view.state == replayed.state
        assert {t: v.state for t, v in view.trials.items()} == {
            t: r.state for t, r in replayed.by_id.items() if t in view.trials
        }
    again = fold(records)
    assert experiment_summary(again) == experiment_summary(view)


@pytest.mark.parametrize("path", LOGS, ids=lambda p: p.name)
def test_folding_a_record_twice_changes_nothing(path: Path) -> None:
    records = read_log(path)
    view = fold(records)
    before = json.dumps(experiment_summary(view), sort_keys=True)
    sections = experiment_sections(view, Options())
    assert not any(view.apply(record) for record in records)
    assert json.dumps(experiment_summary(view), sort_keys=True) == before
    assert experiment_sections(view, Options()) == sections


@pytest.mark.parametrize("path", ASHA, ids=lambda p: p.name)
def test_the_rung_view_has_a_mark_per_result_with_the_searchers_reason(path: Path) -> None:
    view = fold(read_log(path))
    rungs = view.rungs()
    assert rungs, "an ASHA experiment has rungs"
    points = [p for rung in rungs for p in rung.points]
    drawn = marks(experiment_sections(view, Options())["rungs"])
    assert len(drawn) == len(points)
    # Every result a trial has at a rung's length is a point of that rung.
    for rung in rungs:
        in_bracket = [t for t in view.trials.values() if t.bracket == rung.bracket]
        have = sorted(t.trial_id for t in in_bracket for r in t.results if r.length == rung.length)
        assert sorted(p.trial_id for p in rung.points) == have
    # A trial that was paused or promoted has the searcher's words for it.
    for rung in rungs:
        for point in rung.points:
            if point.outcome in ("promoted", "paused"):
                reason = view.reason(point.trial_id, rung.rung)
                assert f"trial {point.trial_id}" in reason
                assert "rank" in reason or "closed" in reason
    titles = [m.findtext(f"{SVG}title") or "" for m in drawn]
    assert all("rank" in t for t in titles)
    assert any("cutoff top" in t for t in titles)


def test_a_promoted_point_is_ranked_within_the_cutoff() -> None:
    view = fold(read_log(GOLDEN / "asha.v1.jsonl"))
    for rung in view.rungs():
        for point in rung.points:
            if point.outcome == "promoted" and rung.quota:
                assert point.rank <= max(rung.quota, 1) or rung.cutoff is None
                assert rung.cutoff is not None
                sign = 1 if view.smaller_is_better else -1
                assert sign * point.value <= sign * rung.cutoff or point.rank > rung.quota


def test_the_learning_curves_have_a_mark_per_result_and_a_curve_per_trial() -> None:
    records = synthetic(120)
    view = fold(records, contexts=None)
    assert len(view.trials) == 120 < ALL_CURVES
    sections = experiment_sections(view, Options())
    assert len(marks(sections["curves"])) == len(taken_results(records))
    curves = marks(sections["curves"], "curve")
    assert sorted(int(c.get("data-key", "")) for c in curves) == sorted(view.trials)
    # Top-K keeps the K best finished trials (and any still running).
    top = experiment_sections(view, Options(top=5))["curves"]
    assert len(marks(top, "curve")) == 5
    # Another metric: one mark per report of it.
    reports = sum(
        1
        for r in records
        if isinstance(r, InputRecord)
        and isinstance(r.input, MetricsReported)
        and r.input.group == "training"
    )
    other = experiment_sections(view, Options(curve="training/train_loss"))["curves"]
    assert len(marks(other)) == reports


def test_hide_stopped_keeps_the_trials_that_reached_the_end() -> None:
    view = fold(synthetic(120), contexts=None)
    shown = marks(experiment_sections(view, Options(hide_stopped=True))["curves"], "curve")
    finished = [t for t in view.trials.values() if t.length == view.max_length]
    assert finished
    assert sorted(int(c.get("data-key", "")) for c in shown) == sorted(t.trial_id for t in finished)


def test_the_worker_timeline_puts_each_attempt_on_one_slot_at_a_time() -> None:
    view = fold(synthetic(60), contexts=None)
    lanes: dict[str, list[tuple[float, float]]] = {}
    for trial in view.trials.values():
        for attempt in trial.attempts:
            end = attempt.ended_at
            assert end is not None
            lanes.setdefault(attempt.lane, []).append((attempt.started_at, end))
    assert len(lanes) == 4  # four simulated workers, one slot each
    for spans in lanes.values():
        spans.sort()
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    segments = marks(experiment_sections(view, Options())["timeline"], "segment")
    pieces = sum(len(a.pieces) for t in view.trials.values() for a in t.attempts)
    assert 0 < len(segments) <= pieces


def test_the_parallel_coordinates_and_importance_cover_every_hyperparameter() -> None:
    view = fold(synthetic(200), contexts=None)
    sections = experiment_sections(view, Options())
    lines = marks(sections["parallel"], "line")
    assert len(lines) == 200
    axes = {e.get("data-axis") for e in marks(sections["parallel"], "parallel-axis")}
    assert {"lr", "layers", "dropout", "optimizer", "batch", "loss"} <= axes
    hidden = experiment_sections(view, Options(hidden_axes=frozenset({"dropout"})))
    axes = {e.get("data-axis") for e in marks(hidden["parallel"], "parallel-axis")}
    assert "dropout" not in axes
    assert "lr" in axes
    # The loss depends on lr, layers and optimizer only; lr most of all.
    bars = marks(f"<div>{sections['importance']}</div>", "bar")
    assert bars
    first = svg(f"<div>{sections['importance']}</div>").find(".//figure")
    assert first is not None
    labels = [t.text for t in first.iter() if (t.get("class") or "") == "bar-label"]
    assert labels[0] == "lr"


def test_the_trials_table_sorts_filters_and_pages() -> None:
    view = fold(synthetic(250), contexts=None)
    rows, matching = trial_rows(view, Options())
    assert matching == 250
    assert len(rows) == 100
    assert [r["trial_id"] for r in rows] == list(range(1, 101))
    rows, _ = trial_rows(view, Options(sort="metric"))
    values = [float(r["metric"]) for r in rows if r["metric"]]
    assert values == sorted(values)
    rows, matching = trial_rows(view, Options(query='"optimizer": "adam"', page=0))
    assert 0 < matching < 250
    assert all('"optimizer": "adam"' in r["hparams"] for r in rows)
    rows, _ = trial_rows(view, Options(page=2))
    assert [r["trial_id"] for r in rows] == list(range(201, 251))


def test_options_out_of_range_fall_back_to_defaults() -> None:
    options = Options.parse(
        {"top": "-3", "sort": "__class__", "page": "x", "hide_stopped": "1", "curve": "a" * 999}
    )
    assert options.top is None
    assert options.sort == "trial"
    assert options.page == 0
    assert options.hide_stopped
    assert len(options.curve) == 200


def test_a_custom_method_that_cannot_be_rebuilt_still_shows_its_trials() -> None:
    records = read_log(GOLDEN / "failed.v1.jsonl")
    view = fold(records, contexts=None)
    assert view.unexplained is not None
    assert "could not be rebuilt" in view.unexplained
    # Unless told to, the dashboard runs no creator's code: not even with the module there.
    guarded = ExperimentView(records[0], context_root=CONTEXTS)  # type: ignore[arg-type]
    assert guarded.run is None
    assert guarded.unexplained is not None
    assert "--allow-custom-searchers" in guarded.unexplained
    assert [(r.trial_id, r.length, r.value) for r in view.results] == taken_results(records)
    assert view.rungs() == []
    sections = experiment_sections(view, Options())
    assert sections["rungs"] == ""
    assert marks(sections["curves"])


def test_hostile_hyperparameters_and_metric_names_come_out_inert() -> None:
    records = list(read_log(GOLDEN / "random.v1.jsonl"))
    created = records[0]
    assert isinstance(created, CreatedRecord)
    evil = "<script>alert(1)</script>"
    config = json.loads(json.dumps(created.config).replace("increment_by", evil))
    hostile = created.model_copy(update={"config": config})
    changed: list[Record] = [hostile]
    changed += [
        type(record).model_validate_json(record.model_dump_json().replace("increment_by", evil))
        for record in records[1:]
    ]
    view = fold(changed)
    for name, section in experiment_sections(view, Options()).items():
        assert "<script" not in section, name
    page = trial_page(view, next(iter(view.trials.values())))
    assert all("<script" not in chart for _, chart in page.charts)


def test_non_finite_metrics_are_not_results() -> None:
    records = list(read_log(GOLDEN / "single.v1.jsonl"))
    patched: list[Record] = []
    for record in records:
        if isinstance(record, InputRecord) and isinstance(record.input, MetricsReported):
            body = record.input.model_copy(update={"metrics": {"x": "NaN", "y": math.inf}})
            patched.append(record.model_copy(update={"input": body}))
        else:
            patched.append(record)
    view = fold(patched)
    trial = next(iter(view.trials.values()))
    assert all(math.isfinite(v) for curve in trial.curves.values() for _, v in curve)
    assert ("validation", "x") not in trial.curves


def test_a_large_search_draws_every_rung_result_and_stays_light() -> None:
    """2,000 trials: past the size where the pages lighten (top-K curves, marks without
    links, reasons on click), every result is still a mark of the rung view."""
    records = synthetic(2000)
    view = fold(records, contexts=None)
    assert len(view.trials) == 2000 > ALL_CURVES
    sections = experiment_sections(view, Options())
    rung_marks = marks(sections["rungs"])
    assert len(rung_marks) == len(taken_results(records))
    assert "<a " not in sections["rungs"]
    assert "<a " not in sections["timeline"]
    # The curves show the best 100 (and any still running: none, it ended).
    assert len(marks(sections["curves"], "curve")) == 100
    assert len(marks(sections["parallel"], "line")) == 1000
    everything = experiment_sections(view, Options(all_lines=True, top=10_000))
    assert len(marks(everything["parallel"], "line")) == 2000
    assert len(marks(everything["curves"])) == len(taken_results(records))


def test_steps_beyond_what_a_chart_can_place_are_not_drawn() -> None:
    records = list(read_log(GOLDEN / "single.v1.jsonl"))
    patched: list[Record] = []
    for record in records:
        if isinstance(record, InputRecord) and isinstance(record.input, MetricsReported):
            body = record.input.model_copy(update={"steps_completed": 10**400})
            patched.append(record.model_copy(update={"input": body}))
        else:
            patched.append(record)
    view = fold(patched)
    trial = next(iter(view.trials.values()))
    assert trial.curves == {}
    sections = experiment_sections(view, Options(curve="training/x"))
    assert marks(sections["curves"]) == []
    assert trial_page(view, trial).charts == []


def test_a_trial_on_several_workers_is_drawn_on_each_and_ends_with_its_chief() -> None:
    from rung.broker.schemas import ExitReason
    from tests.unit.searcher.helpers import created_record
    from tests.unit.searcher.test_gangs import exited, gang_run, planned, reserved, started

    run = gang_run()
    records: list[Record] = [created_record(run)]
    created = records[0]
    assert isinstance(created, CreatedRecord)
    records[0] = created.model_copy(update={"at": 1_000.0})
    inputs = [
        None,
        planned(),
        reserved("w-a", 0),
        reserved("w-b", 1),
        started("w-b", run=run),  # the member's part starts first
        started("w-a", run=run),
        exited("w-b", ExitReason.COMPLETED),  # a member's clean end: the attempt goes on
    ]
    for index, body in enumerate(inputs):
        step = run.start() if body is None else run.on_event(body)
        records.append(
            InputRecord.of(len(records) + 1, f"m{index}", body, step, at=1_001.0 + index)
        )
    view = fold(records, contexts=None)
    (attempt,) = view.trials[1].attempts
    assert attempt.worker_id == "w-a"  # the chief's
    assert sorted(attempt.lanes) == ["w-a/slot 0", "w-b/slot 0"]
    assert attempt.ended_at is None
    end = exited("w-a", ExitReason.ERRORED)
    view.apply(InputRecord.of(len(records) + 1, "end", end, run.on_event(end), at=1_010.0))
    (ended,) = view.trials[1].attempts  # (read afresh: the checker cannot know it changed)
    assert ended.ended_at is not None
    assert view._busy == {"w-a": set(), "w-b": set()}  # every lane free again
    timeline = experiment_sections(view, Options())["timeline"]
    assert "w-a/slot 0" in timeline
    assert "w-b/slot 0" in timeline
