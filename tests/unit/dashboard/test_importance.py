"""Hyperparameter importance (PED-ANOVA-style): what it ranks first, what it ignores,
and how it reads an experiment's space."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from pydantic import JsonValue

from rung.dashboard.importance import (
    Param,
    _picks,
    _units,
    category_text,
    flatten,
    importance,
    params_from_space,
)
from rung.searcher.config import ConstHP, iter_leaves, parse_config
from rung.searcher.space import flatten as space_flatten

GOLDEN = Path(__file__).parents[2] / "golden"

Trials = list[tuple[Mapping[str, JsonValue], float]]

X = Param("x", "double")
Y = Param("y", "double", -1.0, 1.0)
C = Param("c", "categorical", categories=('"a"', '"b"', '"c"'))


def mixed_trials(n: int, seed: int, metric: Any) -> Trials:
    """``n`` random trials over x, y and c, scored by ``metric(x, y, c, rng)``."""
    rng = np.random.default_rng(seed)
    trials: Trials = []
    for _ in range(n):
        x, y = float(rng.uniform(0, 1)), float(rng.uniform(-1, 1))
        c = str(rng.choice(["a", "b", "c"]))
        trials.append(({"x": x, "y": y, "c": c}, float(metric(x, y, c, rng))))
    return trials


def x_only(x: float, y: float, c: str, rng: np.random.Generator) -> float:
    return (x - 0.3) ** 2 + 1e-4 * float(rng.standard_normal())


def c_only(x: float, y: float, c: str, rng: np.random.Generator) -> float:
    return {"a": 0.0, "b": 1.0, "c": 2.0}[c] + 0.1 * float(rng.standard_normal())


def check_shares(result: dict[str, float] | None, params: Sequence[Param]) -> dict[str, float]:
    assert result is not None
    assert list(result) == [param.name for param in params]
    assert all(0.0 <= value <= 1.0 for value in result.values())
    assert math.fsum(result.values()) == pytest.approx(1.0, abs=1e-12)
    return result


# ---------------------------------------------------------------- what it finds


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("n", "share", "margin"), [(50, 0.7, 3), (200, 0.9, 10), (1000, 0.95, 30)])
def test_the_parameter_the_metric_depends_on_wins_by_a_clear_margin(
    n: int, share: float, margin: float, seed: int
) -> None:
    result = check_shares(
        importance([X, Y, C], mixed_trials(n, seed, x_only), smaller_is_better=True), [X, Y, C]
    )
    assert result["x"] > share
    assert result["x"] > margin * max(result["y"], result["c"])


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("n", "share", "margin"), [(200, 0.8, 5), (1000, 0.9, 20)])
def test_a_categorical_the_metric_depends_on_wins(
    n: int, share: float, margin: float, seed: int
) -> None:
    """With 50 trials or fewer it may not: see the module's limits."""
    result = check_shares(
        importance([X, Y, C], mixed_trials(n, seed, c_only), smaller_is_better=True), [X, Y, C]
    )
    assert result["c"] > share
    assert result["c"] > margin * max(result["x"], result["y"])


def test_an_int_the_metric_depends_on_wins() -> None:
    k = Param("k", "int", 1, 8)
    rng = np.random.default_rng(3)
    trials: Trials = []
    for _ in range(300):
        hparams = {"k": int(rng.integers(1, 9)), "x": float(rng.uniform(0, 1))}
        trials.append((hparams, abs(hparams["k"] - 6) + 0.1 * float(rng.standard_normal())))
    result = check_shares(importance([k, X], trials, smaller_is_better=True), [k, X])
    assert result["k"] > 0.8


def test_log_parameters_are_measured_in_log_space() -> None:
    """A learning rate whose best values are near 1e-4, in a space from 1e-5 to 1e-1:
    on a linear scale they all fall in the first 0.2% of the range."""
    lr = Param("lr", "log", 1e-5, 1e-1)
    rng = np.random.default_rng(11)
    trials: Trials = []
    for _ in range(300):
        exponent = float(rng.uniform(-5, -1))
        hparams: dict[str, JsonValue] = {"lr": 10.0**exponent, "y": float(rng.uniform(-1, 1))}
        trials.append((hparams, (exponent + 4) ** 2 + 1e-3 * float(rng.standard_normal())))
    result = check_shares(importance([lr, Y], trials, smaller_is_better=True), [lr, Y])
    assert result["lr"] > 0.9
    # Values at the very ends of the range are in it: were either dropped, the other
    # would be a single value, of importance 0.
    for best, rest in ((1e-5, 0.1), (0.1, 1e-5)):
        ends: Trials = [*[({"lr": best}, 0.0)] * 2, *[({"lr": rest}, 1.0)] * 6]
        assert importance([lr], ends, smaller_is_better=True) == {"lr": 1.0}


