"""The ``learncc`` command line: demo, train, eval, bench, serve.

The CLI is the only place that configures logging and prints. Every user
error (a ``LearnccError``) is printed as one line, ``error: ...``, with exit
status 2 and no traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from learncc.errors import ConfigError, LearnccError
from learncc.outputs import check_writable

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Learning-based coded computation: train, evaluate, serve and benchmark "
    "parity models.",
)
console = Console(stderr=False)
logger = logging.getLogger("learncc.cli")

Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bars or info logs.")
]
ReconstructAfterMs = Annotated[
    float,
    typer.Option(
        help="coded: hold a decodable group until its missing queries have "
        "been out this long before answering them reconstructed (0: at once, "
        "as ParM)."
    ),
]


def _serving_threads() -> None:
    # The frontend encodes one small group at a time; torch's thread pool
    # only adds overhead there and competes with the instances for cores.
    import torch

    torch.set_num_threads(1)


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def accuracy_table(metrics: dict[str, Any], title: str) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("top-1", justify="right")
    rows = [
        ("base F (all predictions available)", metrics["base_top1"]),
        ("degraded (reconstructed vs true label)", metrics["degraded_top1"]),
        ("reconstruction (vs F's prediction)", metrics["reconstruction_top1"]),
    ]
    rows += [
        (f"overall, {float(f):.0%} unavailable", v)
        for f, v in metrics["overall_top1_at_unavailability"].items()
    ]
    for name, value in rows:
        table.add_row(name, f"{100 * float(value):.2f}%")
    return table


LATENCY_COLUMNS = (
    "p50 ms",
    "p99 ms",
    "p99.9 ms",
    "n",
    "reconstructed",
    "errors",
    "served top-1",
)


def latency_cells(r: dict[str, Any]) -> list[str]:
    """One mode's ``LATENCY_COLUMNS`` from its ``ModeResult.to_dict()``."""
    top1 = "-" if r.get("top1") is None else f"{100 * r['top1']:.2f}%"
    return [
        f"{r['p50']:.2f}",
        f"{r['p99']:.2f}",
        f"{r['p999']:.2f}",
        str(r["n"]),
        str(r["reconstructed"]),
        str(r["errors"]),
        top1,
    ]


def latency_table(latency: dict[str, dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for col in ("mode", *LATENCY_COLUMNS):
        table.add_column(
            col, justify="left" if col == "mode" else "right", overflow="fold"
        )
    for mode, r in latency.items():
        table.add_row(mode, *latency_cells(r))
    return table


def accuracy_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "base_top1": metrics["base_top1"],
        "base_top5": metrics["base_top5"],
        "degraded_top1": metrics["degraded_top1"],
        "degraded_top5": metrics["degraded_top5"],
        "reconstruction_top1": metrics["reconstruction_top1"],
        "overall_top1_at_unavailability": {
            str(float(key.removeprefix("overall_top1_at_f"))): value
            for key, value in metrics.items()
            if key.startswith("overall_top1_at_f")
        },
    }


def _widths(value: str) -> tuple[int, ...] | None:
    if value.strip().lower() == "none":
        return None
    try:
        widths = tuple(int(v) for v in _csv(value))
    except ValueError:
        raise ConfigError(
            f"--backup-hidden takes comma-separated integers or 'none', got {value!r}"
        ) from None
    if not widths or min(widths) < 1:
        raise ConfigError(f"--backup-hidden needs positive widths, got {value!r}")
    return widths


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    )


