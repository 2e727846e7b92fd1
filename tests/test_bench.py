from __future__ import annotations

import asyncio
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

    # fresh-user test: each of these ran a first mode or sweep point, or
    # allocated gigabytes, before failing with a traceback or not at all
    for settings, message in (
        ({"seed": -1}, r"seed must be an integer in 0..2\*\*63-1, got -1"),
        ({"seed": 10**23}, "seed must be an integer"),
        ({"policy": "bogus"}, "unknown policy 'bogus'"),
        ({"backend": "k8s"}, "unknown backend 'k8s'"),
        ({"ray_address": "foo:1"}, "ray_address needs backend = 'ray'"),
        ({"noop": "yes"}, "noop must be true or false, got 'yes'"),
        ({"modes": "coded"}, "modes must be a list of names, got 'coded'"),
        ({"rate_qps": 1e9, "duration_s": 1, "warmup_s": 0}, "at most 10,000,000"),
        (
            {"slowdown_overrides": {"bogus": 1}},
            r"unknown slowdown settings \['bogus'\]",
        ),
    ):
        with pytest.raises(ConfigError, match=message):
            BenchConfig(**settings)


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


async def test_probe_times_a_flush_from_its_own_window() -> None:
    """A flush-sealed group whose one member answered before the flush sends
    no parity; the next group's flush lateness is still timed from that
    group's own opening (once it was timed from the earlier one: a 100 ms
    lateness that never happened, replayed by the simulator as a stall)."""
    from learncc.bench.run import OverheadProbe
    from learncc.codes import CodeConfig, make_code
    from learncc.serving import Coding
    from learncc.serving.deploy import Deployment

    W = np.eye(2, dtype=np.float32)
    # query 0 answers in 1 ms, before its group's 20 ms flush; query 1 is slow,
    # so its group's parity goes out at the flush and reconstructs it
    backend = FakeBackend(
        W,
        data_instances=2,
        parity_instances=1,
        delay_s=lambda role, i, tag: 1.0 if (role, tag) == ("data", 1) else 0.001,
    )
    enc, dec = make_code(CodeConfig(k=2, r=1, encoder="addition"), (2,))
    fill = np.zeros(2, np.float32)
    frontend = Frontend(
        backend,
        input_shape=(2,),
        coding=Coding(enc, dec, fill, W @ fill),
        flush_timeout_s=0.02,
    )
    cfg = BenchConfig(modes=("coded",), flush_timeout_s=0.02, service_ms=1)
    async with frontend:
        loop = asyncio.get_running_loop()
        start = loop.time()
        probe = OverheadProbe(
            frontend,
            Deployment("coded", 2, 1),
            preset("none"),
            cfg,
            np.array([start, start + 0.1]),
            start,
        )
        first = await frontend.infer(np.ones(2, np.float32))
        await asyncio.sleep(0.1 - (loop.time() - start))
        second = await frontend.infer(np.full(2, 2.0, np.float32))
    assert not first.reconstructed and second.reconstructed
    assert sum(role == "parity" for role, _, _ in backend.sent) == 1
    assert len(probe.samples["flush"]) == 1 and not probe.samples["encode"]
    assert probe.samples["flush"][0] < 15  # ms late; the stale opening gave ~100
    assert probe.samples["flush_at"][0] == pytest.approx(0.12, abs=0.015)


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


@pytest.mark.slow
async def test_cpu_comparison_interleaves_modes_over_the_same_slices(
    digits_bundle: Path,
) -> None:
    from learncc.bench.cpu import compare_cpu
    from learncc.serving.backend import LocalBackend
    from learncc.serving.frontend import Frontend

    submit, send = Frontend.submit, LocalBackend.send
    result = await compare_cpu(
        digits_bundle,
        ("equal", "coded"),
        rate_qps=100,
        slices=2,
        slice_s=0.3,
        m=2,
        service_ms=2,
        breakdown=True,
        progress=False,
    )
    equal, coded = result["modes"]["equal"], result["modes"]["coded"]
    assert equal["queries"] == coded["queries"] > 0  # the same traces
    assert len(equal["slices_us"]) == len(coded["slices_us"]) == 2
    assert equal["ratio"] == 1.0 and coded["cpu_us_per_query"] > 0
    assert coded["ratio"] == pytest.approx(
        coded["cpu_us_per_query"] / equal["cpu_us_per_query"]
    )
    # the breakdown counted what each mode did: equal sends every query once
    # and reads one result for it; coded adds at most one parity query and
    # result per group of k = 2 (none for a group answered before sealing)
    eq, co = equal["breakdown"], coded["breakdown"]
    assert eq["queries out"] == eq["results in"] == 1.0
    assert 1.0 < co["queries out"] <= 1.5 and 1.0 < co["results in"] <= 1.5
    assert eq["seal us"] == eq["flush timer us"] == 0.0 < co["seal us"]
    assert eq["accept us"] > eq["send us"] > 0 and eq["blocking waits"] > 0
    assert eq["rest us"] == pytest.approx(
        equal["cpu_us_per_query"] - eq["accept us"] - eq["results us"]
    )
    assert (Frontend.submit, LocalBackend.send) == (submit, send)  # unwrapped


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"modes": ("coded",)}, "two or more distinct modes"),
        ({"modes": ("coded", "coded")}, "two or more distinct modes"),
        ({"rate_qps": 0}, "rate_qps > 0"),
        ({"rate_qps": float("inf")}, "finite rate_qps > 0"),
        ({"service_ms": -1}, "service_ms must be a finite number >= 0"),
        ({"slices": 1}, "slices >= 2"),
        ({"slowdown": "nope"}, "nope"),
    ],
)
async def test_cpu_comparison_refuses_bad_settings_before_starting(
    kwargs: dict, message: str, tmp_path: Path
) -> None:
    from learncc.bench.cpu import compare_cpu
    from learncc.errors import LearnccError

    with pytest.raises(LearnccError, match=message):
        await compare_cpu(tmp_path / "no-bundle", **kwargs)


