"""An instance: one process running one model (F or a parity model).

Started by the local backend with one end of a socketpair as ``--fd``. It
loads its model from the bundle, says READY, then serves INFER frames in
arrival order, up to ``max_batch`` at a time. Each batch's service time is
the model's compute time, raised to ``service_ms`` when shorter (see
``LocalBackend``), multiplied by the slowdown schedule's factor, plus jitter.

Run as ``python -m learncc.serving.worker --fd N --spec JSON``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from learncc.serving import protocol as P
from learncc.serving.slowdown import Schedule

NON_FINITE_OUTPUT = P.NON_FINITE_OUTPUT  # re-exported: tests and callers import it here


def load_model(spec: dict[str, Any]) -> tuple[Any, tuple[int, ...]]:
    """Return (callable on a float32 batch, input shape).

    With ``noop`` the callable returns zeros of the output shape without
    running a model: for measuring the serving path's own costs.
    """
    import torch

    from learncc.bundle import load_bundle
    from learncc.errors import BundleError

    torch.set_num_threads(1)
    bundle = load_bundle(spec["bundle"])
    # a parity instance that encodes takes its group's k inputs per query
    encodes = spec["role"] == "parity" and bool(spec.get("encode"))
    input_shape = bundle.input_shape
    if encodes:
        input_shape = (bundle.code.k, *input_shape)
    if spec.get("noop"):
        out_shape = tuple(bundle.fill_output.shape)
        return (
            lambda batch: np.zeros((len(batch), *out_shape), np.float32)
        ), input_shape
    if spec["role"] == "data":
        model = bundle.base
    elif spec["role"] == "parity":
        model = bundle.parity[spec["index"]]
    else:
        model = getattr(bundle, "backup", None)
        if model is None:
            raise BundleError(
                f"{spec['bundle']} has no backup model (needed by mode cheap)"
            )

    encoder, row = bundle.encoder, spec.get("index", 0)

    @torch.inference_mode()
    def run(batch: np.ndarray) -> np.ndarray:
        if encodes:  # (n, k, *in) -> this parity model's row of the code
            batch = encoder.encode_numpy(batch)[:, row]
        return model(torch.from_numpy(batch)).numpy().astype(np.float32, copy=False)

    return run, input_shape


def model_name(spec: dict[str, Any]) -> str:
    """How error messages name the model an instance runs."""
    if spec["role"] == "data":
        return "F"
    if spec["role"] == "parity":
        return f"parity model {spec.get('index', 0)}"
    return "the backup model"


def compute_replies(
    run: Callable[[np.ndarray], np.ndarray],
    batch: list[tuple[int, bytes]],
    input_shape: tuple[int, ...],
    model_name: str = "F",
) -> list[bytes]:
    """Run one batch of (tag, float32 payload) queries; one reply frame each.

    A query gets an ERROR frame instead of a RESULT when its payload has the
    wrong size or when the model's output for it is not finite. A finite but
    huge input can overflow the output (found by a fresh-user test): answering
    it would hand the client NaN (``null`` in JSON), and a parity output that
    overflowed would rebuild a partner's answer from it. The frontend fails a data query
    whose instance answered ERROR and treats an ERROR from a parity instance
    as a missing parity output, so neither happens.
    """
    item_bytes = math.prod(input_shape) * 4
    good = [(tag, p) for tag, p in batch if len(p) == item_bytes]
    replies = [
        P.frame(P.ERROR, tag, f"expected {item_bytes} bytes, got {len(p)}".encode())
        for tag, p in batch
        if len(p) != item_bytes
    ]
    if not good:
        return replies
    # bytearray: torch wants a writable buffer
    x = np.frombuffer(bytearray(b"".join(p for _, p in good)), dtype=np.float32)
    out = run(x.reshape(len(good), *input_shape))
    if np.isfinite(out).all():  # the common case: one check for the batch
        return replies + [
            P.frame(P.RESULT, tag, out[i].tobytes()) for i, (tag, _) in enumerate(good)
        ]
    finite = np.isfinite(out.reshape(len(good), -1)).all(axis=1)
    refused = (
        f"{NON_FINITE_OUTPUT}: {model_name}'s output for this query holds NaN or "
        "infinity (is the input far outside the range the model was trained on?)"
    ).encode()
    return replies + [
        P.frame(P.RESULT, tag, out[i].tobytes())
        if finite[i]
        else P.frame(P.ERROR, tag, refused)
        for i, (tag, _) in enumerate(good)
    ]


def receive(
    sock: socket.socket, buffer: bytearray, queue: deque[tuple[int, bytes]]
) -> list[tuple[int, int, bytes]] | None:
    """Take what has arrived on ``sock``, blocking only when ``queue`` is empty.

    INFER frames join ``queue``; a CANCEL for a still-queued query removes it
    and answers ERROR ``CANCELLED``. Returns the other frames (CONTROL), or
    None once the peer has closed its end. Shared by the instance process and
    the Ray actor, which serve the same stream.
    """
    sock.setblocking(not queue)
    try:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return None
        buffer += chunk
    except BlockingIOError:
        pass
    other = []
    for kind, tag, payload in P.split_frames(buffer):
        if kind == P.INFER:
            queue.append((tag, payload))
        elif kind == P.CANCEL:
            kept = [item for item in queue if item[0] != tag]
            if len(kept) < len(queue):
                queue.clear()
                queue.extend(kept)
                sock.setblocking(True)
                sock.sendall(P.frame(P.ERROR, tag, P.CANCELLED.encode()))
        else:
            other.append((kind, tag, payload))
    return other


def fail_if_due(schedule: Schedule, now: float) -> None:
    """Crash (exit) or hang (hold every query, answer nothing) once the
    schedule's failure time has come."""
    if schedule.failed(now):
        if schedule.fail_mode == "crash":
            os._exit(17)
        while True:  # hang: until killed
            time.sleep(3600)