@app.command()
def demo(
    out: Annotated[
        Path, typer.Option(help="Directory for results.json, the plot and the bundle.")
    ] = Path("runs/demo"),
    quick: Annotated[
        bool,
        typer.Option(help="Short training and load (under 90 s), for smoke checks."),
    ] = False,
    rate: Annotated[float, typer.Option(help="Offered load, queries/s.")] = 300.0,
    duration: Annotated[
        float | None, typer.Option(help="Seconds of load per mode.")
    ] = None,
    slowdown: Annotated[
        str, typer.Option(help="Slowdown condition (see `learncc bench --help`).")
    ] = "episodes",
    seed: int = 0,
    quiet: Quiet = False,
) -> None:
    """Train F and a k=2 parity model on real MNIST digits, evaluate degraded
    mode, then serve coded and equal-resources deployments under the same
    load and slowdowns, and report accuracy and tail latency."""
    from learncc.bench.plots import latency_cdf
    from learncc.bench.run import BenchConfig, run_comparison, summary
    from learncc.codes import CodeConfig
    from learncc.data import load_dataset
    from learncc.training import TrainConfig
    from learncc.training.pipeline import train_bundle

    _setup_logging(quiet)
    check_writable(out)
    started = time.perf_counter()
    duration = duration if duration is not None else (8.0 if quick else 30.0)
    bench_cfg = BenchConfig(
        modes=("coded", "equal"),
        rate_qps=rate,
        duration_s=duration,
        warmup_s=min(3.0, duration / 4),
        slowdown=slowdown,
        seed=seed,
    )
    data = load_dataset("mnist5k", seed=seed)
    console.print(
        f"[bold]1/3[/] training on mnist5k ({len(data.train)} train, "
        f"{len(data.val)} val, {len(data.test)} test real MNIST digits)"
    )
    bundle = train_bundle(
        data,
        CodeConfig(k=2, r=1, encoder="concat", decoder="subtraction"),
        base_cfg=TrainConfig(epochs=8 if quick else 60, seed=seed),
        parity_cfg=TrainConfig(epochs=8 if quick else 150, seed=seed),
        out=out / "bundle",
        progress=not quiet,
    )
    accuracy = accuracy_summary(bundle.manifest["metrics"])
    console.print(
        accuracy_table(
            accuracy, "degraded-mode accuracy (mnist5k test, MLP, k=2, concat)"
        )
    )

    console.print(
        f"[bold]2/3[/] serving: coded (4 data + 2 parity instances) vs equal "
        f"resources (6 data instances), {rate:g} queries/s for {duration:g} s each, "
        f"slowdown {slowdown!r}"
    )
    _serving_threads()
    results = run_comparison(out / "bundle", bench_cfg, progress=not quiet)
    latency = summary(results)
    console.print(latency_table(latency, "latency (ms), same arrivals and slowdowns"))

    plot = latency_cdf(
        {m: r.latencies_ms for m, r in results.items()},
        out / "latency_cdf.png",
        title=f"mnist5k MLP, k=2, {rate:g} q/s, slowdown {slowdown}",
    )
    report = {
        "accuracy": accuracy,
        "latency_ms": latency,
        "bench": bench_cfg.to_dict(),
        "bundle": str(out / "bundle"),
        "elapsed_s": time.perf_counter() - started,
    }
    _write_json(out / "results.json", report)
    console.print(
        f"[bold]3/3[/] wrote {out / 'results.json'}, {plot}; "
        f"bundle in {out / 'bundle'} "
        f"({report['elapsed_s']:.0f} s)"
    )


def _datasets_help() -> str:
    from learncc.data.base import dataset_names

    return (
        f"{', '.join(dataset_names())} (classification only: a regression set "
        "is refused)."
    )


