"""The dashboard's SVG chart builders: well-formed, complete, escaped, deterministic."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest

from rung.dashboard.charts import (
    Axis,
    Bar,
    Curve,
    ParallelAxis,
    ParallelLine,
    RungColumn,
    Segment,
    StripPoint,
    bar_chart,
    line_chart,
    parallel_coordinates,
    rung_view,
    sparkline,
    worker_timeline,
)
from rung.dashboard.charts.svg import (
    Scale,
    colour,
    esc,
    fit_scale,
    fmt_num,
    linear_ticks,
    link,
    log_ticks,
    sequential,
)

NS = "{http://www.w3.org/2000/svg}"
HOSTILE = "<script>alert(1)</script>\"'&amp;"
NAN, INF = float("nan"), float("inf")


def parse(svg: str) -> ET.Element:
    """The chart as XML (fails the test if it is not well-formed)."""
    root = ET.fromstring(svg)  # noqa: S314 (our own output, under test)
    assert root.tag == f"{NS}svg"
    assert root.get("viewBox")
    return root


def elements(root: ET.Element, tag: str, css: str | None = None) -> list[ET.Element]:
    """Every ``tag`` element, or those whose class list holds ``css``."""
    found = list(root.iter(f"{NS}{tag}"))
    if css is None:
        return found
    return [e for e in found if css in (e.get("class") or "").split()]


def title(element: ET.Element) -> str:
    found = element.find(f"{NS}title")
    assert found is not None
    return found.text or ""


def texts(root: ET.Element, css: str) -> list[str]:
    return [e.text or "" for e in elements(root, "text", css)]


def assert_inert(svg: str, root: ET.Element) -> None:
    """No hostile text became markup: no script element, no raw tag in the text."""
    assert "<script" not in svg
    assert not list(root.iter(f"{NS}script"))
    assert not list(root.iter("script"))
    assert "&lt;script&gt;" in svg


def floats(element: ET.Element, *names: str) -> list[float]:
    values = [float(element.get(name, "nan")) for name in names]
    assert all(math.isfinite(v) for v in values), values
    return values


# ---------------------------------------------------------------- shared pieces


def test_esc_escapes_markup_and_both_quotes() -> None:
    assert esc("<a href=\"x\">'&'</a>") == (
        "&lt;a href=&quot;x&quot;&gt;&#x27;&amp;&#x27;&lt;/a&gt;"
    )
    assert esc(42) == "42"


def test_esc_replaces_characters_xml_cannot_hold() -> None:
    assert esc("a\x00b\x1b[31mc\ud800") == "a\ufffdb\ufffd[31mc\ufffd"
    assert esc("tab\tand\nnewline") == "tab\tand\nnewline"
    root = parse(bar_chart([Bar("\x1b[1mbold\x1b[0m", 1.0)]))
    assert "\ufffd[1mbold" in (elements(root, "text", "bar-label")[0].text or "")


@pytest.mark.parametrize(
    ("value", "label"),
    [
        (0, "0"),
        (0.25, "0.25"),
        (0.001, "0.001"),
        (1e-05, "1e-05"),
        (250, "250"),
        (1200, "1.2k"),
        (-1200, "-1.2k"),
        (3.5e6, "3.5M"),
        (0.30000000000000004, "0.3"),
    ],
)
def test_fmt_num_is_short_and_readable(value: float, label: str) -> None:
    assert fmt_num(value) == label


def test_linear_ticks_are_about_five_round_values() -> None:
    assert linear_ticks(0, 1) == [0, 0.25, 0.5, 0.75, 1]
    assert linear_ticks(0, 1000) == [0, 250, 500, 750, 1000]
    ticks = linear_ticks(0.13, 0.87)
    assert 3 <= len(ticks) <= 8
    assert all(0.13 <= t <= 0.87 for t in ticks)


def test_log_ticks_are_powers_of_ten_or_one_two_five() -> None:
    assert log_ticks(1e-5, 1e-1) == pytest.approx([1e-5, 1e-4, 1e-3, 1e-2, 1e-1])
    assert log_ticks(10, 100) == pytest.approx([10, 20, 50, 100])
    assert len(log_ticks(1e-12, 1e12)) <= 7


def test_scale_maps_linearly_and_logarithmically() -> None:
    linear = Scale(0, 10, 100, 200)
    assert linear(0) == 100
    assert linear(5) == pytest.approx(150)
    log = Scale(1, 100, 0, 100, log=True)
    assert log(10) == pytest.approx(50)
    flipped = Scale(0, 1, 300, 20)
    assert flipped(1) == 20


def test_scale_handles_a_degenerate_range() -> None:
    assert Scale(3, 3, 0, 100)(3) == pytest.approx(50)
    assert Scale(0, 0, 0, 100)(0) == pytest.approx(50)
    assert Scale(5, 5, 0, 100, log=True)(5) == pytest.approx(50)
    assert fit_scale((7.0, 7.0), 0, 100)(7) == pytest.approx(50)


def test_scale_gives_none_for_values_it_cannot_draw_and_clamps_the_rest() -> None:
    linear = Scale(0, 1, 0, 100)
    for bad in (NAN, INF, -INF, 1e308):
        assert linear(bad) is None
    log = Scale(1, 10, 0, 100, log=True)
    assert log(0) is None
    assert log(-1) is None
    assert linear(2) == 100
    assert linear(-2) == 0


def test_fit_scale_keeps_fixed_ends_and_rounds_the_others() -> None:
    scale = fit_scale((0.13, 0.87), 0, 100, low=0.1)
    assert scale.low == 0.1
    assert scale.high == pytest.approx(1.0)
    empty = fit_scale(None, 0, 100, log=True)
    assert empty.low > 0
    assert empty.high > empty.low


def test_colours() -> None:
    assert sequential(0) == "#440154"
    assert sequential(1) == "#fde725"
    assert sequential(-3) == sequential(0)
    assert sequential(NAN) == "#999999"
    assert colour(0) != colour(1)
    assert colour(8) == colour(0)


@pytest.mark.parametrize(
    "href", ["javascript:alert(1)", " JavaScript:alert(1)", "java\tscript:x", "data:text/html,x"]
)
def test_links_with_other_schemes_are_dropped(href: str) -> None:
    assert link(href, "<g/>") == "<g/>"


@pytest.mark.parametrize("href", ["/trials/4", "trials/4?x=1", "https://example.org/a", "#t4"])
def test_links_within_the_site_or_on_the_web_are_kept(href: str) -> None:
    assert link(href, "<g/>") == f'<a href="{esc(href)}"><g/></a>'


# ---------------------------------------------------------------- line chart


def curves() -> list[Curve]:
    return [
        Curve("1", "trial 1", [(10, 0.9), (20, 0.5)], [(10, 0.9, "t1 a"), (20, 0.5, "t1 b")]),
        Curve("2", "trial 2", [(10, 0.7)], [(10, 0.7, "t2 a")], css="stopped", href="/t/2"),
        Curve("best", "best so far", [(10, 0.7), (20, 0.5)], step=True, css="best"),
    ]


def test_line_chart_has_one_group_per_curve_and_one_circle_per_mark() -> None:
    root = parse(line_chart(curves(), x=Axis("length"), y=Axis("loss")))
    assert "line-chart" in (root.get("class") or "").split()
    groups = elements(root, "g", "curve")
    assert [g.get("data-key") for g in groups] == ["1", "2", "best"]
    marks = elements(root, "circle", "mark")
    assert len(marks) == 3
    assert [title(m) for m in marks] == ["t1 a", "t1 b", "t2 a"]
    assert [m.get("data-key") for m in marks] == ["1", "1", "2"]
    assert len(elements(root, "path")) == 3
    assert "stopped" in (groups[1].get("class") or "").split()


def test_line_chart_links_a_curve_with_an_href() -> None:
    root = parse(line_chart(curves(), x=Axis("length"), y=Axis("loss")))
    links = elements(root, "a")
    assert [a.get("href") for a in links] == ["/t/2"]
    assert links[0].find(f"{NS}g") is not None


def test_step_curve_is_a_staircase() -> None:
    root = parse(line_chart(curves()[2:], x=Axis("length"), y=Axis("loss")))
    d = elements(root, "path")[0].get("d") or ""
    assert d.startswith("M")
    assert "H" in d
    assert "V" in d
    assert "L" not in d


def test_line_chart_keeps_fixed_axis_ends() -> None:
    marks = [(0.0, 0.0, "low"), (5.0, 5.0, "middle"), (10.0, 10.0, "high")]
    root = parse(
        line_chart(
            [Curve("k", "", marks=marks, points=())],
            x=Axis("x", low=0, high=10),
            y=Axis("y", low=0, high=10),
        )
    )
    (x0, y0), (x5, y5), (x10, y10) = (floats(c, "cx", "cy") for c in elements(root, "circle"))
    assert x5 == pytest.approx((x0 + x10) / 2, abs=0.1)
    assert y5 == pytest.approx((y0 + y10) / 2, abs=0.1)
    assert y10 < y0  # up is bigger


def test_line_chart_log_axis_spaces_decades_evenly() -> None:
    marks = [(1.0, 1.0, "a"), (2.0, 10.0, "b"), (3.0, 100.0, "c")]
    root = parse(line_chart([Curve("k", "", (), marks)], x=Axis("x"), y=Axis("y", log=True)))
    ys = [floats(c, "cy")[0] for c in elements(root, "circle", "mark")]
    assert ys[0] - ys[1] == pytest.approx(ys[1] - ys[2], abs=0.2)


def test_line_chart_skips_values_it_cannot_draw() -> None:
    points = [(0.0, NAN), (1.0, INF), (2.0, 1.0), (3.0, -1.0), (NAN, 2.0), (4.0, 1e308)]
    marks = [(x, y, f"m{i}") for i, (x, y) in enumerate(points)]
    svg = line_chart([Curve("k", "k", points, marks)], x=Axis("x"), y=Axis("y", log=True))
    root = parse(svg)
    circles = elements(root, "circle", "mark")
    assert [title(c) for c in circles] == ["m2"]
    floats(circles[0], "cx", "cy")
    d = elements(root, "path")[0].get("d") or ""
    assert d.count(",") == 1
    assert "nan" not in d.lower()
    assert "inf" not in d.lower()
    assert not elements(root, "text", "empty")


def test_line_chart_without_points_draws_the_frame_and_the_message() -> None:
    root = parse(line_chart([], x=Axis("length"), y=Axis("loss"), empty="nothing <yet>"))
    assert texts(root, "empty") == ["nothing <yet>"]
    assert elements(root, "g", "x-axis")
    assert elements(root, "g", "y-axis")
    only_nan = [Curve("k", "k", [(NAN, NAN)], [(1.0, INF, "x")])]
    root = parse(line_chart(only_nan, x=Axis("x"), y=Axis("y")))
    assert texts(root, "empty") == ["no results yet"]
    assert not elements(root, "circle", "mark")


def test_line_chart_with_a_single_point() -> None:
    root = parse(line_chart([Curve("k", "k", [(5, 5)], [(5, 5, "one")])], x=Axis("x"), y=Axis("y")))
    (circle,) = elements(root, "circle", "mark")
    cx, cy = floats(circle, "cx", "cy")
    width, height = (float(v) for v in (root.get("viewBox") or "").split()[2:])
    assert 0 < cx < width
    assert 0 < cy < height


def test_line_chart_draws_labelled_vertical_lines() -> None:
    vlines = [(10.0, "rung 0"), (20.0, "rung 1"), (NAN, "never")]
    root = parse(line_chart(curves(), x=Axis("length"), y=Axis("loss"), vlines=vlines))
    assert len(elements(root, "line", "vline")) == 2
    assert texts(root, "vline-label") == ["rung 0", "rung 1"]


def test_line_chart_escapes_every_text() -> None:
    curve = Curve(HOSTILE, HOSTILE, [(1, 1)], [(1, 1, HOSTILE)], css=HOSTILE, href=f"/t/{HOSTILE}")
    svg = line_chart([curve], x=Axis(HOSTILE), y=Axis(HOSTILE), vlines=[(1, HOSTILE)])
    root = parse(svg)
    assert_inert(svg, root)
    (mark,) = elements(root, "circle", "mark")
    assert mark.get("data-key") == HOSTILE
    assert title(mark) == HOSTILE
    assert elements(root, "a")[0].get("href") == f"/t/{HOSTILE}"
    assert HOSTILE in texts(root, "axis-label")


def test_line_chart_is_deterministic() -> None:
    first = line_chart(curves(), x=Axis("length"), y=Axis("loss"), vlines=[(10, "r")])
    assert first == line_chart(curves(), x=Axis("length"), y=Axis("loss"), vlines=[(10, "r")])


def test_sparkline() -> None:
    root = parse(sparkline([3.0, NAN, 2.0, INF, 1.0]))
    assert root.get("class") == "sparkline"
    (line,) = elements(root, "polyline")
    points = (line.get("points") or "").split()
    assert len(points) == 3
    ys = [float(p.split(",")[1]) for p in points]
    assert ys[0] < ys[1] < ys[2]  # 3, 2, 1: falling, and y grows downwards
    assert not elements(parse(sparkline([])), "polyline")
    assert len((elements(parse(sparkline([1.0])), "polyline")[0].get("points") or "").split())


# ---------------------------------------------------------------- rung view


def point(trial: int, value: float, outcome: str = "paused", reason: str = "") -> StripPoint:
    return StripPoint(trial, value, outcome, reason or f"trial {trial} {outcome}")


def columns() -> list[RungColumn]:
    rung0 = [
        point(1, 0.2, "promoted"),
        point(2, 0.5, "paused"),
        point(3, 0.9, "stopped"),
        point(4, 0.4, "waiting"),
    ]
    rung1 = [point(1, 0.1, "running", "trial 1 training at rung 2")]
    return [
        RungColumn(0, 0, 25, rung0, cutoff=0.2, quota=1, training=2),
        RungColumn(0, 1, 100, rung1, cutoff=None, quota=0),
    ]


def test_rung_view_has_one_mark_per_result() -> None:
    root = parse(rung_view(columns(), smaller_is_better=True, metric="loss"))
    assert "rung-view" in (root.get("class") or "").split()
    marks = elements(root, "circle", "mark")
    assert len(marks) == 5
    first = marks[0]
    assert first.get("data-trial") == "1"
    assert first.get("data-outcome") == "promoted"
    assert first.get("data-rung") == "0"
    assert first.get("data-bracket") == "0"
    assert "promoted" in (first.get("class") or "").split()
    assert title(marks[4]) == "trial 1 training at rung 2"
    assert len(elements(root, "g", "column")) == 2
    assert len(elements(root, "circle", "legend-swatch")) == 5


def test_rung_view_labels_and_counts_columns() -> None:
    root = parse(rung_view(columns(), smaller_is_better=True, metric="loss"))
    assert texts(root, "column-label") == ["rung 0 (length 25)", "rung 1 (length 100)"]
    counts = texts(root, "counts")
    assert counts[:2] == ["4 results · 2 training", "1 promoted · 1 paused · 1 stopped"]
    first = elements(root, "g", "column")[0]
    names = ("bracket", "rung", "length", "results", "promoted", "paused", "stopped", "training")
    assert [first.get(f"data-{name}") for name in names] == [
        "0",
        "0",
        "25",
        "4",
        "1",
        "1",
        "1",
        "2",
    ]
    other = [*columns(), RungColumn(1, 0, 100, [point(9, 0.3)], cutoff=None, quota=0)]
    root = parse(rung_view(other, smaller_is_better=True, metric="loss"))
    assert texts(root, "column-label")[0] == "bracket 0 · rung 0 (length 25)"
    assert texts(root, "column-label")[2] == "bracket 1 · rung 0 (length 100)"


def test_rung_view_draws_a_cutoff_only_where_there_is_one() -> None:
    root = parse(rung_view(columns(), smaller_is_better=True, metric="loss"))
    (cutoff,) = elements(root, "line", "cutoff")
    assert title(cutoff) == "cutoff: top 1 (0.2)"
    marks = elements(root, "circle", "mark")
    assert float(cutoff.get("y1") or "nan") == pytest.approx(floats(marks[0], "cy")[0], abs=0.1)
    none = [RungColumn(0, 0, 25, [point(1, 0.5)], cutoff=None, quota=0)]
    assert not elements(
        parse(rung_view(none, smaller_is_better=True, metric="m")), "line", "cutoff"
    )


@pytest.mark.parametrize("smaller_is_better", [True, False])
def test_rung_view_puts_better_values_higher(smaller_is_better: bool) -> None:
    column = RungColumn(0, 0, 10, [point(1, 0.1), point(2, 0.9)], cutoff=None, quota=0)
    root = parse(rung_view([column], smaller_is_better=smaller_is_better, metric="m"))
    small, large = (floats(m, "cy")[0] for m in elements(root, "circle", "mark"))
    if smaller_is_better:
        assert small < large
    else:
        assert large < small


def test_rung_view_jitter_depends_on_the_trial_alone() -> None:
    one = RungColumn(0, 0, 10, [point(7, 0.5), point(8, 0.5)], cutoff=None, quota=0)
    other = RungColumn(0, 0, 10, [point(3, 0.1), point(7, 0.5)], cutoff=None, quota=0)
    first = elements(parse(rung_view([one], smaller_is_better=True, metric="m")), "circle", "mark")
    second = elements(
        parse(rung_view([other], smaller_is_better=True, metric="m")), "circle", "mark"
    )
    assert first[0].get("cx") == second[1].get("cx")
    assert first[0].get("cx") != first[1].get("cx")
    root = parse(rung_view([one], smaller_is_better=True, metric="m"))
    (label,) = elements(root, "text", "column-label")
    centre = floats(label, "x")[0]
    assert all(abs(floats(m, "cx")[0] - centre) <= 36 for m in elements(root, "circle", "mark"))


def test_rung_view_puts_results_without_a_value_in_their_own_band() -> None:
    points = [point(1, 0.5), point(2, NAN), point(3, INF), point(4, 1e308)]
    column = RungColumn(0, 0, 10, points, cutoff=INF, quota=1)
    root = parse(rung_view([column], smaller_is_better=True, metric="m"))
    marks = elements(root, "circle", "mark")
    assert len(marks) == 4
    ys = [floats(m, "cy")[0] for m in marks]
    assert [("nonfinite" in (m.get("class") or "").split()) for m in marks] == [
        False,
        True,
        True,
        True,
    ]
    assert all(y > ys[0] for y in ys[1:])
    assert not elements(root, "line", "cutoff")
    assert texts(root, "nonfinite-label") == ["no value"]


def test_rung_view_without_results_says_so() -> None:
    root = parse(rung_view([], smaller_is_better=True, metric="loss"))
    assert texts(root, "empty") == ["no results yet"]
    assert not elements(root, "circle", "mark")
    empty_column = [RungColumn(0, 0, 10, [], cutoff=None, quota=0)]
    root = parse(rung_view(empty_column, smaller_is_better=False, metric="acc"))
    assert texts(root, "empty") == ["no results yet"]
    assert texts(root, "column-label") == ["rung 0 (length 10)"]


def test_rung_view_with_a_single_value() -> None:
    column = RungColumn(0, 0, 10, [point(1, 3.0), point(2, 3.0)], cutoff=3.0, quota=1)
    root = parse(rung_view([column], smaller_is_better=True, metric="m"))
    ys = {floats(m, "cy")[0] for m in elements(root, "circle", "mark")}
    assert len(ys) == 1


def test_rung_view_escapes_every_text() -> None:
    hostile = StripPoint(1, 0.5, HOSTILE, HOSTILE, href=f"/t/{HOSTILE}")
    column = RungColumn(0, 0, 10, [hostile], cutoff=0.5, quota=1)
    svg = rung_view([column], smaller_is_better=True, metric=HOSTILE)
    root = parse(svg)
    assert_inert(svg, root)
    (mark,) = elements(root, "circle", "mark")
    assert title(mark) == HOSTILE
    assert mark.get("data-outcome") == HOSTILE
    assert elements(root, "a")[0].get("href") == f"/t/{HOSTILE}"


def test_rung_view_is_deterministic() -> None:
    first = rung_view(columns(), smaller_is_better=True, metric="loss")
    assert first == rung_view(columns(), smaller_is_better=True, metric="loss")


# ---------------------------------------------------------------- parallel coordinates

AXES = [
    ParallelAxis("lr", 1e-5, 1e-1, log=True),
    ParallelAxis("opt", categories=["sgd", "adam", "adamw"]),
    ParallelAxis("layers", 1, 8),
]
METRIC = ParallelAxis("loss", 0, 1)


def path_points(path: ET.Element) -> list[list[tuple[float, float]]]:
    """The subpaths of a path's ``d``, as lists of points."""
    subpaths: list[list[tuple[float, float]]] = []
    for chunk in (path.get("d") or "").replace("L", " L").replace("M", " M").split():
        x, y = (float(v) for v in chunk[1:].split(","))
        if chunk[0] == "M":
            subpaths.append([])
        subpaths[-1].append((x, y))
    return subpaths


