from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from learncc.bundle import CODE_METADATA, MANIFEST, load_bundle, save_bundle
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
    # the bound serving holds reconstructions to: F's largest |output| on the
    # training inputs, which the test inputs' outputs approach but rarely pass
    with torch.no_grad():
        test_max = float(a.base(x).abs().max())
    assert a.output_abs_max == b.output_abs_max
    assert 0.5 * test_max < a.output_abs_max < 4 * test_max


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


def _poison_weights(path: Path) -> None:
    # a flipped byte inside the data: the header stays valid
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    file = str(path / "base.safetensors")
    with safe_open(file, framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(file)
    name = sorted(tensors)[0]
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, file, metadata=metadata)


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
        (_poison_weights, r"base\.safetensors is corrupt: tensor '.+' holds NaN"),
        (
            lambda p: (
                (p / "code.safetensors").unlink(),
                (p / "code.safetensors").mkdir(),
            ),
            "code.safetensors is not a file",
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
            lambda p: _edit(p, lambda m: m.update(output_abs_max=-1)),
            r"manifest field output_abs_max must be a finite number > 0, got -1",
        ),
        # edited numbers (fresh-user test): refused before any model is built
        (
            lambda p: _edit(p, lambda m: m["base"]["normalization"].update(std=0)),
            r"manifest field base\.normalization\.std must be > 0, got 0",
        ),
        (
            lambda p: _edit(
                p, lambda m: m["parity"]["normalization"].update(mean=1e999)
            ),
            r"manifest field parity\.normalization\.mean must be finite, got inf",
        ),
        (
            lambda p: _edit(p, lambda m: m["code"].update(k=3)),
            r"manifest field code\.k is 3 but parity\.safetensors was trained for k=2",
        ),
        (
            lambda p: _edit(p, lambda m: m["code"].update(r=2)),
            r"manifest field parity\.count is 1 but code\.r is 2",
        ),
        (
            lambda p: _edit(p, lambda m: m["code"].update(k="2")),
            r"manifest field code\.k must be a positive integer, got '2'",
        ),
        (
            # would allocate 4 GB per layer: found from the headers instead
            lambda p: _edit(p, lambda m: m["base"]["options"].update(hidden=[10**9])),
            r"base model weights do not fit the manifest's model \(manifest entry "
            r"'base'\): base\.safetensors holds model\.1\.weight of shape \[200, 64\], "
            r"the entry makes it \[1000000000, 64\]",
        ),
        (
            lambda p: _edit(
                p, lambda m: m["backup"]["options"].update(hidden=[10**12] * 2)
            ),
            r"manifest entry 'backup' describes a model that cannot be built",
        ),
        (
            lambda p: _edit(p, lambda m: m["base"].update(input_shape=[10**6, 10**6])),
            r"manifest field base\.input_shape \[1000000, 1000000\] has 1000000000000 "
            r"elements per input, beyond the limit",
        ),
        (
            lambda p: _edit(p, lambda m: m["parity"].update(input_shape=[1, 8, 9])),
            r"manifest field parity\.input_shape \[1, 8, 9\] differs from "
            r"base\.input_shape \[1, 8, 8\]",
        ),
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


def test_bundles_without_the_code_record_still_load(
    digits_bundle: Path, tmp_path: Path
) -> None:
    path = copy(digits_bundle, tmp_path)
    for name in ("parity.safetensors", "code.safetensors"):
        with safe_open(str(path / name), framework="pt") as f:
            assert json.loads(f.metadata()[CODE_METADATA])["k"] == 2
        save_file(load_file(str(path / name)), str(path / name))  # no metadata
    assert load_bundle(path).code.k == 2
    # the known gap: without the record a changed k of a parameter-free code
    # cannot be told from the weights
    _edit(path, lambda m: m["code"].update(k=3))
    assert load_bundle(path).code.k == 3


def _edit(path: Path, change) -> None:
    manifest = json.loads((path / MANIFEST).read_text())
    change(manifest)
    (path / MANIFEST).write_text(json.dumps(manifest))
