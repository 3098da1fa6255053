"""Population-based training: the pure core (searcher/methods/pbt.py and explore.py)."""

from __future__ import annotations

import math
import uuid
from random import Random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import JsonValue

from rung.searcher.config import PBTSearcher
from rung.searcher.events import (
    ExitedReason,
    RoundTimedOut,
    SearchEvent,
    Start,
    TrialCheckpointed,
    TrialClosed,
    TrialExitedEarly,
    TrialPaused,
    ValidationCompleted,
)
from rung.searcher.experiment import Decision, Experiment, ExperimentSnapshot
from rung.searcher.methods.explore import explore
from rung.searcher.ops import Create, Operation
from rung.searcher.space import flatten

from .helpers import closes, creates, dump, make_config, pbt_searcher, validates

HPS = {
    "lr": {"type": "log", "minval": -4, "maxval": 0, "base": 10},
    "width": {"type": "int", "minval": 1, "maxval": 64},
    "drop": {"type": "double", "minval": 0, "maxval": 0.5},
    "opt": {"type": "categorical", "vals": ["sgd", "adam"]},
    "arch": {"depth": {"type": "int", "minval": 1, "maxval": 4}, "name": "mlp"},
}


def pbt(
    population: int = 4,
    rounds: int = 3,
    per_round: int = 10,
    truncate: float = 0.25,
    seed: int = 1,
    hps: dict[str, Any] | None = None,
    **extra: Any,
) -> Experiment:
    searcher = pbt_searcher(population, rounds, per_round, truncate, **extra)
    return Experiment(make_config(searcher, hps or HPS, seed=seed))


def ckpt(request_id: str, steps: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{request_id}/{steps}"))


def finish(
    experiment: Experiment, request_id: str, metric: float, *, checkpoint: bool = True
) -> Decision:
    """The trial checkpoints at its operation's length, then reports ``metric``."""
    op = experiment.trials[request_id].op
    assert op is not None
    if checkpoint:
        experiment.apply(
            TrialCheckpointed(
                request_id=request_id, uuid=ckpt(request_id, op.length), steps=op.length
            )
        )
    return experiment.apply(
        ValidationCompleted(request_id=request_id, length=op.length, metric=metric)
    )


def ids(decision: Decision | list[Operation] | tuple[Operation, ...]) -> list[str]:
    ops = decision.ops if isinstance(decision, Decision) else decision
    return [op.request_id for op in validates(ops)]


def members(experiment: Experiment) -> list[str]:
    return list(experiment.method.state.members)


# ---------------------------------------------------------------------- configuration
def test_the_config_keeps_determined_fields_and_checks_the_modes() -> None:
    config = make_config(
        {
            "name": "pbt",
            "population_size": 8,
            "num_rounds": 5,
            "length_per_round": {"batches": 100},
            "explore_function": {"resample_probability": 0.2, "perturb_factor": 0.2},
            "mode": "asynchronous",
            "quantile_fraction": 0.3,
        }
    )
    searcher = config.searcher
    assert isinstance(searcher, PBTSearcher)
    assert searcher.max_length.units == 500
    assert searcher.max_length.unit == "batches"
    assert searcher.quantile == 0.3


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"population_size": 1}, "population_size", "at least 2"),
        ({"replace_function": {"truncate_fraction": 0.1}}, "truncate_fraction", "int(4 * 0.1) = 0"),
        ({"replace_function": {"truncate_fraction": 0.6}}, "truncate_fraction", "0.5"),
        (
            {"explore_function": {"resample_probability": 1.5, "perturb_factor": 0.2}},
            "resample",
            "1",
        ),
        (
            {"explore_function": {"resample_probability": 0.2, "perturb_factor": 1}},
            "perturb",
            "less than 1",
        ),
        ({"quantile_fraction": 0.3}, "quantile_fraction", "mode: asynchronous"),
        ({"mode": "asynchronous", "round_timeout": 60}, "round_timeout", "mode: synchronous"),
        ({"round_timeout": -1}, "round_timeout", "greater than 0"),
        ({"num_rounds": 100_000, "length_per_round": 2**40}, "num_rounds", "2**53"),
    ],
)
def test_bad_fields_name_the_field_and_the_fix(
    change: dict[str, Any], field: str, words: str
) -> None:
    searcher = {**pbt_searcher(), **change}
    with pytest.raises(Exception, match=field) as raised:
        make_config(searcher)
    assert words in str(raised.value)


