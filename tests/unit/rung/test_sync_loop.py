"""``rung.SyncClient``'s event loop thread: a Ctrl-C in the caller's thread."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

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


def test_a_call_the_loop_had_not_started_when_interrupted_never_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Ctrl-C that comes while the loop is still busy with something else: the call is
    never started once the caller has given up, and it is closed (no "never awaited"
    warning, which this suite turns into an error). The loop is held by a callback until
    the caller has given up, so that the order is certain; the Ctrl-C is the caller's
    wait raising KeyboardInterrupt, as Python raises it there."""
    loop = _Loop()
    hold = threading.Event()
    loop.loop.call_soon_threadsafe(hold.wait)  # the loop is busy until ``hold`` is set
    ran = threading.Event()

    async def work() -> None:
        ran.set()

    class Interrupted:
        """The caller's side of the call: its wait is interrupted by the Ctrl-C."""

        def __init__(self, future: Any) -> None:
            self.future = future

        def result(self) -> None:
            raise KeyboardInterrupt

        def cancel(self) -> bool:
            return bool(self.future.cancel())

    submit, schedule = asyncio.run_coroutine_threadsafe, loop.loop.call_soon_threadsafe

    def scheduled(callback: Any, *args: Any) -> Any:
        handle = schedule(callback, *args)
        if getattr(callback, "__name__", "") == "unless_started":
            hold.set()  # the loop goes on once the caller has given up
        return handle

    monkeypatch.setattr(
        asyncio, "run_coroutine_threadsafe", lambda c, lp: Interrupted(submit(c, lp))
    )
    monkeypatch.setattr(loop.loop, "call_soon_threadsafe", scheduled)
    call = work()
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run(call)
        monkeypatch.undo()
        assert loop.run(asyncio.sleep(0, result="after")) == "after"  # the loop still serves
        assert not ran.is_set()
        assert inspect.getcoroutinestate(call) == inspect.CORO_CLOSED
    finally:
        hold.set()
        loop.close()
