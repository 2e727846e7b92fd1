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


@dataclass(frozen=True)
class Overheads:
    """The real frontend's own delays, measured by ``learncc bench``
    (``learncc.bench.run.OverheadProbe``) and replayed in the order they were
    measured, cyclically, in place of one constant added to every latency.

    Replaying in order keeps a stall of the real event loop together: the
    queries it delayed were consecutive, and so are the simulated queries
    that replay it. (Independent draws spread one 170 ms stall over queries
    far apart, and as queries are taken in order, each such draw held up all
    that followed: simulated medians came out 8x too high on a loaded
    machine.) For a simulation of the measured run itself (``from_bench``:
    same arrivals), query i replays query i's dispatch lag exactly; at other
    rates or scales the sequences are a cyclic replay of one run's history.

    - ``dispatch_ms``: scheduled arrival to the first send to a data
      instance. Queries are handed to the simulated frontend in order at
      ``max(previous, arrival + draw)``, as the real one takes them.
    - ``result_ms``: added to every batch between the instance finishing and
      the frontend seeing its outputs (the instance is free at once).
    - ``encode_ms``: from sealing a full coding group to sending its parity
      queries.
    - ``flush_ms``: how late a flush-sealed group's parity goes out after
      the flush timeout (the timer's lateness and encoding).
    - ``answer_ms``: added to every answer: the frontend handling a result
      (decoding included) and its event loop's lag before the client has it.

    Result, encode, flush and answer delays that come with the times they
    were measured at (``at_s``) are replayed by time: a simulated batch that
    ends at t gets the delay last measured at or before t (modulo the
    measured span), so a 40 ms stall of the real frontend delays the same
    stretch of simulated queries. That is what set the real coded p99 on a
    loaded machine. Without times they are consumed in simulated event
    order. What they cannot carry: a stall's cause (the frontend's CPU) is not modelled,
    so its length does not grow with a simulated load the run never had.
    """

    dispatch_ms: np.ndarray = field(repr=False)
    result_ms: np.ndarray = field(repr=False)
    encode_ms: np.ndarray = field(repr=False)
    flush_ms: np.ndarray = field(repr=False)
    answer_ms: np.ndarray = field(repr=False)
    # the mode's own instances' service times, where measured with the
    # delays: a loaded machine stretches the workers' 5 ms sleeps too
    service: Measured | None = None
    # when each result, encode, flush and answer delay was measured, s from
    # the start (keys "<name>_at"); without them delays replay in sequence
    at_s: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    NAMES = ("dispatch", "result", "encode", "flush", "answer")

    def __post_init__(self) -> None:
        for name in (f"{key}_ms" for key in self.NAMES):
            values = getattr(self, name)
            if len(values) and not (np.isfinite(values).all() and values.min() >= 0):
                raise ConfigError(f"{name} must be finite and >= 0")

    @classmethod
    def from_samples(
        cls, samples: dict[str, Any], service: Measured | None = None
    ) -> Overheads:
        """From a bench ``ModeResult.overheads_ms`` (``dispatch``, ``result``,
        ``encode``, ``flush``, ``answer``: lists of ms; missing ones are
        zero). Negative values (a query sent a little before its scheduled
        time) count as 0."""
        at_s = {
            key: np.asarray(samples[f"{key}_at"], dtype=np.float64)
            for key in cls.NAMES
            if len(samples.get(f"{key}_at", [])) == len(samples.get(key, [])) > 0
        }
        ms = {
            f"{key}_ms": np.maximum(
                np.asarray(samples.get(key, []), dtype=np.float64), 0.0
            )
            for key in cls.NAMES
        }
        return cls(**ms, service=service, at_s=at_s)

    def sequence_s(self, name: str, n: int) -> list[float]:
        """The first ``n`` values of one delay's cyclic replay, in seconds
        (zeros without samples)."""
        pool = getattr(self, f"{name}_ms")
        if not len(pool):
            return [0.0] * n
        return (np.resize(pool, n) / 1000).tolist()

    def describe(self) -> dict[str, Any]:
        """Sample counts, medians and p99s, for results.json."""
        out: dict[str, Any] = {}
        for name in (f"{key}_ms" for key in self.NAMES):
            values = getattr(self, name)
            out[name] = (
                {
                    "samples": len(values),
                    "p50": float(np.percentile(values, 50)),
                    "p99": float(np.percentile(values, 99)),
                }
                if len(values)
                else {"samples": 0}
            )
        if self.service is not None:
            out["service"] = self.service.describe()
        return out


def load_overheads(path: str | Path) -> dict[str, Overheads]:
    """Per-mode frontend delays from JSON ``{"<mode>": {"dispatch": [ms, ...],
    "result": [...], ...}}``: each mode's ``ModeResult.overheads_ms`` from
    ``learncc.bench.run.run_comparison``.

    Raises:
        ConfigError: the file is missing or not of that shape, or a delay is
            not a list of finite ms >= 0 (dispatch: >= -1 ms, clamped to 0).
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read frontend overheads {path}: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path} must map mode -> {{'dispatch': [ms, ...], ...}}, "
            f"got {type(raw).__name__}"
        )
    for mode, samples in raw.items():
        _check_samples(path, mode, samples)
    return {mode: Overheads.from_samples(samples) for mode, samples in raw.items()}


# A measured dispatch lag may come out a little negative (the load generator
# wakes up to a clock tick early); from_samples counts that as 0. Anything
# earlier than this is not a measurement.
_EARLIEST_DISPATCH_MS = -1.0


def _check_samples(path: Path, mode: str, samples: Any) -> None:
    """Refuses one mode's delays unless each is a list of finite ms >= 0."""
    if not isinstance(samples, dict):
        raise ConfigError(
            f"{path}: mode {mode!r} must map delay name -> [ms, ...] "
            f"({', '.join(Overheads.NAMES)}), got {type(samples).__name__}"
        )
    for key in Overheads.NAMES + tuple(f"{n}_at" for n in Overheads.NAMES):
        values = samples.get(key, [])
        least = _EARLIEST_DISPATCH_MS if key == "dispatch" else 0.0
        ok = isinstance(values, list) and all(
            isinstance(v, int | float)
            and not isinstance(v, bool)
            and math.isfinite(v)
            and v >= least
            for v in values
        )
        if not ok:
            raise ConfigError(
                f"{path}: {mode}.{key} must be a list of finite numbers >= "
                f"{least:g}, got {values!r:.80}"
            )
