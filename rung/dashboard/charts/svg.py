"""What every chart shares: scales, ticks, axes, colours and escaping.

Pure helpers: numbers and strings in, SVG text out. Values that cannot be drawn (NaN,
infinities, anything beyond ±1e300, and zero or negative values on a log scale) are
never placed: a scale gives None for them and the builders skip them.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "LIMIT",
    "OUTCOME_COLOURS",
    "PALETTE",
    "SVG_NS",
    "Box",
    "Scale",
    "axis_bottom",
    "axis_left",
    "colour",
    "empty_text",
    "esc",
    "extent",
    "fit_scale",
    "fmt_num",
    "linear_ticks",
    "link",
    "log_ticks",
    "nice_step",
    "sequential",
    "svg_open",
    "usable",
]

SVG_NS = "http://www.w3.org/2000/svg"

# Values beyond this are treated like infinities: a metric of sys.float_info.max (the
# searcher's "worst") would otherwise squash every other value into one pixel.
LIMIT = 1e300

# Okabe and Ito's palette, safe for the common kinds of colour blindness. Black is last:
# it is also the colour of the text.
PALETTE = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#D55E00",  # vermillion
    "#F0E442",  # yellow
    "#000000",  # black
)

# What happened to a result or a stretch of work, as a colour (from the palette).
OUTCOME_COLOURS = {
    "promoted": "#009E73",
    "paused": "#E69F00",
    "stopped": "#D55E00",
    "running": "#0072B2",
    "waiting": "#999999",
    "completed": "#56B4E9",
}

# Viridis at nine stops; `sequential` interpolates between them.
_VIRIDIS = (
    (0x44, 0x01, 0x54),
    (0x47, 0x2D, 0x7B),
    (0x3B, 0x52, 0x8B),
    (0x2C, 0x72, 0x8E),
    (0x21, 0x91, 0x8C),
    (0x28, 0xAE, 0x80),
    (0x5E, 0xC9, 0x62),
    (0xAD, 0xDC, 0x30),
    (0xFD, 0xE7, 0x25),
)


def _viridis_table(size: int) -> tuple[str, ...]:
    out = []
    last = len(_VIRIDIS) - 1
    for i in range(size):
        pos = i / (size - 1) * last
        j = min(int(pos), last - 1)
        frac = pos - j
        a, b = _VIRIDIS[j], _VIRIDIS[j + 1]
        rgb = (round(a[c] + (b[c] - a[c]) * frac) for c in range(3))
        out.append("#" + "".join(f"{v:02x}" for v in rgb))
    return tuple(out)


_SEQUENTIAL = _viridis_table(256)

# Characters XML 1.0 does not allow, even escaped (C0 controls but tab, newline and
# carriage return; lone surrogates; U+FFFE and U+FFFF): each becomes U+FFFD.
_NOT_XML = dict.fromkeys((*range(9), 11, 12, *range(14, 32), 0xFFFE, 0xFFFF), "\ufffd")
_NOT_XML.update(dict.fromkeys(range(0xD800, 0xE000), "\ufffd"))


def esc(text: object) -> str:
    """``text`` safe inside an element or a quoted attribute: ``<>&"'`` escaped, and
    characters XML cannot hold replaced."""
    s = text if isinstance(text, str) else str(text)
    if not s.isprintable():
        s = s.translate(_NOT_XML)
    # Most text needs no escaping: looking first is three times faster than escaping.
    if "&" in s or "<" in s or ">" in s or '"' in s or "'" in s:
        return html.escape(s, quote=True)
    return s


_URL_BLANKS = "".join(chr(c) for c in range(33))


def link(href: str | None, inner: str) -> str:
    """``inner`` inside ``<a href>``; ``inner`` alone when there is no link, or when it
    names a scheme other than http or https (``javascript:`` would run code)."""
    if not href:
        return inner
    if href[0] == "/":  # the common case: a path on this server
        return f'<a href="{esc(href)}">{inner}</a>'
    # Browsers ignore blanks around a URL and tabs and newlines within it.
    probe = href.strip(_URL_BLANKS).replace("\t", "").replace("\n", "").replace("\r", "")
    head = probe.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if ":" in head and head.split(":", 1)[0].lower() not in ("http", "https"):
        return inner
    return f'<a href="{esc(href)}">{inner}</a>'


def usable(value: float) -> bool:
    """Whether a value can be drawn at all (finite and within ±LIMIT)."""
    return -LIMIT < value < LIMIT


def colour(index: int) -> str:
    """The palette's colour number ``index`` (wrapping round)."""
    return PALETTE[index % len(PALETTE)]


