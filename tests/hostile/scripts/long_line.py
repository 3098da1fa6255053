"""One 10 MiB line on stdout, then a short one."""

import sys

from _train import finish  # type: ignore[import-not-found]  # (its own folder)

import rung as det

sys.stdout.write("L" * (10 * 1024 * 1024) + "\n")
sys.stdout.write("after the long line\n")
sys.stdout.flush()
with det.core.init() as core_context:
    finish(core_context)