# from the registry, so that the list cannot drift from what loads
_DATASETS_HELP = _datasets_help()


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="Bundle directory to write.")],
    dataset: Annotated[
        str,
        typer.Option(help=_DATASETS_HELP),
    ] = "mnist5k",
    data_dir: Annotated[
        Path | None, typer.Option(help="Where file-based datasets live.")
    ] = None,
    model: Annotated[
        str, typer.Option(help="mlp, lenet5, resnet18, or package.module:factory.")
    ] = "mlp",
    k: Annotated[int, typer.Option(help="Data queries per coding group.")] = 2,
    r: Annotated[int, typer.Option(help="Parity queries per coding group.")] = 1,
    encoder: str = "concat",
    decoder: str = "subtraction",
    parity_model: Annotated[
        str,
        typer.Option(
            help="copy (of F, ParM) or tile-sum (one MLP per tile, summed; "
            "concat/subtraction with an MLP F)."
        ),
    ] = "copy",
    epochs: Annotated[int, typer.Option(help="Base model epochs.")] = 60,
    parity_epochs: int = 150,
    batch_size: int = 64,
    lr: float = 3e-3,
    augment: bool = True,
    seed: int = 0,
    resume: Annotated[
        bool, typer.Option(help="Continue parity training from OUT/checkpoint.")
    ] = False,
    backup_hidden: Annotated[
        str,
        typer.Option(
            help="Hidden widths of the cheap baseline's backup MLP, e.g. 32 or "
            "64,32; 'none' to skip."
        ),
    ] = "32",
    quiet: Quiet = False,
) -> None:
    """Train F and its parity model(s); write a coded model bundle."""
    from learncc.codes import CodeConfig
    from learncc.data import load_dataset
    from learncc.training import TrainConfig
    from learncc.training.pipeline import train_bundle

    _setup_logging(quiet)
    if parity_model == "tile-sum" and model != "mlp":
        # train_bundle finds this only after training F; say it before
        raise ConfigError(
            "the tile-sum parity model starts from an MLP F (--model mlp), "
            f"got {model!r}"
        )
    check_writable(out)
    data = load_dataset(dataset, data_dir=data_dir, seed=seed)
    if data.num_classes < 1:
        raise ConfigError(
            f"{dataset} is a regression dataset; `learncc train` trains classifiers. "
            "Train a regression F with learncc.training.blackbox.train_blackbox_bundle"
        )
    code = CodeConfig(k=k, r=r, encoder=encoder, decoder=decoder)
    base_state = None
    if resume and not (out / "checkpoint" / "meta.json").exists():
        # say so: a user asking to resume expects the earlier epochs kept
        console.print(
            f"no checkpoint in {out / 'checkpoint'} to resume from; training "
            "from the start"
        )
    if resume and (out / "checkpoint" / "base.safetensors").exists():
        from safetensors.torch import load_file

        base_state = load_file(str(out / "checkpoint" / "base.safetensors"))
    cfg = dict(batch_size=batch_size, lr=lr, augment=augment, seed=seed)
    bundle = train_bundle(
        data,
        code,
        model=model,
        base_cfg=TrainConfig(epochs=epochs, **cfg),
        parity_cfg=TrainConfig(epochs=parity_epochs, **cfg),
        out=out,
        base_state=base_state,
        checkpoint_dir=out / "checkpoint",
        resume=resume,
        backup_hidden=_widths(backup_hidden),
        parity_model=parity_model,
        progress=not quiet,
    )
    console.print(
        accuracy_table(
            accuracy_summary(bundle.manifest["metrics"]),
            f"{dataset} test, {model}, k={k}, r={r}, {encoder}/{decoder}",
        )
    )
    console.print(f"bundle written to {out}")


@app.command("eval")
def evaluate(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory.")],
    data_dir: Path | None = None,
    rounds: int = 3,
    quiet: Quiet = False,
) -> None:
    """Re-evaluate a bundle's degraded-mode accuracy on its test split."""
    from learncc.bundle import load_bundle
    from learncc.data import load_dataset
    from learncc.training import evaluate_code

    _setup_logging(quiet)
    if rounds < 1:
        raise ConfigError(f"--rounds must be >= 1, got {rounds}")
    b = load_bundle(bundle)
    spec = b.manifest.get("data")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ConfigError(
            f"{bundle / 'manifest.json'} names no dataset to evaluate on "
            f"(data.name); got data = {spec!r}"
        )
    seed = spec.get("seed")
    # bool is an int subclass, but a manifest seed of true is a mistake
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(
            f"{bundle / 'manifest.json'}: data.seed must be an integer, got {seed!r}"
        )
    data = load_dataset(spec["name"], data_dir=data_dir, seed=seed)
    metrics = evaluate_code(
        b.base, b.parity, b.encoder, b.decoder, data.test, rounds=rounds
    )
    console.print(
        accuracy_table(accuracy_summary(metrics), f"{bundle} on {spec['name']} test")
    )
    console.print_json(json.dumps(accuracy_summary(metrics)))


