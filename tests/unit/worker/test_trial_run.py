"""What a training process is given: its info, its channel, its GPUs, and no credentials."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from rung.broker.limits import (
    CHANNEL_REQUEST_BYTES,
    MAX_CHECKPOINT_METADATA_BYTES,
    MAX_METRICS_BYTES,
)
from rung.broker.schemas import (
    ExitReason,
    GangPlacement,
    OpCompleted,
    RunTrial,
    TrialExited,
    TrialStarted,
)
from rung.broker.schemas.envelope import Body
from rung.worker.output import LineSplitter
from rung.worker.trial_run import TrialRun, _read_request
from tests.support import wait_for


def make(
    tmp_path: Path,
    entrypoint: list[str],
    gpus: list[str],
    sent: list[tuple[Body, str]] | None = None,
) -> TrialRun:
    cmd = RunTrial(
        experiment_id="e",
        trial_id=3,
        request_id="r",
        attempt=2,
        length=9,
        hparams={"lr": 0.1},
        trial_seed=7,
        latest_checkpoint="00000000-0000-4000-8000-00000000000c",
        context_hash="0" * 64,
        entrypoint=entrypoint,
        slots=len(gpus),
        checkpoint_root="/ckpt",
        max_restarts=1,
    )

    async def emit(body: Body, *, message_id: str | None = None) -> str:
        message_id = message_id or f"w/{len(sent or []) + 1}"
        if sent is not None:
            sent.append((body, message_id))
        return message_id

    async def best() -> float | None:
        return None

    return TrialRun(
        cmd,
        worker_id="w",
        run_dir=tmp_path,
        gpus=gpus,
        slot_ids=[0],
        emit=emit,
        best_validation=best,
        ask_again_after_s=0.01,
    )


def test_environment_pins_gpus_and_drops_broker_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNG_BROKER_URL", "amqp://user:secret@host/")
    env = make(tmp_path, ["python3 train.py"], ["1", "3"])._environment()
    assert "RUNG_BROKER_URL" not in env
    assert "secret" not in json.dumps(env)
    assert env["CUDA_VISIBLE_DEVICES"] == "1,3"
    info = json.loads(env["RUNG_TRIAL_INFO"])
    assert (info["trial_id"], info["attempt"], info["latest_checkpoint"]) == (
        3,
        2,
        "00000000-0000-4000-8000-00000000000c",
    )
    assert info["hparams"] == {"lr": 0.1}
    assert make(tmp_path, ["x"], [])._environment()["CUDA_VISIBLE_DEVICES"] == ""


def test_python_runs_in_the_workers_environment(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("")
    assert make(tmp_path, ["python3 train.py --fast"], [])._command() == [
        sys.executable,
        "train.py",
        "--fast",
    ]


def test_a_missing_script_is_named_with_what_the_context_has(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text("")
    message = make(tmp_path, ["python3", "train.py"], [])._command()
    assert message == (
        "entrypoint file 'train.py' not found in the experiment context "
        "(it has: model.py); fix entrypoint in the config"
    )


async def test_a_trial_waiting_for_an_answer_re_sends_its_completion(tmp_path: Path) -> None:
    """The answer to a completion can be lost with the worker's private queue: the trial
    asks again, with the same event under the same message id, until it comes."""
    sent: list[tuple[Body, str]] = []
    run = make(tmp_path, ["python3 train.py"], [], sent)
    assert await run._handle({"op": "next_op"}) == {"length": 9}
    await run._handle({"op": "completed", "length": 9, "metric": 0.5})
    waiting = asyncio.create_task(run._handle({"op": "next_op"}))
    await wait_for(lambda: len(sent) >= 3, 10, "the completion asked again twice")
    run.continue_to(12)
    assert await waiting == {"length": 12}
    completions = {(body.model_dump_json(), message_id) for body, message_id in sent}
    assert len(completions) == 1
    body, _ = sent[0]
    assert isinstance(body, OpCompleted)
    assert (body.length, body.metric) == (9, 0.5)
    # Once answered, it asks no more.
    asked = len(sent)
    run.continue_to(15)
    assert await run._handle({"op": "next_op"}) == {"length": 15}
    assert len(sent) == asked


# ---------------------------------------------------------------------- issue 16
def test_the_environment_is_an_allowlist_with_the_operators_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNG_BROKER_PASSWORD", "secret")
    monkeypatch.setenv("WANDB_API_KEY", "k")
    monkeypatch.setenv("HF_HOME", "/cache/hf")
    env = make(tmp_path, ["x"], [])._environment()
    assert "WANDB_API_KEY" not in env  # a denylist passed whatever it did not name
    assert "RUNG_BROKER_PASSWORD" not in env
    assert env["HF_HOME"] == "/cache/hf"
    run = make(tmp_path, ["x"], [])
    run.trial_env_allow = ("WANDB_API_KEY", "RUNG_BROKER_PASSWORD")
    env = run._environment()
    assert env["WANDB_API_KEY"] == "k"
    assert "RUNG_BROKER_PASSWORD" not in env  # never, whatever an operator allows


async def test_the_worker_checks_core_api_requests_again(tmp_path: Path) -> None:
    """A script can write raw JSON to its socket: the limits hold on the worker's side."""
    sent: list[tuple[Body, str]] = []
    run = make(tmp_path, ["x"], [], sent)
    ok = {"op": "checkpoint", "steps_completed": 1, "size_bytes": 1}
    good_uuid = "00000000-0000-4000-8000-000000000001"
    cases = {
        "UUID_PATTERN": {**ok, "uuid": "../../etc/passwd", "metadata": {}},
        "MAX_CHECKPOINT_METADATA_BYTES": {
            **ok,
            "uuid": good_uuid,
            "metadata": {"n": "x" * MAX_CHECKPOINT_METADATA_BYTES},
        },
        "MAX_METRICS_BYTES": {
            "op": "metrics",
            "group": "training",
            "steps_completed": 1,
            "metrics": {"n": "x" * MAX_METRICS_BYTES},
        },
        "MAX_JSON_DEPTH": {
            "op": "metrics",
            "group": "training",
            "steps_completed": 1,
            "metrics": {"n": json.loads("[" * 70 + "]" * 70)},
        },
    }
    for limit, request in cases.items():
        reply = await run._reply(json.dumps(request).encode())
        assert limit in reply["error"], reply
    assert sent == []
    assert await run._reply(json.dumps({**ok, "uuid": good_uuid, "metadata": {}}).encode()) == {}
    assert "JSON object" in (await run._reply(b"[1]\n"))["error"]
    assert "MAX_JSON_DEPTH" in (await run._reply(b"[" * 200_000 + b"]" * 200_000))["error"]
    assert "CHANNEL_REQUEST_BYTES" in (await run._reply(None))["error"]


