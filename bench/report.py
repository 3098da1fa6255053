"""``python -m bench.report RESULTS.jsonl``: render a results file into docs/benchmarks.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
TEMPLATE_MARK = "<!-- results -->"


def _range(stat: dict[str, float], fmt: str = "{:.3g}") -> str:
    return f"{fmt.format(stat['median'])} [{fmt.format(stat['min'])}..{fmt.format(stat['max'])}]"


def _control_plane(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| system | concurrency | trials | trials/s | slot-ms per trial |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        if "error" in row:
            out.append(f"| {row['system']} | | | failed: {row['error'][:80]} | |")
            continue
        out.append(
            f"| {row['system']} | {row['concurrency']} | {row['trials']} | "
            f"{_range(row['trials_per_s'])} | {_range(row['overhead_ms'])} |"
        )
    return out


def _utilization(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| system | trials | workers | executed steps | utilization | wall s | ideal s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        if "error" in row:
            out.append(f"| {row['system']} | | | | failed: {row['error'][:80]} | | |")
            continue
        out.append(
            f"| {row['system']} | {row['trials']} | {row['workers']} | "
            f"{_range(row['executed_steps'], '{:.0f}')} | {_range(row['utilization'])} | "
            f"{_range(row['wall_s'])} | {_range(row['ideal_s'])} |"
        )
    return out


def render(path: Path) -> str:
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    header, rows = lines[0], lines[1:]
    by: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by.setdefault(row["workload"], []).append(row)
    text = [
        f"Run {header['date']} on commit {header['commit']}: {header['cpus']} CPUs, "
        f"{header['memory_gib']} GiB, Python {header['python']}"
        + (" (quick sizes)" if header.get("quick") else "")
        + f". Raw figures: `bench/results/{path.name}`.",
        "",
    ]
    if "control_plane" in by:
        text += [
            "### 1. Control-plane overhead: null trials",
            "",
            *_control_plane(by["control_plane"]),
            "",
        ]
    if "utilization" in by:
        text += [
            "### 2. Worker utilization under successive halving",
            "",
            *_utilization(by["utilization"]),
            "",
        ]
    for name in ("simulator", "replay"):
        if name in by:
            text += [f"### {name}", "", "```", *(json.dumps(r) for r in by[name]), "```", ""]
    return "\n".join(text)


def main() -> None:
    path = Path(sys.argv[1])
    doc = DOC.read_text()
    head = doc.split(TEMPLATE_MARK)[0]
    DOC.write_text(f"{head}{TEMPLATE_MARK}\n\n{render(path)}")
    print(f"rendered {path} into {DOC}")


if __name__ == "__main__":
    main()
