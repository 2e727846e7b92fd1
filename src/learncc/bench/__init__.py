"""Benchmarks: open-loop load, equal-resources comparisons, latency reports."""

from learncc.bench.loadgen import ModeResult, Trace, drive, poisson_trace
from learncc.bench.run import BenchConfig, run_comparison

__all__ = [
    "BenchConfig",
    "ModeResult",
    "Trace",
    "drive",
    "poisson_trace",
    "run_comparison",
]
