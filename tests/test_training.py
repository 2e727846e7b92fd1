from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from learncc.codes import CodeConfig, make_code
from learncc.data import load_dataset
from learncc.errors import ConfigError
from learncc.models import Normalized, build_model
from learncc.training import (
    TrainConfig,
    evaluate_code,
    overall_accuracy,
    train_classifier,
    train_parity,
)
from learncc.training.evaluate import erasure_patterns, make_groups


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def base(digits):
    model = Normalized(
        build_model("mlp", input_shape=digits.input_shape, num_classes=10),
        **digits.normalization(),
    )
    model, metrics = train_classifier(
        model, digits, TrainConfig(epochs=8), progress=False
    )
    assert metrics["val_top1"] > 0.85
    return model


def new_parity(digits, base):
    p = Normalized(
        build_model("mlp", input_shape=digits.input_shape, num_classes=10),
        **digits.normalization(),
    )
    p.load_state_dict(base.state_dict())
    return p


def test_parity_training_beats_the_untrained_parity_model(digits, base) -> None:
    enc, dec = make_code(CodeConfig(k=2, encoder="concat"), digits.input_shape)
    parity = new_parity(digits, base)
    before = evaluate_code(base, [parity], enc, dec, digits.test)["degraded_top1"]
    train_parity(
        base, enc, dec, [parity], digits, TrainConfig(epochs=30), progress=False
    )
    after = evaluate_code(base, [parity], enc, dec, digits.test)
    assert after["degraded_top1"] > before + 0.2
    assert after["degraded_top1"] > 0.6
    assert (
        0 <= after["reconstruction_top1"] <= 1
        and after["degraded_top5"] >= after["degraded_top1"]
    )


def test_checkpoint_resume_continues_to_the_same_weights(
    digits, base, tmp_path: Path
) -> None:
    enc, dec = make_code(CodeConfig(k=2, encoder="addition"), digits.input_shape)
    full = new_parity(digits, base)
    cfg = TrainConfig(epochs=4, augment=False)
    train_parity(base, enc, dec, [full], digits, cfg, progress=False)

    # run 2 of 4 epochs, "crash", then resume from the checkpoint
    part = new_parity(digits, base)
    ckpt = tmp_path / "ckpt"
    short = TrainConfig(epochs=4, augment=False)
    import learncc.training.parity as parity_mod

    real_eval = parity_mod.evaluate_code
    calls = {"n": 0}

    def crash_after_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_eval(*args, **kwargs)

    parity_mod.evaluate_code = crash_after_two
    try:
        with pytest.raises(KeyboardInterrupt):
            train_parity(
                base,
                enc,
                dec,
                [part],
                digits,
                short,
                checkpoint_dir=ckpt,
                progress=False,
            )
    finally:
        parity_mod.evaluate_code = real_eval
    resumed = new_parity(digits, base)
    metrics = train_parity(
        base,
        enc,
        dec,
        [resumed],
        digits,
        short,
        checkpoint_dir=ckpt,
        resume=True,
        progress=False,
    )
    assert metrics["epochs_run"] == 2
    for a, b in zip(
        full.state_dict().values(), resumed.state_dict().values(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-5)


def test_evaluation_counts_every_erasure_position() -> None:
    assert erasure_patterns(3, 1) == [(0,), (1,), (2,)]
    assert len(erasure_patterns(4, 2)) == 4 + 6
    groups = make_groups(10, 3, torch.Generator().manual_seed(0))
    assert groups.shape == (3, 3) and len(set(groups.flatten().tolist())) == 9


def test_overall_accuracy_mixes_base_and_degraded() -> None:
    got = overall_accuracy(0.95, 0.85, (0.0, 0.1, 1.0))
    assert got == pytest.approx({0.0: 0.95, 0.1: 0.94, 1.0: 0.85})


def test_bad_training_settings_are_rejected(digits, base) -> None:
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        TrainConfig(epochs=0)
    enc, dec = make_code(CodeConfig(k=2, encoder="addition"), digits.input_shape)
    with pytest.raises(ConfigError, match="unknown loss 'l1'"):
        train_parity(base, enc, dec, [base], digits, TrainConfig(epochs=1), loss="l1")
    with pytest.raises(ConfigError, match="need r=1 parity models, got 2"):
        train_parity(base, enc, dec, [base, base], digits, TrainConfig(epochs=1))
    with pytest.raises(ConfigError, match="nothing to train"):
        train_parity(base, enc, dec, [base], digits, TrainConfig(epochs=1))


def test_splits_are_seeded_and_disjoint() -> None:
    a, b, c = (load_dataset("mnist5k", seed=s) for s in (0, 0, 1))
    assert (len(a.train), len(a.val), len(a.test)) == (3500, 500, 1000)
    np.testing.assert_array_equal(a.test.y, b.test.y)
    assert not np.array_equal(a.test.y, c.test.y)
    assert np.bincount(a.train.y, minlength=10).min() > 300


def test_train_bundle_with_a_tile_sum_parity_model(digits, tmp_path: Path) -> None:
    from learncc.bundle import load_bundle
    from learncc.training.pipeline import train_bundle

    cfg = TrainConfig(epochs=5, seed=0)
    bundle = train_bundle(
        digits,
        CodeConfig(k=2),
        base_cfg=cfg,
        parity_cfg=TrainConfig(epochs=4, lr=0.03, seed=0),
        out=tmp_path / "b",
        backup_hidden=None,
        parity_model="tile-sum",
        progress=False,
    )
    manifest = bundle.manifest
    assert manifest["parity"]["model"] == "tile-sum"
    assert manifest["parity"]["options"] == {"k": 2}
    assert manifest["metrics"]["degraded_top1"] > 0.6
    loaded = load_bundle(tmp_path / "b")
    x = torch.from_numpy(digits.test.x[:8])
    with torch.no_grad():
        torch.testing.assert_close(loaded.parity[0](x), bundle.parity[0](x))
    with pytest.raises(ConfigError, match="needs --encoder concat --decoder sub"):
        train_bundle(
            digits,
            CodeConfig(k=2, encoder="addition"),
            base_cfg=cfg,
            parity_cfg=cfg,
            parity_model="tile-sum",
            progress=False,
        )
    with pytest.raises(ConfigError, match="unknown parity_model 'tiles'"):
        train_bundle(
            digits, CodeConfig(k=2), base_cfg=cfg, parity_cfg=cfg, parity_model="tiles"
        )
