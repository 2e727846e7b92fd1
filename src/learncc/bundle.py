"""The coded model bundle: everything needed to serve a coded model.

A bundle is a directory:

- ``manifest.json``: model names and options, input shape, normalization,
  the code (k, r, encoder, decoder), the data split, training settings and
  metrics;
- ``base.safetensors``: F's weights, for a torch F; a black-box F
  (``learncc.models.blackbox``) has no weights file: its manifest entry has
  a ``kind`` (``onnx``, ``sklearn``, ``callable``) and an ONNX graph lives in
  ``base.onnx``;
- ``parity.safetensors``: the r parity models' weights (prefix ``<j>.``);
- ``backup.safetensors`` (optional): a smaller approximate model for the
  ``cheap`` baseline, described by the manifest's ``backup`` entry;
- ``code.safetensors``: parameters of learned encoders/decoders and the fill
  query used to complete partial coding groups, with F's output on it.

File names are fixed, never read from the manifest, so a manifest cannot
point outside its directory; weights load only through safetensors and ONNX
graphs through ONNX Runtime, so loading never unpickles anything. A
manifest that names Python code outside learncc (a ``pkg.mod:factory``
model, a ``callable`` F) is refused unless the caller trusts it (see
``load_bundle``).

The manifest is checked against the weights before any model is built: its
numbers (normalization, shapes, k and r) must be sane, and the models it
describes, built on PyTorch's ``meta`` device (shapes only, no memory), must
have exactly the tensor shapes the safetensors headers hold. An edited
manifest therefore cannot make loading allocate more than the files hold.
The weights files also record the code (k, r, encoder, decoder) they were
trained with, in their safetensors metadata, so a changed k is caught even
for codes without parameters; bundles written before that record existed
cannot be checked for it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from learncc.codes import CodeConfig, Decoder, Encoder, make_code
from learncc.errors import BundleError, LearnccError
from learncc.models import Normalized, build_model
from learncc.models.blackbox import BlackBoxModel, is_blackbox_spec, load_blackbox

FORMAT = "learncc-bundle"
VERSION = 1
MANIFEST = "manifest.json"
BASE, PARITY, CODE = "base.safetensors", "parity.safetensors", "code.safetensors"
BACKUP = "backup.safetensors"
# safetensors metadata key holding the code the weights were trained with
CODE_METADATA = "learncc.code"
# the most elements one input may have: 2**28 float32 is 1 GiB per query
MAX_INPUT_ELEMENTS = 1 << 28


@dataclass
class Bundle:
    """A loaded bundle. ``base`` and ``parity`` include input normalization
    (a black-box ``base`` takes its inputs as they come)."""

    path: Path | None
    manifest: dict[str, Any]
    base: nn.Module
    parity: list[nn.Module]
    encoder: Encoder
    decoder: Decoder
    fill_input: torch.Tensor  # (*in): completes partial coding groups
    fill_output: torch.Tensor  # (*out): F(fill_input)
    backup: nn.Module | None = None  # the cheap baseline's approximate model

    @property
    def code(self) -> CodeConfig:
        return CodeConfig.from_dict(self.manifest["code"])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["base"]["input_shape"])

    @property
    def output_shape(self) -> tuple[int, ...]:
        return tuple(self.fill_output.shape)

    @property
    def output_abs_max(self) -> float | None:
        """The largest |F(x)| over the training inputs, recorded at training
        time (None in bundles written before it was recorded)."""
        bound = self.manifest.get("output_abs_max")
        return None if bound is None else float(bound)


def output_abs_max(base: nn.Module, x: np.ndarray, batch: int = 512) -> float:
    """The largest |F(x)| over inputs ``x`` (N, *in): what serving compares
    reconstructions with (``learncc.serving.deploy.RECONSTRUCTION_SLACK``)."""
    largest = 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out = base(torch.from_numpy(np.asarray(x[i : i + batch], np.float32)))
            largest = max(largest, float(out.abs().max()))
    return largest


def model_spec(
    name: str,
    options: dict[str, Any],
    input_shape: tuple[int, ...],
    num_classes: int,
    normalization: dict[str, float],
) -> dict[str, Any]:
    return {
        "model": name,
        "options": options,
        "input_shape": list(input_shape),
        "num_classes": num_classes,
        "normalization": normalization,
    }


def build_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Build an untrained, normalized model from a manifest model spec."""
    model = build_model(
        spec["model"],
        input_shape=tuple(spec["input_shape"]),
        num_classes=int(spec["num_classes"]),
        options=spec.get("options") or {},
    )
    return Normalized(model, **spec["normalization"])


