"""From an experiment's view to what its pages show: the charts' data, the tables' rows.

Pure functions of an :class:`ExperimentView` and the page's options (no I/O, no clock),
so the same view and options give the same page; the server renders the result with the
templates.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

from pydantic import JsonValue

from rung.dashboard.charts import (
    Axis,
    Bar,
    Branch,
    Curve,
    ParallelAxis,
    ParallelLine,
    RungColumn,
    Segment,
    StripPoint,
    bar_chart,
    line_chart,
    lineage_tree,
    parallel_coordinates,
    rung_view,
    sparkline,
    worker_timeline,
)
from rung.dashboard.importance import category_text, flatten, importance, params_from_space
from rung.dashboard.model import ExperimentView, RungPoint, RungState, TrialView

__all__ = [
    "TRIALS_PAGE",
    "Options",
    "experiment_sections",
    "experiment_summary",
    "lineage_note",
    "trial_page",
    "trial_rows",
]

# Above this many trials, the learning curves show the best TOP_DEFAULT unless asked.
ALL_CURVES: Final = 1000
TOP_DEFAULT: Final = 100
# Above this many results, the best-so-far charts mark only the improvements.
ALL_MARKS: Final = 2000
# Beyond this, a value is the searcher's stand-in for "none" (it ranks such results worst).
NO_VALUE: Final = 1e300
# Above this many trials, the parallel coordinates draw the best PARALLEL_LINES unless asked.
PARALLEL_LINES: Final = 1000
TRIALS_PAGE: Final = 100
# Above this many trials, the lineage tree draws the best LINEAGE_TOP and their ancestors.
LINEAGE_ROWS: Final = 400
LINEAGE_TOP: Final = 100
_SORTS: Final = ("trial", "state", "metric", "length", "restarts")


@dataclass(frozen=True)
class Options:
    """What the experiment page was asked to show (its query string)."""

    top: int | None = None  # learning curves: only the best ``top`` trials
    hide_stopped: bool = False
    curve: str = ""  # "group/name" of the metric the learning curves show; "" the searcher's
    hidden_axes: frozenset[str] = frozenset()
    sort: str = "trial"
    descending: bool = False
    state: str = ""  # trials table: only this state
    query: str = ""  # trials table: hyperparameters containing this text
    page: int = 0
    all_lines: bool = False  # parallel coordinates: every trial, however many

    def charts(self) -> Options:
        """Only what the charts depend on (the trials table's options left out): the
        key of a rendering of the sections, which a sort of the table does not redo."""
        return Options(
            top=self.top,
            hide_stopped=self.hide_stopped,
            curve=self.curve,
            hidden_axes=self.hidden_axes,
            all_lines=self.all_lines,
        )

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> Options:
        """From a query string; anything out of range falls back to the default."""
        top = _int(query.get("top"), low=1, high=1_000_000)
        hidden = frozenset(a for a in query.get("hide_axes", "").split(",") if a)
        sort = query.get("sort", "trial")
        return cls(
            top=top,
            hide_stopped=query.get("hide_stopped", "") in ("1", "on", "true"),
            curve=query.get("curve", "")[:200],
            hidden_axes=hidden,
            sort=sort if sort in _SORTS else "trial",
            descending=query.get("order", "") == "desc",
            state=query.get("state", "")[:32],
            query=query.get("q", "")[:200],
            page=_int(query.get("page"), low=0, high=1_000_000) or 0,
            all_lines=query.get("lines", "") == "all",
        )


def _int(text: str | None, *, low: int, high: int) -> int | None:
    try:
        value = int(text) if text else None
    except ValueError:
        return None
    return value if value is not None and low <= value <= high else None


def _href(view: ExperimentView, trial_id: int) -> str:
    return f"/experiments/{quote(view.experiment_id)}/trials/{trial_id}"


def _fmt(value: float | None) -> str:
    """A metric for people; the searcher's "worst" (a validation without a finite
    metric, an errored trial) is "no value"."""
    if value is None:
        return ""
    return "no value" if not -NO_VALUE < value < NO_VALUE else f"{value:.6g}"


# ---------------------------------------------------------------------- summary
def experiment_summary(view: ExperimentView) -> dict[str, Any]:
    """The experiment's line in the list, and the head of its page."""
    best = view.best_result()
    return {
        "experiment_id": view.experiment_id,
        "name": view.config.name or "",
        "description": view.config.description or "",
        "labels": list(view.config.labels),
        "state": view.state,
        "progress": view.progress,
        "searcher": view.config.searcher.name,
        "metric": view.metric,
        "smaller_is_better": view.smaller_is_better,
        "best": None
        if best is None
        else {"trial_id": best.trial_id, "value": best.value, "length": best.length},
        "counts": view.counts(),
        "trials": len(view.trials),
        "clones": view.clones(),
        "results": len(view.results),
        "seq": view.seq,
        "failure": view.failure,
        "unexplained": view.unexplained,
        "owner": view.created.owner,
        "elapsed": view.last_at - view.started_at,
        "sparkline": sparkline([r.value for r in view.best]) if view.best else "",
    }


