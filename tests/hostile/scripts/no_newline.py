"""The Core API first, then a last line without a newline, on both streams."""

import os

from _train import finish  # type: ignore[import-not-found]  # (its own folder)

import rung as det

with det.core.init() as core_context:
    finish(core_context)
os.write(2, b"the last words on stderr")
os.write(1, b"the last words on stdout")