def test_smaller_is_better_decides_which_trials_are_the_top() -> None:
    """The metric is x itself; ``lo`` marks the trials with the smallest x, ``hi`` those
    with the largest. Minimising, ``lo`` tells the top trials apart; maximising, ``hi``."""
    yes_no = Param("lo", "categorical", categories=('"yes"', '"no"'))
    params = [yes_no, Param("hi", "categorical", categories=('"yes"', '"no"'))]
    rng = np.random.default_rng(5)
    trials: Trials = []
    for x in rng.uniform(0, 1, 500).tolist():
        hparams: dict[str, JsonValue] = {
            "lo": "yes" if x < 0.1 else "no",
            "hi": "yes" if x > 0.9 else "no",
        }
        trials.append((hparams, x))
    smaller = check_shares(importance(params, trials, smaller_is_better=True), params)
    larger = check_shares(importance(params, trials, smaller_is_better=False), params)
    assert smaller["lo"] > 0.9
    assert larger["hi"] > 0.9
    assert smaller["hi"] < 0.1
    assert larger["lo"] < 0.1
    # Maximising x is minimising -x.
    negated: Trials = [(h, -m) for h, m in trials]
    assert larger == importance(params, negated, smaller_is_better=True)


def test_equal_metrics_keep_the_order_given_whichever_the_direction() -> None:
    """All 100 metrics tie: the top (10 of 100) is the first ten trials, both ways, as
    if the metrics were 0, 1, 2, ... in the order given."""
    params = [C, X]
    xs = np.random.default_rng(2).uniform(0, 1, 100).tolist()
    first: Trials = [({"c": "a" if i < 10 else "b", "x": xs[i]}, 1.0) for i in range(100)]
    last: Trials = [({"c": "a" if i >= 90 else "b", "x": xs[i]}, 1.0) for i in range(100)]
    for tied in (first, last):
        ranked: Trials = [(h, float(i)) for i, (h, _) in enumerate(tied)]
        expected = importance(params, ranked, smaller_is_better=True)
        assert importance(params, tied, smaller_is_better=True) == expected
        assert importance(params, tied, smaller_is_better=False) == expected
    at_first = check_shares(importance(params, first, smaller_is_better=True), params)
    at_last = check_shares(importance(params, last, smaller_is_better=True), params)
    assert at_first["c"] > 0.9  # the ten "a" trials are the top: c tells them apart
    assert at_last["c"] < 0.7  # the top are all "b", like most


# ---------------------------------------------------------------- edges


def test_a_constant_hyperparameter_has_importance_zero() -> None:
    trials = [({**h, "k": 3, "d": "same"}, m) for h, m in mixed_trials(100, 0, x_only)]
    params = [
        X,
        Param("k", "int", 1, 8),
        Param("d", "categorical", categories=('"same"', '"other"')),
    ]
    result = check_shares(importance(params, trials, smaller_is_better=True), params)
    assert result == {"x": 1.0, "k": 0.0, "d": 0.0}


def test_all_zero_when_nothing_differs() -> None:
    params = [Param("k", "int", 1, 8), X]
    trials: Trials = [({"k": 2, "x": 0.5}, float(i)) for i in range(30)]
    assert importance(params, trials, smaller_is_better=True) == {"k": 0.0, "x": 0.0}
    # A top that is every trial: the two distributions are the same.
    varied = mixed_trials(30, 1, x_only)
    assert importance([X, Y, C], varied, smaller_is_better=True, top=1.0) == dict.fromkeys(
        "xyc", 0.0
    )
    assert importance([], varied, smaller_is_better=True) == {}


def test_too_few_finite_results_give_none() -> None:
    trials = mixed_trials(20, 2, x_only)
    seven = trials[:7] + [(h, math.nan) for h, _ in trials[7:]] + [(trials[8][0], math.inf)]
    assert importance([X, Y, C], seven, smaller_is_better=True) is None
    assert importance([X, Y, C], trials[:8], smaller_is_better=True) is not None
    assert importance([X, Y, C], trials[:8], smaller_is_better=True, min_trials=9) is None
    assert importance([X], [], smaller_is_better=True) is None