# ---------------------------------------------------------------------- sections
def experiment_sections(view: ExperimentView, options: Options) -> dict[str, str]:
    """Each live section of the experiment page, as SVG or HTML text (escaped)."""
    return {
        "best-budget": _best(view, by_time=False),
        "best-time": _best(view, by_time=True),
        "curves": _curves(view, options),
        "rungs": _rungs(view),
        "parallel": _parallel(view, options),
        "importance": _importance(view),
        "timeline": _timeline(view),
        "lineage": _lineage(view),
    }


def _best(view: ExperimentView, *, by_time: bool) -> str:
    def x(result: Any) -> float:
        return float(result.at if by_time else result.trained)

    # Every result as a point, up to ALL_MARKS of them; above, the improvements only.
    shown = view.results if len(view.results) <= ALL_MARKS else view.best
    marks = [
        (x(r), r.value, f"trial {r.trial_id} at length {r.length}: {_fmt(r.value)}") for r in shown
    ]
    line = [(x(r), r.value) for r in view.best]
    if line:
        end = view.last_at - view.started_at if by_time else float(view.trained)
        line.append((max(end, line[-1][0]), line[-1][1]))
    curves = [
        Curve("results", "every result", [], marks, css="results"),
        Curve("best", "best so far", line, [], css="best", step=True),
    ]
    label = "seconds since the start" if by_time else "length trained, all trials"
    return line_chart(
        curves,
        x=Axis(label),
        y=Axis(view.metric or "metric"),
        height=260,
        empty="no results yet",
    )


def _selected(view: ExperimentView, options: Options) -> list[TrialView]:
    trials = list(view.trials.values())
    if options.hide_stopped:
        trials = [t for t in trials if not view.stopped(t)]
    top = options.top
    if top is None and len(view.trials) > ALL_CURVES:
        top = TOP_DEFAULT
    if top is not None:
        best = _ranked(view, trials)[:top]
        chosen = {t.trial_id for t in best}
        running = [t for t in trials if t.state == "RUNNING" and t.trial_id not in chosen]
        trials = best + running
    return sorted(trials, key=lambda t: t.trial_id)


def curve_names(view: ExperimentView) -> list[str]:
    names: set[str] = set()
    for trial in view.trials.values():
        names.update(f"{group}/{name}" for group, name in trial.curves)
    return sorted(names)


