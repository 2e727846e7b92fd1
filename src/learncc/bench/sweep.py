"""Sweeps: one comparison per value of a parameter, from a TOML config.

A config names the bundle, the comparison's settings and what to sweep::

    bundle = "runs/demo/bundle"
    out = "runs/rate-sweep"
    [bench]                  # any BenchConfig field
    modes = ["coded", "equal"]
    duration_s = 20
    [sweep]
    param = "rate_qps"       # a BenchConfig field, a slowdown field, or "k"
    values = [100, 200, 300]

Sweeping ``k`` needs one bundle per k: ``[sweep] bundles = "runs/bundles/k{k}"``,
trained on the spot (with the ``[train]`` settings) where missing.
Slowdown fields (``slow_factor``, ``background_procs``, ...) are swept
through ``slowdown_overrides``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from learncc.bench.run import BenchConfig, check_modes, run_comparison, summary
from learncc.bundle import load_bundle
from learncc.errors import ConfigError, LearnccError
from learncc.serving.deploy import plan
from learncc.serving.slowdown import SlowdownConfig, preset

logger = logging.getLogger(__name__)

BENCH_FIELDS = {f.name for f in dataclasses.fields(BenchConfig)}
SLOWDOWN_FIELDS = {f.name for f in dataclasses.fields(SlowdownConfig)}


def load_config(path: Path) -> dict[str, Any]:
    """Read and check a sweep config.

    Raises:
        ConfigError: unreadable TOML, or unknown keys or parameters.
    """
    try:
        config = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read sweep config {path}: {e}") from None
    bench = config.get("bench", {})
    if not isinstance(bench, dict):
        raise ConfigError(f"{path}: [bench] must be a table, got {bench!r}")
    for key in ("bundle", "out"):
        if key in config and not isinstance(config[key], str):
            raise ConfigError(
                f"{path}: {key} must be a path string, got {config[key]!r}"
            )
    unknown = set(bench) - BENCH_FIELDS
    if unknown:
        raise ConfigError(
            f"unknown [bench] keys {sorted(unknown)}; known: {sorted(BENCH_FIELDS)}"
        )
    sweep = config.get("sweep")
    if not isinstance(sweep, dict) or "param" not in sweep or not sweep.get("values"):
        raise ConfigError(
            f"{path} needs a [sweep] table with 'param' and non-empty 'values'"
        )
    param = sweep["param"]
    sweepable = BENCH_FIELDS | SLOWDOWN_FIELDS | {"k"}
    if not isinstance(param, str) or param not in sweepable:
        raise ConfigError(
            f"cannot sweep {param!r}: not a bench or slowdown setting, nor 'k'"
        )
    if param == "k":
        bundles = sweep.get("bundles")
        try:
            if not isinstance(bundles, str) or bundles.format(k=2) == bundles:
                raise ValueError
        except (KeyError, IndexError, ValueError):
            raise ConfigError(
                "sweeping k needs [sweep] bundles = 'path/with/{k}', a path "
                f"naming no placeholder but {{k}}; got {bundles!r}"
            ) from None
    if param != "k" and "bundle" not in config:
        raise ConfigError(f"{path} needs a top-level 'bundle' path")
    values = sweep["values"]
    if not isinstance(values, list):
        raise ConfigError(f"{path}: [sweep] values must be a list, got {values!r}")
    # every point's settings are checked now: a bad third value once stopped
    # the sweep after the first two had run, and their results were lost
    try:
        _bench_for(config, "", None)
    except LearnccError as e:
        raise ConfigError(f"{path}: [bench]: {e}") from None
    for value in values:
        try:
            if param == "k" and (type(value) is not int or value < 2):
                raise ConfigError(f"k must be an integer >= 2, got {value!r}")
            bench = _bench_for(config, param, value)
            preset(bench.slowdown, **bench.slowdown_overrides)
        except LearnccError as e:
            raise ConfigError(f"{path}: [sweep] {param} = {value!r}: {e}") from None
    return config


def _bench_for(config: dict[str, Any], param: str, value: Any) -> BenchConfig:
    settings = dict(config.get("bench", {}))
    if isinstance(settings.get("modes"), list):
        settings["modes"] = tuple(settings["modes"])
    if param in BENCH_FIELDS:
        settings[param] = value
    elif param in SLOWDOWN_FIELDS:
        settings["slowdown_overrides"] = {
            **settings.get("slowdown_overrides", {}),
            param: value,
        }
    return BenchConfig(**settings)


def _bundle_path(config: dict[str, Any], k: int, base: Path) -> Path:
    return base / config["sweep"]["bundles"].format(k=k)


def _check_k(path: Path, k: int) -> Any:
    """The bundle at ``path``, refused unless its code has this k: a sweep
    once ran a k = 2 bundle for every k asked and labelled the rows k = 3
    and k = 4 (fresh-user test)."""
    bundle = load_bundle(path)
    if bundle.code.k != k:
        raise ConfigError(
            f"the sweep's k = {k} point found a bundle for k = {bundle.code.k} at "
            f"{path}; point [sweep] bundles at one bundle per k, or remove it "
            "to have it trained"
        )
    return bundle


def check_points(config: dict[str, Any], *, base: Path = Path(".")) -> None:
    """Refuse, before the first point runs, a point whose bundle or modes
    could not run (m below k, cheap without a backup model, a bundle for the
    wrong k): a sweep that stopped at its second point lost the first's
    results. Bundles a k sweep would train are checked by their counts.

    Raises:
        ConfigError, UnknownNameError, BundleError: naming the point.
    """
    param = config["sweep"]["param"]
    bundle = None if param == "k" else load_bundle(base / config["bundle"])
    for value in config["sweep"]["values"]:
        bench = _bench_for(config, param, value)
        try:
            path = _bundle_path(config, value, base) if param == "k" else None
            if path is None:
                check_modes(bundle, bench)
            elif (path / "manifest.json").exists():
                check_modes(_check_k(path, value), bench)
            else:
                for mode in bench.modes:
                    plan(mode, m=bench.m, k=value, r=1)
        except LearnccError as e:
            raise ConfigError(f"[sweep] {param} = {value!r}: {e}") from None


def _bundle_for(config: dict[str, Any], k: int, base: Path, progress: bool) -> Path:
    path = _bundle_path(config, k, base)
    if (path / "manifest.json").exists():
        return path  # its k was checked with every point's (check_points)
    from learncc.codes import CodeConfig
    from learncc.data import load_dataset
    from learncc.training import TrainConfig
    from learncc.training.pipeline import train_bundle

    train = config.get("train", {})
    logger.info("training the k=%d bundle for the sweep into %s", k, path)
    train_bundle(
        load_dataset(train.get("dataset", "mnist5k")),
        CodeConfig(k=k, r=1, encoder=train.get("encoder", "concat")),
        base_cfg=TrainConfig(epochs=int(train.get("epochs", 30))),
        parity_cfg=TrainConfig(epochs=int(train.get("parity_epochs", 40))),
        out=path,
        progress=progress,
    )
    return path


def run_sweep(
    config: dict[str, Any], *, base: Path = Path("."), progress: bool = True
) -> dict[str, Any]:
    """Run every value of the sweep; return ``{"param", "rows"}`` with one
    row ``{"value", "latency_ms": {mode: {...}}}`` per value."""
    param = config["sweep"]["param"]
    check_points(config, base=base)
    rows = []
    for value in config["sweep"]["values"]:
        logger.info("sweep %s = %s", param, value)
        if param == "k":
            bundle = _bundle_for(config, int(value), base, progress)
        else:
            bundle = base / config["bundle"]
        results = run_comparison(
            bundle, _bench_for(config, param, value), progress=progress
        )
        rows.append({"value": value, "latency_ms": summary(results)})
    return {"param": param, "rows": rows, "bench": config.get("bench", {})}


def _percent(part: float, whole: float) -> float | None:
    return 100 * part / whole if whole else None


def plot_sweep(result: dict[str, Any], path: Path, title: str = "") -> Path:
    """p50, p99 and p99.9 against the swept value, one line per mode; below
    them the share of answers reconstructed, the served top-1 (where the
    bench had labels) and the queries that ended in an error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    values = [row["value"] for row in rows]
    modes = list(rows[0]["latency_ms"]) if rows else []
    numeric = all(isinstance(v, (int, float)) for v in values)
    xs = values if numeric else list(range(len(values)))

    panels: list[tuple[str, str, Callable[[dict[str, Any]], float | None]]] = [
        ("p50", "p50 latency (ms)", lambda r: r["p50"]),
        ("p99", "p99 latency (ms)", lambda r: r["p99"]),
        ("p99.9", "p99.9 latency (ms)", lambda r: r["p999"]),
        (
            "reconstructed",
            "answers reconstructed (%)",
            lambda r: _percent(r["reconstructed"], r["n"]),
        ),
        (
            "served top-1",
            "served top-1 (%)",
            lambda r: None if r.get("top1") is None else 100 * r["top1"],
        ),
        (
            "errors",
            "queries ending in an error (%)",
            lambda r: _percent(r["errors"], r["n"] + r["errors"]),
        ),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(14, 8))
    for ax, (name, ylabel, get) in zip(axes.flat, panels, strict=True):
        for mode in modes:
            ys = [get(row["latency_ms"][mode]) for row in rows]
            if any(y is not None for y in ys):
                ax.plot(
                    xs, [math.nan if y is None else y for y in ys], "o-", label=mode
                )
        ax.set(xlabel=result["param"], ylabel=ylabel, title=name)
        if ylabel.endswith("(%)") and name != "served top-1":
            ax.set_ylim(bottom=0)  # all zero is a line on the axis, not at -0.04
        if not numeric:
            ax.set_xticks(xs, [str(v) for v in values])
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "not measured", ha="center", transform=ax.transAxes)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