def sequential(t: float) -> str:
    """A viridis-like colour for ``t`` in [0, 1] (dark purple at 0, yellow at 1); values
    outside are clamped, NaN gives grey."""
    if math.isnan(t):
        return "#999999"
    t = 0.0 if t < 0.0 else (1.0 if t > 1.0 else t)
    return _SEQUENTIAL[int(t * 255 + 0.5)]


def fmt_num(value: float) -> str:
    """A short label for a number: 0, 0.25, 250, 1.2k, 3.5M, 0.001, 1e-05."""
    if value == 0:
        return "0"
    size = abs(value)
    if size >= 1e9 or size < 1e-3:
        return f"{value:.2g}"
    if size >= 1e6:
        return f"{value / 1e6:.3g}M"
    if size >= 1e3:
        return f"{value / 1e3:.3g}k"
    return f"{value:.4g}"


def nice_step(raw: float) -> float:
    """The smallest of 1, 2, 2.5 or 5 times a power of ten that is at least ``raw``."""
    if not raw > 0 or not usable(raw):
        return 1.0
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 2.5, 5.0):
        if raw <= m * mag * 1.000001:
            return m * mag
    return 10.0 * mag


def linear_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round values from ``low`` to ``high``."""
    step = nice_step((high - low) / max(count - 1, 1))
    first = math.ceil(low / step - 1e-9)
    last = math.floor(high / step + 1e-9)
    if last - first > 4 * count:  # a step lost to rounding: never draw thousands of ticks
        return [low, high]
    return [i * step for i in range(first, last + 1)]


def log_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round values from ``low`` to ``high`` (both > 0) for a log axis: 1, 2, 5 times the
    powers of ten over a short range, every decade (or every few) over a long one."""
    first = math.floor(math.log10(low) + 1e-9)
    last = math.ceil(math.log10(high) - 1e-9)
    lo, hi = low * (1 - 1e-9), high * (1 + 1e-9)
    if last - first <= 2:
        ticks = [m * float(f"1e{e}") for e in range(first, last + 1) for m in (1, 2, 5)]
        ticks = [t for t in ticks if lo <= t <= hi]
        if len(ticks) >= 2:
            return ticks
        return [t for t in linear_ticks(low, high, count) if t > 0]
    every = max(1, math.ceil((last - first) / max(count - 1, 1)))
    return [float(f"1e{e}") for e in range(first, last + 1, every) if lo <= float(f"1e{e}") <= hi]


def _nice_down_log(value: float) -> float:
    e = math.floor(math.log10(value))
    for m in (5.0, 2.0, 1.0):
        t = m * float(f"1e{e}")
        if t <= value * (1 + 1e-9):
            return t
    return float(f"1e{e}")


def _nice_up_log(value: float) -> float:
    e = math.floor(math.log10(value))
    for m in (1.0, 2.0, 5.0, 10.0):
        t = m * float(f"1e{e}")
        if t >= value * (1 - 1e-9):
            return t
    return float(f"1e{e + 1}")


