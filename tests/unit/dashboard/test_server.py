"""The dashboard's server over HTTP: its pages and JSON, its errors, its guards, its live
stream, and ``rung dashboard`` itself.

Each test serves a searcher-like state directory in ``tmp_path`` (``experiments/<id>/
events.jsonl``, copies of the golden logs or of the synthetic ASHA log of ``bench``) with a
:class:`Dashboard` in the test's own event loop, and talks to it with aiohttp. Controls are
checked against :class:`FakeSource`, a writable source over the same directory that records
what it is asked to do (no searcher, no broker).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import aiohttp
import pytest
from yarl import URL

from bench.dashboard_log import records as synthetic_records
from rung.broker.schemas import OpCompleted
from rung.dashboard import Dashboard, DashboardError, DirSource, ExperimentView, Source
from rung.dashboard.hub import Hub
from rung.dashboard.source import Action, ExperimentRef, LogPage
from rung.searcher.client import NotFoundError
from rung.searcher.eventlog import CreatedRecord, InputRecord, Record
from rung.searcher.eventlog.records import record_adapter

REPO: Final = Path(__file__).resolve().parents[3]
GOLDEN: Final = REPO / "tests" / "golden"
CONTEXTS: Final = GOLDEN / "contexts"
LOGS: Final = sorted(GOLDEN.glob("*.v1.jsonl"))
SECTIONS: Final = {
    "best-budget",
    "best-time",
    "curves",
    "rungs",
    "parallel",
    "importance",
    "timeline",
    "lineage",
    "trials",
    "head",
}
HEADERS: Final = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
}
# How long a live update may take to reach a stream: the directory is polled every 0.25 s.
LIVE_S: Final = 5.0
EXPERIMENT_ROW: Final = re.compile(r'<tr class="experiment" data-experiment="([^"]+)"')
TRIAL_ROW: Final = re.compile(r'<tr class="trial" data-trial="(\d+)"')
CONTROL: Final = re.compile(r'<button type="button" class="control[^"]*" data-action="(\w+)"')
CURVE_MARK: Final = 'class="mark"'


# ---------------------------------------------------------------------- logs
def first(lines: Sequence[str]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(lines[0])
    return data


def experiment_of(lines: Sequence[str]) -> str:
    return str(first(lines)["experiment_id"])


def golden(path: Path) -> list[str]:
    return path.read_text().splitlines()


@cache
def synthetic(trials: int) -> tuple[str, ...]:
    """The synthetic ASHA log of ``trials`` trials (4 workers), one JSON record a line."""
    return tuple(record.model_dump_json() for record in synthetic_records(trials, workers=4))


def write_log(state: Path, lines: Sequence[str], *, experiment_id: str | None = None) -> str:
    """``state/experiments/<id>/events.jsonl`` holding ``lines`` (renamed to
    ``experiment_id`` when given); the experiment's id."""
    old = experiment_of(lines)
    new = experiment_id or old
    if new != old:
        lines = [line.replace(old, new) for line in lines]
    directory = state / "experiments" / new
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "events.jsonl").write_text("".join(f"{line}\n" for line in lines))
    return new


def append(state: Path, experiment_id: str, text: str) -> None:
    with (state / "experiments" / experiment_id / "events.jsonl").open("a") as handle:
        handle.write(text)


def parsed(lines: Iterable[str]) -> list[Record]:
    return [record_adapter.validate_json(line) for line in lines]


def taken(lines: Iterable[str]) -> int:
    """How many results (completed operations with a metric) the searcher took."""
    count = 0
    for record in parsed(lines):
        body = getattr(record, "input", None)
        if (
            isinstance(record, InputRecord)
            and record.ignored is None
            and isinstance(body, OpCompleted)
            and body.metric is not None
        ):
            count += 1
    return count


def folded(lines: Sequence[str], *, contexts: Path | None = CONTEXTS) -> ExperimentView:
    records = parsed(lines)
    created = records[0]
    assert isinstance(created, CreatedRecord)
    view = ExperimentView(created, context_root=contexts)
    for record in records[1:]:
        view.apply(record)
    return view


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """The golden logs, their contexts and a small labelled synthetic log, as a searcher's
    state directory has them."""
    for path in LOGS:
        write_log(tmp_path, golden(path))
    write_log(tmp_path, synthetic(12))
    shutil.copytree(CONTEXTS, tmp_path / "contexts")
    return tmp_path


def golden_ids() -> dict[str, str]:
    return {path.name: experiment_of(golden(path)) for path in LOGS}


# ---------------------------------------------------------------------- sources
class RecordingDirSource(DirSource):
    """A state directory that notes every log path it opens and every history it follows."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir)
        self.paths: list[Path] = []
        self.followed: Counter[str] = Counter()

    def _log(self, experiment_id: str) -> Path:
        path = super()._log(experiment_id)
        self.paths.append(path)
        return path

    def records(self, experiment_id: str, after_seq: int) -> AsyncIterator[Record]:
        self.followed[experiment_id] += 1
        return super().records(experiment_id, after_seq)


@dataclass
class FakeSource:
    """A writable source (as a searcher is) reading a state directory: it records the
    controls it is asked for, and answers them with ``state``."""

    inner: DirSource
    state: str = "PAUSED"
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    fail: Exception | None = None
    # Whether its records end with the log's newest (as Experiment.watch() ends with the
    # experiment), rather than following the file.
    ends: bool = False

    @property
    def writable(self) -> bool:
        return True

    @property
    def describe(self) -> str:
        return "fake searcher"

    async def experiments(self) -> list[ExperimentRef]:
        return await self.inner.experiments()

    async def newest(self, experiment_id: str) -> int:
        return await self.inner.newest(experiment_id)

    def records(self, experiment_id: str, after_seq: int) -> AsyncIterator[Record]:
        if self.ends:
            return self._history(experiment_id, after_seq)
        return self.inner.records(experiment_id, after_seq)

    async def _history(self, experiment_id: str, after_seq: int) -> AsyncIterator[Record]:
        newest = await self.inner.newest(experiment_id)
        async for record in self.inner.records(experiment_id, after_seq):
            yield record
            if record.seq >= newest:
                return

    async def logs(
        self,
        experiment_id: str,
        trial_id: int,
        after: int,
        after_seq: int = 0,
        rank: int | None = None,
    ) -> LogPage:
        return await self.inner.logs(experiment_id, trial_id, after, after_seq, rank)

    async def control(self, experiment_id: str, action: Action) -> str:
        self.calls.append(("control", experiment_id, action))
        if self.fail is not None:
            raise self.fail
        return self.state

    async def kill_trial(self, experiment_id: str, trial_id: int) -> str:
        self.calls.append(("kill_trial", experiment_id, trial_id))
        if self.fail is not None:
            raise self.fail
        return "CANCELED"


# ---------------------------------------------------------------------- HTTP
@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


@dataclass
class Served:
    dashboard: Dashboard
    session: aiohttp.ClientSession

    @property
    def url(self) -> str:
        assert self.dashboard.address is not None
        return self.dashboard.address.url

    @property
    def port(self) -> int:
        assert self.dashboard.address is not None
        return self.dashboard.address.port

    def target(self, path: str) -> URL:
        """``path`` sent as written (no normalising of ``..``, no re-quoting)."""
        return URL(self.url.rstrip("/") + "/" + path.lstrip("/"), encoded=True)

    async def get(self, path: str, **kwargs: Any) -> Reply:
        async with self.session.get(self.target(path), allow_redirects=False, **kwargs) as r:
            return Reply(r.status, r.headers, await r.text())

    async def post(self, path: str, **kwargs: Any) -> Reply:
        async with self.session.post(self.target(path), allow_redirects=False, **kwargs) as r:
            return Reply(r.status, r.headers, await r.text())

    async def token(self) -> str:
        page = await self.get("/")
        match = re.search(r'<meta name="rung-token" content="([^"]+)">', page.text)
        assert match is not None, page.text[:500]
        return match.group(1)


@contextlib.asynccontextmanager
async def serve(source: Source, **options: Any) -> AsyncIterator[Served]:
    async with (
        Dashboard(source, port=0, **options) as dashboard,
        aiohttp.ClientSession() as session,
    ):
        yield Served(dashboard, session)


def html(reply: Reply) -> str:
    assert reply.status == 200, (reply.status, reply.text[:500])
    assert reply.headers["Content-Type"].startswith("text/html"), reply.headers
    assert reply.text.startswith("<!doctype html>")
    assert reply.text.rstrip().endswith("</html>")
    return reply.text


def controls(page: str) -> list[str]:
    return CONTROL.findall(page)


async def eventually(
    condition: Callable[[], bool], *, timeout: float = LIVE_S, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not met within {timeout} s")
        await asyncio.sleep(0.02)


# ---------------------------------------------------------------------- server-sent events
@dataclass(frozen=True)
class Event:
    id: int | None
    name: str
    data: dict[str, Any]

    @property
    def seqs(self) -> list[int]:
        return [int(entry["seq"]) for entry in self.data["entries"]]


class EventStream:
    """The raw ``text/event-stream`` of a response, one event at a time."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.retry: int | None = None

    async def next(self, timeout: float = LIVE_S) -> Event:
        fields: dict[str, str] = {}
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    raise EOFError("the stream ended")
                assert raw.endswith(b"\n"), raw
                line = raw[:-1].decode()
                if line:
                    if not line.startswith(":"):  # a comment (keepalive) otherwise
                        name, _, value = line.partition(":")
                        fields[name] = value.removeprefix(" ")
                    continue
                if "retry" in fields:
                    self.retry = int(fields.pop("retry"))
                if "data" in fields:
                    return Event(
                        int(fields["id"]) if "id" in fields else None,
                        fields.get("event", "message"),
                        json.loads(fields["data"]),
                    )
                fields = {}

    async def until(self, seq: int, timeout: float = LIVE_S) -> list[Event]:
        """The events up to the one whose ``to`` is ``seq``."""
        events: list[Event] = []
        async with asyncio.timeout(timeout):
            while not events or events[-1].data["to"] < seq:
                event = await self.next(timeout)
                assert event.name == "message", f"the stream said {event.name!r} before {seq}"
                events.append(event)
        assert events[-1].data["to"] == seq, [e.data["to"] for e in events]
        return events


