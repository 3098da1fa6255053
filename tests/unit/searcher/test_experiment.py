"""The experiment layer: dedupe, one ending per trial, the cap, shutdown, snapshots."""

from __future__ import annotations

import json
from random import Random
from typing import ClassVar

import pytest
from pydantic import BaseModel

from rung.searcher.errors import SearcherError, SearchMethodError
from rung.searcher.events import (
    ExitedReason,
    Start,
    TrialClosed,
    TrialExitedEarly,
    TrialProgress,
    ValidationCompleted,
)
from rung.searcher.experiment import Experiment, ExperimentSnapshot
from rung.searcher.methods import SearchContext, SearchMethod
from rung.searcher.ops import Close, Operation, Shutdown, ValidateAfter

from .helpers import Driver, creates, dump, holding, make_config, validates

RANDOM = "{name: random, max_length: 10, max_trials: 3, max_concurrent_trials: 2}"


def started(searcher: str = RANDOM) -> Experiment:
    exp = Experiment(make_config(searcher))
    exp.apply(Start())
    return exp


def state_json(exp: Experiment) -> str:
    return exp.snapshot().model_dump_json()


def test_a_seed_is_required() -> None:
    with pytest.raises(SearcherError, match="experiment_seed is not set"):
        Experiment(make_config(RANDOM, seed=None))


def test_a_second_start_is_ignored() -> None:
    exp = started()
    before = state_json(exp)
    decision = exp.apply(Start())
    assert decision.ops == ()
    assert decision.ignored == "the experiment has started already"
    assert state_json(exp) == before


def test_duplicate_validation_changes_nothing() -> None:
    exp = started()
    rid = next(iter(exp.trials))
    event = ValidationCompleted(request_id=rid, length=10, metric=0.5)
    exp.apply(event)
    before = state_json(exp)
    decision = exp.apply(event)
    assert decision.ops == ()
    assert decision.ignored == "trial 1 already completed length 10"
    assert state_json(exp) == before


def test_stale_and_unknown_validations_are_ignored() -> None:
    exp = started()
    rid = next(iter(exp.trials))
    stale = exp.apply(ValidationCompleted(request_id=rid, length=3, metric=0.1))
    assert stale.ignored == "trial 1 expected length 10, got a validation at length 3"
    unknown = exp.apply(ValidationCompleted(request_id="nope", length=10, metric=0.1))
    assert unknown.ignored == "unknown trial nope"


def test_a_trial_ends_once() -> None:
    exp = started()
    rid = next(iter(exp.trials))
    done = exp.apply(ValidationCompleted(request_id=rid, length=10, metric=0.5))
    assert len(creates(done.ops)) == 1  # random backfills as the trial's training ends
    first = exp.apply(TrialClosed(request_id=rid))
    assert creates(first.ops) == []  # (not once more as it ends)
    before = state_json(exp)
    for again in (
        TrialClosed(request_id=rid),
        TrialExitedEarly(request_id=rid, reason=ExitedReason.ERRORED),
    ):
        decision = exp.apply(again)
        assert decision.ops == ()
        assert decision.ignored == "trial 1 has ended already"
    assert state_json(exp) == before
    assert exp.state.failed == 0


def test_exit_with_an_op_in_flight_frees_its_slot() -> None:
    exp = started()
    rid = next(iter(exp.trials))
    assert holding(exp) == 2
    exp.apply(TrialExitedEarly(request_id=rid, reason=ExitedReason.ERRORED))
    assert holding(exp) == 2  # the freed slot went to the third trial
    assert len(exp.trials) == 3
    assert exp.state.holding == holding(exp)


def test_progress_is_bounded_and_complete_at_shutdown() -> None:
    exp = started()
    values = [exp.progress()]
    rid = next(iter(exp.trials))
    exp.apply(TrialProgress(request_id=rid, units=5))
    values.append(exp.progress())
    assert values[1] > values[0]
    Driver(exp, Random(0)).run()
    assert exp.progress() == 1.0
    assert all(0 <= v <= 1 for v in values)


def test_events_after_shutdown_are_ignored() -> None:
    exp = started("{name: single, max_length: 1}")
    rid = next(iter(exp.trials))
    exp.apply(ValidationCompleted(request_id=rid, length=1, metric=1.0))
    assert exp.apply(TrialClosed(request_id=rid)).ops == (Shutdown(),)
    decision = exp.apply(TrialClosed(request_id=rid))
    assert decision.ignored == "the experiment has shut down; no more decisions"


def test_non_finite_metric_does_not_break_the_search() -> None:
    exp = started(
        "{name: asha, max_length: 4, max_trials: 2, num_rungs: 2, divisor: 2, "
        "max_concurrent_trials: 1}"
    )
    rid = next(iter(exp.trials))
    decision = exp.apply(ValidationCompleted(request_id=rid, length=2, metric=float("nan")))
    assert decision.ignored is None
    assert len(creates(decision.ops)) == 1


