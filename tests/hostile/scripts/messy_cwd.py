"""Leaves its working directory hard to remove: a directory closed to its owner, one it
may not write into, and symlinks out of it (to the directory and the file named by its
arguments), then finishes its operations."""

import os
import sys
from pathlib import Path

from _train import finish

import rung as det

outside_dir, outside_file = sys.argv[1], sys.argv[2]
Path("out.txt").write_text("what the trial wrote\n")
inner = Path("locked") / "inner"
inner.mkdir(parents=True)
(inner / "data.bin").write_bytes(b"\0" * 4096)
(Path("locked") / "kept.txt").write_text("x\n")
os.chmod(inner, 0)
os.chmod("locked", 0o500)
os.symlink(outside_dir, "escape")
os.symlink(outside_file, "escape_file")

with det.core.init() as core_context:
    finish(core_context)
