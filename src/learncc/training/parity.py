"""Training of parity models (and of learned encoders and decoders).

F is frozen. Each epoch re-draws the coding groups from the (augmented)
training split, so the parity model sees new combinations every epoch.
Two losses:

- ``parity-mse`` (ParM): MSE between the parity model's output on the
  encoded group and ``decoder.parity_target`` of F's outputs (the sum, for
  the subtraction decoder).
- ``decode-mse`` / ``decode-kl`` / ``decode-ce``: erase a random pattern of
  up to r data slots, decode, and score the rebuilt outputs against F's
  outputs (MSE, or KL divergence of the softmaxes) or the true labels
  (cross-entropy). Needed when the encoder or decoder has parameters.
- ``tile-mse``: for a ``TileSum`` parity model (concatenation code), MSE
  between its output on each tile and F's output on the image in that tile.
  Its sum is what ``parity-mse`` scores, but each tile gets its own target,
  so the gradient is not blurred by the other k - 1 tiles' errors.

The best epoch by validation reconstruction top-1 is kept. With
``checkpoint_dir`` every epoch is saved; ``resume=True`` continues from it.

To train a learned encoder and/or decoder alone, pass F itself as every
parity model (``[base] * r``): it stays frozen, and gradients flow through
it to the encoder. To train them jointly with parity models, pass copies of
F. Frozen modules stay in eval mode throughout, so F's batch-norm statistics
never drift while the code trains around it.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from learncc.codes import Decoder, Encoder, is_differentiable
from learncc.codes.subtraction import SubtractionDecoder
from learncc.data import Dataset
from learncc.errors import ConfigError
from learncc.models import Normalized, TileSum
from learncc.training.augment import random_affine
from learncc.training.base import TrainConfig, one_cycle
from learncc.training.checkpoint import load_checkpoint, save_checkpoint
from learncc.training.evaluate import evaluate_code, make_groups

logger = logging.getLogger(__name__)

LOSSES = ("parity-mse", "tile-mse", "decode-mse", "decode-kl", "decode-ce")


def _random_erasures(groups: int, k: int, r: int, gen: torch.Generator) -> Tensor:
    """Availability ``(G, k + r)``: 1..r data slots erased per group, parities kept."""
    available = torch.ones(groups, k + r, dtype=torch.bool)
    count = torch.randint(1, r + 1, (groups,), generator=gen)
    scores = torch.rand(groups, k, generator=gen)
    ranks = scores.argsort(dim=1).argsort(dim=1)  # a random permutation per row
    available[:, :k] = ranks >= count.unsqueeze(1)
    return available


def code_loss(
    loss: str,
    decoder: Decoder,
    f_out: Tensor,
    p_out: Tensor,
    labels: Tensor,
    gen: torch.Generator,
) -> Tensor:
    """The training loss for one batch of groups.

    Args:
        f_out: F's outputs ``(G, k, out)``, no gradient.
        p_out: parity outputs ``(G, r, out)``.
        labels: true labels ``(G, k)``.
    """
    if loss == "parity-mse":
        return F.mse_loss(p_out, decoder.parity_target(f_out))
    available = _random_erasures(f_out.shape[0], decoder.k, decoder.r, gen)
    rebuilt = decoder(f_out, p_out, available)  # (G, k, out)
    erased = ~available[:, : decoder.k]
    got, want = rebuilt[erased], f_out[erased]  # (E, out)
    if loss == "decode-mse":
        return F.mse_loss(got, want)
    if loss == "decode-kl":
        return F.kl_div(
            F.log_softmax(got, -1),
            F.log_softmax(want, -1),
            log_target=True,
            reduction="batchmean",
        )
    return F.cross_entropy(got, labels[erased])


def _tile_sum(model: nn.Module) -> TileSum | None:
    inner = model.model if isinstance(model, Normalized) else model
    return inner if isinstance(inner, TileSum) else None


def tile_outputs(model: nn.Module, query: Tensor) -> Tensor:
    """A ``TileSum`` parity model's (possibly ``Normalized``) output on each
    tile of parity queries ``query`` (B, *in): ``(B, k, out)``."""
    tiled = _tile_sum(model)
    if tiled is None:
        raise ConfigError(
            f"per-tile outputs need a tile-sum parity model, got {type(model).__name__}"
        )
    if isinstance(model, Normalized):
        query = (query - model.mean) / model.std
    return tiled.per_tile(query)


def _has_trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def check_trainable_code(
    base: nn.Module,
    encoder: Encoder,
    decoder: Decoder,
    parity_models: Sequence[nn.Module],
    loss: str,
) -> None:
    """Reject a training setup that cannot work, before any epoch runs.

    Raises:
        ConfigError: unknown loss; encoder and decoder disagree on k or r;
            wrong number of parity models; a learned encoder or decoder with
            the ``parity-mse`` loss; a learned encoder or trainable parity
            model that gradients cannot flow through (``differentiable =
            False``, see ``learncc.codes.base``).
    """
    if loss not in LOSSES:
        raise ConfigError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    if (encoder.k, encoder.r) != (decoder.k, decoder.r):
        raise ConfigError(
            f"encoder has k={encoder.k}, r={encoder.r} but decoder has "
            f"k={decoder.k}, r={decoder.r}; build both with make_code from one "
            "CodeConfig"
        )
    if len(parity_models) != decoder.r:
        raise ConfigError(f"need r={decoder.r} parity models, got {len(parity_models)}")
    learned = [
        n for n, m in (("encoder", encoder), ("decoder", decoder)) if _has_trainable(m)
    ]
    if learned and loss in ("parity-mse", "tile-mse"):
        raise ConfigError(
            f"the learned {' and '.join(learned)} cannot be trained with loss "
            f"{loss} (it scores parity outputs only); use decode-mse, decode-kl "
            "or decode-ce"
        )
    if loss == "tile-mse":
        for j, model in enumerate(parity_models):
            tiled = _tile_sum(model)
            if tiled is None or tiled.k != decoder.k:
                raise ConfigError(
                    f"loss tile-mse needs tile-sum parity models built for "
                    f"k={decoder.k}; parity model {j} is {type(model).__name__}"
                    + (f" for k={tiled.k}" if tiled is not None else "")
                )
        if not isinstance(decoder, SubtractionDecoder):
            raise ConfigError(
                "loss tile-mse trains a parity model to output the sum of F's "
                "outputs; it needs the subtraction decoder, got "
                f"{type(decoder).__name__}"
            )
    for j, model in enumerate(parity_models):
        if is_differentiable(model):
            continue
        if _has_trainable(model):
            raise ConfigError(
                f"parity model {j} is a black box (differentiable = False) and cannot "
                "be trained; use F itself with a training-free code such as berrut"
            )
        if _has_trainable(encoder):
            raise ConfigError(
                f"a learned encoder ({type(encoder).__name__}) needs gradients through "
                f"parity model {j}, which is a black box (differentiable = False); "
                "use a fixed encoder (berrut, linear, concat) with a learned decoder"
            )


def train_parity(
    base: nn.Module,
    encoder: Encoder,
    decoder: Decoder,
    parity_models: Sequence[nn.Module],
    data: Dataset,
    cfg: TrainConfig,
    *,
    loss: str = "parity-mse",
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the parity models (and any encoder/decoder parameters) in place.

    Args:
        base: F; its parameters are frozen here.
        parity_models: r modules, parity model j computes on parity query j.
            Pass F itself (frozen) to train only a learned encoder/decoder.
        loss: one of ``LOSSES``.

    Returns:
        Metrics of the best epoch: ``val_reconstruction_top1``, ``best_epoch``,
        ``epochs_run``.

    Raises:
        ConfigError: nothing to train, or any reason ``check_trainable_code``
            gives (unknown loss, wrong number of parity models, a learned
            code with ``parity-mse``, gradients needed through a black box).
    """
    check_trainable_code(base, encoder, decoder, parity_models, loss)
    base.requires_grad_(False).eval()
    trained = nn.ModuleDict(
        {"parity": nn.ModuleList(parity_models), "encoder": encoder, "decoder": decoder}
    )
    params = [p for p in trained.parameters() if p.requires_grad]
    frozen = [m for m in trained["parity"] if not _has_trainable(m)]  # e.g. F itself
    if not params:
        raise ConfigError(
            "nothing to train: the parity models, encoder and decoder are all frozen"
        )
    k, r = decoder.k, decoder.r
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    x, y = torch.from_numpy(data.train.x), torch.from_numpy(data.train.y)
    steps = -(-(len(y) // k) // cfg.batch_size)
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    start, best = (
        0,
        {"val": -1.0, "epoch": -1, "state": copy.deepcopy(trained.state_dict())},
    )
    if (
        resume
        and checkpoint_dir is not None
        and (checkpoint_dir / "meta.json").exists()
    ):
        states, meta = load_checkpoint(checkpoint_dir, optimizer)
        trained.load_state_dict(states["current"])
        gen.set_state(states["rng"]["generator"])
        start = meta["epoch"] + 1
        best = {
            "val": meta["best_val"],
            "epoch": meta["best_epoch"],
            "state": states["best"],
        }
        logger.info("resuming parity training at epoch %d of %d", start, cfg.epochs)
    schedule = one_cycle(optimizer, cfg, steps)
    if start:
        # Rebuild the schedule at the step where the checkpoint stopped.
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=cfg.lr,
            total_steps=cfg.epochs * steps,
            last_epoch=start * steps - 1,
        )

    bar = tqdm(
        range(start, cfg.epochs),
        desc=f"train code (k={k}, r={r})",
        unit="epoch",
        disable=not progress,
        initial=start,
        total=cfg.epochs,
    )
    for epoch in bar:
        trained.train()
        for module in frozen:
            module.eval()  # no batch-norm drift or dropout in frozen F
        groups = make_groups(len(y), k, gen)  # new coding groups every epoch
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
            if loss == "tile-mse":
                # r = 1 (subtraction): tile i of the parity query holds x_i
                per_tile = tile_outputs(trained["parity"][0], queries[:, 0])
                batch_loss = F.mse_loss(per_tile, f_out)  # (G, k, out) both
            else:
                p_out = torch.stack(
                    [m(queries[:, j]) for j, m in enumerate(trained["parity"])],
                    dim=1,
                )  # (G, r, out)
                batch_loss = code_loss(loss, decoder, f_out, p_out, y[g], gen)
            optimizer.zero_grad(set_to_none=True)
            batch_loss.backward()
            optimizer.step()
            schedule.step()

        # keep the best epoch by validation reconstruction accuracy
        trained.eval()
        val = evaluate_code(
            base,
            list(trained["parity"]),
            encoder,
            decoder,
            data.val,
            rounds=1,
            seed=cfg.seed,
        )["reconstruction_top1"]
        if val > best["val"]:
            best = {
                "val": val,
                "epoch": epoch,
                "state": copy.deepcopy(trained.state_dict()),
            }
        bar.set_postfix(loss=f"{batch_loss.item():.4f}", val_rec_top1=f"{val:.3f}")
        if checkpoint_dir is not None:
            save_checkpoint(
                checkpoint_dir,
                states={
                    "current": trained.state_dict(),
                    "best": best["state"],
                    "rng": {"generator": gen.get_state()},
                },
                optimizer=optimizer,
                meta={
                    "epoch": epoch,
                    "best_val": best["val"],
                    "best_epoch": best["epoch"],
                },
            )

    trained.load_state_dict(best["state"])
    trained.eval()
    logger.info(
        "parity model: best epoch %d, val reconstruction top-1 %.4f",
        best["epoch"],
        best["val"],
    )
    return {
        "val_reconstruction_top1": best["val"],
        "best_epoch": best["epoch"],
        "epochs_run": cfg.epochs - start,
    }
