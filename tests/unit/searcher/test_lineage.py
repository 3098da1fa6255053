"""Lineage (issue 21): `rung replay` explains each clone and prints the notes of each
input, and `rung experiment describe` gives each trial its parent, from the event log."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from rich.console import Console

import rung.cli.experiments as cli_experiments
from rung.broker.schemas import CheckpointSaved, ExperimentSummary
from rung.cli.render import print_summary, summary_json
from rung.cli.replay import run_replay
from rung.client import Client, Clone, Experiment, NotFoundError, lineage_of
from rung.searcher.eventlog import InputRecord, Record, replay
from rung.searcher.eventlog.explain import entry, print_entry
from rung.searcher.ops import Create
from rung.searcher.service.summary import summarise
from rung.searcher.trials import ExperimentRun, Step

from .pbt_log import EXP, checkpoint, pbt_log

WAITING = "round 0: waiting for trial 4's checkpoint at length 10 (rank 1), to copy it"
LAST = "round 2 was the last: the population is closed"


def entries(records: Sequence[Record], *, show_all: bool = False) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def explain(record: InputRecord, step: Step, run: ExperimentRun) -> None:
        item = entry(record, step, run, show_all=show_all)
        if item is not None:
            out.append(item)

    replay(records, on_step=explain)
    return out


def clone_of(records: Sequence[Record], trial_id: int, run: ExperimentRun) -> Clone:
    request_id = run.by_id[trial_id].request_id
    for record in records:
        for op in getattr(record, "ops", []):
            if isinstance(op, Create) and op.request_id == request_id and op.clone is not None:
                return op.clone
    raise AssertionError(f"trial {trial_id} is no clone")


# ---------------------------------------------------------------------- rung replay
def test_replay_explains_each_clone_its_source_and_the_trial_it_replaces() -> None:
    run, records = pbt_log()
    items = entries(records)
    made = next(i for i in items if any(d.startswith("trial 5 created") for d in i["decisions"]))
    lines = made["decisions"]
    five = clone_of(records, 5, run)
    lr = next(c for c in five.changes if c.name == "lr")
    # The clone's own line, in the searcher's words, right after its creation.
    expected = (
        "trial 5 continues from trial 4's checkpoint at length 10 (rank 1 of 4); replaces "
        f"trial 1 (bottom 25%): lr {lr.old:.4g} -> {lr.new:.4g} (x{lr.factor:g})"
    )
    clone_line = lines[lines.index(next(d for d in lines if d.startswith("trial 5 created"))) + 1]
    assert clone_line.startswith(expected), clone_line
    assert lr.factor in (0.8, 1.2)
    # The trial it replaces is closed, and the line says why and by which trial.
    assert "trial 1 closed: replaced by trial 5 (bottom 25%)" in lines
    assert lines.index("trial 1 closed: replaced by trial 5 (bottom 25%)") < lines.index(clone_line)
    # The next round clones the clone: the line goes on.
    later = [d for i in items for d in i["decisions"] if d.startswith("trial 6 continues")]
    assert len(later) == 1
    assert later[0].startswith(
        "trial 6 continues from trial 5's checkpoint at length 20 (rank 1 of 4); replaces "
        "trial 2 (bottom 25%): lr "
    )
    # Trials closed at the end of the search are not "replaced".
    closes = [d for i in items for d in i["decisions"] if d.startswith("trial 6 closed")]
    assert closes == ["trial 6 closed"]


def test_replay_prints_the_notes_of_each_input_before_its_decisions() -> None:
    _, records = pbt_log()
    items = entries(records)
    noted = {i["seq"]: i["notes"] for i in items if i["notes"]}
    assert list(noted.values()) == [[WAITING], [LAST]]
    # Every entry has its notes, as logged (none for most).
    assert all(isinstance(i["notes"], list) for i in items)
    waiting = next(i for i in items if i["notes"] == [WAITING])
    assert waiting["event"] == "trial 4 reached length 10: metric 0.025"
    text = print_entry(waiting).splitlines()
    assert text[1] == f"        note: {WAITING}"
    assert text[2:] == [f"        {d}" for d in waiting["decisions"]]
    last = print_entry(next(i for i in items if i["notes"] == [LAST])).splitlines()
    assert last[1] == f"        note: {LAST}"
    assert last[2] == "        trial 3 closed"


def test_a_quiet_input_with_a_note_is_shown() -> None:
    """A checkpoint, a metric or a log line is left out of the default timeline unless it
    decided something, or the search method noted something about it."""
    _, records = pbt_log()
    quiet = next(
        r
        for r in records
        if isinstance(r, InputRecord)
        and isinstance(r.input, CheckpointSaved)
        and not r.ops
        and not r.commands
    )
    noted = quiet.model_copy(update={"notes": ["waiting for something"]})
    shown = {i["seq"]: i for i in entries([*(noted if r is quiet else r for r in records)])}
    assert quiet.seq not in {i["seq"] for i in entries(records)}
    assert shown[quiet.seq]["notes"] == ["waiting for something"]
    assert shown[quiet.seq]["decisions"] == []


def test_rung_replay_prints_clones_and_notes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, records = pbt_log()
    log = tmp_path / "events.jsonl"
    log.write_text("".join(f"{r.model_dump_json()}\n" for r in records))

    def args(*, as_json: bool) -> argparse.Namespace:
        return argparse.Namespace(
            log=log, verify=False, at=None, all=False, config=None, workers=4,
            json=as_json, contexts=None,
        )  # fmt: skip

    assert run_replay(args(as_json=False)) == 0
    text = capsys.readouterr().out
    assert f"        note: {WAITING}\n" in text
    assert "        trial 5 continues from trial 4's checkpoint at length 10 (rank 1 of 4)" in text
    assert "        trial 1 closed: replaced by trial 5 (bottom 25%)\n" in text
    assert run_replay(args(as_json=True)) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [n for i in printed for n in i["notes"]] == [WAITING, LAST]


# ---------------------------------------------------------------------- describe
@dataclass
class FakeRpc:
    """The searcher's answers, from a run and its log; notes every request."""

    run: ExperimentRun
    records: list[Record]
    calls: list[tuple[str, int, int]] = field(default_factory=list)

    async def read_records(
        self, experiment_id: str, *, after_seq: int = 0, limit: int = 1000
    ) -> tuple[list[Record], str, int]:
        assert experiment_id == self.run.experiment_id
        self.calls.append(("read_records", after_seq, limit))
        after = [r for r in self.records if r.seq > after_seq]
        return after[: min(limit, 7)], self.run.state, self.records[-1].seq  # small pages

    async def describe(self, experiment_id: str) -> ExperimentSummary:
        self.calls.append(("describe", 0, 0))
        return summarise(self.run, "/state/experiments/exp-pbt/events.jsonl")


