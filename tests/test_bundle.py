from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from learncc.bundle import MANIFEST, load_bundle, save_bundle
from learncc.data import load_dataset
from learncc.errors import BundleError


def copy(bundle: Path, tmp_path: Path) -> Path:
    out = tmp_path / "b"
    shutil.copytree(bundle, out)
    return out


def test_round_trip_gives_identical_outputs(
    digits_bundle: Path, tmp_path: Path
) -> None:
    a = load_bundle(digits_bundle)
    b = load_bundle(save_bundle(tmp_path / "again", a))
    x = torch.from_numpy(load_dataset("digits").test.x[:16])
    with torch.no_grad():
        assert torch.equal(a.base(x), b.base(x))
        assert torch.equal(a.parity[0](x), b.parity[0](x))
        assert torch.equal(a.fill_output, b.base(a.fill_input[None])[0])
    assert a.manifest["code"] == {
        "k": 2,
        "r": 1,
        "encoder": "concat",
        "decoder": "subtraction",
        "options": {},
    }
    assert (
        a.manifest["data"]["seed"] == 0 and a.manifest["data"]["sizes"]["test"] == 359
    )
    for key in (
        "base_top1",
        "degraded_top1",
        "reconstruction_top1",
        "overall_top1_at_f0.05",
    ):
        assert 0 <= a.manifest["metrics"][key] <= 1


def test_bundle_holds_no_pickle(digits_bundle: Path) -> None:
    names = sorted(p.name for p in digits_bundle.iterdir())
    assert names == [
        "backup.safetensors",
        "base.safetensors",
        "code.safetensors",
        "manifest.json",
        "parity.safetensors",
    ]
    for path in digits_bundle.iterdir():
        assert b"\x80\x04" not in path.read_bytes()[:2]  # no pickle protocol header


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda p: (p / MANIFEST).unlink(), "no coded model bundle at"),
        (lambda p: (p / MANIFEST).write_text("{not json"), "is not valid JSON"),
        (lambda p: (p / MANIFEST).write_text("[]"), "is not a learncc bundle manifest"),
        (
            lambda p: (p / "parity.safetensors").unlink(),
            "parity.safetensors is missing",
        ),
        (
            lambda p: (p / "base.safetensors").write_bytes(b"\x00" * 64),
            "base.safetensors is corrupt",
        ),
        (
            lambda p: _edit(p, lambda m: m.update(version=99)),
            "version 99 is not supported",
        ),
        (
            lambda p: _edit(p, lambda m: m["base"].update(model="nope")),
            "unknown model 'nope'",
        ),
        (
            lambda p: _edit(p, lambda m: m["base"]["options"].update(hidden=[7])),
            "base model weights do not fit",
        ),
        (lambda p: _edit(p, lambda m: m.pop("code")), "lacks the entry 'code'"),
        (
            lambda p: _edit(p, lambda m: m["base"].update(model="os:system")),
            r"names Python code to import and run \(os:system\)",
        ),
    ],
)
def test_damaged_bundles_fail_with_a_clear_message(
    digits_bundle: Path, tmp_path: Path, damage, match: str
) -> None:
    path = copy(digits_bundle, tmp_path)
    damage(path)
    with pytest.raises(BundleError, match=match):
        load_bundle(path)


def _edit(path: Path, change) -> None:
    manifest = json.loads((path / MANIFEST).read_text())
    change(manifest)
    (path / MANIFEST).write_text(json.dumps(manifest))