# ---------------------------------------------------------------------- explore
def test_explore_perturbs_within_bounds_and_resamples_categoricals() -> None:
    config = make_config("{name: random, max_length: 1, max_trials: 1}", HPS)
    source: dict[str, JsonValue] = {
        "lr": 0.5,
        "width": 64,
        "drop": 0.0,
        "opt": "sgd",
        "arch": {"depth": 1, "name": "mlp"},
    }
    for seed in range(200):
        new, changes = explore(
            source,
            config.hyperparameters,
            resample_probability=0.0,
            perturb_factor=0.5,
            rng=Random(seed),
        )
        by_name = {c.name: c for c in changes}
        assert set(by_name) == {"lr", "width", "drop", "opt", "arch.depth", "arch.name"}
        assert by_name["arch.name"].how == "kept"
        assert by_name["arch.depth"].new in (1, 2)
        assert new["arch"] == {"depth": by_name["arch.depth"].new, "name": "mlp"}
        assert by_name["opt"].how == "resampled"
        assert 1e-4 <= new["lr"] <= 1.0  # type: ignore[operator]
        assert new["lr"] in (0.75, 0.25) or by_name["lr"].clamped is False
        assert isinstance(new["width"], int)
        assert 1 <= new["width"] <= 64
        # An int moves by at least one (width 64 * 0.5 = 32; 64 * 1.5 is clamped to 64).
        assert new["width"] in (32, 64)
        assert by_name["width"].clamped == (new["width"] == 64)
        assert by_name["arch.depth"].new == 2 or by_name["arch.depth"].new == 1
        assert by_name["drop"].new == 0.0  # 0 * factor stays 0 for a double


def test_explore_resamples_any_value_with_the_probability() -> None:
    config = make_config("{name: random, max_length: 1, max_trials: 1}", HPS)
    source: dict[str, JsonValue] = {
        "lr": 0.01,
        "width": 8,
        "drop": 0.2,
        "opt": "adam",
        "arch": {"depth": 2, "name": "mlp"},
    }
    hows = [
        {
            c.name: c.how
            for c in explore(
                source,
                config.hyperparameters,
                resample_probability=p,
                perturb_factor=0.2,
                rng=Random(s),
            )[1]
        }["lr"]
        for p in (0.0, 1.0)
        for s in range(50)
    ]
    assert hows[:50] == ["perturbed"] * 50
    assert hows[50:] == ["resampled"] * 50


# ---------------------------------------------------------------------- synchronous rounds
def test_a_round_closes_the_worst_and_clones_the_best_from_its_checkpoint() -> None:
    experiment = pbt()
    start = experiment.apply(Start())
    population = [op.request_id for op in creates(start.ops)]
    assert len(population) == 4
    assert [op.length for op in validates(start.ops)] == [10] * 4
    for rid, metric in zip(population[:3], (0.3, 0.1, 0.9), strict=True):
        assert finish(experiment, rid, metric).ops == ()  # the round waits for the last
    decision = finish(experiment, population[3], 0.5)
    (closed,) = closes(decision.ops)
    assert closed.request_id == population[2]  # 0.9, the worst
    (clone,) = creates(decision.ops)
    assert clone.clone is not None
    assert clone.clone.source == population[1]  # 0.1, the best
    assert clone.checkpoint == clone.clone.checkpoint == ckpt(population[1], 10)
    assert clone.clone.length == 10
    assert (clone.clone.rank, clone.clone.ranked) == (1, 4)
    assert clone.clone.replaces == population[2]
    assert clone.clone.cut == "bottom 25%"
    assert clone.clone.source_hparams == experiment.trials[population[1]].hparams
    assert clone.hparams != clone.clone.source_hparams
    # The survivors and the clone train to the next round's end.
    assert sorted(ids(decision)) == sorted(
        [population[0], population[1], population[3], clone.request_id]
    )
    assert {op.length for op in validates(decision.ops)} == {20}
    assert len(members(experiment)) == 4
    text = clone.clone.describe(5)
    assert text.startswith("trial 5 continues from trial 2's checkpoint at length 10 (rank 1 of 4)")
    assert "replaces trial 3 (bottom 25%)" in text


