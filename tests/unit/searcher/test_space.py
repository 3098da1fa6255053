"""Hyperparameter sampling, grids and dotted names."""

from __future__ import annotations

import itertools
import math
from random import Random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rung.searcher.config import (
    CategoricalHP,
    ConstHP,
    DoubleHP,
    IntHP,
    LogHP,
    iter_leaves,
    parse_config,
)
from rung.searcher.space import (
    Grid,
    draw_trial,
    flatten,
    grid_points,
    grid_size,
    sample,
    unflatten,
)


def space(hps: dict[str, object]) -> dict:  # type: ignore[type-arg]
    raw = {"hyperparameters": hps, "searcher": {"name": "single", "metric": "x", "max_length": 1}}
    return parse_config(raw).config.hyperparameters


SPACE = space(
    {
        "n": {"type": "int", "minval": -3, "maxval": 3},
        "d": {"type": "double", "minval": 0.5, "maxval": 1.5},
        "lr": {"type": "log", "minval": -4, "maxval": -1, "base": 10},
        "c": {"type": "categorical", "vals": ["a", "b", {"deep": 1}]},
        "k": 7,
        "opt": {"beta": {"type": "double", "minval": 0, "maxval": 1}, "name": "adam"},
    }
)


@given(st.integers(min_value=0, max_value=2**32 - 1), st.integers(min_value=0, max_value=10**6))
def test_samples_stay_in_bounds(seed: int, index: int) -> None:
    values = draw_trial(seed, index, SPACE, None).hparams
    assert isinstance(values["n"], int)
    assert -3 <= values["n"] <= 3
    assert 0.5 <= values["d"] <= 1.5  # type: ignore[operator]
    assert 1e-4 <= values["lr"] <= 1e-1  # type: ignore[operator]
    assert values["c"] in ("a", "b", {"deep": 1})
    assert values["k"] == 7
    assert values["opt"]["name"] == "adam"  # type: ignore[index,call-overload]
    assert 0 <= values["opt"]["beta"] <= 1  # type: ignore[index,call-overload,operator]


def test_trial_k_depends_only_on_seed_and_k() -> None:
    first = draw_trial(11, 5, SPACE, None)
    assert draw_trial(11, 5, SPACE, None) == first
    assert draw_trial(11, 6, SPACE, None) != first
    assert draw_trial(12, 5, SPACE, None) != first


def test_trial_seed_and_id_do_not_depend_on_the_space() -> None:
    other = space({"z": {"type": "int", "minval": 0, "maxval": 9}})
    a, b = draw_trial(3, 9, SPACE, None), draw_trial(3, 9, other, None)
    assert (a.request_id, a.seed) == (b.request_id, b.seed)


def test_int_sampling_covers_both_ends() -> None:
    rng = Random(0)
    seen = {
        sample(space({"n": {"type": "int", "minval": 1, "maxval": 3}}), rng)["n"]
        for _ in range(200)
    }
    assert seen == {1, 2, 3}


@pytest.mark.parametrize(
    ("hp", "expected"),
    [
        # int: count clamped to the number of integers, rounded evenly spaced values
        ({"type": "int", "minval": 1, "maxval": 8, "count": 3}, [1, 5, 8]),
        ({"type": "int", "minval": 1, "maxval": 3, "count": 10}, [1, 2, 3]),
        ({"type": "int", "minval": 1, "maxval": 4, "count": 1}, [3]),  # round(2.5) away from 0
        ({"type": "int", "minval": -4, "maxval": -1, "count": 1}, [-3]),
        ({"type": "double", "minval": 0, "maxval": 1, "count": 5}, [0, 0.25, 0.5, 0.75, 1]),
        ({"type": "double", "minval": 0, "maxval": 1, "count": 1}, [0.5]),
        (
            {"type": "log", "minval": -3, "maxval": -1, "base": 10, "count": 3},
            [10**-3, 10**-2, 10**-1],
        ),
        ({"type": "categorical", "vals": [1, "x"]}, [1, "x"]),
        ({"type": "const", "val": [1, 2]}, [[1, 2]]),
    ],
)
def test_grid_axis_values_follow_the_reference(
    hp: dict[str, object], expected: list[object]
) -> None:
    points = grid_points(space({"h": hp}))
    values = [p["h"] for p in points]
    if all(isinstance(v, int | float) for v in expected):
        assert values == pytest.approx(expected)
    else:
        assert values == expected