def test_parallel_coordinates_has_one_line_per_trial_and_the_metric_axis_last() -> None:
    lines = [
        ParallelLine(1, {"lr": 1e-3, "opt": "adam", "layers": 4}, 0.5, href="/t/1"),
        ParallelLine(2, {"lr": 1e-2, "opt": "sgd", "layers": 2}, 0.3),
        ParallelLine(3, {"lr": 1e-4, "opt": "adamw", "layers": 8}, None),
    ]
    root = parse(parallel_coordinates(AXES, lines, metric_axis=METRIC))
    paths = elements(root, "path", "line")
    assert sorted(p.get("data-trial") or "" for p in paths) == ["1", "2", "3"]
    by_trial = {p.get("data-trial"): p for p in paths}
    assert title(by_trial["1"]) == "trial 1: lr=0.001, opt=adam, layers=4, loss=0.5"
    assert len(path_points(by_trial["1"])[0]) == 4
    assert len(path_points(by_trial["3"])[0]) == 3
    axes = elements(root, "g", "parallel-axis")
    assert [a.get("data-axis") for a in axes] == ["lr", "opt", "layers", "loss"]
    xs = [floats(elements(a, "line")[0], "x1")[0] for a in axes]
    assert xs == sorted(xs)
    assert xs[1] - xs[0] == pytest.approx(xs[3] - xs[2], abs=0.2)