def test_outstanding_ops_are_the_dispatched_unfinished_ones() -> None:
    exp = started()
    outstanding = exp.outstanding_ops()
    assert [op.length for op in outstanding] == [10, 10]
    done = exp.apply(ValidationCompleted(request_id=outstanding[0].request_id, length=10, metric=1))
    # The finished trial's operation is no longer outstanding; its successor's is.
    assert exp.outstanding_ops() == [*outstanding[1:], *validates(done.ops)]


def test_snapshot_round_trips_through_json_and_behaves_the_same() -> None:
    config = make_config("{name: adaptive_asha, max_length: 27, max_trials: 20, divisor: 3}")
    live = Experiment(config)
    driver = Driver(live, Random(4))
    driver.send(Start())
    for _ in range(15):
        driver.send(Random(len(driver.sent)).choice(driver.candidates()))
    text = live.snapshot().model_dump_json()
    restored = Experiment.restore(config, ExperimentSnapshot.model_validate_json(text))
    assert restored.snapshot().model_dump_json() == text
    for event in [*driver.candidates()]:
        assert dump(live.apply(event).ops) == dump(restored.apply(event).ops)


# ---------------------------------------------------------------- the concurrency cap
class _State(BaseModel):
    pass


class Greedy(SearchMethod[_State]):
    """Ignores the cap: asks for 5 trials at once."""

    name: ClassVar[str] = "greedy"
    State = _State

    def __init__(self, close: bool = True) -> None:
        self.state = _State()
        self.close = close

    def initial_operations(self, ctx: SearchContext) -> list[Operation]:
        ops: list[Operation] = []
        for _ in range(5):
            create = ctx.create()
            ops += [create, ValidateAfter(request_id=create.request_id, length=1)]
            if self.close:
                ops.append(Close(request_id=create.request_id))
        return ops

    def validation_completed(
        self, ctx: SearchContext, request_id: str, metric: float | None, length: int
    ) -> list[Operation]:
        return []

    def trial_exited_early(
        self, ctx: SearchContext, request_id: str, reason: ExitedReason
    ) -> list[Operation]:
        return []

    def progress(self, ctx: SearchContext) -> float:
        return 0.0


def test_the_cap_queues_operations_first_in_first_out() -> None:
    config = make_config("{name: custom, class: 'x:Y', max_concurrent_trials: 2}")
    exp = Experiment(config, Greedy())
    ops = exp.apply(Start()).ops
    dispatched = [op for op in ops if isinstance(op, ValidateAfter)]
    assert len(creates(ops)) == 5
    assert len(dispatched) == 2
    order = list(exp.trials)
    assert exp.state.queue == order[2:]
    ops = exp.apply(ValidationCompleted(request_id=order[0], length=1, metric=0)).ops
    assert ops == (ValidateAfter(request_id=order[2], length=1),)  # next in line
    Driver(exp, Random(1)).run()
    assert exp.state.shutdown == Shutdown()


class Broken(Greedy):
    def __init__(self, bad: list[Operation]) -> None:
        super().__init__(close=False)
        self.bad = bad

    def validation_completed(
        self, ctx: SearchContext, request_id: str, metric: float | None, length: int
    ) -> list[Operation]:
        return [
            op.model_copy(update={"request_id": request_id})
            if getattr(op, "request_id", None) == "SELF"
            else op
            for op in self.bad
        ]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([ValidateAfter(request_id="ghost", length=3)], "for unknown request ghost"),
        ([ValidateAfter(request_id="SELF", length=1)], "lengths are absolute and must grow"),
        (
            [
                ValidateAfter(request_id="SELF", length=2),
                ValidateAfter(request_id="SELF", length=3),
            ],
            "is unfinished",
        ),
        (
            [Close(request_id="SELF"), ValidateAfter(request_id="SELF", length=5)],
            "a closed trial gets no more operations",
        ),
    ],
)
def test_methods_that_break_the_rules_get_a_clear_error(bad: list[Operation], message: str) -> None:
    config = make_config("{name: custom, class: 'x:Y', max_concurrent_trials: 0}")
    exp = Experiment(config, Broken(bad))
    exp.apply(Start())
    rid = next(iter(exp.trials))
    with pytest.raises(SearchMethodError, match=message):
        exp.apply(ValidationCompleted(request_id=rid, length=1, metric=0))


def test_a_decision_serialises_to_json() -> None:
    exp = Experiment(make_config(RANDOM))
    ops = exp.apply(Start()).ops
    parsed = json.loads(dump(ops))
    assert [op["type"] for op in parsed] == ["create", "validate_after", "close"] * 2
