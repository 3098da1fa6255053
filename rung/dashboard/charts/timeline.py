"""The worker timeline: a Gantt chart of which trial ran on which worker slot, and when,
coloured by rung and outlined by outcome, so that idle time shows as gaps, as SVG text."""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Callable, Mapping, Sequence

from rung.dashboard.charts.data import Segment
from rung.dashboard.charts.svg import (
    LIMIT,
    Box,
    Scale,
    axis_bottom,
    colour,
    empty_text,
    esc,
    link,
    svg_open,
)

__all__ = ["worker_timeline"]

_DIGITS = re.compile(r"(\d+)", re.ASCII)

# Extra attributes of a segment's rectangle per outcome; its fill is its rung's colour.
_OUTCOME_STYLES = {
    "completed": "",
    "paused": ' fill-opacity=".75"',
    "stopped": ' fill-opacity=".45"',
    "errored": ' stroke="#D00000" stroke-width="2"',
    "preempted": ' stroke="currentColor" stroke-width="1.2" stroke-dasharray="3 2"',
    "killed": ' stroke="currentColor" stroke-width="2"',
    "running": ' fill-opacity=".6" stroke="currentColor" stroke-dasharray="1 2"',
}

# Steps for time ticks, in seconds, and the unit each is labelled in.
_TIME_STEPS = (
    *(1, 2, 5, 10, 15, 30),  # seconds
    *(60, 120, 300, 600, 900, 1800),  # minutes
    *(3600, 7200, 10800, 21600, 43200),  # hours
    *(86400, 172800, 432000, 864000),  # days
)
_DATA_CHARS = frozenset(string.ascii_lowercase + string.digits + "-_.")


def _natural(lane: str) -> tuple[list[str | int], str]:
    """A sort key that puts ``w-2/slot1`` before ``w-10/slot0``: digit runs compare as
    numbers (they fall at the odd places of the split, so types always match)."""
    parts: list[str | int] = [int(p) if i % 2 else p for i, p in enumerate(_DIGITS.split(lane))]
    return parts, lane


def _time_ticks(high: float) -> tuple[list[float], Callable[[float], str]]:
    """About six round times from 0 to ``high`` seconds, and how to label them."""
    raw = high / 6
    step = next((s for s in _TIME_STEPS if s >= raw), None)
    if step is None:
        step = 86400 * max(1, round(raw / 86400))
    if step < 60:
        unit, name = 1.0, "s"
    elif step < 3600:
        unit, name = 60.0, "min"
    else:
        unit, name = 3600.0, "h"
    ticks = [float(t) for t in range(0, int(high) + 1, int(step))]
    return ticks, lambda t: f"{t / unit:g}{name}"


@functools.lru_cache(maxsize=256)
def _data_name(key: str) -> str:
    """``key`` as the tail of a ``data-`` attribute name (lower case, letters, digits,
    ``-_.`` only); empty if nothing is left."""
    return "".join(c for c in key.lower() if c in _DATA_CHARS)


def _extra(extra: Mapping[str, str]) -> str:
    out = []
    for key, value in extra.items():
        name = _data_name(key)
        if name:
            out.append(f' data-{name}="{esc(value)}"')
    return "".join(out)


def _segment(segment: Segment, y: float, height: float, sx: Scale, now: float) -> str:
    x1 = sx(segment.start)
    end = now if segment.end is None else segment.end
    x2 = sx(end)
    if x1 is None or x2 is None:
        return ""
    outcome = esc(segment.outcome)
    css = f"segment {outcome}"
    if segment.end is None and segment.outcome != "running":
        css += " running"
    style = _OUTCOME_STYLES.get(segment.outcome, "")
    if segment.end is None and segment.outcome not in _OUTCOME_STYLES:
        style = _OUTCOME_STYLES["running"]
    title = segment.title or f"trial {segment.trial_id} (attempt {segment.attempt})"
    rect = (
        f'<rect class="{css}" data-trial="{segment.trial_id}" '
        f'data-attempt="{segment.attempt}" data-rung="{segment.rung}"'
        f'{_extra(segment.extra) if segment.extra else ""} x="{x1:.1f}" y="{y:.1f}" '
        f'width="{max(x2 - x1, 1.0):.1f}" height="{height:g}" '
        f'fill="{colour(segment.rung)}"{style}><title>{esc(title)}</title></rect>'
    )
    return link(segment.href, rect)


