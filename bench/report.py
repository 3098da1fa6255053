"""``python -m bench.report RESULTS.jsonl [MORE.jsonl ...]``: render results files into
docs/benchmarks.md.

Tables for every workload in the files, and plots (PNG, in ``docs/img/``): utilization
and efficiency against the number of workers, and regret against budget (one figure per
worker count). A workload's rows come from the last file that has them, except search
quality's, which are merged over the files (a long run is split by benchmark, worker
count or system): a later file's rows for a benchmark, worker count and system replace
an earlier file's.
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


def _capacity(rows: list[Row]) -> list[str]:
    head = ["experiments", "trials", "inputs/s", "trials/s", "CPU: searcher", "sim", "broker"]
    body = [
        [
            str(r["experiments"]),
            str(r["trials"]),
            _num(r["inputs_per_s"]),
            _num(r["trials_per_s"]),
            _num(r["searcher_cpu"]),
            _num(r.get("sim_workers_cpu")),
            _num(r.get("broker_cpu")),
        ]
        for r in rows
        if "error" not in r
    ]
    return _table(head, body)


def _collect(rows: list[Row]) -> list[str]:
    head = ["trials", "a trial's end, p50 ms", "p95 ms", "every end, s"]
    body = [
        [str(r["trials"]), _num(r["exit_ms_p50"]), _num(r["exit_ms_p95"]), _num(r["all_exits_s"])]
        for r in rows
    ]
    return _table(head, body)


def _segment(rows: list[Row]) -> list[str]:
    phases = ["start", "init", "first_op", "train", "store", "report", "continue", "leave"]
    head = ["search", "utilization", "processes", "CPU ms: main", "started", *phases]
    body = [
        [
            str(r["mode"]),
            _num(r["utilization"]),
            _num(r["processes"]),
            _num(r["main_cpu_ms"]),
            _num(r["started_cpu_ms"]),
            *(_num(r["phase_ms_p50"].get(p)) for p in phases),
        ]
        for r in rows
    ]
    return _table(head, body)


def _dashboard(rows: list[Row]) -> list[str]:
    head = ["phase", "trials", "seconds", "MB"]
    body = [
        [
            str(r["phase"]),
            str(r.get("trials", "")),
            _range(
                {"median": r["seconds_median"], "min": r["seconds_min"], "max": r["seconds_max"]}
            ),
            _num(r["bytes"] / 1e6) if "bytes" in r else "",
        ]
        for r in rows
    ]
    return _table(head, body)


def _pbt(rows: list[Row]) -> list[str]:
    head = ["system", "seeds", "median", "q1", "q3", "min", "max", "epochs", "at 800", "replay"]
    body = [
        _failed(r, 10)
        if "error" in r
        else [
            r["system"],
            str(r["seeds"]),
            *(_num(r[k], "{:.4g}") for k in ("median", "q1", "q3", "min", "max")),
            f"{r['epochs_median']:g} [{r['epochs_min']}..{r['epochs_max']}]",
            _num(r["within_budget_median"], "{:.4g}")
            + f" ({r['within_budget_seeds']}/{r['seeds']})",
            "—"
            if "replay_identical" not in r
            else ("identical" if r["replay_identical"] else f"differs: {r['replay_differs']}"),
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


QUALITY_ORDER = ("mfh6", "mfh6_bad", "mixed", "digits")
RUNG_SYSTEMS = tuple(
    f"rung {scheduler}+{sampler}"
    for sampler in ("random", "tpe", "gp")
    for scheduler in ("random", "asha", "adaptive_asha")
)
PEER_SYSTEMS = (
    "optuna tpe_hyperband",
    "optuna tpe_nopruning",
    "optuna random_sh",
    "optuna random_hyperband",
    "ray asha",
)


def _quality_key(row: Row) -> tuple[str, int, str]:
    return row["benchmark"], row.get("workers", 1), row["system"]


def _cells(rows: list[Row]) -> list[tuple[str, int]]:
    """(benchmark, workers) in the report's order."""
    found = {(r["benchmark"], r.get("workers", 1)) for r in rows}
    return sorted(
        found,
        key=lambda c: (QUALITY_ORDER.index(c[0]) if c[0] in QUALITY_ORDER else 99, c[0], -c[1]),
    )


def _scores(rows: list[Row], benchmark: str, workers: int) -> dict[str, dict[int, Row]]:
    """system -> budget -> its row, for one cell."""
    out: dict[str, dict[int, Row]] = {}
    for r in rows:
        if _quality_key(r)[:2] == (benchmark, workers) and "budget_evals" in r:
            out.setdefault(r["system"], {})[r["budget_evals"]] = r
    return out


