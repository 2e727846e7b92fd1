"""Frames between the frontend and instance processes.

A frame is ``u32 length | u8 kind | u64 tag | payload``, little-endian; the
length counts kind, tag and payload. Tensors travel as raw float32 bytes
(shapes are fixed by the bundle, so they need no header); control messages
as JSON. Length-prefixed frames over a Unix socketpair were the fastest
transport measured on our 2-core machines (see issue 3), well ahead of pyzmq
and multiprocessing pipes.
"""

from __future__ import annotations

import json
import struct
from typing import Any

HEADER = struct.Struct("<IBQ")
PREFIX = struct.Struct("<I")
BODY_HEADER = struct.Struct("<BQ")
MAX_FRAME = 64 << 20  # a frame this large is a bug or a corrupt stream

INFER = 1  # frontend -> instance: one query, float32 payload
RESULT = 2  # instance -> frontend: one output, float32 payload
ERROR = 3  # instance -> frontend: the query failed; utf-8 message
CONTROL = 4  # frontend -> instance: JSON settings (slowdown schedule, stop)
READY = 5  # instance -> frontend: loaded and serving; JSON description
STATS = 6  # instance -> frontend: measured service times; JSON (on CONTROL "report")
CANCEL = 7  # frontend -> instance: drop the query if still queued

CANCELLED = "cancelled"  # the ERROR message for a query dropped by CANCEL
# How the ERROR message begins when an instance refuses a NaN or infinite output
NON_FINITE_OUTPUT = "non-finite output"


def frame(kind: int, tag: int, payload: bytes) -> bytes:
    return HEADER.pack(BODY_HEADER.size + len(payload), kind, tag) + payload


def control(tag: int, message: dict[str, Any]) -> bytes:
    return frame(CONTROL, tag, json.dumps(message).encode())


class FrameError(Exception):
    """The byte stream does not hold valid frames."""


def split_frames(buffer: bytearray) -> list[tuple[int, int, bytes]]:
    """Remove and return every complete frame at the start of ``buffer``."""
    frames = []
    offset = 0
    while len(buffer) - offset >= PREFIX.size:
        (length,) = PREFIX.unpack_from(buffer, offset)
        if length < BODY_HEADER.size or length > MAX_FRAME:
            raise FrameError(f"bad frame length {length}")
        end = offset + PREFIX.size + length
        if end > len(buffer):
            break
        kind, tag = BODY_HEADER.unpack_from(buffer, offset + PREFIX.size)
        frames.append((kind, tag, bytes(buffer[offset + HEADER.size : end])))
        offset = end
    del buffer[:offset]
    return frames
