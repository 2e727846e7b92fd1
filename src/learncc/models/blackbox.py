"""Black-box F: any computation on NumPy arrays, served and coded like a model.

ParM's parity models only need F's outputs, never its gradients, so F may be
anything that maps a float32 batch ``(N, *in)`` to a float32 batch
``(N, out)``. ``BlackBoxModel`` adapts such a function to ``nn.Module`` so that
training, evaluation, bundles and serving treat it like a torch F. It sets
``differentiable = False``: code that needs gradients through F (a learned
encoder in front of F) checks that attribute and refuses it.

Three kinds, each stored in a bundle without pickle:

- ``onnx``: an ONNX graph run by ONNX Runtime; the bundle keeps it in the
  fixed file ``base.onnx`` (``from_onnx``);
- ``sklearn``: a scikit-learn estimator converted to ONNX with skl2onnx when
  the bundle is built, then run like ``onnx`` (``from_sklearn``). We convert
  rather than pickle the estimator or store a training recipe: a recipe would
  have to refit F, bit for bit, on every load;
- ``callable``: a function named by import path ``package.module:function``
  (``from_callable``); loading a bundle imports that module, which runs its
  code with the trust you give any installed package.

F's outputs must be vectors: ``(N, out)`` for a batch of N. Multi-dimensional
outputs must be flattened by F itself, because parity models are plain MLPs
with a flat output.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from learncc.errors import BundleError, ConfigError
from learncc.models import mlp

KINDS = ("onnx", "sklearn", "callable")
ONNX_FILE = "base.onnx"  # fixed: a manifest never names a file
SKLEARN_METHODS = ("predict_proba", "decision_function", "predict")

ArrayFn = Callable[[np.ndarray], np.ndarray]


class BlackBoxModel(nn.Module):
    """An ``nn.Module`` around a function on float32 NumPy batches.

    Args:
        fn: maps ``(N, *input_shape)`` float32 to ``(N, out)`` (any float dtype;
            cast to float32).
        kind: one of ``KINDS``, recorded in bundle manifests.
        input_shape: shape of one input, without the batch dimension.
        output_shape: ``(out,)`` when known; ``None`` until ``probe`` runs.

    The output never carries gradients. ``forward`` checks the shape of every
    batch F returns, so a function that changes its output width fails loudly
    instead of feeding the decoder misaligned vectors.
    """

    differentiable = False

    def __init__(
        self,
        fn: ArrayFn,
        *,
        kind: str,
        input_shape: Sequence[int],
        output_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ConfigError(f"unknown black-box kind {kind!r}; choose one of {KINDS}")
        self.fn, self.kind = fn, kind
        self.input_shape = tuple(int(s) for s in input_shape)
        self.output_shape = None if output_shape is None else tuple(output_shape)

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.input_shape:
            raise ConfigError(
                f"black-box F takes inputs of shape (N, {_dims(self.input_shape)}), "
                f"got {tuple(x.shape)}"
            )
        batch = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        out = np.asarray(self.fn(batch))
        self._check_output(out, len(batch))
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))

    def _check_output(self, out: np.ndarray, n: int) -> None:
        want = (
            "(N, out)" if self.output_shape is None else f"(N, {self.output_shape[0]})"
        )
        if out.ndim != 2 or out.shape[0] != n:
            raise ConfigError(
                f"black-box F ({self.describe()}) returned shape {out.shape} for a "
                f"batch of {n} inputs; it must return {want} with N = {n}: one "
                "flat output vector per input"
            )
        if self.output_shape is not None and out.shape[1:] != self.output_shape:
            raise ConfigError(
                f"black-box F ({self.describe()}) returned outputs of width "
                f"{out.shape[1]}, but it was configured with width "
                f"{self.output_shape[0]}"
            )
        if out.dtype.kind not in "fiub":
            raise ConfigError(
                f"black-box F ({self.describe()}) returned dtype {out.dtype}; "
                "it must return numbers"
            )

    def describe(self) -> str:
        return self.kind

    def spec(self) -> dict[str, Any]:
        """The manifest entry for this F (kind, shapes and kind-specific fields).

        Raises:
            ConfigError: the output shape is unknown (call ``probe`` first).
        """
        if self.output_shape is None:
            raise ConfigError("probe F before saving it: its output shape is unknown")
        return {
            "kind": self.kind,
            "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape),
        }

    def save(self, directory: Path) -> None:
        """Write the files this F needs into a bundle directory (none by default)."""

    def extra_repr(self) -> str:
        return (
            f"{self.describe()}, input_shape={self.input_shape}, "
            f"output_shape={self.output_shape}"
        )


def probe(model: BlackBoxModel, inputs: np.ndarray) -> tuple[int, ...]:
    """Run F on a batch of real inputs; record and return its output shape.

    Called when a bundle is built, so that an F returning the wrong shape is
    rejected before any training, with a message that says what it returned.
    Probes with one input and then with the whole batch, which catches both an
    F that drops the batch dimension and one that ignores the batch size.

    Args:
        inputs: ``(N, *input_shape)`` with N >= 2, e.g. a few validation inputs.

    Returns:
        ``(out,)``, also stored as ``model.output_shape``.

    Raises:
        ConfigError: the inputs do not fit F's input shape, or F returns
            something other than ``(N, out)`` finite numbers, or F fails.
    """
    x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
    if x.dim() < 2 or len(x) < 2:
        raise ConfigError(
            f"probe F with a batch of at least 2 inputs, got shape {tuple(x.shape)}"
        )
    try:
        one = model(x[:1])
        many = model(x)
    except ConfigError:
        raise
    except Exception as e:  # F is foreign code: say which F failed, and how
        raise ConfigError(
            f"black-box F ({model.describe()}) failed on a probe batch of shape "
            f"{tuple(x.shape)}: {type(e).__name__}: {e}"
        ) from e
    if one.shape[1:] != many.shape[1:]:
        raise ConfigError(
            f"black-box F ({model.describe()}) returned width {one.shape[1]} for one "
            f"input but {many.shape[1]} for {len(x)}; its output width must not "
            "depend on the batch"
        )
    if not (torch.isfinite(one).all() and torch.isfinite(many).all()):
        raise ConfigError(
            f"black-box F ({model.describe()}) returned NaN or infinity on the "
            "probe inputs"
        )
    model.output_shape = tuple(many.shape[1:])
    return model.output_shape


# -- ONNX --------------------------------------------------------------------


class OnnxModel(BlackBoxModel):
    """F as an ONNX graph run by ONNX Runtime on the CPU.

    The graph is kept as bytes so that ``save`` writes exactly what was
    loaded. ONNX Runtime gets as many threads as torch has when the session
    is made, so a serving instance that set ``torch.set_num_threads(1)``
    before loading its bundle runs F on one thread too.

    Args:
        model_bytes: a serialized ONNX model with every tensor inside it.
        output: name of the graph output that is F's output; defaults to the
            first output.
        origin: where the graph came from (for kind ``sklearn``: estimator
            class and method), recorded in the manifest.
    """

    def __init__(
        self,
        model_bytes: bytes,
        *,
        input_shape: Sequence[int],
        output: str | None = None,
        output_shape: Sequence[int] | None = None,
        kind: str = "onnx",
        origin: dict[str, Any] | None = None,
    ) -> None:
        import onnxruntime as ort

        check_onnx(model_bytes)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(
                model_bytes, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # ORT raises its own classes, not exported stably
            raise ConfigError(f"ONNX Runtime cannot load the model: {e}") from None
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise ConfigError(
                f"the ONNX model takes {len(inputs)} inputs "
                f"({', '.join(i.name for i in inputs)}); F must take exactly one"
            )
        _check_onnx_input(inputs[0], tuple(input_shape))
        names = [o.name for o in session.get_outputs()]
        output = names[0] if output is None else output
        if output not in names:
            raise ConfigError(
                f"the ONNX model has no output {output!r}; its outputs are {names}"
            )
        self.model_bytes, self.output, self.origin = model_bytes, output, origin
        self.session, self.input_name = session, inputs[0].name
        super().__init__(
            self._run, kind=kind, input_shape=input_shape, output_shape=output_shape
        )

    def _run(self, x: np.ndarray) -> np.ndarray:
        (out,) = self.session.run([self.output], {self.input_name: x})
        out = np.asarray(out)
        # scalar-per-input graphs (regressors, binary scores) return (N,)
        return out.reshape(len(x), 1) if out.ndim == 1 else out

    def describe(self) -> str:
        if self.origin:
            estimator, method = self.origin.get("estimator"), self.origin.get("method")
            return f"{self.kind} {estimator}.{method}"
        return f"{self.kind} output {self.output!r}"

    def spec(self) -> dict[str, Any]:
        spec = super().spec() | {"output": self.output}
        if self.origin is not None:
            spec["origin"] = self.origin
        return spec

    def save(self, directory: Path) -> None:
        (Path(directory) / ONNX_FILE).write_bytes(self.model_bytes)


def _dims(shape: Sequence[Any]) -> str:
    return ", ".join(str(s) for s in shape)


def _check_onnx_input(node: Any, input_shape: tuple[int, ...]) -> None:
    """Reject an ONNX input that cannot take float32 batches of ``input_shape``."""
    if node.type != "tensor(float)":
        raise ConfigError(
            f"the ONNX model's input {node.name!r} has type {node.type}; "
            "F must take float32 (tensor(float))"
        )
    shape = list(node.shape)
    if len(shape) != 1 + len(input_shape):
        raise ConfigError(
            f"the ONNX model's input {node.name!r} has shape [{_dims(shape)}], "
            f"which does not fit batches of inputs of shape {input_shape}"
        )
    if isinstance(shape[0], int):
        raise ConfigError(
            f"the ONNX model's batch dimension is fixed at {shape[0]}; export it with "
            "a dynamic batch dimension (torch.onnx.export(..., dynamic_shapes=...))"
        )
    for got, want in zip(shape[1:], input_shape, strict=True):
        if isinstance(got, int) and got != want:
            raise ConfigError(
                f"the ONNX model's input {node.name!r} has shape [{_dims(shape)}], "
                f"which does not fit inputs of shape {input_shape}"
            )


def check_onnx(model_bytes: bytes) -> None:
    """Reject ONNX models that would read files other than themselves.

    ONNX lets a tensor's data live in an external file named by a relative
    path inside the graph. In a bundle that path would come from a file we do
    not control and could point outside the bundle directory, so we accept
    only self-contained graphs.

    Raises:
        BundleError: the bytes are not an ONNX model, or a tensor's data is
            external.
    """
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load_model_from_string(model_bytes)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise BundleError(f"not a valid ONNX model: {e}") from None
    for tensor in _all_tensors(proto.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
            where = next(
                (e.value for e in tensor.external_data if e.key == "location"), "?"
            )
            raise BundleError(
                f"the ONNX model keeps tensor {tensor.name!r} in an external file "
                f"({where!r}); save it with every tensor inside the model "
                "(onnx.save(..., save_as_external_data=False))"
            )


def _all_tensors(graph: Any) -> list[Any]:
    """Every TensorProto in a graph, its nodes' attributes and subgraphs."""
    tensors = list(graph.initializer)
    tensors += [s.values for s in graph.sparse_initializer]
    for node in graph.node:
        for attr in node.attribute:
            tensors += ([attr.t] if attr.HasField("t") else []) + list(attr.tensors)
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                tensors += _all_tensors(sub)
    return tensors