def _sane_domain(low: float, high: float, *, log: bool) -> tuple[float, float]:
    """A domain that can be drawn: finite, ordered, positive on a log scale, and not a
    single value (widened around it)."""
    if log:
        if not 0 < high < LIMIT:
            high = low * 10 if 0 < low < LIMIT else 10.0
        if not 0 < low < LIMIT:
            low = high / 10
    else:
        if not usable(low):
            low = high - 1 if usable(high) else 0.0
        if not usable(high):
            high = low + 1
    if low > high:
        low, high = high, low
    if log and high / low < 1 + 1e-9:
        low, high = low / math.sqrt(10), high * math.sqrt(10)
    elif not log and high - low <= abs(high) * 1e-12:
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    return low, high


class Scale:
    """Maps data values to pixels along one axis, linear or log.

    ``start`` is the pixel of ``low`` and ``end`` that of ``high`` (so a y axis passes
    ``bottom, top``). Calling it gives the pixel, clamped to the range, or None for a
    value that cannot be drawn."""

    __slots__ = ("_hi_px", "_k", "_lo_px", "_offset", "end", "high", "log", "low", "start")

    def __init__(
        self, low: float, high: float, start: float, end: float, *, log: bool = False
    ) -> None:
        self.low, self.high = _sane_domain(low, high, log=log)
        self.log = log
        self.start, self.end = start, end
        d0, d1 = (math.log10(self.low), math.log10(self.high)) if log else (self.low, self.high)
        self._k = (end - start) / (d1 - d0)
        self._offset = start - d0 * self._k
        self._lo_px, self._hi_px = min(start, end), max(start, end)

    def __call__(self, value: float) -> float | None:
        if not -LIMIT < value < LIMIT:
            return None
        if self.log:
            if value <= 0:
                return None
            value = math.log10(value)
        p = self._offset + value * self._k
        if p < self._lo_px:
            return self._lo_px
        return self._hi_px if p > self._hi_px else p

    def ticks(self, count: int = 5) -> list[float]:
        """About ``count`` round values inside the domain."""
        if self.log:
            return log_ticks(self.low, self.high, count)
        return linear_ticks(self.low, self.high, count)


def extent(values: Iterable[float], *, log: bool = False) -> tuple[float, float] | None:
    """The lowest and highest drawable value, or None when there is none."""
    if log:
        kept = [v for v in values if 0 < v < LIMIT]
    else:
        kept = [v for v in values if -LIMIT < v < LIMIT]
    if not kept:
        return None
    return min(kept), max(kept)


def fit_scale(
    span: tuple[float, float] | None,
    start: float,
    end: float,
    *,
    log: bool = False,
    low: float | None = None,
    high: float | None = None,
    nice: bool = True,
) -> Scale:
    """A scale over ``span`` (from `extent`; None: no data), with the ends given as
    ``low``/``high`` kept exactly and the others rounded out to tick values."""
    lo, hi = span if span is not None else ((1.0, 10.0) if log else (0.0, 1.0))
    if low is not None and (not log or low > 0) and usable(low):
        lo = low
        hi = max(hi, lo)
    if high is not None and (not log or high > 0) and usable(high):
        hi = high
        lo = min(lo, hi)
    lo, hi = _sane_domain(lo, hi, log=log)
    if nice:
        if log:
            lo = lo if low is not None else _nice_down_log(lo)
            hi = hi if high is not None else _nice_up_log(hi)
        else:
            step = nice_step((hi - lo) / 4)
            lo = lo if low is not None else math.floor(lo / step + 1e-9) * step
            hi = hi if high is not None else math.ceil(hi / step - 1e-9) * step
    return Scale(lo, hi, start, end, log=log)


class Box:
    """The plot area of a chart, in pixels."""

    __slots__ = ("bottom", "left", "right", "top")

    def __init__(self, left: float, top: float, right: float, bottom: float) -> None:
        self.left, self.top, self.right, self.bottom = left, top, right, bottom

    @property
    def width(self) -> float:
        """Its width in pixels."""
        return self.right - self.left

    @property
    def height(self) -> float:
        """Its height in pixels."""
        return self.bottom - self.top


