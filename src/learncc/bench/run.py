"""One comparison: several modes on the same arrival trace and slowdowns."""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_right
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from learncc.bench.interference import interference
from learncc.bench.loadgen import ModeResult, drive, poisson_trace
from learncc.bundle import load_bundle
from learncc.errors import (
    ConfigError,
    UnknownNameError,
    check_number_fields,
    check_seed,
)
from learncc.serving.backend import BACKUP, DATA, PARITY
from learncc.serving.deploy import (
    BACKENDS,
    MODES,
    Deployment,
    check_deployment,
    deployment,
)
from learncc.serving.frontend import Frontend, check_policy
from learncc.serving.slowdown import SlowdownConfig, instance_schedule, preset

logger = logging.getLogger(__name__)

# s either side of a slow episode whose round trips OverheadProbe leaves out;
# longer than any unslowed round trip it keeps
SLOW_SPAN_S = 0.5
# queries one comparison may offer per mode: a day at 100 q/s
MAX_QUERIES = 10_000_000


@dataclass(frozen=True)
class BenchConfig:
    """A comparison of serving modes at equal resources.

    Instances are numbered data first, then parity; instance number g gets
    the same slowdown schedule in every mode, so ``coded`` and ``equal``
    face the same slow instances at the same times.
    """

    modes: tuple[str, ...] = ("coded", "equal")
    rate_qps: float = 300.0
    duration_s: float = 30.0
    warmup_s: float = 3.0
    slowdown: str = "episodes"
    m: int = 4
    service_ms: float = 5.0
    per_item_ms: float = 0.0
    max_batch: int = 1
    batch_size: int = 1
    policy: str = "round-robin"
    noop: bool = False
    flush_timeout_s: float = 0.005
    query_timeout_s: float = 10.0
    reconstruct_after_s: float = 0.0
    seed: int = 0
    backend: str = "local"  # or "ray"
    ray_address: str | None = None
    slowdown_overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_number_fields(self)
        if not isinstance(self.modes, (tuple, list)) or not all(
            isinstance(m, str) for m in self.modes
        ):
            raise ConfigError(f"modes must be a list of names, got {self.modes!r}")
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise ConfigError(f"unknown modes {bad}; choose from {', '.join(MODES)}")
        for name in (
            "rate_qps",
            "duration_s",
            "service_ms",
            "per_item_ms",
            "warmup_s",
            "reconstruct_after_s",
        ):
            value = getattr(self, name)
            if not 0 <= value < float("inf") or (
                value == 0 and name in ("rate_qps", "duration_s")
            ):
                raise ConfigError(
                    f"{name} must be a finite number >= 0 (> 0 for rates and "
                    f"durations), got {value}"
                )
        if self.rate_qps * self.duration_s > MAX_QUERIES:
            # the trace is drawn up front: 1e9 q/s for a second once asked
            # NumPy for 9 GiB (fresh-user test)
            raise ConfigError(
                f"rate_qps x duration_s asks for {self.rate_qps * self.duration_s:.3g} "
                f"queries; a run takes at most {MAX_QUERIES:,}"
            )
        if self.max_batch < 1 or self.batch_size < 1:
            raise ConfigError("max_batch and batch_size must be >= 1")
        check_policy(self.policy, self.batch_size)
        if self.backend not in BACKENDS:
            raise UnknownNameError("backend", self.backend, list(BACKENDS))
        if self.ray_address is not None and self.backend != "ray":
            raise ConfigError("ray_address needs backend = 'ray'")
        check_seed(self.seed)
        if self.warmup_s >= self.duration_s:
            raise ConfigError(
                f"warmup_s ({self.warmup_s}) must be < duration_s ({self.duration_s})"
            )
        preset(self.slowdown, **self.slowdown_overrides)  # validates the name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def numbered_instances(shape: Deployment) -> list[tuple[str, int]]:
    """Instances in the order slowdown schedules are keyed by: data, parity,
    backup."""
    numbered = [(DATA, i) for i in range(shape.data_instances)]
    numbered += [(PARITY, i) for i in range(shape.parity_instances)]
    return numbered + [(BACKUP, i) for i in range(shape.backup_instances)]


async def apply_slowdowns(
    frontend: Frontend,
    shape: Deployment,
    slowdown: SlowdownConfig,
    start: float,
    duration_s: float,
    seed: int,
) -> None:
    """Send every instance its schedule, starting at loop time ``start``.

    Instance g gets ``instance_schedule(slowdown, g, ...)`` whatever the mode,
    so deployments compared in one run see the same slow instances at the
    same times.
    """
    # loop.time() is time.monotonic(), which the instance processes share
    assert abs(asyncio.get_running_loop().time() - time.monotonic()) < 0.05
    for g, (role, i) in enumerate(numbered_instances(shape)):
        schedule = instance_schedule(slowdown, g, duration_s + 60, seed)
        await frontend.backend.configure(role, i, {"schedule": schedule, "t0": start})


