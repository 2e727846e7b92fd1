"""Frontend CPU per query of several modes at one rate, measured side by side.

``learncc bench`` runs its modes one after another, so a CPU ratio between
two of them also holds whatever the machine did in between: on our shared
2-core machines single pairs of runs put coded/equal anywhere from 0.92 to
2.05 on the same code (issue 3). Here every mode's deployment is up at
once and the load alternates between them in short slices, each mode
taking every slice's trace in turn (the order rotating), so that a slow
stretch of the machine falls on all of them alike. Each mode's CPU per
query is the total over its slices; the per-slice ratios to the first mode
show the spread.

At a few hundred queries per second the frontend's CPU is mostly waking
up: each wake-up from a blocking ``select`` costs it tens of microseconds
on these VMs, far more than the Python it then runs, and its caches are cold
after every worker process that ran in between. So this measures the cost
of the work coding adds under realistic load, which the in-process
throughput bench (``learncc.bench.throughput``, hot caches, no waiting)
cannot.

``--breakdown`` also splits each mode's CPU by the frontend method that
spent it (the thread's CPU clock around each call) and counts messages and
wake-ups per query; the clock reads add about 1 us per timed call.

Run: ``python -m learncc.bench.cpu BUNDLE [--modes equal,coded] [--rate 300]``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from learncc.bench.loadgen import drive, poisson_trace
from learncc.bench.run import _test_inputs, apply_slowdowns
from learncc.bundle import load_bundle
from learncc.errors import ConfigError, LearnccError
from learncc.outputs import check_writable
from learncc.serving.backend import LocalBackend, _Instance
from learncc.serving.deploy import MODES, deployment
from learncc.serving.frontend import Frontend
from learncc.serving.slowdown import preset

# What --breakdown times: (label, class, method). "seal" runs inside
# "accept" (a query completing its group) or the flush timer, "send" (one
# query to an instance) inside both; "results" covers reading frames,
# answering and decoding. Only the DISJOINT pieces add up.
TIMED = (
    ("accept", Frontend, "submit"),
    ("seal", Frontend, "_seal"),
    ("send", LocalBackend, "send"),
    ("results", _Instance, "data_received"),
    ("flush timer", Frontend, "_flush_due"),
)
DISJOINT = ("accept", "results", "flush timer")
COUNTED = (
    ("queries out", LocalBackend, "send"),
    ("results in", Frontend, "on_result"),
)


@contextlib.contextmanager
def _breakdown(
    loop: asyncio.AbstractEventLoop, frontend: Frontend
) -> Iterator[collections.Counter]:
    """Time and count ``frontend``'s pieces of work (``TIMED``, ``COUNTED``)
    and the event loop's blocking waits, into the yielded counter (CPU in
    ns), for as long as the context lasts. Calls for the other modes'
    frontends (a late result from the previous slice) are not counted."""
    tally: collections.Counter = collections.Counter()
    clock = time.thread_time_ns
    ours = (frontend, frontend.backend)
    saved = []

    def owner(obj: Any) -> Any:
        return obj.backend if isinstance(obj, _Instance) else obj

    def timed(label: str, fn: Any) -> Any:
        def run(self: Any, *args: Any, **kwargs: Any) -> Any:
            if owner(self) not in ours:
                return fn(self, *args, **kwargs)
            t0 = clock()
            try:
                return fn(self, *args, **kwargs)
            finally:
                tally[label] += clock() - t0

        return run

    def counted(label: str, fn: Any) -> Any:
        def run(self: Any, *args: Any, **kwargs: Any) -> Any:
            tally[label] += owner(self) in ours
            return fn(self, *args, **kwargs)

        return run

    for wrap, pieces in ((timed, TIMED), (counted, COUNTED)):
        for label, cls, name in pieces:
            saved.append((cls, name, getattr(cls, name)))
            setattr(cls, name, wrap(label, getattr(cls, name)))
    selector = loop._selector  # type: ignore[attr-defined]
    select = selector.select

    def waiting_select(timeout: float | None = None) -> Any:
        events = select(timeout)
        if timeout is None or timeout > 0:
            tally["blocking waits"] += 1
            tally["woken by a timer"] += not events
        return events

    selector.select = waiting_select
    try:
        yield tally
    finally:
        del selector.select  # back to the class's method
        for cls, name, fn in reversed(saved):  # a method wrapped twice unwinds
            setattr(cls, name, fn)


async def compare_cpu(
    bundle_path: str | Path,
    modes: tuple[str, ...] = ("equal", "coded"),
    *,
    rate_qps: float = 300.0,
    slices: int = 20,
    slice_s: float = 2.0,
    m: int = 4,
    service_ms: float = 5.0,
    slowdown: str = "none",
    seed: int = 0,
    parity_encodes: bool = True,
    breakdown: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Every mode's frontend CPU per query, its slices interleaved with the
    others' (see the module docstring).

    Returns ``{"modes": {mode: {"cpu_us_per_query", "slices_us",
    "ratio_median", "ratio_p25", "ratio_p75", "queries"}}, ...settings}``;
    ratios are per slice against ``modes[0]``'s CPU in the same slice.
    ``parity_encodes=False`` has coded's frontend encode (see
    ``LocalBackend``). With ``breakdown`` each mode also gets
    ``"breakdown"``: CPU us per query of each ``TIMED`` piece and of the
    rest (event loop, load generator, waking up), and per-query counts of
    ``COUNTED`` calls and of the loop's blocking waits.

    Raises:
        ConfigError: a setting is out of range or a mode is given twice.
        UnknownNameError: an unknown mode or slowdown.
        BundleError: the bundle cannot be loaded.
    """
    if len(modes) < 2 or len(set(modes)) != len(modes):
        raise ConfigError(f"give two or more distinct modes, got {list(modes)}")
    if not (0 < rate_qps < math.inf and 0 < slice_s < math.inf) or slices < 2:
        raise ConfigError(
            "need finite rate_qps > 0 and slice_s > 0, and slices >= 2; got "
            f"{rate_qps}, {slice_s} and {slices}"
        )
    if not 0 <= service_ms < math.inf:
        raise ConfigError(f"service_ms must be a finite number >= 0, got {service_ms}")
    shaped = preset(slowdown)  # refuses an unknown name before anything starts
    bundle = load_bundle(bundle_path)
    pool, _ = _test_inputs(bundle)
    frontends = {}
    try:
        for mode in modes:
            frontends[mode] = deployment(
                bundle, mode, m=m, service_ms=service_ms, parity_encodes=parity_encodes
            )
            await frontends[mode][0].start()
        loop = asyncio.get_running_loop()
        start = loop.time()
        for frontend, shape in frontends.values():
            await apply_slowdowns(
                frontend, shape, shaped, start, slices * slice_s * len(modes), seed
            )
        per_slice = {mode: [] for mode in modes}
        queries = dict.fromkeys(modes, 0)
        tallies = {mode: collections.Counter() for mode in modes}
        bar = tqdm(total=slices * len(modes), desc="slices", disable=not progress)
        for s in range(slices):
            trace = poisson_trace(
                rate_qps=rate_qps, duration_s=slice_s, pool=len(pool), seed=seed + s
            )
            for mode in modes[s % len(modes) :] + modes[: s % len(modes)]:
                with (
                    _breakdown(loop, frontends[mode][0])
                    if breakdown
                    else contextlib.nullcontext()
                ) as tally:
                    result = await drive(frontends[mode][0], trace, pool)
                if tally is not None:
                    tallies[mode].update(tally)
                per_slice[mode].append(result.frontend_cpu_us_per_query)
                queries[mode] += len(trace.arrivals_s)
                bar.update(1)
        bar.close()
    finally:
        for frontend, _ in frontends.values():
            await frontend.close()
    base = np.asarray(per_slice[modes[0]])
    out: dict[str, Any] = {}
    for mode in modes:
        values = np.asarray(per_slice[mode])
        ratios = values / base
        out[mode] = {
            "cpu_us_per_query": float(values.mean()),
            "ratio": float(values.mean() / base.mean()),
            "ratio_median": float(np.median(ratios)),
            "ratio_p25": float(np.percentile(ratios, 25)),
            "ratio_p75": float(np.percentile(ratios, 75)),
            "queries": queries[mode],
            "slices_us": values.tolist(),
        }
        if breakdown:
            out[mode]["breakdown"] = _per_query(
                tallies[mode], queries[mode], out[mode]["cpu_us_per_query"]
            )
    return {
        "modes": out,
        "rate_qps": rate_qps,
        "slices": slices,
        "slice_s": slice_s,
        "m": m,
        "service_ms": service_ms,
        "slowdown": slowdown,
        "parity_encodes": parity_encodes,
    }


