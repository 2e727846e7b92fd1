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
        self._blocks = height % self.rows == 0 and width % self.cols == 0
        self._side_by_side: tuple[tuple[int, ...], ...] | None = None
        if self._blocks and self.rows == 1 and k == 2:
            channels, w = self.input_shape[0], width // 2
            self._side_by_side = (
                (2, channels, height, w, 2),  # the pixels each tile pixel averages
                (channels, height, 2, w),  # the parity query, tile by tile
                (1, *self.input_shape),
            )
        self._scale = np.float32(1.0 / (self.rows * self.cols))

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        tiles = self.rows_m.to(x.dtype) @ x @ self.cols_t.to(x.dtype)  # (B, k, C, H, W)
        return tiles.sum(dim=1, keepdim=True)  # (B, 1, C, H, W)

    def encode_numpy(self, x: np.ndarray) -> np.ndarray:
        if self._blocks:
            return self._encode_blocks(x)
        if self._numpy is None:
            self._numpy = (
                self.rows_m.numpy().astype(np.float32),
                self.cols_t.numpy().astype(np.float32),
            )
        rows, cols = self._numpy
        return (rows @ x @ cols).sum(axis=1, keepdims=True)

    def _encode_blocks(self, x: np.ndarray) -> np.ndarray:
        """The grid divides the image, so every tile is ``H / rows`` by
        ``W / cols`` and area averaging is a plain mean over rows x cols
        blocks: pool columns, pool rows, then one strided copy that tiles
        (side by side, k = 2: one strided add straight into the tiles).
        Two to four times cheaper than the matrix products for a few groups
        (issue 4: the frontend encodes every coding group)."""
        n = len(x)
        if self._side_by_side is not None:  # k = 2; each pixel averages 2
            pixels_shape, out_shape, parity_shape = self._side_by_side
            out = np.empty((n, *out_shape), np.float32)  # (n, C, H, k, w)
            pixels = x.reshape(n, *pixels_shape)  # (n, k, C, H, w, 2)
            tiles = out.transpose(0, 3, 1, 2, 4)  # (n, k, C, H, w)
            np.add(pixels[..., 0], pixels[..., 1], out=tiles)
            out *= self._scale
            return out.reshape(n, *parity_shape)
        k = self.k
        channels, height, width = self.input_shape
        rows, cols = self.rows, self.cols
        h, w = height // rows, width // cols
        # 2-D and 3-D views: NumPy walks low-rank strided views fastest
        pooled: np.ndarray = x.reshape(-1, w, cols)  # (n k C H, w, cols)
        pooled = pooled[..., 0] + pooled[..., 1] if cols == 2 else pooled.sum(axis=2)
        if rows > 1:
            pooled = pooled.reshape(-1, h, rows, w)  # (n k C, h, rows, w)
            pooled = (
                pooled[:, :, 0] + pooled[:, :, 1] if rows == 2 else pooled.sum(axis=2)
            )
        pooled *= self._scale
        pooled = pooled.reshape(n, k, channels, h, w)
        if k < rows * cols:  # empty tiles stay zero
            padded = np.zeros((n, rows * cols, channels, h, w), np.float32)
            padded[:, :k] = pooled
            pooled = padded
        out = np.empty((n, 1, channels, rows, h, cols, w), np.float32)
        tiles = out[:, 0].transpose(0, 2, 4, 1, 3, 5)  # (n, rows, cols, C, h, w)
        np.copyto(tiles, pooled.reshape(tiles.shape))
        return out.reshape(n, 1, channels, height, width)