def _curves(view: ExperimentView, options: Options) -> str:
    group, _, name = options.curve.partition("/")
    searcher = not options.curve or (group == "validation" and name == view.metric)
    key = ("validation", view.metric) if searcher else (group, name)
    curves: list[Curve] = []
    for trial in _selected(view, options):
        points = [(float(s), v) for s, v in trial.curves.get(key, [])]
        if searcher:
            marks = [
                (
                    float(r.length),
                    r.value,
                    f"trial {trial.trial_id} at length {r.length}: {_fmt(r.value)}",
                )
                for r in trial.results
            ]
            points = points or [(float(r.length), r.value) for r in trial.results]
        else:
            marks = [(s, v, f"trial {trial.trial_id} at {s:g}: {_fmt(v)}") for s, v in points]
        css = "running" if trial.state == "RUNNING" else "stopped" if view.stopped(trial) else ""
        best = view.best_result()
        if best is not None and best.trial_id == trial.trial_id:
            css = f"{css} best".strip()
        curves.append(
            Curve(
                str(trial.trial_id),
                f"trial {trial.trial_id}",
                points,
                marks,
                css=css,
                href=_href(view, trial.trial_id),
            )
        )
    vlines = sorted(
        {
            (float(length), f"rung {i}")
            for lengths in view.rung_lengths()
            for i, length in enumerate(lengths)
        }
    )
    return line_chart(
        curves,
        x=Axis("length (steps completed)"),
        y=Axis(key[1] or "metric"),
        vlines=vlines,
        empty="no metrics yet",
    )


def big(view: ExperimentView) -> bool:
    """Whether the experiment is large enough for the lighter pages: marks without links
    (a click is handled by the page's script) and the searcher's reasons on click."""
    return len(view.trials) > ALL_CURVES


def _summary(point: RungPoint, rung: RungState) -> str:
    return (
        f"trial {point.trial_id}: {_fmt(point.value)}, rank {point.rank} of "
        f"{len(rung.points)} (cutoff top {rung.quota}): {point.outcome}"
    )


def why(view: ExperimentView, trial_id: int, bracket: int, rung_index: int) -> dict[str, Any]:
    """A rung view point's whole story: where it ranks now, and every decision the
    searcher recorded about the trial while its newest result was at that rung."""
    for rung in view.rungs():
        if rung.bracket == bracket and rung.rung == rung_index:
            for point in rung.points:
                if point.trial_id == trial_id:
                    return {
                        "trial_id": trial_id,
                        "href": _href(view, trial_id),
                        "summary": _summary(point, rung),
                        "decisions": view.trials[trial_id].reasons.get(rung_index, []),
                    }
    return {}


def _rungs(view: ExperimentView) -> str:
    columns: list[RungColumn] = []
    light = big(view)
    for rung in view.rungs():
        points = []
        for p in rung.points:
            reason = _summary(p, rung)
            recorded = "" if light else view.reason(p.trial_id, rung.rung)
            if recorded:
                reason = f"{reason}\n{recorded}"
            points.append(StripPoint(p.trial_id, p.value, p.outcome, reason, None))
        columns.append(
            RungColumn(
                rung.bracket, rung.rung, rung.length, points, rung.cutoff, rung.quota, rung.training
            )
        )
    if not columns:
        return ""
    return rung_view(columns, smaller_is_better=view.smaller_is_better, metric=view.metric)


def _space(view: ExperimentView) -> list[Any]:
    return params_from_space(view.created.config.get("hyperparameters") or {})


def _parallel(view: ExperimentView, options: Options) -> str:
    light = big(view)
    params = [p for p in _space(view) if p.name not in options.hidden_axes]
    axes = [
        ParallelAxis(
            p.name,
            low=p.low,
            high=p.high,
            log=p.kind == "log",
            categories=tuple(p.categories),
        )
        for p in params
    ]
    lines: list[ParallelLine] = []
    values = [t.results[-1].value for t in view.trials.values() if t.results]
    for trial in sorted(_lines_shown(view, options), key=lambda t: t.trial_id):
        flat = flatten(trial.hparams)
        shown: dict[str, float | str] = {}
        for param in params:
            value = flat.get(param.name)
            if param.categories:
                with contextlib.suppress(ValueError, TypeError):
                    shown[param.name] = category_text(value)
            elif isinstance(value, int | float) and not isinstance(value, bool):
                shown[param.name] = float(value)
        metric = trial.results[-1].value if trial.results else None
        href = None if light else _href(view, trial.trial_id)
        lines.append(ParallelLine(trial.trial_id, shown, metric, href))
    metric_axis = None
    if values and view.metric not in options.hidden_axes:
        metric_axis = ParallelAxis(view.metric or "metric", low=min(values), high=max(values))
    if not axes and metric_axis is None:
        return ""
    return parallel_coordinates(
        axes, lines, metric_axis=metric_axis, smaller_is_better=view.smaller_is_better
    )


