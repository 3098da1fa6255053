"""Simulated workers in virtual time, for choosing and benchmarking search methods."""

from rung.searcher.simulate.benchmarks import (
    BENCHMARKS,
    Benchmark,
    Curves,
    MFHartmann6,
    benchmark_named,
)
from rung.searcher.simulate.engine import SimulatedTrial, SimulationResult, simulate

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "Curves",
    "MFHartmann6",
    "SimulatedTrial",
    "SimulationResult",
    "benchmark_named",
    "simulate",
]
