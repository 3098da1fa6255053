"""Validation that catches what would fail: a space that validates never fails a draw.

Every config refused here was accepted before issue 15 (item 4) and then failed while the
experiment ran: ``base ** u`` raised OverflowError in the middle of an event, a double
range drew ``inf``, a NaN reached a trial as ``null``, or a grid of 10**8 points was built
whole and exhausted the searcher's memory.
"""

from __future__ import annotations

import json
import math
import tracemalloc
from collections.abc import Iterator
from random import Random
from typing import Any

import pytest
import yaml
from hypothesis import event, given, settings
from hypothesis import strategies as st

from rung.searcher.config import (
    ExperimentConfig,
    GridSearcher,
    Hyperparameter,
    IntHP,
    LogHP,
    NestedHP,
    iter_leaves,
    parse_config,
)
from rung.searcher.config.hyperparameters import INT_LIMIT
from rung.searcher.config.searchers import MAX_GRID_POINTS
from rung.searcher.errors import ConfigError
from rung.searcher.events import Start
from rung.searcher.experiment import Experiment
from rung.searcher.methods import GridSearch
from rung.searcher.space import Grid, draw_trial, sample

from .helpers import creates

SINGLE = {"name": "single", "metric": "x", "max_length": 1}
GRID = {"name": "grid", "metric": "x", "max_length": 1}


def raw(hps: dict[str, Any] | str, searcher: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "hyperparameters": yaml.safe_load(hps) if isinstance(hps, str) else hps,
        "searcher": dict(searcher or SINGLE),
    }


def problems(hps: dict[str, Any] | str, searcher: dict[str, Any] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw(hps, searcher))
    return [str(p) for p in caught.value.problems]


def load(hps: dict[str, Any] | str, searcher: dict[str, Any] | None = None) -> ExperimentConfig:
    return parse_config(raw(hps, searcher)).config


def _finite_json(value: Any) -> None:
    """The value reaches a trial intact: JSON without NaN or infinity."""
    json.dumps(value, allow_nan=False)


