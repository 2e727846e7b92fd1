"""The coded frontend: coding groups, dispatch, and degraded-mode decoding.

Queries are grouped into coding groups of k in arrival order. Each query is
sent to a data instance at once (never held back for its group) and never to
an instance that already holds a member of its group. When a group fills,
the encoder makes its r parity queries (at once, or, when groups fill in a
burst, at the end of the loop iteration in one call for all of them) and
each goes to a parity instance; over a backend whose parity instances
encode (``parity_encodes``: the local one), the group's k inputs go there
instead and the instance encodes them. A group still partial after
``flush_timeout_s`` is completed with the bundle's fill query, whose F
output is known, so the decoder sees a full group. As soon as the available
data outputs and parity outputs allow it (or, with ``reconstruct_after_s``,
once the missing members have waited that long), the missing outputs are
decoded and answered, flagged ``reconstructed``; the original is then
withdrawn from its instance if not yet started, and discarded if it still
arrives.

The same frontend serves the baselines it is compared with, on the same
dispatch code: plain (``none``/``equal``), ``hedge`` (a second copy once a
query has waited longer than the running p95), ``replicate`` (every query
sent twice), and ``cheap`` (every query also sent to a backup instance with
a cheaper approximate model, whose answer is used if the original is not back
by the running median).

Dispatch policies (``policy``): ``round-robin`` over per-instance queues,
``shortest-queue`` (fewest queries in flight), and ``shared-queue`` (one
frontend queue that idle instances take from, one query at a time, the
arrangement with the least queueing behind a slow instance).

Every accepted query gets exactly one answer: its real output, a
reconstruction, a backup or default answer (each flagged), or an exception
(``QueryTimeoutError`` once its wait passes, ``BackendUnavailableError`` when
no instance is left to run it, ``FrontendClosedError`` on close). If an
instance dies, its unanswered queries are sent again to another instance;
the group may still reconstruct them first.

Shortcoming: decoding waits for the parity and the other k - 1 outputs; with
r = 1 a group with two stragglers waits for one of them (ParM behaves the
same), and its members then reach their deadline or timeout.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
from collections import deque
from collections.abc import Container
from dataclasses import dataclass, field

import numpy as np

from learncc.codes import Decoder, Encoder
from learncc.errors import (
    BackendUnavailableError,
    BadQueryError,
    ConfigError,
    FrontendClosedError,
    LearnccError,
    NonFiniteOutputError,
    OverloadedError,
    QueryTimeoutError,
)
from learncc.serving.backend import BACKUP, CANCELLED, DATA, PARITY, Backend
from learncc.serving.policy import least_loaded, pick_instance
from learncc.serving.protocol import NON_FINITE_OUTPUT

logger = logging.getLogger(__name__)

POLICIES = ("round-robin", "shortest-queue", "shared-queue")
# windows closing closer together than this are sealed in one batch
SEAL_BATCH_GAP_S = 1e-4
REDUNDANCY = ("hedge", "replicate", "cheap")


def check_policy(policy: str, batch_size: int) -> None:
    """Refuse an unknown dispatch policy, or batches under ``shared-queue``.

    Raises:
        ConfigError: naming the policy.
    """
    if batch_size > 1 and policy == "shared-queue":
        raise ConfigError(
            "shared-queue hands out one query at a time; use batch_size=1"
        )
    if policy not in POLICIES:
        raise ConfigError(
            f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}"
        )


@dataclass(frozen=True)
class Answer:
    output: np.ndarray  # (*out) float32
    reconstructed: bool
    query_id: int
    default: bool = False  # the configured default answer, given at the deadline
    backup: bool = False  # the approximate backup model's answer (mode cheap)


@dataclass(frozen=True)
class Statistics:
    accepted: int
    answered: int
    reconstructed: int
    failed: int
    timed_out: int
    refused: int
    defaulted: int
    backup_used: int
    hedged: int
    late_discarded: int
    redispatched: int
    implausible: int  # reconstructions withheld as out of F's range
    pending: int
    queued: int
    groups_open: int


@dataclass(frozen=True)
class Coding:
    """What the frontend needs of a code: from a bundle, or built in tests."""

    encoder: Encoder
    decoder: Decoder
    fill_input: np.ndarray  # (*in)
    fill_output: np.ndarray  # (*out)
    # A reconstruction with a value beyond this is withheld (the query waits
    # for its original): None trusts every reconstruction. See _try_decode.
    max_abs_output: float | None = None


# slots: these are made per query or per group on the hot path (issue 3)
@dataclass(eq=False, slots=True)
class _Query:
    qid: int
    x: np.ndarray
    future: asyncio.Future[Answer]
    born: float
    deadline: bool = False  # the expiry is the caller's deadline, not the timeout
    wait_s: float = 0.0
    group: _Group | None = None
    slot: int = 0
    copies: list[int] = field(default_factory=list)  # data instances holding it
    extra: asyncio.TimerHandle | None = None  # hedge or backup timer
    backup_output: np.ndarray | None = None


@dataclass(eq=False, slots=True)
class _Group:
    gid: int
    members: list[_Query] = field(default_factory=list)
    outputs: list[np.ndarray | None] = field(default_factory=list)  # k slots
    parity: list[np.ndarray | None] = field(default_factory=list)  # r slots
    instances: set[int] = field(default_factory=set)
    sealed: bool = False  # parity queries sent; membership final
    unanswered: int = 0  # members still pending
    arrived: int = 0  # data and parity outputs in hand, fill outputs included
    # decodable, but held for its originals until reconstruct_after_s
    held: asyncio.TimerHandle | None = None


@dataclass(eq=False, slots=True)
class _Window:
    """Batching: B consecutive queries go to one instance as a batch. Coded,
    k such batches form a window whose B coding groups each take the query at
    one position of every batch (ParM's layout), so that the B parity queries
    also travel as one batch."""

    groups: list[_Group]  # B groups (coded), else empty
    opened: float  # loop time; the window is flushed flush_timeout_s later
    batch: list[_Query] = field(default_factory=list)  # the batch being filled
    instances: set[int] = field(default_factory=set)  # data instances of its batches
    count: int = 0


class RunningQuantiles:
    """Quantiles of the last ``window`` latencies, refreshed every ``every``
    samples so that a query pays O(1) on average."""

    def __init__(self, window: int = 2048, every: int = 128) -> None:
        self.values = np.zeros(window)
        self.n = 0
        self.every = every
        self.p50: float | None = None
        self.p95: float | None = None

    def add(self, value: float) -> None:
        self.values[self.n % len(self.values)] = value
        self.n += 1
        if self.n % self.every == 0:
            filled = self.values[: min(self.n, len(self.values))]
            self.p50, self.p95 = (float(v) for v in np.percentile(filled, (50, 95)))


class Frontend:
    """Serves queries over a backend, coded when ``coding`` is given.

    Args:
        backend: the instances; with coding it must have parity instances,
            with ``redundancy="cheap"`` backup instances.
        coding: the code; ``None`` serves uncoded.
        input_shape: shape of one query, checked on every call.
        policy: data dispatch, one of ``POLICIES``.
        redundancy: ``None`` or one of ``REDUNDANCY`` (uncoded only).
        flush_timeout_s: longest a partial coding group (or a partial batch)
            waits for members before it is sent, completed with fill queries.
        batch_size: queries sent to an instance together (B). With coding,
            k batches form a window of B coding groups, the j-th group taking
            the j-th query of each batch; B parity queries then go to one
            parity instance together. B = 1 sends every query at once.
        query_timeout_s: longest a query waits for any answer.
        max_pending: most accepted, unanswered queries; beyond it ``submit``
            refuses at once with ``OverloadedError`` rather than queueing
            without bound.
        default_output: answer given when a query's deadline passes with no
            real or reconstructed output (flagged ``default``); without it the
            query fails with ``QueryTimeoutError``.
        reconstruct_after_s: a group that can be decoded while its missing
            members have waited less than this since they were accepted is
            held for their originals until then (a member's deadline, if
            sooner, takes the reconstruction). 0, the default, decodes as
            soon as possible, as ParM does; then an original only a little
            slower than its partner and parity is answered approximately
            (13-19% of answers at 300 q/s on the demo deployment, 0.2-0.4
            points of served top-1; docs/benchmarks.md). Set it
            near the p90-p99 of F's latency to answer approximately only
            for real stragglers.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        input_shape: tuple[int, ...],
        coding: Coding | None = None,
        policy: str = "round-robin",
        redundancy: str | None = None,
        flush_timeout_s: float = 0.005,
        batch_size: int = 1,
        query_timeout_s: float = 10.0,
        max_pending: int = 100_000,
        default_output: np.ndarray | None = None,
        reconstruct_after_s: float = 0.0,
    ) -> None:
        if flush_timeout_s <= 0 or query_timeout_s <= 0:
            raise ConfigError("flush_timeout_s and query_timeout_s must be > 0")
        if max_pending < 1:
            raise ConfigError(f"max_pending must be >= 1, got {max_pending}")
        if not 0 <= reconstruct_after_s < math.inf:
            raise ConfigError(
                "reconstruct_after_s must be a finite number >= 0 (0 decodes as "
                f"soon as possible), got {reconstruct_after_s}"
            )
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        check_policy(policy, batch_size)
        if redundancy is not None and redundancy not in REDUNDANCY:
            raise ConfigError(
                f"unknown redundancy {redundancy!r}; "
                f"choose one of {', '.join(REDUNDANCY)}"
            )
        if redundancy is not None and coding is not None:
            raise ConfigError(
                f"redundancy {redundancy!r} is a baseline for uncoded serving"
            )
        self.backend = backend
        self.coding = coding
        self._instances_encode = coding is not None and bool(
            getattr(backend, "parity_encodes", False)
        )
        self.policy, self.redundancy = policy, redundancy
        self.input_shape = tuple(input_shape)
        self.flush_timeout_s, self.query_timeout_s = flush_timeout_s, query_timeout_s
        self.max_pending = max_pending
        self.batch_size = batch_size
        self.default_output = default_output
        self.reconstruct_after_s = float(reconstruct_after_s)
        counts = backend.counts
        if coding is not None:
            k, r = coding.decoder.k, coding.decoder.r
            if counts[DATA] < k:
                raise ConfigError(
                    f"k={k} needs at least {k} data instances so that a group's "
                    f"members land on distinct instances; got {counts[DATA]}"
                )
            if counts.get(PARITY, 0) < r:
                raise ConfigError(
                    f"r={r} needs at least {r} parity instances, "
                    f"got {counts.get(PARITY, 0)}"
                )
        if redundancy in ("hedge", "replicate") and counts[DATA] < 2:
            raise ConfigError(
                f"{redundancy} needs at least 2 data instances, got {counts[DATA]}"
            )
        if redundancy == "cheap" and counts.get(BACKUP, 0) < 1:
            raise ConfigError("cheap needs at least 1 backup instance")
        self._ids = itertools.count()
        self._gids = itertools.count()
        self._rr = {DATA: 0, PARITY: 0, BACKUP: 0}
        self._pending: dict[int, _Query] = {}
        self._groups: dict[int, _Group] = {}
        self._window: _Window | None = None
        self._shared: deque[_Query] = deque()
        self._busy: set[int] = set()  # shared-queue: data instances with a query
        # hedge reads the running p95 of answers; cheap the running median of
        # the original model's latency, every original timed, the late ones
        # too. Timing cheap's answers instead let the backup's own answers
        # pull the median down to the backup's latency, and the backup then
        # answered 92% of queries (fresh-user test).
        self._latency = RunningQuantiles()
        self._track_latency = redundancy == "hedge"
        self._originals: dict[int, float] | None = (
            {} if redundancy == "cheap" else None
        )  # cheap: query id -> loop time accepted, until its original is back
        # Expiries: one heap of (loop time, query id) and one armed timer for
        # its earliest entry, instead of a timer per query; answered queries'
        # entries are skipped when they surface and swept out in bulk (issue 3:
        # a timer made and cancelled per query was a large part of its cost).
        self._expiries: list[tuple[float, int]] = []
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._expiry_at = math.inf
        # one flush timer for the open window, re-armed rather than cancelled
        self._flush_timer: asyncio.TimerHandle | None = None
        self._sealing: list[list[_Group]] = []  # closed windows' groups
        self._last_close_s = -math.inf  # loop time a window last closed
        self._closed = False
        self._counts = dict.fromkeys(
            (
                "accepted",
                "answered",
                "reconstructed",
                "failed",
                "timed_out",
                "refused",
                "defaulted",
                "backup_used",
                "hedged",
                "late_discarded",
                "redispatched",
                "implausible",
            ),
            0,
        )

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.backend.start(self)

    async def close(self) -> None:
        """Fail every unanswered query with ``FrontendClosedError``, then stop
        the backend."""
        self._closed = True
        for query in list(self._pending.values()):
            self._fail(query, FrontendClosedError("the frontend was closed"))
        for timer in (self._expiry_timer, self._flush_timer):
            if timer is not None:
                timer.cancel()
        self._expiry_timer = self._flush_timer = None
        await self.backend.close()

    async def __aenter__(self) -> Frontend:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def answered(self) -> int:
        """Queries answered so far: ``statistics().answered``, read without
        building the statistics (for per-result probes)."""
        return self._counts["answered"]

    def statistics(self) -> Statistics:
        return Statistics(
            **self._counts,
            pending=len(self._pending),
            queued=len(self._shared),
            groups_open=len(self._groups),
        )

    # -- the query path ----------------------------------------------------

    def check_input(self, x: np.ndarray) -> np.ndarray:
        """Validate one query; return it as contiguous float32.

        Raises:
            BadQueryError: wrong shape or dtype, or non-finite values.
        """
        if not isinstance(x, np.ndarray):
            raise BadQueryError(
                f"a query must be a NumPy array, got {type(x).__name__}"
            )
        if x.shape != self.input_shape:
            raise BadQueryError(
                f"query shape {x.shape} does not match the model's input "
                f"{self.input_shape}"
            )
        if x.dtype.kind not in "fiu":
            raise BadQueryError(f"query dtype {x.dtype} is not numeric; send float32")
        x = np.ascontiguousarray(x, dtype=np.float32)
        # a sum of squares is finite only if every value is, and vdot costs a
        # third of isfinite().all() (issue 3); a finite query so large that
        # the sum overflows takes the exact test
        if not math.isfinite(np.vdot(x, x)) and not np.isfinite(x).all():
            raise BadQueryError("query holds NaN or infinity")
        return x

    async def infer(self, x: np.ndarray, *, deadline_s: float | None = None) -> Answer:
        """Serve one query.

        Args:
            deadline_s: seconds from now after which the caller wants the
                best answer there is: the default answer if configured, else
                ``QueryTimeoutError``. A reconstruction is answered as soon as
                it exists (or once ``reconstruct_after_s`` has passed), and at
                the deadline at the latest, so none is left waiting for one.

        Raises:
            BadQueryError: the input is malformed (nothing was accepted).
            OverloadedError, FrontendClosedError: refused (nothing was accepted).
            QueryTimeoutError, BackendUnavailableError, FrontendClosedError:
                the accepted query could not be answered.
        """
        return await self.submit(x, deadline_s=deadline_s)

    def submit(
        self, x: np.ndarray, *, deadline_s: float | None = None
    ) -> asyncio.Future[Answer]:
        """Accept one query and return the future of its answer (see ``infer``)."""
        if self._closed:
            raise FrontendClosedError("the frontend is closed")
        x = self.check_input(x)
        if deadline_s is not None and not deadline_s > 0:
            raise BadQueryError(f"deadline_s must be > 0, got {deadline_s}")
        if len(self._pending) >= self.max_pending:
            self._counts["refused"] += 1
            raise OverloadedError(len(self._pending), self.max_pending)
        loop = self._loop
        now = loop.time()
        query = _Query(next(self._ids), x, loop.create_future(), now)
        self._pending[query.qid] = query
        self._counts["accepted"] += 1
        query.wait_s = self.query_timeout_s
        if deadline_s is not None and deadline_s < query.wait_s:
            query.wait_s, query.deadline = deadline_s, True
        self._add_expiry(now + query.wait_s, query.qid)
        if self._originals is not None:
            self._time_original(query)
        if self.coding is None and self.batch_size == 1:
            self._dispatch(query)
            self._add_redundancy(query)
        else:
            self._join_window(query)
        return query.future

    def _time_original(self, query: _Query) -> None:
        originals = self._originals
        assert originals is not None
        # ids arrive in order: the oldest entries, whose originals never came
        # back (a dead or hung instance), are first
        horizon = query.born - self.query_timeout_s
        while originals and originals[next(iter(originals))] < horizon:
            del originals[next(iter(originals))]
        originals[query.qid] = query.born

    def _join_window(self, query: _Query) -> None:
        """Place ``query`` in the current batch (and, coded, its coding group);
        send the batch when full and seal the groups when the window is."""
        window = self._window
        k = self.coding.decoder.k if self.coding is not None else 1
        if window is None:
            groups = []
            if self.coding is not None:
                r = self.coding.decoder.r
                for _ in range(self.batch_size):
                    group = _Group(
                        next(self._gids), outputs=[None] * k, parity=[None] * r
                    )
                    self._groups[group.gid] = group
                    groups.append(group)
            window = self._window = _Window(groups, self._loop.time())
            if self._flush_timer is None:
                self._flush_timer = self._loop.call_later(
                    self.flush_timeout_s, self._flush_due
                )
        position = window.count % self.batch_size
        if window.groups:
            group = window.groups[position]
            query.group, query.slot = group, len(group.members)
            group.members.append(query)
            group.unanswered += 1
        window.batch.append(query)
        window.count += 1
        if len(window.batch) == self.batch_size:
            self._send_batch(window)
        if window.count == k * self.batch_size:
            self._close_window(window)

    def _send_batch(self, window: _Window) -> None:
        batch, window.batch = window.batch, []
        if not batch:
            return
        if self.policy == "shared-queue":  # batches of one, taken by idle instances
            for query in batch:
                self._dispatch(query)
            return
        try:
            index = self._pick(DATA, window.instances)
        except BackendUnavailableError as e:
            for query in batch:
                self._fail(query, e)
            return
        window.instances.add(index)
        for query in batch:
            if query.qid in self._pending:
                self._send_data(query, index)
                self._add_redundancy(query)

    def _flush_due(self) -> None:
        """The flush timer: close the open window if it is old enough, else
        wait for it. Windows that filled earlier leave the timer running,
        so it fires at most about once per flush_timeout_s."""
        self._flush_timer = None
        window = self._window
        if window is None or self._closed:
            return
        due = window.opened + self.flush_timeout_s
        if due <= self._loop.time():
            self._close_window(window)
        else:
            self._flush_timer = self._loop.call_at(due, self._flush_due)

    def _close_window(self, window: _Window) -> None:
        """Send a partial batch and seal the window's coding groups (at the
        flush timeout, or when the window is full)."""
        if self._window is window:
            self._window = None
        self._send_batch(window)
        if window.groups:
            self._seal_soon(window.groups)

    def _pick(
        self,
        role: str,
        avoid: Container[int] = (),
        among: range | None = None,
    ) -> int:
        """An instance of ``role`` by the dispatch policy, avoiding ``avoid``
        where another live instance exists."""
        backend = self.backend
        n = backend.counts[role]
        start = self._rr[role]
        if (
            among is None
            and self.policy != "shortest-queue"
            and start not in avoid
            and backend.alive(role, start)
        ):
            # pick_instance's first candidate, without its general scan
            self._rr[role] = start + 1 if start + 1 < n else 0
            return start
        if self.policy == "shortest-queue":
            live = [
                i
                for i in (among if among is not None else range(n))
                if backend.alive(role, i)
            ]
            if not live:
                raise BackendUnavailableError(f"no live {role} instance")
            preferred = [i for i in live if i not in avoid] or live
            choice = min(
                preferred, key=lambda i: (backend.depth(role, i), (i - start) % n)
            )
        else:
            choice = pick_instance(
                n,
                start,
                lambda i: backend.alive(role, i),
                avoid,
                among,
                role=role,
            )
        self._rr[role] = (choice + 1) % n
        return choice

    def _pick_least_loaded(self, role: str, among: range) -> int:
        backend, n = self.backend, self.backend.counts[role]
        live = (i for i in among if backend.alive(role, i))
        choice = least_loaded(live, lambda i: backend.depth(role, i), self._rr[role], n,
                              role=role)  # fmt: skip
        self._rr[role] = (choice + 1) % n
        return choice

    def _dispatch(self, query: _Query) -> None:
        """Send ``query`` alone to a data instance, or queue it (shared-queue).
        Used for unbatched queries and to send a query again after its
        instance died."""
        if self.policy == "shared-queue":
            self._shared.append(query)
            self._pump()
            return
        avoid = query.group.instances if query.group is not None else query.copies
        try:
            self._send_data(query, self._pick(DATA, avoid))
        except BackendUnavailableError as e:
            self._fail(query, e)

    def _send_data(self, query: _Query, index: int) -> None:
        self.backend.send(DATA, index, query.qid, query.x)
        query.copies.append(index)
        if query.group is not None:
            query.group.instances.add(index)

    def _pump(self) -> None:
        """Shared queue: hand queued queries to idle live instances.

        A query is skipped (left queued) for an instance that holds another
        member of its coding group; the scan is bounded by the queue length.
        """
        n = self.backend.counts[DATA]
        idle = [
            i for i in range(n) if i not in self._busy and self.backend.alive(DATA, i)
        ]
        if not any(self.backend.alive(DATA, i) for i in range(n)):
            while self._shared:
                self._fail(
                    self._shared.popleft(),
                    BackendUnavailableError("no live data instance"),
                )
            return
        for index in idle:
            for _ in range(len(self._shared)):
                query = self._shared.popleft()
                if query.qid not in self._pending:
                    continue  # answered while queued (reconstructed, timed out)
                taken = (
                    query.group.instances
                    if query.group is not None
                    else set(query.copies)
                )
                if index in taken and len(taken) < n:
                    self._shared.append(query)
                    continue
                self._busy.add(index)
                self._send_data(query, index)
                break
            if not self._shared:
                return

    def _add_redundancy(self, query: _Query) -> None:
        if self.redundancy == "replicate":
            try:
                self._send_data(query, self._pick(DATA, query.copies))
            except BackendUnavailableError:
                pass  # one copy is enough to answer
        elif self.redundancy == "hedge" and self._latency.p95 is not None:
            query.extra = self._loop.call_later(self._latency.p95, self._hedge, query)
        elif self.redundancy == "cheap":
            try:
                self.backend.send(BACKUP, self._pick(BACKUP), query.qid, query.x)
            except BackendUnavailableError:
                pass  # serve without a backup

    def _hedge(self, query: _Query) -> None:
        if query.qid not in self._pending:
            return
        try:
            index = self._pick(DATA, query.copies)
        except BackendUnavailableError:
            return
        if index not in query.copies:
            self._counts["hedged"] += 1
            self._send_data(query, index)

    def _seal_soon(self, groups: list[_Group]) -> None:
        """Seal a closed window's groups now if windows close sparsely, else
        at the end of this loop iteration together with every other window
        closed in it: one encoder call for all of them instead of one per
        group (issue 3). Results read from a socket run in a later iteration,
        after that callback, so the wait delays no decoding; sealing sparse
        windows at once spares low rates an extra pass of the loop per
        group."""
        now = self._loop.time()
        sparse = now - self._last_close_s > SEAL_BATCH_GAP_S
        self._last_close_s = now
        if sparse and not self._sealing:
            self._seal([groups])
            return
        if not self._sealing:
            self._loop.call_soon(self._seal_closed)
        self._sealing.append(groups)

    def _seal_closed(self) -> None:
        windows, self._sealing = self._sealing, []
        if not self._closed:
            self._seal(windows)

    def _seal(self, windows: list[list[_Group]]) -> None:
        """Complete the windows' groups with fill queries and send their
        parity queries, each window's B parity queries for model j to one
        instance."""
        assert self.coding is not None
        k, r = self.coding.decoder.k, self.coding.decoder.r
        live: list[list[_Group]] = []
        n_live = 0
        for groups in windows:
            kept = []
            for group in groups:
                group.sealed = True
                if not group.unanswered:
                    self._drop_group(group)  # all answered already: no parity
                    continue
                for slot in range(len(group.members), k):
                    group.outputs[slot] = self.coding.fill_output
                    group.arrived += 1
                kept.append(group)
            if kept:
                live.append(kept)
                n_live += len(kept)
        if not live:
            return
        if self._instances_encode:
            # each parity instance gets the group's k inputs and encodes them
            # itself: a backend on one machine moves k inputs as cheaply as
            # one, and the frontend is spared the encoder's ten-odd NumPy
            # calls per group, which cost it about 90 us of CPU per group at
            # 300 q/s (its caches cold after every worker wake-up), a sixth
            # of coded's CPU (issue 3)
            fill = self.coding.fill_input
            members = [
                [q.x for q in group.members] + [fill] * (k - len(group.members))
                for groups in live
                for group in groups
            ]
        else:
            # filled in place: cheaper than nested np.stack for small groups
            inputs = np.empty((n_live, k, *self.input_shape), np.float32)
            g = 0
            for groups in live:
                for group in groups:
                    for slot, query in enumerate(group.members):
                        inputs[g, slot] = query.x
                    if len(group.members) < k:
                        inputs[g, len(group.members) :] = self.coding.fill_input
                    g += 1
            parity = self.coding.encoder.encode_numpy(inputs)  # (G, r, *in)
        n_parity = self.backend.counts[PARITY]
        first = 0  # row of parity for the window's first group
        for groups in live:
            for j in range(r):
                # parity instance i runs parity model i % r; whatever the data
                # policy, parity goes to the least loaded one: a parity output
                # only helps if it arrives before the stragglers it covers
                try:
                    index = self._pick_least_loaded(PARITY, range(j, n_parity, r))
                except BackendUnavailableError:
                    logger.debug("no live instance for parity model %d", j)
                    continue
                for g, group in enumerate(groups, first):
                    self.backend.send(
                        PARITY,
                        index,
                        group.gid * r + j,
                        members[g] if self._instances_encode else parity[g, j],
                    )
            first += len(groups)
        for groups in live:
            for group in groups:
                self._try_decode(group)

    # -- results -----------------------------------------------------------

    def on_result(
        self,
        role: str,
        index: int,
        tag: int,
        output: np.ndarray | None,
        error: str | None,
    ) -> None:
        if role == PARITY:
            assert self.coding is not None
            r = self.coding.decoder.r
            group = self._groups.get(tag // r)
            if group is not None and output is not None:
                if group.parity[tag % r] is None:
                    group.arrived += 1
                group.parity[tag % r] = output
                self._try_decode(group)
            return
        if role == BACKUP:
            self._on_backup(tag, output)
            return
        if self.policy == "shared-queue":
            self._busy.discard(index)
        if self._originals is not None:
            born = self._originals.pop(tag, None)
            if born is not None and output is not None:
                self._latency.add(self._loop.time() - born)
        query = self._pending.get(tag)
        if error == CANCELLED:
            pass  # a copy we withdrew after another answered
        elif query is None:
            self._counts["late_discarded"] += 1
        elif output is None:
            if index in query.copies and len(query.copies) > 1:
                query.copies.remove(index)  # another copy may still answer
            else:
                cause = (
                    NonFiniteOutputError
                    if error is not None and error.startswith(NON_FINITE_OUTPUT)
                    else BackendUnavailableError
                )
                self._fail(
                    query, cause(f"instance data/{index} failed the query: {error}")
                )
        else:
            if query.group is not None:
                if query.group.outputs[query.slot] is None:
                    query.group.arrived += 1
                query.group.outputs[query.slot] = output
            self._answer(query, Answer(output, False, query.qid))
            self._cancel_copies(query, index)
            if query.group is not None:
                self._try_decode(query.group)
        if self.policy == "shared-queue":
            self._pump()

    def _cancel_copies(self, query: _Query, winner: int) -> None:
        backend = self.backend
        for index in query.copies:
            # A copy alone on its instance is the one it is computing, and a
            # started query cannot be withdrawn: the cancel would cost a write
            # and wake the worker for nothing. Most reconstructions are of
            # such copies, an original a little slower than its partner.
            if (
                index != winner
                and backend.alive(DATA, index)
                and backend.depth(DATA, index) > 1
            ):
                backend.cancel(DATA, index, query.qid)

    def _on_backup(self, tag: int, output: np.ndarray | None) -> None:
        query = self._pending.get(tag)
        if query is None or output is None:
            return
        median = self._latency.p50
        waited = self._loop.time() - query.born
        if median is None or waited >= median:
            self._use_backup(query, output)
        else:
            query.backup_output = output
            query.extra = self._loop.call_later(
                median - waited, self._use_backup, query, output
            )

    def _use_backup(self, query: _Query, output: np.ndarray) -> None:
        if query.qid in self._pending:
            self._counts["backup_used"] += 1
            self._answer(query, Answer(output, False, query.qid, backup=True))

    def on_down(self, role: str, index: int, lost: list[int]) -> None:
        if role != DATA or self._closed:
            # the groups lose their parity (or backup); members are answered as usual
            return
        self._busy.discard(index)
        for tag in lost:
            query = self._pending.get(tag)
            if query is None:
                continue
            if index in query.copies:
                query.copies.remove(index)
            if query.copies:
                continue  # another copy is still in flight
            self._counts["redispatched"] += 1
            self._dispatch(query)
        if self.policy == "shared-queue":
            self._pump()

    def _try_decode(self, group: _Group, *, hold: bool = True) -> None:
        """Answer the group's missing members by decoding, if its outputs
        allow it; with ``hold``, not before they have waited
        ``reconstruct_after_s`` (a timer decodes them then)."""
        assert self.coding is not None
        if not group.unanswered:
            if group.sealed:
                self._drop_group(group)
            return
        if not group.sealed or group.arrived < self.coding.decoder.k:
            # every decoder needs k of the k + r outputs (see can_decode);
            # the count spares a can_decode call on most results (issue 3)
            return
        decoder = self.coding.decoder
        available = [o is not None for o in group.outputs] + [
            p is not None for p in group.parity
        ]
        if not decoder.can_decode(available):
            return
        waiting = [q for q in group.members if q.qid in self._pending]
        if hold and self.reconstruct_after_s > 0:
            due = min(q.born for q in waiting) + self.reconstruct_after_s
            if self._loop.time() < due:
                if group.held is None:
                    group.held = self._loop.call_at(due, self._decode_held, group)
                return
        shape = self.coding.fill_output.shape
        rebuilt = decoder.decode_missing(
            [None if o is None else o.reshape(shape) for o in group.outputs],
            [None if p is None else p.reshape(shape) for p in group.parity],
        )  # slot -> (*out)
        limit = self.coding.max_abs_output
        if limit is not None and not all(
            float(np.abs(rebuilt[q.slot]).max()) <= limit for q in waiting
        ):
            # A member far outside F's range (one client's input at 1e4 while
            # F's outputs on training data stay within tens, found by a
            # fresh-user test) drags the parity output with it, and the
            # subtraction hands its partner a rebuilt answer at that scale.
            # Withhold the group's reconstructions: its members wait for their
            # originals, their deadline or the query timeout, as if the
            # parity had never come. NaN fails the comparison too.
            self._counts["implausible"] += 1
            self._drop_group(group)
            return
        for query in waiting:
            self._counts["reconstructed"] += 1
            self._answer(query, Answer(rebuilt[query.slot], True, query.qid))
            # withdraw the straggling original: a slow instance then drains its
            # queue instead of computing answers nobody will read
            self._cancel_copies(query, winner=-1)
        self._drop_group(group)

    def _decode_held(self, group: _Group) -> None:
        group.held = None
        if group.gid in self._groups:
            self._try_decode(group, hold=False)

    def _drop_group(self, group: _Group) -> None:
        self._groups.pop(group.gid, None)
        if group.held is not None:
            group.held.cancel()
            group.held = None
        # members point back at their group: break the cycle so that both are
        # freed at once rather than by the cyclic collector (issue 3)
        group.members = []

    # -- endings -----------------------------------------------------------

    def _finish(self, query: _Query) -> bool:
        """Remove ``query`` from the pending set; False if it was already done.
        Its expiry entry stays in the heap and is skipped when it surfaces."""
        if self._pending.pop(query.qid, None) is None:
            return False
        if query.extra is not None:
            query.extra.cancel()
        if query.group is not None:
            query.group.unanswered -= 1
        return True

    def _answer(self, query: _Query, answer: Answer) -> None:
        if self._finish(query) and not query.future.done():
            self._counts["answered"] += 1
            if self._track_latency:
                self._latency.add(self._loop.time() - query.born)
            query.future.set_result(answer)

    def _fail(self, query: _Query, error: LearnccError) -> None:
        if self._finish(query) and not query.future.done():
            self._counts["failed"] += 1
            query.future.set_exception(error)
        if query.group is not None:
            self._try_decode(query.group)

    def _add_expiry(self, at: float, qid: int) -> None:
        expiries = self._expiries
        if len(expiries) > 2 * len(self._pending) + 1024:
            # mostly answered entries: sweep them out, amortized O(1) a query
            expiries[:] = [e for e in expiries if e[1] in self._pending]
            heapq.heapify(expiries)
        heapq.heappush(expiries, (at, qid))
        if at < self._expiry_at:
            self._arm_expiry(at)

    def _arm_expiry(self, at: float) -> None:
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
        self._expiry_timer = self._loop.call_at(at, self._expire_due)
        self._expiry_at = at

    def _expire_due(self) -> None:
        """The expiry timer: expire every pending query whose time has come,
        then arm for the earliest pending one left."""
        self._expiry_timer, self._expiry_at = None, math.inf
        expiries, pending = self._expiries, self._pending
        now = self._loop.time()
        while expiries and (expiries[0][0] <= now or expiries[0][1] not in pending):
            _, qid = heapq.heappop(expiries)
            query = pending.get(qid)
            if query is not None:
                self._expire(query)
        if expiries and not self._closed:
            self._arm_expiry(expiries[0][0])

    def _expire(self, query: _Query) -> None:
        if query.qid not in self._pending:
            return
        if query.group is not None and query.group.held is not None:
            # its reconstruction exists: the deadline takes it over the default
            self._try_decode(query.group, hold=False)
            if query.qid not in self._pending:
                return
        if query.deadline and self.default_output is not None:
            self._counts["defaulted"] += 1
            self._answer(
                query, Answer(self.default_output, False, query.qid, default=True)
            )
            return
        self._counts["timed_out"] += 1
        self._fail(query, QueryTimeoutError(query.qid, query.wait_s))
