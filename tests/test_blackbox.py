"""Black-box F (issue 4): scikit-learn, ONNX and NumPy callables, end to end.

Each kind trains a parity model briefly and must beat a trivial baseline in
degraded mode by a clear margin; bundles round-trip without pickle; a coded
deployment serves an ONNX F; malformed F and unsafe bundles are refused.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from learncc.bundle import load_bundle
from learncc.codes import CodeConfig
from learncc.data import Dataset, load_dataset
from learncc.errors import BundleError, ConfigError
from learncc.models import Normalized, mlp
from learncc.models.blackbox import (
    ONNX_FILE,
    BlackBoxModel,
    check_onnx,
    from_callable,
    from_onnx,
    from_sklearn,
    ink_box,
    probe,
)
from learncc.training import TrainConfig, train_classifier
from learncc.training.blackbox import box_iou, score, train_blackbox_bundle
from learncc.training.pipeline import train_bundle

ADDITION = CodeConfig(k=2, r=1, encoder="addition", decoder="subtraction")
CONCAT = CodeConfig(k=2, r=1, encoder="concat", decoder="subtraction")


def quick(epochs: int) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=32, augment=False)


def majority_top1(data: Dataset) -> float:
    """Accuracy of always answering the most common training class."""
    label = np.bincount(data.train.y).argmax()
    return float((data.test.y == label).mean())


def assert_same_outputs(a, b, x: np.ndarray) -> None:
    """Two bundles give identical F and parity outputs on ``x``."""
    xt = torch.from_numpy(x)
    with torch.no_grad():
        torch.testing.assert_close(a.base(xt), b.base(xt), rtol=0, atol=0)
        queries = a.encoder(xt[: len(x) // 2 * 2].view(-1, 2, *x.shape[1:]))[:, 0]
        torch.testing.assert_close(
            a.parity[0](queries), b.parity[0](queries), rtol=0, atol=0
        )


# -- scikit-learn ------------------------------------------------------------


@pytest.fixture(scope="module")
def cancer() -> Dataset:
    return load_dataset("breast-cancer")


@pytest.fixture(scope="module")
def cancer_bundle(cancer: Dataset, tmp_path_factory: pytest.TempPathFactory):
    from sklearn.ensemble import GradientBoostingClassifier

    estimator = GradientBoostingClassifier(n_estimators=50, random_state=0)
    estimator.fit(cancer.train.x, cancer.train.y)
    f = from_sklearn(estimator, cancer.train.x[:8], method="predict_proba")
    out = tmp_path_factory.mktemp("cancer") / "bundle"
    bundle = train_blackbox_bundle(
        f, cancer, ADDITION, parity_cfg=quick(20), out=out, progress=False
    )
    return estimator, bundle


def test_sklearn_predict_proba_parity_beats_majority(cancer, cancer_bundle) -> None:
    estimator, bundle = cancer_bundle
    metrics = bundle.manifest["metrics"]
    # the ONNX graph computes the estimator's own probabilities
    x = cancer.test.x
    got = bundle.base(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, estimator.predict_proba(x), rtol=1e-4, atol=1e-5)
    assert metrics["base_top1"] == pytest.approx(estimator.score(x, cancer.test.y))
    # measured 0.868 with the majority class at 0.667
    assert majority_top1(cancer) == pytest.approx(0.667, abs=1e-3)
    assert metrics["degraded_top1"] > majority_top1(cancer) + 0.15
    assert bundle.manifest["task"] == {"metric": "top1", "higher_is_better": True}


def test_sklearn_bundle_round_trip_is_exact_and_pickle_free(
    cancer, cancer_bundle
) -> None:
    _, bundle = cancer_bundle
    files = sorted(p.name for p in bundle.path.iterdir())
    assert files == [
        ONNX_FILE,
        "code.safetensors",
        "manifest.json",
        "parity.safetensors",
    ]
    spec = json.loads((bundle.path / "manifest.json").read_text())["base"]
    assert spec["kind"] == "sklearn" and spec["output_shape"] == [2]
    assert spec["origin"]["estimator"] == "GradientBoostingClassifier"
    loaded = load_bundle(bundle.path)
    assert (
        isinstance(loaded.base, BlackBoxModel) and loaded.base.differentiable is False
    )
    assert_same_outputs(bundle, loaded, cancer.test.x[:10])


def test_sklearn_decision_function_scores(cancer) -> None:
    from sklearn.linear_model import LogisticRegression

    wine = load_dataset("wine")
    multi = LogisticRegression(max_iter=500).fit(wine.train.x, wine.train.y)
    f = from_sklearn(multi, wine.train.x[:8], method="decision_function")
    np.testing.assert_allclose(
        f(torch.from_numpy(wine.test.x)).numpy(),
        multi.decision_function(wine.test.x),
        rtol=1e-4,
        atol=1e-4,
    )
    # a binary classifier's single score d comes as two columns (-d, d)
    binary = LogisticRegression(max_iter=500).fit(cancer.train.x, cancer.train.y)
    g = from_sklearn(binary, cancer.train.x[:8], method="decision_function")
    d = binary.decision_function(cancer.test.x)
    np.testing.assert_allclose(
        g(torch.from_numpy(cancer.test.x)).numpy(),
        np.stack([-d, d], 1),
        rtol=1e-4,
        atol=1e-4,
    )

    bundle = train_blackbox_bundle(
        f, wine, ADDITION, parity_cfg=quick(30), progress=False
    )
    # three classes: chance is 1/3 (the training majority class is 0.167 of
    # the test split); measured 0.815
    assert majority_top1(wine) == pytest.approx(0.167, abs=1e-3)
    assert bundle.manifest["metrics"]["degraded_top1"] > 0.7


def test_sklearn_regressor_relative_error_beats_default() -> None:
    from sklearn.ensemble import GradientBoostingRegressor

    data = load_dataset("diabetes")
    assert data.num_classes == 0 and data.train.y.dtype == np.float32
    estimator = GradientBoostingRegressor(n_estimators=50, random_state=0)
    estimator.fit(data.train.x, data.train.y)
    f = from_sklearn(estimator, data.train.x[:8], method="predict")
    bundle = train_blackbox_bundle(
        f, data, ADDITION, parity_cfg=quick(30), progress=False
    )
    m = bundle.manifest["metrics"]
    assert bundle.manifest["task"]["metric"] == "relative_error"  # the default
    # reference = the true targets: F's own error, then degraded mode's
    pred = estimator.predict(data.test.x)
    assert m["base_relative_error"] == pytest.approx(
        np.abs(pred - data.test.y).sum() / np.abs(data.test.y).sum(), rel=1e-4
    )
    # measured: F 0.290, degraded 0.299, default (training mean) 0.443
    assert m["degraded_relative_error"] < m["default_relative_error"] - 0.1
    assert m["reconstruction_relative_error"] < 0.25
    assert m["overall_relative_error_at_f0.1"] == pytest.approx(
        0.9 * m["base_relative_error"] + 0.1 * m["degraded_relative_error"]
    )


# -- ONNX (the repository's own MLP, exported) -------------------------------


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


@pytest.fixture(scope="module")
def onnx_bundle(digits: Dataset, tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    model = Normalized(
        mlp(input_shape=digits.input_shape, num_classes=10), **digits.normalization()
    )
    model, _ = train_classifier(model, digits, quick(10), progress=False)
    path = tmp_path_factory.mktemp("onnx") / "mlp.onnx"
    with warnings.catch_warnings():  # the exporter's own deprecations
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.from_numpy(digits.val.x[:2]),),
            str(path),
            dynamo=True,
            input_names=["x"],
            output_names=["logits"],
            external_data=False,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )
    f = from_onnx(path, input_shape=digits.input_shape)
    out = path.parent / "bundle"
    bundle = train_blackbox_bundle(
        f, digits, CONCAT, parity_cfg=quick(20), out=out, progress=False
    )
    return model, bundle


def test_onnx_f_matches_torch_and_parity_beats_chance(digits, onnx_bundle) -> None:
    model, bundle = onnx_bundle
    x = torch.from_numpy(digits.test.x)
    with torch.no_grad():
        torch.testing.assert_close(bundle.base(x), model(x), rtol=1e-4, atol=1e-4)
    metrics = bundle.manifest["metrics"]
    assert metrics["base_top1"] > 0.9
    # ten balanced classes: chance is 0.1; measured 0.819
    assert metrics["degraded_top1"] > 0.7
    assert bundle.manifest["base"] == {
        "kind": "onnx",
        "input_shape": [1, 8, 8],
        "output_shape": [10],
        "output": "logits",
    }
    assert_same_outputs(bundle, load_bundle(bundle.path), digits.test.x[:16])


def test_worker_loads_onnx_f(digits, onnx_bundle) -> None:
    from learncc.serving.worker import load_model

    _, bundle = onnx_bundle
    run, input_shape = load_model({"bundle": str(bundle.path), "role": "data"})
    x = digits.test.x[:5]
    assert input_shape == (1, 8, 8)
    np.testing.assert_array_equal(run(x), bundle.base(torch.from_numpy(x)).numpy())


@pytest.mark.slow
async def test_coded_deployment_serves_onnx_f(digits, onnx_bundle) -> None:
    from learncc.serving import DATA, deployment
    from learncc.serving.slowdown import SlowdownConfig, instance_schedule

    _, bundle = onnx_bundle
    frontend, shape = deployment(bundle.path, "coded", m=2, flush_timeout_s=1.0)
    assert (shape.data_instances, shape.parity_instances) == (2, 1)
    xs = digits.test.x[:8]
    await frontend.start()
    try:
        # data/0 hangs: the first member of every coding group must be rebuilt
        hang = instance_schedule(
            SlowdownConfig(fail_instances=(0,), fail_at_s=0.0), 0, 10, 0
        )
        await frontend.backend.configure(DATA, 0, {"schedule": hang, "t0": 0.0})
        answers = await asyncio.gather(*[frontend.submit(x) for x in xs])
        # end the hung instance now rather than wait out close()'s grace period
        hung = frontend.backend.instances[(DATA, 0)].process
        hung.kill()
        hung.wait()
    finally:
        await frontend.close()

    with torch.no_grad():
        f = bundle.base(torch.from_numpy(xs)).numpy()
        groups = torch.from_numpy(xs).view(4, 2, *xs.shape[1:])
        parity = bundle.parity[0](bundle.encoder(groups)[:, 0]).numpy()  # (4, 10)
    assert [a.reconstructed for a in answers] == [True, False] * 4
    for i, answer in enumerate(answers):
        group, slot = divmod(i, 2)
        if answer.reconstructed:
            expected = parity[group] - f[2 * group + 1 - slot]
            np.testing.assert_allclose(answer.output, expected, rtol=1e-4, atol=1e-4)
        else:
            np.testing.assert_array_equal(answer.output, f[i])  # F's output, exactly


# -- Python callables, a regression scored by IoU ----------------------------


def test_ink_box_exact_values() -> None:
    image = np.zeros((2, 1, 4, 8), dtype=np.float32)
    image[0, 0, 1:3, 2:7] = 1.0  # rows 1-2, columns 2-6
    assert ink_box(image).tolist() == [[0.25, 0.25, 0.75, 0.875], [0.0, 0.0, 0.0, 0.0]]
    a = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor(
        [[0.25, 0.25, 0.75, 0.75], [0.0, 0.0, 0.0, 0.0], [0.6, 0.6, 0.4, 0.4]]
    )
    # overlap 1/16 over union 7/16; two empty boxes agree; an inverted box is empty
    torch.testing.assert_close(box_iou(a, b), torch.tensor([1 / 7, 1.0, 0.0]))
    assert (
        score(
            "relative_error", torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0], [2.0]])
        )
        == 0.5
    )


@pytest.mark.slow
def test_callable_box_parity_beats_default_box(tmp_path: Path) -> None:
    data = load_dataset("mnist5k")
    f = from_callable(ink_box, input_shape=data.input_shape)
    bundle = train_blackbox_bundle(
        f,
        data,
        CONCAT,
        parity_cfg=quick(8),
        metric="iou",
        out=tmp_path / "box",
        progress=False,
    )
    m = bundle.manifest["metrics"]
    # labels are digits, not boxes: F's own box is the reference
    assert m["base_iou"] == 1.0 and m["degraded_iou"] == m["reconstruction_iou"]
    # measured: degraded 0.846, the mean training box 0.717
    assert m["default_iou"] == pytest.approx(0.717, abs=0.01)
    assert m["degraded_iou"] > m["default_iou"] + 0.1
    assert bundle.manifest["base"] == {
        "kind": "callable",
        "input_shape": [1, 28, 28],
        "output_shape": [4],
        "target": "learncc.models.blackbox:ink_box",
        "options": {},
    }
    assert bundle.manifest["parity"]["model"] == "learncc.models.blackbox:scaled_mlp"
    loaded = load_bundle(bundle.path)
    assert_same_outputs(bundle, loaded, data.test.x[:8])

    # F edited since the bundle was built: its fill output no longer matches
    manifest = json.loads((bundle.path / "manifest.json").read_text())
    manifest["base"]["options"] = {"threshold": 0.05}
    (bundle.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="no longer gives the output stored"):
        load_bundle(bundle.path)


# -- refusals ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("numpy:sum", r"returned shape \(\) for a batch of 1 inputs"),
        ("numpy:transpose", r"returned shape \(30, 1\) for a batch of 1 inputs"),
        ("numpy:ravel", r"returned shape \(30,\) for a batch of 1"),
    ],
)
def test_wrong_output_shape_is_rejected_before_training(
    cancer, target, message
) -> None:
    f = from_callable(target, input_shape=cancer.input_shape)
    with pytest.raises(ConfigError, match=message):
        train_blackbox_bundle(f, cancer, ADDITION, parity_cfg=quick(1), progress=False)


def test_configuration_mismatches_are_rejected(cancer, digits) -> None:
    # F's width does not match the metric
    f = from_callable(
        "numpy:cumsum", input_shape=cancer.input_shape, options={"axis": 1}
    )
    with pytest.raises(
        ConfigError, match=r"metric top1 needs .* \(2 classes\).*width 30"
    ):
        train_blackbox_bundle(f, cancer, ADDITION, parity_cfg=quick(1), progress=False)
    with pytest.raises(ConfigError, match="metric iou needs F to output boxes"):
        train_blackbox_bundle(
            f, cancer, ADDITION, parity_cfg=quick(1), metric="iou", progress=False
        )
    # F's input shape does not match the data
    box = from_callable(ink_box, input_shape=(1, 28, 28))
    with pytest.raises(ConfigError, match=r"takes inputs of shape \(1, 28, 28\)"):
        train_blackbox_bundle(box, digits, CONCAT, parity_cfg=quick(1), progress=False)
    # F that bundles could not reload
    with pytest.raises(ConfigError, match="no import path"):
        from_callable(lambda x: x, input_shape=(3,))
    with pytest.raises(ConfigError, match="'package.module:function'"):
        from_callable("numpy.sum", input_shape=(3,))
    # probe needs a batch to check the batch dimension
    with pytest.raises(ConfigError, match="at least 2 inputs"):
        probe(box, digits.val.x[:1])


def _tiny_onnx(batch: int | str, external: str | None = None) -> bytes:
    """y = x + w for x of shape (batch, 3); ``external`` moves w to a file."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones(3, dtype=np.float32), "w")
    if external is not None:
        w.ClearField("raw_data")
        w.data_location = TensorProto.EXTERNAL
        w.external_data.add(key="location", value=external)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_onnx_input_problems_are_rejected() -> None:
    f = from_onnx(_tiny_onnx("N"), input_shape=(3,))
    assert f(torch.zeros(2, 3)).tolist() == [[1.0, 1.0, 1.0]] * 2
    with pytest.raises(ConfigError, match="batch dimension is fixed at 1"):
        from_onnx(_tiny_onnx(1), input_shape=(3,))
    with pytest.raises(ConfigError, match=r"does not fit inputs of shape \(4,\)"):
        from_onnx(_tiny_onnx("N"), input_shape=(4,))
    with pytest.raises(
        ConfigError, match="has no output 'z'; its outputs are \\['y'\\]"
    ):
        from_onnx(_tiny_onnx("N"), input_shape=(3,), output="z")
    with pytest.raises(BundleError, match="not a valid ONNX model"):
        check_onnx(b"definitely not protobuf")


