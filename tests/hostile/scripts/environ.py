"""Looks for the worker's broker password (argv[1]) wherever a same-uid process might."""

import os
import sys

from _train import finish, say  # type: ignore[import-not-found]  # (its own folder)

import rung as det

secret = sys.argv[1].encode()
places = {
    "os.environ": "\0".join(f"{k}={v}" for k, v in os.environ.items()).encode(),
}
for name, path in (("self", "/proc/self/environ"), ("parent", f"/proc/{os.getppid()}/environ")):
    try:
        with open(path, "rb") as handle:
            places[name] = handle.read()
    except OSError as exc:
        places[name] = b""
        say(f"{name}: unreadable ({exc.strerror})")
for name, data in places.items():
    say(f"{name}: {'FOUND' if secret in data else 'clean'}")
with det.core.init() as core_context:
    finish(core_context)
