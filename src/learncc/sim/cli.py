"""``learncc simulate``: the simulator's command, registered by learncc.cli.

Settings come from, in rising precedence: ``SimConfig``'s defaults, the
``--config`` file, and the options given on the command line. ``--rate`` and
``--k`` take comma-separated lists, which sweep like a config's ``sweep``
table.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from learncc.errors import ConfigError


def _numbers(value: str, cast: type, option: str) -> list[Any]:
    try:
        values = [cast(v) for v in value.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise ConfigError(f"{option} takes numbers separated by commas, got {value!r}")
    return values


def simulate(
    config: Annotated[
        Path | None,
        typer.Option(help="TOML or JSON settings, with an optional [sweep] table."),
    ] = None,
    instances: Annotated[
        int | None,
        typer.Option(
            help="Data instances m of the coded deployment, any m >= k (a "
            "group's k queries go to distinct instances picked per query, so m "
            "need not be a multiple of k); "
            "other modes follow (equal: m + ceil(r m/k), replicate: 2m, ...)."
        ),
    ] = None,
    k: Annotated[
        str | None, typer.Option(help="Queries per coding group; a comma list sweeps.")
    ] = None,
    r: Annotated[
        int | None, typer.Option(help="Parity queries per coding group.")
    ] = None,
    rate: Annotated[
        str | None, typer.Option(help="Offered load, queries/s; a comma list sweeps.")
    ] = None,
    duration: Annotated[
        float | None, typer.Option(help="Simulated seconds of arrivals.")
    ] = None,
    warmup: Annotated[
        float | None, typer.Option(help="Seconds of arrivals not counted.")
    ] = None,
    modes: Annotated[
        str | None,
        typer.Option(help="Comma list: coded, equal, none, hedge, replicate, cheap."),
    ] = None,
    service: Annotated[
        str | None,
        typer.Option(
            help="Service model, e.g. deterministic:ms=5, exponential:mean_ms=5, "
            "lognormal:mean_ms=5,sigma=0.5, bimodal:fast_ms=5,slow_ms=50,slow_p=0.05, "
            "measured:path=FILE,mode=coded."
        ),
    ] = None,
    slowdown: Annotated[
        str | None,
        typer.Option(
            help="none, episodes, heavy, jitter, fail-one, crash-one (as bench; "
            "bench's network, cpu-load and colocated are not simulated)."
        ),
    ] = None,
    node_size: Annotated[
        int | None, typer.Option(help="Instances per node slowed together.")
    ] = None,
    max_batch: Annotated[
        int | None,
        typer.Option(help="Most queued queries an instance serves per batch."),
    ] = None,
    overhead_ms: Annotated[
        float | None,
        typer.Option(help="Constant added to every latency (frontend and transport)."),
    ] = None,
    overheads: Annotated[
        Path | None,
        typer.Option(
            help="JSON of the frontend's measured delays per mode "
            "({mode: ModeResult.overheads_ms}), replayed instead of --overhead-ms."
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of arrivals, slowdowns and service draws.")
    ] = None,
    out: Annotated[
        Path, typer.Option(help="Directory for results.json and plots.")
    ] = Path("runs/sim"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No info logs.")] = False,
) -> None:
    """Simulate coded serving and its baselines at any scale (SimPy),
    with the real bench's slowdown schedules; write results.json and plots."""
    from learncc.bench.plots import latency_cdf
    from learncc.cli import _setup_logging, _write_json, console, latency_table
    from learncc.outputs import check_writable
    from learncc.sim.engine import summary
    from learncc.sim.sweep import load_config, plot_sweep, run_sweep

    _setup_logging(quiet)
    started = time.perf_counter()
    settings, sweep = load_config(config) if config is not None else ({}, {})
    given = {
        "m": instances,
        "r": r,
        "duration_s": duration,
        "warmup_s": warmup,
        "modes": modes,
        "service": service,
        "slowdown": slowdown,
        "node_size": node_size,
        "max_batch": max_batch,
        "overhead_ms": overhead_ms,
        "overheads": overheads,
        "seed": seed,
    }
    settings.update({key: v for key, v in given.items() if v is not None})
    for option, key, cast, text in (
        ("--k", "k", int, k),
        ("--rate", "rate_qps", float, rate),
    ):
        if text is None:
            continue
        values = _numbers(text, cast, option)
        sweep.pop(key, None)
        if len(values) == 1:
            settings[key] = values[0]
        else:
            sweep[key] = values

    check_writable(out)
    runs = run_sweep(settings, sweep)
    for point, cfg, results in runs:
        where = ", ".join(f"{key}={v}" for key, v in point.items())
        console.print(
            latency_table(
                {mode: res.to_dict() for mode, res in results.items()},
                f"simulated latency (ms), m={cfg.m}, k={cfg.k}, {cfg.rate_qps:g} q/s, "
                f"slowdown {cfg.slowdown!r}" + (f" [{where}]" if where else ""),
            )
        )
        for mode, res in results.items():
            console.print(
                f"  {mode}: {res.instances} instances, "
                f"{100 * res.reconstructed_fraction:.2f}% reconstructed, "
                f"{res.by_copy} by a second copy, {res.backup_used} by backup, "
                f"simulated in {res.wall_s:.1f} s"
            )

    written = [out / "results.json"]
    if not sweep:
        _, cfg, results = runs[0]
        report: dict[str, Any] = {"latency_ms": summary(results), "sim": cfg.to_dict()}
        # quantiles keep the plot light at millions of queries
        grid = np.linspace(0, 1, 20_001)
        tails = {
            mode: np.quantile(res.latencies_ms, grid) if res.n else res.latencies_ms
            for mode, res in results.items()
        }
        title = f"simulated: m={cfg.m}, k={cfg.k}, {cfg.rate_qps:g} q/s, {cfg.slowdown}"
        written.append(latency_cdf(tails, out / "latency_cdf.png", title=title))
    else:
        report = {
            "runs": [
                {"point": point, "latency_ms": summary(results), "sim": cfg.to_dict()}
                for point, cfg, results in runs
            ],
            "sweep": sweep,
        }
        plots = {
            "rate_qps": ("latency_vs_load.png", "offered load (queries/s)"),
            "k": ("latency_vs_k.png", "k (queries per coding group)"),
        }
        for key, (name, label) in plots.items():
            if len(sweep.get(key, [])) > 1:
                written.append(plot_sweep(runs, key, out / name, xlabel=label))
    report["elapsed_s"] = time.perf_counter() - started
    _write_json(out / "results.json", report)
    console.print("wrote " + ", ".join(str(p) for p in written))
