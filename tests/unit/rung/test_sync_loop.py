"""``rung.SyncClient``'s event loop thread: a Ctrl-C in the caller's thread."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Iterator

import pytest

from rung.client._sync import _Loop


@pytest.fixture
def ctrl_c() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt here, even where the test run was started with it
    ignored (a background job of a shell without job control)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_ctrl_c_cancels_what_runs_and_waits_for_its_cleanup(ctrl_c: None) -> None:
    """What ``SyncClient.local()`` started (workers, fork servers) is stopped before the
    Ctrl-C reaches the caller, not left running in a loop nobody drives."""
    loop = _Loop()
    running, cleaned = threading.Event(), threading.Event()

    async def work() -> None:
        running.set()
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)  # a cleanup of more than one step
            cleaned.set()

    def interrupt() -> None:
        if running.wait(30):
            os.kill(os.getpid(), signal.SIGINT)

    helper = threading.Thread(target=interrupt, daemon=True)
    helper.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run(work())
        assert cleaned.is_set()
    finally:
        helper.join(30)
        loop.close()