def svg_open(css: str, width: float, height: float) -> str:
    """The opening ``<svg>`` tag: scales to the width of its container."""
    return (
        f'<svg xmlns="{SVG_NS}" class="chart {esc(css)}" viewBox="0 0 {width:g} {height:g}" '
        f'width="100%" role="img" font-family="system-ui,sans-serif" font-size="11">'
    )


def empty_text(box: Box, text: str) -> str:
    """A message in the middle of an empty plot."""
    x = (box.left + box.right) / 2
    y = (box.top + box.bottom) / 2
    return (
        f'<text class="empty" x="{x:.1f}" y="{y:.1f}" text-anchor="middle" '
        f'fill="currentColor" fill-opacity=".6">{esc(text)}</text>'
    )


def axis_left(
    scale: Scale,
    box: Box,
    label: str,
    *,
    fmt: Callable[[float], str] = fmt_num,
    grid: bool = True,
    count: int = 5,
) -> str:
    """A y axis on the left of ``box``: the line, ticks with labels, grid lines across
    the box, and ``label`` turned on its side."""
    out = ['<g class="axis y-axis" fill="currentColor" font-size="10">']
    x = box.left
    for t in scale.ticks(count):
        y = scale(t)
        if y is None:
            continue
        if grid:
            out.append(
                f'<line class="grid" x1="{x:.1f}" x2="{box.right:.1f}" y1="{y:.1f}" '
                f'y2="{y:.1f}" stroke="currentColor" stroke-opacity=".1"/>'
            )
        out.append(
            f'<text x="{x - 5:.1f}" y="{y:.1f}" dy=".32em" text-anchor="end">{esc(fmt(t))}</text>'
        )
    out.append(
        f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{box.top:.1f}" y2="{box.bottom:.1f}" '
        f'stroke="currentColor" stroke-opacity=".5"/>'
    )
    if label:
        mid = (box.top + box.bottom) / 2
        out.append(
            f'<text class="axis-label" transform="rotate(-90 12 {mid:.1f})" x="12" '
            f'y="{mid:.1f}" text-anchor="middle" font-size="11">{esc(label)}</text>'
        )
    out.append("</g>")
    return "".join(out)


def axis_bottom(
    scale: Scale,
    box: Box,
    label: str,
    *,
    fmt: Callable[[float], str] = fmt_num,
    grid: bool = True,
    count: int = 5,
    ticks: Sequence[float] | None = None,
) -> str:
    """An x axis under ``box``: the line, ticks with labels (``ticks``, or the scale's
    own), grid lines up the box, and ``label`` centred below."""
    out = ['<g class="axis x-axis" fill="currentColor" font-size="10">']
    y = box.bottom
    for t in scale.ticks(count) if ticks is None else ticks:
        x = scale(t)
        if x is None:
            continue
        if grid:
            out.append(
                f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{box.top:.1f}" '
                f'y2="{y:.1f}" stroke="currentColor" stroke-opacity=".1"/>'
            )
        out.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y:.1f}" y2="{y + 4:.1f}" '
            f'stroke="currentColor" stroke-opacity=".5"/>'
            f'<text x="{x:.1f}" y="{y + 15:.1f}" text-anchor="middle">{esc(fmt(t))}</text>'
        )
    out.append(
        f'<line x1="{box.left:.1f}" x2="{box.right:.1f}" y1="{y:.1f}" y2="{y:.1f}" '
        f'stroke="currentColor" stroke-opacity=".5"/>'
    )
    if label:
        mid = (box.left + box.right) / 2
        out.append(
            f'<text class="axis-label" x="{mid:.1f}" y="{y + 30:.1f}" text-anchor="middle" '
            f'font-size="11">{esc(label)}</text>'
        )
    out.append("</g>")
    return "".join(out)