@contextlib.asynccontextmanager
async def stream(
    served: Served, experiment_id: str, query: str = "", headers: Mapping[str, str] | None = None
) -> AsyncIterator[EventStream]:
    path = f"/experiments/{experiment_id}/stream" + (f"?{query}" if query else "")
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with served.session.get(
        served.target(path), headers=dict(headers or {}), timeout=timeout
    ) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"] == "text/event-stream"
        assert response.headers["Cache-Control"] == "no-cache"
        yield EventStream(response)


def check_contiguous(events: Sequence[Event], after: int) -> list[int]:
    """Each event starts where the one before ended (the first at ``after``); the
    entries' numbers rise across them, all above ``after``: the entries' numbers."""
    start = after
    seqs: list[int] = []
    for event in events:
        assert event.name == "message"
        assert event.data["from"] == start, (event.data["from"], start)
        assert event.data["to"] > start
        assert event.id == event.data["to"]
        assert event.data["gap"] is False
        assert all(start < s <= event.data["to"] for s in event.seqs), (start, event.seqs)
        seqs += event.seqs
        start = event.data["to"]
    assert seqs == sorted(set(seqs)), "entries repeated or out of order"
    assert all(s > after for s in seqs)
    return seqs


# ====================================================================== 1. pages
async def test_the_experiments_page_lists_every_log_with_its_summary(state: Path) -> None:
    async with serve(DirSource(state), context_root=state / "contexts") as served:
        page = html(await served.get("/"))
        ids = [*golden_ids().values(), experiment_of(synthetic(12))]
        assert sorted(EXPERIMENT_ROW.findall(page)) == sorted(ids)
        assert f"{len(ids)} of {len(ids)}" in page
        for path in LOGS:
            assert f"<td>golden-{path.name.removesuffix('.v1.jsonl')}</td>" in page
        # A best-so-far sparkline for each experiment with results.
        assert page.count('class="sparkline"') == len(ids)
        assert "still loading" not in page
        assert (
            'class="note"' not in page.split('<tbody id="experiment-rows">')[1].split("</tbody>")[0]
        )

        listing = (await served.get("/api/experiments")).json()["experiments"]
        assert sorted(e["experiment_id"] for e in listing) == sorted(ids)
        by_id = {e["experiment_id"]: e for e in listing}
        for path in LOGS:
            summary = by_id[experiment_of(golden(path))]
            lines = golden(path)
            assert "error" not in summary
            assert "sparkline" not in summary
            assert summary["seq"] == len(lines)
            assert summary["results"] == taken(lines)
            assert summary["state"] == ("ERROR" if path.name == "failed.v1.jsonl" else "COMPLETED")
            assert sum(summary["counts"].values()) == summary["trials"] > 0


async def test_the_experiments_page_filters_by_state_and_label(state: Path) -> None:
    ids = golden_ids()
    labelled = experiment_of(synthetic(12))
    async with serve(DirSource(state), context_root=state / "contexts") as served:
        page = html(await served.get("/"))
        assert '<option value="ERROR">' in page
        assert '<option value="COMPLETED">' in page
        assert '<option value="bench">' in page
        assert '<option value="synthetic">' in page

        errored = html(await served.get("/?state=ERROR"))
        assert EXPERIMENT_ROW.findall(errored) == [ids["failed.v1.jsonl"]]
        assert '<option value="ERROR" selected>' in errored
        total = len(LOGS) + 1
        assert f"1 of {total}" in errored

        completed = html(await served.get("/?state=COMPLETED"))
        assert sorted(EXPERIMENT_ROW.findall(completed)) == sorted(
            [labelled, *(i for name, i in ids.items() if name != "failed.v1.jsonl")]
        )

        bench = html(await served.get("/?label=bench"))
        assert EXPERIMENT_ROW.findall(bench) == [labelled]
        assert '<span class="label">bench</span>' in bench
        both = html(await served.get("/?state=COMPLETED&label=synthetic"))
        assert EXPERIMENT_ROW.findall(both) == [labelled]
        none = html(await served.get("/?state=ERROR&label=bench"))
        assert EXPERIMENT_ROW.findall(none) == []
        assert "No experiments match." in none
        unknown = html(await served.get("/?label=%3Cscript%3E"))
        assert EXPERIMENT_ROW.findall(unknown) == []
        assert "<script>" not in unknown


@pytest.mark.parametrize("path", LOGS, ids=lambda p: p.name)
async def test_every_page_of_an_experiment_answers_with_its_content(
    state: Path, path: Path
) -> None:
    lines = golden(path)
    experiment_id = experiment_of(lines)
    view = folded(lines)
    async with serve(DirSource(state), context_root=state / "contexts") as served:
        page = html(await served.get(f"/experiments/{experiment_id}"))
        assert (
            f'<div id="experiment" data-experiment="{experiment_id}" data-seq="{len(lines)}"'
            in page
        )
        assert first(lines)["config"]["name"] in page
        assert sorted(int(t) for t in TRIAL_ROW.findall(page)) == sorted(view.trials)
        assert page.count(CURVE_MARK) >= taken(lines)
        assert controls(page) == []

        sections = (await served.get(f"/experiments/{experiment_id}/sections")).json()
        assert sections["seq"] == len(lines)
        assert set(sections["sections"]) == SECTIONS
        assert sections["sections"]["curves"].count(CURVE_MARK) == taken(lines)
        assert sections["sections"]["curves"].startswith("<svg")
        assert sorted(int(t) for t in TRIAL_ROW.findall(sections["sections"]["trials"])) == sorted(
            view.trials
        )
        assert f'class="state {view.state.lower()}"' in sections["sections"]["head"]

        api = (await served.get(f"/api/experiments/{experiment_id}")).json()
        assert api["experiment_id"] == experiment_id
        assert api["state"] == view.state
        assert api["seq"] == len(lines)
        assert "sparkline" not in api
        assert sorted(t["trial_id"] for t in api["trials"]) == sorted(view.trials)
        assert sum(len(t["results"]) for t in api["trials"]) == taken(lines)

        for trial in api["trials"]:
            trial_id = trial["trial_id"]
            page = html(await served.get(f"/experiments/{experiment_id}/trials/{trial_id}"))
            assert f'data-experiment="{experiment_id}" data-trial="{trial_id}"' in page
            assert (
                f'<h1>Trial {trial_id} <span class="state {trial["state"].lower()}" '
                'id="trial-state">' in page
            )
            for length, value in trial["results"]:
                assert f"<tr><td>{length}</td><td>{value:.6g}</td>" in page
            assert f'data-url="/experiments/{experiment_id}/trials/{trial_id}/logs"' in page
            assert controls(page) == []


