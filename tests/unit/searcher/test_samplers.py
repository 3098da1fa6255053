"""Samplers: the config, the encoding of a space, determinism, snapshots, replay that
takes the logged suggestion, the reasons, and hostile spaces and metrics."""

from __future__ import annotations

import json
import math
from random import Random
from typing import Any, ClassVar

import numpy as np
import pytest
from pydantic import BaseModel

from rung.searcher.config import GPSamplerConfig, TPESamplerConfig
from rung.searcher.errors import ConfigError
from rung.searcher.eventlog import InputRecord, Record, replay
from rung.searcher.eventlog.explain import explain_step
from rung.searcher.events import ExitedReason, Start, TrialExitedEarly, ValidationCompleted
from rung.searcher.experiment import Experiment, same_point
from rung.searcher.methods import SearchContext, SearchMethod
from rung.searcher.ops import Create, Operation, ValidateAfter
from rung.searcher.samplers import (
    Encoder,
    GPSampler,
    Pending,
    RandomSampler,
    SamplerData,
    TPESampler,
    build_sampler,
)
from rung.searcher.samplers.gp import _neg_log_likelihood, _squared
from rung.searcher.simulate import BENCHMARKS, simulate
from rung.searcher.space import draw_trial, flatten
from rung.searcher.trials import ExperimentRun, Step

from .helpers import Driver, creates, live_log, make_config

MIXED = {
    "lr": {"type": "log", "minval": -5, "maxval": -1, "base": 10},
    "layers": {"type": "int", "minval": 1, "maxval": 8},
    "dropout": {"type": "double", "minval": 0.0, "maxval": 0.5},
    "optimizer": {"type": "categorical", "vals": ["sgd", "adam", "rmsprop"]},
    "arch": {
        "width": {"type": "categorical", "vals": [64, 128, 256]},
        "act": {"type": "const", "val": "relu"},
    },
}
HARTMANN = {f"x{i}": {"type": "double", "minval": 0, "maxval": 1} for i in range(6)}


def asha(sampler: Any, *, trials: int = 60, concurrency: int = 4) -> dict[str, Any]:
    return {
        "name": "asha",
        "metric": "loss",
        "max_length": 27,
        "max_trials": trials,
        "num_rungs": 3,
        "divisor": 3,
        "max_concurrent_trials": concurrency,
        "sampler": sampler,
    }


def mixed_loss(hparams: dict[str, Any], length: int) -> float:
    """Deterministic, best near lr 1e-3, 5 layers, adam, width 128, dropout 0.1."""
    flat = flatten(hparams)
    value = (math.log10(flat["lr"]) + 3) ** 2 + 0.1 * (flat["layers"] - 5) ** 2
    value += (flat["dropout"] - 0.1) ** 2 * 4
    value += {"sgd": 1.0, "adam": 0.0, "rmsprop": 0.4}[flat["optimizer"]]
    value += {64: 0.3, 128: 0.0, 256: 0.2}[flat["arch.width"]]
    return float(value + 2.0 / length)


