"""Plots a person would rather see than read."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def latency_cdf(
    latencies_ms: Mapping[str, np.ndarray], path: Path, title: str = ""
) -> Path:
    """Plot each mode's latency as a tail CDF (1 - CDF on a log axis), so
    p99 and p99.9 are as readable as the median."""
    fig, (ax_cdf, ax_tail) = plt.subplots(1, 2, figsize=(11, 4))
    for mode, values in latencies_ms.items():
        values = np.sort(np.asarray(values))
        if len(values) == 0:
            continue
        frac = np.arange(1, len(values) + 1) / len(values)
        ax_cdf.plot(values, frac, label=mode)
        ax_tail.plot(values, np.maximum(1 - frac, 1 / len(values) / 10), label=mode)
    ax_cdf.set(xlabel="latency (ms)", ylabel="fraction of queries", title="CDF")
    ax_tail.set(
        xlabel="latency (ms)",
        ylabel="fraction slower (1 - CDF)",
        yscale="log",
        xscale="log",
        title="tail",
    )
    for y, name in ((1e-2, "p99"), (1e-3, "p99.9")):
        ax_tail.axhline(y, color="grey", lw=0.5, ls=":")
        ax_tail.annotate(name, (ax_tail.get_xlim()[0], y), fontsize=8, color="grey")
    for ax in (ax_cdf, ax_tail):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