async def test_text_from_a_log_is_escaped_on_every_page(tmp_path: Path) -> None:
    evil = '<b onmouseover="x()">adam</b>'
    lines = [line.replace('"adam"', json.dumps(evil)) for line in synthetic(12)]
    created = first(lines)
    created["config"].update(
        name="<i>name</i>", description="<u>description</u>", labels=["<s>label</s>"]
    )
    lines[0] = json.dumps(created)
    experiment_id = write_log(tmp_path, lines)
    view = folded(lines)
    assert any(evil in t.hparams.values() for t in view.trials.values())
    raw = ("<b onmouseover", "<i>name", "<u>description", "<s>label")
    async with serve(FakeSource(DirSource(tmp_path))) as served:
        pages = [
            html(await served.get("/")),
            html(await served.get("/?label=%3Cs%3Elabel%3C%2Fs%3E")),
            html(await served.get(f"/experiments/{experiment_id}")),
            html(await served.get(f"/experiments/{experiment_id}?q=%3Cb")),
            *[
                html(await served.get(f"/experiments/{experiment_id}/trials/{trial}"))
                for trial in view.trials
            ],
        ]
        sections = (await served.get(f"/experiments/{experiment_id}/sections")).json()
        pages += sections["sections"].values()
        for page in pages:
            assert not [text for text in raw if text in page]
        assert "&lt;i&gt;name&lt;/i&gt;" in pages[0]
        assert "&lt;s&gt;label&lt;/s&gt;" in pages[1]
        assert EXPERIMENT_ROW.findall(pages[1]) == [experiment_id]
        assert "&lt;u&gt;description&lt;/u&gt;" in pages[2]
        assert sum("onmouseover" in page for page in pages) > 2


async def test_static_files_are_served_and_nothing_else(state: Path) -> None:
    async with serve(DirSource(state)) as served:
        script = await served.get("/static/dashboard.js")
        assert script.status == 200
        assert script.headers["Content-Type"].startswith("text/javascript")
        assert "EventSource" in script.text
        style = await served.get("/static/dashboard.css")
        assert style.status == 200
        assert style.headers["Content-Type"].startswith("text/css")
        for name in ("server.py", "..%2Fserver.py", "..%2F__init__.py", "dashboard.JS"):
            assert (await served.get(f"/static/{name}")).status == 404, name
        assert (await served.get("/favicon.ico")).status == 204


def trial_log_lines(entries: Sequence[tuple[int, int, str, str]]) -> str:
    """TrialLogStore's format: t trial, a attempt, s stream, x text (m on an event's first)."""
    out = []
    for index, (trial, attempt, stream_name, text) in enumerate(entries):
        data: dict[str, Any] = {"m": f"message-{index}"} if index % 3 == 0 else {}
        data.update(t=trial, a=attempt, s=stream_name, x=text)
        out.append(json.dumps(data, separators=(",", ":")) + "\n")
    return "".join(out)


async def test_a_trials_log_filters_by_rank_in_pages_and_in_the_tail(state: Path) -> None:
    experiment_id = golden_ids()["asha.v1.jsonl"]
    store = state / "experiments" / experiment_id / "trial-logs.jsonl"
    lines = [
        {"t": 1, "a": 1, "s": "stdout", "x": f"step {i} of rank {rank}", "r": rank}
        for i in range(3)
        for rank in (0, 1)
    ] + [{"t": 1, "a": 1, "s": "stdout", "x": "no rank"}]
    store.write_text("".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines))
    url = f"/experiments/{experiment_id}/trials/1/logs"
    async with serve(DirSource(state)) as served:
        every = (await served.get(url)).json()["lines"]
        assert len(every) == 7
        one = (await served.get(f"{url}?rank=1")).json()["lines"]
        assert [line["text"] for line in one] == [f"step {i} of rank 1" for i in range(3)]
        assert {line["rank"] for line in one} == {1}
        tail = (await served.get(f"{url}?tail=1&rank=0")).json()["lines"]
        assert [line["text"] for line in tail] == [f"step {i} of rank 0" for i in range(3)]
        # What is not a rank filters nothing (and breaks nothing).
        for junk in ("x", "-1", "99999999999999999999", "²", "١٢"):
            assert len((await served.get(f"{url}?rank={quote(junk)}")).json()["lines"]) == 7


async def test_trial_logs_come_back_by_trial_and_page_on_with_after(state: Path) -> None:
    experiment_id = golden_ids()["asha.v1.jsonl"]
    entries = [
        (1, 1, "stdout", "epoch 1 of trial 1"),
        (2, 1, "stdout", "epoch 1 of trial 2"),
        (1, 1, "stderr", "warning: <b>careful</b>"),
        (1, 2, "stdout", "trial 1 restarted"),
        (2, 1, "stdout", "epoch 2 of trial 2"),
    ]
    store = state / "experiments" / experiment_id / "trial-logs.jsonl"
    store.write_text(trial_log_lines(entries))
    url = f"/experiments/{experiment_id}/trials/1/logs"
    async with serve(DirSource(state)) as served:
        page = (await served.get(url)).json()
        assert page["lines"] == [
            {"trial_id": 1, "attempt": 1, "stream": "stdout", "text": "epoch 1 of trial 1"},
            {"trial_id": 1, "attempt": 1, "stream": "stderr", "text": "warning: <b>careful</b>"},
            {"trial_id": 1, "attempt": 2, "stream": "stdout", "text": "trial 1 restarted"},
        ]
        assert page["next"] == store.stat().st_size
        assert page["more"] is False
        two = (await served.get(f"/experiments/{experiment_id}/trials/2/logs")).json()
        assert [line["text"] for line in two["lines"]] == [
            "epoch 1 of trial 2",
            "epoch 2 of trial 2",
        ]

        # After the first two lines: the rest; after the end: nothing, and the same cursor.
        second = len(trial_log_lines(entries[:2]).encode())
        rest = (await served.get(f"{url}?after={second}")).json()
        assert [line["text"] for line in rest["lines"]] == [
            "warning: <b>careful</b>",
            "trial 1 restarted",
        ]
        end = (await served.get(f"{url}?after={page['next']}")).json()
        assert end == {"lines": [], "next": page["next"], "more": False, "next_seq": 0}
        # A cursor inside a line starts at the next whole one; junk reads from the start.
        inside = (await served.get(f"{url}?after=5")).json()
        assert inside["lines"][0]["text"] == "warning: <b>careful</b>"
        junk = (await served.get(f"{url}?after=-3")).json()
        assert junk["lines"] == page["lines"]

        # Lines appended later come from the cursor on.
        with store.open("a") as handle:
            handle.write(trial_log_lines([(1, 2, "stdout", "one more line")]))
        later = (await served.get(f"{url}?after={page['next']}")).json()
        assert [line["text"] for line in later["lines"]] == ["one more line"]

        # More than a page: 1000 lines, more, then the rest from next.
        store.write_text(trial_log_lines([(3, 1, "stdout", f"line {i}") for i in range(1100)]))
        big = (await served.get(f"/experiments/{experiment_id}/trials/3/logs")).json()
        assert len(big["lines"]) == 1000
        assert big["more"] is True
        assert big["lines"][-1]["text"] == "line 999"
        tail = (
            await served.get(f"/experiments/{experiment_id}/trials/3/logs?after={big['next']}")
        ).json()
        assert [line["text"] for line in tail["lines"]] == [f"line {i}" for i in range(1000, 1100)]
        assert tail["more"] is False
        # An experiment with no trial logs yet has none.
        other = golden_ids()["grid.v1.jsonl"]
        empty = (await served.get(f"/experiments/{other}/trials/1/logs")).json()
        assert empty == {"lines": [], "next": 0, "more": False, "next_seq": 0}


async def test_a_trial_page_opens_on_the_end_of_a_long_log(state: Path) -> None:
    """``tail=1``: the last 256 KiB of the store, from a whole line, then paging on."""
    experiment_id = golden_ids()["asha.v1.jsonl"]
    store = state / "experiments" / experiment_id / "trial-logs.jsonl"
    lines = [(1, 1, "stdout", f"line {i} " + "x" * 100) for i in range(10_000)]
    store.write_text(trial_log_lines(lines))
    url = f"/experiments/{experiment_id}/trials/1/logs"
    async with serve(DirSource(state)) as served:
        tail = (await served.get(f"{url}?tail=1")).json()
        texts = [line["text"] for line in tail["lines"]]
        assert texts
        first = int(texts[0].split()[1])
        assert 0 < first < 10_000
        assert texts == [f"line {i} " + "x" * 100 for i in range(first, first + len(texts))]
        size = store.stat().st_size
        assert size - 256 * 1024 <= len(trial_log_lines(lines[:first]).encode())
        while tail["more"]:
            tail = (await served.get(f"{url}?after={tail['next']}")).json()
            texts += [line["text"] for line in tail["lines"]]
        assert texts[-1].startswith("line 9999 ")
        assert tail["next"] == size


