"""The profile summary of `python -m bench.profile`: the event loop's samples only."""

from __future__ import annotations

import pytest

from bench.profile import summarise

RAW = """\
process 1:"python";<module> (a.py:1);run_forever (asyncio/base_events.py:607);write (s.py:3) 6
process 1:"python";<module> (a.py:1);run_forever (asyncio/base_events.py:607);read (s.py:9) 2
process 1:"python";Thread._bootstrap (threading.py:1002);_worker (thread.py:81) 50
"""


def test_only_the_event_loops_samples_count_inclusively() -> None:
    rows = {name: share for share, name in summarise(RAW, top=10)}
    assert rows["run_forever (asyncio/base_events.py"] == pytest.approx(100)
    assert rows["write (s.py"] == pytest.approx(75)
    assert rows["read (s.py"] == pytest.approx(25)
    assert not any("_worker" in name for name in rows)
    assert summarise("", top=5) == []


def test_self_time_counts_only_the_innermost_frame() -> None:
    rows = {name: share for share, name in summarise(RAW, top=10, own=True)}
    assert rows == {"write (s.py": pytest.approx(75), "read (s.py": pytest.approx(25)}
