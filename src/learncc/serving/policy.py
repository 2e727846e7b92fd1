"""Dispatch policy: which instance takes the next query.

One pure function, shared by the serving frontend and the simulator
(``learncc.sim``) so that the two cannot drift apart: round robin over live
instances, skipping those a coding group already uses where possible.

Keeping a query's coding group on distinct instances is what lets one slow
instance cost at most one output per group, the one the decoder can rebuild.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable

from learncc.errors import BackendUnavailableError


def pick_instance(
    n: int,
    start: int,
    alive: Callable[[int], bool],
    avoid: Container[int] = (),
    among: range | None = None,
    *,
    role: str = "data",
) -> int:
    """Round robin over live instances, skipping ``avoid`` if possible.

    Instances are tried in the order ``start, start + 1, ..., n - 1, 0, ...``.
    The first live one not in ``avoid`` wins; when every live candidate is in
    ``avoid`` (fewer live instances than a coding group needs), the first live
    one is taken anyway, so the group then shares an instance. The caller
    advances its pointer to ``(choice + 1) % n``.

    The scan stops at the first acceptable instance, so with all instances
    live it costs about ``len(avoid) + 1`` steps, not ``n``.

    Args:
        n: number of instances of the role.
        start: round-robin pointer, in ``[0, n)``.
        alive: whether instance ``i`` can take queries.
        avoid: instances to skip if another live one exists (the coding
            group's instances; the first copy of a hedged query).
        among: only these instances are candidates (parity instances that run
            one given parity model); ``None`` means all ``n``.
        role: the instances' role, named in the error.

    Returns:
        The chosen instance index.

    Raises:
        BackendUnavailableError: no candidate instance is live.
    """
    fallback = -1
    i = start
    for _ in range(n):
        if (among is None or i in among) and alive(i):
            if i not in avoid:
                return i
            if fallback < 0:
                fallback = i
        i += 1
        if i == n:
            i = 0
    if fallback < 0:
        raise BackendUnavailableError(f"no live {role} instance")
    return fallback


def least_loaded(
    candidates: Iterable[int],
    depth: Callable[[int], int],
    start: int,
    n: int,
    *,
    role: str = "parity",
) -> int:
    """The candidate with the fewest queries in flight; ties go round robin
    from ``start``. The frontend sends parity queries this way whatever the
    data policy: a parity output only helps if it arrives before the
    stragglers it covers, so it must not queue behind a slow parity instance.

    Raises:
        BackendUnavailableError: no candidate.
    """
    best, best_key = -1, (0, 0)
    for i in candidates:
        key = (depth(i), (i - start) % n)
        if best < 0 or key < best_key:
            best, best_key = i, key
    if best < 0:
        raise BackendUnavailableError(f"no live {role} instance")
    return best
