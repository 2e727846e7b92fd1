"""The discrete-event simulator of coded serving, on SimPy.

It replays the real frontend's policies (``learncc.serving.frontend``) on
simulated instances, so that the tail-latency benefit of coding can be
measured at scales one machine cannot host:

- ``coded``: coding groups of k in arrival order; each query goes at once to
  a data instance (``learncc.serving.policy.pick_instance``: round robin over
  live instances, avoiding those already holding a member of its group); the
  r parity queries go out when the group fills or ``flush_timeout_s`` after
  it opened (a partial group is completed with fill queries, whose outputs
  are known); missing outputs are decoded as soon as the decoder's
  ``can_decode`` allows; a rebuilt query's original is withdrawn from its
  instance's queue if not started, and discarded if it still finishes.
- ``none`` (m instances) and ``equal`` (m + r m / k instances): round robin,
  no redundancy.
- ``hedge`` (as many instances as ``equal``): a query still unanswered after
  the running ``hedge_percentile`` latency (over the last 2,000 answers,
  none before the first 100) is sent to a second instance; the first answer
  wins.
- ``replicate`` (2 m instances): every query goes to two instances.
- ``cheap`` (m data + m / k backup instances): every query also goes to a
  backup instance running an approximate model ``cheap_fraction`` times as
  costly; its answer is used if the original is not back by the running
  median latency (``cheap_percentile``; before the first 100 answers, as
  soon as it comes first).

Instances are FIFO queues serving up to ``max_batch`` queued queries per
batch, like the real worker: a batch's service time is the service model's
draw (plus ``per_item_ms`` per extra query), times the instance's slowdown
factor at the batch's start, plus jitter. Instance g (data first, then
parity, then backup) gets ``instance_schedule(slowdown, g, duration_s + 60,
seed)``, the very schedule ``learncc bench`` gives the real instance g, so the
simulator and a real run face the same slow episodes. With ``node_size`` > 1
the instances of one node (g // node_size) share the node's episodes
(correlated slowdowns). A failing instance hangs (holds its queue; queries
time out unless decoded) or crashes (its queued queries are dispatched again,
and their groups may decode them first), both at the first batch it would
start at or after ``fail_at_s``, as the worker does.

The frontend's own delays can be replayed as measured by ``learncc bench``
(``Overheads``, per mode): dispatch lag, transport of outputs, encoding,
flush-timer lateness and answering, each where it happens, so they reorder
events as on the real frontend (a late output lets the parity win). Without
them, ``overhead_ms`` adds a constant per answer, which reorders nothing.

Speed: SimPy's event queue and clock with our own run loop (``_loop``):
arrivals are merged in from the trace rather than scheduled, an instance is
its own batch-done event, parity placement keeps an index instead of
scanning (``_LeastLoaded``), service draws come in numpy blocks and
per-query state sits in flat arrays. One heap event per batch (plus one per
flush and hedge/backup timer, and with measured overheads one per output
delivery and parity send).

Shortcomings: measured delays are drawn independently, while one stall of
the real event loop delays many queries at once. Timeouts are applied
afterwards (an answer later than ``query_timeout_s`` counts as an error),
so a timed-out query's late output still helps its group decode, where the
frontend would have discarded it.
Hedged and replicated copies are never cancelled. ``cheap`` backups only
model timing; their accuracy loss is not simulated.
"""

from __future__ import annotations

import logging
import math
import time
from array import array
from bisect import bisect_left, bisect_right, insort
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from heapq import heappop, heappush
from typing import Any

import numpy as np
import simpy
from hdrh.histogram import HdrHistogram
from simpy.events import NORMAL

from learncc.bench.loadgen import Trace, poisson_trace
from learncc.codes import DECODERS, Decoder
from learncc.errors import (
    BackendUnavailableError,
    ConfigError,
    UnknownNameError,
    check_seed,
)
from learncc.serving.deploy import MODES, Deployment, plan
from learncc.serving.policy import pick_instance
from learncc.serving.slowdown import (
    PRESETS,
    SlowdownConfig,
    instance_schedule,
    preset,
)
from learncc.sim.service import Deterministic, Measured, Overheads, ServiceModel

logger = logging.getLogger(__name__)

_BLOCK = 512  # service draws per refill of an instance's buffer
_WINDOW = 2000  # answers behind the running percentiles of hedge and cheap
_REFRESH = 100  # answers between recomputations of those percentiles

# Slowdown fields that act on real sockets and cores, which the simulator
# does not model; presets using them are refused rather than run as "none".
_UNMODELLED = ("net_delay_ms", "net_mbps", "background_procs", "colocated_procs")
SIM_SLOWDOWNS = tuple(
    name
    for name, cfg in PRESETS.items()
    if not any(getattr(cfg, field_) for field_ in _UNMODELLED)
)
_DECODED, _BY_COPY, _BY_BACKUP = 1, 2, 3  # values of _Engine.recon


# queries (and instances) one simulated run may hold: about 45 minutes of
# CPU at the measured 27 s per million queries
MAX_SIMULATED = 100_000_000
MAX_SIMULATED_INSTANCES = 100_000


