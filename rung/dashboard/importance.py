"""Hyperparameter importance, per rung: a cheap PED-ANOVA-style estimator.

What it says: for each hyperparameter, how differently its values are spread among the
best trials than among all the trials. A hyperparameter that matters has its best trials
bunched where it is good (a learning rate near 1e-3, an optimizer of ``"adam"``); one
that does not has its best trials spread like all the others.

How it is computed:

1. Trials with no finite metric are dropped. The rest are ranked by the metric, best
   first; equal metrics keep the order they were given in.
2. For each hyperparameter, the trials whose value is in its space (others are skipped
   for that hyperparameter only) are split: the best ``top`` share of them (10% by
   default, at least 2) are the *top trials*.
3. Two distributions of the hyperparameter's values are estimated, one over the top
   trials (``p_top``) and one over all the trials (``p_all``):

   * a number on ``GRID_POINTS`` (64) evenly spaced points over its range, in log space
     for ``log`` (for an ``int`` with at most 64 values, on the values themselves): each
     value is a Gaussian bump whose width is Scott's rule, ``std * n ** -0.2`` of the
     values in that set, but at least one grid step (half a step between ``int`` values);
   * a categorical by how often each category occurs, plus one per category (add-one
     smoothing);

   so that no point has zero chance. The smoothing is the same for both: the top
   trials' proportions are smoothed as if there were as many of them as there are
   trials (a uniform share worth one trial for a number, one count per category), so
   a value that no trial has does not count as a difference.
4. The hyperparameter's score is the Pearson divergence between the two,
   ``sum over points of (p_top / p_all - 1) ** 2 * p_all``: 0 when the top trials are
   spread like all the trials, larger the more they bunch up. The scores are divided by
   their sum, so the importances are shares that add up to 1 (all 0 when no score is
   above 0, e.g. when every hyperparameter is constant).

This is PED-ANOVA (Watanabe et al., 2023, "PED-ANOVA: Efficiently Quantifying
Hyperparameter Importance in Arbitrary Subspaces") with the top quantile ``gamma = top``
compared with all the trials (``gamma' = 1``), the evaluator optuna-dashboard shows by
default. It costs ``O(trials * hyperparameters * 64)``: about 60 ms for 10,000 trials
and 6 hyperparameters, most of it reading the values out of the trials. The dashboard
computes it once per rung, on the trials' metrics at that rung, and once on the final
results: what matters for the first short training can differ from what matters at
full length.

Limits, in plain words:

* **One hyperparameter at a time.** Each is scored on its own (a marginal measure).
  Two that matter only together (a learning rate that suits one batch size only) are not
  credited for their interaction, and the scores say nothing about *how* a value helps:
  they are shares of a total, not effects on the metric.
* **Noisy with few trials.** Below about 20 trials the top set is 2 trials, and a
  hyperparameter that does not matter can score as high as one that does by chance.
  On a test with two numbers and a categorical, over 40 seeds, the number the metric
  depended on came first in 35 runs of 40 with 20 trials and in all with 50; a
  categorical it depended on came first in 22 of 40 with 20 trials, in all with 50
  (narrowly), and by a wide margin with 200. Below 50 trials, read it as a hint. With
  fewer than ``min_trials`` (8) finite results there is no answer at all (``None``):
  too few to tell.
* **Relative to where the search looked.** "All the trials" are the ones the search
  ran: a model-based sampler that concentrates its trials makes them the reference.
* **Always shares.** The importances add up to 1 even when nothing matters much; and a
  number is scored over 64 points but a categorical over its few categories, so
  compare numbers with categoricals loosely.

Everything here is pure: no I/O, no clock, no random numbers; the same input gives the
same output.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
from pydantic import JsonValue

from rung.searcher.space import flatten as _flatten

__all__ = [
    "GRID_POINTS",
    "PRIOR_WEIGHT",
    "Param",
    "category_text",
    "flatten",
    "importance",
    "params_from_space",
]

#: Points a number's density is estimated on, evenly spaced over its range.
GRID_POINTS: Final = 64

#: The uniform share added to every density, counted in trials.
PRIOR_WEIGHT: Final = 1.0

# Rows of kernel values held at once (rows x GRID_POINTS floats): bounded memory.
_CHUNK = 65_536

# How far past a bound a value may lie and still be in the space (float rounding of
# ``base ** u`` or a JSON round trip), as a share of the range.
_SLACK = 1e-9

# Ints converted to float without a check: well inside the range of a float.
_INT_FLOAT: Final = 2**1000

_FloatArray = npt.NDArray[np.float64]
_IntArray = npt.NDArray[np.int64]

Kind = Literal["int", "double", "log", "categorical"]
_KINDS: Final = ("int", "double", "log", "categorical")


@dataclass(frozen=True)
class Param:
    """One hyperparameter's space.

    ``low`` and ``high`` bound the values (both included) of ``int``, ``double`` and
    ``log``: for ``log`` they are the values themselves (``base ** minval`` and
    ``base ** maxval``), and the density is estimated on their logarithm. ``categories``
    are a categorical's values as :func:`category_text` writes them, in the config's
    order.
    """

    name: str
    kind: Kind
    low: float = 0.0
    high: float = 1.0
    categories: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(
                f"hyperparameter {self.name!r}: kind must be one of {', '.join(_KINDS)}, "
                f"got {self.kind!r}"
            )
        if self.kind == "categorical":
            if len(set(self.categories)) != len(self.categories):
                raise ValueError(
                    f"hyperparameter {self.name!r}: categories must be distinct, got "
                    f"{list(self.categories)!r}; list each value once"
                )
            return
        low, high = self.low, self.high
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(
                f"hyperparameter {self.name!r}: low must be less than high, both finite, "
                f"got low={low!r} and high={high!r}"
            )
        if self.kind == "log" and low <= 0:
            raise ValueError(
                f"hyperparameter {self.name!r}: a log range must be above 0, got "
                f"low={low!r}; low and high are values (base ** minval), not exponents"
            )
        if self.kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
            raise ValueError(
                f"hyperparameter {self.name!r}: an int range must have whole-number ends, "
                f"got low={low!r} and high={high!r}"
            )


def category_text(value: Any) -> str:
    """A categorical value as JSON text, the form :class:`Param` keeps categories in:
    keys sorted, no spaces. Raises ``ValueError`` or ``TypeError`` for a value that is
    not JSON (NaN, infinity, an object)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def flatten(hparams: Mapping[str, JsonValue]) -> dict[str, JsonValue]:
    """A trial's hyperparameters with nested maps flattened to dotted names, as the
    searcher does: ``{"optimizer": {"lr": 0.1}}`` becomes ``{"optimizer.lr": 0.1}``.

    :func:`importance` does not need it: it finds dotted names in nested maps itself,
    which also keeps a categorical whose values are maps whole.
    """
    flat: dict[str, JsonValue] = _flatten(hparams)
    return flat


