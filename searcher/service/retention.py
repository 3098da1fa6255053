"""Context retention: a finished experiment's context is removed after a while.

Every experiment's context (the directory with its training script) is stored as
``state_dir/contexts/<hash>.tar.gz`` and extracted beside it, ``contexts/<hash>/``.
Once every experiment that uses a context has ended (COMPLETED, ERROR or CANCELED) and
the newest of them ended more than ``context_retention_s`` ago, the archive and the
extracted directory are removed; the directory is kept when an experiment using it has a
``custom`` search method (a restart imports the method from it to rebuild the
experiment). A context that another experiment still runs with, or that one ended with
recently, is kept. An archive no experiment names (a create that failed half way) is
removed once it is older than the retention. 0 disables removal.

What to remove is decided by a pure function (:func:`contexts_to_remove`); :func:`sweep`
runs it now and then in the service's task group, under the creator's lock (a create
that stores the same context meanwhile waits), and leaves a tombstone
``contexts/<hash>.removed`` so that ``get_context`` can say why a context is gone
(:func:`removed_message`).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import structlog

from rung.broker.contexts import archive_path, fsync_directory
from rung.broker.limits import is_context_hash
from rung.searcher.eventlog.reader import read_log
from rung.searcher.eventlog.records import CreatedRecord
from rung.searcher.host.host import ENDED

if TYPE_CHECKING:
    from rung.searcher.service.service import SearcherService

__all__ = [
    "DEFAULT_CONTEXT_RETENTION_S",
    "ContextUse",
    "Removal",
    "contexts_to_remove",
    "removed_message",
    "sweep",
    "sweep_once",
]

log = structlog.get_logger("rung.searcher")

# A finished experiment's context is kept this long (7 days), unless configured.
DEFAULT_CONTEXT_RETENTION_S: Final = 7 * 24 * 3600.0
_TOMBSTONE: Final = ".removed"


@dataclass(frozen=True)
class ContextUse:
    """One experiment's use of a context: when it ended (None: it has not, or it is not
    known), and whether a restart needs the extracted directory (a custom method)."""

    context_hash: str
    ended_at: float | None
    keeps_directory: bool = False


@dataclass(frozen=True)
class Removal:
    context_hash: str
    directory: bool  # the extracted directory goes too


def contexts_to_remove(
    now: float,
    uses: Iterable[ContextUse],
    present: Mapping[str, float],
    retention_s: float,
) -> list[Removal]:
    """The contexts to remove now, of those ``present`` (hash: the archive's mtime),
    given every experiment's use of a context. Pure: no clock, no disk."""
    if retention_s <= 0:
        return []
    by_hash: dict[str, list[ContextUse]] = {}
    for use in uses:
        by_hash.setdefault(use.context_hash, []).append(use)
    removals = []
    for digest, stored_at in sorted(present.items()):
        users = by_hash.get(digest, [])
        if not users:  # named by no experiment: gone once it is old enough
            if stored_at + retention_s <= now:
                removals.append(Removal(digest, directory=True))
            continue
        ends = [use.ended_at for use in users]
        if any(end is None for end in ends):
            continue  # an experiment still runs with it
        if max(end for end in ends if end is not None) + retention_s > now:
            continue  # one ended recently
        keep = any(use.keeps_directory for use in users)
        removals.append(Removal(digest, directory=not keep))
    return removals


def removed_message(contexts_dir: Path, context_hash: str) -> str | None:
    """Why the context is gone, if retention removed it (for ``get_context``'s
    not_found); None when it was not removed (or is there again)."""
    if not is_context_hash(context_hash):
        return None
    tombstone = contexts_dir / f"{context_hash}{_TOMBSTONE}"
    if archive_path(contexts_dir, context_hash).exists():
        return None
    try:
        data = json.loads(tombstone.read_text(encoding="utf-8"))
        removed_at, retention_s = float(data["removed_at"]), float(data["retention_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(removed_at))
    return (
        f"context {context_hash} was removed at {when}: every experiment using it had "
        f"ended more than the context retention ({retention_s:g} s, the searcher's "
        "--context-retention) before; create the experiment again to upload it"
    )


# ---------------------------------------------------------------------- the sweep
def _retention(service: SearcherService) -> float:
    """The service's context retention in seconds; 0 (or None) keeps contexts for ever."""
    value = getattr(service, "context_retention_s", DEFAULT_CONTEXT_RETENTION_S)
    return float(value) if value else 0.0


def _interval(retention_s: float) -> float:
    """How often to sweep: a tenth of the retention, between 1 s and an hour."""
    return min(max(retention_s / 10, 1.0), 3600.0)


async def sweep(service: SearcherService) -> None:
    """Remove expired contexts now and then, for as long as the service runs (a task of
    its task group). A removal that fails is logged and tried again at the next sweep."""
    while True:
        retention_s = _retention(service)
        if retention_s > 0:
            try:
                await sweep_once(service, now=time.time())
            except OSError as exc:
                log.warning("removing expired contexts failed", error=str(exc))
        await asyncio.sleep(_interval(retention_s if retention_s > 0 else 3600.0))


async def sweep_once(service: SearcherService, *, now: float) -> list[Removal]:
    """Decide and remove, under the creator's lock; return what was removed."""
    retention_s = _retention(service)
    if retention_s <= 0:
        return []
    contexts = service.state_dir / "contexts"
    async with service.creator.lock:
        if service.given_up_ids:
            return []  # experiments another searcher runs: their contexts are unknown
        uses = [
            ContextUse(
                host.run.context_hash,
                host.ended_at if host.run.state in ENDED else None,
                keeps_directory=host.run.experiment.config.searcher.name == "custom",
            )
            for host in (live.host for live in service.experiments.values())
        ]
        paths = [broken.path for broken in service.broken.values()]
        broken = await asyncio.to_thread(_broken_uses, paths)
        if broken is None:
            return []  # a broken experiment's context cannot be told: keep them all
        present = await asyncio.to_thread(_present, contexts)
        removals = contexts_to_remove(now, [*uses, *broken], present, retention_s)
        await asyncio.to_thread(_remove, contexts, removals, now, retention_s)
    for removal in removals:
        log.info(
            "context removed after the retention",
            context_hash=removal.context_hash,
            directory=removal.directory,
            retention_s=retention_s,
        )
    return removals


def _broken_uses(paths: list[Path]) -> list[ContextUse] | None:
    """Broken experiments keep their contexts (they may be recovered); None if the
    context of one of them cannot be read."""
    uses = []
    for path in paths:
        try:
            first = read_log(path)[0]
        except Exception:  # noqa: BLE001 (unreadable: its context is unknown)
            return None
        if not isinstance(first, CreatedRecord):
            return None
        uses.append(ContextUse(first.context_hash, None, keeps_directory=True))
    return uses


def _present(contexts: Path) -> dict[str, float]:
    """The stored archives: hash to modification time."""
    present = {}
    for path in contexts.glob("*.tar.gz"):
        digest = path.name.removesuffix(".tar.gz")
        if is_context_hash(digest):
            try:
                present[digest] = path.stat().st_mtime
            except FileNotFoundError:
                continue
    return present


def _remove(contexts: Path, removals: list[Removal], now: float, retention_s: float) -> None:
    _prune_tombstones(contexts, now, retention_s)
    if not removals:
        return
    for removal in removals:
        digest = removal.context_hash
        tombstone = contexts / f"{digest}{_TOMBSTONE}"
        tombstone.write_text(
            json.dumps({"removed_at": now, "retention_s": retention_s}), encoding="utf-8"
        )
        archive_path(contexts, digest).unlink(missing_ok=True)
        if removal.directory:
            shutil.rmtree(contexts / digest, ignore_errors=True)
    fsync_directory(contexts)


def _prune_tombstones(contexts: Path, now: float, retention_s: float) -> None:
    """Tombstones go after one more retention: the directory does not grow for ever."""
    for tombstone in contexts.glob(f"*{_TOMBSTONE}"):
        try:
            removed_at = float(json.loads(tombstone.read_text(encoding="utf-8"))["removed_at"])
        except (OSError, ValueError, KeyError, TypeError):
            removed_at = 0.0
        if removed_at + retention_s < now:
            tombstone.unlink(missing_ok=True)
