from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Two cores: keep each test process from oversubscribing them.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def digits_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real bundle: MLP on sklearn digits, k=2 concat, a few epochs."""
    from learncc.codes import CodeConfig
    from learncc.data import load_dataset
    from learncc.training import TrainConfig
    from learncc.training.pipeline import train_bundle

    out = tmp_path_factory.mktemp("bundle") / "digits-k2"
    train_bundle(
        load_dataset("digits"),
        CodeConfig(k=2, r=1, encoder="concat", decoder="subtraction"),
        base_cfg=TrainConfig(epochs=6),
        parity_cfg=TrainConfig(epochs=6),
        out=out,
        progress=False,
    )
    return out
