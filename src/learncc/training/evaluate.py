"""Degraded-mode evaluation of a code.

For every coding group of the test split and every erasure pattern (each
single data slot by default; up to ``max_erasures`` slots at once for codes
with r >= 2), the unavailable outputs are rebuilt and scored two ways:
against the true label ("degraded") and against F's own prediction
("reconstruction"). A client sees F's accuracy on available predictions and
the degraded accuracy on reconstructed ones, so with a fraction f of
predictions unavailable the overall accuracy is (1 - f) * base + f * degraded.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from learncc.codes import Decoder, Encoder
from learncc.data import Split
from learncc.models import predict

UNAVAILABILITY = (0.01, 0.05, 0.1)


def make_groups(n: int, k: int, generator: torch.Generator) -> Tensor:
    """Random coding groups over ``n`` examples: ``(n // k, k)`` indices."""
    order = torch.randperm(n, generator=generator)
    return order[: n - n % k].view(-1, k)


def erasure_patterns(k: int, max_erasures: int) -> list[tuple[int, ...]]:
    return [
        combo
        for e in range(1, max_erasures + 1)
        for combo in itertools.combinations(range(k), e)
    ]


@torch.no_grad()
def parity_outputs(
    parity_models: Sequence[nn.Module], encoder: Encoder, x: Tensor
) -> Tensor:
    """Encode groups ``x`` (G, k, *in) and run parity model j on parity query j.

    Returns ``(G, r, *out)``.
    """
    queries = encoder(x)  # (G, r, *in)
    return torch.stack(
        [predict(model, queries[:, j]) for j, model in enumerate(parity_models)], dim=1
    )


def _topk_hits(scores: Tensor, target: Tensor, k: int) -> Tensor:
    k = min(k, scores.shape[-1])
    return (scores.topk(k, dim=-1).indices == target.unsqueeze(-1)).any(-1)


@torch.no_grad()
def evaluate_code(
    base: nn.Module,
    parity_models: Sequence[nn.Module],
    encoder: Encoder,
    decoder: Decoder,
    split: Split,
    *,
    rounds: int = 3,
    max_erasures: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Score degraded-mode accuracy over ``rounds`` random groupings of ``split``.

    Args:
        max_erasures: most data slots erased at once; defaults to ``decoder.r``.

    Returns:
        ``base_top1`` (also as ``available_top1``: F's accuracy when every
        prediction is available), ``base_top5``, ``degraded_top1``, ``degraded_top5``,
        ``reconstruction_top1``, and ``overall_top1_at_f<f>`` for each f in
        ``UNAVAILABILITY``.
    """
    k, r = decoder.k, decoder.r
    max_erasures = r if max_erasures is None else max_erasures
    x, y = torch.from_numpy(split.x), torch.from_numpy(split.y)
    f_out = predict(base, x)  # (N, out)
    f_pred = f_out.argmax(-1)
    gen = torch.Generator().manual_seed(seed)

    hits = {"deg1": 0, "deg5": 0, "rec1": 0}
    total = 0
    for _ in range(rounds):
        groups = make_groups(len(y), k, gen)  # (G, k)
        p_out = parity_outputs(parity_models, encoder, x[groups])  # (G, r, out)
        for pattern in erasure_patterns(k, max_erasures):
            available = torch.ones(k + r, dtype=torch.bool)
            available[list(pattern)] = False
            rebuilt = decoder(f_out[groups], p_out, available)  # (G, k, out)
            lost = groups[:, list(pattern)]  # (G, e)
            scores = rebuilt[:, list(pattern)]  # (G, e, out)
            hits["deg1"] += int(_topk_hits(scores, y[lost], 1).sum())
            hits["deg5"] += int(_topk_hits(scores, y[lost], 5).sum())
            hits["rec1"] += int(_topk_hits(scores, f_pred[lost], 1).sum())
            total += lost.numel()

    metrics = {
        "base_top1": float((f_pred == y).float().mean()),
        "available_top1": float((f_pred == y).float().mean()),
        "base_top5": float(_topk_hits(f_out, y, 5).float().mean()),
        "degraded_top1": hits["deg1"] / total,
        "degraded_top5": hits["deg5"] / total,
        "reconstruction_top1": hits["rec1"] / total,
    }
    for f, acc in overall_accuracy(
        metrics["base_top1"], metrics["degraded_top1"]
    ).items():
        metrics[f"overall_top1_at_f{f:g}"] = acc
    return metrics


def overall_accuracy(
    base_top1: float, degraded_top1: float, fractions: Sequence[float] = UNAVAILABILITY
) -> dict[float, float]:
    """Accuracy a client sees when a fraction f of predictions is reconstructed."""
    return {f: (1 - f) * base_top1 + f * degraded_top1 for f in fractions}
