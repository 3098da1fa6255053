"""The applied-id set stays bounded and decides as an unbounded set would, for the id
streams a cluster sends: each sender's ids in order, with duplicates, redeliveries and
first deliveries overtaken by a few later ones."""

from __future__ import annotations

from random import Random

from hypothesis import given, settings
from hypothesis import strategies as st

from rung.searcher.eventlog.seen import MAX_OTHER, WINDOW, SeenIds, split_id

EID = "exp-seen"


def test_ids_of_the_worker_form_are_split_into_sender_and_number() -> None:
    assert split_id("w1/abc123/17") == ("w1/abc123", 17)
    assert split_id("w1.gpu/a/b/3") == ("w1.gpu/a/b", 3)
    # The searcher's own inputs, and anything else, are kept whole.
    assert split_id(f"{EID}/start", f"{EID}/") is None
    assert split_id(f"{EID}/control/42", f"{EID}/") is None
    assert split_id("lost/1/2") is None
    assert split_id("w1/7") is None  # no session
    assert split_id("w1/s/007") is None  # one spelling per number
    assert split_id("w1/s/x") is None
    assert split_id("w1/s/" + "9" * 30) is None


def stream(rng: Random, senders: int, per_sender: int, delay: int) -> list[str]:
    """Deliveries to one experiment: each sender's ids (its counter shared with other
    experiments and heartbeats: gaps), interleaved, each first delivery overtaken by at
    most ``delay`` later ones of its sender, with redeliveries of recent ids and
    re-sends of any earlier one (a trial asking again)."""
    queues: list[list[str]] = []
    for s in range(senders):
        n, ids = 0, []
        for _ in range(per_sender):
            n += rng.choice([1, 1, 1, 2, 5])
            ids.append(f"w{s}/sess{s}/{n}")
        # Reordered: an id is overtaken only by ids fewer than ``delay`` after it.
        keys = {
            i: i + (rng.uniform(0, delay) if rng.random() < 0.3 else 0) for i in range(len(ids))
        }
        queues.append([ids[i] for i in sorted(keys, key=keys.__getitem__)])
    out: list[str] = []
    while any(queues):
        queue = rng.choice([q for q in queues if q])
        out.append(queue.pop(0))
        roll = rng.random()
        if roll < 0.1:
            out.append(rng.choice(out[-20:]))  # a redelivery (an ack lost)
        elif roll < 0.13:
            out.append(rng.choice(out))  # a re-send, however old
    return out


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    senders=st.integers(1, 6),
    per_sender=st.integers(1, 600),
)
def test_decisions_equal_an_unbounded_sets_and_the_size_stays_bounded(
    seed: int, senders: int, per_sender: int
) -> None:
    window = 64
    rng = Random(seed)
    seen = SeenIds(EID, window=window)
    reference: set[str] = set()
    for message_id in stream(rng, senders, per_sender, delay=window // 2 - 2):
        assert (message_id in seen) == (message_id in reference), message_id
        seen.add(message_id)
        reference.add(message_id)
        assert len(seen) <= senders * (window + 1)
    # What a snapshot stores decides the same.
    restored = SeenIds.restore(seen.state(), EID)
    assert restored.state() == seen.state()
    assert all(message_id in restored for message_id in reference)


def test_a_hundred_thousand_ids_keep_it_bounded() -> None:
    seen = SeenIds(EID)
    for n in range(1, 100_001):
        seen.add(f"w1/s/{2 * n}")  # every other number went to another experiment
        seen.add(f"w2/s/{n}")
    assert len(seen) <= 2 * (WINDOW + 1)
    assert "w1/s/2" in seen
    assert "w1/s/200000" in seen
    assert "w1/s/200002" not in seen
    assert len(str(seen.state())) < 200_000


def test_forged_senders_and_other_ids_cannot_grow_it() -> None:
    seen = SeenIds(EID, max_senders=100, max_above=1000)
    seen.add(f"{EID}/start")
    for n in range(5000):
        seen.add(f"forged{n}/s/{n + 1}")
        seen.add(f"{EID}/control/{n}")
    assert len(seen) <= 100 + 1000 + MAX_OTHER + 1
    assert f"{EID}/start" in seen  # never forgotten
    assert f"{EID}/control/4999" in seen
    assert "forged4999/s/5000" in seen


def test_the_other_ids_keep_the_newest() -> None:
    seen = SeenIds(EID, max_other=3)
    for n in range(5):
        seen.add(f"lost/{n}/1")
    assert [f"lost/{n}/1" in seen for n in range(5)] == [False, False, True, True, True]


def test_an_older_snapshots_list_of_ids_is_read() -> None:
    ids = [f"{EID}/start", f"{EID}/control/x", "lost/1/1"] + [f"w/s/{n}" for n in range(1, 50)]
    seen = SeenIds.restore(sorted(ids), EID)
    assert all(message_id in seen for message_id in ids)
    assert "w/s/50" not in seen
    assert "w/s2/1" not in seen
    assert SeenIds.restore(None, EID).state() == SeenIds(EID).state()


def test_a_workers_ids_in_a_row_are_a_watermark_alone() -> None:
    seen = SeenIds(EID)
    for n in range(1, 10_001):
        seen.add(f"w/s/{n}")
    assert seen.state()["senders"] == [["w/s", 10_000, []]]
    assert SeenIds.restore(seen.state(), EID) == seen
