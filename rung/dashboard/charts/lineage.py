"""The family tree of population-based training: which trial continues from which
trial's checkpoint, and where along the length, as SVG text.

One row per trial, in the order of a walk down the tree (each trial right above its
clones, those in the order they were made). A trial's bar runs along the length from the
checkpoint it started from (0 for a trial of the first population) to the longest length
it reached, coloured by its latest result. A clone hangs from its source: a line drops
from the source's row, at the length of the checkpoint copied (a dot there), to the
clone's bar, which starts at that length.
"""

from __future__ import annotations

from collections.abc import Sequence

from rung.dashboard.charts.data import Branch
from rung.dashboard.charts.svg import (
    LIMIT,
    Box,
    Scale,
    axis_bottom,
    empty_text,
    esc,
    extent,
    fit_scale,
    link,
    sequential,
    svg_open,
)

__all__ = ["lineage_tree"]

_NO_VALUE = "#bbbbbb"
# Extra attributes of a bar per class, in this order (a later class's win); its fill is
# its result's colour.
_STYLES: dict[str, dict[str, str]] = {
    "stopped": {"fill-opacity": ".45"},
    "running": {"stroke": "currentColor", "stroke-dasharray": "1 2"},
    "best": {"stroke": "#D55E00", "stroke-width": "2"},
}


def _order(branches: Sequence[Branch]) -> list[Branch]:
    """The rows: the branches in the order of a walk down the tree from
    the roots (by trial id), each trial's clones by the length they start at, then id.
    A parent that is not among the branches makes its clone a root; a branch no walk
    reaches (a loop of parents, which no log makes) comes last, as a root."""
    by_id = {b.trial_id: b for b in branches}
    children: dict[int, list[Branch]] = {}
    roots: list[Branch] = []
    for branch in branches:
        if (
            branch.parent is not None
            and branch.parent in by_id
            and branch.parent != branch.trial_id
        ):
            children.setdefault(branch.parent, []).append(branch)
        else:
            roots.append(branch)
    for kids in children.values():
        kids.sort(key=lambda b: (b.start, b.trial_id))
    roots.sort(key=lambda b: b.trial_id)
    out: list[Branch] = []
    seen: set[int] = set()

    def walk(root: Branch) -> None:
        # Iterative: a chain of thousands of generations needs no deep recursion.
        stack = [root]
        while stack:
            branch = stack.pop()
            if branch.trial_id in seen:
                continue
            seen.add(branch.trial_id)
            out.append(branch)
            kids = children.get(branch.trial_id, [])
            stack += [kid for kid in reversed(kids) if kid.trial_id not in seen]

    for root in roots:
        walk(root)
    for branch in sorted(branches, key=lambda b: b.trial_id):
        if branch.trial_id not in seen:
            walk(branch)
    return out


def _colours(branches: Sequence[Branch], *, smaller_is_better: bool) -> dict[int, str]:
    """Each branch's fill by the rank of its result among the branches': the dark end of
    the colour map is the best (ranks, not values: one poor early result would leave
    every other trial the same colour); grey without a result."""
    sign = 1.0 if smaller_is_better else -1.0
    valued = sorted(
        (sign * b.value, b.trial_id)
        for b in branches
        if b.value is not None and -LIMIT < b.value < LIMIT
    )
    out = dict.fromkeys((b.trial_id for b in branches), _NO_VALUE)
    last = max(len(valued) - 1, 1)
    for rank, (_, trial_id) in enumerate(valued):
        out[trial_id] = sequential(rank / last if len(valued) > 1 else 0.0)
    return out


def _bar(branch: Branch, y: float, height: float, sx: Scale, fill: str) -> str:
    x1 = sx(branch.start)
    x2 = sx(max(branch.end, branch.start))
    if x1 is None or x2 is None:
        return ""
    css = " ".join(["branch", *(esc(c) for c in branch.css.split())])
    classes = branch.css.split()
    attributes: dict[str, str] = {}
    for name, extra in _STYLES.items():
        if name in classes:
            attributes |= extra
    style = "".join(f' {key}="{value}"' for key, value in attributes.items())
    title = branch.title or f"trial {branch.trial_id}"
    parent = "" if branch.parent is None else f' data-parent="{branch.parent}"'
    rect = (
        f'<rect class="{css}" data-trial="{branch.trial_id}"{parent} x="{x1:.1f}" '
        f'y="{y:.1f}" width="{max(x2 - x1, 2.0):.1f}" height="{height:g}" fill="{fill}"'
        f"{style}><title>{esc(title)}</title></rect>"
    )
    return link(branch.href, rect)


