"""Output as fast as the pipe takes it: MiB of 100-byte lines (200 unless argv says)."""

import os
import sys
import time

from _train import finish, say  # type: ignore[import-not-found]  # (its own folder)

import rung as det

mib = int(sys.argv[1]) if len(sys.argv) > 1 else 200
block = (b"f" * 99 + b"\n") * (1024 * 1024 // 100)
for _ in range(mib):
    os.write(1, block)
# A line written once the flood has stopped for a while must get through: by then the
# worker has shipped what its buffer held and the rate limit has let tokens in again.
# (Right after the flood it may rightly be dropped, with the rest of the flood.)
time.sleep(2)
say("flood done")
with det.core.init() as core_context:
    finish(core_context)
