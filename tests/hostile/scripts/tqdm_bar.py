"""A real tqdm progress bar on stderr: redraws end with "\r" only, megabytes of them
without a newline, then a line of its own."""

import sys

from _train import finish, say  # type: ignore[import-not-found]  # (its own folder)
from tqdm import tqdm  # type: ignore[import-untyped]

import rung as det

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 30_000
for _ in tqdm(range(steps), mininterval=0, miniters=1, ascii=True, desc="training"):
    pass
say("tqdm done")
with det.core.init() as core_context:
    finish(core_context)
