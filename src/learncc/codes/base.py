"""The Encoder/Decoder interface shared by training, evaluation and serving.

A coding group holds k data queries. The encoder maps them to r parity
queries; F runs on each data query and a parity model F_P on each parity
query. The decoder rebuilds unavailable data outputs from the available data
outputs and the parity outputs. Both are ``nn.Module`` so that learned codes
carry parameters and take gradients, and so that the very same object is used
by the trainer and by the serving frontend: the frontend must encode exactly
what the parity model was trained on.

Shapes: ``B`` is the number of coding groups in a batch, ``k`` the data
queries per group, ``r`` the parity queries per group, ``*in`` the shape of
one query (``(C, H, W)`` for images) and ``*out`` the shape of one output.

Black-box models: an ``nn.Module`` that wraps a model gradients cannot flow
through (a remote service, a compiled engine, a non-torch library) sets the
class or instance attribute ``differentiable = False``. Modules without the
attribute count as differentiable. ``is_differentiable`` checks a module and
all its submodules; training refuses to back-propagate through a module that
fails it (a learned encoder needs gradients through the parity model).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from learncc.errors import ConfigError


class Encoder(nn.Module):
    """Maps a coding group's k queries to its r parity queries.

    Args:
        k: data queries per coding group (>= 2).
        r: parity queries per coding group (>= 1).
        input_shape: shape of one query, without the batch dimension.
    """

    def __init__(self, *, k: int, r: int, input_shape: Sequence[int]) -> None:
        super().__init__()
        check_kr(k, r)
        self.k, self.r = k, r
        self.input_shape = tuple(int(s) for s in input_shape)

    def forward(self, x: Tensor) -> Tensor:
        """Encode ``x`` of shape ``(B, k, *in)`` into ``(B, r, *in)``."""
        raise NotImplementedError

    def encode_numpy(self, x: np.ndarray) -> np.ndarray:
        """``forward`` on float32 NumPy groups ``(B, k, *in)``, for the serving
        frontend, which encodes one small group at a time. Codes that are
        fixed linear maps override it with the same matrices applied in
        NumPy (several times cheaper per call than torch); tests hold each
        override equal to ``forward``."""
        with torch.no_grad():
            return self(torch.from_numpy(x)).numpy()

    def check_input(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != (self.k, *self.input_shape):
            raise ConfigError(
                f"{type(self).__name__} expects groups of shape "
                f"(B, {self.k}, {', '.join(map(str, self.input_shape))}), "
                f"got {tuple(x.shape)}"
            )


class Decoder(nn.Module):
    """Rebuilds unavailable data outputs from the rest of the coding group.

    Subclasses define two things: ``parity_target``, what the parity models
    are trained to output given F's outputs on the k data queries, and
    ``forward``, the inverse used when some data outputs are unavailable.
    """

    def __init__(self, *, k: int, r: int) -> None:
        super().__init__()
        check_kr(k, r)
        self.k, self.r = k, r

    def parity_target(self, data_out: Tensor) -> Tensor:
        """Map F's outputs ``(B, k, *out)`` to the parity models' targets
        ``(B, r, *out)``."""
        raise NotImplementedError

    def can_decode(self, available: Sequence[bool]) -> bool:
        """Whether the unavailable data outputs can be rebuilt.

        Args:
            available: k + r flags, data slots first, then parity slots.

        The serving frontend asks only once k of the k + r outputs are
        available, since every code here needs that many; a code that could
        rebuild from fewer would be decoded later than it could be.
        """
        raise NotImplementedError

    def decode_numpy(
        self, data_out: np.ndarray, parity_out: np.ndarray, available: Sequence[bool]
    ) -> np.ndarray:
        """``forward`` for one group in NumPy: ``(k, *out)``, ``(r, *out)`` and
        k + r flags in, ``(k, *out)`` out. Overridden by fixed linear decoders
        (see ``Encoder.encode_numpy``)."""
        return decode_numpy_default(self, data_out, parity_out, available)

    def decode_missing(
        self,
        data_out: Sequence[np.ndarray | None],
        parity_out: Sequence[np.ndarray | None],
    ) -> dict[int, np.ndarray]:
        """The serving frontend's decode: rebuild each unavailable data output.

        Args:
            data_out: k outputs of shape ``(*out)``, ``None`` where unavailable.
            parity_out: r parity outputs of shape ``(*out)``, ``None`` where
                unavailable.

        Returns:
            A fresh ``(*out)`` array for each ``None`` slot of ``data_out``,
            keyed by slot. Call it only when ``can_decode`` holds for the
            same availability; otherwise the values are meaningless.

        The default stacks the outputs (NaN in the gaps) and calls
        ``decode_numpy``; decoders with a cheaper direct form override it
        (tests hold each override equal to ``forward``).
        """
        shape = next(o.shape for o in (*data_out, *parity_out) if o is not None)
        nan = np.full(shape, np.nan, dtype=np.float32)
        available = [o is not None for o in data_out] + [
            p is not None for p in parity_out
        ]
        rebuilt = self.decode_numpy(
            np.stack([nan if o is None else o for o in data_out]),
            np.stack([nan if p is None else p for p in parity_out]),
            available,
        )  # (k, *out)
        return {i: rebuilt[i].copy() for i, o in enumerate(data_out) if o is None}

    def forward(
        self, data_out: Tensor, parity_out: Tensor, available: Tensor
    ) -> Tensor:
        """Fill in the unavailable data outputs.

        Args:
            data_out: ``(B, k, *out)``; values in unavailable slots are ignored.
            parity_out: ``(B, r, *out)``; values in unavailable slots are ignored.
            available: bool ``(k + r,)`` or ``(B, k + r)``.

        Returns:
            ``(B, k, *out)`` with available data slots passed through unchanged.
        """
        raise NotImplementedError


def decode_numpy_default(
    decoder: Decoder,
    data_out: np.ndarray,
    parity_out: np.ndarray,
    available: Sequence[bool],
) -> np.ndarray:
    with torch.no_grad():
        return decoder(
            torch.from_numpy(data_out)[None],
            torch.from_numpy(parity_out)[None],
            torch.tensor(list(available), dtype=torch.bool),
        )[0].numpy()


def is_differentiable(module: nn.Module) -> bool:
    """Whether gradients can flow through ``module``: False when it or any
    submodule sets ``differentiable = False`` (black-box wrappers do)."""
    return all(
        getattr(m, "differentiable", True) is not False for m in module.modules()
    )


def check_kr(k: int, r: int) -> None:
    if not isinstance(k, int) or k < 2:
        raise ConfigError(
            f"k must be an integer >= 2 (queries per coding group), got {k!r}"
        )
    if not isinstance(r, int) or r < 1:
        raise ConfigError(
            f"r must be an integer >= 1 (parity queries per group), got {r!r}"
        )


def availability(available: Tensor | Sequence[bool], batch: int, width: int) -> Tensor:
    """Broadcast availability flags to a bool tensor of shape ``(B, width)``."""
    mask = torch.as_tensor(available, dtype=torch.bool)
    if mask.shape[-1] != width:
        raise ConfigError(
            f"availability needs {width} flags (k + r), got {mask.shape[-1]}"
        )
    return mask.expand(batch, width) if mask.dim() == 1 else mask
