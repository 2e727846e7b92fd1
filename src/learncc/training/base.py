"""Training of the base model F (a plain classifier)."""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from learncc.data import Dataset, Split
from learncc.errors import ConfigError, check_seed
from learncc.training.augment import random_affine

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings, for the base model and the parity model alike."""

    epochs: int = 60
    batch_size: int = 64
    lr: float = 3e-3  # peak of the one-cycle schedule
    weight_decay: float = 0.0
    augment: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or self.lr == float("inf"):  # NaN fails both
            raise ConfigError(f"lr must be a finite number > 0, got {self.lr}")
        check_seed(self.seed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def one_cycle(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch
    )


@torch.no_grad()
def top1(model: nn.Module, split: Split) -> float:
    model.eval()
    x, y = torch.from_numpy(split.x), torch.from_numpy(split.y)
    pred = torch.cat([model(x[i : i + 1024]).argmax(1) for i in range(0, len(y), 1024)])
    return float((pred == y).float().mean())


def train_classifier(
    model: nn.Module,
    data: Dataset,
    cfg: TrainConfig,
    *,
    progress: bool = True,
    name: str = "F",
) -> tuple[nn.Module, dict[str, float]]:
    """Train ``model`` with cross-entropy; return the best epoch by validation top-1.
    ``name`` labels its progress bar and log line ("F", "backup").

    Returns:
        The model holding the best epoch's weights, and its metrics
        (``val_top1``, ``best_epoch``).
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    x, y = torch.from_numpy(data.train.x), torch.from_numpy(data.train.y)
    steps = -(-len(y) // cfg.batch_size)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    schedule = one_cycle(optimizer, cfg, steps)
    augment = cfg.augment and x.dim() == 4  # affine augmentation needs images
    best: dict[str, Any] = {"val_top1": -1.0, "state": None, "epoch": -1}

    bar = tqdm(
        range(cfg.epochs), desc=f"train {name}", unit="epoch", disable=not progress
    )
    for epoch in bar:
        model.train()
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), cfg.batch_size):
            batch = order[i : i + cfg.batch_size]
            xb = random_affine(x[batch], generator=gen) if augment else x[batch]
            loss = F.cross_entropy(model(xb), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()

        val = top1(model, data.val)
        if val > best["val_top1"]:
            best = {
                "val_top1": val,
                "state": copy.deepcopy(model.state_dict()),
                "epoch": epoch,
            }
        bar.set_postfix(loss=f"{loss.item():.3f}", val_top1=f"{val:.3f}")

    model.load_state_dict(best["state"])
    model.eval()
    logger.info(
        "%s: best epoch %d, val top-1 %.4f", name, best["epoch"], best["val_top1"]
    )
    return model, {"val_top1": best["val_top1"], "best_epoch": best["epoch"]}
