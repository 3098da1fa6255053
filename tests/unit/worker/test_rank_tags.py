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
        ("[rank=١٢] other digits", (None, "[rank=١٢] other digits")),
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
    with pytest.raises(SystemExit, match="neither a number nor the name of a variable"):
        parse(["²", "--", "true"])
    assert parse(["9999", "--", "true"]) == (9999, ["true"])


def test_a_line_without_a_rank_goes_on_the_wire_as_before() -> None:
    """A searcher from before ranks (its messages forbid unknown fields) still takes a
    new worker's lines and a new client's log requests that name no rank."""
    from rung.broker.schemas import LogLines, ReadTrialLogs

    lines = LogLines(
        experiment_id="e",
        trial_id=1,
        attempt=1,
        worker_id="w",
        lines=[LogLine(stream="stdout", text="x"), LogLine(stream="stdout", text="y", rank=1)],
    )
    wire = lines.model_dump(mode="json")
    assert wire["lines"] == [
        {"stream": "stdout", "text": "x"},
        {"stream": "stdout", "text": "y", "rank": 1},
    ]
    assert LogLines.model_validate_json(lines.model_dump_json()) == lines
    assert "rank" not in ReadTrialLogs(experiment_id="e").model_dump(mode="json")
    assert ReadTrialLogs(experiment_id="e", rank=0).model_dump(mode="json")["rank"] == 0
