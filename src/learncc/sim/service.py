"""Service-time models: how long one instance takes to serve one batch.

A model hands each simulated instance a stream of per-batch service times in
milliseconds, drawn from the instance's own seeded generator, so that
instance g draws the same sequence in every mode of a comparison. Slow
episodes and jitter (``learncc.serving.slowdown``) are applied on top by the
simulator, as the real worker applies them on top of its compute time.

Parametric models: ``deterministic``, ``exponential``, ``lognormal``,
``bimodal``. ``measured`` replays per-batch service times that a real run of
``learncc bench`` wrote to ``service_times.json``
(``{"<mode>": {"<role>/<index>": [ms, ...]}}``), sampled with replacement.

Trap: measured times already include the slowdowns of the run that produced
them (the worker times the whole batch), so replay them with slowdown
``"none"`` unless double counting is intended. Replaying also loses the time
order of the samples: a slow episode becomes independent slow batches.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from learncc.errors import ConfigError, UnknownNameError

logger = logging.getLogger(__name__)


class ServiceModel:
    """Base class: per-batch service times (ms) for one instance."""

    name = "base"

    def draw_ms(
        self, rng: np.random.Generator, role: str, index: int, n: int
    ) -> np.ndarray:
        """``n`` service times in ms for instance ``index`` of ``role``.

        Args:
            rng: the instance's own generator.
            role: ``"data"``, ``"parity"`` or ``"backup"``.
            index: the instance's index within its role.
            n: how many to draw.

        Returns:
            ``(n,)`` float64, every value >= 0.
        """
        raise NotImplementedError

    def expected_ms(self) -> float:
        """Expected service time of one batch, ms (for utilisation figures)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """JSON-ready parameters, stored in results.json."""
        raise NotImplementedError


@dataclass(frozen=True)
class Deterministic(ServiceModel):
    """Every batch takes ``ms``: the real backend's ``service_ms`` floor."""

    ms: float
    name = "deterministic"

    def __post_init__(self) -> None:
        _positive(ms=self.ms)

    def draw_ms(
        self, rng: np.random.Generator, role: str, index: int, n: int
    ) -> np.ndarray:
        return np.full(n, self.ms)

    def expected_ms(self) -> float:
        return self.ms

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "ms": self.ms}


@dataclass(frozen=True)
class Exponential(ServiceModel):
    """Exponential service with mean ``mean_ms`` (M/M/c queues)."""

    mean_ms: float
    name = "exponential"

    def __post_init__(self) -> None:
        _positive(mean_ms=self.mean_ms)

    def draw_ms(
        self, rng: np.random.Generator, role: str, index: int, n: int
    ) -> np.ndarray:
        return rng.exponential(self.mean_ms, n)

    def expected_ms(self) -> float:
        return self.mean_ms

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "mean_ms": self.mean_ms}


@dataclass(frozen=True)
class LogNormal(ServiceModel):
    """Log-normal service with mean ``mean_ms`` and log-space spread ``sigma``."""

    mean_ms: float
    sigma: float = 0.5
    name = "lognormal"

    def __post_init__(self) -> None:
        _positive(mean_ms=self.mean_ms)
        if self.sigma < 0:
            raise ConfigError(f"lognormal sigma must be >= 0, got {self.sigma}")

    def draw_ms(
        self, rng: np.random.Generator, role: str, index: int, n: int
    ) -> np.ndarray:
        # choose mu so that the mean, not the median, is mean_ms
        mu = math.log(self.mean_ms) - self.sigma**2 / 2
        return rng.lognormal(mu, self.sigma, n)

    def expected_ms(self) -> float:
        return self.mean_ms

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "mean_ms": self.mean_ms, "sigma": self.sigma}


@dataclass(frozen=True)
class Bimodal(ServiceModel):
    """``fast_ms`` usually, ``slow_ms`` with probability ``slow_p``, per batch."""

    fast_ms: float
    slow_ms: float
    slow_p: float = 0.05
    name = "bimodal"

    def __post_init__(self) -> None:
        _positive(fast_ms=self.fast_ms, slow_ms=self.slow_ms)
        if not 0 <= self.slow_p <= 1:
            raise ConfigError(f"bimodal slow_p must be in [0, 1], got {self.slow_p}")

    def draw_ms(
        self, rng: np.random.Generator, role: str, index: int, n: int
    ) -> np.ndarray:
        return np.where(rng.random(n) < self.slow_p, self.slow_ms, self.fast_ms)

    def expected_ms(self) -> float:
        return self.fast_ms + self.slow_p * (self.slow_ms - self.fast_ms)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "fast_ms": self.fast_ms,
            "slow_ms": self.slow_ms,
            "slow_p": self.slow_p,
        }


