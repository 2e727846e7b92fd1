"""A backend whose instances are Ray actors, for serving across machines.

``RayBackend`` implements the same ``Backend`` protocol as ``LocalBackend``:
the frontend, its coding groups and its decoder do not change, only where
instances run. Each data or parity instance is one Ray actor that does what
``learncc.serving.worker`` does in a process: load the bundle, run F or
parity model ``index % r``, serve each batch in at least ``service_ms`` and
follow a slowdown schedule.

Design, and why:

- **One actor call is one batch.** An actor call costs milliseconds and one
  driver makes on the order of a thousand calls per second, so ``send``
  only buffers the query. Buffers are flushed once per event-loop tick, a
  call carrying up to ``max_batch`` queries, and at most
  ``max_inflight_calls`` calls are outstanding per actor; while they are,
  new queries wait in the driver's buffer and join the next call. Under
  load batches grow by themselves, so the call rate stays near the actors'
  batch rate instead of the query rate. Tags never leave the driver: a call
  carries one ``(n, *in)`` array and returns one ``(n, *out)`` array whose
  rows are matched to the tags kept for that call.
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
- **Actor death.** A call that fails with ``RayActorError`` marks the
  instance down and reports every tag it held (in calls and in the buffer)
  to ``Handler.on_down``; the frontend resends them or reconstructs them,
  and its pending set keeps each query answered exactly once. The backend
  then creates a fresh actor for the slot (its own re-creation rather than
  Ray's ``max_restarts``, so that it knows when the replacement is ready
  and can re-send the slowdown schedule), and marks it alive again.
- **Slowdown clocks.** The frontend gives ``t0`` on its own
  ``time.monotonic()``, which other machines do not share. ``configure``
  converts it to seconds from now before the call and the actor adds that
  to its own monotonic clock on receipt: schedules are off by the one-way
  call latency (about a millisecond), small beside 100 ms slow episodes.
  A replacement actor gets the schedule again without its failure time,
  since it stands for a fresh machine.

Ray is an optional dependency (``pip install learncc[ray]``); it is imported
only when a ``RayBackend`` starts.

Shortcomings: a call's queries return together, so with ``max_batch`` > 1 a
query waits for its whole batch, as in the local worker. Actors need
learncc (and the bundle's Python dependencies, for a ``callable`` black-box
F) installed on every node; no ``runtime_env`` is shipped. ``service_times``
and ``configure`` wait behind nothing (they run on their own actor thread),
but a hung actor still answers them, unlike a hung local worker.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from learncc.errors import BackendUnavailableError, ConfigError
from learncc.serving.backend import BACKUP, CANCELLED, DATA, PARITY, Handler

logger = logging.getLogger(__name__)

_CONTROL = "control"  # the actor thread that serves configure/report calls


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

    Args:
        spec: ``role`` ("data" or "parity"), ``index`` (parity model index
            for parity instances), ``service_ms``, ``noop``, and either
            ``bundle`` (a path) or ``files`` (see ``read_bundle_files``).
    """

    def __init__(self, spec: dict[str, Any], files: dict[str, bytes] | None) -> None:
        from learncc.serving.slowdown import Schedule

        self.service_s = float(spec.get("service_ms", 0.0)) / 1000
        self.per_item_s = float(spec.get("per_item_ms", 0.0)) / 1000
        self.noop = bool(spec.get("noop", False))
        self.schedule = Schedule({}, time.monotonic())
        self.service_ms: list[float] = []
        self.max_batch = int(spec.get("max_batch", 1))
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

    def _load(self, spec: dict[str, Any], path: str) -> None:
        import torch

        from learncc.bundle import load_bundle

        torch.set_num_threads(1)
        bundle = load_bundle(path)
        self.model = (
            bundle.base if spec["role"] == DATA else bundle.parity[spec["index"]]
        )
        self.output_shape = tuple(bundle.fill_output.shape)

    def infer(self, xs: np.ndarray) -> np.ndarray:
        """Serve one batch ``(n, *in)``; return ``(n, *out)`` float32."""
        import torch

        start = time.monotonic()
        if self.schedule.failed(start):
            if self.schedule.fail_mode == "crash":
                os._exit(17)
            while True:  # hang: hold the batch, answer nothing, until killed
                time.sleep(3600)
        if self.noop:
            out = np.zeros((len(xs), *self.output_shape), dtype=np.float32)
        else:
            with torch.inference_mode():
                out = self.model(torch.from_numpy(np.asarray(xs, np.float32))).numpy()
        # emulate the service time as the local worker does: a floor, stretched
        # while slow, plus jitter and the emulated link's time for the bytes
        floor = self.service_s + self.per_item_s * (len(xs) - 1)
        busy = max(time.monotonic() - start, floor)
        moved = int(np.asarray(xs).nbytes + out.nbytes)
        delay = (
            busy * self.schedule.slow_factor(start)
            + self.schedule.jitter()
            + self.schedule.transport(moved)
        )
        remaining = start + delay - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
        self.service_ms.append((time.monotonic() - start) * 1000)
        return out.astype(np.float32, copy=False)

    def configure(self, message: dict[str, Any]) -> None:
        """Install a slowdown schedule that starts ``start_in_s`` from now."""
        from learncc.serving.slowdown import Schedule

        if "schedule" in message:
            t0 = time.monotonic() + float(message["start_in_s"])
            self.schedule = Schedule(message["schedule"], t0)

    def report(self) -> dict[str, Any]:
        return {"service_ms": list(self.service_ms), "max_batch": self.max_batch}

    def where(self) -> dict[str, Any]:
        import ray

        return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}