# ---------------------------------------------------------------- the space


def params_from_space(hyperparameters: Mapping[str, Any]) -> list[Param]:
    """The :class:`Param` of every ``int``, ``double``, ``log`` and ``categorical``
    hyperparameter in an experiment's ``hyperparameters`` section, as the event log's
    ``created`` record holds it (or as written in the YAML), in sorted dotted-name order.

    Nested maps (a mapping without ``type``) give dotted names (``optimizer.lr``).
    Constants (``type: const``, or any value that is not a mapping) are skipped: they
    cannot matter. So is a definition this module cannot read (an unknown type, a
    missing bound): the searcher validated the section, so that means a newer format,
    and the dashboard shows the rest rather than nothing.
    """
    params: list[Param] = []
    _collect(hyperparameters, "", params)
    return params


def _collect(hps: Mapping[str, Any], prefix: str, params: list[Param]) -> None:
    for key in sorted(hps, key=str):
        spec = hps[key]
        name = f"{prefix}{key}"
        if not isinstance(spec, Mapping):
            continue  # the shorthand for a constant
        if "type" not in spec:
            _collect(spec, f"{name}.", params)
            continue
        param = _param(name, spec)
        if param is not None:
            params.append(param)


def _param(name: str, spec: Mapping[str, Any]) -> Param | None:
    kind = spec.get("type")
    try:
        if kind == "categorical":
            return _categorical(name, spec.get("vals"))
        if kind in ("int", "double", "log"):
            return _numeric(name, kind, spec)
    except (ValueError, TypeError, OverflowError, ZeroDivisionError):
        return None
    return None  # const, or a type this module does not know


def _categorical(name: str, vals: object) -> Param | None:
    if not isinstance(vals, list):
        return None
    texts: dict[str, None] = {}  # distinct, in the config's order
    for value in vals:
        text = _text(value)
        if text is not None:
            texts[text] = None
    return Param(name, "categorical", categories=tuple(texts))


def _numeric(name: str, kind: Kind, spec: Mapping[str, Any]) -> Param | None:
    raw_low, raw_high = spec.get("minval"), spec.get("maxval")
    low, high = _finite(raw_low), _finite(raw_high)
    if low is None or high is None:
        return None
    if kind == "int" and not (isinstance(raw_low, int) and isinstance(raw_high, int)):
        return None
    if kind == "log":
        base = _finite(spec.get("base"))
        if base is None:
            return None
        low, high = sorted((float(base**low), float(base**high)))
    return Param(name, kind, low, high)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finite(value: object) -> float | None:
    """``value`` as a float if it is a finite number (not a bool), else ``None``."""
    if not _is_number(value):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except OverflowError:
        return None  # an int too large for a float
    return number if math.isfinite(number) else None