# ---------------------------------------------------------------- refusals, word for word
REFUSED = [
    pytest.param(
        "{lr: {type: log, base: 10, minval: -4, maxval: 400}}",
        SINGLE,
        [
            "hyperparameters.lr.maxval: base ** maxval must be a finite number, got "
            "10 ** 400, which overflows a float; minval and maxval are exponents: keep maxval "
            "at most 308.2 for base 10 (for 1e-4, write -4)"
        ],
        id="log-overflow",
    ),
    pytest.param(
        "{lr: {type: log, base: 10, minval: -400, maxval: -4}}",
        SINGLE,
        [
            "hyperparameters.lr.minval: base ** minval must be greater than 0, got "
            "10 ** -400, which underflows to 0.0; minval and maxval are exponents: keep "
            "minval at least -307.6 for base 10, or use type: double if 0 is a value you want"
        ],
        id="log-underflow",
    ),
    pytest.param(
        "{lr: {type: log, base: 0.5, minval: -1100, maxval: 1100}}",
        SINGLE,
        [
            "hyperparameters.lr.minval: base ** minval must be a finite number, got "
            "0.5 ** -1100, which overflows a float; minval and maxval are exponents: keep "
            "minval at least -1023.9 for base 0.5",
            "hyperparameters.lr.maxval: base ** maxval must be greater than 0, got "
            "0.5 ** 1100, which underflows to 0.0; minval and maxval are exponents: keep "
            "maxval at most 1022 for base 0.5, or use type: double if 0 is a value you want",
        ],
        id="log-base-below-1-both-ends",
    ),
    pytest.param(
        "{lr: {type: log, base: 2, minval: 0, maxval: 1024}}",
        SINGLE,
        [
            "hyperparameters.lr.maxval: base ** maxval must be a finite number, got "
            "2 ** 1024, which overflows a float; minval and maxval are exponents: keep maxval "
            "at most 1023.9 for base 2"
        ],
        id="log-base-2",
    ),
    pytest.param(
        "{lr: {type: log, base: 1, minval: -4, maxval: 4}}",
        SINGLE,
        [
            "hyperparameters.lr.base: must not be 1, got 1: 1 ** u is 1 for every exponent u; "
            "use type: const with val: 1 for a single value, or a base such as 10 or 2"
        ],
        id="log-base-1",
    ),
    pytest.param(
        "{lr: {type: log, base: 10, minval: -1.7e308, maxval: 1.7e308}}",
        SINGLE,
        [
            "hyperparameters.lr.maxval: maxval - minval must be a finite number, got "
            "1.7e+308 - (-1.7e+308), which overflows a float; minval and maxval are exponents: "
            "use the powers of base, e.g. minval: -5, maxval: -1 for 1e-5 to 1e-1"
        ],
        id="log-exponent-span",
    ),
    pytest.param(
        "{d: {type: double, minval: -1.7e308, maxval: 1.7e308}}",
        SINGLE,
        [
            "hyperparameters.d.maxval: maxval - minval must be a finite number, got "
            "1.7e+308 - (-1.7e+308), which overflows a float; narrow the range, or use "
            "type: log for values that span many orders of magnitude"
        ],
        id="double-span",
    ),
    pytest.param(
        "{d: {type: double, minval: 1.0e308, maxval: 1.7e308, count: 1}}",
        GRID,
        [
            "hyperparameters.d.count: every draw and grid point must be a finite number, got "
            "inf from minval=1e+308, maxval=1.7e+308 and count=1; move the bounds away from "
            "the largest float (about 1.8e308)"
        ],
        id="double-grid-midpoint",
    ),
    pytest.param(
        {"n": {"type": "int", "minval": 0, "maxval": 10**20}},
        SINGLE,
        [
            "hyperparameters.n.maxval: must be between -2**53 and 2**53 (-9007199254740992 "
            "to 9007199254740992), the whole numbers a JSON number holds exactly, got "
            "100000000000000000000; narrow the range, or use type: double or log for larger "
            "values"
        ],
        id="int-bounds",
    ),
    pytest.param(
        {"n": {"type": "int", "minval": -(10**400), "maxval": 10**400, "count": 3}},
        GRID,
        None,  # both bounds, each with its path
        id="int-beyond-any-float",
    ),
    pytest.param(
        "{c: {type: categorical, vals: [1, .nan]}}",
        SINGLE,
        [
            "hyperparameters.c.vals[1]: must be a finite number, got nan; JSON has no NaN or "
            "infinity, so no trial could receive it: use a finite number, or a string such as "
            "'inf' that your script reads"
        ],
        id="categorical-nan",
    ),
    pytest.param(
        "{c: {type: const, val: {x: [1, -.inf]}}}",
        SINGLE,
        [
            "hyperparameters.c.val.x[1]: must be a finite number, got -inf; JSON has no NaN or "
            "infinity, so no trial could receive it: use a finite number, or a string such as "
            "'inf' that your script reads"
        ],
        id="const-nested-inf",
    ),
    pytest.param(
        "{k: .inf}",
        SINGLE,
        [
            "hyperparameters.k.val: must be a finite number, got inf; JSON has no NaN or "
            "infinity, so no trial could receive it: use a finite number, or a string such as "
            "'inf' that your script reads"
        ],
        id="const-shorthand-inf",
    ),
    pytest.param(
        '{"a.b": 1, a: {b: {type: int, minval: 0, maxval: 3}}}',
        SINGLE,
        [
            "hyperparameters.a.b: two hyperparameters have the dotted name 'a.b' (a nested "
            "map's leaves are named parent.child), got both; rename one of them"
        ],
        id="dotted-name-clash",
    ),
    pytest.param(
        '{"a.b": {}, a: {b: 1}}',
        SINGLE,
        [
            "hyperparameters.a.b: two hyperparameters have the dotted name 'a.b' (a nested "
            "map's leaves are named parent.child), got both; rename one of them"
        ],
        id="dotted-name-clash-with-an-empty-map",
    ),
    pytest.param(
        "{a: {type: double, minval: 0, maxval: 1, count: 10000}, "
        "b: {type: int, minval: 0, maxval: 100000, count: 10000}, c: {type: categorical, "
        "vals: [x]}}",
        GRID,
        [
            "hyperparameters: the grid searcher allows at most 100000 points, got 100000000 "
            "(a: 10000 x b: 10000); lower count on the largest axes, or use searcher name: "
            "random with max_trials: N to sample N points instead"
        ],
        id="grid-too-large",
    ),
    pytest.param(
        "{a: {type: double, minval: 0, maxval: 1, count: 100000000}}",
        {**GRID, "max_trials": 5},
        [
            "hyperparameters: the grid searcher allows at most 100000 points, got 100000000 "
            "(a: 100000000); lower count on the largest axes, or use searcher name: random "
            "with max_trials: N to sample N points instead",
            "searcher.max_trials: the grid searcher trains every point of its grid and takes "
            "no max_trials (as in Determined), got max_trials: 5 for a grid of 100000000 "
            "points; remove max_trials and lower count to shrink the grid, or use name: "
            "random with max_trials: 5 to sample that many points",
        ],
        id="grid-1e8-with-max-trials-5",
    ),
    pytest.param(
        "{a: {type: double, minval: 0, maxval: 1, count: 3}}",
        {**GRID, "max_trials": 2},
        [
            "searcher.max_trials: the grid searcher trains every point of its grid and takes "
            "no max_trials (as in Determined), got max_trials: 2 for a grid of 3 points; "
            "remove max_trials and lower count to shrink the grid, or use name: random with "
            "max_trials: 2 to sample that many points"
        ],
        id="grid-max-trials",
    ),
]


