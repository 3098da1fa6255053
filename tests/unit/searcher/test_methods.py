"""Each built-in search method against worked examples derived from its rules."""

from __future__ import annotations

from random import Random

import pytest

from rung.searcher.events import (
    ExitedReason,
    Start,
    TrialClosed,
    TrialExitedEarly,
    ValidationCompleted,
)
from rung.searcher.experiment import Experiment
from rung.searcher.methods import RULES, build_method
from rung.searcher.ops import Close, Operation, Shutdown, ValidateAfter
from rung.searcher.space import grid_points

from .helpers import Driver, closes, creates, holding, make_config, validates


def ids(experiment: Experiment) -> list[str]:
    return list(experiment.trials)


def done(
    experiment: Experiment, index: int, metric: float | None, length: int
) -> tuple[Operation, ...]:
    rid = ids(experiment)[index]
    return experiment.apply(ValidationCompleted(request_id=rid, length=length, metric=metric)).ops


# ---------------------------------------------------------------- single / random
def test_random_keeps_concurrency_at_the_cap_until_max_trials() -> None:
    exp = Experiment(
        make_config("{name: random, max_length: 10, max_trials: 5, max_concurrent_trials: 2}")
    )
    first = exp.apply(Start()).ops
    assert len(creates(first)) == 2
    assert [op.length for op in validates(first)] == [10, 10]
    assert len(closes(first)) == 2  # Determined 0.37: Create, ValidateAfter, Close
    driver = Driver(exp, Random(1))
    driver.on_step = lambda _e, _d: pytest.fail("cap broken") if holding(exp) > 2 else None
    driver.run()
    assert len(exp.trials) == 5
    assert exp.state.shutdown == Shutdown()


def test_random_with_no_cap_starts_every_trial() -> None:
    exp = Experiment(
        make_config("{name: random, max_length: 3, max_trials: 7, max_concurrent_trials: 0}")
    )
    assert len(creates(exp.apply(Start()).ops)) == 7


def test_random_replaces_invalid_hp_trials_outside_the_budget() -> None:
    exp = Experiment(
        make_config("{name: random, max_length: 3, max_trials: 3, max_concurrent_trials: 1}")
    )
    exp.apply(Start())
    first = ids(exp)[0]
    ops = exp.apply(TrialExitedEarly(request_id=first, reason=ExitedReason.INVALID_HP)).ops
    assert len(creates(ops)) == 1  # a replacement, not counted against max_trials
    Driver(exp, Random(0)).run()
    assert len(exp.trials) == 4
    assert sum(t.exited is ExitedReason.INVALID_HP for t in exp.trials.values()) == 1
    assert exp.state.shutdown == Shutdown()


def test_random_does_not_replace_errored_trials_beyond_the_budget() -> None:
    exp = Experiment(
        make_config("{name: random, max_length: 3, max_trials: 2, max_concurrent_trials: 1}")
    )
    exp.apply(Start())
    ops = exp.apply(TrialExitedEarly(request_id=ids(exp)[0], reason=ExitedReason.ERRORED)).ops
    assert len(creates(ops)) == 1  # the second trial of the budget
    ops = exp.apply(TrialExitedEarly(request_id=ids(exp)[1], reason=ExitedReason.ERRORED)).ops
    assert creates(ops) == []
    assert ops == (Shutdown(failure=True),)  # every trial failed: the experiment failed


def test_single_never_replaces_its_trial() -> None:
    exp = Experiment(make_config("{name: single, max_length: 4}"))
    (create, validate, close) = exp.apply(Start()).ops
    assert isinstance(validate, ValidateAfter)
    assert validate.length == 4
    assert isinstance(close, Close)
    ops = exp.apply(
        TrialExitedEarly(
            request_id=create.request_id,  # type: ignore[union-attr]
            reason=ExitedReason.INVALID_HP,
        )
    ).ops
    assert ops == (Shutdown(),)  # Determined once looped forever here (PR #3246)


def test_one_failed_trial_does_not_fail_the_experiment() -> None:
    exp = Experiment(make_config("{name: random, max_length: 2, max_trials: 2}"))
    exp.apply(Start())
    a, b = ids(exp)
    exp.apply(TrialExitedEarly(request_id=a, reason=ExitedReason.ERRORED))
    exp.apply(ValidationCompleted(request_id=b, length=2, metric=1.0))
    assert exp.apply(TrialClosed(request_id=b)).ops == (Shutdown(),)


