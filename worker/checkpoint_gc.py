"""Checkpoint garbage collection on a worker: run a ``DeleteCheckpoints`` from the searcher.

The searcher decides which checkpoints its ``checkpoint_storage`` policy no longer keeps
(see ``rung.searcher.trials.gc``) and publishes one ``DeleteCheckpoints`` to the work
queue; any worker that sees the experiment's checkpoint storage runs it, without taking a
slot. Only directories ``<checkpoint_root>/<uuid>`` are ever removed, and only when
``checkpoint_root`` is an experiment's own root (its last part is the experiment id, which
has the searcher's format ``exp-<8 hex digits>``), inside the worker's checkpoint storage
when it was given one (``rung worker --checkpoint-storage``). A checkpoint that is gone
already is fine: the command may be delivered more than once. Only the searcher's broker
user may send the command at all (the worker checks the broker-validated ``user_id``).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from rung.broker.limits import is_uuid
from rung.broker.schemas import DeleteCheckpoints

__all__ = ["EXPERIMENT_ID", "CheckpointGCRefusedError", "delete_checkpoints"]

# The searcher's experiment ids (``rung.searcher.host.experiment_id_for``).
EXPERIMENT_ID = re.compile(r"exp-[0-9a-f]{8}")
# A checkpoint being deleted is renamed first, so that it never looks whole half-deleted.
_DELETING = ".deleting-"


class CheckpointGCRefusedError(ValueError):
    """A ``DeleteCheckpoints`` that this worker will not run: the message says why."""


def _checked_root(cmd: DeleteCheckpoints, allowed_root: Path | None) -> Path:
    if not EXPERIMENT_ID.fullmatch(cmd.experiment_id):
        raise CheckpointGCRefusedError(
            f"experiment_id must be a searcher's experiment id (exp- and 8 lowercase hex "
            f"digits), got {cmd.experiment_id[:80]!r}; only an experiment's own checkpoint "
            "root is ever cleaned"
        )
    root = Path(cmd.checkpoint_root)
    if not root.is_absolute():
        raise CheckpointGCRefusedError(
            f"checkpoint_root must be an absolute path, got {cmd.checkpoint_root!r}; "
            "the searcher sends the experiment's root, <storage>/<experiment id>"
        )
    if root.name != cmd.experiment_id:
        raise CheckpointGCRefusedError(
            f"checkpoint_root must be the experiment's own root, ending in its id "
            f"{cmd.experiment_id!r}, got {cmd.checkpoint_root!r}; checkpoints of experiments "
            "with a shared root are never deleted"
        )
    resolved = root.resolve()
    if resolved.name != cmd.experiment_id:
        raise CheckpointGCRefusedError(
            f"checkpoint_root {cmd.checkpoint_root!r} resolves to {str(resolved)!r}, which is "
            f"not the experiment's own root (ending in {cmd.experiment_id!r})"
        )
    if allowed_root is not None and not resolved.is_relative_to(allowed_root.resolve()):
        raise CheckpointGCRefusedError(
            f"checkpoint_root {cmd.checkpoint_root!r} is outside this worker's checkpoint "
            f"storage {str(allowed_root)!r}; run the worker with the storage the experiment uses"
        )
    return resolved


def delete_checkpoints(cmd: DeleteCheckpoints, *, allowed_root: Path | None = None) -> list[str]:
    """Delete ``<checkpoint_root>/<uuid>`` for each uuid of ``cmd``; return the uuids whose
    directory this call removed (missing ones are skipped: the call is idempotent).

    Refused (:class:`CheckpointGCRefusedError`, nothing deleted): an experiment id not of
    the searcher's format, a relative root, a root
    that is not the experiment's own, a root outside ``allowed_root``, a uuid that is not
    a canonical uuid. A path that is not a plain directory inside the root (a symlink, a
    file) is left alone.
    """
    root = _checked_root(cmd, allowed_root)
    bad = [u for u in cmd.uuids if not is_uuid(u)]
    if bad:
        raise CheckpointGCRefusedError(
            f"checkpoint uuids must be canonical lowercase uuids, got {bad[0]!r}"
        )
    deleted: list[str] = []
    for uuid in cmd.uuids:
        path = root / uuid
        doomed = root / f"{_DELETING}{uuid}"
        if doomed.is_dir() and not doomed.is_symlink():
            shutil.rmtree(doomed)  # an earlier delivery stopped half-way
        if path.is_symlink() or not path.is_dir():
            continue
        if path.resolve().parent != root:
            continue  # not inside the root after all
        try:
            os.rename(path, doomed)
        except FileNotFoundError:
            continue  # another worker got there first
        shutil.rmtree(doomed)
        deleted.append(uuid)
    return deleted