def _ranked(view: ExperimentView, trials: Iterable[TrialView]) -> list[TrialView]:
    """Trials with results, best first: the longest trained, then the best value."""
    sign = 1.0 if view.smaller_is_better else -1.0
    return sorted(
        (t for t in trials if t.results),
        key=lambda t: (-t.length, sign * t.results[-1].value, t.trial_id),
    )


def _lines_shown(view: ExperimentView, options: Options) -> list[TrialView]:
    """Every trial, or for a large experiment the PARALLEL_LINES best unless asked."""
    if options.all_lines or len(view.trials) <= PARALLEL_LINES:
        return list(view.trials.values())
    return _ranked(view, view.trials.values())[:PARALLEL_LINES]


def parallel_note(view: ExperimentView, options: Options) -> str:
    """What the parallel coordinates leave out, for the caption."""
    if options.all_lines or len(view.trials) <= PARALLEL_LINES:
        return ""
    return f"the best {PARALLEL_LINES:,} of {len(view.trials):,} trials"


_importance_cache: dict[tuple[str, int], str] = {}


def _importance(view: ExperimentView) -> str:
    """One bar chart per rung (and for the latest results), cached by results count."""
    key = (view.experiment_id, len(view.results))
    cached = _importance_cache.get(key)
    if cached is not None:
        return cached
    params = _space(view)
    groups: list[tuple[str, list[tuple[Mapping[str, JsonValue], float]]]] = []
    latest: list[tuple[Mapping[str, JsonValue], float]] = [
        (t.hparams, t.results[-1].value) for t in view.trials.values() if t.results
    ]
    groups.append(("latest result of each trial", latest))
    by_length: dict[int, list[tuple[Mapping[str, JsonValue], float]]] = {}
    for result in view.results:
        trial = view.trials[result.trial_id]
        by_length.setdefault(result.length, []).append((trial.hparams, result.value))
    if len(by_length) > 1:
        groups += [(f"results at length {n}", by_length[n]) for n in sorted(by_length)]
    parts: list[str] = []
    for title, trials in groups:
        scores = importance(params, trials, smaller_is_better=view.smaller_is_better)
        if scores is None:
            parts.append(
                _figure(title, f"<p class='note'>{len(trials)} results: too few to tell</p>")
            )
            continue
        bars = [
            Bar(name, score, f"{name}: {score:.2f}")
            for name, score in sorted(scores.items(), key=lambda item: (-item[1], item[0]))
        ]
        parts.append(_figure(f"{title} ({len(trials)} trials)", bar_chart(bars)))
    html = "".join(parts)
    if len(_importance_cache) > 256:
        _importance_cache.clear()
    _importance_cache[key] = html
    return html


def _figure(title: str, body: str) -> str:
    from html import escape  # noqa: PLC0415

    return f"<figure class='importance'><figcaption>{escape(title)}</figcaption>{body}</figure>"


def _timeline(view: ExperimentView) -> str:
    segments: list[Segment] = []
    now = view.last_at - view.started_at
    ended = view.ended()
    lengths = view.rung_lengths()
    prefix = _href(view, 0)[:-1]
    light = big(view)
    for trial in view.trials.values():
        for attempt in trial.attempts:
            for piece in attempt.pieces:
                end, outcome = piece.end, piece.outcome
                if end is None and ended:
                    end, outcome = now, "killed"
                if end is not None and end - piece.start <= 0 and outcome == "validated":
                    continue
                length = piece.length or trial.length
                rung = _rung_index(lengths, trial, length)
                title = (
                    f"trial {trial.trial_id}.{attempt.attempt} {attempt.lane} "
                    f"{piece.start:.1f}-{'' if end is None else f'{end:.1f}'} s {outcome}"
                    + (f" @{piece.length}" if piece.length else "")
                    + (f" ({_from(trial)})" if trial.parent is not None else "")
                )
                segments += [
                    Segment(
                        lane,
                        trial.trial_id,
                        attempt.attempt,
                        piece.start,
                        end,
                        rung,
                        "completed" if outcome == "validated" else outcome,
                        title,
                        None if light else f"{prefix}{trial.trial_id}",
                    )
                    for lane in attempt.lanes or [attempt.lane]
                ]
    if not segments:
        return ""
    return worker_timeline(segments, now=now)


