"""Backends run instances; the frontend only sends queries and takes results.

The coding logic lives in the frontend and never depends on the transport:
a backend exposes numbered data and parity instances, ``send`` to put a
query on one, and reports results and instance deaths to a ``Handler``.
``LocalBackend`` runs each instance as a worker process on this machine.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from learncc.errors import BackendUnavailableError, ConfigError
from learncc.serving import protocol as P

logger = logging.getLogger(__name__)

DATA, PARITY, BACKUP = "data", "parity", "backup"


def freeze_heap() -> None:
    """Collect garbage, then move every object left in this process to the
    collector's permanent generation (``gc.freeze``), so that later full
    collections skip the long-lived heap (torch, NumPy, Ray, the bundle).

    A full collection walking that heap stalls the event loop, and every
    query in flight pays for it: 105 ms, once about a minute into a process
    that had served two 20 s runs (issue 3; the third point of every sweep
    had p99 three times the others'). Process-wide: cycles among frozen
    objects are never freed, so the garbage is collected first.
    """
    gc.collect()
    gc.freeze()


CANCELLED = P.CANCELLED


class Handler(Protocol):
    def on_result(
        self,
        role: str,
        index: int,
        tag: int,
        output: np.ndarray | None,
        error: str | None,
    ) -> None: ...

    def on_down(self, role: str, index: int, lost: list[int]) -> None: ...


class Backend(Protocol):
    """What the frontend needs from a set of instances."""

    counts: dict[str, int]  # instances per role
    # True: a parity query is sent as its group's k inputs (a list of
    # float32 arrays, fill included) and the instance encodes them; False
    # (or absent): the frontend encodes and sends the one parity input
    parity_encodes: bool

    async def start(self, handler: Handler) -> None: ...

    def send(
        self, role: str, index: int, tag: int, x: np.ndarray | list[np.ndarray]
    ) -> None: ...

    def cancel(self, role: str, index: int, tag: int) -> None:
        """Withdraw a query if the instance has not started it; the instance
        then reports it failed with the message ``CANCELLED``."""

    def alive(self, role: str, index: int) -> bool: ...

    def depth(self, role: str, index: int) -> int: ...

    async def configure(
        self, role: str, index: int, message: dict[str, Any]
    ) -> None: ...

    async def service_times(self) -> dict[str, list[float]]: ...

    async def close(self) -> None: ...


@dataclass(eq=False)
class _Instance(asyncio.Protocol):
    role: str
    index: int
    backend: LocalBackend
    process: subprocess.Popen[bytes] | None = None
    stderr_path: Path | None = None
    transport: asyncio.Transport | None = None
    ready: asyncio.Future[dict[str, Any]] | None = None
    outstanding: set[int] = field(default_factory=set)
    buffer: bytearray = field(default_factory=bytearray)
    is_alive: bool = False
    last_progress: float = (
        0.0  # loop time of the last frame, or of the first send when idle
    )
    stats: asyncio.Future[dict[str, Any]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.last_progress = time.monotonic()
        self.buffer += data
        try:
            frames = P.split_frames(self.buffer)
        except P.FrameError as e:
            logger.error(
                "instance %s/%d sent a corrupt stream (%s); dropping it",
                self.role,
                self.index,
                e,
            )
            assert self.transport is not None
            self.transport.abort()
            return
        handler = self.backend.handler
        for kind, tag, payload in frames:
            if kind == P.READY:
                if self.ready is not None and not self.ready.done():
                    self.ready.set_result(json.loads(payload))
                continue
            if kind == P.STATS:
                if self.stats is not None and not self.stats.done():
                    self.stats.set_result(json.loads(payload))
                continue
            self.outstanding.discard(tag)
            if kind == P.RESULT:
                output = np.frombuffer(payload, dtype=np.float32)
                handler.on_result(self.role, self.index, tag, output, None)
            elif kind == P.ERROR:
                handler.on_result(
                    self.role, self.index, tag, None, payload.decode("utf-8", "replace")
                )

    def connection_lost(self, exc: Exception | None) -> None:
        was_alive, self.is_alive = self.is_alive, False
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(
                BackendUnavailableError(
                    f"instance {self.role}/{self.index} exited during start: "
                    f"{self.stderr_tail()}"
                )
            )
        if was_alive and not self.backend.closing:
            logger.warning(
                "instance %s/%d is down (queries in flight: %d): %s",
                self.role,
                self.index,
                len(self.outstanding),
                self.stderr_tail() or "no message",
            )
            lost, self.outstanding = sorted(self.outstanding), set()
            self.backend.handler.on_down(self.role, self.index, lost)
            self.backend.instance_down(self)

    def stderr_tail(self) -> str:
        if self.stderr_path is None or not self.stderr_path.exists():
            return ""
        return self.stderr_path.read_text(errors="replace")[-2000:].strip()


class LocalBackend:
    """Instances as worker processes on this machine, over Unix socketpairs.

    Args:
        bundle: path of the coded model bundle every instance loads.
        data_instances: instances running F.
        parity_instances: instances running parity models; instance i runs
            parity model ``i % r``.
        service_ms: each batch takes at least this long. Our MLP computes in
            tens of microseconds, far below the milliseconds of a served
            network; the floor emulates a larger model without burning CPU
            (it sleeps), so that two cores can host many instances. Slowdowns
            multiply the resulting service time.
        per_item_ms: added to the floor for each query of a batch after the
            first, so larger batches take longer, as on real hardware.
        max_batch: most queued queries an instance serves in one batch.
        backup_instances: instances of the bundle's cheaper backup model
            (mode ``cheap``), with floor ``backup_service_ms``.
        noop: instances return zeros without running a model, to measure the
            serving path alone.
        restart: start a replacement when an instance process dies, with
            exponential backoff from ``restart_backoff_s``.
        hang_timeout_s: an instance holding queries that sends nothing for
            this long is taken for hung: it is killed (its queries go back to
            the frontend) and restarted. Must exceed the longest legitimate
            batch, slow episodes included; ``None`` disables the watchdog.
        start_timeout_s: how long instances may take to load.
        freeze_gc: once started, ``freeze_heap()`` (process-wide).
        parity_encodes: parity instances take their group's k inputs and
            encode them (``Backend.parity_encodes``). On one machine the k
            inputs cost a copy each through the socket, while encoding in
            the frontend cost it a sixth of its CPU per coded query at 300
            q/s (issue 3); a parity instance's bytes in grow k-fold, which
            an injected bandwidth limit then charges it.
    """

    def __init__(
        self,
        bundle: str | Path,
        *,
        data_instances: int,
        parity_instances: int = 0,
        service_ms: float = 0.0,
        per_item_ms: float = 0.0,
        max_batch: int = 1,
        backup_instances: int = 0,
        backup_service_ms: float | None = None,
        noop: bool = False,
        restart: bool = True,
        restart_backoff_s: float = 0.5,
        hang_timeout_s: float | None = 5.0,
        start_timeout_s: float = 120.0,
        freeze_gc: bool = True,
        parity_encodes: bool = True,
    ) -> None:
        if data_instances < 1 or parity_instances < 0:
            raise ConfigError(
                f"need >= 1 data instance and >= 0 parity instances, "
                f"got {data_instances} and {parity_instances}"
            )
        if max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1, got {max_batch}")
        self.bundle = str(Path(bundle).resolve())
        self.counts = {
            DATA: data_instances,
            PARITY: parity_instances,
            BACKUP: backup_instances,
        }
        self.service_ms, self.per_item_ms, self.max_batch = (
            service_ms,
            per_item_ms,
            max_batch,
        )
        self.backup_service_ms = (
            service_ms / 2 if backup_service_ms is None else backup_service_ms
        )
        self.noop, self.restart, self.restart_backoff_s = (
            noop,
            restart,
            restart_backoff_s,
        )
        self.restarts = 0
        self.hang_timeout_s = hang_timeout_s
        self._watchdog: asyncio.Task[None] | None = None
        self._respawns: set[asyncio.Task[None]] = set()
        self.start_timeout_s, self.freeze_gc = start_timeout_s, freeze_gc
        self.parity_encodes = parity_encodes
        self.instances: dict[tuple[str, int], _Instance] = {}
        self.closing = False
        self._logdir: tempfile.TemporaryDirectory[str] | None = None

    async def start(self, handler: Handler) -> None:
        """Start every instance and wait until all have loaded their model.

        Raises:
            BackendUnavailableError: an instance failed to start in time.
        """
        self.handler = handler
        self._logdir = tempfile.TemporaryDirectory(prefix="learncc-instances-")
        starts = [
            self._spawn(role, i) for role, n in self.counts.items() for i in range(n)
        ]
        gathered = asyncio.gather(*starts)
        # Cancelled (Ctrl-C during start-up), wait_for leaves the gather's
        # CancelledError unretrieved and asyncio logs it with a traceback.
        gathered.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            await asyncio.wait_for(gathered, self.start_timeout_s)
        except (TimeoutError, BackendUnavailableError) as e:
            await self.close()
            if isinstance(e, BackendUnavailableError):
                raise
            raise BackendUnavailableError(
                f"instances did not load within {self.start_timeout_s:g} s"
            ) from None
        if self.freeze_gc:
            freeze_heap()
        if self.hang_timeout_s is not None:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())
        logger.info(
            "local backend up: %d data + %d parity + %d backup instances",
            self.counts[DATA],
            self.counts[PARITY],
            self.counts[BACKUP],
        )

    async def _spawn(self, role: str, index: int, *, restart: bool = False) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        spec = {
            "bundle": self.bundle,
            "role": role,
            "max_batch": self.max_batch,
            "service_ms": self.backup_service_ms if role == BACKUP else self.service_ms,
            "per_item_ms": self.per_item_ms,
            "index": index,
            "noop": self.noop,
        }
        if role == PARITY:
            spec["index"] = index % max(1, self._parity_models())
            spec["encode"] = self.parity_encodes
        assert self._logdir is not None
        inst = _Instance(role, index, self)
        inst.stderr_path = Path(self._logdir.name) / f"{role}-{index}.log"
        inst.ready = loop.create_future()
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with open(inst.stderr_path, "wb") as err:
            inst.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "learncc.serving.worker",
                    "--fd",
                    str(theirs.fileno()),
                    "--spec",
                    json.dumps(spec),
                ],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
            )
        theirs.close()
        self.instances[(role, index)] = inst
        await loop.create_unix_connection(lambda: inst, sock=ours)
        await inst.ready
        if restart:
            self.restarts += 1  # counted before it can take queries
        inst.is_alive = True

    def _parity_models(self) -> int:
        from learncc.bundle import MANIFEST

        manifest = json.loads((Path(self.bundle) / MANIFEST).read_text())
        return int(manifest["parity"]["count"])

    def send(
        self, role: str, index: int, tag: int, x: np.ndarray | list[np.ndarray]
    ) -> None:
        inst = self.instances[(role, index)]
        if not inst.is_alive or inst.transport is None:
            raise BackendUnavailableError(f"instance {role}/{index} is down")
        if not inst.outstanding:
            inst.last_progress = time.monotonic()
        inst.outstanding.add(tag)
        if isinstance(x, list):  # a group's inputs, frontend-checked float32
            payload = b"".join(x)
        else:
            payload = np.ascontiguousarray(x, np.float32).tobytes()
        inst.transport.write(P.frame(P.INFER, tag, payload))

    def cancel(self, role: str, index: int, tag: int) -> None:
        inst = self.instances[(role, index)]
        if inst.is_alive and inst.transport is not None and tag in inst.outstanding:
            inst.transport.write(P.frame(P.CANCEL, tag, b""))

    async def _watch(self) -> None:
        assert self.hang_timeout_s is not None
        while not self.closing:
            await asyncio.sleep(min(0.5, self.hang_timeout_s / 4))
            now = time.monotonic()
            for inst in list(self.instances.values()):
                stalled = now - inst.last_progress > self.hang_timeout_s
                if (
                    inst.is_alive
                    and inst.outstanding
                    and stalled
                    and inst.process is not None
                ):
                    logger.warning(
                        "instance %s/%d sent nothing for %.1f s with %d queries "
                        "in flight; killing it as hung",
                        inst.role,
                        inst.index,
                        now - inst.last_progress,
                        len(inst.outstanding),
                    )
                    inst.process.kill()

    def instance_down(self, inst: _Instance) -> None:
        """Called when an instance's connection drops while we are serving."""
        if self.restart and not self.closing:
            task = asyncio.get_running_loop().create_task(
                self._respawn(inst.role, inst.index)
            )
            self._respawns.add(task)
            task.add_done_callback(self._respawns.discard)

    async def _respawn(self, role: str, index: int) -> None:
        backoff = self.restart_backoff_s
        old = self.instances[(role, index)].process
        if old is not None:
            if old.poll() is None:
                old.kill()  # a hung process whose socket broke: make sure it is gone
            await asyncio.to_thread(old.wait)  # reap it
        while not self.closing:
            await asyncio.sleep(backoff)
            if self.closing:
                return
            try:
                await asyncio.wait_for(
                    self._spawn(role, index, restart=True), self.start_timeout_s
                )
            except (TimeoutError, BackendUnavailableError, OSError) as e:
                logger.warning(
                    "restarting instance %s/%d failed (%s); next try in %.1f s",
                    role,
                    index,
                    e,
                    min(2 * backoff, 10.0),
                )
                backoff = min(2 * backoff, 10.0)
                continue
            logger.info("instance %s/%d restarted", role, index)
            return

    def alive(self, role: str, index: int) -> bool:
        inst = self.instances.get((role, index))
        return inst is not None and inst.is_alive

    def depth(self, role: str, index: int) -> int:
        return len(self.instances[(role, index)].outstanding)

    def pid(self, role: str, index: int) -> int | None:
        proc = self.instances[(role, index)].process
        return None if proc is None else proc.pid

    async def configure(self, role: str, index: int, message: dict[str, Any]) -> None:
        inst = self.instances[(role, index)]
        if inst.is_alive and inst.transport is not None:
            inst.transport.write(P.control(0, message))

    async def service_times(self, timeout_s: float = 2.0) -> dict[str, list[float]]:
        """Each live instance's measured per-batch service times (ms), keyed
        ``role/index``; instances that do not reply within ``timeout_s``
        (hung, dead) are left out."""
        loop = asyncio.get_running_loop()
        asked = []
        for (role, index), inst in self.instances.items():
            if inst.is_alive and inst.transport is not None:
                inst.stats = loop.create_future()
                inst.transport.write(P.control(0, {"report": True}))
                asked.append((f"{role}/{index}", inst.stats))
        if not asked:
            return {}
        await asyncio.wait([f for _, f in asked], timeout=timeout_s)
        return {
            key: f.result()["service_ms"]
            for key, f in asked
            if f.done() and not f.exception()
        }

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop every instance: ask politely, then kill after ``timeout_s``."""
        self.closing = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        for task in list(self._respawns):
            task.cancel()
        for inst in self.instances.values():
            if inst.transport is not None:
                inst.transport.close()
        deadline = time.monotonic() + timeout_s
        for inst in self.instances.values():
            proc = inst.process
            if proc is None:
                continue
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if self._logdir is not None:
            self._logdir.cleanup()
            self._logdir = None


class NoopBackend:
    """Instances inside the frontend's process that answer zeros on the next
    loop iteration: what is left is the frontend's own cost per query
    (grouping, encoding, decoding, bookkeeping), for throughput tests.

    Args:
        output_shape: shape of each (zero) output.
        fail_every: if > 0, every n-th data query is never answered, so that
            coded groups must decode.
    """

    def __init__(
        self,
        *,
        data_instances: int,
        parity_instances: int = 0,
        output_shape: tuple[int, ...] = (10,),
        fail_every: int = 0,
    ) -> None:
        self.counts = {DATA: data_instances, PARITY: parity_instances, BACKUP: 0}
        # the frontend encodes, so that its measured throughput includes coding
        self.parity_encodes = False
        self.zeros = np.zeros(output_shape, np.float32)
        self.fail_every = fail_every
        self.sent = 0
        self.answers: list[tuple[str, int, int]] = []
        self.closed = False

    async def start(self, handler: Handler) -> None:
        self.handler = handler
        self.loop = asyncio.get_running_loop()

    def send(self, role: str, index: int, tag: int, x: np.ndarray) -> None:
        self.sent += 1
        if role == DATA and self.fail_every and self.sent % self.fail_every == 0:
            return
        if not self.answers:
            # a timer, not call_soon: answers come in the next loop iteration
            # after the frontend's end-of-iteration work (its parity encoding),
            # as they would from a socket
            self.loop.call_later(0, self._flush)
        self.answers.append((role, index, tag))

    def _flush(self) -> None:
        # one callback per loop iteration answers everything sent in it
        answers, self.answers = self.answers, []
        if self.closed:
            return
        for role, index, tag in answers:
            self.handler.on_result(role, index, tag, self.zeros, None)

    def cancel(self, role: str, index: int, tag: int) -> None:
        pass

    def alive(self, role: str, index: int) -> bool:
        return True

    def depth(self, role: str, index: int) -> int:
        return 0

    async def configure(self, role: str, index: int, message: dict[str, Any]) -> None:
        pass

    async def service_times(self) -> dict[str, list[float]]:
        return {}

    async def close(self) -> None:
        self.closed = True