def _quality(rows: list[Row]) -> list[str]:
    if not any("workers" in r for r in rows):
        return _quality_legacy(rows)
    out: list[str] = []
    for benchmark, workers in _cells(rows):
        scores = _scores(rows, benchmark, workers)
        budgets = sorted({b for by_budget in scores.values() for b in by_budget})
        if not budgets:
            continue
        last = budgets[-1]
        lowest = {
            b: min(
                (s[b]["regret_median"] for s in scores.values() if b in s),
                key=lambda v: float("inf") if v is None else v,
            )
            for b in budgets
        }
        target = next(iter(next(iter(scores.values())).values()))["target"]
        what = "regret" if benchmark != "digits" else "validation error"
        head = [
            "system",
            *(f"{what} at {b} evals, median [IQR]" for b in budgets),
            f"reached target at {last}",
            "epochs to target",
        ]
        body = []
        for system, by_budget in sorted(scores.items(), key=lambda i: _system_order(i[0])):
            cells = []
            for b in budgets:
                r = by_budget.get(b)
                if r is None:
                    cells.append("—")
                    continue
                median = _num(r["regret_median"])
                if r["regret_median"] is not None and r["regret_median"] == lowest[b]:
                    median = f"**{median}**"
                cells.append(f"{median} [{_num(r['regret_q1'])}..{_num(r['regret_q3'])}]")
            r = by_budget[last] if last in by_budget else next(iter(by_budget.values()))
            cells += [f"{r['reached_target']:.0%}", _num(r["epochs_to_target_median"], "{:.0f}")]
            body.append([system, *cells])
        seeds = sorted({r["seeds"] for by_budget in scores.values() for r in by_budget.values()})
        out += [
            f"#### {benchmark}, {workers} worker{'s' if workers > 1 else ''}",
            "",
            f"Seeds: {', '.join(map(str, seeds))}. Target: {_num(target)}.",
            "",
            *_table(head, body),
            "",
        ]
        failed = [r for r in rows if _quality_key(r)[:2] == (benchmark, workers) and "error" in r]
        missing = [
            s
            for s in (*RUNG_SYSTEMS, *PEER_SYSTEMS)
            if s not in scores and s not in {r["system"] for r in failed}
        ]
        notes = [f"{r['system']}: {r['error'][:160]}" for r in failed]
        if missing:
            notes.append(f"not run: {', '.join(missing)}")
        if notes:
            out += ["Not in the table: " + "; ".join(notes) + ".", ""]
    out += _quality_targets(rows)
    return out


def _system_order(system: str) -> tuple[int, str]:
    order = (*RUNG_SYSTEMS, *PEER_SYSTEMS)
    return (order.index(system) if system in order else len(order), system)


def _best(
    scores: dict[str, dict[int, Row]], budget: int, *, rung: bool
) -> tuple[str, float] | None:
    found = [
        (system, by_budget[budget]["regret_median"])
        for system, by_budget in scores.items()
        if system.startswith("rung") == rung
        and budget in by_budget
        and by_budget[budget]["regret_median"] is not None
    ]
    return min(found, key=lambda f: f[1]) if found else None