def test_the_round_waits_for_the_best_checkpoint_then_takes_it() -> None:
    experiment = pbt()
    population = [op.request_id for op in creates(experiment.apply(Start()).ops)]
    finish(experiment, population[0], 0.1, checkpoint=False)  # the best reports first
    decisions = [
        finish(experiment, rid, metric)
        for rid, metric in zip(population[1:], (0.3, 0.5, 0.9), strict=True)
    ]
    decision = decisions[-1]
    assert decision.ops == ()
    assert any("waiting for trial 1's checkpoint at length 10" in n for n in decision.notes)
    saved = experiment.apply(
        TrialCheckpointed(request_id=population[0], uuid=ckpt(population[0], 10), steps=10)
    )
    (clone,) = creates(saved.ops)
    assert clone.clone is not None
    assert clone.clone.source == population[0]
    assert clone.checkpoint == ckpt(population[0], 10)


def test_a_source_that_exited_without_a_checkpoint_is_passed_over() -> None:
    experiment = pbt(population=8, truncate=0.25)  # two replaced a round
    population = [op.request_id for op in creates(experiment.apply(Start()).ops)]
    finish(experiment, population[0], 0.1, checkpoint=False)
    decisions = [
        finish(experiment, rid, index / 10) for index, rid in enumerate(population[1:], start=2)
    ]
    assert decisions[-1].ops == ()
    paused = experiment.apply(TrialPaused(request_id=population[0]))
    sources = [op.clone.source for op in creates(paused.ops) if op.clone is not None]
    assert sources == [population[1], population[2]]  # ranks 2 and 3, rank 1 passed over
    assert any("trial 1 (rank 1) has no checkpoint at length 10" in n for n in paused.notes)
    # The passed-over member is not replaced: it continues, from its own start.
    assert population[0] in ids(paused)


def test_a_failed_member_counts_as_finished_and_is_replaced() -> None:
    experiment = pbt()
    population = [op.request_id for op in creates(experiment.apply(Start()).ops)]
    experiment.apply(TrialExitedEarly(request_id=population[2], reason=ExitedReason.ERRORED))
    finish(experiment, population[0], 0.2)
    finish(experiment, population[1], 0.1)
    decision = finish(experiment, population[3], 0.5)
    replaced = {op.clone.replaces: op.clone.cut for op in creates(decision.ops) if op.clone}
    assert replaced == {population[3]: "bottom 25%", population[2]: "failed"}
    assert [c.request_id for c in closes(decision.ops)] == [population[3]]
    assert len(members(experiment)) == 4


def test_a_round_that_times_out_closes_and_replaces_its_stragglers() -> None:
    experiment = pbt(round_timeout=60)
    assert experiment.method.round_limit() == (0, 60)
    population = [op.request_id for op in creates(experiment.apply(Start()).ops)]
    for rid, metric in zip(population[:3], (0.3, 0.1, 0.9), strict=True):
        finish(experiment, rid, metric)
    stale = experiment.apply(RoundTimedOut(round=5, after_s=61))
    assert stale.ops == ()
    decision = experiment.apply(RoundTimedOut(round=0, after_s=61.5))
    assert population[3] in [c.request_id for c in closes(decision.ops)]
    replaced = {op.clone.replaces: op.clone.cut for op in creates(decision.ops) if op.clone}
    assert replaced[population[3]] == "failed"
    assert any("round 0 timed out after 61.5 s: trial 4" in n for n in decision.notes)
    assert experiment.method.round_limit() == (1, 60)
    # The straggler's late result changes nothing; it closes after its operation.
    late = finish(experiment, population[3], 0.0)
    assert creates(late.ops) == []
    assert experiment.trials[population[3]].closing


