"""Simulation settings from a config file, sweeps, and their plots.

A config file (TOML or JSON) holds ``SimConfig`` fields at the top level and,
optionally, a ``sweep`` table whose values are lists; the simulator runs
every combination (cartesian product) of the swept values::

    modes = ["coded", "equal", "hedge"]
    m = 1000
    duration_s = 60
    service = "deterministic:ms=5"     # or a table: {name = "lognormal", ...}

    [sweep]
    rate_qps = [50000, 100000, 150000]
    k = [2, 4, 10]
"""

from __future__ import annotations

import itertools
import json
import logging
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from learncc.errors import ConfigError  # noqa: E402
from learncc.sim.engine import SimConfig, SimResult, simulate  # noqa: E402
from learncc.sim.service import (  # noqa: E402
    Overheads,
    ServiceModel,
    load_overheads,
    parse_service,
)

logger = logging.getLogger(__name__)

FIELDS = tuple(f.name for f in fields(SimConfig))


def load_config(path: str | Path) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """Read a config file into (settings, sweep).

    Raises:
        ConfigError: the file is unreadable, not TOML/JSON by its suffix, or
            names a setting ``SimConfig`` does not have.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read simulator config {path}: {e}") from None
    try:
        if path.suffix == ".toml":
            raw = tomllib.loads(text)
        elif path.suffix == ".json":
            raw = json.loads(text)
        else:
            raise ConfigError(f"config {path} must end in .toml or .json")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot parse {path}: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a table of settings")
    sweep = raw.pop("sweep", {})
    if not isinstance(sweep, dict):
        raise ConfigError("the config's sweep must be a table of lists")
    check_keys(raw)
    check_keys(sweep)
    bad = [
        key
        for key, values in sweep.items()
        if not isinstance(values, list) or not values
    ]
    if bad:
        raise ConfigError(f"sweep values must be non-empty lists; not so for {bad}")
    return raw, sweep


def check_keys(settings: dict[str, Any]) -> None:
    unknown = sorted(set(settings) - set(FIELDS))
    if unknown:
        raise ConfigError(
            f"unknown simulator settings {unknown}; known: {', '.join(FIELDS)}"
        )


def make_config(settings: dict[str, Any]) -> SimConfig:
    """A ``SimConfig`` from plain settings (strings, lists and tables allowed).

    Raises:
        ConfigError: a setting is unknown or out of range.
    """
    check_keys(settings)
    values = dict(settings)
    if "modes" in values:
        modes = values["modes"]
        values["modes"] = tuple(
            m.strip()
            for m in (modes.split(",") if isinstance(modes, str) else modes)
            if m.strip()
        )
    if "service" in values and not isinstance(values["service"], ServiceModel):
        values["service"] = parse_service(values["service"])
    overheads = values.get("overheads")
    if isinstance(overheads, str | Path):
        values["overheads"] = load_overheads(overheads)
    elif isinstance(overheads, dict):
        values["overheads"] = {
            mode: o if isinstance(o, Overheads) else Overheads.from_samples(o)
            for mode, o in overheads.items()
        }
    if "slowdown_overrides" in values:
        overrides = dict(values["slowdown_overrides"])
        if "fail_instances" in overrides:
            overrides["fail_instances"] = tuple(overrides["fail_instances"])
        values["slowdown_overrides"] = overrides
    try:
        return SimConfig(**values)
    except TypeError as e:
        raise ConfigError(f"bad simulator settings: {e}") from None


def expand(sweep: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the swept values, in a stable order."""
    keys = list(sweep)
    return [
        dict(zip(keys, combo, strict=True))
        for combo in itertools.product(*sweep.values())
    ]


def run_sweep(
    settings: dict[str, Any], sweep: dict[str, list[Any]]
) -> list[tuple[dict[str, Any], SimConfig, dict[str, SimResult]]]:
    """Simulate every point of ``sweep`` on top of ``settings``.

    Returns:
        ``(point, config, results)`` per combination; ``point`` holds the
        swept values.

    Raises:
        ConfigError: a combination is invalid (e.g. m < k for coded).
    """
    runs = []
    points = expand(sweep) if sweep else [{}]
    for n, point in enumerate(points, 1):
        cfg = make_config({**settings, **point})
        logger.info("sweep point %d/%d: %s", n, len(points), point or "(single run)")
        runs.append((point, cfg, simulate(cfg)))
    return runs


def plot_sweep(
    runs: list[tuple[dict[str, Any], SimConfig, dict[str, SimResult]]],
    x: str,
    path: Path,
    *,
    xlabel: str,
) -> Path:
    """p99 and p99.9 latency against swept setting ``x``, one line per mode
    (and per value of each other swept setting)."""
    lines: dict[str, list[tuple[float, SimResult]]] = {}
    for point, _, results in runs:
        others = ", ".join(f"{k}={v}" for k, v in point.items() if k != x)
        for mode, result in results.items():
            label = f"{mode} ({others})" if others else mode
            lines.setdefault(label, []).append((float(point[x]), result))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, stat, name in ((axes[0], "p99", "p99"), (axes[1], "p999", "p99.9")):
        for label, points in lines.items():
            points.sort(key=lambda p: p[0])
            ax.plot(
                [p[0] for p in points],
                [getattr(r, stat) for _, r in points],
                marker="o",
                label=label,
            )
        ax.set(xlabel=xlabel, ylabel=f"{name} latency (ms)", yscale="log", title=name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
