"""The image concatenation code: k downsampled images tiled into one image."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from learncc.codes.base import Encoder
from learncc.errors import ConfigError


def grid_for(k: int) -> tuple[int, int]:
    """Rows and columns of the tiling: as square as possible, wider than tall."""
    cols = math.ceil(math.sqrt(k))
    return math.ceil(k / cols), cols


def _splits(total: int, parts: int) -> list[int]:
    # Tiles differ by at most one pixel so that they cover the image exactly.
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _area_matrix(size: int, tile: int, offset: int) -> torch.Tensor:
    """(size, size) matrix whose rows offset..offset+tile average the input
    over the windows that area interpolation (adaptive average pooling) to
    ``tile`` pixels uses; every other row is zero."""
    m = torch.zeros(size, size)
    for i in range(tile):
        lo, hi = (i * size) // tile, -((-(i + 1) * size) // tile)  # floor, ceil
        m[offset + i, lo:hi] = 1.0 / (hi - lo)
    return m


class ConcatenationEncoder(Encoder):
    """Each image is downsampled (area averaging, per channel) and placed in
    one tile of a rows x cols grid the size of the original image.

    Area averaging is separable, so tile i is ``R_i @ x_i @ C_i^T`` with
    fixed row and column matrices that also place it at its offset; the
    whole encoding is two batched matrix products and a sum. That is the
    same as ``F.interpolate(mode="area")`` per tile, several times cheaper
    per call, which matters in the serving frontend where it runs once per
    coding group.

    Works for any k >= 2; tiles beyond the k-th stay zero. Unlike addition,
    the queries do not overlap, but each keeps only about 1/k of its
    resolution, so images must be large enough for k tiles (at least one
    pixel per tile). Needs image inputs of shape (C, H, W).
    """

    def __init__(self, *, k: int, r: int, input_shape: tuple[int, ...]) -> None:
        super().__init__(k=k, r=r, input_shape=input_shape)
        if r != 1:
            raise ConfigError(
                f"the concatenation encoder makes one parity query (r=1), got r={r}"
            )
        if len(self.input_shape) != 3:
            raise ConfigError(
                "the concatenation encoder needs image inputs (C, H, W), got shape "
                f"{self.input_shape}; use the addition encoder for vectors"
            )
        _, height, width = self.input_shape
        self.rows, self.cols = grid_for(k)
        if height < self.rows or width < self.cols:
            raise ConfigError(
                f"a {height}x{width} image cannot hold {k} tiles "
                f"({self.rows}x{self.cols} grid); lower k"
            )
        heights, widths = _splits(height, self.rows), _splits(width, self.cols)
        self.tiles: list[tuple[int, int, int, int]] = []  # (top, left, h, w)
        for i in range(k):
            row, col = divmod(i, self.cols)
            self.tiles.append(
                (sum(heights[:row]), sum(widths[:col]), heights[row], widths[col])
            )
        rows_m = torch.stack(
            [_area_matrix(height, h, top) for top, _, h, _ in self.tiles]
        )
        cols_m = torch.stack(
            [_area_matrix(width, w, left) for _, left, _, w in self.tiles]
        )
        # buffers, not parameters: fixed, but they follow .to(device)
        self.register_buffer(
            "rows_m", rows_m[:, None], persistent=False
        )  # (k, 1, H, H)
        self.register_buffer(
            "cols_t", cols_m.transpose(1, 2)[:, None], persistent=False
        )  # (k, 1, W, W)
        self._numpy: tuple[np.ndarray, np.ndarray] | None = None

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        tiles = self.rows_m.to(x.dtype) @ x @ self.cols_t.to(x.dtype)  # (B, k, C, H, W)
        return tiles.sum(dim=1, keepdim=True)  # (B, 1, C, H, W)

    def encode_numpy(self, x: np.ndarray) -> np.ndarray:
        if self._numpy is None:
            self._numpy = (
                self.rows_m.numpy().astype(np.float32),
                self.cols_t.numpy().astype(np.float32),
            )
        rows, cols = self._numpy
        return (rows @ x @ cols).sum(axis=1, keepdims=True)