@pytest.mark.parametrize(("hps", "searcher", "expected"), REFUSED)
def test_what_would_fail_is_refused_with_path_value_and_fix(
    hps: dict[str, Any] | str, searcher: dict[str, Any], expected: list[str] | None
) -> None:
    found = problems(hps, searcher)
    if expected is None:
        assert [p.split(":")[0] for p in found] == [
            "hyperparameters.n.minval",
            "hyperparameters.n.maxval",
        ]
        assert all("must be between -2**53 and 2**53" in p for p in found)
    else:
        assert found == expected


def test_the_refused_log_space_did_fail_when_drawn() -> None:
    """What the refusal prevents: the old accepted config raised in the sampler."""
    unchecked = LogHP.model_construct(type="log", minval=-4.0, maxval=400.0, base=10.0)
    rng = Random(0)
    overflows = 0
    for _ in range(100):
        try:
            sample({"lr": unchecked}, rng)
        except OverflowError:
            overflows += 1
    assert overflows > 10  # u above 308.25 (a quarter of the range) overflows
    with pytest.raises(ConfigError):
        parse_config(raw({"lr": {"type": "log", "base": 10, "minval": -4, "maxval": 400}}))


def test_grid_max_trials_is_not_a_valid_key_to_suggest() -> None:
    (problem,) = problems("{a: 1}", {**GRID, "max_trails": 3})
    assert problem.startswith("searcher.max_trails: unknown key 'max_trails'; valid keys here:")
    assert "max_trials" not in problem.split("valid keys here:")[1]


# ---------------------------------------------------------------- the edges that are legal
ACCEPTED = [
    "{lr: {type: log, base: 10, minval: -307.6, maxval: 308.2, count: 5}}",
    "{lr: {type: log, base: 2, minval: -1022, maxval: 1023.9, count: 2}}",
    "{lr: {type: log, base: 0.5, minval: -1023.9, maxval: 1022, count: 3}}",
    "{lr: {type: log, base: 1.0e-300, minval: -1, maxval: 1, count: 1}}",
    "{d: {type: double, minval: -8.0e307, maxval: 8.0e307, count: 7}}",
    "{d: {type: double, minval: 1.0e308, maxval: 1.7e308, count: 2}}",
    "{d: {type: double, minval: 0, maxval: 5.0e-324, count: 4}}",
    "{n: {type: int, minval: -9007199254740992, maxval: 9007199254740992, count: 7}}",
    "{n: {type: int, minval: 9007199254740990, maxval: 9007199254740992, count: 1}}",
    "{c: {type: categorical, vals: [1.0e308, [1, {a: -1.0e308}], null, 'inf']}, e: {}}",
]


@pytest.mark.parametrize("hps", ACCEPTED)
def test_near_the_edges_every_draw_and_grid_point_is_finite(hps: str) -> None:
    config = load(hps, GRID)
    leaves = dict(iter_leaves(config.hyperparameters))
    for index in range(500):
        values = draw_trial(3, index, config.hyperparameters, None).hparams
        _finite_json(values)
    grid = Grid(config.hyperparameters)
    assert list(grid) == [grid.point(i) for i in range(len(grid))]
    for point in grid:
        _finite_json(point)
    for hp in leaves.values():
        if isinstance(hp, IntHP):
            values_ = [hp.grid_value(i) for i in range(hp.grid_length())]
            assert all(hp.minval <= v <= hp.maxval for v in values_)