def test_the_last_round_closes_the_population_and_the_experiment_ends() -> None:
    experiment = pbt(rounds=2)
    population = [op.request_id for op in creates(experiment.apply(Start()).ops)]
    decisions = [finish(experiment, rid, index / 10) for index, rid in enumerate(population)]
    live = ids(decisions[-1])
    decisions = [finish(experiment, rid, index / 10) for index, rid in enumerate(live)]
    assert sorted(c.request_id for c in closes(decisions[-1].ops)) == sorted(live)
    assert experiment.method.progress(experiment) == 1.0
    finals = []
    for rid in [r for r in population if r not in live] + live:
        assert not experiment.is_shut_down
        finals.append(experiment.apply(TrialClosed(request_id=rid)))
    final = finals[-1]
    assert final.ops
    assert final.ops[-1].type == "shutdown"
    assert experiment.is_shut_down


# ---------------------------------------------------------------------- asynchronous
def test_async_a_bottom_member_copies_a_ready_top_member() -> None:
    experiment = pbt(mode="asynchronous", quantile_fraction=0.25)
    population = [op.request_id for op in creates(experiment.apply(Start()).ops)]
    # Each newcomer is the best so far, so none is in the bottom quantile when it reports.
    assert ids(finish(experiment, population[0], 0.3)) == [population[0]]
    assert ids(finish(experiment, population[1], 0.2)) == [population[1]]
    assert ids(finish(experiment, population[2], 0.1)) == [population[2]]
    decision = finish(experiment, population[3], 0.9)
    (clone,) = creates(decision.ops)
    assert clone.clone is not None
    assert clone.clone.source == population[2]
    assert (clone.clone.rank, clone.clone.ranked, clone.clone.cut) == (1, 4, "bottom 25%")
    assert clone.clone.round is None
    assert [c.request_id for c in closes(decision.ops)] == [population[3]]
    assert [(op.request_id, op.length) for op in validates(decision.ops)] == [
        (clone.request_id, 20)
    ]


def test_async_with_no_ready_source_the_member_continues_unchanged() -> None:
    experiment = pbt(mode="asynchronous")
    population = [op.request_id for op in creates(experiment.apply(Start()).ops)]
    finish(experiment, population[0], 0.01, checkpoint=False)  # the top, not ready
    decision = finish(experiment, population[1], 0.9)  # the bottom of two
    assert creates(decision.ops) == []
    assert [(op.request_id, op.length) for op in validates(decision.ops)] == [(population[1], 20)]
    assert any("continues unchanged" in n for n in decision.notes)


