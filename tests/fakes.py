"""An in-process backend with scripted latency and failures.

Instances compute a fixed linear map (so subtraction decoding is exact) and
answer after a delay the test chooses per (role, index, tag). No processes,
so frontend tests run in milliseconds and can assert exact values.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np

from learncc.serving.backend import BACKUP, CANCELLED, DATA, PARITY


class FakeBackend:
    def __init__(
        self,
        weights: np.ndarray,  # (out, in_flat): F(x) = W x
        *,
        data_instances: int,
        parity_instances: int = 0,
        backup_instances: int = 0,
        backup_weights: np.ndarray | None = None,
        delay_s: Callable[[str, int, int], float | None] = lambda role, i, tag: 0.001,
        encoder: Any = None,
    ) -> None:
        self.weights = weights.astype(np.float32)
        # with an encoder, parity instances encode (Backend.parity_encodes):
        # a parity query arrives as its group's k inputs
        self.encoder = encoder
        self.parity_encodes = encoder is not None
        self.groups: list[list[np.ndarray]] = []  # what parity instances received
        self.counts = {
            DATA: data_instances,
            PARITY: parity_instances,
            BACKUP: backup_instances,
        }
        self.backup_weights = self.weights if backup_weights is None else backup_weights
        self.cancel_requests: list[tuple[str, int, int]] = []  # every cancel call
        self.cancelled: list[tuple[str, int, int]] = []  # those that withdrew one
        self.depths: dict[tuple[str, int], int] = {}
        self.delivered: set[tuple[str, int, int]] = set()
        self.delay_s = delay_s  # None: the instance never answers this query
        self.dead: set[tuple[str, int]] = set()
        self.sent: list[tuple[str, int, int]] = []
        self.timers: list[asyncio.TimerHandle] = []
        self.closed = False

    async def start(self, handler: Any) -> None:
        self.handler = handler
        self.loop = asyncio.get_running_loop()

    def send(self, role: str, index: int, tag: int, x: np.ndarray) -> None:
        self.sent.append((role, index, tag))
        delay = self.delay_s(role, index, tag)
        # a query that never answers still occupies its instance
        self.depths[(role, index)] = self.depths.get((role, index), 0) + 1
        if delay is None:
            return
        if isinstance(x, list):
            self.groups.append(x)
            x = self.encoder.encode_numpy(np.stack(x)[None])[0, index % self.encoder.r]
        weights = self.backup_weights if role == BACKUP else self.weights
        output = weights @ x.reshape(-1)
        self.timers.append(
            self.loop.call_later(delay, self._deliver, role, index, tag, output)
        )

    def _deliver(self, role: str, index: int, tag: int, output: np.ndarray) -> None:
        if (role, index, tag) in self.cancelled:
            return
        self.depths[(role, index)] -= 1
        self.delivered.add((role, index, tag))
        if (role, index) not in self.dead and not self.closed:
            self.handler.on_result(role, index, tag, output, None)

    def cancel(self, role: str, index: int, tag: int) -> None:
        # like a worker serving one query at a time, in order, a fake
        # instance has started the oldest query it holds: only those queued
        # behind it can be withdrawn
        self.cancel_requests.append((role, index, tag))
        if (role, index, tag) in self.delivered or tag == self._oldest(role, index):
            return
        self.cancelled.append((role, index, tag))
        self.depths[(role, index)] -= 1
        self.loop.call_soon(self.handler.on_result, role, index, tag, None, CANCELLED)

    def _oldest(self, role: str, index: int) -> int | None:
        done = self.delivered.union(self.cancelled)
        for r, i, t in self.sent:
            if (r, i) == (role, index) and (r, i, t) not in done:
                return t
        return None

    def kill(self, role: str, index: int) -> None:
        self.dead.add((role, index))
        lost = [t for r, i, t in self.sent if (r, i) == (role, index)]
        self.handler.on_down(role, index, lost)

    def alive(self, role: str, index: int) -> bool:
        return (role, index) not in self.dead

    def depth(self, role: str, index: int) -> int:
        return self.depths.get((role, index), 0)

    async def configure(self, role: str, index: int, message: dict[str, Any]) -> None:
        pass

    async def service_times(self) -> dict[str, list[float]]:
        return {}

    async def close(self) -> None:
        self.closed = True
        for timer in self.timers:
            timer.cancel()
