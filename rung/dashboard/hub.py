"""The experiments the dashboard follows: one view each, kept up to date by one task.

A page asks the hub for an experiment's view; the first ask starts a task that folds the
experiment's records into an :class:`ExperimentView` as the source yields them (the
history, then live ones), and the page waits until the history is in. Every folded
record bumps the view's version and wakes whoever waits on it (the server-sent event
streams). The hub follows at most ``limit`` experiments: the least recently asked for
is dropped when another is needed, and followed again when asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import structlog

from rung.dashboard.errors import DashboardError
from rung.dashboard.model import ExperimentView
from rung.dashboard.source import Source
from rung.searcher.client import NotFoundError
from rung.searcher.eventlog import CreatedRecord, Record
from rung.searcher.eventlog.replay import describe_error

__all__ = ["Followed", "Hub"]

log = structlog.get_logger("rung.dashboard")

# Fold this many records, then let the event loop serve others.
_BATCH: Final = 256
# While a history is folded, its objects are frozen for the garbage collector this often
# (records), and once more when it is in: they live as long as its page is followed, and
# a full collection walking a 10,000-trial view's millions of objects stalled the event
# loop 0.1 to 0.3 s each time (during the fold, and at every render after it). Cyclic
# garbage made before a freeze is kept until the process ends: the fold makes little.
_FREEZE: Final = 8192
# An experiment that could not be read is tried again on a request after this long.
_RETRY_S: Final = 5.0


@dataclass
class Followed:
    experiment_id: str
    view: ExperimentView | None = None
    error: str | None = None
    loaded: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    missing: bool = False  # the source has no such experiment
    streams: int = 0  # server-sent event streams of it open now
    failed_at: float = 0.0  # when following it failed (monotonic seconds)
    # Set when a page asks for it: a load waiting its turn behind the list's goes now.
    hurry: asyncio.Event = field(default_factory=asyncio.Event)
    # Held while the view changes and while a page renders it in a thread: a render
    # never sees a half-folded record, and never blocks the event loop.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def notify(self) -> None:
        """Wake everyone waiting for a change, and arm the next wait."""
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    async def wait_change(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.changed.wait()


class Hub:
    def __init__(
        self,
        source: Source,
        *,
        context_root: Path | None = None,
        allow_custom: bool = False,
        limit: int = 32,
        loads: int = 2,
        load_timeout: float = 60.0,
    ) -> None:
        self.source = source
        self.context_root = context_root
        self.allow_custom = allow_custom
        self.limit = limit
        self.load_timeout = load_timeout
        self._followed: OrderedDict[str, Followed] = OrderedDict()
        # Histories folded at once: each is CPU work on the one event loop.
        self._loads = asyncio.Semaphore(loads)

    def peek(self, experiment_id: str) -> ExperimentView | None:
        """The experiment's view if it is followed and loaded, without following it."""
        followed = self._followed.get(experiment_id)
        if followed is None or not followed.loaded.is_set():
            return None
        return followed.view

    def error(self, experiment_id: str) -> str | None:
        """Why the experiment could not be read, if it could not."""
        followed = self._followed.get(experiment_id)
        return followed.error if followed is not None else None

    def room(self) -> int:
        """How many more experiments can be followed without dropping one."""
        return max(0, self.limit - len(self._followed))

    def start(self, experiment_id: str, *, background: bool = False) -> Followed:
        """Follow the experiment (if not yet), without waiting for its history.
        ``background`` loads (the experiments list's) wait their turn, two at a time; a
        page's load does not wait behind them."""
        followed = self._followed.get(experiment_id)
        retry = (
            followed is not None
            and followed.error is not None
            and followed.task is None
            and time.monotonic() - followed.failed_at > _RETRY_S
        )
        if followed is None or retry:
            followed = Followed(experiment_id)
            self._followed[experiment_id] = followed
            followed.task = asyncio.create_task(
                self._run(followed, background=background),
                name=f"dashboard-follow-{experiment_id}",
            )
            # Also when it is cancelled before it ever ran: nobody waits for it forever.
            followed.task.add_done_callback(lambda _: followed.loaded.set())
            self._evict()
        if not background:
            followed.hurry.set()
        self._followed.move_to_end(experiment_id)
        return followed

    async def follow(self, experiment_id: str) -> Followed:
        """The experiment's view, its history folded (``DashboardError`` if it cannot be
        read; an experiment that failed is tried again after a few seconds)."""
        followed = self.start(experiment_id)
        try:
            async with asyncio.timeout(self.load_timeout):
                await followed.loaded.wait()
        except TimeoutError as exc:
            raise DashboardError(
                f"experiment {experiment_id}'s history did not load within "
                f"{self.load_timeout:g} s; try again, or check that the searcher answers"
            ) from exc
        if followed.view is None:
            if followed.missing:
                raise NotFoundError(followed.error or f"no experiment {experiment_id}")
            raise DashboardError(followed.error or f"no experiment {experiment_id}")
        return followed

    def _evict(self) -> None:
        """Stop following the least recently asked for experiments beyond ``limit``,
        except those still loading (a page waits for them) or streamed to a page."""
        for experiment_id, followed in list(self._followed.items()):
            if len(self._followed) <= self.limit:
                return
            if followed.streams or not followed.loaded.is_set():
                continue
            del self._followed[experiment_id]
            if followed.task is not None:
                followed.task.cancel()

    async def _turn(self, followed: Followed) -> asyncio.Semaphore | None:
        """Wait for a background load's turn, or until a page asks for the experiment;
        the semaphore if its turn came (to release once loaded), None if not."""
        if followed.hurry.is_set():
            return None
        acquire = asyncio.ensure_future(self._loads.acquire())
        hurry = asyncio.ensure_future(followed.hurry.wait())
        try:
            await asyncio.wait({acquire, hurry}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            hurry.cancel()
            if acquire.done() and not acquire.cancelled():
                self._loads.release()
            else:
                acquire.cancel()
            raise
        hurry.cancel()
        if acquire.done() and not acquire.cancelled():
            return self._loads
        acquire.cancel()
        return None

    async def _run(self, followed: Followed, *, background: bool) -> None:
        experiment_id = followed.experiment_id
        loading = True
        turn: asyncio.Semaphore | None = None
        try:
            if background:
                turn = await self._turn(followed)
            newest = await self._newest(experiment_id)
            if newest == 0:
                _no_records(experiment_id)
            count = 0
            async for record in self.source.records(experiment_id, 0):
                async with followed.lock:
                    if followed.view is None:
                        followed.view = self._first(experiment_id, record)
                    else:
                        followed.view.apply(record)
                count += 1
                if loading and followed.view.seq >= newest:
                    loading = False
                    if turn is not None:
                        turn.release()
                    _freeze()
                    followed.loaded.set()
                if not loading:
                    followed.notify()
                if count % _BATCH == 0:
                    await asyncio.sleep(0)
                if loading and count % _FREEZE == 0:
                    _freeze()
        except asyncio.CancelledError:
            raise
        except (NotFoundError, FileNotFoundError) as exc:
            followed.missing = True
            followed.error = f"no experiment {experiment_id}: {exc}"
        except Exception as exc:  # noqa: BLE001 (one experiment's failure is its page's)
            reason = describe_error(exc)
            followed.error = f"cannot read experiment {experiment_id}: {reason}"
            log.warning("dashboard: following failed", experiment_id=experiment_id, error=reason)
        finally:
            if loading and turn is not None:
                turn.release()
            followed.failed_at = time.monotonic()
            followed.task = None
            followed.loaded.set()
            followed.notify()

    def _first(self, experiment_id: str, record: Record) -> ExperimentView:
        if not isinstance(record, CreatedRecord):
            raise DashboardError(
                f"experiment {experiment_id}'s log does not start with its 'created' record"
            )
        return ExperimentView(
            record, context_root=self.context_root, allow_custom=self.allow_custom
        )

    async def _newest(self, experiment_id: str) -> int:
        """The number of the experiment's newest record now (what "loaded" means)."""
        return await self.source.newest(experiment_id)

    async def close(self) -> None:
        tasks = [f.task for f in self._followed.values() if f.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._followed.clear()


def _freeze() -> None:
    """Collect the young generations (cheap), then freeze what is left: see _FREEZE."""
    gc.collect(1)
    gc.freeze()


def _no_records(experiment_id: str) -> None:
    raise NotFoundError(f"experiment {experiment_id}'s log has no records yet")
