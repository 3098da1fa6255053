"""Hyperparameter sampling, grids and dotted names."""

from __future__ import annotations

from random import Random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rung.searcher.config import parse_config
from rung.searcher.space import draw_trial, flatten, grid_points, grid_size, sample, unflatten


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
