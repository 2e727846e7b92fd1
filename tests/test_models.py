from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn

from learncc.errors import ConfigError, UnknownNameError
from learncc.models import build_model, count_parameters


def test_mlp_is_the_parm_784_200_100_10_network() -> None:
    model = build_model("mlp", input_shape=(1, 28, 28), num_classes=10)
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [
        (784, 200),
        (200, 100),
        (100, 10),
    ]
    assert count_parameters(model) == 784 * 200 + 200 + 200 * 100 + 100 + 100 * 10 + 10


@pytest.mark.parametrize(
    ("name", "shape"),
    [("lenet5", (1, 28, 28)), ("lenet5", (1, 8, 8)), ("resnet18", (3, 32, 32))],
)
def test_convnets_map_images_to_logits(name: str, shape: tuple[int, ...]) -> None:
    options = {"width": 8} if name == "resnet18" else None
    model = build_model(name, input_shape=shape, num_classes=7, options=options).eval()
    assert model(torch.zeros(2, *shape)).shape == (2, 7)


def test_full_resnet18_has_the_original_parameter_count() -> None:
    model = build_model("resnet18", input_shape=(3, 32, 32), num_classes=10)
    assert count_parameters(model) == 11_173_962  # CIFAR ResNet-18, 64 base width


def test_user_factory_by_import_path(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("user_models")

    def tiny(
        *, input_shape: tuple[int, ...], num_classes: int, hidden: int = 4
    ) -> nn.Module:
        return nn.Sequential(
            nn.Flatten(), nn.Linear(64, hidden), nn.Linear(hidden, num_classes)
        )

    module.tiny = tiny  # type: ignore[attr-defined]
    module.not_a_model = lambda **kw: "nope"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "user_models", module)
    model = build_model(
        "user_models:tiny", input_shape=(1, 8, 8), num_classes=3, options={"hidden": 5}
    )
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 3)
    with pytest.raises(ConfigError, match="returned str, not nn.Module"):
        build_model("user_models:not_a_model", input_shape=(1, 8, 8), num_classes=3)
    with pytest.raises(ConfigError, match="has no callable 'missing'"):
        build_model("user_models:missing", input_shape=(1, 8, 8), num_classes=3)
    with pytest.raises(ConfigError, match="rejected its options"):
        build_model(
            "user_models:tiny", input_shape=(1, 8, 8), num_classes=3, options={"bad": 1}
        )


def test_unknown_model_and_bad_shapes_are_clear() -> None:
    with pytest.raises(
        UnknownNameError, match="unknown model 'vgg'; choose one of: lenet5, mlp"
    ):
        build_model("vgg", input_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(ConfigError, match="cannot import model module 'no_such_pkg'"):
        build_model("no_such_pkg:f", input_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(ConfigError, match="lenet5 needs image inputs"):
        build_model("lenet5", input_shape=(64,), num_classes=10)
