"""The event log: golden logs that replay forever, torn and corrupt records, snapshots,
and replay equal to the live fold."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from rung.broker.schemas import CheckpointSaved, KillTrial, OpCompleted
from rung.cli.main import build_parser
from rung.searcher.config import load_config_file
from rung.searcher.errors import SearcherError
from rung.searcher.eventlog import (
    CreatedRecord,
    EventLogCorruptError,
    FileEventLog,
    InputRecord,
    OwnerRecord,
    Record,
    SnapshotRecord,
    read_log,
    replay,
)
from rung.searcher.eventlog.file import StaleOwnerError
from rung.searcher.eventlog.whatif import what_if
from rung.searcher.ops import Create
from rung.searcher.service.summary import summarise
from rung.searcher.trials import ExperimentRun

from .helpers import live_log, make_config

GOLDEN = Path(__file__).resolve().parents[2] / "golden"
# Where the goldens' custom search methods are, as a searcher keeps contexts:
# ``contexts/<context hash>/<module>.py``.
GOLDEN_CONTEXTS = GOLDEN / "contexts"
METHODS = (
    "single",
    "random",
    "grid",
    "asha",
    "adaptive_asha",
    "asha_gp",
    "asha_tpe",
    "pbt",
    "pbt_async",
)
# Every golden log, and the one per built-in method (each a completed experiment).
GOLDEN_LOGS = sorted(GOLDEN.glob("*.v1.jsonl"))
METHOD_LOGS = [GOLDEN / f"{method}.v1.jsonl" for method in METHODS]
FAILED_LOG = GOLDEN / "failed.v1.jsonl"


def test_there_is_a_golden_log_per_method_and_one_of_a_failed_experiment() -> None:
    names = {p.name.split(".")[0] for p in GOLDEN_LOGS}
    assert names == {*METHODS, "failed"}


@pytest.mark.parametrize("path", METHOD_LOGS, ids=lambda p: p.name)
def test_golden_logs_replay_and_verify_forever(path: Path) -> None:
    records = read_log(path)
    result = replay(records, verify=True)
    if result.divergence is not None:
        pytest.fail(result.divergence.diff())
    assert result.run.state == "COMPLETED"
    assert all(t.state == "COMPLETED" for t in result.run.trials.values())
    assert result.records == records[-1].seq


@pytest.mark.parametrize("name", ["pbt", "pbt_async"])
def test_the_pbt_golden_logs_replay_their_lineage(name: str) -> None:
    """Every copy's Create names a checkpoint its source had saved, at the length it says,
    before the copy was decided; replay rebuilds the same population."""
    records = read_log(GOLDEN / f"{name}.v1.jsonl")
    saved: dict[str, tuple[int, int]] = {}
    copies = 0
    for record in records:
        if not isinstance(record, InputRecord):
            continue
        for op in record.ops:
            if isinstance(op, Create) and op.clone is not None:
                copies += 1
                assert saved[op.clone.checkpoint] == (op.clone.source_trial, op.clone.length)
                assert op.checkpoint == op.clone.checkpoint
        if isinstance(record.input, CheckpointSaved) and record.ignored is None:
            body = record.input
            saved[body.uuid] = (body.trial_id, body.steps_completed)
    assert copies >= 2
    result = replay(records, verify=True)
    assert result.divergence is None
    method = result.run.experiment.method.state
    assert method.done


def test_the_golden_log_of_a_failed_experiment_replays_to_its_failure_forever() -> None:
    """A custom method raised on trial 1's result (``make_failed.py`` tells the story):
    the input's record says so, the fold reproduces the failure, and verify re-decides
    the kills and the shutdown that the failure caused."""
    records = read_log(FAILED_LOG)
    result = replay(records, context_root=GOLDEN_CONTEXTS, verify=True)
    if result.divergence is not None:
        pytest.fail(result.divergence.diff())
    assert result.records == records[-1].seq
    assert result.failure is None  # the log holds its failure: nothing left to record
    (failed,) = [r for r in records if isinstance(r, InputRecord) and r.failed is not None]
    assert isinstance(failed.input, OpCompleted)
    assert (failed.input.trial_id, failed.input.metric) == (1, 140.0)
    assert failed.failed == "ValueError: metric 140.0 is above 100.0"
    assert [op.model_dump() for op in failed.ops] == [
        {"type": "shutdown", "cancel": False, "failure": True}
    ]
    kills = [
        (c.worker_id, c.body.trial_id) for c in failed.commands if isinstance(c.body, KillTrial)
    ]
    assert kills == [("local-1", 1), ("local-2", 3)]
    assert len(failed.commands) == len(kills)
    run = result.run
    assert run.state == "ERROR"
    assert run.error == failed.failed
    states = {t.trial_id: t.state for t in run.trials.values()}
    assert states == {1: "CANCELED", 2: "COMPLETED", 3: "CANCELED"}
    summary = summarise(run, str(FAILED_LOG))
    assert summary.message == "the experiment failed: ValueError: metric 140.0 is above 100.0"
    assert summary.best_trial is not None
    assert (summary.best_trial.trial_id, summary.best_trial.metric) == (2, 100.0)


def test_the_failed_golden_logs_search_method_is_the_one_it_was_recorded_with() -> None:
    """The module is part of the golden log: its directory is named after its SHA-256, the
    hash the log records, so an edit to it (or a second context) fails here."""
    created = read_log(FAILED_LOG)[0]
    assert isinstance(created, CreatedRecord)
    (module,) = GOLDEN_CONTEXTS.glob("*/*.py")
    assert module.parent.name == created.context_hash
    assert hashlib.sha256(module.read_bytes()).hexdigest() == created.context_hash
    assert created.config["searcher"]["class"] == f"{module.stem}:BreaksAbove"


# ---------------------------------------------------------------- `rung replay --verify`
def _cli_verify(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    """``rung replay --verify --json LOG``, in this process: the real parser and handler
    (``rung.cli.main.main`` would configure logging for the whole process)."""
    args = build_parser().parse_args(
        ["replay", "--verify", "--json", "--contexts", str(GOLDEN_CONTEXTS), str(path)]
    )
    code: int = args.handler(args)
    answer: dict[str, Any] = json.loads(capsys.readouterr().out)
    return code, answer


@pytest.mark.parametrize("path", GOLDEN_LOGS, ids=lambda p: p.name)
def test_rung_replay_verify_passes_on_every_golden_log(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, answer = _cli_verify(path, capsys)
    assert answer == {"ok": True, "records": read_log(path)[-1].seq, "divergence": None}
    assert code == 0


def _tampered(
    path: Path, tmp_path: Path, seq: int, change: Callable[[dict[str, Any]], None]
) -> Path:
    lines = path.read_bytes().split(b"\n")
    record = json.loads(lines[seq - 1])
    assert record["seq"] == seq
    change(record)
    lines[seq - 1] = json.dumps(record, separators=(",", ":")).encode()
    target = tmp_path / path.name
    target.write_bytes(b"\n".join(lines))
    return target


@pytest.mark.parametrize("path", GOLDEN_LOGS, ids=lambda p: p.name)
def test_rung_replay_verify_catches_a_tampered_decision_in_every_golden_log(
    path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The last command of the last record that sent any is dropped: verify names it."""
    records = read_log(path)
    seq = max(r.seq for r in records if isinstance(r, InputRecord) and r.commands)
    tampered = _tampered(path, tmp_path, seq, lambda record: record["commands"].pop())
    code, answer = _cli_verify(tampered, capsys)
    assert code == 1
    assert answer["ok"] is False
    assert answer["divergence"]["seq"] == seq


