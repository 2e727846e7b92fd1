"""A parity model built for the image concatenation code: one small network
shared by every tile, its outputs summed.

With the concatenation encoder, the parity query is a grid of k downsampled
images, and with the subtraction decoder the parity model must output the
sum of F's outputs on the k originals. A copy of F (ParM's choice) has to
learn that sum from the whole grid with no notion of tiles; ``TileSum``
builds the structure in: it cuts the parity query along the encoder's grid,
runs one network on every tile and adds the k outputs. Training then only
has to teach that network to predict F's output from one low-resolution
image, and every random coding group gives k such examples.

What it costs: per parity query, k runs of the tile network. With the
default tile MLP (hidden 200, 100) on mnist5k, that is about 1.3x F's
multiply-adds at k = 4 and 2x at k = 10 (``multiply_adds``). What it cannot
do: the tile keeps about 1/k of the pixels, so its estimate of F's output
has an error, and the subtraction decoder adds the errors of all k tiles to
every rebuilt output; degraded accuracy falls with k for that reason.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from learncc.codes.concat import ConcatenationEncoder
from learncc.errors import ConfigError


class TileSum(nn.Module):
    """Sum over the k tiles of a concatenation parity query of ``net(tile)``.

    Tiles follow ``ConcatenationEncoder``'s layout for the same k and image
    shape. Where tiles differ by a pixel (k = 5, 10 on 28x28), the smaller
    ones are padded by repeating their last row or column (the background),
    so one network of a fixed input size serves them all. The empty tiles of
    an incomplete grid (k = 3, 5, 10) are skipped.

    Args:
        input_shape: the image shape (C, H, W), as for F.
        num_classes: the width of F's output.
        k: the code's k; must match the encoder's, or the tiles are cut wrong
            (nothing can check this at run time: any k gives a valid cut).
        hidden: widths of the tile MLP's hidden layers.
    """

    def __init__(
        self,
        *,
        input_shape: tuple[int, ...],
        num_classes: int,
        k: int,
        hidden: tuple[int, ...] = (200, 100),
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError(
                f"tile-sum needs image inputs (C, H, W), got {tuple(input_shape)}"
            )
        if not isinstance(k, int) or k < 2:
            raise ConfigError(f"tile-sum needs the code's k >= 2, got k={k!r}")
        channels, height, width = (int(s) for s in input_shape)
        self.k = k
        # the encoder's own layout, so the two cannot drift apart
        layout = ConcatenationEncoder(k=k, r=1, input_shape=(channels, height, width))
        self.tiles = list(layout.tiles)  # (top, left, h, w) per tile
        self.tile_h = max(t[2] for t in self.tiles)
        self.tile_w = max(t[3] for t in self.tiles)
        self.tile_shape = (channels, self.tile_h, self.tile_w)
        layers: list[nn.Module] = [nn.Flatten()]
        width_in = math.prod(self.tile_shape)
        for h in hidden:
            layers += [nn.Linear(width_in, int(h)), nn.ReLU()]
            width_in = int(h)
        layers.append(nn.Linear(width_in, num_classes))
        self.net = nn.Sequential(*layers)

    def cut(self, x: Tensor) -> Tensor:
        """The k tiles of parity queries ``x`` (B, C, H, W): (B, k, C, h, w)."""
        tiles = []
        for top, left, h, w in self.tiles:
            tile = x[..., top : top + h, left : left + w]
            if (h, w) != (self.tile_h, self.tile_w):
                tile = F.pad(
                    tile, (0, self.tile_w - w, 0, self.tile_h - h), mode="replicate"
                )
            tiles.append(tile)
        return torch.stack(tiles, dim=1)

    def per_tile(self, x: Tensor) -> Tensor:
        """The tile network's output on each tile: (B, k, out)."""
        tiles = self.cut(x)  # (B, k, C, h, w)
        return self.net(tiles.flatten(0, 1)).view(x.shape[0], self.k, -1)

    def forward(self, x: Tensor) -> Tensor:
        return self.per_tile(x).sum(dim=1)  # (B, out)

    def multiply_adds(self) -> int:
        """Multiply-adds of one parity query (k tile-network runs)."""
        linear = [m for m in self.net if isinstance(m, nn.Linear)]
        return self.k * sum(m.in_features * m.out_features for m in linear)

    @torch.no_grad()
    def init_from_mlp(self, base: nn.Module) -> None:
        """Start the tile network as F applied to the tile upsampled to the
        full image: F's first layer composed with bilinear upsampling is one
        linear map from the tile, so the tile network keeps its size.

        ``base`` is F's inner MLP (``learncc.models.mlp``, without the
        ``Normalized`` wrapper), with the same hidden widths as this model.
        Normalization commutes with the upsampling (its rows sum to one), so
        the wrapped parity model starts as ``sum_i F(upsample(tile_i))``.

        Raises:
            ConfigError: ``base`` is not an MLP with matching layer widths.
        """
        mine = [m for m in self.net if isinstance(m, nn.Linear)]
        theirs = [m for m in base.modules() if isinstance(m, nn.Linear)]
        channels, tile_h, tile_w = self.tile_shape
        tile_px = tile_h * tile_w
        full_px = theirs[0].in_features // channels if theirs else 0
        side = math.isqrt(full_px)
        if (
            len(mine) != len(theirs)
            or side * side != full_px
            or any(
                a.out_features != b.out_features
                for a, b in zip(mine, theirs, strict=True)
            )
        ):
            raise ConfigError(
                "init_from_mlp needs F to be an MLP on square images with the tile "
                f"network's widths {[m.out_features for m in mine]}; got "
                f"{[m.out_features for m in theirs]}"
            )
        # (tile_px, full_px): row j is the upsampled image of tile pixel j
        basis = torch.eye(tile_px).view(tile_px, 1, tile_h, tile_w)
        up = F.interpolate(
            basis, size=(side, side), mode="bilinear", align_corners=False
        )
        up = up.view(tile_px, full_px)
        weight = theirs[0].weight.view(-1, channels, full_px)  # (h1, C, full_px)
        mine[0].weight.copy_((weight @ up.T).flatten(1))  # (h1, C * tile_px)
        mine[0].bias.copy_(theirs[0].bias)
        for a, b in zip(mine[1:], theirs[1:], strict=True):
            a.weight.copy_(b.weight)
            a.bias.copy_(b.bias)


def tile_sum(
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    k: int,
    hidden: tuple[int, ...] = (200, 100),
) -> nn.Module:
    """Registry factory for ``TileSum`` (model name ``tile-sum``)."""
    return TileSum(
        input_shape=input_shape, num_classes=num_classes, k=k, hidden=tuple(hidden)
    )


__all__ = ["TileSum", "tile_sum"]
