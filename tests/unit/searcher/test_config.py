"""Experiment configs: what loads, what is refused, and how the refusal reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from rung.searcher.config import (
    AdaptiveASHASearcher,
    AdaptiveMode,
    AsyncHalvingSearcher,
    CategoricalHP,
    ConstHP,
    CustomSearcher,
    ExperimentConfig,
    IntHP,
    Length,
    LogHP,
    NestedHP,
    iter_leaves,
    load_config_file,
    load_config_text,
    parse_config,
)
from rung.searcher.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]

FULL = """
name: full
description: every field
labels: [a, b]
data: {url: /data, nested: {k: 1}}
entrypoint: [python3, train.py]
hyperparameters:
  global_batch_size: 32
  dropout: {type: const, val: 0.5}
  layers: {type: int, minval: 1, maxval: 4, count: 4}
  lr: {type: log, minval: -5, maxval: -1, base: 10}
  momentum: {type: double, minval: 0.5, maxval: 0.99}
  act: {type: categorical, vals: [relu, gelu]}
  optimizer:
    name: sgd
    betas: {b1: {type: double, minval: 0.8, maxval: 0.9}}
searcher:
  name: adaptive_asha
  metric: val_loss
  smaller_is_better: false
  max_length: {batches: 1000}
  max_trials: 20
  max_concurrent_trials: 4
  mode: aggressive
  divisor: 3
  max_rungs: 4
max_restarts: 2
checkpoint_storage:
  type: shared_fs
  host_path: /mnt/ckpt
  storage_path: rung
  save_experiment_best: 2
  save_trial_best: 1
  save_trial_latest: 1
resources: {slots_per_trial: 2}
reproducibility: {experiment_seed: 42}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config_text(text)
    return [str(p) for p in caught.value.problems]


def test_every_field_loads_into_typed_models() -> None:
    config = load_config_text(FULL).config
    assert config.name == "full"
    assert config.labels == ["a", "b"]
    assert config.data == {"url": "/data", "nested": {"k": 1}}
    assert config.entrypoint == ["python3", "train.py"]
    hps = config.hyperparameters
    assert hps["global_batch_size"] == ConstHP(val=32)
    assert hps["layers"] == IntHP(type="int", minval=1, maxval=4, count=4)
    assert isinstance(hps["lr"], LogHP)
    assert hps["lr"].base == 10
    assert isinstance(hps["act"], CategoricalHP)
    assert isinstance(hps["optimizer"], NestedHP)
    searcher = config.searcher
    assert isinstance(searcher, AdaptiveASHASearcher)
    assert searcher.mode is AdaptiveMode.AGGRESSIVE
    assert searcher.max_length == Length(unit="batches", units=1000)
    assert searcher.smaller_is_better is False
    assert config.max_restarts == 2
    assert config.checkpoint_storage is not None
    assert config.checkpoint_storage.save_experiment_best == 2
    assert config.resources.slots_per_trial == 2
    assert config.experiment_seed == 42


def test_flattened_names_use_dots_in_sorted_order() -> None:
    config = load_config_text(FULL).config
    names = [name for name, _ in iter_leaves(config.hyperparameters)]
    assert names == sorted(names)
    assert "optimizer.betas.b1" in names
    assert "optimizer.name" in names


def test_defaults_follow_determined() -> None:
    config = load_config_text(
        "searcher: {name: asha, metric: x, max_length: 10, max_trials: 4, num_rungs: 2}"
    ).config
    searcher = config.searcher
    assert isinstance(searcher, AsyncHalvingSearcher)  # "asha" is an alias
    assert searcher.divisor == 4
    assert searcher.max_concurrent_trials == 16
    assert searcher.stop_once is False
    assert searcher.smaller_is_better is True
    assert config.max_restarts == 5
    assert config.resources.slots_per_trial == 1
    assert config.experiment_seed is None


def test_stored_config_round_trips_with_its_seed() -> None:
    config = load_config_text(FULL).config.with_seed(7)
    stored = config.model_dump(mode="json", by_alias=True)
    again = parse_config(stored).config
    assert again == config
    assert again.experiment_seed == 7
    assert stored["searcher"]["max_length"] == {"batches": 1000}


