"""``rung replay LOG``: an experiment's timeline, its state at any point, and a check that
today's Rung still makes the decisions that were recorded."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rung.searcher.config import load_config_file
from rung.searcher.eventlog import (
    SNAPSHOT_FILE,
    InputRecord,
    Record,
    read_log,
    read_snapshot,
    replay,
)
from rung.searcher.eventlog.explain import entry, print_entry, state_at
from rung.searcher.eventlog.whatif import what_if
from rung.searcher.trials import ExperimentRun, Step

__all__ = ["register"]


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "replay",
        help="replay an experiment's event log",
        description="Print the timeline of an experiment: every "
        "event and every decision with its reason.",
    )
    parser.add_argument("log", type=Path, help="an experiment's events.jsonl")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="re-decide every event; exit 1 at the first difference",
    )
    parser.add_argument(
        "--at", type=int, metavar="SEQ", help="print the complete state after record SEQ"
    )
    parser.add_argument(
        "--all", action="store_true", help="also show checkpoints, metrics, progress and log lines"
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="OTHER.yaml",
        help="what-if: re-decide with these searcher settings against the results the log recorded",
    )
    parser.add_argument(
        "--workers", type=int, default=4, help="simulated workers for --config (default 4)"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--contexts",
        type=Path,
        default=None,
        help="where experiment contexts are (for custom searchers; default: "
        "the searcher state directory the log is in)",
    )
    parser.set_defaults(handler=run_replay)


def _contexts(args: argparse.Namespace) -> Path | None:
    if args.contexts is not None:
        return Path(args.contexts)
    guess = args.log.resolve().parent.parent.parent / "contexts"
    return guess if guess.is_dir() else None


def run_replay(args: argparse.Namespace) -> int:
    records = read_log(args.log)
    contexts = _contexts(args)
    if args.config is not None:
        return _what_if(args, records)
    if args.verify:
        result = replay(records, context_root=contexts, verify=True)
        divergence = result.divergence
        if args.json:
            print(
                json.dumps(
                    {
                        "ok": divergence is None,
                        "records": result.records,
                        "divergence": None
                        if divergence is None
                        else {"seq": divergence.seq, "diff": divergence.diff()},
                    }
                )
            )
        elif divergence is None:
            print(f"ok: all {result.records} records re-decided identically")
        else:
            print(f"divergence at record {divergence.seq}:", file=sys.stderr)
            print(divergence.diff())
        return 0 if divergence is None else 1
    if args.at is not None:
        snapshot = read_snapshot(args.log.with_name(SNAPSHOT_FILE))
        replayed = replay(records, snapshot=snapshot, context_root=contexts, until=args.at)
        state = state_at(replayed.run)
        print(json.dumps(state, indent=None if args.json else 2))
        return 0
    entries: list[dict[str, Any]] = []

    def explain(record: InputRecord, step: Step, run: ExperimentRun) -> None:
        item = entry(record, step, run, show_all=args.all)
        if item is not None:
            entries.append(item)

    replay(records, context_root=contexts, on_step=explain)
    if args.json:
        print(json.dumps(entries))
        return 0
    for item in entries:
        print(print_entry(item))
    return 0


def _what_if(args: argparse.Namespace, records: Sequence[Record]) -> int:
    config = load_config_file(args.config).config
    outcome = what_if(records, config, workers=args.workers)
    if args.json:
        print(outcome.model_dump_json(exclude={"result": {"trial_details"}}))
        return 0 if outcome.complete else 1
    print(
        f"recorded: {outcome.recorded_trials} trials, {outcome.recorded_length} length "
        f"trained, best {outcome.recorded_best}"
    )
    if outcome.result is None:
        print(f"what-if stopped: {outcome.gap}")
        return 1
    result = outcome.result
    print(
        f"what-if ({config.searcher.name}): {result.trials} trials, {result.total_length} "
        f"length trained, best {result.best_metric} (trial {result.best_trial_id}, "
        f"{json.dumps(result.best_hparams)})"
    )
    return 0