async def test_the_tail_of_a_trial_whose_lines_are_far_from_the_end(state: Path) -> None:
    """The store holds every trial's lines: the window before the end grows until it
    holds the trial's."""
    experiment_id = golden_ids()["asha.v1.jsonl"]
    store = state / "experiments" / experiment_id / "trial-logs.jsonl"
    early = [(1, 1, "stdout", f"early {i}") for i in range(50)]
    late = [(2, 1, "stdout", f"late {i} " + "y" * 100) for i in range(5000)]
    store.write_text(trial_log_lines(early + late))
    async with serve(DirSource(state)) as served:
        one = (await served.get(f"/experiments/{experiment_id}/trials/1/logs?tail=1")).json()
        assert [line["text"] for line in one["lines"]] == [f"early {i}" for i in range(50)]
        assert one["next"] == store.stat().st_size
        two = (await served.get(f"/experiments/{experiment_id}/trials/2/logs?tail=1")).json()
        assert two["lines"]
        assert two["lines"][-1]["text"].startswith("late 4999 ")


# ====================================================================== 2. errors
async def test_an_unknown_experiment_is_a_404_that_names_it(state: Path) -> None:
    async with serve(DirSource(state)) as served:
        for path in (
            "/experiments/exp-nosuch",
            "/experiments/exp-nosuch/sections",
            "/experiments/exp-nosuch/trials/1",
            "/api/experiments/exp-nosuch",
            "/experiments/exp-nosuch/stream",
        ):
            reply = await served.get(path)
            assert reply.status == 404, (path, reply.status)
            assert "exp-nosuch" in reply.text, path
        page = await served.get("/experiments/exp-nosuch")
        assert "<h1>Cannot show this page</h1>" in page.text
        assert page.headers["Content-Type"].startswith("text/html")
        # Asking does not break the others.
        html(await served.get(f"/experiments/{golden_ids()['asha.v1.jsonl']}"))
        assert (await served.get("/no/such/page")).status == 404


@pytest.mark.parametrize(
    "bad",
    [
        "..",
        "%2E%2E",
        ".",
        "..%2F..%2Foutside%2Fexperiments%2Fexp-secret",
        "..%2Foutside",
        "%2Fetc%2Fpasswd",
        "..%5C..%5Coutside",
        "a%2Fb",
        "%00",
        "exp-secret%00",
        "x" * 500,
        "exp%20secret",
        "-exp",
        "%C3%A9xp",
    ],
)
async def test_an_id_that_is_no_experiment_id_reads_nothing(tmp_path: Path, bad: str) -> None:
    root = tmp_path / "state"
    write_log(root, golden(GOLDEN / "single.v1.jsonl"))
    # A log outside the state directory, which a path could reach.
    secret = golden(GOLDEN / "grid.v1.jsonl")
    write_log(tmp_path / "outside", secret, experiment_id="exp-secret")
    write_log(tmp_path, secret, experiment_id="exp-secret")
    source = RecordingDirSource(root)
    async with serve(source) as served:
        for path in (
            f"/experiments/{bad}",
            f"/experiments/{bad}/sections",
            f"/experiments/{bad}/trials/1",
            f"/experiments/{bad}/trials/1/logs",
            f"/experiments/{bad}/stream",
            f"/api/experiments/{bad}",
            f"/experiments/{bad}/control/kill",
        ):
            reply = await served.get(path)
            assert reply.status in (404, 405), (path, reply.status)
            assert "golden-grid" not in reply.text
            assert 'data-experiment="exp-secret"' not in reply.text
        assert (
            await served.post(
                f"/experiments/{bad}/control/kill", headers={"X-Rung-Token": served.dashboard.token}
            )
        ).status in (403, 404)
    assert all(p.resolve().is_relative_to(root.resolve()) for p in source.paths), source.paths
    assert source.followed == Counter()


@pytest.mark.parametrize("trial", ["abc", "-1", "99999999999", "1.5", "0x1", "%201", "1e3"])
async def test_a_trial_id_that_is_no_number_is_a_404(state: Path, trial: str) -> None:
    experiment_id = golden_ids()["asha.v1.jsonl"]
    async with serve(DirSource(state)) as served:
        for path in (
            f"/experiments/{experiment_id}/trials/{trial}",
            f"/experiments/{experiment_id}/trials/{trial}/logs",
        ):
            reply = await served.get(path)
            assert reply.status == 404, (path, reply.status, reply.text[:200])
            assert "is not a trial id" in reply.text


@pytest.mark.parametrize(
    "suffix", ["trials/%C2%B9", "trials/%E2%91%A0", "trials/1/logs?after=%C2%B2"]
)
async def test_a_trial_id_or_cursor_of_unicode_digits_is_no_server_error(
    state: Path, suffix: str
) -> None:
    experiment_id = golden_ids()["asha.v1.jsonl"]
    async with serve(DirSource(state)) as served:
        reply = await served.get(f"/experiments/{experiment_id}/{suffix}")
        assert reply.status in (200, 404), (reply.status, reply.text[:200])


async def test_an_unknown_trial_is_a_404_that_names_it(state: Path) -> None:
    experiment_id = golden_ids()["asha.v1.jsonl"]
    async with serve(DirSource(state)) as served:
        for trial in ("0", "9999", "999999999"):
            reply = await served.get(f"/experiments/{experiment_id}/trials/{trial}")
            assert reply.status == 404
            assert f"experiment {experiment_id} has no trial {int(trial)}" in reply.text


async def test_the_logs_of_an_unknown_experiment_are_a_404(state: Path) -> None:
    async with serve(DirSource(state)) as served:
        reply = await served.get("/experiments/exp-nosuch/trials/1/logs")
        assert reply.status == 404, (reply.status, reply.text)


@pytest.mark.parametrize("header", ["9" * 5000, "²"])
async def test_a_stream_with_a_senseless_last_event_id_is_no_server_error(
    state: Path, header: str
) -> None:
    experiment_id = golden_ids()["single.v1.jsonl"]
    async with serve(DirSource(state)) as served:
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with served.session.get(
            served.target(f"/experiments/{experiment_id}/stream"),
            headers={"Last-Event-ID": header},
            timeout=timeout,
        ) as response:
            assert response.status in (200, 400), response.status


async def test_a_stream_ignores_a_last_event_id_that_is_no_number(state: Path) -> None:
    lines = golden(GOLDEN / "single.v1.jsonl")
    experiment_id = experiment_of(lines)
    async with serve(DirSource(state)) as served:
        # Not a number: the stream starts at the page's newest record, with nothing to send.
        async with stream(served, experiment_id, headers={"Last-Event-ID": "abc"}) as events:
            with pytest.raises(TimeoutError):
                await events.next(timeout=0.6)
            assert events.retry == 1000
        # A number past the newest: nothing either, until the log gets there.
        async with stream(served, experiment_id, "after=999") as events:
            with pytest.raises(TimeoutError):
                await events.next(timeout=0.6)


async def test_a_corrupt_log_is_an_error_page_and_the_others_still_load(state: Path) -> None:
    lines = golden(GOLDEN / "asha.v1.jsonl")
    broken = write_log(
        state, [lines[0], "{garbage, not a record", *lines[2:]], experiment_id="exp-broken"
    )
    async with serve(DirSource(state), context_root=state / "contexts") as served:
        for path in (f"/experiments/{broken}", f"/experiments/{broken}/sections"):
            reply = await served.get(path)
            assert 500 <= reply.status < 600, reply.status
            assert reply.status != 500, "an unhandled error"
            assert broken in reply.text
        assert "Cannot show this page" in (await served.get(f"/experiments/{broken}")).text
        for experiment_id in golden_ids().values():
            html(await served.get(f"/experiments/{experiment_id}"))
        listing = html(await served.get("/"))
        assert broken in EXPERIMENT_ROW.findall(listing)
        assert set(golden_ids().values()) <= set(EXPERIMENT_ROW.findall(listing))
        summaries = {
            e["experiment_id"]: e
            for e in (await served.get("/api/experiments")).json()["experiments"]
        }
        assert broken in summaries["exp-broken"]["error"]
        assert all("error" not in summaries[i] for i in golden_ids().values())
        # Asked again, it is read again (and is still broken), without hanging.
        assert (await served.get(f"/experiments/{broken}")).status == 503


