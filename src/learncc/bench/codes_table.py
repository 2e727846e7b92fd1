"""The codes table: every applicable code, k and r on mnist5k and digits.

``run_codes_table`` trains one base model F per dataset, then trains (where
needed) and evaluates each code on it with ``evaluate_code``: degraded
accuracy over every pattern of up to r erased data slots, three random
groupings of the test split. Training budgets are cut to fit a 2-core CPU in
under 30 minutes (``TableConfig.default``), far below the 150-200 epochs a
ParM parity model needs to reach its best (mnist5k k=2 concat: 96.2% after
150-200 epochs); numbers from this table are therefore lower bounds for the
trained codes, not for the training-free Berrut code. ``concat-tiled`` is
the exception: its parity model learns from every tile and converges within
its budget (mnist5k k = 10: 86-87% after 40-60 epochs at lr 0.03, and after
120 at lr 0.01).

The codes (``CODES``):

- ``berrut``: rational interpolation, F itself as parity model, no training.
- ``linear``: the MDS linear code with r parity models initialised from F
  and trained on ``parity-mse`` (ParM's addition code for r = 1).
- ``concat``: ParM's image concatenation with a parity model (r = 1).
- ``learned-mlp``: MLP encoder and MLP decoder trained through frozen F.
- ``learned-conv``: dilated-convolution encoder and MLP decoder, frozen F.
- ``concat-joint``: concatenation encoder, parity model and MLP decoder
  trained jointly on ``decode-kl`` (r = 1).
- ``concat-tiled``: concatenation and subtraction with a ``tile-sum`` parity
  model (``learncc.models.tiled``): one MLP shared by the k tiles of the
  parity query, started as F on the upsampled tile and trained on
  ``tile-mse``; its outputs are summed. Not F's architecture: it costs k
  runs of the tile MLP, 1.0-2.0x F's multiply-adds for k = 2-10 on mnist5k,
  and it needs an MLP F to start from.
"""

from __future__ import annotations

import logging
import time
import timeit
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from learncc.bundle import build_from_spec, model_spec
from learncc.codes import CodeConfig, make_code
from learncc.data import Dataset, load_dataset
from learncc.errors import ConfigError
from learncc.training import TrainConfig, evaluate_code, train_classifier, train_parity
from learncc.training.pipeline import tile_sum_parity

logger = logging.getLogger(__name__)

ROW_KEYS = (
    "code",
    "dataset",
    "k",
    "r",
    "available_top1",
    "degraded_top1",
    "reconstruction_top1",
    "train_s",
)


@dataclass(frozen=True)
class CodeSpec:
    """One row family of the table.

    Args:
        parity: ``"F"`` (F itself, frozen, as every parity model),
            ``"trained"`` (copies of F, trained with the code) or ``"tiled"``
            (a ``tile-sum`` parity model started from F, see
            ``learncc.models.tiled``; F must be an MLP).
        loss: training loss, or None for a training-free code.
        epochs_factor: share of the table's code epochs this code gets (the
            conv encoder costs about ten times an MLP epoch on 28x28 images).
        epochs_grow_with_k: multiply the epochs by k / 2. An epoch has
            n / k coding groups, so at k = 10 it is a fifth of k = 2's
            optimizer steps; a code that trains on every tile (about the
            same cost per epoch at any k) needs the extra epochs there.
        lr: peak learning rate, if not ``TrainConfig``'s default.
    """

    name: str
    encoder: str
    decoder: str
    parity: str
    loss: str | None
    r_values: tuple[int, ...] = (1, 2)
    images_only: bool = False
    epochs_factor: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)
    epochs_grow_with_k: bool = False
    lr: float | None = None

    def epochs(self, code_epochs: int, k: int) -> int:
        """Training epochs at k, given the table's code epochs for a dataset."""
        epochs = code_epochs * self.epochs_factor
        if self.epochs_grow_with_k:
            epochs *= k / 2
        return max(1, round(epochs))


CODES: tuple[CodeSpec, ...] = (
    CodeSpec("berrut", "berrut", "berrut", "F", None),
    CodeSpec("linear", "linear", "linear", "trained", "parity-mse"),
    CodeSpec("concat", "concat", "subtraction", "trained", "parity-mse", (1,), True),
    CodeSpec("learned-mlp", "mlp", "mlp", "F", "decode-kl"),
    CodeSpec(
        "learned-conv",
        "conv",
        "mlp",
        "F",
        "decode-kl",
        images_only=True,
        epochs_factor=0.3,
        options={"encoder_channels": 8},
    ),
    CodeSpec("concat-joint", "concat", "mlp", "trained", "decode-kl", (1,), True),
    # 12 epochs at k = 2 up to 60 at k = 10 on mnist5k (15 code epochs). At
    # k = 10, lr 0.03 for 40 epochs reached 86% degraded top-1, as did 120
    # epochs at lr 0.01; 40 epochs at lr 0.003 reached 80%.
    CodeSpec(
        "concat-tiled",
        "concat",
        "subtraction",
        "tiled",
        "tile-mse",
        (1,),
        True,
        epochs_factor=0.8,
        epochs_grow_with_k=True,
        lr=0.03,
    ),
)


