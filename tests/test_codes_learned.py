"""Issue 4 codes in training, evaluation and bundles (small runs on digits)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from learncc.bundle import Bundle, build_from_spec, load_bundle, model_spec, save_bundle
from learncc.codes import CodeConfig, make_code
from learncc.data import Dataset, load_dataset
from learncc.training import TrainConfig, evaluate_code, train_classifier, train_parity


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


@pytest.fixture(scope="module")
def spec(digits: Dataset) -> dict:
    return model_spec(
        "mlp",
        {"hidden": [32]},
        digits.input_shape,
        digits.num_classes,
        digits.normalization(),
    )


@pytest.fixture(scope="module")
def base(digits: Dataset, spec: dict) -> nn.Module:
    torch.manual_seed(0)
    model, _ = train_classifier(
        build_from_spec(spec),
        digits,
        TrainConfig(epochs=8, augment=False),
        progress=False,
    )
    return model


def _cfg(epochs: int) -> TrainConfig:
    return TrainConfig(epochs=epochs, augment=False, batch_size=32)


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return copy.deepcopy(module.state_dict())


def test_learned_code_trains_through_frozen_f(digits: Dataset, base: nn.Module) -> None:
    cfg = CodeConfig(
        k=2,
        r=1,
        encoder="mlp",
        decoder="mlp",
        options={"decoder_outputs": 10, "encoder_hidden": 64},
    )
    enc, dec = make_code(cfg, digits.input_shape)
    before = evaluate_code(base, [base], enc, dec, digits.val, rounds=1)
    f_state, enc_state = _state(base), _state(enc)
    metrics = train_parity(
        base, enc, dec, [base], digits, _cfg(6), loss="decode-ce", progress=False
    )
    after = evaluate_code(base, [base], enc, dec, digits.val, rounds=1)
    assert metrics["epochs_run"] == 6
    # F is untouched and stays in eval mode; the encoder learned through it
    assert all(torch.equal(v, base.state_dict()[n]) for n, v in f_state.items())
    assert not base.training
    assert any(not torch.equal(v, enc.state_dict()[n]) for n, v in enc_state.items())
    assert after["degraded_top1"] > before["degraded_top1"] + 0.2, (before, after)


def test_joint_training_updates_the_parity_model_not_f(
    digits: Dataset, base: nn.Module, spec: dict
) -> None:
    parity = build_from_spec(spec)
    parity.load_state_dict(base.state_dict())
    f_state = _state(base)
    enc, dec = make_code(
        CodeConfig(
            k=2, encoder="concat", decoder="mlp", options={"decoder_outputs": 10}
        ),
        digits.input_shape,
    )
    train_parity(
        base, enc, dec, [parity], digits, _cfg(1), loss="decode-kl", progress=False
    )
    assert all(torch.equal(v, base.state_dict()[n]) for n, v in f_state.items())
    assert any(not torch.equal(v, parity.state_dict()[n]) for n, v in f_state.items())


@pytest.mark.parametrize("loss", ["decode-mse", "decode-kl", "decode-ce"])
def test_every_decode_loss_trains_a_learned_decoder_for_r2(
    digits: Dataset, base: nn.Module, loss: str
) -> None:
    enc, dec = make_code(
        CodeConfig(
            k=3, r=2, encoder="berrut", decoder="mlp", options={"decoder_outputs": 10}
        ),
        digits.input_shape,
    )
    dec_state = _state(dec)
    metrics = train_parity(
        base, enc, dec, [base, base], digits, _cfg(1), loss=loss, progress=False
    )
    assert 0.0 <= metrics["val_reconstruction_top1"] <= 1.0
    assert any(not torch.equal(v, dec.state_dict()[n]) for n, v in dec_state.items())


def test_linear_code_with_linear_f_reconstructs_every_erasure_pattern(
    digits: Dataset,
) -> None:
    torch.manual_seed(0)
    f = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))  # logistic-regression logits
    enc, dec = make_code(
        CodeConfig(k=4, r=2, encoder="linear", decoder="linear"), digits.input_shape
    )
    metrics = evaluate_code(f, [f, f], enc, dec, digits.test, rounds=1)
    # every erased prediction is rebuilt as F's own: degraded = F's accuracy
    assert metrics["reconstruction_top1"] == 1.0
    assert metrics["degraded_top1"] == pytest.approx(
        metrics["available_top1"], abs=0.02
    )


def test_linear_r2_parity_models_train_with_parity_mse(
    digits: Dataset, base: nn.Module, spec: dict
) -> None:
    parity = [build_from_spec(spec) for _ in range(2)]
    for p in parity:
        p.load_state_dict(base.state_dict())
    enc, dec = make_code(
        CodeConfig(k=2, r=2, encoder="linear", decoder="linear"), digits.input_shape
    )
    before = evaluate_code(base, parity, enc, dec, digits.val, rounds=1)
    train_parity(base, enc, dec, parity, digits, _cfg(4), progress=False)
    after = evaluate_code(base, parity, enc, dec, digits.val, rounds=1)
    assert after["reconstruction_top1"] >= before["reconstruction_top1"]


def test_bundle_round_trips_a_learned_code(
    tmp_path: Path, digits: Dataset, base: nn.Module, spec: dict
) -> None:
    code = CodeConfig(
        k=3,
        r=2,
        encoder="mlp",
        decoder="mlp",
        options={"decoder_outputs": 10, "encoder_hidden": [16]},
    )
    enc, dec = make_code(code, digits.input_shape)
    fill = torch.from_numpy(digits.val.x[0])
    bundle = Bundle(
        path=None,
        manifest={"base": spec, "parity": {**spec, "count": 2}, "code": code.to_dict()},
        base=base,
        parity=[base, base],
        encoder=enc,
        decoder=dec,
        fill_input=fill,
        fill_output=base(fill[None])[0].detach(),
    )
    loaded = load_bundle(save_bundle(tmp_path / "b", bundle))
    assert (
        json.loads((tmp_path / "b" / "manifest.json").read_text())["code"]
        == code.to_dict()
    )
    x = torch.from_numpy(digits.test.x[:6]).view(2, 3, *digits.input_shape)
    with torch.no_grad():
        assert torch.equal(loaded.encoder(x), enc(x))
        out, par = torch.randn(2, 3, 10), torch.randn(2, 2, 10)
        mask = torch.tensor([False, True, True, True, False])
        assert torch.equal(loaded.decoder(out, par, mask), dec(out, par, mask))


@pytest.mark.slow
def test_codes_table_smoke_writes_rows_and_plot(tmp_path: Path) -> None:
    from learncc.bench.codes_table import (
        ROW_KEYS,
        TableConfig,
        plot_degraded_vs_k,
        run_codes_table,
    )

    cfg = TableConfig(
        datasets=("digits",),
        k_values=(2,),
        base_epochs={"digits": 2},
        code_epochs={"digits": 1},
        rounds=1,
    )
    seen: list[tuple[int, int]] = []
    rows = run_codes_table(
        cfg, on_row=lambda done, total, row: seen.append((done, total))
    )
    # digits r=1: all seven codes; r=2: berrut, linear, learned-mlp, learned-conv
    assert [(r["code"], r["r"]) for r in rows] == [
        ("berrut", 1),
        ("linear", 1),
        ("concat", 1),
        ("learned-mlp", 1),
        ("learned-conv", 1),
        ("concat-joint", 1),
        ("concat-tiled", 1),
        ("berrut", 2),
        ("linear", 2),
        ("learned-mlp", 2),
        ("learned-conv", 2),
    ]
    assert all(tuple(r) == ROW_KEYS for r in rows)
    assert seen[-1] == (11, 11)
    assert rows[0]["train_s"] == 0.0 or rows[0]["train_s"] < 0.01  # berrut: no training
    assert plot_degraded_vs_k(rows, tmp_path / "p.png").stat().st_size > 1000


def _tile_loss(parity: nn.Module, base: nn.Module, enc, x: torch.Tensor) -> float:
    from learncc.training.parity import tile_outputs

    with torch.no_grad():
        want = base(x.flatten(0, 1)).view(x.shape[0], x.shape[1], -1)
        got = tile_outputs(parity, enc(x)[:, 0])
        return float(nn.functional.mse_loss(got, want))


def test_tile_sum_parity_trains_on_tile_mse_and_serves_from_a_bundle(
    tmp_path: Path, digits: Dataset, base: nn.Module, spec: dict
) -> None:
    from learncc.serving.worker import load_model
    from learncc.training.pipeline import tile_sum_parity

    code = CodeConfig(k=2)  # concat / subtraction
    enc, dec = make_code(code, digits.input_shape)
    parity, parity_spec = tile_sum_parity(base, spec, 2)
    assert parity_spec["model"] == "tile-sum"
    x = torch.from_numpy(digits.val.x[:180]).view(90, 2, *digits.input_shape)
    before = _tile_loss(parity, base, enc, x)
    train_parity(
        base, enc, dec, [parity], digits, _cfg(3), loss="tile-mse", progress=False
    )
    assert _tile_loss(parity, base, enc, x) < 0.8 * before

    fill = torch.from_numpy(digits.val.x[0])
    bundle = Bundle(
        path=None,
        manifest={
            "base": spec,
            "parity": {**parity_spec, "count": 1},
            "code": code.to_dict(),
        },
        base=base,
        parity=[parity],
        encoder=enc,
        decoder=dec,
        fill_input=fill,
        fill_output=base(fill[None])[0].detach(),
    )
    path = save_bundle(tmp_path / "b", bundle)
    loaded = load_bundle(path)
    assert type(loaded.parity[0].model).__name__ == "TileSum"

    # the serving path: NumPy encode, a parity instance's model, NumPy decode
    run, _ = load_model({"bundle": str(path), "role": "parity", "index": 0})
    group = digits.test.x[:2][None]  # (1, k, *in)
    query = loaded.encoder.encode_numpy(group)[:, 0]  # (1, *in)
    served = run(query)  # (1, out)
    with torch.no_grad():
        want = parity(enc(torch.from_numpy(group))[:, 0]).numpy()
        data_out = base(torch.from_numpy(group[0])).numpy()  # (k, out)
    np.testing.assert_allclose(served, want, rtol=1e-5, atol=1e-5)
    rebuilt = loaded.decoder.decode_numpy(data_out, served, [False, True, True])
    np.testing.assert_allclose(rebuilt[0], served[0] - data_out[1], rtol=1e-5)
    np.testing.assert_array_equal(rebuilt[1], data_out[1])


def test_tile_mse_needs_a_tile_sum_parity_model_and_subtraction(
    digits: Dataset, base: nn.Module, spec: dict
) -> None:
    from learncc.errors import ConfigError
    from learncc.training.pipeline import tile_sum_parity

    enc, dec = make_code(CodeConfig(k=2), digits.input_shape)
    copy_of_f = build_from_spec(spec)
    with pytest.raises(ConfigError, match="tile-mse needs tile-sum parity models"):
        train_parity(base, enc, dec, [copy_of_f], digits, _cfg(1), loss="tile-mse")
    wrong_k, _ = tile_sum_parity(base, spec, 3)
    with pytest.raises(ConfigError, match="built for k=2; .* for k=3"):
        train_parity(base, enc, dec, [wrong_k], digits, _cfg(1), loss="tile-mse")
    with pytest.raises(ConfigError, match="starts from an MLP F"):
        tile_sum_parity(base, {**spec, "model": "lenet5"}, 2)


def test_codes_table_options_from_the_command_line() -> None:
    from learncc.bench.codes_table import CODES, table_config
    from learncc.errors import ConfigError

    cfg = table_config(
        codes="berrut,concat-tiled", k="3, 10", r="1", datasets="mnist5k", epochs=7
    )
    assert cfg.codes == ("berrut", "concat-tiled")
    assert (cfg.k_values, cfg.r_values, cfg.datasets) == ((3, 10), (1,), ("mnist5k",))
    assert cfg.code_epochs == {"mnist5k": 7, "digits": 7}
    assert table_config(quick=True).k_values == (2, 3)
    tiled = next(c for c in CODES if c.name == "concat-tiled")
    assert [tiled.epochs(15, k) for k in (2, 3, 10)] == [12, 18, 60]
    with pytest.raises(ConfigError, match="unknown codes"):
        table_config(codes="concat,parm")
    with pytest.raises(ConfigError, match="no epoch budget"):
        table_config(datasets="cifar10")
    with pytest.raises(ConfigError, match="k must be comma-separated integers"):
        table_config(k="2,three")
    with pytest.raises(ConfigError, match=r"k must be >= 2, got \[1\]"):
        table_config(k="1,2")
