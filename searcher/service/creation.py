"""Creating an experiment: check the request, store its context, start its host.

Slow work (decoding and validating the archive, storing and extracting it, each fsync'd)
runs in a thread: no other experiment's input waits for it. Creation is idempotent: the
experiment id follows from the request's key (a client-chosen key, else the request's
message id), so a create sent again, or delivered again after a crash, answers with the
experiment the first one made.

The experiment's owner is the broker-validated user that sent the request (None where no
broker vouches for users); it is written in the ``created`` record. A ``custom`` search
method runs the context's Python inside the searcher, with the searcher's credentials:
it is refused unless the searcher allows custom searchers, or the creator holds those
credentials already (``docs/security.md``).

A warm start (``searcher.source_checkpoint_uuid``) names a checkpoint another experiment
saved, under that experiment's own checkpoint root: the creator finds the experiment
among those the searcher serves that its creator may read (its own, or any for an
admin), and writes that experiment's root in the ``created`` record
(``warm_start_root``); a uuid no such experiment saved is refused.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog

from rung.broker.archive import ArchiveError, validate_async
from rung.broker.contexts import store_context
from rung.broker.schemas import CreateExperiment
from rung.searcher.config import ExperimentConfig, parse_config
from rung.searcher.errors import ConfigError, ConfigProblem, SearcherError
from rung.searcher.eventlog.records import CreatedRecord, record_adapter
from rung.searcher.experiment import Experiment
from rung.searcher.host import ExperimentHost, experiment_id_for
from rung.searcher.methods import RULES, build_method
from rung.searcher.service.errors import RequestRefusedError
from rung.searcher.trials import ExperimentRun
from rung.searcher.trials.model import ENDED

__all__ = [
    "CUSTOM_REFUSED",
    "Creator",
    "checkpoint_root",
    "logged_creation",
    "uses_custom",
    "warm_start_root",
]

CUSTOM_REFUSED = (
    "searcher.name: custom runs the context's Python inside the searcher process, with "
    "the searcher's broker credentials, so it is off on a shared searcher; an admin can "
    "allow it (rung searcher --allow-custom-searchers, SearcherService("
    "allow_custom_searchers=True)), and rung run and Client.local allow it; or use a "
    "built-in searcher (single, random, grid, async_halving, adaptive_asha)"
)

log = structlog.get_logger("rung.searcher")


def checkpoint_root(config: ExperimentConfig, state_dir: Path, experiment_id: str) -> str:
    """Where the experiment's checkpoints go: ``<storage>/<experiment_id>``, its own
    directory under its checkpoint storage (else the state directory's ``checkpoints``),
    so that one experiment's trials never touch another's checkpoints."""
    storage = config.checkpoint_storage
    if storage is None:
        base = (state_dir / "checkpoints").resolve()
    elif storage.type == "shared_fs" and storage.host_path:
        base = Path(storage.host_path) / (storage.storage_path or "")
    else:
        base = Path(str(storage.container_path))
    return str(base / experiment_id)


def warm_start_root(uuid: str, runs: Iterable[ExperimentRun]) -> str | None:
    """The checkpoint root of the experiment among ``runs`` whose trials saved checkpoint
    ``uuid`` (and still hold it), or None. A trial that started from a warm start's source
    has it as its ``latest_checkpoint`` without having saved it: only the checkpoints a
    trial saved (``checkpoints``) count."""
    for run in runs:
        if any(uuid in trial.checkpoints for trial in run.trials.values()):
            if run.state not in ENDED:
                # Its checkpoint policy may still delete the source (a newer or better
                # checkpoint comes): this experiment's trials would then find nothing.
                message = (
                    f"searcher.source_checkpoint_uuid: checkpoint {uuid!r} belongs to "
                    f"experiment {run.experiment_id}, which is still {run.state}: its "
                    "checkpoint_storage policy may still delete it; wait until it ends "
                    "(rung experiment wait), then create this experiment"
                )
                problem = ConfigProblem("searcher.source_checkpoint_uuid", message)
                raise RequestRefusedError(message, [problem])
            return run.checkpoint_root
    return None


def _source_not_found(uuid: str) -> RequestRefusedError:
    message = (
        f"searcher.source_checkpoint_uuid: no experiment you may read saved checkpoint "
        f"{uuid!r} (or its checkpoint_storage policy deleted it since); a warm start "
        "starts from a checkpoint another experiment of yours saved and still keeps: use "
        "the uuid of one of its trials' checkpoints (e.g. Client's best_trial()."
        "latest_checkpoint, or rung describe), or leave source_checkpoint_uuid out"
    )
    return RequestRefusedError(message, [ConfigProblem("searcher.source_checkpoint_uuid", message)])


def logged_creation(path: Path) -> CreatedRecord | None:
    """The ``created`` record at the head of an experiment's log, if it can be read."""
    try:
        with path.open("rb") as file:
            first = file.readline()
        record = record_adapter.validate_json(first)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, CreatedRecord) else None


