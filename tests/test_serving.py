"""The local backend with real instance processes and a real bundle."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from learncc.bundle import load_bundle
from learncc.data import load_dataset
from learncc.errors import BundleError, ConfigError
from learncc.serving import DATA, deployment
from learncc.serving.slowdown import SlowdownConfig, instance_schedule

pytestmark = pytest.mark.slow


def digits_inputs(n: int) -> np.ndarray:
    return load_dataset("digits").test.x[:n]


async def hang(frontend, role: str, index: int) -> None:
    spec = instance_schedule(
        SlowdownConfig(fail_instances=(0,), fail_at_s=0.0), 0, 10, 0
    )
    await frontend.backend.configure(role, index, {"schedule": spec, "t0": 0.0})


@pytest.mark.parametrize("parity_encodes", [True, False], ids=["instance", "frontend"])
async def test_coded_answers_match_f_and_reconstruction_matches_decoder(
    digits_bundle: Path, parity_encodes: bool
) -> None:
    """Encoded at the parity instance (the local default) or in the frontend,
    a reconstruction is the decoder on the parity model's output."""
    bundle = load_bundle(digits_bundle)
    frontend, shape = deployment(
        digits_bundle,
        "coded",
        m=2,
        flush_timeout_s=1.0,
        parity_encodes=parity_encodes,
    )
    assert frontend.backend.parity_encodes is parity_encodes
    assert (shape.data_instances, shape.parity_instances) == (2, 1)
    xs = digits_inputs(8)
    async with frontend:
        await hang(frontend, DATA, 0)  # every query sent to data/0 must be rebuilt
        answers = await asyncio.gather(*[frontend.submit(x) for x in xs])
        stats = frontend.statistics()

    with torch.no_grad():
        f = bundle.base(torch.from_numpy(xs)).numpy()
        groups = torch.from_numpy(xs).view(4, 2, *xs.shape[1:])
        parity = bundle.parity[0](bundle.encoder(groups)[:, 0]).numpy()  # (4, out)
    for i, answer in enumerate(answers):
        group, slot = divmod(i, 2)
        if answer.reconstructed:
            expected = parity[group] - f[2 * group + 1 - slot]
            np.testing.assert_allclose(answer.output, expected, rtol=1e-4, atol=1e-4)
        else:
            np.testing.assert_allclose(answer.output, f[i], rtol=1e-5, atol=1e-5)
    # round robin puts the first member of every group on the hung instance
    assert [a.reconstructed for a in answers] == [True, False] * 4
    assert stats.reconstructed == 4 and stats.pending == 0


async def test_sigkilled_instance_under_load_loses_no_query(
    digits_bundle: Path,
) -> None:
    frontend, _ = deployment(digits_bundle, "coded", m=2, service_ms=5.0)
    xs = digits_inputs(50)
    async with frontend:
        futures = []
        for i in range(300):
            futures.append(frontend.submit(xs[i % 50]))
            if i == 100:
                os.kill(frontend.backend.pid(DATA, 1), signal.SIGKILL)
            await asyncio.sleep(0.002)
        results = await asyncio.gather(*futures, return_exceptions=True)
        stats = frontend.statistics()
        for _ in range(300):  # the backend restarts the killed instance
            if frontend.backend.alive(DATA, 1):
                break
            await asyncio.sleep(0.1)
        assert frontend.backend.restarts == 1
        again = await asyncio.gather(*(frontend.infer(x) for x in xs[:4]))
        assert len(again) == 4
    assert not [r for r in results if isinstance(r, BaseException)]
    assert stats.answered == 300 and stats.pending == 0
    assert stats.reconstructed + stats.redispatched > 0


async def test_crash_mode_instance_exits_and_queries_move(digits_bundle: Path) -> None:
    frontend, _ = deployment(digits_bundle, "equal", m=2)
    xs = digits_inputs(20)
    async with frontend:
        spec = instance_schedule(
            SlowdownConfig(fail_instances=(0,), fail_at_s=0.0, fail_mode="crash"),
            0,
            10,
            0,
        )
        await frontend.backend.configure(DATA, 0, {"schedule": spec, "t0": 0.0})
        answers = await asyncio.gather(*(frontend.infer(x) for x in xs))
        assert not frontend.backend.alive(DATA, 0)
    assert len(answers) == 20 and frontend.statistics().redispatched >= 1


async def test_started_backend_freezes_the_heap(digits_bundle: Path) -> None:
    # full collections then skip torch's and NumPy's objects: one walking
    # them stalled the event loop 105 ms a minute into a bench process
    gc.unfreeze()
    frontend, _ = deployment(digits_bundle, "none", m=1)
    async with frontend:
        frozen = gc.get_freeze_count()
        answer = await frontend.infer(digits_inputs(1)[0])
    assert frozen > 50_000
    assert answer.output.shape == (10,)


async def test_instance_that_cannot_load_fails_start_with_its_message(
    tmp_path: Path, digits_bundle: Path
) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(digits_bundle, broken)
    frontend, _ = deployment(broken, "none", m=2)
    (broken / "base.safetensors").write_bytes(b"garbage")
    with pytest.raises(Exception, match="exited during start: .*corrupt"):
        await frontend.start()
    await frontend.close()


def test_missing_bundle_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no coded model bundle at"):
        deployment(tmp_path, "coded", m=2)


def test_cheap_mode_on_ray_is_refused_before_anything_starts(tmp_path: Path) -> None:
    # refused before the bundle is even read: the path need not exist
    with pytest.raises(ConfigError, match="mode cheap runs on the local backend only"):
        deployment(tmp_path / "nowhere", "cheap", m=2, backend="ray")
