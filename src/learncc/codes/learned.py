"""Learned encoders and decoders, trained through a frozen F.

After Kosaian, Rashmi and Venkataraman, "Learning-Based Coded Computation"
(IEEE JSAIT 2020): instead of designing the parity query and the inverse by
hand, a neural encoder maps the k queries to r parity queries and a neural
decoder maps the available outputs to the lost ones. Training
(``train_parity(..., loss="decode-*")``) erases random data slots, decodes,
and back-propagates the loss through the decoder, the parity model and the
encoder. The parity model may be F itself, frozen (train the code alone), or
a copy of F trained jointly with the code.

Gradients must flow through the parity model, so a learned encoder cannot be
trained against a black-box F (one flagged ``differentiable = False``, see
``learncc.codes.base.is_differentiable``); a learned decoder can, because it
only reads outputs.

Both encoders add their learned correction to a fixed linear blend of the
inputs (the rows of ``generator_matrix(k, r)``, normalised to unit L1 norm),
so an untrained encoder already makes queries in the data's value range.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from learncc.codes.base import Decoder, Encoder, availability
from learncc.codes.linear import generator_matrix
from learncc.errors import ConfigError


def _hidden(hidden: int | Sequence[int], what: str) -> tuple[int, ...]:
    sizes = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    if not sizes or any(not isinstance(h, int) or h < 1 for h in sizes):
        raise ConfigError(f"{what} must be positive integers, got {hidden!r}")
    return sizes


def _mlp(width_in: int, hidden: tuple[int, ...], width_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(width_in, h), nn.ReLU()]
        width_in = h
    layers.append(nn.Linear(width_in, width_out))
    return nn.Sequential(*layers)


def _blend(k: int, r: int) -> Tensor:
    g = generator_matrix(k, r)
    return (g / g.abs().sum(dim=1, keepdim=True)).float()  # (r, k), unit L1 rows


class MLPEncoder(Encoder):
    """Flattens the k queries, runs an MLP, and adds the result to a fixed
    linear blend: parity = blend(x) + MLP(x).view(r, *in).

    Works for any input shape. Parameters grow as ``k * prod(in) * hidden``:
    about 2 M for k = 10 MNIST digits and the default hidden=(256,).

    Args:
        hidden: hidden layer widths.
    """

    def __init__(
        self,
        *,
        k: int,
        r: int,
        input_shape: tuple[int, ...],
        hidden: int | Sequence[int] = 256,
    ) -> None:
        super().__init__(k=k, r=r, input_shape=input_shape)
        size = math.prod(self.input_shape)
        self.net = _mlp(k * size, _hidden(hidden, "encoder_hidden"), r * size)
        self.register_buffer("blend", _blend(k, r), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        base = torch.einsum("jk,bk...->bj...", self.blend.to(x.dtype), x)  # (B, r, *in)
        return base + self.net(x.flatten(1)).view_as(base)


class ConvEncoder(Encoder):
    """Stacks the k images along channels and runs 3x3 convolutions with
    dilations 1, 2, 4, ... until every output pixel sees the whole image
    (receptive field >= 2 * max(H, W) - 1); the result corrects a fixed
    linear blend as in ``MLPEncoder``.

    Needs image inputs (C, H, W). Parameters do not grow with the image
    size, only with k and ``channels``; compute grows with H * W.

    Args:
        channels: feature maps of the hidden convolutions.
    """

    def __init__(
        self, *, k: int, r: int, input_shape: tuple[int, ...], channels: int = 32
    ) -> None:
        super().__init__(k=k, r=r, input_shape=input_shape)
        if len(self.input_shape) != 3:
            raise ConfigError(
                "the conv encoder needs image inputs (C, H, W), got shape "
                f"{self.input_shape}; use the mlp encoder for vectors"
            )
        if not isinstance(channels, int) or channels < 1:
            raise ConfigError(
                f"encoder_channels must be a positive integer, got {channels!r}"
            )
        c, h, w = self.input_shape
        layers: list[nn.Module] = []
        width, dilation, field = k * c, 1, 1
        while field < 2 * max(h, w) - 1:
            layers += [
                nn.Conv2d(width, channels, 3, padding=dilation, dilation=dilation),
                nn.ReLU(),
            ]
            width, field, dilation = channels, field + 2 * dilation, dilation * 2
        layers.append(nn.Conv2d(width, r * c, 1))
        self.net = nn.Sequential(*layers)
        self.receptive_field = field
        self.register_buffer("blend", _blend(k, r), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        base = torch.einsum(
            "jk,bk...->bj...", self.blend.to(x.dtype), x
        )  # (B, r, C, H, W)
        return base + self.net(x.flatten(1, 2)).view_as(base)


class MLPDecoder(Decoder):
    """An MLP from the k + r outputs (unavailable ones zeroed) and the
    availability mask to the k data outputs; available data outputs are
    passed through unchanged.

    Outputs must be vectors ``(B, slots, outputs)``. The decoder never reads
    the values in unavailable slots, so it cannot learn to copy them.
    It has no ``parity_target``: train it with a ``decode-*`` loss.

    Args:
        outputs: width of one output of F (e.g. the number of classes);
            required, because the decoder is built before F is seen.
        hidden: hidden layer widths.
    """

    def __init__(
        self,
        *,
        k: int,
        r: int,
        outputs: int | None = None,
        hidden: int | Sequence[int] = 256,
    ) -> None:
        super().__init__(k=k, r=r)
        if not isinstance(outputs, int) or outputs < 1:
            raise ConfigError(
                "the mlp decoder needs decoder_outputs, the width of one output of F "
                f"(e.g. the number of classes), as a positive integer; got {outputs!r}"
            )
        self.outputs = outputs
        slots = k + r
        self.net = _mlp(
            slots * (outputs + 1), _hidden(hidden, "decoder_hidden"), k * outputs
        )

    def parity_target(self, data_out: Tensor) -> Tensor:
        raise ConfigError(
            "the mlp decoder defines no parity target; train it with a decode-* loss "
            "(decode-mse, decode-kl or decode-ce)"
        )

    def can_decode(self, available: Sequence[bool]) -> bool:
        """True when at most r of the k + r slots are unavailable."""
        flags = [bool(a) for a in available]
        if len(flags) != self.k + self.r:
            raise ConfigError(
                f"need {self.k + self.r} availability flags (k + r), got {len(flags)}"
            )
        return flags.count(False) <= self.r

    def forward(
        self, data_out: Tensor, parity_out: Tensor, available: Tensor
    ) -> Tensor:
        batch, k = data_out.shape[0], self.k
        if data_out.dim() != 3 or data_out.shape[2] != self.outputs:
            raise ConfigError(
                f"the mlp decoder expects outputs (B, {k}, {self.outputs}), "
                f"got {tuple(data_out.shape)}"
            )
        mask = availability(available, batch, k + self.r).to(data_out.device)
        both = torch.cat([data_out, parity_out], dim=1)  # (B, k + r, out)
        present = mask.unsqueeze(-1)  # (B, k + r, 1)
        both = torch.where(present, both, torch.zeros_like(both))
        features = torch.cat([both, present.to(both.dtype)], dim=2).flatten(1)
        rebuilt = self.net(features).view(batch, k, self.outputs)  # (B, k, out)
        return torch.where(present[:, :k], data_out, rebuilt)