# ---------------------------------------------------------------- config
def test_the_sampler_is_random_unless_configured_and_takes_a_name_or_options() -> None:
    assert make_config(asha("random")).searcher.sampler.name == "random"  # type: ignore[union-attr]
    plain = make_config({k: v for k, v in asha("random").items() if k != "sampler"})
    assert plain.searcher.sampler.name == "random"  # type: ignore[union-attr]
    gp = make_config(asha({"name": "gp", "random_fraction": 0.25, "max_data": 64}))
    assert isinstance(gp.searcher.sampler, GPSamplerConfig)  # type: ignore[union-attr]
    assert gp.searcher.sampler.max_data == 64  # type: ignore[union-attr]
    tpe = make_config(asha("tpe"))
    assert isinstance(tpe.searcher.sampler, TPESamplerConfig)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("sampler", "message"),
    [
        ("gpp", "searcher.sampler: unknown sampler 'gpp' (did you mean 'gp'?)"),
        ({"random_fraction": 0.1}, "searcher.sampler: required, but missing; add name: one of"),
        ({"name": "gp", "random_fraction": 1.5}, "random_fraction: must be at most 0.9, got 1.5"),
        ({"name": "gp", "max_data": 10**6}, "max_data: must be at most 1000"),
        ({"name": "tpe", "gamma": 1}, "gamma: must be less than 1"),
        ({"name": "gp", "kernel": "rbf"}, "searcher.sampler.kernel"),
        ({"name": "gp", "candidates": 0}, "candidates: must be at least 8, got 0"),
    ],
)
def test_a_bad_sampler_is_refused_with_its_path_value_and_fix(sampler: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config(asha(sampler))
    assert message in str(caught.value)


# ---------------------------------------------------------------- the encoding
def test_the_encoding_round_trips_log_int_categorical_nested_and_const_values() -> None:
    config = make_config(asha("gp"), hps=MIXED)
    encoder = Encoder(config.hyperparameters)
    assert encoder.dims == 5  # lr, layers, dropout, optimizer, arch.width; act is constant
    rng = np.random.default_rng(3)
    units, picks = encoder.uniform(rng, 200)
    for row in range(200):
        point: dict[str, Any] = encoder.decode(units[row], picks[row])
        assert point["arch"] == {"width": point["arch"]["width"], "act": "relu"}
        again_units, again_picks = encoder.encode(point)
        assert same_point(encoder.decode(again_units, again_picks), point, rel_tol=1e-12)
        assert isinstance(point["layers"], int)
        assert 1 <= point["layers"] <= 8
        assert 1e-5 <= point["lr"] <= 0.1
    layers = {encoder.decode(units[r], picks[r])["layers"] for r in range(200)}
    assert layers == set(range(1, 9))  # every integer is reachable, the ends included


def test_sobol_points_map_onto_valid_values_of_every_kind() -> None:
    encoder = Encoder(make_config(asha("gp"), hps=MIXED).hyperparameters)
    cube = np.linspace(0.0, 0.999, 40)[:, None].repeat(encoder.dims, axis=1)
    units, picks = encoder.from_cube(cube)
    points = [encoder.decode(units[r], picks[r]) for r in range(40)]
    assert {p["optimizer"] for p in points} == {"sgd", "adam", "rmsprop"}
    assert {p["layers"] for p in points} == set(range(1, 9))


# ---------------------------------------------------------------- behaviour
def _run(sampler: Any, seed: int, hps: dict[str, Any] | None = None, **kw: Any) -> Experiment:
    experiment = Experiment(make_config(asha(sampler, **kw), hps=hps or MIXED, seed=seed))
    Driver(experiment, Random(seed), metric=mixed_loss).run()
    return experiment


def _suggestions(experiment: Experiment) -> list[Create]:
    return sorted((t.create for t in experiment.trials.values()), key=lambda c: c.request_id)


@pytest.mark.parametrize("sampler", ["gp", "tpe"])
def test_a_model_based_search_is_a_function_of_its_seed(sampler: str) -> None:
    first, again, other = _run(sampler, 5), _run(sampler, 5), _run(sampler, 6)
    assert _suggestions(first) == _suggestions(again)
    assert _suggestions(first) != _suggestions(other)
    kinds = {t.create.suggestion.kind for t in first.trials.values() if t.create.suggestion}
    assert kinds == {"initial", "random", "model"}


@pytest.mark.parametrize("sampler", ["gp", "tpe"])
def test_the_start_gives_each_worker_a_distinct_point(sampler: str) -> None:
    experiment = Experiment(make_config(asha(sampler, concurrency=8), hps=HARTMANN, seed=2))
    decision = experiment.apply(Start())
    made = creates(decision.ops)
    assert len(made) == 8
    assert len({json.dumps(c.hparams, sort_keys=True) for c in made}) == 8
    assert all(c.suggestion is not None and c.suggestion.kind == "initial" for c in made)


def test_the_random_sampler_draws_exactly_what_rung_drew_before_samplers() -> None:
    experiment = _run("random", 9)
    for trial in experiment.trials.values():
        assert trial.create.suggestion is None
        assert (
            trial.create.hparams
            == draw_trial(9, trial.index, experiment.hyperparameters, None).hparams
        )
    assert experiment.sampler.snapshot() is None  # it keeps nothing


def test_a_model_beats_random_draws_on_a_mixed_space() -> None:
    """Median best loss over seeds: the model-based samplers find better points."""

    def best(sampler: str, seed: int) -> float:
        experiment = _run(sampler, seed, trials=80)
        return min(mixed_loss(t.hparams, 27) for t in experiment.trials.values() if t.trained == 27)

    def median(sampler: str) -> float:
        return sorted(best(sampler, seed) for seed in range(1, 6))[2]

    random = median("random")
    assert median("tpe") < random
    assert median("gp") < random


def test_pending_trials_are_fantasised_and_move_the_next_suggestion() -> None:
    config = make_config(asha("gp"), hps=HARTMANN, seed=4)
    sampler = build_sampler(config)
    assert isinstance(sampler, GPSampler)
    rng = np.random.default_rng(1)
    points = {i: {f"x{j}": float(rng.random()) for j in range(6)} for i in range(40)}
    mfh6 = BENCHMARKS["mfh6"]
    for index, point in points.items():
        sampler.observe(index, 9, mfh6.evaluate(point, 9))

    def suggest(pending: list[Pending]) -> Any:
        data = SamplerData(4, config.hyperparameters, 27, 4, points.__getitem__, pending)
        return sampler.suggest(41, data)

    alone = suggest([])
    assert alone.suggestion.kind == "model"
    assert alone.suggestion.pending == 0
    crowded = suggest([Pending(alone.hparams, 9)] * 3)
    assert crowded.suggestion.pending == 3
    assert crowded.hparams != alone.hparams  # it does not pick where a worker already is


# ---------------------------------------------------------------- snapshots and replay
@pytest.mark.parametrize("sampler", ["gp", "tpe"])
def test_a_restored_snapshot_continues_exactly_like_the_original(sampler: str) -> None:
    config = make_config(asha(sampler), hps=MIXED, seed=3)
    live = Experiment(config)
    driver = Driver(live, Random(3), metric=mixed_loss)
    driver.send(Start())
    for _ in range(40):
        driver.send(driver.rng.choice(driver.candidates()))
    copy = Experiment.restore(config, live.snapshot())
    assert copy.snapshot() == live.snapshot()
    for _ in range(60):
        if live.is_shut_down:
            break
        event = driver.rng.choice(driver.candidates())
        assert copy.apply(event) == driver.send(event)


def _live_log(sampler: str, seed: int) -> tuple[ExperimentRun, list[Record]]:
    config = make_config(
        asha(sampler, trials=30), hps=MIXED, seed=seed, entrypoint="python3 t.py", max_restarts=1
    )
    return live_log(config, seed)


def _replace_hparams(node: Any, old: Any, new: Any) -> Any:
    if isinstance(node, dict):
        if node.get("hparams") == old:
            node = {**node, "hparams": new}
        return {k: _replace_hparams(v, old, new) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace_hparams(v, old, new) for v in node]
    return node


def _move_first_model_suggestion(
    records: list[Record], factor: float, *, last: bool = False
) -> int:
    """Scale the first (last) model-chosen trial's dropout in its record (operation and command)."""
    order = reversed(list(enumerate(records))) if last else enumerate(records)
    for position, r in order:
        if not isinstance(r, InputRecord):
            continue
        for op in r.ops:
            if isinstance(op, Create) and op.suggestion and op.suggestion.kind == "model":
                moved = {**op.hparams, "dropout": float(op.hparams["dropout"]) * factor}  # type: ignore[arg-type]
                raw = _replace_hparams(r.model_dump(mode="json"), op.hparams, moved)
                records[position] = InputRecord.model_validate(raw)
                return r.seq
    raise AssertionError("no model suggestion")


def test_replay_takes_the_logged_suggestion_and_verify_checks_it_within_a_tolerance() -> None:
    _, records = _live_log("gp", 12)
    # A last-bit difference (another BLAS) is within the tolerance: verify passes.
    nudged = list(records)
    _move_first_model_suggestion(nudged, 1 + 1e-12)
    assert replay(nudged, verify=True).divergence is None
    # A real difference is a divergence, at that record.
    moved = list(records)
    seq = _move_first_model_suggestion(moved, 0.5)
    result = replay(moved, verify=True)
    assert result.divergence is not None
    assert result.divergence.seq == seq
    # Without verify, the state follows the log: the trial has the logged value.
    state = replay(moved).run.experiment
    logged = next(
        op
        for r in moved
        if isinstance(r, InputRecord) and r.seq == seq
        for op in r.ops
        if isinstance(op, Create) and op.suggestion and op.suggestion.kind == "model"
    )
    assert state.trials[logged.request_id].hparams == logged.hparams


def test_same_point_compares_numbers_within_the_tolerance_and_the_rest_exactly() -> None:
    assert same_point({"a": 0.1, "b": {"c": "x"}}, {"a": 0.1 * (1 + 1e-9), "b": {"c": "x"}})
    assert not same_point({"a": 0.1}, {"a": 0.1001})
    assert not same_point({"a": 1}, {"a": 2})
    assert not same_point({"a": True}, {"a": 1})
    assert not same_point({"a": "x"}, {"a": "y"})
    assert not same_point({"a": 1.0}, {"b": 1.0})


# ---------------------------------------------------------------- the reasons
def test_replay_says_why_each_trial_got_its_hyperparameters() -> None:
    _live, records = _live_log("gp", 13)
    lines: list[str] = []

    def on_step(record: InputRecord, step: Step, run: ExperimentRun) -> None:
        lines.extend(explain_step(record, step, run))

    replay(records, on_step=on_step)
    reasons = [line for line in lines if " hyperparameters " in line]
    assert any("gp: Sobol point 1 of the" in line for line in reasons)
    model = [line for line in reasons if "sampled by gp at length" in line]
    assert model
    assert all("pending fantasised): expected improvement" in line for line in model)
    assert any("random: 1 in 10 suggestions" in line for line in reasons) or len(model) < 10


# ---------------------------------------------------------------- hostile input
def test_failed_and_nan_results_rank_last_and_the_search_goes_on() -> None:
    experiment = Experiment(make_config(asha("gp", trials=40), hps=HARTMANN, seed=8))
    driver = Driver(
        experiment, Random(8), metric=lambda h, n: math.nan if h["x0"] < 0.3 else h["x1"]
    )
    driver.p_error = 0.1
    driver.run()
    assert experiment.is_shut_down
    assert any(
        t.create.suggestion and t.create.suggestion.kind == "model"
        for t in experiment.trials.values()
    )
    assert any(r.value is None for r in experiment.sampler.state.results)


@pytest.mark.parametrize("sampler", ["gp", "tpe"])
def test_edge_spaces_give_valid_points(sampler: str) -> None:
    hps = {
        "huge": {"type": "log", "minval": -300, "maxval": 300, "base": 10},
        "tiny": {"type": "double", "minval": 0, "maxval": 1e-300},
        "two": {"type": "int", "minval": 0, "maxval": 1},
        "many": {"type": "categorical", "vals": list(range(500))},
        "one": {"type": "categorical", "vals": [None]},
    }
    experiment = Experiment(make_config(asha(sampler, trials=40), hps=hps, seed=1))
    Driver(experiment, Random(1), metric=lambda h, n: float(h["many"]) + h["two"]).run()
    assert experiment.is_shut_down
    for trial in experiment.trials.values():
        h: dict[str, Any] = trial.hparams
        assert 1e-300 <= h["huge"] <= 1e300
        assert math.isfinite(h["huge"])
        assert 0 <= h["tiny"] <= 1e-300
        assert h["two"] in (0, 1)
        assert h["many"] in range(500)
        assert h["one"] is None


def test_a_space_with_nothing_to_vary_is_drawn_as_before() -> None:
    hps = {"a": {"type": "const", "val": 3}, "b": {"type": "categorical", "vals": ["x"]}}
    experiment = Experiment(make_config(asha("gp", trials=10), hps=hps, seed=1))
    Driver(experiment, Random(1), metric=lambda _h, n: 1.0 / n).run()
    assert all(t.create.suggestion is None for t in experiment.trials.values())
    assert all(t.hparams == {"a": 3, "b": "x"} for t in experiment.trials.values())


def test_errored_and_invalid_trials_are_remembered_as_failures_at_their_length() -> None:
    experiment = Experiment(make_config(asha("gp"), hps=HARTMANN, seed=2))
    made = creates(experiment.apply(Start()).ops)
    experiment.apply(
        TrialExitedEarly(request_id=made[0].request_id, reason=ExitedReason.INVALID_HP)
    )
    experiment.apply(
        TrialExitedEarly(request_id=made[1].request_id, reason=ExitedReason.USER_CANCELED)
    )
    experiment.apply(ValidationCompleted(request_id=made[2].request_id, length=3, metric=0.5))
    results = [(r.length, r.value) for r in experiment.sampler.state.results]
    assert results == [(3, None), (3, 0.5)]  # a cancel says nothing about the point


# ---------------------------------------------------------------- the other methods
@pytest.mark.parametrize(
    "searcher",
    [
        {"name": "random", "max_length": 9, "max_trials": 20, "max_concurrent_trials": 2},
        {"name": "adaptive_asha", "max_length": 27, "max_trials": 30, "divisor": 3},
    ],
)
def test_random_and_adaptive_asha_sample_through_the_sampler(searcher: dict[str, Any]) -> None:
    config = make_config({**searcher, "sampler": "tpe"}, hps=MIXED, seed=4)
    experiment = Experiment(config)
    Driver(experiment, Random(4), metric=mixed_loss).run()
    kinds = [t.create.suggestion.kind for t in experiment.trials.values() if t.create.suggestion]
    assert len(kinds) == len(experiment.trials)
    assert "model" in kinds


def test_single_and_grid_keep_the_random_sampler() -> None:
    grid = make_config(
        {"name": "grid", "max_length": 3},
        hps={"x": {"type": "int", "minval": 0, "maxval": 2, "count": 3}},
    )
    assert isinstance(build_sampler(grid), RandomSampler)
    single = make_config({"name": "single", "max_length": 3})
    assert isinstance(build_sampler(single), RandomSampler)


def test_the_simulator_runs_every_sampler_with_eight_workers() -> None:
    for sampler in ("random", "tpe", "gp"):
        config = make_config(asha(sampler, trials=100, concurrency=8), hps=HARTMANN, seed=3)
        result = simulate(config, BENCHMARKS["mfh6"], workers=8, budget=27 * 15)
        assert result.state == "BUDGET_SPENT"
        assert result.regret is not None
        assert isinstance(
            build_sampler(config),
            {"random": RandomSampler, "tpe": TPESampler, "gp": GPSampler}[sampler],
        )


def test_a_model_that_cannot_be_fitted_draws_at_random_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def singular(*_args: Any) -> Any:
        raise np.linalg.LinAlgError("matrix is not positive definite")

    monkeypatch.setattr(GPSampler, "model_suggestion", singular)
    experiment = _run("gp", 3, trials=40)
    assert experiment.is_shut_down
    failed = [
        t.create.suggestion
        for t in experiment.trials.values()
        if t.create.suggestion and "the model failed" in t.create.suggestion.note
    ]
    assert failed
    assert all(s.kind == "random" for s in failed)
    assert "LinAlgError: matrix is not positive definite" in failed[0].note


def test_the_kernels_likelihood_gradient_is_the_numerical_one() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.random((30, 5)), rng.normal(size=30)
    groups = np.array([0, 1, 2, 2, 3])  # columns 2 and 3: one categorical's one-hot
    parts = np.stack([_squared(x[:, groups == g], x[:, groups == g]) for g in range(4)])
    theta = rng.normal(size=6) * 0.3
    _, grad = _neg_log_likelihood(theta, parts, y)
    step = 1e-6
    numeric = [
        (_neg_log_likelihood(theta + e, parts, y)[0] - _neg_log_likelihood(theta - e, parts, y)[0])
        / (2 * step)
        for e in np.eye(6) * step
    ]
    np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-6)