def test_parallel_coordinates_colours_by_metric_best_at_the_dark_end() -> None:
    lines = [ParallelLine(i, {"layers": 2}, m) for i, m in enumerate([0.1, 0.9, None])]
    for smaller_is_better, best in ((True, "0"), (False, "1")):
        root = parse(
            parallel_coordinates(
                AXES, lines, metric_axis=METRIC, smaller_is_better=smaller_is_better
            )
        )
        stroke = {p.get("data-trial"): p.get("stroke") for p in elements(root, "path", "line")}
        assert stroke[best] == sequential(0)
        assert stroke["2"] == "#999999"
        assert len(set(stroke.values())) == 3
        # The best is drawn last, on top; no metric first.
        order = [p.get("data-trial") for p in elements(root, "path", "line")]
        assert order[0] == "2"
        assert order[-1] == best


def test_parallel_coordinates_places_categories_in_order() -> None:
    lines = [
        ParallelLine(i, {"opt": name}, None) for i, name in enumerate(["sgd", "adam", "adamw"])
    ]
    lines.append(ParallelLine(3, {"opt": 1}, None))  # a position, not a name
    root = parse(parallel_coordinates(AXES, lines))
    ys = [path_points(p)[0][0][1] for p in elements(root, "path", "line")]
    assert ys[0] > ys[1] > ys[2]  # the first category at the bottom
    assert ys[3] == ys[1]
    opt = next(a for a in elements(root, "g", "parallel-axis") if a.get("data-axis") == "opt")
    assert [t.text for t in opt.iter(f"{NS}text") if t.get("class") == "tick"] == [
        "sgd",
        "adam",
        "adamw",
    ]