# ---------------------------------------------------------------------- properties
class Cluster:
    """Runs a PBT experiment to its end with random orders, failures, late and missing
    checkpoints and timeouts, checking the population's invariants at each step."""

    def __init__(self, experiment: Experiment, rng: Random) -> None:
        self.experiment = experiment
        self.rng = rng
        self.saved: dict[str, tuple[int, str]] = {}  # request id -> its latest checkpoint
        self.exited: set[str] = set()
        self.events: list[SearchEvent] = []
        self.decisions: list[Decision] = []
        config = experiment.config.searcher
        assert isinstance(config, PBTSearcher)
        self.config = config

    def apply(self, event: SearchEvent) -> Decision:
        self.events.append(event)
        decision = self.experiment.apply(event)
        self.decisions.append(decision)
        self.check(decision)
        return decision

    def check(self, decision: Decision) -> None:
        for op in decision.ops:
            if isinstance(op, Create):
                for name, value in flatten(op.hparams).items():
                    if name in ("lr", "drop", "width"):
                        low, high = {"lr": (1e-4, 1.0), "drop": (0, 0.5), "width": (1, 64)}[name]
                        assert low - 1e-12 <= value <= high + 1e-12, (name, value)
                if op.clone is not None:
                    steps, uuid_ = self.saved[op.clone.source]
                    # The source checkpoint existed, and it is the one the clone names.
                    assert uuid_ == op.clone.checkpoint == op.checkpoint
                    assert steps == op.clone.length
        state = self.experiment.method.state
        alive = [m for m in state.members.values() if not m.failed]
        assert len(alive) <= self.config.population_size
        assert state.created <= self.config.population_size * (self.config.num_rounds + 1)

    def working(self) -> list[str]:
        # (A paused trial given an operation runs again in a new process.)
        return sorted(r for r, t in self.experiment.trials.items() if t.holds_op)

    def run(self) -> None:
        rng = self.rng
        self.apply(Start())
        for _ in range(5_000):
            if self.experiment.is_shut_down:
                return
            working = self.working()
            # Between operations: a process that has not exited yet, or a closed trial
            # (a paused one closes at once, as the run closes it).
            idle = [
                r
                for r, t in self.experiment.trials.items()
                if not t.terminal and not t.holds_op and (r not in self.exited or t.closing)
            ]
            if not working and not idle:
                if self.config.round_timeout is not None:
                    self.apply(RoundTimedOut(round=self.experiment.method.state.round, after_s=1))
                    continue
                raise AssertionError("stalled: nothing works and the experiment is not over")
            if idle and (not working or rng.random() < 0.3):
                rid = rng.choice(idle)
                record = self.experiment.trials[rid]
                if record.closing:
                    self.apply(TrialClosed(request_id=rid))
                else:
                    self.apply(TrialPaused(request_id=rid))
                    self.exited.add(rid)
                continue
            rid = rng.choice(working)
            self.exited.discard(rid)
            op = self.experiment.trials[rid].op
            assert op is not None
            roll = rng.random()
            if roll < 0.03:
                reason = rng.choice([ExitedReason.ERRORED, ExitedReason.USER_CANCELED])
                self.apply(TrialExitedEarly(request_id=rid, reason=reason))
                continue
            if roll < 0.85:  # checkpoint first
                self._save(rid, op.length)
            self.apply(ValidationCompleted(request_id=rid, length=op.length, metric=rng.random()))
            if 0.85 <= roll < 0.95:  # checkpoint after reporting
                self._save(rid, op.length)
            # From 0.95: no checkpoint at all for this operation.
        raise AssertionError("the search did not end in 5,000 steps")

    def _save(self, rid: str, steps: int) -> None:
        record = self.experiment.trials[rid]
        if record.terminal:
            return
        uuid_ = ckpt(rid, steps)
        self.saved[rid] = (steps, uuid_)
        self.apply(TrialCheckpointed(request_id=rid, uuid=uuid_, steps=steps))


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    population=st.integers(2, 9),
    rounds=st.integers(1, 4),
    truncate=st.sampled_from([0.2, 0.25, 0.34, 0.5]),
    mode=st.sampled_from(["synchronous", "asynchronous"]),
    timeout=st.booleans(),
)
def test_the_population_invariants_hold_in_any_order(
    seed: int, population: int, rounds: int, truncate: float, mode: str, timeout: bool
) -> None:
    if mode == "synchronous" and int(population * truncate) < 1:
        truncate = 0.5
    extra: dict[str, Any] = {"mode": mode, "max_concurrent_trials": 3}
    if timeout and mode == "synchronous":
        extra["round_timeout"] = 30
    experiment = pbt(population, rounds, 10, truncate, seed=seed, **extra)
    cluster = Cluster(experiment, Random(seed))
    cluster.run()
    assert experiment.is_shut_down
    # Determinism: the same events give the same decisions, also from a snapshot.
    again = pbt(population, rounds, 10, truncate, seed=seed, **extra)
    half = len(cluster.events) // 2
    for event, decision in zip(cluster.events[:half], cluster.decisions[:half], strict=True):
        assert dump(again.apply(event).ops) == dump(decision.ops)
    snapshot = ExperimentSnapshot.model_validate_json(again.snapshot().model_dump_json())
    restored = Experiment.restore(again.config, snapshot)
    for event, decision in zip(cluster.events[half:], cluster.decisions[half:], strict=True):
        replayed = restored.apply(event)
        assert dump(replayed.ops) == dump(decision.ops)
        assert replayed.notes == decision.notes


