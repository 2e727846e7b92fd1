"""Where commands write their results."""

from __future__ import annotations

import tempfile
from pathlib import Path

from learncc.errors import ConfigError


def check_writable(path: Path, what: str = "--out") -> None:
    """Refuse an output directory that could not be created or written to,
    before any long work whose results would go there (fresh-user test: an
    unwritable ``--out`` failed with a traceback after the whole run, its
    results lost). Nothing is created: a command refused later for another
    reason leaves no folder behind.

    Raises:
        ConfigError: ``path`` or its nearest existing parent is not a
            directory, or a file cannot be created in it.
    """
    probe = path.absolute()
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"cannot write to {what} {path}: {probe} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise ConfigError(
            f"cannot write to {what} {path}: {e.strerror or e} (creating a file in "
            f"{probe})"
        ) from None
