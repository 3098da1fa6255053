"""Who may do what: the searcher's side of the trust model (``docs/security.md``).

Every message arrives with the ``user_id`` its publisher's broker connection logged in
as; RabbitMQ refuses a message whose ``user_id`` is not its connection's own, so that
name is vouched for. The searcher gives each name a role:

* **local**: no broker vouches for anyone: the searcher's own connection has no user
  (the in-memory broker of ``rung run`` and ``Client.local``; a RabbitMQ login that names
  no user). One user's own machine: everything is allowed.
* **anonymous**: a message without ``user_id`` on a broker that vouches for users (a
  publisher that left it out; every Rung program sets it): refused everything.
* **searcher**: the searcher's own broker user. Whoever holds its credentials can
  publish commands already; nothing is gained by refusing them anything (a development
  broker where one user, ``guest``, plays every role is single-user this way).
* **admin**: the users named ``admins`` or ``operators`` (and ``<prefix>operator``, the
  operator user ``rung broker-definitions`` makes): every experiment, every request.
  Operators may also re-send dead letters (``rung dlq requeue``).
* **worker**: ``<prefix>worker`` (the pool user ``rung broker-definitions`` makes), the
  users named ``workers``, and any user heard publishing a worker event or a heartbeat
  (only worker users may write the events exchange). A narrow interface: the context and
  the best validation metric of an experiment that has work queued or running, and
  events for the attempts it runs; no control request, no creation.
* **client**: everyone else: creates experiments, and reads and controls its own.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol

from rung.broker.port import ORIGINAL_USER_HEADER, Delivery
from rung.broker.schemas import TrialStarted
from rung.searcher.eventlog.records import InputRecord, Record
from rung.searcher.service.errors import AccessRefusedError
from rung.searcher.trials.model import ENDED, RunState, TrialRuntime

__all__ = [
    "ORIGINAL_USER_HEADER",
    "Access",
    "Binding",
    "Role",
    "logged_bindings",
]

Role = Literal["local", "anonymous", "searcher", "admin", "worker", "client"]


# A private reply queue: an exclusive queue named by aio-pika's robust channels
# (``amq_<uuid>``) or by the broker (``amq.gen-...``), or RabbitMQ's direct reply-to.
_PRIVATE_REPLY = re.compile(
    r"amq_[0-9a-f]{32}|amq\.gen-[A-Za-z0-9_\-]+|amq\.rabbitmq\.reply-to(\.[A-Za-z0-9_.=+/\-]+)?"
)
# The in-memory broker's private queues (only where no broker vouches for users).
_MEMORY_PRIVATE = re.compile(r"[A-Za-z0-9_.\-]+\.private\.[0-9]+")

_TRUSTED: Final = ("local", "searcher", "admin")


class Running(Protocol):
    """What :meth:`Access.prune` reads of an experiment's run."""

    state: RunState
    by_id: dict[int, TrialRuntime]


@dataclass(frozen=True)
class Binding:
    """Who runs one trial attempt: the user and the worker id of its ``trial_started``
    (``user`` None where no broker vouched for it, or in a log older than senders)."""

    user: str | None
    worker_id: str