def save_bundle(path: str | Path, bundle: Bundle) -> Path:
    """Write ``bundle`` to directory ``path`` (created if needed)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    manifest = {**bundle.manifest, "format": FORMAT, "version": VERSION}
    manifest["code"] = bundle.code.to_dict()
    if isinstance(bundle.base, BlackBoxModel):
        manifest["base"] = bundle.base.spec()
        bundle.base.save(path)
    else:
        save_file(_contiguous(bundle.base.state_dict()), str(path / BASE))
    parity: dict[str, torch.Tensor] = {}
    for j, model in enumerate(bundle.parity):
        parity.update({f"{j}.{n}": t for n, t in model.state_dict().items()})
    # the code goes beside the weights trained for it: a manifest edited to
    # another k would otherwise load and serve wrong reconstructions
    trained_for = {CODE_METADATA: json.dumps(bundle.code.to_dict(), sort_keys=True)}
    save_file(_contiguous(parity), str(path / PARITY), metadata=trained_for)
    if bundle.backup is not None:
        save_file(_contiguous(bundle.backup.state_dict()), str(path / BACKUP))
    code = {f"encoder.{n}": t for n, t in bundle.encoder.state_dict().items()}
    code |= {f"decoder.{n}": t for n, t in bundle.decoder.state_dict().items()}
    code |= {"fill.input": bundle.fill_input, "fill.output": bundle.fill_output}
    save_file(_contiguous(code), str(path / CODE), metadata=trained_for)
    # The manifest goes last: a bundle without one is recognisably incomplete.
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return path


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


def _check_file(path: Path) -> None:
    if not path.is_file():
        state = "is not a file" if path.exists() else "is missing"
        raise BundleError(f"bundle file {path.name} {state} in {path.parent}")


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    _check_file(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise BundleError(f"bundle file {path} is corrupt: {e}") from None
    for name, tensor in tensors.items():
        # bytes flipped inside the data keep the header valid; the model then
        # answers NaN to every query (fresh-user test)
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise BundleError(
                f"bundle file {path} is corrupt: tensor {name!r} holds NaN or infinity"
            )
    return tensors


def _header(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Tensor shapes and metadata of a safetensors file, without its data."""
    _check_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            return shapes, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise BundleError(f"bundle file {path} is corrupt: {e}") from None


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_model_entry(manifest: dict[str, Any], key: str) -> None:
    """The numbers of one model entry (``base``, ``parity``, ``backup``).

    Raises:
        BundleError: naming the field that cannot be right.
    """
    spec = manifest[key]
    if not isinstance(spec, dict):
        raise BundleError(f"manifest entry '{key}' must be an object")
    shape = spec["input_shape"]
    if (
        not isinstance(shape, list)
        or not shape
        or not all(_positive_int(d) for d in shape)
    ):
        raise BundleError(
            f"manifest field {key}.input_shape must be a list of positive "
            f"integers, got {shape!r}"
        )
    if math.prod(shape) > MAX_INPUT_ELEMENTS:
        raise BundleError(
            f"manifest field {key}.input_shape {shape} has {math.prod(shape)} "
            f"elements per input, beyond the limit of {MAX_INPUT_ELEMENTS}"
        )
    if key == "base" and is_blackbox_spec(spec):
        return  # no normalization, num_classes or weights file of ours
    if not _positive_int(spec["num_classes"]):
        raise BundleError(
            f"manifest field {key}.num_classes must be a positive integer, "
            f"got {spec['num_classes']!r}"
        )
    norm = spec["normalization"]
    if not isinstance(norm, dict) or set(norm) != {"mean", "std"}:
        raise BundleError(
            f"manifest field {key}.normalization must be {{mean, std}}, got {norm!r}"
        )
    for name in ("mean", "std"):
        value = norm[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BundleError(
                f"manifest field {key}.normalization.{name} must be a number, "
                f"got {value!r}"
            )
        if not math.isfinite(value):
            raise BundleError(
                f"manifest field {key}.normalization.{name} must be finite, got {value}"
            )
    if not norm["std"] > 0:
        # inputs are divided by it: 0 turns every output into inf or NaN
        raise BundleError(
            f"manifest field {key}.normalization.std must be > 0, got {norm['std']}"
        )


def _check_manifest(manifest: dict[str, Any]) -> CodeConfig:
    """Check the manifest's numbers before anything is built.

    Raises:
        BundleError: naming the field; KeyError for a missing entry.
    """
    for key in ("base", "parity", "backup"):
        if key in manifest or key != "backup":
            _check_model_entry(manifest, key)
    base_shape = manifest["base"]["input_shape"]
    for key in ("parity", "backup"):
        if key in manifest and manifest[key]["input_shape"] != base_shape:
            raise BundleError(
                f"manifest field {key}.input_shape {manifest[key]['input_shape']} "
                f"differs from base.input_shape {base_shape}"
            )
    code_spec = manifest["code"]
    if not isinstance(code_spec, dict):
        raise BundleError("manifest entry 'code' must be an object")
    for name in ("k", "r"):
        if name in code_spec and not _positive_int(code_spec[name]):
            raise BundleError(
                f"manifest field code.{name} must be a positive integer, "
                f"got {code_spec[name]!r}"
            )
    try:
        code = CodeConfig.from_dict(code_spec)
    except LearnccError as e:
        raise BundleError(f"manifest entry 'code' is unusable: {e}") from None
    count = manifest["parity"]["count"]
    if count != code.r:
        raise BundleError(
            f"manifest field parity.count is {count!r} but code.r is {code.r}: "
            "there is one parity model per parity query"
        )
    if "output_abs_max" in manifest:
        bound = manifest["output_abs_max"]
        if not (
            isinstance(bound, (int, float))
            and not isinstance(bound, bool)
            and math.isfinite(bound)
            and bound > 0
        ):
            raise BundleError(
                f"manifest field output_abs_max must be a finite number > 0, "
                f"got {bound!r}"
            )
    return code


def _check_trained_code(code: CodeConfig, metadata: dict[str, str], file: Path) -> None:
    """The manifest's code must be the one the weights were trained for."""
    recorded = metadata.get(CODE_METADATA)
    if recorded is None:
        return  # written before the record existed: nothing to compare
    try:
        trained = json.loads(recorded)
    except json.JSONDecodeError:
        raise BundleError(f"{file} has corrupt {CODE_METADATA} metadata") from None
    for name, value in code.to_dict().items():
        if trained.get(name) != value:
            raise BundleError(
                f"manifest field code.{name} is {value!r} but {file.name} was "
                f"trained for {name}={trained.get(name)!r}; restore the manifest "
                "or train a bundle for the new code"
            )


def _meta_shapes(
    build: Any, what: str, key: str, trusted_code: bool
) -> dict[str, tuple[int, ...]] | None:
    """Tensor shapes of the module ``build()`` makes, on the meta device.

    None when a user's own factory cannot build on the meta device: its
    weights are then checked only when they load.
    """
    try:
        with torch.device("meta"):
            module = build()
    except LearnccError as e:
        raise BundleError(
            f"manifest entry '{key}' names something unusable: {e}"
        ) from None
    except (RuntimeError, ValueError, TypeError, OverflowError) as e:
        if trusted_code:
            return None
        raise BundleError(
            f"manifest entry '{key}' describes a {what} that cannot be built: {e}"
        ) from None
    return {name: tuple(t.shape) for name, t in module.state_dict().items()}


def _check_shapes(
    want: dict[str, tuple[int, ...]] | None,
    have: dict[str, tuple[int, ...]],
    what: str,
    key: str,
    file: Path,
) -> None:
    """The manifest's model must have exactly the file's tensor shapes.

    Raises:
        BundleError: naming the manifest entry, the tensor and both shapes.
    """
    if want is None:
        return
    prefix = f"{what} weights do not fit the manifest's model (manifest entry '{key}')"
    for name, shape in want.items():
        if name in have and have[name] != shape:
            raise BundleError(
                f"{prefix}: {file.name} holds {name} of shape {list(have[name])}, "
                f"the entry makes it {list(shape)}"
            )
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or extra:
        parts = [f"lacks {missing}"] * bool(missing)
        parts += [f"holds unexpected {extra}"] * bool(extra)
        raise BundleError(f"{prefix}: {file.name} {' and '.join(parts)}")


def _with_prefix(
    shapes: dict[str, tuple[int, ...]], prefix: str
) -> dict[str, tuple[int, ...]]:
    return {k[len(prefix) :]: v for k, v in shapes.items() if k.startswith(prefix)}


def _check_against_weights(
    path: Path, manifest: dict[str, Any], code: CodeConfig, blackbox: bool
) -> None:
    """Compare what the manifest describes with the safetensors headers,
    before any model is built (see the module docstring).

    Raises:
        BundleError: naming the manifest field that does not fit.
    """
    # foreign code is only reached when trusted: its factories may not build on meta
    trusted = bool(_foreign_code(manifest))
    input_shape = tuple(manifest["base"]["input_shape"])

    def model_of(key: str) -> Any:
        return lambda: build_from_spec(manifest[key])

    if not blackbox:
        shapes, _ = _header(path / BASE)
        want = _meta_shapes(model_of("base"), "model", "base", trusted)
        _check_shapes(want, shapes, "base model", "base", path / BASE)
    shapes, metadata = _header(path / PARITY)
    _check_trained_code(code, metadata, path / PARITY)
    want = _meta_shapes(model_of("parity"), "model", "parity", trusted)
    for j in range(code.r):
        _check_shapes(
            want,
            _with_prefix(shapes, f"{j}."),
            f"parity model {j}",
            "parity",
            path / PARITY,
        )
    if "backup" in manifest:
        shapes, _ = _header(path / BACKUP)
        want = _meta_shapes(model_of("backup"), "model", "backup", trusted)
        _check_shapes(want, shapes, "backup model", "backup", path / BACKUP)
    shapes, metadata = _header(path / CODE)
    _check_trained_code(code, metadata, path / CODE)
    fill = shapes.get("fill.input")
    if fill is not None and fill != input_shape:
        raise BundleError(
            f"manifest field base.input_shape {list(input_shape)} differs from the "
            f"fill query's shape {list(fill)} in {CODE}"
        )
    learned = any(k.startswith(("encoder.", "decoder.")) for k in shapes)
    if not learned and not code.options:
        # a parameter-free code with default options allocates nothing to
        # speak of, and the strict load below refuses it if it has state
        return
    # codes are ours; one that cannot build on meta is built for real below
    pair = _meta_shapes(
        lambda: nn.ModuleDict(
            zip(("encoder", "decoder"), make_code(code, input_shape), strict=True)
        ),
        "code",
        "code",
        True,
    )
    if pair is not None:
        for name in ("encoder", "decoder"):
            _check_shapes(
                _with_prefix(pair, f"{name}."),
                _with_prefix(shapes, f"{name}."),
                name,
                "code",
                path / CODE,
            )


def _load_state(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise BundleError(
            f"{what} weights do not fit the manifest's model: {e}"
        ) from None


TRUST_ENV = "LEARNCC_TRUST_BUNDLE_CODE"


def _foreign_code(manifest: dict[str, Any]) -> list[str]:
    """Import paths outside learncc that loading this manifest would import
    and call: custom model factories and callable black-box F."""
    names = []
    for key in ("base", "parity", "backup"):
        spec = manifest.get(key)
        if not isinstance(spec, dict):
            continue
        for field in ("model", "target"):
            name = spec.get(field)
            if (
                isinstance(name, str)
                and ":" in name
                and not name.startswith("learncc.")
            ):
                names.append(name)
    return names


def load_bundle(path: str | Path, *, trust_code: bool | None = None) -> Bundle:
    """Load a bundle directory written by ``save_bundle``.

    A manifest naming a model factory or callable outside learncc
    (``pkg.mod:name``) would make loading import and run that module, so such
    bundles load only with ``trust_code=True`` (or the environment variable
    ``LEARNCC_TRUST_BUNDLE_CODE=1``, which instance processes inherit).

    Raises:
        BundleError: the directory, its manifest or a weights file is missing,
            corrupt, of another format version, or does not match the models
            the manifest names; or a black-box F cannot be rebuilt, or no
            longer gives the output stored for the fill query.
    """
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(
            f"no coded model bundle at {path} (expected {MANIFEST}); "
            "create one with `learncc train` or `learncc demo`"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{manifest_path} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{manifest_path} is not a learncc bundle manifest")
    if manifest.get("version") != VERSION:
        raise BundleError(
            f"bundle format version {manifest.get('version')!r} is not supported "
            f"(this learncc reads version {VERSION})"
        )
    if trust_code is None:
        trust_code = os.environ.get(TRUST_ENV) == "1"
    foreign = _foreign_code(manifest)
    if foreign and not trust_code:
        raise BundleError(
            f"{manifest_path} names Python code to import and run "
            f"({', '.join(foreign)}); load it only if you trust its source: "
            f"pass trust_code=True or set {TRUST_ENV}=1"
        )
    blackbox = isinstance(manifest.get("base"), dict) and is_blackbox_spec(
        manifest["base"]
    )
    try:
        code = _check_manifest(manifest)
        _check_against_weights(path, manifest, code, blackbox)
    except KeyError as e:
        raise BundleError(f"{manifest_path} lacks the entry {e}") from None
    try:
        base = (
            load_blackbox(manifest["base"], path)
            if blackbox
            else build_from_spec(manifest["base"])
        )
        parity_spec = manifest["parity"]
        parity = [
            build_from_spec(parity_spec) for _ in range(int(parity_spec["count"]))
        ]
        code = CodeConfig.from_dict(manifest["code"])
        encoder, decoder = make_code(code, tuple(manifest["base"]["input_shape"]))
        backup = build_from_spec(manifest["backup"]) if "backup" in manifest else None
    except KeyError as e:
        raise BundleError(f"{manifest_path} lacks the entry {e}") from None
    except BundleError:
        raise
    except LearnccError as e:
        raise BundleError(f"{manifest_path} names something unusable: {e}") from None
    if len(parity) != code.r:
        raise BundleError(f"manifest has {len(parity)} parity models for r={code.r}")

    if not blackbox:
        _load_state(base, _read_tensors(path / BASE), "base model")
    tensors = _read_tensors(path / PARITY)
    for j, model in enumerate(parity):
        prefix = f"{j}."
        _load_state(
            model,
            {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)},
            f"parity model {j}",
        )
    if backup is not None:
        _load_state(backup, _read_tensors(path / BACKUP), "backup model")
        backup.eval()
    code_tensors = _read_tensors(path / CODE)
    for name, module in (("encoder", encoder), ("decoder", decoder)):
        prefix = f"{name}."
        _load_state(
            module,
            {
                k[len(prefix) :]: v
                for k, v in code_tensors.items()
                if k.startswith(prefix)
            },
            name,
        )
    if "fill.input" not in code_tensors or "fill.output" not in code_tensors:
        raise BundleError(f"{path / CODE} lacks the fill query")
    for m in (base, *parity, encoder, decoder):
        m.eval()
    if blackbox:
        _check_fill(base, code_tensors["fill.input"], code_tensors["fill.output"])
    return Bundle(
        path=path,
        manifest=manifest,
        base=base,
        parity=parity,
        encoder=encoder,
        decoder=decoder,
        fill_input=code_tensors["fill.input"],
        fill_output=code_tensors["fill.output"],
        backup=backup,
    )


def _check_fill(
    base: nn.Module, fill_input: torch.Tensor, fill_output: torch.Tensor
) -> None:
    """A black-box F must still answer the fill query as it did at training.

    The decoder subtracts the stored fill output from parity outputs, and the
    parity model learned F as it was; a callable edited since, or an ONNX
    Runtime that computes differently, would rebuild wrong answers silently.
    """
    try:
        with torch.no_grad():
            got = base(fill_input[None])[0]
    except LearnccError as e:
        raise BundleError(
            f"black-box F fails on the bundle's fill query: {e}"
        ) from None
    if got.shape != fill_output.shape or not torch.allclose(
        got, fill_output, rtol=1e-4, atol=1e-5
    ):
        diff = (
            (got - fill_output).abs().max() if got.shape == fill_output.shape else None
        )
        raise BundleError(
            "black-box F no longer gives the output stored for the fill query "
            f"(shape {tuple(got.shape)} vs {tuple(fill_output.shape)}, largest "
            f"difference {diff}); F changed since the bundle was built: rebuild it"
        )