async def test_a_log_with_a_first_line_that_is_no_created_record_is_left_out(state: Path) -> None:
    lines = golden(GOLDEN / "single.v1.jsonl")
    write_log(state, lines, experiment_id="exp-headless")
    log = state / "experiments" / "exp-headless" / "events.jsonl"
    log.write_text("".join(f"{line}\n" for line in lines[1:]))
    async with serve(DirSource(state)) as served:
        listing = html(await served.get("/"))
        assert "exp-headless" not in EXPERIMENT_ROW.findall(listing)
        reply = await served.get("/experiments/exp-headless")
        assert reply.status == 503
        assert "exp-headless" in reply.text
        assert "Cannot show this page" in reply.text


# ====================================================================== 3. safety
async def test_a_request_that_names_another_host_is_refused(state: Path) -> None:
    experiment_id = golden_ids()["single.v1.jsonl"]
    async with serve(DirSource(state)) as served:
        for path in ("/", f"/experiments/{experiment_id}", "/api/experiments"):
            for host in ("evil.example", f"evil.example:{served.port}", "127.0.0.1", "127.0.0.2:1"):
                reply = await served.get(path, headers={"Host": host})
                assert reply.status == 421, (path, host, reply.status)
                assert "rung-token" not in reply.text
                assert served.dashboard.token not in reply.text
        for host in (f"127.0.0.1:{served.port}", f"localhost:{served.port}"):
            html(await served.get("/", headers={"Host": host}))
        reply = await served.post(
            f"/experiments/{experiment_id}/control/kill",
            headers={"Host": "evil.example", "X-Rung-Token": served.dashboard.token},
        )
        assert reply.status == 421


async def test_responses_carry_the_security_headers(state: Path) -> None:
    experiment_id = golden_ids()["asha.v1.jsonl"]
    async with serve(DirSource(state)) as served:
        for path in (
            "/",
            f"/experiments/{experiment_id}",
            f"/experiments/{experiment_id}/sections",
            f"/experiments/{experiment_id}/trials/1",
            f"/experiments/{experiment_id}/trials/1/logs",
            "/api/experiments",
            "/static/dashboard.js",
            "/experiments/exp-nosuch",
            "/experiments/..%2Fx",
            "/nothing/here",
        ):
            reply = await served.get(path)
            csp = reply.headers.get("Content-Security-Policy", "")
            assert "script-src 'self'" in csp, (path, reply.headers)
            assert "default-src 'none'" in csp
            assert "frame-ancestors 'none'" in csp
            for name, value in HEADERS.items():
                assert reply.headers.get(name) == value, (path, name)
        refused = await served.post(f"/experiments/{experiment_id}/control/kill")
        assert refused.status == 403
        assert "script-src 'self'" in refused.headers["Content-Security-Policy"]


@pytest.mark.parametrize("kind", ["stream", "wrong host"])
async def test_streams_and_refusals_carry_the_security_headers(state: Path, kind: str) -> None:
    experiment_id = golden_ids()["single.v1.jsonl"]
    headers: Mapping[str, str]
    async with serve(DirSource(state)) as served:
        if kind == "stream":
            async with stream(served, experiment_id, "after=0") as events:
                headers = events.response.headers
        else:
            headers = (await served.get("/", headers={"Host": "evil.example"})).headers
        assert headers.get("X-Content-Type-Options") == "nosniff", headers
        assert "Content-Security-Policy" in headers