def test_parallel_coordinates_breaks_lines_at_missing_and_unusable_values() -> None:
    axes = [*AXES, ParallelAxis("wd", 0, 1)]
    lines = [
        ParallelLine(1, {"lr": 1e-3, "layers": 4, "wd": 0.5}, None),  # no opt
        ParallelLine(2, {"lr": -1.0, "opt": "adam", "layers": NAN, "wd": 0.1}, None),
        ParallelLine(3, {"lr": 1e-3, "opt": "nadam", "layers": 2, "wd": INF}, None),
    ]
    root = parse(parallel_coordinates(axes, lines))
    paths = {p.get("data-trial"): path_points(p) for p in elements(root, "path", "line")}
    assert [len(s) for s in paths["1"]] == [1, 2]
    assert [len(s) for s in paths["2"]] == [1, 1]
    assert [len(s) for s in paths["3"]] == [1, 1]
    for subpaths in paths.values():
        for x, y in (p for s in subpaths for p in s):
            assert math.isfinite(x)
            assert math.isfinite(y)


def test_parallel_coordinates_with_nothing_to_show() -> None:
    root = parse(parallel_coordinates([], []))
    assert texts(root, "empty") == ["no hyperparameters to show"]
    root = parse(parallel_coordinates(AXES, [], metric_axis=METRIC))
    assert texts(root, "empty") == ["no trials yet"]
    assert len(elements(root, "g", "parallel-axis")) == 4


