"""The population-based training experiment the end-to-end and fault tests run: the
example's script (examples/pbt/train.py), a small population, checkpoints kept."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CONTEXT = ROOT / "examples" / "pbt"


def pbt_config(
    tmp_path: Path,
    *,
    population: int = 4,
    rounds: int = 3,
    per_round: int = 5,
    batch_sleep: float = 0.01,
    mode: str = "synchronous",
    seed: int | None = None,
    max_concurrent: int = 4,
) -> Path:
    """A config file under ``tmp_path``; checkpoints under ``tmp_path / "checkpoints"``,
    every trial's kept (so a test can read each copy's first checkpoint). ``seed`` fixes
    the members' hyperparameters; with ``max_concurrent`` 1 they also train in a fixed
    order, so an asynchronous search decides the same every time."""
    timeout = "round_timeout: 600, " if mode == "synchronous" else ""
    config = tmp_path / "pbt.yaml"
    config.write_text(
        "name: pbt-e2e\nentrypoint: python3 train.py\n"
        "hyperparameters:\n"
        "  lr: {type: log, minval: -3, maxval: 0, base: 10}\n"
        f"  batch_sleep: {batch_sleep}\n"
        f"searcher: {{name: pbt, metric: loss, population_size: {population}, "
        f"num_rounds: {rounds}, length_per_round: {per_round}, mode: {mode}, {timeout}"
        "replace_function: {truncate_fraction: 0.25}, "
        "explore_function: {resample_probability: 0.0, perturb_factor: 0.2}, "
        f"max_concurrent_trials: {max_concurrent}}}\n"
        "max_restarts: 2\n"
        f"checkpoint_storage: {{type: shared_fs, host_path: {tmp_path / 'checkpoints'}, "
        "save_trial_latest: 100, save_trial_best: 100}\n"
        + (f"reproducibility: {{experiment_seed: {seed}}}\n" if seed is not None else "")
    )
    return config


def checkpoint_state(tmp_path: Path, experiment_id: str, uuid: str) -> dict[str, Any]:
    """What examples/pbt/train.py saved in checkpoint ``uuid``."""
    path = tmp_path / "checkpoints" / experiment_id / uuid / "state.json"
    state: dict[str, Any] = json.loads(path.read_text())
    return state


def clones(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every ``Create`` of a copy, in the order the searcher decided them."""
    return [
        op
        for r in records
        if r.get("kind") == "input"
        for op in r.get("ops", [])
        if op["type"] == "create" and op.get("clone")
    ]


def first_saves(records: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Each trial's first checkpoint_saved input (applied), by trial id."""
    first: dict[int, dict[str, Any]] = {}
    for r in records:
        body = r.get("input") or {}
        applied = r.get("kind") == "input" and r.get("ignored") is None
        if applied and body.get("type") == "checkpoint_saved":
            first.setdefault(body["trial_id"], body)
    return first