def test_all_canceled_is_a_canceled_experiment() -> None:
    exp = Experiment(make_config("{name: random, max_length: 2, max_trials: 2}"))
    exp.apply(Start())
    a, b = ids(exp)
    exp.apply(TrialExitedEarly(request_id=a, reason=ExitedReason.USER_CANCELED))
    ops = exp.apply(TrialExitedEarly(request_id=b, reason=ExitedReason.USER_CANCELED)).ops
    assert ops == (Shutdown(cancel=True),)


# ---------------------------------------------------------------- rules 1 and 2
ONE_SHOT = {
    "random": "{name: random, max_length: 3, max_trials: 9, max_concurrent_trials: 2}",
    "grid": "{name: grid, max_length: 3, max_concurrent_trials: 2}",
    "single": "{name: single, max_length: 3}",
}
ONE_SHOT_HPS = (
    "{a: {type: int, minval: 1, maxval: 3, count: 3}, b: {type: categorical, vals: [x, y]}}"
)


def _one_shot(name: str, rules: int) -> Experiment:
    config = make_config(ONE_SHOT[name], hps=ONE_SHOT_HPS)
    return Experiment(config, build_method(config, rules=rules))


@pytest.mark.parametrize("name", ["random", "grid"])
def test_under_rules_2_the_next_trial_starts_as_a_trial_reports_its_last_validation(
    name: str,
) -> None:
    """Its training is done: its successor waits on the queue while its process exits,
    and takes the slot the moment it frees (issue 18). Its end starts nothing more."""
    exp = _one_shot(name, RULES)
    assert RULES == 2
    exp.apply(Start())
    first = ids(exp)[0]
    started = exp.apply(ValidationCompleted(request_id=first, length=3, metric=0.5)).ops
    assert len(creates(started)) == 1
    assert [op.length for op in validates(started)] == [3]
    assert holding(exp) == 2  # the cap counts trials that train; the first one is done
    assert creates(exp.apply(TrialClosed(request_id=first)).ops) == []


@pytest.mark.parametrize("name", ["random", "grid"])
def test_under_rules_1_the_next_trial_starts_when_a_trial_ends(name: str) -> None:
    """Logs written before rules 2 replay as they were decided (Determined's rule)."""
    exp = _one_shot(name, 1)
    exp.apply(Start())
    first = ids(exp)[0]
    assert exp.apply(ValidationCompleted(request_id=first, length=3, metric=0.5)).ops == ()
    assert len(creates(exp.apply(TrialClosed(request_id=first)).ops)) == 1


@pytest.mark.parametrize("name", list(ONE_SHOT))
@pytest.mark.parametrize("seed", range(6))
def test_both_rules_train_the_same_trials(name: str, seed: int) -> None:
    """Only when the next trial starts differs: the same hyperparameters, trial by trial,
    the same budget, and the cap held, with errors and cancels on the way."""
    trained: list[list[object]] = []
    for rules in (1, 2):
        exp = _one_shot(name, rules)
        driver = Driver(exp, Random(seed), p_error=0.1, p_cancel=0.05)
        driver.on_step = lambda _e, _d, exp=exp: (
            pytest.fail("cap broken") if holding(exp) > 2 else None
        )
        driver.run()
        assert exp.state.shutdown is not None
        trained.append([(t.trial_id, t.hparams) for t in exp.trials.values()])
    assert trained[0] == trained[1]


@pytest.mark.parametrize("seed", range(6))
def test_an_invalid_trial_is_refunded_under_both_rules(seed: int) -> None:
    """A trial that exits with invalid hyperparameters does not count against the
    budget under either rule."""
    for rules in (1, 2):
        exp = _one_shot("random", rules)
        Driver(exp, Random(seed), p_invalid=0.3).run()
        invalid = sum(t.exited is ExitedReason.INVALID_HP for t in exp.trials.values())
        assert len(exp.trials) - invalid == 9
        assert exp.state.shutdown == Shutdown()


