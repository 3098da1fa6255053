"""Parallel coordinates: one vertical axis per hyperparameter (and the metric last), one
line per trial across them, coloured by its metric, as SVG text."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from rung.dashboard.charts.data import ParallelAxis, ParallelLine
from rung.dashboard.charts.svg import (
    LIMIT,
    Box,
    Scale,
    empty_text,
    esc,
    extent,
    fmt_num,
    link,
    sequential,
    svg_open,
)

__all__ = ["parallel_coordinates"]

_NO_METRIC = "#999999"
_MAX_CATEGORY_LABELS = 16

Placer = Callable[[float | str], float | None]
Column = tuple[str, str, Placer]  # an axis: its name, its x (formatted), where values go


def _short(text: str, size: int) -> str:
    return text if len(text) <= size else text[: max(size - 1, 1)] + "…"


def _categorical(axis: ParallelAxis, box: Box) -> tuple[Placer, list[tuple[float, str]]]:
    """Where a category (by name, or by position as a number) goes, and the labels."""
    count = len(axis.categories)
    index: dict[str, int] = {}
    for i, name in enumerate(axis.categories):
        index.setdefault(name, i)
    bottom, height = box.bottom, box.height

    def place(value: float | str) -> float | None:
        if isinstance(value, str):
            found = index.get(value)
            if found is None:
                return None
            value = found
        if not -0.5 <= value <= count - 0.5:  # also false for NaN
            return None
        return bottom - (value + 0.5) / count * height

    every = math.ceil(count / _MAX_CATEGORY_LABELS)
    labels = [
        (bottom - (i + 0.5) / count * height, _short(name, 14))
        for i, name in enumerate(axis.categories)
        if i % every == 0
    ]
    return place, labels


def _numeric(axis: ParallelAxis, box: Box) -> tuple[Placer, list[tuple[float, str]]]:
    """Where a number goes on the axis's range, and the tick labels."""
    scale = Scale(axis.low, axis.high, box.bottom, box.top, log=axis.log)

    def place(value: float | str) -> float | None:
        if isinstance(value, str):
            return None
        return scale(value)

    labels = []
    for t in scale.ticks(5):
        y = scale(t)
        if y is not None:
            labels.append((y, fmt_num(t)))
    return place, labels


def _axis(
    axis: ParallelAxis, x: float, labels: list[tuple[float, str]], box: Box, room: float
) -> str:
    name = esc(axis.name)
    out = [
        (
            f'<g class="axis parallel-axis" data-axis="{name}" fill="currentColor" '
            f'font-size="10"><line x1="{x:.1f}" x2="{x:.1f}" y1="{box.top:.1f}" '
            f'y2="{box.bottom:.1f}" stroke="currentColor" stroke-opacity=".6"/>'
            f'<text class="axis-label" x="{x:.1f}" y="{box.top - 12:.1f}" '
            f'text-anchor="middle" font-size="11" font-weight="600">'
            f"{esc(_short(axis.name, max(int(room / 6.2), 4)))}<title>{name}</title></text>"
        )
    ]
    for y, label in labels:
        out.append(
            f'<line x1="{x - 3:.1f}" x2="{x:.1f}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="currentColor" stroke-opacity=".6"/>'
            f'<text class="tick" x="{x + 4:.1f}" y="{y:.1f}" dy=".32em">{esc(label)}</text>'
        )
    out.append("</g>")
    return "".join(out)


def _line(
    line: ParallelLine,
    columns: Sequence[Column],
    metric: Column | None,
    stroke: str,
) -> str:
    """One trial's path (a new subpath after each gap) with its tooltip."""
    parts: list[str] = []
    words: list[str] = []
    gap = True
    values = line.values
    for name, x, place in columns:
        value = values.get(name)
        if value is None:
            gap = True
            continue
        # Floats shortened; ints and categories as they are.
        words.append(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}")
        y = place(value)
        if y is None:
            gap = True
            continue
        parts.append(f"{'M' if gap else 'L'}{x},{y:.1f}")
        gap = False
    m = line.metric
    if m is not None and metric is None:
        words.append(f"metric={m:.4g}")
    elif m is not None and metric is not None:
        name, x, place = metric
        words.append(f"{name}={m:.4g}")
        y = place(m)
        if y is not None:
            parts.append(f"{'M' if gap else 'L'}{x},{y:.1f}")
    title = esc(f"trial {line.trial_id}: {', '.join(words)}")
    path = (
        f'<path class="line" data-trial="{line.trial_id}" d="{"".join(parts)}" '
        f'stroke="{stroke}"><title>{title}</title></path>'
    )
    return link(line.href, path)


def _colours(
    lines: Sequence[ParallelLine], *, smaller_is_better: bool
) -> list[tuple[float, int, str]]:
    """For each line, its draw order (worst first, best on top, no metric below all) and
    its colour: the dark end of the colour map is the best metric."""
    span = extent(line.metric for line in lines if line.metric is not None)
    low, high = span if span is not None else (0.0, 1.0)
    out = []
    for i, line in enumerate(lines):
        m = line.metric
        if m is None or not -LIMIT < m < LIMIT:
            out.append((-1.0, i, _NO_METRIC))
            continue
        good = (m - low) / (high - low) if high > low else 0.5
        if smaller_is_better:
            good = 1.0 - good
        out.append((good, i, sequential(1.0 - good)))
    out.sort()
    return out


def parallel_coordinates(
    axes: Sequence[ParallelAxis],
    lines: Sequence[ParallelLine],
    *,
    metric_axis: ParallelAxis | None = None,
    smaller_is_better: bool = True,
    width: int = 760,
    height: int = 320,
) -> str:
    """Parallel coordinates: the axes evenly spaced left to right (``metric_axis``, when
    given, last), and one ``<path class="line">`` per line, broken where a value is
    missing, coloured by its metric (grey without one)."""
    every = [*axes, metric_axis] if metric_axis is not None else list(axes)
    box = Box(24, 34, width - 64, height - 14)
    out = [svg_open("parallel-coordinates", width, height)]
    if not every:
        out.append(empty_text(box, "no hyperparameters to show"))
        out.append("</svg>")
        return "".join(out)
    spacing = box.width / (len(every) - 1) if len(every) > 1 else box.width
    columns: list[Column] = []
    axis_parts = []
    for i, axis in enumerate(every):
        x = box.left + i * spacing if len(every) > 1 else (box.left + box.right) / 2
        place, labels = _categorical(axis, box) if axis.categories else _numeric(axis, box)
        columns.append((axis.name, f"{x:.1f}", place))
        axis_parts.append(_axis(axis, x, labels, box, min(spacing, 160.0)))
    # The metric's column reads the line's metric, not its values: a hyperparameter of
    # the same name still shows its own value.
    metric = columns.pop() if metric_axis is not None else None
    out.append('<g class="lines" fill="none" stroke-width="1" stroke-opacity=".5">')
    for _, i, stroke in _colours(lines, smaller_is_better=smaller_is_better):
        out.append(_line(lines[i], columns, metric, stroke))
    out.append("</g>")
    out.extend(axis_parts)
    if not lines:
        out.append(empty_text(box, "no trials yet"))
    out.append("</svg>")
    return "".join(out)
