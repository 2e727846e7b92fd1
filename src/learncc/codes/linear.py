"""The exact linear code: a real-valued systematic MDS code for any k and r.

Parity query j is ``sum_i G[j, i] * x_i`` and parity model j is trained to
output ``sum_i G[j, i] * F(x_i)``. Every row of G is positive and sums to 1,
so parity queries are convex blends of the k queries (in the data's value
range) and the code is exact for any affine F, biases included: with F a
linear layer (logistic-regression logits) F itself is a perfect parity
model, and the decoder recovers every pattern of up to r lost slots (data or
parity) exactly, up to float rounding. That makes this code the correctness
oracle of the decode path; with learned parity models it is ParM's addition
code (r = 1, scaled by 1/k) and its generalisation to r >= 2.

The rows: for r = 1 the mean (1/k each), which is the best-conditioned
single row. For r >= 2, the rows of a Cauchy matrix ``1 / (a_j - b_i)``
with b_i the k Chebyshev nodes in (-1, 1) and a_j = -1.25, 1.25, -2.5, 2.5,
... outside that interval, each row scaled to sum 1. Every square submatrix
of a Cauchy matrix is nonsingular, and scaling rows keeps it so, which is
what decoding needs when parity outputs are lost too (a Vandermonde matrix
only guarantees full r x r blocks, and Chebyshev-Vandermonde rows even have
zero entries). Conditioning is the weak spot of any real-valued code: two
lost outputs at adjacent nodes make a nearly singular 2 x 2 system, and the
decoder amplifies a learned parity model's error by up to
``max ||pinv(G[P, E])||``: about 5 at k = 2, 22 at k = 5 and 120 at k = 10
for r = 2 (``worst_amplification``). Placing a_j symmetrically on both sides
of the nodes measured 5-8 times better at k = 10 than one-sided placements.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from learncc.codes.base import Decoder, Encoder, availability
from learncc.errors import ConfigError


def chebyshev_nodes(n: int) -> Tensor:
    """The n Chebyshev points of the first kind in (-1, 1), ascending, float64."""
    i = torch.arange(n, dtype=torch.float64)
    return torch.cos((2 * i + 1) * torch.pi / (2 * n)).flip(0)


def generator_matrix(k: int, r: int) -> Tensor:
    """Parity rows ``(r, k)`` of the systematic code, float64; rows sum to 1."""
    if r == 1:
        return torch.full((1, k), 1.0 / k, dtype=torch.float64)
    j = torch.arange(r, dtype=torch.float64)
    poles = 1.25 * (1 + torch.div(j, 2, rounding_mode="floor")) * (2 * (j % 2) - 1)
    cauchy = 1.0 / (poles.unsqueeze(1) - chebyshev_nodes(k).unsqueeze(0))  # (r, k)
    return cauchy / cauchy.sum(dim=1, keepdim=True)


def worst_amplification(k: int, r: int) -> float:
    """Largest factor by which decoding can amplify parity-output errors:
    ``max ||pinv(G[P, E])||_2`` over lost data sets E and available parity
    sets P with ``|P| >= |E|``."""
    g, worst = generator_matrix(k, r), 0.0
    for e in range(1, r + 1):
        for lost in itertools.combinations(range(k), e):
            for p in range(e, r + 1):
                for rows in itertools.combinations(range(r), p):
                    block = g[list(rows)][:, list(lost)]
                    worst = max(worst, float(1 / torch.linalg.svdvals(block)[-1]))
    return worst


class WeightedSumEncoder(Encoder):
    """Parity query j = ``sum_i W[j, i] x_i`` for a fixed ``W`` of shape
    ``(r, k)`` that a subclass gives as ``code_weights(k, r)`` (float64)."""

    def __init__(self, *, k: int, r: int, input_shape: tuple[int, ...]) -> None:
        super().__init__(k=k, r=r, input_shape=input_shape)
        # float64, cast per call; not saved: it is a function of (k, r) alone
        self.register_buffer("weights", self.code_weights(k, r), persistent=False)

    @staticmethod
    def code_weights(k: int, r: int) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return torch.einsum("jk,bk...->bj...", self.weights.to(x.dtype), x)

    def encode_numpy(self, x: np.ndarray) -> np.ndarray:
        weights = self.weights.numpy().astype(x.dtype)
        return np.moveaxis(np.tensordot(weights, x, axes=([1], [1])), 0, 1)


class LinearEncoder(WeightedSumEncoder):
    """Parity query j = ``sum_i G[j, i] x_i`` with ``G = generator_matrix(k, r)``.

    Works for any input shape, k >= 2 and r >= 1. For r = 1 it is the
    addition encoder scaled by 1/k (the mean of the queries).
    """

    @staticmethod
    def code_weights(k: int, r: int) -> Tensor:
        return generator_matrix(k, r)


class PatternDecoder(Decoder):
    """A decoder that is a linear map of the available outputs for each
    availability pattern: ``rebuilt = M(pattern) @ [data_out; parity_out]``.

    Subclasses give ``decode_matrix(pattern)``, a float64 ``(k, k + r)``
    matrix whose columns for unavailable slots are zero. Matrices are cached
    per pattern, so serving pays the solve once per pattern, not per group.
    Available data slots are always passed through unchanged, and values in
    unavailable slots are never read (they may be NaN placeholders).
    """

    def __init__(self, *, k: int, r: int) -> None:
        super().__init__(k=k, r=r)
        self._cache: dict[tuple[bool, ...], Tensor] = {}
        self._typed: dict[tuple[Any, ...], tuple[Tensor, Tensor]] = {}

    def decode_matrix(self, pattern: tuple[bool, ...]) -> Tensor:
        raise NotImplementedError

    def can_decode(self, available: Sequence[bool]) -> bool:
        """True when at most r of the k + r slots are unavailable."""
        flags = [bool(a) for a in available]
        if len(flags) != self.k + self.r:
            raise ConfigError(
                f"need {self.k + self.r} availability flags (k + r), got {len(flags)}"
            )
        return flags.count(False) <= self.r

    def matrix(self, pattern: tuple[bool, ...]) -> Tensor:
        """The cached float64 decode matrix ``(k, k + r)`` for one pattern.

        Raises:
            ConfigError: the pattern loses more than r slots.
        """
        if pattern not in self._cache:
            if not self.can_decode(pattern):
                raise ConfigError(
                    f"{type(self).__name__} cannot decode availability {pattern}: "
                    f"more than r={self.r} of the k + r slots are unavailable"
                )
            self._cache[pattern] = self.decode_matrix(pattern)
        return self._cache[pattern]

    def forward(
        self, data_out: Tensor, parity_out: Tensor, available: Tensor
    ) -> Tensor:
        batch, k = data_out.shape[0], self.k
        both = torch.cat([data_out, parity_out], dim=1)  # (B, k + r, *out)
        if not isinstance(available, Tensor) or available.dim() == 1:
            # serving's path, one pattern for the batch: read only available
            # slots, so NaN placeholders never meet a zero weight (0 * NaN);
            # identity rows pass available data through bit-exactly
            pattern = tuple(bool(a) for a in available)
            kept, m = self._kept_matrix(pattern, both.dtype, both.device)
            return torch.einsum("ij,bj...->bi...", m, both.index_select(1, kept))
        mask = availability(available, batch, k + self.r).to(data_out.device)
        present = mask.reshape(*mask.shape, *([1] * (both.dim() - 2)))
        both = torch.where(present, both, torch.zeros_like(both))
        patterns, inverse = torch.unique(mask, dim=0, return_inverse=True)
        mats = torch.stack(
            [self.matrix(tuple(bool(a) for a in p.tolist())) for p in patterns]
        ).to(both)  # (U, k, k + r)
        rebuilt = torch.einsum("bij,bj...->bi...", mats[inverse], both)
        return torch.where(present[:, :k], data_out, rebuilt)  # (B, k, *out)

    def decode_numpy(
        self, data_out: np.ndarray, parity_out: np.ndarray, available: Sequence[bool]
    ) -> np.ndarray:
        pattern = tuple(bool(a) for a in available)
        kept, m = self._kept_matrix(pattern, torch.float32, torch.device("cpu"))
        both = np.concatenate([data_out, parity_out])  # (k + r, *out)
        return np.tensordot(m.numpy(), both[kept.numpy()], axes=([1], [0]))

    def _kept_matrix(
        self, pattern: tuple[bool, ...], dtype: torch.dtype, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        key = (pattern, dtype, device)
        if key not in self._typed:
            if len(pattern) != self.k + self.r:
                raise ConfigError(
                    f"availability needs {self.k + self.r} flags (k + r), "
                    f"got {len(pattern)}"
                )
            kept = torch.tensor([i for i, a in enumerate(pattern) if a], device=device)
            m = self.matrix(pattern)[:, kept.cpu()].to(dtype=dtype, device=device)
            self._typed[key] = (kept, m)
        return self._typed[key]


class LinearDecoder(PatternDecoder):
    """Inverts the linear code: lost data outputs solve the small system
    ``G[P, E] y_E = p_P - G[P, A] y_A`` over the available parity slots P,
    by least squares when more parities than losses are available.

    Exact for a linear F with F_P = F; with learned parity models, the error
    of the parity outputs is amplified by ``||pinv(G[P, E])||`` (see the
    module docstring).
    """

    def __init__(self, *, k: int, r: int) -> None:
        super().__init__(k=k, r=r)
        self.register_buffer("weights", generator_matrix(k, r), persistent=False)
        self._g64 = generator_matrix(k, r)

    def parity_target(self, data_out: Tensor) -> Tensor:
        return torch.einsum("jk,bk...->bj...", self.weights.to(data_out), data_out)

    def decode_matrix(self, pattern: tuple[bool, ...]) -> Tensor:
        k = self.k
        data, parity = torch.tensor(pattern[:k]), torch.tensor(pattern[k:])
        kept = data.nonzero().squeeze(1)
        lost = (~data).nonzero().squeeze(1)
        rows = parity.nonzero().squeeze(1)
        m = torch.zeros(k, k + self.r, dtype=torch.float64)
        m[kept, kept] = 1.0
        if len(lost) == 0:
            return m
        solve = torch.linalg.pinv(self._g64[rows][:, lost])  # (E, P)
        m[lost.unsqueeze(1), (k + rows).unsqueeze(0)] = solve
        m[lost.unsqueeze(1), kept.unsqueeze(0)] = -solve @ self._g64[rows][:, kept]
        return m