def test_sweep_plot_has_latency_and_answer_panels(tmp_path: Path) -> None:
    import matplotlib.image

    from learncc.bench.sweep import plot_sweep

    def mode(p50: float, reconstructed: int, top1: float | None) -> dict:
        return {"p50": p50, "p99": 3 * p50, "p999": 9 * p50, "n": 100,
                "reconstructed": reconstructed, "errors": 1, "top1": top1}  # fmt: skip

    result = {
        "param": "reconstruct_after_s",
        "rows": [
            {
                "value": v,
                "latency_ms": {"coded": mode(6, r, 0.97), "equal": mode(6, 0, None)},
            }
            for v, r in ((0.0, 19), (0.008, 4))
        ],
    }
    path = plot_sweep(result, tmp_path / "sweep.png", title="grace")
    height, width, _ = matplotlib.image.imread(path).shape
    assert (width, height) == (1540, 880)  # 2 x 3 panels at 14 x 8 in, 110 dpi


@pytest.mark.parametrize(
    "sweep, message",
    [
        (
            'param = "rate_qps"\nvalues = [100, "fast"]',
            "rate_qps = 'fast': rate_qps must",
        ),
        ('param = "rate_qps"\nvalues = 100', "values must be a list, got 100"),
        ('param = "background_procs"\nvalues = [1, "two"]', "must be an integer"),
        ('param = "slow_factor"\nvalues = [10, 0.5]', "slow_factor must be >= 1"),
        ('param = "k"\nvalues = [2, 3.5]\nbundles = "b/{k}"', "k must be an integer"),
        ('param = "k"\nvalues = [2]\nbundles = "b/{j}"', "naming no placeholder but"),
        ('param = "k"\nvalues = [2]\nbundles = "b"', "naming no placeholder but"),
        ('param = ["rate_qps"]\nvalues = [1]', "cannot sweep"),
        ('param = "policy"\nvalues = ["round-robin", "x"]', "unknown policy 'x'"),
        ('param = "seed"\nvalues = [0, -1]', "seed must be an integer"),
    ],
)
def test_every_sweep_value_is_checked_before_the_first_runs(
    sweep: str, message: str, tmp_path: Path
) -> None:
    # fresh-user test: a bad second value stopped the sweep after the first
    # point had run for 20 s, and its results were lost
    from learncc.bench.sweep import load_config

    path = tmp_path / "s.toml"
    path.write_text(f'bundle = "b"\n[bench]\nmodes = ["coded"]\n[sweep]\n{sweep}\n')
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_latency_tail_reaches_one_over_n_and_no_lower() -> None:
    from learncc.bench.plots import survival

    values, slower = survival(np.array([5.0, 1.0, 3.0, 3.0]))
    np.testing.assert_array_equal(values, [1.0, 3.0, 3.0, 5.0])
    np.testing.assert_array_equal(slower, [1.0, 0.75, 0.5, 0.25])


def test_sweep_points_are_deployable_before_the_first_runs(
    digits_bundle: Path, tmp_path: Path
) -> None:
    # fresh-user tests: an m below k failed at the second point, after the
    # first had run; a k sweep ran a k = 2 bundle for k = 3 and labelled it so
    from learncc.bench.sweep import check_points, load_config

    path = tmp_path / "s.toml"
    path.write_text(
        f'bundle = "{digits_bundle}"\n[bench]\nmodes = ["coded"]\n'
        "[sweep]\nparam = 'm'\nvalues = [4, 1]\n"
    )
    with pytest.raises(ConfigError, match="m = 1: m=1 data instances cannot hold"):
        check_points(load_config(path))
    (tmp_path / "k3").symlink_to(digits_bundle)
    path.write_text(
        '[bench]\nmodes = ["coded"]\n[sweep]\nparam = "k"\nvalues = [3, 4]\n'
        f'bundles = "{tmp_path}/k{{k}}"\n'
    )
    with pytest.raises(ConfigError, match="k = 3 point found a bundle for k = 2"):
        check_points(load_config(path))
    # a missing bundle is trained at its point: only its counts are checked
    (tmp_path / "k3").unlink()
    check_points(load_config(path))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--concurrency", "0"], "concurrency must be in 1..100000, got 0"),
        (["--duration", "nan"], "duration must be a finite number > 0"),
        (["--fail-every", "-1"], "fail_every must be 0 (off) or >= 2"),
        (["--modes", "bogus"], "unknown mode 'bogus'"),
        (["--m", "1", "--modes", "coded"], "m=1 data instances cannot hold"),
    ],
)
def test_throughput_refuses_bad_settings_with_a_message(
    args: list[str], message: str, digits_bundle: Path, capsys: pytest.CaptureFixture
) -> None:
    from learncc.bench.throughput import main

    with pytest.raises(SystemExit) as exited:  # --concurrency 0 used to hang
        main([str(digits_bundle), *args])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
