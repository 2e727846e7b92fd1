"""The addition code: the parity query is the sum of the k queries."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from learncc.codes.base import Encoder
from learncc.errors import ConfigError


class AdditionEncoder(Encoder):
    """Parity query = x_1 + ... + x_k, element-wise; works for any input shape.

    ParM's first encoder. It keeps every pixel of every query but overlays
    them, so the parity model must learn to separate k superimposed inputs;
    accuracy falls quickly as k grows (see docs/benchmarks.md).
    """

    def __init__(self, *, k: int, r: int, input_shape: tuple[int, ...]) -> None:
        super().__init__(k=k, r=r, input_shape=input_shape)
        if r != 1:
            raise ConfigError(
                f"the addition encoder makes one parity query (r=1), got r={r}"
            )

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return x.sum(dim=1, keepdim=True)  # (B, 1, *in)

    def encode_numpy(self, x: np.ndarray) -> np.ndarray:
        return x.sum(axis=1, keepdims=True)