# Changes to the failed input's record, each of which verify must name.
FAILURE_TAMPERS: dict[str, Callable[[dict[str, Any]], None]] = {
    "no shutdown": lambda record: record["ops"].clear(),
    "a shutdown that is no failure": lambda record: record["ops"][0].update(failure=False),
    "a kill sent to the wrong worker": lambda record: record["commands"][1].update(
        worker_id="local-1"
    ),
    "a trial left running": lambda record: record["commands"].pop(0),
    "the failure removed": lambda record: record.pop("failed"),
    "another reason": lambda record: record.update(failed="ValueError: something else"),
}


@pytest.mark.parametrize("what", FAILURE_TAMPERS)
def test_rung_replay_verify_catches_a_tampered_failure(
    what: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (failed,) = [
        r for r in read_log(FAILED_LOG) if isinstance(r, InputRecord) and r.failed is not None
    ]
    tampered = _tampered(FAILED_LOG, tmp_path, failed.seq, FAILURE_TAMPERS[what])
    code, answer = _cli_verify(tampered, capsys)
    assert (code, answer["ok"]) == (1, False), what
    assert answer["divergence"]["seq"] == failed.seq


def _copy(path: Path, tmp_path: Path) -> Path:
    target = tmp_path / "events.jsonl"
    target.write_bytes(path.read_bytes())
    return target


def test_a_torn_last_line_is_dropped_with_a_warning_and_cut_off(tmp_path: Path) -> None:
    log = _copy(GOLDEN / "random.v1.jsonl", tmp_path)
    whole = read_log(log)
    with log.open("ab") as handle:
        handle.write(b'{"v": 1, "seq": 43, "kind": "inp')
    with structlog.testing.capture_logs() as logs:
        opened = FileEventLog(log)
    opened.close()
    assert len(opened.existing) == len(whole)
    assert any("torn last record" in entry["event"] for entry in logs)
    assert log.read_bytes().endswith(b"}\n")  # the torn bytes are gone
    assert list(read_log(log)) == list(whole)


def test_a_corrupt_record_in_the_middle_is_named(tmp_path: Path) -> None:
    log = _copy(GOLDEN / "random.v1.jsonl", tmp_path)
    lines = log.read_bytes().split(b"\n")
    lines[9] = lines[9][:20] + b"#" + lines[9][21:]
    log.write_bytes(b"\n".join(lines))
    with pytest.raises(EventLogCorruptError, match="record 10 \\(line 10\\) is corrupt"):
        read_log(log)


def test_records_must_be_numbered_without_gaps(tmp_path: Path) -> None:
    log = _copy(GOLDEN / "single.v1.jsonl", tmp_path)
    lines = log.read_bytes().split(b"\n")
    del lines[3]
    log.write_bytes(b"\n".join(lines))
    with pytest.raises(EventLogCorruptError, match="line 4 holds record 5"):
        read_log(log)


def test_a_log_must_start_with_its_config() -> None:
    records = read_log(GOLDEN / "single.v1.jsonl")
    with pytest.raises(SearcherError, match="first record must be 'created'"):
        replay(records[1:])


def _with_snapshot(records: Sequence[Record], after: int) -> list[Record]:
    head = records[:after]
    state = replay(head, context_root=GOLDEN_CONTEXTS, verify=True).run.snapshot()
    snapshot = SnapshotRecord(seq=after + 1, state=state)
    tail = [r.model_copy(update={"seq": r.seq + 1}) for r in records[after:]]
    return [*head, snapshot, *tail]


@pytest.mark.parametrize("path", GOLDEN_LOGS, ids=lambda p: p.name)
def test_a_snapshot_plus_tail_gives_the_same_state_as_the_whole_log(path: Path) -> None:
    records = read_log(path)
    whole = replay(records, context_root=GOLDEN_CONTEXTS, verify=True).run.snapshot()
    for after in (2, len(records) // 2, len(records) - 1):
        with_snapshot = _with_snapshot(records, after)
        assert replay(with_snapshot, context_root=GOLDEN_CONTEXTS).run.snapshot() == whole


# ---------------------------------------------------------------- replay matches the live fold
def _live(searcher: str, seed: int, order: int) -> tuple[ExperimentRun, list[Record]]:
    config = make_config(searcher, seed=seed, entrypoint="python3 t.py", max_restarts=1)
    return live_log(config, order)


SEARCHERS = [
    "{name: random, max_length: 8, max_trials: 5, max_concurrent_trials: 2}",
    "{name: asha, max_length: 16, max_trials: 9, num_rungs: 3, divisor: 2, "
    "max_concurrent_trials: 3}",
    "{name: adaptive_asha, max_length: 27, max_trials: 12, divisor: 3, max_concurrent_trials: 4}",
]


@given(st.sampled_from(SEARCHERS), st.integers(0, 2**32 - 1), st.integers(0, 2**32))
def test_replay_equals_the_live_fold_and_twice_equals_once(
    searcher: str, seed: int, order: int
) -> None:
    live, records = _live(searcher, seed, order)
    once = replay(records, verify=True)
    assert once.divergence is None
    assert once.run.snapshot() == live.snapshot()
    twice = replay(records, verify=True)
    assert twice.run.snapshot() == once.run.snapshot()
    state: dict[str, Any] = once.run.snapshot()
    assert state["state"] == live.state


# ---------------------------------------------------------------- what-if
# Logs whose hyperparameters come from a model: they depend on the order results came in.
SAMPLED_LOGS = [p for p in METHOD_LOGS if "_gp" in p.name or "_tpe" in p.name]
# Asynchronous PBT compares a trial with the results in by then: the order matters too.
ASYNC_PBT_LOG = GOLDEN / "pbt_async.v1.jsonl"


@pytest.mark.parametrize(
    "path",
    [p for p in METHOD_LOGS if p not in SAMPLED_LOGS and p != ASYNC_PBT_LOG],
    ids=lambda p: p.name,
)
def test_what_if_with_the_recorded_settings_reproduces_the_outcome(path: Path) -> None:
    method = path.name.split(".")[0]
    config = load_config_file(GOLDEN / f"golden-{method}.yaml").config
    outcome = what_if(read_log(path), config, workers=2)
    assert outcome.complete, outcome.gap
    assert outcome.result is not None
    assert outcome.result.best_metric == outcome.recorded_best
    assert outcome.result.total_length == outcome.recorded_length
    assert outcome.result.trials == outcome.recorded_trials


@pytest.mark.parametrize("path", SAMPLED_LOGS, ids=lambda p: p.name)
def test_what_if_of_a_model_based_search_reruns_it_on_the_recorded_results(path: Path) -> None:
    """The simulated workers report in another order than the real ones did, so the
    model suggests other points: the what-if is a re-run on the recorded results. It
    either finds the recorded best or names the result the log lacks."""
    method = path.name.split(".")[0]
    config = load_config_file(GOLDEN / f"golden-{method}.yaml").config
    outcome = what_if(read_log(path), config, workers=2)
    if outcome.complete:
        assert outcome.result is not None
        assert outcome.result.best_metric == outcome.recorded_best
    else:
        assert outcome.gap is not None
        assert "but the log has it only at" in outcome.gap


def test_what_if_of_asynchronous_pbt_reruns_it_on_the_recorded_results() -> None:
    """Each copy is decided against the results in when its trial reported: in the
    simulated workers' order, other copies may be made (with other hyperparameters),
    and the what-if says which one the log never trained."""
    config = load_config_file(GOLDEN / "golden-pbt_async.yaml").config
    outcome = what_if(read_log(ASYNC_PBT_LOG), config, workers=2)
    if outcome.complete:
        assert outcome.result is not None
        assert outcome.result.best_metric == outcome.recorded_best
    else:
        assert outcome.gap is not None
        assert "which the log never trained" in outcome.gap or "only at" in outcome.gap


def test_what_if_stops_where_the_log_has_no_result() -> None:
    config = load_config_file(GOLDEN / "golden-asha.yaml").config
    searcher = config.searcher.model_copy(update={"stop_once": True})
    outcome = what_if(
        read_log(GOLDEN / "asha.v1.jsonl"), config.model_copy(update={"searcher": searcher})
    )
    assert not outcome.complete
    assert outcome.gap is not None
    assert "but the log has it only at" in outcome.gap


# ---------------------------------------------------------------- ownership
def test_a_takeover_fences_off_the_previous_owner(tmp_path: Path) -> None:
    log = _copy(GOLDEN / "single.v1.jsonl", tmp_path)
    first = FileEventLog(log)
    assert first.take_over("machine-a/1").epoch == 1
    second = FileEventLog(log)  # another machine, on the shared directory
    assert second.epoch == 1
    assert second.take_over("machine-b/7").epoch == 2
    with pytest.raises(StaleOwnerError, match="was written by another searcher"):
        first.append(SnapshotRecord(seq=first.seq + 1, state={}))
    first.close()
    second.close()
    records = read_log(log)
    owners = [r for r in records if isinstance(r, OwnerRecord)]
    assert [(o.epoch, o.owner) for o in owners] == [(1, "machine-a/1"), (2, "machine-b/7")]
    assert replay(records, verify=True).divergence is None  # owner records change nothing


# ---------------------------------------------------------------- group commit
async def test_one_fsync_covers_the_records_written_while_another_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _copy(GOLDEN / "single.v1.jsonl", tmp_path)
    opened = FileEventLog(log)
    assert opened.durable_seq == opened.seq  # what was on disk counts as durable
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(opened.seq)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    start = opened.seq
    opened.append(SnapshotRecord(seq=start + 1, state={}), sync=False)
    first = asyncio.ensure_future(opened.sync_async())
    await asyncio.sleep(0)  # let it start its fsync (in a thread) and hold the turn
    waiters = [first]
    for offset in range(2, 6):  # four more records, each then waiting for the disk
        opened.append(SnapshotRecord(seq=start + offset, state={}), sync=False)
        waiters.append(asyncio.ensure_future(opened.sync_async()))
    await asyncio.gather(*waiters)
    assert opened.durable_seq == start + 5
    # The first sync covered the first record; one more covered the four written meanwhile.
    assert len(synced) == 2
    await opened.sync_async()  # nothing new: no fsync
    assert len(synced) == 2
    opened.close()
    assert [r.seq for r in read_log(log)][-5:] == list(range(start + 1, start + 6))
