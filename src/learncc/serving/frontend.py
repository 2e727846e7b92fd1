"""The coded frontend: coding groups, dispatch, and degraded-mode decoding.

Queries are grouped into coding groups of k in arrival order. Each query is
sent to a data instance at once (never held back for its group) and never to
an instance that already holds a member of its group. When a group fills,
the encoder makes its r parity queries and each goes to a parity instance. A
group still partial after ``flush_timeout_s`` is completed with the bundle's
fill query, whose F output is known, so the decoder sees a full group. As
soon as the available data outputs and parity outputs allow it, the missing
outputs are decoded and answered, flagged ``reconstructed``; the original is
then withdrawn from its instance if not yet started, and discarded if it
still arrives.

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
import itertools
import logging
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from learncc.codes import Decoder, Encoder
from learncc.errors import (
    BackendUnavailableError,
    BadQueryError,
    ConfigError,
    FrontendClosedError,
    LearnccError,
    OverloadedError,
    QueryTimeoutError,
)
from learncc.serving.backend import BACKUP, CANCELLED, DATA, PARITY, Backend
from learncc.serving.policy import least_loaded, pick_instance

logger = logging.getLogger(__name__)

POLICIES = ("round-robin", "shortest-queue", "shared-queue")
REDUNDANCY = ("hedge", "replicate", "cheap")


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


@dataclass(eq=False)
class _Query:
    qid: int
    x: np.ndarray
    future: asyncio.Future[Answer]
    born: float
    deadline: bool = False  # the timer is the caller's deadline, not the timeout
    wait_s: float = 0.0
    group: _Group | None = None
    slot: int = 0
    copies: list[int] = field(default_factory=list)  # data instances holding it
    timer: asyncio.TimerHandle | None = None
    extra: asyncio.TimerHandle | None = None  # hedge or backup timer
    backup_output: np.ndarray | None = None


@dataclass(eq=False)
class _Group:
    gid: int
    members: list[_Query] = field(default_factory=list)
    outputs: list[np.ndarray | None] = field(default_factory=list)  # k slots
    parity: list[np.ndarray | None] = field(default_factory=list)  # r slots
    instances: set[int] = field(default_factory=set)
    sealed: bool = False  # parity queries sent; membership final


@dataclass(eq=False)
class _Window:
    """Batching: B consecutive queries go to one instance as a batch. Coded,
    k such batches form a window whose B coding groups each take the query at
    one position of every batch (ParM's layout), so that the B parity queries
    also travel as one batch."""

    groups: list[_Group]  # B groups (coded), else empty
    batch: list[_Query] = field(default_factory=list)  # the batch being filled
    instances: set[int] = field(default_factory=set)  # data instances of its batches
    count: int = 0
    flush: asyncio.TimerHandle | None = None


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
    ) -> None:
        if flush_timeout_s <= 0 or query_timeout_s <= 0:
            raise ConfigError("flush_timeout_s and query_timeout_s must be > 0")
        if max_pending < 1:
            raise ConfigError(f"max_pending must be >= 1, got {max_pending}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if batch_size > 1 and policy == "shared-queue":
            raise ConfigError(
                "shared-queue hands out one query at a time; use batch_size=1"
            )
        if policy not in POLICIES:
            raise ConfigError(
                f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}"
            )
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
        self.policy, self.redundancy = policy, redundancy
        self.input_shape = tuple(input_shape)
        self.flush_timeout_s, self.query_timeout_s = flush_timeout_s, query_timeout_s
        self.max_pending = max_pending
        self.batch_size = batch_size
        self.default_output = default_output
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
        self._latency = RunningQuantiles()
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
        await self.backend.close()

    async def __aenter__(self) -> Frontend:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

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
        if not np.isfinite(x).all():
            raise BadQueryError("query holds NaN or infinity")
        return x

    async def infer(self, x: np.ndarray, *, deadline_s: float | None = None) -> Answer:
        """Serve one query.

        Args:
            deadline_s: seconds from now after which the caller wants the
                best answer there is: the default answer if configured, else
                ``QueryTimeoutError``. A reconstruction is always answered as
                soon as it exists, so none is ever left waiting for a deadline.

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
        query = _Query(next(self._ids), x, loop.create_future(), loop.time())
        self._pending[query.qid] = query
        self._counts["accepted"] += 1
        query.wait_s = self.query_timeout_s
        if deadline_s is not None and deadline_s < query.wait_s:
            query.wait_s, query.deadline = deadline_s, True
        query.timer = loop.call_later(query.wait_s, self._expire, query)
        if self.coding is None and self.batch_size == 1:
            self._dispatch(query)
            self._add_redundancy(query)
        else:
            self._join_window(query)
        return query.future

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
            window = self._window = _Window(groups)
            window.flush = self._loop.call_later(
                self.flush_timeout_s, self._close_window, window
            )
        position = window.count % self.batch_size
        if window.groups:
            group = window.groups[position]
            query.group, query.slot = group, len(group.members)
            group.members.append(query)
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

    def _close_window(self, window: _Window) -> None:
        """Send a partial batch and seal the window's coding groups (at the
        flush timeout, or when the window is full)."""
        if window.flush is not None:
            window.flush.cancel()
        if self._window is window:
            self._window = None
        self._send_batch(window)
        if window.groups:
            self._seal(window.groups)

    def _pick(
        self,
        role: str,
        avoid: set[int] | frozenset[int] = frozenset(),
        among: range | None = None,
    ) -> int:
        """An instance of ``role`` by the dispatch policy, avoiding ``avoid``
        where another live instance exists."""
        backend = self.backend
        n = backend.counts[role]
        if self.policy == "shortest-queue":
            live = [
                i
                for i in (among if among is not None else range(n))
                if backend.alive(role, i)
            ]
            if not live:
                raise BackendUnavailableError(f"no live {role} instance")
            preferred = [i for i in live if i not in avoid] or live
            start = self._rr[role]
            choice = min(
                preferred, key=lambda i: (backend.depth(role, i), (i - start) % n)
            )
        else:
            choice = pick_instance(
                n,
                self._rr[role],
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
        avoid = query.group.instances if query.group is not None else set(query.copies)
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
                self._send_data(query, self._pick(DATA, set(query.copies)))
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
            index = self._pick(DATA, set(query.copies))
        except BackendUnavailableError:
            return
        if index not in query.copies:
            self._counts["hedged"] += 1
            self._send_data(query, index)

    def _seal(self, groups: list[_Group]) -> None:
        """Complete a window's groups with fill queries and send their parity
        queries, the window's B parity queries for model j to one instance."""
        assert self.coding is not None
        k, r = self.coding.decoder.k, self.coding.decoder.r
        live = []
        for group in groups:
            group.sealed = True
            if not any(q.qid in self._pending for q in group.members):
                self._drop_group(group)  # all answered already: no parity needed
                continue
            for slot in range(len(group.members), k):
                group.outputs[slot] = self.coding.fill_output
            live.append(group)
        if not live:
            return
        inputs = np.stack(
            [
                np.stack(
                    [q.x for q in g.members]
                    + [self.coding.fill_input] * (k - len(g.members))
                )
                for g in live
            ]
        )  # (G, k, *in)
        parity = self.coding.encoder.encode_numpy(inputs)  # (G, r, *in)
        n_parity = self.backend.counts[PARITY]
        for j in range(r):
            # parity instance i runs parity model i % r; whatever the data
            # policy, parity goes to the least loaded one: a parity output
            # only helps if it arrives before the stragglers it covers
            try:
                index = self._pick_least_loaded(PARITY, range(j, n_parity, r))
            except BackendUnavailableError:
                logger.debug("no live instance for parity model %d", j)
                continue
            for g, group in enumerate(live):
                self.backend.send(PARITY, index, group.gid * r + j, parity[g, j])
        for group in live:
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
                group.parity[tag % r] = output
                self._try_decode(group)
            return
        if role == BACKUP:
            self._on_backup(tag, output)
            return
        if self.policy == "shared-queue":
            self._busy.discard(index)
        query = self._pending.get(tag)
        if error == CANCELLED:
            pass  # a copy we withdrew after another answered
        elif query is None:
            self._counts["late_discarded"] += 1
        elif output is None:
            if index in query.copies and len(query.copies) > 1:
                query.copies.remove(index)  # another copy may still answer
            else:
                self._fail(
                    query,
                    BackendUnavailableError(
                        f"instance data/{index} failed the query: {error}"
                    ),
                )
        else:
            if query.group is not None:
                query.group.outputs[query.slot] = output
            self._answer(query, Answer(output, False, query.qid))
            self._cancel_copies(query, index)
            if query.group is not None:
                self._try_decode(query.group)
        if self.policy == "shared-queue":
            self._pump()

    def _cancel_copies(self, query: _Query, winner: int) -> None:
        for index in query.copies:
            if index != winner and self.backend.alive(DATA, index):
                self.backend.cancel(DATA, index, query.qid)

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

    def _try_decode(self, group: _Group) -> None:
        assert self.coding is not None
        waiting = [q for q in group.members if q.qid in self._pending]
        if not waiting:
            if group.sealed:
                self._drop_group(group)
            return
        if not group.sealed:
            return
        decoder = self.coding.decoder
        available = [o is not None for o in group.outputs] + [
            p is not None for p in group.parity
        ]
        if not decoder.can_decode(available):
            return
        shape = self.coding.fill_output.shape
        nan = np.full(shape, np.nan, dtype=np.float32)
        data = np.stack([nan if o is None else o.reshape(shape) for o in group.outputs])
        parity = np.stack(
            [nan if p is None else p.reshape(shape) for p in group.parity]
        )
        rebuilt = decoder.decode_numpy(data, parity, available)  # (k, *out)
        for query in waiting:
            self._counts["reconstructed"] += 1
            self._answer(query, Answer(rebuilt[query.slot].copy(), True, query.qid))
            # withdraw the straggling original: a slow instance then drains its
            # queue instead of computing answers nobody will read
            self._cancel_copies(query, winner=-1)
        self._drop_group(group)

    def _drop_group(self, group: _Group) -> None:
        self._groups.pop(group.gid, None)

    # -- endings -----------------------------------------------------------

    def _finish(self, query: _Query) -> bool:
        """Remove ``query`` from the pending set; False if it was already done."""
        if self._pending.pop(query.qid, None) is None:
            return False
        if query.timer is not None:
            query.timer.cancel()
        if query.extra is not None:
            query.extra.cancel()
        return True

    def _answer(self, query: _Query, answer: Answer) -> None:
        if self._finish(query) and not query.future.done():
            self._counts["answered"] += 1
            self._latency.add(self._loop.time() - query.born)
            query.future.set_result(answer)

    def _fail(self, query: _Query, error: LearnccError) -> None:
        if self._finish(query) and not query.future.done():
            self._counts["failed"] += 1
            query.future.set_exception(error)
        if query.group is not None:
            self._try_decode(query.group)

    def _expire(self, query: _Query) -> None:
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
