"""Rung: distributed hyperparameter search with a Determined-compatible Core API.

A Determined 0.37 training script runs on Rung with its import changed to
``import rung as det``.
"""

from rung import core
from worker.core import LOG_FORMAT, InvalidHP, get_cluster_info

__all__ = ["LOG_FORMAT", "InvalidHP", "core", "get_cluster_info"]