@dataclass
class FakeClient:
    rpc: FakeRpc

    def experiment(self, experiment_id: str) -> Experiment:
        return Experiment(cast("Client", self), experiment_id)


def describe_json(run: ExperimentRun, records: list[Record]) -> dict[str, Any]:
    experiment = FakeClient(FakeRpc(run, records)).experiment(run.experiment_id)
    summary = asyncio.run(experiment.describe())
    data: dict[str, Any] = json.loads(summary_json(summary))
    return data


def test_describe_json_gives_every_trial_its_parent_to_walk_the_family_tree() -> None:
    run, records = pbt_log()
    data = describe_json(run, records)
    trials = {t["trial_id"]: t for t in data["trials"]}
    assert sorted(trials) == [1, 2, 3, 4, 5, 6]
    assert all("lineage" in t for t in trials.values())
    assert [t for t, v in trials.items() if v["lineage"] is None] == [1, 2, 3, 4]
    five = trials[5]["lineage"]
    assert five["source_trial"] == 4
    assert five["checkpoint"] == checkpoint(4, 10)
    assert five["length"] == 10
    assert five["round"] == 0
    assert (five["rank"], five["ranked"], five["cut"]) == (1, 4, "bottom 25%")
    assert five["replaces_trial"] == 1
    assert five["source_hparams"] == trials[4]["hparams"]
    changes = {c["name"]: c for c in five["changes"]}
    assert set(changes) == {"lr", "width"}
    assert changes["lr"]["old"] == trials[4]["hparams"]["lr"]
    assert changes["lr"]["new"] == trials[5]["hparams"]["lr"]
    assert changes["lr"]["how"] == "perturbed"
    assert changes["lr"]["factor"] in (0.8, 1.2)
    # Walk back from the best trial: 6 continues from 5, which continues from 4.
    line, trial = [], data["best_trial"]
    assert trial["trial_id"] == 6
    while trial["lineage"] is not None:
        parent = trial["lineage"]
        line.append((trial["trial_id"], parent["source_trial"], parent["length"]))
        trial = trials[parent["source_trial"]]
    assert line == [(6, 5, 20), (5, 4, 10)]
    assert trials[6]["lineage"]["round"] == 1
    assert trials[6]["lineage"]["checkpoint"] == checkpoint(5, 20)


