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
from rung.searcher.config.samplers import (
    SAMPLER_NAMES,
    GPSamplerConfig,
    RandomSamplerConfig,
    SamplerConfig,
    TPESamplerConfig,
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
    "SAMPLER_NAMES",
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
    "GPSamplerConfig",
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
    "RandomSamplerConfig",
    "RandomSearcher",
    "Reproducibility",
    "Resources",
    "SamplerConfig",
    "SearcherConfig",
    "SingleSearcher",
    "TPESamplerConfig",
    "iter_leaves",
    "load_config_file",
    "load_config_text",
    "parse_config",
]