def test_every_clone_continues_a_round_aligned_length_in_synchronous_mode() -> None:
    experiment = pbt(population=6, rounds=4, truncate=0.34)
    cluster = Cluster(experiment, Random(7))
    cluster.run()
    clones = [t.create.clone for t in experiment.trials.values() if t.create.clone is not None]
    assert clones, "a run of 4 rounds replaces members"
    assert all(
        c.length % 10 == 0 and c.round is not None and c.length == (c.round + 1) * 10
        for c in clones
    )
    assert not math.isnan(experiment.progress())


# ---------------------------------------------------------------------- found in review
def test_a_copy_of_a_checkpoint_past_the_rounds_end_still_ends_its_round() -> None:
    """Trial 1 (the best) saved at 20, past its operation's 10: its copy starts at 20
    and reports the next round's end, 20, at once. The round still counts it."""
    experiment = pbt()
    population = [op.request_id for op in creates(experiment.apply(Start()).ops)]
    decisions = []
    for index, rid in enumerate(population, start=1):
        steps = 20 if index == 1 else 10
        experiment.apply(TrialCheckpointed(request_id=rid, uuid=ckpt(rid, steps), steps=steps))
        decisions.append(
            experiment.apply(ValidationCompleted(request_id=rid, length=10, metric=float(index)))
        )
    decision = decisions[-1]
    (copy,) = creates(decision.ops)
    assert copy.clone is not None
    assert copy.clone.length == 20
    results = []
    for rid in ids(decision):
        op = experiment.trials[rid].op
        assert op is not None
        results.append(
            experiment.apply(ValidationCompleted(request_id=rid, length=op.length, metric=1.0))
        )
    assert experiment.method.state.round == 2
    assert validates(results[-1].ops)  # round 2 began: nobody waits for a result already in


def test_async_finished_members_leave_the_ranking() -> None:
    """Trial 1 runs ahead and finishes: it has nothing left to copy from it, so it takes
    no place in the top quantile, and the worst member copies the best that has."""
    experiment = pbt(mode="asynchronous")
    first, second, third, fourth = (op.request_id for op in creates(experiment.apply(Start()).ops))
    for metric in (0.3, 0.2, 0.01):
        finish(experiment, first, metric)  # lengths 10, 20, 30: it finishes
    assert experiment.trials[first].closing
    assert finish(experiment, second, 0.5).ops  # continues
    finish(experiment, third, 0.6)
    decision = finish(experiment, fourth, 0.9)
    (copy,) = creates(decision.ops)
    assert copy.clone is not None
    assert copy.clone.source == second
    pinned = experiment.method.pinned(experiment)
    assert first not in pinned  # finished: never copied again, its checkpoints not kept
    assert {second, copy.request_id} <= pinned


def test_asynchronous_mode_takes_its_cut_from_either_field_but_not_both() -> None:
    base = {
        "name": "pbt",
        "population_size": 8,
        "num_rounds": 2,
        "length_per_round": 5,
        "explore_function": {"resample_probability": 0.2, "perturb_factor": 0.2},
        "mode": "asynchronous",
    }
    assert make_config(base).searcher.quantile == 0.25  # type: ignore[union-attr]
    cut = {"replace_function": {"truncate_fraction": 0.4}}
    assert make_config({**base, **cut}).searcher.quantile == 0.4  # type: ignore[union-attr]
    with pytest.raises(Exception, match="at most one of quantile_fraction"):
        make_config({**base, **cut, "quantile_fraction": 0.3})
    same = make_config({**base, **cut, "quantile_fraction": 0.4})  # the same cut twice
    assert same.searcher.quantile == 0.4  # type: ignore[union-attr]
    with pytest.raises(Exception, match="replace_function: required in mode: synchronous"):
        make_config({**base, "mode": "synchronous"})
