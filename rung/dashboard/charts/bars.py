"""Horizontal bar charts (a hyperparameter's importance, say), as SVG text."""

from __future__ import annotations

from collections.abc import Sequence

from rung.dashboard.charts.data import Bar
from rung.dashboard.charts.svg import PALETTE, Box, Scale, empty_text, esc, svg_open, usable

__all__ = ["bar_chart"]

_CHAR_PX = 6.0


def _short(text: str, size: int) -> str:
    return text if len(text) <= size else text[: max(size - 1, 1)] + "…"


def bar_chart(bars: Sequence[Bar], *, width: int = 360, row: int = 22, x_label: str = "") -> str:
    """One ``<rect class="bar">`` per bar, top to bottom in the order given: its label on
    the left, its value on the right. Bars grow from zero (left for negative values); a
    value that is not finite gets no bar, only "n/a"."""
    label_w = min(max((len(b.label) for b in bars), default=4) * _CHAR_PX + 8, width * 0.4)
    value_w = 48.0
    bottom_room = 26 if x_label else 6
    height = 6 + max(len(bars), 1) * row + bottom_room
    box = Box(label_w, 6, width - value_w, height - bottom_room)
    values = [b.value for b in bars if usable(b.value)]
    low = min(0.0, *values) if values else 0.0
    high = max(0.0, *values) if values else 1.0
    scale = Scale(low, high, box.left, box.right)
    zero = scale(0.0)
    zero = box.left if zero is None else zero
    out = [svg_open("bar-chart", width, height)]
    if bars:
        out.append(
            f'<line class="zero" x1="{zero:.1f}" x2="{zero:.1f}" y1="{box.top:.1f}" '
            f'y2="{box.bottom:.1f}" stroke="currentColor" stroke-opacity=".5"/>'
        )
    else:
        out.append(empty_text(box, "no data yet"))
    max_chars = max(int((label_w - 8) / _CHAR_PX), 3)
    bar_h = max(row - 6, 2)
    for i, bar in enumerate(bars):
        top = box.top + i * row
        mid = top + row / 2
        label = esc(bar.label)
        out.append(
            f'<g class="bar-row"><text class="bar-label" x="{label_w - 6:.1f}" y="{mid:.1f}" '
            f'dy=".32em" text-anchor="end" fill="currentColor">'
            f"{esc(_short(bar.label, max_chars))}<title>{label}</title></text>"
        )
        x = scale(bar.value)
        if x is not None:
            title = bar.title or f"{bar.label}: {bar.value:.3g}"
            out.append(
                f'<rect class="bar" x="{min(x, zero):.1f}" y="{top + 3:.1f}" '
                f'width="{max(abs(x - zero), 0.5):.1f}" height="{bar_h}" fill="{PALETTE[0]}">'
                f"<title>{esc(title)}</title></rect>"
            )
        shown = f"{bar.value:.3g}" if x is not None else "n/a"
        out.append(
            f'<text class="bar-value" x="{box.right + 6:.1f}" y="{mid:.1f}" dy=".32em" '
            f'fill="currentColor">{esc(shown)}</text></g>'
        )
    if x_label:
        out.append(
            f'<text class="axis-label" x="{(box.left + box.right) / 2:.1f}" '
            f'y="{height - 8:.1f}" text-anchor="middle" fill="currentColor">{esc(x_label)}</text>'
        )
    out.append("</svg>")
    return "".join(out)
