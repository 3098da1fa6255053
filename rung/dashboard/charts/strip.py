"""The rung view: per bracket and rung, every result as a dot, the promotion cutoff, and
what happened to each trial there (promoted, paused, stopped), as SVG text."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from rung.dashboard.charts.data import RungColumn, StripPoint
from rung.dashboard.charts.svg import (
    LIMIT,
    OUTCOME_COLOURS,
    Box,
    axis_left,
    empty_text,
    esc,
    extent,
    fit_scale,
    link,
    svg_open,
)

__all__ = ["rung_view"]

_LEGEND = ("promoted", "paused", "stopped", "waiting", "completed")
_GUTTER = 40.0  # room for a column's own tick labels
_OTHER_COLOUR = "#999999"
_CHAR_PX = 5.6  # the width of a character at font size 10, roughly
_BAND = 18  # the band under the plot for results with no usable value


def _jitter(trial_id: int) -> float:
    """A fraction in [-1, 1) that depends on the trial id alone (Knuth's multiplicative
    hash), so that a trial's dot keeps its place from one render to the next."""
    return ((trial_id * 2654435761) & 0xFFFFFFFF) / 2147483648.0 - 1.0


def _values(column: RungColumn) -> Iterator[float]:
    for point in column.points:
        yield point.value
    if column.cutoff is not None:
        yield column.cutoff


def _counts(column: RungColumn) -> dict[str, int]:
    """How many of the column's results were promoted, paused and stopped."""
    counts = {"promoted": 0, "paused": 0, "stopped": 0}
    for point in column.points:
        if point.outcome in counts:
            counts[point.outcome] += 1
    return counts


def _texts(
    column: RungColumn, counts: dict[str, int], *, show_bracket: bool
) -> tuple[str, str, str]:
    """The column's label and its two lines of counts."""
    where = f"rung {column.rung} (length {column.length})"
    label = f"bracket {column.bracket} · {where}" if show_bracket else where
    first = f"{len(column.points)} results · {column.training} training"
    second = (
        f"{counts['promoted']} promoted · {counts['paused']} paused · {counts['stopped']} stopped"
    )
    return label, first, second


def _point(point: StripPoint, column: RungColumn, x: float, y: float, extra: str) -> str:
    outcome = esc(point.outcome)
    fill = OUTCOME_COLOURS.get(point.outcome, _OTHER_COLOUR)
    title = point.reason or f"trial {point.trial_id}: {point.value}"
    circle = (
        f'<circle class="mark {outcome}{extra}" data-trial="{point.trial_id}" '
        f'data-outcome="{outcome}" data-rung="{column.rung}" data-bracket="{column.bracket}" '
        f'cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{fill}"><title>{esc(title)}</title></circle>'
    )
    return link(point.href, circle)


def _column(
    column: RungColumn,
    texts: tuple[str, str, str],
    counts: dict[str, int],
    *,
    left: float,
    right: float,
    box: Box,
    smaller_is_better: bool,
) -> str:
    """One column: its labels and counts, its own value axis (rungs differ by orders of
    magnitude: a promoted trial's later results are much better), the cutoff line, and
    its dots."""
    label, first, second = texts
    plot = Box(left + _GUTTER, box.top, right, box.bottom)
    span = extent(_values(column))
    if smaller_is_better:
        sy = fit_scale(span, plot.top + 5, plot.bottom - 5)
    else:
        sy = fit_scale(span, plot.bottom - 5, plot.top + 5)
    centre = (plot.left + plot.right) / 2
    half = min((right - left) * 0.32, 36.0)
    out = [
        (
            f'<g class="column" data-bracket="{column.bracket}" data-rung="{column.rung}" '
            f'data-length="{column.length}" data-results="{len(column.points)}" '
            f'data-promoted="{counts["promoted"]}" data-paused="{counts["paused"]}" '
            f'data-stopped="{counts["stopped"]}" data-training="{column.training}">'
            f'<text class="column-label" x="{centre:.1f}" y="14" text-anchor="middle" '
            f'fill="currentColor" font-size="10" font-weight="600">{esc(label)}</text>'
            f'<text class="counts" x="{centre:.1f}" y="27" text-anchor="middle" '
            f'fill="currentColor" fill-opacity=".75" font-size="10">{esc(first)}</text>'
            f'<text class="counts" x="{centre:.1f}" y="39" text-anchor="middle" '
            f'fill="currentColor" fill-opacity=".75" font-size="10">{esc(second)}</text>'
        ),
        axis_left(sy, plot, "", count=4) if column.points else "",
    ]
    cutoff = column.cutoff
    y_cut = sy(cutoff) if cutoff is not None else None
    if y_cut is not None and cutoff is not None:
        out.append(
            f'<line class="cutoff" x1="{plot.left:.1f}" x2="{right - 4:.1f}" y1="{y_cut:.1f}" '
            f'y2="{y_cut:.1f}" stroke="currentColor" stroke-width="1.5" '
            f'stroke-dasharray="5 3"><title>cutoff: top {column.quota} '
            f"({esc(f'{cutoff:.4g}')})</title></line>"
        )
    band = box.bottom + _BAND / 2
    for point in column.points:
        x = centre + _jitter(point.trial_id) * half
        y = sy(point.value)
        if y is None:
            out.append(_point(point, column, x, band, " nonfinite"))
        else:
            out.append(_point(point, column, x, y, ""))
    out.append("</g>")
    return "".join(out)


