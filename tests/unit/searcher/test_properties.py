"""Property tests: random configs, random event orders, random faults and duplicates."""

from __future__ import annotations

from random import Random
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from rung.searcher.config import ExperimentConfig, GridSearcher, SingleSearcher
from rung.searcher.events import SearchEvent
from rung.searcher.experiment import Decision, Experiment, ExperimentSnapshot
from rung.searcher.rungs import rung_lengths
from rung.searcher.space import grid_points

from .helpers import Driver, dump, holding, make_config

HPS = {
    "x": {"type": "double", "minval": 0, "maxval": 1, "count": 2},
    "n": {"type": "int", "minval": 1, "maxval": 6, "count": 3},
    "c": {"type": "categorical", "vals": ["a", "b"]},
}


def _max_distinct_rungs(max_length: int, divisor: float) -> int:
    n = 1
    while n < 5:
        lengths = rung_lengths(n + 1, divisor, max_length)
        if len(set(lengths)) != len(lengths):
            break
        n += 1
    return n


@st.composite
def configs(draw: st.DrawFn) -> ExperimentConfig:
    kind = draw(st.sampled_from(["single", "random", "grid", "asha", "adaptive_asha"]))
    searcher: dict[str, Any] = {"name": kind, "max_length": draw(st.integers(1, 50))}
    if kind != "single":
        searcher["max_concurrent_trials"] = draw(st.integers(0, 5))
    if kind in ("random", "asha", "adaptive_asha"):
        searcher["max_trials"] = draw(st.integers(1, 20))
    if kind in ("asha", "adaptive_asha"):
        divisor = draw(st.sampled_from([2, 3, 4, 2.5]))
        searcher["divisor"] = divisor
        searcher["stop_once"] = draw(st.booleans())
        searcher["smaller_is_better"] = draw(st.booleans())
        if kind == "asha":
            top = _max_distinct_rungs(searcher["max_length"], divisor)
            searcher["num_rungs"] = draw(st.integers(1, top))
        else:
            searcher["mode"] = draw(st.sampled_from(["aggressive", "standard", "conservative"]))
    return make_config(searcher, HPS, seed=draw(st.integers(0, 2**32 - 1)))


faults = st.fixed_dictionaries(
    {
        "p_error": st.sampled_from([0.0, 0.05, 0.3]),
        "p_invalid": st.sampled_from([0.0, 0.05, 0.2]),
        "p_cancel": st.sampled_from([0.0, 0.05]),
    }
)


def _metric(rng: Random) -> Any:
    def metric(_hparams: dict[str, Any], _length: int) -> float | None:
        roll = rng.random()
        if roll < 0.02:
            return None
        if roll < 0.04:
            return float("nan")
        return rng.uniform(-5, 5)

    return metric


def _budget(config: ExperimentConfig) -> int:
    searcher = config.searcher
    if isinstance(searcher, SingleSearcher):
        return 1
    if isinstance(searcher, GridSearcher):
        return len(grid_points(config.hyperparameters))
    return int(getattr(searcher, "max_trials", 0))


@given(configs(), st.integers(0, 2**32), faults)
def test_invariants_over_random_event_orders(
    config: ExperimentConfig, order: int, fault: dict[str, float]
) -> None:
    exp = Experiment(config)
    rng = Random(order)
    driver = Driver(exp, rng, metric=_metric(rng), p_duplicate=0.15, **fault)
    cap = exp.cap
    budget = _budget(config)

    def check(event: SearchEvent, decision: Decision) -> None:
        invalid = sum(t.exited == "INVALID_HP" for t in exp.trials.values())
        assert len(exp.trials) - invalid <= budget
        if cap:
            assert holding(exp) <= cap
        assert exp.state.holding == holding(exp)
        assert 0.0 <= exp.progress() <= 1.0

    driver.on_step = check
    seen: dict[int, str] = {}
    original_send = driver.send

    def send(event: SearchEvent) -> Decision:
        # A repeated event is a no-op: no operations and no change of state.
        repeat = any(event is e for e in driver.sent)
        before = exp.snapshot().model_dump_json() if repeat else ""
        decision = original_send(event)
        if repeat:
            assert decision.ops == ()
            assert decision.ignored is not None
            assert exp.snapshot().model_dump_json() == before
        seen[len(seen)] = dump(decision.ops)
        return decision

    driver.send = send  # type: ignore[method-assign]
    driver.run()
    # The experiment always reaches Shutdown once every trial closes or exits.
    assert exp.is_shut_down
    assert all(t.terminal for t in exp.trials.values())
    if isinstance(config.searcher, GridSearcher):
        points = grid_points(config.hyperparameters)
        assert [t.hparams for t in exp.trials.values()] == points  # each point exactly once


@given(configs(), st.integers(0, 2**32), faults, st.floats(0, 1))
def test_same_seed_same_events_same_ops_and_snapshots_change_nothing(
    config: ExperimentConfig, order: int, fault: dict[str, float], cut: float
) -> None:
    rng = Random(order)
    first = Experiment(config)
    driver = Driver(first, rng, metric=_metric(rng), **fault)
    driver.run()
    events, expected = driver.sent, [dump(d.ops) for d in driver.decisions]

    # Replaying the same events on a fresh experiment gives byte-identical operations.
    replay = Experiment(config)
    assert [dump(replay.apply(e).ops) for e in events] == expected

    # Snapshot part-way, restore from JSON, and the rest plays out identically.
    split = int(cut * len(events))
    head = Experiment(config)
    for event in events[:split]:
        head.apply(event)
    text = head.snapshot().model_dump_json()
    restored = Experiment.restore(config, ExperimentSnapshot.model_validate_json(text))
    assert [dump(restored.apply(e).ops) for e in events[split:]] == expected[split:]