@app.command()
def bench(
    ctx: typer.Context,
    bundle: Annotated[
        Path | None,
        typer.Argument(
            help="Bundle directory; with --config it replaces the config's bundle."
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option(help="Directory for results.json and the plots.")
    ] = Path("runs/bench"),
    config: Annotated[
        Path | None, typer.Option(help="A sweep config (TOML); see configs/.")
    ] = None,
    modes: Annotated[
        str,
        typer.Option(
            help="Comma-separated: coded, equal, none, hedge, replicate, cheap."
        ),
    ] = "coded,equal",
    rate: Annotated[float, typer.Option(help="Offered load, queries/s.")] = 300.0,
    duration: Annotated[float, typer.Option(help="Seconds of load per mode.")] = 30.0,
    warmup: Annotated[
        float,
        typer.Option(
            help="Seconds at the start of --duration whose queries are served "
            "but not counted."
        ),
    ] = 3.0,
    slowdown: Annotated[
        str,
        typer.Option(
            help="none, episodes, heavy, jitter, network, cpu-load, colocated, "
            "fail-one, crash-one."
        ),
    ] = "episodes",
    m: Annotated[
        int,
        typer.Option(
            help="Data instances of the coded deployment, any m >= k (a group's "
            "k queries go to distinct instances picked per query, so m need not "
            "be a multiple of k)."
        ),
    ] = 4,
    service_ms: Annotated[
        float,
        typer.Option(help="Least service time of one batch (emulates a larger model)."),
    ] = 5.0,
    per_item_ms: Annotated[
        float,
        typer.Option(help="Extra service time per query in a batch after the first."),
    ] = 0.0,
    max_batch: Annotated[
        int, typer.Option(help="Most queued queries an instance serves at once.")
    ] = 1,
    batch_size: Annotated[
        int,
        typer.Option(
            help="Queries the frontend sends to an instance as one batch (parity "
            "batches aligned, as in ParM)."
        ),
    ] = 1,
    policy: Annotated[
        str, typer.Option(help="round-robin, shortest-queue or shared-queue.")
    ] = "round-robin",
    reconstruct_after_ms: ReconstructAfterMs = 0.0,
    noop: Annotated[
        bool, typer.Option(help="Instances return zeros without running the model.")
    ] = False,
    seed: int = 0,
    quiet: Quiet = False,
    backend: Annotated[
        str, typer.Option(help="local (processes here) or ray (Ray actors).")
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster to join; default: start a local one."),
    ] = None,
) -> None:
    """Compare serving modes at equal resources on one arrival trace and
    slowdown schedule; with --config, run a sweep."""
    from learncc.bench.plots import latency_cdf
    from learncc.bench.run import BenchConfig, run_comparison, summary

    _setup_logging(quiet)
    given = _given_options(ctx)
    if config is not None:
        # a sweep takes its settings from the file; an option that did nothing
        # would pass for one that did (fresh-user test)
        ignored = [
            f for name, f in given.items() if name not in ("out", "quiet", "config")
        ]
        if ignored:
            raise ConfigError(
                f"with --config, set {', '.join(ignored)} in the config's [bench] "
                "table instead (only BUNDLE, --out and --quiet apply to a sweep)"
            )
        _bench_sweep(config, out if "out" in given else None, quiet, bundle)
        return
    if bundle is None:
        raise ConfigError("give a bundle directory, or a sweep with --config FILE")
    if not 0 <= reconstruct_after_ms < float("inf"):
        raise ConfigError(
            "--reconstruct-after-ms must be a finite number >= 0, got "
            f"{reconstruct_after_ms}"
        )
    if reconstruct_after_ms > 0 and "coded" not in _csv(modes):
        raise ConfigError("--reconstruct-after-ms applies to mode coded only")
    cfg = BenchConfig(
        modes=_csv(modes),
        rate_qps=rate,
        duration_s=duration,
        warmup_s=warmup,
        slowdown=slowdown,
        m=m,
        service_ms=service_ms,
        per_item_ms=per_item_ms,
        max_batch=max_batch,
        batch_size=batch_size,
        policy=policy,
        noop=noop,
        reconstruct_after_s=reconstruct_after_ms / 1000,
        seed=seed,
        backend=backend,
        ray_address=address,
    )
    check_writable(out)
    if cfg.warmup_s >= cfg.duration_s / 2 and not quiet:
        # fresh-user test: a 4 s run measured 1 s and nobody said so
        console.print(
            f"note: each mode's first {cfg.warmup_s:g} s is warm-up; only the last "
            f"{cfg.duration_s - cfg.warmup_s:g} s of its {cfg.duration_s:g} s count "
            "(--warmup)"
        )
    _serving_threads()
    results = run_comparison(bundle, cfg, progress=not quiet)
    latency = summary(results)
    console.print(
        latency_table(latency, f"latency (ms), {rate:g} q/s, slowdown {slowdown!r}")
    )
    latency_cdf(
        {k: v.latencies_ms for k, v in results.items()},
        out / "latency_cdf.png",
        title=f"{bundle.name}: {rate:g} q/s, slowdown {slowdown}",
    )
    _write_json(out / "results.json", {"latency_ms": latency, "bench": cfg.to_dict()})
    _write_json(
        out / "service_times.json", {k: v.service_ms for k, v in results.items()}
    )
    # the frontend delays measured per mode, for `learncc simulate --overheads`
    _write_json(out / "overheads.json", {k: v.overheads_ms for k, v in results.items()})
    console.print(
        f"wrote {out / 'results.json'}, {out / 'service_times.json'}, "
        f"{out / 'overheads.json'} and {out / 'latency_cdf.png'}"
    )


def _given_options(ctx: typer.Context) -> dict[str, str]:
    """The options set on the command line, name -> flag."""
    # by name: typer bundles its own click, whose classes are not click's
    return {
        p.name: p.opts[0]
        for p in ctx.command.params
        if p.name
        and p.param_type_name == "option"
        and getattr(ctx.get_parameter_source(p.name), "name", "") == "COMMANDLINE"
    }


def _bench_sweep(
    config_path: Path, out: Path | None, quiet: bool, bundle: Path | None
) -> None:
    from learncc.bench.sweep import load_config, plot_sweep, run_sweep
    from learncc.bundle import load_bundle

    config = load_config(config_path)
    if bundle is not None:
        if config["sweep"]["param"] == "k":
            raise ConfigError(
                f"{config_path} sweeps k, which needs one bundle per k "
                "([sweep] bundles); drop the BUNDLE argument"
            )
        load_bundle(bundle)  # a bad BUNDLE fails now, not after a first run
        console.print(
            f"using bundle {bundle} in place of {config_path.name}'s bundle "
            f"{config.get('bundle')!r}"
        )
        config["bundle"] = str(bundle.resolve())
    _serving_threads()
    # --out wins, so that the same sweep on another bundle does not overwrite
    # the config's results
    out = out if out is not None else Path(config.get("out", "runs/bench"))
    check_writable(out, "the sweep's out")
    result = run_sweep(config, progress=not quiet)
    param = result["param"]
    table = Table(title=f"sweep of {param} ({config_path.name})")
    for col in (param, "mode", *LATENCY_COLUMNS):
        # fold, not cut: "reconstruct_after_s" and "reconstructed" both cut
        # to "reconstr…" at 80 columns (fresh-user test)
        table.add_column(col, justify="right", overflow="fold")
    for row in result["rows"]:
        for mode, r in row["latency_ms"].items():
            table.add_row(str(row["value"]), mode, *latency_cells(r))
    console.print(table)
    _write_json(out / "results.json", result)
    plot = plot_sweep(
        result, out / "sweep.png", title=f"{config_path.stem}: latency vs {param}"
    )
    console.print(f"wrote {out / 'results.json'} and {plot}")


@app.command()
def serve(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory.")],
    host: Annotated[
        str,
        typer.Option(help="Bind address; only this machine can connect by default."),
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(help="TCP port, 0..65535 (0: any free one).")
    ] = 8000,
    mode: Annotated[
        str,
        typer.Option(
            help="coded, equal, none, hedge, replicate or cheap (see `learncc "
            "bench`; cheap needs a bundle with a backup model)."
        ),
    ] = "coded",
    m: Annotated[int, typer.Option(help="Data instances.")] = 4,
    service_ms: Annotated[
        float, typer.Option(help="Least service time of one query (emulation).")
    ] = 0.0,
    query_timeout: Annotated[
        float, typer.Option(help="Seconds before an unanswered query fails (504).")
    ] = 10.0,
    quiet: Quiet = False,
    backend: Annotated[
        str, typer.Option(help="local (processes here) or ray (Ray actors).")
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster to join; default: start a local one."),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            help="Model name in /v2/models/{name}; default: the bundle "
            "directory's name."
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="LEARNCC_TOKEN",
            show_default=False,
            help="Bearer token required on every route but /v2/health/live.",
        ),
    ] = None,
    max_pending: Annotated[
        int,
        typer.Option(
            help="Most unanswered queries; beyond it requests get 503 + Retry-After."
        ),
    ] = 10_000,
    max_body_bytes: Annotated[
        int, typer.Option(help="Largest request body; larger ones get 413.")
    ] = 8 << 20,
    deadline_ms: Annotated[
        float | None,
        typer.Option(help="Deadline of queries whose request names none (timeout_ms)."),
    ] = None,
    default_answer: Annotated[
        str,
        typer.Option(
            help="At a deadline: none (504), zeros, or fill (F of the bundle's "
            "fill query)."
        ),
    ] = "none",
    drain_timeout: Annotated[
        float, typer.Option(help="Seconds SIGINT/SIGTERM waits for requests in flight.")
    ] = 10.0,
    max_abs_input: Annotated[
        float,
        typer.Option(
            help="Inputs with a value beyond +-this get 400 (huge inputs overflow "
            "F's outputs); inf for no bound."
        ),
    ] = 1e6,
    body_timeout: Annotated[
        float,
        typer.Option(help="Seconds a request body may take to arrive; then 408."),
    ] = 30.0,
    reconstruct_after_ms: ReconstructAfterMs = 0.0,
) -> None:
    """Serve a bundle over HTTP: the Open Inference Protocol v2 (/v2/...), plain
    JSON (POST /infer) and Prometheus metrics (/metrics)."""
    import numpy as np

    from learncc.bundle import load_bundle
    from learncc.serving.deploy import deployment
    from learncc.serving.http import HttpServer, serve_http
    from learncc.serving.http.server import check_bindable

    _setup_logging(quiet)
    # every option is checked before the bundle loads and instances start
    # (which takes tens of seconds), so a typo fails at once
    _check_serve_options(
        mode=mode,
        m=m,
        backend=backend,
        port=port,
        name=name,
        token=token,
        service_ms=service_ms,
        query_timeout=query_timeout,
        max_pending=max_pending,
        max_body_bytes=max_body_bytes,
        deadline_ms=deadline_ms,
        default_answer=default_answer,
        drain_timeout=drain_timeout,
        max_abs_input=max_abs_input,
        body_timeout=body_timeout,
        reconstruct_after_ms=reconstruct_after_ms,
    )
    check_bindable(host, port)
    loaded = load_bundle(bundle)
    fill = loaded.fill_output.numpy().astype(np.float32)
    answers = {"none": None, "zeros": np.zeros_like(fill), "fill": fill}
    frontend, shape = deployment(
        loaded,
        mode,
        m=m,
        service_ms=service_ms,
        query_timeout_s=query_timeout,
        max_pending=max_pending,
        default_output=answers[default_answer],
        reconstruct_after_s=reconstruct_after_ms / 1000,
        backend=backend,
        ray_address=address,
    )
    info = {
        "mode": mode,
        "data_instances": shape.data_instances,
        "parity_instances": shape.parity_instances,
        "bundle": str(bundle),
    }
    if token is None and host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning(
            "serving on %s without a token: anyone who can reach it can "
            "use it (set --token or LEARNCC_TOKEN)",
            host,
        )
    model_name = name or bundle.resolve().name
    _check_model_name(model_name, "the bundle directory's name; pass --name")
    counts = f"{shape.data_instances} data + {shape.parity_instances} parity"
    if shape.backup_instances:
        counts += f" + {shape.backup_instances} backup"
    # one unwrapped line each: scripts wait for "serving ... on URL"
    console.print(
        f"starting {counts} instances ({mode}) for {bundle}",
        soft_wrap=True,
        markup=False,
    )

    def on_ready(server: HttpServer) -> None:
        # only now: the socket is bound and the instances are up
        console.print(
            f"serving {bundle} as {model_name!r} on {server.url}",
            soft_wrap=True,
            markup=False,
        )

    try:
        asyncio.run(
            serve_http(
                frontend,
                host=host,
                port=port,
                info=info,
                model_name=model_name,
                output_shape=loaded.output_shape,
                token=token,
                max_body_bytes=max_body_bytes,
                default_deadline_s=deadline_ms / 1000
                if deadline_ms is not None
                else None,
                drain_timeout_s=drain_timeout,
                max_abs_input=max_abs_input,
                body_timeout_s=body_timeout,
                on_ready=on_ready,
            )
        )
    except KeyboardInterrupt:
        pass
    except OSError as e:
        raise ConfigError(f"cannot serve on {host}:{port}: {e}") from None


