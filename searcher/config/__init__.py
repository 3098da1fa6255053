"""Experiment configs: Determined-style YAML, validated into frozen pydantic models."""

from rung.searcher.config.experiment import (
    CheckpointStorage,
    ExperimentConfig,
    Reproducibility,
    Resources,
    iter_leaves,
)
from rung.searcher.config.hyperparameters import (
    CategoricalHP,
    ConstHP,
    DoubleHP,
    Hyperparameter,
    Hyperparameters,
    IntHP,
    LogHP,
    NestedHP,
    NumericHP,
)
from rung.searcher.config.length import Length, LengthUnit
from rung.searcher.config.loader import (
    LoadedConfig,
    load_config_file,
    load_config_text,
    parse_config,
)
from rung.searcher.config.searchers import (
    SEARCHER_NAMES,
    AdaptiveASHASearcher,
    AdaptiveMode,
    AsyncHalvingSearcher,
    CustomSearcher,
    GridSearcher,
    RandomSearcher,
    SearcherConfig,
    SingleSearcher,
)

__all__ = [
    "SEARCHER_NAMES",
    "AdaptiveASHASearcher",
    "AdaptiveMode",
    "AsyncHalvingSearcher",
    "CategoricalHP",
    "CheckpointStorage",
    "ConstHP",
    "CustomSearcher",
    "DoubleHP",
    "ExperimentConfig",
    "GridSearcher",
    "Hyperparameter",
    "Hyperparameters",
    "IntHP",
    "Length",
    "LengthUnit",
    "LoadedConfig",
    "LogHP",
    "NestedHP",
    "NumericHP",
    "RandomSearcher",
    "Reproducibility",
    "Resources",
    "SearcherConfig",
    "SingleSearcher",
    "iter_leaves",
    "load_config_file",
    "load_config_text",
    "parse_config",
]
