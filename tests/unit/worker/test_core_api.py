"""The Core API off-cluster and its checks (on a worker it is tested end to end)."""

from __future__ import annotations

import errno
import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import rung as det
from rung.broker.limits import (
    CHANNEL_REQUEST_BYTES,
    MAX_CHECKPOINT_METADATA_BYTES,
    MAX_JSON_DEPTH,
    MAX_METRICS_BYTES,
)
from rung.worker.core._channel import Channel, ChannelError
from rung.worker.core._checkpoint import CheckpointContext, CheckpointStorageError
from rung.worker.core._validate import MAX_VALUE_DEPTH, check_metrics, json_depth

ROOT = Path(__file__).resolve().parents[3]


def test_off_cluster_init_gives_local_stand_ins(tmp_path: Path) -> None:
    assert det.get_cluster_info() is None
    with det.core.init(checkpoint_storage=str(tmp_path)) as core_context:
        ops: list[int] = []
        for op in core_context.searcher.operations():
            ops.append(op.length)
            op.report_completed(1.0)
        assert ops == [1]
        assert core_context.preempt.should_preempt() is False
        with core_context.checkpoint.store_path({"steps_completed": 1}) as (path, storage_id):
            (path / "w").write_text("weights")
        assert core_context.checkpoint.get_metadata(storage_id) == {"steps_completed": 1}


def test_each_op_must_be_completed_once() -> None:
    with det.core.init() as core_context:
        operations = core_context.searcher.operations()
        op = next(operations)
        with pytest.raises(RuntimeError, match=r"must call op\.report_completed"):
            next(operations)
        op.report_completed(0.5)
        with pytest.raises(RuntimeError, match=r"only call op\.report_completed\(\) once"):
            op.report_completed(0.5)