@dataclass(frozen=True)
class TableConfig:
    """What the table covers and how long each part trains."""

    datasets: tuple[str, ...] = ("mnist5k", "digits")
    k_values: tuple[int, ...] = (2, 3, 4, 5, 10)
    r_values: tuple[int, ...] = (1, 2)
    codes: tuple[str, ...] = tuple(c.name for c in CODES)
    base_epochs: dict[str, int] = field(
        default_factory=lambda: {"mnist5k": 30, "digits": 60}
    )
    code_epochs: dict[str, int] = field(
        default_factory=lambda: {"mnist5k": 15, "digits": 30}
    )
    rounds: int = 3
    seed: int = 0

    @classmethod
    def quick(cls) -> TableConfig:
        """A CI smoke run: k in {2, 3}, one or two epochs, one grouping."""
        return cls(
            k_values=(2, 3),
            base_epochs={"mnist5k": 2, "digits": 3},
            code_epochs={"mnist5k": 1, "digits": 1},
            rounds=1,
        )

    def __post_init__(self) -> None:
        known = {c.name for c in CODES}
        if unknown := [c for c in self.codes if c not in known]:
            raise ConfigError(f"unknown codes {unknown}; choose from {sorted(known)}")
        budgets = set(self.base_epochs) & set(self.code_epochs)
        if unknown := [d for d in self.datasets if d not in budgets]:
            raise ConfigError(
                f"datasets {unknown} have no epoch budget in the codes table; "
                f"choose from {sorted(budgets)}"
            )
        if bad := [k for k in self.k_values if k < 2]:
            raise ConfigError(f"k must be >= 2, got {bad}")
        if bad := [r for r in self.r_values if r < 1]:
            raise ConfigError(f"r must be >= 1, got {bad}")


def table_config(
    *,
    quick: bool = False,
    codes: str | None = None,
    k: str | None = None,
    r: str | None = None,
    datasets: str | None = None,
    epochs: int | None = None,
) -> TableConfig:
    """The table's config from command-line strings (comma-separated lists).

    Starts from ``TableConfig.quick()`` or the default and replaces what is
    given; ``epochs`` sets the code epochs of every dataset (F keeps its own).

    Raises:
        ConfigError: an unknown code or dataset, a k or r that is not an
            integer of at least 2 or 1, or epochs < 1.
    """
    cfg = TableConfig.quick() if quick else TableConfig()
    changes: dict[str, Any] = {}
    if codes is not None:
        changes["codes"] = _names(codes, "codes")
    if datasets is not None:
        changes["datasets"] = _names(datasets, "datasets")
    if k is not None:
        changes["k_values"] = _ints(k, "k")
    if r is not None:
        changes["r_values"] = _ints(r, "r")
    if epochs is not None:
        if epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {epochs}")
        changes["code_epochs"] = dict.fromkeys(cfg.code_epochs, epochs)
    return replace(cfg, **changes)


def _names(text: str, what: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise ConfigError(f"{what} must name at least one, got {text!r}")
    return names


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in _names(text, what))
    except ValueError:
        raise ConfigError(
            f"{what} must be comma-separated integers, got {text!r}"
        ) from None


def applicable(spec: CodeSpec, data: Dataset, k: int, r: int) -> bool:
    """Whether ``spec`` supports this k, r and input shape (``make_code`` would
    raise ``ConfigError`` otherwise)."""
    if r not in spec.r_values or (spec.images_only and len(data.input_shape) != 3):
        return False
    try:
        make_code(_code_config(spec, k, r, data), data.input_shape)
    except ConfigError:
        return False
    return True


def _code_config(spec: CodeSpec, k: int, r: int, data: Dataset) -> CodeConfig:
    options = dict(spec.options)
    if spec.decoder == "mlp":
        options["decoder_outputs"] = data.num_classes
    return CodeConfig(
        k=k, r=r, encoder=spec.encoder, decoder=spec.decoder, options=options
    )


def run_code(
    spec: CodeSpec,
    data: Dataset,
    base: nn.Module,
    base_spec: dict[str, Any],
    k: int,
    r: int,
    cfg: TableConfig,
) -> dict[str, Any]:
    """Train (if needed) and evaluate one code; return one table row."""
    encoder, decoder = make_code(_code_config(spec, k, r, data), data.input_shape)
    if spec.parity == "F":
        parity: list[nn.Module] = [base] * r
    elif spec.parity == "tiled":
        parity = [tile_sum_parity(base, base_spec, k)[0] for _ in range(r)]
    else:
        # start parity models from F: they must compute something close to F
        parity = [build_from_spec(base_spec) for _ in range(r)]
        for model in parity:
            model.load_state_dict(base.state_dict())
    started = time.perf_counter()
    if spec.loss is not None:
        epochs = spec.epochs(cfg.code_epochs[data.name], k)
        train_parity(
            base,
            encoder,
            decoder,
            parity,
            data,
            TrainConfig(
                epochs=epochs,
                seed=cfg.seed,
                lr=TrainConfig.lr if spec.lr is None else spec.lr,
            ),
            loss=spec.loss,
            progress=False,
        )
    train_s = time.perf_counter() - started
    metrics = evaluate_code(
        base, parity, encoder, decoder, data.test, rounds=cfg.rounds, seed=cfg.seed
    )
    return {
        "code": spec.name,
        "dataset": data.name,
        "k": k,
        "r": r,
        "available_top1": metrics["available_top1"],
        "degraded_top1": metrics["degraded_top1"],
        "reconstruction_top1": metrics["reconstruction_top1"],
        "train_s": train_s,
    }


