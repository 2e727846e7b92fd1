"""Tabular datasets that ship with scikit-learn: vectors, not images.

Inputs have shape ``(N, features)`` float32. Each feature is standardized
with the mean and standard deviation of the training split, so features on
wildly different scales (areas in the thousands next to ratios below one)
reach F, the encoder and the parity model on one scale. Only codes that take
any input shape apply (the addition encoder, not concatenation), and
training must not use image augmentation.

Classification sets keep int64 labels. The regression set carries float32
targets in ``y`` with ``num_classes = 0``: that is how a ``Dataset`` says
"regression" (see ``learncc.training.blackbox``).

Registered names: ``breast-cancer`` (569 x 30, 2 classes), ``wine``
(178 x 13, 3 classes), ``diabetes`` (442 x 10, regression: disease
progression after one year, 25 to 346).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from learncc.data.base import Dataset, Split, register, split_pool


def standardized(data: Dataset) -> Dataset:
    """Scale every feature to zero mean and unit spread on the training split."""
    mean = data.train.x.mean(axis=0)
    std = data.train.x.std(axis=0)
    std[std == 0] = 1.0  # a constant feature stays constant rather than NaN

    def scale(split: Split) -> Split:
        return Split(((split.x - mean) / std).astype(np.float32), split.y)

    return replace(
        data, train=scale(data.train), val=scale(data.val), test=scale(data.test)
    )


def _load(name: str, seed: int, loader: Any, regression: bool) -> Dataset:
    x, y = loader(return_X_y=True)
    x = np.asarray(x, dtype=np.float32)
    if regression:
        return standardized(split_pool(name, x, y.astype(np.float32), 0, seed=seed))
    y = y.astype(np.int64)
    return standardized(split_pool(name, x, y, int(y.max()) + 1, seed=seed))


@register("breast-cancer")
def load_breast_cancer(*, name: str, seed: int, **_: Any) -> Dataset:
    """Wisconsin breast cancer: 569 tumours, 30 features, benign or malignant."""
    from sklearn.datasets import load_breast_cancer as loader

    return _load(name, seed, loader, regression=False)


@register("wine")
def load_wine(*, name: str, seed: int, **_: Any) -> Dataset:
    """178 wines, 13 chemical features, 3 cultivars."""
    from sklearn.datasets import load_wine as loader

    return _load(name, seed, loader, regression=False)


@register("diabetes")
def load_diabetes(*, name: str, seed: int, **_: Any) -> Dataset:
    """442 patients, 10 features, float target: disease progression (regression)."""
    from sklearn.datasets import load_diabetes as loader

    return _load(name, seed, loader, regression=True)
