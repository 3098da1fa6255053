"""The ids of the messages an experiment has applied, kept compact.

Delivery is at least once, so every input is checked against the ids applied before: a
duplicate changes nothing. Keeping every id for ever would make a long experiment's
memory and snapshots grow without bound, so :class:`SeenIds` keeps them per sender:

* A worker names its events ``<worker id>/<session>/<n>``, ``n`` counting up from 1 in
  the order the worker publishes them (one counter per worker process, shared by all its
  trials). For each sender (``<worker id>/<session>``) the ids are a **watermark** ``w``
  (every ``n <= w`` is treated as applied) and the set of the ``n`` above it that were
  applied. When the set holds more than :data:`WINDOW` numbers, the watermark moves up
  to keep the newest half; when ``w + 1`` is applied, the watermark moves up by itself.
* Every other id (the searcher's own inputs: ``<experiment>/start``, a user's control,
  a timer's ``worker_lost``, ``lost/<trial>/<attempt>``) is kept in arrival order, the
  newest :data:`MAX_OTHER` of them; the start is never forgotten.
* At most :data:`MAX_SENDERS` senders are kept, the least recently heard forgotten first,
  and at most :data:`MAX_ABOVE` numbers above the watermarks in all (the sender with the
  most is compacted first): a flood of forged ids cannot grow it.

Why the decisions stay those of an unbounded set: a duplicate (a redelivery, a re-sent
publish, a trial asking again with the same id) is an id that was applied, so it is at or
below its sender's watermark or in the set: it is always recognised. A new id is taken
for a duplicate only if it arrives after more than ``WINDOW / 2`` later ids of the same
sender were applied to the same experiment. A worker publishes every event until the
broker confirms it, retrying each second, and the searcher applies an experiment's
events in queue order, so a first delivery overtaken by thousands of its own sender's
later events does not happen in practice (docs/eventlog.md has the argument).

The compact form is what snapshots store (:meth:`SeenIds.state`); a snapshot written
before (a plain list of ids) is read as well (:meth:`SeenIds.restore`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["MAX_ABOVE", "MAX_OTHER", "MAX_SENDERS", "WINDOW", "SeenIds", "split_id"]

# Applied numbers kept above one sender's watermark before it moves up.
WINDOW: Final = 4096
# Senders kept (the least recently heard is forgotten first).
MAX_SENDERS: Final = 4096
# Applied numbers kept above the watermarks, all senders together.
MAX_ABOVE: Final = 65_536
# Ids not of the worker form, newest kept.
MAX_OTHER: Final = 10_000

_MAX_DIGITS: Final = 18


def split_id(message_id: str, own_prefix: str = "") -> tuple[str, int] | None:
    """``(sender, n)`` for an id of the worker form ``<worker id>/<session>/<n>``; None
    for any other id (and for the searcher's own, which start with ``own_prefix`` or
    ``lost/``)."""
    if (own_prefix and message_id.startswith(own_prefix)) or message_id.startswith("lost/"):
        return None
    sender, slash, number = message_id.rpartition("/")
    if not slash or "/" not in sender or not number.isdigit() or len(number) > _MAX_DIGITS:
        return None
    if not number.isascii() or (number.startswith("0") and number != "0"):
        return None  # one spelling per number: "007" is not "7"
    return sender, int(number)


@dataclass
class _Sender:
    watermark: int = 0  # a worker's numbers start at 1: 0 is never a real one
    above: set[int] = field(default_factory=set)

    def __contains__(self, n: int) -> bool:
        return n <= self.watermark or n in self.above

    def add(self, n: int) -> int:
        """Apply ``n``; return how many numbers the set grew by (may be negative)."""
        if n in self:
            return 0
        before = len(self.above)
        self.above.add(n)
        while self.watermark + 1 in self.above:  # contiguous: the watermark moves up
            self.watermark += 1
            self.above.discard(self.watermark)
        return len(self.above) - before

    def compact(self, keep: int) -> int:
        """Keep the newest ``keep`` numbers above the watermark; return how many went."""
        if len(self.above) <= keep:
            return 0
        ordered = sorted(self.above)
        cut = len(ordered) - keep
        self.watermark = ordered[cut - 1]
        self.above = set(ordered[cut:])
        return cut


class SeenIds:
    """The message ids an experiment applied: ``in`` answers whether one was."""

    def __init__(
        self,
        experiment_id: str = "",
        *,
        window: int = WINDOW,
        max_senders: int = MAX_SENDERS,
        max_above: int = MAX_ABOVE,
        max_other: int = MAX_OTHER,
    ) -> None:
        self.experiment_id = experiment_id
        self._own = f"{experiment_id}/" if experiment_id else ""
        self._start = f"{experiment_id}/start" if experiment_id else None
        self._window = max(window, 2)
        self._max_senders = max(max_senders, 1)
        self._max_above = max(max_above, self._window)
        self._max_other = max(max_other, 1)
        self._senders: OrderedDict[str, _Sender] = OrderedDict()
        self._other: dict[str, None] = {}  # insertion-ordered
        self._started = False
        self._above = 0

    # ------------------------------------------------------------------ queries
    def __contains__(self, message_id: object) -> bool:
        if not isinstance(message_id, str):
            return False
        if message_id == self._start:
            return self._started
        parsed = split_id(message_id, self._own)
        if parsed is None:
            return message_id in self._other
        sender = self._senders.get(parsed[0])
        return sender is not None and parsed[1] in sender

    def __eq__(self, other: object) -> bool:
        """The same ids held (whatever the order they came in)."""
        if not isinstance(other, SeenIds):
            return NotImplemented
        return self._normal() == other._normal()

    __hash__ = None  # type: ignore[assignment]

    def _normal(self) -> tuple[object, ...]:
        senders = {name: (s.watermark, frozenset(s.above)) for name, s in self._senders.items()}
        return (self._started, senders, frozenset(self._other))

    def __len__(self) -> int:
        """How many entries are held (watermarks, numbers above them, other ids): the
        size that stays bounded, not how many ids were applied."""
        return len(self._senders) + self._above + len(self._other) + int(self._started)

    # ------------------------------------------------------------------ updates
    def add(self, message_id: str) -> None:
        if message_id == self._start:
            self._started = True
            return
        parsed = split_id(message_id, self._own)
        if parsed is None:
            self._add_other(message_id)
            return
        name, n = parsed
        sender = self._senders.get(name)
        if sender is None:
            sender = self._senders[name] = _Sender()
            while len(self._senders) > self._max_senders:
                _, gone = self._senders.popitem(last=False)
                self._above -= len(gone.above)
        else:
            self._senders.move_to_end(name)
        self._above += sender.add(n)
        if len(sender.above) > self._window:
            self._above -= sender.compact(self._window // 2)
        while self._above > self._max_above:
            largest = max(self._senders.values(), key=lambda s: len(s.above))
            self._above -= largest.compact(len(largest.above) // 2)

    def update(self, message_ids: Iterable[str]) -> None:
        for message_id in message_ids:
            self.add(message_id)

    def _add_other(self, message_id: str) -> None:
        if message_id in self._other:
            return
        self._other[message_id] = None
        while len(self._other) > self._max_other:
            del self._other[next(iter(self._other))]

    # ------------------------------------------------------------------ snapshots
    def state(self) -> dict[str, Any]:
        """The compact form, for a snapshot: JSON, deterministic for the same inputs."""
        return {
            "v": 2,
            "started": self._started,
            "senders": [[name, s.watermark, sorted(s.above)] for name, s in self._senders.items()],
            "other": list(self._other),
        }

    @classmethod
    def restore(cls, state: Any, experiment_id: str = "") -> SeenIds:
        """The ids a snapshot holds: the compact form, or a list of ids (older snapshots)."""
        seen = cls(experiment_id)
        if isinstance(state, dict) and state.get("v") == 2:
            seen._started = bool(state.get("started", False))
            for name, watermark, above in state.get("senders", []):
                seen._senders[str(name)] = _Sender(int(watermark), {int(n) for n in above})
                seen._above += len(above)
            for message_id in state.get("other", []):
                seen._add_other(str(message_id))
        elif isinstance(state, list | set | tuple):
            seen.update(str(message_id) for message_id in state)
        return seen