def from_onnx(
    source: str | Path | bytes, *, input_shape: Sequence[int], output: str | None = None
) -> OnnxModel:
    """Wrap an ONNX model (a file or its bytes) as F.

    Args:
        source: path of a self-contained ``.onnx`` file, or its bytes.
        input_shape: shape of one input; the graph must take ``(N, *input_shape)``
            float32 with a dynamic batch dimension.
        output: name of the graph output to use; defaults to the first.

    Raises:
        ConfigError: the file is missing, or the graph does not fit the input
            shape, or has no such output.
        BundleError: the file is not ONNX or has external tensor data.
    """
    if isinstance(source, bytes):
        data = source
    else:
        try:
            data = Path(source).read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read the ONNX model {source}: {e}") from None
    return OnnxModel(data, input_shape=input_shape, output=output)


# -- scikit-learn (through ONNX) ---------------------------------------------


def from_sklearn(
    estimator: Any, example: np.ndarray, *, method: str = "predict_proba"
) -> OnnxModel:
    """Convert a fitted scikit-learn estimator to ONNX and wrap it as F.

    The conversion is checked at once: the ONNX outputs must equal the
    estimator's own ``method`` on ``example`` (within 1e-4, relative), else
    the converter got something wrong and we refuse the result.

    Args:
        estimator: a fitted estimator (or pipeline) that skl2onnx supports.
        example: ``(N, features)`` inputs, N >= 2, for typing and the check.
        method: ``predict_proba`` (class probabilities), ``decision_function``
            (class scores; a binary classifier gets two columns, ``(-d, d)``,
            so that argmax is the class) or ``predict`` (regressors).

    Raises:
        ConfigError: unknown method, the estimator lacks it, skl2onnx cannot
            convert it, or the converted graph disagrees with the estimator.
    """
    if method not in SKLEARN_METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {SKLEARN_METHODS}")
    if not hasattr(estimator, method):
        raise ConfigError(f"{type(estimator).__name__} has no method {method}")
    example = np.ascontiguousarray(example, dtype=np.float32)
    if example.ndim != 2 or len(example) < 2:
        raise ConfigError(
            f"example must be (N, features) with N >= 2, got shape {example.shape}"
        )
    from skl2onnx import to_onnx

    classifier = method != "predict"
    options = {"zipmap": False} if classifier else {}
    if method == "decision_function":
        options["raw_scores"] = True
    try:
        proto = to_onnx(
            estimator,
            example[:1],
            options={id(estimator): options} if options else None,
        )
    except Exception as e:  # skl2onnx raises many kinds; keep its message
        raise ConfigError(
            f"skl2onnx cannot convert {type(estimator).__name__}: "
            f"{type(e).__name__}: {str(e)[:300]}"
        ) from None
    origin = {
        "library": "scikit-learn",
        "estimator": type(estimator).__name__,
        "method": method,
    }
    model = OnnxModel(
        proto.SerializeToString(),
        input_shape=example.shape[1:],
        output="probabilities" if classifier else None,
        kind="sklearn",
        origin=origin,
    )
    got = model(torch.from_numpy(example)).numpy()
    want = np.asarray(getattr(estimator, method)(example), dtype=np.float32)
    if want.ndim == 1:
        want = want[:, None]
    if method == "decision_function" and want.shape[1] == 1 and got.shape[1] == 2:
        got = got[:, 1:]  # binary scores come as (-d, d); compare d
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-5):
        raise ConfigError(
            f"the ONNX conversion of {type(estimator).__name__}.{method} disagrees "
            "with the estimator on the example inputs; it cannot be served as F"
        )
    return model