@dataclass(frozen=True)
class SimConfig:
    """One simulated comparison: every mode on the same arrivals and slowdowns.

    ``m`` is the number of data instances of the coded deployment; every
    mode's instance count follows from it by ``learncc.serving.deploy.plan``.
    """

    modes: tuple[str, ...] = ("coded", "equal")
    m: int = 4
    k: int = 2
    r: int = 1
    decoder: str = "subtraction"
    rate_qps: float = 300.0
    duration_s: float = 30.0
    warmup_s: float = 3.0
    service: ServiceModel = field(default_factory=lambda: Deterministic(5.0))
    slowdown: str = "episodes"
    slowdown_overrides: dict[str, Any] = field(default_factory=dict)
    node_size: int = 1
    max_batch: int = 1
    per_item_ms: float = 0.0
    flush_timeout_s: float = 0.005
    query_timeout_s: float = 10.0
    # coded: how long a decodable group waits for its originals (Frontend's)
    reconstruct_after_s: float = 0.0
    overhead_ms: float = 0.0
    # per mode, the real frontend's measured delays (see Overheads)
    overheads: dict[str, Overheads] = field(default_factory=dict)
    hedge_percentile: float = 95.0
    cheap_fraction: float | None = None  # None: 1 / (2 k)
    cheap_percentile: float = 50.0
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise ConfigError(f"unknown modes {bad}; choose from {', '.join(MODES)}")
        check_seed(self.seed)
        if self.decoder not in DECODERS:
            raise UnknownNameError("decoder", self.decoder, list(DECODERS))
        if self.rate_qps <= 0 or self.duration_s <= 0:
            raise ConfigError(
                f"rate_qps and duration_s must be > 0, "
                f"got {self.rate_qps}, {self.duration_s}"
            )
        if self.rate_qps * self.duration_s > MAX_SIMULATED:
            # arrivals are drawn up front: 1e12 q/s once asked NumPy for
            # terabytes (fresh-user test)
            raise ConfigError(
                f"rate_qps x duration_s asks for {self.rate_qps * self.duration_s:.3g}"
                f" queries; a simulated run takes at most {MAX_SIMULATED:,}"
            )
        if self.m > MAX_SIMULATED_INSTANCES:
            raise ConfigError(
                f"m = {self.m} instances; the simulator takes at most "
                f"{MAX_SIMULATED_INSTANCES:,}"
            )
        if not 0 <= self.warmup_s < self.duration_s:
            raise ConfigError(
                f"warmup_s ({self.warmup_s}) must be in "
                f"[0, duration_s={self.duration_s})"
            )
        if self.node_size < 1 or self.max_batch < 1:
            raise ConfigError(
                f"node_size and max_batch must be >= 1, "
                f"got {self.node_size}, {self.max_batch}"
            )
        if self.flush_timeout_s <= 0 or self.query_timeout_s <= 0:
            raise ConfigError("flush_timeout_s and query_timeout_s must be > 0")
        for name in ("per_item_ms", "overhead_ms", "reconstruct_after_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {value}")
        for name in ("hedge_percentile", "cheap_percentile"):
            if not 0 < getattr(self, name) < 100:
                raise ConfigError(
                    f"{name} must be in (0, 100), got {getattr(self, name)}"
                )
        if self.cheap_fraction is not None and not 0 < self.cheap_fraction <= 1:
            raise ConfigError(
                f"cheap_fraction must be in (0, 1], got {self.cheap_fraction}"
            )
        unknown = sorted(set(self.overheads) - set(MODES))
        if unknown:
            raise ConfigError(f"overheads are per mode; unknown modes {unknown}")
        for mode in self.modes:
            plan(mode, m=self.m, k=self.k, r=self.r)  # validates m (>= k if coded)
        self.make_decoder()  # validates k, r for the decoder
        slowdown = self.slowdown_config()  # validates the preset and overrides
        unmodelled = [name for name in _UNMODELLED if getattr(slowdown, name)]
        if unmodelled:
            # the simulator models slow episodes, jitter and failures only
            raise ConfigError(
                f"slowdown {self.slowdown!r} is not simulated (its "
                f"{', '.join(unmodelled)} act on real sockets and cores); choose "
                f"one of {', '.join(SIM_SLOWDOWNS)}"
            )

    def slowdown_config(self) -> SlowdownConfig:
        return preset(self.slowdown, **self.slowdown_overrides)

    def make_decoder(self) -> Decoder:
        return DECODERS[self.decoder](k=self.k, r=self.r)

    @property
    def backup_fraction(self) -> float:
        return (
            self.cheap_fraction if self.cheap_fraction is not None else 1 / (2 * self.k)
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(replace(self, overheads={}))
        d["overheads"] = {mode: o.describe() for mode, o in self.overheads.items()}
        d["service"] = self.service.describe()
        d["modes"] = list(self.modes)
        return d


def from_bench(
    bench: Any,
    *,
    k: int = 2,
    r: int = 1,
    decoder: str = "subtraction",
    overhead_ms: float = 0.0,
    modes: tuple[str, ...] | None = None,
    measured: dict[str, Any] | None = None,
) -> SimConfig:
    """The simulation of a real ``learncc.bench.run.BenchConfig`` run.

    The real worker serves a batch in ``max(compute, service_ms) *
    slow_factor + jitter``; our bench models compute in microseconds, so the
    service model is ``Deterministic(service_ms)``. Arrivals are the same
    ``poisson_trace(rate, duration, seed)`` (the input pool changes only which
    inputs are sent, not when).

    Args:
        bench: a ``BenchConfig`` or any object with its fields (rate_qps,
            duration_s, warmup_s, slowdown, slowdown_overrides, m, service_ms,
            max_batch, flush_timeout_s, query_timeout_s, seed, modes).
        k, r, decoder: the bundle's code.
        overhead_ms: constant added to every latency for what the simulator
            leaves out (frontend, sockets, sleep overshoot); 0 with ``measured``.
        modes: overrides ``bench.modes``.
        measured: the bench's results per mode (``ModeResult``); their
            ``overheads_ms``, the frontend's delays measured in that run, are
            replayed per mode (``Overheads``) instead of a constant, and
            their ``service_ms`` replace ``Deterministic(service_ms)`` for
            that mode, slow episodes divided out (``_unslowed``): on a
            loaded machine the workers' sleeps overshoot too.

    Raises:
        ConfigError: a field is out of range (see ``SimConfig``).
    """
    return SimConfig(
        modes=tuple(modes if modes is not None else bench.modes),
        m=bench.m,
        k=k,
        r=r,
        decoder=decoder,
        rate_qps=bench.rate_qps,
        duration_s=bench.duration_s,
        warmup_s=bench.warmup_s,
        service=Deterministic(bench.service_ms),
        slowdown=bench.slowdown,
        slowdown_overrides=dict(bench.slowdown_overrides),
        max_batch=bench.max_batch,
        flush_timeout_s=bench.flush_timeout_s,
        query_timeout_s=bench.query_timeout_s,
        reconstruct_after_s=getattr(bench, "reconstruct_after_s", 0.0),
        overhead_ms=overhead_ms,
        overheads={
            mode: _measured_overheads(result, bench)
            for mode, result in (measured or {}).items()
            if result.overheads_ms
        },
        seed=bench.seed,
    )


def _measured_overheads(result: Any, bench: Any) -> Overheads:
    """One mode's measured delays and service times from its bench result."""
    service = _unslowed(result.service_ms, bench)
    samples = dict(result.overheads_ms)
    if service is not None:
        # The probe's result delay is a round trip less the service floor, so
        # it holds the worker's usual overshoot of that floor, which the
        # measured service times now carry: take the median overshoot out once.
        measured = np.concatenate(list(service.samples.values()))
        excess_ms = max(0.0, float(np.median(measured)) - bench.service_ms)
        samples["result"] = [max(0.0, v - excess_ms) for v in samples.get("result", [])]
    return Overheads.from_samples(samples, service=service)


def _unslowed(service_ms: dict[str, list[float]], bench: Any) -> Measured | None:
    """A run's measured per-batch service times with its slow episodes taken
    out, for the simulator to apply them again where the schedule says.

    The worker does not say which batches it served slowed, so a batch that
    took at least 0.9 x the slow factor x ``service_ms`` counts as slowed
    and is divided by the factor. An unslowed batch stalled that long by
    the machine (rare: 45 ms for a 5 ms floor) is shortened by mistake.
    """
    if not service_ms:
        return None
    factor = preset(bench.slowdown, **bench.slowdown_overrides).slow_factor
    cut_ms = 0.9 * factor * bench.service_ms
    samples = {}
    for key, values in service_ms.items():
        v = np.asarray(values, dtype=np.float64)
        if len(v):
            samples[key] = np.where((factor > 1) & (v >= cut_ms), v / factor, v)
    return (
        Measured(samples, source="bench run, slow episodes divided out")
        if samples
        else None
    )


@dataclass(frozen=True)
class SimResult:
    """One mode's simulated latencies; the first fields match ``ModeResult``."""

    p50: float
    p99: float
    p999: float
    mean: float
    max: float
    n: int
    reconstructed: int  # decoded from the group and parity (coded), as the bench
    errors: int  # timed out, or no live instance left
    top1: float | None  # accuracy is not simulated: always None
    achieved_qps: float
    instances: int  # resource cost
    data_instances: int
    parity_instances: int
    backup_instances: int
    reconstructed_fraction: float
    duplicates: int  # hedged copies sent (hedge), second copies (replicate)
    # Answers by other redundancy, counted apart as the frontend does (its
    # ``hedged`` and ``backup_used``), not as reconstructed: the bench's
    # ``reconstructed`` is decoded answers only.
    by_copy: int  # answered by a second copy first (hedge, replicate)
    backup_used: int  # answered by the backup model (cheap)
    late_discarded: int
    redispatched: int
    events: int
    wall_s: float
    latencies_ms: np.ndarray = field(repr=False)  # every counted latency
    waits_ms: np.ndarray | None = field(default=None, repr=False)  # see record_waits

    def to_dict(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in asdict(self).items()
            if k not in ("latencies_ms", "waits_ms")
        }


class _Event:
    """The least SimPy's scheduler needs of an event: callbacks, ``_ok`` and a
    value. ``simpy.Timeout`` does more work per event (validation, an
    ``Event`` base); at millions of events that difference is seconds."""

    __slots__ = ("callbacks", "_ok", "_value")

    def __init__(self, callback: Any, value: Any) -> None:
        self.callbacks = [callback]
        self._ok = True
        self._value = value


class _Draws:
    """One measured frontend delay: by the time it was measured where known,
    else in measured order, cyclically (see ``Overheads``)."""

    __slots__ = ("values", "times", "span", "pos")

    def __init__(self, overheads: Overheads, name: str) -> None:
        values = np.asarray(getattr(overheads, f"{name}_ms")) / 1000
        at = overheads.at_s.get(name)
        if at is not None:
            order = np.argsort(at, kind="stable")
            self.times: list[float] | None = at[order].tolist()
            values = values[order]
            self.span = max(self.times[-1], 1e-9)
        else:
            self.times, self.span = None, 0.0
        self.values: list[float] = values.tolist()
        self.pos = 0

    def at(self, now: float) -> float:
        times = self.times
        if times is None:
            pos = self.pos
            self.pos = pos + 1 if pos + 1 < len(self.values) else 0
            return self.values[pos]
        if now > self.span:
            now %= self.span
        i = bisect_right(times, now) - 1
        return self.values[i if i >= 0 else 0]


def _handed_over(arrivals_s: list[float], lags_s: list[float]) -> list[float]:
    """When the frontend takes each query: its arrival plus its dispatch lag,
    in arrival order (the load generator submits them in order)."""
    times, last = [], 0.0
    for at, lag in zip(arrivals_s, lags_s, strict=True):
        last = max(last, at + lag)
        times.append(last)
    return times


class _LeastLoaded:
    """``learncc.serving.policy.least_loaded`` for one parity model's instances,
    in O(log n) a pick instead of a scan of them all.

    Instances are kept in sorted lists by depth (queries sent and not yet
    answered, what the frontend's ``backend.depth`` counts), so the least
    loaded one, ties going round robin from ``start``, is the first entry at
    or after ``start`` in the lowest non-empty level. At 1,000 instances the
    scan cost 0.6 ms a coding group, nine tenths of the simulator's time.
    """

    __slots__ = ("levels", "depth")

    def __init__(self, members: range, depth: list[int]) -> None:
        self.depth = depth  # shared: every parity instance's depth
        self.levels: dict[int, list[int]] = {}
        for i in members:
            insort(self.levels.setdefault(depth[i], []), i)

    def pick(self, start: int) -> int:
        """The choice ``least_loaded`` makes; ``BackendUnavailableError`` if
        no live candidate remains."""
        if not self.levels:
            raise BackendUnavailableError("no live parity instance")
        ranked = self.levels[min(self.levels)]
        pos = bisect_left(ranked, start)
        return ranked[pos] if pos < len(ranked) else ranked[0]

    def move(self, i: int, by: int) -> None:
        """Change instance ``i``'s depth by ``by``."""
        depth = self.depth[i]
        self.remove(i)
        self.depth[i] = depth + by
        insort(self.levels.setdefault(depth + by, []), i)

    def remove(self, i: int) -> None:
        """Forget instance ``i`` (it died)."""
        level = self.levels[self.depth[i]]
        del level[bisect_left(level, i)]
        if not level:
            del self.levels[self.depth[i]]


class _Instance:
    __slots__ = (
        "role",
        "index",
        "g",
        "queue",
        "busy",
        "starts",
        "ends",
        "ep",
        "slow_from",
        "slow_until",
        "factor",
        "fail_at",
        "crash",
        "rng",
        "buf",
        "pos",
        "scale",
        "jitter_s",
        "jrng",
        "deliver",
        "placement",
        "batch",
        "callbacks",
        "_ok",
    )

    def __init__(self, role: str, index: int, g: int) -> None:
        self.role, self.index, self.g = role, index, g
        self.queue: deque[Any] = deque()
        self.busy = False
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.ep = 0
        self.slow_from = math.inf  # current or next slow episode
        self.slow_until = math.inf
        self.factor = 1.0
        self.fail_at = math.inf
        self.crash = False
        self.buf: list[float] = []
        self.pos = 0
        self.scale = 1.0
        self.jitter_s = 0.0
        self.placement: _LeastLoaded | None = None  # parity instances only
        # set when the engine builds its instances and starts its run
        self.rng: np.random.Generator
        self.jrng: np.random.Generator
        self.deliver: Any = None
        # as an event (see _Event): its batch's end
        self.batch: list[Any] = []
        self.callbacks: list[Any] = []
        self._ok = True


class _Group:
    __slots__ = ("members", "waiting", "avail", "instances", "sealed", "done", "held")

    def __init__(self) -> None:
        self.members: list[int] = []
        self.waiting = 0  # members not yet answered
        self.avail = 0  # bit s: data slot s available; bit k + j: parity j
        self.instances: list[int] = []
        self.sealed = False
        self.done = False  # decoded, or every member answered: drop later results
        self.held = False  # decodable, waiting out reconstruct_after_s


class _Engine:
    """One mode of one configuration; ``run()`` once."""

    def __init__(
        self, cfg: SimConfig, mode: str, arrivals_s: np.ndarray, record_waits: bool
    ) -> None:
        self.cfg, self.mode = cfg, mode
        self.shape: Deployment = plan(mode, m=cfg.m, k=cfg.k, r=cfg.r)
        self.env = simpy.Environment()
        self.k, self.r = cfg.k, cfg.r
        self.arrivals = arrivals_s.tolist()
        n = len(self.arrivals)
        overheads = cfg.overheads.get(mode)
        self.service = cfg.service
        if overheads is not None and overheads.service is not None:
            self.service = overheads.service  # this mode's instances, as measured
        self.delays: dict[str, _Draws] = {}
        if overheads is not None:
            self.times = _handed_over(
                self.arrivals, overheads.sequence_s("dispatch", n)
            )
            for name in ("result", "encode", "flush", "answer"):
                if len(getattr(overheads, f"{name}_ms")):
                    self.delays[name] = _Draws(overheads, name)
        else:
            self.times = self.arrivals  # when the frontend takes each query
        self.done = array("d", [-1.0]) * n  # answer time; inf: failed
        self.recon = bytearray(n)  # how a query was answered, if not by F: _BY_*
        self.started = array("d", [-1.0]) * n if record_waits else None
        self.counts = dict.fromkeys(("duplicates", "late", "redispatched"), 0)
        self.events = 0
        self.max_batch = cfg.max_batch
        self._heap: list[Any] = self.env._queue
        self._ids = self.env._eid
        self._build_instances()
        self.rr = {"data": 0, "parity": 0, "backup": 0}
        self.next_arrival = 0

        # per-mode state
        self.decoder = cfg.make_decoder()
        self.decodable: dict[int, bool] = {}
        self.open: _Group | None = None
        self.qgroup: list[_Group | None] = [None] * n if mode == "coded" else []
        self.qslot = bytearray(n) if mode == "coded" else bytearray()
        self.qinst = array("i", [0]) * n if mode in ("hedge", "cheap") else array("i")
        self.deadline = array("d", [math.inf]) * n if mode == "cheap" else array("d")
        self.ring = np.zeros(_WINDOW)
        self.ring_n = 0
        # Until the first percentile is known, hedge never and take a backup
        # answer whenever it comes first.
        self.threshold_s = 0.0 if mode == "cheap" else math.inf

    # -- set-up -------------------------------------------------------------

    def _build_instances(self) -> None:
        cfg, shape = self.cfg, self.shape
        slowdown = cfg.slowdown_config()
        horizon_s = cfg.duration_s + 60  # as learncc.bench.run
        roles = [
            ("data", shape.data_instances),
            ("parity", shape.parity_instances),
            ("backup", shape.backup_instances),
        ]
        self.instances: dict[str, list[_Instance]] = {}
        self.alive: dict[str, list[bool]] = {}
        g = 0
        for role, count in roles:
            self.instances[role] = []
            for i in range(count):
                inst = _Instance(role, i, g)
                node = g // cfg.node_size
                spec = instance_schedule(slowdown, node, horizon_s, cfg.seed)
                inst.starts = [float(a) for a, _ in spec["episodes"]]
                inst.ends = [float(b) for _, b in spec["episodes"]]
                if inst.starts:
                    inst.slow_from, inst.slow_until = inst.starts[0], inst.ends[0]
                inst.factor = float(spec["slow_factor"])
                if g in slowdown.fail_instances:
                    inst.fail_at = slowdown.fail_at_s
                    inst.crash = slowdown.fail_mode == "crash"
                inst.jitter_s = slowdown.jitter_ms / 1000
                # the real worker seeds its jitter with seed * 1000 + index
                inst.jrng = np.random.default_rng(cfg.seed * 1000 + g)
                inst.rng = np.random.default_rng([cfg.seed, g, 7])
                inst.scale = cfg.backup_fraction if role == "backup" else 1.0
                self.instances[role].append(inst)
                g += 1
            self.alive[role] = [True] * count
        self.alive_at = {role: alive.__getitem__ for role, alive in self.alive.items()}
        n_parity = shape.parity_instances
        depth = [0] * n_parity
        self.placement = (
            [_LeastLoaded(range(j, n_parity, cfg.r), depth) for j in range(cfg.r)]
            if n_parity
            else []
        )
        for inst in self.instances["parity"]:
            inst.placement = self.placement[inst.index % cfg.r]

    # -- the event loop -----------------------------------------------------

    def run(self) -> None:
        arrive = {
            "coded": self._arrive_coded,
            "none": self._arrive_plain,
            "equal": self._arrive_plain,
            "hedge": self._arrive_hedge,
            "replicate": self._arrive_replicate,
            "cheap": self._arrive_cheap,
        }[self.mode]
        deliver = {
            "coded": self._data_coded,
            "hedge": self._data_first,
            "replicate": self._data_first,
            "cheap": self._data_cheap,
        }
        by_role = {
            "data": deliver.get(self.mode, self._data_first),
            "parity": self._parity,
            "backup": self._backup,
        }
        for role, insts in self.instances.items():
            for inst in insts:
                inst.deliver = by_role[role]
                inst.callbacks = [self._on_batch_done]
        self.arrive = arrive
        self._loop(until_s=self.cfg.duration_s + self.cfg.query_timeout_s + 1.0)

    def _loop(self, until_s: float) -> None:
        """SimPy's ``Environment.run`` for our events, with the arrivals merged
        in from the trace instead of each being an event on the heap.

        Order is SimPy's: by time, then by the order events were scheduled.
        Arrival i + 1 counts as scheduled just after arrival i was handled (as
        when each arrival scheduled the next), so it takes an event id then,
        and ties with other events fall as they did. Saves a heap push and pop
        per query, a quarter of the simulator's time at 100,000 queries/s.
        """
        env, queue, arrive = self.env, self.env._queue, self.arrive
        ids = env._eid
        arrivals = self.times
        n = len(arrivals)
        qid = 0
        next_id = next(ids)
        self.events += n
        while True:
            if qid < n:
                at = arrivals[qid]
                if not queue or (
                    at < queue[0][0] or (at == queue[0][0] and next_id < queue[0][2])
                ):
                    env._now = at
                    arrive(qid, at)
                    qid += 1
                    next_id = next(ids)
                    continue
            elif not queue:
                break
            if queue[0][0] >= until_s:
                break
            env._now, _, _, event = heappop(queue)
            event.callbacks[0](event)
        self.next_arrival = qid

    def _after(self, delay_s: float, value: Any, callback: Any) -> None:
        # Environment.schedule, without its call and checks
        event = _Event(callback, value)
        heappush(self._heap, (self.env._now + delay_s, NORMAL, next(self._ids), event))
        self.events += 1

    def _pick(self, role: str, avoid: Any = (), among: range | None = None) -> int:
        rr = self.rr
        alive = self.alive[role]
        n = len(alive)
        choice = rr[role]
        # pick_instance's first step, inline: it settles almost every pick
        if among is not None or not alive[choice] or choice in avoid:
            choice = pick_instance(
                n, choice, self.alive_at[role], avoid, among, role=role
            )
        rr[role] = choice + 1 if choice + 1 < n else 0
        return choice

    def _send(self, inst: _Instance, item: Any, now: float) -> None:
        inst.queue.append(item)
        if not inst.busy:
            self._start(inst, now)

    def _start(self, inst: _Instance, now: float) -> None:
        if now >= inst.fail_at:
            self._fail(inst, now)
            return
        queue = inst.queue
        b = len(queue)
        if b > self.max_batch:
            b = self.max_batch
        batch = [queue.popleft()] if b == 1 else [queue.popleft() for _ in range(b)]
        pos = inst.pos
        if pos == len(inst.buf):
            draws = self.service.draw_ms(inst.rng, inst.role, inst.index, _BLOCK)
            inst.buf = (np.maximum(draws, 0.0) * (inst.scale / 1000)).tolist()
            pos = 0
        service_s = inst.buf[pos]
        inst.pos = pos + 1
        if b > 1:
            service_s += self.cfg.per_item_ms * (b - 1) / 1000
        # slow episodes are sorted and time only moves forward (as in Schedule)
        if now >= inst.slow_until:
            self._next_episode(inst, now)
        if now >= inst.slow_from:
            service_s *= inst.factor
        if inst.jitter_s:
            service_s += float(inst.jrng.exponential(inst.jitter_s))
        inst.busy = True
        if self.started is not None and inst.role == "data":
            for item in batch:
                if item >= 0 and self.started[item] < 0:
                    self.started[item] = now
        # the instance is its own batch-done event: it has one batch at a time
        inst.batch = batch
        heappush(self._heap, (now + service_s, NORMAL, next(self._ids), inst))
        self.events += 1

    @staticmethod
    def _next_episode(inst: _Instance, now: float) -> None:
        ends, ep = inst.ends, inst.ep
        while ep < len(ends) and ends[ep] <= now:
            ep += 1
        inst.ep = ep
        if ep < len(ends):
            inst.slow_from, inst.slow_until = inst.starts[ep], ends[ep]
        else:
            inst.slow_from = inst.slow_until = math.inf

    def _on_batch_done(self, inst: _Instance) -> None:
        batch = inst.batch
        now = self.env._now
        delay = self.delays.get("result")
        if delay is not None:
            # the instance takes its next batch at once; the frontend sees
            # this one's outputs after the measured transport delay
            self._after(delay.at(now), (inst, batch), self._on_outputs)
            inst.busy = False
            if inst.queue:
                self._start(inst, now)
            return
        if inst.placement is not None:
            inst.placement.move(inst.index, -len(batch))
        deliver = inst.deliver
        for item in batch:
            deliver(item, now)
        inst.busy = False
        if inst.queue:
            self._start(inst, now)

    def _on_outputs(self, event: Any) -> None:
        inst, batch = event._value
        now = self.env._now
        if inst.placement is not None:
            inst.placement.move(inst.index, -len(batch))
        for item in batch:
            inst.deliver(item, now)

    def _fail(self, inst: _Instance, now: float) -> None:
        """The instance hangs or crashes as it would start a batch (as the
        worker does)."""
        inst.busy = True  # never starts another batch
        if not inst.crash:
            logger.debug("%s/%d hangs at %.3f s", inst.role, inst.index, now)
            return
        logger.debug("%s/%d crashes at %.3f s", inst.role, inst.index, now)
        self.alive[inst.role][inst.index] = False
        lost = list(inst.queue)
        inst.queue.clear()
        if inst.placement is not None:
            inst.placement.remove(inst.index)
        if inst.role != "data":
            return  # groups lose a parity; a backup's queries keep their original
        for item in lost:
            qid = item if item >= 0 else ~item
            if self.done[qid] < 0:
                self.counts["redispatched"] += 1
                self._redispatch(qid, now)

    def _redispatch(self, qid: int, now: float) -> None:
        group = self.qgroup[qid] if self.qgroup else None
        try:
            i = self._pick("data", group.instances if group is not None else ())
        except BackendUnavailableError:
            self.done[qid] = math.inf
            if group is not None:
                group.waiting -= 1
                if group.sealed:
                    self._try_decode(group, now)
            return
        if group is not None:
            group.instances.append(i)
        if self.qinst:
            self.qinst[qid] = i
        self._send(self.instances["data"][i], qid, now)

    def _answer(self, qid: int, now: float) -> bool:
        if self.done[qid] >= 0:
            self.counts["late"] += 1
            return False
        self.done[qid] = now
        return True

    def _dispatch_or_fail(self, qid: int, now: float, avoid: Any = ()) -> int:
        try:
            i = self._pick("data", avoid)
        except BackendUnavailableError:
            self.done[qid] = math.inf
            return -1
        self._send(self.instances["data"][i], qid, now)
        return i

    # -- plain ----------------------------------------------------------------

    def _arrive_plain(self, qid: int, now: float) -> None:
        self._dispatch_or_fail(qid, now)

    def _data_first(self, item: int, now: float) -> None:
        """First answer wins; a negative item is a second copy of ``~item``."""
        qid = item if item >= 0 else ~item
        if self._answer(qid, now):
            if item < 0:
                self.recon[qid] = _BY_COPY
            if self.mode == "hedge":
                self._observe(now - self.arrivals[qid])

    # -- coded ----------------------------------------------------------------

    def _arrive_coded(self, qid: int, now: float) -> None:
        group = self.open
        if group is None:
            group = self.open = _Group()
            # Arrivals are known in advance, so a flush timer is only needed
            # when the group will not fill before it fires (at equal times the
            # timer, scheduled first, would fire first).
            last = qid + self.k - 1
            flush_s = self.cfg.flush_timeout_s
            late = self.delays.get("flush")
            if late is not None:
                flush_s += late.at(now)
            if last >= len(self.times) or self.times[last] >= now + flush_s:
                self._after(flush_s, group, self._on_flush)
        self.qgroup[qid] = group
        self.qslot[qid] = len(group.members)
        group.members.append(qid)
        group.waiting += 1
        try:
            i = self._pick("data", group.instances)
        except BackendUnavailableError:
            self.done[qid] = math.inf
            group.waiting -= 1
        else:
            group.instances.append(i)
            self._send(self.instances["data"][i], qid, now)
        if len(group.members) == self.k:
            self._seal(group, now)

    def _on_flush(self, event: Any) -> None:
        group = event._value
        if not group.sealed:
            self._seal(group, self.env._now)

    def _seal(self, group: _Group, now: float) -> None:
        group.sealed = True
        if self.open is group:
            self.open = None
        if not group.waiting:
            self._drop(group)  # all answered already: no parity needed
            return
        for slot in range(len(group.members), self.k):
            group.avail |= 1 << slot  # fill queries: outputs known
        encode = self.delays.get("encode")
        if encode is not None:
            self._after(encode.at(now), group, self._on_encoded)
        else:
            self._send_parity(group, now)
        self._try_decode(group, now)

    def _on_encoded(self, event: Any) -> None:
        self._send_parity(event._value, self.env._now)

    def _send_parity(self, group: _Group, now: float) -> None:
        parity, rr = self.instances["parity"], self.rr
        for j, placement in enumerate(self.placement):
            # parity instance i runs parity model i % r; the least loaded one,
            # as the frontend does
            try:
                i = placement.pick(rr["parity"])
            except BackendUnavailableError:
                continue
            rr["parity"] = i + 1 if i + 1 < len(parity) else 0
            placement.move(i, 1)
            self._send(parity[i], (group, j), now)

    def _data_coded(self, qid: int, now: float) -> None:
        if not self._answer(qid, now):
            return
        group = self.qgroup[qid]
        if group is not None:
            group.avail |= 1 << self.qslot[qid]
            group.waiting -= 1
            if group.sealed:
                self._try_decode(group, now)

    def _parity(self, item: tuple[_Group, int], now: float) -> None:
        group, j = item
        if not group.done:
            group.avail |= 1 << (self.k + j)
            self._try_decode(group, now)

    def _try_decode(self, group: _Group, now: float, hold: bool = True) -> None:
        if not group.waiting:
            self._drop(group)
            return
        ok = self.decodable.get(group.avail)
        if ok is None:
            flags = [bool(group.avail >> b & 1) for b in range(self.k + self.r)]
            ok = self.decodable[group.avail] = self.decoder.can_decode(flags)
        if not ok:
            return
        done = self.done
        grace = self.cfg.reconstruct_after_s
        if hold and grace > 0:
            # as the frontend: not before the oldest waiting member has been
            # there reconstruct_after_s, and then whatever arrived meanwhile
            due = min(self.times[q] for q in group.members if done[q] < 0) + grace
            if now < due:
                if not group.held:
                    group.held = True
                    self._after(due - now, group, self._on_held)
                return
        for q in group.members:
            if done[q] < 0:
                done[q] = now
                self.recon[q] = _DECODED
                self._withdraw(q, group.instances)
        self._drop(group)

    def _on_held(self, event: Any) -> None:
        group = event._value
        group.held = False
        if not group.done:
            self._try_decode(group, self.env._now, hold=False)

    def _withdraw(self, qid: int, instances: list[int]) -> None:
        """The frontend cancels a rebuilt query's original if its instance has
        not started it; drop it from the queue that holds it likewise (the
        group's instances: k of them, or a few more after a re-dispatch)."""
        for i in instances:
            queue = self.instances["data"][i].queue
            if qid in queue:
                queue.remove(qid)
                return

    def _drop(self, group: _Group) -> None:
        group.done = True
        group.waiting = 0
        for q in group.members:
            self.qgroup[q] = None  # let finished groups be collected

    # -- hedge and replicate --------------------------------------------------

    def _arrive_hedge(self, qid: int, now: float) -> None:
        i = self._dispatch_or_fail(qid, now)
        self.qinst[qid] = i
        if i >= 0 and self.threshold_s < math.inf:
            self._after(self.threshold_s, qid, self._on_hedge)

    def _on_hedge(self, event: Any) -> None:
        qid = event._value
        if self.done[qid] >= 0:
            return
        try:
            i = self._pick("data", (self.qinst[qid],))
        except BackendUnavailableError:
            return
        self.counts["duplicates"] += 1
        self._send(self.instances["data"][i], ~qid, self.env._now)

    def _arrive_replicate(self, qid: int, now: float) -> None:
        i = self._dispatch_or_fail(qid, now)
        if i < 0:
            return
        try:
            j = self._pick("data", (i,))
        except BackendUnavailableError:
            return
        self.counts["duplicates"] += 1
        self._send(self.instances["data"][j], ~qid, now)

    def _observe(self, latency_s: float) -> None:
        """Feed the running percentile that times hedges and backups."""
        n = self.ring_n
        self.ring[n % _WINDOW] = latency_s
        n += 1
        self.ring_n = n
        if n % _REFRESH == 0:
            pct = (
                self.cfg.hedge_percentile
                if self.mode == "hedge"
                else self.cfg.cheap_percentile
            )
            self.threshold_s = float(np.percentile(self.ring[: min(n, _WINDOW)], pct))

    # -- cheap backups --------------------------------------------------------

    def _arrive_cheap(self, qid: int, now: float) -> None:
        self.deadline[qid] = now + self.threshold_s
        if self._dispatch_or_fail(qid, now) < 0:
            return
        try:
            b = self._pick("backup")
        except BackendUnavailableError:
            return
        self._send(self.instances["backup"][b], qid, now)

    def _data_cheap(self, qid: int, now: float) -> None:
        # every original latency feeds the median, late ones too, so that
        # answering by backup does not bias it low
        self._observe(now - self.arrivals[qid])
        self._answer(qid, now)

    def _backup(self, qid: int, now: float) -> None:
        if self.done[qid] >= 0:
            self.counts["late"] += 1
            return
        deadline = self.deadline[qid]
        if now >= deadline:
            self.done[qid] = now
            self.recon[qid] = _BY_BACKUP
        elif deadline < math.inf:
            self._after(deadline - now, qid, self._on_backup_deadline)

    def _on_backup_deadline(self, event: Any) -> None:
        qid = event._value
        if self.done[qid] < 0:
            self.done[qid] = self.env._now
            self.recon[qid] = _BY_BACKUP

    # -- results --------------------------------------------------------------

    def result(self, wall_s: float) -> SimResult:
        cfg, shape = self.cfg, self.shape
        arrivals = np.asarray(self.arrivals, dtype=np.float64)
        done = np.frombuffer(self.done, dtype=np.float64)
        counted = arrivals >= cfg.warmup_s
        # an answer after the query's deadline is a timeout, as in the frontend
        ok = (done >= 0) & (done - arrivals <= cfg.query_timeout_s) & counted
        latency_ms = (done[ok] - arrivals[ok]) * 1000 + cfg.overhead_ms
        answer = self.delays.get("answer")
        if answer is not None:
            # after the fact: no event waits on the client seeing its answer
            latency_ms += [answer.at(t) * 1000 for t in done[ok].tolist()]
        n = int(ok.sum())
        how = np.frombuffer(self.recon, dtype=np.uint8)[ok]
        reconstructed = int((how == _DECODED).sum())
        p50, p99, p999, mean, peak = _percentiles(latency_ms)
        span = float(np.ptp(arrivals[counted])) if n > 1 else 0.0
        waits = None
        if self.started is not None:
            started = np.frombuffer(self.started, dtype=np.float64)
            served = ok & (started >= 0)
            waits = (started[served] - arrivals[served]) * 1000
        return SimResult(
            p50=p50,
            p99=p99,
            p999=p999,
            mean=mean,
            max=peak,
            n=n,
            reconstructed=reconstructed,
            errors=int(counted.sum()) - n,
            top1=None,
            achieved_qps=n / span if span > 0 else 0.0,
            instances=shape.instances,
            data_instances=shape.data_instances,
            parity_instances=shape.parity_instances,
            backup_instances=shape.backup_instances,
            reconstructed_fraction=reconstructed / n if n else 0.0,
            duplicates=self.counts["duplicates"],
            by_copy=int((how == _BY_COPY).sum()),
            backup_used=int((how == _BY_BACKUP).sum()),
            late_discarded=self.counts["late"],
            redispatched=self.counts["redispatched"],
            events=self.events,
            wall_s=wall_s,
            latencies_ms=latency_ms,
            waits_ms=waits,
        )


def _percentiles(latency_ms: np.ndarray) -> tuple[float, float, float, float, float]:
    """p50, p99, p99.9, mean, max in ms from an HDR histogram, as ``drive`` does."""
    if len(latency_ms) == 0:
        return (math.nan,) * 5
    hist = HdrHistogram(1, 600_000_000, 3)  # microseconds, up to 10 minutes
    us = np.clip((latency_ms * 1000).astype(np.int64), 1, 600_000_000)
    # record each distinct value once with its count: millions of answers
    # would otherwise cost seconds of per-value Python calls
    values, counts = np.unique(us, return_counts=True)
    for value, count in zip(values.tolist(), counts.tolist(), strict=True):
        hist.record_value(value, count)
    return (
        hist.get_value_at_percentile(50) / 1000,
        hist.get_value_at_percentile(99) / 1000,
        hist.get_value_at_percentile(99.9) / 1000,
        hist.get_mean_value() / 1000,
        hist.get_max_value() / 1000,
    )


def arrival_trace(cfg: SimConfig) -> Trace:
    """The Poisson arrivals ``learncc bench`` offers for the same rate,
    duration and seed."""
    return poisson_trace(
        rate_qps=cfg.rate_qps, duration_s=cfg.duration_s, pool=1, seed=cfg.seed
    )


def simulate_mode(
    cfg: SimConfig,
    mode: str,
    *,
    arrivals_s: np.ndarray | None = None,
    record_waits: bool = False,
) -> SimResult:
    """Simulate one mode of ``cfg``.

    Args:
        cfg: the configuration.
        mode: one of ``learncc.serving.deploy.MODES``.
        arrivals_s: arrival times in seconds, increasing; default
            ``arrival_trace(cfg)``.
        record_waits: also return each counted query's queueing delay (from
            arrival to the start of its first copy's batch) in ``waits_ms``.

    Returns:
        The mode's latency summary; ``latencies_ms`` holds every counted one.

    Raises:
        UnknownNameError: ``mode`` is unknown.
        ConfigError: the arrivals are not increasing.
    """
    if mode not in MODES:
        raise UnknownNameError("mode", mode, list(MODES))
    if arrivals_s is None:
        arrivals_s = arrival_trace(cfg).arrivals_s
    arrivals_s = np.asarray(arrivals_s, dtype=np.float64)
    if len(arrivals_s) and (arrivals_s[0] < 0 or np.any(np.diff(arrivals_s) < 0)):
        raise ConfigError("arrivals_s must be >= 0 and increasing")
    started = time.perf_counter()
    engine = _Engine(cfg, mode, arrivals_s, record_waits)
    engine.run()
    wall_s = time.perf_counter() - started
    result = engine.result(wall_s)
    logger.info(
        "simulated %s: %d queries, %d events in %.1f s",
        mode,
        len(arrivals_s),
        result.events,
        wall_s,
    )
    return result


def simulate(cfg: SimConfig) -> dict[str, SimResult]:
    """Simulate every mode of ``cfg`` on the same arrivals."""
    arrivals = arrival_trace(cfg).arrivals_s
    if isinstance(cfg.service, ServiceModel) and cfg.service.name == "measured":
        if cfg.slowdown_config().slow_fraction > 0:
            logger.warning(
                "measured service times already include the slowdowns of their run; "
                "slowdown %r applies slow episodes again (use slowdown 'none')",
                cfg.slowdown,
            )
    return {mode: simulate_mode(cfg, mode, arrivals_s=arrivals) for mode in cfg.modes}


def summary(results: dict[str, SimResult]) -> dict[str, dict[str, Any]]:
    """JSON-ready per-mode summaries, the ``latency_ms`` table of results.json."""
    return {mode: r.to_dict() for mode, r in results.items()}
