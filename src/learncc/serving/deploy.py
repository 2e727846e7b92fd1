"""Deployments at equal resources: how many instances each mode gets.

With m data instances for the ordinary load and a code of k, r:

- ``none``: m data instances, no redundancy;
- ``equal``: m + r * m / k data instances, the same resources as ``coded``
  spent on more plain instances;
- ``coded``: m data instances and r * m / k parity instances.

and three more baselines at equal resources:

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

import numpy as np

from learncc.bundle import Bundle, load_bundle
from learncc.errors import ConfigError, UnknownNameError
from learncc.serving.backend import Backend, LocalBackend
from learncc.serving.frontend import Coding, Frontend

MODES = ("none", "equal", "coded", "hedge", "replicate", "cheap")
BACKENDS = ("local", "ray")


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
        UnknownNameError: ``mode`` is not one of ``MODES``.
        ConfigError: m < 1, k < 2, r < 1, or m < k for ``coded``.
    """
    if mode not in MODES:
        raise UnknownNameError("mode", mode, list(MODES))
    if m < 1:
        raise ConfigError(f"m must be >= 1 data instance, got {m}")
    if k < 2 or r < 1:
        raise ConfigError(f"a code needs k >= 2 and r >= 1, got k={k} and r={r}")
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


# A reconstruction may exceed F's largest |output| on the training inputs by
# this factor before the frontend withholds it. Held-out inputs and a parity
# model's error go somewhat beyond that range; a partner poisoned by an input
# at 1e4 goes beyond it by orders of magnitude (hundreds to 1e4 against ~20
# for the MNIST MLP), so the factor is loose on purpose.
RECONSTRUCTION_SLACK = 4.0


def coding_from_bundle(bundle: Bundle) -> Coding:
    bound = bundle.output_abs_max
    return Coding(
        encoder=bundle.encoder,
        decoder=bundle.decoder,
        # contiguous float32: instances that encode take its bytes as they are
        fill_input=np.ascontiguousarray(bundle.fill_input.numpy(), np.float32),
        fill_output=bundle.fill_output.numpy(),
        max_abs_output=None if bound is None else RECONSTRUCTION_SLACK * bound,
    )


def _check_names(mode: str, backend: str) -> None:
    if backend not in BACKENDS:
        raise UnknownNameError("backend", backend, list(BACKENDS))
    if mode not in MODES:
        raise UnknownNameError("mode", mode, list(MODES))
    if backend == "ray" and mode == "cheap":
        # RayBackend starts data and parity actors only; a backup role there
        # would need its own actor kind, which nobody has asked for yet.
        raise ConfigError("mode cheap runs on the local backend only, not on ray")


def check_deployment(
    bundle: Bundle, mode: str, *, m: int, backend: str = "local", noop: bool = False
) -> Deployment:
    """What ``deployment`` would refuse, checked without starting anything,
    so that a run of several modes or a sweep can refuse before its first
    mode runs; returns the instance counts.

    Raises:
        ConfigError, UnknownNameError: as ``deployment``.
    """
    _check_names(mode, backend)
    if bundle.path is None:
        raise ConfigError(
            "the bundle must be saved to a directory for instances to load it"
        )
    shape = plan(mode, m=m, k=bundle.code.k, r=bundle.code.r)
    if mode == "cheap" and getattr(bundle, "backup", None) is None and not noop:
        raise ConfigError(
            f"mode cheap needs a backup model in the bundle; {bundle.path} has none "
            "(train with `learncc train --backup-hidden N`)"
        )
    return shape


def deployment(
    bundle: str | Path | Bundle,
    mode: str,
    *,
    m: int,
    service_ms: float = 0.0,
    per_item_ms: float = 0.0,
    max_batch: int = 1,
    batch_size: int = 1,
    policy: str = "round-robin",
    flush_timeout_s: float = 0.005,
    query_timeout_s: float = 10.0,
    max_pending: int = 100_000,
    default_output: np.ndarray | None = None,
    reconstruct_after_s: float = 0.0,
    noop: bool = False,
    backend: str = "local",
    ray_address: str | None = None,
    num_gpus: float = 0.0,
    parity_encodes: bool = True,
) -> tuple[Frontend, Deployment]:
    """A frontend over a backend for ``mode``; call ``start()`` on it.

    Args:
        mode: one of ``MODES``; see the module docstring for what each gets.
        m: data instances of the coded deployment; the others are sized
            from it at equal resources (``plan``).
        service_ms, per_item_ms, max_batch: instance service emulation and
            batching (see ``LocalBackend``); instances take at least
            ``batch_size`` queries at once.
        batch_size: queries the frontend sends to an instance together (see
            ``Frontend``).
        policy: data dispatch (see ``Frontend``).
        max_pending, default_output: overload bound and deadline answer
            (see ``Frontend``).
        reconstruct_after_s: how long a decodable group waits for its
            originals (coded only; see ``Frontend``).
        noop: instances skip the model and return zeros.
        backend: ``"local"`` (worker processes on this machine) or ``"ray"``
            (Ray actors; see ``learncc.serving.ray_backend``).
        ray_address: Ray cluster to join; ``None`` starts a local one.
        num_gpus: GPUs per instance on Ray (fractional allowed).
        parity_encodes: the local backend's parity instances encode their
            group's k inputs (see ``LocalBackend``); False: the frontend
            encodes. On Ray the frontend always encodes, sending 1/k of the
            bytes across machines.

    Raises:
        BundleError: the bundle cannot be loaded.
        ConfigError: m is too small for the bundle's code.
        UnknownNameError: unknown ``mode`` or ``backend``.
    """
    _check_names(mode, backend)  # before reading the bundle
    loaded = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    shape = check_deployment(loaded, mode, m=m, backend=backend, noop=noop)
    instances: Backend
    if backend == "ray":
        from learncc.serving.ray_backend import RayBackend

        instances = RayBackend(
            loaded.path,
            data_instances=shape.data_instances,
            parity_instances=shape.parity_instances,
            service_ms=service_ms,
            per_item_ms=per_item_ms,
            max_batch=max(max_batch, batch_size),
            noop=noop,
            address=ray_address,
            num_gpus=num_gpus,
        )
    else:
        instances = LocalBackend(
            loaded.path,
            data_instances=shape.data_instances,
            parity_instances=shape.parity_instances,
            backup_instances=shape.backup_instances,
            service_ms=service_ms,
            per_item_ms=per_item_ms,
            max_batch=max(max_batch, batch_size),
            noop=noop,
            parity_encodes=parity_encodes,
        )
    frontend = Frontend(
        instances,
        input_shape=loaded.input_shape,
        coding=coding_from_bundle(loaded) if mode == "coded" else None,
        policy=policy,
        batch_size=batch_size,
        redundancy=mode if mode in ("hedge", "replicate", "cheap") else None,
        flush_timeout_s=flush_timeout_s,
        query_timeout_s=query_timeout_s,
        max_pending=max_pending,
        default_output=default_output,
        reconstruct_after_s=reconstruct_after_s if mode == "coded" else 0.0,
    )
    return frontend, shape