# -- Python callables --------------------------------------------------------


class CallableModel(BlackBoxModel):
    """F as a Python function named by import path, called as ``fn(x, **options)``."""

    def __init__(
        self,
        target: str,
        *,
        input_shape: Sequence[int],
        options: dict[str, Any] | None = None,
        output_shape: Sequence[int] | None = None,
    ) -> None:
        fn = resolve_callable(target)
        self.target, self.options = target, dict(options or {})
        super().__init__(
            lambda x: fn(x, **self.options),
            kind="callable",
            input_shape=input_shape,
            output_shape=output_shape,
        )

    def describe(self) -> str:
        return f"callable {self.target}"

    def spec(self) -> dict[str, Any]:
        return super().spec() | {"target": self.target, "options": self.options}


def resolve_callable(target: str) -> Callable[..., Any]:
    """Import ``package.module:function`` (dots after the colon reach attributes).

    Raises:
        ConfigError: not of that form, the module cannot be imported, or the
            name is not callable.
    """
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(
            f"a callable F is named 'package.module:function', got {target!r}"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(
            f"cannot import the module of F {module_name!r}: {e}"
        ) from None
    for part in attr.split("."):
        obj = getattr(obj, part, None)
    if not callable(obj):
        raise ConfigError(f"{module_name!r} has no callable {attr!r} to use as F")
    fn: Callable[..., Any] = obj
    return fn


def from_callable(
    fn: str | Callable[..., Any],
    *,
    input_shape: Sequence[int],
    options: dict[str, Any] | None = None,
) -> CallableModel:
    """Wrap a NumPy function as F; it is stored in bundles by import path.

    Args:
        fn: ``"package.module:function"``, or a module-level function (its
            import path is derived, and must lead back to the same object).
        options: JSON-serializable keyword arguments passed on every call.

    Raises:
        ConfigError: ``fn`` cannot be named by an import path another process
            can resolve (a lambda, a nested function, something in
            ``__main__``), or cannot be imported.
    """
    if callable(fn):
        module, qualname = (
            getattr(fn, "__module__", None),
            getattr(fn, "__qualname__", ""),
        )
        if not module or module == "__main__" or "<" in qualname:
            raise ConfigError(
                f"F {qualname or fn!r} has no import path a serving instance can load; "
                "define it at the top level of an importable module"
            )
        target = f"{module}:{qualname}"
        if resolve_callable(target) is not fn:
            raise ConfigError(f"{target} does not resolve to the function given as F")
    else:
        target = fn
    return CallableModel(target, input_shape=input_shape, options=options)


# -- loading from a bundle ---------------------------------------------------

_SPEC_KEYS = {
    "onnx": {"kind", "input_shape", "output_shape", "output"},
    "sklearn": {"kind", "input_shape", "output_shape", "output", "origin"},
    "callable": {"kind", "input_shape", "output_shape", "target", "options"},
}


def is_blackbox_spec(spec: dict[str, Any]) -> bool:
    """Whether a manifest's base spec names a black-box F (torch specs have no kind)."""
    return "kind" in spec


def load_blackbox(spec: dict[str, Any], directory: Path) -> BlackBoxModel:
    """Rebuild a black-box F from its manifest spec and the bundle directory.

    ONNX graphs are read from ``directory / ONNX_FILE`` only; a spec that
    names any other file is refused, and so is a ``base.onnx`` that is a link
    leading out of the directory.

    Raises:
        BundleError: unknown kind, unexpected or missing spec entries, a
            missing or unsafe ONNX file, or an F that no longer loads.
    """
    kind = spec.get("kind")
    if kind not in _SPEC_KEYS:
        raise BundleError(
            f"the manifest names an unknown kind of F {kind!r}; known: {KINDS}"
        )
    extra = set(spec) - _SPEC_KEYS[kind]
    if extra:
        raise BundleError(
            f"the manifest's {kind} F has unexpected entries {sorted(extra)}; bundle "
            f"files have fixed names ({ONNX_FILE}) and are never named by the manifest"
        )
    try:
        input_shape = [int(s) for s in spec["input_shape"]]
        output_shape = [int(s) for s in spec["output_shape"]]
        if kind == "callable":
            return CallableModel(
                spec["target"],
                input_shape=input_shape,
                options=spec.get("options"),
                output_shape=output_shape,
            )
        return OnnxModel(
            _read_onnx(Path(directory)),
            input_shape=input_shape,
            output=spec.get("output"),
            output_shape=output_shape,
            kind=kind,
            origin=spec.get("origin"),
        )
    except KeyError as e:
        raise BundleError(f"the manifest's {kind} F lacks the entry {e}") from None
    except (ConfigError, TypeError, ValueError) as e:
        raise BundleError(f"the manifest's {kind} F cannot be rebuilt: {e}") from None


def _read_onnx(directory: Path) -> bytes:
    path = directory / ONNX_FILE
    if not path.is_file():
        raise BundleError(f"bundle file {ONNX_FILE} is missing in {directory}")
    if path.resolve().parent != directory.resolve():
        raise BundleError(f"bundle file {path} links outside its bundle directory")
    return path.read_bytes()


# -- a reference black box ---------------------------------------------------


def ink_box(x: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Bounding box of the pixels brighter than ``threshold``: a non-differentiable F.

    Used in the docs and tests as a regression F whose outputs are scored by
    IoU (``learncc.training.blackbox.box_iou``).

    Args:
        x: images ``(N, C, H, W)`` (or ``(N, H, W)``), brightest channel counts.

    Returns:
        ``(N, 4)`` float32 boxes ``(top, left, bottom, right)`` as fractions
        of the image height and width; an image with no bright pixel gets the
        empty box ``(0, 0, 0, 0)``.
    """
    images = x.max(axis=1) if x.ndim == 4 else x  # (N, H, W)
    height, width = images.shape[-2:]
    ink = np.asarray(images > threshold, dtype=bool)  # (N, H, W)
    rows: np.ndarray = np.any(ink, axis=2)  # (N, H)
    cols: np.ndarray = np.any(ink, axis=1)  # (N, W)
    boxes = np.zeros((len(x), 4), dtype=np.float32)
    has = rows.any(axis=1)
    boxes[has, 0] = rows[has].argmax(axis=1) / height
    boxes[has, 1] = cols[has].argmax(axis=1) / width
    boxes[has, 2] = (height - rows[has][:, ::-1].argmax(axis=1)) / height
    boxes[has, 3] = (width - cols[has][:, ::-1].argmax(axis=1)) / width
    return boxes


# -- parity models for regression F ------------------------------------------


class _Affine(nn.Module):
    shift: Tensor
    scale: Tensor

    def __init__(self, shift: Sequence[float], scale: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor(shift, dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift


def scaled_mlp(
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    hidden: tuple[int, ...] = (200, 100),
    out_mean: Sequence[float] | None = None,
    out_std: Sequence[float] | None = None,
) -> nn.Module:
    """``mlp`` whose outputs are scaled to the parity targets' mean and spread.

    A regression F can output values in the hundreds; a plain MLP starts near
    zero and Adam moves its last bias by about ``lr`` per step, so it would
    spend most of a short training just reaching the right scale. The
    statistics are options (stored in the manifest) and also buffers.

    Args:
        num_classes: the output width.
        out_mean, out_std: per-output statistics of the parity targets.
    """
    mean = list(out_mean) if out_mean is not None else [0.0] * num_classes
    std = list(out_std) if out_std is not None else [1.0] * num_classes
    if len(mean) != num_classes or len(std) != num_classes:
        raise ConfigError(
            f"out_mean and out_std need {num_classes} values (the output width), "
            f"got {len(mean)} and {len(std)}"
        )
    if not all(math.isfinite(s) and s > 0 for s in std):
        raise ConfigError(f"out_std must be finite and > 0, got {std}")
    return nn.Sequential(
        mlp(input_shape=input_shape, num_classes=num_classes, hidden=tuple(hidden)),
        _Affine(mean, std),
    )


__all__ = [
    "KINDS",
    "ONNX_FILE",
    "BlackBoxModel",
    "CallableModel",
    "OnnxModel",
    "check_onnx",
    "from_callable",
    "from_onnx",
    "from_sklearn",
    "ink_box",
    "is_blackbox_spec",
    "load_blackbox",
    "probe",
    "resolve_callable",
    "scaled_mlp",
]