def test_parallel_coordinates_with_a_single_axis_and_degenerate_range() -> None:
    axis = ParallelAxis("x", 3.0, 3.0)
    root = parse(parallel_coordinates([axis], [ParallelLine(1, {"x": 3.0}, 1.0)]))
    ((point_,),) = path_points(elements(root, "path", "line")[0])
    x, y = point_
    assert x == pytest.approx(760 / 2 - 20, abs=1)  # the middle of the plot
    assert 34 < y < 320 - 14


def test_parallel_coordinates_escapes_every_text() -> None:
    axes = [ParallelAxis(HOSTILE, categories=[HOSTILE, "b"]), ParallelAxis("x")]
    lines = [ParallelLine(1, {HOSTILE: HOSTILE, "x": 0.5}, 0.5, href=f"/t/{HOSTILE}")]
    svg = parallel_coordinates(axes, lines, metric_axis=ParallelAxis(HOSTILE))
    root = parse(svg)
    assert_inert(svg, root)
    (path,) = elements(root, "path", "line")
    assert title(path).startswith(f"trial 1: {HOSTILE}={HOSTILE}, x=0.5")
    assert elements(root, "g", "parallel-axis")[0].get("data-axis") == HOSTILE


def test_parallel_coordinates_is_deterministic() -> None:
    lines = [ParallelLine(i, {"lr": 10.0**-i, "opt": "sgd"}, i / 10) for i in range(1, 6)]
    first = parallel_coordinates(AXES, lines, metric_axis=METRIC)
    assert first == parallel_coordinates(AXES, lines, metric_axis=METRIC)