def _edge(branch: Branch, x: float, y_from: float, y_to: float) -> str:
    """The line from the source's row down to the clone's bar."""
    return (
        f'<path class="edge" data-trial="{branch.trial_id}" data-parent="{branch.parent}" '
        f'd="M{x:.1f},{y_from:.1f}V{y_to:.1f}H{x + 4:.1f}" fill="none" stroke="currentColor" '
        f'stroke-width="1.5" stroke-opacity=".8"/>'
    )


def _fork(branch: Branch, x: float, y: float) -> str:
    """The dot of the checkpoint copied, on the source's bar (drawn over it)."""
    title = (
        f"trial {branch.trial_id} continues from trial {branch.parent}'s checkpoint at "
        f"length {branch.start:g}"
    )
    return (
        f'<circle class="fork" data-trial="{branch.trial_id}" cx="{x:.1f}" cy="{y:.1f}" '
        f'r="3.5" fill="currentColor" stroke="#ffffff" stroke-width="1">'
        f"<title>{esc(title)}</title></circle>"
    )


def lineage_tree(
    branches: Sequence[Branch],
    *,
    metric: str = "metric",
    smaller_is_better: bool = True,
    width: int = 760,
    row: int = 16,
) -> str:
    """A row per branch (see the module), the length along the bottom from 0, one
    ``<rect class="branch">`` per branch, and for each clone whose source is drawn a
    ``<path class="edge">`` from the source's row to the clone's at the length copied,
    with a ``<circle class="fork">`` on the source's bar."""
    rows = _order(branches)
    labels = [f"trial {b.trial_id}" for b in rows]
    label_w = min(12 + 6.2 * max((len(label) for label in labels), default=0), 120)
    plot_h = max(len(rows), 1) * row
    height = int(8 + plot_h + 34 + 26)
    box = Box(max(label_w, 40), 8, width - 14, 8 + plot_h)
    span = extent([0.0, *(b.start for b in branches), *(b.end for b in branches)])
    sx = fit_scale(span, box.left + 2, box.right - 2, low=0.0)
    at = {b.trial_id: i for i, b in enumerate(rows)}
    fills = _colours(rows, smaller_is_better=smaller_is_better)
    out = [svg_open("lineage-tree", width, height), '<g class="rows" fill="currentColor">']
    for i, label in enumerate(labels):
        y = box.top + i * row
        out.append(
            f'<text class="row-label" x="{box.left - 6:.1f}" y="{y + row / 2:.1f}" dy=".32em" '
            f'text-anchor="end" font-size="10">{esc(label)}</text>'
        )
    out.append("</g>")
    out.append(axis_bottom(sx, box, "length (the checkpoint a trial continues from, to its last)"))
    edges: list[str] = []
    forks: list[str] = []
    for i, branch in enumerate(rows):
        parent = branch.parent
        x = sx(branch.start)
        if parent is None or parent not in at or parent == branch.trial_id or x is None:
            continue
        y_from = box.top + at[parent] * row + row / 2
        edges.append(_edge(branch, x, y_from, box.top + i * row + row / 2))
        forks.append(_fork(branch, x, y_from))
    out.append(f'<g class="edges">{"".join(edges)}</g><g class="branches">')
    bar_h = max(row - 6, 2)
    for i, branch in enumerate(rows):
        y = box.top + i * row + 3
        out.append(_bar(branch, y, bar_h, sx, fills[branch.trial_id]))
    out.append(f'</g><g class="forks">{"".join(forks)}</g>')
    if not rows:
        out.append(empty_text(box, "no trials yet"))
    better = "lower" if smaller_is_better else "higher"
    out.append(
        f'<text class="legend" x="{box.left:.1f}" y="{height - 8:.1f}" fill="currentColor" '
        f'font-size="10">colour: the rank of its latest {esc(metric)} (darker is better: '
        f"{better}); a line down from a trial's dot: a clone of it, from its checkpoint at "
        "that length</text>"
    )
    out.append("</svg>")
    return "".join(out)