def _quality_targets(rows: list[Row]) -> list[str]:
    """Issue 17's targets, each checked against the figures above."""
    body: list[list[str]] = []
    for benchmark, workers in _cells(rows):
        scores = _scores(rows, benchmark, workers)
        for budget in sorted({b for s in scores.values() for b in s}):
            rung, peer = _best(scores, budget, rung=True), _best(scores, budget, rung=False)
            if rung is None or peer is None:
                continue
            body.append(
                [
                    f"Rung lowest median: {benchmark}, {workers}w, {budget} evals",
                    f"{rung[0]} {_num(rung[1])}; best peer {peer[0]} {_num(peer[1])}",
                    # Equal medians (digits' errors come in steps of 1/359): a tie.
                    "yes" if rung[1] < peer[1] else "tie" if rung[1] == peer[1] else "no",
                ]
            )
    scores = _scores(rows, "mfh6", 8)
    for budget in sorted({b for s in scores.values() for b in s}):
        rung = _best(scores, budget, rung=True)
        for rival, bound, text in (
            ("optuna tpe_hyperband", 1 / 3, "at most 1/3 of"),
            ("optuna tpe_nopruning", 1.0, "below"),
        ):
            other = scores.get(rival, {}).get(budget)
            if rung is None or other is None or other["regret_median"] is None:
                continue
            if rival == "optuna tpe_nopruning" and budget != max(
                b for s in scores.values() for b in s
            ):
                continue
            ratio = rung[1] / other["regret_median"]
            body.append(
                [
                    f"mfh6, 8w, {budget} evals: Rung {text} {rival}",
                    f"{rung[0]} {_num(rung[1])} / {_num(other['regret_median'])} = {ratio:.2f}",
                    "yes" if (ratio <= bound if bound < 1 else ratio < bound) else "no",
                ]
            )
    for benchmark in dict.fromkeys(c[0] for c in _cells(rows)):
        one, eight = _scores(rows, benchmark, 1), _scores(rows, benchmark, 8)
        for budget in sorted({b for s in one.values() for b in s}):
            best_one, best_eight = _best(one, budget, rung=True), _best(eight, budget, rung=True)
            if best_one is None or best_eight is None:
                continue
            ratio = best_eight[1] / best_one[1] if best_one[1] > 0 else float("inf")
            body.append(
                [
                    f"Rung 8w within 1.5x of 1w: {benchmark}, {budget} evals",
                    (
                        f"{best_eight[0]} {_num(best_eight[1])} / {best_one[0]} "
                        f"{_num(best_one[1])} = {ratio:.2f}"
                    ),
                    "yes" if ratio <= 1.5 else "no",
                ]
            )
    if not body:
        return []
    return ["#### Issue 17's targets", "", *_table(["target", "figures", "met?"], body), ""]


def _quality_legacy(rows: list[Row]) -> list[str]:
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


def _plots(by: dict[str, list[Row]], stems: dict[str, str]) -> list[str]:
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
        name = f"bench-{stems['scaling']}-scaling.png"
        figure.savefig(IMAGES / name, dpi=100)
        plt.close(figure)
        shown += [f"![utilization and efficiency against workers](img/{name})", ""]
    curves = [r for r in by.get("quality", []) if "curve" in r]
    for workers in sorted({r.get("workers", 1) for r in curves}, reverse=True):
        mine = [r for r in curves if r.get("workers", 1) == workers]
        shown += _regret_plot(plt, mine, stems["quality"])
    return shown


def _regret_plot(plt: Any, curves: list[Row], stem: str) -> list[str]:
    """Median regret against budget, one panel per benchmark, for one worker count."""
    benchmarks = sorted(
        dict.fromkeys(r["benchmark"] for r in curves),
        key=lambda b: QUALITY_ORDER.index(b) if b in QUALITY_ORDER else 99,
    )
    if not benchmarks:
        return []
    workers = curves[0].get("workers", 1)
    figure, axes = plt.subplots(
        1, len(benchmarks), figsize=(4.2 * len(benchmarks) + 2.4, 4), squeeze=False
    )
    colours = {"random": "tab:grey", "tpe": "tab:blue", "gp": "tab:green"}
    styles = {"random": ":", "asha": "-", "adaptive_asha": "-."}
    peers = dict(
        zip(
            PEER_SYSTEMS,
            ("tab:red", "tab:orange", "tab:purple", "tab:brown", "tab:pink"),
            strict=True,
        )
    )
    for axis, benchmark in zip(axes[0], benchmarks, strict=True):
        rows = sorted(
            (r for r in curves if r["benchmark"] == benchmark and r["curve"]),
            key=lambda r: _system_order(r["system"]),
        )
        for row in rows:
            xs, ys = zip(*row["curve"], strict=True)
            system = row["system"]
            if system.startswith("rung ") and "+" in system:
                scheduler, sampler = system[5:].split("+")
                axis.plot(
                    xs, ys, styles.get(scheduler, "-"), color=colours.get(sampler), label=system
                )
            else:
                axis.plot(
                    xs, ys, "--", color=peers.get(system), marker="x", markersize=3, label=system
                )
        axis.set_title(f"{benchmark}, {workers} worker{'s' if workers > 1 else ''}")
        axis.set_xlabel("budget (full-fidelity evaluations)")
        axis.set_ylabel("median regret" if benchmark != "digits" else "median validation error")
        axis.set_yscale("log")
    handles, labels = axes[0][0].get_legend_handles_labels()
    for axis in axes[0][1:]:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    figure.legend(handles, labels, loc="center right", fontsize="small")
    figure.tight_layout(rect=(0, 0, 1 - 2.2 / (4.2 * len(benchmarks) + 2.4), 1))
    name = f"bench-{stem}-regret-{workers}w.png"
    figure.savefig(IMAGES / name, dpi=100)
    plt.close(figure)
    plural = "s" if workers > 1 else ""
    return [f"![median regret against budget, {workers} worker{plural}](img/{name})", ""]