def test_onnx_files_cannot_escape_the_bundle(cancer_bundle, tmp_path: Path) -> None:
    _, bundle = cancer_bundle
    # an ONNX graph whose tensors live in a file named by a relative path
    with pytest.raises(
        BundleError, match=r"tensor 'w' in an external file \('\.\./secret\.bin'\)"
    ):
        check_onnx(_tiny_onnx("N", external="../secret.bin"))

    # a manifest that names a file of its own is refused; the name is fixed
    copy = tmp_path / "copy"
    shutil.copytree(bundle.path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["base"]["path"] = "../elsewhere.onnx"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        BundleError,
        match=r"unexpected entries \['path'\]; bundle files have fixed names",
    ):
        load_bundle(copy)

    # base.onnx as a link to a file outside the bundle
    linked = tmp_path / "linked"
    shutil.copytree(bundle.path, linked)
    outside = tmp_path / "outside.onnx"
    (linked / ONNX_FILE).rename(outside)
    os.symlink(outside, linked / ONNX_FILE)
    with pytest.raises(BundleError, match="links outside its bundle directory"):
        load_bundle(linked)

    (linked / ONNX_FILE).unlink()
    with pytest.raises(BundleError, match="base.onnx is missing"):
        load_bundle(linked)


def test_torch_bundles_are_unchanged(digits, tmp_path: Path) -> None:
    bundle = train_bundle(
        digits,
        CONCAT,
        base_cfg=quick(1),
        parity_cfg=quick(1),
        out=tmp_path / "torch",
        progress=False,
    )
    assert "kind" not in bundle.manifest["base"]
    assert (tmp_path / "torch" / "base.safetensors").is_file()
    assert not (tmp_path / "torch" / ONNX_FILE).exists()
    loaded = load_bundle(tmp_path / "torch")
    assert not isinstance(loaded.base, BlackBoxModel)
    assert_same_outputs(bundle, loaded, digits.test.x[:8])
