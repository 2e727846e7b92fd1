"""Dataset containers and the name registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from learncc.errors import ConfigError, UnknownNameError, check_seed


@dataclass(frozen=True)
class Split:
    x: np.ndarray  # (N, C, H, W) float32 in [0, 1]
    y: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    seed: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.train.x.shape[1:])

    def normalization(self) -> dict[str, float]:
        """Mean and std of the training pixels, for the models' input layer."""
        return {"mean": float(self.train.x.mean()), "std": float(self.train.x.std())}

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seed": self.seed,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "sizes": {
                "train": len(self.train),
                "val": len(self.val),
                "test": len(self.test),
            },
        }


# A loader returns (x, y, num_classes) for the whole pool, or a ready Dataset
# when the source has its own fixed test split (MNIST, CIFAR).
Loader = Callable[..., Any]
_LOADERS: dict[str, Loader] = {}


def register(name: str) -> Callable[[Loader], Loader]:
    def wrap(fn: Loader) -> Loader:
        _LOADERS[name] = fn
        return fn

    return wrap


def dataset_names() -> list[str]:
    """Every registered dataset name, in registration order."""
    # Importing the loader modules registers them.
    from learncc.data import cifar, embedded, folder, idx, tabular  # noqa: F401

    return list(_LOADERS)


def split_pool(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    *,
    seed: int,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
) -> Dataset:
    """Shuffle a pool with ``seed`` and cut it into train/validation/test."""
    if (
        not 0 < val_fraction < 1
        or not 0 < test_fraction < 1
        or val_fraction + test_fraction >= 1
    ):
        raise ConfigError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) "
            "must be in (0, 1) and sum to less than 1"
        )
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    n_val = int(round(len(y) * val_fraction))
    test, val, train = np.split(order, [n_test, n_test + n_val])
    return Dataset(
        name=name,
        train=Split(x[train], y[train]),
        val=Split(x[val], y[val]),
        test=Split(x[test], y[test]),
        num_classes=num_classes,
        seed=seed,
    )


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    seed: int = 0,
    download: bool = True,
) -> Dataset:
    """Load a dataset by name.

    Args:
        name: a registered name (``mnist5k``, ``digits``, ...).
        data_dir: where file-based datasets live (and are downloaded to).
        seed: seed of the train/validation/test split.
        download: fetch missing files where the network allows.

    Raises:
        UnknownNameError: ``name`` is not registered.
        DataUnavailableError: files are missing and cannot be downloaded.
    """
    # Importing the loader modules registers them.
    from learncc.data import cifar, embedded, folder, idx, tabular  # noqa: F401

    if name not in _LOADERS:
        raise UnknownNameError("dataset", name, list(_LOADERS))
    check_seed(seed)
    return _LOADERS[name](name=name, data_dir=data_dir, seed=seed, download=download)
