"""What a training process is given: its info, its channel, its GPUs, and no credentials."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from rung.broker.schemas import OpCompleted, RunTrial
from rung.broker.schemas.envelope import Body
from rung.worker.trial_run import TrialRun
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
    assert (info["trial_id"], info["attempt"], info["latest_checkpoint"]) == (3, 2, "00000000-0000-4000-8000-00000000000c")
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