def test_the_last_trial_invalid_after_its_last_validation_is_still_refunded() -> None:
    """Under rules 2 the budget was spent when it validated; its INVALID_HP exit refunds
    it, and the refund's trial starts then (as under rules 1, where the exit starts it)."""
    exp = Experiment(
        make_config("{name: random, max_length: 3, max_trials: 2, max_concurrent_trials: 1}")
    )
    exp.apply(Start())
    first = ids(exp)[0]
    assert len(creates(done(exp, 0, 0.1, 3))) == 1
    exp.apply(TrialClosed(request_id=first))
    assert creates(done(exp, 1, 0.1, 3)) == []  # the budget is spent
    invalid = exp.apply(TrialExitedEarly(request_id=ids(exp)[1], reason=ExitedReason.INVALID_HP))
    assert len(creates(invalid.ops)) == 1
    assert exp.state.shutdown is None
    Driver(exp, Random(0)).run()
    assert len(exp.trials) == 3
    assert exp.state.shutdown == Shutdown()


def test_a_trial_that_fails_after_its_last_validation_is_replaced_once() -> None:
    """Under rules 2 its successor started at the validation; its failure (restarts
    used up) starts no other."""
    exp = _one_shot("random", RULES)
    exp.apply(Start())
    first = ids(exp)[0]
    exp.apply(ValidationCompleted(request_id=first, length=3, metric=0.5))
    failed = exp.apply(TrialExitedEarly(request_id=first, reason=ExitedReason.ERRORED)).ops
    assert creates(failed) == []
    assert len(exp.trials) == 3


# ---------------------------------------------------------------- grid
GRID_HPS = "{a: {type: int, minval: 1, maxval: 3, count: 3}, b: {type: categorical, vals: [x, y]}}"


def test_grid_visits_every_point_once_at_the_cap() -> None:
    config = make_config("{name: grid, max_length: 5, max_concurrent_trials: 2}", GRID_HPS)
    exp = Experiment(config)
    assert len(creates(exp.apply(Start()).ops)) == 2
    Driver(exp, Random(3)).run()
    seen = [t.hparams for t in exp.trials.values()]
    assert seen == grid_points(config.hyperparameters)
    assert len(seen) == 6


def test_grid_does_not_replace_an_invalid_point() -> None:
    exp = Experiment(make_config("{name: grid, max_length: 5, max_concurrent_trials: 1}", GRID_HPS))
    exp.apply(Start())
    first = exp.trials[ids(exp)[0]]
    ops = exp.apply(
        TrialExitedEarly(request_id=first.request_id, reason=ExitedReason.INVALID_HP)
    ).ops
    (create,) = creates(ops)
    assert create.hparams != first.hparams  # the next point, not the same one again
    Driver(exp, Random(0)).run()
    assert len(exp.trials) == 6


def test_grid_restored_from_a_snapshot_goes_on_with_the_same_points() -> None:
    """The grid's state is the index of its next point: a JSON-sized snapshot that a
    restored experiment continues from, point for point."""
    config = make_config("{name: grid, max_length: 5, max_concurrent_trials: 1}", GRID_HPS)
    whole = Experiment(config)
    whole.apply(Start())
    Driver(whole, Random(0)).run()
    halfway = Experiment(config)
    halfway.apply(Start())
    first = ids(halfway)[0]
    halfway.apply(ValidationCompleted(request_id=first, length=5, metric=1.0))
    halfway.apply(TrialClosed(request_id=first))
    snapshot = halfway.snapshot()
    assert snapshot.method == {"next_point": 2}
    restored = Experiment.restore(config, snapshot)
    Driver(restored, Random(0)).run()
    assert [t.hparams for t in restored.trials.values()] == [
        t.hparams for t in whole.trials.values()
    ]
    assert [t.request_id for t in restored.trials.values()] == list(whole.trials)


# ---------------------------------------------------------------- ASHA, promotion-based
ASHA = (
    "{name: asha, max_length: 8, max_trials: 4, num_rungs: 3, divisor: 2, max_concurrent_trials: 1}"
)


