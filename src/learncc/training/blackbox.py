"""Parity models for a black-box F, and degraded-mode scores beyond top-1.

F is any ``BlackBoxModel`` (ONNX graph, scikit-learn estimator, NumPy
function; see ``learncc.models.blackbox``). Parity models stay torch MLPs on
the encoded queries, trained against F's outputs only, so F never needs
gradients.

The task metric decides how degraded mode is scored and how training picks
its best epoch:

- ``top1``: F outputs class scores; training is ``train_parity`` and
  evaluation ``evaluate_code``, exactly as for a torch F;
- ``iou`` (boxes ``(top, left, bottom, right)``), ``relative_error``
  (sum of absolute errors over sum of absolute reference values) and
  ``mse``: F is a regression. ``train_parity`` cannot serve here, because it
  keeps the epoch with the best validation *top-1*, which means nothing for
  real-valued outputs (with one output it is 1.0 every epoch, so the first
  epoch would be kept). ``train_parity_regression`` is the same loop with
  the task metric as its yardstick; it has no checkpoint/resume.

A regression's reference is the true target when the split carries float
targets of F's output width (``Dataset.num_classes == 0``, e.g. ``diabetes``),
and otherwise F's own output: for a deterministic computation such as a
bounding box, F's answer is the right answer.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from learncc.bundle import (
    Bundle,
    build_from_spec,
    model_spec,
    output_abs_max,
    save_bundle,
)
from learncc.codes import CodeConfig, Decoder, Encoder, make_code
from learncc.data import Dataset, Split
from learncc.errors import ConfigError
from learncc.models import predict
from learncc.models.blackbox import BlackBoxModel, probe
from learncc.training.augment import random_affine
from learncc.training.base import TrainConfig, one_cycle
from learncc.training.evaluate import (
    erasure_patterns,
    evaluate_code,
    make_groups,
    overall_accuracy,
    parity_outputs,
)
from learncc.training.parity import code_loss, train_parity

logger = logging.getLogger(__name__)

# metric -> whether higher is better
METRICS: dict[str, bool] = {
    "top1": True,
    "iou": True,
    "relative_error": False,
    "mse": False,
}
REGRESSION_LOSSES = ("parity-mse", "decode-mse")
SCALED_MLP = "learncc.models.blackbox:scaled_mlp"


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Intersection over union of boxes ``(..., 4)`` as (top, left, bottom, right).

    A box whose bottom is above its top (or right left of its left), as a
    rebuilt box can be, has zero area. Two empty boxes agree: IoU 1.
    """
    height = torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])
    width = torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])
    inter = height.clamp(min=0) * width.clamp(min=0)

    def area(box: Tensor) -> Tensor:
        return (box[..., 2] - box[..., 0]).clamp(min=0) * (
            box[..., 3] - box[..., 1]
        ).clamp(min=0)

    union = area(a) + area(b) - inter
    return torch.where(
        union > 0, inter / union.clamp(min=1e-12), torch.ones_like(union)
    )


def score(metric: str, got: Tensor, reference: Tensor) -> float:
    """``metric`` of outputs ``got`` against ``reference``, both ``(N, out)``.

    Raises:
        ConfigError: unknown or classification metric, or IoU on outputs
            that are not boxes.
    """
    if metric == "iou":
        if got.shape[-1] != 4:
            raise ConfigError(
                f"metric iou needs boxes of 4 values, got width {got.shape[-1]}"
            )
        return float(box_iou(got, reference).mean())
    if metric == "relative_error":
        return float(
            (got - reference).abs().sum() / reference.abs().sum().clamp(min=1e-12)
        )
    if metric == "mse":
        return float(((got - reference) ** 2).mean())
    raise ConfigError(
        f"unknown regression metric {metric!r}; choose one of iou, relative_error, mse"
    )


def _reference(split: Split, f_out: Tensor) -> Tensor:
    """True targets when the split carries float targets of F's width, else F."""
    y = split.y
    if y.dtype.kind != "f":
        return f_out
    target = torch.from_numpy(y).reshape(len(y), -1)
    return target if target.shape[1:] == f_out.shape[1:] else f_out