@dataclass(eq=False)
class _Slot:
    role: str
    index: int
    node: str | None = None  # node id it is pinned to
    actor: Any = None
    pid: int | None = None
    actual_node: str | None = None
    is_alive: bool = False
    epoch: int = 0  # bumped on each death: results of older calls are stale
    restarts: int = 0
    tags: list[int] = field(default_factory=list)  # buffered, not yet sent
    xs: list[np.ndarray] = field(default_factory=list)
    calls: dict[int, list[int]] = field(default_factory=dict)  # call id -> tags
    schedule: dict[str, Any] | None = None  # the last slowdown schedule sent
    t0: float = 0.0  # its start, on this process's time.monotonic()


class RayBackend:
    """Instances as Ray actors, possibly on many machines.

    Args:
        bundle: path of the coded model bundle (read on this machine).
        data_instances, parity_instances: as for ``LocalBackend``.
        service_ms: each batch takes at least this long (see ``LocalBackend``).
        per_item_ms: added to the floor per query of a batch after the first.
        max_batch: most queries in one actor call, which is one batch.
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
        max_inflight_calls: calls outstanding per actor; more queries wait in
            the driver's buffer and are batched into the next call.
        max_restarts: replacements per instance before it stays down.
        start_timeout_s: how long all actors may take to load.

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
        max_inflight_calls: int = 2,
        max_restarts: int = 10,
        start_timeout_s: float = 180.0,
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
        if max_inflight_calls < 1:
            raise ConfigError(
                f"max_inflight_calls must be >= 1, got {max_inflight_calls}"
            )
        self.bundle = str(Path(bundle).resolve())
        # no backup instances (mode cheap) on Ray yet
        self.counts = {DATA: data_instances, PARITY: parity_instances, BACKUP: 0}
        self.service_ms, self.per_item_ms, self.max_batch = (
            service_ms,
            per_item_ms,
            max_batch,
        )
        self.address, self.num_gpus, self.num_cpus = address, num_gpus, num_cpus
        self.noop, self.ship_bundle = noop, ship_bundle
        self.max_inflight_calls, self.max_restarts = max_inflight_calls, max_restarts
        self.start_timeout_s = start_timeout_s
        self.slots: dict[tuple[str, int], _Slot] = {}
        self.closing = False
        self._dirty: set[_Slot] = set()
        self._flush_scheduled = False
        self._call_ids = itertools.count()
        self.calls_sent = (
            0  # actor calls made for queries; queries / calls = batch size
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._files_ref: Any = None

    # -- lifecycle ---------------------------------------------------------

    async def start(self, handler: Handler) -> None:
        """Connect to Ray, create every actor, and wait until all have loaded.

        Raises:
            ConfigError: Ray is not installed, or no node has the resources.
            BackendUnavailableError: an actor failed to load in time.
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
        try:
            await asyncio.wait_for(
                asyncio.gather(*(self._await_ready(s) for s in self.slots.values())),
                self.start_timeout_s,
            )
        except (TimeoutError, BackendUnavailableError) as e:
            await self.close()
            if isinstance(e, BackendUnavailableError):
                raise
            raise BackendUnavailableError(
                f"Ray instances did not load within {self.start_timeout_s:g} s"
            ) from None
        for slot in self.slots.values():
            slot.is_alive = True
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
        nodes, placed, cursor = sorted(capacity), [], 0
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

        spec = {
            "role": slot.role,
            "index": slot.index,
            "service_ms": self.service_ms,
            "per_item_ms": self.per_item_ms,
            "max_batch": self.max_batch,
            "noop": self.noop,
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
        import json

        from learncc.bundle import MANIFEST

        manifest = json.loads((Path(self.bundle) / MANIFEST).read_text())
        return int(manifest["parity"]["count"])

    async def _await_ready(self, slot: _Slot) -> None:
        ray = import_ray()
        try:
            where = await slot.actor.where.options(concurrency_group=_CONTROL).remote()
        except ray.exceptions.RayError as e:
            raise BackendUnavailableError(
                f"instance {slot.role}/{slot.index} failed to start: {e}"
            ) from None
        slot.pid, slot.actual_node = where["pid"], where["node"]

    async def close(self) -> None:
        """Kill every actor; queries in flight are dropped (the frontend has
        already failed them)."""
        self.closing = True
        for task in list(self._tasks):
            task.cancel()
        ray = import_ray()
        for slot in self.slots.values():
            slot.is_alive = False
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
        slot.tags.append(tag)
        slot.xs.append(x)
        self._dirty.add(slot)
        if not self._flush_scheduled:
            # one flush per tick gathers every query sent during it
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def cancel(self, role: str, index: int, tag: int) -> None:
        """Withdraw a query still in the driver's buffer; one already sent in
        a call is part of a batch and runs to the end."""
        slot = self.slots[(role, index)]
        if tag not in slot.tags:
            return
        i = slot.tags.index(tag)
        del slot.tags[i], slot.xs[i]
        # reported on the next tick, as an instance would, not inside the caller
        self._loop.call_soon(self.handler.on_result, role, index, tag, None, CANCELLED)

    def _flush(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, set()
        for slot in dirty:
            self._flush_slot(slot)

    def _flush_slot(self, slot: _Slot) -> None:
        while slot.tags and slot.is_alive and len(slot.calls) < self.max_inflight_calls:
            n = min(self.max_batch, len(slot.tags))
            tags, slot.tags = slot.tags[:n], slot.tags[n:]
            xs, slot.xs = slot.xs[:n], slot.xs[n:]
            call_id = next(self._call_ids)
            slot.calls[call_id] = tags
            self.calls_sent += 1
            ref = slot.actor.infer.remote(np.stack(xs))
            fut = asyncio.wrap_future(ref.future(), loop=self._loop)
            fut.add_done_callback(
                lambda f, s=slot, c=call_id, e=slot.epoch: self._on_call_done(
                    s, c, e, f
                )
            )

    def _on_call_done(
        self, slot: _Slot, call_id: int, epoch: int, fut: asyncio.Future[Any]
    ) -> None:
        error = None if fut.cancelled() else fut.exception()  # always retrieve it
        if self.closing or epoch != slot.epoch or fut.cancelled():
            return  # the slot died since; its tags were reported to on_down
        tags = slot.calls.pop(call_id)
        ray = import_ray()
        if isinstance(error, ray.exceptions.RayActorError):
            slot.calls[call_id] = tags
            self._down(slot, error)
            return
        if error is not None:
            message = f"{type(error).__name__}: {error}"
            for tag in tags:
                self.handler.on_result(slot.role, slot.index, tag, None, message)
        else:
            outputs = fut.result()
            for tag, output in zip(tags, outputs, strict=True):
                self.handler.on_result(
                    slot.role, slot.index, tag, output.reshape(-1), None
                )
        self._flush_slot(slot)

    # -- failures ----------------------------------------------------------

    def _down(self, slot: _Slot, error: BaseException) -> None:
        lost = sorted(itertools.chain(slot.tags, *slot.calls.values()))
        slot.is_alive = False
        slot.epoch += 1
        slot.tags, slot.xs, slot.calls = [], [], {}
        logger.warning(
            "instance %s/%d is down (%d queries in flight): %s",
            *(slot.role, slot.index, len(lost), type(error).__name__),
        )
        self.handler.on_down(slot.role, slot.index, lost)
        if slot.restarts >= self.max_restarts:
            logger.warning(
                "instance %s/%d stays down after %d replacements; raise "
                "max_restarts to keep replacing it",
                slot.role,
                slot.index,
                slot.restarts,
            )
            return
        task = self._loop.create_task(self._replace(slot))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _replace(self, slot: _Slot) -> None:
        ray = import_ray()
        slot.restarts += 1
        try:
            ray.kill(slot.actor, no_restart=True)
        except ValueError:
            pass
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
        slot = self.slots[(role, index)]
        return len(slot.tags) + sum(len(t) for t in slot.calls.values())

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
                out[key] = fut.result()["service_ms"]
            else:
                fut.cancel()
        return out
