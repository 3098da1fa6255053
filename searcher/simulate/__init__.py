"""Simulated workers in virtual time, for choosing and benchmarking search methods."""

from rung.searcher.simulate.benchmarks import (
    BENCHMARKS,
    Benchmark,
    Curves,
    MFHartmann6,
    benchmark_named,
)
from rung.searcher.simulate.engine import SimulatedTrial, SimulationResult, simulate
from rung.searcher.simulate.objective import Objective, load_objective

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "Curves",
    "MFHartmann6",
    "Objective",
    "SimulatedTrial",
    "SimulationResult",
    "benchmark_named",
    "load_objective",
    "simulate",
]