def test_promotion_asha_worked_example() -> None:
    """Rungs at 8/2**2 = 2, 8/2 = 4 and 8. One trial at a time, divisor 2.

    A rung with n results must have promoted its floor(n / 2) best; the newcomer is
    promoted if it ranks among them, else the trial that just became eligible.
    """
    exp = Experiment(make_config(ASHA))
    ops = exp.apply(Start()).ops
    assert [op.length for op in validates(ops)] == [2]
    t1 = ids(exp)[0]
    # T1 0.5 at 2: 1 result, quota floor(1/2) = 0: no promotion, so a new trial starts.
    ops = done(exp, 0, 0.5, 2)
    assert len(creates(ops)) == 1
    assert exp.trials[t1].paused
    t2 = ids(exp)[1]
    # T2 0.3 at 2: quota floor(2/2) = 1 and T2 ranks first: promoted to 4.
    assert done(exp, 1, 0.3, 2) == (ValidateAfter(request_id=t2, length=4),)
    # T2 0.2 at 4: rung 1 has 1 result, quota 0: new trial T3.
    ops = done(exp, 1, 0.2, 4)
    assert len(creates(ops)) == 1
    t3 = ids(exp)[2]
    # T3 0.9 at 2: 3 results, quota still 1 (T2 holds it): new trial T4.
    ops = done(exp, 2, 0.9, 2)
    assert len(creates(ops)) == 1
    t4 = ids(exp)[3]
    # T4 0.1 at 2: 4 results, quota 2, T4 ranks first: promoted. The bottom rung now holds
    # max_trials results and nothing trains there: its unpromoted trials T1, T3 close.
    assert done(exp, 3, 0.1, 2) == (
        ValidateAfter(request_id=t4, length=4),
        Close(request_id=t1),
        Close(request_id=t3),
    )
    # T4 0.25 at 4: 2 results, quota 1 grew; T4 ranks second, so T2 (first, waiting) goes
    # up to 8. Rung 1 has nothing training: T4 closes.
    assert done(exp, 3, 0.25, 4) == (
        ValidateAfter(request_id=t2, length=8),
        Close(request_id=t4),
    )
    # T2 at the top rung closes; the budget is spent.
    assert done(exp, 1, 0.15, 8) == (Close(request_id=t2),)
    for rid in (t1, t3, t4):
        assert exp.apply(TrialClosed(request_id=rid)).ops == ()
    assert exp.apply(TrialClosed(request_id=t2)).ops == (Shutdown(),)


def test_promotion_asha_ranks_bigger_is_better() -> None:
    config = make_config(
        "{name: asha, max_length: 4, max_trials: 2, num_rungs: 2, "
        "divisor: 2, max_concurrent_trials: 1, smaller_is_better: false}"
    )
    exp = Experiment(config)
    exp.apply(Start())
    done(exp, 0, 0.1, 2)
    t2 = ids(exp)[1]
    # Bigger is better: T2 (0.9) beats T1 (0.1) and is promoted.
    assert validates(done(exp, 1, 0.9, 2)) == [ValidateAfter(request_id=t2, length=4)]


def test_promotion_asha_early_exit_ranks_worst() -> None:
    exp = Experiment(make_config(ASHA))
    exp.apply(Start())
    t1 = ids(exp)[0]
    ops = exp.apply(TrialExitedEarly(request_id=t1, reason=ExitedReason.ERRORED)).ops
    assert len(creates(ops)) == 1  # its slot goes to a new trial
    t2 = ids(exp)[1]
    # T2's real result beats the worst-ranked T1 and takes the promotion.
    assert validates(done(exp, 1, 5.0, 2)) == [ValidateAfter(request_id=t2, length=4)]


def test_promotion_asha_invalid_hp_is_replaced_and_removed() -> None:
    exp = Experiment(make_config(ASHA))
    exp.apply(Start())
    t1 = ids(exp)[0]
    ops = exp.apply(TrialExitedEarly(request_id=t1, reason=ExitedReason.INVALID_HP)).ops
    assert len(creates(ops)) == 1
    Driver(exp, Random(2)).run()
    valid = [t for t in exp.trials.values() if t.exited is not ExitedReason.INVALID_HP]
    assert len(valid) == 4  # the invalid trial did not use up the budget


