"""Datasets with seeded train/validation/test splits.

Every dataset arrives as float32 images in [0, 1] of shape (N, C, H, W) and
int64 labels. The split seed and sizes are recorded in bundle manifests so a
bundle's metrics can be reproduced.

Registered names: ``mnist5k`` and ``digits`` (bundled, offline), ``mnist``,
``fashion-mnist``, ``cifar10``, ``cifar100`` (files in ``data_dir``, fetched
when allowed) and ``folder`` (your own images, one subfolder per class).
"""

from learncc.data._files import DEFAULT_DATA_DIR
from learncc.data.base import Dataset, Split, load_dataset, register, split_pool
from learncc.data.cifar import read_cifar_batch
from learncc.data.folder import find_images
from learncc.data.idx import read_idx

__all__ = [
    "DEFAULT_DATA_DIR",
    "Dataset",
    "Split",
    "find_images",
    "load_dataset",
    "read_cifar_batch",
    "read_idx",
    "register",
    "split_pool",
]
