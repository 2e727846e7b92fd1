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


@pytest.mark.parametrize(
    ("k", "shape"), [(2, (1, 8, 8)), (4, (1, 28, 28)), (10, (1, 28, 28))]
)
def test_tile_sum_cuts_the_concatenation_encoders_tiles(
    k: int, shape: tuple[int, ...]
) -> None:
    from learncc.codes import CodeConfig, make_code

    model = build_model("tile-sum", input_shape=shape, num_classes=3, options={"k": k})
    encoder, _ = make_code(CodeConfig(k=k), shape)
    group = torch.rand(2, k, *shape)  # (B, k, *in)
    tiles = model.cut(encoder(group)[:, 0])  # (B, k, C, h, w)
    for i in range(k):
        alone = torch.zeros_like(group)
        alone[:, i] = group[:, i]
        only_i = model.cut(encoder(alone)[:, 0])
        # tile i holds image i and nothing else; every other tile is empty
        torch.testing.assert_close(only_i[:, i], tiles[:, i])
        assert only_i[:, [j for j in range(k) if j != i]].abs().max() == 0
    with torch.no_grad():
        query = encoder(group)[:, 0]
        torch.testing.assert_close(model(query), model.per_tile(query).sum(dim=1))


def test_tile_sum_starts_as_f_on_each_upsampled_tile() -> None:
    from learncc.models import TileSum, mlp

    torch.manual_seed(0)
    base = mlp(input_shape=(1, 28, 28), num_classes=10)
    model = TileSum(input_shape=(1, 28, 28), num_classes=10, k=5)
    model.init_from_mlp(base)
    query = torch.rand(3, 1, 28, 28)
    tiles = model.cut(query)  # (3, 5, 1, 14, 10)
    with torch.no_grad():
        want = sum(
            base(
                nn.functional.interpolate(
                    tiles[:, i], size=(28, 28), mode="bilinear", align_corners=False
                )
            )
            for i in range(5)
        )
        torch.testing.assert_close(model(query), want, rtol=1e-4, atol=1e-4)
    # tile network the size of F's hidden layers, on 14x10 tiles
    assert model.multiply_adds() == 5 * (140 * 200 + 200 * 100 + 100 * 10)


def test_tile_sum_rejects_what_it_cannot_start_from() -> None:
    from learncc.models import TileSum, mlp

    model = TileSum(input_shape=(1, 28, 28), num_classes=10, k=4)
    with pytest.raises(ConfigError, match=r"widths \[200, 100, 10\]; got \[64, 10\]"):
        model.init_from_mlp(mlp(input_shape=(1, 28, 28), num_classes=10, hidden=(64,)))
    with pytest.raises(ConfigError, match="needs image inputs"):
        build_model("tile-sum", input_shape=(30,), num_classes=2, options={"k": 2})
    with pytest.raises(ConfigError, match="k >= 2"):
        build_model("tile-sum", input_shape=(1, 8, 8), num_classes=2, options={"k": 1})
