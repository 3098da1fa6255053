"""Lineage on the dashboard (issue 21): each clone of population-based training knows its
source, the trials table and a trial's page link them, and the experiment page draws the
family tree."""

from __future__ import annotations

import html as html_text
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from rung.broker.schemas.commands import RunTrial
from rung.dashboard.charts import Branch, lineage_tree
from rung.dashboard.model import ExperimentView, Result, TrialView
from rung.dashboard.pages import (
    LINEAGE_ROWS,
    LINEAGE_TOP,
    Options,
    experiment_sections,
    experiment_summary,
    lineage_note,
    trial_page,
    trial_rows,
)
from rung.dashboard.source import DirSource
from rung.searcher.eventlog import CreatedRecord, InputRecord, Record, read_log
from rung.searcher.ops import Create
from tests.unit.dashboard.test_server import CONTEXTS, LOGS, html, serve, write_log
from tests.unit.searcher.pbt_log import EXP, checkpoint, pbt_log

NS = "{http://www.w3.org/2000/svg}"
WAITING = "round 0: waiting for trial 4's checkpoint at length 10 (rank 1), to copy it"


def fold(records: Sequence[Record]) -> ExperimentView:
    created = records[0]
    assert isinstance(created, CreatedRecord)
    view = ExperimentView(created)
    for record in records[1:]:
        view.apply(record)
    return view


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # noqa: S314 (our own output, under test)


def classed(root: ET.Element, tag: str, css: str) -> list[ET.Element]:
    return [e for e in root.iter(f"{NS}{tag}") if css in (e.get("class") or "").split()]


def title(element: ET.Element) -> str:
    found = element.find(f"{NS}title")
    return "" if found is None or found.text is None else found.text


# ---------------------------------------------------------------------- the view
def test_each_clone_knows_its_source_and_each_source_its_clones() -> None:
    _, records = pbt_log()
    view = fold(records)
    assert view.unexplained is None
    parents = {
        t.trial_id: (t.parent.source_trial, t.parent.length, t.parent.checkpoint)
        for t in view.trials.values()
        if t.parent is not None
    }
    assert parents == {5: (4, 10, checkpoint(4, 10)), 6: (5, 20, checkpoint(5, 20))}
    assert {t.trial_id: t.children for t in view.trials.values()} == {
        1: [],
        2: [],
        3: [],
        4: [5],
        5: [6],
        6: [],
    }
    assert [a.trial_id for a in view.ancestors(view.trials[6])] == [5, 4]
    assert view.ancestors(view.trials[4]) == []
    assert view.clones() == 2
    assert experiment_summary(view)["clones"] == 2


def test_the_lineage_comes_from_the_records_even_without_the_search() -> None:
    """A view that cannot fold the search (a custom method not at hand, a fold that
    raised) reads the clones from the records' operations; a clone whose run_trial comes
    in a later record (it waited for a slot) still gets its source."""
    _, records = pbt_log()
    index = next(
        i
        for i, r in enumerate(records)
        if isinstance(r, InputRecord)
        and any(isinstance(c.body, RunTrial) and c.body.trial_id == 5 for c in r.commands)
    )
    made = records[index]
    assert isinstance(made, InputRecord)
    run_five = [c for c in made.commands if isinstance(c.body, RunTrial) and c.body.trial_id == 5]
    later = records[index + 1]
    assert isinstance(later, InputRecord)
    moved = [
        *records[:index],
        made.model_copy(update={"commands": [c for c in made.commands if c not in run_five]}),
        later.model_copy(update={"commands": [*later.commands, *run_five]}),
        *records[index + 2 :],
    ]
    created = records[0]
    assert isinstance(created, CreatedRecord)
    view = ExperimentView(created)
    view.run = None  # as after a fold that raised: the records alone
    for record in moved[1:]:
        view.apply(record)
        if record.seq == made.seq:
            assert 5 not in view.trials
    assert view.trials[5].parent is not None
    assert view.trials[5].parent.source_trial == 4
    assert view.trials[4].children == [5]
    assert view.trials[6].parent is not None
    assert view.trials[6].parent.source_trial == 5


def test_the_view_has_the_clones_the_log_records_and_no_others() -> None:
    """Every golden log: a trial has a source exactly when its Create was a clone (PBT's
    logs), and a search without clones draws no family tree."""
    for path in LOGS:
        records = read_log(path)
        view = ExperimentView(records[0], context_root=CONTEXTS, allow_custom=True)  # type: ignore[arg-type]
        for record in records[1:]:
            view.apply(record)
        logged = {
            op.request_id: op.clone.source_trial
            for r in records
            if isinstance(r, InputRecord)
            for op in r.ops
            if isinstance(op, Create) and op.clone is not None
        }
        parents = {
            t.request_id: t.parent.source_trial
            for t in view.trials.values()
            if t.parent is not None
        }
        assert parents == logged, path.name
        assert view.clones() == len(logged)
        assert sum(len(t.children) for t in view.trials.values()) == len(logged)
        lineage = experiment_sections(view, Options())["lineage"]
        rows, _ = trial_rows(view, Options())
        if not logged and view.config.searcher.name != "pbt":
            assert lineage == "", path.name
            assert all(row["parent"] is None for row in rows)
        else:
            drawn = parse(lineage)
            assert len(classed(drawn, "path", "edge")) == len(logged), path.name


