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

Speed: one SimPy event per arrival and one per batch (plus one per flush and
hedge/backup timer); no process per query, service draws in numpy blocks,
per-query state in flat arrays. About 3 microseconds of Python per event on
our machine.

Shortcomings: the frontend's own CPU and the transport are not simulated;
``overhead_ms`` adds a constant per answer instead, which cannot reorder
events. Timeouts are applied afterwards (an answer later than
``query_timeout_s`` counts as an error), so a timed-out query's late output
still helps its group decode, where the frontend would have discarded it.
Hedged and replicated copies are never cancelled. ``cheap`` backups only
model timing; their accuracy loss is not simulated.
"""

from __future__ import annotations

import logging
import math
import time
from array import array
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import simpy
from hdrh.histogram import HdrHistogram
from simpy.events import NORMAL

from learncc.bench.loadgen import Trace, poisson_trace
from learncc.codes import DECODERS, Decoder
from learncc.errors import BackendUnavailableError, ConfigError, UnknownNameError
from learncc.serving.deploy import MODES, Deployment, plan
from learncc.serving.policy import least_loaded, pick_instance
from learncc.serving.slowdown import SlowdownConfig, instance_schedule, preset
from learncc.sim.service import Deterministic, ServiceModel

logger = logging.getLogger(__name__)

_BLOCK = 512  # service draws per refill of an instance's buffer
_WINDOW = 2000  # answers behind the running percentiles of hedge and cheap
_REFRESH = 100  # answers between recomputations of those percentiles


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
    overhead_ms: float = 0.0
    hedge_percentile: float = 95.0
    cheap_fraction: float | None = None  # None: 1 / (2 k)
    cheap_percentile: float = 50.0
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise ConfigError(f"unknown modes {bad}; choose from {', '.join(MODES)}")
        if self.decoder not in DECODERS:
            raise UnknownNameError("decoder", self.decoder, list(DECODERS))
        if self.rate_qps <= 0 or self.duration_s <= 0:
            raise ConfigError(
                f"rate_qps and duration_s must be > 0, "
                f"got {self.rate_qps}, {self.duration_s}"
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
        if self.per_item_ms < 0 or self.overhead_ms < 0:
            raise ConfigError("per_item_ms and overhead_ms must be >= 0")
        for name in ("hedge_percentile", "cheap_percentile"):
            if not 0 < getattr(self, name) < 100:
                raise ConfigError(
                    f"{name} must be in (0, 100), got {getattr(self, name)}"
                )
        if self.cheap_fraction is not None and not 0 < self.cheap_fraction <= 1:
            raise ConfigError(
                f"cheap_fraction must be in (0, 1], got {self.cheap_fraction}"
            )
        for mode in self.modes:
            plan(mode, m=self.m, k=self.k, r=self.r)  # validates m (>= k if coded)
        self.make_decoder()  # validates k, r for the decoder
        self.slowdown_config()  # validates the preset name and overrides

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
        d = asdict(self)
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
            leaves out (frontend, sockets, sleep overshoot).
        modes: overrides ``bench.modes``.

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
        overhead_ms=overhead_ms,
        seed=bench.seed,
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
    reconstructed: int  # answered by redundancy: decoded, hedge, replica, backup
    errors: int  # timed out, or no live instance left
    top1: float | None  # accuracy is not simulated: always None
    achieved_qps: float
    instances: int  # resource cost
    data_instances: int
    parity_instances: int
    backup_instances: int
    reconstructed_fraction: float
    duplicates: int  # hedged copies sent (hedge), second copies (replicate)
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


class _Group:
    __slots__ = ("members", "waiting", "avail", "instances", "sealed", "done")

    def __init__(self) -> None:
        self.members: list[int] = []
        self.waiting = 0  # members not yet answered
        self.avail = 0  # bit s: data slot s available; bit k + j: parity j
        self.instances: list[int] = []
        self.sealed = False
        self.done = False  # decoded, or every member answered: drop later results


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
        self.done = array("d", [-1.0]) * n  # answer time; inf: failed
        self.recon = bytearray(n)
        self.started = array("d", [-1.0]) * n if record_waits else None
        self.counts = dict.fromkeys(("duplicates", "late", "redispatched"), 0)
        self.events = 0
        self.max_batch = cfg.max_batch
        self._schedule = self.env.schedule
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
        self.arrive = arrive
        if self.arrivals:
            self._after(self.arrivals[0], None, self._on_arrival)
        self.env.run(until=self.cfg.duration_s + self.cfg.query_timeout_s + 1.0)

    def _after(self, delay_s: float, value: Any, callback: Any) -> None:
        self._schedule(_Event(callback, value), NORMAL, delay_s)
        self.events += 1

    def _on_arrival(self, event: Any) -> None:
        qid = self.next_arrival
        now = self.env._now
        self.arrive(qid, now)
        qid += 1
        self.next_arrival = qid
        if qid < len(self.arrivals):
            self._schedule(
                _Event(self._on_arrival, None), NORMAL, self.arrivals[qid] - now
            )
            self.events += 1

    def _pick(self, role: str, avoid: Any = (), among: range | None = None) -> int:
        rr = self.rr
        n = len(self.alive[role])
        choice = pick_instance(
            n, rr[role], self.alive_at[role], avoid, among, role=role
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
            draws = self.cfg.service.draw_ms(inst.rng, inst.role, inst.index, _BLOCK)
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
        self._schedule(_Event(self._on_batch_done, (inst, batch)), NORMAL, service_s)
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

    def _on_batch_done(self, event: Any) -> None:
        inst, batch = event._value
        now = self.env._now
        deliver = inst.deliver
        for item in batch:
            deliver(item, now)
        inst.busy = False
        if inst.queue:
            self._start(inst, now)

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
                self.recon[qid] = 1
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
            flush_at = now + self.cfg.flush_timeout_s
            if last >= len(self.arrivals) or self.arrivals[last] >= flush_at:
                self._after(self.cfg.flush_timeout_s, group, self._on_flush)
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
        n_parity = len(self.alive["parity"])
        alive, parity = self.alive_at["parity"], self.instances["parity"]
        for j in range(self.r):
            # parity instance i runs parity model i % r; the least loaded one,
            # as the frontend does
            try:
                i = least_loaded(
                    (i for i in range(j, n_parity, self.r) if alive(i)),
                    lambda i: len(parity[i].queue) + parity[i].busy,
                    self.rr["parity"],
                    n_parity,
                )
            except BackendUnavailableError:
                continue
            self.rr["parity"] = i + 1 if i + 1 < n_parity else 0
            self._send(parity[i], (group, j), now)
        self._try_decode(group, now)

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

    def _try_decode(self, group: _Group, now: float) -> None:
        if not group.waiting:
            self._drop(group)
            return
        ok = self.decodable.get(group.avail)
        if ok is None:
            flags = [bool(group.avail >> b & 1) for b in range(self.k + self.r)]
            ok = self.decodable[group.avail] = self.decoder.can_decode(flags)
        if ok:
            done = self.done
            for q in group.members:
                if done[q] < 0:
                    done[q] = now
                    self.recon[q] = 1
                    self._withdraw(q, group.instances)
            self._drop(group)

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
            self.recon[qid] = 1
        elif deadline < math.inf:
            self._after(deadline - now, qid, self._on_backup_deadline)

    def _on_backup_deadline(self, event: Any) -> None:
        qid = event._value
        if self.done[qid] < 0:
            self.done[qid] = self.env._now
            self.recon[qid] = 1

    # -- results --------------------------------------------------------------

    def result(self, wall_s: float) -> SimResult:
        cfg, shape = self.cfg, self.shape
        arrivals = np.asarray(self.arrivals, dtype=np.float64)
        done = np.frombuffer(self.done, dtype=np.float64)
        counted = arrivals >= cfg.warmup_s
        # an answer after the query's deadline is a timeout, as in the frontend
        ok = (done >= 0) & (done - arrivals <= cfg.query_timeout_s) & counted
        latency_ms = (done[ok] - arrivals[ok]) * 1000 + cfg.overhead_ms
        n = int(ok.sum())
        recon = np.frombuffer(self.recon, dtype=np.uint8).astype(bool)
        reconstructed = int((recon & ok).sum())
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
