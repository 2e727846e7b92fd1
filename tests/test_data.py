"""Dataset loaders, fed small files written in each real on-disk format."""

from __future__ import annotations

import gzip
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from learncc.data import idx, load_dataset, read_cifar_batch, read_idx
from learncc.errors import ConfigError, DataUnavailableError, UnknownNameError

# --- IDX (MNIST, Fashion-MNIST) ---------------------------------------------


def write_idx(path: Path, array: np.ndarray, *, gz: bool = False) -> Path:
    """Write ``array`` (uint8) as an IDX file, as LeCun's page describes it."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    raw = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


def make_idx_set(folder: Path, *, n_train: int = 50, n_test: int = 20, gz: bool):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_y": np.arange(n_train, dtype=np.uint8) % 10,
        "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_y": np.arange(n_test, dtype=np.uint8) % 10,
    }
    arrays["test_x"][0, 0, 0] = 255
    arrays["test_x"][0, 0, 1] = 0
    for key, base in idx.FILES.items():
        write_idx(folder / base, arrays[key], gz=gz)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trips(tmp_path: Path, gz: bool) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "a-idx3-ubyte", array, gz=gz)
    np.testing.assert_array_equal(read_idx(path), array)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_dataset_loads_official_splits(tmp_path: Path, name: str, gz: bool):
    arrays = make_idx_set(tmp_path / name, gz=gz)
    ds = load_dataset(name, data_dir=tmp_path, seed=3, download=False)

    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert (len(ds.train), len(ds.val), len(ds.test)) == (45, 5, 20)
    assert ds.train.x.dtype == np.float32 and ds.train.y.dtype == np.int64
    # The test split is the official one, in order, scaled to [0, 1].
    assert ds.test.x[0, 0, 0, 0] == 1.0 and ds.test.x[0, 0, 0, 1] == 0.0
    np.testing.assert_allclose(ds.test.x[:, 0] * 255, arrays["test_x"], atol=1e-4)
    np.testing.assert_array_equal(ds.test.y, arrays["test_y"])
    # Train and validation partition the official train set.
    pooled = np.sort(np.concatenate([ds.train.y, ds.val.y]))
    np.testing.assert_array_equal(pooled, np.sort(arrays["train_y"]))


def test_idx_files_directly_in_data_dir(tmp_path: Path) -> None:
    make_idx_set(tmp_path, gz=False)
    assert len(load_dataset("mnist", data_dir=tmp_path, download=False).test) == 20


def test_idx_validation_slice_is_seeded(tmp_path: Path) -> None:
    make_idx_set(tmp_path / "mnist", gz=True)
    a, b, c = (
        load_dataset("mnist", data_dir=tmp_path, seed=s, download=False)
        for s in (1, 1, 2)
    )
    np.testing.assert_array_equal(a.val.x, b.val.x)
    np.testing.assert_array_equal(a.train.y, b.train.y)
    assert not np.array_equal(a.val.x, c.val.x)


def test_idx_missing_files_without_download(tmp_path: Path) -> None:
    with pytest.raises(
        DataUnavailableError, match=r"missing train-images-idx3-ubyte.*mnist5k"
    ) as info:
        load_dataset("mnist", data_dir=tmp_path, download=False)
    assert str(tmp_path / "mnist") in str(info.value)
    assert "download=False" in str(info.value)


def test_idx_download_fetches_from_mirror(tmp_path, monkeypatch) -> None:
    # A file:// mirror exercises the download path without the network.
    mirror = tmp_path / "mirror"
    arrays = make_idx_set(mirror, gz=True)
    monkeypatch.setitem(idx.MIRRORS, "mnist", [mirror.as_uri() + "/"])
    ds = load_dataset("mnist", data_dir=tmp_path / "data", download=True)
    np.testing.assert_array_equal(ds.test.y, arrays["test_y"])
    assert (tmp_path / "data" / "mnist" / "t10k-labels-idx1-ubyte.gz").is_file()


def test_idx_download_failure_says_what_to_do(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(idx.MIRRORS, "mnist", [(tmp_path / "nowhere").as_uri() + "/"])
    with pytest.raises(
        DataUnavailableError, match=r"(?s)downloading failed.*nowhere.*put the"
    ):
        load_dataset("mnist", data_dir=tmp_path, download=True)
    assert not list((tmp_path / "mnist").glob("*.part"))


def test_a_failed_download_creates_no_folders(tmp_path, monkeypatch) -> None:
    # fresh-user test: `train --data-dir /nonexistent` left the folder behind
    from learncc.data import cifar

    monkeypatch.setitem(idx.MIRRORS, "mnist", [(tmp_path / "nowhere").as_uri() + "/"])
    missing = tmp_path / "new" / "data"
    with pytest.raises(DataUnavailableError, match=rf"put the .* in {missing}/mnist"):
        load_dataset("mnist", data_dir=missing, download=True)
    assert not (tmp_path / "new").exists()

    layout = cifar._LAYOUTS["cifar10"]
    nowhere = (tmp_path / "nowhere.tar.gz").as_uri()
    monkeypatch.setitem(
        cifar._LAYOUTS, "cifar10", cifar._Layout(**{**layout.__dict__, "url": nowhere})
    )
    with pytest.raises(
        DataUnavailableError, match=rf"extract .* into {missing}/cifar10"
    ):
        load_dataset("cifar10", data_dir=missing, download=True)
    assert not (tmp_path / "new").exists()

    # a folder that was there before stays, with what it holds
    (tmp_path / "kept" / "mnist").mkdir(parents=True)
    with pytest.raises(DataUnavailableError):
        load_dataset("mnist", data_dir=tmp_path / "kept", download=True)
    assert (tmp_path / "kept" / "mnist").is_dir()


def test_idx_corrupt_magic_names_the_file(tmp_path: Path) -> None:
    make_idx_set(tmp_path / "mnist", gz=False)
    bad = tmp_path / "mnist" / "train-labels-idx1-ubyte"
    bad.write_bytes(b"\x12\x34\x08\x01" + bad.read_bytes()[4:])
    with pytest.raises(DataUnavailableError, match=r"train-labels.*bad magic number"):
        load_dataset("mnist", data_dir=tmp_path, download=False)


def test_idx_truncated_data_is_refused(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x-idx3-ubyte", np.zeros((4, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataUnavailableError, match=r"declares shape \(4, 28, 28\)"):
        read_idx(path)


def test_idx_images_and_labels_must_agree(tmp_path: Path) -> None:
    make_idx_set(tmp_path / "mnist", gz=False)
    write_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte", np.zeros(7, np.uint8))
    with pytest.raises(DataUnavailableError, match="do not form images"):
        load_dataset("mnist", data_dir=tmp_path, download=False)


# --- CIFAR -------------------------------------------------------------------


def write_cifar_batch(path: Path, data: np.ndarray, labels: dict[bytes, list]):
    # Bytes keys, a uint8 (N, 3072) array and list labels, as in the originals.
    # Protocol 3 writes bytes and arrays without the _codecs global that
    # protocol 2 would need under Python 3.
    batch = {b"batch_label": b"testing batch", b"data": data, **labels}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(batch, protocol=3))


def cifar_data(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def test_cifar10_loads_batches(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    for i in range(1, 6):
        labels = {b"labels": [(i + j) % 10 for j in range(8)]}
        write_cifar_batch(folder / f"data_batch_{i}", cifar_data(8, i), labels)
    test = cifar_data(6, 0)
    test[0, 0] = 255  # red plane, pixel (0, 0)
    test[0, 1024 + 33] = 255  # green plane, pixel (1, 1)
    write_cifar_batch(folder / "test_batch", test, {b"labels": [9, 0, 1, 2, 3, 4]})

    ds = load_dataset("cifar10", data_dir=tmp_path, seed=0, download=False)
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10
    assert (len(ds.train), len(ds.val), len(ds.test)) == (36, 4, 6)
    assert ds.test.x.dtype == np.float32 and ds.test.y.dtype == np.int64
    assert ds.test.x[0, 0, 0, 0] == 1.0 and ds.test.x[0, 1, 1, 1] == 1.0
    np.testing.assert_array_equal(ds.test.y, [9, 0, 1, 2, 3, 4])
    np.testing.assert_allclose(
        ds.test.x.reshape(6, -1) * 255, test.astype(np.float32), atol=1e-4
    )
    again = load_dataset("cifar10", data_dir=tmp_path, seed=0, download=False)
    np.testing.assert_array_equal(ds.val.x, again.val.x)


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar100" / "cifar-100-python"
    for split, n in (("train", 20), ("test", 5)):
        labels = {
            b"fine_labels": [99 - j for j in range(n)],
            b"coarse_labels": [j % 20 for j in range(n)],
        }
        write_cifar_batch(folder / split, cifar_data(n, n), labels)
    ds = load_dataset("cifar100", data_dir=tmp_path, seed=0, download=False)
    assert ds.num_classes == 100 and ds.input_shape == (3, 32, 32)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (18, 2, 5)
    np.testing.assert_array_equal(ds.test.y, [99, 98, 97, 96, 95])


def test_cifar_reads_numpy1_module_names(tmp_path: Path) -> None:
    # The real batches were pickled by numpy 1.x, whose rebuilder lives at
    # numpy.core.multiarray; protocol 3 writes globals as text, so swap it in.
    raw = pickle.dumps({b"data": np.arange(4, dtype=np.uint8)}, protocol=3)
    assert b"numpy._core.multiarray" in raw
    path = tmp_path / "batch"
    path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    np.testing.assert_array_equal(read_cifar_batch(path)[b"data"], np.arange(4))


class _RunsShell:
    def __reduce__(self):
        return (os.system, ("echo owned > owned.txt",))


def test_cifar_refuses_malicious_pickle(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    path.parent.mkdir()
    path.write_bytes(pickle.dumps({b"data": _RunsShell()}, protocol=3))
    with pytest.raises(DataUnavailableError, match=r"refusing to load global .*system"):
        read_cifar_batch(path)
    assert not (tmp_path / "owned.txt").exists()


def test_cifar_missing_without_download(tmp_path: Path) -> None:
    with pytest.raises(
        DataUnavailableError, match=r"no complete cifar-10-batches-py/.*cs\.toronto"
    ):
        load_dataset("cifar10", data_dir=tmp_path, download=False)


def test_cifar_download_extracts_tarball(tmp_path, monkeypatch) -> None:
    from learncc.data import cifar

    src = tmp_path / "src" / "cifar-100-python"
    for split in ("train", "test"):
        write_cifar_batch(src / split, cifar_data(10, 1), {b"fine_labels": [7] * 10})
    tarball = tmp_path / "src" / "cifar-100-python.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(src, arcname="cifar-100-python")
    layout = cifar._LAYOUTS["cifar100"]
    monkeypatch.setitem(
        cifar._LAYOUTS,
        "cifar100",
        cifar._Layout(**{**layout.__dict__, "url": tarball.as_uri()}),
    )
    ds = load_dataset("cifar100", data_dir=tmp_path / "data", download=True)
    assert len(ds.test) == 10 and set(ds.train.y.tolist()) == {7}
    assert not (tmp_path / "data" / "cifar100" / tarball.name).exists()


def test_cifar_wrong_shape_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    write_cifar_batch(folder / "train", cifar_data(4, 0)[:, :100], {})
    write_cifar_batch(folder / "test", cifar_data(4, 0), {b"fine_labels": [0] * 4})
    with pytest.raises(DataUnavailableError, match="no b'fine_labels' entry"):
        load_dataset("cifar100", data_dir=tmp_path, download=False)


# --- image folder ------------------------------------------------------------


def write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def test_folder_grayscale(tmp_path: Path) -> None:
    for cls in ("b_dog", "a_cat"):
        for i in range(5):
            write_png(
                tmp_path / cls / f"{i}.png", np.full((6, 4), 255 * (i % 2), np.uint8)
            )
    (tmp_path / "a_cat" / "notes.txt").write_text("not an image")

    ds = load_dataset("folder", data_dir=tmp_path, seed=0)
    assert ds.input_shape == (1, 6, 4) and ds.num_classes == 2
    assert (len(ds.train), len(ds.val), len(ds.test)) == (7, 1, 2)
    x = np.concatenate([ds.train.x, ds.val.x, ds.test.x])
    assert x.dtype == np.float32 and set(np.unique(x).tolist()) == {0.0, 1.0}
    y = np.concatenate([ds.train.y, ds.val.y, ds.test.y])
    assert y.dtype == np.int64 and sorted(y.tolist()) == [0] * 5 + [1] * 5


def test_folder_rgb_when_any_image_has_colour(tmp_path: Path) -> None:
    write_png(tmp_path / "gray" / "0.png", np.full((3, 3), 51, np.uint8))
    red = np.zeros((3, 3, 3), np.uint8)
    red[..., 0] = 255
    write_png(tmp_path / "red" / "0.png", red)
    ds = load_dataset("folder", data_dir=tmp_path, seed=0)
    assert ds.input_shape == (3, 3, 3)
    x = np.concatenate([ds.train.x, ds.val.x, ds.test.x])
    y = np.concatenate([ds.train.y, ds.val.y, ds.test.y])
    np.testing.assert_allclose(x[y == 0][0], 0.2, atol=1e-6)  # gray replicated
    np.testing.assert_array_equal(x[y == 1][0, :, 0, 0], [1.0, 0.0, 0.0])


def test_folder_split_is_seeded(tmp_path: Path) -> None:
    for i in range(20):
        write_png(tmp_path / str(i % 2) / f"{i}.png", np.full((2, 2), i, np.uint8))
    a, b, c = (load_dataset("folder", data_dir=tmp_path, seed=s) for s in (5, 5, 6))
    np.testing.assert_array_equal(a.test.x, b.test.x)
    assert not np.array_equal(a.test.x, c.test.x)


def test_folder_mixed_sizes_name_both_files(tmp_path: Path) -> None:
    write_png(tmp_path / "a" / "0.png", np.zeros((4, 4), np.uint8))
    write_png(tmp_path / "b" / "0.png", np.zeros((5, 4), np.uint8))
    with pytest.raises(
        ConfigError, match=r"a/0\.png is 4x4 but .*b/0\.png is 4x5.*resize"
    ):
        load_dataset("folder", data_dir=tmp_path)


def test_folder_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailableError, match="does not exist"):
        load_dataset("folder", data_dir=tmp_path / "nope")


def test_folder_empty_class(tmp_path: Path) -> None:
    write_png(tmp_path / "a" / "0.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "b").mkdir()
    with pytest.raises(ConfigError, match=r"class folder .*b has no \.png"):
        load_dataset("folder", data_dir=tmp_path)


def test_folder_no_classes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no class subfolders"):
        load_dataset("folder", data_dir=tmp_path)


def test_folder_unreadable_image(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "0.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match=r"cannot read image .*0\.png"):
        load_dataset("folder", data_dir=tmp_path)


def test_folder_needs_data_dir() -> None:
    with pytest.raises(ConfigError, match="needs data_dir"):
        load_dataset("folder")


# --- registry and bundled datasets -------------------------------------------


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown dataset 'imagenet'.*cifar10"):
        load_dataset("imagenet")


def test_mnist5k() -> None:
    ds = load_dataset("mnist5k", seed=0)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (3500, 500, 1000)
    assert ds.num_classes == 10 and ds.input_shape == (1, 28, 28)
    assert ds.train.x.dtype == np.float32 and ds.train.y.dtype == np.int64
    assert 0.0 <= ds.train.x.min() and ds.train.x.max() <= 1.0
    assert set(ds.train.y.tolist()) == set(range(10))


def test_digits() -> None:
    ds = load_dataset("digits", seed=0)
    assert ds.input_shape == (1, 8, 8) and ds.num_classes == 10
    assert len(ds.train) + len(ds.val) + len(ds.test) == 1797
    assert 0.0 <= ds.train.x.min() and ds.train.x.max() <= 1.0