def test_checkpoints_are_atomic_and_need_steps_completed(tmp_path: Path) -> None:
    reported: list[tuple[str, int]] = []
    context = CheckpointContext(tmp_path, lambda s, n, m, b: reported.append((s, n)))
    with pytest.raises(ValueError, match="must contain 'steps_completed'"):
        context.store_path({}).__enter__()

    def crash_while_writing() -> None:
        with context.store_path({"steps_completed": 3}) as (path, _):
            (path / "partial").write_text("x")
            raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError):
        crash_while_writing()
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left, nothing reported
    with context.store_path({"steps_completed": 5}) as (path, storage_id):
        (path / "ok").write_text("x")
    assert reported == [(storage_id, 5)]
    with context.restore_path(storage_id) as restored:
        assert (restored / "ok").read_text() == "x"


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        ({"a": {"b": object()}}, "metric 'a.b' has type object"),
        ({"x": object()}, "metric 'x' has type object"),
        ({"big": "x" * 300_000}, r"over the 262144-byte limit \(MAX_METRICS_BYTES\)"),
        (
            {
                "deep": [
                    [
                        [
                            [
                                [
                                    [
                                        [
                                            [
                                                [
                                                    [
                                                        [
                                                            [
                                                                [
                                                                    [
                                                                        [
                                                                            [
                                                                                [
                                                                                    [
                                                                                        [
                                                                                            [
                                                                                                [
                                                                                                    [
                                                                                                        [
                                                                                                            [
                                                                                                                [
                                                                                                                    [
                                                                                                                        [
                                                                                                                            [
                                                                                                                                [
                                                                                                                                    [
                                                                                                                                        [
                                                                                                                                            [
                                                                                                                                                [
                                                                                                                                                    [
                                                                                                                                                        [
                                                                                                                                                            [
                                                                                                                                                                [
                                                                                                                                                                    [
                                                                                                                                                                        [
                                                                                                                                                                            [
                                                                                                                                                                                [
                                                                                                                                                                                    [
                                                                                                                                                                                        [
                                                                                                                                                                                            [
                                                                                                                                                                                                [
                                                                                                                                                                                                    [
                                                                                                                                                                                                        [
                                                                                                                                                                                                            [
                                                                                                                                                                                                                [
                                                                                                                                                                                                                    [
                                                                                                                                                                                                                        [
                                                                                                                                                                                                                            [
                                                                                                                                                                                                                                [
                                                                                                                                                                                                                                    [
                                                                                                                                                                                                                                        [
                                                                                                                                                                                                                                            [
                                                                                                                                                                                                                                                [
                                                                                                                                                                                                                                                    [
                                                                                                                                                                                                                                                        [
                                                                                                                                                                                                                                                            [
                                                                                                                                                                                                                                                                [
                                                                                                                                                                                                                                                                    [
                                                                                                                                                                                                                                                                        [
                                                                                                                                                                                                                                                                            [
                                                                                                                                                                                                                                                                                1
                                                                                                                                                                                                                                                                            ]
                                                                                                                                                                                                                                                                        ]
                                                                                                                                                                                                                                                                    ]
                                                                                                                                                                                                                                                                ]
                                                                                                                                                                                                                                                            ]
                                                                                                                                                                                                                                                        ]
                                                                                                                                                                                                                                                    ]
                                                                                                                                                                                                                                                ]
                                                                                                                                                                                                                                            ]
                                                                                                                                                                                                                                        ]
                                                                                                                                                                                                                                    ]
                                                                                                                                                                                                                                ]
                                                                                                                                                                                                                            ]
                                                                                                                                                                                                                        ]
                                                                                                                                                                                                                    ]
                                                                                                                                                                                                                ]
                                                                                                                                                                                                            ]
                                                                                                                                                                                                        ]
                                                                                                                                                                                                    ]
                                                                                                                                                                                                ]
                                                                                                                                                                                            ]
                                                                                                                                                                                        ]
                                                                                                                                                                                    ]
                                                                                                                                                                                ]
                                                                                                                                                                            ]
                                                                                                                                                                        ]
                                                                                                                                                                    ]
                                                                                                                                                                ]
                                                                                                                                                            ]
                                                                                                                                                        ]
                                                                                                                                                    ]
                                                                                                                                                ]
                                                                                                                                            ]
                                                                                                                                        ]
                                                                                                                                    ]
                                                                                                                                ]
                                                                                                                            ]
                                                                                                                        ]
                                                                                                                    ]
                                                                                                                ]
                                                                                                            ]
                                                                                                        ]
                                                                                                    ]
                                                                                                ]
                                                                                            ]
                                                                                        ]
                                                                                    ]
                                                                                ]
                                                                            ]
                                                                        ]
                                                                    ]
                                                                ]
                                                            ]
                                                        ]
                                                    ]
                                                ]
                                            ]
                                        ]
                                    ]
                                ]
                            ]
                        ]
                    ]
                ]
            },
            "MAX_JSON_DEPTH",
        ),
    ],
)
def test_metrics_are_checked(metrics: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_metrics(metrics)


def test_non_finite_metrics_travel_as_strings_as_determined_takes_them() -> None:
    metrics = {"loss": float("nan"), "a": {"b": [float("inf"), -float("inf"), 1.5]}, "n": 2}
    assert check_metrics(metrics) == {
        "loss": "NaN",
        "a": {"b": ["Infinity", "-Infinity", 1.5]},
        "n": 2,
    }


def test_invalid_hp_exits_cleanly_off_cluster(tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text("import rung as det\nwith det.core.init():\n    raise det.InvalidHP('no')\n")
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, check=False, cwd=ROOT
    )
    assert result.returncode == 0
    assert "InvalidHP" in result.stderr


def test_a_full_disk_while_checkpointing_is_a_clear_error_and_nothing_is_reported(
    tmp_path: Path,
) -> None:
    reported: list[str] = []
    context = CheckpointContext(tmp_path, lambda s, n, m, b: reported.append(s))
    target = tmp_path / "model.pt"

    def save_on_a_full_disk() -> None:
        with context.store_path({"steps_completed": 3}) as (path, _):
            (path / "half").write_text("half a model")
            raise OSError(errno.ENOSPC, "No space left on device", str(target))

    with pytest.raises(CheckpointStorageError, match="No space left on device") as caught:
        save_on_a_full_disk()
    assert str(target) in str(caught.value)
    assert "has free space" in str(caught.value)
    assert reported == []
    assert list(tmp_path.iterdir()) == []  # the half-written checkpoint is gone


def test_a_checkpoint_root_that_cannot_exist_names_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    context = CheckpointContext(blocker / "checkpoints", lambda s, n, m, b: None)

    def save() -> None:
        with context.store_path({"steps_completed": 1}):
            pass

    with pytest.raises(CheckpointStorageError, match="not-a-directory") as caught:
        save()
    assert "was not saved" in str(caught.value)


def test_metrics_up_to_the_limit_fit_the_channel() -> None:
    """Metrics between 64 and 256 KiB passed the check but closed the channel (issue 16)."""
    overhead = len('{"blob": ""}')
    metrics = check_metrics({"blob": "é" * ((MAX_METRICS_BYTES - overhead) // 6)})
    request = {"op": "metrics", "group": "validation", "steps_completed": 10**12}
    assert len(json.dumps({**request, "metrics": metrics})) + 1 < CHANNEL_REQUEST_BYTES


def test_json_depth_is_counted_without_recursion() -> None:
    assert json_depth(1) == 0
    assert json_depth({"a": [1, {"b": []}]}) == 4
    deep: list[object] = []
    for _ in range(200_000):
        deep = [deep]
    assert json_depth(deep) == MAX_JSON_DEPTH + 1  # it stops counting there
    assert MAX_VALUE_DEPTH < MAX_JSON_DEPTH  # room for the event around the metrics
    with pytest.raises(ValueError, match="MAX_JSON_DEPTH"):
        check_metrics({"deep": deep})


def test_checkpoint_metadata_is_bounded(tmp_path: Path) -> None:
    context = CheckpointContext(tmp_path, lambda *_: None)
    big = {"steps_completed": 1, "notes": "n" * MAX_CHECKPOINT_METADATA_BYTES}
    with (
        pytest.raises(ValueError, match=r"\(MAX_CHECKPOINT_METADATA_BYTES\)"),
        context.store_path(big),
    ):
        pass
    deep: dict[str, object] = {"steps_completed": 1}
    for _ in range(MAX_VALUE_DEPTH):
        deep = {"steps_completed": 1, "d": deep}
    with pytest.raises(ValueError, match="MAX_JSON_DEPTH"), context.store_path(deep):
        pass
    assert list(tmp_path.iterdir()) == []  # nothing was written


def test_an_overlong_request_is_refused_before_it_is_sent(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(1)
        channel = Channel(str(path), "t" * 32)
        try:
            with pytest.raises(ChannelError, match=r"\(CHANNEL_REQUEST_BYTES\)"):
                channel.request("metrics", blob="x" * CHANNEL_REQUEST_BYTES)
        finally:
            channel.close()


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"steps_completed": 1, "loss": float("nan")}, "hold NaN or an infinity"),
        ({"steps_completed": 1, "best": [float("inf")]}, "hold NaN or an infinity"),
        ({"steps_completed": "seven"}, "'steps_completed' is 'seven'; it must be a whole"),
        ({"steps_completed": True}, "'steps_completed' is True"),
        ({"steps_completed": -1}, "'steps_completed' is -1"),
    ],
)
def test_metadata_the_searcher_cannot_take_is_refused_before_anything_is_written(
    tmp_path: Path, metadata: dict[str, object], message: str
) -> None:
    reported: list[str] = []
    context = CheckpointContext(tmp_path, lambda s, n, m, b: reported.append(s))
    with pytest.raises(ValueError, match=re.escape(message)):  # noqa: SIM117
        with context.store_path(metadata):
            raise AssertionError("the block must not run")
    assert list(tmp_path.iterdir()) == []
    assert reported == []
