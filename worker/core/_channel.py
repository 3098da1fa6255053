"""The training process's end of the local channel to its worker.

JSON lines over the worker's Unix socket, named by ``RUNG_CHANNEL``: first a line naming
the training process by its token (``RUNG_CHANNEL_TOKEN``; sent as the connection is
made, no reply), then one request,
one reply, each request at most :data:`CHANNEL_REQUEST_BYTES` (the worker answers a
longer one with an error, and the Core API's own checks keep every report well within
it). The training
process never sees broker credentials and never imports aio-pika.
"""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

from rung.broker.limits import CHANNEL_REQUEST_BYTES

__all__ = ["Channel", "ChannelError", "hello"]


def hello(token: str) -> bytes:
    """The first line on a connection: the training process's token (the worker serves
    a connection only once this names a trial of its own)."""
    return json.dumps({"op": "hello", "token": token}).encode() + b"\n"


class ChannelError(RuntimeError):
    """The worker closed the channel or answered with an error."""


class Channel:
    def __init__(self, path: str, token: str) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.connect(path)
            # At once: the worker closes a connection that names no trial within
            # seconds, and a script may take minutes (its data, its model) before its
            # first call.
            self._sock.sendall(hello(token))
        except OSError:
            self._sock.close()
            raise
        self._file = self._sock.makefile("rwb")
        self._lock = threading.Lock()

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        payload = json.dumps({"op": op, **fields}, allow_nan=False).encode() + b"\n"
        if len(payload) > CHANNEL_REQUEST_BYTES:
            raise ChannelError(
                f"the {op!r} request is {len(payload)} bytes, over the channel's limit of "
                f"{CHANNEL_REQUEST_BYTES} (CHANNEL_REQUEST_BYTES); report less at once"
            )
        try:
            with self._lock:
                self._file.write(payload)
                self._file.flush()
                line = self._file.readline()
        except OSError:  # a refused token, or a worker gone: the connection was closed
            line = b""
        if not line:
            raise ChannelError("the worker closed the channel; the trial is being stopped")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise ChannelError(str(reply["error"]))
        return reply

    def close(self) -> None:
        self._file.close()
        self._sock.close()