def test_verify_takes_a_suggestion_of_an_older_sampler_version_as_logged() -> None:
    """An old log's suggestions came from an algorithm this Rung no longer has: verify
    cannot recompute them, and replays them as logged; the current version is checked."""
    _, records = _live_log("gp", 12)
    moved = list(records)
    seq = _move_first_model_suggestion(moved, 0.5, last=True)  # no later one depends on it
    divergence = replay(moved, verify=True).divergence
    assert divergence is not None
    assert divergence.seq == seq
    position = next(i for i, r in enumerate(moved) if r.seq == seq)
    record = moved[position]
    assert isinstance(record, InputRecord)
    raw = record.model_dump(mode="json")
    for op in raw["ops"]:
        if op.get("type") == "create" and op.get("suggestion"):
            op["suggestion"]["version"] = 0
    moved[position] = InputRecord.model_validate(raw)
    assert replay(moved, verify=True).divergence is None


# ---------------------------------------------------------------- trial indexes
class _Nothing(BaseModel):
    pass


class _CopiesAndDefers(SearchMethod[_Nothing]):
    """Emits copies of its Creates, and one Create only at the next input."""

    name: ClassVar[str] = "copies"
    State = _Nothing

    def __init__(self) -> None:
        self.state = _Nothing()
        self.later: Create | None = None

    def initial_operations(self, ctx: SearchContext) -> list[Operation]:
        made = [ctx.create() for _ in range(3)]
        self.later = ctx.create()
        ops: list[Operation] = []
        for create in made:
            ops += [create.model_copy(), ValidateAfter(request_id=create.request_id, length=1)]
        return ops

    def validation_completed(
        self, ctx: SearchContext, request_id: str, metric: float | None, length: int
    ) -> list[Operation]:
        later, self.later = self.later, None
        return [later] if later is not None else []

    def trial_exited_early(
        self, ctx: SearchContext, request_id: str, reason: ExitedReason
    ) -> list[Operation]:
        return []

    def progress(self, ctx: SearchContext) -> float:
        return 0.0


