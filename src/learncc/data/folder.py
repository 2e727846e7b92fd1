"""A user's own images: one subfolder of ``data_dir`` per class.

::

    data_dir/
        cat/  001.png  002.jpg ...
        dog/  001.png ...

Classes are the subfolder names in sorted order (label 0 is the first). Images
load as grayscale when every file is grayscale, else as RGB; alpha channels
are dropped. All images must share one size: resizing silently would change
what the model sees, so mismatches are refused and the user resizes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from learncc.data.base import Dataset, register, split_pool
from learncc.errors import ConfigError, DataUnavailableError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
# Pillow modes without colour. Palette ("P") images count as colour even when
# their palette is all grays, since telling would mean decoding. 16-bit and
# float modes are clipped to 8 bits by the conversion to "L"; save such images
# as 8-bit to keep their full range.
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})


def find_images(data_dir: str | Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """List the class names and the (image path, label) pairs under ``data_dir``.

    Args:
        data_dir: a folder with one subfolder of PNG/JPEG images per class.
            Hidden entries (names starting with ".") are skipped.

    Raises:
        DataUnavailableError: ``data_dir`` does not exist.
        ConfigError: it has no class subfolders, or a class folder has no images.
    """
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataUnavailableError(
            f"image folder {root} does not exist; pass data_dir pointing at a "
            "folder with one subfolder of PNG/JPEG images per class"
        )
    classes = sorted(
        p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    if not classes:
        raise ConfigError(
            f"{root} has no class subfolders; put each class's images in its own "
            f"subfolder, e.g. {root / 'cat'}/001.png"
        )
    samples: list[tuple[Path, int]] = []
    for label, cls in enumerate(classes):
        files = sorted(
            p
            for p in (root / cls).iterdir()
            if p.is_file()
            and p.suffix.lower() in IMAGE_SUFFIXES
            and not p.name.startswith(".")
        )
        if not files:
            raise ConfigError(
                f"class folder {root / cls} has no .png/.jpg/.jpeg images; add "
                "some or remove the folder"
            )
        samples.extend((f, label) for f in files)
    return classes, samples


@register("folder")
def load_folder(
    *, name: str, data_dir: str | Path | None, seed: int, **_: Any
) -> Dataset:
    """Load an image folder and split it 70/10/20 with ``seed``.

    Args:
        name: the registered name, ``folder``.
        data_dir: the folder of class subfolders (required).
        seed: seed of the train/validation/test split.

    Raises:
        ConfigError: ``data_dir`` is None, the layout is wrong (see
            ``find_images``), an image cannot be read, or two images differ in
            size.
        DataUnavailableError: ``data_dir`` does not exist.
    """
    if data_dir is None:
        raise ConfigError(
            "dataset 'folder' needs data_dir: a folder with one subfolder of "
            "images per class"
        )
    classes, samples = find_images(data_dir)

    # First pass reads headers only: the channel count must be known before any
    # pixel is decoded, and a size mismatch should fail before the slow part.
    first_path = samples[0][0]
    size, gray = _header(first_path)
    for path, _label in samples[1:]:
        other_size, other_gray = _header(path)
        if other_size != size:
            raise ConfigError(
                f"images differ in size: {first_path} is {_wxh(size)} but {path} "
                f"is {_wxh(other_size)}; resize all images to one size (e.g. "
                "with Pillow's Image.resize) before loading"
            )
        gray = gray and other_gray

    mode, channels = ("L", 1) if gray else ("RGB", 3)
    width, height = size
    x = np.empty((len(samples), channels, height, width), np.float32)  # (N, C, H, W)
    for i, (path, _label) in enumerate(samples):
        try:
            with Image.open(path) as im:
                pixels = np.asarray(im.convert(mode), np.float32)  # (H, W[, C])
        except OSError as exc:  # truncated files only fail once decoded
            raise _unreadable(path, exc) from exc
        x[i] = pixels.reshape(height, width, channels).transpose(2, 0, 1)
    x /= 255.0
    y = np.array([label for _path, label in samples], np.int64)
    return split_pool(name, x, y, len(classes), seed=seed)


def _header(path: Path) -> tuple[tuple[int, int], bool]:
    """(width, height) and whether the image is grayscale, without decoding."""
    try:
        with Image.open(path) as im:
            return im.size, im.mode in _GRAY_MODES
    except OSError as exc:  # UnidentifiedImageError is an OSError
        raise _unreadable(path, exc) from exc


def _unreadable(path: Path, exc: OSError) -> ConfigError:
    return ConfigError(
        f"cannot read image {path} ({exc}); re-save it as PNG or JPEG or remove it"
    )


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"