async def test_an_overlong_request_is_skipped_to_its_end() -> None:
    reader = asyncio.StreamReader(limit=CHANNEL_REQUEST_BYTES)
    reader.feed_data(b"x" * (3 * CHANNEL_REQUEST_BYTES))
    reader.feed_data(b"yyy\n" + b'{"op": "should_preempt"}\n' + b"z" * 10 + b"\n")
    reader.feed_eof()
    assert await _read_request(reader) is None
    assert await _read_request(reader) == b'{"op": "should_preempt"}\n'
    assert await _read_request(reader) == b"z" * 10 + b"\n"
    assert await _read_request(reader) == b""


async def test_a_failure_reading_the_output_still_ends_the_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever goes wrong while supervising, wait() kills and reaps the process and
    sends trial_exited, once."""
    (tmp_path / "train.py").write_text("import time\nprint('hi', flush=True)\ntime.sleep(600)\n")

    def broken(self: LineSplitter, data: bytes) -> list[str]:
        raise RuntimeError("the splitter broke")

    monkeypatch.setattr(LineSplitter, "feed", broken)
    sent: list[tuple[Body, str]] = []
    run = make(tmp_path, ["python3", "train.py"], [], sent)
    run.cmd = run.cmd.model_copy(update={"latest_checkpoint": None})
    assert await run.start()
    assert await asyncio.wait_for(run.wait(), timeout=60) is ExitReason.ERRORED
    assert run.process is not None
    assert run.process.returncode is not None
    exits = [body for body, _ in sent if isinstance(body, TrialExited)]
    assert len(exits) == 1
    assert "could not read its output" in exits[0].message


async def test_the_start_echoes_the_run_trials_start_token(tmp_path: Path) -> None:
    """The searcher takes a trial_started only with the token of its run_trial: the
    worker that received the command echoes it."""
    sent: list[tuple[Body, str]] = []
    run = make(tmp_path, ["/nonexistent/rung-no-such-program"], [], sent)
    run.cmd = run.cmd.model_copy(update={"start_token": "ab" * 16, "latest_checkpoint": None})
    await run.start()  # whether the process starts or not, the start is reported first
    await asyncio.wait_for(run.wait(), timeout=60)
    started = [body for body, _ in sent if isinstance(body, TrialStarted)]
    assert [body.start_token for body in started] == ["ab" * 16]


async def test_a_kill_before_the_start_is_not_forgotten(tmp_path: Path) -> None:
    """A kill_trial handled while the trial's context is fetched (its process does not
    exist yet) stops it: the process is never started, and the exit says why."""
    sent: list[tuple[Body, str]] = []
    (tmp_path / "train.py").write_text("import time; time.sleep(60)\n")
    run = make(tmp_path, ["python3", "train.py"], [], sent)
    run.kill("another part of the attempt failed")
    assert await run.start() is False
    assert run.process is None
    (exited,) = [body for body, _ in sent if isinstance(body, TrialExited)]
    assert exited.reason is ExitReason.ERRORED
    assert "killed before it started: another part of the attempt failed" in exited.message


def test_a_part_of_a_trial_on_several_workers_meets_at_the_chiefs_ports(tmp_path: Path) -> None:
    run = make(tmp_path, ["python3", "train.py"], [])
    placement = GangPlacement(
        rank=1, addrs=["10.0.0.1", "10.0.0.2"], slot_counts=[1, 1], pub_port=5000, master_port=5001
    )
    run.cmd = run.cmd.model_copy(update={"gang": placement, "start_token": "cd" * 16})
    env = run._environment()
    info = json.loads(env["RUNG_TRIAL_INFO"])
    assert (info["container_rank"], info["container_addrs"]) == (1, ["10.0.0.1", "10.0.0.2"])
    assert info["container_slot_counts"] == [1, 1]
    assert (env["RUNG_DIST_PUB_PORT"], env["RUNG_DIST_MASTER_PORT"]) == ("5000", "5001")
    assert env["RUNG_DIST_TOKEN"] == "cd" * 16  # the attempt's start token, on every part
    assert int(env["RUNG_DIST_PULL_PORT"]) + 1 > 1  # its local chief's: pull + cross rank
    assert run.member
    # A member's ranks make no Core API call: a clean end is its end, and a stop of its
    # worker (preemption requested) a preemption, whatever its exit code.
    assert run._classify(0)[0] is ExitReason.COMPLETED
    assert run._classify(1)[0] is ExitReason.ERRORED
    run.request_preemption()
    assert run._classify(-9)[0] is ExitReason.PREEMPTED


async def test_a_member_part_stopped_with_its_worker_says_preempted_first(tmp_path: Path) -> None:
    sent: list[tuple[Body, str]] = []
    (tmp_path / "train.py").write_text("import time; time.sleep(60)\n")
    run = make(tmp_path, ["python3", "train.py"], [], sent)
    placement = GangPlacement(
        rank=1, addrs=["10.0.0.1", "10.0.0.2"], slot_counts=[1, 1], pub_port=5000, master_port=5001
    )
    run.cmd = run.cmd.model_copy(update={"gang": placement})
    await run.stop_member("worker w is stopping")  # (here: while it fetched its context)
    assert await run.start() is False  # never started
    exits = [body for body, _ in sent if isinstance(body, TrialExited)]
    assert [(e.reason, e.message) for e in exits] == [
        (ExitReason.PREEMPTED, "worker w is stopping")
    ]  # once, before anything else could fail for want of it
