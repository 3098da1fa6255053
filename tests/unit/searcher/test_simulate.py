"""The simulator and its benchmarks."""

from __future__ import annotations

import json
import math

import pytest

from rung.searcher.errors import SimulationError
from rung.searcher.simulate import BENCHMARKS, Curves, simulate

from .helpers import make_config

X_STAR = {
    "x0": 0.20169,
    "x1": 0.150011,
    "x2": 0.476874,
    "x3": 0.275332,
    "x4": 0.311652,
    "x5": 0.6573,
}
MFH6_HPS = {f"x{i}": {"type": "double", "minval": 0, "maxval": 1} for i in range(6)}


def test_mfh6_is_hartmann6_at_full_fidelity() -> None:
    for name in ("mfh6", "mfh6_bad"):
        assert BENCHMARKS[name].evaluate(X_STAR, 100) == pytest.approx(-3.32237, abs=1e-4)


def test_mfh6_low_fidelity_follows_the_definition() -> None:
    bench = BENCHMARKS["mfh6_bad"]
    x = {f"x{i}": 0.5 for i in range(6)}
    full = bench.evaluate(x, 100)
    low = bench.evaluate(x, 1)
    # At z = 1, s = 0: every alpha is lowered by the bias, and noise is added.
    assert low != full
    assert bench.evaluate(x, 1) == low  # deterministic across calls
    alpha_shift = sum(
        3.5 * math.exp(-sum(a * (0.5 - p) ** 2 for a, p in zip(a_row, p_row, strict=True)))
        for a_row, p_row in zip(
            (
                (10, 3, 17, 3.5, 1.7, 8),
                (0.05, 10, 17, 0.1, 8, 14),
                (3, 3.5, 1.7, 10, 17, 8),
                (17, 8, 0.05, 10, 0.1, 14),
            ),
            tuple(
                tuple(1e-4 * v for v in row)
                for row in (
                    (1312, 1696, 5569, 124, 8283, 5886),
                    (2329, 4135, 8307, 3736, 1004, 9991),
                    (2348, 1451, 3522, 2883, 3047, 6650),
                    (4047, 8828, 8732, 5743, 1091, 381),
                )
            ),
            strict=True,
        )
    )
    noise = low - (full + alpha_shift)
    assert noise >= 0  # |eps| * 4.0 * (1 - 0)


def test_mfh6_needs_its_hyperparameters() -> None:
    with pytest.raises(SimulationError, match=r"needs numeric hyperparameters x0..x5"):
        BENCHMARKS["mfh6"].evaluate({"x": 1}, 10)


def test_simulation_accounts_for_every_unit_of_length() -> None:
    config = make_config(
        "{name: asha, max_length: 81, max_trials: 40, num_rungs: 4, "
        "divisor: 3, max_concurrent_trials: 4}",
        MFH6_HPS,
        seed=3,
    )
    result = simulate(config, BENCHMARKS["mfh6"], workers=4)
    assert result.state == "COMPLETED"
    assert result.trials == 40
    # Resumed training counts only once: total = sum of what each trial reached.
    assert result.total_length == sum(t.length for t in result.trial_details)
    assert 0 < result.utilization <= 1
    assert result.sim_time >= result.total_length / 4
    finalists = [t for t in result.trial_details if t.length == 81]
    assert result.best_metric == min(t.metric for t in finalists if t.metric is not None)
    assert result.regret == pytest.approx(result.best_metric + 3.32237)


def test_one_worker_is_fully_busy() -> None:
    config = make_config("{name: random, max_length: 10, max_trials: 5}", MFH6_HPS)
    result = simulate(config, BENCHMARKS["mfh6"], workers=1)
    assert result.sim_time == result.total_length == 50
    assert result.utilization == 1.0


def test_simulation_is_deterministic_for_a_seed() -> None:
    config = make_config(
        "{name: adaptive_asha, max_length: 100, max_trials: 60, divisor: 3}", MFH6_HPS, seed=11
    )
    a = simulate(config, BENCHMARKS["mfh6_bad"], workers=5)
    b = simulate(config, BENCHMARKS["mfh6_bad"], workers=5)
    assert a == b