def test_the_timeline_shows_the_notes_of_the_search_method() -> None:
    _, records = pbt_log()
    view = fold(records)
    noted = [a for a in view.activity if any(d.startswith("note: ") for d in a["decisions"])]
    assert [a["decisions"][0] for a in noted] == [
        f"note: {WAITING}",
        "note: round 2 was the last: the population is closed",
    ]
    assert noted[0]["event"] == "trial 4 reached length 10: metric 0.025"


# ---------------------------------------------------------------------- the pages
def test_the_trials_table_links_each_clone_to_its_source() -> None:
    _, records = pbt_log()
    view = fold(records)
    rows, _ = trial_rows(view, Options())
    parents = {row["trial_id"]: row["parent"] for row in rows}
    assert parents[5] == {"trial_id": 4, "length": 10, "href": "/experiments/exp-pbt/trials/4"}
    assert parents[6] == {"trial_id": 5, "length": 20, "href": "/experiments/exp-pbt/trials/5"}
    assert [parents[t] for t in (1, 2, 3, 4)] == [None] * 4


def test_a_trial_page_shows_its_source_its_line_and_its_clones() -> None:
    _, records = pbt_log()
    view = fold(records)
    six = trial_page(view, view.trials[6])
    assert six.parent is not None
    assert six.parent["trial_id"] == 5
    assert six.parent["text"].startswith(
        "trial 6 continues from trial 5's checkpoint at length 20 (rank 1 of 4); "
        "replaces trial 2 (bottom 25%)"
    )
    assert [(a["trial_id"], a["at"]) for a in six.line] == [(4, 10), (5, 20)]
    assert six.children == []
    four = trial_page(view, view.trials[4])
    assert four.parent is None
    assert four.line == []
    assert four.children == [{"trial_id": 5, "href": "/experiments/exp-pbt/trials/5", "at": 10}]


def test_the_family_tree_hangs_each_clone_from_its_source() -> None:
    _, records = pbt_log()
    view = fold(records)
    root = parse(experiment_sections(view, Options())["lineage"])
    bars = classed(root, "rect", "branch")
    assert [int(b.get("data-trial", "")) for b in bars] == [1, 2, 3, 4, 5, 6]
    edges = {(e.get("data-parent"), e.get("data-trial")) for e in classed(root, "path", "edge")}
    assert edges == {("4", "5"), ("5", "6")}
    forks = classed(root, "circle", "fork")
    assert [title(f) for f in forks] == [
        "trial 5 continues from trial 4's checkpoint at length 10",
        "trial 6 continues from trial 5's checkpoint at length 20",
    ]
    by_trial = {int(b.get("data-trial", "")): b for b in bars}
    # A clone's bar starts where its source's dot is: the length of the checkpoint copied.
    for fork, clone in zip(forks, (5, 6), strict=True):
        assert float(by_trial[clone].get("x", "")) == float(fork.get("cx", ""))
    assert "best" in (by_trial[6].get("class") or "").split()
    assert "trial 6 continues from trial 5's checkpoint" in title(by_trial[6])
    # Trial 1, replaced after the first round, stopped short: it is drawn faded.
    assert "stopped" in (by_trial[1].get("class") or "").split()
    assert float(by_trial[1].get("width", "")) < float(by_trial[4].get("width", ""))


def test_the_family_tree_of_a_large_search_keeps_the_best_and_their_ancestors() -> None:
    _, records = pbt_log()
    view = fold(records)
    best = view.trials[6].results[-1].value
    # Many more trials, all trained as far, whose results rank between trial 6 and the
    # rest: the best LINEAGE_TOP are trial 6 and all but one of them.
    for extra in range(100, 100 + LINEAGE_ROWS):
        trial = TrialView(extra, f"r{extra}", {}, created_at=0.0, reached=30)
        trial.results.append(Result(extra, 30, best * (1 + extra / 1e6), 0.0, 0, 0))
        view.trials[extra] = trial
    root = parse(experiment_sections(view, Options())["lineage"])
    drawn = {int(b.get("data-trial", "")) for b in classed(root, "rect", "branch")}
    extras = set(range(100, 100 + LINEAGE_TOP - 1))
    assert drawn == {6, 5, 4} | extras  # trial 6's line (5, 4) though they rank lower
    assert (
        lineage_note(view)
        == f"the best {LINEAGE_TOP} of {len(view.trials):,} trials and the trials they come from"
    )


