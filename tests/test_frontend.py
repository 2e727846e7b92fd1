"""Frontend logic over a fake backend with scripted latency: exact values."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from fakes import FakeBackend
from learncc.codes import CodeConfig, make_code
from learncc.errors import (
    BackendUnavailableError,
    BadQueryError,
    ConfigError,
    FrontendClosedError,
    OverloadedError,
    QueryTimeoutError,
)
from learncc.serving import Coding, Frontend

IN, OUT, K = 6, 3, 2
W = np.random.default_rng(0).standard_normal((OUT, IN)).astype(np.float32)


def coding(k: int = K) -> Coding:
    # Addition code with F_P = F linear: subtraction decoding is exact.
    enc, dec = make_code(CodeConfig(k=k, r=1, encoder="addition"), (IN,))
    fill = np.full(IN, 0.5, np.float32)
    return Coding(enc, dec, fill, W @ fill)


def make(
    delay, *, k: int = K, data: int = 4, parity: int = 2, coded: bool = True, **kw
) -> tuple[Frontend, FakeBackend]:
    backend = FakeBackend(
        W, data_instances=data, parity_instances=parity if coded else 0, delay_s=delay
    )
    frontend = Frontend(
        backend, input_shape=(IN,), coding=coding(k) if coded else None, **kw
    )
    return frontend, backend


def queries(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.standard_normal(IN).astype(np.float32) for _ in range(n)]


async def test_all_fast_gives_real_answers_in_order() -> None:
    frontend, backend = make(lambda role, i, tag: 0.001)
    async with frontend:
        xs = queries(8)
        answers = await asyncio.gather(*(frontend.infer(x) for x in xs))
    for x, a in zip(xs, answers, strict=True):
        assert not a.reconstructed
        np.testing.assert_allclose(a.output, W @ x, rtol=1e-6)
    # members of a group never share an instance; 4 groups -> 4 parity queries
    data = [(i, tag) for role, i, tag in backend.sent if role == "data"]
    assert all(data[2 * g][0] != data[2 * g + 1][0] for g in range(4))
    assert sum(role == "parity" for role, _, _ in backend.sent) == 4
    assert frontend.statistics().reconstructed == 0


async def test_straggler_is_reconstructed_exactly_and_flagged() -> None:
    # query 1 (second member of the first group) takes 10 s; the rest 1 ms
    frontend, _ = make(
        lambda role, i, tag: 10.0 if (role, tag) == ("data", 1) else 0.001
    )
    async with frontend:
        xs = queries(2)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        a0, a1 = await asyncio.gather(*(frontend.infer(x) for x in xs))
        assert loop.time() - t0 < 1.0
    assert not a0.reconstructed and a1.reconstructed
    # linear F, F_P(x0 + x1) = W x0 + W x1: decoding is exact
    np.testing.assert_allclose(a1.output, W @ xs[1], rtol=1e-4, atol=1e-5)
    stats = frontend.statistics()
    assert (stats.accepted, stats.answered, stats.reconstructed) == (2, 2, 1)


@pytest.mark.parametrize(("limit", "rebuilt"), [(1e6, True), (10.0, False)])
async def test_reconstruction_beyond_fs_range_is_withheld(
    limit: float, rebuilt: bool
) -> None:
    # the straggler's input is 100x the usual scale, so its outputs reach
    # hundreds: under a bound of 10 its reconstruction is withheld and the
    # query waits for its original (0.2 s) instead
    enc, dec = make_code(CodeConfig(k=K, r=1, encoder="addition"), (IN,))
    fill = np.full(IN, 0.5, np.float32)
    backend = FakeBackend(
        W,
        data_instances=4,
        parity_instances=2,
        delay_s=lambda role, i, tag: 0.2 if (role, tag) == ("data", 1) else 0.001,
    )
    frontend = Frontend(
        backend, input_shape=(IN,), coding=Coding(enc, dec, fill, W @ fill, limit)
    )
    x0, x1 = queries(2)
    x1 = x1 * 100
    assert np.abs(W @ x1).max() > 10.0
    async with frontend:
        a0, a1 = await asyncio.gather(frontend.infer(x0), frontend.infer(x1))
    assert not a0.reconstructed and a1.reconstructed == rebuilt
    np.testing.assert_allclose(a1.output, W @ x1, rtol=1e-4, atol=1e-3)
    stats = frontend.statistics()
    assert (stats.reconstructed, stats.implausible) == (int(rebuilt), int(not rebuilt))


async def test_reconstructed_straggler_is_withdrawn_if_still_queued() -> None:
    # queries 0 and 4 both straggle on data instance 0 (round robin over 4):
    # it computes query 0 while query 4 waits behind it
    frontend, backend = make(
        lambda role, i, tag: 0.05 if role == "data" and tag in (0, 4) else 0.001
    )
    async with frontend:
        answers = await asyncio.gather(*(frontend.infer(x) for x in queries(6)))
        await asyncio.sleep(0.1)  # the originals would have arrived by now
    assert [a.reconstructed for a in answers] == [True] + [False] * 3 + [True, False]
    assert backend.cancelled == [("data", 0, 4)]
    assert frontend.statistics().late_discarded == 1  # query 0's original


async def test_straggler_alone_on_its_instance_is_left_to_finish() -> None:
    # the only query on its instance is the one being computed: a cancel
    # could not withdraw it, so none is sent
    frontend, backend = make(
        lambda role, i, tag: 0.05 if (role, tag) == ("data", 0) else 0.001
    )
    async with frontend:
        answers = await asyncio.gather(*(frontend.infer(x) for x in queries(2)))
        await asyncio.sleep(0.1)
    assert [a.reconstructed for a in answers] == [True, False]
    assert backend.cancel_requests == []
    assert frontend.statistics().late_discarded == 1


async def test_partial_group_is_flushed_with_the_fill_query() -> None:
    # one query alone: after the flush timeout its parity is F(x) + F(fill)
    frontend, backend = make(
        lambda role, i, tag: None if role == "data" else 0.001, flush_timeout_s=0.01
    )
    async with frontend:
        x = queries(1)[0]
        answer = await frontend.infer(x)
    assert answer.reconstructed
    np.testing.assert_allclose(answer.output, W @ x, rtol=1e-4, atol=1e-5)


async def test_instances_that_encode_get_the_groups_inputs_fill_included() -> None:
    # query 1 never answers; its group is full, the next one partial (query 2
    # alone and slow, completed with the fill input at the flush timeout)
    code = coding()
    slow = {("data", 1): None, ("data", 2): 5.0}
    backend = FakeBackend(
        W,
        data_instances=4,
        parity_instances=2,
        delay_s=lambda role, i, tag: slow.get((role, tag), 0.001),
        encoder=code.encoder,
    )
    frontend = Frontend(backend, input_shape=(IN,), coding=code, flush_timeout_s=0.01)
    async with frontend:
        xs = queries(3)
        answers = await asyncio.gather(*(frontend.infer(x) for x in xs))
    assert [a.reconstructed for a in answers] == [False, True, True]
    for i in (1, 2):
        np.testing.assert_allclose(answers[i].output, W @ xs[i], rtol=1e-4, atol=1e-5)
    assert len(backend.groups) == 2
    np.testing.assert_array_equal(np.stack(backend.groups[0]), np.stack(xs[:2]))
    np.testing.assert_array_equal(
        np.stack(backend.groups[1]), np.stack([xs[2], code.fill_input])
    )


async def test_partial_group_waits_its_own_flush_timeout() -> None:
    # a window that filled earlier leaves the flush timer running; a later
    # partial window must still get its full flush_timeout_s
    loop = asyncio.get_running_loop()
    frontend, backend = make(
        lambda role, i, tag: None if (role, tag) == ("data", 2) else 0.001,
        flush_timeout_s=0.2,
    )
    async with frontend:
        xs = queries(3)
        await asyncio.gather(*(frontend.submit(x) for x in xs[:2]))  # full group
        await asyncio.sleep(0.15)
        opened = loop.time()
        late = frontend.submit(xs[2])  # its data instance never answers
        await asyncio.sleep(0.1)  # the first window's timer has fired by now
        assert not late.done()
        assert sum(role == "parity" for role, _, _ in backend.sent) == 1
        answer = await asyncio.wait_for(late, 1.0)
        waited_s = loop.time() - opened
    assert answer.reconstructed
    np.testing.assert_allclose(answer.output, W @ xs[2], rtol=1e-4, atol=1e-5)
    assert waited_s >= 0.2


async def test_short_deadline_after_long_ones_and_many_answers_expires_on_time() -> (
    None
):
    # the expiry heap is armed for the earliest entry and swept of answered
    # entries (over 1024 of them here); a later, shorter deadline still counts
    loop = asyncio.get_running_loop()
    frontend, _ = make(
        lambda role, i, tag: None if tag >= 1200 else 0.0005,
        coded=False,
        query_timeout_s=5.0,
    )
    async with frontend:
        xs = queries(1)
        for _ in range(6):
            await asyncio.gather(*(frontend.submit(xs[0]) for _ in range(200)))
        slow = frontend.submit(xs[0])  # never answered: expires at 5 s
        start = loop.time()
        with pytest.raises(QueryTimeoutError, match="within 0.05 s"):
            await frontend.infer(xs[0], deadline_s=0.05)
        assert loop.time() - start < 1.0
        assert not slow.done()
    with pytest.raises(FrontendClosedError):
        slow.result()
    stats = frontend.statistics()
    assert (stats.answered, stats.timed_out, stats.failed) == (1200, 1, 2)


async def test_two_stragglers_with_r1_time_out_never_guess() -> None:
    slow = {("data", 0), ("data", 1)}
    frontend, _ = make(
        lambda role, i, tag: None if (role, tag) in slow else 0.001, query_timeout_s=0.2
    )
    async with frontend:
        results = await asyncio.gather(
            *(frontend.infer(x) for x in queries(2)), return_exceptions=True
        )
    assert all(isinstance(r, QueryTimeoutError) for r in results)
    assert "got no answer within 0.2 s" in str(results[0])
    stats = frontend.statistics()
    assert (stats.timed_out, stats.reconstructed, stats.pending) == (2, 0, 0)


async def test_dead_instance_queries_are_redispatched() -> None:
    # instance 0 never answers; when it dies its queries go elsewhere
    frontend, backend = make(
        lambda role, i, tag: None if (role, i) == ("data", 0) else 0.001, coded=False
    )
    async with frontend:
        futures = [frontend.submit(x) for x in queries(8)]
        await asyncio.sleep(0.05)
        backend.kill("data", 0)
        answers = await asyncio.gather(*futures)
        # new queries avoid the dead instance
        await frontend.infer(queries(1)[0])
    assert frontend.statistics().redispatched == 2
    assert all(not a.reconstructed for a in answers)
    assert not any(i == 0 for role, i, tag in backend.sent[-1:])


async def test_all_instances_dead_is_an_explicit_error() -> None:
    frontend, backend = make(lambda role, i, tag: 0.001, coded=False, data=1)
    async with frontend:
        backend.kill("data", 0)
        with pytest.raises(BackendUnavailableError, match="no live data instance"):
            await frontend.infer(queries(1)[0])


async def test_accounting_every_query_answered_exactly_once() -> None:
    rng = np.random.default_rng(7)
    delays = rng.choice([0.001, 0.02, None], size=4000, p=[0.9, 0.08, 0.02])
    frontend, _ = make(lambda role, i, tag: delays[tag % 4000], query_timeout_s=0.3)
    async with frontend:
        futures = [frontend.submit(x) for x in queries(1) * 2000]
        results = await asyncio.gather(*futures, return_exceptions=True)
    stats = frontend.statistics()
    answered = sum(not isinstance(r, BaseException) for r in results)
    errors = sum(isinstance(r, QueryTimeoutError) for r in results)
    assert answered + errors == 2000 == stats.accepted
    assert (stats.answered, stats.failed, stats.pending) == (answered, errors, 0)
    assert stats.reconstructed > 0


async def test_close_fails_pending_queries() -> None:
    frontend, _ = make(lambda role, i, tag: None)
    await frontend.start()
    future = frontend.submit(queries(1)[0])
    await frontend.close()
    with pytest.raises(FrontendClosedError):
        await future
    with pytest.raises(FrontendClosedError):
        frontend.submit(queries(1)[0])


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (
            np.zeros(5, np.float32),
            r"shape \(5,\) does not match the model's input \(6,\)",
        ),
        (np.array(["a"] * 6), "not numeric"),
        (np.full(6, np.nan, np.float32), "NaN or infinity"),
        ([0.0] * 6, "must be a NumPy array"),
    ],
)
async def test_bad_queries_are_refused_before_acceptance(x: object, match: str) -> None:
    frontend, _ = make(lambda role, i, tag: 0.001)
    async with frontend:
        with pytest.raises(BadQueryError, match=match):
            frontend.submit(x)  # type: ignore[arg-type]
        assert frontend.statistics().accepted == 0


async def test_finite_query_whose_sum_of_squares_overflows_is_accepted() -> None:
    # the finiteness check's fast path overflows here and must fall back
    frontend, _ = make(lambda role, i, tag: 0.001, coded=False)
    huge = np.full(IN, 2e19, np.float32)  # its square, 4e38, is not a float32
    assert not np.isfinite(np.vdot(huge, huge))
    async with frontend:
        answer = await frontend.infer(huge)
        with pytest.raises(BadQueryError, match="NaN or infinity"):
            frontend.submit(np.concatenate([huge[:-1], [np.inf]]).astype(np.float32))
    np.testing.assert_allclose(answer.output, W @ huge, rtol=1e-6)


def test_k_larger_than_instances_fails_at_start() -> None:
    with pytest.raises(ConfigError, match="k=3 needs at least 3 data instances"):
        make(lambda *a: 0.001, k=3, data=2)
    with pytest.raises(ConfigError, match="r=1 needs at least 1 parity instances"):
        make(lambda *a: 0.001, parity=0)


async def test_overload_is_refused_at_once_and_nothing_is_lost() -> None:
    frontend, _ = make(lambda role, i, tag: 0.05, coded=False, max_pending=4)
    async with frontend:
        futures = [frontend.submit(x) for x in queries(4)]
        with pytest.raises(OverloadedError, match="4 queries pending, limit 4"):
            frontend.submit(queries(1)[0])
        await asyncio.gather(*futures)
        await frontend.infer(queries(1)[0])  # room again
    stats = frontend.statistics()
    assert (stats.accepted, stats.answered, stats.refused) == (5, 5, 1)


async def test_deadline_gives_the_default_answer_or_a_timeout() -> None:
    default = np.zeros(OUT, np.float32)
    frontend, _ = make(lambda role, i, tag: None, coded=False, default_output=default)
    async with frontend:
        answer = await frontend.infer(queries(1)[0], deadline_s=0.02)
        assert answer.default and not answer.reconstructed
        np.testing.assert_array_equal(answer.output, default)
    frontend, _ = make(lambda role, i, tag: None, coded=False)
    async with frontend:
        with pytest.raises(QueryTimeoutError, match="within 0.02 s"):
            await frontend.infer(queries(1)[0], deadline_s=0.02)
        with pytest.raises(BadQueryError, match="deadline_s must be > 0"):
            frontend.submit(queries(1)[0], deadline_s=0)


def uncoded(delay, *, data: int = 4, **kw) -> tuple[Frontend, FakeBackend]:
    backend = FakeBackend(
        W,
        data_instances=data,
        delay_s=delay,
        backup_instances=kw.pop("backup", 0),
        backup_weights=kw.pop("backup_weights", None),
    )
    return Frontend(backend, input_shape=(IN,), **kw), backend


async def test_replicate_first_answer_wins_queued_losers_withdrawn() -> None:
    # instance 0 is slow: every query with a copy on it is answered by the other
    frontend, backend = uncoded(
        lambda role, i, tag: 1.0 if i == 0 else 0.001, redundancy="replicate"
    )
    async with frontend:
        answers = await asyncio.gather(*(frontend.infer(x) for x in queries(6)))
        await asyncio.sleep(0.01)
    assert len(backend.sent) == 12
    pairs = [backend.sent[2 * i : 2 * i + 2] for i in range(6)]
    assert all(a[1] != b[1] and a[2] == b[2] for a, b in pairs)  # distinct instances
    # the slow instance holds copies of queries 0, 2 and 4: it computes the
    # first, and the two queued behind it are withdrawn once answered
    # elsewhere; the fast losers had finished or were being computed
    assert sorted(backend.cancelled) == [("data", 0, 2), ("data", 0, 4)]
    assert not any(a.reconstructed for a in answers)
    assert frontend.statistics().late_discarded == 3  # queries 1, 3, 5's losers


async def test_hedge_duplicates_only_after_the_running_p95() -> None:
    slow_tags = set(range(300, 320))
    frontend, backend = uncoded(
        lambda role, i, tag: (
            0.5
            if tag in slow_tags
            and len(backend.sent) <= 1000
            and [t for r, j, t in backend.sent].count(tag) == 1
            else 0.002
        ),
        redundancy="hedge",
        data=4,
    )
    async with frontend:
        for _ in range(4):  # 400 fast-ish queries to learn the p95
            await asyncio.gather(*(frontend.infer(x) for x in queries(100)))
        stats = frontend.statistics()
    # only the 20 stragglers were hedged, each answered by its second copy quickly
    assert stats.hedged == 20
    assert stats.answered == 400 and stats.failed == 0


async def test_cheap_backup_answers_when_the_original_is_late() -> None:
    backup = np.zeros_like(W)
    frontend, backend = uncoded(
        lambda role, i, tag: 0.002 if role == "backup" or tag < 200 else 1.0,
        backup=1,
        backup_weights=backup,
        redundancy="cheap",
        data=2,
        query_timeout_s=5,
    )
    async with frontend:
        for _ in range(2):  # learn the median from prompt originals
            await asyncio.gather(*(frontend.infer(x) for x in queries(100)))
        late = await frontend.infer(queries(1)[0])
    assert late.backup and not late.reconstructed
    np.testing.assert_array_equal(late.output, np.zeros(OUT))
    assert frontend.statistics().backup_used == 1


async def test_cheap_waits_for_the_median_of_the_original_not_of_answers() -> None:
    # a quarter of the originals take 30 ms, the rest 4 ms; the backup, 1 ms,
    # should answer only for the slow quarter. Timing answers, the backup's
    # own answers pulled the median down to 1 ms and it answered nearly all.
    frontend, _ = uncoded(
        lambda role, i, tag: (
            0.001 if role == "backup" else (0.03 if tag % 4 == 3 else 0.004)
        ),
        backup=1,
        redundancy="cheap",
        data=4,
    )
    async with frontend:
        for _ in range(3):  # 300 originals time the median (it needs 128)
            await asyncio.gather(*(frontend.infer(x) for x in queries(100)))
            await asyncio.sleep(0.05)  # the late originals come back
        answers = await asyncio.gather(*(frontend.infer(x) for x in queries(100)))
    backups = sum(a.backup for a in answers)
    assert 15 <= backups <= 35


async def test_shortest_queue_avoids_the_backed_up_instance() -> None:
    frontend, backend = uncoded(
        lambda role, i, tag: 0.2 if i == 0 else 0.001, policy="shortest-queue", data=3
    )
    async with frontend:
        first = frontend.submit(queries(1)[0])  # goes to instance 0 and sticks there
        for x in queries(20):
            await frontend.infer(x)
        await first
    on_zero = [tag for role, i, tag in backend.sent if i == 0]
    assert on_zero == [0]


async def test_shared_queue_keeps_one_query_per_instance_and_groups_apart() -> None:
    frontend, backend = make(lambda role, i, tag: 0.002, policy="shared-queue")
    async with frontend:
        futures = [frontend.submit(x) for x in queries(10)]
        assert frontend.statistics().queued == 10 - 4  # one per idle data instance
        answers = await asyncio.gather(*futures)
    assert len(answers) == 10 and frontend.statistics().queued == 0
    data = {tag: i for role, i, tag in backend.sent if role == "data"}
    assert all(data[2 * g] != data[2 * g + 1] for g in range(5))


def test_baselines_are_for_uncoded_serving() -> None:
    with pytest.raises(ConfigError, match="baseline for uncoded serving"):
        make(lambda *a: 0.001, redundancy="hedge")
    with pytest.raises(ConfigError, match="unknown policy 'random'"):
        make(lambda *a: 0.001, policy="random")
    with pytest.raises(ConfigError, match="cheap needs at least 1 backup instance"):
        uncoded(lambda *a: 0.001, redundancy="cheap")


async def test_batches_align_parity_with_query_positions_like_parm() -> None:
    # B=2, k=2: q0,q1 -> one instance, q2,q3 -> another; groups (q0,q2), (q1,q3);
    # the first batch's instance never answers, so q0 and q1 are rebuilt
    first: set[int] = set()

    def delay(role: str, index: int, tag: int) -> float | None:
        if role == "data" and tag in (0, 1):
            first.add(index)
            return None
        return 0.001

    frontend, backend = make(delay, batch_size=2)
    async with frontend:
        xs = queries(4)
        answers = await asyncio.gather(*(frontend.submit(x) for x in xs))
    data = [(i, tag) for role, i, tag in backend.sent if role == "data"]
    assert [t for _, t in data] == [0, 1, 2, 3]
    assert data[0][0] == data[1][0] != data[2][0] == data[3][0]
    parity = [(i, tag) for role, i, tag in backend.sent if role == "parity"]
    assert len(parity) == 2 and parity[0][0] == parity[1][0]  # one parity batch
    assert [a.reconstructed for a in answers] == [True, True, False, False]
    for a, x in zip(answers, xs, strict=True):
        np.testing.assert_allclose(a.output, W @ x, rtol=1e-4, atol=1e-5)


async def test_partial_batches_are_sent_at_the_flush_timeout() -> None:
    frontend, backend = make(
        lambda role, i, tag: 0.001, coded=False, batch_size=4, flush_timeout_s=0.02
    )
    async with frontend:
        answers = await asyncio.gather(*(frontend.submit(x) for x in queries(6)))
    data = [i for role, i, tag in backend.sent]
    assert len(answers) == 6 and len(set(data[:4])) == 1 and len(set(data[4:])) == 1
    with pytest.raises(ConfigError, match="shared-queue hands out one query at a time"):
        make(lambda *a: 0.001, batch_size=2, policy="shared-queue")


@pytest.mark.parametrize(("original_s", "reconstructed"), [(0.03, False), (0.3, True)])
async def test_reconstruct_after_holds_a_decodable_group_for_its_original(
    original_s: float, reconstructed: bool
) -> None:
    # query 1's partner and parity answer in 1 ms, so its group is decodable
    # at once; held 0.1 s, an original back in 30 ms is answered for real,
    # one taking 0.3 s is rebuilt at about 0.1 s
    frontend, backend = make(
        lambda role, i, tag: original_s if (role, tag) == ("data", 1) else 0.001,
        reconstruct_after_s=0.1,
    )
    async with frontend:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        xs = queries(2)
        futures = [frontend.submit(x) for x in xs]
        a0 = await futures[0]
        a1 = await futures[1]
        waited = loop.time() - t0
    assert not a0.reconstructed and a1.reconstructed == reconstructed
    np.testing.assert_allclose(a1.output, W @ xs[1], rtol=1e-4, atol=1e-5)
    if reconstructed:
        assert 0.09 <= waited < 0.25
        assert backend.cancel_requests == []  # it was being computed
    else:
        assert 0.025 <= waited < 0.09
    assert frontend.statistics().reconstructed == int(reconstructed)


async def test_deadline_takes_a_held_reconstruction_over_the_default() -> None:
    default = np.zeros(OUT, np.float32)
    frontend, _ = make(
        lambda role, i, tag: None if (role, tag) == ("data", 1) else 0.001,
        reconstruct_after_s=5.0,
        default_output=default,
    )
    xs = queries(2)
    async with frontend:
        a0 = await frontend.infer(xs[0])
        a1 = await frontend.infer(xs[1], deadline_s=0.05)
    assert not a0.reconstructed
    assert a1.reconstructed and not a1.default
    np.testing.assert_allclose(a1.output, W @ xs[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("value", [-0.001, float("inf"), float("nan")])
def test_reconstruct_after_must_be_finite_and_not_negative(value: float) -> None:
    with pytest.raises(ConfigError, match="reconstruct_after_s must be"):
        make(lambda role, i, tag: 0.001, reconstruct_after_s=value)
