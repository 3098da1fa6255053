"""Which GPUs a worker offers: ``--gpus auto|none|0,1``."""

from __future__ import annotations

import os
import shutil
import subprocess

__all__ = ["detect_gpus", "parse_gpus"]


def detect_gpus() -> list[str]:
    """``CUDA_VISIBLE_DEVICES`` if set, else what ``nvidia-smi`` lists, else none."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        query = [smi, "--query-gpu=index", "--format=csv,noheader"]
        result = subprocess.run(  # noqa: S603 (fixed arguments)
            query, capture_output=True, text=True, timeout=20, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def parse_gpus(spec: str) -> list[str]:
    if spec == "auto":
        return detect_gpus()
    if spec == "none":
        return []
    ids = [part.strip() for part in spec.split(",") if part.strip()]
    if not ids or not all(part.isdigit() for part in ids):
        raise ValueError(f"--gpus must be auto, none or a list like 0,1; got {spec!r}")
    return ids
