"""Data augmentation for small image sets.

With 3,500 training digits an MLP overfits within a few dozen epochs; small
random rotations, scalings and shifts lift mnist5k test top-1 from about 93%
to about 97%. The same augmentation feeds parity training, so the parity
model sees as many distinct coding groups as epochs allow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def random_affine(
    x: Tensor,
    *,
    generator: torch.Generator | None = None,
    max_rotation_rad: float = 0.2,
    max_scale: float = 0.1,
    max_shift: float = 0.1,
) -> Tensor:
    """Apply an independent random affine transform to each image of ``x`` (N, C, H, W).

    Shifts are fractions of the half-width (grid coordinates run from -1 to 1).
    """
    n = x.shape[0]
    u = torch.rand(n, 4, generator=generator) * 2 - 1  # (N, 4) in [-1, 1)
    angle = u[:, 0] * max_rotation_rad
    scale = 1 + u[:, 1] * max_scale
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = scale * torch.cos(angle)
    theta[:, 0, 1] = -scale * torch.sin(angle)
    theta[:, 1, 0] = scale * torch.sin(angle)
    theta[:, 1, 1] = scale * torch.cos(angle)
    theta[:, :, 2] = u[:, 2:] * max_shift
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)
