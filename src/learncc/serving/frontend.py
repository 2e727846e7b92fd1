"""The coded frontend: coding groups, dispatch, and degraded-mode decoding.

Queries are grouped into coding groups of k in arrival order. Each query is
sent to a data instance at once (never held back for its group), round robin
over live instances, and never to an instance that already holds a member of
its group. When a group fills, the encoder makes its r parity queries and
each goes to a parity instance. A group still partial after
``flush_timeout_s`` is completed with the bundle's fill query, whose F output
is known, so the decoder sees a full group. As soon as the available data
outputs and parity outputs allow it, the missing outputs are decoded and
answered, flagged ``reconstructed``; a late original is then discarded.

Every accepted query gets exactly one answer: its real output, a
reconstruction, or an exception (``QueryTimeoutError`` once
``query_timeout_s`` passes, ``BackendUnavailableError`` when no instance is
left to run it, ``FrontendClosedError`` on close). If an instance dies, its
unanswered queries are sent again to another instance; the group may still
reconstruct them first.

Shortcoming: decoding waits for the parity and the other k - 1 outputs; with
r = 1 a group with two stragglers waits for one of them (ParM behaves the
same). Deadlines with default answers come with issue 3.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass, field

import numpy as np
import torch

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
from learncc.serving.backend import DATA, PARITY, Backend

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    output: np.ndarray  # (*out) float32
    reconstructed: bool
    query_id: int
    default: bool = False  # the configured default answer, given at the deadline


@dataclass(frozen=True)
class Statistics:
    accepted: int
    answered: int
    reconstructed: int
    failed: int
    timed_out: int
    refused: int
    defaulted: int
    late_discarded: int
    redispatched: int
    pending: int
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
    deadline: bool = False  # the timer is the caller's deadline, not the timeout
    wait_s: float = 0.0
    group: _Group | None = None
    slot: int = 0
    instance: int = -1
    timer: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class _Group:
    gid: int
    members: list[_Query] = field(default_factory=list)
    outputs: list[np.ndarray | None] = field(default_factory=list)  # k slots
    parity: list[np.ndarray | None] = field(default_factory=list)  # r slots
    instances: set[int] = field(default_factory=set)
    sealed: bool = False  # parity queries sent; membership final
    flush: asyncio.TimerHandle | None = None


class Frontend:
    """Serves queries over a backend, coded when ``coding`` is given.

    Args:
        backend: the instances; with coding it must have parity instances.
        coding: the code; ``None`` serves uncoded (modes ``none``/``equal``).
        input_shape: shape of one query, checked on every call.
        flush_timeout_s: longest a partial coding group waits for members
            before its parity query is sent.
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
        flush_timeout_s: float = 0.005,
        query_timeout_s: float = 10.0,
        max_pending: int = 100_000,
        default_output: np.ndarray | None = None,
    ) -> None:
        if flush_timeout_s <= 0 or query_timeout_s <= 0:
            raise ConfigError("flush_timeout_s and query_timeout_s must be > 0")
        if max_pending < 1:
            raise ConfigError(f"max_pending must be >= 1, got {max_pending}")
        self.backend = backend
        self.coding = coding
        self.input_shape = tuple(input_shape)
        self.flush_timeout_s, self.query_timeout_s = flush_timeout_s, query_timeout_s
        self.max_pending = max_pending
        self.default_output = default_output
        n_data, n_parity = backend.counts[DATA], backend.counts[PARITY]
        if coding is not None:
            k, r = coding.decoder.k, coding.decoder.r
            if n_data < k:
                raise ConfigError(
                    f"k={k} needs at least {k} data instances so that a group's "
                    f"members land on distinct instances; got {n_data}"
                )
            if n_parity < r:
                raise ConfigError(f"r={r} needs at least {r} parity instances, got {n_parity}")
        self._ids = itertools.count()
        self._gids = itertools.count()
        self._rr = {DATA: 0, PARITY: 0}
        self._pending: dict[int, _Query] = {}
        self._groups: dict[int, _Group] = {}
        self._open: _Group | None = None
        self._closed = False
        self._counts = dict.fromkeys(
            ("accepted", "answered", "reconstructed", "failed", "timed_out", "refused",
             "defaulted", "late_discarded", "redispatched"), 0,
        )  # fmt: skip

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
        return Statistics(**self._counts, pending=len(self._pending), groups_open=len(self._groups))

    # -- the query path ----------------------------------------------------

    def check_input(self, x: np.ndarray) -> np.ndarray:
        """Validate one query; return it as contiguous float32.

        Raises:
            BadQueryError: wrong shape or dtype, or non-finite values.
        """
        if not isinstance(x, np.ndarray):
            raise BadQueryError(f"a query must be a NumPy array, got {type(x).__name__}")
        if x.shape != self.input_shape:
            raise BadQueryError(f"query shape {x.shape} does not match the model's input {self.input_shape}")
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

    def submit(self, x: np.ndarray, *, deadline_s: float | None = None) -> asyncio.Future[Answer]:
        """Accept one query and return the future of its answer (see ``infer``)."""
        if self._closed:
            raise FrontendClosedError("the frontend is closed")
        x = self.check_input(x)
        if deadline_s is not None and not deadline_s > 0:
            raise BadQueryError(f"deadline_s must be > 0, got {deadline_s}")
        if len(self._pending) >= self.max_pending:
            self._counts["refused"] += 1
            raise OverloadedError(len(self._pending), self.max_pending)
        query = _Query(next(self._ids), x, self._loop.create_future())
        self._pending[query.qid] = query
        self._counts["accepted"] += 1
        wait_s = self.query_timeout_s
        if deadline_s is not None and deadline_s < wait_s:
            wait_s, query.deadline = deadline_s, True
        query.wait_s = wait_s
        query.timer = self._loop.call_later(wait_s, self._expire, query)
        if self.coding is not None:
            self._join_group(query)
        self._dispatch(query)
        group = query.group
        if group is not None and len(group.members) == len(group.outputs):
            self._seal(group)
        return query.future

    def _join_group(self, query: _Query) -> None:
        assert self.coding is not None
        group = self._open
        if group is None:
            k, r = self.coding.decoder.k, self.coding.decoder.r
            group = _Group(next(self._gids), outputs=[None] * k, parity=[None] * r)
            group.flush = self._loop.call_later(self.flush_timeout_s, self._seal, group)
            self._groups[group.gid] = group
            self._open = group
        query.group, query.slot = group, len(group.members)
        group.members.append(query)

    def _pick(self, role: str, avoid: set[int], among: range | None = None) -> int:
        """Round robin over live instances of ``role``, skipping ``avoid`` if possible."""
        n = self.backend.counts[role]
        candidates = [i for i in (among or range(n)) if self.backend.alive(role, i)]
        if not candidates:
            raise BackendUnavailableError(f"no live {role} instance")
        start = self._rr[role]
        ordered = sorted(candidates, key=lambda i: (i - start) % n)
        choice = next((i for i in ordered if i not in avoid), ordered[0])
        self._rr[role] = (choice + 1) % n
        return choice

    def _dispatch(self, query: _Query) -> None:
        avoid = query.group.instances if query.group is not None else set()
        try:
            query.instance = self._pick(DATA, avoid)
            self.backend.send(DATA, query.instance, query.qid, query.x)
        except BackendUnavailableError as e:
            self._fail(query, e)
            return
        if query.group is not None:
            query.group.instances.add(query.instance)

    def _seal(self, group: _Group) -> None:
        """Close the group to new members, complete it with fill queries, and
        send its parity queries."""
        if group.sealed:
            return
        assert self.coding is not None
        group.sealed = True
        if group.flush is not None:
            group.flush.cancel()
        if self._open is group:
            self._open = None
        if not any(q.qid in self._pending for q in group.members):
            self._drop_group(group)  # all answered already: no parity needed
            return
        k, r = self.coding.decoder.k, self.coding.decoder.r
        inputs = [q.x for q in group.members]
        for slot in range(len(group.members), k):
            inputs.append(self.coding.fill_input)
            group.outputs[slot] = self.coding.fill_output
        with torch.no_grad():
            parity = self.coding.encoder(torch.from_numpy(np.stack(inputs))[None])[0]  # (r, *in)
        parity_np = parity.numpy()
        n_parity = self.backend.counts[PARITY]
        for j in range(r):
            # parity instance i runs parity model i % r
            try:
                index = self._pick(PARITY, set(), range(j, n_parity, r))
                self.backend.send(PARITY, index, group.gid * r + j, parity_np[j])
            except BackendUnavailableError:
                logger.debug("group %d: no live instance for parity model %d", group.gid, j)
        self._try_decode(group)

    # -- results -----------------------------------------------------------

    def on_result(
        self, role: str, index: int, tag: int, output: np.ndarray | None, error: str | None
    ) -> None:
        if role == PARITY:
            assert self.coding is not None
            r = self.coding.decoder.r
            group = self._groups.get(tag // r)
            if group is not None and output is not None:
                group.parity[tag % r] = output
                self._try_decode(group)
            return
        query = self._pending.get(tag)
        if query is None:
            self._counts["late_discarded"] += 1
            return
        if output is None:
            self._fail(query, BackendUnavailableError(f"instance data/{index} failed the query: {error}"))
            return
        if query.group is not None:
            query.group.outputs[query.slot] = output
        self._answer(query, Answer(output, False, query.qid))
        if query.group is not None:
            self._try_decode(query.group)

    def on_down(self, role: str, index: int, lost: list[int]) -> None:
        if role == PARITY or self._closed:
            return  # the groups lose their parity; members are answered as usual
        for tag in lost:
            query = self._pending.get(tag)
            if query is None:
                continue
            self._counts["redispatched"] += 1
            self._dispatch(query)

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
        available = [o is not None for o in group.outputs] + [p is not None for p in group.parity]
        if not decoder.can_decode(available):
            return
        shape = self.coding.fill_output.shape
        nan = np.full(shape, np.nan, dtype=np.float32)
        data = torch.from_numpy(np.stack([nan if o is None else o.reshape(shape) for o in group.outputs]))
        parity = torch.from_numpy(np.stack([nan if p is None else p.reshape(shape) for p in group.parity]))
        with torch.no_grad():
            rebuilt = decoder(data[None], parity[None], torch.tensor(available))[0].numpy()
        for query in waiting:
            self._counts["reconstructed"] += 1
            self._answer(query, Answer(rebuilt[query.slot].copy(), True, query.qid))
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
        return True

    def _answer(self, query: _Query, answer: Answer) -> None:
        if self._finish(query) and not query.future.done():
            self._counts["answered"] += 1
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
            self._answer(query, Answer(self.default_output, False, query.qid, default=True))
            return
        self._counts["timed_out"] += 1
        self._fail(query, QueryTimeoutError(query.qid, query.wait_s))