@dataclass
class Access:
    """The roles, and the attempts bound to their workers."""

    searcher_user: str | None = None
    admins: frozenset[str] = frozenset()
    operators: frozenset[str] = frozenset()
    workers: frozenset[str] = frozenset()
    # Users heard publishing a worker event or a heartbeat: worker users.
    heard: set[str] = field(default_factory=set)
    # (experiment id, trial id) -> its latest bound attempt, and who runs it.
    bindings: dict[tuple[str, int], tuple[int, Binding]] = field(default_factory=dict)
    # The users of the other parts of attempts that run on several workers (gang
    # scheduling), bound on each part's first trial_started, as the chief's above.
    member_users: dict[tuple[str, int, int, str], str | None] = field(default_factory=dict)
    # Set (and replaced) whenever a new worker user is heard.
    new_worker: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        # The users `rung broker-definitions` makes are <prefix><role>: the searcher's own
        # name gives the prefix, and with it the pool worker and the operator.
        user = self.searcher_user or ""
        if user.endswith("searcher"):
            prefix = user.removesuffix("searcher")
            self.workers = self.workers | {f"{prefix}worker"}
            self.operators = self.operators | {f"{prefix}operator"}

    # ------------------------------------------------------------------ roles
    def role(self, user: str | None) -> Role:
        if self.searcher_user is None:
            return "local"
        if user is None:
            return "anonymous"
        if user == self.searcher_user:
            return "searcher"
        if user in self.admins or user in self.operators:
            return "admin"
        if user in self.workers or user in self.heard:
            return "worker"
        return "client"

    def trusted(self, user: str | None) -> bool:
        """Whether ``user`` may do everything (local, the searcher's own user, an admin)."""
        return self.role(user) in _TRUSTED

    def heard_worker(self, user: str | None) -> None:
        """``user`` published on the events or heartbeats queue: a worker user."""
        if user is not None and self.role(user) == "client":
            self.heard.add(user)
            self.new_worker.set()
            self.new_worker = asyncio.Event()

    # ------------------------------------------------------------------ senders
    def sender(self, delivery: Delivery) -> tuple[str | None, str | None]:
        """The user a message counts as sent by, and why it is refused (or None).

        A message re-sent by ``rung dlq requeue`` carries its original user in
        :data:`ORIGINAL_USER_HEADER`; only an operator or an admin may re-send, and the
        message is then checked as its original sender's.
        """
        user = delivery.user_id
        original = delivery.headers.get(ORIGINAL_USER_HEADER)
        if original is None or self.role(user) == "local":
            return user, None
        if not self.trusted(user):
            return user, (
                f"header {ORIGINAL_USER_HEADER} (set by rung dlq requeue) came from broker "
                f"user {user!r}, which is not an operator or an admin; only an operator "
                "may re-send dead letters"
            )
        if not isinstance(original, str | bytes) or not original:
            return user, f"header {ORIGINAL_USER_HEADER} must name a broker user"
        return (original.decode() if isinstance(original, bytes) else original), None

    def reply_refusal(self, reply_to: str | None, user: str | None) -> str | None:
        """Why the searcher will not answer to ``reply_to``, or None."""
        if reply_to is None or _PRIVATE_REPLY.fullmatch(reply_to):
            return None
        if self.role(user) == "local" and _MEMORY_PRIVATE.fullmatch(reply_to):
            return None
        return (
            f"reply_to {reply_to[:100]!r} is not a private reply queue; the searcher answers "
            "only to a caller's own exclusive queue (amq_<32 hex>, amq.gen-..., or "
            "amq.rabbitmq.reply-to)"
        )

    # ------------------------------------------------------------------ requests
    def check_identified(self, user: str | None) -> None:
        if self.role(user) == "anonymous":
            raise AccessRefusedError(
                "the request has no user_id, and this broker vouches for users: the "
                "searcher serves only requests that say (and the broker checks) who sent "
                "them; publish with user_id set to your broker user, as Rung's clients do"
            )

    def check_create(self, user: str | None) -> None:
        if self.role(user) == "worker":
            raise AccessRefusedError(
                f"broker user {user!r} is a worker; workers may not create experiments "
                "(send it with a client's credentials)"
            )

    def check_owner(
        self, user: str | None, experiment_id: str, owner: str | None, action: str
    ) -> None:
        """Only the experiment's owner, or an admin, may ``action`` it."""
        role = self.role(user)
        if role in _TRUSTED or (role == "client" and owner is not None and user == owner):
            return
        whose = f"belongs to {owner}" if owner is not None else "has no recorded owner"
        hint = " (it is a worker; workers send no client requests)" if role == "worker" else ""
        raise AccessRefusedError(
            f"experiment {experiment_id} {whose}; only its owner or an admin may "
            f"{action} it, and broker user {user!r} is neither{hint}"
        )

    def sees(self, user: str | None, owner: str | None) -> bool:
        """Whether ``user`` lists an experiment owned by ``owner``."""
        return self.trusted(user) or (user is not None and user == owner)

    def check_client(self, user: str | None, action: str) -> None:
        """A request for clients and admins only (not workers)."""
        if self.role(user) == "worker":
            raise AccessRefusedError(f"broker user {user!r} is a worker; workers may not {action}")

    # ------------------------------------------------------------------ bindings
    def bind(self, experiment_id: str, trial_id: int, attempt: int, binding: Binding) -> None:
        """Bind a trial's attempt to who started it: the first binding of an attempt
        stays; a later attempt replaces an earlier one's (whose events the run ignores)."""
        key = (experiment_id, trial_id)
        current = self.bindings.get(key)
        if current is None or attempt > current[0]:
            self.bindings[key] = (attempt, binding)

    def bind_member(
        self, experiment_id: str, trial_id: int, attempt: int, worker_id: str, user: str | None
    ) -> None:
        """Bind a part of an attempt on several workers to who started it (the first
        binding stays)."""
        self.member_users.setdefault((experiment_id, trial_id, attempt, worker_id), user)

    def prune(self, experiment_id: str, run: Running) -> None:
        """Forget the bindings of ``experiment_id``'s attempts that no longer run: once an
        attempt's trial has left RUNNING (its exit was taken, or the trial or the whole
        experiment ended), the run ignores every event of it anyway. All of them once the
        experiment ended: the bindings stay as many as the trials running."""
        ended = run.state in ENDED
        for key in [k for k in self.bindings if k[0] == experiment_id]:
            attempt, binding = self.bindings[key]
            trial = run.by_id.get(key[1])
            if (
                ended
                or trial is None
                or trial.state != "RUNNING"
                or trial.attempt != attempt
                or trial.worker_id != binding.worker_id
            ):
                del self.bindings[key]
        for member in [k for k in self.member_users if k[0] == experiment_id]:
            trial = run.by_id.get(member[1])
            if ended or trial is None or trial.attempt != member[2] or trial.gang is None:
                del self.member_users[member]

    def restore(
        self,
        experiment_id: str,
        bindings: Iterable[tuple[int, int, Binding]],
        run: Running | None = None,
    ) -> None:
        """The bindings a restarted searcher read back from an experiment's log; their
        users are worker users (they started trials). With the run: a start of another
        part than the chief's of an attempt on several workers binds that part."""
        for trial_id, attempt, binding in bindings:
            self.heard_worker(binding.user)
            trial = run.by_id.get(trial_id) if run is not None else None
            if (
                trial is not None
                and trial.gang is not None
                and trial.attempt == attempt
                and binding.worker_id != trial.worker_id
            ):
                if binding.worker_id in {part.worker_id for part in trial.gang}:
                    self.bind_member(
                        experiment_id, trial_id, attempt, binding.worker_id, binding.user
                    )
                continue
            self.bind(experiment_id, trial_id, attempt, binding)

    def bound(self, experiment_id: str, trial_id: int, attempt: int) -> Binding | None:
        current = self.bindings.get((experiment_id, trial_id))
        return current[1] if current is not None and current[0] == attempt else None

    def impostor(
        self, body: object, sender: str | None, *, members: frozenset[str] = frozenset()
    ) -> str | None:
        """Why an event of a bound attempt is not from the worker that started it, or
        None. A second ``trial_started`` from another worker id is let through: it is a
        second process of the attempt (a re-sent ``run_trial``), which the run stops. So
        are the events of ``members``, the workers of the attempt's other parts when it
        runs on several (whose users ``verify_worker_users`` checks as for any worker)."""
        experiment_id = getattr(body, "experiment_id", None)
        trial_id = getattr(body, "trial_id", None)
        attempt = getattr(body, "attempt", None)
        worker_id = getattr(body, "worker_id", None)
        if not isinstance(experiment_id, str) or not isinstance(trial_id, int):
            return None
        if not isinstance(attempt, int) or not isinstance(worker_id, str):
            return None
        bound = self.bound(experiment_id, trial_id, attempt)
        if bound is None:
            return None
        if worker_id != bound.worker_id and isinstance(body, TrialStarted):
            return None
        if worker_id != bound.worker_id and worker_id in members:
            # Another part's worker: from the user that started that part, once it has.
            user = self.member_users.get((experiment_id, trial_id, attempt, worker_id))
            if user is None or sender == user:
                return None
            return (
                f"part of trial {trial_id} attempt {attempt} on worker {worker_id!r} was "
                f"started by broker user {user!r}; this {getattr(body, 'type', 'event')} came "
                f"from {sender!r}: every event of a part must come from the worker that "
                "started it"
            )
        if worker_id == bound.worker_id and (bound.user is None or sender == bound.user):
            return None
        return (
            f"trial {trial_id} attempt {attempt} of experiment {experiment_id} was started by "
            f"worker {bound.worker_id!r} (broker user {bound.user!r}); this "
            f"{getattr(body, 'type', 'event')} came from worker {worker_id!r} (broker user "
            f"{sender!r}): every event of an attempt must come from the worker that "
            "started it"
        )


def logged_bindings(records: Sequence[Record]) -> Iterator[tuple[int, int, Binding]]:
    """The attempts an experiment's log bound to their workers: for each (trial,
    attempt, worker), the first ``trial_started`` the searcher took (not ignored), with
    the user that sent it (``sender``): one per attempt, or one per part of an attempt
    that ran on several workers. Only the lines that name ``trial_started`` are parsed."""
    kinds = getattr(records, "kind", None)
    raw = getattr(records, "raw", None)
    seen: set[tuple[int, int, str]] = set()
    for index in range(len(records)):
        if kinds is not None and kinds(index) != "input":
            continue
        if raw is not None and b'"trial_started"' not in raw(index):
            continue
        record = records[index]
        if not isinstance(record, InputRecord) or record.ignored is not None:
            continue
        body = record.input
        if not isinstance(body, TrialStarted):
            continue
        if (body.trial_id, body.attempt, body.worker_id) in seen:
            continue
        seen.add((body.trial_id, body.attempt, body.worker_id))
        yield body.trial_id, body.attempt, Binding(record.sender, body.worker_id)