# ---------------------------------------------------------------- a grid is never built whole
def _grid_of(points_per_axis: int, axes: int, searcher: dict[str, Any]) -> ExperimentConfig:
    hps = {
        f"h{i}": {"type": "double", "minval": 0, "maxval": 1, "count": points_per_axis}
        for i in range(axes)
    }
    return load(hps, searcher).with_seed(5)


def test_a_grid_at_the_cap_starts_in_small_memory() -> None:
    config = _grid_of(10, 5, {**GRID, "max_concurrent_trials": 2})
    assert len(Grid(config.hyperparameters)) == MAX_GRID_POINTS
    tracemalloc.start()
    try:
        experiment = Experiment(config)
        ops = experiment.apply(Start()).ops
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(creates(ops)) == 2
    # Built whole, the 100,000 points took tens of MB; lazily, the grid costs its leaves.
    assert peak < 1_000_000, peak
    assert isinstance(experiment.method, GridSearch)
    assert experiment.method.snapshot() == {"next_point": 2}


def test_grid_search_is_lazy_even_beyond_the_cap() -> None:
    """10**21 points (a space validated for ``single``, so the cap does not apply; more
    than ``len()`` can count): the method's state stays one index, and a restored index
    gives the same point."""
    n = 10**7
    hps = _grid_of(n, 3, SINGLE).hyperparameters
    grid_config = GridSearcher(name="grid", metric="x", max_length=1, max_concurrent_trials=3)
    method = GridSearch(grid_config, hps)
    assert method.total_trials() == n**3
    grid = Grid(hps)
    assert grid.point(0) == {"h0": 0.0, "h1": 0.0, "h2": 0.0}
    assert grid.point(1) == {"h0": 0.0, "h1": 0.0, "h2": 1 / (n - 1)}  # last name fastest
    assert grid.point(n) == {"h0": 0.0, "h1": 1 / (n - 1), "h2": 0.0}
    assert grid.point(-1) == {"h0": 1.0, "h1": 1.0, "h2": 1.0}
    method.restore({"next_point": n**3 - 1})
    assert json.dumps(method.snapshot()) == '{"next_point": 999999999999999999999}'
    with pytest.raises(IndexError):
        grid.point(n**3)


# ---------------------------------------------------------------- property: validates => draws
_EDGE_FLOATS = [
    0.0, 1.0, -1.0, 4.0, -4.0, 308.0, 308.3, -307.6, -324.0, 400.0, -400.0, 1023.9, 1024.0,
    1.0e308, -1.0e308, 1.7e308, -1.7e308, 5e-324, math.inf, -math.inf, math.nan,
]  # fmt: skip
_numbers = st.one_of(
    st.sampled_from(_EDGE_FLOATS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-1.8e308, 1.8e308),
    st.integers(-(2**60), 2**60),
)
_exponents = st.one_of(
    st.sampled_from(_EDGE_FLOATS), st.floats(-1100, 1100), st.integers(-1100, 1100)
)
_bases = st.one_of(
    st.sampled_from([10, 2, 0.5, 0.1, 1, 0, -2, 1e-300, 1e300, 1.0000001, math.inf]),
    st.floats(min_value=0, max_value=1e6),
)
_ints = st.one_of(
    st.integers(-20, 20),
    st.sampled_from([INT_LIMIT, -INT_LIMIT, INT_LIMIT + 1, -INT_LIMIT - 1, 10**400]),
    st.integers(-(2**64), 2**64),
)
_counts = st.one_of(
    st.integers(1, 12),
    st.integers(1, 12),
    st.none(),
    st.sampled_from([1000, 100_001, 10**6, 10**400, 0]),
)
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.text(max_size=3)
    | st.integers()
    | st.floats(-1e9, 1e9)
    | st.sampled_from([math.nan, math.inf, -math.inf, 1.7e308]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner),
    max_leaves=6,
)


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _increasing(pair: tuple[Any, Any]) -> tuple[Any, Any]:
    low, high = sorted(pair, key=lambda v: (_is_nan(v), v))
    if low == high:
        high = high + 1 if isinstance(high, int) else math.nextafter(high, math.inf)
    return low, high