def test_custom_searcher_collects_options() -> None:
    config = load_config_text(
        "searcher: {name: custom, class: 'my_search:Bayes', metric: x, budget: 9, kind: [1]}"
    ).config
    assert isinstance(config.searcher, CustomSearcher)
    assert config.searcher.class_ == "my_search:Bayes"
    assert config.searcher.options == {"budget": 9, "kind": [1]}
    again = parse_config(config.model_dump(mode="json", by_alias=True)).config
    assert again == config


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "searcher: {name: asha, metric: x, max_length: 10, max_trials: 4, num_rungs: 2, "
            "divisor: 1}",
            "searcher.divisor: must be greater than 1, got 1",
        ),
        (
            "searcher: {name: random, metric: x, max_length: 10, max_trials: 0}",
            "searcher.max_trials: must be at least 1, got 0",
        ),
        (
            "searcher: {name: random, metric: x, max_length: 10}",
            "searcher.max_trials: required, but missing; add max_trials: <value>",
        ),
        (
            "searcher: {name: random, max_length: 10, max_trials: 2}",
            "searcher.metric: required, but missing; add metric: <value>",
        ),
        (
            "searcher: {name: single, metric: x, max_length: {epoch: 3}}",
            "searcher.max_length: must be a positive integer or a mapping with exactly one of "
            "batches, records or epochs (e.g. {epochs: 10}), got {'epoch': 3}",
        ),
        (
            "searcher: {name: single, metric: x, max_length: 1}\nmax_restarts: -1",
            "max_restarts: must be at least 0, got -1",
        ),
        (
            "searcher: {name: single, metric: x, max_length: 1}\nhyperparameters:\n"
            "  a: {type: categorical, vals: []}",
            "hyperparameters.a.vals: must not be empty, got []; list at least one value",
        ),
        (
            "searcher: {name: single, metric: x, max_length: 1}\nhyperparameters:\n"
            "  a: {type: log, minval: 1, maxval: 2, base: 0}",
            "hyperparameters.a.base: must be greater than 0, got 0",
        ),
        (
            "searcher: {name: single, metric: x, max_length: 1}\nhyperparameters:\n"
            "  n: {deep: {type: int, minval: 5, maxval: 5}}",
            "hyperparameters.n.deep.minval: must be less than maxval, got minval=5 and maxval=5; "
            "swap them, or use type: const for a single value",
        ),
        (
            "searcher: {name: adaptive_asha, metric: x, max_length: 10, max_trials: 9, mode: fast}",
            "searcher.mode: must be one of 'aggressive', 'standard' or 'conservative', got 'fast'",
        ),
        (
            "searcher: {name: custom, class: not-a-path}",
            "searcher.class: must look like 'module:ClassName', got 'not-a-path'",
        ),
        (
            "searcher: {name: single, metric: x, max_length: 1}\nhyperparameters:\n"
            "  lr: {type: log, minval: -4, maxval: 400, base: 10}",
            "hyperparameters.lr.maxval: base ** maxval must be a finite number, got 10 ** 400, "
            "which overflows a float; minval and maxval are exponents: keep maxval at most "
            "308.2 for base 10 (for 1e-4, write -4)",
        ),
        (
            "searcher: {name: grid, metric: x, max_length: 1}\nhyperparameters:\n"
            "  a: {type: int, minval: 0, maxval: 999999, count: 1000000}",
            "hyperparameters: the grid searcher allows at most 100000 points, got 1000000 "
            "(a: 1000000); lower count on the largest axes, or use searcher name: random with "
            "max_trials: N to sample N points instead",
        ),
    ],
)
def test_errors_name_the_path_the_rule_the_value_and_the_fix(text: str, expected: str) -> None:
    assert expected in problems(text)


def test_misspelled_key_suggests_the_nearest_valid_key() -> None:
    (problem,) = problems(
        "searcher: {name: asha, metric: x, max_length: 10, max_trials: 4, num_rungs: 2, divisr: 3}"
    )
    assert problem.startswith("searcher.divisr: unknown key 'divisr' (did you mean 'divisor'?)")


def test_misspelled_top_level_key_and_searcher_name() -> None:
    found = problems("hyperparamters: {}\nsearcher: {name: ashaa, metric: x}")
    assert any("hyperparamters: unknown key" in p and "'hyperparameters'" in p for p in found)
    assert any("unknown searcher name 'ashaa' (did you mean 'asha'?)" in p for p in found)


def test_misspelled_hyperparameter_type_suggests_the_type() -> None:
    (problem,) = problems(
        "searcher: {name: single, metric: x, max_length: 1}\nhyperparameters:\n"
        "  lr: {type: dobule, minval: 0, maxval: 1}"
    )
    assert problem.startswith(
        "hyperparameters.lr: unknown hyperparameter type 'dobule' (did you mean 'double'?)"
    )


