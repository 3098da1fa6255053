"""The rank tag ``rung.launch.wrap_rank`` puts on each line, and what a worker makes of it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rung.broker.limits import MAX_RANK
from rung.broker.schemas import LogLine
from rung.launch.wrap_rank import parse, untag
from rung.worker.trial_run import _log_line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[rank=0] loss 0.5", (0, "loss 0.5")),
        ("[rank=12] [rank=3] twice", (12, "[rank=3] twice")),  # only the first tag
        ("[rank=1]no space", (None, "[rank=1]no space")),
        ("loss [rank=1] inside", (None, "loss [rank=1] inside")),
        ("[rank=-1] negative", (None, "[rank=-1] negative")),
        ("[rank=12345] too long", (None, "[rank=12345] too long")),
        ("", (None, "")),
    ],
)
def test_only_a_leading_tag_is_a_rank(text: str, expected: tuple[int | None, str]) -> None:
    assert untag(text) == expected


def test_a_worker_ships_the_rank_as_a_field() -> None:
    line = _log_line("stderr", "[rank=3] Traceback")
    assert line == LogLine(stream="stderr", text="Traceback", rank=3)
    assert _log_line("stdout", "plain").rank is None


def test_a_rank_out_of_range_is_refused_naming_the_limit() -> None:
    with pytest.raises(ValidationError, match="less than or equal to 9999"):
        LogLine(stream="stdout", text="x", rank=MAX_RANK + 1)
    with pytest.raises(SystemExit, match="above 9999"):
        parse(["10000", "--", "true"])
    assert parse(["9999", "--", "true"]) == (9999, ["true"])