# ---------------------------------------------------------------- bars


def test_bar_chart_draws_bars_in_the_order_given() -> None:
    bars = [Bar("lr", 0.6, "lr: 60%"), Bar("wd", 0.3), Bar("nan", NAN), Bar("neg", -0.1)]
    root = parse(bar_chart(bars, x_label="importance"))
    assert "bar-chart" in (root.get("class") or "").split()
    rects = elements(root, "rect", "bar")
    assert len(rects) == 3
    assert [title(r) for r in rects] == ["lr: 60%", "wd: 0.3", "neg: -0.1"]
    ys = [floats(r, "y")[0] for r in rects]
    assert ys == sorted(ys)
    widths = [floats(r, "width")[0] for r in rects]
    assert widths[0] == pytest.approx(2 * widths[1], abs=0.2)
    (zero,) = elements(root, "line", "zero")
    assert floats(rects[2], "x")[0] < floats(zero, "x1")[0] <= floats(rects[0], "x")[0]
    assert texts(root, "bar-value") == ["0.6", "0.3", "n/a", "-0.1"]
    assert texts(root, "axis-label") == ["importance"]


def test_bar_chart_without_bars_says_so() -> None:
    root = parse(bar_chart([]))
    assert texts(root, "empty") == ["no data yet"]
    assert not elements(root, "rect", "bar")


