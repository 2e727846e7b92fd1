"""Processes that compete with the instances for the machine's cores.

The paper's cluster slowed instances with background network shuffles and
co-located inference jobs. On one machine we start real processes: busy
loops (background CPU load) and loops of model inference on the same bundle
(co-located inference). Both are plain ``python -c`` processes so they are
killed cleanly with the run.

Shortcoming: instances emulate most of their service time by sleeping (see
``LocalBackend``), so CPU contention lengthens only the real compute and the
frontend's own work, not the emulated floor; on this 2-core machine that
mostly slows the frontend, equally for every mode.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

_BUSY = "while True: pass"
_INFER = """
import sys, torch
from learncc.bundle import load_bundle
torch.set_num_threads(1)
b = load_bundle(sys.argv[1])
x = b.fill_input.expand(64, *b.fill_input.shape).contiguous()
with torch.inference_mode():
    while True:
        b.base(x)
"""


@contextlib.contextmanager
def interference(
    *, background_procs: int = 0, colocated_procs: int = 0, bundle: Path | None = None
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Run the competing processes for the duration of the ``with`` block."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(background_procs):
            procs.append(subprocess.Popen([sys.executable, "-c", _BUSY]))
        for _ in range(colocated_procs):
            if bundle is None:
                raise ValueError("co-located inference needs the bundle path")
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", _INFER, str(bundle)],
                    stderr=subprocess.DEVNULL,
                )
            )
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()
