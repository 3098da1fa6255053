"""Bytes that are not UTF-8 (and NULs, and a lone surrogate's encoding) on both streams."""

import os

from _train import finish  # type: ignore[import-not-found]  # (its own folder)

import rung as det

os.write(1, b"binary: \xff\xfe\x00\x80 \xed\xa0\x80 end\n" + bytes(range(256)) + b"\n")
os.write(2, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\n")
with det.core.init() as core_context:
    finish(core_context)
