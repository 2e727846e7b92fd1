"""The simulator (learncc.sim): dispatch policy, exact toy runs, queueing
theory, service models, the CLI, and a comparison with the real backend."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from learncc.cli import app
from learncc.errors import BackendUnavailableError, ConfigError, UnknownNameError
from learncc.serving.deploy import MODES, plan
from learncc.serving.policy import least_loaded, pick_instance
from learncc.serving.slowdown import instance_schedule, preset
from learncc.sim import (
    Bimodal,
    Deterministic,
    Exponential,
    LogNormal,
    SimConfig,
    from_bench,
    load_measured,
    parse_service,
    simulate,
    simulate_mode,
)
from learncc.sim.engine import _Engine, _LeastLoaded
from learncc.sim.service import Overheads

HANG_DATA_0 = {"slowdown": "fail-one", "slowdown_overrides": {"fail_at_s": 0.0}}


def run(mode: str, arrivals_s: Any, **changes: Any) -> Any:
    """One mode on explicit arrivals: m=2, k=2, 5 ms per batch, no slowdown."""
    base: dict[str, Any] = dict(
        modes=(mode,),
        m=2,
        k=2,
        rate_qps=100,
        duration_s=1.0,
        warmup_s=0.0,
        service=Deterministic(5.0),
        slowdown="none",
        flush_timeout_s=1.0,
    )
    base.update(changes)
    return simulate_mode(SimConfig(**base), mode, arrivals_s=np.asarray(arrivals_s))


# -- the dispatch policy shared with the frontend ------------------------------


def frontend_pick(
    n: int, start: int, alive: list[bool], avoid: set[int], among: range | None
) -> int:
    """The frontend's original _pick, written out as the reference. (It wrote
    ``among or range(n)``, which reads an empty ``among`` as all instances;
    the frontend never passes one, as it has >= r parity instances.)"""
    candidates = [i for i in (among if among is not None else range(n)) if alive[i]]
    if not candidates:
        raise BackendUnavailableError("none")
    ordered = sorted(candidates, key=lambda i: (i - start) % n)
    return next((i for i in ordered if i not in avoid), ordered[0])


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_pick_instance_matches_the_frontend_round_robin(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 12))
    start = data.draw(st.integers(0, n - 1))
    alive = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    avoid = data.draw(st.sets(st.integers(0, n - 1), max_size=n))
    r = data.draw(st.integers(1, 3))
    among = data.draw(
        st.sampled_from([None, range(data.draw(st.integers(0, r - 1)), n, r)])
    )
    try:
        expected = frontend_pick(n, start, alive, avoid, among)
    except BackendUnavailableError:
        with pytest.raises(BackendUnavailableError, match="no live parity instance"):
            pick_instance(n, start, alive.__getitem__, avoid, among, role="parity")
        return
    assert pick_instance(n, start, alive.__getitem__, avoid, among) == expected


def test_pick_instance_skips_group_members_then_falls_back() -> None:
    alive = [True, True, True, True]
    assert pick_instance(4, 1, alive.__getitem__, {1, 2}) == 3
    assert pick_instance(4, 3, alive.__getitem__, {3, 0}) == 1
    # every live instance already holds a member: share the first in order
    assert pick_instance(4, 2, [False, True, False, True].__getitem__, {1, 3}) == 3


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_parity_placement_index_picks_as_least_loaded(data: st.DataObject) -> None:
    # the simulator's O(log n) index against the frontend's scan, through
    # sends, completions and deaths
    n = data.draw(st.integers(1, 9))
    r = data.draw(st.integers(1, min(3, n)))
    depth = [0] * n
    index = [_LeastLoaded(range(j, n, r), depth) for j in range(r)]
    alive = [True] * n
    for _ in range(data.draw(st.integers(1, 40))):
        j = data.draw(st.integers(0, r - 1))
        start = data.draw(st.integers(0, n - 1))
        live = [i for i in range(j, n, r) if alive[i]]
        if not live:
            with pytest.raises(BackendUnavailableError):
                index[j].pick(start)
            continue
        # the frontend reads the depth the index keeps, so compare on it
        expected = least_loaded(live, depth.__getitem__, start, n)
        assert index[j].pick(start) == expected
        action = data.draw(st.sampled_from(["send", "done", "die"]))
        if action == "send":
            index[j].move(expected, 1)
        elif action == "done":
            busy = [i for i in live if depth[i] > 0]
            if busy:
                i = data.draw(st.sampled_from(busy))
                index[j].move(i, -data.draw(st.integers(1, depth[i])))
        else:
            alive[expected] = False
            index[j].remove(expected)


# -- deployments ---------------------------------------------------------------


def test_plan_sizes_the_baselines_at_their_resources() -> None:
    sizes = {mode: plan(mode, m=8, k=4, r=1) for mode in MODES}
    got = {
        m: (d.data_instances, d.parity_instances, d.backup_instances, d.instances)
        for m, d in sizes.items()
    }
    assert got == {
        "none": (8, 0, 0, 8),
        "equal": (10, 0, 0, 10),
        "coded": (8, 2, 0, 10),
        "hedge": (10, 0, 0, 10),
        "replicate": (16, 0, 0, 16),
        "cheap": (8, 0, 2, 10),
    }
    assert plan("none", m=1, k=2, r=1).instances == 1  # uncoded needs no m >= k
    with pytest.raises(
        ConfigError, match="m=1 data instances cannot hold a coding group of k=2"
    ):
        plan("coded", m=1, k=2, r=1)


# -- exact toy runs ------------------------------------------------------------


def test_fifo_queue_with_deterministic_service() -> None:
    result = run("none", [0.0, 0.001, 0.002], m=1)
    np.testing.assert_allclose(result.latencies_ms, [5.0, 9.0, 13.0])
    assert (result.n, result.errors, result.instances) == (3, 0, 1)


def overheads(**ms: list[float]) -> Overheads:
    return Overheads.from_samples(ms)


def test_measured_frontend_delays_add_where_they_happen() -> None:
    # 1 ms to dispatch, 0.5 ms for the outputs to come back, 0.25 ms to answer
    delays = overheads(dispatch=[1.0], result=[0.5], answer=[0.25])
    result = run("none", [0.0, 0.010], m=1, overheads={"none": delays})
    np.testing.assert_allclose(result.latencies_ms, [6.75, 6.75])
    # the instance is free when its batch ends, not when the frontend hears:
    # the second query, 1 ms after the first, waits 4 ms, not 4.5 ms
    queued = run("none", [0.0, 0.001], m=1, overheads={"none": delays})
    np.testing.assert_allclose(queued.latencies_ms, [6.75, 10.75])


def test_delays_measured_with_their_times_replay_at_those_times() -> None:
    # a stall of the real frontend from 50 ms to 200 ms: outputs coming back
    # in it wait 10 ms, those before it 0.5 ms (as measured then); after the
    # last measurement (200 ms) the record replays from its start
    stall = overheads(result=[0.5, 10.0, 0.5], result_at=[0.0, 0.05, 0.2])
    arrivals = [0.0, 0.02, 0.1, 0.2, 0.25]
    result = run("none", arrivals, m=1, overheads={"none": stall})
    np.testing.assert_allclose(result.latencies_ms, [5.5, 5.5, 15.0, 5.5, 15.0])


def test_encoding_delays_the_parity_and_so_the_rebuild() -> None:
    # as test_coded_rebuilds_every_query_of_a_hung_instance, with 1 ms from
    # sealing group 0 (at 1 ms) to its parity send: q0 is rebuilt at 7 ms
    slow = {"coded": overheads(encode=[1.0])}
    result = run("coded", np.arange(2) * 0.001, overheads=slow, **HANG_DATA_0)
    np.testing.assert_allclose(result.latencies_ms, [7, 5])
    assert result.reconstructed == 1


def test_late_flush_timer_delays_a_partial_group() -> None:
    # as test_partial_group_is_flushed_with_a_fill_query, the timer 2 ms late
    late = {"coded": overheads(flush=[2.0])}
    result = run(
        "coded", np.arange(2) * 0.010, flush_timeout_s=0.005, overheads=late,
        **HANG_DATA_0,
    )  # fmt: skip
    np.testing.assert_allclose(result.latencies_ms, [12, 5])


def test_overheads_are_summarised_per_mode_and_checked() -> None:
    cfg = SimConfig(overheads={"coded": overheads(dispatch=[1.0, 3.0])})
    summary = cfg.to_dict()["overheads"]["coded"]
    assert summary["dispatch_ms"]["samples"] == 2
    assert summary["result_ms"] == {"samples": 0}
    with pytest.raises(ConfigError, match=r"unknown modes \['fast'\]"):
        SimConfig(overheads={"fast": overheads()})


def test_coded_rebuilds_every_query_of_a_hung_instance() -> None:
    # As tests/test_serving.py does for real: round robin puts the first member
    # of every group on data/0, which hangs; each is rebuilt once its group's
    # parity and other member are back. Worked out by hand: q0 waits for q1 and
    # the parity (both done at 6 ms); q3 and group 1's parity queue behind them.
    result = run("coded", np.arange(8) * 0.001, **HANG_DATA_0)
    np.testing.assert_allclose(result.latencies_ms, [6, 5, 9, 8, 12, 11, 15, 14])
    assert (result.reconstructed, result.errors, result.instances) == (4, 0, 3)


def test_partial_group_is_flushed_with_a_fill_query() -> None:
    # Arrivals 10 ms apart, flush after 5 ms: every group holds one query. On
    # the hung instance it is rebuilt from fill + parity (sent at 5 ms, back at
    # 10 ms); on data/1 it is answered at 5 ms and its group sends no parity.
    result = run("coded", np.arange(6) * 0.010, flush_timeout_s=0.005, **HANG_DATA_0)
    np.testing.assert_allclose(result.latencies_ms, [10, 5, 10, 5, 10, 5])
    assert result.reconstructed == 3


def test_crashed_instance_queries_are_dispatched_again() -> None:
    result = run(
        "coded",
        np.arange(8) * 0.001,
        slowdown="crash-one",
        slowdown_overrides={"fail_at_s": 0.0},
    )
    # q0 is lost with data/0 and sent to data/1; q1 then shares data/1 but is
    # rebuilt at 6 ms from q0 and the parity; later queries all queue on data/1.
    np.testing.assert_allclose(result.latencies_ms[:4], [5, 5, 13, 12])
    assert (result.redispatched, result.errors, result.reconstructed) == (1, 0, 4)


def test_uncoded_queries_on_a_hung_instance_time_out() -> None:
    result = run("equal", np.arange(8) * 0.001, query_timeout_s=0.5, **HANG_DATA_0)
    assert (result.instances, result.errors, result.n) == (3, 3, 5)  # q0, q3, q6
    np.testing.assert_allclose(result.latencies_ms, [5, 5, 7, 7, 9])


def test_replicate_sends_every_query_twice_and_survives_a_hang() -> None:
    result = run("replicate", np.arange(8) * 0.001, **HANG_DATA_0)
    assert (result.instances, result.duplicates, result.errors) == (4, 8, 0)
    np.testing.assert_allclose(result.latencies_ms, [5, 5, 8, 8, 11, 11, 14, 14])
    # each query takes the next two instances round robin, so q0, q2, q4, q6
    # sit on the hung data/0 and are answered by their second copies
    assert (result.by_copy, result.reconstructed) == (4, 0)


def test_cheap_backup_answers_for_a_hung_instance() -> None:
    # one backup instance at 1/(2k) = 1/4 of the 5 ms service; before any
    # median is known a backup answer is used as soon as it comes first
    result = run("cheap", np.arange(8) * 0.001, **HANG_DATA_0)
    assert (result.instances, result.backup_instances, result.errors) == (3, 1, 0)
    # backup answers are counted as such, never as reconstructed (as the bench)
    assert (result.backup_used, result.reconstructed, result.by_copy) == (8, 0, 0)
    np.testing.assert_allclose(result.latencies_ms, 1.25 + 0.25 * np.arange(8))


def test_hedging_sends_copies_after_the_running_p95_and_cuts_the_tail() -> None:
    # 1% of batches take 10x; with more than 5% of queries slowed (slow batches
    # plus those queued behind them) the p95 itself is slow and hedges come late
    service = Bimodal(4.0, 40.0, 0.01)
    cfg = SimConfig(
        modes=("equal", "hedge"),
        m=8,
        k=2,
        rate_qps=800,
        duration_s=20,
        warmup_s=2,
        service=service,
        slowdown="none",
    )
    results = simulate(cfg)
    hedge, equal = results["hedge"], results["equal"]
    assert hedge.instances == equal.instances == 12
    # about 5% of queries outlive the p95, a few more when hedges queue
    assert 0.03 < hedge.duplicates / hedge.n < 0.10
    assert hedge.p99 < 0.6 * equal.p99
    assert hedge.errors == 0
    # hedge answers are counted as what they are: the real frontend (and so
    # learncc bench) reports reconstructed 0 for hedge; copies sent bound wins
    assert hedge.reconstructed == 0 and 0 < hedge.by_copy <= hedge.duplicates


def test_coding_cuts_the_tail_under_slow_episodes() -> None:
    cfg = SimConfig(
        modes=("coded", "equal"),
        m=8,
        k=2,
        rate_qps=800,
        duration_s=20,
        warmup_s=2,
        slowdown="episodes",
    )
    results = simulate(cfg)
    coded, equal = results["coded"], results["equal"]
    assert coded.instances == equal.instances == 12
    assert coded.p50 == pytest.approx(5.0, abs=0.01) and equal.p50 == pytest.approx(
        5.0, abs=0.01
    )
    assert coded.p99 < 0.5 * equal.p99
    assert 0 < coded.reconstructed_fraction < 0.3
    # the same arrivals were offered to both
    assert coded.n == equal.n


def test_reconstruct_after_trades_rebuilt_answers_for_tail_latency() -> None:
    cfg = SimConfig(modes=("coded",), m=4, rate_qps=300, duration_s=20, warmup_s=2)
    asap = simulate(cfg)["coded"]
    held = simulate(dataclasses.replace(cfg, reconstruct_after_s=0.02))["coded"]
    assert held.n == asap.n and held.errors == asap.errors == 0
    # with deterministic 5 ms service, asap rebuilds stragglers only, at
    # about 10 ms (partner and parity in turn); held, those 1-3% wait until
    # 20 ms, and a few originals make it back in that time
    assert 0 < held.reconstructed < asap.reconstructed
    assert asap.p99 == pytest.approx(10.0, abs=0.1)
    assert held.p99 == pytest.approx(20.0, abs=0.1)
    assert held.p50 == pytest.approx(asap.p50, abs=0.01)
    assert held.p999 >= asap.p999
    with pytest.raises(ConfigError, match="reconstruct_after_s"):
        SimConfig(modes=("coded",), reconstruct_after_s=-1.0)


def test_simulation_is_reproducible_and_seeded() -> None:
    cfg = SimConfig(modes=("coded",), m=4, rate_qps=300, duration_s=5, warmup_s=1)
    a, b = simulate(cfg)["coded"], simulate(cfg)["coded"]
    np.testing.assert_array_equal(a.latencies_ms, b.latencies_ms)
    other = simulate(
        SimConfig(modes=("coded",), m=4, rate_qps=300, duration_s=5, warmup_s=1, seed=1)
    )["coded"]
    assert a.n != other.n


# -- slowdown schedules are the bench's ------------------------------------------


def test_instances_get_the_bench_schedules_and_nodes_share_them() -> None:
    cfg = SimConfig(modes=("coded",), m=4, k=2, duration_s=10, warmup_s=1, seed=3)
    engine = _Engine(cfg, "coded", np.array([0.0]), False)
    slowdown = preset("episodes")
    numbered = engine.instances["data"] + engine.instances["parity"]
    assert [inst.g for inst in numbered] == list(range(6))
    for g, inst in enumerate(numbered):
        episodes = instance_schedule(slowdown, g, 70, 3)["episodes"]
        assert list(zip(inst.starts, inst.ends, strict=True)) == episodes

    paired = _Engine(
        SimConfig(**{**cfg.__dict__, "node_size": 2}), "coded", np.array([0.0]), False
    )
    data = paired.instances["data"]
    assert data[0].starts == data[1].starts and data[2].starts == data[3].starts
    assert data[0].starts != data[2].starts


# -- against queueing theory ---------------------------------------------------


@pytest.mark.parametrize(("rho", "duration_s", "seed"), [(0.5, 200, 0), (0.7, 300, 2)])
def test_mm1_waiting_time_matches_closed_forms(
    rho: float, duration_s: float, seed: int
) -> None:
    mu, lam = 1000.0, rho * 1000.0  # per second: 1 ms mean service
    cfg = SimConfig(
        modes=("none",),
        m=1,
        rate_qps=lam,
        duration_s=duration_s,
        warmup_s=10,
        service=Exponential(1.0),
        slowdown="none",
        seed=seed,
    )
    result = simulate_mode(cfg, "none", record_waits=True)
    waits = result.waits_ms
    assert waits is not None and len(waits) == result.n
    # W_q: mean rho / (mu - lambda); P(W_q > t) = rho exp(-(mu - lambda) t)
    mean_ms = rho / (mu - lam) * 1000
    p99_ms = math.log(100 * rho) / (mu - lam) * 1000
    assert np.mean(waits) == pytest.approx(mean_ms, rel=0.05)
    assert np.percentile(waits, 99) == pytest.approx(p99_ms, rel=0.05)
    assert np.mean(waits > 0) == pytest.approx(rho, rel=0.05)
    # response time T ~ Exp(mu - lambda), read from the HDR histogram
    assert result.p99 == pytest.approx(math.log(100) / (mu - lam) * 1000, rel=0.05)


# -- service models ------------------------------------------------------------


def test_parse_service_models() -> None:
    assert parse_service("5") == Deterministic(5.0)
    assert parse_service("deterministic:ms=2.5") == Deterministic(2.5)
    assert parse_service("exponential:mean_ms=4") == Exponential(4.0)
    assert parse_service("lognormal:mean_ms=5,sigma=0.25") == LogNormal(5.0, 0.25)
    assert parse_service({"name": "bimodal", "fast_ms": 1, "slow_ms": 9}) == Bimodal(
        1.0, 9.0
    )
    with pytest.raises(UnknownNameError, match="unknown service model 'gamma'"):
        parse_service("gamma:k=2")
    with pytest.raises(ConfigError, match="'lognormal' needs parameter mean_ms"):
        parse_service("lognormal:sigma=1")
    with pytest.raises(ConfigError, match=r"'exponential' does not take \['sigma'\]"):
        parse_service("exponential:mean_ms=1,sigma=2")
    with pytest.raises(ConfigError, match="service mean_ms must be > 0"):
        parse_service("exponential:mean_ms=0")


def test_lognormal_and_bimodal_means() -> None:
    rng = np.random.default_rng(0)
    assert LogNormal(5.0, 0.5).draw_ms(rng, "data", 0, 200_000).mean() == pytest.approx(
        5, rel=0.01
    )
    draws = Bimodal(1.0, 11.0, 0.1).draw_ms(rng, "data", 0, 200_000)
    assert set(np.unique(draws)) == {1.0, 11.0}
    assert draws.mean() == pytest.approx(
        Bimodal(1.0, 11.0, 0.1).expected_ms(), rel=0.02
    )


def write_service_times(path: Path) -> Path:
    # the shape `learncc bench` writes: mode -> "role/index" -> per-batch ms
    path.write_text(
        json.dumps(
            {
                "coded": {"data/0": [2.0, 2.0], "data/1": [4.0], "parity/0": [3.0]},
                "equal": {"data/0": [7.0]},
            }
        )
    )
    return path


def test_measured_service_times_replay_per_instance(tmp_path: Path) -> None:
    measured = load_measured(
        write_service_times(tmp_path / "service_times.json"), "coded"
    )
    # far-apart arrivals: no queueing, so latency is the replayed sample;
    # round robin alternates data/0 (2 ms) and data/1 (4 ms); a third
    # simulated instance would replay data/0 again (index % 2)
    result = run("none", np.arange(6) * 0.1, service=measured)
    np.testing.assert_allclose(result.latencies_ms, [2, 4, 2, 4, 2, 4])
    pooled = parse_service(
        f"measured:path={tmp_path / 'service_times.json'},mode=coded,pooled=true"
    )
    result = run("none", np.arange(200) * 0.1, service=pooled, duration_s=30)
    assert set(np.unique(result.latencies_ms.round(6))) == {2.0, 4.0}
    with pytest.raises(ConfigError, match="has no mode 'hedge'"):
        load_measured(tmp_path / "service_times.json", "hedge")


# -- configuration and the bench -------------------------------------------------


def test_from_bench_copies_the_real_run_settings() -> None:
    from learncc.bench.run import BenchConfig

    bench = BenchConfig(
        modes=("coded", "equal"),
        rate_qps=200,
        duration_s=5,
        warmup_s=1,
        slowdown="episodes",
        m=4,
        service_ms=5,
        seed=7,
    )
    cfg = from_bench(bench, k=2, r=1, overhead_ms=0.5)
    assert (cfg.modes, cfg.m, cfg.k, cfg.rate_qps, cfg.duration_s, cfg.warmup_s) == (
        ("coded", "equal"),
        4,
        2,
        200,
        5,
        1,
    )
    assert (cfg.service, cfg.slowdown, cfg.seed, cfg.overhead_ms) == (
        Deterministic(5.0),
        "episodes",
        7,
        0.5,
    )


def test_config_errors_name_the_parameter() -> None:
    with pytest.raises(ConfigError, match="unknown modes"):
        SimConfig(modes=("coded", "magic"))
    with pytest.raises(ConfigError, match=r"warmup_s \(5\) must be in"):
        SimConfig(duration_s=5, warmup_s=5)
    with pytest.raises(UnknownNameError, match="unknown slowdown 'sometimes'"):
        SimConfig(slowdown="sometimes")
    with pytest.raises(ConfigError, match="hedge_percentile must be in"):
        SimConfig(hedge_percentile=100)
    # fresh-user tests: a traceback, terabytes asked of NumPy, no progress,
    # and results lost at the end of the run
    with pytest.raises(ConfigError, match="a code needs k >= 2 and r >= 1, got k=0"):
        SimConfig(k=0)
    with pytest.raises(ConfigError, match="at most 100,000,000"):
        SimConfig(rate_qps=1e12, duration_s=5, warmup_s=1)
    with pytest.raises(ConfigError, match="the simulator takes at most 100,000"):
        SimConfig(m=10**8)
    with pytest.raises(ConfigError, match="seed must be an integer"):
        SimConfig(seed=10**23)


# -- the command line ------------------------------------------------------------


def test_cli_single_run_writes_bench_shaped_results(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    res = CliRunner().invoke(
        app,
        [
            "simulate",
            "--instances",
            "4",
            "--k",
            "2",
            "--rate",
            "300",
            "--duration",
            "4",
            "--warmup",
            "1",
            "--modes",
            "coded,equal,hedge",
            "--service",
            "exponential:mean_ms=5",
            "--out",
            str(out),
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    report = json.loads((out / "results.json").read_text())
    assert set(report["latency_ms"]) == {"coded", "equal", "hedge"}
    coded = report["latency_ms"]["coded"]
    for key in (
        "p50",
        "p99",
        "p999",
        "n",
        "reconstructed",
        "reconstructed_fraction",
        "instances",
        "by_copy",
        "backup_used",
    ):
        assert key in coded
    # bench's results.json counts only decoded answers as reconstructed
    assert report["latency_ms"]["hedge"]["reconstructed"] == 0
    assert coded["instances"] == 6 and report["sim"]["service"] == {
        "name": "exponential",
        "mean_ms": 5.0,
    }
    assert (out / "latency_cdf.png").stat().st_size > 0


def test_cli_sweeps_from_a_toml_config(tmp_path: Path) -> None:
    config = tmp_path / "sweep.toml"
    config.write_text(
        'modes = ["coded", "equal"]\nm = 8\nduration_s = 3\nwarmup_s = 0.5\n'
        'service = {name = "deterministic", ms = 5}\n'
        "[sweep]\nrate_qps = [200, 600]\nk = [2, 4]\n"
    )
    out = tmp_path / "sim"
    res = CliRunner().invoke(
        app, ["simulate", "--config", str(config), "--out", str(out), "-q"]
    )
    assert res.exit_code == 0, res.output
    report = json.loads((out / "results.json").read_text())
    points = [run["point"] for run in report["runs"]]
    assert points == [
        {"rate_qps": 200, "k": 2},
        {"rate_qps": 200, "k": 4},
        {"rate_qps": 600, "k": 2},
        {"rate_qps": 600, "k": 4},
    ]
    assert [run["latency_ms"]["coded"]["instances"] for run in report["runs"]] == [
        12,
        10,
        12,
        10,
    ]
    assert (out / "latency_vs_load.png").exists() and (
        out / "latency_vs_k.png"
    ).exists()


def test_cli_reports_a_bad_config_without_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("rate = 5\n")
    res = CliRunner().invoke(app, ["simulate", "--config", str(config)])
    assert res.exit_code != 0
    assert isinstance(res.exception, ConfigError)
    assert "unknown simulator settings ['rate']" in str(res.exception)


# -- against the real local backend --------------------------------------------


@pytest.mark.slow
def test_simulator_matches_a_real_comparison(digits_bundle: Path) -> None:
    """5 s per mode at 200 q/s on 4 + 2 real instances under slow episodes.

    Nothing is fitted: the bench measures the frontend's own delays as it
    runs (``learncc.bench.run.OverheadProbe``: dispatch lag, result
    transport, encoding, flush-timer lateness, answering) and each mode's
    service times, and the simulator replays them, at the times they were
    measured, so a loaded machine stretches both sides alike. Bounds are
    looser than the 15% of issue 7 because a 5 s run has ~800 counted
    queries, so its p99 is the 8th slowest; docs/benchmarks.md has the full
    20 s comparison (coded p99 within 6%, equal within 10%, at load 4-6).
    On a machine loaded past its cores (load 11 to 16 on 2 cores) the real
    coded frontend fell seconds behind and no model of ours followed it.
    With one fitted constant instead (the real equal median minus 5 ms) the
    simulator rebuilt a quarter as many coded queries as the real frontend
    (193 against 798 in 20 s) and missed coded's p99 by half.
    """
    from learncc.bench.run import BenchConfig, run_comparison

    bench = BenchConfig(
        modes=("coded", "equal"),
        rate_qps=200,
        duration_s=5,
        warmup_s=1,
        slowdown="episodes",
        m=4,
        service_ms=5,
        seed=0,
    )
    real = run_comparison(digits_bundle, bench, progress=False)
    for mode in bench.modes:
        measured = real[mode].overheads_ms
        assert measured["dispatch"] and measured["result"] and measured["answer"]
    sim = simulate(from_bench(bench, k=2, r=1, measured=real))
    for mode in bench.modes:
        assert sim[mode].n + sim[mode].errors == real[mode].n + real[mode].errors
        assert sim[mode].p50 == pytest.approx(real[mode].p50, rel=0.15), mode
    assert sim["equal"].p99 == pytest.approx(real["equal"].p99, rel=0.25)
    assert sim["coded"].p99 == pytest.approx(real["coded"].p99, rel=0.3)
    # the frontend's delays decide how often the parity beats an original; in
    # a 5 s run that count moves by 2x between runs of the real system (77
    # against 155 rebuilt in one CI run), so only its scale is checked
    rebuilt_real, rebuilt_sim = real["coded"].reconstructed, sim["coded"].reconstructed
    assert 0.4 * rebuilt_real <= rebuilt_sim <= 2.5 * rebuilt_real


def test_cli_replays_measured_overheads_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "overheads.json"
    path.write_text(json.dumps({"none": {"dispatch": [2.0], "answer": [1.0]}}))
    out = tmp_path / "sim"
    args = ["simulate", "--instances", "2", "--rate", "20", "--duration", "4"]
    args += ["--modes", "none", "--slowdown", "none", "--out", str(out), "-q"]
    res = CliRunner().invoke(app, [*args, "--overheads", str(path)])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "results.json").read_text())
    # 5 ms of service plus 3 ms measured, at 20 q/s on 2 instances no queueing
    assert report["latency_ms"]["none"]["p50"] == pytest.approx(8.0, abs=0.01)
    assert report["sim"]["overheads"]["none"]["dispatch_ms"]["samples"] == 1
