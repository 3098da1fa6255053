"""``python -m bench [--quick] [--rung-only] [--only NAME]``: run the benchmarks, print
their figures, and write them as JSON lines under ``bench/results/``.

``--quality-benchmarks``, ``--quality-workers``, ``--quality-seeds``,
``--quality-samplers`` and ``--quality-systems`` run a part of workload 5 (search
quality), so that its long run can be split into files that ``bench.report`` merges.

The first line of a results file says when, on which commit and on what machine.
``python -m bench.report FILE`` renders a results file into ``docs/benchmarks.md``.
"""

from __future__ import annotations

import os

# One BLAS thread, in this process and the peers' (they inherit it), set before numpy is
# imported: the digits objective multiplies small matrices, where OpenBLAS's threads cost
# more than they give (a 27-epoch evaluation took 0.09 s median with them, 0.05 s
# without, on 2 cores), and every system is then measured the same way.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from bench import (  # noqa: E402
    capacity,
    collect,
    dashboard,
    isolation,
    latency,
    pbt,
    peer_compare,
    quality,
    replay,
    sampler_cost,
    segment,
    simulator,
)

# In the order: 1 control plane, 2 utilization, 3 latency, 4 scaling, 5 quality,
# 6 searcher scale (the simulator, and replay of a log).
WORKLOADS: dict[str, Callable[..., list[dict[str, Any]]]] = {
    "control_plane": peer_compare.control_plane,
    "utilization": peer_compare.utilization,
    "latency": latency.run,
    "scaling": peer_compare.scaling,
    "quality": quality.run,
    "simulator": lambda *, quick, **_: simulator.run(quick=quick),
    "replay": lambda *, quick, **_: replay.run(quick=quick),
    # Issue 17: what a gp or tpe suggestion costs the searcher, at 100 to 10,000 results.
    "sampler_cost": lambda *, quick, **_: sampler_cost.run(quick=quick),
    # Issue 15: one experiment's blocked publishes cost the others nothing.
    "isolation": lambda *, quick, **_: isolation.run(quick=quick),
    # Issue 18: the input rate one searcher sustains on RabbitMQ (simulated workers).
    "capacity": lambda *, quick, **_: capacity.run(quick=quick),
    # Issue 18: what a trial's end (its checkpoint collection) costs at thousands of trials.
    "collect": lambda *, quick, **_: collect.run(quick=quick),
    # Issue 18: where a trial segment's time goes, stamped by the training script itself.
    "segment": lambda *, quick, **_: segment.run(quick=quick),
    # Issue 19: the dashboard's page of a 10,000-trial experiment, server and browser.
    "dashboard": lambda *, quick, **_: dashboard.run(quick=quick),
    # Issue 21: population-based training on lrsched, Rung's (both modes) and Ray Tune's.
    "pbt": pbt.run,
}
RESULTS = Path(__file__).resolve().parent / "results"


def _machine() -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    # Uncommitted changes to tracked files: the figures are not the commit's alone.
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": commit or "unknown",
        "uncommitted_changes": bool(dirty),
        "cpus": os.cpu_count(),
        "memory_gib": round(pages / 2**30, 1),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def _names(known: Any) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(text.split(","))
        unknown = [n for n in names if n not in known]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {list(known)}")
        return names

    return parse


def _numbers(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in text.split(","))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument(
        "--rung-only", action="store_true", help="skip the peers (no environments to make)"
    )
    parser.add_argument("--only", choices=sorted(WORKLOADS), action="append")
    parser.add_argument("--out", type=Path, help="results file (default: bench/results/...)")
    parser.add_argument(
        "--quality-benchmarks", type=_names(quality.PROBLEMS), help="e.g. mfh6,mixed"
    )
    parser.add_argument("--quality-workers", type=_numbers, help="e.g. 8 or 1,8")
    parser.add_argument("--quality-seeds", type=int, help="seeds 1..N (default 10)")
    parser.add_argument(
        "--quality-samplers", type=_names(quality.SAMPLERS), help="Rung's, e.g. random,tpe"
    )
    parser.add_argument(
        "--quality-systems",
        type=lambda text: tuple(text.split(",")),
        help="systems whose name contains one of these (rung,optuna or +tpe), or is =NAME",
    )
    args = parser.parse_args()
    options = quality.Options(
        benchmarks=args.quality_benchmarks,
        workers=args.quality_workers,
        seeds=args.quality_seeds,
        samplers=args.quality_samplers,
        systems=args.quality_systems,
    )
    header = {"kind": "run", "quick": args.quick, "rung_only": args.rung_only, **_machine()}
    if options != quality.Options():
        header["quality_options"] = {k: v for k, v in vars(options).items() if v is not None}
    out = args.out or RESULTS / f"{header['date'][:10]}-{header['commit']}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as results:
        results.write(json.dumps(header) + "\n")
        print(json.dumps(header), flush=True)
        for name in args.only or list(WORKLOADS):
            extra = {"options": options} if name == "quality" else {}
            for row in WORKLOADS[name](quick=args.quick, rung_only=args.rung_only, **extra):
                line = json.dumps({"workload": name, **row})
                results.write(line + "\n")
                results.flush()
                print(line, flush=True)
    print(f"written to {out}", flush=True)


main()
