"""Datasets with seeded train/validation/test splits.

Every dataset arrives as float32 images in [0, 1] of shape (N, C, H, W) and
int64 labels. The split seed and sizes are recorded in bundle manifests so a
bundle's metrics can be reproduced.
"""

from learncc.data.base import Dataset, Split, load_dataset, register

__all__ = ["Dataset", "Split", "load_dataset", "register"]