def run_codes_table(
    cfg: TableConfig,
    *,
    on_row: Callable[[int, int, dict[str, Any]], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Train one F per dataset and every applicable code on it.

    Args:
        on_row: called with (done, total, row) after each row, for progress.
        on_stage: called with a one-line description before each slow stage.

    Returns:
        Rows with exactly the keys ``ROW_KEYS``.
    """
    specs = [c for c in CODES if c.name in cfg.codes]
    rows: list[dict[str, Any]] = []
    for name in cfg.datasets:
        data = load_dataset(name, seed=cfg.seed)
        jobs = [
            (s, k, r)
            for k in cfg.k_values
            for r in cfg.r_values
            for s in specs
            if applicable(s, data, k, r)
        ]
        torch.manual_seed(cfg.seed)
        base_spec = model_spec(
            "mlp", {}, data.input_shape, data.num_classes, data.normalization()
        )
        if on_stage:
            on_stage(
                f"{name}: training F (MLP, {cfg.base_epochs[name]} epochs), "
                f"then {len(jobs)} codes"
            )
        base_cfg = TrainConfig(epochs=cfg.base_epochs[name], seed=cfg.seed)
        base, _ = train_classifier(
            build_from_spec(base_spec), data, base_cfg, progress=False
        )
        for i, (spec, k, r) in enumerate(jobs):
            row = run_code(spec, data, base, base_spec, k, r, cfg)
            rows.append(row)
            if on_row:
                on_row(i + 1, len(jobs), row)
    return rows


def time_codes(
    k: int = 2, r: int = 1, *, dataset: str = "mnist5k", number: int = 2000
) -> dict[str, dict[str, float]]:
    """Encode + decode time per coding group against F's time for one query,
    both at batch 1, measured with ``timeit`` in one process (untrained
    weights: time does not depend on them).

    Returns:
        Per code: ``f_us`` (F on one query), ``encode_us``, ``decode_us``
        (one lost data output) and ``overhead_pct`` = (encode + decode) / F.
    """
    data = load_dataset(dataset)
    spec = model_spec(
        "mlp", {}, data.input_shape, data.num_classes, data.normalization()
    )
    base = build_from_spec(spec).eval()
    x = torch.from_numpy(data.test.x[:k])[None]  # (1, k, *in)
    one = x[:, 0]
    out: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        f_us = (
            min(timeit.repeat(lambda: base(one), number=number, repeat=3))
            / number
            * 1e6
        )
        data_out = base(x[0]).unsqueeze(0)  # (1, k, out)
        for c in CODES:
            if r not in c.r_values or not applicable(c, data, k, r):
                continue
            encoder, decoder = make_code(_code_config(c, k, r, data), data.input_shape)
            encoder.eval(), decoder.eval()
            parity_out = data_out[:, :r].clone()
            available = torch.ones(k + r, dtype=torch.bool)
            available[0] = False
            decoder(data_out, parity_out, available)  # fill any per-pattern cache
            enc_us = _best_us(lambda e=encoder: e(x), number)
            dec_us = _best_us(
                lambda d=decoder, p=parity_out, a=available: d(data_out, p, a), number
            )
            out[c.name] = {
                "f_us": f_us,
                "encode_us": enc_us,
                "decode_us": dec_us,
                "overhead_pct": 100 * (enc_us + dec_us) / f_us,
            }
    return out


def _best_us(fn: Callable[[], Any], number: int) -> float:
    """Best of three timeit runs, in microseconds per call."""
    return min(timeit.repeat(fn, number=number, repeat=3)) / number * 1e6


def plot_degraded_vs_k(rows: list[dict[str, Any]], path: Path) -> Path:
    """Degraded top-1 against k, one line per code, one panel per (dataset, r)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    panels = sorted({(row["dataset"], row["r"]) for row in rows})
    width = max(1, len(panels))
    fig, axes = plt.subplots(1, width, figsize=(4.5 * width, 4), squeeze=False)
    for ax, (dataset, r) in zip(axes[0], panels, strict=False):
        for code in dict.fromkeys(row["code"] for row in rows):
            pts = sorted(
                (row["k"], row["degraded_top1"])
                for row in rows
                if (row["code"], row["dataset"], row["r"]) == (code, dataset, r)
            )
            if pts:
                ax.plot(
                    [p[0] for p in pts],
                    [100 * p[1] for p in pts],
                    marker="o",
                    label=code,
                )
        ax.set(title=f"{dataset}, r={r}", xlabel="k", ylabel="degraded top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