def test_hostile_values_are_ignored() -> None:
    """Trials and values that are not in the space change nothing."""
    params = [X, Param("k", "int", 1, 8), Param("lr", "log", 1e-5, 1e-1), C]
    rng = np.random.default_rng(9)
    clean: Trials = []
    for _ in range(200):
        x, k = float(rng.uniform(0, 1)), int(rng.integers(1, 9))
        hparams: dict[str, JsonValue] = {
            "x": x,
            "k": k,
            "lr": float(10 ** rng.uniform(-5, -1)),
            "c": str(rng.choice(["a", "b", "c"])),
        }
        clean.append((hparams, (x - 0.3) ** 2 + abs(k - 6) / 10))
    hostile: Trials = [
        # Not numbers, or not in range: the best metrics, so they would be the top.
        ({"x": "0.3", "k": "6", "lr": "1e-4", "c": 1}, -1.0),
        ({"x": None, "k": None, "lr": None, "c": None}, -1.0),
        ({"x": True, "k": True, "lr": False, "c": True}, -1.0),
        ({"x": math.nan, "k": math.inf, "lr": -math.inf, "c": "d"}, -1.0),
        ({"x": 1.5, "k": 9, "lr": 0.0, "c": "A"}, -1.0),
        ({"x": -0.1, "k": 0, "lr": -1e-3, "c": ["a"]}, -1.0),
        ({"x": [0.3], "k": 6.5, "lr": 1.0, "c": {"a": 1}}, -1.0),
        ({"x": {"v": 0.3}, "k": 10**400, "lr": 10**400, "c": math.nan}, -1.0),
        ({}, -1.0),
        ({"unrelated": 1}, -1.0),
    ]
    # Metrics that are not finite numbers drop the trial, whatever its values.
    no_metric: list[Any] = [math.nan, math.inf, -math.inf, None, "0", True, 10**400]
    dropped = [({**clean[0][0], "x": 0.31}, bad) for bad in no_metric]
    expected = check_shares(importance(params, clean, smaller_is_better=True), params)
    assert expected["x"] + expected["k"] > 0.9  # what the metric depends on
    mixed = [*hostile[:5], *clean[:100], *dropped, *hostile[5:], *clean[100:]]
    assert importance(params, mixed, smaller_is_better=True) == expected


def test_int_values_may_be_whole_floats() -> None:
    k = Param("k", "int", 1, 8)
    as_ints: Trials = [({"k": 1 + i % 8}, float(abs(i % 8 - 5))) for i in range(40)]
    as_floats: Trials = [({"k": float(h["k"])}, m) for h, m in as_ints]  # type: ignore[arg-type]
    assert importance([k, X], as_ints, smaller_is_better=True) == importance(
        [k, X], as_floats, smaller_is_better=True
    )


def test_categorical_values_that_are_maps_and_lists() -> None:
    space = {"c": {"type": "categorical", "vals": [{"a": 1, "b": 2}, [1, 2], None, True, 1]}}
    [param] = params_from_space(space)
    assert param.categories == ('{"a":1,"b":2}', "[1,2]", "null", "true", "1")
    values: list[JsonValue] = [{"b": 2, "a": 1}, [1, 2], None, True, 1]
    trials: Trials = [({"c": values[i % 5]}, float(i % 5 == 0)) for i in range(50)]
    result = check_shares(importance([param, X], trials, smaller_is_better=False), [param, X])
    assert result["c"] == 1.0  # 1 and True are different categories


def test_nested_and_flat_hparams_give_the_same_result() -> None:
    params = [Param("opt.lr", "double"), Param("opt.beta.one", "double"), Y]
    rng = np.random.default_rng(4)
    nested: Trials = []
    for _ in range(100):
        lr, one = float(rng.uniform(0, 1)), float(rng.uniform(0, 1))
        hparams: dict[str, JsonValue] = {
            "opt": {"lr": lr, "beta": {"one": one}},
            "y": float(rng.uniform(-1, 1)),
        }
        nested.append((hparams, abs(lr - 0.5)))
    flat: Trials = [(flatten(h), m) for h, m in nested]
    assert "opt.beta.one" in flat[0][0]
    result = check_shares(importance(params, nested, smaller_is_better=True), params)
    assert result["opt.lr"] > 0.8
    assert importance(params, flat, smaller_is_better=True) == result
    # A name's own dots: {"opt": {"beta.one": ...}} is found too.
    dotted: Trials = [
        ({"opt": {"lr": h["opt.lr"], "beta.one": h["opt.beta.one"]}, "y": h["y"]}, m)
        for h, m in flat
    ]
    assert importance(params, dotted, smaller_is_better=True) == result


