"""How fast a log replays: a synthetic log of a random search, read and folded.

The log is made by driving the real experiment and trial lifecycle with a scripted
worker, and written in the real record format. The figure: records replayed per second
(read and parse, then fold), median of 3 with min..max.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from broker.schemas.envelope import Body
from searcher.config import parse_config
from searcher.eventlog import CreatedRecord, FileEventLog, InputRecord, read_log
from searcher.eventlog import replay as replay_log
from searcher.experiment import Experiment
from searcher.testing import scripted_event
from searcher.trials import ExperimentRun, Step


def _make_log(path: Path, trials: int) -> int:
    raw = {
        "entrypoint": "python3 t.py",
        "reproducibility": {"experiment_seed": 1},
        "hyperparameters": {"x": {"type": "double", "minval": 0, "maxval": 1}},
        "searcher": {
            "name": "random",
            "metric": "x",
            "max_length": 10,
            "max_trials": trials,
            "max_concurrent_trials": 8,
        },
    }
    config = parse_config(raw).config
    run = ExperimentRun("bench", Experiment(config), context_hash="h", checkpoint_root="/c")
    log = FileEventLog(path)
    log.append(
        CreatedRecord(
            seq=1,
            experiment_id="bench",
            context_hash="h",
            checkpoint_root="/c",
            config=config.model_dump(mode="json", by_alias=True),
        )
    )

    def write(message_id: str, body: Body | None, step: Step) -> None:
        log.append(InputRecord.of(log.seq + 1, message_id, body, step))

    write("start", None, run.start())
    count = 0
    while run.state == "ACTIVE" and (body := scripted_event(run)) is not None:
        count += 1
        write(f"m{count}", body, run.on_event(body))
    log.close()
    return log.seq


def run(*, quick: bool) -> list[dict[str, object]]:
    trials = 2_000 if quick else 20_000
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.jsonl"
        records = _make_log(path, trials)
        seconds: list[float] = []
        for _ in range(3):
            start = time.perf_counter()
            replay_log(read_log(path), verify=False)
            seconds.append(time.perf_counter() - start)
        size = path.stat().st_size
    median = statistics.median(seconds)
    return [
        {
            "workload": "replay",
            "records": records,
            "log_mib": round(size / 2**20, 1),
            "seconds_median": round(median, 3),
            "seconds_min": round(min(seconds), 3),
            "seconds_max": round(max(seconds), 3),
            "records_per_s": round(records / median),
            "seconds_per_million_records": round(median / records * 1e6, 1),
        }
    ]