class OverheadProbe:
    """Measures, from outside, the frontend's own delays that the simulator
    (``learncc.sim``) replays instead of a fitted constant:

    - ``dispatch``: from a query's scheduled arrival to its first send to a
      data instance (load generator lag, input checks, dispatch);
    - ``result``: a query's round trip to an idle instance outside its slow
      episodes, minus ``service_ms`` (sockets both ways, the worker's wake-up
      and sleep overshoot, the event loop until the frontend sees the result);
    - ``encode``: from a coding group's last data send to its parity send,
      for a group sealed as it filled;
    - ``flush``: how late a flush-sealed group's parity send is after the
      flush timeout (timer lateness plus encoding);
    - ``answer``: from a result that answered a query (by itself or by
      decoding) reaching ``on_result`` until the event loop runs the
      callbacks it scheduled (the loop's lag before the client sees the
      answer). Only those: a callback after every result added a loop
      iteration per parity result, 0.44 per query, to coded's CPU alone.

    Every delay but ``dispatch`` (kept per query, in trace order) comes with
    ``<name>_at``, when it was measured in seconds from the start, so that
    the simulator replays a stall of the event loop where it happened.

    A seal's groups are read where the frontend seals them (it wraps
    ``Frontend._seal``): the oldest member's arrival is when its window
    opened. Inferring that from send order instead went wrong whenever a
    flush-sealed group had no parity to send (its one member already
    answered): the next group's parity was then timed from the earlier
    group's opening, a 30 ms "flush lateness" that never happened, which
    the simulator replayed as a stall (coded p99 28-43 ms simulated against
    12 ms real, about one 5 s run in eight). It wraps the backend's
    ``send``, the frontend's ``on_result`` and ``_seal`` on the instances
    only, and costs the frontend a few microseconds a query.
    """

    def __init__(
        self,
        frontend: Frontend,
        shape: Deployment,
        slowdown: SlowdownConfig,
        cfg: BenchConfig,
        arrivals_at: np.ndarray,
        start: float,
    ) -> None:
        self.arrivals_at = arrivals_at  # loop times
        self.start = start  # loop time of simulated time 0
        self.service_s = cfg.service_ms / 1000
        self.flush_timeout_s = cfg.flush_timeout_s
        self.samples: dict[str, list[float]] = {
            key: [] for key in ("dispatch", "result", "encode", "flush", "answer")
        }
        for key in ("result", "encode", "flush", "answer"):
            self.samples[f"{key}_at"] = []
        # slow episodes, in loop time, per instance, widened by SLOW_SPAN_S
        # and merged: their round trips are the simulator's to stretch, not
        # transport. Looked up by bisection, so that the probe's cost per
        # send does not grow with the run and tilt a CPU comparison towards
        # the mode that sends more (coded sends 1.5 queries per query).
        self.episodes: dict[tuple[str, int], tuple[list[float], list[float]]] = {}
        for g, key in enumerate(numbered_instances(shape)):
            starts: list[float] = []
            ends: list[float] = []
            for a, b in instance_schedule(slowdown, g, cfg.duration_s + 60, cfg.seed)[
                "episodes"
            ]:
                a, b = start + a - SLOW_SPAN_S, start + b + SLOW_SPAN_S
                if ends and a <= ends[-1]:
                    ends[-1] = max(ends[-1], b)
                else:
                    starts.append(a)
                    ends.append(b)
            self.episodes[key] = (starts, ends)
        self.sent: dict[tuple[str, int], tuple[float, int]] = {}
        self.dispatched: set[int] = set()
        self.last_data_send = -np.inf
        # the window opening of the seal under way, until its first parity send
        self.seal_opened: float | None = None
        self.loop = asyncio.get_running_loop()
        backend = frontend.backend
        self._send, self._depth = backend.send, backend.depth
        self._on_result = frontend.on_result
        self._frontend = frontend
        self._seal = frontend._seal
        backend.send = self.send  # type: ignore[method-assign]
        frontend.on_result = self.on_result  # type: ignore[method-assign]
        frontend._seal = self.seal  # type: ignore[method-assign]

    def seal(self, windows: list[list[Any]]) -> None:
        self.seal_opened = min(
            (g.members[0].born for groups in windows for g in groups if g.members),
            default=None,
        )
        try:
            self._seal(windows)
        finally:
            self.seal_opened = None

    def send(self, role: str, index: int, tag: int, x: Any) -> None:
        now = time.monotonic()  # loop.time() is time.monotonic()
        idle = self._depth(role, index) == 0
        self._send(role, index, tag, x)
        if role == DATA:
            if tag not in self.dispatched and 0 <= tag < len(self.arrivals_at):
                self.dispatched.add(tag)
                self.samples["dispatch"].append((now - self.arrivals_at[tag]) * 1000)
            self.last_data_send = now
        elif role == PARITY and self.seal_opened is not None:
            # the first parity send of a seal (r > 1 and batches send more)
            waited_s = now - self.seal_opened
            self.seal_opened = None
            if waited_s >= self.flush_timeout_s:
                self._add("flush", (waited_s - self.flush_timeout_s) * 1000, now)
            else:
                self._add("encode", (now - self.last_data_send) * 1000, now)
        if idle and not self._slow((role, index), now):
            self.sent[(role, tag)] = (now, index)

    def on_result(
        self, role: str, index: int, tag: int, output: Any, error: str | None
    ) -> None:
        sent = self.sent.pop((role, tag), None)
        if sent is not None and sent[1] == index and output is not None:
            now = time.monotonic()
            if not self._slow((role, index), now):
                rtt_s = now - sent[0]
                extra_ms = max(0.0, rtt_s - self.service_s) * 1000
                # at the batch's end, where the simulator adds it
                self._add("result", extra_ms, sent[0] + self.service_s)
        entered = time.monotonic()
        answered = self._frontend.answered
        self._on_result(role, index, tag, output, error)
        if self._frontend.answered != answered:
            self.loop.call_soon(self._answered, entered)

    def _answered(self, entered: float) -> None:
        self._add("answer", (time.monotonic() - entered) * 1000, entered)

    def _add(self, key: str, value_ms: float, at: float) -> None:
        # with its time since the start, "<key>_at" in s: the simulator
        # replays a delay at the time it was measured, so that a stall of
        # the event loop hits the same stretch of queries there too
        self.samples[key].append(value_ms)
        self.samples[f"{key}_at"].append(at - self.start)

    def _slow(self, key: tuple[str, int], at: float) -> bool:
        # a round trip that touches an episode is left out whole
        starts, ends = self.episodes[key]
        i = bisect_right(starts, at) - 1
        return i >= 0 and at <= ends[i]