def _merge(files: list[tuple[Path, list[Row]]]) -> tuple[dict[str, list[Row]], dict[str, Path]]:
    """Rows by workload (see the module's docstring), and the file each workload is from."""
    by: dict[str, list[Row]] = {}
    source: dict[str, Path] = {}
    quality: dict[tuple[str, int, str], list[Row]] = {}
    pbt: dict[str, Row] = {}  # by system: Ray's and Rung's rows may come from different runs
    for path, rows in files:
        mine: dict[str, list[Row]] = {}
        for row in rows:
            mine.setdefault(row["workload"], []).append(row)
        for workload, found in mine.items():
            if workload == "quality" and any("workers" in r for r in found):
                keyed: dict[tuple[str, int, str], list[Row]] = {}
                for row in found:
                    keyed.setdefault(_quality_key(row), []).append(row)
                quality.update(keyed)
            elif workload == "pbt":
                pbt.update((row["system"], row) for row in found)
            else:
                by[workload] = found
            source[workload] = path
    if quality:
        by["quality"] = [row for rows in quality.values() for row in rows]
    if pbt:
        by["pbt"] = list(pbt.values())
    return by, source


def render(*paths: Path) -> str:
    files = []
    for path in paths:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        files.append((path, lines))
    by, source = _merge([(path, lines[1:]) for path, lines in files])
    headers = {path: lines[0] for path, lines in files}
    files_rows = {path: lines[1:] for path, lines in files}
    quality_files = [
        p
        for p, lines in files
        if any(r.get("workload") == "quality" and "workers" in r for r in lines[1:])
    ]
    text = []
    for path, header in headers.items():
        provides = [w for w, p in source.items() if p == path]
        if path in quality_files and "quality" not in provides:
            provides.append("quality")
        # pbt's rows are merged by system: name the systems this file still gives.
        provides = [w for w in provides if w != "pbt"]
        kept = [r["system"] for r in by.get("pbt", []) if any(r is o for o in files_rows[path])]
        if kept:
            provides.append(f"pbt ({', '.join(kept)})")
        if "quality" in provides and header.get("quality_options"):
            part = "; ".join(
                f"{key} {', '.join(map(str, value)) if isinstance(value, list) else value}"
                for key, value in header["quality_options"].items()
            )
            provides[provides.index("quality")] = f"quality ({part})"
        if not provides:
            continue
        text.append(
            f"- `bench/results/{path.name}`: {', '.join(provides)}; run {header['date']} on "
            f"commit {header['commit']}"
            + (" with uncommitted changes" if header.get("uncommitted_changes") else "")
            + f": {header['cpus']} CPUs, {header['memory_gib']} GiB, "
            f"Python {header['python']}" + (" (quick sizes)" if header.get("quick") else "") + "."
        )
    text.append("")
    stems = {workload: path.stem for workload, path in source.items()}
    if quality_files:  # the files' common prefix, such as 2026-12-06
        names = [p.stem for p in quality_files]
        common = next(
            (i for i, chars in enumerate(zip(*names, strict=False)) if len(set(chars)) > 1),
            min(map(len, names)),
        )
        stems["quality"] = names[0][:common].rstrip("-") or names[-1]
    return _render(by, text, stems)


def _render(by: dict[str, list[Row]], text: list[str], stems: dict[str, str]) -> str:
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
    if "capacity" in by:
        text += ["### 8. Searcher capacity on RabbitMQ", "", *_capacity(by["capacity"]), ""]
    if "dashboard" in by:
        text += ["### 9. The dashboard at scale", "", *_dashboard(by["dashboard"]), ""]
    if "pbt" in by:
        text += ["### 10. Population-based training on lrsched", "", *_pbt(by["pbt"]), ""]
    if "collect" in by:
        title = "### 11. A trial's end at thousands of trials (checkpoint collection)"
        text += [title, "", *_collect(by["collect"]), ""]
    if "segment" in by:
        title = "### 12. Where a trial segment's time goes (p50 ms per phase)"
        text += [title, "", *_segment(by["segment"]), ""]
    text += _plots(by, stems)
    return "\n".join(text)


def main() -> None:
    paths = [Path(arg) for arg in sys.argv[1:]]
    doc = DOC.read_text()
    head = doc.split(TEMPLATE_MARK)[0]
    DOC.write_text(f"{head}{TEMPLATE_MARK}\n\n{render(*paths)}")
    print(f"rendered {', '.join(map(str, paths))} into {DOC}")


if __name__ == "__main__":
    main()
