"""Message schemas: round trips, and loud failures."""

from __future__ import annotations

import json

import pytest

from rung.broker.errors import DecodeError
from rung.broker.schemas import (
    DescribeExperiment,
    Envelope,
    OpCompleted,
    RunTrial,
    decode,
    encode,
)
from rung.broker.schemas.envelope import MAX_MESSAGE_BYTES


def test_round_trip() -> None:
    body = RunTrial(
        experiment_id="e",
        trial_id=1,
        request_id="r",
        attempt=1,
        length=5,
        hparams={"a": {"b": 1}},
        trial_seed=3,
        context_hash="0" * 64,
        entrypoint=["python3", "x.py"],
        slots=1,
        checkpoint_root="/c",
        max_restarts=5,
    )
    envelope = Envelope(message_id="m", experiment_id="e", seq=4, body=body)
    assert decode(encode(envelope)) == envelope


def test_a_non_finite_metric_travels_as_null() -> None:
    body = OpCompleted(
        experiment_id="e", trial_id=1, attempt=1, worker_id="w", length=1, metric=float("inf")
    )
    assert body.metric is None


def _envelope(**body: object) -> bytes:
    return json.dumps({"schema_version": 1, "message_id": "m", "body": body}).encode()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\xfe", "not valid JSON"),
        (b"[1]", "expected a JSON object, got list"),
        (json.dumps({"message_id": "m"}).encode(), "unsupported schema_version None"),
        (_envelope(type="nope"), "invalid message at body"),
        (
            _envelope(
                type="op_completed",
                experiment_id="e",
                trial_id=0,
                attempt=1,
                worker_id="w",
                length=1,
                metric=1.0,
            ),
            "invalid message at body.op_completed.trial_id",
        ),
        (
            _envelope(
                type="op_completed",
                worker_id="w",
                experiment_id="e",
                trial_id=1,
                attempt=1,
                length=1,
                metric=1.0,
                extra=1,
            ),
            "invalid message at body.op_completed.extra",
        ),
        (b" " * (MAX_MESSAGE_BYTES + 1), "message too large"),
    ],
)
def test_decoding_fails_loudly_with_the_reason(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(data)
    assert str(caught.value).startswith(reason)


def test_a_describe_for_everything_reads_as_before_the_trials_field() -> None:
    """A searcher of the version before ``trials`` (whose schema forbids unknown fields)
    still takes every describe but a waiter's poll."""
    whole = json.loads(encode(Envelope(message_id="m", body=DescribeExperiment(experiment_id="e"))))
    assert whole["body"] == {"type": "describe_experiment", "experiment_id": "e"}
    light = DescribeExperiment(experiment_id="e", trials=False)
    data = encode(Envelope(message_id="m", body=light))
    assert json.loads(data)["body"]["trials"] is False
    assert decode(data).body == light


@pytest.mark.parametrize("value", ['"no"', "0", "null", "[]"])
def test_a_describe_takes_only_true_or_false_for_trials(value: str) -> None:
    body = '{"type": "describe_experiment", "experiment_id": "e", "trials": ' + value + "}"
    with pytest.raises(DecodeError, match="trials"):
        decode(('{"schema_version": 1, "message_id": "m", "body": ' + body + "}").encode())
