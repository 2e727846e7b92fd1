"""The instance process's per-query answers: a non-finite output of F or a
parity model becomes an explicit error, never a result (fresh-user test: a
3e38 input answered 200 with nulls and fed a reconstruction)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import numpy as np
import pytest

from fakes import FakeBackend
from learncc.codes import CodeConfig, make_code
from learncc.errors import BackendUnavailableError, QueryTimeoutError
from learncc.serving import Coding, Frontend
from learncc.serving import protocol as P
from learncc.serving.backend import DATA, PARITY
from learncc.serving.worker import NON_FINITE_OUTPUT, compute_replies

SHAPE = (1, 2, 2)


def payload(*values: float) -> bytes:
    return np.array(values, dtype=np.float32).tobytes()


def test_non_finite_outputs_become_errors_for_their_query_only() -> None:
    def run(x: np.ndarray) -> np.ndarray:  # (n, 1, 2, 2) -> (n, 3)
        with np.errstate(over="ignore"):
            return (x.reshape(len(x), -1)[:, :3] * np.float32(10)).astype(np.float32)

    batch = [(7, payload(1, 2, 3, 4)), (8, payload(3e38, 0, 0, 0)), (9, b"short")]
    frames = P.split_frames(bytearray(b"".join(compute_replies(run, batch, SHAPE))))
    by_tag = {tag: (kind, body) for kind, tag, body in frames}
    assert by_tag[7][0] == P.RESULT
    np.testing.assert_array_equal(np.frombuffer(by_tag[7][1], np.float32), [10, 20, 30])
    assert by_tag[8][0] == P.ERROR
    assert re.match(
        rf"{NON_FINITE_OUTPUT}: F's output for this query holds NaN or infinity",
        by_tag[8][1].decode(),
    )
    assert by_tag[9] == (P.ERROR, b"expected 16 bytes, got 5")


class OverflowingBackend(FakeBackend):
    """Instances that answer as ``compute_replies`` does: an ERROR in place
    of a non-finite output."""

    def _deliver(self, role: str, index: int, tag: int, output: np.ndarray) -> None:
        if np.isfinite(output).all():
            super()._deliver(role, index, tag, output)
            return
        self.depths[(role, index)] -= 1
        self.delivered.add((role, index, tag))
        self.handler.on_result(role, index, tag, None, f"{NON_FINITE_OUTPUT}: ...")


async def test_an_overflowed_parity_output_never_rebuilds_a_partner() -> None:
    # F(x) = 1e38 * x[:3]: the huge query's output overflows, and so does the
    # parity output of its group (addition code: the parity query is the sum)
    weights = np.eye(4, dtype=np.float32)[:3] * np.float32(1e38)
    huge, normal = np.full(SHAPE, 4.0, np.float32), np.full(SHAPE, 1e-3, np.float32)
    # data/1 (the normal query's instance) never answers: only decoding could
    never = {(DATA, 1)}
    backend = OverflowingBackend(
        weights,
        data_instances=2,
        parity_instances=1,
        delay_s=lambda role, i, tag: None if (role, i) in never else 0.001,
    )
    encoder, decoder = make_code(
        CodeConfig(k=2, r=1, encoder="addition", decoder="subtraction"), SHAPE
    )
    coding = Coding(
        encoder=encoder,
        decoder=decoder,
        fill_input=np.zeros(SHAPE, np.float32),
        fill_output=np.zeros(3, np.float32),
    )
    frontend = Frontend(backend, input_shape=SHAPE, coding=coding, query_timeout_s=0.3)
    await frontend.start()
    try:
        with np.errstate(over="ignore"):  # the fake computes F here, in send
            first = frontend.submit(huge)
            second = frontend.submit(normal)
        with pytest.raises(BackendUnavailableError, match=NON_FINITE_OUTPUT):
            await first
        # the partner is not "reconstructed" from the overflowed parity output
        with pytest.raises(QueryTimeoutError):
            await second
        assert (PARITY, 0, 0) in backend.delivered  # the parity query did run
        assert frontend.statistics().reconstructed == 0
    finally:
        await frontend.close()
    assert frontend.statistics().pending == 0


@pytest.mark.slow
async def test_a_real_instance_refuses_an_overflowed_output(
    digits_bundle: Path,
) -> None:
    from learncc.serving.deploy import deployment

    frontend, _ = deployment(digits_bundle, "none", m=1, query_timeout_s=20)
    await frontend.start()
    try:
        x = np.full(frontend.input_shape, 3e38, np.float32)
        with pytest.raises(BackendUnavailableError, match=NON_FINITE_OUTPUT):
            await frontend.infer(x)
        ok = await frontend.infer(np.zeros(frontend.input_shape, np.float32))
        assert np.isfinite(ok.output).all() and not ok.reconstructed
    finally:
        await frontend.close()
    await asyncio.sleep(0)
