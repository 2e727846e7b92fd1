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

    def decode_missing(
        self,
        data_out: Sequence[np.ndarray | None],
        parity_out: Sequence[np.ndarray | None],
    ) -> dict[int, np.ndarray]:
        # one lost output: the parity minus the others, k - 1 NumPy calls
        # instead of stacking the group (issue 4: runs once per decoded group)
        missing = [i for i, o in enumerate(data_out) if o is None]
        if not missing:
            return {}
        present = [o for o in data_out if o is not None]
        rebuilt = parity_out[0] - present[0]  # a fresh array
        for o in present[1:]:
            rebuilt -= o
        return {missing[0]: rebuilt}