def hold_service_time(
    schedule: Schedule, start: float, floor_s: float, moved_bytes: int
) -> None:
    """Sleep until the batch that started at ``start`` has taken its emulated
    service time: at least ``floor_s``, stretched while slow, plus jitter and
    the transport (a fixed delay plus the bytes at the link's rate)."""
    busy = max(time.monotonic() - start, floor_s)
    delay = (
        busy * schedule.slow_factor(start)
        + schedule.jitter()
        + schedule.transport(moved_bytes)
    )
    remaining = start + delay - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)


def serve(sock: socket.socket, spec: dict[str, Any]) -> None:
    run, input_shape = load_model(spec)
    service_s = float(spec.get("service_ms", 0.0)) / 1000
    per_item_s = float(spec.get("per_item_ms", 0.0)) / 1000
    max_batch = int(spec.get("max_batch", 1))
    name = model_name(spec)
    schedule = Schedule({}, time.monotonic())
    sock.sendall(P.frame(P.READY, 0, json.dumps({"pid": os.getpid()}).encode()))

    buffer = bytearray()
    queue: deque[tuple[int, bytes]] = deque()
    service_ms: list[float] = []  # per batch, slowdowns included: for the simulator
    while True:
        frames = receive(sock, buffer, queue)
        if frames is None:
            return  # the frontend closed its end
        for kind, tag, payload in frames:
            if kind == P.CONTROL:
                message = json.loads(payload)
                if message.get("stop"):
                    return
                if message.get("report"):
                    stats = {"service_ms": service_ms, "max_batch": max_batch}
                    sock.setblocking(True)
                    sock.sendall(P.frame(P.STATS, tag, json.dumps(stats).encode()))
                if "schedule" in message:
                    schedule = Schedule(message["schedule"], float(message["t0"]))
        if not queue:
            continue

        start = time.monotonic()
        fail_if_due(schedule, start)
        batch = [queue.popleft() for _ in range(min(max_batch, len(queue)))]
        replies = compute_replies(run, batch, input_shape, name)
        moved = sum(len(p) for _, p in batch) + sum(len(r) for r in replies)
        hold_service_time(
            schedule, start, service_s + per_item_s * (len(batch) - 1), moved
        )
        service_ms.append((time.monotonic() - start) * 1000)
        sock.setblocking(True)
        sock.sendall(b"".join(replies))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--spec", required=True)
    args = parser.parse_args(argv)
    sock = socket.socket(fileno=args.fd)
    try:
        serve(sock, json.loads(args.spec))
    except (BrokenPipeError, ConnectionResetError):
        pass  # the frontend went away; nothing left to answer
    except Exception as e:  # report why we died; the frontend logs our stderr
        print(f"learncc instance failed: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        sock.close()


if __name__ == "__main__":
    main()
