"""A backend whose instances are Ray actors, for serving across machines.

``RayBackend`` implements the same ``Backend`` protocol as ``LocalBackend``:
the frontend, its coding groups and its decoder do not change, only where
instances run. Each data or parity instance is one Ray actor that does what
``learncc.serving.worker`` does in a process: load the bundle, run F or
parity model ``index % r``, serve each batch in at least ``service_ms`` and
follow a slowdown schedule.

Design, and why:

- **Ray places and supervises; queries travel on a stream.** A Ray actor
  call costs the driver about 1 ms of CPU (measured here: 0.9-1.3 ms per
  call, 1.8-2.8 ms round trip, whatever the payload) and the actor as much
  again. Queries come one at a time at moderate load, so batching calls
  only helps when queues are long; with ``max_batch`` 1 every query was a
  call, coded mode made 1.5 calls per query (data plus parity) against
  equal's 1, and on two cores the driver saturated first: coded lost to
  equal resources (p99.9 929 ms against 363 ms, issue 6). So each actor
  opens a TCP listener on its node and the driver connects to it once; the
  query path is then the local backend's: length-prefixed frames
  (``learncc.serving.protocol``), one per query, written together once per
  event-loop tick, served by a thread in the actor in batches of up to
  ``max_batch`` queued queries, one RESULT frame per query. Ray calls
  remain for what is rare: creating actors, shipping the bundle,
  slowdown schedules, reports, and killing. The first frame on a
  connection must carry a per-actor random token, so the listener serves
  only the driver that created it.
- **Placement.** Instances are numbered data first, then parity, and
  instance g is pinned to node ``g mod N`` of the N alive nodes
  that have the resources. The frontend's round robin puts consecutive data
  indices into one coding group, so a group's k members sit on distinct
  nodes whenever N >= k, and one node's trouble hits as few members of a
  group as possible. Nodes without room for an instance (``num_cpus``,
  ``num_gpus``) are skipped. Ray's own ``SPREAD`` strategy was tried first:
  it balances counts but placed data 0 and 1 on the same node, as did soft
  node affinity for zero-CPU actors. A replacement whose node is gone is
  placed on the alive node hosting the fewest instances.
- **The bundle travels through the object store.** Its top-level files are
  read once, ``ray.put`` once, and every actor writes them to a temporary
  directory, loads the bundle, and removes the directory, so nodes need no
  shared filesystem. ``ship_bundle=False`` makes actors load it by path
  instead (same path on every node).
- **Actor death.** When an actor's process dies its stream closes; an actor
  that holds queries and sends nothing for ``hang_timeout_s`` is taken for
  hung (or its node for lost) and killed. Either way the instance is marked
  down and every query it held is reported to ``Handler.on_down``; the
  frontend resends them or reconstructs them, and its pending set keeps
  each query answered exactly once. The backend then creates a fresh actor
  for the slot (its own re-creation rather than Ray's ``max_restarts``, so
  that it knows when the replacement is ready and can re-send the slowdown
  schedule), and marks it alive again.
- **Slowdown clocks.** The frontend gives ``t0`` on its own
  ``time.monotonic()``, which other machines do not share. ``configure``
  converts it to seconds from now before the call and the actor adds that
  to its own monotonic clock on receipt: schedules are off by the one-way
  call latency (about a millisecond), small beside 100 ms slow episodes.
  A replacement actor gets the schedule again without its failure time,
  since it stands for a fresh machine.

Ray is an optional dependency (``pip install learncc[ray]``); it is imported
only when a ``RayBackend`` starts.

Shortcomings: the driver must reach every node's address on the port its
actors pick (as Ray's own workers do); a driver attached through Ray Client
(``ray://``) from outside the cluster usually cannot, and then ``start``
fails with ``BackendUnavailableError``. A node that vanishes without closing
its connections is noticed only once one of its instances holds a query for
``hang_timeout_s``. Actors need learncc (and the bundle's Python
dependencies, for a ``callable`` black-box F) installed on every node; no
``runtime_env`` is shipped. The actor serves its stream with the local
worker's pieces (``receive``, ``compute_replies``, ``hold_service_time`` in
``learncc.serving.worker``); only the loop around them is its own, because
its schedule and reports come by Ray calls rather than CONTROL frames.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from learncc.errors import BackendUnavailableError, ConfigError
from learncc.serving import protocol as P
from learncc.serving.backend import BACKUP, DATA, PARITY, Handler, freeze_heap
from learncc.serving.worker import (
    compute_replies,
    fail_if_due,
    hold_service_time,
    model_name,
    receive,
)

logger = logging.getLogger(__name__)

_CONTROL = "control"  # the actor thread that serves configure/report calls
_HELLO_TIMEOUT_S = 5.0  # a connection must present its token this fast


def import_ray() -> Any:
    """Import Ray, or say how to install it.

    Raises:
        ConfigError: Ray is not installed.
    """
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "the Ray backend needs Ray: pip install 'learncc[ray]'"
        ) from None
    return ray


def read_bundle_files(path: str | Path) -> dict[str, bytes]:
    """The bytes of a bundle directory's top-level files, by name.

    Subdirectories (a training ``checkpoint/``) are not needed to serve and
    are left out.
    """
    return {p.name: p.read_bytes() for p in sorted(Path(path).iterdir()) if p.is_file()}


class InstanceActor:
    """One instance as a Ray actor (wrapped with ``ray.remote`` at start).

    It listens on its node's address; the driver connects once and sends
    queries as frames, which a thread serves (see the module docstring).

    Args:
        spec: ``role`` ("data" or "parity"), ``index`` (parity model index
            for parity instances), ``service_ms``, ``per_item_ms``,
            ``max_batch``, ``noop``, ``token`` (what the driver's first frame
            must carry), and ``bundle`` (a path) unless ``files`` is given.
        files: the bundle's files (see ``read_bundle_files``), or None.
    """

    def __init__(self, spec: dict[str, Any], files: dict[str, bytes] | None) -> None:
        import ray

        from learncc.serving.slowdown import Schedule

        self.service_s = float(spec.get("service_ms", 0.0)) / 1000
        self.per_item_s = float(spec.get("per_item_ms", 0.0)) / 1000
        self.max_batch = int(spec.get("max_batch", 1))
        self.token = str(spec["token"])
        self.schedule = Schedule({}, time.monotonic())
        self.service_ms: list[float] = []  # per batch, slowdowns included
        self.batch_sizes: list[int] = []
        if files is None:
            self._load(spec, spec["bundle"])
        else:
            tmp = tempfile.mkdtemp(prefix="learncc-bundle-")
            try:
                for name, data in files.items():
                    (Path(tmp) / name).write_bytes(data)
                self._load(spec, tmp)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        host = ray.util.get_node_ip_address()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.create_server((host, 0), family=family)
        self.host, self.port = host, self.listener.getsockname()[1]
        threading.Thread(target=self._serve, name="learncc-serve", daemon=True).start()

    def _load(self, spec: dict[str, Any], path: str) -> None:
        import torch

        from learncc.bundle import load_bundle

        torch.set_num_threads(1)
        bundle = load_bundle(path)
        model = bundle.base if spec["role"] == DATA else bundle.parity[spec["index"]]
        out_shape = tuple(bundle.fill_output.shape)
        self.input_shape = tuple(bundle.input_shape)
        self.name = model_name(spec)
        if spec.get("noop"):
            self.run = lambda xs: np.zeros((len(xs), *out_shape), np.float32)
            return

        @torch.inference_mode()
        def run(xs: np.ndarray) -> np.ndarray:
            out = model(torch.from_numpy(xs)).numpy()
            return out.astype(np.float32, copy=False)

        self.run = run

    # -- the stream (a thread of its own) -----------------------------------

    def _accept(self) -> tuple[socket.socket, bytearray]:
        """Wait for the driver: the first connection whose first frame carries
        the token. Returns it with any bytes read past that frame."""
        while True:
            conn, _ = self.listener.accept()
            conn.settimeout(_HELLO_TIMEOUT_S)
            buffer = bytearray()
            try:
                while True:
                    frames = P.split_frames(buffer)
                    if frames:
                        break
                    chunk = conn.recv(1 << 16)
                    if not chunk:
                        raise ConnectionError("closed before its token")
                    buffer += chunk
                kind, _, payload = frames[0]
                token = (
                    json.loads(payload).get("token", "") if kind == P.CONTROL else ""
                )
                if hmac.compare_digest(str(token), self.token):
                    conn.settimeout(None)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    # frames after the hello (queries already sent) stay queued
                    rest = b"".join(P.frame(k, t, p) for k, t, p in frames[1:])
                    self.listener.close()
                    return conn, bytearray(rest) + buffer
            except (OSError, ValueError, P.FrameError, AttributeError):
                pass
            conn.close()  # not our driver

    def _serve(self) -> None:
        conn, buffer = self._accept()
        try:
            self._serve_stream(conn, buffer)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the driver went away; nothing left to answer
        finally:
            conn.close()

    def _serve_stream(self, conn: socket.socket, buffer: bytearray) -> None:
        queue: deque[tuple[int, bytes]] = deque()
        while True:
            # control travels by Ray calls, so other frames are ignored
            if receive(conn, buffer, queue) is None:
                return  # the driver closed its end
            if not queue:
                continue
            batch = [queue.popleft() for _ in range(min(self.max_batch, len(queue)))]
            replies = self._serve_batch(batch)
            conn.setblocking(True)
            conn.sendall(b"".join(replies))

    def _serve_batch(self, batch: list[tuple[int, bytes]]) -> list[bytes]:
        """Run one batch and hold it for its emulated service time; return
        its reply frames."""
        start = time.monotonic()
        schedule = self.schedule  # configure() may swap it from its thread
        fail_if_due(schedule, start)
        try:
            replies = compute_replies(self.run, batch, self.input_shape, self.name)
        except Exception as e:  # the model failed: say so for each query
            message = f"{type(e).__name__}: {e}".encode()
            replies = [P.frame(P.ERROR, tag, message) for tag, _ in batch]
        moved = sum(len(p) for _, p in batch) + sum(len(r) for r in replies)
        floor_s = self.service_s + self.per_item_s * (len(batch) - 1)
        hold_service_time(schedule, start, floor_s, moved)
        self.service_ms.append((time.monotonic() - start) * 1000)
        self.batch_sizes.append(len(batch))
        return replies

    # -- control calls (the _CONTROL thread) ---------------------------------

    def configure(self, message: dict[str, Any]) -> None:
        """Install a slowdown schedule that starts ``start_in_s`` from now."""
        from learncc.serving.slowdown import Schedule

        if "schedule" in message:
            t0 = time.monotonic() + float(message["start_in_s"])
            self.schedule = Schedule(message["schedule"], t0)

    def report(self) -> dict[str, Any]:
        return {
            "service_ms": list(self.service_ms),
            "batch_sizes": list(self.batch_sizes),
            "max_batch": self.max_batch,
        }

    def where(self) -> dict[str, Any]:
        import ray

        return {
            "node": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "host": self.host,
            "port": self.port,
        }


class _Stream(asyncio.Protocol):
    """The driver's end of one actor's connection."""

    def __init__(self, backend: RayBackend, slot: _Slot) -> None:
        self.backend, self.slot = backend, slot
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        slot = self.slot
        if slot.stream is not self:
            return  # a connection the slot has given up on
        slot.last_progress = time.monotonic()
        self.buffer += data
        try:
            frames = P.split_frames(self.buffer)
        except P.FrameError as e:
            self.backend._down(slot, f"corrupt stream ({e})")
            return
        handler = self.backend.handler
        for kind, tag, payload in frames:
            if tag not in slot.outstanding:
                continue  # its instance was given up on and replaced meanwhile
            slot.outstanding.discard(tag)
            if kind == P.RESULT:
                output = np.frombuffer(payload, dtype=np.float32)
                handler.on_result(slot.role, slot.index, tag, output, None)
            elif kind == P.ERROR:
                message = payload.decode("utf-8", "replace")
                handler.on_result(slot.role, slot.index, tag, None, message)
            if slot.stream is not self:
                return  # the handler's reaction took the instance down

    def connection_lost(self, exc: Exception | None) -> None:
        if self.slot.stream is self and not self.backend.closing:
            self.backend._down(self.slot, f"connection lost ({exc or 'closed'})")


@dataclass(eq=False)
class _Slot:
    role: str
    index: int
    node: str | None = None  # node id it is pinned to
    actor: Any = None
    pid: int | None = None
    actual_node: str | None = None
    is_alive: bool = False
    restarts: int = 0
    token: str = ""  # what the current actor's stream expects first
    stream: _Stream | None = None
    outstanding: set[int] = field(default_factory=set)  # sent, not answered
    out: list[bytes] = field(default_factory=list)  # frames to write this tick
    last_progress: float = 0.0  # a frame's arrival, or the first send when idle
    schedule: dict[str, Any] | None = None  # the last slowdown schedule sent
    t0: float = 0.0  # its start, on this process's time.monotonic()


class RayBackend:
    """Instances as Ray actors, possibly on many machines.

    Args:
        bundle: path of the coded model bundle (read on this machine).
        data_instances, parity_instances: as for ``LocalBackend``.
        service_ms: each batch takes at least this long (see ``LocalBackend``).
        per_item_ms: added to the floor per query of a batch after the first.
        max_batch: most queued queries an instance serves in one batch.
        address: Ray cluster to join (``"auto"``, ``"ray://host:10001"``,
            ``"host:6379"``); ``None`` joins the cluster this process is
            already connected to, or starts a local one.
        num_gpus: GPUs per instance, fractional allowed (0.25 puts four
            instances on a GPU); leave 0 on CPU-only clusters.
        num_cpus: CPUs Ray reserves per instance. The default 0 reserves
            none, since emulated service times sleep; set 1 for real models
            so Ray does not crowd a node.
        noop: instances answer zeros of the output shape without running the
            model, to measure the serving path's own overhead.
        ship_bundle: send the bundle through Ray's object store (no shared
            filesystem needed); False loads it by path on every node.
        hang_timeout_s: an instance holding queries that sends nothing for
            this long is taken for hung (or its node for lost): it is killed,
            its queries go back to the frontend and it is replaced. Must
            exceed the longest legitimate batch, slow episodes included;
            ``None`` disables the watchdog.
        max_restarts: replacements per instance before it stays down.
        start_timeout_s: how long all actors may take to load.
        freeze_gc: once started, ``backend.freeze_heap()``: full
            collections then skip Ray's and torch's long-lived objects
            (process-wide).

    Ray is never shut down by ``close``: a process may serve several
    deployments on one cluster, and a local cluster ends with the process.
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
        address: str | None = None,
        num_gpus: float = 0.0,
        num_cpus: float = 0.0,
        noop: bool = False,
        ship_bundle: bool = True,
        hang_timeout_s: float | None = 5.0,
        max_restarts: int = 10,
        start_timeout_s: float = 180.0,
        freeze_gc: bool = True,
    ) -> None:
        if data_instances < 1 or parity_instances < 0:
            raise ConfigError(
                f"need >= 1 data instance and >= 0 parity instances, "
                f"got {data_instances} and {parity_instances}"
            )
        if max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1, got {max_batch}")
        if num_gpus < 0 or num_cpus < 0:
            raise ConfigError(
                f"num_gpus and num_cpus must be >= 0, got {num_gpus}, {num_cpus}"
            )
        if hang_timeout_s is not None and not hang_timeout_s > 0:
            raise ConfigError(
                f"hang_timeout_s must be > 0 or None, got {hang_timeout_s}"
            )
        self.bundle = str(Path(bundle).resolve())
        # no backup instances (mode cheap) on Ray yet
        self.counts = {DATA: data_instances, PARITY: parity_instances, BACKUP: 0}
        # the frontend encodes: across machines one parity input is 1/k of
        # the bytes of a group's inputs (LocalBackend encodes at the instance)
        self.parity_encodes = False
        self.service_ms, self.per_item_ms = service_ms, per_item_ms
        self.max_batch = max_batch
        self.address, self.num_gpus, self.num_cpus = address, num_gpus, num_cpus
        self.noop, self.ship_bundle = noop, ship_bundle
        self.hang_timeout_s, self.max_restarts = hang_timeout_s, max_restarts
        self.start_timeout_s, self.freeze_gc = start_timeout_s, freeze_gc
        self.slots: dict[tuple[str, int], _Slot] = {}
        self.closing = False
        self._dirty: set[_Slot] = set()
        self._flush_scheduled = False
        # queries sent and stream writes made; queries / writes is how many
        # queries one write carried
        self.queries_sent = 0
        self.writes = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._files_ref: Any = None

    # -- lifecycle ---------------------------------------------------------

    async def start(self, handler: Handler) -> None:
        """Connect to Ray, create every actor, wait until all have loaded, and
        connect to each.

        Raises:
            ConfigError: Ray is not installed, or no node has the resources.
            BackendUnavailableError: an actor failed to load in time, or its
                address cannot be reached from here.
        """
        ray = import_ray()
        self.handler = handler
        self._loop = asyncio.get_running_loop()
        if not ray.is_initialized():
            ray.init(address=self.address, log_to_driver=False)
        if self.ship_bundle:
            self._files_ref = ray.put(read_bundle_files(self.bundle))
        self._remote = ray.remote(concurrency_groups={_CONTROL: 1})(InstanceActor)
        numbered = [(DATA, i) for i in range(self.counts[DATA])]
        numbered += [(PARITY, i) for i in range(self.counts[PARITY])]
        nodes = self._place(ray, len(numbered))
        for (role, index), node in zip(numbered, nodes, strict=True):
            slot = _Slot(role, index, node=node)
            self.slots[(role, index)] = slot
            self._create(slot)
        ready = asyncio.gather(*(self._await_ready(s) for s in self.slots.values()))
        # as in LocalBackend.start: a cancelled start-up (Ctrl-C) must not leave
        # the gather's CancelledError unretrieved for asyncio to log
        ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            await asyncio.wait_for(ready, self.start_timeout_s)
        except (TimeoutError, BackendUnavailableError) as e:
            await self.close()
            if isinstance(e, BackendUnavailableError):
                raise
            raise BackendUnavailableError(
                f"Ray instances did not load within {self.start_timeout_s:g} s"
            ) from None
        for slot in self.slots.values():
            slot.is_alive = True
        if self.freeze_gc:
            # Ray leaves the driver with a large heap of long-lived objects;
            # a full collection walking it stalled the event loop for 250 ms
            freeze_heap()
        if self.hang_timeout_s is not None:
            self._spawn(self._watch())
        used = {s.actual_node for s in self.slots.values()}
        logger.info(
            "ray backend up: %d data + %d parity instances on %d nodes",
            *(self.counts[DATA], self.counts[PARITY], len(used)),
        )

    def _capacities(self, ray: Any) -> dict[str, int]:
        """Instances each alive node can host, by node id, for nodes that can
        host at least one."""
        out = {}
        for n in ray.nodes():
            if not n.get("Alive"):
                continue
            fits = [
                int(n["Resources"].get(name, 0) / need + 1e-9)
                for name, need in (("GPU", self.num_gpus), ("CPU", self.num_cpus))
                if need > 0
            ]
            room = min(fits) if fits else 1 << 30
            if room > 0:
                out[n["NodeID"]] = room
        return out

    def _place(self, ray: Any, count: int) -> list[str]:
        """Node ids for instances 0..count-1: round robin over the sorted
        alive nodes, skipping nodes that are full."""
        capacity = self._capacities(ray)
        if not capacity:
            raise ConfigError(
                f"no alive Ray node has num_gpus={self.num_gpus:g} and "
                f"num_cpus={self.num_cpus:g} for an instance; lower them or add nodes"
            )
        nodes, cursor = sorted(capacity), 0
        placed: list[str] = []
        for _ in range(count):
            free = [nodes[(cursor + s) % len(nodes)] for s in range(len(nodes))]
            node = next((n for n in free if capacity[n] > 0), None)
            if node is None:
                raise ConfigError(
                    f"the cluster holds {len(placed)} instances with num_gpus="
                    f"{self.num_gpus:g} and num_cpus={self.num_cpus:g}, not {count}"
                )
            capacity[node] -= 1
            placed.append(node)
            cursor = (nodes.index(node) + 1) % len(nodes)
        return placed

    def _create(self, slot: _Slot) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        slot.token = secrets.token_hex(16)
        spec: dict[str, Any] = {
            "role": slot.role,
            "index": slot.index,
            "service_ms": self.service_ms,
            "per_item_ms": self.per_item_ms,
            "max_batch": self.max_batch,
            "noop": self.noop,
            "token": slot.token,
        }
        if slot.role == PARITY:
            spec["index"] = slot.index % max(1, self._parity_models())
        if not self.ship_bundle:
            spec["bundle"] = self.bundle
        options: dict[str, Any] = {
            "num_cpus": self.num_cpus,
            # failures are ours to handle: a retried batch would answer twice
            "max_restarts": 0,
            "max_task_retries": 0,
            "name": None,
        }
        if self.num_gpus:
            options["num_gpus"] = self.num_gpus
        if slot.node is not None:
            # hard: Ray 2.60 put zero-CPU actors with soft affinity on other
            # nodes; _replace picks a new node when this one is gone
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
                slot.node, soft=False
            )
        slot.actor = self._remote.options(**options).remote(spec, self._files_ref)

    def _parity_models(self) -> int:
        from learncc.bundle import MANIFEST

        manifest = json.loads((Path(self.bundle) / MANIFEST).read_text())
        return int(manifest["parity"]["count"])

    async def _await_ready(self, slot: _Slot) -> None:
        """Wait for the actor to load, then connect to its stream."""
        ray = import_ray()
        try:
            where = await slot.actor.where.options(concurrency_group=_CONTROL).remote()
        except ray.exceptions.RayError as e:
            raise BackendUnavailableError(
                f"instance {slot.role}/{slot.index} failed to start: {e}"
            ) from None
        slot.pid, slot.actual_node = where["pid"], where["node"]
        try:
            transport, stream = await self._loop.create_connection(
                lambda: _Stream(self, slot), where["host"], where["port"]
            )
        except OSError as e:
            raise BackendUnavailableError(
                f"cannot reach instance {slot.role}/{slot.index} at "
                f"{where['host']}:{where['port']} ({e}); the driver must reach "
                "every Ray node's address"
            ) from None
        transport.write(P.control(0, {"token": slot.token}))
        slot.stream, slot.outstanding, slot.out = stream, set(), []

    def _spawn(self, coro: Any) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Kill every actor; queries in flight are dropped (the frontend has
        already failed them)."""
        self.closing = True
        for task in list(self._tasks):
            task.cancel()
        ray = import_ray()
        for slot in self.slots.values():
            slot.is_alive = False
            if slot.stream is not None and slot.stream.transport is not None:
                slot.stream.transport.abort()
            slot.stream = None
            if slot.actor is not None:
                try:
                    ray.kill(slot.actor, no_restart=True)
                except ValueError:
                    pass  # never created
        self._files_ref = None

    # -- the query path ----------------------------------------------------

    def send(self, role: str, index: int, tag: int, x: np.ndarray) -> None:
        slot = self.slots[(role, index)]
        if not slot.is_alive:
            raise BackendUnavailableError(f"instance {role}/{index} is down")
        if not slot.outstanding:
            slot.last_progress = time.monotonic()
        slot.outstanding.add(tag)
        self.queries_sent += 1
        payload = np.ascontiguousarray(x, np.float32).tobytes()
        self._queue(slot, P.frame(P.INFER, tag, payload))

    def cancel(self, role: str, index: int, tag: int) -> None:
        """Withdraw a query the actor has not started; it then reports it
        failed with ``CANCELLED``."""
        slot = self.slots[(role, index)]
        if slot.is_alive and tag in slot.outstanding:
            self._queue(slot, P.frame(P.CANCEL, tag, b""))

    def _queue(self, slot: _Slot, frame: bytes) -> None:
        slot.out.append(frame)
        self._dirty.add(slot)
        if not self._flush_scheduled:
            # one write per actor per tick carries every frame of the tick
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, set()
        for slot in dirty:
            if slot.out and slot.stream is not None:
                assert slot.stream.transport is not None
                slot.stream.transport.write(b"".join(slot.out))
                self.writes += 1
            slot.out = []

    # -- failures ----------------------------------------------------------

    async def _watch(self) -> None:
        assert self.hang_timeout_s is not None
        while not self.closing:
            await asyncio.sleep(min(0.5, self.hang_timeout_s / 4))
            now = time.monotonic()
            for slot in list(self.slots.values()):
                silent_s = now - slot.last_progress
                if (
                    slot.is_alive
                    and slot.outstanding
                    and silent_s > self.hang_timeout_s
                ):
                    self._down(
                        slot,
                        f"sent nothing for {silent_s:.1f} s with "
                        f"{len(slot.outstanding)} queries in flight; killed as hung",
                    )

    def _down(self, slot: _Slot, reason: str) -> None:
        """Give up on ``slot``'s actor: report its queries lost, kill it, and
        replace it."""
        if not slot.is_alive:
            return
        lost = sorted(slot.outstanding)
        slot.is_alive = False
        if slot.stream is not None and slot.stream.transport is not None:
            slot.stream.transport.abort()
        slot.stream, slot.outstanding, slot.out = None, set(), []
        logger.warning(
            "instance %s/%d is down (queries in flight: %d): %s",
            *(slot.role, slot.index, len(lost), reason),
        )
        self.handler.on_down(slot.role, slot.index, lost)
        try:
            import_ray().kill(slot.actor, no_restart=True)
        except ValueError:
            pass  # already gone
        if slot.restarts >= self.max_restarts:
            logger.warning(
                "instance %s/%d stays down after %d replacements; raise "
                "max_restarts to keep replacing it",
                slot.role,
                slot.index,
                slot.restarts,
            )
            return
        self._spawn(self._replace(slot))

    async def _replace(self, slot: _Slot) -> None:
        ray = import_ray()
        slot.restarts += 1
        for attempt in range(3):
            alive = self._capacities(ray)
            if slot.node not in alive and alive:
                # its node is gone: the alive node hosting the fewest instances
                hosted = dict.fromkeys(alive, 0)
                for other in self.slots.values():
                    if other.node in hosted and other is not slot:
                        hosted[other.node] += 1
                slot.node = min(sorted(hosted), key=hosted.__getitem__)
            self._create(slot)
            try:
                await asyncio.wait_for(self._await_ready(slot), self.start_timeout_s)
                break
            except (TimeoutError, BackendUnavailableError):
                logger.exception(
                    "replacing instance %s/%d failed (attempt %d)",
                    slot.role,
                    slot.index,
                    attempt + 1,
                )
                try:
                    ray.kill(slot.actor, no_restart=True)
                except ValueError:
                    pass
                await asyncio.sleep(1.0)
        else:
            return
        if slot.schedule is not None:
            # same episodes on the same clock, but the replacement does not fail
            schedule = {**slot.schedule, "fail_at_s": None}
            message = {"schedule": schedule, "start_in_s": slot.t0 - time.monotonic()}
            await slot.actor.configure.options(concurrency_group=_CONTROL).remote(
                message
            )
        slot.is_alive = not self.closing
        logger.info(
            "instance %s/%d is back (replacement %d, pid %s)",
            slot.role,
            slot.index,
            slot.restarts,
            slot.pid,
        )

    # -- introspection and control -----------------------------------------

    def alive(self, role: str, index: int) -> bool:
        slot = self.slots.get((role, index))
        return slot is not None and slot.is_alive

    def depth(self, role: str, index: int) -> int:
        return len(self.slots[(role, index)].outstanding)

    def actor(self, role: str, index: int) -> Any:
        """The Ray actor handle of an instance (for tests and tools)."""
        return self.slots[(role, index)].actor

    def pid(self, role: str, index: int) -> int | None:
        return self.slots[(role, index)].pid

    def node(self, role: str, index: int) -> str | None:
        """The Ray node id the instance's current actor runs on."""
        return self.slots[(role, index)].actual_node

    async def configure(self, role: str, index: int, message: dict[str, Any]) -> None:
        """Send a control message; ``{"schedule", "t0"}`` with ``t0`` on this
        process's ``time.monotonic()`` is converted to seconds from now."""
        slot = self.slots[(role, index)]
        if "schedule" not in message:
            return
        slot.schedule, slot.t0 = message["schedule"], float(message["t0"])
        converted = {
            "schedule": slot.schedule,
            "start_in_s": slot.t0 - time.monotonic(),
        }
        if slot.is_alive:
            await slot.actor.configure.options(concurrency_group=_CONTROL).remote(
                converted
            )

    async def service_times(self, timeout_s: float = 2.0) -> dict[str, list[float]]:
        """Each live instance's per-batch service times (ms), keyed
        ``role/index``; instances that do not answer in ``timeout_s`` are
        left out."""
        reports = await self.reports(timeout_s)
        return {key: report["service_ms"] for key, report in reports.items()}

    async def reports(self, timeout_s: float = 2.0) -> dict[str, dict[str, Any]]:
        """Each live instance's report, keyed ``role/index``: per batch its
        ``service_ms`` and ``batch_sizes`` (queries), and ``max_batch``.
        Instances that do not answer in ``timeout_s`` are left out."""
        asked = {
            f"{s.role}/{s.index}": asyncio.wrap_future(
                s.actor.report.options(concurrency_group=_CONTROL).remote().future()
            )
            for s in self.slots.values()
            if s.is_alive
        }
        if not asked:
            return {}
        await asyncio.wait(asked.values(), timeout=timeout_s)
        out = {}
        for key, fut in asked.items():
            if fut.done() and fut.exception() is None:
                out[key] = fut.result()
            else:
                fut.cancel()
        return out
