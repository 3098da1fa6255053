"""Experiment contexts on a worker: fetched from the searcher once, cached by hash.

The cache keeps the archive, not an extracted tree: a trial runs as the worker's user
(or beside it) and could change a shared tree for the trials after it. The archives used
last are also kept in the worker's memory, which no trial can reach (``MEMORY_BYTES`` in
all); one read from disk is hashed again and must match the context hash the
``run_trial`` names (:func:`rung.broker.contexts.read_archive`). Each attempt then gets
its own copy, extracted with the archive's streaming checks (:mod:`rung.broker.archive`),
in a thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import os
import shutil
import stat
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from rung.broker.archive import context_hash, extract
from rung.broker.contexts import read_archive, store_archive
from rung.broker.limits import is_context_hash
from rung.broker.rpc import RpcClient
from rung.broker.schemas import GetContext
from rung.worker.bytecode import worth_compiling
from rung.worker.pristine import BYTES, ENTRIES, Snapshot, snapshot

__all__ = ["MEMORY_BYTES", "ContextCache", "ContextUnavailableError"]

T = TypeVar("T")

# The verified archives kept in memory, the most recently used first out of it last: a
# trial's start then reads and hashes nothing from disk (issue 18).
MEMORY_BYTES = 64 * 1024 * 1024


class ContextUnavailableError(RuntimeError):
    """The searcher could not hand out the context."""


class ContextCache:
    def __init__(self, rpc: RpcClient, root: Path) -> None:
        self.rpc = rpc
        self.root = root
        self._locks: dict[str, asyncio.Lock] = {}
        self._memory: OrderedDict[str, bytes] = OrderedDict()

    def _remember(self, digest: str, data: bytes) -> bytes:
        self._memory[digest] = data
        self._memory.move_to_end(digest)
        while sum(map(len, self._memory.values())) > MEMORY_BYTES and len(self._memory) > 1:
            self._memory.popitem(last=False)
        return data

    async def archive(self, digest: str) -> bytes:
        """The archive with this content hash: the cached one if it still hashes to
        ``digest``, else fetched from the searcher (and cached, durably)."""
        if not is_context_hash(digest):
            raise ContextUnavailableError(f"{digest[:80]!r} is not a context hash")
        if (known := self._memory.get(digest)) is not None:
            self._memory.move_to_end(digest)
            return known
        lock = self._locks.setdefault(digest, asyncio.Lock())
        async with lock:
            data = await asyncio.to_thread(read_archive, self.root, digest)
            if data is not None:
                return self._remember(digest, data)
            reply = await self.rpc.call(GetContext(context_hash=digest), timeout=60)
            if not reply.ok or reply.result is None:
                message = reply.error.message if reply.error else "no context in the reply"
                raise ContextUnavailableError(f"context {digest[:12]}: {message}")
            try:
                data = base64.b64decode(str(reply.result["context_b64"]), validate=True)
            except (KeyError, binascii.Error, ValueError) as exc:
                raise ContextUnavailableError(f"context {digest[:12]}: bad reply: {exc}") from None
            if context_hash(data) != digest:
                raise ContextUnavailableError(f"context {digest[:12]}: content hash mismatch")
            await asyncio.to_thread(store_archive, data, self.root)
            return self._remember(digest, data)

    async def run_dir(self, digest: str, destination: Path) -> Path:
        """A private copy of the context for one trial attempt to run in, extracted from
        the archive, which is checked against ``digest`` first."""
        await self._unpack(digest, destination, then=None)
        return destination

    async def copy(
        self,
        digest: str,
        destination: Path,
        *,
        compile_with: Callable[[Path, int, int], Awaitable[bool]] | None = None,
    ) -> Snapshot | None:
        """:meth:`run_dir`, and the copy's snapshot (None: it is too large to compare;
        :mod:`rung.worker.pristine`), taken in the same thread; or, given
        ``compile_with`` and a copy with modules of its own
        (:func:`rung.worker.bytecode.worth_compiling`), taken once ``compile_with(copy,
        entries, size)`` has compiled them, within what is left of the snapshot's bounds
        (``entries`` more entries, ``size`` more bytes of files). Where it says it did
        not (it failed, or was killed at its time limit, perhaps as it wrote), every
        ``__pycache__`` it made is removed first: the copy is as extracted again."""
        if compile_with is None:
            return await self._unpack(digest, destination, then=snapshot)
        first = await self._unpack(digest, destination, then=_snapshot_unless_modules)
        if first is None:
            return None
        room, made = first
        if room is None or made is None:
            return made
        if not await compile_with(destination, *room):
            shipped = {entry[0] for entry in made}
            await asyncio.to_thread(_remove_new_caches, destination, shipped)
        return await asyncio.to_thread(_snapshot, destination)

    async def _unpack(
        self, digest: str, destination: Path, *, then: Callable[[Path], T] | None
    ) -> T | None:
        data = await self.archive(digest)

        def unpack() -> T | None:
            shutil.rmtree(destination, ignore_errors=True)
            extract(data, destination)
            if then is None:
                return None
            try:
                return then(destination)
            except Exception:  # noqa: BLE001 (a snapshot never fails the copy: no keeping)
                return None

        return await asyncio.to_thread(unpack)


def _snapshot(destination: Path) -> Snapshot | None:
    try:
        return snapshot(destination)
    except Exception:  # noqa: BLE001 (a snapshot never fails the copy: no keeping)
        return None


def _snapshot_unless_modules(
    destination: Path,
) -> tuple[tuple[int, int] | None, Snapshot | None]:
    """The copy's snapshot, and, where the copy has modules to compile first, what is
    left of the snapshot's bounds for their bytecode (``(entries, size)``; else None)."""
    made = snapshot(destination)
    if made is None:
        return None, None
    entries = ENTRIES - len(made)
    size = BYTES - sum(entry[7] for entry in made if stat.S_ISREG(entry[3]))
    if entries > 1 and size > 0 and worth_compiling(destination):
        return (entries, size), made
    return None, made


def _remove_new_caches(destination: Path, shipped: set[str]) -> None:
    """Remove what a compilation wrote under ``destination``: every ``__pycache__``
    directory its copy did not have (``shipped``: the names its snapshot listed), and,
    in one it had, every entry it did not."""
    for directory, subdirectories, files in os.walk(destination):
        inside = "__pycache__" in Path(directory).relative_to(destination).parts
        for name in [*subdirectories, *files]:
            path = os.path.join(directory, name)
            if os.path.relpath(path, destination) in shipped:
                continue
            if name in subdirectories and (inside or name == "__pycache__"):
                subdirectories.remove(name)
                shutil.rmtree(path, ignore_errors=True)
            elif inside:
                with contextlib.suppress(OSError):
                    os.unlink(path)
