from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fakes import FakeBackend
from learncc.bench import BenchConfig, drive, poisson_trace
from learncc.errors import ConfigError
from learncc.serving import Frontend
from learncc.serving.slowdown import (
    PRESETS,
    Schedule,
    SlowdownConfig,
    instance_schedule,
    preset,
)


def test_poisson_trace_is_seeded_with_the_right_rate() -> None:
    a = poisson_trace(rate_qps=1000, duration_s=20, pool=10, seed=3)
    b = poisson_trace(rate_qps=1000, duration_s=20, pool=10, seed=3)
    np.testing.assert_array_equal(a.arrivals_s, b.arrivals_s)
    assert len(a.arrivals_s) == pytest.approx(20_000, rel=0.03)
    gaps = np.diff(a.arrivals_s)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)  # exponential
    assert a.inputs.max() < 10


def test_episodes_preset_is_slow_about_5_percent_of_the_time() -> None:
    cfg = PRESETS["episodes"]
    slow = sum(
        e - s
        for g in range(20)
        for s, e in instance_schedule(cfg, g, 600, seed=1)["episodes"]
    )
    assert slow / (20 * 600) == pytest.approx(0.05, rel=0.15)
    assert instance_schedule(cfg, 2, 60, 1) == instance_schedule(cfg, 2, 60, 1)
    assert instance_schedule(cfg, 2, 60, 1) != instance_schedule(cfg, 3, 60, 1)


def test_schedule_factor_follows_episodes() -> None:
    sched = Schedule(
        {"slow_factor": 10, "episodes": [(1.0, 2.0), (5.0, 5.5)]}, t0=100.0
    )
    assert [sched.slow_factor(100 + t) for t in (0.5, 1.5, 3.0, 5.2, 6.0)] == [
        1,
        10,
        1,
        10,
        1,
    ]


def test_bad_bench_and_slowdown_settings() -> None:
    with pytest.raises(ConfigError, match="unknown modes"):
        BenchConfig(modes=("coded", "fast"))
    with pytest.raises(ConfigError, match="warmup_s"):
        BenchConfig(duration_s=2, warmup_s=3)
    with pytest.raises(ConfigError, match="unknown slowdown 'slowish'"):
        preset("slowish")
    with pytest.raises(ConfigError, match="slow_factor must be >= 1"):
        SlowdownConfig(slow_factor=0.5)

    # a sweep config's values arrive from TOML as they were written
    with pytest.raises(ConfigError, match="reconstruct_after_s must be a number"):
        BenchConfig(reconstruct_after_s="8ms")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="rate_qps must be a number, got True"):
        BenchConfig(rate_qps=True)
    with pytest.raises(ConfigError, match="m must be an integer, got 2.5"):
        BenchConfig(m=2.5)  # type: ignore[arg-type]
    assert BenchConfig(rate_qps=100).rate_qps == 100


async def test_drive_measures_from_scheduled_arrival() -> None:
    # one instance taking 20 ms per query at 100 q/s: latencies include queueing
    backend = FakeBackend(
        np.eye(2, dtype=np.float32), data_instances=1, delay_s=lambda role, i, tag: 0.02
    )
    frontend = Frontend(backend, input_shape=(2,))
    trace = poisson_trace(rate_qps=100, duration_s=1.0, pool=2, seed=0)
    pool = np.eye(2, dtype=np.float32)
    async with frontend:
        result = await drive(
            frontend, trace, pool, labels=np.array([0, 1]), warmup_s=0.2
        )
    assert result.n == int((trace.arrivals_s >= 0.2).sum()) and result.errors == 0
    assert 19 <= result.p50 <= 40 and result.top1 == 1.0
    assert result.reconstructed == 0 and len(result.latencies_ms) == result.n


@pytest.mark.parametrize(
    "path",
    sorted((Path(__file__).parent.parent / "configs").glob("*.toml")),
    ids=lambda p: p.name,
)
def test_shipped_sweep_configs_are_valid_for_every_value(path: Path) -> None:
    from learncc.bench.sweep import _bench_for, load_config

    config = load_config(path)
    param, values = config["sweep"]["param"], config["sweep"]["values"]
    for value in values:
        cfg = _bench_for(config, param, value)
        # each value's run (every mode, warm-up included) fits the issue's
        # 10-minute budget per config with room for start-up
        assert cfg.duration_s * len(cfg.modes) * len(values) <= 480
