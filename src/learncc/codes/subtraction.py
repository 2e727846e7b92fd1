"""The subtraction decoder: F(x_m) = F_P(P) - sum of the other k - 1 outputs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from learncc.codes.base import Decoder, availability
from learncc.errors import ConfigError


class SubtractionDecoder(Decoder):
    """Parity models are trained to output the sum of F's k outputs; one
    unavailable output is that sum minus the k - 1 available ones.

    Exact when F is linear and the encoder is addition (F_P = F); otherwise
    only as good as the parity model's approximation. Tolerates one
    unavailable data output per group (r = 1).
    """

    def __init__(self, *, k: int, r: int) -> None:
        super().__init__(k=k, r=r)
        if r != 1:
            raise ConfigError(f"the subtraction decoder handles r=1, got r={r}")

    def parity_target(self, data_out: Tensor) -> Tensor:
        return data_out.sum(dim=1, keepdim=True)  # (B, 1, *out)

    def can_decode(self, available: Sequence[bool]) -> bool:
        flags = list(available)
        if len(flags) != self.k + 1:
            raise ConfigError(f"need {self.k + 1} availability flags, got {len(flags)}")
        return bool(flags[self.k]) and sum(not a for a in flags[: self.k]) <= 1

    def forward(
        self, data_out: Tensor, parity_out: Tensor, available: Tensor
    ) -> Tensor:
        mask = availability(available, data_out.shape[0], self.k + 1)[:, : self.k]
        present = mask.reshape(*mask.shape, *([1] * (data_out.dim() - 2)))
        # where, not multiplication: unavailable slots may hold NaN placeholders
        known = torch.where(present, data_out, torch.zeros_like(data_out))
        rebuilt = parity_out[:, :1] - known.sum(dim=1, keepdim=True)  # (B, 1, *out)
        return torch.where(present, data_out, rebuilt)

    def decode_numpy(
        self, data_out: np.ndarray, parity_out: np.ndarray, available: Sequence[bool]
    ) -> np.ndarray:
        present = np.asarray(available[: self.k], dtype=bool)
        out = data_out.copy()
        out[~present] = parity_out[0] - data_out[present].sum(axis=0)
        return out
