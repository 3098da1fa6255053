"""Creating an experiment: check the request, store its context, start its host.

Slow work (decoding and validating the archive, storing and extracting it, each fsync'd)
runs in a thread: no other experiment's input waits for it. Creation is idempotent: the
experiment id follows from the request's key (a client-chosen key, else the request's
message id), so a create sent again, or delivered again after a crash, answers with the
experiment the first one made.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from rung.broker.archive import ArchiveError, validate
from rung.broker.contexts import store_context
from rung.broker.schemas import CreateExperiment
from rung.searcher.config import ExperimentConfig, parse_config
from rung.searcher.errors import ConfigError, ConfigProblem, SearcherError
from rung.searcher.eventlog.records import CreatedRecord
from rung.searcher.experiment import Experiment
from rung.searcher.host import ExperimentHost, experiment_id_for
from rung.searcher.methods import build_method
from rung.searcher.service.errors import RequestRefusedError
from rung.searcher.trials import ExperimentRun

__all__ = ["Creator", "checkpoint_root"]

log = structlog.get_logger("rung.searcher")


def checkpoint_root(config: ExperimentConfig, state_dir: Path) -> str:
    """Where the experiment's checkpoints go: its checkpoint storage, else the state
    directory's ``checkpoints``."""
    storage = config.checkpoint_storage
    if storage is None:
        return str((state_dir / "checkpoints").resolve())
    if storage.type == "shared_fs" and storage.host_path:
        return str(Path(storage.host_path) / (storage.storage_path or ""))
    return str(storage.container_path)


@dataclass(frozen=True)
class _Checked:
    config: ExperimentConfig
    warnings: list[str]
    data: bytes


def _check(body: CreateExperiment) -> _Checked:
    """The config and context of a create request, or why they are refused."""
    try:
        loaded = parse_config(body.config, source=body.config_source or None)
    except ConfigError as exc:
        raise RequestRefusedError(str(exc), list(exc.problems)) from None
    if not loaded.config.entrypoint:
        missing = ConfigProblem(
            "entrypoint", "required to run trials; add entrypoint: python3 train.py"
        )
        raise RequestRefusedError(str(missing), [missing])
    try:
        data = base64.b64decode(body.context_b64, validate=True)
        validate(data)
    except (ArchiveError, binascii.Error, ValueError) as exc:
        problem = ConfigProblem("context", str(exc))
        raise RequestRefusedError(f"context: {exc}", [problem]) from None
    return _Checked(loaded.config, list(loaded.warnings), data)


class Creator:
    """Creates experiments one at a time (two copies of one request must not both
    create); the work runs in a thread, so inputs of other experiments go on."""

    def __init__(
        self,
        state_dir: Path,
        owner: str,
        *,
        existing: Callable[[str], str | None],
    ) -> None:
        self.state_dir = state_dir
        self.owner = owner
        # The request key of the experiment with this id, or None if there is none.
        self._existing = existing
        # One creation at a time: two copies of one request must not both create.
        self.lock = asyncio.Lock()

    def experiment_id(self, key: str) -> tuple[str, bool]:
        """The id for a request with ``key``, and whether that experiment exists."""
        attempt = 0
        while True:
            experiment_id = experiment_id_for(key, attempt)
            owner = self._existing(experiment_id)
            if owner is None:
                return experiment_id, False
            if owner == key:
                return experiment_id, True
            attempt += 1  # another request has this id: draw the next one

    async def create(self, body: CreateExperiment, key: str, experiment_id: str) -> ExperimentHost:
        """A new experiment's host, started, its log written but not yet synced (the
        caller holds :attr:`lock`, and found no experiment for ``key``). The work runs
        in a thread: checks, storage, importing a custom method, the log's first fsyncs."""
        return await asyncio.to_thread(self._create, body, key, experiment_id)

    def _create(self, body: CreateExperiment, key: str, experiment_id: str) -> ExperimentHost:
        checked = _check(body)
        config = checked.config
        if config.experiment_seed is None:
            config = config.with_seed(secrets.randbelow(2**32))
        contexts = self.state_dir / "contexts"
        digest, context_dir = store_context(checked.data, contexts)
        try:
            method = build_method(config, context_dir=context_dir)
            experiment = Experiment(config, method)
        except SearcherError as exc:
            raise RequestRefusedError(str(exc), [ConfigProblem("searcher", str(exc))]) from None
        run = ExperimentRun(
            experiment_id,
            experiment,
            context_hash=digest,
            checkpoint_root=checkpoint_root(config, self.state_dir),
        )
        created = CreatedRecord(
            seq=1,
            at=time.time(),
            experiment_id=experiment_id,
            context_hash=digest,
            checkpoint_root=run.checkpoint_root,
            config=config.model_dump(mode="json", by_alias=True),
            request_key=key,
        )
        host = ExperimentHost.create(
            run,
            created,
            self.state_dir / "experiments" / experiment_id / "events.jsonl",
            owner=self.owner,
            context_root=contexts,
            warnings=checked.warnings,
            at=time.time(),
        )
        log.info(
            "experiment created",
            experiment_id=experiment_id,
            name=config.name,
            searcher=config.searcher.name,
            seed=config.experiment_seed,
        )
        return host
