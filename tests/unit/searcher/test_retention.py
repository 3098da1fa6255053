"""Context retention: a finished experiment's context goes after the retention; one that
a running or recently ended experiment uses stays."""

from __future__ import annotations

import asyncio
import io
import tarfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from rung.broker.contexts import archive_path, store_context
from rung.searcher.service.retention import (
    ContextUse,
    Removal,
    contexts_to_remove,
    removed_message,
    sweep_once,
)

DAY = 24 * 3600.0
A, B, C, D = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)


def test_only_contexts_whose_every_experiment_ended_long_enough_ago_go() -> None:
    now = 100 * DAY
    uses = [
        ContextUse(A, ended_at=now - 8 * DAY),  # ended 8 days ago: goes
        ContextUse(B, ended_at=now - 8 * DAY),
        ContextUse(B, ended_at=None),  # shared with one still running: stays
        ContextUse(C, ended_at=now - 8 * DAY),
        ContextUse(C, ended_at=now - 1 * DAY),  # shared with one ended recently: stays
        ContextUse(D, ended_at=now - 30 * DAY, keeps_directory=True),  # a custom method's
    ]
    present = {A: 0.0, B: 0.0, C: 0.0, D: 0.0}
    assert contexts_to_remove(now, uses, present, 7 * DAY) == [
        Removal(A, directory=True),
        Removal(D, directory=False),
    ]
    assert contexts_to_remove(now, uses, present, 0) == []  # 0: never removed


def test_an_archive_no_experiment_names_goes_once_it_is_old() -> None:
    now = 100 * DAY
    present = {A: now - 8 * DAY, B: now - 60.0}  # B: a create under way, say
    assert contexts_to_remove(now, [], present, 7 * DAY) == [Removal(A, directory=True)]


def _host(context_hash: str, state: str, ended_at: float | None, searcher: str = "grid") -> Any:
    run = SimpleNamespace(
        context_hash=context_hash,
        state=state,
        experiment=SimpleNamespace(config=SimpleNamespace(searcher=SimpleNamespace(name=searcher))),
    )
    return SimpleNamespace(host=SimpleNamespace(run=run, ended_at=ended_at))


def _stored(contexts: Path, text: str) -> str:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        data = text.encode()
        info = tarfile.TarInfo("train.py")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    digest, _ = store_context(buffer.getvalue(), contexts)
    return digest


async def test_a_sweep_removes_an_expired_context_and_get_context_can_say_why(
    tmp_path: Path,
) -> None:
    contexts = tmp_path / "contexts"
    done, running, shared = (_stored(contexts, f"print({n})") for n in range(3))
    now = 1_000 * DAY
    service = SimpleNamespace(
        state_dir=tmp_path,
        context_retention_s=7 * DAY,
        creator=SimpleNamespace(lock=asyncio.Lock()),
        given_up_ids=set(),
        broken={},
        experiments={
            "e1": _host(done, "COMPLETED", now - 8 * DAY),
            "e2": _host(running, "ACTIVE", None),
            "e3": _host(shared, "CANCELED", now - 8 * DAY),
            "e4": _host(shared, "PAUSED", None),
        },
    )
    removed = await sweep_once(service, now=now)  # type: ignore[arg-type]
    assert removed == [Removal(done, directory=True)]
    assert not archive_path(contexts, done).exists()
    assert not (contexts / done).exists()
    assert archive_path(contexts, running).exists()
    assert archive_path(contexts, shared).exists()
    message = removed_message(contexts, done)
    assert message is not None
    assert "removed" in message
    assert "retention" in message
    assert removed_message(contexts, running) is None
    assert removed_message(contexts, "../../etc") is None
    # Disabled: nothing goes.
    service.context_retention_s = 0
    service.experiments["e2"] = _host(running, "COMPLETED", now - 30 * DAY)
    assert await sweep_once(service, now=now) == []  # type: ignore[arg-type]
    # Another searcher's experiments: their contexts are unknown, nothing goes.
    service.context_retention_s = 7 * DAY
    service.given_up_ids = {"e9"}
    assert await sweep_once(service, now=now) == []  # type: ignore[arg-type]
    service.given_up_ids = set()
    assert await sweep_once(service, now=now) == [Removal(running, directory=True)]  # type: ignore[arg-type]