def _legend(rungs: Sequence[int], outcomes: Sequence[str], y: float, left: float) -> str:
    out = ['<g class="legend" fill="currentColor" font-size="10">']
    x = left
    for rung in rungs:
        out.append(
            f'<rect class="legend-swatch rung" x="{x:.1f}" y="{y - 9:.1f}" width="12" '
            f'height="10" fill="{colour(rung)}"/><text x="{x + 16:.1f}" y="{y:.1f}">'
            f"rung {rung}</text>"
        )
        x += 64
    x = left
    for outcome in outcomes:
        out.append(
            f'<rect class="legend-swatch {outcome}" x="{x:.1f}" y="{y + 7:.1f}" width="12" '
            f'height="10" fill="#bbbbbb"{_OUTCOME_STYLES[outcome]}/>'
            f'<text x="{x + 16:.1f}" y="{y + 16:.1f}">{outcome}</text>'
        )
        x += 84
    out.append("</g>")
    return "".join(out)


def worker_timeline(
    segments: Sequence[Segment], *, now: float, width: int = 760, row: int = 18
) -> str:
    """One lane per worker slot (sorted so that numbers count up), time in seconds from
    0 to ``now`` (or the last end) along the bottom, and one ``<rect class="segment">``
    per segment that has a usable start. A segment with no end runs to ``now``."""
    lanes = sorted({s.lane for s in segments}, key=_natural)
    lane_at = {lane: i for i, lane in enumerate(lanes)}
    label_w = min(12 + 6.2 * max((len(lane) for lane in lanes), default=0), 180)
    plot_h = max(len(lanes), 1) * row
    height = int(8 + plot_h + 34 + 40)
    box = Box(max(label_w, 40), 8, width - 14, 8 + plot_h)
    times = [now, *(s.start for s in segments), *(s.end for s in segments if s.end is not None)]
    high = max((t for t in times if -LIMIT < t < LIMIT), default=0.0)
    high = high if high > 0 else 1.0
    sx = Scale(0.0, high, box.left, box.right)
    ticks, fmt = _time_ticks(high)
    now = now if -LIMIT < now < LIMIT else high
    out = [svg_open("worker-timeline", width, height), '<g class="lanes" fill="currentColor">']
    room = int((box.left - 12) / 6.2)
    for i, lane in enumerate(lanes):
        y = box.top + i * row
        shown = lane if len(lane) <= room else f"{lane[: room // 2 - 1]}…{lane[-(room // 2) :]}"
        out.append(
            f'<text class="lane-label" x="{box.left - 6:.1f}" y="{y + row / 2:.1f}" '
            f'dy=".32em" text-anchor="end" font-size="10">{esc(shown)}'
            f"<title>{esc(lane)}</title></text>"
            f'<line x1="{box.left:.1f}" x2="{box.right:.1f}" y1="{y + row:.1f}" '
            f'y2="{y + row:.1f}" stroke="currentColor" stroke-opacity=".08"/>'
        )
    out.append("</g>")
    out.append(axis_bottom(sx, box, "time since the experiment started", fmt=fmt, ticks=ticks))
    out.append('<g class="segments">')
    bar_h = max(row - 4, 2)
    for segment in segments:
        y = box.top + lane_at[segment.lane] * row + 2
        out.append(_segment(segment, y, bar_h, sx, now))
    out.append("</g>")
    if not segments:
        out.append(empty_text(box, "nothing has run yet"))
    rungs = sorted({s.rung for s in segments})
    present = {s.outcome for s in segments} | {"running" for s in segments if s.end is None}
    outcomes = [o for o in _OUTCOME_STYLES if o in present]
    out.append(_legend(rungs, outcomes, height - 26, box.left))
    out.append("</svg>")
    return "".join(out)