def _text(value: object) -> str | None:
    try:
        return category_text(value)
    except (ValueError, TypeError, RecursionError):
        return None


# ---------------------------------------------------------------- the estimator


def importance(
    params: Sequence[Param],
    trials: Sequence[tuple[Mapping[str, JsonValue], float]],
    *,
    smaller_is_better: bool,
    top: float = 0.1,
    min_trials: int = 8,
) -> dict[str, float] | None:
    """The importance of each hyperparameter in ``params``, in ``[0, 1]``, adding up to
    1 (all 0 when no hyperparameter's top trials differ from the rest), by the estimator
    the module's docstring describes.

    ``trials`` are ``(hparams, metric)`` pairs: every trial with a result at one rung,
    say. ``hparams`` may be nested or flat (:func:`flatten`); a dotted name is looked up
    either way. A metric that is not a finite number drops its trial; a value that is
    missing or not in the hyperparameter's space (a string for a number, a number out
    of range, a category not listed) drops the trial for that hyperparameter only. A
    hyperparameter with a single value among its trials has importance 0.

    Returns ``None`` when fewer than ``min_trials`` trials have a finite metric: too few
    to tell. ``top`` is the share of trials, best first, that counts as the top (at
    least 2 of them); it must be in ``(0, 1]``.
    """
    if not 0 < top <= 1:
        raise ValueError(f"top must be a share in (0, 1], got {top!r}")
    names = [param.name for param in params]
    if len(set(names)) != len(names):
        raise ValueError(f"hyperparameter names must be distinct, got {names!r}")
    kept: list[Mapping[str, JsonValue]] = []
    metrics: list[float] = []
    for hparams, metric in trials:
        value = _finite(metric)
        if value is not None:
            kept.append(hparams)
            metrics.append(value)
    if len(metrics) < min_trials:
        return None
    values = np.asarray(metrics, dtype=np.float64)
    order = np.argsort(values if smaller_is_better else -values, kind="stable")
    ranked = [kept[i] for i in order.tolist()]
    scores = {param.name: _score(param, ranked, top) for param in params}
    total = math.fsum(scores.values())
    if not total > 0:
        return dict.fromkeys(names, 0.0)
    return {name: score / total for name, score in scores.items()}


def _score(param: Param, ranked: Sequence[Mapping[str, JsonValue]], top: float) -> float:
    """The Pearson divergence of the top trials' values from all the trials' values."""
    if param.kind == "categorical":
        picks = _picks(param, ranked)
        n_top = _top_count(picks, top)
        if n_top is None:
            return 0.0
        size = len(param.categories)
        n = picks.size
        p_top, p_all = _frequencies(picks[:n_top], size, n), _frequencies(picks, size, n)
    else:
        units = _units(param, ranked)
        n_top = _top_count(units, top)
        if n_top is None:
            return 0.0
        grid, floor = _grid(param)
        n = units.size
        p_top = _density(units[:n_top], grid, floor, n)
        p_all = _density(units, grid, floor, n)
    return float(np.sum((p_top - p_all) ** 2 / p_all))


def _top_count(codes: _FloatArray | _IntArray, top: float) -> int | None:
    """How many of ``codes`` (best first) are the top: the ``top`` share, at least 2;
    ``None`` when there is nothing to compare (fewer than two values, a single value,
    or a top that is everyone)."""
    n = codes.size
    if n < 2 or codes.min() == codes.max():
        return None
    n_top = max(2, math.ceil(top * n - 1e-9))  # 0.1 * 30 is 3.0000000000000004
    return n_top if n_top < n else None


_MISSING: Final = object()

# The types whose values a categorical's text is cached by (with the type: 1, 1.0 and
# True are equal keys in a dict, but different JSON).
_SCALARS: Final = (str, int, float, bool, type(None))


def _values(ranked: Sequence[Mapping[str, JsonValue]], name: str) -> list[object]:
    """Each trial's value of ``name`` (``_MISSING`` where it has none), in rank order."""
    # The common case first, a flat dict that has the name, in one fast pass.
    values = [h.get(name, _MISSING) if type(h) is dict else _MISSING for h in ranked]
    for i, value in enumerate(values):
        if value is _MISSING:  # nested maps, other mappings, or not there at all
            values[i] = _lookup(ranked[i], name)
    return values


