"""``rung.SyncClient``: the async client for code that is not async.

It is the same client, not a second one: a background thread runs an event loop, and
every method of ``Client``, ``Experiment`` and ``Trial`` is called there and waited for.
Async iterators (``watch()``, ``logs()``) become plain iterators.

    with rung.SyncClient.local() as client:
        experiment = client.create_experiment("search.yaml", "model/")
        print(experiment.wait(), experiment.best_trial())
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from rung.client._client import Client, Experiment, Trial
from rung.worker.spawn import StartMethod

__all__ = ["SyncClient"]


# How long a Ctrl-C waits for what it cancelled to clean up (a local cluster's start or
# stop: its workers' trials get 60 s to checkpoint, then are killed); a second Ctrl-C
# ends the wait.
CANCEL_WAIT_S = 90.0


class _Loop:
    """An event loop on a daemon thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="rung-client", daemon=True
        )
        self.thread.start()

    def run(self, awaitable: Awaitable[Any]) -> Any:
        """Run ``awaitable`` on the loop's thread; a Ctrl-C meanwhile cancels it and waits
        (up to ``CANCEL_WAIT_S``) for its cleanup, such as a local cluster's stop, before
        it is raised here."""
        started, given_up, ended = threading.Event(), threading.Event(), threading.Event()

        async def wait() -> Any:
            if given_up.is_set():
                return None  # (the caller gave up before the loop ran it)
            started.set()
            try:
                return await awaitable
            finally:
                ended.set()

        def unless_started() -> None:
            # On the loop, after the caller gave up: what had not started never will
            # (and is closed, so nothing warns that it was never awaited).
            if not started.is_set():
                given_up.set()
                if inspect.iscoroutine(awaitable):
                    awaitable.close()
                ended.set()

        future = asyncio.run_coroutine_threadsafe(wait(), self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            self.loop.call_soon_threadsafe(unless_started)
            ended.wait(CANCEL_WAIT_S)
            raise

    def iterate(self, iterator: AsyncIterator[Any]) -> Iterator[Any]:
        interrupted = False
        try:
            while True:
                try:
                    yield self.run(iterator.__anext__())
                except StopAsyncIteration:
                    return
        except BaseException:
            interrupted = True  # (a Ctrl-C, or the caller left the loop)
            raise
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                # After a Ctrl-C the iterator's own cleanup ran, or still runs: what
                # interrupted it stays the error.
                with contextlib.suppress(*((Exception,) if interrupted else ())):
                    self.run(aclose())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class _Blocking:
    """Calls ``target``'s methods on the loop and waits; wraps the handles they return."""

    def __init__(self, target: Any, loop: _Loop) -> None:
        self._target = target
        self._loop = loop

    def __repr__(self) -> str:
        return f"Sync{self._target!r}"

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if inspect.isasyncgenfunction(attribute):
            return self._bridge(lambda *a, **k: self._loop.iterate(attribute(*a, **k)))
        if inspect.iscoroutinefunction(attribute):
            return self._bridge(lambda *a, **k: self._loop.run(attribute(*a, **k)))
        if callable(attribute):
            return self._bridge(attribute)
        return self._wrap(attribute)

    def _bridge(self, call: Callable[..., Any]) -> Callable[..., Any]:
        def blocking(*args: Any, **kwargs: Any) -> Any:
            result = call(*args, **kwargs)
            if isinstance(result, Iterator) and not isinstance(result, list | tuple):
                return (self._wrap(item) for item in result)
            return self._wrap(result)

        return blocking

    def _wrap(self, value: Any) -> Any:
        if isinstance(value, Client | Experiment | Trial):
            return _Blocking(value, self._loop)
        return value


class SyncClient(_Blocking):
    """A blocking ``rung.Client``: same arguments, same methods, no ``await``."""

    def __init__(
        self, url: str | None = None, *, _client: Client | None = None, **options: Any
    ) -> None:
        self._init(_client or Client(url, **options))

    @classmethod
    def local(
        cls,
        state_dir: str | Path | None = None,
        *,
        workers: int = 1,
        slots: int = 1,
        gpus: list[str] | None = None,
        start_method: StartMethod = "fork-server",
    ) -> SyncClient:
        """A searcher and workers in this process, as ``rung.Client.local()``."""
        local = Client.local(
            state_dir, workers=workers, slots=slots, gpus=gpus, start_method=start_method
        )
        return cls(_client=local)

    def _init(self, client: Client) -> None:
        loop = _Loop()
        super().__init__(client, loop)
        try:
            loop.run(client.connect())
        except BaseException:
            loop.close()
            raise

    def close(self) -> None:
        try:
            self._loop.run(self._target.close())
        finally:
            self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
