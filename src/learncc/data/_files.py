"""Plumbing shared by the file-based loaders: where files live, fetching them,
and cutting a validation slice off an official training set."""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from learncc.data.base import Dataset, Split

logger = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path("~/.cache/learncc/data")
DOWNLOAD_TIMEOUT_S = 10.0
_CHUNK_BYTES = 1 << 20


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """``data_dir`` as a Path, or the default cache folder when it is None."""
    return Path(data_dir if data_dir is not None else DEFAULT_DATA_DIR).expanduser()


def fetch(urls: Sequence[str], dest: Path) -> str | None:
    """Download the first of ``urls`` that answers into ``dest``.

    Args:
        urls: mirrors of one file, tried in order.
        dest: the file to write; its folder is created once a mirror answers,
            and removed again (if we created it and it is empty) when none
            delivers, so a failed download leaves no empty folders behind.

    Returns:
        None on success, else one line per mirror saying why it failed, for the
        caller's error message.
    """
    created = [d for d in (dest.parent, *dest.parent.parents) if not d.exists()]
    # Write beside the target and rename, so an interrupted download never
    # leaves a truncated file that a later run would take for the real one.
    partial = dest.with_name(dest.name + ".part")
    failures = []
    for url in urls:
        logger.info("downloading %s to %s", url, dest)
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                dest.parent.mkdir(parents=True, exist_ok=True)
                with open(partial, "wb") as out:
                    while chunk := response.read(_CHUNK_BYTES):
                        out.write(chunk)
        except (OSError, ValueError) as exc:  # URLError and timeouts are OSErrors
            partial.unlink(missing_ok=True)
            failures.append(f"{url}: {exc}")
            continue
        os.replace(partial, dest)
        return None
    for folder in created:  # deepest first
        try:
            folder.rmdir()
        except OSError:
            break  # not empty (someone else's files) or not ours to remove
    return "\n".join(failures)


def hold_out_val(
    name: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    *,
    seed: int,
    val_fraction: float = 0.1,
) -> Dataset:
    """Keep the official test split and take a seeded validation slice of train.

    The test split stays the official one so numbers compare with published
    results; only the train/validation cut depends on ``seed``.
    """
    x_train, y_train = train
    order = np.random.default_rng(seed).permutation(len(y_train))
    val, rest = np.split(order, [int(round(len(y_train) * val_fraction))])
    return Dataset(
        name=name,
        train=Split(x_train[rest], y_train[rest]),
        val=Split(x_train[val], y_train[val]),
        test=Split(*test),
        num_classes=num_classes,
        seed=seed,
    )