def test_deterministic_and_independent_of_the_order_of_distinct_results() -> None:
    trials = mixed_trials(300, 8, x_only)
    first = importance([X, Y, C], trials, smaller_is_better=True)
    assert importance([X, Y, C], trials, smaller_is_better=True) == first
    shuffled = [trials[i] for i in np.random.default_rng(0).permutation(len(trials)).tolist()]
    assert importance([X, Y, C], shuffled, smaller_is_better=True) == first


def test_arguments_are_checked() -> None:
    trials = mixed_trials(20, 0, x_only)
    for top in (0.0, -0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match="top must be a share"):
            importance([X], trials, smaller_is_better=True, top=top)
    with pytest.raises(ValueError, match="names must be distinct"):
        importance([X, X], trials, smaller_is_better=True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "float"}, "kind must be one of"),
        ({"kind": "double", "low": 1.0, "high": 1.0}, "low must be less than high"),
        ({"kind": "double", "low": 0.0, "high": math.inf}, "low must be less than high"),
        ({"kind": "log", "low": 0.0, "high": 1.0}, "must be above 0"),
        ({"kind": "int", "low": 0.5, "high": 3.0}, "whole-number ends"),
        ({"kind": "categorical", "categories": ('"a"', '"a"')}, "must be distinct"),
    ],
)
def test_a_param_checks_its_space(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Param("p", **kwargs)


# ---------------------------------------------------------------- the space


@pytest.mark.parametrize("log", sorted(GOLDEN.glob("*.jsonl")), ids=lambda p: p.name)
def test_params_from_the_golden_logs(log: Path) -> None:
    created = json.loads(log.read_text().splitlines()[0])
    assert created["kind"] == "created"
    params = params_from_space(created["config"]["hyperparameters"])
    if log.name.startswith("pbt"):  # examples/pbt: a learning rate and a constant
        assert params == [Param("lr", "log", 0.001, 1.0)]
    else:  # examples/core_api
        assert params == [Param("increment_by", "int", 1.0, 8.0)]
    # The YAML it was made from reads the same.
    raw = yaml.safe_load((GOLDEN / f"{created['config']['name']}.yaml").read_text())
    assert params_from_space(raw["hyperparameters"]) == params


NESTED: dict[str, Any] = {
    "optimizer": {
        "lr": {"type": "log", "base": 10, "minval": -5, "maxval": -1},
        "name": {"type": "categorical", "vals": ["adam", "sgd", "adam"]},
        "momentum": 0.9,
        "betas": {"one": {"type": "double", "minval": 0.8, "maxval": 0.99}},
    },
    "layers": {"type": "int", "minval": 1, "maxval": 4, "count": 4},
    "dropout": {"type": "const", "val": 0.1},
    "decay": {"type": "log", "base": 0.5, "minval": 1, "maxval": 10},
    "tags": [1, 2],
}


def test_params_from_a_nested_space() -> None:
    config = parse_config(
        {"hyperparameters": NESTED, "searcher": {"name": "single", "metric": "x", "max_length": 1}}
    ).config
    logged = json.loads(config.model_dump_json())["hyperparameters"]  # as the log holds it
    params = params_from_space(logged)
    assert params_from_space(NESTED) == params
    assert [p.name for p in params] == [
        name for name, hp in iter_leaves(config.hyperparameters) if not isinstance(hp, ConstHP)
    ]
    by_name = {p.name: p for p in params}
    assert list(by_name) == [
        "decay",
        "layers",
        "optimizer.betas.one",
        "optimizer.lr",
        "optimizer.name",
    ]
    assert by_name["decay"].kind == "log"
    assert (by_name["decay"].low, by_name["decay"].high) == (0.5**10, 0.5)  # base < 1: swapped
    assert by_name["layers"] == Param("layers", "int", 1, 4)
    assert by_name["optimizer.betas.one"] == Param("optimizer.betas.one", "double", 0.8, 0.99)
    assert by_name["optimizer.lr"].low == pytest.approx(1e-5)
    assert by_name["optimizer.lr"].high == pytest.approx(1e-1)
    assert by_name["optimizer.name"].categories == ('"adam"', '"sgd"')
    # Values drawn from the space are all in it: none is dropped as out of range.
    rng = np.random.default_rng(0)
    trials: Trials = []
    for _ in range(50):
        hparams = {
            "decay": 0.5 ** float(rng.uniform(1, 10)),
            "layers": int(rng.integers(1, 5)),
            "optimizer": {
                "betas": {"one": float(rng.uniform(0.8, 0.99))},
                "lr": 10 ** float(rng.uniform(-5, -1)),
                "name": str(rng.choice(["adam", "sgd"])),
                "momentum": 0.9,
            },
        }
        trials.append((hparams, float(rng.uniform())))
    check_shares(importance(params, trials, smaller_is_better=True), params)
    ranked = [hparams for hparams, _ in trials]
    for param in params:
        read = _picks(param, ranked) if param.kind == "categorical" else _units(param, ranked)
        assert read.size == len(trials), param.name


def test_definitions_it_cannot_read_are_skipped() -> None:
    space = {
        "a": {"type": "weird", "minval": 0, "maxval": 1},
        "b": {"type": "int", "minval": "0", "maxval": 3},
        "c": {"type": "int", "minval": 0.5, "maxval": 3},
        "d": {"type": "log", "minval": -3, "maxval": -1},  # no base
        "e": {"type": "log", "base": 1, "minval": -3, "maxval": -1},
        "f": {"type": "log", "base": 10, "minval": -3, "maxval": 400},  # overflows
        "g": {"type": "double", "minval": 1, "maxval": 1},
        "h": {"type": "categorical", "vals": "abc"},
        "i": {"type": "categorical", "vals": [math.nan, "x"]},
        "j": {"type": "double", "minval": 0, "maxval": 2},
    }
    params = params_from_space(space)
    assert params == [
        Param("i", "categorical", categories=('"x"',)),
        Param("j", "double", 0, 2),
    ]


def test_flatten_is_the_searchers_flattening() -> None:
    hparams: dict[str, JsonValue] = {
        "b": {"y": 1, "x": {"z": [1, 2]}},
        "a": 0.5,
        "e": {},
        "n": None,
    }
    assert flatten(hparams) == {"a": 0.5, "b.x.z": [1, 2], "b.y": 1, "e": {}, "n": None}
    assert flatten(hparams) == space_flatten(hparams)


def test_category_text_is_canonical_json() -> None:
    assert category_text({"b": 1, "a": [1, "x"]}) == '{"a":[1,"x"],"b":1}'
    assert category_text("adam") == '"adam"'
    assert category_text(1.0) != category_text(1) != category_text(True)
    with pytest.raises(ValueError, match="JSON"):
        category_text(math.nan)


# ---------------------------------------------------------------- speed


def test_ten_thousand_trials_and_six_params() -> None:
    """The figure goes in the report; the time is printed, not asserted."""
    params = [
        X,
        Y,
        Param("lr", "log", 1e-5, 1e-1),
        Param("k", "int", 1, 8),
        Param("width", "int", 16, 4096),
        Param("act", "categorical", categories=('"relu"', '"gelu"', '"tanh"', '"silu"')),
    ]
    rng = np.random.default_rng(1)
    n = 10_000
    xs = rng.uniform(0, 1, n).tolist()
    ys = rng.uniform(-1, 1, n).tolist()
    lrs = (10 ** rng.uniform(-5, -1, n)).tolist()
    ks = rng.integers(1, 9, n).tolist()
    widths = rng.integers(16, 4097, n).tolist()
    acts = rng.choice(["relu", "gelu", "tanh", "silu"], n).tolist()
    noise = rng.standard_normal(n).tolist()
    trials: Trials = [
        (
            {"x": xs[i], "y": ys[i], "lr": lrs[i], "k": ks[i], "width": widths[i], "act": acts[i]},
            (xs[i] - 0.3) ** 2 + 0.01 * noise[i],
        )
        for i in range(n)
    ]
    times = []
    for _ in range(5):
        start = time.perf_counter()
        result = importance(params, trials, smaller_is_better=True)
        times.append(time.perf_counter() - start)
    # The figure for the report: printed, not asserted.
    print(  # noqa: T201
        f"\nimportance: {n} trials x {len(params)} params: best {min(times) * 1e3:.1f} ms, "
        f"median {sorted(times)[2] * 1e3:.1f} ms"
    )
    result = check_shares(result, params)
    assert max(result, key=result.__getitem__) == "x"
