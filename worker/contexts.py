"""Experiment contexts on a worker: fetched from the searcher once, cached by hash."""

from __future__ import annotations

import asyncio
import base64
import shutil
from pathlib import Path

from rung.broker.archive import context_hash
from rung.broker.contexts import COMPLETE_MARKER, extract_atomically, is_complete
from rung.broker.rpc import RpcClient
from rung.broker.schemas import GetContext

__all__ = ["ContextCache", "ContextUnavailableError"]


class ContextUnavailableError(RuntimeError):
    """The searcher could not hand out the context."""


class ContextCache:
    def __init__(self, rpc: RpcClient, root: Path) -> None:
        self.rpc = rpc
        self.root = root
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, digest: str) -> Path:
        target = self.root / digest
        lock = self._locks.setdefault(digest, asyncio.Lock())
        async with lock:
            if is_complete(target):
                return target
            reply = await self.rpc.call(GetContext(context_hash=digest), timeout=60)
            if not reply.ok or reply.result is None:
                message = reply.error.message if reply.error else "no context in the reply"
                raise ContextUnavailableError(f"context {digest[:12]}: {message}")
            data = base64.b64decode(reply.result["context_b64"])
            if context_hash(data) != digest:
                raise ContextUnavailableError(f"context {digest[:12]}: content hash mismatch")
            # All or nothing, durably: a crash mid-way leaves no directory that looks done.
            return await asyncio.to_thread(extract_atomically, data, target)

    async def run_dir(self, digest: str, destination: Path) -> Path:
        """A private copy of the context for one trial attempt to run in."""
        source = await self.get(digest)
        shutil.rmtree(destination, ignore_errors=True)
        top = str(source)

        def marker(directory: str, names: list[str]) -> list[str]:
            return [COMPLETE_MARKER] if directory == top and COMPLETE_MARKER in names else []

        await asyncio.to_thread(shutil.copytree, source, destination, ignore=marker)
        return destination