def test_bar_chart_escapes_every_text() -> None:
    svg = bar_chart([Bar(HOSTILE, 1.0, HOSTILE)], x_label=HOSTILE)
    root = parse(svg)
    assert_inert(svg, root)
    assert title(elements(root, "rect", "bar")[0]) == HOSTILE
    assert bar_chart([Bar("a", 1.0)]) == bar_chart([Bar("a", 1.0)])


# ---------------------------------------------------------------- timeline


def segment(
    lane: str,
    trial: int,
    start: float,
    end: float | None,
    *,
    attempt: int = 1,
    rung: int = 0,
    outcome: str = "completed",
    title: str = "",
    href: str | None = None,
    extra: dict[str, str] | None = None,
) -> Segment:
    return Segment(lane, trial, attempt, start, end, rung, outcome, title, href, extra or {})


def test_timeline_has_one_rect_per_segment_with_its_data() -> None:
    segments = [
        segment("w-1/slot0", 1, 0, 10, rung=0, title="trial 1 rung 0", href="/t/1"),
        segment("w-1/slot0", 2, 12, 30, rung=1, attempt=2, outcome="errored"),
        segment("w-1/slot1", 3, 5, 25, rung=2, outcome="preempted"),
    ]
    root = parse(worker_timeline(segments, now=40))
    assert "worker-timeline" in (root.get("class") or "").split()
    rects = elements(root, "rect", "segment")
    assert len(rects) == 3
    assert [r.get("data-trial") for r in rects] == ["1", "2", "3"]
    assert rects[1].get("data-attempt") == "2"
    assert [r.get("data-rung") for r in rects] == ["0", "1", "2"]
    assert [r.get("fill") for r in rects] == [colour(0), colour(1), colour(2)]
    assert "errored" in (rects[1].get("class") or "").split()
    assert rects[1].get("stroke")
    assert rects[2].get("stroke-dasharray")
    assert title(rects[0]) == "trial 1 rung 0"
    assert [a.get("href") for a in elements(root, "a")] == ["/t/1"]
    assert rects[0].get("y") == rects[1].get("y") != rects[2].get("y")
    assert elements(root, "g", "legend")


