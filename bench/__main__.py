"""``python -m bench [--quick] [--only NAME]``: run the benchmarks and print their figures."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from bench import replay, simulator

WORKLOADS: dict[str, Callable[..., list[dict[str, object]]]] = {
    "simulator": simulator.run,
    "replay": replay.run,
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--only", choices=sorted(WORKLOADS), action="append")
    args = parser.parse_args()
    for name in args.only or sorted(WORKLOADS):
        for row in WORKLOADS[name](quick=args.quick):
            print(json.dumps(row))


main()