def _per_query(tally: collections.Counter, n: int, cpu_us: float) -> dict[str, float]:
    pieces = {label: tally[label] / 1e3 / n for label, _, _ in TIMED}
    rest = cpu_us - sum(pieces[label] for label in DISJOINT)
    counts = [label for label, _, _ in COUNTED] + ["blocking waits", "woken by a timer"]
    return {
        **{f"{label} us": v for label, v in pieces.items()},
        "rest us": rest,
        **{label: tally[label] / n for label in counts},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m learncc.bench.cpu",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("bundle", type=Path)
    parser.add_argument(
        "--modes",
        default="equal,coded",
        help=f"comma-separated, from {', '.join(MODES)}; ratios are to the first",
    )
    parser.add_argument("--rate", type=float, default=300.0, help="queries/s")
    parser.add_argument("--slices", type=int, default=20, help="slices per mode")
    parser.add_argument("--slice-s", type=float, default=2.0, help="s per slice")
    parser.add_argument("--m", type=int, default=4, help="data instances of coded")
    parser.add_argument("--service-ms", type=float, default=5.0)
    parser.add_argument("--slowdown", default="none", help="a slowdown preset")
    parser.add_argument(
        "--frontend-encodes",
        action="store_true",
        help="coded's frontend encodes parity queries (default: parity instances)",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also split each mode's CPU by frontend method, and count messages "
        "and wake-ups per query",
    )
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        if args.out is not None:
            check_writable(args.out.parent)
        result = asyncio.run(
            compare_cpu(
                args.bundle,
                tuple(filter(None, (m.strip() for m in args.modes.split(",")))),
                rate_qps=args.rate,
                slices=args.slices,
                slice_s=args.slice_s,
                m=args.m,
                service_ms=args.service_ms,
                slowdown=args.slowdown,
                parity_encodes=not args.frontend_encodes,
                breakdown=args.breakdown,
                progress=not args.quiet,
            )
        )
    except LearnccError as e:
        parser.exit(2, f"error: {e}\n")
    first = next(iter(result["modes"]))
    print(f"frontend CPU per query at {args.rate:g} q/s, ratios to {first}:")
    for mode, r in result["modes"].items():
        print(
            f"  {mode:>9}: {r['cpu_us_per_query']:6.0f} us  {r['ratio']:.3f}x "
            f"(per slice: median {r['ratio_median']:.3f}, "
            f"IQR {r['ratio_p25']:.3f}-{r['ratio_p75']:.3f})"
        )
    if args.breakdown:
        names = list(result["modes"])
        print("per query:" + "".join(f"{m:>12}" for m in names))
        for key in result["modes"][names[0]]["breakdown"]:
            cells = (result["modes"][m]["breakdown"][key] for m in names)
            print(f"  {key:>18}" + "".join(f"{v:12.2f}" for v in cells))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
