"""A calibrated discrete-event simulator of coded serving (``learncc simulate``).

``simulate(SimConfig(...))`` runs the frontend's policies (coded, equal,
none) and three baselines (hedge, replicate, cheap) on simulated instances
with the real bench's slowdown schedules; ``from_bench`` turns a
``BenchConfig`` into the matching simulation. See ``learncc.sim.engine``.
"""

from learncc.sim.engine import (
    SimConfig,
    SimResult,
    arrival_trace,
    from_bench,
    simulate,
    simulate_mode,
    summary,
)
from learncc.sim.service import (
    SERVICE_MODELS,
    Bimodal,
    Deterministic,
    Exponential,
    LogNormal,
    Measured,
    Overheads,
    ServiceModel,
    load_measured,
    load_overheads,
    parse_service,
)

__all__ = [
    "SERVICE_MODELS",
    "Bimodal",
    "Deterministic",
    "Exponential",
    "LogNormal",
    "Measured",
    "Overheads",
    "ServiceModel",
    "SimConfig",
    "SimResult",
    "arrival_trace",
    "from_bench",
    "load_measured",
    "load_overheads",
    "parse_service",
    "simulate",
    "simulate_mode",
    "summary",
]