@torch.no_grad()
def evaluate_regression(
    base: nn.Module,
    parity_models: Sequence[nn.Module],
    encoder: Encoder,
    decoder: Decoder,
    split: Split,
    *,
    metric: str,
    default_output: Tensor | None = None,
    rounds: int = 3,
    max_erasures: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Score degraded mode with a regression metric over ``rounds`` groupings.

    Args:
        metric: ``iou``, ``relative_error`` or ``mse``.
        default_output: ``(out,)`` the constant a system without redundancy
            could return for a lost output (ParM's "default" baseline);
            defaults to the mean of F's outputs on ``split``. Pass the
            training mean for a fair comparison.
        max_erasures: most data slots erased at once; defaults to ``decoder.r``.

    Returns:
        ``base_<m>`` (F against the reference), ``degraded_<m>`` (rebuilt
        outputs against the reference), ``reconstruction_<m>`` (rebuilt
        against F), ``default_<m>`` (the default output against the reference,
        on the same erased items) and ``overall_<m>_at_f<f>`` for each
        unavailable fraction f, where ``<m>`` is the metric.
    """
    k, r = decoder.k, decoder.r
    max_erasures = r if max_erasures is None else max_erasures
    x = torch.from_numpy(split.x)
    f_out = predict(base, x)  # (N, out)
    reference = _reference(split, f_out)
    default = f_out.mean(0) if default_output is None else default_output
    gen = torch.Generator().manual_seed(seed)

    got, want, f_lost = [], [], []
    for _ in range(rounds):
        groups = make_groups(len(x), k, gen)  # (G, k)
        p_out = parity_outputs(parity_models, encoder, x[groups])  # (G, r, out)
        for pattern in erasure_patterns(k, max_erasures):
            available = torch.ones(k + r, dtype=torch.bool)
            available[list(pattern)] = False
            rebuilt = decoder(f_out[groups], p_out, available)  # (G, k, out)
            lost = groups[:, list(pattern)].flatten()  # (G * e,)
            got.append(rebuilt[:, list(pattern)].reshape(len(lost), -1))
            want.append(reference[lost])
            f_lost.append(f_out[lost])
    rebuilt_all, want_all = torch.cat(got), torch.cat(want)

    m = metric
    metrics = {
        f"base_{m}": score(m, f_out, reference),
        f"degraded_{m}": score(m, rebuilt_all, want_all),
        f"reconstruction_{m}": score(m, rebuilt_all, torch.cat(f_lost)),
        f"default_{m}": score(m, default.expand_as(want_all), want_all),
    }
    for f, value in overall_accuracy(
        metrics[f"base_{m}"], metrics[f"degraded_{m}"]
    ).items():
        metrics[f"overall_{m}_at_f{f:g}"] = value
    return metrics


def train_parity_regression(
    base: nn.Module,
    encoder: Encoder,
    decoder: Decoder,
    parity_models: Sequence[nn.Module],
    data: Dataset,
    cfg: TrainConfig,
    *,
    metric: str,
    loss: str = "parity-mse",
    progress: bool = True,
) -> dict[str, Any]:
    """Train parity models (and any encoder/decoder parameters) against a
    regression F, keeping the epoch with the best validation reconstruction
    ``metric``.

    The loop is ``train_parity``'s (new coding groups every epoch, one-cycle
    schedule, losses from ``code_loss``); only the yardstick differs.

    Returns:
        ``val_reconstruction_<metric>``, ``best_epoch``, ``epochs_run``.

    Raises:
        ConfigError: unknown metric or loss, wrong number of parity models,
            or nothing to train.
    """
    if metric not in METRICS or metric == "top1":
        raise ConfigError(
            f"metric must be one of iou, relative_error, mse; got {metric!r}"
        )
    if loss not in REGRESSION_LOSSES:
        raise ConfigError(
            f"loss {loss!r} does not fit a regression F; choose one of "
            f"{REGRESSION_LOSSES}"
        )
    if len(parity_models) != decoder.r:
        raise ConfigError(f"need r={decoder.r} parity models, got {len(parity_models)}")
    base.requires_grad_(False).eval()
    parity = nn.ModuleList(parity_models)
    trained = nn.ModuleDict({"parity": parity, "encoder": encoder, "decoder": decoder})
    params = [p for p in trained.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(
            "nothing to train: the parity models, encoder and decoder are all frozen"
        )
    k, r = decoder.k, decoder.r
    higher_better = METRICS[metric]
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    x, y = torch.from_numpy(data.train.x), torch.from_numpy(data.train.y)
    steps = -(-(len(x) // k) // cfg.batch_size)
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = one_cycle(optimizer, cfg, steps)
    default = predict(base, x).mean(0)  # the "default" baseline, from training data
    best: dict[str, Any] = {
        "val": None,
        "epoch": -1,
        "state": copy.deepcopy(trained.state_dict()),
    }

    bar = tqdm(
        range(cfg.epochs),
        desc=f"train parity (k={k}, r={r}, {metric})",
        unit="epoch",
        disable=not progress,
    )
    for epoch in bar:
        trained.train()
        groups = make_groups(len(x), k, gen)  # new coding groups every epoch
        for i in range(0, len(groups), cfg.batch_size):
            g = groups[i : i + cfg.batch_size]  # (G, k)
            xb = x[g.flatten()]
            if cfg.augment and xb.dim() == 4:  # images only
                xb = random_affine(xb, generator=gen)

            # F's outputs on the group: the targets
            with torch.no_grad():
                f_out = base(xb).view(len(g), k, -1)  # (G, k, out)

            # encode the coding group and run parity model j on parity query j
            queries = encoder(xb.view(len(g), k, *xb.shape[1:]))  # (G, r, *in)
            p_out = torch.stack(
                [m(queries[:, j]) for j, m in enumerate(parity)], dim=1
            )  # (G, r, out)

            batch_loss = code_loss(loss, decoder, f_out, p_out, y[g], gen)
            optimizer.zero_grad(set_to_none=True)
            batch_loss.backward()
            optimizer.step()
            schedule.step()

        # keep the best epoch by the validation reconstruction metric
        trained.eval()
        val = evaluate_regression(
            base,
            list(parity),
            encoder,
            decoder,
            data.val,
            metric=metric,
            default_output=default,
            rounds=1,
            seed=cfg.seed,
        )[f"reconstruction_{metric}"]
        if best["val"] is None or (
            val > best["val"] if higher_better else val < best["val"]
        ):
            best = {
                "val": val,
                "epoch": epoch,
                "state": copy.deepcopy(trained.state_dict()),
            }
        bar.set_postfix(
            loss=f"{batch_loss.item():.4f}", **{f"val_rec_{metric}": f"{val:.3f}"}
        )

    trained.load_state_dict(best["state"])
    trained.eval()
    logger.info(
        "parity model: best epoch %d, val reconstruction %s %.4f",
        best["epoch"],
        metric,
        best["val"],
    )
    return {
        f"val_reconstruction_{metric}": best["val"],
        "best_epoch": best["epoch"],
        "epochs_run": cfg.epochs,
    }


def _check_task(f: BlackBoxModel, data: Dataset, metric: str, width: int) -> None:
    if metric not in METRICS:
        raise ConfigError(
            f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}"
        )
    if metric == "top1" and (data.num_classes == 0 or width != data.num_classes):
        raise ConfigError(
            f"metric top1 needs F to output one score per class of {data.name} "
            f"({data.num_classes} classes), but F ({f.describe()}) outputs width "
            f"{width}; "
            "for a regression F pass metric='iou', 'relative_error' or 'mse'"
        )
    if metric == "iou" and width != 4:
        raise ConfigError(
            f"metric iou needs F to output boxes (top, left, bottom, right), but F "
            f"({f.describe()}) outputs width {width}"
        )


def _parity_target_stats(
    f: BlackBoxModel, decoder: Decoder, data: Dataset, seed: int
) -> tuple[list[float], list[float]]:
    """Per-output mean and spread of the parity targets over random training groups."""
    f_out = predict(f, torch.from_numpy(data.train.x))  # (N, out)
    groups = make_groups(len(f_out), decoder.k, torch.Generator().manual_seed(seed))
    target = decoder.parity_target(f_out[groups]).reshape(
        -1, f_out.shape[1]
    )  # (G r, out)
    std = target.std(0).clamp(min=1e-3 * float(target.abs().max().clamp(min=1.0)))
    return target.mean(0).tolist(), std.tolist()


def train_blackbox_bundle(
    f: BlackBoxModel,
    data: Dataset,
    code: CodeConfig,
    *,
    parity_cfg: TrainConfig,
    metric: str | None = None,
    loss: str = "parity-mse",
    parity_options: dict[str, Any] | None = None,
    out: str | Path | None = None,
    progress: bool = True,
) -> Bundle:
    """Train parity models for a black-box F, evaluate them on the test split,
    and save the bundle to ``out`` if given.

    F is probed on a few validation inputs first, so an F of the wrong shape
    fails here, before any training. Parity models are MLPs (``mlp``; for a
    regression ``scaled_mlp``, scaled to the parity targets) on the encoded
    queries, initialised at random: unlike a torch F there are no weights of
    F to start from.

    Args:
        f: F, from ``learncc.models.blackbox`` (``from_onnx``,
            ``from_sklearn``, ``from_callable``).
        metric: ``top1`` (F outputs class scores), ``iou``, ``relative_error``
            or ``mse``; defaults to ``top1`` for a classification dataset and
            ``relative_error`` for a regression one (``num_classes == 0``).
        loss: for ``top1`` any of ``train_parity``'s; otherwise ``parity-mse``
            or ``decode-mse``.
        parity_options: options of the parity MLP (e.g. ``{"hidden": [64]}``).

    Returns:
        The bundle; its manifest's ``metrics`` hold the degraded-mode scores
        and ``task.metric`` names the metric.

    Raises:
        ConfigError: F's input shape differs from the data's, F returns the
            wrong shape or fails on the probe, the metric does not fit F's
            outputs, or the code does not fit the inputs.
    """
    if tuple(f.input_shape) != data.input_shape:
        raise ConfigError(
            f"F ({f.describe()}) takes inputs of shape {f.input_shape}, but "
            f"{data.name} has inputs of shape {data.input_shape}"
        )
    (width,) = probe(f, data.val.x[:4])
    metric = metric or ("top1" if data.num_classes > 0 else "relative_error")
    _check_task(f, data, metric, width)
    torch.manual_seed(parity_cfg.seed)
    encoder, decoder = make_code(code, data.input_shape)

    options = dict(parity_options or {})
    name = "mlp"
    if metric != "top1":
        name = SCALED_MLP
        mean, std = _parity_target_stats(f, decoder, data, parity_cfg.seed)
        options |= {"out_mean": mean, "out_std": std}
    spec = model_spec(name, options, data.input_shape, width, data.normalization())
    parity = [build_from_spec(spec) for _ in range(code.r)]

    started = time.perf_counter()
    if metric == "top1":
        parity_metrics = train_parity(
            f, encoder, decoder, parity, data, parity_cfg, loss=loss, progress=progress
        )
        metrics = evaluate_code(
            f, parity, encoder, decoder, data.test, seed=parity_cfg.seed
        )
    else:
        parity_metrics = train_parity_regression(
            f,
            encoder,
            decoder,
            parity,
            data,
            parity_cfg,
            metric=metric,
            loss=loss,
            progress=progress,
        )
        default = predict(f, torch.from_numpy(data.train.x)).mean(0)
        metrics = evaluate_regression(
            f,
            parity,
            encoder,
            decoder,
            data.test,
            metric=metric,
            default_output=default,
            seed=parity_cfg.seed,
        )
    parity_s = time.perf_counter() - started

    fill_input = torch.from_numpy(np.ascontiguousarray(data.val.x[0]))
    fill_output = f(fill_input[None])[0]
    bundle = Bundle(
        path=None,
        manifest={
            "base": f.spec(),
            "parity": {**spec, "count": code.r},
            "code": code.to_dict(),
            "data": data.describe(),
            "task": {"metric": metric, "higher_is_better": METRICS[metric]},
            "train": {
                "parity": parity_cfg.to_dict(),
                "loss": loss,
                "parity_s": parity_s,
            },
            "metrics": {**metrics, "parity_train": parity_metrics},
            "output_abs_max": output_abs_max(f, data.train.x),
        },
        base=f,
        parity=parity,
        encoder=encoder,
        decoder=decoder,
        fill_input=fill_input,
        fill_output=fill_output,
    )
    if out is not None:
        bundle.path = save_bundle(out, bundle)
        logger.info("bundle saved to %s", bundle.path)
    return bundle


__all__ = [
    "METRICS",
    "box_iou",
    "evaluate_regression",
    "score",
    "train_blackbox_bundle",
    "train_parity_regression",
]