def test_asha_beats_random_at_equal_trial_count_on_informative_fidelities() -> None:
    """ASHA spends far less length for a comparable incumbent when low fidelity informs."""
    asha = make_config(
        "{name: asha, max_length: 100, max_trials: 200, num_rungs: 4, divisor: 3}", MFH6_HPS, seed=5
    )
    rand = make_config("{name: random, max_length: 100, max_trials: 200}", MFH6_HPS, seed=5)
    a = simulate(asha, BENCHMARKS["mfh6"], workers=4)
    r = simulate(rand, BENCHMARKS["mfh6"], workers=4)
    assert a.total_length < r.total_length / 4
    assert a.best_metric is not None
    assert r.best_metric is not None


def test_a_budget_stops_the_search_and_the_history_adds_up() -> None:
    config = make_config(
        "{name: asha, max_length: 100, max_trials: 5000, num_rungs: 5, divisor: 3}",
        MFH6_HPS,
        seed=2,
    )
    result = simulate(config, BENCHMARKS["mfh6"], workers=1, budget=1000)
    assert result.state == "BUDGET_SPENT"
    # One worker: the last operation started before the budget was spent, then finished.
    assert 1000 <= result.total_length < 1100
    assert result.trials < 5000
    epochs = [point.epochs for point in result.history]
    assert epochs == sorted(epochs)
    assert epochs[-1] == result.total_length
    finals = [p.metric for p in result.history if p.length == 100]
    assert result.best_metric == min(finals)
    # The same search without a budget passes through the same first steps.
    longer = simulate(config, BENCHMARKS["mfh6"], workers=1, budget=2000)
    assert longer.history[: len(result.history)] == result.history
    with pytest.raises(SimulationError, match="budget must be at least 1"):
        simulate(config, BENCHMARKS["mfh6"], workers=1, budget=0)


def test_trained_counts_what_was_trained_when_a_result_came() -> None:
    """``epochs`` counts an operation when it starts, ``trained`` as it is trained: with
    one worker they agree; with 8, ``trained`` lags by what is still under way, never
    falls, and the search's last result has everything trained."""
    config = make_config(
        "{name: asha, max_length: 27, max_trials: 60, num_rungs: 4, divisor: 3}",
        MFH6_HPS,
        seed=3,
    )
    one = simulate(config, BENCHMARKS["mfh6"], workers=1)
    assert all(point.trained == point.epochs for point in one.history)
    eight = simulate(config, BENCHMARKS["mfh6"], workers=8)
    trained = [p.trained for p in eight.history]
    assert all(0 <= t <= p.epochs for t, p in zip(trained, eight.history, strict=True))
    assert any(t < p.epochs for t, p in zip(trained, eight.history, strict=True))
    assert trained == sorted(trained)
    assert trained[-1] == eight.total_length


def test_lengths_beyond_the_benchmark_are_refused() -> None:
    config = make_config("{name: single, max_length: 200}", MFH6_HPS)
    with pytest.raises(SimulationError, match="set max_length to at most 100"):
        simulate(config, BENCHMARKS["mfh6"])


def test_curves_pick_the_matching_or_nearest_configuration() -> None:
    lines = [
        json.dumps({"hparams": {"lr": 0.1}, "curve": [5, 4, 3]}),
        "",
        json.dumps({"hparams": {"lr": 0.9}, "curve": {"1": 9, "3": 1}}),
    ]
    curves = Curves.from_lines(lines)
    assert curves.evaluate({"lr": 0.1}, 2) == 4
    assert curves.evaluate({"lr": 0.8}, 1) == 9  # nearest: 0.9
    assert curves.evaluate({"lr": 0.8}, 2) == 9  # the last recorded length at or below 2
    assert curves.evaluate({"lr": 0.8}, 7) == 1
    assert curves.max_length == 3


def test_curves_drive_a_simulation() -> None:
    lines = [json.dumps({"hparams": {"x": i / 10}, "curve": [i, i / 2, i / 4]}) for i in range(11)]
    config = make_config(
        "{name: grid, max_length: 3}",
        {"x": {"type": "double", "minval": 0, "maxval": 1, "count": 11}},
    )
    result = simulate(config, Curves.from_lines(lines), workers=3)
    assert result.best_metric == 0
    assert result.best_hparams == {"x": 0.0}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{", "not valid JSON"),
        ('{"curve": [1]}', 'needs an object with "hparams"'),
        ('{"hparams": {}, "curve": 3}', '"curve" must be a list'),
        ('{"hparams": {}, "curve": ["a"]}', "only numbers"),
    ],
)
def test_bad_curves_name_the_line(line: str, message: str) -> None:
    with pytest.raises(SimulationError, match=message) as caught:
        Curves.from_lines(["", line], source="c.jsonl")
    assert str(caught.value).startswith("c.jsonl:2:")