def _check_model_name(name: str, source: str) -> None:
    if not name or "/" in name:
        raise ConfigError(
            f"the model name must be non-empty and without '/', got {name!r} ({source})"
        )


def _check_serve_options(
    *,
    mode: str,
    m: int,
    backend: str,
    port: int,
    name: str | None,
    token: str | None,
    service_ms: float,
    query_timeout: float,
    max_pending: int,
    max_body_bytes: int,
    deadline_ms: float | None,
    default_answer: str,
    drain_timeout: float,
    max_abs_input: float,
    body_timeout: float,
    reconstruct_after_ms: float,
) -> None:
    """Check `learncc serve`'s options; the messages name the flags.

    Raises:
        ConfigError: the first option out of range.
        UnknownNameError: an unknown mode or backend.
    """
    import math

    from learncc.errors import UnknownNameError
    from learncc.serving.deploy import BACKENDS, MODES

    if mode not in MODES:
        raise UnknownNameError("mode", mode, list(MODES))
    if backend not in BACKENDS:
        raise UnknownNameError("backend", backend, list(BACKENDS))
    if m < 1:
        raise ConfigError(f"--m must be >= 1 data instance, got {m}")
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be in 0..65535 (0: any free port), got {port}")
    if name is not None:
        _check_model_name(name, "--name")
    if token is not None and not token:
        raise ConfigError(
            "--token (or LEARNCC_TOKEN) is empty; give a secret, or leave it out "
            "to serve without authentication"
        )
    finite = {
        "--service-ms": (service_ms, 0.0, True),
        "--query-timeout": (query_timeout, 0.0, False),
        "--drain-timeout": (drain_timeout, 0.0, True),
        "--reconstruct-after-ms": (reconstruct_after_ms, 0.0, True),
    }
    for flag, (value, low, inclusive) in finite.items():
        ok = value >= low if inclusive else value > low
        if not (math.isfinite(value) and ok):
            relation = ">=" if inclusive else ">"
            raise ConfigError(
                f"{flag} must be a finite number {relation} {low:g}, got {value}"
            )
    if reconstruct_after_ms > 0 and mode != "coded":
        raise ConfigError(
            f"--reconstruct-after-ms applies to --mode coded only, not {mode}"
        )
    if max_pending < 1:
        raise ConfigError(f"--max-pending must be >= 1, got {max_pending}")
    if max_body_bytes < 1024:
        raise ConfigError(f"--max-body-bytes must be >= 1024, got {max_body_bytes}")
    if deadline_ms is not None and not (math.isfinite(deadline_ms) and deadline_ms > 0):
        raise ConfigError(
            f"--deadline-ms must be a finite number > 0, got {deadline_ms}"
        )
    defaults = ("none", "zeros", "fill")
    if default_answer not in defaults:
        raise ConfigError(
            f"--default-answer must be one of {', '.join(defaults)}, "
            f"got {default_answer!r}"
        )
    if not max_abs_input > 0:
        raise ConfigError(f"--max-abs-input must be > 0 (or inf), got {max_abs_input}")
    if not body_timeout > 0:
        raise ConfigError(f"--body-timeout must be > 0 (or inf), got {body_timeout}")