def _rung_index(lengths: list[list[int]], trial: TrialView, length: int) -> int:
    if trial.bracket < len(lengths):
        for index, rung_length in enumerate(lengths[trial.bracket]):
            if rung_length >= length:
                return index
    return 0


# ---------------------------------------------------------------------- trials table
def trial_rows(view: ExperimentView, options: Options) -> tuple[list[dict[str, Any]], int]:
    """The trials table's page of rows (sorted and filtered), and how many match."""
    trials: Iterable[TrialView] = view.trials.values()
    if options.state:
        trials = [t for t in trials if t.state == options.state]
    if options.query:
        needle = options.query.lower()
        trials = [t for t in trials if needle in json.dumps(t.hparams).lower()]
    sign = 1.0 if view.smaller_is_better else -1.0

    def metric(t: TrialView) -> float:
        return sign * t.results[-1].value if t.results else math.inf

    keys: dict[str, Any] = {
        "trial": lambda t: t.trial_id,
        "state": lambda t: (t.state, t.trial_id),
        "metric": lambda t: (metric(t), t.trial_id),
        "length": lambda t: (t.length, t.trial_id),
        "restarts": lambda t: (t.restarts, t.trial_id),
    }
    ordered = sorted(trials, key=keys[options.sort], reverse=options.descending)
    start = options.page * TRIALS_PAGE
    rows = [
        {
            "trial_id": t.trial_id,
            "href": _href(view, t.trial_id),
            "state": t.state,
            "hparams": json.dumps(t.hparams, sort_keys=True),
            "metric": _fmt(t.results[-1].value) if t.results else "",
            "length": t.length,
            "restarts": t.restarts,
            "worker": t.attempts[-1].lane if t.attempts else "",
            "parent": _parent_link(view, t),
        }
        for t in ordered[start : start + TRIALS_PAGE]
    ]
    return rows, len(ordered)


# ---------------------------------------------------------------------- lineage
def _from(trial: TrialView) -> str:
    """A clone's "from trial 3 @ 40": the trial it continues from, and the checkpoint's
    length."""
    parent = trial.parent
    return "" if parent is None else f"from trial {parent.source_trial} @ {parent.length}"


def _parent_link(view: ExperimentView, trial: TrialView) -> dict[str, Any] | None:
    """A clone's source for a table row or a page: its trial, link and the length of the
    checkpoint copied; None for a trial that started afresh."""
    parent = trial.parent
    if parent is None:
        return None
    return {
        "trial_id": parent.source_trial,
        "length": parent.length,
        "href": _href(view, parent.source_trial),
    }


def _lineage_shown(view: ExperimentView) -> list[TrialView]:
    """Every trial, or above LINEAGE_ROWS the best LINEAGE_TOP and their ancestors."""
    if len(view.trials) <= LINEAGE_ROWS:
        return list(view.trials.values())
    shown: dict[int, TrialView] = {}
    for trial in _ranked(view, view.trials.values())[:LINEAGE_TOP]:
        shown[trial.trial_id] = trial
        shown.update((a.trial_id, a) for a in view.ancestors(trial))
    return list(shown.values())


def lineage_note(view: ExperimentView) -> str:
    """What the lineage tree leaves out, for the caption."""
    if len(view.trials) <= LINEAGE_ROWS:
        return ""
    return f"the best {LINEAGE_TOP} of {len(view.trials):,} trials and the trials they come from"


