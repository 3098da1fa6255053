"""What the chart builders draw: plain, frozen data, made by the view model.

Every builder is a pure function of these (no I/O, no clock, no randomness): the same
data gives the same SVG text, byte for byte.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "Axis",
    "Bar",
    "Branch",
    "Curve",
    "ParallelAxis",
    "ParallelLine",
    "RungColumn",
    "Segment",
    "StripPoint",
]


@dataclass(frozen=True)
class Axis:
    """An axis of a chart: its label and, optionally, a fixed range and a log scale."""

    label: str
    log: bool = False
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class Curve:
    """One polyline of a line chart (a trial's learning curve, a best-so-far line).

    ``marks`` are the points drawn as circles (a trial's validation results), each with
    its own tooltip; ``points`` the points of the line (may be the same). ``key`` ends up
    in ``data-key`` (the trial id, say), ``href`` makes the curve a link, ``css`` is an
    extra class (``running``, ``stopped``, ``best``...). ``step``: draw as a staircase
    (best so far)."""

    key: str
    label: str
    points: Sequence[tuple[float, float]]
    marks: Sequence[tuple[float, float, str]] = ()
    css: str = ""
    href: str | None = None
    step: bool = False


@dataclass(frozen=True)
class StripPoint:
    """One result at a rung: the trial, its value, its outcome there and the reason.

    ``outcome`` is one of ``promoted``, ``paused``, ``stopped``, ``running`` (still
    training at the rung above is shown as promoted), ``waiting`` (neither yet)."""

    trial_id: int
    value: float
    outcome: str
    reason: str
    href: str | None = None


@dataclass(frozen=True)
class RungColumn:
    """One rung of one bracket: its length, results, cutoff, and counts."""

    bracket: int
    rung: int
    length: int
    points: Sequence[StripPoint]
    # The value a result must beat (or tie) to be promoted now: the quota-th best value;
    # None when the quota is 0 (nobody is promoted yet).
    cutoff: float | None
    quota: int
    training: int = 0  # trials training towards this rung now


@dataclass(frozen=True)
class ParallelAxis:
    """A hyperparameter (or the metric) as an axis of the parallel coordinates.

    Numeric axes have ``low``/``high`` (``log`` for a log scale); categorical axes list
    their ``categories`` in order and values are their positions."""

    name: str
    low: float = 0.0
    high: float = 1.0
    log: bool = False
    categories: Sequence[str] = ()


@dataclass(frozen=True)
class ParallelLine:
    """One trial across the axes: ``values[axis name]`` (a number, or a category's
    string); a missing name is a gap. ``metric`` colours the line."""

    trial_id: int
    values: Mapping[str, float | str]
    metric: float | None
    href: str | None = None


@dataclass(frozen=True)
class Bar:
    """One bar of a horizontal bar chart (a hyperparameter's importance)."""

    label: str
    value: float
    title: str = ""


@dataclass(frozen=True)
class Segment:
    """One stretch of a trial on a worker slot: ``start``/``end`` in seconds from the
    experiment's start (``end`` None: still running, drawn to ``now``). ``rung`` colours
    it; ``outcome`` is ``completed``, ``paused``, ``stopped``, ``errored``, ``preempted``,
    ``killed`` or ``running``."""

    lane: str
    trial_id: int
    attempt: int
    start: float
    end: float | None
    rung: int
    outcome: str
    title: str = ""
    href: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Branch:
    """One trial of a family tree (population-based training): it trained from ``start``
    (the length of the checkpoint it continues from; 0 for a trial that started afresh)
    to ``end``, from ``parent``'s checkpoint (None: a root, or a parent not drawn).
    ``value`` (its latest result) colours it; ``css`` is an extra class (``running``,
    ``stopped``, ``best``)."""

    trial_id: int
    parent: int | None
    start: float
    end: float
    value: float | None
    title: str = ""
    css: str = ""
    href: str | None = None