from learncc.sim.cli import simulate  # noqa: E402

app.command()(simulate)


@app.command("codes-table")
def codes_table(
    out: Annotated[
        Path, typer.Option(help="Directory for results.json, timing.json and the plot.")
    ] = Path("runs/codes"),
    quick: Annotated[
        bool,
        typer.Option(
            help="Smoke run: k in {2,3}, 1-3 epochs (about two minutes on a "
            "loaded 2-core CPU)."
        ),
    ] = False,
    codes: Annotated[
        str | None, typer.Option(help="Only these codes, e.g. berrut,concat-tiled.")
    ] = None,
    k: Annotated[str | None, typer.Option(help="Only these k, e.g. 2,3,4.")] = None,
    r: Annotated[str | None, typer.Option(help="Only these r, e.g. 1.")] = None,
    datasets: Annotated[
        str | None, typer.Option(help="Only these datasets: mnist5k, digits.")
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(help="Code epochs for every dataset (F keeps its own)."),
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Train and evaluate every applicable code for k in {2,3,4,5,10} and r in
    {1,2} on mnist5k and digits; print the table, write results.json and a
    plot of degraded top-1 against k."""
    from learncc.bench.codes_table import (
        CODES,
        ROW_KEYS,
        plot_degraded_vs_k,
        run_codes_table,
        table_config,
        time_codes,
    )

    _setup_logging(True)  # per-row lines below are the progress report
    cfg = table_config(
        quick=quick, codes=codes, k=k, r=r, datasets=datasets, epochs=epochs
    )
    started = time.perf_counter()
    console.print(
        f"codes: {', '.join(cfg.codes)}; k in {list(cfg.k_values)}, r in "
        f"{list(cfg.r_values)}; F epochs {cfg.base_epochs}, code epochs "
        f"{cfg.code_epochs} (cut to fit a 2-core CPU; ParM trains parity "
        f"models 150-200 epochs, so trained codes are under-trained here)"
    )
    factors = {
        c.name: f"{c.epochs_factor:g}" + (" x k/2" if c.epochs_grow_with_k else "")
        for c in CODES
        if c.name in cfg.codes and (c.epochs_factor != 1.0 or c.epochs_grow_with_k)
    }
    if factors:
        console.print(f"codes with a share of the code epochs: {factors}")

    def on_stage(msg: str) -> None:
        if not quiet:
            console.print(
                f"[bold]{msg}[/] ({time.perf_counter() - started:.0f} s elapsed)"
            )

    def on_row(done: int, total: int, row: dict[str, Any]) -> None:
        if not quiet:
            console.print(
                f"  [{done}/{total}] {row['dataset']} {row['code']} k={row['k']} "
                f"r={row['r']}: degraded {100 * row['degraded_top1']:.1f}% "
                f"(train {row['train_s']:.1f} s)"
            )

    check_writable(out)
    rows = run_codes_table(cfg, on_row=on_row, on_stage=on_stage)
    table = Table(title="codes: degraded-mode accuracy (test split, MLP F)")
    for key in ROW_KEYS:
        # fold, not cut: "available_..." and "degraded_t..." at 80 columns
        table.add_column(
            key,
            justify="left" if key in ("code", "dataset") else "right",
            overflow="fold",
        )
    for row in rows:
        table.add_row(
            row["code"],
            row["dataset"],
            str(row["k"]),
            str(row["r"]),
            *(f"{100 * row[key]:.2f}%" for key in ROW_KEYS[4:7]),
            f"{row['train_s']:.1f}",
        )
    console.print(table)
    _write_json(out / "results.json", rows)
    plot = plot_degraded_vs_k(rows, out / "degraded_vs_k.png")
    timing = time_codes(k=2, r=1, number=200 if quick else 2000)
    _write_json(out / "timing.json", timing)
    for name, t in timing.items():
        console.print(
            f"timing k=2 r=1 {name}: encode {t['encode_us']:.1f} us + decode "
            f"{t['decode_us']:.1f} us per group = {t['overhead_pct']:.1f}% of F "
            f"({t['f_us']:.1f} us, batch 1)"
        )
    console.print(
        f"wrote {out / 'results.json'}, {out / 'timing.json'}, {plot} "
        f"({time.perf_counter() - started:.0f} s in all)"
    )


def main() -> None:
    try:
        app()
    except LearnccError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        # 128 + SIGINT, as a shell reports a process ended by Ctrl-C
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except SystemExit as e:
        # typer turns Ctrl-C into a silent exit 130; nothing else here exits 130
        if e.code == 130:
            print("interrupted", file=sys.stderr)
        raise


if __name__ == "__main__":
    main()
