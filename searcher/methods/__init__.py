"""Search methods: pure, deterministic state machines driven by search events.

``build_method`` turns a validated experiment config into the method it names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rung.searcher.config import (
    AdaptiveASHASearcher,
    AsyncHalvingSearcher,
    CustomSearcher,
    ExperimentConfig,
    GridSearcher,
    PBTSearcher,
    RandomSearcher,
    SingleSearcher,
)
from rung.searcher.errors import UnknownRulesError
from rung.searcher.methods.adaptive_asha import AdaptiveASHA, plan_brackets
from rung.searcher.methods.asha import ASHAParams, PromotionASHA, StoppingASHA, build_asha
from rung.searcher.methods.base import (
    RULES,
    WORST,
    SearchContext,
    SearchMethod,
    TrialView,
    budget_progress,
    rank_value,
)
from rung.searcher.methods.custom import load_custom_method
from rung.searcher.methods.grid import GridSearch
from rung.searcher.methods.one_shot import OneShotSearch
from rung.searcher.methods.pbt import PBT
from rung.searcher.methods.random_search import RandomSearch, SingleSearch

__all__ = [
    "PBT",
    "RULES",
    "WORST",
    "ASHAParams",
    "AdaptiveASHA",
    "GridSearch",
    "PromotionASHA",
    "RandomSearch",
    "SearchContext",
    "SearchMethod",
    "SingleSearch",
    "StoppingASHA",
    "TrialView",
    "budget_progress",
    "build_method",
    "plan_brackets",
    "rank_value",
]


def build_method(
    config: ExperimentConfig, context_dir: Path | None = None, *, rules: int = RULES
) -> SearchMethod[Any]:
    """The search method ``config.searcher`` names, in its initial state, deciding by
    ``rules`` (an experiment's own, as its created record names them; see RULES).

    A revision this Rung does not know (a log written by a newer Rung) is refused: its
    decisions would be replayed under other rules than they were made by."""
    if not 1 <= rules <= RULES:
        raise UnknownRulesError(
            f"rules: the experiment decides by rule revision {rules}, and this Rung knows "
            f"revisions 1 to {RULES}; its log was written by a newer Rung: open it with "
            "that Rung or a later one"
        )
    method = _build(config, context_dir)
    if isinstance(method, OneShotSearch):  # the only ones the rules change
        method.rules = rules
    return method


def _build(config: ExperimentConfig, context_dir: Path | None) -> SearchMethod[Any]:
    searcher = config.searcher
    match searcher:
        case SingleSearcher():
            return SingleSearch(searcher)
        case RandomSearcher():
            return RandomSearch(searcher)
        case GridSearcher():
            return GridSearch(searcher, config.hyperparameters)
        case AsyncHalvingSearcher():
            return build_asha(ASHAParams.from_config(searcher), stop_once=searcher.stop_once)
        case AdaptiveASHASearcher():
            return AdaptiveASHA(searcher)
        case PBTSearcher():
            return PBT(searcher)
        case CustomSearcher():
            return load_custom_method(searcher, context_dir)