def test_timeline_shortens_long_lane_names_in_the_middle() -> None:
    lane = "gpu-node-17.cluster.example.org/slot3" * 2
    root = parse(worker_timeline([segment(lane, 1, 0, 1)], now=1))
    (label,) = elements(root, "text", "lane-label")
    assert (label.text or "").endswith("slot3")
    assert "…" in (label.text or "")
    assert title(label) == lane


def test_timeline_sorts_lanes_naturally() -> None:
    lanes = ["w-10/slot0", "w-2/slot1", "w-2/slot0", "a", "w-1/slot10", "w-1/slot9"]
    segments = [segment(lane, i, i, i + 1) for i, lane in enumerate(lanes)]
    root = parse(worker_timeline(segments, now=10))
    assert texts(root, "lane-label") == [
        "a",
        "w-1/slot9",
        "w-1/slot10",
        "w-2/slot0",
        "w-2/slot1",
        "w-10/slot0",
    ]
    rects = elements(root, "rect", "segment")
    y_of = {r.get("data-trial"): floats(r, "y")[0] for r in rects}
    assert y_of["3"] < y_of["5"] < y_of["4"] < y_of["2"] < y_of["1"] < y_of["0"]


def test_timeline_draws_a_running_segment_to_now() -> None:
    segments = [segment("w", 1, 0, 10), segment("w", 2, 20, None, outcome="running")]
    root = parse(worker_timeline(segments, now=40))
    done, running = elements(root, "rect", "segment")
    assert "running" in (running.get("class") or "").split()
    x0, w0 = floats(done, "x", "width")
    x1, w1 = floats(running, "x", "width")
    per_second = w0 / 10
    assert x1 == pytest.approx(x0 + 20 * per_second, abs=0.2)
    assert w1 == pytest.approx(20 * per_second, abs=0.2)
    assert "running" not in (done.get("class") or "").split()


def tick_labels(svg: str) -> list[str]:
    """The x axis's tick labels, without its title."""
    axis = elements(parse(svg), "g", "x-axis")[0]
    return [t.text or "" for t in axis.iter(f"{NS}text") if t.get("class") != "axis-label"]


def test_timeline_labels_time() -> None:
    minutes = tick_labels(worker_timeline([segment("w", 1, 0, 10)], now=600))
    assert "10min" in minutes
    assert all(t.endswith("min") for t in minutes)
    assert "30s" in tick_labels(worker_timeline([segment("w", 1, 0, 10)], now=30))
    assert "5h" in tick_labels(worker_timeline([segment("w", 1, 0, 10)], now=5 * 3600))


def test_timeline_extra_becomes_data_attributes_with_safe_names() -> None:
    extra = {"Host Name": "gpu-1", '"><script>': HOSTILE}
    root = parse(worker_timeline([segment("w", 1, 0, 10, extra=extra)], now=10))
    (rect,) = elements(root, "rect", "segment")
    assert rect.get("data-hostname") == "gpu-1"
    assert rect.get("data-script") == HOSTILE


def test_timeline_skips_unusable_times_and_handles_emptiness() -> None:
    segments = [segment("w", 1, NAN, 10), segment("w", 2, 0, INF), segment("w", 3, 2, 4)]
    root = parse(worker_timeline(segments, now=NAN))
    assert [r.get("data-trial") for r in elements(root, "rect", "segment")] == ["3"]
    root = parse(worker_timeline([], now=0))
    assert texts(root, "empty") == ["nothing has run yet"]
    assert not elements(root, "rect", "segment")


def test_timeline_escapes_every_text_and_is_deterministic() -> None:
    segments = [segment(HOSTILE, 1, 0, 10, outcome=HOSTILE, title=HOSTILE, href=f"/{HOSTILE}")]
    svg = worker_timeline(segments, now=10)
    root = parse(svg)
    assert_inert(svg, root)
    (rect,) = elements(root, "rect", "segment")
    assert title(rect) == HOSTILE
    (lane,) = elements(root, "text", "lane-label")
    assert title(lane) == HOSTILE
    assert svg == worker_timeline(segments, now=10)