def test_grid_is_the_cartesian_product_first_name_slowest() -> None:
    hps = space(
        {
            "b": {"type": "categorical", "vals": [1, 2]},
            "a": {"type": "categorical", "vals": ["x", "y", "z"]},
            "n": {"inner": {"type": "categorical", "vals": [True, False]}},
        }
    )
    points = grid_points(hps)
    assert grid_size(hps) == len(points) == 12
    assert points[0] == {"a": "x", "b": 1, "n": {"inner": True}}
    assert points[1] == {"a": "x", "b": 1, "n": {"inner": False}}
    assert points[-1] == {"a": "z", "b": 2, "n": {"inner": False}}
    assert len({repr(sorted(flatten(p).items())) for p in points}) == 12


def test_an_empty_space_is_one_point() -> None:
    assert grid_points(space({})) == [{}]
    assert grid_points(space({"k": 1})) == [{"k": 1}]


def test_flatten_and_unflatten_round_trip() -> None:
    nested = {"opt": {"beta": 0.5, "name": "adam"}, "k": 7}
    flat = flatten(nested)
    assert flat == {"k": 7, "opt.beta": 0.5, "opt.name": "adam"}
    assert unflatten(flat, SPACE) == {"k": 7, "opt": {"beta": 0.5, "name": "adam"}}


# ---------------------------------------------------------------- the lazy grid
def _eager_axis(hp: Any) -> list[Any]:
    """The grid axis as it was computed before the grid became lazy (Determined's
    ``grid.go``): the reference the lazy grid must equal, value for value."""

    def round_half_away(value: float) -> int:
        return math.floor(value + 0.5) if value >= 0 else -math.floor(-value + 0.5)

    match hp:
        case ConstHP():
            return [hp.val]
        case CategoricalHP():
            return list(hp.vals)
        case IntHP():
            count = min(hp.count or 1, hp.maxval - hp.minval + 1)
            if count == 1:
                return [round_half_away((hp.minval + hp.maxval) / 2)]
            step = (hp.maxval - hp.minval) / (count - 1)
            return [round_half_away(hp.minval + i * step) for i in range(count)]
        case DoubleHP() | LogHP():
            count = hp.count or 1
            if count == 1:
                points = [(hp.minval + hp.maxval) / 2]
            else:
                step = (hp.maxval - hp.minval) / (count - 1)
                points = [hp.minval + i * step for i in range(count)]
            if isinstance(hp, LogHP):
                return [float(hp.base**p) for p in points]
            return points
    raise AssertionError(hp)


_bounds = st.tuples(st.integers(-50, 50), st.integers(1, 40))
_grid_leaf = st.one_of(
    _bounds.map(lambda b: {"type": "int", "minval": b[0], "maxval": b[0] + b[1]}),
    _bounds.map(lambda b: {"type": "double", "minval": b[0] / 7, "maxval": b[0] / 7 + b[1] / 3}),
    _bounds.map(
        lambda b: {"type": "log", "minval": b[0] / 10, "maxval": (b[0] + b[1]) / 10, "base": 10}
    ),
    st.lists(st.integers() | st.text(max_size=2), min_size=1, max_size=3).map(
        lambda v: {"type": "categorical", "vals": v}
    ),
    st.integers(),
)


@given(
    st.dictionaries(
        st.sampled_from(["a", "b", "lr", "z"]),
        st.one_of(
            st.tuples(_grid_leaf, st.integers(1, 5)),
            st.dictionaries(
                st.sampled_from(["x", "y"]), st.tuples(_grid_leaf, st.integers(1, 5)), max_size=2
            ),
        ),
        max_size=3,
    )
)
def test_the_lazy_grid_equals_the_eager_product_point_for_point(spec: dict[str, Any]) -> None:
    def with_counts(node: Any) -> Any:
        if isinstance(node, tuple):
            leaf, count = node
            return {**leaf, "count": count} if isinstance(leaf, dict) and "minval" in leaf else leaf
        return {k: with_counts(v) for k, v in node.items()}

    hps = space({name: with_counts(node) for name, node in spec.items()})
    leaves = list(iter_leaves(hps))
    names = [name for name, _ in leaves]
    eager = [
        unflatten(dict(zip(names, combo, strict=True)), hps)
        for combo in itertools.product(*(_eager_axis(hp) for _, hp in leaves))
    ]
    grid = Grid(hps)
    assert len(grid) == grid_size(hps) == len(eager)
    assert list(grid) == eager
    assert [grid[i] for i in range(-len(eager), 0)] == eager
    assert grid[1:3] == eager[1:3]
    with pytest.raises(IndexError):
        grid.point(len(eager))


def test_the_grid_keeps_only_its_leaves() -> None:
    hps = space({"a": {"type": "double", "minval": 0, "maxval": 1, "count": 10**9}, "b": [1]})
    grid = Grid(hps)
    assert len(grid) == 10**9
    assert grid[-1] == {"a": 1.0, "b": [1]}
    assert grid[10**9 // 2] == {"a": pytest.approx(0.5), "b": [1]}