def test_all_problems_are_reported_at_once() -> None:
    found = problems(
        "searcher: {name: random, metric: x, max_length: 0, max_trials: -2}\nmax_restarts: x"
    )
    assert len(found) == 3


def test_rules_across_fields_are_reported_together() -> None:
    found = problems(
        "searcher: {name: grid, metric: x, max_length: 1, max_trials: 3}\nhyperparameters:\n"
        "  lr: {type: log, minval: -400, maxval: 400, base: 10, count: 3}\n"
        "  d: {type: double, minval: 0, maxval: 1}"
    )
    assert [p.split(":")[0] for p in found] == [
        "hyperparameters.lr.minval",
        "hyperparameters.lr.maxval",
    ]
    # Cross-section rules run once every section is valid; then all of them are reported.
    found = problems(
        "searcher: {name: grid, metric: x, max_length: 1, max_trials: 3}\nhyperparameters:\n"
        "  d: {type: double, minval: 0, maxval: 1}\n"
        "  e: {type: double, minval: 0, maxval: 1, count: 100001}"
    )
    assert [p.split(":")[0] for p in found] == [
        "hyperparameters.d.count",
        "hyperparameters",
        "searcher.max_trials",
    ]


def test_grid_requires_count_on_numeric_hyperparameters() -> None:
    (problem,) = problems(
        "searcher: {name: grid, metric: x, max_length: 1}\nhyperparameters:\n"
        "  opt: {lr: {type: double, minval: 0, maxval: 1}}"
    )
    assert problem.startswith("hyperparameters.opt.lr.count: required by the grid searcher")


def test_rungs_that_repeat_are_refused() -> None:
    (problem,) = problems(
        "searcher: {name: asha, metric: x, max_length: 4, max_trials: 9, num_rungs: 4, divisor: 2}"
    )
    assert problem.startswith(
        "searcher.num_rungs: 4 rungs with divisor 2 and max_length 4 "
        "give rung lengths [1, 1, 2, 4], which repeat"
    )


def test_unsupported_storage_type_is_named() -> None:
    (problem,) = problems(
        "searcher: {name: single, metric: x, max_length: 1}\n"
        "checkpoint_storage: {type: s3, bucket: b}"
    )
    assert problem.startswith("checkpoint_storage.type: storage type 's3' is not supported")


def test_determined_keys_not_implemented_are_warnings() -> None:
    loaded = load_config_text(
        "environment: {image: pytorch}\nbind_mounts: []\nprofiling: {enabled: true}\n"
        "resources: {slots_per_trial: 1, resource_pool: gpu}\n"
        "searcher: {name: single, metric: x, max_length: 1}"
    )
    joined = "\n".join(loaded.warnings)
    for key in ("environment", "bind_mounts", "profiling", "resources.resource_pool"):
        assert f"{key}: Determined option not implemented by Rung yet, ignored" in joined


def test_max_time_reads_as_max_length_with_a_warning() -> None:
    loaded = load_config_text(
        "searcher: {name: asha, metric: x, max_time: 81, time_metric: batches, "
        "max_trials: 9, num_rungs: 3, divisor: 3}"
    )
    assert isinstance(loaded.config.searcher, AsyncHalvingSearcher)
    assert loaded.config.searcher.max_length.units == 81
    assert any(
        w.startswith("searcher.max_time: read as searcher.max_length") for w in loaded.warnings
    )


def test_yaml_syntax_errors_give_the_line() -> None:
    (problem,) = problems("searcher: {name: single\n  metric: [")
    assert problem.startswith("line ")
    assert "not valid YAML" in problem


def test_a_config_that_is_not_a_mapping() -> None:
    assert problems("- 1\n- 2") == [
        "the config must be a mapping of keys to values, got a list; start from "
        "examples/core_api/3_hpsearch.yaml"
    ]


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config_file(tmp_path / "nope.yaml")


def test_the_example_configs_load() -> None:
    for path in sorted(ROOT.glob("examples/**/*.yaml")):
        assert isinstance(load_config_file(path).config, ExperimentConfig), path


def test_seed_is_kept_within_32_bits() -> None:
    config = load_config_text("searcher: {name: single, metric: x, max_length: 1}").config
    assert config.with_seed(2**32 + 5).experiment_seed == 5