def test_promotion_asha_pauses_instead_of_holding_a_slot() -> None:
    exp = Experiment(
        make_config(
            "{name: asha, max_length: 9, max_trials: 9, num_rungs: 3, "
            "divisor: 3, max_concurrent_trials: 3}"
        )
    )
    exp.apply(Start())
    first = ids(exp)[0]
    done(exp, 0, 1.0, 1)
    trial = exp.trials[first]
    assert trial.paused
    assert not trial.holds_op
    assert holding(exp) == 3  # the freed slot went to a new trial


# ---------------------------------------------------------------- ASHA, stopping-based
def test_stopping_asha_worked_example() -> None:
    """Continue iff the result ranks in the top max(floor(n / 2), 1) of its rung."""
    exp = Experiment(make_config(ASHA.replace("}", ", stop_once: true}")))
    exp.apply(Start())
    t1 = ids(exp)[0]
    assert done(exp, 0, 0.5, 2) == (ValidateAfter(request_id=t1, length=4),)  # only one
    assert done(exp, 0, 0.4, 4) == (ValidateAfter(request_id=t1, length=8),)
    ops = done(exp, 0, 0.3, 8)
    assert ops[0] == Close(request_id=t1)  # top rung: closed, and a new trial starts
    assert len(creates(ops)) == 1
    t2 = ids(exp)[1]
    ops = done(exp, 1, 0.6, 2)  # 2 results, keep 1; 0.6 ranks second: stopped
    assert ops[0] == Close(request_id=t2)
    t3 = ids(exp)[2]
    # 0.5 ties T1's 0.5 and the tie goes to the newcomer: it continues.
    assert done(exp, 2, 0.5, 2) == (ValidateAfter(request_id=t3, length=4),)
    ops = done(exp, 2, 0.45, 4)  # behind T1's 0.4 at rung 1 with keep 1: stopped
    assert ops[0] == Close(request_id=t3)
    t4 = ids(exp)[3]
    assert done(exp, 3, 0.1, 2) == (ValidateAfter(request_id=t4, length=4),)
    assert done(exp, 3, 0.1, 4) == (ValidateAfter(request_id=t4, length=8),)
    assert done(exp, 3, 0.1, 8) == (Close(request_id=t4),)  # budget spent: no new trial


# ---------------------------------------------------------------- adaptive ASHA
def test_the_seed_tutorial_gives_two_brackets() -> None:
    config = make_config(
        "{name: adaptive_asha, max_length: 100, max_trials: 10}",
        "{increment_by: {type: int, minval: 1, maxval: 8}}",
    )
    exp = Experiment(config)
    ops = exp.apply(Start()).ops
    lengths = sorted(op.length for op in validates(ops))
    assert lengths == [25] * 7 + [100] * 3
    brackets = exp.method.brackets  # type: ignore[attr-defined]
    assert [(b.params.num_rungs, b.params.max_trials) for b in brackets] == [(2, 7), (1, 3)]
    assert [[r.length for r in b.state.rungs] for b in brackets] == [[25, 100], [100]]


def test_adaptive_asha_routes_events_to_each_trials_bracket() -> None:
    config = make_config(
        "{name: adaptive_asha, max_length: 100, max_trials: 10}",
        "{increment_by: {type: int, minval: 1, maxval: 8}}",
    )
    exp = Experiment(config)
    Driver(exp, Random(5), metric=lambda h, n: float(h["increment_by"] * n)).run()
    assert exp.state.shutdown == Shutdown()
    assert len(exp.trials) == 10
    full = [t for t in exp.trials.values() if t.trained == 100]
    best = min(full, key=lambda t: t.metric or 0)
    assert best.hparams["increment_by"] == min(int(str(t.hparams["increment_by"])) for t in full)
    brackets = exp.method.brackets  # type: ignore[attr-defined]
    assert [len(b.state.trial_rungs) for b in brackets] == [7, 3]


def test_adaptive_asha_respects_a_cap_below_the_bracket_count() -> None:
    config = make_config(
        "{name: adaptive_asha, max_length: 81, max_trials: 30, divisor: 3, "
        "mode: conservative, max_concurrent_trials: 2}"
    )
    exp = Experiment(config)
    assert len(exp.method.brackets) > 2  # type: ignore[attr-defined]
    driver = Driver(exp, Random(9))
    driver.on_step = lambda _e, _d: pytest.fail("cap broken") if holding(exp) > 2 else None
    driver.run()
    assert exp.state.shutdown == Shutdown()
