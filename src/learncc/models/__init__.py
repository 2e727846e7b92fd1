"""Model registry: F and parity models are plain ``nn.Module``s.

A model is named by a registry key (``mlp``, ``lenet5``, ``resnet18``) or by
an import path ``package.module:factory`` for a user's own module. Every
factory takes ``input_shape`` and ``num_classes`` (the output width) as
keyword arguments plus its own options; bundles store the name and options,
never pickled objects.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from learncc.errors import ConfigError, UnknownNameError
from learncc.models.resnet import resnet18
from learncc.models.tiled import TileSum, tile_sum

Factory = Callable[..., nn.Module]


def mlp(
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    hidden: tuple[int, ...] = (200, 100),
) -> nn.Module:
    """The fully connected network of the ParM MNIST experiments (784-200-100-10)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def lenet5(*, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """LeNet-5 (LeCun et al. 1998) with ReLU and max pooling; any image size >= 8."""
    channels, height, width = _image_shape(input_shape, "lenet5")
    if min(height, width) < 8:
        raise ConfigError(f"lenet5 needs images of at least 8x8, got {height}x{width}")
    features = nn.Sequential(
        nn.Conv2d(channels, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )
    flat = 16 * (height // 4) * (width // 4)
    return nn.Sequential(
        features,
        nn.Flatten(),
        nn.Linear(flat, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )


def _image_shape(input_shape: tuple[int, ...], name: str) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ConfigError(
            f"{name} needs image inputs (C, H, W), got {tuple(input_shape)}"
        )
    c, h, w = (int(s) for s in input_shape)
    return c, h, w


MODELS: dict[str, Factory] = {
    "mlp": mlp,
    "lenet5": lenet5,
    "resnet18": resnet18,
    "tile-sum": tile_sum,  # a parity model for the concatenation code
}


class Normalized(nn.Module):
    """Applies ``(x - mean) / std`` before the wrapped model.

    Normalization lives inside the served module so that clients and the
    encoder work on raw [0, 1] pixels, the same values the parity model was
    trained on.
    """

    def __init__(self, model: nn.Module, mean: float, std: float) -> None:
        super().__init__()
        self.model, self.mean, self.std = model, float(mean), float(std)

    def forward(self, x: Tensor) -> Tensor:
        return self.model((x - self.mean) / self.std)


def resolve_factory(name: str) -> Factory:
    """Look up a registry name or import ``package.module:factory``."""
    if name in MODELS:
        return MODELS[name]
    if ":" not in name:
        raise UnknownNameError("model", name, [*MODELS, "package.module:factory"])
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"cannot import model module {module_name!r}: {e}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"{module_name!r} has no callable {attr!r} to build a model")
    return factory


def build_model(
    name: str,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    options: dict[str, Any] | None = None,
) -> nn.Module:
    """Build a model by registry name or import path.

    Raises:
        UnknownNameError: neither a registered name nor an import path.
        ConfigError: the factory rejects the shape or options, or returns
            something that is not an ``nn.Module``.
    """
    factory = resolve_factory(name)
    try:
        model = factory(
            input_shape=tuple(input_shape), num_classes=num_classes, **(options or {})
        )
    except TypeError as e:
        raise ConfigError(
            f"model {name!r} rejected its options {options or {}}: {e}"
        ) from None
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model factory {name!r} returned {type(model).__name__}, not nn.Module"
        )
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 1024) -> Tensor:
    """F's outputs on ``x`` in eval mode, in batches."""
    model.eval()
    return torch.cat(
        [model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    )


__all__ = [
    "MODELS",
    "Normalized",
    "TileSum",
    "build_model",
    "count_parameters",
    "lenet5",
    "mlp",
    "predict",
    "tile_sum",
]