@dataclass(frozen=True)
class Measured(ServiceModel):
    """Replays measured per-batch service times, sampled with replacement.

    Args:
        samples: ``{"<role>/<index>": [ms, ...]}`` for one mode of a run.
        pooled: draw every instance's times from all samples of its role
            (all samples when the role has none) instead of its own.

    Instance ``index`` of a role replays the samples of measured instance
    ``index % measured_count`` of that role, so a 1,000-instance simulation
    can replay a 6-instance run. Backup instances (mode ``cheap``) replay data
    samples; the simulator scales them.
    """

    samples: dict[str, np.ndarray] = field(repr=False)
    pooled: bool = False
    source: str = ""
    name = "measured"

    def __post_init__(self) -> None:
        if not self.samples or any(len(v) == 0 for v in self.samples.values()):
            raise ConfigError("measured service times need >= 1 sample per instance")
        bad = [k for k in self.samples if k.count("/") != 1]
        if bad:
            raise ConfigError(f"measured service keys must be 'role/index', got {bad}")

    def _pool(self, role: str, index: int) -> np.ndarray:
        role = "data" if role == "backup" else role
        keys = sorted(
            (k for k in self.samples if k.split("/")[0] == role),
            key=lambda k: int(k.split("/")[1]),
        ) or sorted(self.samples)
        if self.pooled:
            return np.concatenate([self.samples[k] for k in keys])
        return self.samples[keys[index % len(keys)]]

    def draw_ms(
        self, rng: np.random.Generator, role: str, index: int, n: int
    ) -> np.ndarray:
        pool = self._pool(role, index)
        return pool[rng.integers(0, len(pool), n)]

    def expected_ms(self) -> float:
        return float(np.mean(np.concatenate(list(self.samples.values()))))

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "pooled": self.pooled,
            "instances": len(self.samples),
            "samples": int(sum(len(v) for v in self.samples.values())),
        }


def load_measured(
    path: str | Path, mode: str | None = None, *, pooled: bool = False
) -> Measured:
    """Load ``service_times.json`` written by ``learncc bench``.

    Args:
        path: the file.
        mode: which mode's instances to replay; ``None`` merges all modes
            (instance keys of later modes extend earlier ones' samples).
        pooled: see ``Measured``.

    Raises:
        ConfigError: the file is missing, not JSON of the expected shape, or
            lacks ``mode``.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read measured service times {path}: {e}") from None
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise ConfigError(
            f"{path} must map mode -> {{'role/index': [ms, ...]}}, "
            f"got {type(raw).__name__}"
        )
    if mode is not None and mode not in raw:
        raise ConfigError(f"{path} has no mode {mode!r}; it has {sorted(raw)}")
    chosen = [raw[mode]] if mode is not None else list(raw.values())
    merged: dict[str, list[float]] = {}
    for per_instance in chosen:
        for key, values in per_instance.items():
            merged.setdefault(key, []).extend(float(v) for v in values)
    samples = {k: np.asarray(v, dtype=np.float64) for k, v in merged.items() if v}
    return Measured(samples, pooled=pooled, source=f"{path}:{mode or 'all'}")


SERVICE_MODELS = ("deterministic", "exponential", "lognormal", "bimodal", "measured")


def parse_service(spec: str | dict[str, Any]) -> ServiceModel:
    """Build a service model from a CLI string or a config table.

    Strings are ``NAME:key=value,key=value``, e.g. ``exponential:mean_ms=5``,
    ``lognormal:mean_ms=5,sigma=0.5``, ``bimodal:fast_ms=5,slow_ms=50,slow_p=0.05``,
    ``deterministic:ms=5``, ``measured:path=runs/bench/service_times.json,mode=coded``.
    A bare number means ``deterministic`` with that many ms. Tables are
    ``{"name": ..., key: value}``.

    Raises:
        UnknownNameError: the model name is not one of ``SERVICE_MODELS``.
        ConfigError: a parameter is missing, unknown or out of range.
    """
    if isinstance(spec, str):
        try:
            return Deterministic(float(spec))
        except ValueError:
            pass
        name, _, rest = spec.partition(":")
        params: dict[str, Any] = {}
        for item in filter(None, rest.split(",")):
            key, eq, value = item.partition("=")
            if not eq:
                raise ConfigError(f"service parameter {item!r} must be key=value")
            params[key.strip()] = value.strip()
    else:
        params = dict(spec)
        name = str(params.pop("name", ""))
    name = name.strip()
    if name not in SERVICE_MODELS:
        raise UnknownNameError("service model", name, list(SERVICE_MODELS))
    try:
        if name == "measured":
            pooled = str(params.pop("pooled", "false")).lower() in ("1", "true", "yes")
            mode = params.pop("mode", None)
            path = params.pop("path")
            _no_extra(name, params)
            return load_measured(path, mode, pooled=pooled)
        numbers = {k: float(v) for k, v in params.items()}
        if name == "deterministic":
            return Deterministic(numbers.pop("ms"), **_no_extra(name, numbers))
        if name == "exponential":
            return Exponential(numbers.pop("mean_ms"), **_no_extra(name, numbers))
        if name == "lognormal":
            return LogNormal(numbers.pop("mean_ms"), **_no_extra(name, numbers))
        return Bimodal(
            numbers.pop("fast_ms"), numbers.pop("slow_ms"), **_no_extra(name, numbers)
        )
    except KeyError as e:
        raise ConfigError(
            f"service model {name!r} needs parameter {e.args[0]}"
        ) from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad parameters for service model {name!r}: {e}") from None


def _no_extra(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Pass on the optional parameters a model accepts; refuse the rest."""
    optional = {"lognormal": {"sigma"}, "bimodal": {"slow_p"}}.get(name, set())
    unknown = sorted(set(params) - optional)
    if unknown:
        raise ConfigError(f"service model {name!r} does not take {unknown}")
    return params


def _positive(**values: float) -> None:
    for key, value in values.items():
        if not value > 0:
            raise ConfigError(f"service {key} must be > 0, got {value}")