def uses_custom(created: CreatedRecord) -> bool:
    """Whether the experiment's search method is a custom one (uploaded code)."""
    searcher = created.config.get("searcher")
    return isinstance(searcher, dict) and searcher.get("name") == "custom"


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
    except (binascii.Error, ValueError) as exc:
        raise _context_refused(exc) from None
    return _Checked(loaded.config, list(loaded.warnings), data)


def _context_refused(exc: Exception) -> RequestRefusedError:
    problem = ConfigProblem("context", str(exc))
    return RequestRefusedError(f"context: {exc}", [problem])


async def _validate_context(body: CreateExperiment) -> None:
    """Check the context archive as it streams, in a child process limited in CPU time,
    memory and wall-clock time (``validate_async``): an archive bomb never stalls the
    searcher's event loop nor takes its memory."""
    try:
        data = base64.b64decode(body.context_b64, validate=True)
        await validate_async(data)
    except (ArchiveError, binascii.Error, ValueError) as exc:
        raise _context_refused(exc) from None


class Creator:
    """Creates experiments one at a time (two copies of one request must not both
    create); the work runs in a thread, so inputs of other experiments go on."""

    def __init__(
        self,
        state_dir: Path,
        owner: str,
        *,
        existing: Callable[[str], tuple[str, str | None] | None],
        readable: Callable[[str | None], Iterable[ExperimentRun]],
        allow_custom: Callable[[str | None], bool] = lambda _user: True,
    ) -> None:
        self.state_dir = state_dir
        self.owner = owner
        # The request key and owner of the experiment with this id, or None if there is
        # none.
        self._existing = existing
        # Whether an experiment created by this user may use a custom search method.
        self._allow_custom = allow_custom
        # The runs of the experiments this user may read (its own; all for an admin),
        # where a warm start's source checkpoint is looked for. Called on the event loop.
        self._readable = readable
        # One creation at a time: two copies of one request must not both create.
        self.lock = asyncio.Lock()

    def experiment_id(self, key: str, creator: str | None = None) -> tuple[str, bool]:
        """The id for ``creator``'s request with ``key``, and whether that experiment
        exists. Another user's experiment with the same key is not this request's: the
        next id is drawn, and nothing of it is told."""
        attempt = 0
        while True:
            experiment_id = experiment_id_for(key, attempt)
            existing = self._existing(experiment_id)
            if existing is None:
                return experiment_id, False
            if existing == (key, creator):
                return experiment_id, True
            attempt += 1  # another request has this id: draw the next one

    async def create(
        self, body: CreateExperiment, key: str, experiment_id: str, *, creator: str | None = None
    ) -> ExperimentHost:
        """A new experiment's host, started, its log written but not yet synced (the
        caller holds :attr:`lock`, and found no experiment for ``key``). The work runs
        in a thread: checks, storage, importing a custom method, the log's first fsyncs;
        the context is checked first, in a child process."""
        await _validate_context(body)
        checked = await asyncio.to_thread(_check, body)
        # On the event loop: the runs searched are the ones other inputs change.
        source = self._warm_start_root(checked.config, creator)
        return await asyncio.to_thread(self._create, checked, key, experiment_id, creator, source)

    def _warm_start_root(self, config: ExperimentConfig, creator: str | None) -> str | None:
        """The root of the experiment that saved the config's warm-start source, among
        those ``creator`` may read; None without a warm start; refused if none did."""
        uuid = config.searcher.source_checkpoint_uuid
        if uuid is None:
            return None
        root = warm_start_root(uuid, self._readable(creator))
        if root is None:
            raise _source_not_found(uuid)
        return root

    def _create(
        self,
        checked: _Checked,
        key: str,
        experiment_id: str,
        creator: str | None,
        source_root: str | None,
    ) -> ExperimentHost:
        config = checked.config
        if config.searcher.name == "custom" and not self._allow_custom(creator):
            problem = ConfigProblem("searcher.name", CUSTOM_REFUSED)
            raise RequestRefusedError(CUSTOM_REFUSED, [problem])
        if config.experiment_seed is None:
            config = config.with_seed(secrets.randbelow(2**32))
        # Drawn here, in the shell, and logged: each attempt's start token derives from it
        # in the core, the same on every replay.
        start_secret = secrets.token_hex(16)
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
            checkpoint_root=checkpoint_root(config, self.state_dir, experiment_id),
            warm_start_root=source_root,
            start_secret=start_secret,
        )
        created = CreatedRecord(
            seq=1,
            at=time.time(),
            experiment_id=experiment_id,
            context_hash=digest,
            checkpoint_root=run.checkpoint_root,
            config=config.model_dump(mode="json", by_alias=True),
            request_key=key,
            owner=creator,
            warm_start_root=source_root,
            start_secret=start_secret,
            rules=RULES,
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
            owner=creator,
        )
        return host