def _lookup(hparams: object, name: str) -> object:
    """``hparams[name]``, or the value at the dotted path ``name`` in nested maps (a
    name's own dots are tried both ways), or ``_MISSING``."""
    if not isinstance(hparams, Mapping):
        return _MISSING
    value = hparams.get(name, _MISSING)
    if value is not _MISSING:
        return value
    dot = name.find(".")
    while dot >= 0:
        inner = hparams.get(name[:dot], _MISSING)
        if isinstance(inner, Mapping):
            value = _lookup(inner, name[dot + 1 :])
            if value is not _MISSING:
                return value
        dot = name.find(".", dot + 1)
    return _MISSING


def _picks(param: Param, ranked: Sequence[Mapping[str, JsonValue]]) -> _IntArray:
    """Each listed category's index, in rank order; other values are left out."""
    index = {text: i for i, text in enumerate(param.categories)}
    cache: dict[tuple[type, object], int | None] = {}
    picks: list[int] = []
    for value in _values(ranked, param.name):
        if isinstance(value, _SCALARS):
            key = (type(value), value)
            if key not in cache:
                cache[key] = index.get(_text(value) or "")
            pick = cache[key]
        else:
            pick = index.get(_text(value) or "")
        if pick is not None:
            picks.append(pick)
    return np.asarray(picks, dtype=np.int64)


def _units(param: Param, ranked: Sequence[Mapping[str, JsonValue]]) -> _FloatArray:
    """Each number in range as its position in ``[0, 1]`` (of the log range for
    ``log``), in rank order; other values are left out."""
    values = _values(ranked, param.name)
    numbers = np.asarray([_as_float(value) for value in values], dtype=np.float64)
    numbers = numbers[np.isfinite(numbers)]
    low, high = param.low, param.high
    if param.kind == "int":
        numbers = numbers[numbers == np.floor(numbers)]
    if param.kind == "log":
        numbers = np.log(numbers[numbers > 0])
        low, high = math.log(low), math.log(high)
    span = high - low
    slack = _SLACK * span
    numbers = numbers[(numbers >= low - slack) & (numbers <= high + slack)]
    units: _FloatArray = np.clip((numbers - low) / span, 0.0, 1.0)
    return units


def _as_float(value: object) -> float:
    """A number (not a bool) as a float; anything else as NaN."""
    if type(value) is float:
        return value
    if type(value) is int and -_INT_FLOAT < value < _INT_FLOAT:
        return float(value)
    number = _finite(value)
    return math.nan if number is None else number


def _grid(param: Param) -> tuple[_FloatArray, float]:
    """The points a number's density is estimated on, in ``[0, 1]``, and the least
    kernel width: a grid step, or half a step between an ``int``'s values."""
    if param.kind == "int":
        steps = round(param.high - param.low)
        if steps < GRID_POINTS:
            return np.arange(steps + 1, dtype=np.float64) / steps, 0.5 / steps
    grid = (np.arange(GRID_POINTS, dtype=np.float64) + 0.5) / GRID_POINTS
    return grid, 1.0 / GRID_POINTS


def _density(units: _FloatArray, grid: _FloatArray, floor: float, scale: int) -> _FloatArray:
    """A Gaussian kernel density of ``units`` on ``grid`` (each kernel scaled to add up
    to 1 on the grid), mixed with a uniform share worth ``PRIOR_WEIGHT`` points among
    ``scale`` (the same share for the top and for all the trials)."""
    n = units.size
    width = max(float(np.std(units)) * n**-0.2, floor)
    # One kernel per distinct value, weighted by its count: an int's few values cost
    # only a few kernels.
    points, counts = np.unique(units, return_counts=True)
    mass = np.zeros(grid.size, dtype=np.float64)
    for start in range(0, points.size, _CHUNK):
        z = (grid[None, :] - points[start : start + _CHUNK, None]) / width
        kernels = np.exp(-0.5 * z * z)
        kernels *= counts[start : start + _CHUNK, None] / kernels.sum(axis=1, keepdims=True)
        mass += kernels.sum(axis=0)
    density: _FloatArray = (mass * (scale / n) + PRIOR_WEIGHT / grid.size) / (scale + PRIOR_WEIGHT)
    return density


def _frequencies(picks: _IntArray, size: int, scale: int) -> _FloatArray:
    """Category frequencies with one added to each count, the counts taken as if there
    were ``scale`` picks in these proportions (the same smoothing for the top and for all
    the trials)."""
    counts = np.bincount(picks, minlength=size) * (scale / picks.size)
    frequencies: _FloatArray = (counts + 1.0) / (scale + size)
    return frequencies
