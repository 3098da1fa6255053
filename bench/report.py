"""``python -m bench.report RESULTS.jsonl``: render a results file into docs/benchmarks.md.

Tables for every workload in the file, and two plots (PNG, in ``docs/img/``): utilization
and efficiency against the number of workers, and regret against budget.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parents[1] / "docs"
DOC = DOCS / "benchmarks.md"
IMAGES = DOCS / "img"
TEMPLATE_MARK = "<!-- results -->"

Row = dict[str, Any]


def _range(stat: dict[str, float], fmt: str = "{:.3g}") -> str:
    return f"{fmt.format(stat['median'])} [{fmt.format(stat['min'])}..{fmt.format(stat['max'])}]"


def _num(value: float | None, fmt: str = "{:.3g}") -> str:
    return "—" if value is None else fmt.format(value)


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(head) + " |",
        "| " + " | ".join("---" for _ in head) + " |",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def _failed(row: Row, width: int) -> list[str]:
    return [row["system"], f"failed: {row['error'][:80]}", *([""] * (width - 2))]


def _control_plane(rows: list[Row]) -> list[str]:
    head = ["system", "concurrency", "trials", "trials/s", "slot-ms per trial"]
    body = [
        _failed(r, 5)
        if "error" in r
        else [
            r["system"],
            str(r["concurrency"]),
            str(r["trials"]),
            _range(r["trials_per_s"]),
            _range(r["overhead_ms"]),
        ]
        for r in rows
    ]
    return _table(head, body)


def _utilization(rows: list[Row]) -> list[str]:
    head = ["system", "trials", "workers", "executed steps", "utilization", "wall s", "ideal s"]
    body = [
        _failed(r, 7)
        if "error" in r
        else [
            r["system"],
            str(r["trials"]),
            str(r["workers"]),
            _range(r["executed_steps"], "{:.0f}"),
            _range(r["utilization"]),
            _range(r["wall_s"]),
            _range(r["ideal_s"]),
        ]
        for r in rows
    ]
    return _table(head, body)


def _latency(rows: list[Row]) -> list[str]:
    head = ["system", "what", "samples", "p50 ms", "p99 ms", "p50 / floor"]
    body = [
        [
            r["system"],
            r["kind"],
            str(r["n"]),
            _num(r["p50_ms"]),
            _num(r["p99_ms"]),
            _num(r.get("p50_over_floor")),
        ]
        for r in rows
    ]
    return _table(head, body)


def _isolation(rows: list[Row]) -> list[str]:
    head = ["broker", "inputs", "other's p50 ms", "while blocked: p50 ms", "max ms", "5 inputs ms"]
    body = [
        [
            r["broker"],
            str(r["inputs"]),
            _num(r["other_p50_ms_before"]),
            _num(r["other_p50_ms_while_blocked"]),
            _num(r["other_max_ms_while_blocked"]),
            _num(r["five_inputs_ms"]),
        ]
        for r in rows
    ]
    return _table(head, body)


def _scaling(rows: list[Row]) -> list[str]:
    head = ["workers", "steps/s", "speedup", "efficiency", "utilization", "wall s"]
    body = [
        [
            str(r["workers"]),
            _num(r["steps_per_s"]),
            _num(r["speedup"]),
            _num(r["efficiency"]),
            _range(r["utilization"]),
            _range(r["wall_s"]),
        ]
        for r in rows
    ]
    return _table(head, body)


def _quality(rows: list[Row]) -> list[str]:
    head = [
        "benchmark",
        "system",
        "budget (full evals)",
        "seeds",
        "regret median [IQR]",
        "reached target",
        "epochs to target",
    ]
    body = []
    for r in rows:
        if "curve" in r:
            continue
        if "error" in r:
            body.append([r["benchmark"], r["system"], f"failed: {r['error'][:80]}", "", "", "", ""])
            continue
        body.append(
            [
                r["benchmark"],
                r["system"],
                str(r["budget_evals"]),
                str(r["seeds"]),
                f"{_num(r['regret_median'])} [{_num(r['regret_q1'])}..{_num(r['regret_q3'])}]",
                f"{r['reached_target']:.0%}",
                _num(r["epochs_to_target_median"], "{:.0f}"),
            ]
        )
    return _table(head, body)


def _searcher_scale(simulator: list[Row], replay: list[Row]) -> list[str]:
    out = _table(
        ["method", "trials", "decisions", "seconds", "decisions/s", "peak memory MiB"],
        [
            [
                r["method"],
                str(r["trials"]),
                str(r["decisions"]),
                f"{r['seconds_median']} [{r['seconds_min']}..{r['seconds_max']}]",
                str(r["decisions_per_s"]),
                f"{r['peak_rss_mib']} (of which {r['rss_before_mib']} before the search)",
            ]
            for r in simulator
        ],
    )
    if replay:
        out.append("")
        out += _table(
            ["reading a log back", "records", "log MiB", "seconds", "records/s"],
            [
                [
                    r["phase"],
                    str(r["records"]),
                    str(r["log_mib"]),
                    f"{r['seconds_median']} [{r['seconds_min']}..{r['seconds_max']}]",
                    str(r["records_per_s"]),
                ]
                for r in replay
            ],
        )
    return out


def _plots(by: dict[str, list[Row]], stem: str) -> list[str]:
    """Draw the plots the results allow; return the markdown that shows them."""
    try:
        import matplotlib as mpl  # noqa: PLC0415 (only the report draws)

        mpl.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return ["(matplotlib is not installed: no plots.)", ""]
    IMAGES.mkdir(parents=True, exist_ok=True)
    shown: list[str] = []
    scaling = [r for r in by.get("scaling", []) if "error" not in r]
    if scaling:
        figure, axis = plt.subplots(figsize=(6, 4))
        workers = [r["workers"] for r in scaling]
        axis.plot(workers, [r["utilization"]["median"] for r in scaling], "o-", label="utilization")
        axis.plot(workers, [r["efficiency"] for r in scaling], "s--", label="scaling efficiency")
        axis.axhline(1.0, color="grey", linewidth=0.5)
        axis.set_xscale("log", base=2)
        axis.set_xticks(workers, [str(w) for w in workers])
        axis.set_xlabel("workers")
        axis.set_ylim(0, 1.05)
        axis.set_title("Rung on workload 2 (20 ms steps), against workers")
        axis.legend()
        figure.tight_layout()
        name = f"bench-{stem}-scaling.png"
        figure.savefig(IMAGES / name, dpi=100)
        plt.close(figure)
        shown += [f"![utilization and efficiency against workers](img/{name})", ""]
    curves = [r for r in by.get("quality", []) if "curve" in r]
    benchmarks = list(dict.fromkeys(r["benchmark"] for r in curves))
    if benchmarks:
        figure, axes = plt.subplots(1, len(benchmarks), figsize=(5 * len(benchmarks), 4))
        axes_list = list(axes) if len(benchmarks) > 1 else [axes]
        for axis, benchmark in zip(axes_list, benchmarks, strict=True):
            for row in (r for r in curves if r["benchmark"] == benchmark):
                if row["curve"]:
                    xs, ys = zip(*row["curve"], strict=True)
                    style = "-" if row["system"].startswith("rung") else "--"
                    axis.plot(xs, ys, style, label=row["system"])
            axis.set_title(benchmark)
            axis.set_xlabel("budget (full-fidelity evaluations)")
            axis.set_ylabel("median regret" if benchmark != "digits" else "validation error")
            axis.set_yscale("log")
        axes_list[0].legend(fontsize="small")
        figure.tight_layout()
        name = f"bench-{stem}-regret.png"
        figure.savefig(IMAGES / name, dpi=100)
        plt.close(figure)
        shown += [f"![median regret against budget](img/{name})", ""]
    return shown


def render(path: Path) -> str:
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    header, rows = lines[0], lines[1:]
    by: dict[str, list[Row]] = {}
    for row in rows:
        by.setdefault(row["workload"], []).append(row)
    text = [
        f"Run {header['date']} on commit {header['commit']}: {header['cpus']} CPUs, "
        f"{header['memory_gib']} GiB, Python {header['python']}"
        + (" (quick sizes)" if header.get("quick") else "")
        + f". Raw figures: `bench/results/{path.name}`.",
        "",
    ]
    sections = [
        ("control_plane", "1. Control-plane overhead: null trials", _control_plane),
        ("utilization", "2. Worker utilization under successive halving", _utilization),
        ("latency", "3. Dispatch latency", _latency),
        ("scaling", "4. Horizontal scaling (workload 2)", _scaling),
        ("quality", "5. Search quality at equal budget", _quality),
    ]
    for key, title, table in sections:
        if key in by:
            text += [f"### {title}", "", *table(by[key]), ""]
    if "simulator" in by or "replay" in by:
        text += [
            "### 6. Searcher scale",
            "",
            *_searcher_scale(by.get("simulator", []), by.get("replay", [])),
            "",
        ]
    if "isolation" in by:
        text += ["### 7. Isolation between experiments", "", *_isolation(by["isolation"]), ""]
    text += _plots(by, path.stem)
    return "\n".join(text)


def main() -> None:
    path = Path(sys.argv[1])
    doc = DOC.read_text()
    head = doc.split(TEMPLATE_MARK)[0]
    DOC.write_text(f"{head}{TEMPLATE_MARK}\n\n{render(path)}")
    print(f"rendered {path} into {DOC}")


if __name__ == "__main__":
    main()