def _legend(y: float, left: float) -> str:
    out = ['<g class="legend" fill="currentColor" font-size="10">']
    for i, outcome in enumerate(_LEGEND):
        x = left + i * 86
        out.append(
            f'<circle class="legend-swatch {outcome}" cx="{x + 4:.1f}" cy="{y - 3:.1f}" '
            f'r="4" fill="{OUTCOME_COLOURS[outcome]}"/>'
            f'<text x="{x + 12:.1f}" y="{y:.1f}">{outcome}</text>'
        )
    out.append("</g>")
    return "".join(out)


def rung_view(
    columns: Sequence[RungColumn],
    *,
    smaller_is_better: bool,
    metric: str,
    width: int = 760,
    height: int = 340,
) -> str:
    """The rung view: one column per (bracket, rung) in the order given, each on its own
    metric scale with better values higher up, a dashed line at each cutoff, and one
    ``<circle class="mark">`` per result (those with no usable value in a band below).

    The chart grows wider than ``width`` when the columns' labels need the room."""
    show_bracket = any(c.bracket != 0 for c in columns)
    counts = [_counts(c) for c in columns]
    texts = [_texts(c, n, show_bracket=show_bracket) for c, n in zip(columns, counts, strict=True)]
    longest = max((len(t) for three in texts for t in three), default=0)
    left, right_margin = 24.0, 10.0
    column_px = max(longest * _CHAR_PX + 14, _GUTTER + 80)
    width = max(width, int(left + right_margin + len(columns) * column_px))
    nonfinite = any(not -LIMIT < p.value < LIMIT for c in columns for p in c.points)
    box = Box(left, 50, width - right_margin, height - 40 - (_BAND if nonfinite else 0))
    mid = (box.top + box.bottom) / 2
    out = [
        svg_open("rung-view", width, height),
        (
            f'<text class="axis-label" transform="rotate(-90 12 {mid:.1f})" x="12" '
            f'y="{mid:.1f}" text-anchor="middle" font-size="11" '
            f'fill="currentColor">{esc(metric)}</text>'
        ),
        (
            '<text class="better" x="4" y="44" fill="currentColor" font-size="10" '
            'fill-opacity=".7">▲ better</text>'
        ),
    ]
    if nonfinite:
        out.append(
            f'<text class="nonfinite-label" x="{left - 5:.1f}" y="{box.bottom + _BAND / 2:.1f}" '
            f'dy=".32em" text-anchor="end" fill="currentColor" font-size="10">no value</text>'
        )
    col_w = box.width / max(len(columns), 1)
    for i, (column, three, n) in enumerate(zip(columns, texts, counts, strict=True)):
        col_left = box.left + i * col_w
        if i:
            out.append(
                f'<line class="separator" x1="{col_left:.1f}" x2="{col_left:.1f}" y1="4" '
                f'y2="{box.bottom + (_BAND if nonfinite else 0):.1f}" stroke="currentColor" '
                f'stroke-opacity=".15"/>'
            )
        out.append(
            _column(
                column,
                three,
                n,
                left=col_left,
                right=col_left + col_w,
                box=box,
                smaller_is_better=smaller_is_better,
            )
        )
    if not any(c.points for c in columns):
        out.append(empty_text(box, "no results yet"))
    out.append(_legend(height - 10, left))
    out.append("</svg>")
    return "".join(out)
