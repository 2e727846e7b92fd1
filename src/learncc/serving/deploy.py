"""Deployments at equal resources: how many instances each mode gets.

With m data instances for the ordinary load and a code of k, r:

- ``none``: m data instances, no redundancy;
- ``equal``: m + r * m / k data instances, the same resources as ``coded``
  spent on more plain instances;
- ``coded``: m data instances and r * m / k parity instances.

``plan`` also sizes three baselines that only the simulator (``learncc.sim``)
runs so far; ``deployment`` refuses them rather than serve them uncoded:

- ``hedge``: the same instances as ``equal``; a query still unanswered after
  the running 95th percentile latency is sent again to a second instance;
- ``replicate``: 2 m data instances, every query sent to two of them;
- ``cheap``: m data instances and m / k backup instances running a cheaper,
  approximate model on every query.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from learncc.bundle import Bundle, load_bundle
from learncc.errors import ConfigError, UnknownNameError
from learncc.serving.backend import LocalBackend
from learncc.serving.frontend import Coding, Frontend

MODES = ("none", "equal", "coded")
# Modes plan() sizes; the frontend serves only MODES so far.
ALL_MODES = (*MODES, "hedge", "replicate", "cheap")


@dataclass(frozen=True)
class Deployment:
    mode: str
    data_instances: int
    parity_instances: int
    backup_instances: int = 0  # mode "cheap": instances of the approximate model

    @property
    def instances(self) -> int:
        return self.data_instances + self.parity_instances + self.backup_instances


def plan(mode: str, *, m: int, k: int, r: int) -> Deployment:
    """Instance counts of ``mode`` for m data instances and a (k, r) code.

    Raises:
        UnknownNameError: ``mode`` is not one of ``ALL_MODES``.
        ConfigError: m < 1, or m < k for ``coded``.
    """
    if mode not in ALL_MODES:
        raise UnknownNameError("mode", mode, list(ALL_MODES))
    if m < 1:
        raise ConfigError(f"m must be >= 1 data instance, got {m}")
    if mode == "coded" and m < k:
        # only coded needs a group's members on distinct instances
        raise ConfigError(f"m={m} data instances cannot hold a coding group of k={k}")
    parity = max(r, math.ceil(r * m / k))
    if mode == "none":
        return Deployment(mode, m, 0)
    if mode in ("equal", "hedge"):
        return Deployment(mode, m + parity, 0)
    if mode == "replicate":
        return Deployment(mode, 2 * m, 0)
    if mode == "cheap":
        return Deployment(mode, m, 0, backup_instances=max(1, math.ceil(m / k)))
    return Deployment(mode, m, parity)


def coding_from_bundle(bundle: Bundle) -> Coding:
    return Coding(
        encoder=bundle.encoder,
        decoder=bundle.decoder,
        fill_input=bundle.fill_input.numpy(),
        fill_output=bundle.fill_output.numpy(),
    )


def deployment(
    bundle: str | Path | Bundle,
    mode: str,
    *,
    m: int,
    service_ms: float = 0.0,
    max_batch: int = 1,
    flush_timeout_s: float = 0.005,
    query_timeout_s: float = 10.0,
) -> tuple[Frontend, Deployment]:
    """A frontend over a local backend for ``mode``; call ``start()`` on it.

    Raises:
        BundleError: the bundle cannot be loaded.
        ConfigError: m is too small for the bundle's code.
        UnknownNameError: ``mode`` is not served yet (see ``MODES``).
    """
    if mode not in MODES:
        raise UnknownNameError("served mode", mode, list(MODES))
    loaded = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    if loaded.path is None:
        raise ConfigError("the bundle must be saved to a directory for instances to load it")
    code = loaded.code
    shape = plan(mode, m=m, k=code.k, r=code.r)
    backend = LocalBackend(
        loaded.path,
        data_instances=shape.data_instances,
        parity_instances=shape.parity_instances,
        service_ms=service_ms,
        max_batch=max_batch,
    )
    frontend = Frontend(
        backend,
        input_shape=loaded.input_shape,
        coding=coding_from_bundle(loaded) if mode == "coded" else None,
        flush_timeout_s=flush_timeout_s,
        query_timeout_s=query_timeout_s,
    )
    return frontend, shape