def _ordered(values: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[Any, Any]]:
    """Mostly increasing pairs, so that the rules after ``minval < maxval`` are reached."""
    pairs = st.tuples(values, values)
    increasing = pairs.map(_increasing)
    return st.one_of(increasing, increasing, increasing, pairs)


_ALL_KINDS = ("const", "int", "double", "log", "categorical", "short")


@st.composite
def _leaf(draw: st.DrawFn, kinds: tuple[str, ...] = _ALL_KINDS) -> Any:
    kind = draw(st.sampled_from(kinds))
    count = draw(_counts)
    extra = {} if count is None else {"count": count}
    match kind:
        case "int":
            low, high = draw(_ordered(_ints))
            return {"type": "int", "minval": low, "maxval": high, **extra}
        case "double":
            low, high = draw(_ordered(_numbers))
            return {"type": "double", "minval": low, "maxval": high, **extra}
        case "log":
            low, high = draw(_ordered(_exponents))
            base = draw(_bases)
            return {"type": "log", "minval": low, "maxval": high, "base": base, **extra}
        case "categorical":
            return {"type": "categorical", "vals": draw(st.lists(_json, max_size=4))}
        case "const":
            return {"type": "const", "val": draw(_json)}
    return draw(st.one_of(st.floats(-1e9, 1e9), st.integers(), st.text(max_size=3), _numbers))


_names = st.sampled_from(["a", "b", "lr", "a.b", "opt"])
_spaces = st.dictionaries(
    _names,
    st.one_of(_leaf(), st.dictionaries(_names, _leaf(), max_size=2)),
    max_size=3,
)


_SEARCHERS = st.sampled_from([SINGLE, GRID, {**GRID, "max_trials": 3}])


@settings(max_examples=300, deadline=None)
@given(_spaces, _SEARCHERS, st.integers(0, 99))
def test_a_space_that_validates_draws_only_finite_values(
    hps: dict[str, Any], searcher: dict[str, Any], seed: int
) -> None:
    _check_space(hps, searcher, seed)


@settings(max_examples=400, deadline=None)
@given(
    _leaf(kinds=("int", "double", "log", "log")),
    st.sampled_from([SINGLE, GRID]),
    st.integers(0, 99),
)
def test_a_numeric_hyperparameter_that_validates_draws_only_finite_values(
    hp: dict[str, Any], searcher: dict[str, Any], seed: int
) -> None:
    _check_space({"h": hp}, searcher, seed)


def _check_space(hps: dict[str, Any], searcher: dict[str, Any], seed: int) -> None:
    """Validation refuses with words, or every draw and grid point is finite JSON."""
    outcome = _validate(raw(hps, searcher))
    if isinstance(outcome, ConfigError):
        assert outcome.problems  # refused with words: no other exception may escape
        event("refused")
        return
    config = outcome
    event(f"valid {config.searcher.name}")
    space = config.hyperparameters
    for index in range(300):
        values = draw_trial(seed, index, space, None).hparams
        _finite_json(values)
        for hp, value in _leaf_values(values, space):
            if isinstance(hp, IntHP):
                assert hp.minval <= value <= hp.maxval
            elif isinstance(hp, LogHP):
                assert 0 < value < math.inf
    if isinstance(config.searcher, GridSearcher):
        grid = Grid(space)
        assert 1 <= len(grid) <= MAX_GRID_POINTS
        rng = Random(seed)
        for index in {0, len(grid) - 1, *(rng.randrange(len(grid)) for _ in range(20))}:
            _finite_json(grid.point(index))


def _validate(data: dict[str, Any]) -> ExperimentConfig | ConfigError:
    try:
        return parse_config(data).config
    except ConfigError as refused:
        return refused


def _leaf_values(
    values: dict[str, Any], hps: dict[str, Any]
) -> Iterator[tuple[Hyperparameter, Any]]:
    """Each leaf of the space with the value drawn for it, found along the space's shape."""
    for name, hp in hps.items():
        if isinstance(hp, NestedHP):
            yield from _leaf_values(values[name], hp.root)
        else:
            yield hp, values[name]
