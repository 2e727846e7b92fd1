"""Plots a person would rather see than read."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def survival(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted values and, for each, the share of values at least as large:
    1 at the smallest down to 1/n at the largest, never the zero a log axis
    cannot show."""
    values = np.sort(np.asarray(values))
    n = len(values)
    return values, (n - np.arange(n)) / n


def latency_cdf(
    latencies_ms: Mapping[str, np.ndarray], path: Path, title: str = ""
) -> Path:
    """Plot each mode's latency as a tail CDF (1 - CDF on a log axis), so
    p99 and p99.9 are as readable as the median."""
    fig, (ax_cdf, ax_tail) = plt.subplots(1, 2, figsize=(11, 4))
    for mode, values in latencies_ms.items():
        if len(values) == 0:
            continue
        values, slower = survival(values)
        n = len(values)
        ax_cdf.plot(values, np.arange(1, n + 1) / n, label=mode)
        ax_tail.plot(values, slower, label=mode)
    ax_cdf.set(xlabel="latency (ms)", ylabel="fraction of queries", title="CDF")
    ax_tail.set(
        xlabel="latency (ms)",
        ylabel="fraction at least this slow",
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
