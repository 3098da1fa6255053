"""Bypass the Core API: raw requests on the trial's socket. Each gets an error naming the
rule, and the channel keeps working after every one."""

import json
import os
import socket

from _train import finish, say  # type: ignore[import-not-found]  # (its own folder)

import rung as det
from rung.broker.limits import CHANNEL_REQUEST_BYTES, MAX_METRICS_BYTES
from rung.worker.core._channel import hello

REQUESTS = {
    "overlong": b'{"op": "metrics", "x": "' + b"o" * (2 * CHANNEL_REQUEST_BYTES) + b'"}\n',
    "huge_metrics": json.dumps(
        {
            "op": "metrics",
            "group": "training",
            "steps_completed": 1,
            "metrics": {"blob": "h" * MAX_METRICS_BYTES},
        }
    ).encode()
    + b"\n",
    "deep_metrics": b'{"op": "metrics", "group": "training", "steps_completed": 1, '
    b'"metrics": {"d": ' + b"[" * 200 + b"]" * 200 + b"}}\n",
    "very_deep": b'{"op": "metrics", "metrics": ' + b"[" * 500_000 + b"]" * 500_000 + b"}\n",
    "forged_uuid": json.dumps(
        {
            "op": "checkpoint",
            "uuid": "../../other-experiment/ckpt",
            "steps_completed": 1,
            "metadata": {"steps_completed": 1},
            "size_bytes": 1,
        }
    ).encode()
    + b"\n",
    "not_an_object": b"[1, 2, 3]\n",
    "not_json": b"\xff\xfe not json\n",
}

sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(os.environ["RUNG_CHANNEL"])
stream = sock.makefile("rwb")
stream.write(hello(os.environ["RUNG_CHANNEL_TOKEN"]))
for name, payload in REQUESTS.items():
    stream.write(payload)
    stream.flush()
    reply = json.loads(stream.readline())
    say(f"{name}: {reply.get('error', 'accepted')}")
    stream.write(b'{"op": "should_preempt"}\n')
    stream.flush()
    say(f"{name}: then {json.loads(stream.readline())}")
sock.close()
with det.core.init() as core_context:
    finish(core_context)