async def test_the_experiment_and_trial_pages_show_the_lineage(tmp_path: Path) -> None:
    _, records = pbt_log()
    write_log(tmp_path, [r.model_dump_json() for r in records])
    async with serve(DirSource(tmp_path)) as served:
        page = html(await served.get(f"/experiments/{EXP}"))
        assert "<h2>Lineage</h2>" in page
        assert 'class="chart lineage-tree"' in page
        assert "<th>From</th>" in page
        assert (
            '<td class="from">from <a href="/experiments/exp-pbt/trials/4">trial 4</a> @ 10</td>'
            in page
        )
        assert f"note: {WAITING}" in html_text.unescape(page)
        api = (await served.get(f"/api/experiments/{EXP}")).json()
        parents = {t["trial_id"]: t["parent"] for t in api["trials"]}
        assert parents[5] == {"trial_id": 4, "checkpoint": checkpoint(4, 10), "length": 10}
        assert parents[1] is None
        six = html(await served.get(f"/experiments/{EXP}/trials/6"))
        assert "<p>trial 6 continues from trial 5's checkpoint at length 20 (rank 1 of 4)" in (
            html_text.unescape(six)
        )
        assert (
            'Its line: <a href="/experiments/exp-pbt/trials/4">trial 4</a> @ 10 → '
            '<a href="/experiments/exp-pbt/trials/5">trial 5</a> @ 20 → trial 6 · checkpoint '
            f"<code>{checkpoint(5, 20)}</code>"
        ) in six
        four = html(await served.get(f"/experiments/{EXP}/trials/4"))
        assert 'Cloned into: <a href="/experiments/exp-pbt/trials/5">trial 5</a> @ 10' in four
        one = html(await served.get(f"/experiments/{EXP}/trials/1"))
        assert "<h2>Lineage</h2>" not in one


# ---------------------------------------------------------------------- the chart
def branch(trial: int, parent: int | None, start: float, end: float, **kw: object) -> Branch:
    return Branch(trial, parent, start, end, kw.pop("value", 1.0), **kw)  # type: ignore[arg-type]


def test_the_tree_walks_down_from_the_roots_each_source_above_its_clones() -> None:
    branches = [
        branch(1, None, 0, 30),
        branch(2, None, 0, 20),
        branch(3, 1, 20, 40),
        branch(4, 1, 10, 40),
        branch(5, 4, 30, 40),
        branch(6, 99, 30, 40),  # its source is not drawn: a root
    ]
    root = parse(lineage_tree(branches))
    order = [int(b.get("data-trial", "")) for b in classed(root, "rect", "branch")]
    assert order == [1, 4, 5, 3, 2, 6]  # clones by the length they start at
    edges = {(e.get("data-parent"), e.get("data-trial")) for e in classed(root, "path", "edge")}
    assert edges == {("1", "3"), ("1", "4"), ("4", "5")}
    labels = [t.text for t in classed(root, "text", "row-label")]
    assert labels == [f"trial {t}" for t in order]


def test_the_tree_survives_a_loop_of_parents_and_colours_by_rank() -> None:
    branches = [
        branch(1, 2, 0, 10, value=0.5),
        branch(2, 1, 0, 10, value=0.1),
        branch(3, None, 0, 10, value=None),
        branch(4, 4, 0, 10, value=1e9),
    ]
    root = parse(lineage_tree(branches, smaller_is_better=True))
    bars = {int(b.get("data-trial", "")): b for b in classed(root, "rect", "branch")}
    assert sorted(bars) == [1, 2, 3, 4]  # each once, however odd the parents
    assert bars[3].get("fill") == "#bbbbbb"  # no result
    assert len({bars[t].get("fill") for t in (1, 2, 4)}) == 3


def test_the_tree_escapes_its_text_and_is_deterministic() -> None:
    hostile = "<script>alert(1)</script>\"'&amp;"
    branches = [
        branch(1, None, 0, 10, title=hostile, href="javascript:alert(1)"),
        branch(2, 1, 5, 10, title=hostile, css="best running", href="/experiments/e/trials/2"),
    ]
    text = lineage_tree(branches, metric=hostile)
    assert text == lineage_tree(branches, metric=hostile)
    root = parse(text)
    assert "<script>" not in text
    assert "javascript:" not in text
    assert [title(b) for b in classed(root, "rect", "branch")] == [hostile, hostile]
    assert classed(root, "rect", "best")[0].get("data-trial") == "2"
    empty = parse(lineage_tree([]))
    assert [t.text for t in classed(empty, "text", "empty")] == ["no trials yet"]
