"""``python -m bench.profile [--only NAME] [--top N] [--self]``: where a workload's time goes.

Runs one workload (``--quick --rung-only``; by default the dispatch-latency one, whose
searcher and 8 workers share one process and one event loop) under py-spy, then sums the
samples of the event loop's thread per function, inclusive (``--self``: only where the
function itself was running, not what it called), and prints the heaviest:
the profile behind "Where the time goes" in docs/benchmarks.md. py-spy samples from
outside the process, so the workload runs as it would without it.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["summarise"]


def summarise(raw: str, top: int, *, own: bool = False) -> list[tuple[float, str]]:
    """``(percent, function)`` for the ``top`` functions by samples of the event loop,
    from py-spy's ``--format raw`` output (one ``frame;frame;... count`` per line);
    ``own``: a sample counts for its innermost frame only."""
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not count.isdigit() or not any("run_forever" in f for f in frames):
            continue  # not the event loop's thread (thread pools, idle threads)
        total += int(count)
        names = [frames[-1]] if own else frames
        for name in {frame.split(":")[0] for frame in names}:
            inclusive[name] += int(count)
    return [(100 * n / total, name) for name, n in inclusive.most_common(top)] if total else []


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--only", default="latency", help="the workload (default: latency)")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument(
        "--self", dest="own", action="store_true", help="self time: innermost frames only"
    )
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "profile.txt"
        workload = [sys.executable, "-m", "bench", "--quick", "--rung-only", "--only", args.only]
        record = [py_spy, "record", "-r", str(args.rate), "--format", "raw", "-o", str(raw)]
        subprocess.run(
            [*record, "--", *workload, "--out", str(Path(tmp) / "results.jsonl")],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        rows = summarise(raw.read_text(), args.top, own=args.own)
    how = "self" if args.own else "inclusive"
    print(f"{args.only}: share of the event loop's samples, {how}, per function")
    for percent, name in rows:
        print(f"{percent:6.1f} %  {name}")


if __name__ == "__main__":
    main()
