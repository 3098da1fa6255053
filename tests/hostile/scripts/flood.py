"""Output as fast as the pipe takes it: MiB of 100-byte lines (200 unless argv says)."""

import os
import sys

from _train import finish, say  # type: ignore[import-not-found]  # (its own folder)

import rung as det

mib = int(sys.argv[1]) if len(sys.argv) > 1 else 200
block = (b"f" * 99 + b"\n") * (1024 * 1024 // 100)
for _ in range(mib):
    os.write(1, block)
say("flood done")
with det.core.init() as core_context:
    finish(core_context)