async def test_a_read_only_dashboard_refuses_controls_and_shows_none(state: Path) -> None:
    experiment_id = golden_ids()["asha.v1.jsonl"]
    # Even an experiment that has not ended: a state directory shows no controls.
    half = synthetic(12)[: len(synthetic(12)) // 2]
    running = write_log(state, half, experiment_id="exp-running")
    async with serve(DirSource(state), context_root=state / "contexts") as served:
        token = await served.token()
        assert token == served.dashboard.token
        for eid in (experiment_id, running):
            page = html(await served.get(f"/experiments/{eid}"))
            assert "· read-only" in page
            assert controls(page) == []
            assert 'class="control' not in page
            sections = (await served.get(f"/experiments/{eid}/sections")).json()["sections"]
            assert controls(sections["head"]) == []
            for trial in (1, 2):
                assert controls(html(await served.get(f"/experiments/{eid}/trials/{trial}"))) == []
            for path in (f"/experiments/{eid}/control/kill", f"/experiments/{eid}/trials/1/kill"):
                for headers in ({"X-Rung-Token": token}, {}):
                    reply = await served.post(path, headers=headers)
                    assert reply.status == 403, (path, reply.status)
                    assert "read-only" in reply.text
        assert (await served.get(f"/experiments/{experiment_id}/control/kill")).status == 405


def half_of(trials: int) -> list[str]:
    lines = synthetic(trials)
    return list(lines[: len(lines) // 2])


async def test_controls_need_the_token_and_no_foreign_origin(tmp_path: Path) -> None:
    running = write_log(tmp_path, half_of(12))
    fake = FakeSource(DirSource(tmp_path))
    async with serve(fake) as served:
        token = await served.token()
        assert token == served.dashboard.token
        kill = f"/experiments/{running}/control/kill"
        for headers in (
            {},
            {"X-Rung-Token": ""},
            {"X-Rung-Token": token[:-1]},
            {"X-Rung-Token": token + "x"},
            {"X-Rung-Token": token.upper() if token.upper() != token else token.lower()},
            {"X-Rung-Token": token, "Origin": "http://evil.example"},
            {"X-Rung-Token": token, "Origin": f"http://evil.example:{served.port}"},
            {"X-Rung-Token": token, "Origin": "null"},
            {"X-Rung-Token": token, "Origin": f"https://127.0.0.1:{served.port}"},
            {"X-Rung-Token": token, "Origin": f"http://127.0.0.1:{served.port + 1}"},
        ):
            reply = await served.post(kill, headers=headers)
            assert reply.status == 403, (headers, reply.status)
            reply = await served.post(f"/experiments/{running}/trials/1/kill", headers=headers)
            assert reply.status == 403, (headers, reply.status)
        assert fake.calls == []
        # The token in a query string or a cookie is no token.
        assert (await served.post(f"{kill}?token={token}")).status == 403
        assert (await served.post(kill, cookies={"X-Rung-Token": token})).status == 403
        assert fake.calls == []

        reply = await served.post(kill, headers={"X-Rung-Token": token})
        assert reply.status == 200, reply.text
        assert reply.json() == {"state": "PAUSED"}
        assert fake.calls == [("control", running, "kill")]

        # The dashboard's own origin, by either of its names, is fine.
        for origin in (f"http://127.0.0.1:{served.port}", f"http://localhost:{served.port}"):
            reply = await served.post(
                f"/experiments/{running}/control/pause",
                headers={"X-Rung-Token": token, "Origin": origin},
            )
            assert reply.status == 200, (origin, reply.text)
        reply = await served.post(
            f"/experiments/{running}/trials/3/kill", headers={"X-Rung-Token": token}
        )
        assert reply.status == 200
        assert reply.json() == {"state": "CANCELED"}
        assert fake.calls[1:] == [
            ("control", running, "pause"),
            ("control", running, "pause"),
            ("kill_trial", running, 3),
        ]


async def test_every_control_reaches_the_source_and_unknown_ones_are_404(tmp_path: Path) -> None:
    running = write_log(tmp_path, half_of(12))
    fake = FakeSource(DirSource(tmp_path), state="ACTIVE")
    async with serve(fake) as served:
        token = {"X-Rung-Token": served.dashboard.token}
        for action in ("pause", "activate", "cancel", "kill"):
            reply = await served.post(f"/experiments/{running}/control/{action}", headers=token)
            assert reply.json() == {"state": "ACTIVE"}
        assert [call[2] for call in fake.calls] == ["pause", "activate", "cancel", "kill"]
        fake.calls.clear()
        for action in ("explode", "KILL", "kill%00", "pause;kill", "x" * 300):
            reply = await served.post(f"/experiments/{running}/control/{action}", headers=token)
            assert reply.status == 404, (action, reply.status)
            assert "no control" in reply.text
        for trial in ("abc", "-1", "99999999999"):
            reply = await served.post(f"/experiments/{running}/trials/{trial}/kill", headers=token)
            assert reply.status == 404
        assert fake.calls == []

        # What the searcher says: refused or not allowed is 403, a lost searcher 502.
        fake.fail = PermissionError("you may not")
        reply = await served.post(f"/experiments/{running}/control/kill", headers=token)
        assert (reply.status, reply.json()) == (403, {"error": "you may not"})


async def test_a_control_of_an_experiment_the_searcher_does_not_have_is_a_404(
    tmp_path: Path,
) -> None:
    write_log(tmp_path, half_of(12))
    fake = FakeSource(DirSource(tmp_path), fail=NotFoundError("no experiment exp-gone"))
    async with serve(fake) as served:
        reply = await served.post(
            "/experiments/exp-gone/control/kill", headers={"X-Rung-Token": served.dashboard.token}
        )
        assert reply.status == 404, (reply.status, reply.text)


async def test_controls_show_on_a_writable_dashboard_while_the_experiment_runs(
    tmp_path: Path,
) -> None:
    half = half_of(12)
    running = write_log(tmp_path, half)
    ended = write_log(tmp_path, golden(GOLDEN / "asha.v1.jsonl"))
    view = folded(half)
    assert not view.ended()
    live = sorted(t.trial_id for t in view.trials.values() if t.state in ("RUNNING", "PAUSED"))
    assert live
    fake = FakeSource(DirSource(tmp_path))
    async with serve(fake) as served:
        page = html(await served.get(f"/experiments/{running}"))
        assert "read-only" not in page
        assert controls(page) == ["pause", "activate", "cancel", "kill"]
        for action in ("pause", "activate", "cancel", "kill"):
            assert f'data-url="/experiments/{running}/control/{action}"' in page
        head = (await served.get(f"/experiments/{running}/sections")).json()["sections"]["head"]
        assert controls(head) == ["pause", "activate", "cancel", "kill"]
        for trial_id in live:
            trial = html(await served.get(f"/experiments/{running}/trials/{trial_id}"))
            assert controls(trial) == ["kill"]
            assert f'data-url="/experiments/{running}/trials/{trial_id}/kill"' in trial

        # An ended experiment has nothing to control: no buttons, even when writable.
        page = html(await served.get(f"/experiments/{ended}"))
        assert controls(page) == []
        head = (await served.get(f"/experiments/{ended}/sections")).json()["sections"]["head"]
        assert controls(head) == []
        assert controls(html(await served.get(f"/experiments/{ended}/trials/1"))) == []
        # Its controls are still passed on: the searcher is the one that says no.
        reply = await served.post(
            f"/experiments/{ended}/control/kill", headers={"X-Rung-Token": served.dashboard.token}
        )
        assert reply.status == 200
        assert fake.calls == [("control", ended, "kill")]


async def test_a_read_only_dashboard_on_a_writable_source_refuses_and_hides_controls(
    tmp_path: Path,
) -> None:
    running = write_log(tmp_path, half_of(12))
    fake = FakeSource(DirSource(tmp_path))
    async with serve(fake, read_only=True) as served:
        assert served.dashboard.read_only
        page = html(await served.get(f"/experiments/{running}"))
        assert controls(page) == []
        assert "· read-only" in page
        assert controls(html(await served.get(f"/experiments/{running}/trials/1"))) == []
        token = {"X-Rung-Token": served.dashboard.token}
        for path in (
            f"/experiments/{running}/control/pause",
            f"/experiments/{running}/trials/1/kill",
        ):
            reply = await served.post(path, headers=token)
            assert reply.status == 403
            assert "read-only" in reply.text
        assert fake.calls == []


async def test_a_wildcard_bind_needs_the_names_it_answers_to(state: Path) -> None:
    """On 0.0.0.0, a page whose own name was pointed at this machine must not read the
    dashboard (DNS rebinding): it answers only to the names --allow-host gives."""
    refused = Dashboard(DirSource(state), host="0.0.0.0", port=0)  # noqa: S104
    with pytest.raises(DashboardError, match="--allow-host"):
        await refused.start()
    source = FakeSource(DirSource(state))
    running = write_log(state, synthetic(60)[:200], experiment_id="exp-running")
    options = {"host": "0.0.0.0", "allowed_hosts": ["dash.example"]}  # noqa: S104
    async with serve(source, **options) as served:
        page = await served.get(f"/experiments/{running}", headers={"Host": "127.0.0.1:1"})
        assert page.status == 421
        evil = {"Host": f"evil.example:{served.port}"}
        assert (await served.get(f"/experiments/{running}", headers=evil)).status == 421
        named = {"Host": f"dash.example:{served.port}"}
        page = await served.get(f"/experiments/{running}", headers=named)
        assert page.status == 200
        token = re.search(r'<meta name="rung-token" content="([^"]+)">', page.text)
        assert token is not None
        forged = await served.post(
            f"/experiments/{running}/control/kill",
            headers={
                **named,
                "X-Rung-Token": token.group(1),
                "Origin": f"http://evil.example:{served.port}",
            },
        )
        assert forged.status == 403
        assert source.calls == []
        sent = await served.post(
            f"/experiments/{running}/control/kill",
            headers={
                **named,
                "X-Rung-Token": token.group(1),
                "Origin": f"http://dash.example:{served.port}",
            },
        )
        assert sent.status == 200
        assert source.calls == [("control", running, "kill")]


async def test_sections_are_rendered_off_the_event_loop_once_per_record(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rung.dashboard import server

    threads: list[str] = []
    render = server.experiment_sections  # type: ignore[attr-defined]

    def recording(view: ExperimentView, options: Any) -> dict[str, str]:
        threads.append(threading.current_thread().name)
        return render(view, options)

    monkeypatch.setattr(server, "experiment_sections", recording)
    experiment_id = golden_ids()["asha.v1.jsonl"]
    async with serve(DirSource(state), context_root=state / "contexts") as served:
        replies = await asyncio.gather(
            *(served.get(f"/experiments/{experiment_id}/sections") for _ in range(8))
        )
        assert {reply.status for reply in replies} == {200}
        assert len({reply.text for reply in replies}) == 1
    assert len(threads) == 1
    assert threads[0] != threading.main_thread().name


async def test_a_page_that_goes_away_leaves_its_rendering_to_the_others(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancelled request (the browser aborted its fetch) neither fails the requests
    that share its rendering nor lets the view change under the rendering's thread."""
    from rung.dashboard import server
    from rung.dashboard.pages import Options

    started, release = threading.Event(), threading.Event()
    calls: list[int] = []
    render = server.experiment_sections  # type: ignore[attr-defined]

    def slow(view: ExperimentView, options: Any) -> dict[str, str]:
        calls.append(view.seq)
        started.set()
        release.wait(30)
        return render(view, options)

    monkeypatch.setattr(server, "experiment_sections", slow)
    experiment_id = golden_ids()["asha.v1.jsonl"]
    async with serve(DirSource(state), context_root=state / "contexts") as served:
        followed = await served.dashboard.hub.follow(experiment_id)
        first = asyncio.create_task(served.dashboard._rendered(followed, Options()))
        await asyncio.to_thread(started.wait, 30)
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        assert followed.lock.locked(), "the view must stay still while the thread reads it"
        second = asyncio.create_task(served.dashboard._rendered(followed, Options(sort="state")))
        await asyncio.sleep(0)
        release.set()
        seq, sections = await second
        assert seq == followed.view.seq if followed.view else False
        assert set(sections) >= {"curves", "rungs"}
        assert len(calls) == 1  # one rendering, shared (the table's sort is not its key)
        assert not followed.lock.locked()


async def test_the_access_key_cookie_is_the_dashboards_own(state: Path) -> None:
    async with (
        serve(DirSource(state), key="k-one") as one,
        serve(DirSource(state), key="k-two") as two,
    ):
        assert (await one.get("/")).status == 403
        opened = await one.get("/?key=k-one")
        assert opened.status == 200
        assert f"rung_dashboard_key_{one.port}=k-one" in opened.headers["Set-Cookie"]
        again = await two.get("/?key=k-two")
        assert f"rung_dashboard_key_{two.port}=k-two" in again.headers["Set-Cookie"]
        # Text that is not ASCII is a wrong key, not a server error; a planted cookie of
        # it does not lock the right key out.
        assert (await one.get("/?key=%C3%A9")).status == 403
        planted = {"Cookie": f"rung_dashboard_key_{one.port}=%C3%A9"}
        assert (await one.get("/?key=k-one", headers=planted)).status == 200
        assert (await one.get("/", headers=planted)).status == 403


async def test_a_proxy_in_front_is_one_of_the_allowed_hosts(state: Path) -> None:
    source = FakeSource(DirSource(state))
    running = write_log(state, synthetic(60)[:200], experiment_id="exp-running")
    async with serve(source, allowed_hosts=["dash.example"]) as served:
        proxied = {"Host": "dash.example"}  # port 80 or 443: no port in Host
        page = await served.get(f"/experiments/{running}", headers=proxied)
        assert page.status == 200
        token = re.search(r'<meta name="rung-token" content="([^"]+)">', page.text)
        assert token is not None
        for origin, status in (
            ("https://dash.example", 200),
            ("http://dash.example", 200),
            (f"https://127.0.0.1:{served.port}", 403),
            ("https://evil.example", 403),
        ):
            reply = await served.post(
                f"/experiments/{running}/control/pause",
                headers={**proxied, "X-Rung-Token": token.group(1), "Origin": origin},
            )
            assert reply.status == status, origin


async def test_a_page_does_not_wait_behind_the_lists_loads(state: Path) -> None:
    """The list starts loads in the background, two at a time; opening one that waits
    its turn loads it at once."""

    class Slow(DirSource):
        async def newest(self, experiment_id: str) -> int:
            if experiment_id.startswith("exp-slow"):
                await asyncio.sleep(3600)  # a long history, loading
            return await super().newest(experiment_id)

    lines = golden(GOLDEN / "asha.v1.jsonl")
    for name in ("exp-slow1", "exp-slow2", "exp-clicked"):
        write_log(state, lines, experiment_id=name)
    hub = Hub(Slow(state), context_root=state / "contexts", load_timeout=30)
    try:
        for name in ("exp-slow1", "exp-slow2", "exp-clicked"):
            hub.start(name, background=True)
        await asyncio.sleep(0)
        followed = await hub.follow("exp-clicked")
        assert followed.view is not None
        assert followed.view.seq == len(lines)
    finally:
        await hub.close()


async def test_a_cookie_that_is_no_utf8_is_a_wrong_key(state: Path) -> None:
    async with serve(DirSource(state), key="k-one") as served:
        for cookie, status in ((b"\xff\xfe", 403), (b"k-one", 200)):
            reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
            writer.write(
                b"GET /api/experiments HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                b"Cookie: rung_dashboard_key_%d=%s\r\nConnection: close\r\n\r\n"
                % (served.port, served.port, cookie)
            )
            await writer.drain()
            head = await reader.readline()
            writer.close()
            await writer.wait_closed()
            assert head.startswith(b"HTTP/1.1 %d" % status), (cookie, head)


# ====================================================================== 4. live
async def test_a_stream_follows_the_log_with_no_gap_or_repeat_across_a_reconnect(
    tmp_path: Path,
) -> None:
    lines = synthetic(60)
    experiment_id = experiment_of(lines)
    last = len(lines)
    start = last // 4
    after = start - 40
    write_log(tmp_path, lines[:start])
    reference = folded(lines, contexts=None)
    expected = [e["seq"] for e in reference.activity if e["seq"] > after]
    async with serve(DirSource(tmp_path)) as served:
        sections = (await served.get(f"/experiments/{experiment_id}/sections")).json()
        assert sections["seq"] == start
        marks_before = sections["sections"]["curves"].count(CURVE_MARK)
        assert marks_before == taken(lines[:start])

        events: list[Event] = []
        async with stream(served, experiment_id, f"after={after}") as live:
            events += await live.until(start)
            assert live.retry == 1000
            # Append the rest in chunks, one ending in the middle of a line.
            cut = (2 * last) // 3
            cuts = [start, last // 2, cut, last]
            for index, (low, high) in enumerate(itertools.pairwise(cuts)):
                text = "".join(f"{line}\n" for line in lines[low:high])
                if index == 1:
                    text += lines[high][:50]
                elif index == 2:
                    text = (
                        lines[low][50:]
                        + "\n"
                        + "".join(f"{line}\n" for line in lines[low + 1 : high])
                    )
                appended = time.monotonic()
                append(tmp_path, experiment_id, text)
                events += await live.until(high)
                assert time.monotonic() - appended < LIVE_S
            seqs = check_contiguous(events, after)
            assert events[-1].data["to"] == last
            assert events[-1].data["state"] == "COMPLETED"
            assert seqs == expected
            # Nothing more comes: no repeat of what was sent.
            with pytest.raises(TimeoutError):
                await live.next(timeout=0.6)

        sections = (await served.get(f"/experiments/{experiment_id}/sections")).json()
        assert sections["seq"] == last
        marks_after = sections["sections"]["curves"].count(CURVE_MARK)
        assert marks_after == taken(lines) > marks_before

        # Reconnect from an event in the middle: the rest, once.
        middle = events[len(events) // 2]
        assert middle.id is not None
        assert after < middle.id < last
        async with stream(
            served, experiment_id, "after=0", headers={"Last-Event-ID": str(middle.id)}
        ) as again:
            resumed = await again.until(last)
        assert resumed[0].data["from"] == middle.id
        assert check_contiguous(resumed, middle.id) == [s for s in seqs if s > middle.id]
        entries = [e for event in events for e in event.data["entries"] if e["seq"] > middle.id]
        assert [e for event in resumed for e in event.data["entries"]] == entries


async def test_two_pages_streaming_one_experiment_get_the_same_events(tmp_path: Path) -> None:
    lines = synthetic(12)
    experiment_id = experiment_of(lines)
    start = len(lines) // 3
    write_log(tmp_path, lines[:start])
    async with (
        serve(DirSource(tmp_path)) as served,
        stream(served, experiment_id, f"after={start}") as one,
        stream(served, experiment_id, f"after={start}") as two,
    ):
        append(tmp_path, experiment_id, "".join(f"{line}\n" for line in lines[start:]))
        first_events, second_events = await asyncio.gather(
            one.until(len(lines)), two.until(len(lines))
        )
        assert check_contiguous(first_events, start) == check_contiguous(second_events, start)
        assert len(served.dashboard.hub._followed) == 1


def sent(received: bytes) -> list[dict[str, Any]]:
    """The whole events in the bytes of a stream, but its end."""
    found = re.findall(rb"^data: (.*)\n\n", received, re.MULTILINE)
    return [json.loads(data) for data in found if data != b"{}"]


async def test_a_slow_reader_misses_nothing(tmp_path: Path) -> None:
    lines = synthetic(300)
    experiment_id = experiment_of(lines)
    start, last = 1000, len(lines)
    write_log(tmp_path, lines[:start])
    loop = asyncio.get_running_loop()
    async with serve(DirSource(tmp_path)) as served:
        html(await served.get(f"/experiments/{experiment_id}"))
        runner = served.dashboard._runner
        assert runner is not None
        assert runner.server is not None
        server = runner.server
        with socket.socket() as sock:
            # A reader on a slow link: small buffers, and it does not read for a while.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            known = set(server.connections)
            await loop.sock_connect(sock, ("127.0.0.1", served.port))
            await eventually(lambda: bool(set(server.connections) - known), what="the connection")
            (handler,) = set(server.connections) - known
            transport = handler.transport
            assert transport is not None
            transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            request = (
                f"GET /experiments/{experiment_id}/stream?after=1 HTTP/1.0\r\n"
                f"Host: 127.0.0.1:{served.port}\r\n\r\n"
            )
            await loop.sock_sendall(sock, request.encode())
            # The first event (to record `start`) waits on the slow reader...
            await eventually(
                lambda: transport.get_write_buffer_size() > 65536, what="a full buffer"
            )
            # ...while the rest of the log comes in.
            append(tmp_path, experiment_id, "".join(f"{line}\n" for line in lines[start:]))
            followed = served.dashboard.hub._followed[experiment_id]
            await eventually(
                lambda: followed.view is not None and followed.view.seq == last, what="the fold"
            )
            received = b""
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(3):
                    while not any(e["to"] == last for e in sent(received)):
                        chunk = await loop.sock_recv(sock, 1 << 16)
                        if not chunk:
                            break
                        received += chunk
    events = [Event(None, "message", data) for data in sent(received)]
    assert events
    assert events[0].data["from"] == 1
    tos = [event.data["to"] for event in events]
    assert tos[-1] == last, tos
    start_at = 1
    for event in events:
        assert event.data["from"] == start_at, tos
        start_at = event.data["to"]


# ====================================================================== 5. robustness
async def test_concurrent_page_loads_fold_the_experiment_once(tmp_path: Path) -> None:
    lines = synthetic(300)
    experiment_id = write_log(tmp_path, lines)
    source = RecordingDirSource(tmp_path)
    async with serve(source) as served:
        pages = await asyncio.gather(
            *(served.get(f"/experiments/{experiment_id}") for _ in range(20)),
            *(served.get(f"/experiments/{experiment_id}/sections") for _ in range(5)),
            served.get("/"),
        )
        for page in pages[:20]:
            text = html(page)
            assert f'data-seq="{len(lines)}"' in text
            assert "300 trials" in text
        for reply in pages[20:25]:
            assert reply.json()["seq"] == len(lines)
        assert experiment_id in html(pages[25])
        assert source.followed == Counter({experiment_id: 1})
        assert list(served.dashboard.hub._followed) == [experiment_id]


async def test_streams_opened_and_closed_leave_no_task_behind(state: Path) -> None:
    experiment_id = golden_ids()["asha.v1.jsonl"]
    path = f"/experiments/{experiment_id}/stream?after=0"
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    before = asyncio.all_tasks()
    async with aiohttp.ClientSession() as session:
        responses: list[aiohttp.ClientResponse] = []
        try:
            async with Dashboard(
                DirSource(state), port=0, context_root=state / "contexts"
            ) as dashboard:
                served = Served(dashboard, session)
                for index in range(30):
                    response = await session.get(served.target(path), timeout=timeout)
                    responses.append(response)
                    event = await EventStream(response).next()
                    assert event.data["to"] == len(golden(GOLDEN / "asha.v1.jsonl"))
                    if index % 3:
                        response.close()
                assert len(dashboard._streams) >= 10
                # A page still loads with the streams open.
                html(await served.get(f"/experiments/{experiment_id}"))
            # The dashboard stopped with ten streams still open.
            left = {t for t in asyncio.all_tasks() - before if not t.done()}
            assert left == set(), [t.get_name() for t in left]
            assert dashboard._streams == set()
            for response in responses[::3]:
                with contextlib.suppress(aiohttp.ClientPayloadError):
                    assert b"id: " not in await response.content.read()
        finally:
            for response in responses:
                response.close()


@pytest.mark.parametrize("kind", ["ended", "live"])
async def test_a_stream_the_page_closed_ends_soon(tmp_path: Path, kind: str) -> None:
    lines = synthetic(12)
    if kind == "ended":
        experiment_id = write_log(tmp_path, lines)
        source: Source = FakeSource(DirSource(tmp_path), ends=True)
    else:
        experiment_id = write_log(tmp_path, lines[: len(lines) // 2])
        source = DirSource(tmp_path)
    async with serve(source) as served:
        async with stream(served, experiment_id, "after=0") as events:
            assert (await events.next()).name == "message"
            if kind == "ended":
                assert (await events.next()).name == "end"
            assert len(served.dashboard._streams) == 1
        await eventually(lambda: not served.dashboard._streams, timeout=3, what="the stream's end")


async def test_a_stream_open_when_the_dashboard_stops_is_ended_and_nothing_is_left(
    tmp_path: Path,
) -> None:
    lines = synthetic(12)
    experiment_id = write_log(tmp_path, lines[: len(lines) // 2])
    before = asyncio.all_tasks()
    dashboard = Dashboard(DirSource(tmp_path), port=0)
    async with aiohttp.ClientSession() as session, dashboard:
        served = Served(dashboard, session)
        async with stream(served, experiment_id, "after=1") as events:
            await events.next()
            await dashboard.stop()
            with pytest.raises((EOFError, aiohttp.ClientPayloadError, TimeoutError)):
                await events.next(timeout=3)
    left = {t for t in asyncio.all_tasks() - before if not t.done()}
    assert left == set(), [t.get_name() for t in left]


# Both of these come from Hub._evict (hub.py): it drops the least recently asked experiment
# past `limit` (32) whatever it is doing, and cancels its task.
async def test_the_list_shows_every_experiment_of_a_big_state_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("rung.dashboard.server._LIST_WAIT_S", 1.0)
    lines = golden(GOLDEN / "single.v1.jsonl")
    ids = [write_log(tmp_path, lines, experiment_id=f"exp-copy{i:02d}") for i in range(36)]
    async with serve(DirSource(tmp_path)) as served:
        listing = (await served.get("/api/experiments")).json()["experiments"]
        assert sorted(e["experiment_id"] for e in listing) == ids
        loading = [e["experiment_id"] for e in listing if "error" in e]
        assert loading == []


async def test_a_streamed_experiment_is_not_dropped_when_others_are_viewed(
    tmp_path: Path,
) -> None:
    lines = synthetic(12)
    experiment_id = experiment_of(lines)
    start = len(lines) // 2
    write_log(tmp_path, lines[:start])
    single = golden(GOLDEN / "single.v1.jsonl")
    others = [write_log(tmp_path, single, experiment_id=f"exp-other{i:02d}") for i in range(33)]
    async with (
        serve(DirSource(tmp_path)) as served,
        stream(served, experiment_id, f"after={start}") as live,
    ):
        for other in others:
            html(await served.get(f"/experiments/{other}"))
        append(tmp_path, experiment_id, "".join(f"{line}\n" for line in lines[start:]))
        events = await live.until(len(lines))
        check_contiguous(events, start)


async def test_an_experiment_viewed_again_after_eviction_is_read_again(tmp_path: Path) -> None:
    single = golden(GOLDEN / "single.v1.jsonl")
    ids = [write_log(tmp_path, single, experiment_id=f"exp-copy{i:02d}") for i in range(4)]
    source = RecordingDirSource(tmp_path)
    async with serve(source) as served:
        served.dashboard.hub.limit = 2
        for experiment_id in [*ids, ids[0]]:
            page = html(await served.get(f"/experiments/{experiment_id}"))
            assert f'data-seq="{len(single)}"' in page
        assert len(served.dashboard.hub._followed) == 2
        assert source.followed[ids[0]] == 2


# ====================================================================== the command
def rung_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNG_BROKER")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def test_rung_dashboard_serves_a_state_directory_and_stops_on_sigterm(state: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rung",
        "dashboard",
        "--state-dir",
        str(state),
        "--port",
        "0",
        cwd=REPO,
        env=rung_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(30):
            line = (await process.stdout.readline()).decode()
        match = re.fullmatch(r"dashboard: (http://127\.0\.0\.1:(\d+)/)\?key=([\w-]+)\n", line)
        assert match is not None, line
        url, key = match.group(1), match.group(3)
        # A browser keeps cookies of 127.0.0.1; aiohttp's jar only when told to.
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            # Without its access key, nothing: another user of this machine is refused.
            async with session.get(url) as response:
                assert response.status == 403
                assert "access key" in await response.text()
            async with session.get(f"{url}?key=wrong{key}") as response:
                assert response.status == 403
            # With it, the page, and a cookie that carries the key from there on.
            async with session.get(f"{url}?key={key}") as response:
                assert response.status == 200
                page = await response.text()
                cookie = response.cookies[f"rung_dashboard_key_{match.group(2)}"]
                assert cookie.value == key
                assert cookie["httponly"]
                assert cookie["samesite"] == "Strict"
            assert sorted(EXPERIMENT_ROW.findall(page)) == sorted(
                [*golden_ids().values(), experiment_of(synthetic(12))]
            )
            assert "read-only" in page
            failed = golden_ids()["failed.v1.jsonl"]
            async with session.get(f"{url}experiments/{failed}") as response:
                assert response.status == 200
                assert controls(await response.text()) == []
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            rest, _ = await process.communicate()
        assert process.returncode == 0
        assert rest == b""
    finally:
        if process.returncode is None:
            process.kill()
            await process.communicate()


def rung_dashboard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rung", "dashboard", "--port", "0", *args],
        cwd=REPO,
        env=rung_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_rung_dashboard_needs_a_broker_or_a_state_directory() -> None:
    result = rung_dashboard()
    assert result.returncode == 2, result
    assert "--broker" in result.stderr
    assert "--state-dir" in result.stderr
    assert result.stdout == ""


def test_rung_dashboard_needs_a_state_directory_with_experiments(tmp_path: Path) -> None:
    result = rung_dashboard("--state-dir", str(tmp_path))
    assert result.returncode == 2, result
    assert f"--state-dir {tmp_path}" in result.stderr
    assert "experiments/" in result.stderr
    result = rung_dashboard("--state-dir", str(tmp_path / "missing"))
    assert result.returncode == 2, result


def test_rung_dashboard_says_when_its_port_is_taken(state: Path) -> None:
    with socket.socket() as taken_socket:
        taken_socket.bind(("127.0.0.1", 0))
        taken_socket.listen()
        port = taken_socket.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "rung",
                "dashboard",
                "--state-dir",
                str(state),
                "--port",
                str(port),
            ],
            cwd=REPO,
            env=rung_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2, result
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "--port" in result.stderr