def _lineage(view: ExperimentView) -> str:
    """The family tree of population-based training (see charts.lineage): for an
    experiment with clones, or a pbt search before its first."""
    if not view.clones() and view.config.searcher.name != "pbt":
        return ""
    best = view.best_result()
    light = big(view)
    branches: list[Branch] = []
    for trial in _lineage_shown(view):
        parent = trial.parent
        start = parent.length if parent is not None else 0
        value = trial.results[-1].value if trial.results else None
        css = "running" if trial.state == "RUNNING" else "stopped" if view.stopped(trial) else ""
        if best is not None and best.trial_id == trial.trial_id:
            css = f"{css} best".strip()
        title = f"trial {trial.trial_id} ({trial.state.lower()}): length {start} to {trial.length}"
        if value is not None:
            title += f", {view.metric or 'metric'} {_fmt(value)}"
        if parent is not None:
            title += f"\n{parent.describe(trial.trial_id)}"
        branches.append(
            Branch(
                trial.trial_id,
                parent.source_trial if parent is not None else None,
                float(start),
                float(max(trial.length, start)),
                value,
                title,
                css,
                None if light else _href(view, trial.trial_id),
            )
        )
    return lineage_tree(
        branches, metric=view.metric or "metric", smaller_is_better=view.smaller_is_better
    )


# ---------------------------------------------------------------------- trial page
@dataclass(frozen=True)
class TrialPage:
    trial: TrialView
    hparams: str
    attempts: list[dict[str, Any]] = field(default_factory=list)
    charts: list[tuple[str, str]] = field(default_factory=list)
    ranks: int = 1  # the most processes an attempt had: the log's rank filter offers them
    # Population-based training: where the trial comes from (the source's link and the
    # searcher's words), its line back to a trial that started afresh (oldest first, each
    # with the length the next one continued from), and the trials cloned from it.
    parent: dict[str, Any] | None = None
    line: list[dict[str, Any]] = field(default_factory=list)
    children: list[dict[str, Any]] = field(default_factory=list)


def trial_page(view: ExperimentView, trial: TrialView) -> TrialPage:
    attempts = [
        {
            "attempt": a.attempt,
            "lane": a.lane,
            "started": f"{a.started_at:.2f}",
            "ended": "" if a.ended_at is None else f"{a.ended_at:.2f}",
            "reason": a.reason or ("running" if not view.ended() else "killed"),
            "exit_code": "" if a.exit_code is None else str(a.exit_code),
            "message": a.message,
        }
        for a in trial.attempts
    ]
    charts: list[tuple[str, str]] = []
    for (group, name), points in sorted(trial.curves.items()):
        curve = Curve(
            f"{group}/{name}",
            f"{group}/{name}",
            [(float(s), v) for s, v in points],
            [(float(s), v, f"{group}/{name} at {s}: {_fmt(v)}") for s, v in points],
        )
        charts.append(
            (
                f"{group}/{name}",
                line_chart([curve], x=Axis("steps completed"), y=Axis(name), height=220),
            )
        )
    ranks = max((a.slots for a in trial.attempts), default=1)
    hparams = json.dumps(trial.hparams, indent=2, sort_keys=True)
    parent, line, children = _family(view, trial)
    return TrialPage(trial, hparams, attempts, charts, ranks, parent, line, children)


def _family(
    view: ExperimentView, trial: TrialView
) -> tuple[dict[str, Any] | None, list[dict[str, Any]], list[dict[str, Any]]]:
    """A trial page's lineage: its source (with the searcher's words), its line of
    ancestors, oldest first, each with the length its clone continued from, and its
    clones, each with the length of the checkpoint it copied."""
    parent = _parent_link(view, trial)
    if parent is not None and trial.parent is not None:
        parent["text"] = trial.parent.describe(trial.trial_id)
        parent["checkpoint"] = trial.parent.checkpoint
    line: list[dict[str, Any]] = []
    below = trial
    for ancestor in view.ancestors(trial):
        length = below.parent.length if below.parent is not None else None
        line.append(
            {"trial_id": ancestor.trial_id, "href": _href(view, ancestor.trial_id), "at": length}
        )
        below = ancestor
    line.reverse()
    children = []
    for child_id in trial.children:
        child = view.trials.get(child_id)
        if child is not None and child.parent is not None:
            children.append(
                {"trial_id": child_id, "href": _href(view, child_id), "at": child.parent.length}
            )
    return parent, line, children
