"""The training-free rational-interpolation code (Berrut interpolation).

After ApproxIFER (Soleymani, Ali, Jahani-Nezhad, Maddah-Ali, Avestimehr,
"ApproxIFER: A Model-Agnostic Approach to Resilient and Robust Prediction
Serving Systems", AAAI 2022): place the k data queries at points alpha_i on
the real line and join them by Berrut's rational interpolant

    u(z) = sum_i w_i x_i / (z - alpha_i)  /  sum_i w_i / (z - alpha_i),
    w_i = (-1)^i (points sorted),

which has no poles on the real line and passes through every x_i. The r
parity queries are u evaluated at r extra points beta_j, and the "parity
model" is F itself: no training, any model, even a black box. The decoder
interpolates the available outputs F(x_i) and F(u(beta_j)) the same way and
evaluates that interpolant at the alpha_i whose outputs are missing.

Our variant is systematic: ApproxIFER codes all N = k + r queries, whereas
here the k data instances run F on the queries themselves (u(alpha_i) = x_i)
so that available predictions are exact. The N points are the N Chebyshev
points of the first kind; the r parity points sit evenly among them.

Known limits: the code is exact only when F(u(z)) is itself a Berrut
interpolant in z, which no classifier is; parity queries are blends of
nearby images, and F's output on a blend is a poor stand-in for the blend of
its outputs, so degraded accuracy drops quickly with k (docs/benchmarks.md).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from learncc.codes.linear import PatternDecoder, WeightedSumEncoder


def berrut_points(k: int, r: int) -> tuple[Tensor, Tensor]:
    """Data points ``(k,)`` and parity points ``(r,)``, float64, ascending.

    The k + r Chebyshev points of the first kind, with parity point j at
    position ``round((j + 1) * (N - 1) / (r + 1))`` so that parities are
    spread over the interval rather than bunched at one end.
    """
    n = k + r
    i = torch.arange(n, dtype=torch.float64)
    points = torch.cos((2 * i + 1) * math.pi / (2 * n)).flip(0)
    at = {round((j + 1) * (n - 1) / (r + 1)) for j in range(r)}
    # distinct positions for small N where rounding collides
    while len(at) < r:
        at.add(min(set(range(n)) - at))
    parity = torch.tensor(sorted(at))
    data = torch.tensor([p for p in range(n) if p not in at])
    return points[data], points[parity]


def berrut_matrix(nodes: Tensor, at: Tensor) -> Tensor:
    """Berrut basis weights ``(len(at), len(nodes))``, float64.

    Row m holds the weights that evaluate the interpolant through ``nodes``
    at ``at[m]``; each row sums to 1. Nodes need not be sorted; an
    evaluation point equal to a node gets that node's value exactly.
    """
    nodes, at = nodes.to(torch.float64), at.to(torch.float64)
    order = nodes.argsort()
    signs = torch.empty(len(nodes), dtype=torch.float64)
    signs[order] = (-1.0) ** torch.arange(len(nodes), dtype=torch.float64)
    diff = at.unsqueeze(1) - nodes.unsqueeze(0)  # (M, n)
    exact = diff == 0
    terms = signs / torch.where(exact, torch.ones_like(diff), diff)
    weights = terms / terms.sum(dim=1, keepdim=True)
    hit = exact.any(dim=1)
    return torch.where(hit.unsqueeze(1), exact.to(weights), weights)


class BerrutEncoder(WeightedSumEncoder):
    """Parity query j = Berrut interpolant of the k queries at ``beta_j``.

    Works for any input shape, k >= 2 and r >= 1; the weights of each parity
    query sum to 1, so parity queries stay in the data's value range.
    """

    @staticmethod
    def code_weights(k: int, r: int) -> Tensor:
        alpha, beta = berrut_points(k, r)
        return berrut_matrix(alpha, beta)


class BerrutDecoder(PatternDecoder):
    """Rebuilds lost data outputs by Berrut interpolation through the
    available data and parity outputs, evaluated at the lost data points.

    The parity models are F itself; ``parity_target`` (the Berrut blend of
    F's outputs at ``beta_j``) is what a parity model would have to learn if
    one were trained for this code. Tolerates any r unavailable slots.
    """

    def __init__(self, *, k: int, r: int) -> None:
        super().__init__(k=k, r=r)
        alpha, beta = berrut_points(k, r)
        self._points = torch.cat([alpha, beta])  # slot order: data, then parity
        self.register_buffer("weights", berrut_matrix(alpha, beta), persistent=False)

    def parity_target(self, data_out: Tensor) -> Tensor:
        return torch.einsum("jk,bk...->bj...", self.weights.to(data_out), data_out)

    def decode_matrix(self, pattern: tuple[bool, ...]) -> Tensor:
        k = self.k
        flags = torch.tensor(pattern)
        kept = flags.nonzero().squeeze(1)
        lost = (~flags[:k]).nonzero().squeeze(1)
        m = torch.zeros(k, k + self.r, dtype=torch.float64)
        m[kept[kept < k], kept[kept < k]] = 1.0
        if len(lost):
            weights = berrut_matrix(self._points[kept], self._points[lost])
            m[lost.unsqueeze(1), kept.unsqueeze(0)] = weights
        return m