def test_a_trials_index_is_its_creates_even_for_copies_and_late_emission() -> None:
    config = make_config({"name": "custom", "class": "x:Y", "sampler": "gp"}, hps=HARTMANN)
    experiment = Experiment(config, _CopiesAndDefers())
    made = creates(experiment.apply(Start()).ops)
    experiment.apply(ValidationCompleted(request_id=made[0].request_id, length=1, metric=0.1))
    indexes = sorted(t.index for t in experiment.trials.values())
    assert indexes == [0, 1, 2, 3]
    for trial in experiment.trials.values():
        assert draw_trial(1, trial.index, config.hyperparameters, {}).request_id == trial.request_id


def test_the_random_sampler_builds_no_data_and_fresh_trials_are_forgotten_once_registered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def never(_self: Experiment) -> SamplerData:
        raise AssertionError("the random sampler needs no data")

    monkeypatch.setattr(Experiment, "_sampler_data", never)
    searcher = {"name": "random", "max_length": 3, "max_trials": 60, "max_concurrent_trials": 0}
    experiment = Experiment(make_config(searcher, hps=MIXED))
    assert len(creates(experiment.apply(Start()).ops)) == 60
    assert experiment._fresh == {}


def test_a_create_without_a_suggestion_is_written_as_before_samplers() -> None:
    op = Create(request_id="r", hparams={"x": 1}, seed=3)
    assert "suggestion" not in op.model_dump(mode="json")
    assert '"suggestion"' not in op.model_dump_json()
    assert Create.model_validate_json(op.model_dump_json()) == op
