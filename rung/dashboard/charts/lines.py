"""Line charts (learning curves, best so far) and sparklines, as SVG text."""

from __future__ import annotations

from collections.abc import Sequence

from rung.dashboard.charts.data import Axis, Curve
from rung.dashboard.charts.svg import (
    LIMIT,
    SVG_NS,
    Box,
    Scale,
    axis_bottom,
    axis_left,
    empty_text,
    esc,
    extent,
    fit_scale,
    link,
    svg_open,
)

__all__ = ["line_chart", "sparkline"]

# A curve's colour by the first of its classes found here (the page's CSS may override
# it: the colour is set as the group's `color`).
_CURVE_COLOURS = {
    "best": "#D55E00",
    "running": "#009E73",
    "stopped": "#999999",
    "errored": "#CC79A7",
}
_DEFAULT_COLOUR = "#0072B2"


def _curve_colour(css: str) -> str:
    for token in css.split():
        found = _CURVE_COLOURS.get(token)
        if found is not None:
            return found
    return _DEFAULT_COLOUR


def _xs(curves: Sequence[Curve], vlines: Sequence[tuple[float, str]]) -> list[float]:
    xs = [p[0] for curve in curves for p in curve.points]
    xs += [m[0] for curve in curves for m in curve.marks]
    xs += [v[0] for v in vlines]
    return xs


def _ys(curves: Sequence[Curve]) -> list[float]:
    ys = [p[1] for curve in curves for p in curve.points]
    ys += [m[1] for curve in curves for m in curve.marks]
    return ys


def _path(curve: Curve, sx: Scale, sy: Scale) -> tuple[str, int]:
    """The ``d`` of a curve's line (straight segments, or a staircase that holds each
    value until the next point) and how many of its points it has."""
    parts: list[str] = []
    for px, py in curve.points:
        x = sx(px)
        y = sy(py)
        if x is None or y is None:
            continue
        if not parts:
            parts.append(f"M{x:.1f},{y:.1f}")
        elif curve.step:
            parts.append(f"H{x:.1f}V{y:.1f}")
        else:
            parts.append(f"L{x:.1f},{y:.1f}")
    return "".join(parts), len(parts)


def _curve(curve: Curve, sx: Scale, sy: Scale) -> tuple[str, int]:
    """A curve's group and how many points of it could be drawn."""
    key = esc(curve.key)
    css = f"curve {esc(curve.css)}" if curve.css else "curve"
    out = [
        f'<g class="{css}" data-key="{key}" color="{_curve_colour(curve.css)}" fill="currentColor">'
    ]
    if curve.label:
        out.append(f"<title>{esc(curve.label)}</title>")
    d, drawn = _path(curve, sx, sy)
    if d:
        out.append(f'<path d="{d}" fill="none" stroke="currentColor"/>')
    for mx, my, text in curve.marks:
        x = sx(mx)
        y = sy(my)
        if x is None or y is None:
            continue
        drawn += 1
        out.append(
            f'<circle class="mark" data-key="{key}" cx="{x:.1f}" cy="{y:.1f}" r="2.5">'
            f"<title>{esc(text)}</title></circle>"
        )
    out.append("</g>")
    return link(curve.href, "".join(out)), drawn


def _vlines(vlines: Sequence[tuple[float, str]], sx: Scale, box: Box) -> str:
    out = ['<g class="vlines" fill="currentColor" font-size="10">']
    middle = (box.left + box.right) / 2
    for value, label in vlines:
        x = sx(value)
        if x is None:
            continue
        # Labels right of their line, but left of it in the right half, to stay inside.
        at = f'x="{x + 3:.1f}"' if x < middle else f'x="{x - 3:.1f}" text-anchor="end"'
        out.append(
            f'<line class="vline" x1="{x:.1f}" x2="{x:.1f}" y1="{box.top:.1f}" '
            f'y2="{box.bottom:.1f}" stroke="currentColor" stroke-opacity=".45" '
            f'stroke-dasharray="4 3"/>'
            f'<text class="vline-label" {at} y="{box.top + 10:.1f}" '
            f'fill-opacity=".7">{esc(label)}</text>'
        )
    out.append("</g>")
    return "".join(out)


def line_chart(
    curves: Sequence[Curve],
    *,
    x: Axis,
    y: Axis,
    width: int = 760,
    height: int = 320,
    vlines: Sequence[tuple[float, str]] = (),
    empty: str = "no results yet",
) -> str:
    """A line chart: one ``<g class="curve">`` per curve with its line and its marks,
    dashed vertical lines at ``vlines`` (rung lengths), and ``empty`` written in the
    frame when no point can be drawn."""
    box = Box(58, 12, width - 14, height - 40)
    x_span = extent(_xs(curves, vlines), log=x.log)
    y_span = extent(_ys(curves), log=y.log)
    sx = fit_scale(x_span, box.left + 4, box.right - 4, log=x.log, low=x.low, high=x.high)
    sy = fit_scale(y_span, box.bottom - 4, box.top + 4, log=y.log, low=y.low, high=y.high)
    out = [
        svg_open("line-chart", width, height),
        axis_left(sy, box, y.label),
        axis_bottom(sx, box, x.label),
        _vlines(vlines, sx, box),
        '<g class="curves" stroke-width="1.2" stroke-opacity=".55" fill-opacity=".85">',
    ]
    drawn = 0
    for curve in curves:
        text, count = _curve(curve, sx, sy)
        out.append(text)
        drawn += count
    out.append("</g>")
    if drawn == 0:
        out.append(empty_text(box, empty))
    out.append("</svg>")
    return "".join(out)


def sparkline(values: Sequence[float], *, width: int = 120, height: int = 24) -> str:
    """A tiny line of ``values`` (evenly spaced, no axes) with a dot on the last one."""
    kept = [v for v in values if -LIMIT < v < LIMIT]
    out = [
        (
            f'<svg xmlns="{SVG_NS}" class="sparkline" '
            f'viewBox="0 0 {width} {height}" width="{width}" height="{height}">'
        )
    ]
    if kept:
        n = len(kept)
        sy = fit_scale(extent(kept), height - 3, 3, nice=False)
        points = []
        for i, v in enumerate(kept):
            px = 2 + (width - 4) * i / (n - 1) if n > 1 else width / 2
            py = sy(v)
            if py is not None:
                points.append(f"{px:.1f},{py:.1f}")
        out.append(
            f'<polyline points="{" ".join(points)}" fill="none" stroke="currentColor" '
            f'stroke-width="1.2"/>'
        )
        last = points[-1].split(",")
        out.append(f'<circle cx="{last[0]}" cy="{last[1]}" r="1.8" fill="currentColor"/>')
    out.append("</svg>")
    return "".join(out)