async def run_mode(
    bundle_path: Path,
    mode: str,
    cfg: BenchConfig,
    pool: np.ndarray,
    labels: np.ndarray | None,
    *,
    progress: bool = True,
) -> ModeResult:
    frontend, shape = deployment(
        bundle_path,
        mode,
        m=cfg.m,
        service_ms=cfg.service_ms,
        per_item_ms=cfg.per_item_ms,
        max_batch=cfg.max_batch,
        batch_size=cfg.batch_size,
        policy=cfg.policy,
        noop=cfg.noop,
        flush_timeout_s=cfg.flush_timeout_s,
        query_timeout_s=cfg.query_timeout_s,
        reconstruct_after_s=cfg.reconstruct_after_s,
        backend=cfg.backend,
        ray_address=cfg.ray_address,
    )
    trace = poisson_trace(
        rate_qps=cfg.rate_qps, duration_s=cfg.duration_s, pool=len(pool), seed=cfg.seed
    )
    slowdown = preset(cfg.slowdown, **cfg.slowdown_overrides)
    async with frontend:
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.2
        await apply_slowdowns(
            frontend, shape, slowdown, start, cfg.duration_s, cfg.seed
        )
        probe = OverheadProbe(
            frontend, shape, slowdown, cfg, start + trace.arrivals_s, start
        )
        with interference(
            background_procs=slowdown.background_procs,
            colocated_procs=slowdown.colocated_procs,
            bundle=bundle_path,
        ):
            result = await drive(
                frontend,
                trace,
                pool,
                labels=labels,
                warmup_s=cfg.warmup_s,
                start_at=start,
                progress=f"{mode:>9} ({shape.instances} instances)"
                if progress
                else None,
            )
        stats = frontend.statistics()
        result = replace(
            result,
            service_ms=await frontend.backend.service_times(),
            overheads_ms=probe.samples,
        )
    logger.info("%s: %s", mode, stats)
    return result


def run_comparison(
    bundle_path: str | Path, cfg: BenchConfig, *, progress: bool = True
) -> dict[str, ModeResult]:
    """Run every mode of ``cfg`` in turn on the bundle's test inputs.

    Raises:
        BundleError: the bundle cannot be loaded.
    """
    bundle_path = Path(bundle_path)
    bundle = load_bundle(bundle_path)
    check_modes(bundle, cfg)
    pool, labels = _test_inputs(bundle)
    results = {}
    for mode in cfg.modes:
        results[mode] = asyncio.run(
            run_mode(bundle_path, mode, cfg, pool, labels, progress=progress)
        )
    return results


def check_modes(bundle: Any, cfg: BenchConfig) -> None:
    """Refuse, before the first mode runs, a mode that could not be deployed
    (a run that stopped at its second mode once lost the first's results).

    Raises:
        ConfigError, UnknownNameError: naming the mode.
    """
    for mode in cfg.modes:
        check_deployment(bundle, mode, m=cfg.m, backend=cfg.backend, noop=cfg.noop)


def _test_inputs(bundle: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """The test split of the bundle's dataset where it loads offline, else
    random inputs of the right shape (then no served accuracy)."""
    from learncc.data import load_dataset
    from learncc.errors import LearnccError

    spec = bundle.manifest.get("data", {})
    try:
        data = load_dataset(spec["name"], seed=int(spec["seed"]), download=False)
        return data.test.x, data.test.y
    except (KeyError, TypeError, ValueError, LearnccError):
        rng = np.random.default_rng(0)
        return rng.random((256, *bundle.input_shape), dtype=np.float32), None


def summary(results: dict[str, ModeResult]) -> dict[str, dict[str, Any]]:
    return {mode: r.to_dict() for mode, r in results.items()}