def test_the_lineage_comes_with_describe_and_no_record_is_read() -> None:
    """Each trial's summary carries its lineage (the searcher's state, which replay of the
    log gives too): one describe answers, whatever the log's size."""
    run, records = pbt_log()
    summary = summarise(run, "events.jsonl")
    shown = {t["trial_id"]: t.get("lineage") for t in json.loads(summary_json(summary))["trials"]}
    assert [t for t, v in shown.items() if v is not None] == [5, 6]
    # A trial that started afresh is written as before lineage existed: no such key.
    plain = summary.trials[0].model_dump(mode="json")
    assert "lineage" not in plain
    rpc = FakeRpc(run, records)
    lineage = asyncio.run(FakeClient(rpc).experiment(EXP).lineage())
    assert sorted(lineage) == [5, 6]
    assert rpc.calls == [("describe", 0, 0)]
    assert lineage_of(summary) == lineage


def test_rung_experiment_describe_shows_where_each_clone_comes_from(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run, records = pbt_log()
    client = FakeClient(FakeRpc(run, records))

    def run_client(_: argparse.Namespace, main: Callable[[Any], Coroutine[Any, Any, int]]) -> int:
        return asyncio.run(main(client))

    monkeypatch.setattr(cli_experiments, "run_client", run_client)
    args = argparse.Namespace(experiment_id=EXP, json=True)
    assert cli_experiments.describe_experiment(args) == 0
    data = json.loads(capsys.readouterr().out)
    parents = {t["trial_id"]: (t["lineage"] or {}).get("source_trial") for t in data["trials"]}
    assert parents == {1: None, 2: None, 3: None, 4: None, 5: 4, 6: 5}

    summary = summarise(run, "events.jsonl")
    lineage = asyncio.run(client.experiment(EXP).lineage())
    out = io.StringIO()
    print_summary(summary, Console(file=out, width=200), lineage=lineage)
    table = out.getvalue().splitlines()
    header = next(line for line in table if "trial" in line and "state" in line)
    assert header.index("from") < header.index("state")
    rows = {line.split("│")[1].strip(): line for line in table if line.startswith("│")}
    assert "trial 4 @ 10" in rows["5"]
    assert "trial 5 @ 20" in rows["6 *"]  # the best trial
    assert "@" not in rows["4"]
    # Without clones, no such column.
    plain = io.StringIO()
    print_summary(summary, Console(file=plain, width=200), lineage={})
    assert " from " not in plain.getvalue()


def test_describe_gives_the_lineage_even_where_the_log_cannot_be_read(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An experiment whose records cannot be read (a searcher that could not recover it
    reads none) still has its trials' lineage in describe: it never reads the log."""
    run, records = pbt_log()

    class Broken(FakeRpc):
        async def read_records(
            self, experiment_id: str, *, after_seq: int = 0, limit: int = 1000
        ) -> tuple[list[Record], str, int]:
            raise NotFoundError(f"experiment {experiment_id} could not be recovered")

    client = FakeClient(Broken(run, records))

    def run_client(_: argparse.Namespace, main: Callable[[Any], Coroutine[Any, Any, int]]) -> int:
        return asyncio.run(main(client))

    monkeypatch.setattr(cli_experiments, "run_client", run_client)
    assert (
        cli_experiments.describe_experiment(argparse.Namespace(experiment_id=EXP, json=True)) == 0
    )
    out = capsys.readouterr()
    data = json.loads(out.out)
    parents = {t["trial_id"]: (t["lineage"] or {}).get("source_trial") for t in data["trials"]}
    assert parents == {1: None, 2: None, 3: None, 4: None, 5: 4, 6: 5}
    assert out.err == ""
